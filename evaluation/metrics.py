"""Point metrics of binary predictions, on scikit-learn.

Every function takes labels 0 (benign) / 1 (malignant) and, where it needs them, scores
(higher = more likely malignant). A metric that the data cannot define (an AUC with one
class) is None, never an exception. Memory grows linearly with the number of images.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import numpy as np
from sklearn import metrics as sk_metrics

CALIBRATION_BINS = 10


def _labels_scores(labels: Sequence[int], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    return (np.asarray(labels).astype(int).ravel(), np.asarray(scores, dtype=np.float64).ravel())


def has_both_classes(labels: Sequence[int]) -> bool:
    """Whether `labels` hold at least one 0 and one 1."""
    labels = np.asarray(labels).astype(int).ravel()
    return bool(labels.size) and labels.min() != labels.max()


def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> Optional[float]:
    """Area under the ROC curve (ties count 1/2); None when the labels hold one class."""
    labels, scores = _labels_scores(labels, scores)
    if not has_both_classes(labels):
        return None
    return float(sk_metrics.roc_auc_score(labels, scores))


def roc_curve(labels: Sequence[int], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points for every distinct score used as threshold (predict 1 if score >= t).

    Returns:
      `(fpr, tpr, thresholds)`, starting at (0, 0) (threshold +inf) and ending at (1, 1);
      NaN rates for a class that is absent.
    """
    labels, scores = _labels_scores(labels, scores)
    if has_both_classes(labels):
        return sk_metrics.roc_curve(labels, scores, drop_intermediate=False)
    # One class (scikit-learn warns and returns NaN for the other): the same points by sorting.
    thresholds = np.concatenate([[np.inf], np.unique(scores)[::-1]])

    def rate_at_or_above(values: np.ndarray) -> np.ndarray:
        if not values.size:
            return np.full(thresholds.size, np.nan)
        ordered = np.sort(values)
        return (values.size - np.searchsorted(ordered, thresholds, side="left")) / values.size

    return rate_at_or_above(scores[labels == 0]), rate_at_or_above(scores[labels == 1]), thresholds


def confusion_counts(labels: Sequence[int], predictions: Sequence[int]) -> Dict[str, int]:
    """Counts {"tn", "fp", "fn", "tp"} (1 = malignant = positive)."""
    tn, fp, fn, tp = sk_metrics.confusion_matrix(
        np.asarray(labels).astype(int).ravel(), np.asarray(predictions).astype(int).ravel(),
        labels=[0, 1]).ravel()
    return {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)}


def confusion_matrix(labels: Sequence[int], predictions: Sequence[int]) -> Dict[str, Any]:
    """The counts and the 2x2 matrix (rows: true label, columns: predicted label)."""
    counts = confusion_counts(labels, predictions)
    return {**counts, "matrix": [[counts["tn"], counts["fp"]], [counts["fn"], counts["tp"]]],
            "rows": "true label (benign, malignant)", "columns": "predicted label (benign, malignant)"}


def calibration_table(labels: Sequence[int], scores: Sequence[float], bins: int = CALIBRATION_BINS) -> Dict[str, Any]:
    """Reliability table in equal-width probability bins and the expected calibration error.

    The bins and the per-bin fractions are scikit-learn's `calibration_curve` (uniform
    strategy); the counts come from the same bin assignment.

    Returns:
      {"bins": [{"low", "high", "count", "mean_probability", "fraction_malignant"}...],
      "ece": sum over bins of count/N * |fraction_malignant - mean_probability|}.
    """
    from sklearn.calibration import calibration_curve

    labels, scores = _labels_scores(labels, scores)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # calibration_curve's own bin assignment (right edge of the last bin included).
    assigned = np.searchsorted(np.linspace(0.0, 1.0 + 1e-8, bins + 1)[1:-1], scores)
    counts = np.bincount(assigned, minlength=bins)
    fractions, means = ((), ())
    if labels.size and has_both_classes(labels):
        fractions, means = calibration_curve(labels, scores, n_bins=bins, strategy="uniform")
    elif labels.size:  # one class: calibration_curve refuses; the fractions are that class
        means = np.bincount(assigned, weights=scores, minlength=bins)[counts > 0] / counts[counts > 0]
        fractions = np.full(means.shape, float(labels[0]))
    rows, ece = [], 0.0
    filled = iter(zip(fractions, means))
    for index in range(bins):
        row = {"low": float(edges[index]), "high": float(edges[index + 1]), "count": int(counts[index]),
               "mean_probability": None, "fraction_malignant": None}
        if counts[index]:
            fraction, mean = next(filled)
            row["mean_probability"], row["fraction_malignant"] = float(mean), float(fraction)
            ece += counts[index] / labels.size * abs(fraction - mean)
        rows.append(row)
    return {"bins": rows, "ece": float(ece) if labels.size else None}
