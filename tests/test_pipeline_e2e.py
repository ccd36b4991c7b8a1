"""End to end: the whole TFX pipeline on spans of generated data, run as new slides arrive.

One module-scoped sequence of runs feeds the tests, with the serving folder and the span
store on TensorFlow's `ram://` file system (an object store: no rename):

1. span 1 only: everything runs, the candidates are cross-validated, chosen by the rule
   and refit, version 1 is pushed;
2. span 2 added (new patients, and more images of two known ones): only span 2 is
   ingested, the window is both spans, the models retrain and are compared with version 1
   (from here on without cross-validation: its trainings are what make a run slow, and run
   1 covers them);
3. nothing new: every component comes from the cache and nothing is pushed;
4. unreachable thresholds: the Evaluators run again, nothing is pushed (NotBlessedError);
5. span 3 with known patients only, retraining only for new patients: span 3 is ingested,
   the training nodes do not run, the report says why.
"""

from __future__ import annotations

import json
import pathlib

import pytest
from span_trees import files_by_patient, link_files, patients_by_label

from histopath import fileio
from histopath.models.densenet import BACKBONE_WEIGHTS_FILE
from histopath.errors import NotBlessedError
from histopath.models import exported
from histopath.pipeline import runs
from histopath.pipeline.config import resolve
from histopath.pipeline.local_runner import run_local

pytestmark = pytest.mark.e2e

SEED = 42
COMPONENTS = {
    "IngestImages", "StatisticsGen", "SchemaGen", "CurateSchema", "ExampleValidator", "AnomalyGate", "Transform",
    "LatestPushedModel", "trainer_densenet", "trainer_mil", "evaluator_densenet", "evaluator_mil", "SelectWinner",
    "Pusher", "RunReport",
}
TRAINING = COMPONENTS - {"IngestImages", "RunReport"}


def _states(config) -> dict[str, str]:
    return {e.component_id: e.state for e in runs.component_executions(config.metadata_path)}


def _ingest_report(config) -> dict:
    return json.loads(pathlib.Path(config.report_dir, "report.json").read_text())["data"]


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    from histopath.data import sample as sample_lib

    folder = tmp_path_factory.mktemp("sample") / "breakhis"
    sample_lib.make_sample("breakhis", str(folder), patients=24, images_per_patient=4, seed=3)
    return folder, files_by_patient(folder, "breakhis")


@pytest.fixture(scope="module")
def spans(sample, tmp_path_factory):
    """Span 1: five benign and five malignant patients (the split gives eval and test one of
    each, train three). Span 2: as many new ones, plus a third image of two span-1 patients;
    span 3 (used last): the fourth image of those two."""
    folder, files = sample
    by_label = patients_by_label(files)
    first = by_label[0][:5] + by_label[1][:5]
    second = by_label[0][5:10] + by_label[1][5:10]
    shared = [first[0], first[-1]]  # a benign and a malignant patient
    root = tmp_path_factory.mktemp("spans")
    span1 = [f.relative_path for p in first for f in (files[p][:2] if p in shared else files[p])]
    span2 = [f.relative_path for p in second for f in files[p]] + [
        f.relative_path for p in shared for f in files[p][2:3]]
    span3 = [f.relative_path for p in shared for f in files[p][3:]]  # known patients only
    return {"root": root, "source": folder, "first": first, "second": second, "shared": shared,
            "span1": span1, "span2": span2, "span3": span3}


@pytest.fixture(scope="module")
def config(spans, tmp_path_factory):
    yield resolve({
        "dataset": "breakhis", "data_dir": str(spans["root"]), "output_dir": str(tmp_path_factory.mktemp("run")),
        "serving_dir": "ram://e2e/serving", "span_store_dir": "ram://e2e/span_store", "seed": SEED,
        "image_size": 64, "densenet": {"image_size": 32}, "mil": {"tile_size": 16, "test_time_augmentation": True},
        "training": {"epochs": 1, "fine_tune_epochs": 1, "batch_size": 16}, "model_training": {"mil": {"epochs": 2}},
        "thresholds": {"min_auc": 0.0, "min_balanced_accuracy": 0.0, "max_auc_drop_vs_pushed": 1.0},
        "selection": {"rule": "test_auc", "folds": 0},
        "version_policy": "increment", "beam_args": ["--direct_running_mode=in_memory"],
    })
    fileio.remove_tree("ram://e2e")


@pytest.fixture(scope="module")
def cross_validated(config):
    """Run 1's settings: 2 patient folds per candidate, the rule, then a refit on all."""
    import dataclasses

    from histopath.pipeline.config import SelectionConfig

    return dataclasses.replace(config, selection=SelectionConfig(rule="cv_simpler_unless_better", folds=2,
                                                                 refit_on_all=True))


@pytest.fixture(scope="module")
def first_run(spans, cross_validated):
    link_files(spans["source"], spans["root"] / "1", spans["span1"])
    report = run_local(cross_validated)
    return report, _states(cross_validated)


@pytest.fixture(scope="module")
def second_run(first_run, spans, config):
    link_files(spans["source"], spans["root"] / "2", spans["span2"])
    report = run_local(config)
    return report, _states(config)


@pytest.fixture(scope="module")
def third_run(second_run, config):
    report = run_local(config)
    return report, _states(config)


def test_first_run_trains_on_span_one_and_pushes_version_one(first_run, config):
    report, states = first_run
    assert set(states) == COMPONENTS and set(states.values()) == {"COMPLETE"}, states
    assert report["winner"] in ("densenet", "mil") and report["pushed"]["pushed"]
    version_dir = f"{config.serving_path}/{config.model_name}/1"
    assert report["pushed"] == {"pushed": True, "destination": version_dir, "version": "1"}
    assert exported.list_versions(f"{config.serving_path}/{config.model_name}") == [1]
    info = exported.read_model_info(version_dir)
    assert info["model_kind"] == report["winner"]
    for name in ("report.json", "summary.md", "roc.png", "coverage.png"):
        assert pathlib.Path(config.report_dir, name).stat().st_size > 0
    assert json.loads(pathlib.Path(config.output_path, "run_config.json").read_text())["image_size"] == 64
    data = report["data"]
    assert [s["span"] for s in data["window"]] == ["1"] and data["window"][0]["ingested_now"]
    for candidate in report["candidates"].values():
        overall = candidate["metrics"]["overall"]
        assert candidate["blessed"] and overall["example_count"] > 0 and 0.0 <= overall["auc"] <= 1.0
        assert len(candidate["metrics"]["patient_id"]) >= 2 and candidate["metrics"]["magnification"]
        # Intervals over the test patients, and the cross-validation the winner was chosen by.
        assert candidate["test_patients"] == {"benign": 1, "malignant": 1}
        assert candidate["intervals"]["auc"]["bootstrap_valid"] >= 0 and candidate["warnings"]
        assert candidate["cross_validation"]["patients"] == 8 and 0.0 <= candidate["cross_validation"]["auc"] <= 1.0
        # The "not sure" band, chosen on the cross-validated predictions of all 8 patients.
        band = candidate["abstention"]
        assert band["chosen_on"] == "cv" and band["min_coverage"] == 0.8 and band["coverage"] >= 0.8
        assert band["images"] == candidate["cross_validation"]["images"]
        # What the Trainer cost: every fold, the refit and the threshold.
        used = candidate["training_resources"]
        assert used["wall_seconds"] > 0 and used["cpu_seconds"] > 0
        assert used["peak_rss_bytes"] >= max(used["start_rss_bytes"], used["end_rss_bytes"]) > 0
    assert report["rule"] == "cv_simpler_unless_better" and "cross-validated over 8" in report["reason"]
    summary = pathlib.Path(config.report_dir, "summary.md").read_text()
    assert "Chosen by cv_simpler_unless_better" in summary and "Warning:" in summary
    assert info["cross_validation"]["folds"] == 2 and info["cross_validation"]["refit_on_all"]
    assert info["abstention"] == report["candidates"][report["winner"]]["abstention"]
    assert info["outputs"][5:7] == ["uncertainty", "not_sure"] and "\"Not sure\" band" in summary
    assert "What each Trainer cost" in summary


def test_second_run_ingests_only_the_new_span_and_trains_on_both(second_run, spans, config):
    report, states = second_run
    assert set(states.values()) == {"COMPLETE"}, states
    window = {span["span"]: span for span in report["data"]["window"]}
    assert sorted(window) == ["1", "2"]
    assert not window["1"]["ingested_now"] and window["2"]["ingested_now"]
    assert report["data"]["plan"]["retrain"] and report["data"]["plan"]["new_spans"] == ["2"]
    assert sorted(report["data"]["plan"]["new_patients"]) == sorted(spans["second"])
    # Splits never move: a span-1 patient keeps its split in span 2.
    split_of = {}
    for span in window.values():
        for split, details in span["splits"].items():
            for patient in details["patients"]:
                assert split_of.setdefault(patient, split) == split, patient
    for patient in spans["shared"]:  # images in both spans, one split
        split = split_of[patient]
        assert patient in window["1"]["splits"][split]["patients"] and patient in window["2"]["splits"][split]["patients"]
    # The test set is the union of both spans' test patients, with both classes.
    test_patients = set(report["data"]["splits"]["test"]["patients"])
    assert test_patients == set(window["1"]["splits"]["test"]["patients"]) | set(window["2"]["splits"]["test"]["patients"])
    balance = report["data"]["balance"]["test"]
    assert balance["patients"]["benign"] >= 1 and balance["patients"]["malignant"] >= 1
    assert sum(balance["patients"].values()) == len(test_patients)
    assert "difference_from_all" in balance
    # Compared with version 1 on the same test patients, then pushed (thresholds let anything through).
    assert report["pushed"]["version"] == "2"
    summary = pathlib.Path(config.report_dir, "summary.md").read_text()
    assert "| 2 | " in summary and f"| test | {balance['patients']['benign']} / {balance['patients']['malignant']} |" in summary


def test_third_run_with_nothing_new_only_looks_up_the_cache(third_run, config):
    report, states = third_run
    assert set(states) == COMPONENTS and set(states.values()) == {"CACHED"}, states
    assert exported.list_versions(f"{config.serving_path}/{config.model_name}") == [1, 2]
    assert report["pushed"]["version"] == "2"  # the report of the run that pushed it, from the cache


def test_the_pushed_model_answers_a_prediction_from_the_object_store(third_run, spans, config):
    model = exported.load(f"{config.serving_path}/{config.model_name}")
    image = (spans["source"] / spans["span1"][0]).read_bytes()
    (prediction,) = exported.predict_bytes(model, [image])
    assert 0.0 <= prediction["probability"] <= 1.0 and prediction["label"] in (0, 1)


def test_trainers_follow_their_own_overrides_and_leave_backbone_weights(second_run, config):
    root = pathlib.Path(config.pipeline_root)
    for kind, phases, averaged in (("densenet", {"head", "fine_tune"}, False), ("mil", {"train"}, True)):
        info_paths = sorted(root.glob(f"trainer_{kind}/model/*/Format-Serving/assets.extra/model_info.json"),
                            key=lambda path: int(path.parts[-4]))  # by artifact id
        assert len(info_paths) == 2  # one per training run
        later = json.loads(info_paths[-1].read_text())
        assert set(later["history"]["phase"]) == phases and "cross_validation" not in later
        info = json.loads(info_paths[0].read_text())
        # Run 1's export is the refit on every train and eval patient, for the epochs the folds kept.
        assert set(info["history"]["phase"]) == phases and info["test_time_augmentation"] == averaged
        kept = info["cross_validation"]["refit_epochs"]
        assert len(info["history"]["phase"]) == sum(kept.values()) and set(kept) == phases
        assert info["eval_split"]["images"] > 0 and "auc_single_view" not in info["eval_split"]
    weights = sorted(root.glob(f"trainer_densenet/model_run/*/{BACKBONE_WEIGHTS_FILE}"))[-1]
    from histopath.models import config as model_config
    from histopath.models import densenet

    warm = densenet.build_densenet_model(model_config.DenseNetConfig(image_size=48, weights=str(weights)))
    assert len(densenet.backbone(warm).weights) > 500  # every backbone tensor came from the file


def test_unreachable_thresholds_push_nothing(third_run, config):
    import dataclasses

    strict = dataclasses.replace(config, thresholds=dataclasses.replace(config.thresholds, min_auc=1.01))
    with pytest.raises(NotBlessedError, match="nothing pushed"):
        run_local(strict)
    states = _states(config)
    assert states["trainer_densenet"] == states["trainer_mil"] == states["IngestImages"] == "CACHED"
    assert states["evaluator_densenet"] == states["evaluator_mil"] == "COMPLETE"
    assert exported.list_versions(f"{config.serving_path}/{config.model_name}") == [1, 2]


def test_a_span_without_new_patients_is_ingested_but_does_not_retrain(third_run, spans, config):
    import dataclasses

    link_files(spans["source"], spans["root"] / "3", spans["span3"])
    patient_policy = dataclasses.replace(config, min_new_patients=1)
    report = run_local(patient_policy)
    states = _states(config)
    assert states["IngestImages"] == states["RunReport"] == "COMPLETE"
    assert not set(states) & TRAINING  # the training nodes did not run
    assert not report["retrained"] and "fewer than the 1 that trigger retraining" in report["reason"]
    assert [s["span"] for s in report["data"]["window"] if s["ingested_now"]] == ["3"]
    assert "No retraining" in pathlib.Path(config.report_dir, "summary.md").read_text()
    assert exported.list_versions(f"{config.serving_path}/{config.model_name}") == [1, 2]


def test_a_bad_span_is_refused_naming_it_and_earlier_spans_stay(third_run, spans, config, tmp_path):
    import dataclasses

    from histopath.errors import DataError

    bad_root = tmp_path / "data"
    bad_root.mkdir()
    (bad_root / "1").symlink_to(spans["root"] / "1", target_is_directory=True)
    (bad_root / "2").mkdir()  # an empty span
    bad = dataclasses.replace(config, data_dir=str(bad_root))
    with pytest.raises(DataError, match="span 2: source folder .* holds no files"):
        run_local(bad)
    (bad_root / "2").rmdir()
    (bad_root / "2" / "wrong").mkdir(parents=True)
    (bad_root / "2" / "wrong" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="span 2: .* is not in the breakhis layout"):
        run_local(bad)
    (bad_root / "last-week").mkdir()
    with pytest.raises(DataError, match="span folder.* last-week: the name does not parse"):
        run_local(bad)
    # Nothing of the earlier spans was touched: their records, the served versions.
    store = fileio.listdir(f"{config.span_store_path}/{fileio.listdir(config.span_store_path)[0]}")
    assert [name.split("-")[0] for name in store if name != "trained.json"] == ["1", "2", "3"]
    assert exported.list_versions(f"{config.serving_path}/{config.model_name}") == [1, 2]


# --- IDC with slide context ------------------------------------------------------------

@pytest.fixture(scope="module")
def idc_slide_context_run(tmp_path_factory):
    """DenseNet201 alone on a generated IDC sample (one tumour region per positive slide)."""
    from histopath.data import sample

    data = tmp_path_factory.mktemp("idc_sample") / "idc"
    sample.make_sample("idc", str(data), patients=12, images_per_patient=36, seed=3)
    config = resolve({
        "dataset": "idc", "data_dir": str(data), "output_dir": str(tmp_path_factory.mktemp("idc_run")),
        "models": ["densenet"], "image_size": 48, "densenet": {"image_size": 32}, "slide_context_sigma": 1.5,
        "training": {"epochs": 1, "fine_tune_epochs": 1, "batch_size": 16},
        "thresholds": {"min_auc": 0.0, "min_balanced_accuracy": 0.0, "max_auc_drop_vs_pushed": 1.0},
        "version_policy": "increment", "beam_args": ["--direct_running_mode=in_memory"],
    })
    run_local(config)
    return data, pathlib.Path(config.serving_path, config.model_name, "1")


def test_idc_trainer_stores_a_slide_context_threshold_that_evaluate_applies(idc_slide_context_run, tmp_path):
    import subprocess
    import sys

    import numpy as np

    from histopath.data import layouts
    from histopath.evaluation import slide_context

    data, model_dir = idc_slide_context_run
    info = json.loads((model_dir / "assets.extra" / "model_info.json").read_text())
    setting = info["slide_context"]
    assert (setting["sigma"], setting["grid_step"], setting["rule"]) == (1.5, 50, slide_context.RULE)
    assert 0.0 <= setting["decision_threshold"] <= 1.0 and setting["eval_patients"] >= 1
    assert 0.0 <= setting["eval_auc"] <= 1.0 and 0.0 <= setting["eval_auc_without"] <= 1.0
    assert info["abstention"]["chosen_on"] == "eval"  # no folds: the band comes from the eval split

    output = tmp_path / "evaluation.json"
    histopath = pathlib.Path(sys.executable).parent / "histopath"
    completed = subprocess.run([str(histopath), "evaluate", "--model", str(model_dir), "--data", str(data),
                                "--dataset", "idc", "--bootstrap", "50", "--output", str(output)],
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr
    assert "image level with slide context (sigma 1.5 patches, threshold" in completed.stdout
    assert "slide level with slide context: tumour fraction called vs labelled, over 12 patients" in completed.stdout
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
    # The sample has a few glass-only patches: left out as "no tissue detected".
    assert all("no tissue detected" in failed["error"] for failed in result["failed_images"])
    assert len(result["failed_images"]) < 12 * 36 // 20
    assert matrix["tp"] + matrix["fp"] == predicted
    assert context["image_level"]["n_items"] == 12 * 36 - len(result["failed_images"])
    assert pathlib.Path(result["plots"]["roc"]).stat().st_size > 0


# --- a small cohort, and a third model kind ----------------------------------------------

def test_a_small_cohort_trains_the_registered_cnn_beside_the_mil_and_pushes(tmp_path_factory):
    """Two patients of each class and the plain CNN, a kind added by one module and one
    registration line: the run trains, cross-validates in the folds the cohort allows,
    chooses and pushes. Eval and test get one patient each, so the test split has one
    class and no AUC (TFMA reports 0): the Evaluator's thresholds are judged on the
    cross-validated predictions instead, and the report says so."""
    from histopath.data import sample

    data = tmp_path_factory.mktemp("small_cohort") / "breakhis"
    sample.make_sample("breakhis", str(data), patients=4, images_per_patient=6, seed=5)
    config = resolve({
        "dataset": "breakhis", "data_dir": str(data), "output_dir": str(tmp_path_factory.mktemp("small_run")),
        "models": ["cnn", "mil"], "image_size": 48, "mil": {"tile_size": 16},
        "cnn": {"conv_layers": 2, "base_filters": 8},
        "training": {"epochs": 2, "batch_size": 8},
        "selection": {"rule": "cv_auc", "folds": 5},
        # TFMA's balanced accuracy of a one-class split is NaN, below any bound; on the
        # cross-validated predictions it is at least 0.5 at their own threshold.
        "thresholds": {"min_auc": 0.0, "min_balanced_accuracy": 0.01, "max_auc_drop_vs_pushed": 1.0},
        "version_policy": "increment", "beam_args": ["--direct_running_mode=in_memory"],
    })
    report = run_local(config)
    assert set(report["candidates"]) == {"cnn", "mil"} and report["pushed"]["pushed"]
    assert sorted(report["data"]["balance"]["test"]["patients"].values()) == [0, 1]
    for name, candidate in report["candidates"].items():
        cv = candidate["cross_validation"]
        assert cv["patients"] == 3 and any("folds without every class" in warning for warning in cv["warnings"])
        assert candidate["metrics"]["overall"]["auc"] == 0.0  # what TFMA makes of a one-class split
        assert candidate["judged_on"].startswith("cross-validation, since the test patients are all of one class")
        assert candidate["blessed"] and "balanced accuracy" in candidate["judged_on"]
        assert f"{name} was judged on cross-validation" in report["reason"]
    info = exported.read_model_info(f"{config.serving_path}/{config.model_name}/1")
    assert info["model_kind"] == report["winner"] and info["cross_validation"]["folds"] == 3
    summary = pathlib.Path(config.report_dir, "summary.md").read_text()
    assert "cross-validation: 3 folds without every class" in summary and "undefined (one class)" in summary
