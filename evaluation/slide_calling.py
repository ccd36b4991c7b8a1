"""Calling a slide from its tiles: the aggregations, and the choice between them.

A slide's answer is one number from its tile probabilities, by one of:

- `mean`: the mean of every tile;
- `top_mean` (parameter f): the mean of the highest share f of the tiles (at least one);
- `max`: the highest tile;
- `fraction_above` (parameter t): the share of tiles at or above the tile threshold t.

The Trainer of a slide model chooses the aggregation (`choose_aggregation`) on the
training tiles' held-out predictions (the patient folds' cross-validated predictions, else
the eval split's): per patient, each candidate's score over the patient's tiles; the
candidate whose patient scores rank the patients best (AUC; ties go to the earlier, simpler
candidate) wins, with a slide threshold of the best balanced accuracy on those patient
scores. It is recorded in `model_info["slide_aggregation"]` and `histopath predict` applies
it; a model without one is called by the mean of its top 5 % of tiles at the model's own
threshold. The predictions carry patients, not slides: a patient's tiles form one "slide"
for the choice (one slide per patient in IDC and in most cohorts).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

DEFAULT_TOP_FRACTION = 0.05
# Candidates in order of preference on a tie (simplest first).
CANDIDATES = (("mean", None), ("top_mean", 0.5), ("top_mean", 0.2), ("top_mean", 0.05), ("max", None),
              ("fraction_above", None))
RULE = ("per patient, each aggregation of its tiles' held-out probabilities; the one of highest patient AUC "
        "(ties: the simpler, listed first) wins; slide threshold: best balanced accuracy on those patient scores")


@dataclasses.dataclass(frozen=True)
class Aggregation:
    """How tile probabilities become a slide score, and the cut-off that labels it.

    Attributes:
      name: "mean", "top_mean", "max" or "fraction_above".
      parameter: top_mean's share of tiles, fraction_above's tile threshold; else None.
      threshold: the slide score at or above which the slide is malignant.
      source: where it came from ("model_info", "caller", "default").
    """

    name: str
    parameter: Optional[float]
    threshold: float
    source: str = "default"

    def score(self, probabilities: Sequence[float]) -> Optional[float]:
        """The slide score; None without tiles."""
        return aggregate(probabilities, self.name, self.parameter)

    def describe(self) -> str:
        """One phrase saying how the slide score is made."""
        return describe(self.name, self.parameter)


def aggregate(probabilities: Sequence[float], name: str, parameter: Optional[float] = None) -> Optional[float]:
    """The slide score of the tile probabilities by aggregation `name`; None without tiles.

    Raises:
      ValueError: an unknown aggregation or a missing parameter.
    """
    values = np.asarray(probabilities, np.float64)
    if not values.size:
        return None
    if name == "mean":
        return float(values.mean())
    if name == "max":
        return float(values.max())
    if parameter is None:
        raise ValueError(f"aggregation {name} needs a parameter")
    if name == "top_mean":
        k = max(1, int(math.ceil(float(parameter) * values.size - 1e-9)))
        return float(np.sort(values)[::-1][:k].mean())
    if name == "fraction_above":
        return float((values >= float(parameter)).mean())
    raise ValueError(f"unknown slide aggregation {name!r} (mean, top_mean, max, fraction_above)")


def describe(name: str, parameter: Optional[float]) -> str:
    """A phrase for reports: "mean of the top 0.05 of tile probabilities"."""
    return {"mean": "mean of the tile probabilities", "max": "highest tile probability",
            "top_mean": f"mean of the top {parameter:g} of tile probabilities" if parameter is not None else "",
            "fraction_above": f"share of tiles at or above {parameter:.4g}" if parameter is not None else ""}[name]


def model_aggregation(info: Mapping[str, Any], top_fraction: Optional[float] = None) -> Aggregation:
    """The aggregation to call a slide with: the caller's `top_fraction`, else the model's
    recorded choice, else the mean of the top 5 % at the model's threshold."""
    threshold = float(info.get("decision_threshold", 0.5))
    if top_fraction is not None:
        return Aggregation("top_mean", float(top_fraction), threshold, "caller")
    chosen = info.get("slide_aggregation")
    if chosen and chosen.get("name"):
        return Aggregation(chosen["name"], chosen.get("parameter"), float(chosen.get("threshold", threshold)),
                           "model_info")
    return Aggregation("top_mean", DEFAULT_TOP_FRACTION, threshold, "default")


def patient_groups(patients: Sequence[str], labels: Sequence[int], probabilities: Sequence[float]
                   ) -> tuple[List[str], np.ndarray, List[np.ndarray]]:
    """(patients, patient labels (1 when any tile is), each patient's tile probabilities)."""
    patients = [str(p) for p in patients]
    labels = np.asarray(labels, int)
    probabilities = np.asarray(probabilities, np.float64)
    names = sorted(set(patients))
    index = {p: i for i, p in enumerate(names)}
    rows = np.array([index[p] for p in patients], int)
    groups = [probabilities[rows == i] for i in range(len(names))]
    patient_labels = np.array([int(labels[rows == i].max()) for i in range(len(names))], int)
    return names, patient_labels, groups


def choose_aggregation(patients: Sequence[str], labels: Sequence[int], probabilities: Sequence[float],
                       tile_threshold: float, chosen_on: str) -> Dict[str, Any]:
    """Chooses the slide aggregation on held-out tile predictions (see the module docstring).

    Args:
      patients, labels, probabilities: per tile.
      tile_threshold: the model's decision threshold (fraction_above's parameter).
      chosen_on: what the predictions are ("cv" or "eval"), recorded.

    Returns:
      {"name", "parameter", "threshold", "chosen_on", "patients", "rule", "candidates"
      [{"name", "parameter", "auc"}], "reason"}: the default (top 5 %, the model's threshold)
      with a reason when the patients are all of one class.
    """
    from histopath.evaluation.metrics import roc_auc
    from histopath.evaluation.operating_point import balanced_accuracy_threshold

    names, patient_labels, groups = patient_groups(patients, labels, probabilities)
    table = []
    for name, parameter in CANDIDATES:
        parameter = float(tile_threshold) if name == "fraction_above" else parameter
        scores = np.array([aggregate(g, name, parameter) for g in groups])
        table.append({"name": name, "parameter": parameter, "auc": roc_auc(patient_labels, scores), "scores": scores})
    result = {"chosen_on": chosen_on, "patients": len(names),
              "patients_by_label": {"benign": int((patient_labels == 0).sum()),
                                    "malignant": int((patient_labels == 1).sum())},
              "rule": RULE, "candidates": [{k: row[k] for k in ("name", "parameter", "auc")} for row in table]}
    scored = [row for row in table if row["auc"] is not None]
    if not scored:
        return {**result, "name": "top_mean", "parameter": DEFAULT_TOP_FRACTION, "threshold": float(tile_threshold),
                "reason": f"the {len(names)} held-out patient(s) are all of one class: the default aggregation "
                          "at the model's threshold"}
    best = max(scored, key=lambda row: (round(row["auc"], 9), -table.index(row)))
    threshold = balanced_accuracy_threshold(patient_labels, best["scores"])
    return {**result, "name": best["name"], "parameter": best["parameter"], "threshold": float(threshold),
            "auc": best["auc"], "reason": f"highest patient AUC ({best['auc']:.3f}) of {len(scored)} aggregations"}
