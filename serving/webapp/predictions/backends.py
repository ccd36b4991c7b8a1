"""Where the web app gets predictions: the embedded model or a TF Serving endpoint.

- `EmbeddedBackend` (default): loads the newest pushed version from
  `HISTOPATH_SERVING_DIR` in this process and swaps in newer versions as they are pushed.
- `TFServingBackend` (when `TF_SERVING_URL` is set): calls TF Serving's REST predict API
  (`<url>/v1/models/<name>:predict`, row format with `{"b64": ...}`), which both TensorFlow
  Serving and `histopath model-server` answer. The version comes from the model server's
  `x-model-version` header, or else from the status endpoint. A slide is called by one
  version, with what that version says of itself (threshold, "not sure" band, scale:
  its `model_info` signature).
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import threading
import time

import numpy as np
from django.conf import settings

from histopath.models.exported import (
    MODEL_INFO_REQUEST,
    NO_TISSUE,
    NOT_SURE,
    SERVING_MODEL_INFO,
    TISSUE_DETECTED,
    TISSUE_FRACTION,
    UNCERTAINTY,
)
from histopath.serving.model_store import VERSION_HEADER

logger = logging.getLogger(__name__)

LABEL_NAMES = ("benign", "malignant")


class BackendError(Exception):
    """No model is available or the model server failed; shown as a 503 page."""


class VersionReplaced(BackendError):
    """The model version a slide job was calling is no longer served (a newer one replaced
    it): the job starts again on the newest version."""


class ImageRejected(Exception):
    """The model could not use the image (the user's problem: shown on the form, 400)."""


@dataclasses.dataclass(frozen=True)
class ModelAnswer:
    """One prediction and who made it.

    Attributes:
      probability: probability of malignant (meaningless without tissue).
      label: 0 benign, 1 malignant (the model's own decision threshold); None when the
        image shows no tissue.
      label_name: "benign", "malignant" or "no tissue detected".
      model_name: the served model's name.
      model_version: the version that answered.
      attention: MIL attention per tile (row-major), None for a whole-image model.
      grid_shape: MIL tile grid (rows, cols), None for a whole-image model.
      tile_probability: P(malignant) of each tile from a MIL model's instance classifier
        (row-major), None when the model has none.
      not_sure: the probability is inside the model's "not sure" band: the answer is
        "needs a pathologist's review" (the label is then only the model's leaning).
      uncertainty: 1 at the decision threshold, 0 at probability 0 or 1; None from a model
        exported without it.
    """

    probability: float
    label: int
    label_name: str
    model_name: str
    model_version: str
    attention: tuple[float, ...] | None = None
    grid_shape: tuple[int, int] | None = None
    tile_probability: tuple[float, ...] | None = None
    tissue_detected: bool = True
    tissue_fraction: float | None = None
    not_sure: bool = False
    uncertainty: float | None = None


def _answer(outputs: dict, model_name: str, version: str, label_names) -> ModelAnswer:
    tissue_detected = bool(outputs.get(TISSUE_DETECTED, 1))
    label = int(outputs["label"]) if tissue_detected else None
    fraction = outputs.get(TISSUE_FRACTION)
    attention = outputs.get("attention")
    grid = outputs.get("grid_shape")
    tiles = outputs.get("tile_probability")
    return ModelAnswer(
        probability=float(outputs["probability"]),
        label=label,
        label_name=str(label_names[label]) if tissue_detected else NO_TISSUE,
        model_name=model_name,
        model_version=version,
        attention=tuple(float(value) for value in attention) if attention is not None else None,
        grid_shape=(int(grid[0]), int(grid[1])) if grid is not None else None,
        tile_probability=tuple(float(value) for value in tiles) if tiles is not None else None,
        tissue_detected=tissue_detected,
        tissue_fraction=float(fraction) if fraction is not None else None,
        not_sure=bool(outputs.get(NOT_SURE, 0)) and tissue_detected,
        uncertainty=float(outputs[UNCERTAINTY]) if UNCERTAINTY in outputs else None,
    )


class EmbeddedBackend:
    """Predicts with the newest pushed SavedModel loaded in this process.

    Args:
      serving_dir: `<serving_dir>/<model_name>/<version>/`.
      model_name: the model folder name.
      reload_interval_s: how often to look for a newer version (background thread).
    """

    def __init__(self, serving_dir: str, model_name: str, reload_interval_s: float):
        from histopath.serving.model_store import ModelStore

        self.model_name = model_name
        self.store = ModelStore(serving_dir, model_name)
        self._interval = reload_interval_s
        self._started = False
        self._start_lock = threading.Lock()

    def _ensure_loaded(self):
        if self.store.current is None:
            self.store.refresh()
        with self._start_lock:
            if not self._started:  # started lazily: gunicorn workers are forked processes
                self.store.start_polling(self._interval)
                self._started = True
        loaded = self.store.current
        if loaded is None:
            raise BackendError(
                f"no model has been pushed yet (nothing under {self.store.model_dir})"
            )
        return loaded

    def warm_up(self) -> None:
        """Loads the model now (called when a gunicorn worker starts)."""
        try:
            self._ensure_loaded()
        except BackendError:
            pass

    def predict(self, image_bytes: bytes) -> ModelAnswer:
        """Classifies one encoded image (PNG/JPEG/BMP/GIF)."""
        import tensorflow as tf

        loaded = self._ensure_loaded()
        try:
            outputs = loaded.run("serving_default", {"image_bytes": np.array([image_bytes], dtype=object)})
        except (tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError, tf.errors.UnknownError) as error:
            from histopath.models.exported import error_reason

            raise ImageRejected(f"the model could not read the image ({error_reason(error)})") from None
        first = {key: value[0] for key, value in outputs.items()}
        label_names = loaded.info.get("label_names") or LABEL_NAMES
        return _answer(first, self.model_name, str(loaded.version), label_names)

    def tile_model(self, fresh: bool = False):
        """The loaded version as a `slide_predict.TileModel` (one batch of tiles per call).
        It holds that version for the whole slide, even when a newer one is swapped in
        (`fresh` changes nothing here).

        Raises:
          BackendError: no model has been pushed.
        """
        return _embedded_tile_model(self)


def _tile_rows(outputs: dict, count: int) -> list[dict]:
    """Per tile, what `slide_predict` reads of a batch's outputs (`exported.predict_bytes`'s rows)."""
    rows = []
    for index in range(count):
        rows.append({"probability": float(outputs["probability"][index]),
                     TISSUE_DETECTED: bool(outputs[TISSUE_DETECTED][index]) if TISSUE_DETECTED in outputs else True})
    return rows


def _embedded_tile_model(backend: "EmbeddedBackend"):
    from histopath.evaluation.slide_predict import TileModel
    from histopath.errors import DataError

    loaded = backend._ensure_loaded()

    def predict(images: list[bytes], names: list[str]) -> list[dict]:
        import tensorflow as tf

        try:
            outputs = loaded.run("serving_default", {"image_bytes": np.array(images, dtype=object)})
        except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as error:
            from histopath.models.exported import error_reason

            raise DataError(f"{names[0]} ...: the model could not read the tiles ({error_reason(error)})") from None
        return _tile_rows(outputs, len(images))

    return TileModel(loaded.info, backend.model_name, str(loaded.version), predict)


def _dropped_connection_retry_class():
    from urllib3.exceptions import ReadTimeoutError
    from urllib3.util.retry import Retry

    class DroppedConnectionRetry(Retry):
        """urllib3's `Retry` that never repeats a request whose answer timed out."""

        def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
            if isinstance(error, ReadTimeoutError):
                raise error
            return super().increment(method, url, response, error, _pool, _stacktrace)

    return DroppedConnectionRetry


class TFServingBackend:
    """Predicts through a TF Serving (or `histopath model-server`) REST endpoint.

    Args:
      base_url: e.g. "http://model-server:8501".
      model_name: the served model name.
      timeout_s: per-request timeout.
    """

    def __init__(self, base_url: str, model_name: str, timeout_s: float = 30.0):
        import requests
        from requests.adapters import HTTPAdapter

        self.base_url = base_url.rstrip("/")
        self.model_name = model_name
        self.timeout_s = timeout_s
        self._session = requests.Session()
        # A pooled keep-alive connection the model server closed while idle fails the next
        # request at once (reset, or closed without an answer): send it again on a fresh
        # connection. A prediction changes nothing, so a POST may be repeated; an answer
        # that did arrive (any status) is never repeated, and neither is a timeout.
        retry = _dropped_connection_retry_class()(
            total=2, connect=2, read=1, status=0, other=0, redirect=0,
            allowed_methods=frozenset({"GET", "POST"}), raise_on_status=False)
        adapter = HTTPAdapter(max_retries=retry, pool_maxsize=32)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._status_cache: tuple[float, str] | None = None

    def _status_version(self) -> str:
        if self._status_cache and time.monotonic() - self._status_cache[0] < 2.0:
            return self._status_cache[1]
        response = self._session.get(f"{self.base_url}/v1/models/{self.model_name}", timeout=self.timeout_s)
        response.raise_for_status()
        available = [
            int(entry["version"])
            for entry in response.json().get("model_version_status", [])
            if entry.get("state") == "AVAILABLE"
        ]
        version = str(max(available)) if available else "unknown"
        self._status_cache = (time.monotonic(), version)
        return version

    def warm_up(self) -> None:
        """Nothing to load in this process."""

    def predict(self, image_bytes: bytes) -> ModelAnswer:
        """Classifies one encoded image through the REST predict API."""
        import requests

        body = {"instances": [{"b64": base64.b64encode(image_bytes).decode("ascii")}]}
        response = self._post_predict(body, None, self.timeout_s)
        if response.status_code != 200:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text[:200]
            if response.status_code == 400:
                raise ImageRejected(f"the model server rejected the image ({message})")
            raise BackendError(f"the model server answered HTTP {response.status_code}: {message}")
        prediction = response.json()["predictions"][0]
        if not isinstance(prediction, dict):
            raise BackendError("the model server's signature has a single output; expected probability and label")
        version = response.headers.get(VERSION_HEADER)
        if not version:
            try:
                version = self._status_version()
            except (requests.RequestException, ValueError):
                version = "unknown"
        return _answer(prediction, self.model_name, version, LABEL_NAMES)


    def _post_predict(self, body: dict, version: str | None, timeout_s: float):
        """POSTs `body` to the predict API of `version` (None: the newest).

        Raises:
          VersionReplaced: `version` is no longer served (404).
          BackendError: the model server is unreachable.
        """
        import requests

        pinned = f"/versions/{version}" if version and version.isdigit() else ""
        url = f"{self.base_url}/v1/models/{self.model_name}{pinned}:predict"
        try:
            response = self._session.post(url, json=body, timeout=timeout_s)
        except requests.RequestException as error:
            raise BackendError(f"the model server at {self.base_url} is unreachable ({type(error).__name__})") from None
        if response.status_code == 404 and pinned:
            raise VersionReplaced(f"model {self.model_name} version {version} is no longer served")
        return response

    def predict_tiles(self, images: list[bytes], names: list[str], version: str | None = None) -> list[dict]:
        """One batch of encoded tiles through TF Serving's REST predict API (row format).

        Args:
          images: encoded tiles.
          names: their names, for messages.
          version: the model version to ask (None: the newest the server has).

        Raises:
          VersionReplaced: `version` is no longer served.
          BackendError: the model server is unreachable or answered an error.
        """
        body = {"instances": [{"b64": base64.b64encode(image).decode("ascii")} for image in images]}
        response = self._post_predict(body, version, max(self.timeout_s, 120.0))
        if response.status_code != 200:
            raise BackendError(f"the model server answered HTTP {response.status_code} to a batch of tiles "
                               f"from {names[0]}: {response.text[:200]}")
        predictions = response.json()["predictions"]
        if len(predictions) != len(images) or not all(isinstance(row, dict) for row in predictions):
            raise BackendError("the model server's answer does not have one probability and label per tile")
        outputs = {key: [row.get(key) for row in predictions] for key in ("probability", TISSUE_DETECTED)
                   if all(key in row for row in predictions)}
        return _tile_rows(outputs, len(images))

    def served_model_info(self, version: str | None = None) -> dict:
        """What the served model says of itself (its `model_info` signature: threshold,
        "not sure" band, scale); {} for a model exported before it had that signature.

        Raises:
          BackendError: the model server is unreachable, answered another error, or its
            answer is not a model description.
        """
        import json

        body = {"signature_name": SERVING_MODEL_INFO, "instances": [{MODEL_INFO_REQUEST: ""}]}
        response = self._post_predict(body, version, self.timeout_s)
        if response.status_code == 400 and SERVING_MODEL_INFO in response.text:
            logger.warning("model %s (version %s) has no %r signature: slides are called at threshold 0.5 "
                           "without a \"not sure\" band", self.model_name, version, SERVING_MODEL_INFO)
            return {}
        if response.status_code != 200:
            raise BackendError(f"the model server answered HTTP {response.status_code} to the model's "
                               f"description: {response.text[:200]}")
        try:
            (described,) = response.json()["predictions"]
            if isinstance(described, dict):  # a server that names even a lone output
                described = described[SERVING_MODEL_INFO]
            info = json.loads(described)
        except (ValueError, KeyError, TypeError):
            info = None
        if not isinstance(info, dict):
            raise BackendError("the model server's answer to the model's description is not a JSON object")
        return info

    def tile_model(self, fresh: bool = False):
        """This endpoint as a `slide_predict.TileModel`: one model version calls every tile
        of a slide, with the threshold, band and scale that version describes (scale
        settings `HISTOPATH_SLIDE_MODEL_MPP` / `HISTOPATH_SLIDE_TILE_PX` take precedence).

        Args:
          fresh: ask the server for its newest version now (not the status read in the
            last seconds).

        Raises:
          VersionReplaced: that version stopped being served (call again with `fresh`).
          BackendError: the model server is unreachable or failed.
        """
        import functools

        import requests

        from histopath.evaluation.slide_predict import TileModel

        if fresh:
            self._status_cache = None
        try:
            version = self._status_version()
        except (requests.RequestException, ValueError):
            version = "unknown"
        pinned = version if version.isdigit() else None
        info = {"label_names": list(LABEL_NAMES), **self.served_model_info(pinned)}
        return TileModel(info, self.model_name, version, functools.partial(self.predict_tiles, version=pinned))


_backends: dict[tuple, object] = {}
_backends_lock = threading.Lock()


def get_backend():
    """The backend the current settings select (one per process and configuration)."""
    key = (
        settings.TF_SERVING_URL,
        str(settings.HISTOPATH_SERVING_DIR),
        settings.HISTOPATH_MODEL_NAME,
    )
    with _backends_lock:
        backend = _backends.get(key)
        if backend is None:
            if settings.TF_SERVING_URL:
                backend = TFServingBackend(settings.TF_SERVING_URL, settings.HISTOPATH_MODEL_NAME)
            else:
                backend = EmbeddedBackend(
                    settings.HISTOPATH_SERVING_DIR,
                    settings.HISTOPATH_MODEL_NAME,
                    settings.HISTOPATH_RELOAD_INTERVAL,
                )
            _backends[key] = backend
        return backend
