"""Tiny, untrained models exported with the project's own exporter, for serving tests.

Only the exported model contract is under test here (signatures, outputs, layout), so
the networks are as small as their configs allow and keep Keras's random initialisation.
"""

from __future__ import annotations

import pathlib

import histopath  # noqa: F401  (Keras 2 before TensorFlow)

TINY_MIL = {"image_size": 64, "tile_size": 16, "encoder_filters": (8, 16), "embedding_units": 16, "attention_dim": 8}
TINY_DENSENET = {"image_size": 32, "weights": None, "head_units": 0}


def _raw_image_preprocessor(size: int):
    """Encoded bytes -> float images with `image_ops` (what Transform does at training)."""
    from histopath.components import image_ops

    return lambda image_bytes: image_ops.decode_and_resize(image_bytes, size)


def export_tiny_mil(version_dir: pathlib.Path, seed: int = 7) -> pathlib.Path:
    """Exports an untrained 4x4-tile MIL model to `version_dir`."""
    import tensorflow as tf

    from histopath.components.export import export_serving_model
    from histopath.components.mil import build_mil_model
    from histopath.components.model_config import MilConfig

    tf.keras.utils.set_random_seed(seed)
    config = MilConfig(**TINY_MIL)
    export_serving_model(
        build_mil_model(config),
        str(version_dir),
        preprocess=_raw_image_preprocessor(config.image_size),
        model_info={"model_kind": "mil", "model_name": "mil", "dataset": "test"},
        decision_threshold=0.5,
    )
    return version_dir


def export_tiny_densenet(version_dir: pathlib.Path, seed: int = 11) -> pathlib.Path:
    """Exports an untrained 32x32-input DenseNet201 (random weights) to `version_dir`."""
    import tensorflow as tf

    from histopath.components.densenet import build_densenet_model
    from histopath.components.export import export_serving_model
    from histopath.components.model_config import DenseNetConfig

    tf.keras.utils.set_random_seed(seed)
    config = DenseNetConfig(**TINY_DENSENET)
    export_serving_model(
        build_densenet_model(config),
        str(version_dir),
        preprocess=_raw_image_preprocessor(config.image_size),
        model_info={"model_kind": "densenet", "model_name": "densenet", "dataset": "test"},
        decision_threshold=0.5,
    )
    return version_dir
