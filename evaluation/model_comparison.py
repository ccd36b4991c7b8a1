"""Comparing candidate models on the same patients: the rules `SelectWinner` applies.

A candidate's figures come from its cross-validated predictions (every patient predicted
by a model that never saw it) or from a held-out split. With few patients two candidates
are often within each other's intervals: the rules below say what to do then.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from histopath.evaluation import bootstrap
from histopath.models import registry

RESAMPLES = 1000
CONFIDENCE = 0.95


def simpler_first(names: Sequence[str]) -> list[str]:
    """`names` ordered from the simplest candidate (`registry.ModelKind.simplicity`;
    unregistered names last, by name)."""
    last = len(registry.KINDS)
    return sorted(names, key=lambda name: (registry.KINDS[name].simplicity if name in registry.KINDS else last, name))


def interval(draws: np.ndarray) -> list[float] | None:
    """The `CONFIDENCE` percentile interval `[low, high]` of bootstrap draws (draws that are
    not finite, e.g. an AUC of a one-class resample, left out); None when none is finite."""
    finite = draws[np.isfinite(draws)]
    if not finite.size:
        return None
    tail = (1 - CONFIDENCE) / 2
    return [float(q) for q in np.quantile(finite, [tail, 1 - tail])]


def _clusters(patients: Sequence[str]) -> tuple[np.ndarray, int]:
    _, clusters = np.unique(np.asarray(patients).astype(str), return_inverse=True)
    return clusters, int(clusters.max()) + 1 if len(clusters) else 0


def auc_draws(labels: Sequence[int], patients: Sequence[str], scores: Mapping[str, Sequence[float]],
              resamples: int = RESAMPLES, seed: int = 0) -> dict[str, np.ndarray]:
    """Each candidate's image AUC in the same `resamples` patient-bootstrap draws (paired),
    plus the point value at index 0 of a separate `"point"` entry per candidate.

    Returns:
      {name: draws `[resamples]`, f"{name}:point": `[1]`}; NaN where a draw lacks a class.
    """
    labels = np.asarray(labels).astype(int)
    clusters, n_patients = _clusters(patients)
    weights = bootstrap.patient_bootstrap_weights(n_patients, resamples, seed)
    everyone = np.ones((1, n_patients))
    result = {}
    for name, values in scores.items():
        sums = bootstrap.cluster_sums(labels, np.asarray(values, float), np.zeros_like(labels), clusters, n_patients)
        result[name] = bootstrap.weighted_auc(weights, sums.positives, sums.negatives)
        result[f"{name}:point"] = bootstrap.weighted_auc(everyone, sums.positives, sums.negatives)
    return result


def simpler_unless_better(labels: Sequence[int], patients: Sequence[str], scores: Mapping[str, Sequence[float]],
                          resamples: int = RESAMPLES, seed: int = 0) -> tuple[str, str]:
    """The simplest candidate, unless another's AUC is higher with the whole paired interval
    of the difference above 0 (then the one with the highest AUC among those).

    Args:
      labels, patients: per image.
      scores: candidate -> per-image probability (the same images for every candidate).

    Returns:
      (chosen candidate, the reason in one sentence).
    """
    order = simpler_first(list(scores))
    draws = auc_draws(labels, patients, scores, resamples, seed)
    simple = order[0]
    better = []
    for other in order[1:]:
        difference = interval(draws[other] - draws[simple])
        if difference and difference[0] > 0:
            better.append((float(draws[f"{other}:point"][0]), other, *difference))
    points = {name: float(draws[f"{name}:point"][0]) for name in order}
    if better:
        _, chosen, low, high = max(better)
        return chosen, (f"{chosen}'s AUC {points[chosen]:.4f} beats the simpler {simple}'s {points[simple]:.4f} "
                        f"(difference {CONFIDENCE:.0%} interval [{low:.4f}, {high:.4f}])")
    others = ", ".join(f"{name} {points[name]:.4f}" for name in order[1:])
    return simple, (f"no candidate beats the simpler {simple} (AUC {points[simple]:.4f}; {others}) beyond "
                    "the interval of the difference")


def highest_auc(labels: Sequence[int], patients: Sequence[str], scores: Mapping[str, Sequence[float]]) -> tuple[str, str]:
    """The candidate with the highest AUC (ties to the simpler)."""
    order = simpler_first(list(scores))
    draws = auc_draws(labels, patients, scores, resamples=0)
    points = {name: float(draws[f"{name}:point"][0]) for name in order}
    chosen = max(order, key=lambda name: (np.nan_to_num(points[name], nan=-1.0), -order.index(name)))
    others = ", ".join(f"{name} {points[name]:.4f}" for name in order if name != chosen)
    return chosen, f"{chosen} has the highest AUC {points[chosen]:.4f} ({others})"


def highest_lower_bound(labels: Sequence[int], patients: Sequence[str], scores: Mapping[str, Sequence[float]],
                        resamples: int = RESAMPLES, seed: int = 0) -> tuple[str, str]:
    """The candidate whose AUC has the highest lower interval bound (2.5 % of a patient
    bootstrap): a high AUC measured on few or inconsistent patients counts for less."""
    order = simpler_first(list(scores))
    draws = auc_draws(labels, patients, scores, resamples, seed)
    bounds = {name: (interval(draws[name]) or [float("nan")])[0] for name in order}
    chosen = max(order, key=lambda name: (np.nan_to_num(bounds[name], nan=-1.0), -order.index(name)))
    described = ", ".join(f"{name} {float(draws[f'{name}:point'][0]):.4f} (lower bound {bounds[name]:.4f})"
                          for name in order)
    return chosen, f"{chosen} has the highest lower interval bound of the AUC ({described})"
