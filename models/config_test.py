"""Tests of the JSON-safe model/training configs."""

import json

import pytest

from histopath.models import config as mc
from histopath.errors import ConfigError


@pytest.mark.parametrize("config", [
    mc.DenseNetConfig(image_size=64, weights="/tmp/w.h5", mixed_precision="mixed_bfloat16"),
    mc.MilConfig(image_size=96, tile_size=32, encoder_filters=(8, 16)),
    mc.TrainingConfig(epochs=3, augment=mc.AugmentConfig(color_space="hsv"), steps_per_epoch=5),
])
def test_json_round_trip(config):
    restored = type(config).from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config


def test_training_config_accepts_plain_dict_augment():
    config = mc.TrainingConfig.from_dict({"augment": {"flips": False}})
    assert isinstance(config.augment, mc.AugmentConfig) and not config.augment.flips


@pytest.mark.parametrize("factory, values, message", [
    (mc.DenseNetConfig, {"image_size": 16}, "image_size"),
    (mc.DenseNetConfig, {"mixed_precision": "mixed_float8"}, "mixed_precision"),
    (mc.MilConfig, {"image_size": 100, "tile_size": 32}, "multiple of tile_size"),
    (mc.MilConfig, {"tile_sise": 32}, "unknown option"),
    (mc.AugmentConfig, {"color_space": "lab"}, "color_space"),
    (mc.TrainingConfig, {"epochs": -1}, "epochs"),
])
def test_invalid_values_are_clear_config_errors(factory, values, message):
    with pytest.raises(ConfigError, match=message):
        factory.from_dict(values)


def test_mil_grid():
    config = mc.MilConfig(image_size=224, tile_size=32)
    assert config.grid_shape == (7, 7) and config.n_tiles == 49


def test_default_augmentation_is_the_stain_amount_recipe():
    # The cross-validated default (docs/results.md): stain amount + brightness/contrast, and
    # not the all-channel HED jitter that tints glass.
    config = mc.AugmentConfig()
    assert (config.stain_scale, config.stain_shift, config.brightness, config.contrast) == (0.4, 0.01, 0.1, 0.2)
    assert config.color_jitter == 0.0


@pytest.mark.parametrize("config_type", [mc.DenseNetConfig, mc.MilConfig])
def test_both_models_default_to_bfloat16_where_the_cpu_runs_it_natively(config_type):
    assert config_type().mixed_precision == "auto"
    assert config_type.from_dict({}).mixed_precision == "auto"
    assert config_type.from_dict({"mixed_precision": None}).mixed_precision is None  # float32 stays selectable


def test_candidate_settings_round_trip_and_name_their_kind():
    settings = mc.CandidateSettings(model_kind="mil", model={"tile_size": 16}, training={"epochs": 2},
                                    transform_size=64, folds=3)
    restored = mc.CandidateSettings.from_dict({**json.loads(json.dumps(settings.to_dict())), "code_fingerprint": "x"})
    assert restored == settings
    assert restored.model_config() == mc.MilConfig(image_size=64, tile_size=16)
    assert restored.training_config().epochs == 2
    with pytest.raises(ConfigError, match="unknown model kind 'resnet'"):
        mc.CandidateSettings("resnet", {}, {}, 64).model_config()
