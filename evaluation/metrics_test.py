"""Point metrics against values computed by hand on tiny arrays."""

from __future__ import annotations

import numpy as np
import pytest

from histopath.evaluation.metrics import calibration_table, confusion_counts, roc_auc, roc_curve


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


def test_confusion_counts_hand_computed():
    assert confusion_counts([1, 1, 1, 0, 0], [1, 1, 0, 1, 0]) == {"tn": 1, "fp": 1, "fn": 1, "tp": 2}
    assert confusion_counts([0, 0], [0, 0]) == {"tn": 2, "fp": 0, "fn": 0, "tp": 0}


def test_roc_curve_with_one_class_has_nan_rates_for_the_missing_one():
    fpr, tpr, thresholds = roc_curve([0, 0, 0], [0.2, 0.9, 0.2])
    assert fpr.tolist() == [0.0, 1 / 3, 1.0] and np.isnan(tpr).all()
    assert thresholds.tolist() == [np.inf, 0.9, 0.2]


def test_calibration_table_hand_computed():
    table = calibration_table([0, 1, 1, 1], [0.05, 0.15, 0.95, 1.0], bins=2)
    low, high = table["bins"]
    assert (low["count"], high["count"]) == (2, 2)
    assert low["mean_probability"] == pytest.approx(0.1) and low["fraction_malignant"] == 0.5
    assert high["mean_probability"] == pytest.approx(0.975) and high["fraction_malignant"] == 1.0
    assert table["ece"] == pytest.approx(0.5 * 0.4 + 0.5 * 0.025)


def test_calibration_table_of_one_class_and_of_nothing():
    table = calibration_table([0, 0], [0.05, 0.95], bins=2)
    assert [b["fraction_malignant"] for b in table["bins"]] == [0.0, 0.0]
    assert table["ece"] == pytest.approx(0.5 * 0.05 + 0.5 * 0.95)
    assert calibration_table([], [], bins=2)["ece"] is None
