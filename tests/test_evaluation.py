"""Evaluation metrics, the patient (cluster) bootstrap, and `evaluate_model` on real exports.

Metric tests compare against values computed by hand on tiny arrays; the bootstrap is
checked against a plain loop that resamples patient indices and concatenates their images.
The `evaluate_model` tests run the tiny MIL export of `serving_fixtures.exported_models`
on a generated sample and on symlinks to three real BreakHis patients.
"""

from __future__ import annotations

import json
import math
import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image

from histopath.errors import ConfigError, DataError
from histopath.pipeline import evaluation
from histopath.pipeline.evaluation import (
    calibration_table,
    cluster_bootstrap_metrics,
    confusion_counts,
    patient_bootstrap_weights,
    rates_from_sums,
    roc_auc,
    roc_curve,
)
from histopath.pipeline.predict import resolve_model_dir

# --- metrics against hand-computed values --------------------------------------------


def test_auc_hand_computed_with_and_without_ties():
    # positives 0.35, 0.8 vs negatives 0.1, 0.4: wins 0.35>0.1, 0.8>0.1, 0.8>0.4 -> 3/4
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # positives 0.5, 0.9 vs negatives 0.5, 0.2: tie 1/2 + 1 + 1 + 1 -> 3.5/4
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == pytest.approx(0.875)
    assert roc_auc([0, 1, 0, 1], [0.3, 0.3, 0.3, 0.3]) == pytest.approx(0.5)
    assert roc_auc([1, 1, 0], [0.1, 0.2, 0.9]) == pytest.approx(0.0)
    assert roc_auc([1, 1, 1], [0.1, 0.2, 0.9]) is None
    assert roc_auc([0, 0], [0.1, 0.2]) is None


def test_auc_agrees_with_scipy_mann_whitney_on_tied_scores():
    from scipy.stats import mannwhitneyu

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.random(300) * 0.5 + labels * 0.3, 2)  # many ties
    u = mannwhitneyu(scores[labels == 1], scores[labels == 0]).statistic
    assert roc_auc(labels, scores) == pytest.approx(u / ((labels == 1).sum() * (labels == 0).sum()))


def test_roc_curve_points_and_area():
    fpr, tpr, thresholds = roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert fpr.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert thresholds[1:].tolist() == [0.8, 0.4, 0.35, 0.1]
    assert np.trapz(tpr, fpr) == pytest.approx(0.75)


def test_threshold_metrics_hand_computed():
    labels, predictions = [1, 1, 1, 0, 0], [1, 1, 0, 1, 0]
    counts = confusion_counts(labels, predictions)
    assert counts == {"tn": 1, "fp": 1, "fn": 1, "tp": 2}
    squared_error = 0.5
    rates = rates_from_sums(np.array([1, 1, 1, 2, squared_error], dtype=float))
    assert float(rates["accuracy"]) == pytest.approx(3 / 5)
    assert float(rates["sensitivity"]) == pytest.approx(2 / 3)
    assert float(rates["specificity"]) == pytest.approx(1 / 2)
    assert float(rates["balanced_accuracy"]) == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert float(rates["f1"]) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))  # = precision 2/3, recall 2/3
    assert float(rates["brier"]) == pytest.approx(0.5 / 5)


def test_undefined_metrics_are_null_with_a_reason():
    # benign only, nothing predicted malignant: AUC, sensitivity, balanced accuracy, F1 undefined
    result = cluster_bootstrap_metrics(
        labels=[0, 0, 0, 0], scores=[0.1, 0.2, 0.3, 0.4], predictions=[0, 0, 0, 0],
        clusters=[0, 0, 1, 1], n_clusters=2, weights=patient_bootstrap_weights(2, 50, 0))
    for name in ("auc", "sensitivity", "balanced_accuracy", "f1"):
        assert result[name]["value"] is None and result[name]["ci_low"] is None, name
        assert result[name]["reason"], name
    assert result["specificity"]["value"] == 1.0 and result["accuracy"]["value"] == 1.0
    assert result["brier"]["value"] == pytest.approx((0.01 + 0.04 + 0.09 + 0.16) / 4)
    # a false positive makes F1 defined (0), still without a positive case
    fp = cluster_bootstrap_metrics([0, 0], [0.9, 0.2], [1, 0], [0, 1], 2, patient_bootstrap_weights(2, 20, 0))
    assert fp["f1"]["value"] == 0.0 and fp["sensitivity"]["value"] is None
    # a single patient: values, no interval, and a reason
    single = cluster_bootstrap_metrics([0, 1], [0.2, 0.7], [0, 1], [0, 0], 1, patient_bootstrap_weights(1, 20, 0))
    assert single["auc"]["value"] == 1.0 and single["auc"]["ci_low"] is None
    assert "at least 2 patients" in single["auc"]["reason"]


def test_calibration_table_hand_computed():
    table = calibration_table([0, 1, 1, 1], [0.05, 0.15, 0.95, 1.0], bins=2)
    low, high = table["bins"]
    assert (low["count"], high["count"]) == (2, 2)
    assert low["mean_probability"] == pytest.approx(0.1) and low["fraction_malignant"] == 0.5
    assert high["mean_probability"] == pytest.approx(0.975) and high["fraction_malignant"] == 1.0
    assert table["ece"] == pytest.approx(0.5 * 0.4 + 0.5 * 0.025)


# --- the patient (cluster) bootstrap ---------------------------------------------------


def _synthetic_patients(n_patients: int, images_per_patient: int, seed: int):
    """Images with a per-patient random effect: correlated within a patient."""
    rng = np.random.default_rng(seed)
    patient_labels = (np.arange(n_patients) % 2).astype(int)
    patient_effect = rng.normal(0, 1.0, n_patients)
    clusters = np.repeat(np.arange(n_patients), images_per_patient)
    labels = patient_labels[clusters]
    logits = 1.2 * (2 * labels - 1) + patient_effect[clusters] + rng.normal(0, 0.5, clusters.size)
    scores = 1 / (1 + np.exp(-logits))
    return labels, scores, (scores >= 0.5).astype(int), clusters


def test_bootstrap_weights_are_seeded_patient_multiplicities():
    weights = patient_bootstrap_weights(7, 200, seed=5)
    assert weights.shape == (200, 7) and np.all(weights.sum(axis=1) == 7)
    assert np.array_equal(weights, patient_bootstrap_weights(7, 200, seed=5))
    assert not np.array_equal(weights, patient_bootstrap_weights(7, 200, seed=6))
    assert patient_bootstrap_weights(7, 0, seed=5).shape == (0, 7)


def test_vectorised_bootstrap_equals_a_loop_over_resampled_patients():
    labels, scores, predictions, clusters = _synthetic_patients(9, 5, seed=1)
    weights = patient_bootstrap_weights(9, 25, seed=2)
    positives, negatives, sums = evaluation.cluster_sums(labels, scores, predictions, clusters, 9)
    vectorised = evaluation.metrics_for_weights(weights, positives, negatives, sums)
    for r, row in enumerate(weights):
        drawn = np.repeat(np.arange(9), row.astype(int))  # patient indices of this resample
        index = np.concatenate([np.flatnonzero(clusters == p) for p in drawn])
        expected_auc = roc_auc(labels[index], scores[index])
        if expected_auc is None:
            assert math.isnan(vectorised["auc"][r])
        else:
            assert vectorised["auc"][r] == pytest.approx(expected_auc)
        counts = confusion_counts(labels[index], predictions[index])
        assert vectorised["accuracy"][r] == pytest.approx((counts["tp"] + counts["tn"]) / index.size)
        if counts["tp"] + counts["fn"]:
            assert vectorised["sensitivity"][r] == pytest.approx(counts["tp"] / (counts["tp"] + counts["fn"]))


def _widths(result):
    return {name: m["ci_high"] - m["ci_low"] for name, m in result.items() if m["ci_low"] is not None}


def test_ci_contains_the_estimate_narrows_with_more_patients_and_is_reproducible():
    results = {}
    for n_patients in (16, 160):
        labels, scores, predictions, clusters = _synthetic_patients(n_patients, 6, seed=0)
        weights = patient_bootstrap_weights(n_patients, 1000, seed=0)
        results[n_patients] = cluster_bootstrap_metrics(labels, scores, predictions, clusters, n_patients, weights)
        for name, metric in results[n_patients].items():
            assert metric["ci_low"] <= metric["value"] <= metric["ci_high"], (n_patients, name, metric)
    few, many = _widths(results[16]), _widths(results[160])
    for name in ("auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity", "f1"):
        assert many[name] < 0.6 * few[name], (name, few[name], many[name])
    labels, scores, predictions, clusters = _synthetic_patients(16, 6, seed=0)
    again = cluster_bootstrap_metrics(labels, scores, predictions, clusters, 16, patient_bootstrap_weights(16, 1000, seed=0))
    assert again == results[16]
    other = cluster_bootstrap_metrics(labels, scores, predictions, clusters, 16, patient_bootstrap_weights(16, 1000, seed=1))
    assert other["auc"]["ci_low"] != results[16]["auc"]["ci_low"]


def test_patient_resampling_keeps_images_together():
    """k identical images per patient carry no more information than one per patient."""
    n_patients, copies = 24, 8
    labels, scores, predictions, _ = _synthetic_patients(n_patients, 1, seed=4)
    weights = patient_bootstrap_weights(n_patients, 1000, seed=9)
    per_patient = cluster_bootstrap_metrics(labels, scores, predictions, np.arange(n_patients), n_patients, weights)
    clusters = np.repeat(np.arange(n_patients), copies)
    duplicated = cluster_bootstrap_metrics(
        labels[clusters], scores[clusters], predictions[clusters], clusters, n_patients, weights)
    for name in evaluation.METRIC_NAMES:
        for key in ("value", "ci_low", "ci_high"):
            assert duplicated[name][key] == pytest.approx(per_patient[name][key]), (name, key)
    # Resampling IMAGES instead (each image its own cluster) would pretend 8x the data.
    n_images = clusters.size
    naive = cluster_bootstrap_metrics(
        labels[clusters], scores[clusters], predictions[clusters], np.arange(n_images), n_images,
        patient_bootstrap_weights(n_images, 1000, seed=9))
    assert _widths(naive)["auc"] < 0.6 * _widths(duplicated)["auc"]


def test_bootstrap_of_large_image_sets_is_fast():
    import time

    labels, scores, predictions, clusters = _synthetic_patients(40, 500, seed=0)  # 20,000 images
    started = time.perf_counter()
    result = cluster_bootstrap_metrics(labels, scores, predictions, clusters, 40, patient_bootstrap_weights(40, 1000, 0))
    assert result["auc"]["bootstrap_valid"] == 1000
    assert time.perf_counter() - started < 60  # generous: typically ~2 s; a Python loop takes minutes


# --- model folder resolution and manifests ----------------------------------------------


def test_per_patient_rows_score_each_patients_own_images():
    # Patient "a": both classes, ranked 3 of 4 pairs right; "b": benign only (AUC undefined).
    labels = [1, 1, 0, 0, 0, 0]
    scores = [0.9, 0.3, 0.5, 0.1, 0.2, 0.7]
    predictions = [int(s >= 0.5) for s in scores]
    result = evaluation.score_predictions(labels, scores, predictions, ["a", "a", "a", "a", "b", "b"],
                                          threshold=0.5, bootstrap=0)
    a, b = result["patients"]
    assert (a["patient_id"], a["n_images"], a["n_malignant_images"], a["label"]) == ("a", 4, 2, 1)
    assert a["image_auc"] == pytest.approx(0.75) and a["image_accuracy"] == pytest.approx(0.5)
    assert a["score"] == pytest.approx(0.45) and a["prediction"] == 0
    assert b["image_auc"] is None and b["image_accuracy"] == pytest.approx(0.5)
    # At the threshold: "a" finds 1 of its 2 malignant and clears 1 of its 2 benign images;
    # "b" has no malignant image to find.
    assert a["image_sensitivity"] == pytest.approx(0.5) and a["image_specificity"] == pytest.approx(0.5)
    assert b["image_sensitivity"] is None and b["image_specificity"] == pytest.approx(0.5)


def test_slide_context_evaluation_scores_the_smoothed_probabilities_at_the_models_threshold():
    from histopath.components import slide_context

    columns, rows = np.meshgrid(np.arange(6), np.arange(5))
    columns, rows = np.tile(columns.ravel(), 2), np.tile(rows.ravel(), 2)
    patients = ["a"] * 30 + ["b"] * 30
    labels = (columns >= 3).astype(int)
    scores = np.clip(0.3 + 0.3 * labels + np.random.default_rng(1).normal(0, 0.2, 60), 0, 1)
    xs, ys = (1 + 50 * columns).tolist(), (1 + 50 * rows).tolist()
    setting = {"sigma": 1.5, "grid_step": 50, "rule": slide_context.RULE, "decision_threshold": 0.5}
    assert evaluation.slide_context_evaluation(None, labels, scores, patients, xs, ys, bootstrap=0, seed=0) is None
    assert evaluation.slide_context_evaluation(setting, labels, scores, patients, [None] * 60, ys,
                                               bootstrap=0, seed=0) is None  # a layout without positions

    context = evaluation.slide_context_evaluation(setting, labels, scores, patients, xs, ys, bootstrap=20, seed=0)
    expected = slide_context.smooth_slide_scores(scores, patients, xs, ys, 1.5)
    np.testing.assert_allclose(context.scores, expected)
    report = context.report
    assert (report["sigma"], report["grid_step"], report["decision_threshold"]) == (1.5, 50, 0.5)
    assert report["image_level"]["metrics"]["auc"]["value"] == pytest.approx(roc_auc(labels, expected))
    assert report["image_level"]["confusion_matrix"]["tp"] == int(((expected >= 0.5) & (labels == 1)).sum())
    assert [p["patient_id"] for p in report["patients"]] == ["a", "b"]
    scored = evaluation.score_predictions(labels, scores, (scores >= 0.5).astype(int), patients, threshold=0.5,
                                          bootstrap=0)
    lines = evaluation.summary_lines({**scored, "slide_context": report})
    assert any(line.startswith("image level with slide context (sigma 1.5 patches, threshold 0.500): 60")
               for line in lines)
    hindsight = scored["image_level"]["balanced_accuracy_in_hindsight"]
    assert hindsight["value"] >= scored["image_level"]["metrics"]["balanced_accuracy"]["value"]  # a bound
    assert f"  in hindsight       balanced accuracy {hindsight['value']:.3f} at threshold" in "\n".join(lines)
    first = scored["patients"][0]  # and each patient's own images
    assert (f"  a                  30 images ({first['n_malignant_images']} malignant)  AUC {first['image_auc']:.3f}"
            f"  sensitivity {first['image_sensitivity']:.3f}  specificity {first['image_specificity']:.3f}") in lines


def test_model_folder_resolution_picks_the_newest_complete_integer_version(tmp_path):
    model = tmp_path / "mil"
    for name, complete in [("1", True), ("2", True), ("10", True), ("11", False), (".12.tmp", True), ("13.tmp", True)]:
        (model / name).mkdir(parents=True)
        if complete:
            (model / name / "saved_model.pb").write_bytes(b"")
    assert resolve_model_dir(model) == model / "10"
    assert resolve_model_dir(model / "2") == model / "2"
    with pytest.raises(DataError, match="neither a model version folder"):
        resolve_model_dir(model / "11")
    with pytest.raises(DataError, match="does not exist"):
        resolve_model_dir(tmp_path / "nope")


def test_patients_from_manifest(tmp_path):
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"dataset": "breakhis", "splits": {
        "train": {"patient_ids": ["1", "2"]}, "test": {"patient_ids": ["3", "14"]}}}))
    assert evaluation.patients_from_manifest(manifest, "test", "breakhis") == ["3", "14"]
    with pytest.raises(ConfigError, match="no split 'eval'"):
        evaluation.patients_from_manifest(manifest, "eval")
    with pytest.raises(ConfigError, match="breakhis manifest"):
        evaluation.patients_from_manifest(manifest, "test", "idc")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DataError, match="not a readable ingestion manifest"):
        evaluation.patients_from_manifest(tmp_path / "bad.json", "test")


# --- evaluate_model with a real exported model ----------------------------------------


@pytest.fixture(scope="module")
def breakhis_sample(tmp_path_factory) -> pathlib.Path:
    """6 synthetic patients x 4 images in the BreaKHis_v1 layout, plus one corrupt image."""
    from histopath.data.sample import make_sample

    root = tmp_path_factory.mktemp("eval-sample") / "sample"
    make_sample("breakhis", str(root), patients=6, images_per_patient=4, seed=3)
    first = sorted(root.rglob("*.png"))[0]
    corrupt = first.with_name(first.name.replace("-001.png", "-099.png"))
    corrupt.write_bytes(first.read_bytes()[:200])  # truncated PNG with a valid BreakHis name
    return root


def _check_consistency(result: dict) -> None:
    threshold = result["decision_threshold"]
    by_patient: dict = {}
    for image in result["images"]:
        assert 0.0 <= image["probability"] <= 1.0
        assert image["prediction"] == int(image["probability"] >= threshold)
        by_patient.setdefault(image["patient_id"], []).append(image)
    assert len(result["patients"]) == result["patient_level"]["n_patients"] == len(by_patient)
    for row in result["patients"]:
        images = by_patient[row["patient_id"]]
        assert row["n_images"] == len(images)
        assert row["score"] == pytest.approx(np.mean([i["probability"] for i in images]))
        assert row["label"] == int(any(i["label"] for i in images))
        assert row["prediction"] == int(row["score"] >= threshold)
    for level in ("image_level", "patient_level"):
        block = result[level]
        cm = block["confusion_matrix"]
        assert cm["tn"] + cm["fp"] + cm["fn"] + cm["tp"] == block["n_items"]
        for name, metric in block["metrics"].items():
            if metric["value"] is None:
                assert metric["reason"], (level, name)
            else:
                assert 0.0 <= metric["value"] <= 1.0, (level, name)
                if metric["ci_low"] is not None:
                    assert 0.0 <= metric["ci_low"] <= metric["ci_high"] <= 1.0, (level, name)
    images = result["images"]
    assert result["image_level"]["metrics"]["auc"]["value"] == pytest.approx(
        roc_auc([i["label"] for i in images], [i["probability"] for i in images]))


def test_evaluate_model_on_a_generated_sample(exported_models, breakhis_sample, tmp_path):
    from serving_fixtures import reference_outputs

    result = evaluation.evaluate_model(
        exported_models.base / "mil", breakhis_sample, "breakhis", bootstrap=300, seed=1, batch_size=7)
    assert result["model"]["model_version"] == 1 and result["model"]["model_name"] == "mil"
    assert result["model"]["info"]["model_kind"] == "mil"
    assert result["image_level"]["n_images"] == 24 and result["patient_level"]["n_patients"] == 6
    assert result["image_level"]["label_counts"] == {"benign": 12, "malignant": 12}
    assert result["patient_level"]["label_counts"] == {"benign": 3, "malignant": 3}
    assert [f["path"] for f in result["failed_images"]] == [
        p.relative_to(breakhis_sample).as_posix() for p in breakhis_sample.rglob("*-099.png")]
    assert "-099.png: the image is corrupt or truncated" in result["failed_images"][0]["error"]
    assert result["patient_score_rule"].startswith("patient score = MEAN")
    assert result["bootstrap"] == {**result["bootstrap"], "resamples": 300, "seed": 1}
    _check_consistency(result)
    # probabilities are those of the serving signature itself
    first = result["images"][0]
    reference = reference_outputs(exported_models.mil, {"image_bytes": [(breakhis_sample / first["path"]).read_bytes()]})
    assert first["probability"] == pytest.approx(float(reference["probability"][0]), abs=1e-6)

    # only some patients; an unknown one is reported; benign-only gives null AUC, no crash
    benign = sorted({p["patient_id"] for p in result["patients"] if p["label"] == 0})
    subset = evaluation.evaluate_model(exported_models.mil, breakhis_sample, "breakhis",
                                       patients=benign[:2] + ["999999"], bootstrap=50)
    assert {p["patient_id"] for p in subset["patients"]} == set(benign[:2])
    assert subset["data"]["patients_not_found"] == ["999999"]
    assert subset["image_level"]["metrics"]["auc"]["value"] is None
    assert "both" in subset["patient_level"]["metrics"]["auc"]["reason"]
    with pytest.raises(DataError, match="none of the 1 requested patients"):
        evaluation.evaluate_model(exported_models.mil, breakhis_sample, "breakhis", patients=["999999"])

    written = evaluation.write_evaluation(subset, tmp_path / "benign.json")
    assert json.loads(written["json"].read_text())["image_level"]["metrics"]["auc"]["value"] is None
    assert Image.open(written["roc"]).size[0] > 300


def _link_patients(shared_data: pathlib.Path, destination: pathlib.Path, slides: list[str]) -> pathlib.Path:
    """A BreaKHis_v1 tree whose slide folders are SYMLINKS to the real ones (no copies)."""
    source = shared_data / "breakhis-200x-224"
    for slide in slides:
        real = next(source.glob(f"BreaKHis_v1/histology_slides/breast/*/SOB/*/{slide}"))
        link = destination / real.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(real, target_is_directory=True)
    return destination


def test_evaluate_model_on_real_breakhis_patients(exported_models, shared_data, tmp_path, artifacts_dir):
    data = _link_patients(shared_data, tmp_path / "real", ["SOB_B_PT_14-29315EF", "SOB_B_TA_14-13200", "SOB_M_DC_14-2980"])
    result = evaluation.evaluate_model(exported_models.mil, data, "breakhis", bootstrap=1000, seed=0)
    assert result["failed_images"] == []
    assert result["image_level"]["n_images"] == 14 + 21 + 21
    assert [(p["patient_id"], p["n_images"], p["label"]) for p in result["patients"]] == [
        ("2980", 21, 1), ("13200", 21, 0), ("29315", 14, 0)]
    _check_consistency(result)
    auc = result["image_level"]["metrics"]["auc"]
    assert auc["bootstrap_valid"] < 1000  # some resamples draw no benign or no malignant patient
    assert "resamples left out" in auc["reason"]
    written = evaluation.write_evaluation(result, tmp_path / "out" / "real.json")
    assert written["roc"] == tmp_path / "out" / "real.roc.png"
    assert written["calibration"] == tmp_path / "out" / "real.calibration.png"
    document = json.loads(written["json"].read_text())  # strict JSON: no NaN
    assert document["plots"]["roc"] == str(written["roc"])
    for key in ("roc", "calibration"):
        assert written[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        shutil.copy(written[key], artifacts_dir / f"evaluation-real-breakhis.{key}.png")
    assert not list((tmp_path / "out").glob(".*tmp*"))  # no temporary files left
