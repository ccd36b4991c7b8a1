"""A plain CNN baseline: stacked 3x3 convolutions, one image -> probability of malignant.

The third registered model kind ("cnn", `models.registry`), and the worked example of
adding one: a settings dataclass, `build` and `training_phases`. It is trained from
scratch in one phase; the pipeline trains, compares and pushes it like the others.

Input: float32 `(batch, S, S, 3)` in [0, 1]. Output: float32 `(batch, 1)`.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from histopath.errors import ConfigError
from histopath.models.config import PRECISION_POLICIES, _JsonConfig

MAX_FILTERS = 256  # filter count cap of the deepest convolutions


@dataclasses.dataclass(frozen=True)
class CnnConfig(_JsonConfig):
    """The plain CNN's architecture and learning rate."""

    # Edge of the square model input in pixels (at least 8).
    image_size: int = 50
    # 3x3 conv + BatchNorm + ReLU layers; 2x2 max-pool after every second one while the
    # feature map is at least 2 pixels wide.
    conv_layers: int = 6
    # Filters of the first pair of convolutions, doubled every pair (capped at MAX_FILTERS).
    base_filters: int = 32
    # Dropout between global average pooling and the output unit.
    dropout: float = 0.3
    # Adam learning rate (lowered by ReduceLROnPlateau).
    learning_rate: float = 1e-3
    # Keras precision policy, as `MilConfig.mixed_precision`.
    mixed_precision: Optional[str] = "auto"
    # As `DenseNetConfig.test_time_augmentation`.
    test_time_augmentation: bool = False

    def __post_init__(self) -> None:
        for ok, message in (
            (int(self.image_size) >= 8, f"image_size must be >= 8, got {self.image_size}"),
            (self.conv_layers >= 1, "conv_layers must be >= 1"),
            (self.base_filters >= 1, "base_filters must be >= 1"),
            (0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}"),
            (self.learning_rate > 0, "learning_rate must be > 0"),
            (self.mixed_precision in PRECISION_POLICIES,
             f"mixed_precision must be one of {PRECISION_POLICIES}, got {self.mixed_precision!r}"),
        ):
            if not ok:
                raise ConfigError(f"CnnConfig.{message}")


def build(config: CnnConfig):
    """Builds the uncompiled plain CNN.

    Args:
      config: `image_size`, `conv_layers`, `base_filters`, `dropout` and
        `mixed_precision` are used.

    Returns:
      A Keras model: float32 `(batch, S, S, 3)` images in [0, 1] -> float32 `(batch, 1)`
      probabilities of the malignant class.
    """
    import tf_keras as keras

    from histopath.models.keras_utils import precision_policy

    size = int(config.image_size)
    with precision_policy(config.mixed_precision):
        inputs = keras.Input((size, size, 3), dtype="float32", name="image")
        x = inputs
        for index in range(config.conv_layers):
            filters = min(config.base_filters * 2 ** (index // 2), MAX_FILTERS)
            x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{index + 1}")(x)
            x = keras.layers.BatchNormalization(name=f"bn{index + 1}")(x)
            x = keras.layers.ReLU(name=f"relu{index + 1}")(x)
            if index % 2 == 1 and size >= 2:
                x = keras.layers.MaxPooling2D(2, name=f"pool{index // 2 + 1}")(x)
                size //= 2
        x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
        x = keras.layers.Dropout(config.dropout, name="dropout")(x)
        outputs = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="probability")(x)
        return keras.Model(inputs, outputs, name=f"plain_cnn_{config.conv_layers}")


def training_phases(config: CnnConfig, training) -> list:
    """One phase of `training.epochs` at the model's learning rate (`training.one_phase`)."""
    from histopath.models.training import one_phase

    return one_phase("CNN", config.learning_rate, training)
