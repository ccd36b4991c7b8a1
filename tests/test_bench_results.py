"""The real-data study's report (bench/study/) on synthetic step results.

The real run takes hours on real data (`python -m bench.results`); here every step result
is made from random predictions, so the generated tables (rows, columns, values formatted
from the inputs, targets met or not), the files, the figures and results.json are checked
in seconds. Wording is not: the prose is docs/results.md, written by hand.
"""

from __future__ import annotations

import copy
import json
import pathlib
import time

import numpy as np
import pytest

from bench.study import cv_tables, report, run, run_tables, steps, tables
from histopath.evaluation import scoring as evaluation

pytestmark = pytest.mark.bench  # tests of the benchmarks: opt-in (`pytest -m bench`)

IDC_PATIENTS = ["8867", "8950", "9077"]


def _scored(rng, n_images: int, patients: list[str], auc_shift: float) -> dict:
    labels = rng.integers(0, 2, n_images)
    scores = np.clip(rng.normal(0.5 + auc_shift * (labels - 0.5), 0.2), 0, 1)
    patient_ids = [patients[i % len(patients)] for i in range(n_images)]
    scored = evaluation.score_predictions(labels, scores, (scores >= 0.5).astype(int), patient_ids,
                                          threshold=0.5, bootstrap=50, seed=0)
    return {"decision_threshold": 0.5, **scored}


def _png(path: pathlib.Path) -> str:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (1200, 600), (200, 120, 180)).save(path)
    return str(path)


def _run(name: str, kinds: list[str]) -> dict:
    return {"step": name, "wall_seconds": 600.0, "peak_memory_mib": 3000.0, "command": ["histopath", "run", name],
            "trainers": {k: {"train_seconds": 100.0, "history": {"epoch": [0, 1], "val_auc": [0.8, 0.85]}}
                         for k in kinds}}


def _throughput(kind: str) -> dict:
    return {"model_kind": kind, "compared_phase": "train", "tfx_images_per_second": 90.0,
            "bare_images_per_second": 95.0, "ratio_tfx_over_bare": 0.947,
            "model_compute_images_per_second": 100.0, "ratio_tfx_over_model_compute": 0.9,
            "input_pipeline_only_images_per_second": 900.0}


def _table(found: list, key: str) -> tables.Table:
    return next(table for table in found if table.key == key)


def _row(table: tables.Table, *first_cells: str) -> dict:
    """The record of the row whose first cells are `first_cells`."""
    return next(record for record, row in zip(table.records(), table.rows)
                if row[:len(first_cells)] == list(first_cells))


def _auc(block: dict) -> str:
    return tables.with_interval(tables.metric(block, "image_level", "auc"))


def _set(block: dict, name: str, value: float, low: float, high: float) -> None:
    block["image_level"]["metrics"][name].update(value=value, ci_low=low, ci_high=high)


@pytest.fixture()
def synthetic_results(tmp_path):
    rng = np.random.default_rng(0)
    breakhis_patients = ["1", "2", "3", "4", "5"]
    records = {"splits": {s: {"patients": ["1"], "num_examples": 10, "label_counts": {"benign": 5, "malignant": 5}}
                          for s in ("train", "eval", "test")}}
    plots = {"roc": _png(tmp_path / "roc.png"), "calibration": _png(tmp_path / "cal.png")}
    localisation = {key: {"value": 0.8, "ci_low": 0.7, "ci_high": 0.9, "n_tiles": 40, "n_positive_tiles": 10,
                          "n_negative_tiles": 30, "n_bags": 10, "n_patients": 3}
                    for key in ("within_bag", "pooled", "whole_slide")}
    idc = {
        "records": records,
        "runs": {"densenet": _run("idc-densenet", ["densenet"]), "mil": _run("idc-mil", ["mil"])},
        "evaluations": {
            "densenet": {**_scored(rng, 300, IDC_PATIENTS, 0.6), "plots": plots},
            "mil": {**_scored(rng, 80, IDC_PATIENTS, 0.3), "localisation": localisation,
                    "heatmaps": [_png(tmp_path / "slide.png")]},
            "baseline": {**_scored(rng, 300, IDC_PATIENTS, 0.5), "baseline": {"eval_auc": 0.9}},
        },
        "throughput": {"densenet": _throughput("densenet"), "mil": _throughput("mil")},
    }
    breakhis = {
        "records": records,
        "runs": {"models": _run("bh", ["densenet", "mil"]), "models_fp32": _run("bh32", ["densenet", "mil"]),
                 "warm_start": _run("warm", ["densenet"])},
        "evaluations": {name: {**_scored(rng, 100, breakhis_patients, 0.9), "plots": plots,
                               "baseline": {"eval_auc": 0.95}}
                        for name in ("densenet", "mil", "densenet_fp32", "mil_fp32", "densenet_warm_start",
                                     "baseline")},
        "throughput": {"densenet": _throughput("densenet")},
    }
    speed = {"batch_size": 8, "machine": {"amx": True, "avx512_bf16": True},
             "results": {k: {p: {"image_size": 224, "train_images_per_second": 10.0, "infer_images_per_second": 20.0}
                             for p in ("float32", "mixed_bfloat16")} for k in ("densenet", "mil")},
             "ratios": {k: {"train_images_per_second_bf16_over_fp32": 1.0,
                            "infer_images_per_second_bf16_over_fp32": 1.0} for k in ("densenet", "mil")}}
    data = {"created": "2026-11-26T00:00:00+00:00", "git_commit": "abc1234",
            "machine": {"cpus": 2, "cpu": "test CPU"}, "packages": {"tfx": "1.16.0"},
            "rules": {"score": evaluation.PATIENT_SCORE_RULE, "label": evaluation.PATIENT_LABEL_RULE},
            "targets": run.TARGETS, "idc": idc, "breakhis": breakhis, "precision_speed": {"models": speed}}
    data["commands"] = run_tables.collect_commands({"idc": idc, "breakhis": breakhis})
    return data


def _recipe_cv() -> dict:
    def scores(mean):
        return {"mean": mean, "folds": [mean - 0.01, mean + 0.01]}
    return {"patch": {"folds": [["1", "3"], ["2", "4"]], "recipes": {
                "a": {"recipe": {}, "auc": scores(0.85), "within_bag": scores(0.80)},
                "b": {"recipe": {}, "auc": scores(0.89), "within_bag": scores(0.78)}}},
            "mil": {"folds": [["1", "3"], ["2", "4"]], "recipes": {
                "c": {"recipe": {}, "auc": scores(0.90), "within_bag": scores(0.69)},
                "d": {"recipe": {"epochs": 32}, "auc": scores(0.91), "within_bag": scores(0.66)}}}}


def test_report_writes_tables_figures_and_results_json(synthetic_results, tmp_path):
    ctx = steps.Context(data=tmp_path, workdir=tmp_path / "work", redo=set())
    docs = tmp_path / "docs"
    ev = synthetic_results["idc"]["evaluations"]
    ev["baseline_raw"] = copy.deepcopy(ev["baseline"])
    densenet = synthetic_results["idc"]["runs"]["densenet"]["trainers"]["densenet"]
    densenet.update(test_time_augmentation=True, eval_split={"images": 40, "auc": 0.93, "auc_single_view": 0.91})
    (docs / "results").mkdir(parents=True)
    (docs / "results" / "stale.png").write_bytes(b"")  # the folder is regenerated as a whole
    written = report.write_report(ctx, synthetic_results, docs, time.perf_counter())
    folder = docs / "results"
    assert not (folder / "stale.png").exists()
    for name in ("results.json", "tables.md", "patient_cv.md", "compute.md", "reproducibility.md", "idc-slide-0.png",
                 "idc-densenet-roc.png", "breakhis-densenet-roc.png", "breakhis-mil-roc.png"):
        assert folder / name in written and (folder / name).is_file(), name
    from PIL import Image

    with Image.open(folder / "idc-slide-0.png") as slide:
        assert max(slide.size) <= report.SLIDE_FIGURE_MAX_SIDE  # a small figure, not a copy of the slide
    assert json.loads((folder / "results.json").read_text()) == json.loads(json.dumps(synthetic_results))

    # Every table with rows is in its file, under its heading.
    for name, _, file_tables in report.table_files(synthetic_results, 0.0):
        text = (folder / name).read_text()
        assert "git abc1234" in text
        for table in file_tables:
            if table.rows:
                assert "\n".join(table.markdown()) in text, table.key
    result_tables = tables.result_tables(synthetic_results)
    summary = _table(result_tables, "summary")
    assert summary.columns == ["data set", "model", "eval-split AUC", "test AUC [95 % CI]"]
    assert [row[:2] for row in summary.rows] == [
        ["IDC", "plain 6-conv CNN (baseline)"], ["IDC", "plain 6-conv CNN, no stain normalisation (baseline)"],
        ["IDC", "DenseNet201 from scratch"], ["IDC", "attention MIL (regions)"],
        ["BreakHis", "plain 8-conv CNN (baseline)"], ["BreakHis", "DenseNet201 from scratch"],
        ["BreakHis", "DenseNet201 warm-started from IDC"], ["BreakHis", "attention MIL"]]
    # The best eval AUC during training (what early stopping kept) next to the test AUC.
    assert _row(summary, "IDC", "DenseNet201 from scratch") == {
        "data set": "IDC", "model": "DenseNet201 from scratch", "eval-split AUC": "0.850",
        "test AUC [95 % CI]": _auc(ev["densenet"])}
    assert _row(summary, "IDC", "plain 6-conv CNN (baseline)")["eval-split AUC"] == "0.900"
    image_level = _table(result_tables, "idc-image")
    assert image_level.columns[:3] == ["model", "unit", "n (benign/malignant)"]
    assert _row(image_level, "attention MIL (regions)")["unit"] == "region (4x4 patches)"
    assert _row(image_level, "plain 6-conv CNN, no stain normalisation (baseline)")["unit"] == "patch"
    # Each check says whether the test value reaches its goal; the weak synthetic MIL misses.
    for check in tables.target_checks(synthetic_results):
        assert check.met == (check.entry["value"] is not None and check.entry["value"] >= check.goal)
    assert _row(_table(result_tables, "targets"), "IDC", "attention MIL (regions)", "image auc")["met"] == "no"
    counts = ev["densenet"]["image_level"]["label_counts"]
    assert _row(image_level, "DenseNet201 from scratch")["n (benign/malignant)"] == (
        f"300 ({counts['benign']}/{counts['malignant']})")
    assert _row(_table(result_tables, "idc-splits"), "eval") == {
        "split": "eval", "patients": "1 (1)", "images": "10", "benign": "5", "malignant": "5"}

    compute = run_tables.compute_tables(synthetic_results)
    assert _table(compute, "test-time-augmentation").rows == [
        ["idc densenet", "densenet", "40", "0.910", "0.930", "+0.020"]]  # only the averaging model
    assert _row(_table(compute, "throughput"), "idc densenet")["Trainer img/s"] == "90.0"
    assert _table(compute, "throughput").rows[0][2:] == ["90.0", "95.0", "0.95", "100.0", "0.90", "900.0"]
    assert _row(_table(compute, "runs"), "idc densenet + mil (the full IDC pipeline)")["wall time"] == "20.0 min"
    assert _row(_table(compute, "precision-accuracy"), "densenet")["image AUC fp32"] == _auc(
        synthetic_results["breakhis"]["evaluations"]["densenet_fp32"])
    reproducibility = run_tables.reproducibility_tables(synthetic_results, 0.0)
    commands = _table(reproducibility, "commands")
    assert commands.rows[0] == ["idc-densenet", "`histopath run idc-densenet`"]  # the commands, in order
    assert [row[0] for row in commands.rows] == ["idc-densenet", "idc-mil", "bh", "bh32", "warm"]
    settings = dict(_table(reproducibility, "settings").rows)
    assert settings["git commit"] == "abc1234" and settings["CPU"] == "2 cores, test CPU"
    assert settings["steps' wall time, total"] == "50 min"  # five runs of 10 min
    assert _row(_table(reproducibility, "packages"), "tfx")["version"] == "1.16.0"

    # --report-only: the tables again from the stored results.json, the figures kept.
    (folder / "tables.md").unlink()
    assert run.main(["--docs", str(docs), "--report-only"]) == 0
    assert (folder / "tables.md").is_file() and (folder / "idc-slide-0.png").is_file()


def test_mil_localisation_rows_follow_the_scores_present(synthetic_results):
    idc = synthetic_results["idc"]
    labels = [row[0] for row in tables.localisation_table(idc).rows]
    assert labels == ["attention, within positive bags (mean per-bag AUC)", "attention, pooled over positive bags",
                      "attention x region probability, all regions"]  # the synthetic MIL has no instance classifier
    idc["evaluations"]["mil"]["tile_localisation"] = copy.deepcopy(idc["evaluations"]["mil"]["localisation"])
    table = tables.localisation_table(idc)
    assert _row(table, "instance classifier's tile probability, within positive bags") == {
        "score": "instance classifier's tile probability, within positive bags",
        "AUC [95 % CI]": "0.800 [0.700, 0.900]",
        "tiles (positive/negative)": "40 (10/30)", "bags": "10", "patients": "3"}
    # The localisation target (0.9) is checked like the others: 0.8 misses it.
    check = next(c for c in tables.target_checks(synthetic_results) if c.target == "within-bag attention AUC")
    assert (check.dataset, check.model, check.goal, check.met) == ("IDC", "attention MIL (regions)", 0.9, False)


def test_run_step_reuses_finished_results_and_reruns_dependents(tmp_path):
    ctx = steps.Context(data=tmp_path, workdir=tmp_path / "work", redo=set())
    calls = []

    def work(name):
        def run_work(folder):
            calls.append(name)
            return {"value": len(calls)}
        return run_work

    first = steps.run_step(ctx, "a", work("a"))
    steps.run_step(ctx, "b", work("b"), depends_on=["a"])
    assert first["value"] == 1 and first["wall_seconds"] >= 0 and "peak_memory_mib" in first
    assert json.loads((tmp_path / "work" / "a" / "result.json").read_text())["step"] == "a"
    again = steps.Context(data=tmp_path, workdir=tmp_path / "work", redo={"a"})
    steps.run_step(again, "a", work("a"))
    steps.run_step(again, "b", work("b"), depends_on=["a"])  # re-runs: its input changed
    steps.run_step(again, "c", work("c"))
    steps.run_step(steps.Context(data=tmp_path, workdir=tmp_path / "work", redo=set()), "c", work("c"))
    assert calls == ["a", "b", "a", "b", "c"]


def test_recipe_table_shows_settings_means_and_folds():
    cv = {"patch": {"folds": [["1", "3"], ["2"]], "recipes": {
        "hed_jitter": {"recipe": {"augment": {"color_jitter": 0.05}, "weight_averaging": 0.998},
                       "auc": {"mean": 0.8, "folds": [0.7, 0.9]}, "within_bag": {"mean": None, "folds": [None, None]}},
        "stain_amount": {"recipe": {"augment": {}}, "auc": {"mean": 0.85, "folds": [0.8, 0.9]},
                         "within_bag": {"mean": 0.75, "folds": [0.7, 0.8]}}}},
          "mil": {"folds": [["1", "3"], ["2"]], "recipes": {
              "instance_loss": {"recipe": {"model": {"instance_loss_weight": 0.5}, "epochs": 32,
                                           "stain_normalization": True},
                                "auc": {"mean": 0.9, "folds": [0.88, 0.92]},
                                "within_bag": {"mean": 0.7, "folds": [0.65, 0.75]},
                                "pooled": {"mean": 0.6, "folds": [0.6, 0.6]}}}}}
    assert cv_tables.folds_table(cv).rows == [["1", "1, 3", "2"], ["2", "2", "1"]]
    assert cv_tables.recipes_table(cv).rows == [
        ["plain CNN (patches)", "hed jitter", "color_jitter 0.05, weight averaging 0.998", "0.800 (0.700 / 0.900)",
         "n/a"],
        ["plain CNN (patches)", "stain amount", "defaults", "**0.850 (0.800 / 0.900)**", "**0.750 (0.700 / 0.800)**"],
        ["attention MIL (regions)", "instance loss", "stain normalisation, instance_loss_weight 0.5, 32 epochs",
         "**0.900 (0.880 / 0.920)**", "**0.700 (0.650 / 0.750)**"]]


def test_baseline_comparison_is_clear_only_when_the_intervals_do_not_overlap(synthetic_results):
    ev = synthetic_results["idc"]["evaluations"]
    _set(ev["baseline"], "auc", 0.88, 0.76, 0.97)
    ev["baseline_raw"] = copy.deepcopy(ev["baseline"])
    _set(ev["baseline_raw"], "auc", 0.93, 0.77, 0.97)
    _set(ev["densenet"], "auc", 0.915, 0.75, 0.98)
    _set(ev["mil"], "auc", 0.99, 0.98, 1.0)
    table = tables.baseline_comparison_table(synthetic_results)
    verdicts = {(row[0], row[2]): row[4] for row in table.rows}
    raw = "plain 6-conv CNN, no stain normalisation (baseline)"
    assert verdicts == {("DenseNet201 from scratch", "plain 6-conv CNN (baseline)"): "above, intervals overlap",
                        ("DenseNet201 from scratch", raw): "not above",
                        ("attention MIL (regions)", "plain 6-conv CNN (baseline)"): "clearly above",
                        ("attention MIL (regions)", raw): "clearly above"}
    # Each bar's single best and each model's single worst test patient bound the intervals.
    row = _row(table, "DenseNet201 from scratch", "0.915 [0.750, 0.980]", raw)
    best = max(ev["baseline_raw"]["patients"], key=lambda r: r["image_auc"])
    worst = min(ev["densenet"]["patients"], key=lambda r: r["image_auc"])
    assert row["baseline test AUC [95 % CI]"] == "0.930 [0.770, 0.970]"
    assert row["baseline's best test patient (AUC)"] == f"{best['patient_id']} {best['image_auc']:.3f}"
    assert row["model's worst test patient (AUC)"] == f"{worst['patient_id']} {worst['image_auc']:.3f}"
    _set(ev["densenet"], "auc", 0.99, 0.98, 1.0)
    assert {row[4] for row in tables.baseline_comparison_table(synthetic_results).rows} == {"clearly above"}
    assert tables.comparison_verdict({"value": None}, {"value": 0.9}) == "n/a"


def test_targets_thresholds_and_transfer_as_data(synthetic_results):
    densenet = synthetic_results["idc"]["evaluations"]["densenet"]
    _set(densenet, "auc", 0.88, 0.8, 0.95)
    _set(densenet, "balanced_accuracy", 0.85, 0.8, 0.9)
    found = tables.result_tables(synthetic_results)
    assert _row(_table(found, "targets"), "IDC", "DenseNet201 from scratch", "image auc") == {
        "data set": "IDC", "model": "DenseNet201 from scratch", "target": "image auc", "goal": "0.96",
        "test value [95 % CI]": "0.880 [0.800, 0.950]", "met": "no"}
    checks = tables.target_checks(synthetic_results)
    assert [(c.target, c.goal) for c in checks if c.model == "attention MIL" and c.dataset == "BreakHis"] == [
        ("image auc", 0.99), ("image balanced accuracy", 0.95), ("patient accuracy", 0.95)]
    # The threshold best for the test images in hindsight says whether the threshold or the ranking falls short.
    hindsight = densenet["image_level"]["balanced_accuracy_in_hindsight"]["value"]
    row = _row(_table(found, "thresholds"), "IDC", "DenseNet201 from scratch")
    assert row["threshold"] == "0.500" and row["balanced accuracy"] == "0.850 [0.800, 0.900]"
    assert row["balanced accuracy, best threshold in hindsight"] == f"{hindsight:.3f}"
    assert row["target reached in hindsight"] == ("yes" if hindsight >= 0.9 else "no")
    # BreakHis: the eval split behind the threshold.
    assert _row(_table(found, "thresholds"), "BreakHis", "DenseNet201 from scratch")[
        "chosen on (eval split, benign/malignant)"] == "1 patient, 10 images (5/5)"
    # Each test patient's own AUC.
    first = densenet["patients"][0]
    assert _row(_table(found, "idc-per-patient-auc-accuracy"), first["patient_id"])["DenseNet201 from scratch"] == (
        f"{first['image_auc']:.3f} / {first['image_accuracy']:.3f}")
    # A model meeting every target: every check of it is met.
    for name in ("mil", "densenet_warm_start"):
        for level in ("image_level", "patient_level"):
            for entry in synthetic_results["breakhis"]["evaluations"][name][level]["metrics"].values():
                entry["value"] = 1.0
    for model in ("attention MIL", "DenseNet201 warm-started from IDC"):
        assert all(c.met for c in tables.target_checks(synthetic_results) if c.model == model)
    scratch = tables.metric(synthetic_results["breakhis"]["evaluations"]["densenet"], "image_level", "auc")["value"]
    transfer = tables.transfer_table(synthetic_results["breakhis"])
    assert transfer.rows[1][:2] == ["warm-started from the IDC backbone",
                                    _auc(synthetic_results["breakhis"]["evaluations"]["densenet_warm_start"])]
    assert transfer.rows[1][3] == f"{1.0 - scratch:+.3f}" and transfer.rows[0][3] == "-"


def test_best_cross_validated_figures_against_the_targets(synthetic_results):
    table = cv_tables.best_table(_recipe_cv(), run.TARGETS)
    assert table.columns == ["model", "score", "best setting", "mean (folds)", "target", "reaches target"]
    assert table.rows == [
        ["plain CNN (patches)", "held-out AUC", "recipe b", "0.890 (0.880 / 0.900)", "0.96", "no"],
        ["attention MIL (regions)", "held-out AUC", "recipe d", "0.910 (0.900 / 0.920)", "0.96", "no"],
        ["plain CNN, patch probabilities (trained WITH patch labels)", "within-region AUC", "recipe a",
         "0.800 (0.790 / 0.810)", "0.9", "no"],
        ["attention MIL, attention (region labels only)", "within-region AUC", "recipe c", "0.690 (0.680 / 0.700)",
         "0.9", "no"]]
    # The MIL recipes' range: every recipe is in the recipe table.
    aucs = [row[3] for row in cv_tables.recipes_table(_recipe_cv()).rows if row[0] == "attention MIL (regions)"]
    assert aucs == ["0.900 (0.890 / 0.910)", "**0.910 (0.900 / 0.920)**"]
    synthetic_results["idc"]["recipe_cv"] = _recipe_cv()
    keys = [table.key for table in cv_tables.cv_tables(synthetic_results["idc"], run.TARGETS)]
    assert keys == ["cv-folds", "cv-recipes", "cv-best"]  # no slide-context recipe: no sweeps


def test_per_patient_tables_score_each_test_patient():
    def row(label, patients):
        return tables.ModelRow("idc", label, label, "patch", {"patients": patients}, None)

    rows = [row("model A", [
                {"patient_id": "7", "n_images": 10, "n_malignant_images": 4, "image_auc": 0.91, "image_accuracy": 0.8,
                 "image_sensitivity": 0.75, "image_specificity": 0.5},
                {"patient_id": "9", "n_images": 5, "n_malignant_images": 0, "image_auc": None, "image_accuracy": 1.0,
                 "image_sensitivity": None, "image_specificity": 1.0}]),
            row("model B", [{"patient_id": "7", "n_images": 10, "n_malignant_images": 4}])]
    table = tables.per_patient_table("idc", rows, ("image_auc", "image_accuracy"), "title")
    assert table.columns == ["patient", "images (malignant)", "model A", "model B"]
    assert table.rows == [["7", "10 (4)", "0.910 / 0.800", "-"],  # B's result predates per-patient scores
                          ["9", "5 (0)", "n/a / 1.000", "-"]]
    rates = tables.per_patient_table("idc", rows, ("image_sensitivity", "image_specificity"), "title")
    assert rates.rows == [["7", "10 (4)", "0.750 / 0.500", "-"], ["9", "5 (0)", "n/a / 1.000", "-"]]


@pytest.mark.parametrize("override, expected", [(None, True), (False, False)])
def test_baseline_step_follows_the_configs_stain_normalisation_unless_told(tmp_path, monkeypatch, override,
                                                                          expected):
    from bench import baseline_cnn

    seen = []

    def train_and_predict(records, config, output_dir=None):  # a spy: the step's config, no training
        seen.append(config)
        return {"threshold": 0.5, "eval_auc": 1.0, "history": {},
                "test": {"labels": [0, 1, 0, 1], "scores": [0.1, 0.9, 0.2, 0.8], "predictions": [0, 1, 0, 1],
                         "patient_ids": ["a", "a", "b", "b"]}}

    monkeypatch.setattr(baseline_cnn, "train_and_predict", train_and_predict)
    assert steps.bench_config("idc_densenet.json")["stain_normalization"] == "reinhard"
    out = steps.baseline_step("records", 6, 50, 10.0, "idc_densenet.json", override)(tmp_path)
    assert seen[0].stain_normalization is expected and seen[0].augment.stain_scale == 0.4
    assert out["decision_threshold"] == 0.5 and "history" not in out["baseline"]
    steps.baseline_step("records", 8, 128, 4.0)(tmp_path)  # no shared config: plain input
    assert seen[1].stain_normalization is False


def test_slide_context_tables(synthetic_results, tmp_path):
    rng = np.random.default_rng(1)
    idc = synthetic_results["idc"]
    ev = idc["evaluations"]
    ev["densenet_context"] = {**_scored(rng, 300, IDC_PATIENTS, 0.8),
                              "eval": {"sigma": 1.5, "eval_auc": 0.95, "eval_auc_without": 0.92}}
    ev["baseline_context"] = {**_scored(rng, 300, IDC_PATIENTS, 0.7),
                              "eval": {"sigma": 1.5, "eval_auc": 0.97, "eval_auc_without": 0.9}}
    cv = _recipe_cv()
    runs = [{"auc": 0.88, "slide_context": {"0.5": 0.90, "1.5": 0.94, "3": 0.92}},
            {"auc": 0.90, "slide_context": {"0.5": 0.92, "1.5": 0.96, "3": None}}]
    cv["patch"]["recipes"]["e"] = {"recipe": {"stain_normalization": True, "slide_context_sigmas": [0.5, 1.5, 3]},
                                   "auc": {"mean": 0.89, "folds": [0.88, 0.90]}, "runs": runs}
    idc["recipe_cv"] = cv
    found = cv_tables.cv_tables(idc, run.TARGETS)
    sweep = _table(found, "cv-patch-slide-context")
    assert sweep.columns == ["sigma (patch widths)", "held-out AUC, mean (folds)", "used by idc_densenet.json"]
    assert sweep.rows == [["none", "0.890 (0.880 / 0.900)", ""], ["0.5", "0.910 (0.900 / 0.920)", ""],
                          ["1.5", "**0.950 (0.940 / 0.960)**", "yes"], ["3", "0.920 (0.920 / n/a)", ""]]
    assert _row(_table(found, "cv-best"), "plain CNN (patches)", "held-out AUC",
                "slide context, sigma 1.5 patch widths")["mean (folds)"] == "0.950 (0.940 / 0.960)"
    assert all(row[5] == "no" for row in _table(found, "cv-best").rows if row[1] == "held-out AUC")  # < 0.96

    result_tables = tables.result_tables(synthetic_results)
    context = _table(result_tables, "idc-slide-context")
    assert context.rows[1] == ["DenseNet201 from scratch", "1.5 patch widths", "0.920", "0.950", "0.500",
                               _auc(ev["densenet"]), _auc(ev["densenet_context"])]
    summary = _table(result_tables, "summary")
    assert _row(summary, "IDC", "DenseNet201 from scratch, slide context")["eval-split AUC"] == "0.950"
    assert _row(summary, "IDC", "plain 6-conv CNN, slide context")["eval-split AUC"] == "0.970"
    _set(ev["densenet_context"], "balanced_accuracy", 0.85, 0.8, 0.9)
    result_tables = tables.result_tables(synthetic_results)
    assert _row(_table(result_tables, "targets"), "IDC", "DenseNet201 from scratch, slide context",
                "image balanced accuracy")["met"] == "no"
    # Its own threshold, chosen on the eval split's slide-context scores.
    assert _row(_table(result_tables, "thresholds"), "IDC", "DenseNet201 from scratch, slide context")[
        "threshold"] == "0.500"
    # With slide context, a model is compared with the baselines that have it too.
    comparison = _table(result_tables, "baselines")
    assert [row[2] for row in comparison.rows if row[0] == "DenseNet201 from scratch, slide context"] == [
        "plain 6-conv CNN, slide context"]
    report.write_report(steps.Context(workdir=tmp_path, data=tmp_path, redo=set()), synthetic_results,
                        tmp_path / "docs", time.perf_counter())
    assert "## IDC slide context" in (tmp_path / "docs" / "results" / "tables.md").read_text()


def test_slide_context_maps_draw_one_figure_per_patient(tmp_path):
    from PIL import Image

    rows = [{"path": f"{p}/{c}/{p}_idx5_x{1 + 50 * x}_y{1 + 50 * y}_class{c}.png", "patient_id": p, "label": c,
             "probability": 0.3 + 0.4 * c, "context_probability": 0.2 + 0.6 * c}
            for p in ("8867", "9077") for x in range(6) for y in range(4) for c in [int(x >= 3)]]
    rows.append({"path": "elsewhere/scan.png", "patient_id": "8867", "label": 0, "probability": 0.1,
                 "context_probability": 0.1})  # no position in the name: left out
    written = report.slide_context_maps(rows, tmp_path / "figures", "ctx")
    assert written == [tmp_path / "figures" / "ctx-0.png", tmp_path / "figures" / "ctx-1.png"]
    with Image.open(written[0]) as image:
        assert image.size[0] > 600


def test_localisation_with_slide_context_sweeps_and_test_rows(synthetic_results, tmp_path):
    cv = _recipe_cv()
    cv["patch"]["recipes"]["e"] = {"recipe": {"slide_context_sigmas": [0.5, 1]},
                                   "auc": {"mean": 0.9, "folds": [0.9, 0.9]},
                                   "runs": [{"within_bag": 0.78, "within_bag_context": {"0.5": 0.82, "1": 0.86}},
                                            {"within_bag": 0.80, "within_bag_context": {"0.5": 0.84, "1": 0.88}}]}
    cv["mil"]["recipes"]["f"] = {"recipe": {"tile_context_sigmas": [1, 2]}, "auc": {"mean": 0.9, "folds": [0.9, 0.9]},
                                 "runs": [{"tile_within_bag": 0.70, "tile_within_bag_context": {"1": 0.80, "2": 0.79}},
                                          {"tile_within_bag": 0.72, "tile_within_bag_context": {"1": 0.82, "2": 0.85}}]}
    sweeps = cv_tables.localisation_sweeps(cv)
    assert sweeps["patch"]["none"] == (pytest.approx(0.79), [0.78, 0.80])
    assert sweeps["patch"]["1"] == (pytest.approx(0.87), [0.86, 0.88])
    assert cv_tables.best_width(sweeps["patch"]) == "1" and cv_tables.best_width(sweeps["tile"]) == "2"
    assert cv_tables.localisation_sweeps(_recipe_cv()) == {}  # no recipe scored it
    for fold, value in zip(cv["mil"]["recipes"]["f"]["runs"], (0.76, 0.78)):
        fold["tile_attention_within_bag_context"] = {"1": value, "2": value - 0.01}

    idc = synthetic_results["idc"]
    idc["recipe_cv"] = cv
    idc["evaluations"]["mil"]["tile_localisation"] = copy.deepcopy(idc["evaluations"]["mil"]["localisation"])
    context = copy.deepcopy(idc["evaluations"]["mil"]["localisation"])
    context["within_bag"].update(value=0.85, ci_low=0.8, ci_high=0.9)
    heatmap = tmp_path / "8867.tiles-context.png"
    heatmap.write_bytes((tmp_path / "roc.png").read_bytes())
    idc["evaluations"]["mil_tile_context"] = {"sigma": 2.0, "localisation": context, "heatmaps": [str(heatmap)]}
    reference = {name: copy.deepcopy(context) for name in ("alone", "slide_context")}
    reference["alone"]["within_bag"].update(value=0.79, ci_low=0.7, ci_high=0.85)
    idc["evaluations"]["densenet_localisation"] = reference

    found = cv_tables.cv_tables(idc, run.TARGETS)
    table = _table(found, "cv-localisation-slide-context")
    assert table.columns == ["sigma (patch widths)", "plain CNN, patch probabilities (trained WITH patch labels)",
                             "MIL instance classifier, tile probabilities (region labels only)",
                             "MIL tile probabilities x attention", "used on the test regions"]
    assert table.rows == [["none", "0.790 (0.780 / 0.800)", "0.710 (0.700 / 0.720)", "-", ""],
                          ["0.5", "0.830 (0.820 / 0.840)", "-", "-", ""],  # the MIL was not scored at 0.5
                          ["1", "**0.870 (0.860 / 0.880)**", "0.810 (0.800 / 0.820)", "**0.770 (0.760 / 0.780)**", ""],
                          ["2", "-", "**0.820 (0.790 / 0.850)**", "0.760 (0.750 / 0.770)", "yes"]]
    best = _table(found, "cv-best")
    assert _row(best, "plain CNN, patch probabilities (trained WITH patch labels)", "within-region AUC",
                "slide context, sigma 1 patch width")["mean (folds)"] == "0.870 (0.860 / 0.880)"
    assert _row(best, "MIL instance classifier, tile probabilities (region labels only)", "within-region AUC",
                "slide context, sigma 2 patch widths")["mean (folds)"] == "0.820 (0.790 / 0.850)"

    localisation = {row[0]: row[1] for row in tables.localisation_table(idc).rows}
    assert localisation["tile probability with slide context (2 patch widths), within positive bags"] == (
        "0.850 [0.800, 0.900]")
    assert localisation["reference, trained WITH patch labels: DenseNet201's patch probability, within positive "
                        "bags"] == "0.790 [0.700, 0.850]"
    assert localisation["reference, trained WITH patch labels: DenseNet201's patch probability with slide context, "
                        "within positive bags"] == "0.850 [0.800, 0.900]"
    ctx = steps.Context(data=tmp_path, workdir=tmp_path / "work", redo=set())
    report.write_report(ctx, synthetic_results, tmp_path / "docs", time.perf_counter())
    assert (tmp_path / "docs" / "results" / "idc-slide-tiles-context-0.png").is_file()
    assert "## Within-region AUC with slide context" in (tmp_path / "docs" / "results" / "patient_cv.md").read_text()


def test_balanced_accuracy_in_hindsight_bounds_any_threshold_rule():
    cv = _recipe_cv()
    assert not [row for row in cv_tables.best_table(cv, run.TARGETS).rows if row[1].startswith("balanced")]
    cv["patch"]["recipes"]["e"] = {"recipe": {}, "auc": {"mean": 0.9, "folds": [0.9, 0.9]}, "runs": [
        {"best_balanced_accuracy": {"none": 0.84, "1": 0.87, "1.5": 0.88}},
        {"best_balanced_accuracy": {"none": 0.86, "1": 0.89, "1.5": 0.88}}]}
    cv["mil"]["recipes"]["f"] = {"recipe": {}, "auc": {"mean": 0.9, "folds": [0.9, 0.9]}, "runs": [
        {"best_balanced_accuracy": {"none": 0.85, "1": 0.86}}, {"best_balanced_accuracy": {"none": 0.87, "1": 0.88}}]}

    def hindsight_rows():
        return [row[:4] + row[5:] for row in cv_tables.best_table(cv, run.TARGETS).rows
                if row[1] == "balanced accuracy, threshold best in hindsight"]

    assert hindsight_rows() == [
        ["plain CNN (patches)", "balanced accuracy, threshold best in hindsight", "alone", "0.850 (0.840 / 0.860)",
         "no"],
        ["plain CNN (patches)", "balanced accuracy, threshold best in hindsight", "slide context, sigma 1 patch width",
         "0.880 (0.870 / 0.890)", "no"],
        ["attention MIL (regions)", "balanced accuracy, threshold best in hindsight", "alone",
         "0.860 (0.850 / 0.870)", "no"],
        ["attention MIL (regions)", "balanced accuracy, threshold best in hindsight",
         "slide context, sigma 1 region width", "0.870 (0.860 / 0.880)", "no"]]
    cv["mil"]["recipes"]["f"]["runs"][1]["best_balanced_accuracy"]["1"] = 0.95
    assert hindsight_rows()[-1][-2:] == ["0.905 (0.860 / 0.950)", "yes"]
    sweep = _table(cv_tables.cv_tables({"recipe_cv": cv, "evaluations": {}, "runs": {}}, run.TARGETS),
                   "cv-mil-slide-context")
    assert sweep.rows == [["none", "0.860 (0.850 / 0.870)"], ["1", "**0.905 (0.860 / 0.950)**"]]
