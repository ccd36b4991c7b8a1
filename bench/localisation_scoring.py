"""Patch-level localisation scores of region bags: AUCs of per-tile scores against the
IDC patch labels, with patient-cluster bootstrap intervals, and slide context for tiles.

The scores are MIL attention (what the MIL was built to localise with), its instance
classifier's tile probabilities, or a patch model's probabilities regrouped into the same
regions (`region_bags.patches_as_bags`); every AUC has a 95 % patient-cluster bootstrap
interval (patients resampled with replacement, all their bags kept).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Sequence

import numpy as np

from histopath.data import bags as bag_geometry
from histopath.data.features import patient_sort_key
from histopath.evaluation.bootstrap import (
    CONFIDENCE, cluster_sums, fill_interval, interval_unavailable, metrics_for_weights, patient_bootstrap_weights)
from histopath.evaluation.metrics import roc_auc

MISSING = bag_geometry.MISSING_LABEL
_AUC_UNDEFINED = "AUC undefined in them"


def _clusters(patient_ids: np.ndarray) -> tuple[np.ndarray, int]:
    """Index of each item's patient in the sorted patient list, and the patient count."""
    patients = sorted(set(patient_ids.tolist()), key=patient_sort_key)
    index = {p: i for i, p in enumerate(patients)}
    return np.array([index[p] for p in patient_ids.tolist()], dtype=np.int64), len(patients)


def _tile_auc(
    labels: np.ndarray, scores: np.ndarray, patient_ids: np.ndarray, n_bags: int,
    bootstrap: int, seed: int,
) -> Dict[str, Any]:
    """AUC of tile scores vs patch labels with a patient-cluster bootstrap interval."""
    clusters, n_patients = _clusters(patient_ids)
    entry: Dict[str, Any] = {
        "value": roc_auc(labels, scores), "ci_low": None, "ci_high": None, "bootstrap_valid": 0,
        "reason": None, "n_bags": int(n_bags), "n_tiles": int(labels.size),
        "n_positive_tiles": int((labels == 1).sum()), "n_negative_tiles": int((labels == 0).sum()),
        "n_patients": n_patients,
    }
    if entry["value"] is None:
        entry["reason"] = "AUC needs both IDC-positive and IDC-negative patches"
        return entry
    entry["reason"] = interval_unavailable(bootstrap, n_patients)
    if entry["reason"] is None:
        # Per-patient counts at every score level; each resample's AUC is a matrix product.
        statistics = cluster_sums(labels, scores, np.zeros_like(labels), clusters, n_patients)
        weights = patient_bootstrap_weights(n_patients, bootstrap, seed)
        fill_interval(entry, metrics_for_weights(weights, statistics)["auc"], CONFIDENCE,
                      _AUC_UNDEFINED)
    return entry


def _within_bag_auc(
    attention: np.ndarray, patch_labels: np.ndarray, patient_ids: np.ndarray, bootstrap: int, seed: int,
) -> Dict[str, Any]:
    """Mean per-bag AUC over bags with both classes, with a patient-cluster interval."""
    aucs, kept = [], []
    for index in range(len(attention)):
        present = patch_labels[index] != MISSING
        value = roc_auc(patch_labels[index][present], attention[index][present])
        if value is not None:  # None: only one class among the bag's patches
            aucs.append(value)
            kept.append(index)
    aucs_array, kept_array = np.array(aucs, dtype=np.float64), np.array(kept, dtype=np.int64)
    clusters, n_patients = _clusters(patient_ids[kept_array])
    present = patch_labels[kept_array] != MISSING
    entry: Dict[str, Any] = {
        "value": float(aucs_array.mean()) if aucs else None, "ci_low": None, "ci_high": None,
        "bootstrap_valid": 0, "reason": None, "n_bags": len(aucs), "n_tiles": int(present.sum()),
        "n_positive_tiles": int((patch_labels[kept_array][present] == 1).sum()),
        "n_negative_tiles": int((patch_labels[kept_array][present] == 0).sum()),
        "n_patients": n_patients,
        "n_positive_bags_without_both_classes": int(len(attention) - len(aucs)),
    }
    if not aucs:
        entry["reason"] = "no positive bag holds both IDC-positive and IDC-negative patches"
        return entry
    entry["reason"] = interval_unavailable(bootstrap, n_patients)
    if entry["reason"] is None:
        # Resampled mean of bag AUCs = (W @ per-patient AUC sums) / (W @ per-patient bag counts).
        sums = np.bincount(clusters, weights=aucs_array, minlength=n_patients)
        counts = np.bincount(clusters, minlength=n_patients).astype(np.float64)
        weights = patient_bootstrap_weights(n_patients, bootstrap, seed)
        total, number = weights @ sums, weights @ counts
        draws = np.full(len(weights), np.nan)
        np.divide(total, number, out=draws, where=number > 0)
        fill_interval(entry, draws, CONFIDENCE, _AUC_UNDEFINED)
    return entry


def localisation_scores(bags: Mapping[str, np.ndarray], bootstrap: int = 1000, seed: int = 0) -> Dict[str, Any]:
    """Patch-level AUCs of MIL attention against the IDC patch labels.

    Tiles whose cell holds no patch (patch label -1) are left out everywhere.

    - "pooled": every present tile of every POSITIVE bag, AUC of its attention vs its
      patch label. Attention is normalised per bag (it sums to 1 over the bag's tissue
      tiles), so this AUC compares tiles ACROSS bags: a bag with few tissue tiles gives
      each a larger weight, and a bag with only positive patches contributes only
      positives. It asks "is attention higher on positive patches in general". A bag
      with a single patch gives it attention 1 whatever the model thinks (on IDC with
      K = 2 about a quarter of the bags), so sparse regions at tissue edges rank high
      here and in "whole_slide"; "within_bag" is free of this.
    - "within_bag": mean over positive bags holding both positive and negative patches
      of the bag's own AUC (attention ranks within one bag only; free of the per-bag
      normalisation). The interval resamples patients, weighting their bags.
    - "whole_slide": attention x bag probability as a patch score over ALL bags
      (positive and negative): a whole-slide patch-level AUC, where the bag probability
      carries the between-region evidence and attention the within-region one.

    Intervals: 95 % percentile patient-cluster bootstrap (patients drawn with
    replacement, all their bags kept; `evaluation.patient_bootstrap_weights`); resamples
    in which an AUC is undefined are left out and counted in "bootstrap_valid".

    Args:
      bags: from `region_bags.predict_bags` (needs "attention", "patch_labels", "label",
        "probability", "patient_id").
      bootstrap: resamples (0 = no intervals).
      seed: seed of the resampling.

    Returns:
      {"pooled", "within_bag", "whole_slide"}: each {"value", "ci_low", "ci_high",
      "bootstrap_valid", "reason", "n_bags", "n_tiles", "n_positive_tiles",
      "n_negative_tiles", "n_patients"} (value None with a reason when undefined), plus
      "bootstrap" (method, resamples, seed, confidence), "n_bags" and "n_patients" of all
      bags.

    Raises:
      ValueError: inconsistent array shapes.
    """
    attention = np.asarray(bags["attention"], dtype=np.float64)
    patch_labels = np.asarray(bags["patch_labels"], dtype=np.int64)
    bag_labels = np.asarray(bags["label"], dtype=np.int64).ravel()
    probability = np.asarray(bags["probability"], dtype=np.float64).ravel()
    patient_ids = np.asarray(bags["patient_id"]).astype(str).ravel()
    n = len(bag_labels)
    if attention.shape != patch_labels.shape or attention.ndim != 2 or attention.shape[0] != n \
            or probability.size != n or patient_ids.size != n:
        raise ValueError(f"inconsistent bag arrays: attention {attention.shape}, patch_labels "
                         f"{patch_labels.shape}, {n} labels, {probability.size} probabilities, "
                         f"{patient_ids.size} patient ids")
    present = patch_labels != MISSING
    tile_patients = np.broadcast_to(patient_ids[:, None], patch_labels.shape)
    positive = bag_labels == 1

    pooled_mask = present & positive[:, None]
    pooled = _tile_auc(patch_labels[pooled_mask], attention[pooled_mask], tile_patients[pooled_mask],
                       int(positive.sum()), bootstrap, seed)
    within = _within_bag_auc(attention[positive], patch_labels[positive], patient_ids[positive],
                             bootstrap, seed)
    slide_scores = attention * probability[:, None]
    whole = _tile_auc(patch_labels[present], slide_scores[present], tile_patients[present], n, bootstrap, seed)
    return {
        "pooled": pooled,
        "within_bag": within,
        "whole_slide": whole,
        "bootstrap": {
            "method": "cluster (patient) percentile bootstrap: patients resampled with "
                      "replacement, all their bags kept",
            "resamples": int(bootstrap), "seed": int(seed), "confidence": CONFIDENCE,
        },
        "n_bags": n,
        "n_patients": len(set(patient_ids.tolist())),
    }


def tile_slide_context(tile_scores: np.ndarray, patch_labels: np.ndarray, patient_ids: Sequence[str],
                       origin_x: Sequence[int], origin_y: Sequence[int], sigma: float) -> np.ndarray:
    """Tile scores averaged over each patient's slide: slide context for the tiles of bags.

    Every present tile (patch label not -1) of the patient's bags given is a neighbour,
    negative bags included; `slide_context.smooth_slide_scores` does the averaging, with
    `sigma` in tile (patch) widths.

    Args:
      tile_scores: `(n, K*K)` per-tile scores, row-major (e.g. `tile_probability`).
      patch_labels: `(n, K*K)`, -1 where the cell has no patch.
      patient_ids: per bag.
      origin_x: per bag, its region origin in slide pixels ("origin_x" of
        `region_bags.predict_bags`).
      origin_y: likewise y.
      sigma: Gaussian width in tiles (> 0).

    Returns:
      float64 `(n, K*K)`: the averaged scores; 0 where the cell has no patch.

    Raises:
      ValueError: inconsistent shapes or a non-square tile grid.
    """
    from histopath.evaluation import slide_context

    scores = np.asarray(tile_scores, dtype=np.float64)
    labels = np.asarray(patch_labels)
    grid = int(round(math.sqrt(scores.shape[1]))) if scores.ndim == 2 else 0
    if scores.shape != labels.shape or grid * grid != scores.shape[1] or len(patient_ids) != scores.shape[0]:
        raise ValueError(f"inconsistent tile arrays: scores {scores.shape}, patch_labels {labels.shape}, "
                         f"{len(patient_ids)} patient ids")
    columns, rows = bag_geometry.tile_cells(origin_x, origin_y, grid)
    present = labels != MISSING
    patients = np.broadcast_to(np.asarray(patient_ids).astype(str)[:, None], labels.shape)
    smoothed = np.zeros(scores.shape)
    smoothed[present] = slide_context.smooth_slide_scores(scores[present], patients[present], columns[present],
                                                          rows[present], float(sigma))
    return smoothed


def json_ready(value: Any) -> Any:
    """NaN/inf floats become None so the JSON stays standard."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
