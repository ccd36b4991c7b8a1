"""The patient (cluster) bootstrap: checked against a plain loop that resamples patient
indices and against scikit-learn's weighted AUC."""

from __future__ import annotations

import math

import numpy as np
import pytest

from histopath.evaluation import bootstrap
from histopath.evaluation.bootstrap import (
    METRIC_NAMES,
    cluster_bootstrap_metrics,
    cluster_sums,
    metrics_for_weights,
    patient_bootstrap_weights,
    rates_from_sums,
    weighted_auc,
)
from histopath.evaluation.metrics import confusion_counts, roc_auc


def test_threshold_metrics_hand_computed():
    squared_error = 0.5
    rates = rates_from_sums(np.array([1, 1, 1, 2, squared_error], dtype=float))
    assert float(rates["accuracy"]) == pytest.approx(3 / 5)
    assert float(rates["sensitivity"]) == pytest.approx(2 / 3)
    assert float(rates["specificity"]) == pytest.approx(1 / 2)
    assert float(rates["balanced_accuracy"]) == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert float(rates["f1"]) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))  # = precision 2/3, recall 2/3
    assert float(rates["brier"]) == pytest.approx(0.5 / 5)


def test_undefined_metrics_are_null_with_a_reason():
    # benign only, nothing predicted malignant: AUC, sensitivity, balanced accuracy, F1 undefined
    result = cluster_bootstrap_metrics(
        labels=[0, 0, 0, 0], scores=[0.1, 0.2, 0.3, 0.4], predictions=[0, 0, 0, 0],
        clusters=[0, 0, 1, 1], n_clusters=2, weights=patient_bootstrap_weights(2, 50, 0))
    for name in ("auc", "sensitivity", "balanced_accuracy", "f1"):
        assert result[name]["value"] is None and result[name]["ci_low"] is None, name
        assert result[name]["reason"], name
    assert result["specificity"]["value"] == 1.0 and result["accuracy"]["value"] == 1.0
    assert result["brier"]["value"] == pytest.approx((0.01 + 0.04 + 0.09 + 0.16) / 4)
    # a false positive makes F1 defined (0), still without a positive case
    fp = cluster_bootstrap_metrics([0, 0], [0.9, 0.2], [1, 0], [0, 1], 2, patient_bootstrap_weights(2, 20, 0))
    assert fp["f1"]["value"] == 0.0 and fp["sensitivity"]["value"] is None
    # a single patient: values, no interval, and a reason
    single = cluster_bootstrap_metrics([0, 1], [0.2, 0.7], [0, 1], [0, 0], 1, patient_bootstrap_weights(1, 20, 0))
    assert single["auc"]["value"] == 1.0 and single["auc"]["ci_low"] is None
    assert "at least 2 patients" in single["auc"]["reason"]


def _synthetic_patients(n_patients: int, images_per_patient: int, seed: int):
    """Images with a per-patient random effect: correlated within a patient."""
    rng = np.random.default_rng(seed)
    patient_labels = (np.arange(n_patients) % 2).astype(int)
    patient_effect = rng.normal(0, 1.0, n_patients)
    clusters = np.repeat(np.arange(n_patients), images_per_patient)
    labels = patient_labels[clusters]
    logits = 1.2 * (2 * labels - 1) + patient_effect[clusters] + rng.normal(0, 0.5, clusters.size)
    scores = 1 / (1 + np.exp(-logits))
    return labels, scores, (scores >= 0.5).astype(int), clusters


def test_bootstrap_weights_are_seeded_patient_multiplicities():
    weights = patient_bootstrap_weights(7, 200, seed=5)
    assert weights.shape == (200, 7) and np.all(weights.sum(axis=1) == 7)
    assert np.array_equal(weights, patient_bootstrap_weights(7, 200, seed=5))
    assert not np.array_equal(weights, patient_bootstrap_weights(7, 200, seed=6))
    assert patient_bootstrap_weights(7, 0, seed=5).shape == (0, 7)


def test_vectorised_bootstrap_equals_a_loop_over_resampled_patients():
    labels, scores, predictions, clusters = _synthetic_patients(9, 5, seed=1)
    weights = patient_bootstrap_weights(9, 25, seed=2)
    vectorised = metrics_for_weights(weights, cluster_sums(labels, scores, predictions, clusters, 9))
    for r, row in enumerate(weights):
        drawn = np.repeat(np.arange(9), row.astype(int))  # patient indices of this resample
        index = np.concatenate([np.flatnonzero(clusters == p) for p in drawn])
        expected_auc = roc_auc(labels[index], scores[index])
        if expected_auc is None:
            assert math.isnan(vectorised["auc"][r])
        else:
            assert vectorised["auc"][r] == pytest.approx(expected_auc)
        counts = confusion_counts(labels[index], predictions[index])
        assert vectorised["accuracy"][r] == pytest.approx((counts["tp"] + counts["tn"]) / index.size)
        if counts["tp"] + counts["fn"]:
            assert vectorised["sensitivity"][r] == pytest.approx(counts["tp"] / (counts["tp"] + counts["fn"]))


def _widths(result):
    return {name: m["ci_high"] - m["ci_low"] for name, m in result.items() if m["ci_low"] is not None}


def test_ci_contains_the_estimate_narrows_with_more_patients_and_is_reproducible():
    results = {}
    for n_patients in (16, 160):
        labels, scores, predictions, clusters = _synthetic_patients(n_patients, 6, seed=0)
        weights = patient_bootstrap_weights(n_patients, 1000, seed=0)
        results[n_patients] = cluster_bootstrap_metrics(labels, scores, predictions, clusters, n_patients, weights)
        for name, metric in results[n_patients].items():
            assert metric["ci_low"] <= metric["value"] <= metric["ci_high"], (n_patients, name, metric)
    few, many = _widths(results[16]), _widths(results[160])
    for name in ("auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity", "f1"):
        assert many[name] < 0.6 * few[name], (name, few[name], many[name])
    labels, scores, predictions, clusters = _synthetic_patients(16, 6, seed=0)
    again = cluster_bootstrap_metrics(labels, scores, predictions, clusters, 16, patient_bootstrap_weights(16, 1000, seed=0))
    assert again == results[16]
    other = cluster_bootstrap_metrics(labels, scores, predictions, clusters, 16, patient_bootstrap_weights(16, 1000, seed=1))
    assert other["auc"]["ci_low"] != results[16]["auc"]["ci_low"]


def test_patient_resampling_keeps_images_together():
    """k identical images per patient carry no more information than one per patient."""
    n_patients, copies = 24, 8
    labels, scores, predictions, _ = _synthetic_patients(n_patients, 1, seed=4)
    weights = patient_bootstrap_weights(n_patients, 1000, seed=9)
    per_patient = cluster_bootstrap_metrics(labels, scores, predictions, np.arange(n_patients), n_patients, weights)
    clusters = np.repeat(np.arange(n_patients), copies)
    duplicated = cluster_bootstrap_metrics(
        labels[clusters], scores[clusters], predictions[clusters], clusters, n_patients, weights)
    for name in METRIC_NAMES:
        for key in ("value", "ci_low", "ci_high"):
            assert duplicated[name][key] == pytest.approx(per_patient[name][key]), (name, key)
    # Resampling IMAGES instead (each image its own cluster) would pretend 8x the data.
    n_images = clusters.size
    naive = cluster_bootstrap_metrics(
        labels[clusters], scores[clusters], predictions[clusters], np.arange(n_images), n_images,
        patient_bootstrap_weights(n_images, 1000, seed=9))
    assert _widths(naive)["auc"] < 0.6 * _widths(duplicated)["auc"]


def test_weighted_auc_matches_scikit_learn_with_patient_multiplicities_as_weights():
    from sklearn.metrics import roc_auc_score

    labels, scores, predictions, clusters = _synthetic_patients(12, 40, seed=7)
    scores = np.round(scores, 2)  # ties across patients
    weights = patient_bootstrap_weights(12, 30, seed=3)
    statistics = cluster_sums(labels, scores, predictions, clusters, 12)
    aucs = weighted_auc(weights, statistics.positives, statistics.negatives)
    for row, auc in zip(weights, aucs):
        image_weights = row[clusters]
        drawn = image_weights > 0
        if len(set(labels[drawn])) < 2:
            assert np.isnan(auc)
            continue
        assert auc == pytest.approx(roc_auc_score(labels[drawn], scores[drawn], sample_weight=image_weights[drawn]))


def test_per_patient_score_counts_are_sparse():
    labels, scores, predictions, clusters = _synthetic_patients(150, 2000, seed=0)  # 300,000 distinct scores
    statistics = cluster_sums(labels, scores, predictions, clusters, 150)
    assert statistics.positives.shape == (150, len(np.unique(scores)))
    assert statistics.positives.nnz + statistics.negatives.nnz == labels.size


def test_curve_bootstrap_matches_the_per_image_bootstrap_on_grid_scores():
    """Per-patient confusion counts at thresholds between the score levels hold the whole ROC:
    the curve-based metrics equal the per-image ones, point and resamples alike."""
    rng = np.random.default_rng(4)
    n_patients, levels = 9, np.array([0.1, 0.3, 0.45, 0.6, 0.9])
    patients = np.repeat(np.arange(n_patients), 7)
    labels = (rng.random(len(patients)) < np.repeat(rng.random(n_patients), 7)).astype(int)
    scores = levels[np.clip(labels * 2 + rng.integers(0, 3, len(patients)), 0, 4)]
    thresholds = np.array([0.0, 0.2, 0.4, 0.5, 0.7, 0.95])  # a prediction is positive above a threshold
    curves = np.zeros((n_patients, len(thresholds), 4))
    for t, threshold in enumerate(thresholds):
        predicted = (scores > threshold).astype(int)
        for p in range(n_patients):
            mine = patients == p
            for cell, (label, guess) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
                curves[p, t, cell] = np.sum(mine & (labels == label) & (predicted == guess))
    weights = bootstrap.patient_bootstrap_weights(n_patients, 300, seed=1)
    from_curves = bootstrap.curve_bootstrap_metrics(curves, 3, weights)
    per_image = bootstrap.cluster_bootstrap_metrics(labels, scores, (scores > 0.5).astype(int), patients,
                                                    n_patients, weights)
    assert from_curves["auc"]["value"] == pytest.approx(roc_auc(labels, scores))
    for name in bootstrap.CURVE_METRICS:
        for key in ("value", "ci_low", "ci_high", "bootstrap_valid"):
            assert from_curves[name][key] == pytest.approx(per_image[name][key]), (name, key)
