"""DenseNet201 transfer-learning classifier: one image -> probability of malignant.

Input: float32 `(batch, S, S, 3)` in [0, 1] (the output of `image_ops`); the model
applies DenseNet's own ImageNet normalisation inside. Output: float32 `(batch, 1)`.

The backbone is a nested Keras model named `BACKBONE_NAME`, so its weights can be saved
on their own (`save_backbone_weights`) and loaded by layer name into another model of a
different input size or head (warm-starting BreakHis from an IDC-trained backbone).
"""

from __future__ import annotations

import logging
import os
import re
from typing import Dict, List, Optional

import h5py
import numpy as np
import tensorflow as tf
import tf_keras as keras

from histopath.models.keras_utils import precision_policy, skip_autograph_for_tf_keras
from histopath.models.config import DenseNetConfig
from histopath.errors import ConfigError

skip_autograph_for_tf_keras()

logger = logging.getLogger(__name__)

BACKBONE_NAME = "densenet201"
BACKBONE_WEIGHTS_FILE = "backbone_weights.h5"  # what `save_extras` leaves in a Trainer's run folder
OUTPUT_NAME = "probability"
# torchvision-style ImageNet statistics used by `keras.applications.densenet.preprocess_input`.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_BLOCK_NAME = re.compile(r"^(conv\d+)_block(\d+)_")


def build_densenet_model(config: DenseNetConfig) -> keras.Model:
    """Builds the DenseNet201 classifier (backbone trainable, see `set_backbone_trainable`).

    Args:
      config: model options; `config.weights` selects the initial weights.

    Returns:
      An uncompiled `tf_keras.Model` named "densenet_classifier" mapping float32
      `(batch, S, S, 3)` in [0, 1] to float32 `(batch, 1)`.

    Raises:
      ConfigError: the weights cannot be obtained (offline "imagenet", missing or
        unreadable file, file matching no layer of the model).
    """
    size = int(config.image_size)
    with precision_policy(config.mixed_precision):
        backbone = _build_backbone(size, config.weights)
        images = keras.Input((size, size, 3), dtype=tf.float32, name="image")
        normalized = keras.layers.Normalization(
            mean=list(IMAGENET_MEAN),
            variance=[s * s for s in IMAGENET_STD],
            name="imagenet_normalization",
        )(images)
        features = backbone(normalized)
        pooled = keras.layers.GlobalAveragePooling2D(name="avg_pool")(features)
        x = keras.layers.Dropout(config.dropout, name="feature_dropout")(pooled)
        if config.head_units:
            x = keras.layers.Dense(config.head_units, activation="relu", name="head_hidden")(x)
            x = keras.layers.Dropout(config.dropout, name="head_dropout")(x)
        probability = keras.layers.Dense(
            1, activation="sigmoid", dtype="float32", name=OUTPUT_NAME
        )(x)
        model = keras.Model(images, probability, name="densenet_classifier")
    if config.weights not in (None, "imagenet"):
        load_weights_file(model, config.weights)
    return model


def _build_backbone(size: int, weights: Optional[str]) -> keras.Model:
    """DenseNet201 without its top; downloads ImageNet weights when asked to."""
    if weights != "imagenet":
        return keras.applications.DenseNet201(
            include_top=False, weights=None, input_shape=(size, size, 3)
        )
    try:
        return keras.applications.DenseNet201(
            include_top=False, weights="imagenet", input_shape=(size, size, 3)
        )
    except Exception as error:  # urllib/HTTP/OS errors, all mean "no weights"
        raise ConfigError(
            "could not download the ImageNet DenseNet201 weights "
            f"({type(error).__name__}: {error}); this machine may be offline: put "
            "densenet201_weights_tf_dim_ordering_tf_kernels_notop.h5 in ~/.keras/models/ "
            "or set weights to a local .h5 file (or None)"
        ) from error


def backbone(model: keras.Model) -> keras.Model:
    """Returns the nested DenseNet201 backbone of a model built here."""
    try:
        return model.get_layer(BACKBONE_NAME)
    except ValueError as error:
        raise ConfigError(f"model {model.name!r} has no {BACKBONE_NAME!r} backbone") from error


def _read_h5_weights(path: str) -> Dict[str, np.ndarray]:
    """Reads a Keras .h5 weights file into {weight name: array}."""
    weights: Dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as handle:
        group = handle["model_weights"] if "model_weights" in handle else handle
        if "layer_names" not in group.attrs:
            raise ConfigError(f"{path}: not a Keras weights file (no 'layer_names' attribute)")
        for layer_name in group.attrs["layer_names"]:
            layer_group = group[_text(layer_name)]
            for weight_name in layer_group.attrs.get("weight_names", []):
                weights[_text(weight_name)] = np.asarray(layer_group[_text(weight_name)])
    return weights


def _text(value) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def load_weights_file(model: keras.Model, path: str) -> int:
    """Loads a Keras .h5 weights file into `model`, matching weights by name and shape.

    Works for files of a whole model built here (`model.save_weights(...h5)`), of the
    backbone only (`save_backbone_weights`, Keras's `densenet201_..._notop.h5`), and
    across input sizes and heads: weights whose name is missing from the file or whose
    shape differs (e.g. a different head) keep their current values. Matching by name
    rather than by position is independent of which layers were frozen when saving.

    Args:
      model: a model built by `build_densenet_model`.
      path: the .h5 file.

    Returns:
      Number of weight tensors loaded.

    Raises:
      ConfigError: missing/unreadable file, or no weight of the file matches the model.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"weights file not found: {path}")
    try:
        stored = _read_h5_weights(path)
    except (OSError, KeyError) as error:
        raise ConfigError(f"{path}: not a readable Keras .h5 weights file ({error})") from error
    loaded = 0
    for variable in model.weights:
        value = stored.get(variable.name)
        if value is not None and tuple(value.shape) == tuple(variable.shape):
            variable.assign(value)
            loaded += 1
    if loaded == 0:
        raise ConfigError(f"{path}: no weight in this file matches the model (by name and shape)")
    logger.info("loaded %d of the model's %d weight tensors from %s", loaded, len(model.weights), path)
    return loaded


def save_backbone_weights(model: keras.Model, path: str) -> None:
    """Writes the backbone's weights to an .h5 file (temp name, then renamed).

    Args:
      model: a model built by `build_densenet_model`.
      path: destination ending in ".h5"; load it with `DenseNetConfig(weights=path)`.
    """
    path = os.fspath(path)
    if not path.endswith(".h5"):
        raise ConfigError(f"backbone weights must be saved as .h5, got {path}")
    temporary = f"{path}.tmp-{os.getpid()}.h5"
    backbone(model).save_weights(temporary, save_format="h5")
    os.replace(temporary, path)


def backbone_block_names(model: keras.Model) -> List[str]:
    """Dense-block layer prefixes of the backbone in order, e.g. "conv5_block32"."""
    names: List[str] = []
    for layer in backbone(model).layers:
        match = _BLOCK_NAME.match(layer.name)
        if match:
            block = f"{match.group(1)}_block{match.group(2)}"
            if not names or names[-1] != block:
                names.append(block)
    return names


def set_backbone_trainable(
    model: keras.Model, fine_tune_blocks: int, freeze_batchnorm: bool = True
) -> int:
    """Freezes the backbone except its last `fine_tune_blocks` dense-block layers.

    Everything after the first unfrozen block (transition layers, final BN) is unfrozen
    too. Recompile the model afterwards.

    Args:
      model: a model built by `build_densenet_model`.
      fine_tune_blocks: 0 freezes the whole backbone, -1 unfreezes all of it.
      freeze_batchnorm: keep BatchNormalization layers frozen (inference mode).

    Returns:
      Number of trainable weight tensors in the backbone.
    """
    base = backbone(model)
    if fine_tune_blocks == 0:
        base.trainable = False
        return 0
    base.trainable = True
    layers = base.layers
    start = 0
    if fine_tune_blocks > 0:
        blocks = backbone_block_names(model)
        first = blocks[-min(fine_tune_blocks, len(blocks))] + "_"
        start = next(i for i, layer in enumerate(layers) if layer.name.startswith(first))
    for index, layer in enumerate(layers):
        trainable = index >= start
        if freeze_batchnorm and isinstance(layer, keras.layers.BatchNormalization):
            trainable = False
        layer.trainable = trainable
    return len(base.trainable_weights)


build = build_densenet_model  # the registry's entry point (`models.registry`)


def training_phases(config: DenseNetConfig, training) -> list:
    """The head with the backbone frozen, then (when configured) the top blocks unfrozen
    at a lower learning rate, kept only if it improves on the head phase.

    Raises:
      ConfigError: neither phase would run.
    """
    from histopath.models.training import Phase

    fine_tune = config.fine_tune_blocks != 0 and training.fine_tune_epochs > 0
    if training.epochs == 0 and not fine_tune:
        raise ConfigError("DenseNet training needs epochs > 0 (head phase) or a fine-tuning phase "
                          "(fine_tune_epochs > 0 and fine_tune_blocks != 0)")
    phases = []
    if training.epochs > 0:
        phases.append(Phase("head", config.head_learning_rate, training.epochs,
                            prepare=lambda model: set_backbone_trainable(model, 0)))
    if fine_tune:
        phases.append(Phase(
            "fine_tune", config.fine_tune_learning_rate, training.fine_tune_epochs,
            prepare=lambda model: set_backbone_trainable(model, config.fine_tune_blocks, config.freeze_batchnorm),
            keep_only_if_better=True))
    return phases


def save_extras(model: keras.Model, run_dir: str) -> None:
    """Leaves the backbone's weights in the Trainer's run folder, for warm starts
    (`DenseNetConfig(weights=<model_run>/backbone_weights.h5)`)."""
    save_backbone_weights(model, os.path.join(run_dir, BACKBONE_WEIGHTS_FILE))
