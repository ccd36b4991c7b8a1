"""Unit tests of the pipeline's own pieces (no TFX run): config, CLI errors, code
fingerprints, winner rule, schema curation, atomic publishing, operating point."""

from __future__ import annotations

import json
import os
import pathlib
import sys

import numpy as np
import pytest

from histopath import cli
from histopath.components import atomic_pusher, operating_point, winner_selection
from histopath.errors import ConfigError
from histopath.pipeline import fingerprint
from histopath.pipeline.config import PipelineConfig, load_config_file


# ---- configuration and CLI errors -------------------------------------------------------

def test_config_round_trip_and_validation(tmp_path):
    config = PipelineConfig.from_dict(
        {"dataset": "idc", "models": ["mil"], "thresholds": {"min_auc": 0.9}, "training": {"epochs": 2}}
    ).validate()
    path = tmp_path / "run_config.json"
    config.write(path)
    assert PipelineConfig.from_dict(json.loads(path.read_text())) == config
    with pytest.raises(ConfigError, match="unknown configuration keys: colour"):
        PipelineConfig.from_dict({"colour": "blue"})
    with pytest.raises(ConfigError, match="dataset"):
        PipelineConfig(dataset="camelyon").validate()
    with pytest.raises(ConfigError, match="pipeline_name"):
        PipelineConfig(pipeline_name="Histo_Path").validate()
    with pytest.raises(ConfigError, match="model_training"):
        PipelineConfig(model_training={"resnet": {"epochs": 1}}).validate()


def test_slide_context_sigma_is_validated_and_reaches_the_trainers():
    from histopath.pipeline.create import trainer_custom_config

    config = PipelineConfig(dataset="idc", slide_context_sigma=1.5).validate()
    assert trainer_custom_config(config, "densenet")["slide_context_sigma"] == 1.5
    assert trainer_custom_config(PipelineConfig().validate(), "mil")["slide_context_sigma"] == 0.0
    with pytest.raises(ConfigError, match="0 unless dataset is idc .only IDC patches carry slide positions., got 1.5 for breakhis"):
        PipelineConfig(dataset="breakhis", slide_context_sigma=1.5).validate()
    with pytest.raises(ConfigError, match="slide_context_sigma must be >= 0"):
        PipelineConfig(dataset="idc", slide_context_sigma=-1).validate()

    import argparse

    from histopath.pipeline import cli as pipeline_cli

    parser = argparse.ArgumentParser()
    pipeline_cli.register(parser.add_subparsers())
    base = ["run", "--dataset", "idc", "--data", "d", "--output", "o"]
    assert pipeline_cli.config_from_args(parser.parse_args(base)).slide_context_sigma == 0.0
    assert pipeline_cli.config_from_args(parser.parse_args(base + ["--slide-context-sigma", "1.5"])) \
        .slide_context_sigma == 1.5


@pytest.mark.parametrize("normalize", [False, True])
def test_stain_normalization_reaches_transform(tmp_path, normalize):
    from histopath.pipeline.create import create_components

    config = PipelineConfig(dataset="idc", records_dir=str(tmp_path), output_dir=str(tmp_path),
                            stain_normalization=normalize).validate()
    transform = create_components(config)["Transform"]
    custom_config = json.loads(transform.exec_properties["custom_config"])
    assert custom_config["stain_normalization"] == int(normalize)


def test_stain_normalization_flag_and_config_file(tmp_path):
    import argparse

    from histopath.pipeline import cli as pipeline_cli

    parser = argparse.ArgumentParser()
    pipeline_cli.register(parser.add_subparsers())
    base = ["run", "--dataset", "idc", "--data", str(tmp_path), "--output", str(tmp_path / "out")]
    assert pipeline_cli.config_from_args(parser.parse_args(base)).stain_normalization is False
    assert pipeline_cli.config_from_args(parser.parse_args(base + ["--stain-normalization"])).stain_normalization
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps({"stain_normalization": True}))
    from_file = pipeline_cli.config_from_args(parser.parse_args(base + ["--config", str(config_file)]))
    assert from_file.stain_normalization is True  # an absent flag does not override the file


def test_per_model_training_overrides_reach_only_their_trainer():
    from histopath.pipeline.create import trainer_custom_config

    config = PipelineConfig(training={"epochs": 3, "batch_size": 8},
                            model_training={"densenet": {"epochs": 0, "fine_tune_epochs": 2}}).validate()
    densenet = trainer_custom_config(config, "densenet")["training"]
    mil = trainer_custom_config(config, "mil")["training"]
    assert (densenet["epochs"], densenet["fine_tune_epochs"], densenet["batch_size"]) == (0, 2, 8)
    assert (mil["epochs"], mil["batch_size"]) == (3, 8)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "{missing}", "--dataset", "breakhis"], "does not exist"),
        (["--data", "{empty}", "--dataset", "breakhis"], "holds no files"),
        (["--data", "{empty}", "--dataset", "breakhis", "--config", "{bad_config}"], "not valid JSON"),
        (["--data", "{empty}", "--dataset", "breakhis", "--config", "{missing}"], "cannot read config file"),
        (["--data", "{records}", "--dataset", "idc"], "holds 'breakhis' records, not 'idc'"),
    ],
)
def test_run_reports_bad_input_with_one_line_and_exit_code_1(tmp_path, capsys, args, message):
    paths = {
        "missing": tmp_path / "nope",
        "empty": tmp_path / "empty",
        "bad_config": tmp_path / "config.json",
        "records": tmp_path / "records",
    }
    paths["empty"].mkdir()
    paths["bad_config"].write_text("{not json")
    paths["records"].mkdir()
    (paths["records"] / "manifest.json").write_text(json.dumps({"dataset": "breakhis"}))
    argv = ["run", "--output", str(tmp_path / "out")] + [a.format(**paths) for a in args]
    assert cli.main(argv) == 1
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error and error.count("\n") == 1


def test_wrong_dataset_name_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "--data", "x", "--dataset", "camelyon", "--output", "o"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'camelyon'" in capsys.readouterr().err


def test_load_config_file_requires_an_object(tmp_path):
    path = tmp_path / "c.json"
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must hold a JSON object"):
        load_config_file(path)


# ---- caching: code fingerprints -----------------------------------------------------------

def test_fingerprint_follows_the_source_of_the_modules(tmp_path, monkeypatch):
    module = tmp_path / "fingerprinted_module.py"
    module.write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = fingerprint.source_fingerprint(["fingerprinted_module"])
    assert fingerprint.source_fingerprint(["fingerprinted_module"]) == before
    module.write_text("VALUE = 2\n")
    assert fingerprint.source_fingerprint(["fingerprinted_module"]) != before
    sys.modules.pop("fingerprinted_module", None)


def test_each_trainer_fingerprints_its_own_model_code_only():
    densenet, mil = fingerprint.TRAINER_MODULES["densenet"], fingerprint.TRAINER_MODULES["mil"]
    assert "histopath.components.densenet" in densenet and "histopath.components.mil" not in densenet
    assert "histopath.components.mil" in mil and "histopath.components.densenet" not in mil
    assert "histopath.components.image_ops" in fingerprint.TRANSFORM_MODULES
    assert fingerprint.source_fingerprint(densenet) != fingerprint.source_fingerprint(mil)


# ---- winner rule ----------------------------------------------------------------------------

def _candidate(blessed: bool, auc: float, balanced_accuracy: float = 0.8) -> dict:
    return {"blessed": blessed, "metrics": {"auc": auc, "balanced_accuracy": balanced_accuracy}}


def test_winner_is_the_blessed_candidate_with_the_highest_auc():
    winner, reason = winner_selection.choose_winner(
        {"densenet": _candidate(True, 0.91), "mil": _candidate(True, 0.95)}
    )
    assert winner == "mil" and "0.9500" in reason and "runner-up densenet" in reason
    winner, reason = winner_selection.choose_winner(
        {"densenet": _candidate(True, 0.91), "mil": _candidate(False, 0.99)}
    )
    assert winner == "densenet" and "not blessed: mil" in reason


def test_auc_ties_go_to_balanced_accuracy_and_no_blessing_means_no_winner():
    winner, _ = winner_selection.choose_winner(
        {"densenet": _candidate(True, 0.9, 0.85), "mil": _candidate(True, 0.9, 0.80)}
    )
    assert winner == "densenet"
    winner, reason = winner_selection.choose_winner(
        {"densenet": _candidate(False, 0.9), "mil": _candidate(False, 0.8)}
    )
    assert winner is None and "nothing is pushed" in reason


# ---- schema curation --------------------------------------------------------------------------

def test_identifier_domains_are_removed_and_others_kept():
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    from histopath.components.schema_curation import curate_schema

    schema = text_format.Parse(
        """
        feature { name: "patient_id" type: BYTES domain: "patient_id" }
        feature { name: "subtype" type: BYTES domain: "subtype" }
        feature { name: "label" type: INT bool_domain {} }
        string_domain { name: "patient_id" value: "190" value: "2523" }
        string_domain { name: "subtype" value: "A" value: "F" }
        """,
        schema_pb2.Schema(),
    )
    curated = curate_schema(schema)
    by_name = {f.name: f for f in curated.feature}
    assert by_name["patient_id"].WhichOneof("domain_info") is None
    assert by_name["subtype"].domain == "subtype" and by_name["label"].HasField("bool_domain")
    assert [d.name for d in curated.string_domain] == ["subtype"]
    assert len(schema.string_domain) == 2  # the input is not modified


# ---- atomic publishing --------------------------------------------------------------------------

def test_version_policies(tmp_path):
    assert atomic_pusher.next_version(tmp_path, "increment") == 1
    for name in ("1", "7", ".8.tmp-abc", "notes"):
        (tmp_path / name).mkdir()
    assert atomic_pusher.numeric_versions(tmp_path) == [1, 7]
    assert atomic_pusher.next_version(tmp_path, "increment") == 8
    assert atomic_pusher.next_version(tmp_path, "timestamp") > 1_700_000_000
    with pytest.raises(ValueError, match="unknown version policy"):
        atomic_pusher.next_version(tmp_path, "latest")


def test_publish_is_all_or_nothing(tmp_path):
    model = tmp_path / "model"
    (model / "variables").mkdir(parents=True)
    (model / "saved_model.pb").write_bytes(b"graph")
    (model / "variables" / "variables.index").write_bytes(b"index")
    base = tmp_path / "serving" / "histopath"
    final = atomic_pusher.publish_version(str(model), base, 1)
    assert final == base / "1" and (final / "variables" / "variables.index").read_bytes() == b"index"
    assert sorted(p.name for p in base.iterdir()) == ["1"]

    if os.geteuid() != 0:  # root reads unreadable files, so this part needs a normal user
        (model / "variables" / "variables.index").chmod(0)
        with pytest.raises(OSError):
            atomic_pusher.publish_version(str(model), base, 2)
        assert sorted(p.name for p in base.iterdir()) == ["1"]
    with pytest.raises(OSError):  # an existing version is never overwritten
        atomic_pusher.publish_version(str(model), base, 1)
    assert sorted(p.name for p in base.iterdir()) == ["1"]  # no staging folder left behind


# ---- operating point ------------------------------------------------------------------------

def test_threshold_maximises_balanced_accuracy():
    labels = np.array([0, 0, 0, 0, 1, 1])
    scores = np.array([0.60, 0.62, 0.64, 0.70, 0.80, 0.90])
    threshold = operating_point.balanced_accuracy_threshold(labels, scores)
    assert 0.70 < threshold <= 0.80  # 0.5 would call every image malignant
    predicted = scores >= threshold
    assert (predicted == labels.astype(bool)).all()
    assert operating_point.balanced_accuracy_threshold(np.ones(3), np.array([0.1, 0.2, 0.3])) == 0.5


def test_best_balanced_accuracy_is_in_hindsight_and_bounds_a_fixed_threshold():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    scores = np.clip(0.5 + 0.25 * (labels - 0.5) + rng.normal(0, 0.2, 400), 0, 1)
    best = operating_point.balanced_accuracy_in_hindsight(labels, scores)[1]
    for threshold in (0.3, 0.5, 0.7):
        predicted = scores >= threshold
        fixed = (np.mean(predicted[labels == 1]) + np.mean(~predicted[labels == 0])) / 2
        assert best >= fixed
    assert operating_point.balanced_accuracy_in_hindsight([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.9])[1] == 0.75
    assert operating_point.balanced_accuracy_in_hindsight([0, 1], [0.2, 0.8])[1] == 1.0


def test_balanced_accuracy_in_hindsight_is_the_best_any_threshold_reaches():
    labels = np.array([0, 0, 1, 1, 0, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.9, 0.5, 0.6])
    threshold, best = operating_point.balanced_accuracy_in_hindsight(labels, scores)
    for cut in np.linspace(0, 1, 101):  # no threshold does better
        predicted = scores >= cut
        assert best >= (predicted[labels == 1].mean() + (~predicted[labels == 0]).mean()) / 2 - 1e-12
    predicted = scores >= threshold
    assert best == pytest.approx((predicted[labels == 1].mean() + (~predicted[labels == 0]).mean()) / 2)
    assert np.isnan(operating_point.balanced_accuracy_in_hindsight(np.ones(3), np.array([0.1, 0.2, 0.3]))[1])
