"""The exported-model contract: where a pushed model lives and how it is read.

    <serving dir>/<model name>/<version>/saved_model.pb, variables/      a SavedModel
    <serving dir>/<model name>/<version>/assets.extra/model_info.json   what the model is

A version is a folder named by a positive integer that holds `saved_model.pb` (the file a
model server waits for, so a push in progress is never picked up). Its signatures:

- `serving_default`: `image_bytes` tf.string [None] (encoded PNG/JPEG of any size);
- `serving_examples`: `examples` tf.string [None] (serialized tf.train.Example with the
  `features.IMAGE` feature);

both returning `probability` float32 [None], `label` int64 [None] (probability >= the
model's decision threshold), `decision_score` float32 [None], `tissue_fraction` float32
[None], `tissue_detected` int64 [None] (0: no tissue, so no class), `uncertainty` float32
[None] (1 at the threshold, 0 at probability 0 or 1) and `not_sure` int64 [None] (1: the
probability is inside the model's abstention band, `model_info["abstention"]`: the answer
is "not sure — needs a pathologist's review"; 0 for an image without tissue) and, for MIL models,
`attention` float32 [None, n_tiles], `grid_shape` int32 [None, 2] and, with an instance
classifier, `tile_probability` float32 [None, n_tiles].

- `model_info`: `request` tf.string [1] (its value unused) returning `model_info` tf.string
  [1], the JSON of `served_model_info(model_info.json)`: what a caller needs of the model
  (threshold, "not sure" band, scale, aggregation) when it reaches the model only through a
  model server, which does not serve `assets.extra`; not how it was trained (no patient
  ids, no storage paths).

`models.export` writes this layout; the CLI (`evaluate`, `predict`), the model server and the
web app read it here.
Paths may be local or URIs (`histopath.fileio`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Sequence

from histopath import fileio
from histopath.data import features
from histopath.errors import DataError

SAVED_MODEL_FILE = "saved_model.pb"
# How a pushed model's version number is chosen: seconds since the epoch (TFX's default), or
# one more than the highest version in the model folder.
VERSION_POLICIES = ("timestamp", "increment")
MODEL_INFO_PATH = "assets.extra/model_info.json"
SERVING_DEFAULT = "serving_default"
SERVING_EXAMPLES = "serving_examples"
SERVING_MODEL_INFO = "model_info"  # signature, and its output: the served part of model_info
MODEL_INFO_REQUEST = "request"  # that signature's input (values unused)
# What the `model_info` signature answers anyone who can reach the model server: how to call
# the model and read its answers. Training records (folds and their patient ids, history,
# the paths it was trained in) stay in the model's files.
# Keys served whole, then keys of which only some fields are served.
SERVED_MODEL_INFO_KEYS = (
    "model_kind", "model_name", "dataset", "created", "image_size", "transform_size", "tile_size", "grid_shape",
    "tissue_masking", "min_tissue_fraction", "mpp", "tile_px", "test_time_augmentation", "decision_threshold",
    "label_names", "signatures", "outputs",
)
SERVED_MODEL_INFO_FIELDS = {
    "abstention": ("low", "high"),
    "slide_aggregation": ("name", "parameter", "threshold"),
    "slide_context": ("sigma", "grid_step", "decision_threshold"),
}
TILE_PROBABILITY = "tile_probability"
TISSUE_FRACTION = "tissue_fraction"  # share of tissue pixels in the image the model saw
NO_TISSUE = "no tissue detected"  # what a caller shows instead of a class
NO_CLASS = -1  # the exported `label` of an image without tissue
TISSUE_DETECTED = "tissue_detected"  # 1 when that share reaches the model's minimum: only then is it classified
UNCERTAINTY = "uncertainty"  # 1 at the decision threshold, 0 at probability 0 or 1
NOT_SURE = "not_sure"  # 1: inside the abstention band, "needs a pathologist's review"
NOT_SURE_TEXT = "Not sure — needs a pathologist's review"  # what a caller shows for it


def served_model_info(info: Mapping[str, Any]) -> Dict[str, Any]:
    """The part of a model's `model_info` its `model_info` signature serves
    (`SERVED_MODEL_INFO_KEYS`, and the `SERVED_MODEL_INFO_FIELDS` of the others)."""
    served = {key: info[key] for key in SERVED_MODEL_INFO_KEYS if key in info}
    for key, fields in SERVED_MODEL_INFO_FIELDS.items():
        if isinstance(info.get(key), Mapping):
            served[key] = {field: info[key][field] for field in fields if field in info[key]}
    return served


def version_number(name: str) -> Optional[int]:
    """The version a folder name stands for: a positive integer, else None."""
    return int(name) if name.isascii() and name.isdigit() and int(name) > 0 else None


def used_versions(model_dir: str) -> list[int]:
    """Every integer-named folder under `<serving dir>/<model name>`, complete or not
    (a new push must take none of these numbers), ascending."""
    return sorted(v for v in map(version_number, fileio.listdir(model_dir)) if v is not None)


def list_versions(model_dir: str) -> list[int]:
    """The complete versions under `<serving dir>/<model name>`, ascending: integer-named
    folders holding `saved_model.pb`; [] when the folder does not exist."""
    return [v for v in used_versions(model_dir)
            if fileio.exists(fileio.join(model_dir, str(v), SAVED_MODEL_FILE))]


def resolve_version_dir(model_dir: str) -> str:
    """The version folder of a pushed model.

    Args:
      model_dir: a `<name>/<version>` folder (holds `saved_model.pb`) or its parent
        `<name>`, in which case the newest complete version is used.

    Raises:
      DataError: the folder is missing or holds no exported model.
    """
    path = fileio.absolute(model_dir)
    if not fileio.isdir(path):
        raise DataError(f"model folder {path} does not exist")
    if fileio.exists(fileio.join(path, SAVED_MODEL_FILE)):
        return path
    versions = list_versions(path)
    if not versions:
        raise DataError(
            f"{path} is neither a model version folder (no {SAVED_MODEL_FILE}) nor a model "
            f"folder with integer version sub-folders such as {fileio.join(path, '1')}"
        )
    return fileio.join(path, str(versions[-1]))


def read_model_info(model_dir: str) -> Dict[str, Any]:
    """`assets.extra/model_info.json` of a version folder (or of the newest version of a
    model folder), without loading the model.

    Raises:
      DataError: no exported model, or the description is unreadable.
    """
    path = fileio.join(resolve_version_dir(model_dir), MODEL_INFO_PATH)
    try:
        return fileio.read_json(path)
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: cannot read the model description ({error})") from None
    except Exception as error:  # tf.errors.NotFoundError and friends
        raise DataError(f"{path}: cannot read the model description ({error})") from None


def model_image_size(info: Mapping[str, Any]) -> int:
    """The exported model's square input edge in pixels (`model_info["image_size"]`).

    Raises:
      DataError: the description gives no size.
    """
    size = info.get("image_size")
    if isinstance(size, list):  # exports before square inputs were required: [height, width]
        size = size[0]
    if not size:
        raise DataError(f"model {info.get('model_name', '?')}: model_info.json gives no image_size")
    return int(size)


@dataclasses.dataclass
class ServingModel:
    """An exported model loaded for in-process prediction.

    Attributes:
      path: the version folder.
      model_info: contents of `assets.extra/model_info.json`.
      saved_model: the `tf.saved_model.load` result (keeps the signatures alive).
    """

    path: str
    model_info: Dict[str, Any]
    saved_model: Any

    @property
    def serving_fn(self):
        """The `serving_default` concrete function."""
        return self.saved_model.signatures[SERVING_DEFAULT]

    @property
    def examples_fn(self):
        """The `serving_examples` concrete function."""
        return self.saved_model.signatures[SERVING_EXAMPLES]


def load(model_dir: str) -> ServingModel:
    """Loads a version folder, or the newest version of a model folder.

    Raises:
      DataError: the folder is missing or not an exported model of this project.
    """
    import histopath  # noqa: F401  (pins Keras 2 before TensorFlow is imported)
    import tensorflow as tf

    path = resolve_version_dir(model_dir)
    if not fileio.exists(fileio.join(path, MODEL_INFO_PATH)):
        raise DataError(f"{path}: missing {MODEL_INFO_PATH}; not a histopath exported model")
    info = read_model_info(path)
    loaded = tf.saved_model.load(path)
    missing = {SERVING_DEFAULT, SERVING_EXAMPLES} - set(loaded.signatures)
    if missing:
        raise DataError(f"{path}: SavedModel lacks signature(s) {sorted(missing)}")
    return ServingModel(path=path, model_info=info, saved_model=loaded)


def error_reason(error: Exception) -> str:
    """The human part of a TF runtime error (drops node names and stack headers)."""
    skipped = ("Graph execution error", "Detected at node", "<stack traces", "[[", "\t")
    message = getattr(error, "message", None) or str(error)
    lines = [line.strip() for line in message.splitlines()
             if line.strip() and not line.lstrip().startswith(skipped) and not line.startswith("\t")]
    return lines[-1] if lines else message.strip()


def predict_bytes(
    loaded: ServingModel, images: Sequence[bytes], names: Optional[Sequence[str]] = None
) -> List[Dict[str, Any]]:
    """Runs `serving_default` on encoded images.

    Args:
      loaded: from `load`.
      images: encoded PNG/JPEG/... files.
      names: optional names of the images (e.g. file names) for error messages.

    Returns:
      One dict per image: "probability" (float), "label" (int), "label_name" (str),
      "tissue_fraction", "tissue_detected", "uncertainty" (float), "not_sure" (bool) and,
      for MIL models, "attention" (list of floats, row-major tiles) and "grid_shape"
      ([rows, cols]), and "tile_probability" (list of floats) when the model has it.

    Raises:
      DataError: an image cannot be decoded (the message names it).
    """
    import tensorflow as tf

    if not images:
        return []
    try:
        outputs = loaded.serving_fn(image_bytes=tf.constant(list(images), dtype=tf.string))
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as error:
        # Find which image is bad, to name it.
        for index, image in enumerate(images):
            try:
                loaded.serving_fn(image_bytes=tf.constant([image], dtype=tf.string))
            except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as single_error:
                name = names[index] if names is not None else f"image #{index}"
                reason = error_reason(single_error)
                raise DataError(f"{name}: cannot decode image ({reason})") from error
        raise DataError(f"prediction failed: {error_reason(error)}") from error
    label_names = loaded.model_info.get("label_names", list(features.LABEL_NAMES))
    results = []
    for index in range(len(images)):
        label = int(outputs["label"][index])
        row = {
            "probability": float(outputs["probability"][index]),
            "label": label if label != NO_CLASS else None,
            "label_name": label_names[label] if label != NO_CLASS else NO_TISSUE,
        }
        if TISSUE_DETECTED in outputs:
            row[TISSUE_FRACTION] = float(outputs[TISSUE_FRACTION][index])
            row[TISSUE_DETECTED] = bool(outputs[TISSUE_DETECTED][index])
            if not row[TISSUE_DETECTED]:  # an answer without tissue is no answer
                row.update(label=None, label_name=NO_TISSUE)
        if NOT_SURE in outputs:  # models exported before the band have neither
            row[UNCERTAINTY] = float(outputs[UNCERTAINTY][index])
            row[NOT_SURE] = bool(outputs[NOT_SURE][index])
        if "attention" in outputs:
            row["attention"] = [float(a) for a in outputs["attention"][index].numpy()]
            row["grid_shape"] = [int(g) for g in outputs["grid_shape"][index].numpy()]
        if TILE_PROBABILITY in outputs:
            row[TILE_PROBABILITY] = [float(p) for p in outputs[TILE_PROBABILITY][index].numpy()]
        results.append(row)
    return results


def describe(loaded: ServingModel) -> Dict[str, Any]:
    """Name, version, kind, threshold and path of a loaded model, for outputs."""
    info = loaded.model_info
    return {
        "model_name": info.get("model_name") or fileio.basename(fileio.parent(loaded.path)),
        "model_version": version_number(fileio.basename(loaded.path)),
        "model_kind": info.get("model_kind"),
        "decision_threshold": info.get("decision_threshold"),
        "path": loaded.path,
    }
