"""The results page generator (bench/results.py) on synthetic step results.

The real run takes about an hour on real data (`python -m bench.results`); here every step
result is made from random predictions, so the report's tables, target verdicts, figures
and reproducibility section are checked in a second.
"""

from __future__ import annotations

import json
import pathlib
import time

import numpy as np
import pytest

from bench import results
from histopath.evaluation import scoring as evaluation


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
    return {"wall_seconds": 600.0, "peak_memory_mib": 3000.0, "command": ["histopath", "run", name],
            "trainers": {k: {"train_seconds": 100.0, "history": {"epoch": [0, 1], "val_auc": [0.8, 0.85]}}
                         for k in kinds}}


def _throughput(kind: str) -> dict:
    return {"model_kind": kind, "compared_phase": "train", "tfx_images_per_second": 90.0,
            "bare_images_per_second": 95.0, "ratio_tfx_over_bare": 0.947,
            "model_compute_images_per_second": 100.0, "ratio_tfx_over_model_compute": 0.9,
            "input_pipeline_only_images_per_second": 900.0}


@pytest.fixture()
def synthetic_results(tmp_path):
    rng = np.random.default_rng(0)
    idc_patients, breakhis_patients = ["8867", "8950", "9077"], ["1", "2", "3", "4", "5"]
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
            "densenet": {**_scored(rng, 300, idc_patients, 0.6), "plots": plots},
            "mil": {**_scored(rng, 80, idc_patients, 0.3), "localisation": localisation,
                    "heatmaps": [_png(tmp_path / "slide.png")]},
            "baseline": {**_scored(rng, 300, idc_patients, 0.5), "baseline": {"eval_auc": 0.9}},
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
             "ratios": {k: {"train_images_per_second_bf16_over_fp32": 1.0, "infer_images_per_second_bf16_over_fp32": 1.0}
                        for k in ("densenet", "mil")}}
    data = {"created": "2026-11-26T00:00:00+00:00", "git_commit": "abc1234",
            "machine": {"cpus": 2, "cpu": "test CPU"}, "packages": {"tfx": "1.16.0"},
            "rules": {"score": evaluation.PATIENT_SCORE_RULE, "label": evaluation.PATIENT_LABEL_RULE},
            "idc": idc, "breakhis": breakhis, "precision_speed": {"models": speed}}
    data["commands"] = results.collect_commands({"idc": idc, "breakhis": breakhis})
    return data


def test_report_has_every_table_verdict_figure_and_command(synthetic_results, tmp_path):
    import copy

    ctx = results.Context(data=tmp_path, workdir=tmp_path / "work", redo=set())
    docs = tmp_path / "docs"
    ev = synthetic_results["idc"]["evaluations"]
    ev["baseline_raw"] = copy.deepcopy(ev["baseline"])
    densenet = synthetic_results["idc"]["runs"]["densenet"]["trainers"]["densenet"]
    densenet.update(test_time_augmentation=True, eval_split={"images": 40, "auc": 0.93, "auc_single_view": 0.91})
    page = results.write_report(ctx, synthetic_results, docs, time.perf_counter()).read_text()
    section = page.split("## Test-time augmentation")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith(("| idc", "| breakhis"))]
    assert rows == ["| idc densenet | densenet | 40 | 0.910 | 0.930 | +0.020 |"]  # only the averaging model
    assert "| IDC | plain 6-conv CNN, no stain normalisation |" in page
    assert "| plain 6-conv CNN, 10 min, no stain normalisation | patch |" in page
    assert "| IDC | DenseNet201 from scratch | 0.850 |" in page  # best eval AUC next to the test AUC
    for heading in ("## Summary", "## IDC", "## BreakHis", "### MIL localisation", "## Reference figures", "## Wall time",
                    "## Input pipeline vs compute", "## Mixed bfloat16 vs float32", "## Reproducing",
                    "## Test-time augmentation"):
        assert heading in page
    assert "plain 6-conv CNN" in page and "DenseNet201 warm-started from the IDC backbone" in page
    assert "NOT met" in page  # random predictions cannot reach AUC 0.96
    assert "(within bag): NOT met" in page  # localisation 0.8 < target 0.9
    assert "instance classifier's tile probability" not in page  # the synthetic MIL has no instance classifier
    synthetic_results["idc"]["evaluations"]["mil"]["tile_localisation"] = copy.deepcopy(
        synthetic_results["idc"]["evaluations"]["mil"]["localisation"])
    page = results.write_report(ctx, synthetic_results, docs, time.perf_counter()).read_text()
    assert "| instance classifier's tile probability, within positive bags | 0.800 [0.700, 0.900] |" in page
    for figure in ("idc-slide-0.png", "idc-densenet-roc.png", "breakhis-densenet-roc.png", "results.json"):
        assert (docs / "results" / figure).is_file()
    from PIL import Image

    with Image.open(docs / "results" / "idc-slide-0.png") as slide:
        assert max(slide.size) <= 900  # a small figure, not a copy of the slide
    assert "| 90.0 | 95.0 | 0.95 | 100.0 | 0.90 | 900.0 |" in page  # Trainer vs bare fit vs model compute
    assert "    histopath run bh" in page  # the commands, in order
    stored = json.loads((docs / "results" / "results.json").read_text())
    assert stored["git_commit"] == "abc1234"


def test_run_step_reuses_finished_results_and_reruns_dependents(tmp_path):
    ctx = results.Context(data=tmp_path, workdir=tmp_path / "work", redo=set())
    calls = []

    def work(name):
        def run(folder):
            calls.append(name)
            return {"value": len(calls)}
        return run

    first = results.run_step(ctx, "a", work("a"))
    results.run_step(ctx, "b", work("b"), depends_on=["a"])
    assert first["value"] == 1 and first["wall_seconds"] >= 0 and "peak_memory_mib" in first
    again = results.Context(data=tmp_path, workdir=tmp_path / "work", redo={"a"})
    results.run_step(again, "a", work("a"))
    results.run_step(again, "b", work("b"), depends_on=["a"])  # re-runs: its input changed
    results.run_step(again, "c", work("c"))
    results.run_step(results.Context(data=tmp_path, workdir=tmp_path / "work", redo=set()), "c", work("c"))
    assert calls == ["a", "b", "a", "b", "c"]


def test_recipe_cross_validation_table_shows_settings_means_and_folds():
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
    text = "\n".join(results.recipe_cv_lines(cv))
    assert "3 train and eval patients" in text and "1, 3; 2" in text
    assert "| plain CNN on patches | hed jitter | color_jitter 0.05, weight averaging 0.998 | **0.800** (0.700 / 0.900) | n/a |" in text
    assert "| plain CNN on patches | stain amount | defaults | **0.850** (0.800 / 0.900) | **0.750** (0.700 / 0.800) |" in text
    assert ("| attention MIL on regions | instance loss | stain normalisation, instance_loss_weight 0.5, "
            "32 epochs | **0.900** (0.880 / 0.920) |") in text


def _recipe_cv() -> dict:
    def scores(mean):
        return {"mean": mean, "folds": [mean - 0.01, mean + 0.01]}
    return {"patch": {"folds": [["1", "3"], ["2", "4"]], "recipes": {
                "a": {"recipe": {}, "auc": scores(0.85), "within_bag": scores(0.80)},
                "b": {"recipe": {}, "auc": scores(0.89), "within_bag": scores(0.78)}}},
            "mil": {"folds": [["1", "3"], ["2", "4"]], "recipes": {
                "c": {"recipe": {}, "auc": scores(0.90), "within_bag": scores(0.69)},
                "d": {"recipe": {"epochs": 32}, "auc": scores(0.91), "within_bag": scores(0.66)}}}}


def test_baseline_comparison_says_clearly_only_when_the_intervals_do_not_overlap(synthetic_results):
    import copy

    idc = copy.deepcopy(synthetic_results["idc"])
    ev = idc["evaluations"]

    def set_auc(block, value, low, high):
        block["image_level"]["metrics"]["auc"].update(value=value, ci_low=low, ci_high=high)

    set_auc(ev["baseline"], 0.88, 0.76, 0.97)
    ev["baseline_raw"] = copy.deepcopy(ev["baseline"])
    set_auc(ev["baseline_raw"], 0.93, 0.77, 0.97)
    set_auc(ev["densenet"], 0.915, 0.75, 0.98)
    set_auc(ev["mil"], 0.99, 0.98, 1.0)
    text = results.baseline_comparison(idc)
    assert "the issue's plain baseline), AUC 0.930 [0.770, 0.970]" in text
    assert "DenseNet201 0.915 [0.750, 0.980]: above, intervals overlapping 0.880; not above 0.930" in text
    assert "attention MIL (regions) 0.990 [0.980, 1.000]: clearly above 0.880; clearly above 0.930" in text
    # With 3 test patients, why no clear win can show: each bar's best and worst patient alone.
    best = max(ev["baseline_raw"]["patients"], key=lambda row: row["image_auc"])
    worst = min(ev["densenet"]["patients"], key=lambda row: row["image_auc"])
    assert "1 resample in 27 draws the same patient every time" in text
    assert f"{best['patient_id']} {best['image_auc']:.3f}" in text and f"{worst['patient_id']} {worst['image_auc']:.3f}" in text
    set_auc(ev["densenet"], 0.99, 0.98, 1.0)
    assert results.baseline_comparison(idc) is None  # every model clearly above every baseline


def test_report_says_which_targets_are_not_met_and_why(synthetic_results, tmp_path):
    synthetic_results["idc"]["recipe_cv"] = _recipe_cv()
    densenet = synthetic_results["idc"]["evaluations"]["densenet"]
    densenet["image_level"]["metrics"]["auc"].update(value=0.88, ci_low=0.8, ci_high=0.95)
    densenet["image_level"]["metrics"]["balanced_accuracy"].update(value=0.85, ci_low=0.8, ci_high=0.9)
    text = "\n".join(results.shortfall_lines(synthetic_results))
    assert "**IDC, DenseNet201:** image auc 0.880 [0.800, 0.950] < 0.96" in text
    hindsight = densenet["image_level"]["balanced_accuracy_in_hindsight"]["value"]
    assert f"test images in hindsight would give a balanced accuracy of {hindsight:.3f}" in text
    first = densenet["patients"][0]
    assert f"{first['patient_id']} {first['image_auc']:.3f}" in text  # each test patient's own AUC
    assert "best patch recipe tried (b) reaches a mean held-out AUC of 0.890 (folds 0.880 / 0.900)" in text
    assert "the 2 MIL recipes tried on regions (recipe table below) reach mean held-out AUCs from 0.900 to 0.910 (d)" in text
    assert "No recipe measured here reaches the target AUC" in text
    baseline = synthetic_results["idc"]["evaluations"]["baseline"]["image_level"]["metrics"]["auc"]["value"]
    assert baseline > 0.88 and "**IDC, against the plain baseline:**" in text and "DenseNet201 0.880" in text
    assert "**IDC, MIL localisation:** within-bag attention AUC 0.800 [0.700, 0.900] < 0.9" in text
    assert "mean AUC of 0.800 (a)" in text and "reaches 0.690 in the same cross-validation (c)" in text
    assert "instance classifier" not in text  # the synthetic MIL has none
    synthetic_results["idc"]["evaluations"]["mil"]["tile_localisation"] = {
        "within_bag": {"value": 0.76, "ci_low": 0.74, "ci_high": 0.78}}
    assert ("instance classifier (also trained on region labels only) ranks them at 0.760 [0.740, 0.780] on the "
            "test regions (not above its attention, short of 0.9)") in "\n".join(results.shortfall_lines(synthetic_results))
    # BreakHis: the random synthetic scores miss; the bullet names the eval split behind the threshold.
    assert ("The decision threshold (0.500) was chosen on the eval split's 5 benign and 5 malignant images "
            "(1 patient)") in text
    # A model meeting every target gets no bullet.
    for level in ("image_level", "patient_level"):
        for entry in synthetic_results["breakhis"]["evaluations"]["mil"][level]["metrics"].values():
            entry["value"] = 1.0
    assert "**BreakHis, attention MIL:**" not in "\n".join(results.shortfall_lines(synthetic_results))
    # From scratch is called the no-transfer reference only once the warm-started DenseNet meets every target.
    assert "no-transfer reference" not in text
    for level in ("image_level", "patient_level"):
        for entry in synthetic_results["breakhis"]["evaluations"]["densenet_warm_start"][level]["metrics"].values():
            entry["value"] = 1.0
    assert "This is the no-transfer reference" in "\n".join(results.shortfall_lines(synthetic_results))


def test_per_patient_rates_name_each_patients_sensitivity_and_specificity():
    rows = [{"patient_id": "7", "n_images": 10, "n_malignant_images": 4, "image_sensitivity": 0.75,
             "image_specificity": 0.5},
            {"patient_id": "9", "n_images": 5, "n_malignant_images": 0, "image_sensitivity": None,
             "image_specificity": 1.0}]
    assert results.per_patient_rates(rows, "patches") == (
        "; per test patient, sensitivity / specificity: 7 0.750 / 0.500 (4 of 10 patches malignant), "
        "9 n/a / 1.000 (0 of 5 patches malignant)")
    assert results.per_patient_rates([{"patient_id": "7", "n_images": 1, "n_malignant_images": 0}], "patches") == ""


def test_per_patient_table_scores_each_test_patient():
    rows = [("model A", "patch", {"patients": [
                {"patient_id": "7", "n_images": 10, "n_malignant_images": 4, "image_auc": 0.91, "image_accuracy": 0.8},
                {"patient_id": "9", "n_images": 5, "n_malignant_images": 0, "image_auc": None, "image_accuracy": 1.0}]}),
            ("model B", "patch", {"patients": [{"patient_id": "7", "n_images": 10, "n_malignant_images": 4}]})]
    lines = results.per_patient_lines(rows)
    assert lines[0] == "| patient | images (malignant) | model A | model B |"
    assert "| 7 | 10 (4) | 0.910 / 0.800 | - |" in lines  # B's result predates per-patient scores
    assert "| 9 | 5 (0) | n/a / 1.000 | - |" in lines


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
    assert json.loads((results.CONFIGS / "idc_densenet.json").read_text())["stain_normalization"] is True
    step = results.baseline_step("records", 6, 50, 10.0, "idc_densenet.json", override)
    out = step(tmp_path)
    assert seen[0].stain_normalization is expected and seen[0].augment.stain_scale == 0.4
    assert out["decision_threshold"] == 0.5
    results.baseline_step("records", 8, 128, 4.0)(tmp_path)  # no shared config: plain input
    assert seen[1].stain_normalization is False


def test_slide_context_rows_section_and_verdicts(synthetic_results, tmp_path):
    rng = np.random.default_rng(1)
    idc = synthetic_results["idc"]
    ev = idc["evaluations"]
    ev["densenet_context"] = {**_scored(rng, 300, ["8867", "8950", "9077"], 0.8),
                              "eval": {"sigma": 1.5, "eval_auc": 0.95, "eval_auc_without": 0.92}}
    ev["baseline_context"] = {**_scored(rng, 300, ["8867", "8950", "9077"], 0.7),
                              "eval": {"sigma": 1.5, "eval_auc": 0.97, "eval_auc_without": 0.9}}
    cv = _recipe_cv()
    runs = [{"slide_context": {"0.5": 0.90, "1.5": 0.94, "3": 0.92}}, {"slide_context": {"0.5": 0.92, "1.5": 0.96,
                                                                                          "3": None}}]
    cv["patch"]["recipes"]["e"] = {"recipe": {"stain_normalization": True, "slide_context_sigmas": [0.5, 1.5, 3]},
                                   "auc": {"mean": 0.89, "folds": [0.88, 0.90]}, "runs": runs}
    idc["recipe_cv"] = cv
    assert results.slide_context_sweep(cv) == [("0.5", pytest.approx(0.91), [0.90, 0.92]),
                                               ("1.5", pytest.approx(0.95), [0.94, 0.96]), ("3", 0.92, [0.92, None])]
    section = "\n".join(results.slide_context_lines(idc))
    assert "| none | 0.890 (0.880 / 0.900) |" in section
    assert "| 1.5 | **0.950 (0.940 / 0.960)** |" in section and "| 3 | 0.920 (0.920 / n/a) |" in section
    assert "The pipeline (idc_densenet.json) uses sigma 1.5: the best of these." in section
    densenet_auc = results.fmt(results.metric(ev["densenet_context"], "image_level", "auc"))
    assert "| DenseNet201 from scratch | 1.5 patch widths | 0.920 | 0.950 | 0.500 | " in section and densenet_auc in section
    summary = "\n".join(results.summary_lines(synthetic_results))
    assert f"| IDC | DenseNet201 from scratch, slide context | 0.950 | {densenet_auc} |" in summary
    assert "| IDC | plain 6-conv CNN, slide context | 0.970 |" in summary
    ev["densenet_context"]["image_level"]["metrics"]["balanced_accuracy"].update(value=0.85, ci_low=0.8, ci_high=0.9)
    shortfall = "\n".join(results.shortfall_lines(synthetic_results))
    assert ("with slide context the same cross-validation reaches 0.950 on patches (sigma 1.5 patch widths; folds "
            "0.940 / 0.960)") in shortfall
    assert ("**IDC, DenseNet201 from scratch, slide context:** image balanced accuracy 0.850 [0.800, 0.900] < 0.9"
            in shortfall)
    assert "Its threshold (0.500) was chosen on the 2 eval patients' slide-context scores (eval AUC 0.950)" in shortfall
    assert "No recipe measured here reaches the target AUC" in shortfall  # 0.95 < 0.96
    assert f"DenseNet201 with slide context {densenet_auc}: " in shortfall and "(with slide context)" in shortfall
    report = results.write_report(results.Context(workdir=tmp_path, data=tmp_path, redo=set()), synthetic_results,
                                  tmp_path / "docs", time.perf_counter())
    assert "### Slide context" in report.read_text()


def test_slide_context_maps_draw_one_figure_per_patient(tmp_path):
    from PIL import Image

    rows = [{"path": f"{p}/{c}/{p}_idx5_x{1 + 50 * x}_y{1 + 50 * y}_class{c}.png", "patient_id": p, "label": c,
             "probability": 0.3 + 0.4 * c, "context_probability": 0.2 + 0.6 * c}
            for p in ("8867", "9077") for x in range(6) for y in range(4) for c in [int(x >= 3)]]
    rows.append({"path": "elsewhere/scan.png", "patient_id": "8867", "label": 0, "probability": 0.1,
                 "context_probability": 0.1})  # no position in the name: left out
    written = results.slide_context_maps(rows, tmp_path / "figures", "ctx")
    assert written == ["results/ctx-0.png", "results/ctx-1.png"]
    with Image.open(tmp_path / "figures" / "ctx-0.png") as image:
        assert image.size[0] > 600


def test_localisation_with_slide_context_sweeps_table_rows_and_shortfall(synthetic_results, tmp_path):
    import copy

    cv = _recipe_cv()
    cv["patch"]["recipes"]["e"] = {"recipe": {"slide_context_sigmas": [0.5, 1]}, "auc": {"mean": 0.9, "folds": [0.9, 0.9]},
                                   "runs": [{"within_bag": 0.78, "within_bag_context": {"0.5": 0.82, "1": 0.86}},
                                            {"within_bag": 0.80, "within_bag_context": {"0.5": 0.84, "1": 0.88}}]}
    cv["mil"]["recipes"]["f"] = {"recipe": {"tile_context_sigmas": [1, 2]}, "auc": {"mean": 0.9, "folds": [0.9, 0.9]},
                                 "runs": [{"tile_within_bag": 0.70, "tile_within_bag_context": {"1": 0.80, "2": 0.79}},
                                          {"tile_within_bag": 0.72, "tile_within_bag_context": {"1": 0.82, "2": 0.85}}]}
    sweeps = results.localisation_context_sweeps(cv)
    assert sweeps["patch"]["none"] == (pytest.approx(0.79), [0.78, 0.80])
    assert sweeps["patch"]["1"] == (pytest.approx(0.87), [0.86, 0.88])
    assert results.best_context_sigma(sweeps["patch"]) == "1" and results.best_context_sigma(sweeps["tile"]) == "2"
    table = results.localisation_context_lines(cv)
    assert "| 0.5 | 0.830 (0.820 / 0.840) | - |" in table  # the MIL was not scored at 0.5
    assert "| 1 | **0.870 (0.860 / 0.880)** | 0.810 (0.800 / 0.820) |" in table
    assert "| 2 | - | **0.820 (0.790 / 0.850)** |" in table
    assert results.localisation_context_lines(_recipe_cv()) == []  # no recipe scored it
    for run, value in zip(cv["mil"]["recipes"]["f"]["runs"], (0.76, 0.78)):
        run["tile_attention_within_bag_context"] = {"1": value, "2": value - 0.01}
    assert ("Multiplied by the MIL's attention, the tile probabilities with slide context reach at best 0.770 "
            "(sigma 1), below the 0.820 they reach alone") in "\n".join(results.localisation_context_lines(cv))

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
    ctx = results.Context(data=tmp_path, workdir=tmp_path / "work", redo=set())
    page = results.write_report(ctx, synthetic_results, tmp_path / "docs", time.perf_counter()).read_text()
    assert "| tile probability with slide context (2 patch widths), within positive bags | 0.850 [0.800, 0.900] |" in page
    assert "| sigma (patches) | plain CNN trained WITH patch labels" in page
    assert (tmp_path / "docs" / "results" / "idc-slide-tiles-context-0.png").is_file()
    text = "\n".join(results.shortfall_lines(synthetic_results))
    assert "0.870 with slide context (sigma 1 patch width)" in text
    assert ("With slide context its tile probabilities reach 0.820 in the cross-validation (sigma 2 patch widths) and "
            "0.850 [0.800, 0.900] on the test regions, short of 0.9. On the same test regions DenseNet201, trained WITH "
            "the patch labels, ranks them at 0.790 [0.700, 0.850] alone and 0.850 [0.800, 0.900] with slide "
            "context.") in text
    assert ("| reference, trained WITH patch labels: DenseNet201's patch probability with slide context, within "
            "positive bags | 0.850 [0.800, 0.900] |") in page


def test_best_balanced_accuracy_in_hindsight_bounds_any_threshold_rule():
    cv = _recipe_cv()
    assert results.best_balanced_accuracy_text(cv, 2) is None  # not scored
    cv["patch"]["recipes"]["e"] = {"recipe": {}, "auc": {"mean": 0.9, "folds": [0.9, 0.9]}, "runs": [
        {"best_balanced_accuracy": {"none": 0.84, "1": 0.87, "1.5": 0.88}},
        {"best_balanced_accuracy": {"none": 0.86, "1": 0.89, "1.5": 0.88}}]}
    cv["mil"]["recipes"]["f"] = {"recipe": {}, "auc": {"mean": 0.9, "folds": [0.9, 0.9]}, "runs": [
        {"best_balanced_accuracy": {"none": 0.85, "1": 0.86}}, {"best_balanced_accuracy": {"none": 0.87, "1": 0.88}}]}
    text = results.best_balanced_accuracy_text(cv, 2)
    assert ("reaches a balanced accuracy of 0.880 on patches with slide context (sigma 1 patch width; folds 0.870 / "
            "0.890; 0.850 alone) and 0.870 on regions with slide context (sigma 1 region width; folds 0.860 / 0.880; "
            "0.860 alone): below 0.9 for the recipes measured here, whatever the threshold.") in text
    cv["mil"]["recipes"]["f"]["runs"][1]["best_balanced_accuracy"]["1"] = 0.95
    assert results.best_balanced_accuracy_text(cv, 2).endswith(
        "0.860 alone): at best the target itself, and only at a threshold as good as one chosen in hindsight, "
        "while the pipeline has 2 eval patients to choose it on.")
