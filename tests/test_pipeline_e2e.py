"""End-to-end: the whole TFX pipeline on a tiny generated data set, then its cache.

One module-scoped run feeds several tests: artifacts and blessing, the pushed SavedModel
answering a prediction, a second run served from the cache, and a run whose thresholds no
model can pass (nothing pushed, NotBlessedError).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import pytest

from histopath.errors import NotBlessedError
from histopath.pipeline import runs
from histopath.components.trainer import BACKBONE_WEIGHTS_FILE
from histopath.pipeline.config import PipelineConfig, ThresholdConfig
from histopath.pipeline.local_runner import run_local

pytestmark = pytest.mark.e2e

COMPONENTS = {
    "ImportExampleGen", "StatisticsGen", "SchemaGen", "CurateSchema", "ExampleValidator",
    "AnomalyGate", "Transform", "latest_pushed_model_resolver", "trainer_densenet",
    "trainer_mil", "evaluator_densenet", "evaluator_mil", "SelectWinner", "Pusher", "RunReport",
}


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory) -> pathlib.Path:
    from histopath.data import sample

    folder = tmp_path_factory.mktemp("sample") / "breakhis"
    sample.make_sample("breakhis", str(folder), patients=12, images_per_patient=6, seed=3)
    return folder


@pytest.fixture(scope="module")
def first_run(sample_dir, tmp_path_factory):
    config = PipelineConfig(
        dataset="breakhis",
        data_dir=str(sample_dir),
        output_dir=str(tmp_path_factory.mktemp("run")),
        image_size=64,
        densenet={"image_size": 32},
        mil={"tile_size": 16, "test_time_augmentation": True},
        training={"epochs": 1, "fine_tune_epochs": 1, "batch_size": 16},
        model_training={"mil": {"epochs": 2}},
        thresholds=ThresholdConfig(min_auc=0.0, min_balanced_accuracy=0.0, max_auc_drop_vs_pushed=1.0),
        version_policy="increment",
        beam_args=("--direct_running_mode=in_memory",),
    ).validate()
    report = run_local(config)
    return config, report, runs.component_executions(config.metadata_path)


def test_every_component_ran_and_the_winner_was_pushed(first_run):
    config, report, executions = first_run
    assert {e.component_id for e in executions} == COMPONENTS
    assert all(e.state == "COMPLETE" for e in executions), executions
    assert report["winner"] in ("densenet", "mil")
    assert set(report["candidates"]) == {"densenet", "mil"}
    for candidate in report["candidates"].values():
        assert candidate["blessed"]
        overall = candidate["metrics"]["overall"]
        assert overall["example_count"] > 0 and 0.0 <= overall["auc"] <= 1.0
        assert len(candidate["metrics"]["patient_id"]) >= 2  # per-patient slices
        assert candidate["metrics"]["magnification"]  # BreakHis: per-magnification slices
    version_dir = config.serving_path / config.model_name / "1"
    assert report["pushed"] == {"pushed": True, "destination": str(version_dir), "version": "1"}
    assert (version_dir / "saved_model.pb").is_file()
    info = json.loads((version_dir / "assets.extra" / "model_info.json").read_text())
    assert info["model_kind"] == report["winner"]
    assert not [p for p in version_dir.parent.iterdir() if p.name.startswith(".")]  # no staging left
    for name in ("report.json", "summary.md", "roc.png"):
        assert (config.report_dir / name).stat().st_size > 0
    assert json.loads((config.output_path / "run_config.json").read_text())["image_size"] == 64
    manifest = json.loads((config.records_path / "manifest.json").read_text())
    patients = [set(manifest["splits"][s]["patient_ids"]) for s in ("train", "eval", "test")]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])


def test_trainers_follow_their_own_training_overrides_and_leave_backbone_weights(first_run):
    config, _, _ = first_run
    root = config.pipeline_root
    phases, averaged = {}, {}
    for kind in ("densenet", "mil"):
        (info_path,) = root.glob(f"trainer_{kind}/model/*/Format-Serving/assets.extra/model_info.json")
        info = json.loads(info_path.read_text())
        phases[kind], averaged[kind] = info["history"]["phase"], info["test_time_augmentation"]
        assert info["eval_split"]["images"] > 0
        assert ("auc_single_view" in info["eval_split"]) == averaged[kind]
    assert phases == {"densenet": ["head", "fine_tune"], "mil": ["train", "train"]}
    assert averaged == {"densenet": False, "mil": True}  # each trainer's own model config
    (weights,) = root.glob(f"trainer_densenet/model_run/*/{BACKBONE_WEIGHTS_FILE}")
    from histopath.components import densenet, model_config

    warm = densenet.build_densenet_model(model_config.DenseNetConfig(image_size=48, weights=str(weights)))
    assert len(densenet.backbone(warm).weights) > 500  # every backbone tensor came from the file


def test_pushed_model_answers_a_prediction(first_run, sample_dir):
    from histopath.components.export import load_serving_model, predict_bytes

    config, report, _ = first_run
    model = load_serving_model(str(config.serving_path / config.model_name / "1"))
    image = next(sample_dir.rglob("*.png")).read_bytes()
    (prediction,) = predict_bytes(model, [image])
    assert 0.0 <= prediction["probability"] <= 1.0
    assert prediction["label"] in (0, 1)
    if report["winner"] == "mil":
        assert abs(sum(prediction["attention"]) - 1.0) < 1e-4


def test_reruns_use_the_cache_and_do_not_push_the_served_model_again(first_run):
    config, _, _ = first_run
    # Run 2: the data, Transform and Trainers come from the cache; the Evaluators run again
    # because there is now a pushed model to compare with, and the winner is that model.
    report = run_local(config)
    states = {e.component_id: e.state for e in runs.component_executions(config.metadata_path)}
    upstream = COMPONENTS - {"latest_pushed_model_resolver", "evaluator_densenet", "evaluator_mil",
                             "SelectWinner", "Pusher", "RunReport"}
    assert {states[c] for c in upstream} == {"CACHED"}, states
    assert states["evaluator_densenet"] == states["evaluator_mil"] == "COMPLETE"
    assert report["already_serving"] and not report["pushed"]["pushed"]
    # Run 3: nothing changed at all, so every component is a cache hit.
    run_local(config)
    states = {e.component_id: e.state for e in runs.component_executions(config.metadata_path)}
    assert states.pop("latest_pushed_model_resolver") == "COMPLETE"  # resolvers always run
    assert set(states.values()) == {"CACHED"}, states
    assert sorted(p.name for p in (config.serving_path / config.model_name).iterdir()) == ["1"]


def test_unreachable_thresholds_push_nothing(first_run):
    config, _, _ = first_run
    strict = dataclasses.replace(
        config, thresholds=ThresholdConfig(min_auc=1.01, min_balanced_accuracy=0.0, max_auc_drop_vs_pushed=1.0)
    )
    with pytest.raises(NotBlessedError, match="nothing pushed"):
        run_local(strict)
    states = {e.component_id: e.state for e in runs.component_executions(config.metadata_path)}
    assert states["trainer_densenet"] == states["trainer_mil"] == "CACHED"
    assert states["evaluator_densenet"] == states["evaluator_mil"] == "COMPLETE"
    assert sorted(p.name for p in (config.serving_path / config.model_name).iterdir()) == ["1"]


# --- IDC with slide context ------------------------------------------------------------

@pytest.fixture(scope="module")
def idc_slide_context_run(tmp_path_factory):
    """DenseNet201 alone on a generated IDC sample (one tumour region per positive slide)."""
    from histopath.data import sample

    data = tmp_path_factory.mktemp("idc_sample") / "idc"
    sample.make_sample("idc", str(data), patients=12, images_per_patient=36, seed=3)
    config = PipelineConfig(
        dataset="idc", data_dir=str(data), output_dir=str(tmp_path_factory.mktemp("idc_run")),
        models=("densenet",), image_size=48, densenet={"image_size": 32}, slide_context_sigma=1.5,
        training={"epochs": 1, "fine_tune_epochs": 1, "batch_size": 16},
        thresholds=ThresholdConfig(min_auc=0.0, min_balanced_accuracy=0.0, max_auc_drop_vs_pushed=1.0),
        version_policy="increment", beam_args=("--direct_running_mode=in_memory",),
    ).validate()
    run_local(config)
    return data, next(config.serving_path.glob(f"{config.model_name}/*"))


def test_idc_trainer_stores_a_slide_context_threshold_that_evaluate_applies(idc_slide_context_run, tmp_path):
    import subprocess
    import sys

    import numpy as np

    from histopath.components import slide_context
    from histopath.data import layouts

    data, model_dir = idc_slide_context_run
    info = json.loads((model_dir / "assets.extra" / "model_info.json").read_text())
    setting = info["slide_context"]
    assert (setting["sigma"], setting["grid_step"], setting["rule"]) == (1.5, 50, slide_context.RULE)
    assert 0.0 <= setting["decision_threshold"] <= 1.0 and setting["eval_patients"] >= 1
    assert 0.0 <= setting["eval_auc"] <= 1.0 and 0.0 <= setting["eval_auc_without"] <= 1.0

    output = tmp_path / "evaluation.json"
    histopath = pathlib.Path(sys.executable).parent / "histopath"
    completed = subprocess.run([str(histopath), "evaluate", "--model", str(model_dir), "--data", str(data),
                                "--dataset", "idc", "--bootstrap", "50", "--output", str(output)],
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr
    assert "image level with slide context (sigma 1.5 patches, threshold" in completed.stdout
    result = json.loads(output.read_text())
    # The served model still takes one image: the context is computed from its answers.
    positions = {f.relative_path: (f.patch_x, f.patch_y) for f in layouts.scan_source("idc", str(data)).files}
    images = result["images"]
    expected = slide_context.smooth_slide_scores(
        [i["probability"] for i in images], [i["patient_id"] for i in images],
        [positions[i["path"]][0] for i in images], [positions[i["path"]][1] for i in images], 1.5)
    np.testing.assert_allclose([i["context_probability"] for i in images], expected, rtol=1e-9)
    context = result["slide_context"]
    assert context["decision_threshold"] == setting["decision_threshold"]
    predicted = int((expected >= setting["decision_threshold"]).sum())
    matrix = context["image_level"]["confusion_matrix"]
    assert matrix["tp"] + matrix["fp"] == predicted and context["image_level"]["n_items"] == 12 * 36
    assert pathlib.Path(result["plots"]["roc"]).stat().st_size > 0
