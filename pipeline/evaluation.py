"""Evaluates a pushed model on a data folder: image- and patient-level metrics with
patient (cluster) bootstrap confidence intervals (`histopath evaluate`).

Metrics (numpy only):

- AUC: Mann–Whitney U / (n_pos * n_neg), ties counted 1/2.
- At the model's stored decision threshold: accuracy, balanced accuracy, sensitivity
  (recall of malignant), specificity, F1 (malignant = positive), Brier score.
- A metric that is undefined on the data (e.g. AUC with one class only) is `None` with a
  "reason", never an exception.

Confidence intervals: 95 % percentile bootstrap resampling PATIENTS with replacement and
taking all their images (images of one patient are correlated; resampling images would
give intervals that are too narrow). Every metric is a ratio of per-patient sums, so one
resample is a vector of patient multiplicities `w` and each metric is computed for all
resamples at once with matrix products (`W @ per_patient_sums`). Resamples in which a
metric is undefined (e.g. no benign patient drawn) are left out of that metric's interval
and counted in "bootstrap_valid".
"""

from __future__ import annotations

import datetime
import json
import math
import os
import pathlib
import tempfile
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence

import numpy as np

from histopath.errors import ConfigError, DataError

PATIENT_SCORE_RULE = (
    "patient score = MEAN of the patient's image probabilities; patient prediction = "
    "score >= the model's decision threshold"
)
PATIENT_LABEL_RULE = (
    "patient label = 1 (malignant) if ANY of the patient's images is malignant, else 0 "
    "(BreakHis: every patient has a single label; IDC: 1 if any patch is IDC-positive)"
)
CONFIDENCE = 0.95
CALIBRATION_BINS = 10
METRIC_NAMES = ("auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity", "f1", "brier")
_UNDEFINED = {
    "auc": "AUC needs both benign and malignant cases",
    "sensitivity": "no malignant cases (TP + FN = 0)",
    "specificity": "no benign cases (TN + FP = 0)",
    "balanced_accuracy": "needs both benign and malignant cases",
    "f1": "no malignant cases and none predicted malignant (2TP + FP + FN = 0)",
    "accuracy": "no cases",
    "brier": "no cases",
}
FEW_PATIENTS_PER_CLASS = 5  # below this many patients of a class the intervals are flagged
_CHUNK_CELLS = 4_000_000  # bootstrap resamples x score levels per matrix product (memory)


# --- metrics --------------------------------------------------------------------------


def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> Optional[float]:
    """Area under the ROC curve by the Mann–Whitney statistic (ties count 1/2).

    AUC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg), R_pos = sum of the mid-ranks
    of the positives' scores.

    Args:
      labels: 0/1.
      scores: higher = more likely 1.

    Returns:
      The AUC, or None when the labels hold only one class.
    """
    labels = np.asarray(labels).astype(int).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    _, level, counts = np.unique(scores, return_inverse=True, return_counts=True)
    mid_ranks = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based average rank of each level
    rank_sum = mid_ranks[level[labels == 1]].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(labels: Sequence[int], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points for every distinct score used as threshold (predict 1 if score >= t).

    Returns:
      `(fpr, tpr, thresholds)`, starting at (0, 0) (threshold +inf) and ending at (1, 1);
      NaN rates when a class is absent.
    """
    labels = np.asarray(labels).astype(int).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    thresholds = np.unique(scores)[::-1]
    predicted = scores[None, :] >= thresholds[:, None]
    n_pos, n_neg = labels.sum(), (1 - labels).sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = (predicted & (labels == 1)).sum(axis=1) / n_pos
        fpr = (predicted & (labels == 0)).sum(axis=1) / n_neg
    return (np.concatenate([[0.0], fpr]), np.concatenate([[0.0], tpr]),
            np.concatenate([[np.inf], thresholds]))


def confusion_counts(labels: Sequence[int], predictions: Sequence[int]) -> Dict[str, int]:
    """Counts {"tn", "fp", "fn", "tp"} (1 = malignant = positive)."""
    labels = np.asarray(labels).astype(int).ravel()
    predictions = np.asarray(predictions).astype(int).ravel()
    return {
        "tn": int(((labels == 0) & (predictions == 0)).sum()),
        "fp": int(((labels == 0) & (predictions == 1)).sum()),
        "fn": int(((labels == 1) & (predictions == 0)).sum()),
        "tp": int(((labels == 1) & (predictions == 1)).sum()),
    }


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    numerator, denominator = np.broadcast_arrays(np.asarray(numerator, float), np.asarray(denominator, float))
    out = np.full(numerator.shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def rates_from_sums(sums: np.ndarray) -> Dict[str, np.ndarray]:
    """Threshold metrics from (weighted) sums; NaN where undefined.

    Args:
      sums: `[..., 5]` array of (tn, fp, fn, tp, squared error sum) totals.

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


def _weighted_auc(weights: np.ndarray, positives: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """Mann–Whitney AUC for many weightings of the same clusters at once.

    Args:
      weights: `[R, G]` multiplicity of each cluster (patient) in each resample.
      positives: `[G, U]` count of positive items of cluster g at score level u (levels
        sorted ascending).
      negatives: `[G, U]` same for negative items.

    Returns:
      `[R]` AUCs, NaN where a resample has no positive or no negative item.
    """
    result = np.empty(weights.shape[0])
    chunk = max(1, _CHUNK_CELLS // max(1, positives.shape[1]))
    for start in range(0, weights.shape[0], chunk):
        w = weights[start:start + chunk]
        pos, neg = w @ positives, w @ negatives  # [r, U]
        below = np.cumsum(neg, axis=1) - neg
        wins = (pos * (below + 0.5 * neg)).sum(axis=1)
        result[start:start + chunk] = _ratio(wins, pos.sum(axis=1) * neg.sum(axis=1))
    return result


def cluster_sums(labels, scores, predictions, clusters, n_clusters: int) -> tuple:
    """Per-cluster sufficient statistics of every metric.

    Args:
      labels, scores, predictions: per item (image or patient).
      clusters: per item, the index of its cluster (patient) in `[0, n_clusters)`.
      n_clusters: number of clusters.

    Returns:
      `(positives [G, U], negatives [G, U], sums [G, 5])`: counts per score level and
      (tn, fp, fn, tp, squared error) per cluster.
    """
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    predictions = np.asarray(predictions).astype(int)
    clusters = np.asarray(clusters).astype(int)
    _, level = np.unique(scores, return_inverse=True)
    n_levels = int(level.max()) + 1 if level.size else 0
    positives = np.zeros((n_clusters, n_levels))
    negatives = np.zeros((n_clusters, n_levels))
    np.add.at(positives, (clusters[labels == 1], level[labels == 1]), 1.0)
    np.add.at(negatives, (clusters[labels == 0], level[labels == 0]), 1.0)
    cells = np.stack([
        (labels == 0) & (predictions == 0), (labels == 0) & (predictions == 1),
        (labels == 1) & (predictions == 0), (labels == 1) & (predictions == 1),
    ], axis=1).astype(float)
    per_item = np.concatenate([cells, ((scores - labels) ** 2)[:, None]], axis=1)
    sums = np.zeros((n_clusters, 5))
    np.add.at(sums, clusters, per_item)
    return positives, negatives, sums


def metrics_for_weights(weights: np.ndarray, positives, negatives, sums) -> Dict[str, np.ndarray]:
    """Every metric for each row of cluster `weights` `[R, G]`; NaN where undefined."""
    values = rates_from_sums(weights @ sums)
    values["auc"] = _weighted_auc(weights, positives, negatives)
    return values


def patient_bootstrap_weights(n_patients: int, resamples: int, seed: int) -> np.ndarray:
    """Multiplicities of patients in `resamples` draws of `n_patients` with replacement.

    Row r, column p: how often patient p is in resample r (a multinomial draw; the same
    as sampling patient indices with replacement and counting). Depends only on
    `(n_patients, resamples, seed)`.

    Returns:
      `[resamples, n_patients]` float array, each row summing to `n_patients`.
    """
    rng = np.random.default_rng(seed)
    if resamples <= 0 or n_patients <= 0:
        return np.zeros((0, max(n_patients, 0)))
    return rng.multinomial(n_patients, np.full(n_patients, 1.0 / n_patients), size=resamples).astype(float)


def cluster_bootstrap_metrics(
    labels, scores, predictions, clusters, n_clusters: int, weights: np.ndarray,
    confidence: float = CONFIDENCE,
) -> Dict[str, Dict[str, Any]]:
    """Point estimates and cluster-bootstrap percentile intervals of every metric.

    Args:
      labels, scores, predictions: per item (image, or patient for patient level).
      clusters: per item, its patient index.
      n_clusters: number of patients.
      weights: `[R, n_clusters]` from `patient_bootstrap_weights` (R may be 0).
      confidence: interval coverage.

    Returns:
      metric -> {"value", "ci_low", "ci_high", "bootstrap_valid", "reason"}; value/CI
      None with a reason when undefined.
    """
    positives, negatives, sums = cluster_sums(labels, scores, predictions, clusters, n_clusters)
    point = metrics_for_weights(np.ones((1, n_clusters)), positives, negatives, sums)
    resampled = metrics_for_weights(weights, positives, negatives, sums) if len(weights) else {}
    result = {}
    for name in METRIC_NAMES:
        value = float(point[name][0])
        entry: Dict[str, Any] = {"value": None, "ci_low": None, "ci_high": None, "bootstrap_valid": 0, "reason": None}
        if math.isnan(value):
            entry["reason"] = _UNDEFINED[name]
            result[name] = entry
            continue
        entry["value"] = value
        entry["reason"] = interval_unavailable(len(weights), n_clusters)
        if entry["reason"] is None:
            fill_interval(entry, resampled[name], confidence, f"metric undefined in them: {_UNDEFINED[name]}")
        result[name] = entry
    return result


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


def calibration_table(labels, scores, bins: int = CALIBRATION_BINS) -> Dict[str, Any]:
    """Reliability table in equal-width probability bins, and the expected calibration error.

    Returns:
      {"bins": [{"low", "high", "count", "mean_probability", "fraction_malignant"}...],
      "ece": sum over bins of count/N * |fraction_malignant - mean_probability|}.
    """
    labels = np.asarray(labels, dtype=float)
    scores = np.asarray(scores, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, scores, side="right") - 1, 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        mask = index == b
        count = int(mask.sum())
        row = {"low": float(edges[b]), "high": float(edges[b + 1]), "count": count,
               "mean_probability": None, "fraction_malignant": None}
        if count:
            row["mean_probability"] = float(scores[mask].mean())
            row["fraction_malignant"] = float(labels[mask].mean())
            ece += count / labels.size * abs(row["fraction_malignant"] - row["mean_probability"])
        rows.append(row)
    return {"bins": rows, "ece": float(ece) if labels.size else None}


def _confusion_matrix(labels, predictions) -> Dict[str, Any]:
    counts = confusion_counts(labels, predictions)
    return {**counts, "matrix": [[counts["tn"], counts["fp"]], [counts["fn"], counts["tp"]]],
            "rows": "true label (benign, malignant)", "columns": "predicted label (benign, malignant)"}


# --- evaluation of a model on a data folder --------------------------------------------


def patients_from_manifest(manifest_path: str | os.PathLike, split: str, dataset: Optional[str] = None) -> List[str]:
    """The patient ids of one split of an ingestion manifest (`histopath ingest`).

    Raises:
      DataError: unreadable manifest.
      ConfigError: unknown split, or the manifest is of another data set.
    """
    path = pathlib.Path(manifest_path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        splits = manifest["splits"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"{path}: not a readable ingestion manifest ({error})") from None
    if dataset and manifest.get("dataset") not in (None, dataset):
        raise ConfigError(f"{path} is a {manifest['dataset']} manifest, but --dataset is {dataset}")
    if split not in splits:
        raise ConfigError(f"{path} has no split {split!r} (splits: {', '.join(sorted(splits))})")
    return [str(p) for p in splits[split].get("patient_ids", [])]


def _patient_sort_key(patient: str):
    return (len(patient), patient)


def score_predictions(
    labels: Sequence[int],
    scores: Sequence[float],
    predictions: Sequence[int],
    patient_ids: Sequence[str],
    *,
    threshold: float,
    bootstrap: int = 1000,
    seed: int = 0,
) -> Dict[str, Any]:
    """Image- and patient-level metrics of per-image predictions, with patient-bootstrap CIs.

    The scoring half of `evaluate_model`, for predictions made elsewhere (e.g. on ingested
    records or by a baseline model).

    Args:
      labels: per image, 0 benign / 1 malignant.
      scores: per image, the probability of malignant.
      predictions: per image, the predicted label (usually `score >= threshold`).
      patient_ids: per image, its patient (the unit of resampling and aggregation).
      threshold: the decision threshold, applied to patient scores as well.
      bootstrap: patient-bootstrap resamples (0 = no intervals).
      seed: seed of the resampling.

    Returns:
      {"patient_label_rule", "patient_score_rule", "bootstrap", "image_level",
      "patient_level", "patients"} as in `evaluate_model`'s result.
    """
    from histopath.components import operating_point

    if bootstrap < 0:
        raise ConfigError(f"bootstrap resamples must be >= 0, got {bootstrap}")
    labels = np.asarray(labels, dtype=int)
    scores = np.asarray(scores, dtype=np.float64)
    predictions = np.asarray(predictions, dtype=int)
    if not (len(labels) == len(scores) == len(predictions) == len(patient_ids)) or not len(labels):
        raise DataError("labels, scores, predictions and patient ids must be non-empty and of one length")
    patients = sorted({str(p) for p in patient_ids}, key=_patient_sort_key)
    patient_index = {p: i for i, p in enumerate(patients)}
    clusters = np.array([patient_index[str(p)] for p in patient_ids], dtype=int)
    n_patients = len(patients)

    counts = np.bincount(clusters, minlength=n_patients)
    malignant_counts = np.bincount(clusters, weights=labels, minlength=n_patients).astype(int)
    patient_labels = (malignant_counts > 0).astype(int)
    patient_scores = np.bincount(clusters, weights=scores, minlength=n_patients) / counts
    patient_predictions = (patient_scores >= threshold).astype(int)

    weights = patient_bootstrap_weights(n_patients, bootstrap, seed)
    image_metrics = cluster_bootstrap_metrics(labels, scores, predictions, clusters, n_patients, weights)
    patient_metrics = cluster_bootstrap_metrics(
        patient_labels, patient_scores, patient_predictions, np.arange(n_patients), n_patients, weights)

    def level(n_items, item_labels, item_scores, item_predictions, metrics):
        hindsight_threshold, hindsight = operating_point.balanced_accuracy_in_hindsight(item_labels, item_scores)
        return {
            "n_images": int(len(labels)),
            "n_patients": n_patients,
            "n_items": int(n_items),
            "label_counts": {"benign": int((item_labels == 0).sum()), "malignant": int((item_labels == 1).sum())},
            "metrics": metrics,
            "confusion_matrix": _confusion_matrix(item_labels, item_predictions),
            "calibration": calibration_table(item_labels, item_scores),
            # A diagnostic, not an operating point: the best balanced accuracy any threshold
            # reaches on these very labels. Close to the model's own: its ranking limits it.
            "balanced_accuracy_in_hindsight": {
                "value": None if math.isnan(hindsight) else hindsight, "threshold": hindsight_threshold},
        }

    def own_rate(i: int, label: int) -> Optional[float]:
        """Within patient i: the share of its images of class `label` predicted as such."""
        mine = (clusters == i) & (labels == label)
        return float(np.mean(predictions[mine] == label)) if mine.any() else None

    return {
        "patient_label_rule": PATIENT_LABEL_RULE,
        "patient_score_rule": PATIENT_SCORE_RULE,
        "bootstrap": {
            "method": "cluster (patient) percentile bootstrap: patients resampled with replacement, "
                      "all images of a drawn patient kept",
            "resamples": int(bootstrap), "seed": int(seed), "confidence": CONFIDENCE,
            "warnings": _bootstrap_warnings(patient_labels),
        },
        "image_level": level(len(labels), labels, scores, predictions, image_metrics),
        "patient_level": level(n_patients, patient_labels, patient_scores, patient_predictions, patient_metrics),
        "patients": [
            {"patient_id": p, "n_images": int(counts[i]), "n_malignant_images": int(malignant_counts[i]),
             "label": int(patient_labels[i]), "score": float(patient_scores[i]),
             "prediction": int(patient_predictions[i]),
             # Within the patient: how its own images are ranked and classified (the AUC is
             # None unless the patient has images of both classes, e.g. an IDC slide; the
             # sensitivity / specificity None when it has no malignant / benign image).
             "image_auc": roc_auc(labels[clusters == i], scores[clusters == i]),
             "image_accuracy": float(np.mean(predictions[clusters == i] == labels[clusters == i])),
             "image_sensitivity": own_rate(i, 1), "image_specificity": own_rate(i, 0)}
            for i, p in enumerate(patients)
        ],
    }


def evaluate_model(
    model_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    dataset: str,
    *,
    patients: Optional[Sequence[str]] = None,
    bootstrap: int = 1000,
    seed: int = 0,
    batch_size: int = 32,
    progress: Optional[Callable[..., Any]] = None,
) -> Dict[str, Any]:
    """Predicts every image of a data folder with a pushed model and scores it.

    Args:
      model_dir: `<name>/<version>` or `<name>` (newest version).
      data_dir: a folder in the real BreakHis or IDC layout (parsed by
        `data.layouts.scan_source`; labels and patients come from the file names).
      dataset: "breakhis" or "idc".
      patients: evaluate only these patients (e.g. a manifest's test split); None = all.
      bootstrap: patient-bootstrap resamples for the 95 % intervals (0 = none).
      seed: seed of the resampling.
      batch_size: images per call of the serving signature.
      progress: optional tqdm-like factory, called as `progress(total=N)` and returning an
        object with `update(n)` and `close()` (e.g. `tqdm.tqdm`).

    Returns:
      The evaluation (JSON-serialisable): "model", "data", "decision_threshold",
      "patient_label_rule", "patient_score_rule", "bootstrap", "image_level",
      "patient_level", "patients" (per-patient table), "images" (per-image predictions),
      "failed_images"; and for a model with a slide-context setting on IDC data,
      "slide_context" (see `slide_context_evaluation`) and `context_probability` per image.

    Raises:
      DataError: no model, data folder missing / wrong layout, none of the requested
        patients present, or no image could be predicted.
      ConfigError: unknown dataset or invalid arguments.
    """
    from histopath import __version__
    from histopath.data import layouts
    from histopath.pipeline import predict

    if bootstrap < 0:
        raise ConfigError(f"bootstrap resamples must be >= 0, got {bootstrap}")
    data_dir = os.path.abspath(os.fspath(data_dir))
    scan = layouts.scan_source(dataset, data_dir)
    files = scan.files
    missing: List[str] = []
    if patients is not None:
        wanted = {str(p) for p in patients}
        present = {f.patient_id for f in files}
        missing = sorted(wanted - present, key=_patient_sort_key)
        files = [f for f in files if f.patient_id in wanted]
        if not files:
            raise DataError(f"none of the {len(wanted)} requested patients has an image in {data_dir}")

    loaded = predict.load_model(model_dir)
    model = predict.describe_model(loaded)
    threshold = float(loaded.model_info.get("decision_threshold", 0.5))
    paths = [os.path.join(data_dir, f.relative_path) for f in files]
    bar = progress(total=len(paths)) if progress else None
    outcomes = []
    try:
        for outcome in predict.predict_files(loaded, paths, batch_size):
            outcomes.append(outcome)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()

    failed = [{"path": f.relative_path, "error": o.error} for f, o in zip(files, outcomes) if o.error]
    kept = [(f, o.prediction) for f, o in zip(files, outcomes) if not o.error]
    if not kept:
        raise DataError(f"no image of {data_dir} could be predicted (e.g. {failed[0]['error']})")

    labels = [f.label for f, _ in kept]
    scores = [row["probability"] for _, row in kept]
    patient_ids = [f.patient_id for f, _ in kept]
    scored = score_predictions(
        labels=labels, scores=scores,
        predictions=[row["label"] for _, row in kept],  # the model's `label`
        patient_ids=patient_ids, threshold=threshold, bootstrap=bootstrap, seed=seed,
    )
    context = slide_context_evaluation(
        loaded.model_info.get("slide_context"), labels, scores, patient_ids,
        [f.patch_x for f, _ in kept], [f.patch_y for f, _ in kept], bootstrap=bootstrap, seed=seed)
    return {
        "histopath_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": {**model, "info": loaded.model_info},
        "data": {
            "dataset": dataset,
            "data_dir": data_dir,
            "patients_requested": None if patients is None else len(set(map(str, patients))),
            "patients_not_found": missing,
            "files_scanned": len(scan.files) + len(scan.skipped),
            "files_skipped_by_layout": len(scan.skipped),
            "skipped_examples": [{"path": s.path, "reason": s.reason} for s in scan.skipped[:20]],
        },
        "decision_threshold": threshold,
        **scored,
        "images": [
            {"path": f.relative_path, "patient_id": f.patient_id, "label": int(f.label),
             "probability": float(row["probability"]), "prediction": int(row["label"]),
             **({} if context is None else {"context_probability": float(context.scores[index])})}
            for index, (f, row) in enumerate(kept)
        ],
        "failed_images": failed,
        **({} if context is None else {"slide_context": context.report}),
    }


class SlideContextResult(NamedTuple):
    """`slide_context_evaluation`'s report and the per-image smoothed probabilities."""

    report: Dict[str, Any]
    scores: np.ndarray


def slide_context_evaluation(
    setting: Optional[Mapping[str, Any]],
    labels: Sequence[int],
    scores: Sequence[float],
    patient_ids: Sequence[str],
    xs: Sequence[Optional[int]],
    ys: Sequence[Optional[int]],
    *,
    bootstrap: int,
    seed: int,
) -> Optional[SlideContextResult]:
    """Scores the slide-context probabilities of a model that carries a setting for them.

    Args:
      setting: the model's `model_info["slide_context"]` (written by the Trainer: sigma,
        grid_step, rule and the decision threshold chosen on the eval split); None = off.
      labels, scores, patient_ids: per image, as for `score_predictions`.
      xs, ys: per image, its slide position (None when the layout has none).

    Returns:
      None without a setting or without positions; else the report (sigma, grid step,
      rule, threshold and `score_predictions`' blocks) and the smoothed probabilities.
    """
    from histopath.components import slide_context

    if not setting or any(x is None for x in xs) or any(y is None for y in ys):
        return None
    threshold = float(setting["decision_threshold"])
    smoothed = slide_context.smooth_slide_scores(scores, patient_ids, xs, ys, float(setting["sigma"]),
                                                 setting.get("grid_step"))
    scored = score_predictions(labels, smoothed, (smoothed >= threshold).astype(int), patient_ids,
                               threshold=threshold, bootstrap=bootstrap, seed=seed)
    report = {"sigma": float(setting["sigma"]), "grid_step": setting.get("grid_step"),
              "rule": setting.get("rule", slide_context.RULE), "decision_threshold": threshold,
              **{key: scored[key] for key in ("image_level", "patient_level", "patients")}}
    return SlideContextResult(report, smoothed)


def _bootstrap_warnings(patient_labels: np.ndarray) -> List[str]:
    benign, malignant = int((patient_labels == 0).sum()), int((patient_labels == 1).sum())
    if min(benign, malignant) >= FEW_PATIENTS_PER_CLASS:
        return []
    return [f"only {benign} benign and {malignant} malignant patients: percentile intervals from so few "
            "patients understate the uncertainty (treat them as rough)"]


def plot_paths(json_path: str | os.PathLike) -> Dict[str, pathlib.Path]:
    """Where `write_evaluation` puts the plots: `X.json` -> `X.roc.png`, `X.calibration.png`."""
    path = pathlib.Path(json_path)
    stem = path.name[:-5] if path.name.lower().endswith(".json") else path.name
    return {"roc": path.with_name(f"{stem}.roc.png"), "calibration": path.with_name(f"{stem}.calibration.png")}


def write_evaluation(result: Mapping[str, Any], path: str | os.PathLike) -> Dict[str, pathlib.Path]:
    """Writes the evaluation JSON and its ROC and calibration plots (temp name, then rename).

    Args:
      result: from `evaluate_model`.
      path: the JSON file; plots go next to it (see `plot_paths`).

    Returns:
      {"json", "roc", "calibration"} paths written.
    """
    from histopath.pipeline import plots

    path = pathlib.Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    targets = plot_paths(path)
    images, patients = result["images"], result["patients"]
    curves = {}
    for name, labels, scores, level in (
        ("images", [i["label"] for i in images], [i["probability"] for i in images], "image_level"),
        ("patients", [p["label"] for p in patients], [p["score"] for p in patients], "patient_level"),
    ):
        fpr, tpr, _ = roc_curve(labels, scores)
        auc = result[level]["metrics"]["auc"]
        curves[name] = plots.RocCurve(fpr, tpr, auc["value"], auc["ci_low"], auc["ci_high"],
                                      n_items=len(labels))
    if "slide_context" in result:
        labels = [i["label"] for i in images]
        fpr, tpr, _ = roc_curve(labels, [i["context_probability"] for i in images])
        auc = result["slide_context"]["image_level"]["metrics"]["auc"]
        curves["images, slide context"] = plots.RocCurve(fpr, tpr, auc["value"], auc["ci_low"], auc["ci_high"],
                                                         n_items=len(labels))
    model = result["model"]
    title = f"{model['model_name']} v{model['model_version']} on {result['data']['dataset']}"
    plots.plot_roc(curves, targets["roc"], title=title)
    plots.plot_calibration(
        {"images": result["image_level"]["calibration"], "patients": result["patient_level"]["calibration"]},
        targets["calibration"], title=title)
    document = dict(result)
    document["plots"] = {key: str(value) for key, value in targets.items()}
    _atomic_write_text(path, json.dumps(document, indent=2, allow_nan=False) + "\n")
    return {"json": path, **targets}


def _atomic_write_text(path: pathlib.Path, text: str) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


SUMMARY_PATIENTS = 30  # per-patient lines `summary_lines` prints; the JSON has them all


def summary_lines(result: Mapping[str, Any]) -> List[str]:
    """A human-readable table of the metrics with their intervals."""
    lines = []
    levels = [(level.replace("_", " "), result[level]) for level in ("image_level", "patient_level")]
    if "slide_context" in result:
        context = result["slide_context"]
        levels.append((f"image level with slide context (sigma {context['sigma']:g} patches, "
                       f"threshold {context['decision_threshold']:.3f})", context["image_level"]))
    for title, block in levels:
        lines.append(f"{title}: {block['n_items']} "
                     f"({block['label_counts']['benign']} benign, {block['label_counts']['malignant']} malignant)")
        for name in METRIC_NAMES:
            metric = block["metrics"][name]
            if metric["value"] is None:
                lines.append(f"  {name:18s} n/a ({metric['reason']})")
                continue
            interval = (f" [{metric['ci_low']:.3f}, {metric['ci_high']:.3f}]"
                        if metric["ci_low"] is not None else "")
            lines.append(f"  {name:18s} {metric['value']:.3f}{interval}")
        cm = block["confusion_matrix"]
        lines.append(f"  confusion          TN={cm['tn']} FP={cm['fp']} FN={cm['fn']} TP={cm['tp']}")
        hindsight = block.get("balanced_accuracy_in_hindsight", {})
        if hindsight.get("value") is not None:
            lines.append(f"  in hindsight       balanced accuracy {hindsight['value']:.3f} at threshold "
                         f"{hindsight['threshold']:.3f}, chosen on these labels (a bound, not an operating point)")
    patients = result.get("patients", [])
    if patients:
        lines.append("per patient, its own images (AUC, sensitivity, specificity at the threshold):")

        def number(value: Optional[float]) -> str:
            return "n/a" if value is None else f"{value:.3f}"

        for row in patients[:SUMMARY_PATIENTS]:
            lines.append(f"  {row['patient_id']:18s} {row['n_images']} images ({row['n_malignant_images']} malignant)"
                         f"  AUC {number(row['image_auc'])}  sensitivity {number(row.get('image_sensitivity'))}"
                         f"  specificity {number(row.get('image_specificity'))}")
        if len(patients) > SUMMARY_PATIENTS:
            lines.append(f"  ... {len(patients) - SUMMARY_PATIENTS} more in the JSON's \"patients\"")
    return lines
