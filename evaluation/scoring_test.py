"""`score_predictions` and `slide_context_evaluation` on tiny hand-made predictions."""

from __future__ import annotations

import numpy as np
import pytest

from histopath.evaluation import evaluate as evaluation
from histopath.evaluation import scoring
from histopath.evaluation.metrics import roc_auc


def test_per_patient_rows_score_each_patients_own_images():
    # Patient "a": both classes, ranked 3 of 4 pairs right; "b": benign only (AUC undefined).
    labels = [1, 1, 0, 0, 0, 0]
    scores = [0.9, 0.3, 0.5, 0.1, 0.2, 0.7]
    predictions = [int(s >= 0.5) for s in scores]
    result = scoring.score_predictions(labels, scores, predictions, ["a", "a", "a", "a", "b", "b"],
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
    from histopath.evaluation import slide_context

    columns, rows = np.meshgrid(np.arange(6), np.arange(5))
    columns, rows = np.tile(columns.ravel(), 2), np.tile(rows.ravel(), 2)
    patients = ["a"] * 30 + ["b"] * 30
    labels = (columns >= 3).astype(int)
    scores = np.clip(0.3 + 0.3 * labels + np.random.default_rng(1).normal(0, 0.2, 60), 0, 1)
    xs, ys = (1 + 50 * columns).tolist(), (1 + 50 * rows).tolist()
    setting = {"sigma": 1.5, "grid_step": 50, "rule": slide_context.RULE, "decision_threshold": 0.5}
    assert scoring.slide_context_evaluation(None, labels, scores, patients, xs, ys, bootstrap=0, seed=0) is None
    assert scoring.slide_context_evaluation(setting, labels, scores, patients, [None] * 60, ys,
                                               bootstrap=0, seed=0) is None  # a layout without positions

    context = scoring.slide_context_evaluation(setting, labels, scores, patients, xs, ys, bootstrap=20, seed=0)
    expected = slide_context.smooth_slide_scores(scores, patients, xs, ys, 1.5)
    np.testing.assert_allclose(context.scores, expected)
    report = context.report
    assert (report["sigma"], report["grid_step"], report["decision_threshold"]) == (1.5, 50, 0.5)
    assert report["image_level"]["metrics"]["auc"]["value"] == pytest.approx(roc_auc(labels, expected))
    assert report["image_level"]["confusion_matrix"]["tp"] == int(((expected >= 0.5) & (labels == 1)).sum())
    assert [p["patient_id"] for p in report["patients"]] == ["a", "b"]
    scored = scoring.score_predictions(labels, scores, (scores >= 0.5).astype(int), patients, threshold=0.5,
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


def test_tumour_fraction_per_slide():
    from histopath.evaluation.scoring import tumour_fraction_evaluation

    labels = [1, 1, 0, 0] + [1, 0, 0, 0] + [1, 1, 1, 0]
    called = [1, 0, 0, 0] + [1, 1, 0, 0] + [1, 1, 1, 1]
    block = tumour_fraction_evaluation(labels, called, ["a"] * 4 + ["b"] * 4 + ["c"] * 4, bootstrap=100, seed=0)
    rows = {row["patient_id"]: row for row in block["patients"]}
    assert (rows["a"]["labelled_fraction"], rows["a"]["predicted_fraction"]) == (0.5, 0.25)
    assert block["mean_absolute_error"]["value"] == pytest.approx(0.25)
    assert block["bias"]["value"] == pytest.approx((-0.25 + 0.25 + 0.25) / 3)
    assert block["mean_absolute_error"]["ci_low"] <= 0.25 <= block["mean_absolute_error"]["ci_high"]
    assert block["spearman"] == pytest.approx(0.5)  # ranks (2, 1, 3) against (1, 2, 3)
