"""Patient (cluster) bootstrap of every metric, vectorised over the resamples.

Images of one patient are correlated, so intervals resample PATIENTS with replacement and
keep all their images. One resample is a vector of patient multiplicities `w`; every
threshold metric is a ratio of per-patient sums (`w @ sums`) and the AUC a Mann-Whitney
statistic of multiplicity-weighted score counts, so all resamples are computed together
with matrix products. The per-patient score counts are sparse (each image adds one entry),
so memory grows linearly with the images, not with images x distinct scores.

A resample in which a metric is undefined (no benign patient drawn, say) is left out of
that metric's interval and counted in "bootstrap_valid".
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, NamedTuple, Optional, Sequence

import numpy as np
from scipy import sparse

CONFIDENCE = 0.95
METRIC_NAMES = ("auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity", "f1", "brier")
UNDEFINED_REASONS = {
    "auc": "AUC needs both benign and malignant cases",
    "sensitivity": "no malignant cases (TP + FN = 0)",
    "specificity": "no benign cases (TN + FP = 0)",
    "balanced_accuracy": "needs both benign and malignant cases",
    "f1": "no malignant cases and none predicted malignant (2TP + FP + FN = 0)",
    "accuracy": "no cases",
    "brier": "no cases",
}
_CHUNK_CELLS = 4_000_000  # resamples x score levels per dense block (bounds the memory)


class ClusterSums(NamedTuple):
    """Per-cluster sufficient statistics of every metric.

    Attributes:
      positives: sparse `[G, U]` count of positive items of cluster g at score level u
        (levels ascending).
      negatives: sparse `[G, U]`, the same for negative items.
      sums: `[G, 5]` totals of (tn, fp, fn, tp, squared error) per cluster.
    """

    positives: sparse.csr_matrix
    negatives: sparse.csr_matrix
    sums: np.ndarray


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    numerator, denominator = np.broadcast_arrays(np.asarray(numerator, float), np.asarray(denominator, float))
    out = np.full(numerator.shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def rates_from_sums(sums: np.ndarray) -> Dict[str, np.ndarray]:
    """Threshold metrics from (weighted) sums; NaN where undefined.

    Args:
      sums: `[..., 5]` array of (tn, fp, fn, tp, squared error) totals.

    Returns:
      accuracy, balanced_accuracy, sensitivity, specificity, f1, brier, each `[...]`.
    """
    tn, fp, fn, tp, squared = (sums[..., i] for i in range(5))
    total = tn + fp + fn + tp
    sensitivity = _ratio(tp, tp + fn)
    specificity = _ratio(tn, tn + fp)
    return {
        "accuracy": _ratio(tp + tn, total),
        "balanced_accuracy": (sensitivity + specificity) / 2.0,  # NaN propagates
        "sensitivity": sensitivity,
        "specificity": specificity,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "brier": _ratio(squared, total),
    }


def cluster_sums(labels, scores, predictions, clusters, n_clusters: int) -> ClusterSums:
    """The per-cluster statistics of items (images, or patients at patient level).

    Args:
      labels, scores, predictions: per item.
      clusters: per item, the index of its cluster (patient) in `[0, n_clusters)`.
      n_clusters: number of clusters.
    """
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    predictions = np.asarray(predictions).astype(int)
    clusters = np.asarray(clusters).astype(int)
    _, level = np.unique(scores, return_inverse=True)
    n_levels = int(level.max()) + 1 if level.size else 0

    def counts(mask: np.ndarray) -> sparse.csr_matrix:
        return sparse.csr_matrix((np.ones(int(mask.sum())), (clusters[mask], level[mask])),
                                 shape=(n_clusters, n_levels))

    cells = np.stack([
        (labels == 0) & (predictions == 0), (labels == 0) & (predictions == 1),
        (labels == 1) & (predictions == 0), (labels == 1) & (predictions == 1),
    ], axis=1).astype(float)
    per_item = np.concatenate([cells, ((scores - labels) ** 2)[:, None]], axis=1)
    sums = np.zeros((n_clusters, 5))
    np.add.at(sums, clusters, per_item)
    return ClusterSums(counts(labels == 1), counts(labels == 0), sums)


def weighted_auc(weights: np.ndarray, positives: sparse.csr_matrix, negatives: sparse.csr_matrix) -> np.ndarray:
    """Mann-Whitney AUC (ties 1/2) for many weightings of the same clusters at once.

    Args:
      weights: `[R, G]` multiplicity of each cluster in each resample.
      positives, negatives: from `cluster_sums`.

    Returns:
      `[R]` AUCs, NaN where a resample has no positive or no negative item.
    """
    result = np.empty(weights.shape[0])
    chunk = max(1, _CHUNK_CELLS // max(1, positives.shape[1]))
    positives_t, negatives_t = positives.T.tocsr(), negatives.T.tocsr()
    for start in range(0, weights.shape[0], chunk):
        block = weights[start:start + chunk]
        pos = (positives_t @ block.T).T  # [r, U] weighted counts per score level
        neg = (negatives_t @ block.T).T
        below = np.cumsum(neg, axis=1) - neg
        wins = (pos * (below + 0.5 * neg)).sum(axis=1)
        result[start:start + chunk] = _ratio(wins, pos.sum(axis=1) * neg.sum(axis=1))
    return result


def metrics_for_weights(weights: np.ndarray, statistics: ClusterSums) -> Dict[str, np.ndarray]:
    """Every metric for each row of cluster `weights` `[R, G]`; NaN where undefined."""
    values = rates_from_sums(weights @ statistics.sums)
    values["auc"] = weighted_auc(weights, statistics.positives, statistics.negatives)
    return values


def patient_bootstrap_weights(n_patients: int, resamples: int, seed: int) -> np.ndarray:
    """Multiplicities of patients in `resamples` draws of `n_patients` with replacement.

    Row r, column p: how often patient p is in resample r (a multinomial draw: the same
    as sampling patient indices with replacement and counting). Depends only on
    `(n_patients, resamples, seed)`.

    Returns:
      `[resamples, n_patients]` float array, each row summing to `n_patients`.
    """
    if resamples <= 0 or n_patients <= 0:
        return np.zeros((0, max(n_patients, 0)))
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_patients, np.full(n_patients, 1.0 / n_patients), size=resamples).astype(float)


def interval_unavailable(resamples: int, n_clusters: int) -> Optional[str]:
    """Why no bootstrap interval can be had at all (None when one can)."""
    if resamples <= 0:
        return "no confidence interval: bootstrap disabled (0 resamples)"
    if n_clusters < 2:
        return "no confidence interval: resampling needs at least 2 patients"
    return None


def fill_interval(entry: Dict[str, Any], draws: np.ndarray, confidence: float, undefined: str) -> None:
    """Sets `entry`'s bootstrap_valid, ci_low, ci_high and reason from resampled values.

    Args:
      entry: a metric entry ("value", "ci_low", "ci_high", "bootstrap_valid", "reason").
      draws: the metric in every resample; NaN where it is undefined.
      confidence: interval coverage (percentile interval).
      undefined: why a resample can leave the metric undefined, for the reason text.
    """
    valid = draws[~np.isnan(draws)]
    entry["bootstrap_valid"] = int(valid.size)
    if valid.size < 2:
        entry["reason"] = f"no confidence interval: undefined in {draws.size - valid.size} of {draws.size} resamples"
        return
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(valid, [tail, 1.0 - tail])
    entry["ci_low"], entry["ci_high"] = float(low), float(high)
    if valid.size < draws.size:
        entry["reason"] = f"{draws.size - valid.size} of {draws.size} resamples left out ({undefined})"


def cluster_bootstrap_metrics(
    labels: Sequence[int],
    scores: Sequence[float],
    predictions: Sequence[int],
    clusters: Sequence[int],
    n_clusters: int,
    weights: np.ndarray,
    confidence: float = CONFIDENCE,
) -> Dict[str, Dict[str, Any]]:
    """Point estimates and cluster-bootstrap percentile intervals of every metric.

    Args:
      labels, scores, predictions: per item (image, or patient at patient level).
      clusters: per item, its patient index.
      n_clusters: number of patients.
      weights: `[R, n_clusters]` from `patient_bootstrap_weights` (R may be 0).
      confidence: interval coverage.

    Returns:
      metric -> {"value", "ci_low", "ci_high", "bootstrap_valid", "reason"}; value and
      interval None, with a reason, where the metric is undefined.
    """
    statistics = cluster_sums(labels, scores, predictions, clusters, n_clusters)
    return _entries(lambda rows: metrics_for_weights(rows, statistics), METRIC_NAMES, n_clusters, weights,
                    confidence)


def _entries(metrics: Callable[[np.ndarray], Dict[str, np.ndarray]], names: Sequence[str], n_clusters: int,
             weights: np.ndarray, confidence: float) -> Dict[str, Dict[str, Any]]:
    """Metric entries: `metrics(weights)` at all-ones weights for the values, at `weights`
    for the intervals."""
    point = metrics(np.ones((1, n_clusters)))
    resampled = metrics(weights) if len(weights) else {}
    result = {}
    for name in names:
        value = float(point[name][0])
        entry: Dict[str, Any] = {"value": None, "ci_low": None, "ci_high": None, "bootstrap_valid": 0, "reason": None}
        if math.isnan(value):
            entry["reason"] = UNDEFINED_REASONS[name]
        else:
            entry["value"] = value
            entry["reason"] = interval_unavailable(len(weights), n_clusters)
            if entry["reason"] is None:
                fill_interval(entry, resampled[name], confidence, f"metric undefined in them: {UNDEFINED_REASONS[name]}")
        result[name] = entry
    return result


CURVE_METRICS = ("auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity")


def _curve_metrics(weights: np.ndarray, curves: np.ndarray, decision_index: int) -> Dict[str, np.ndarray]:
    counts = np.einsum("rp,ptc->rtc", weights, curves)  # [R, T, (tn, fp, fn, tp)]
    tn, fp, fn, tp = (counts[..., index] for index in range(4))
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr, fpr = tp / (tp + fn), fp / (fp + tn)
    # The ROC runs from (1, 1) below the lowest threshold to (0, 0) above the highest.
    tpr = np.concatenate([np.ones((len(tpr), 1)), tpr, np.zeros((len(tpr), 1))], axis=1)
    fpr = np.concatenate([np.ones((len(fpr), 1)), fpr, np.zeros((len(fpr), 1))], axis=1)
    auc = -np.trapz(tpr, fpr, axis=1)
    at_decision = np.concatenate([counts[:, decision_index, :], np.zeros((len(counts), 1))], axis=1)
    values = rates_from_sums(at_decision)
    values["auc"] = auc
    return {name: values[name] for name in CURVE_METRICS}


def curve_bootstrap_metrics(curves: np.ndarray, decision_index: int, weights: np.ndarray,
                            confidence: float = CONFIDENCE) -> Dict[str, Dict[str, Any]]:
    """Point estimates and patient-bootstrap intervals from each patient's confusion counts
    at a grid of thresholds (what TFMA's confusion-matrix plot gives per patient slice).

    Args:
      curves: `[P, T, 4]` counts (TN, FP, FN, TP) of each patient at each of T increasing
        thresholds.
      decision_index: the index of the model's decision threshold in the grid.
      weights: `[R, P]` from `patient_bootstrap_weights` (R may be 0).
      confidence: interval coverage.

    Returns:
      metric -> {"value", "ci_low", "ci_high", "bootstrap_valid", "reason"} for
      `CURVE_METRICS`; the AUC is the trapezoid area under the grid's ROC points.
    """
    curves = np.asarray(curves, dtype=float)
    return _entries(lambda rows: _curve_metrics(rows, curves, decision_index), CURVE_METRICS, curves.shape[0],
                    weights, confidence)
