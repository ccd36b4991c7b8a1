"""The model-kind registry: every kind builds, trains through its phases and names itself."""

from __future__ import annotations

import numpy as np
import pytest

from histopath.errors import ConfigError
from histopath.models import registry
from histopath.models.config import TrainingConfig

SMALL = {"densenet": {"image_size": 32}, "mil": {"image_size": 32, "tile_size": 16, "encoder_filters": [4]},
         "cnn": {"image_size": 32, "conv_layers": 2, "base_filters": 4}}


@pytest.mark.parametrize("name", registry.names())
def test_every_kind_builds_a_model_of_its_settings_and_gives_its_phases(name):
    kind = registry.get(name)
    config = kind.config(SMALL[name], transform_size=64)
    assert registry.kind_of(config) is kind and config.image_size == 32
    model = kind.module().build(config)
    output = model(np.zeros((2, 32, 32, 3), np.float32))
    probability = output["probability"] if isinstance(output, dict) else output
    assert tuple(probability.shape) == (2, 1)
    phases = kind.module().training_phases(config, TrainingConfig(epochs=2, fine_tune_epochs=1))
    assert phases and all(phase.epochs >= 1 and phase.learning_rate > 0 for phase in phases)


def test_image_sizes_default_from_the_transform_size():
    assert registry.get("densenet").config({}, 100).image_size == 100
    assert registry.get("mil").config({"tile_size": 32}, 100).image_size == 96  # whole tiles
    assert registry.get("cnn").config({}, 50).image_size == 50


def test_unknown_kinds_and_settings_are_named():
    with pytest.raises(ConfigError, match="unknown model kind 'resnet'; registered: densenet, mil, cnn"):
        registry.get("resnet")
    with pytest.raises(ConfigError, match="not a model config"):
        registry.kind_of(TrainingConfig())
    with pytest.raises(ConfigError, match="CNN training needs epochs >= 1"):
        registry.get("cnn").module().training_phases(registry.get("cnn").config({}, 50), TrainingConfig(epochs=0))
