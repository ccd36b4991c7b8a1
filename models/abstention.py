"""The "not sure" answer: an uncertainty score and the abstention band around the threshold.

A model with decision threshold `t` answers "not sure — needs a pathologist's review" for a
probability `p` inside its abstention band, **`low <= p <= high`** (both ends included),
and its class otherwise. The bands considered form one family, indexed by a cut-off `c`
on the uncertainty score:

    uncertainty(p) = p / t                 for p <  t   (1 at the threshold, 0 at p = 0)
                   = (1 - p) / (1 - t)     for p >= t   (1 at the threshold, 0 at p = 1)
    band(c)        = [c * t, 1 - c * (1 - t)],  i.e. "not sure" exactly when uncertainty(p) >= c

so a band is as wide on each side as that side's room allows, and `c = 1` is the
narrowest band (the threshold itself). `choose_band` states the rule: on held-out
predictions (patient cross-validation, or the eval split), the narrowest band whose
ANSWERED images reach `target_balanced_accuracy` while the coverage (the share answered)
stays at or above `min_coverage`; when no band reaches the target at that coverage, the
widest band that keeps `min_coverage` (and `reached` says False). When every image can be
answered at the target, there is no band (None): the model is never "not sure".

NumPy only: the exported graph computes the same from the stored `low` and `high`
(`models.export`).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np

# How many points the stored accuracy-against-coverage curve has (coverage 1.0 down to
# the lowest coverage in steps of 1 / (CURVE_POINTS - 1) of the way).
CURVE_POINTS = 11
LOWEST_CURVE_COVERAGE = 0.5


def uncertainty(probability: Any, threshold: float) -> np.ndarray:
    """1 at the decision threshold, 0 at probability 0 or 1, linear on each side.

    Args:
      probability: probabilities in [0, 1] (any shape).
      threshold: the model's decision threshold in [0, 1].

    Returns:
      float64 array of `probability`'s shape, values in [0, 1].
    """
    p = np.clip(np.asarray(probability, np.float64), 0.0, 1.0)
    t = float(threshold)
    below = np.divide(p, t, out=np.ones_like(p), where=t > 0)
    above = np.divide(1.0 - p, 1.0 - t, out=np.ones_like(p), where=t < 1)
    return np.clip(np.where(p < t, below, above), 0.0, 1.0)


def band_for_cutoff(cutoff: float, threshold: float) -> Dict[str, float]:
    """The band `{"low", "high"}` whose members are exactly the uncertainties >= `cutoff`."""
    return {"low": float(cutoff * threshold), "high": float(1.0 - cutoff * (1.0 - threshold))}


def not_sure(probability: Any, band: Optional[Dict[str, float]]) -> np.ndarray:
    """1 where `low <= probability <= high` ("needs a pathologist's review"), else 0; all
    0 without a band."""
    p = np.asarray(probability, np.float64)
    if band is None:
        return np.zeros(p.shape, np.int64)
    return ((p >= band["low"]) & (p <= band["high"])).astype(np.int64)


def answered_balanced_accuracy(labels: Any, probability: Any, threshold: float, answered: Any) -> float:
    """Balanced accuracy of the answered images at `threshold`; NaN when the answered
    images lack a class."""
    labels = np.asarray(labels, np.int64)[np.asarray(answered, bool)]
    predicted = np.asarray(probability, np.float64)[np.asarray(answered, bool)] >= threshold
    if labels.size == 0 or labels.min() == labels.max():
        return float("nan")
    sensitivity = np.mean(predicted[labels == 1])
    specificity = np.mean(~predicted[labels == 0])
    return float((sensitivity + specificity) / 2.0)


def patient_scores(labels: Any, probability: Any, patients: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per patient: label (malignant when any image is) and score (mean image probability),
    as `histopath evaluate` scores patients."""
    patients = np.asarray(patients)
    names, index = np.unique(patients, return_inverse=True)
    counts = np.bincount(index, minlength=len(names))
    scores = np.bincount(index, weights=np.asarray(probability, np.float64), minlength=len(names)) / counts
    malignant = np.bincount(index, weights=np.asarray(labels, np.float64), minlength=len(names)) > 0
    return malignant.astype(np.int64), scores


def operating_point(labels: Any, probability: Any, patients: Any, threshold: float,
                    band: Optional[Dict[str, float]]) -> Dict[str, Any]:
    """Coverage and answered balanced accuracy of `band`, per image and per patient (a
    patient is answered when its mean probability is outside the band); None where
    undefined (no image, or the answered cases lack a class)."""
    answered = not_sure(probability, band) == 0
    patient_labels, scores = patient_scores(labels, probability, patients)
    patient_answered = not_sure(scores, band) == 0
    values = {
        "coverage": float(np.mean(answered)) if answered.size else float("nan"),
        "balanced_accuracy": answered_balanced_accuracy(labels, probability, threshold, answered),
        "patient_coverage": float(np.mean(patient_answered)) if patient_answered.size else float("nan"),
        "patient_balanced_accuracy": answered_balanced_accuracy(patient_labels, scores, threshold,
                                                                patient_answered),
    }
    return {key: (value if np.isfinite(value) else None) for key, value in values.items()}


def coverage_curve(labels: Any, probability: Any, patients: Any, threshold: float,
                   points: int = CURVE_POINTS, lowest: float = LOWEST_CURVE_COVERAGE) -> List[Dict[str, Any]]:
    """Accuracy against coverage: at image coverages 1.0 down to `lowest`, the band that
    answers that share of the images (the most uncertain left out) and its operating point.

    Returns:
      One dict per point: "target_coverage", "low", "high" (None at full coverage) and the
      `operating_point` fields.
    """
    u = uncertainty(probability, threshold)
    ordered = np.sort(u)[::-1]
    curve = []
    for target in np.linspace(1.0, lowest, points):
        abstain = int(np.floor((1.0 - target) * len(u) + 1e-9))
        band = band_for_cutoff(float(ordered[abstain - 1]), threshold) if abstain else None
        point = operating_point(labels, probability, patients, threshold, band)
        curve.append({"target_coverage": round(float(target), 4),
                      "low": band and band["low"], "high": band and band["high"], **point})
    return curve


def choose_band(labels: Any, probability: Any, patients: Any, threshold: float,
                target_balanced_accuracy: float = 0.95, min_coverage: float = 0.80,
                chosen_on: str = "") -> Dict[str, Any]:
    """The abstention band by the module's rule, on held-out predictions.

    Args:
      labels, probability, patients: per held-out image.
      threshold: the decision threshold the band surrounds.
      target_balanced_accuracy: what the answered images should reach.
      min_coverage: the smallest share of images the model must still answer.
      chosen_on: where the predictions come from ("cv", "eval"), recorded.

    Returns:
      {"low", "high" (None: no band), "reached", "rule", "target_balanced_accuracy",
      "min_coverage", "chosen_on", "images", "coverage", "balanced_accuracy",
      "patient_coverage", "patient_balanced_accuracy", "curve"}.
    """
    labels = np.asarray(labels, np.int64)
    probability = np.asarray(probability, np.float64)
    u = uncertainty(probability, threshold)
    cutoffs = np.unique(u)[::-1]  # narrowest band first
    band, reached = None, _reaches(labels, probability, threshold, np.ones(len(u), bool), target_balanced_accuracy)
    if not reached:
        widest = None
        for cutoff in cutoffs:
            answered = u < cutoff
            if np.mean(answered) < min_coverage:
                break
            widest = band_for_cutoff(float(cutoff), threshold)
            if _reaches(labels, probability, threshold, answered, target_balanced_accuracy):
                band, reached = widest, True
                break
        band = band if reached else widest
    rule = (f"the narrowest band low <= p <= high around the threshold whose answered images reach balanced "
            f"accuracy {target_balanced_accuracy:g} with coverage >= {min_coverage:g}")
    if not reached:
        rule += "; the target is not reached at that coverage: the widest band keeping it"
    return {**(band or {"low": None, "high": None}), "reached": bool(reached), "rule": rule,
            "target_balanced_accuracy": float(target_balanced_accuracy), "min_coverage": float(min_coverage),
            "chosen_on": chosen_on, "images": int(len(labels)),
            **operating_point(labels, probability, patients, threshold, band),
            "curve": coverage_curve(labels, probability, patients, threshold)}


def _reaches(labels: np.ndarray, probability: np.ndarray, threshold: float, answered: np.ndarray,
             target: float) -> bool:
    value = answered_balanced_accuracy(labels, probability, threshold, answered)
    return bool(np.isfinite(value) and value >= target)


def band_of(info: Optional[Dict[str, Any]]) -> Optional[Dict[str, float]]:
    """The `{"low", "high"}` band of a `choose_band` result or `model_info["abstention"]`;
    None when there is none."""
    if not info or info.get("low") is None or info.get("high") is None:
        return None
    return {"low": float(info["low"]), "high": float(info["high"])}


def validate_band(band: Optional[Sequence[float]]) -> Optional[Dict[str, float]]:
    """`(low, high)` or `{"low", "high"}` as a checked band (0 <= low <= high <= 1)."""
    if band is None:
        return None
    low, high = (band["low"], band["high"]) if isinstance(band, dict) else band
    if not 0.0 <= float(low) <= float(high) <= 1.0:
        raise ValueError(f"an abstention band needs 0 <= low <= high <= 1, got [{low}, {high}]")
    return {"low": float(low), "high": float(high)}
