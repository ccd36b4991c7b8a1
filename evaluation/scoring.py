"""Scoring per-image predictions: image- and patient-level metrics with patient-bootstrap
intervals, per-patient rows, and the same for slide-context probabilities.

- At the model's decision threshold: accuracy, balanced accuracy, sensitivity (recall of
  malignant), specificity, F1 (malignant = positive), Brier score; and the AUC.
- A metric that the data cannot define (an AUC with one class) is None with a reason.
- 95 % intervals resample PATIENTS (`evaluation.bootstrap`).
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence

import numpy as np

from histopath.data.features import patient_sort_key
from histopath.errors import ConfigError, DataError
from histopath.evaluation import bootstrap as patient_bootstrap
from histopath.evaluation import metrics, operating_point
from histopath.evaluation.patient_rules import PATIENT_LABEL_RULE, PATIENT_SCORE_RULE

FEW_PATIENTS_PER_CLASS = 5  # below this many patients of a class the intervals are flagged


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
    if bootstrap < 0:
        raise ConfigError(f"bootstrap resamples must be >= 0, got {bootstrap}")
    labels = np.asarray(labels, dtype=int)
    scores = np.asarray(scores, dtype=np.float64)
    predictions = np.asarray(predictions, dtype=int)
    if not (len(labels) == len(scores) == len(predictions) == len(patient_ids)) or not len(labels):
        raise DataError("labels, scores, predictions and patient ids must be non-empty and of one length")
    patients = sorted({str(p) for p in patient_ids}, key=patient_sort_key)
    patient_index = {p: i for i, p in enumerate(patients)}
    clusters = np.array([patient_index[str(p)] for p in patient_ids], dtype=int)
    n_patients = len(patients)

    counts = np.bincount(clusters, minlength=n_patients)
    malignant_counts = np.bincount(clusters, weights=labels, minlength=n_patients).astype(int)
    patient_labels = (malignant_counts > 0).astype(int)
    patient_scores = np.bincount(clusters, weights=scores, minlength=n_patients) / counts
    patient_predictions = (patient_scores >= threshold).astype(int)

    weights = patient_bootstrap.patient_bootstrap_weights(n_patients, bootstrap, seed)
    image_metrics = patient_bootstrap.cluster_bootstrap_metrics(labels, scores, predictions, clusters, n_patients, weights)
    patient_metrics = patient_bootstrap.cluster_bootstrap_metrics(
        patient_labels, patient_scores, patient_predictions, np.arange(n_patients), n_patients, weights)

    return {
        "patient_label_rule": PATIENT_LABEL_RULE,
        "patient_score_rule": PATIENT_SCORE_RULE,
        "bootstrap": {
            "method": "cluster (patient) percentile bootstrap: patients resampled with replacement, "
                      "all images of a drawn patient kept",
            "resamples": int(bootstrap), "seed": int(seed), "confidence": patient_bootstrap.CONFIDENCE,
            "warnings": _bootstrap_warnings(patient_labels),
        },
        "image_level": _level(len(labels), n_patients, labels, scores, predictions, image_metrics),
        "patient_level": _level(len(labels), n_patients, patient_labels, patient_scores, patient_predictions,
                                patient_metrics),
        "patients": _patient_rows(patients, clusters, labels, scores, predictions, patient_labels,
                                  patient_scores, patient_predictions),
    }


def _level(n_images: int, n_patients: int, item_labels: np.ndarray, item_scores: np.ndarray,
           item_predictions: np.ndarray, level_metrics: Dict[str, Any]) -> Dict[str, Any]:
    """One level's (images or patients) counts, metrics, confusion matrix and calibration."""
    hindsight_threshold, hindsight = operating_point.balanced_accuracy_in_hindsight(item_labels, item_scores)
    return {
        "n_images": int(n_images),
        "n_patients": n_patients,
        "n_items": int(len(item_labels)),
        "label_counts": {"benign": int((item_labels == 0).sum()), "malignant": int((item_labels == 1).sum())},
        "metrics": level_metrics,
        "confusion_matrix": metrics.confusion_matrix(item_labels, item_predictions),
        "calibration": metrics.calibration_table(item_labels, item_scores),
        # A diagnostic, not an operating point: the best balanced accuracy any threshold
        # reaches on these very labels. Close to the model's own: its ranking limits it.
        "balanced_accuracy_in_hindsight": {
            "value": None if math.isnan(hindsight) else hindsight, "threshold": hindsight_threshold},
    }


def _patient_rows(patients: Sequence[str], clusters: np.ndarray, labels: np.ndarray, scores: np.ndarray,
                  predictions: np.ndarray, patient_labels: np.ndarray, patient_scores: np.ndarray,
                  patient_predictions: np.ndarray) -> List[Dict[str, Any]]:
    """Per patient: its label, score and prediction, and how its own images are ranked and
    classified (the AUC is None unless the patient has images of both classes, e.g. an IDC
    slide; the sensitivity / specificity None when it has no malignant / benign image)."""

    def own_rate(i: int, label: int) -> Optional[float]:
        mine = (clusters == i) & (labels == label)
        return float(np.mean(predictions[mine] == label)) if mine.any() else None

    rows = []
    for i, patient in enumerate(patients):
        own = clusters == i
        rows.append({"patient_id": patient, "n_images": int(own.sum()), "n_malignant_images": int(labels[own].sum()),
                     "label": int(patient_labels[i]), "score": float(patient_scores[i]),
                     "prediction": int(patient_predictions[i]),
                     "image_auc": metrics.roc_auc(labels[own], scores[own]),
                     "image_accuracy": float(np.mean(predictions[own] == labels[own])),
                     "image_sensitivity": own_rate(i, 1), "image_specificity": own_rate(i, 0)})
    return rows


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
    from histopath.evaluation import slide_context

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


def tumour_fraction_evaluation(labels: Sequence[int], predictions: Sequence[int], patient_ids: Sequence[str],
                               *, bootstrap: int, seed: int) -> Dict[str, Any]:
    """The slide-level answer for IDC, where every slide holds tumour: how much of each
    patient's slide the model calls IDC against how much the patch labels say.

    Args:
      labels, predictions: per patch, 0/1.
      patient_ids: per patch, its patient (one slide per patient).

    Returns:
      {"patients": [{"patient_id", "n_patches", "labelled_fraction", "predicted_fraction",
      "idc_present_labelled", "idc_present_predicted"}], "mean_absolute_error" and
      "bias" (predicted - labelled, mean over patients; each with a patient-bootstrap
      interval), "spearman" (rank correlation over patients, None below 3)}.
    """
    from scipy import stats

    labels, predictions = np.asarray(labels, float), np.asarray(predictions, float)
    patients = sorted({str(p) for p in patient_ids}, key=patient_sort_key)
    index = {p: i for i, p in enumerate(patients)}
    clusters = np.array([index[str(p)] for p in patient_ids])
    counts = np.bincount(clusters, minlength=len(patients)).astype(float)
    labelled = np.bincount(clusters, weights=labels, minlength=len(patients)) / counts
    predicted = np.bincount(clusters, weights=predictions, minlength=len(patients)) / counts
    weights = patient_bootstrap.patient_bootstrap_weights(len(patients), bootstrap, seed)

    def summary(values: np.ndarray) -> Dict[str, Any]:
        entry: Dict[str, Any] = {"value": float(values.mean()), "ci_low": None, "ci_high": None}
        if len(weights):
            draws = weights @ values / weights.sum(axis=1)
            low, high = np.quantile(draws, [0.025, 0.975])
            entry.update(ci_low=float(low), ci_high=float(high))
        return entry

    spearman = None
    if len(patients) >= 3 and np.ptp(labelled) > 0 and np.ptp(predicted) > 0:
        spearman = float(stats.spearmanr(labelled, predicted).statistic)
    return {
        "rule": "tumour fraction = share of the patient's patches called IDC (at the threshold); "
                "IDC present = at least one patch",
        "mean_absolute_error": summary(np.abs(predicted - labelled)),
        "bias": summary(predicted - labelled),
        "spearman": spearman,
        "patients": [{"patient_id": p, "n_patches": int(counts[i]), "labelled_fraction": float(labelled[i]),
                      "predicted_fraction": float(predicted[i]), "idc_present_labelled": bool(labelled[i] > 0),
                      "idc_present_predicted": bool(predicted[i] > 0)} for i, p in enumerate(patients)],
    }
