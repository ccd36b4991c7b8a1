"""Tiny, untrained models exported with the project's own exporter, for serving tests.

Only the exported model contract is under test here (signatures, outputs, layout), so
the networks are as small as their configs allow and keep Keras's random initialisation.
"""

from __future__ import annotations

import pathlib
from typing import Any, Mapping, Optional

import histopath  # noqa: F401  (Keras 2 before TensorFlow)

# With the instance classifier, so the signatures also return `tile_probability`.
TINY_MIL = {"image_size": 64, "tile_size": 16, "encoder_filters": (8, 16), "embedding_units": 16, "attention_dim": 8,
            "instance_loss_weight": 0.5}
TINY_DENSENET = {"image_size": 32, "weights": None, "head_units": 0}


def export_tiny(kind: str, version_dir: pathlib.Path, seed: int,
                abstention_band: Optional[Mapping[str, float]] = None, decision_threshold: float = 0.5,
                model_info: Optional[Mapping[str, Any]] = None) -> pathlib.Path:
    """Exports an untrained tiny model of `kind` ("mil" | "densenet") to `version_dir`.

    The preprocessing is `image_ops.decode_and_resize`, what Transform does at training.
    Without `abstention_band` the model is never "not sure" (`not_sure` always 0); with
    `{"low": 0.0, "high": 1.0}` it is "not sure" of every image that shows tissue.
    `model_info` adds to what the model says of itself (e.g. "mpp", "slide_aggregation").
    """
    import tensorflow as tf

    from histopath.models import densenet, image_ops, mil
    from histopath.models.export import export_serving_model
    from histopath.models.config import DenseNetConfig, MilConfig

    tf.keras.utils.set_random_seed(seed)
    if kind == "mil":
        config = MilConfig(**TINY_MIL)
        model = mil.build_mil_model(config)
    else:
        config = DenseNetConfig(**TINY_DENSENET)
        model = densenet.build_densenet_model(config)
    export_serving_model(
        model,
        str(version_dir),
        preprocess=lambda image_bytes: image_ops.decode_and_resize(image_bytes, config.image_size),
        model_info={"model_kind": kind, "model_name": kind, "dataset": "test", **(model_info or {})},
        decision_threshold=decision_threshold,
        abstention_band=abstention_band,
    )
    return version_dir


def export_tiny_mil(version_dir: pathlib.Path, seed: int = 7,
                    abstention_band: Optional[Mapping[str, float]] = None, **options) -> pathlib.Path:
    """An untrained 4x4-tile MIL model (`abstention_band` and `options`: see `export_tiny`)."""
    return export_tiny("mil", version_dir, seed, abstention_band, **options)


def export_tiny_densenet(version_dir: pathlib.Path, seed: int = 11) -> pathlib.Path:
    """An untrained 32x32-input DenseNet201 (random weights)."""
    return export_tiny("densenet", version_dir, seed)
