"""Patient-bootstrap intervals from TFMA-shaped per-patient plots (`tfma_results`)."""

from __future__ import annotations

import numpy as np
import pytest

from histopath.components import tfma_results
from histopath.evaluation.metrics import roc_auc


def _slice_plots(labels, scores, patients, thresholds):
    """TFMA's `(slice_key, plots)` pairs: one confusion-matrix plot per patient slice."""
    pairs = [((), {})]  # the overall slice is not used here
    for patient in sorted(set(patients)):
        mine = np.asarray(patients) == patient
        matrices = []
        for threshold in thresholds:
            predicted = np.asarray(scores)[mine] > threshold
            truth = np.asarray(labels)[mine] == 1
            matrix = {"threshold": float(threshold),
                      "trueNegatives": float(np.sum(~truth & ~predicted)),
                      "falsePositives": float(np.sum(~truth & predicted)),
                      "falseNegatives": float(np.sum(truth & ~predicted)),
                      "truePositives": float(np.sum(truth & predicted))}
            matrices.append({key: value for key, value in matrix.items() if value})  # proto JSON drops zeros
        plots = {"": {"": {"confusionMatrixAtThresholds": {"matrices": matrices}}}}
        pairs.append(((("patient_id", patient.encode()),), plots))
    return pairs


def test_intervals_counts_and_warnings_from_per_patient_plots():
    rng = np.random.default_rng(0)
    patients = np.repeat([f"p{i}" for i in range(6)], 10)
    labels = np.repeat([0, 0, 0, 1, 1, 1], 10)
    scores = np.clip(np.round(0.5 + 0.3 * (labels - 0.5) + rng.normal(0, 0.2, len(labels)), 3), 0, 1)
    thresholds = np.concatenate([[-1e-7], (np.arange(998) + 1) / 999, [1 + 1e-7]])
    summary = tfma_results.patient_intervals(_slice_plots(labels, scores, patients, thresholds))
    assert summary["test_patients"] == {"benign": 3, "malignant": 3}
    auc = summary["intervals"]["auc"]
    assert auc["value"] == pytest.approx(roc_auc(labels, scores), abs=2e-3)
    assert auc["ci_low"] <= auc["value"] <= auc["ci_high"]
    predicted = scores >= 0.5
    sensitivity = summary["intervals"]["sensitivity"]["value"]
    assert sensitivity == pytest.approx(np.mean(predicted[labels == 1]), abs=0.02)
    assert summary["warnings"] == [
        "only 3 benign and 3 malignant test patients (fewer than 5 of a class): the intervals are rough"]


