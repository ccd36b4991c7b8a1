"""Writes a trained model as the exported serving model (layout and signatures: the
contract in `models.exported`).

The two image signatures share one traced model call; a third, `model_info`, answers the
model's own description for callers that reach it only through a model server.
`decision_score` is the probability re-centred so the decision threshold maps to 0.5 (for
TFMA); `uncertainty` and `not_sure` come from the abstention band stored at export
(`models.abstention`). A model exported with test-time augmentation returns means over the
8 symmetries of the square (`make_predictor`).

The Keras model is NOT serialised as Keras layers (that traces each of DenseNet201's 707
layers again, minutes on this CPU); the SavedModel holds its variables and the traced
signatures, which is all TF Serving, KServe and TFMA (`signature_name`) need.
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import tensorflow as tf
import tf_keras as keras

from histopath import fileio
from histopath.data import features
from histopath.errors import ConfigError
from histopath.models import abstention, image_ops, mil
from histopath.models import registry
from histopath.models.exported import (
    MODEL_INFO_PATH,
    MODEL_INFO_REQUEST,
    NO_CLASS,
    NOT_SURE,
    SAVED_MODEL_FILE,
    SERVING_DEFAULT,
    SERVING_EXAMPLES,
    SERVING_MODEL_INFO,
    TILE_PROBABILITY,
    TISSUE_DETECTED,
    TISSUE_FRACTION,
    UNCERTAINTY,
    served_model_info,
)
from histopath.models.keras_utils import skip_autograph_for_tf_keras

skip_autograph_for_tf_keras()



def _decision_score(probability: tf.Tensor, threshold: tf.Tensor) -> tf.Tensor:
    """The probability re-centred so the decision threshold maps to 0.5.

    `sigmoid(logit(p) - logit(t))`: strictly increasing in `p` (same ROC and AUC), and
    `>= 0.5` exactly when `label` is 1, so TFMA's confusion-matrix metrics, computed at
    0.5, describe the model at its own operating point.
    """
    epsilon = 1e-7
    logit = lambda x: tf.math.log(x) - tf.math.log1p(-x)  # noqa: E731
    p = tf.clip_by_value(probability, epsilon, 1.0 - epsilon)
    t = tf.clip_by_value(threshold, epsilon, 1.0 - epsilon)
    return tf.sigmoid(logit(p) - logit(t))


def _uncertainty(probability: tf.Tensor, threshold: tf.Tensor) -> tf.Tensor:
    """`abstention.uncertainty` in the graph: 1 at the threshold, 0 at 0 or 1."""
    below = tf.math.divide_no_nan(probability, threshold)
    above = tf.where(threshold < 1.0, tf.math.divide_no_nan(1.0 - probability, 1.0 - threshold),
                     tf.ones_like(probability))
    return tf.clip_by_value(tf.where(probability < threshold, below, above), 0.0, 1.0)


def tile_outputs(model: keras.Model) -> List[str]:
    """The per-tile outputs a model's signatures return, row-major over its tile grid.

    "attention" for every MIL model; "tile_probability" too for a MIL model with an
    instance classifier (`MilConfig.instance_loss_weight > 0`): each tissue tile's own
    P(malignant) from that classifier, trained from bag labels only (0 for glass tiles).
    """
    if mil.find_image_to_bag(model) is None:
        return []
    return [mil.ATTENTION] + ([TILE_PROBABILITY] if mil.INSTANCE_LOGIT in model.output_names else [])


def tile_grid_shape(model: keras.Model) -> Optional[Tuple[int, int]]:
    """(rows, columns) of a MIL model's tile grid; None for a model without tiles."""
    bagger = mil.find_image_to_bag(model)
    if bagger is None:
        return None
    height, width = model.input_shape[1:3]
    return int(height) // bagger.tile_size, int(width) // bagger.tile_size


def make_predictor(model: keras.Model, test_time_augmentation: bool = False
                   ) -> Callable[[tf.Tensor], Dict[str, tf.Tensor]]:
    """The model's prediction as exported: what the serving signatures and the Trainer's
    choice of decision threshold both compute.

    Args:
      model: built by `build_densenet_model` or `build_mil_model`.
      test_time_augmentation: average over the 8 symmetries of the square
        (`image_ops.square_symmetry`): the model sees every quarter turn of each image,
        with and without a mirror; the probability is their mean and a MIL model's
        attention is mapped back onto the original tile grid before averaging (so it still
        sums to 1 over the bag). Histology has no up or left; 8x the compute.

    Returns:
      A `tf.function` from float32 images `[B, S, S, 3]` in [0, 1] to "probability"
      float32 `[B]` and, for MIL models, "attention" float32 `[B, n_tiles]` and, with an
      instance classifier, "tile_probability" float32 `[B, n_tiles]` (see `tile_outputs`).
    """
    height, width = model.input_shape[1:3]
    grid_shape = tile_grid_shape(model)
    grid_outputs = tile_outputs(model)
    symmetries = range(image_ops.SQUARE_SYMMETRIES if test_time_augmentation else 1)  # inputs are square
    image_spec = tf.TensorSpec([None, height, width, 3], tf.float32)

    # One traced model call, invoked once per symmetry: the SavedModel holds the model's
    # graph once, and each call keeps the caller's batch size (memory as without averaging).
    @tf.function(input_signature=[image_spec])
    def call_model(images):
        outputs = model(images, training=False)
        probability = outputs[mil.PROBABILITY] if grid_shape else outputs
        result = {"probability": tf.reshape(tf.cast(probability, tf.float32), [-1])}
        if grid_shape:
            result[mil.ATTENTION] = tf.cast(outputs[mil.ATTENTION], tf.float32)
        if TILE_PROBABILITY in grid_outputs:  # glass tiles (no instance loss there) get 0
            result[TILE_PROBABILITY] = tf.sigmoid(tf.cast(outputs[mil.INSTANCE_LOGIT], tf.float32)) * tf.cast(
                outputs[mil.TISSUE_MASK], tf.float32)
        return result

    @tf.function(input_signature=[image_spec])
    def predict(images):
        probabilities, grids = [], {key: [] for key in grid_outputs}
        for index in symmetries:
            outputs = call_model(image_ops.square_symmetry(images, index) if index else images)
            probabilities.append(outputs["probability"])
            for key in grid_outputs:
                grid = tf.reshape(outputs[key], [-1, grid_shape[0], grid_shape[1], 1])
                grids[key].append(image_ops.invert_square_symmetry(grid, index))
        result = {"probability": tf.add_n(probabilities) / len(probabilities)}
        for key, maps in grids.items():
            result[key] = tf.reshape(tf.add_n(maps) / len(maps), [-1, grid_shape[0] * grid_shape[1]])
        return result

    return predict


class _ServingModule(tf.Module):
    """Holds what the signatures need: model variables, preprocessing, threshold."""

    def __init__(self, model: keras.Model, preprocess: Callable[[tf.Tensor], tf.Tensor],
                 decision_threshold: float, grid_shape: Optional[Sequence[int]],
                 test_time_augmentation: bool, band: Optional[Mapping[str, float]] = None,
                 model_info_json: str = "{}"):
        super().__init__(name="histopath_serving")
        # Track the variables (not the Keras layers): see the module docstring.
        self.model_variables = [getattr(v, "_variable", v) for v in model.variables]
        if isinstance(preprocess, tf.__internal__.tracking.Trackable):
            self.preprocess_module = preprocess  # tracks e.g. TF-Transform tables/assets
        self.decision_threshold = tf.Variable(
            float(decision_threshold), dtype=tf.float32, trainable=False, name="decision_threshold")
        if band is not None:  # "not sure" when abstain_low <= probability <= abstain_high
            self.abstain_low = tf.Variable(float(band["low"]), dtype=tf.float32, trainable=False, name="abstain_low")
            self.abstain_high = tf.Variable(float(band["high"]), dtype=tf.float32, trainable=False,
                                            name="abstain_high")
        size = model.input_shape[1:3]
        predict = make_predictor(model, test_time_augmentation)

        @tf.function(input_signature=[tf.TensorSpec([None, size[0], size[1], 3], tf.float32)])
        def predict_images(images):
            outputs = predict(images)
            probability = outputs["probability"]
            tissue = image_ops.tissue_fraction(images)
            tissue_detected = tf.cast(tissue >= image_ops.MIN_IMAGE_TISSUE_FRACTION, tf.int64)
            # An image without tissue keeps that answer: it is never "not sure".
            in_band = (tf.cast((probability >= self.abstain_low) & (probability <= self.abstain_high), tf.int64)
                       if band is not None else tf.zeros_like(tissue_detected))
            result = {
                "probability": probability,
                # No class (NO_CLASS) for an image without tissue: its raw answer says so too.
                "label": tf.where(tissue_detected == 1, tf.cast(probability >= self.decision_threshold, tf.int64),
                                  tf.constant(NO_CLASS, tf.int64)),
                "decision_score": _decision_score(probability, self.decision_threshold),
                TISSUE_FRACTION: tissue,
                TISSUE_DETECTED: tissue_detected,
                UNCERTAINTY: _uncertainty(probability, self.decision_threshold),
                NOT_SURE: in_band * tissue_detected,
            }
            if grid_shape is not None:
                result.update({key: outputs[key] for key in tile_outputs(model)})
                result["grid_shape"] = tf.tile(
                    tf.constant([list(grid_shape)], tf.int32), [tf.shape(probability)[0], 1])
            return result

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def serve_image_bytes(image_bytes):
            return predict_images(tf.cast(preprocess(image_bytes), tf.float32))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve_examples(examples):
            parsed = tf.io.parse_example(
                examples, {features.IMAGE: tf.io.FixedLenFeature([], tf.string)})
            return predict_images(tf.cast(preprocess(parsed[features.IMAGE]), tf.float32))

        # One request value, one answer: a large batch cannot multiply the answer's size.
        @tf.function(input_signature=[tf.TensorSpec([1], tf.string, name=MODEL_INFO_REQUEST)])
        def serve_model_info(request):
            del request
            return {SERVING_MODEL_INFO: tf.constant([model_info_json])}

        self.predict_images = predict_images
        self.serve_image_bytes = serve_image_bytes
        self.serve_examples = serve_examples
        self.serve_model_info = serve_model_info


def export_serving_model(
    model: keras.Model,
    export_dir: str,
    *,
    preprocess: Callable[[tf.Tensor], tf.Tensor],
    model_info: Mapping[str, Any],
    decision_threshold: float = 0.5,
    test_time_augmentation: bool = False,
    abstention_band: Optional[Mapping[str, Any]] = None,
) -> None:
    """Writes the serving SavedModel and `assets.extra/model_info.json` to `export_dir`.

    The SavedModel is written to a temporary sibling folder and renamed into place, so
    `export_dir` never holds a half-written model; an existing `export_dir` is replaced.

    Args:
      model: a trained model of a registered kind (square input).
      export_dir: the version folder, e.g. `<serving_dir>/<model_name>/<version>`.
      preprocess: maps tf.string [B] encoded images to the model input float32
        [B, S, S, 3] in [0, 1], e.g. `lambda b: image_ops.decode_and_resize(b, S)` or a
        TF-Transform layer; a `tf.Module`/Keras layer is attached to the SavedModel so
        its resources (tables, assets) are saved with it.
      model_info: at least "model_kind" (a `models.registry` kind); also "model_name",
        "dataset", ... Image size, tile size, grid shape, decision threshold, label
        names, signatures and creation time are filled in here.
      decision_threshold: probability at or above which `label` is 1 (malignant).
      test_time_augmentation: predict the mean over the 8 symmetries of the square (see
        `make_predictor`); recorded in `model_info`.
      abstention_band: the "not sure" band, `{"low", "high"}` (e.g. the result of
        `abstention.choose_band`, recorded whole as `model_info["abstention"]`): `not_sure`
        is 1 for `low <= probability <= high` when the image shows tissue. None (or a
        result without a band): `not_sure` is always 0.

    Raises:
      ConfigError: invalid `model_info`, threshold or band, or the model kind disagrees
        with the model.
    """
    info = _complete_model_info(model, model_info, decision_threshold)
    info["test_time_augmentation"] = bool(test_time_augmentation)
    try:
        band = abstention.validate_band(abstention.band_of(abstention_band))
    except ValueError as error:
        raise ConfigError(str(error)) from None
    info["abstention"] = {**(abstention_band or {}), **(band or {"low": None, "high": None})}
    grid_shape = info.get("grid_shape")
    module = _ServingModule(model, preprocess, decision_threshold, grid_shape, test_time_augmentation, band,
                            model_info_json=json.dumps(served_model_info(info), sort_keys=True))
    signatures = {
        SERVING_DEFAULT: module.serve_image_bytes.get_concrete_function(),
        SERVING_EXAMPLES: module.serve_examples.get_concrete_function(),
        SERVING_MODEL_INFO: module.serve_model_info.get_concrete_function(),
    }
    export_dir = fileio.absolute(export_dir)
    local = fileio.has_atomic_rename(export_dir)
    if local:  # written beside its destination, then renamed into place
        os.makedirs(fileio.parent(export_dir), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{fileio.basename(export_dir)}.tmp-",
                               dir=fileio.parent(export_dir) if local else None)
    try:
        tf.saved_model.save(module, staging, signatures=signatures)
        fileio.write_json(os.path.join(staging, *MODEL_INFO_PATH.split("/")), info)
        if local:
            fileio.move_into_place(staging, export_dir)
        else:  # an object store: every file copied, saved_model.pb last
            fileio.replace_tree(staging, export_dir, marker=[SAVED_MODEL_FILE])
    finally:
        fileio.remove_tree(staging)


def _complete_model_info(model: keras.Model, model_info: Mapping[str, Any], threshold: float) -> Dict[str, Any]:
    info = dict(model_info)
    kind = info.get("model_kind")
    if kind not in registry.KINDS:
        raise ConfigError(f"model_info['model_kind'] must be one of {registry.names()}, got {kind!r}")
    if not 0.0 <= float(threshold) <= 1.0:
        raise ConfigError(f"decision_threshold must be in [0, 1], got {threshold}")
    bagger = mil.find_image_to_bag(model)
    if registry.get(kind).tiles != (bagger is not None):
        raise ConfigError(f"model_info says {kind!r} but the model {model.name!r} is not one")
    height, width = model.input_shape[1:3]
    if height != width:
        raise ConfigError(f"the model's input must be square, got {height}x{width}")
    info.setdefault("model_name", model.name)
    info["image_size"] = int(height)
    info["decision_threshold"] = float(threshold)
    info.setdefault("label_names", list(features.LABEL_NAMES))
    info["signatures"] = {
        SERVING_DEFAULT: {"input": "image_bytes"},
        SERVING_EXAMPLES: {"input": "examples", "feature": features.IMAGE},
        SERVING_MODEL_INFO: {"input": MODEL_INFO_REQUEST, "output": SERVING_MODEL_INFO, "batch": 1},
    }
    info["outputs"] = (["probability", "label", "decision_score", TISSUE_FRACTION, TISSUE_DETECTED, UNCERTAINTY,
                        NOT_SURE]
                       + tile_outputs(model) + (["grid_shape"] if bagger else []))
    info["min_tissue_fraction"] = image_ops.MIN_IMAGE_TISSUE_FRACTION
    if bagger is not None:
        info["tile_size"] = bagger.tile_size
        info["grid_shape"] = list(tile_grid_shape(model))
        info["tissue_masking"] = bagger.tissue_masking
    info.setdefault("created", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    json.dumps(info)  # fail here, not after saving, on a non-JSON value
    return info
