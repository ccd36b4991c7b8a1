"""Finds, loads and hot-swaps the newest pushed version of an exported model.

The layout and what counts as a version are the exported-model contract
(`histopath.models.exported`): a push in progress is never picked up.

Both the model server and the web app's embedded backend use `ModelStore`: it loads a
newer version completely (and runs one warm-up prediction) before swapping it in, so
requests in flight keep the `LoadedModel` they started with and never see a half-loaded
model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import re
import threading
import time
from typing import Any, Mapping

import numpy as np

from histopath.models.exported import (
    MODEL_INFO_PATH,
    SAVED_MODEL_FILE,
    SERVING_DEFAULT,
    list_versions,
    model_image_size,
)

logger = logging.getLogger(__name__)

DEFAULT_SIGNATURE = SERVING_DEFAULT
VERSION_HEADER = "x-model-version"  # REST response header naming the version that answered


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """Name, dtype and shape of one signature input or output.

    Attributes:
      name: the key in the signature.
      dtype: numpy dtype name ("object" for tf.string).
      tf_dtype: TensorFlow dtype name, e.g. "string", "float32".
      shape: dimensions, `None` for unknown.
    """

    name: str
    dtype: str
    tf_dtype: str
    shape: tuple[int | None, ...]


@dataclasses.dataclass(frozen=True)
class SignatureInfo:
    """Inputs and outputs of one serving signature."""

    name: str
    inputs: Mapping[str, TensorInfo]
    outputs: Mapping[str, TensorInfo]


class LoadedModel:
    """One loaded, immutable model version.

    Attributes:
      name: the served model name.
      version: the version number.
      path: the version folder.
      info: the content of `assets.extra/model_info.json` ({} when missing).
      signatures: signature name -> `SignatureInfo`.
    """

    def __init__(self, name: str, version: int, path: pathlib.Path):
        import histopath  # noqa: F401  (Keras 2 before TensorFlow)
        import tensorflow as tf

        self.name = name
        self.version = version
        self.path = path
        self._tf = tf
        self._saved_model = tf.saved_model.load(str(path))
        self._functions = {
            key: fn for key, fn in self._saved_model.signatures.items() if not key.startswith("__")
        }
        self.signatures: dict[str, SignatureInfo] = {
            key: _signature_info(key, fn) for key, fn in self._functions.items()
        }
        info_path = path / MODEL_INFO_PATH
        self.info: dict[str, Any] = (
            json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
        )

    def run(self, signature_name: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs one signature on numpy inputs.

        Args:
          signature_name: e.g. "serving_default".
          inputs: one array per signature input (already checked against its spec).

        Returns:
          One numpy array per signature output.

        Raises:
          KeyError: unknown signature.
          tensorflow.errors.InvalidArgumentError: the graph rejected the data (e.g. an
            undecodable image).
        """
        function = self._functions[signature_name]
        specs = self.signatures[signature_name].inputs
        feed = {
            key: self._tf.constant(value, dtype=self._tf.as_dtype(specs[key].tf_dtype))
            for key, value in inputs.items()
        }
        outputs = function(**feed)
        return {key: tensor.numpy() for key, tensor in outputs.items()}

    def signature_def_map(self):
        """The SavedModel's SignatureDefs as a `tensorflow_serving.apis.SignatureDefMap`."""
        from tensorflow.core.protobuf import saved_model_pb2
        from tensorflow_serving.apis import get_model_metadata_pb2

        saved_model = saved_model_pb2.SavedModel()
        saved_model.ParseFromString((self.path / SAVED_MODEL_FILE).read_bytes())
        result = get_model_metadata_pb2.SignatureDefMap()
        for meta_graph in saved_model.meta_graphs:
            if "serve" not in meta_graph.meta_info_def.tags:
                continue
            for key, signature in meta_graph.signature_def.items():
                if not key.startswith("__"):
                    result.signature_def[key].CopyFrom(signature)
        return result

    def warm_up(self) -> None:
        """Runs one prediction on a small generated image so the first request is fast."""
        signature = self.signatures.get(DEFAULT_SIGNATURE)
        if signature is None or list(signature.inputs) != ["image_bytes"]:
            return
        from PIL import Image

        from histopath.images import encode_png

        size = model_image_size(self.info)
        rng = np.random.default_rng(0)
        pixels = rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)
        png = encode_png(Image.fromarray(pixels))
        self.run(DEFAULT_SIGNATURE, {"image_bytes": np.array([png], dtype=object)})


def _signature_info(name: str, function) -> SignatureInfo:
    _, input_specs = function.structured_input_signature
    inputs = {key: _tensor_info(key, spec) for key, spec in sorted(input_specs.items())}
    outputs = {
        key: _tensor_info(key, spec) for key, spec in sorted(function.structured_outputs.items())
    }
    return SignatureInfo(name=name, inputs=inputs, outputs=outputs)


def _tensor_info(name: str, spec) -> TensorInfo:
    shape = tuple(spec.shape.as_list()) if spec.shape.rank is not None else ()
    return TensorInfo(
        name=name,
        dtype="object" if spec.dtype.name == "string" else spec.dtype.as_numpy_dtype.__name__,
        tf_dtype=spec.dtype.name,
        shape=shape,
    )


@dataclasses.dataclass(frozen=True)
class VersionFailure:
    """A version that exists but could not be loaded (yet).

    Attributes:
      version: the version number.
      message: the load error.
      attempts: how many loads failed.
      retry_at: `time.monotonic()` after which it is tried again.
      files: what the folder held at the last attempt (a changed folder is retried at once).
    """

    version: int
    message: str
    attempts: int = 1
    retry_at: float = 0.0
    files: tuple = ()


RETRY_BASE_S = 2.0  # the first retry of a failed version, doubled after each failure
RETRY_MAX_S = 300.0  # the longest wait between two retries
PROBE_INTERVAL_S = 30.0  # how often the served version is asked to answer one prediction


_ABSOLUTE_PATH = re.compile(r"(?<![\w>])/[^\s'\",;()]+")


def public_message(error: BaseException, base_path: pathlib.Path) -> str:
    """The first line of an error for clients (status answers): the serving folder shown
    as `<model base path>`, any other absolute path as `<path>` (the log has them all)."""
    text = f"{type(error).__name__}: {error}".splitlines()[0] if str(error) else type(error).__name__
    for root in sorted({str(base_path.resolve()), str(base_path.absolute()), str(base_path)}, key=len, reverse=True):
        if root not in (".", "/"):
            text = text.replace(root, "<model base path>")
    return _ABSOLUTE_PATH.sub("<path>", text)[:500]


def _folder_state(folder: pathlib.Path) -> tuple:
    """(relative path, size, mtime) of every file: a copy still in progress changes it."""
    entries = []
    for path in sorted(folder.rglob("*")):
        try:
            stat = path.stat()
        except OSError:
            continue
        if path.is_file():
            entries.append((str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns))
    return tuple(entries)


class ModelStore:
    """Holds the newest loadable version of one model and swaps in newer ones.

    A version that fails to load (a push still copying its variables, say) is retried
    with a growing delay, and at once when its files change, until it loads or a newer
    version replaces it; the served version keeps answering meanwhile. `probe` checks that
    the served version still answers.

    Args:
      base_path: the serving folder (`<base_path>/<model_name>/<version>/`).
      model_name: the model's name.
      warm_up: run one prediction on every newly loaded version before swapping it in.
    """

    def __init__(self, base_path: pathlib.Path | str, model_name: str, *, warm_up: bool = True):
        self.base_path = pathlib.Path(base_path)
        self.model_name = model_name
        self.model_dir = self.base_path / model_name
        self._warm_up = warm_up
        self._current: LoadedModel | None = None
        self._failures: dict[int, VersionFailure] = {}
        self._load_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_check = 0.0
        self.health_error: str | None = None  # why the served version did not answer its last probe

    @property
    def current(self) -> LoadedModel | None:
        """The version being served (None until one has loaded)."""
        return self._current

    @property
    def failures(self) -> list[VersionFailure]:
        """Versions newer than the served one that failed to load, oldest first."""
        served = self._current.version if self._current else 0
        return [self._failures[key] for key in sorted(self._failures) if key > served]

    def _due(self, version: int, now: float, files: tuple) -> bool:
        """Whether to try `version` (whose folder now holds `files`) at `now`."""
        failure = self._failures.get(version)
        return failure is None or now >= failure.retry_at or files != failure.files

    def refresh(self) -> bool:
        """Loads the newest complete version if it is newer than the served one.

        Never raises for a bad version: the previous one keeps serving, and the bad one is
        retried later (`RETRY_BASE_S`, doubling up to `RETRY_MAX_S`, or as soon as its files
        change).

        Returns:
          True when a new version was swapped in.
        """
        with self._load_lock:
            now = self._last_check = time.monotonic()
            current_version = self._current.version if self._current else 0
            newer = [version for version in list_versions(str(self.model_dir)) if version > current_version]
            states = {version: _folder_state(self.model_dir / str(version)) for version in newer}
            candidates = [version for version in newer if self._due(version, now, states[version])]
            for version in reversed(candidates):  # newest first; fall back to older ones
                path = self.model_dir / str(version)
                started = time.perf_counter()
                files = states[version]
                try:
                    loaded = LoadedModel(self.model_name, version, path)
                    if self._warm_up:
                        loaded.warm_up()
                except Exception as error:  # noqa: BLE001  (any broken push must not kill serving)
                    message = public_message(error, self.base_path)
                    attempts = self._failures[version].attempts + 1 if version in self._failures else 1
                    delay = min(RETRY_MAX_S, RETRY_BASE_S * 2 ** (attempts - 1))
                    logger.error("cannot load %s version %d from %s (attempt %d, retry in %.0f s): %s",
                                 self.model_name, version, path, attempts, delay, error)
                    self._failures[version] = VersionFailure(version, message, attempts, now + delay, files)
                    continue
                self._failures.pop(version, None)
                self._current, self.health_error = loaded, None
                logger.info(
                    "serving %s version %d from %s (loaded in %.1f s)",
                    self.model_name, version, path, time.perf_counter() - started,
                )
                return True
            return False

    def probe(self) -> bool:
        """Runs one prediction on the served version; False (with `health_error`) when it
        does not answer."""
        loaded = self._current
        if loaded is None:
            return False
        try:
            loaded.warm_up()
        except Exception as error:  # noqa: BLE001
            self.health_error = public_message(error, self.base_path)
            logger.error("%s version %d does not answer: %s", self.model_name, loaded.version, self.health_error)
            return False
        self.health_error = None
        return True

    def refresh_if_due(self, interval_s: float) -> None:
        """Calls `refresh` when the last check is older than `interval_s` (for lazy polling)."""
        if time.monotonic() - self._last_check >= interval_s:
            self.refresh()

    def start_polling(self, interval_s: float) -> None:
        """Starts a daemon thread that calls `refresh` every `interval_s` seconds."""
        if self._thread is not None:
            return

        def poll() -> None:
            last_probe = time.monotonic()
            while not self._stop.wait(interval_s):
                try:
                    if self.refresh():
                        last_probe = time.monotonic()
                    elif time.monotonic() - last_probe >= PROBE_INTERVAL_S:
                        self.probe()
                        last_probe = time.monotonic()
                except Exception:  # noqa: BLE001
                    logger.exception("model folder poll failed")

        self._thread = threading.Thread(target=poll, name=f"poll-{self.model_name}", daemon=True)
        self._thread.start()

    def stop_polling(self) -> None:
        """Stops the polling thread."""
        self._stop.set()
