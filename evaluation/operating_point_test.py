"""The decision threshold chosen on the eval split, and the balanced accuracy in hindsight."""

from __future__ import annotations

import numpy as np
import pytest

from histopath.evaluation import operating_point


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
