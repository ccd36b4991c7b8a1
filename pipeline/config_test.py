"""The typed configuration, resolved once: defaults < preset < --config < flags."""

from __future__ import annotations

import argparse
import json

import pytest

from histopath.errors import ConfigError
from histopath.models.cnn import CnnConfig
from histopath.models.config import DenseNetConfig, MilConfig, TrainingConfig
from histopath.pipeline import cli as pipeline_cli
from histopath.pipeline import presets
from histopath.pipeline.config import PipelineConfig, load_config_file, resolve, write_config


def _parse(argv):
    parser = argparse.ArgumentParser()
    pipeline_cli.register(parser.add_subparsers(dest="command"))
    return pipeline_cli.config_from_args(parser.parse_args(argv))


def test_resolved_config_is_typed_and_round_trips_through_run_config_json(tmp_path):
    config = resolve({"dataset": "idc", "models": ["mil"], "thresholds": {"min_auc": 0.9},
                      "training": {"epochs": 2}, "model_training": {"mil": {"batch_size": 4}}, "seed": 5})
    assert isinstance(config.model_config("densenet"), DenseNetConfig)
    assert isinstance(config.model_config("mil"), MilConfig) and isinstance(config.model_config("cnn"), CnnConfig)
    assert all(isinstance(t, TrainingConfig) for t in config.model_training.values())
    mil = config.model_training["mil"]
    assert (mil.epochs, mil.batch_size, mil.seed) == (2, 4, 5)
    assert config.model_training["densenet"].batch_size == TrainingConfig().batch_size
    assert config.thresholds.min_auc == 0.9
    write_config(config, str(tmp_path / "run_config.json"))
    recorded = json.loads((tmp_path / "run_config.json").read_text())
    # One shape: the record is the file form, every kind's training under model_training.
    assert "training" not in recorded and recorded["model_training"]["mil"]["batch_size"] == 4
    assert recorded["densenet"]["image_size"] == 224
    assert PipelineConfig.from_dict(recorded) == config


def test_model_image_sizes_follow_the_transform_size_unless_given():
    config = resolve({"image_size": 100, "mil": {"tile_size": 32}})
    assert config.model_config("densenet").image_size == 100
    assert config.model_config("mil").image_size == 96  # a multiple of the tile
    assert resolve({"image_size": 100, "densenet": {"image_size": 64}}).model_config("densenet").image_size == 64


def test_layers_merge_key_by_key():
    config = resolve({"densenet": {"dropout": 0.1, "head_units": 8}, "training": {"epochs": 4, "batch_size": 8}},
                     {"densenet": {"dropout": 0.2}, "training": {"epochs": 1}})
    densenet = config.model_config("densenet")
    assert (densenet.dropout, densenet.head_units) == (0.2, 8)
    assert (config.model_training["mil"].epochs, config.model_training["mil"].batch_size) == (1, 8)


def test_a_later_layers_shared_training_overrides_an_earlier_layers_own():
    preset = {"training": {"epochs": 5}, "model_training": {"mil": {"epochs": 25, "batch_size": 4}}}
    config = resolve(preset, {"training": {"epochs": 1}})
    assert (config.model_training["mil"].epochs, config.model_training["mil"].batch_size) == (1, 4)
    assert resolve(preset).model_training["mil"].epochs == 25


def test_bad_settings_name_what_is_wrong():
    with pytest.raises(ConfigError, match="unknown configuration key.*colour"):
        resolve({"colour": "blue"})
    with pytest.raises(ConfigError, match="dataset"):
        resolve({"dataset": "camelyon"})
    with pytest.raises(ConfigError, match="pipeline_name"):
        resolve({"pipeline_name": "Histo_Path"})
    with pytest.raises(ConfigError, match="model_training"):
        resolve({"model_training": {"resnet": {"epochs": 1}}})
    with pytest.raises(ConfigError, match="unknown thresholds key"):
        resolve({"thresholds": {"min_auroc": 0.5}})
    with pytest.raises(ConfigError, match="DenseNetConfig: unknown option"):
        resolve({"densenet": {"layers": 3}})
    with pytest.raises(ConfigError, match="span window"):
        resolve({"span_window": "some"})
    with pytest.raises(ConfigError, match="bag_size"):
        resolve({"dataset": "breakhis", "bag_size": 4})
    with pytest.raises(ConfigError, match="stain_normalization must be one of none, od_scaling, macenko, reinhard"):
        resolve({"stain_normalization": "vahadane"})


def test_slide_context_sigma_is_validated_and_reaches_the_trainers():
    from histopath.pipeline.create import trainer_custom_config

    assert trainer_custom_config(resolve({"dataset": "idc", "slide_context_sigma": 1.5}), "densenet")[
        "slide_context_sigma"] == 1.5
    assert trainer_custom_config(resolve({}), "mil")["slide_context_sigma"] == 0.0
    with pytest.raises(ConfigError, match="0 unless dataset is idc .only IDC patches carry slide positions., got 1.5"):
        resolve({"dataset": "breakhis", "slide_context_sigma": 1.5})
    with pytest.raises(ConfigError, match="slide_context_sigma must be >= 0"):
        resolve({"dataset": "idc", "slide_context_sigma": -1})


def test_per_model_training_overrides_reach_only_their_trainer():
    from histopath.pipeline.create import trainer_custom_config

    config = resolve({"training": {"epochs": 3, "batch_size": 8},
                      "model_training": {"densenet": {"epochs": 0, "fine_tune_epochs": 2}}})
    densenet = trainer_custom_config(config, "densenet")["training"]
    mil = trainer_custom_config(config, "mil")["training"]
    assert (densenet["epochs"], densenet["fine_tune_epochs"], densenet["batch_size"]) == (0, 2, 8)
    assert (mil["epochs"], mil["batch_size"]) == (3, 8)


def test_the_datasets_preset_is_the_default_and_file_and_flags_override_it(tmp_path):
    base = ["run", "--dataset", "idc", "--data", "d", "--output", "o"]
    config = _parse(base)
    assert config.preset == "idc"
    assert config.models == tuple(presets.PRESETS["idc"].settings["models"])
    assert config.slide_context_sigma == presets.PRESETS["idc"].settings["slide_context_sigma"]
    assert _parse(base + ["--slide-context-sigma", "0"]).slide_context_sigma == 0.0
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps({"cnn": {"dropout": 0.05}, "stain_normalization": False}))
    from_file = _parse(base + ["--config", str(config_file)])
    assert from_file.model_config("cnn").dropout == 0.05
    kept = presets.PRESETS["idc"].settings["cnn"]["conv_layers"]
    assert from_file.model_config("cnn").conv_layers == kept
    assert from_file.stain_normalization == "none"  # the older boolean form, read as the method it meant
    assert _parse(base + ["--config", str(config_file), "--stain-normalization"]).stain_normalization == "od_scaling"
    assert _parse(base + ["--stain-normalization", "macenko"]).stain_normalization == "macenko"
    assert _parse(["run", "--dataset", "breakhis", "--data", "d", "--output", "o"]).preset == "breakhis"
    demo = _parse(["run", "--dataset", "breakhis", "--preset", "demo", "--data", "d", "--output", "o"])
    assert demo.preset == "demo" and demo.image_size == 128 and demo.model_training["mil"].epochs == 6


def test_epochs_flag_sets_every_phase_of_every_model():
    config = _parse(["run", "--dataset", "breakhis", "--data", "d", "--output", "o", "--epochs", "2"])
    assert all((t.epochs, t.fine_tune_epochs) == (2, 2) for t in config.model_training.values())


def test_presets_refuse_what_does_not_fit():
    with pytest.raises(ConfigError, match="unknown preset 'nope'; presets: breakhis"):
        _parse(["run", "--dataset", "idc", "--preset", "nope", "--data", "d", "--output", "o"])
    with pytest.raises(ConfigError, match="preset idc is for idc, not breakhis"):
        _parse(["run", "--dataset", "breakhis", "--preset", "idc", "--data", "d", "--output", "o"])
    with pytest.raises(ConfigError, match="preset breakhis-from-idc needs densenet.weights"):
        _parse(["run", "--dataset", "breakhis", "--preset", "breakhis-from-idc", "--data", "d", "--output", "o"])
    warm = _parse(["run", "--dataset", "breakhis", "--preset", "breakhis-from-idc", "--data", "d", "--output", "o",
                   "--warm-start", "/weights.h5"])
    assert warm.model_config("densenet").weights == "/weights.h5"


def test_every_preset_resolves():
    for name, preset in presets.PRESETS.items():
        extra = {"densenet": {"weights": "/w.h5"}} if preset.needs else {}
        config = resolve(presets.layer(name), extra)
        assert config.preset == name and config.dataset == preset.settings["dataset"]


def test_paths_may_be_uris_and_are_never_resolved_as_local_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = resolve({"output_dir": "gs://bucket/runs", "serving_dir": "s3://models/serving",
                      "data_dir": "hdfs://cluster/slides"})
    assert config.pipeline_root == "gs://bucket/runs/pipeline_root"
    assert config.serving_path == "s3://models/serving" and config.span_store_path == "gs://bucket/runs/span_store"
    assert resolve({"output_dir": "runs"}).output_path == str(tmp_path / "runs")


def test_load_config_file_requires_an_object(tmp_path):
    path = tmp_path / "c.json"
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must hold a JSON object"):
        load_config_file(str(path))


def test_the_measured_best_rule_is_the_default_and_folds_run_only_when_there_is_a_choice():
    from histopath.pipeline.config import cross_validation_folds, model_settings

    both = resolve({"dataset": "breakhis"})
    assert (both.selection.rule, both.selection.folds) == ("cv_lower_bound", 5) and len(both.models) == 2
    settings = model_settings(both, "mil")
    assert (settings["folds"], settings["refit_on_all"], settings["model_kind"]) == (5, False, "mil")
    alone = resolve({"dataset": "idc", "models": ["densenet"], "slide_context_sigma": 1.5})
    assert cross_validation_folds(alone) == 0  # one candidate: nothing to compare
    assert cross_validation_folds(resolve({"models": ["mil"], "selection": {"refit_on_all": True}})) == 5
    assert resolve({"models": ["mil"], "selection": {"folds": 0}}).selection.rule == "cv_lower_bound"
    with pytest.raises(ConfigError, match="need cross-validation: set selection.folds .* or rule test_auc"):
        resolve({"selection": {"folds": 0}})
    assert resolve({"selection": {"rule": "test_auc", "folds": 0}}).selection.folds == 0
