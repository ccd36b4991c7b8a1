"""Choosing a model's decision threshold on the eval split (never on the test split)."""

from __future__ import annotations

import numpy as np


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
    positives, negatives = labels.sum(), (1 - labels).sum()
    if positives == 0 or negatives == 0:
        return 0.5
    candidates = np.unique(probabilities)
    # Cut-offs halfway between consecutive distinct scores, plus both ends.
    cuts = np.concatenate([[0.0], (candidates[:-1] + candidates[1:]) / 2.0, [1.0]])
    predicted = probabilities[None, :] >= cuts[:, None]
    sensitivity = (predicted & (labels == 1)).sum(axis=1) / positives
    specificity = (~predicted & (labels == 0)).sum(axis=1) / negatives
    score = sensitivity + specificity
    best = np.flatnonzero(np.isclose(score, score.max()))
    return float(cuts[best[len(best) // 2]])
