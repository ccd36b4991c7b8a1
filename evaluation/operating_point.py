"""Choosing a model's decision threshold on the eval split (never on the test split)."""

from __future__ import annotations

import numpy as np

from histopath.evaluation import metrics


def balanced_accuracy_threshold(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The probability cut-off that maximises balanced accuracy (Youden's J).

    A fixed 0.5 is wrong for imbalanced data (BreakHis is ~70 % malignant): the model's
    scores shift with the class prior. Ties are broken towards the middle of the plateau.

    Args:
      labels: 0/1 array.
      probabilities: scores in [0, 1], same length.

    Returns:
      The threshold; 0.5 when the labels hold only one class.
    """
    labels = np.asarray(labels).astype(int).ravel()
    probabilities = np.asarray(probabilities, dtype=np.float64).ravel()
    if not metrics.has_both_classes(labels):
        return 0.5
    # Cut-offs halfway between consecutive distinct scores, plus both ends; "malignant if
    # p >= cut". Rates by counting in sorted scores: memory linear in the images.
    levels = np.unique(probabilities)
    cuts = np.concatenate([[0.0], (levels[:-1] + levels[1:]) / 2.0, [1.0]])
    sensitivity = _share_at_or_above(probabilities[labels == 1], cuts)
    specificity = 1.0 - _share_at_or_above(probabilities[labels == 0], cuts)
    score = sensitivity + specificity
    best = np.flatnonzero(np.isclose(score, score.max()))
    return float(cuts[best[len(best) // 2]])


def _share_at_or_above(values: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """For each cut, the share of `values` >= it."""
    return (values.size - np.searchsorted(np.sort(values), cuts, side="left")) / values.size


def balanced_accuracy_in_hindsight(labels: np.ndarray, probabilities: np.ndarray) -> tuple[float, float]:
    """The best balanced accuracy any threshold reaches on THESE scores, and that threshold.

    The threshold is chosen on the very labels it is scored on, so this is a diagnostic,
    never an operating point: an upper bound for every threshold rule on the same images.
    When it is close to the balanced accuracy at the model's own threshold, the threshold
    is not what limits the model; its ranking is.

    Args:
      labels: 0/1 array.
      probabilities: scores in [0, 1], same length.

    Returns:
      `(threshold, balanced_accuracy)`; the balanced accuracy is NaN when the labels hold
      only one class.
    """
    labels = np.asarray(labels).astype(int).ravel()
    probabilities = np.asarray(probabilities, dtype=np.float64).ravel()
    threshold = balanced_accuracy_threshold(labels, probabilities)
    if labels.size == 0 or labels.min() == labels.max():
        return threshold, float("nan")
    predicted = probabilities >= threshold
    return threshold, float((np.mean(predicted[labels == 1]) + np.mean(~predicted[labels == 0])) / 2.0)
