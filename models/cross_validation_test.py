"""Patient-level cross-validation and the refit, on tiny synthetic patients and a tiny MIL."""

from __future__ import annotations

import numpy as np
import pytest

from histopath.models import cross_validation
from histopath.models.datasets import PatientExamples
from histopath.errors import DataError
from histopath.models.config import MilConfig, TrainingConfig
from model_exports import TINY_MIL
from synthetic_images import tissue_image


def _patients(n_patients: int = 10, images: int = 4, size: int = 32) -> cross_validation.PatientExamples:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(n_patients) % 2, images)
    pixels = np.stack([tissue_image(rng, size, bool(label)) for label in labels])
    return PatientExamples(np.round(pixels * 255).astype(np.uint8), labels.astype(np.int64),
                                            np.repeat([f"p{i:02d}" for i in range(n_patients)], images))


def test_folds_hold_every_patient_once_with_both_classes():
    data = _patients()
    groups = cross_validation.stratified_patient_folds(data.patients, data.labels, 3, seed=1)
    assert sorted(p for group in groups for p in group) == sorted(set(data.patients))
    shares = cross_validation.positive_shares(data.patients, data.labels)
    assert all({shares[p] for p in group} == {0.0, 1.0} for group in groups)
    with pytest.raises(DataError, match="at least 6 malignant patients, the train and eval splits have 5"):
        cross_validation.stratified_patient_folds(data.patients, data.labels, 6, seed=1)


@pytest.mark.parametrize("benign, malignant, folds, expected, stratified", [
    (6, 20, 5, 5, True),     # enough of each class: as asked
    (4, 20, 5, 4, True),     # the smaller class sets the folds
    (2, 9, 5, 2, True),      # two of a class: two folds
    (1, 9, 5, 5, False),     # one of a class: folds without every class
    (1, 1, 5, 2, False),
])
def test_folds_adapt_to_a_small_cohort_with_a_warning(benign, malignant, folds, expected, stratified):
    patients = [f"b{i}" for i in range(benign)] + [f"m{i}" for i in range(malignant)]
    labels = [0] * benign + [1] * malignant
    used, stratify, warnings = cross_validation.plan_folds(patients, labels, folds)
    assert (used, stratify) == (expected, stratified)
    assert bool(warnings) == (used != folds or not stratify)
    groups = cross_validation.stratified_patient_folds(patients, labels, used, seed=0, stratify=stratify)
    assert sorted(p for group in groups for p in group) == sorted(patients) and all(groups)
    with pytest.raises(DataError, match="at least 2 patients"):
        cross_validation.plan_folds(["only"] * 3, [0, 0, 0], folds)


def test_a_fold_too_small_for_an_inner_eval_split_watches_its_training_patients(tmp_path):
    data = _patients(n_patients=4)
    trainer = cross_validation.Trainer(MilConfig(**{**TINY_MIL, "image_size": 32, "tile_size": 16}),
                                       TrainingConfig(epochs=1, batch_size=8, seed=3), str(tmp_path))
    groups = cross_validation.stratified_patient_folds(data.patients, data.labels, 2, seed=0)
    fold = cross_validation.fold_predictions(trainer, data, groups, 0, seed=0)
    assert sorted(fold["inner_eval"]) == sorted(groups[1]) and len(fold["probability"]) == 8


def test_a_class_with_one_patient_stays_in_training():
    shares = {"b0": 0.0, "m0": 1.0, "m1": 1.0, "m2": 1.0}
    watch = cross_validation.inner_eval_patients(sorted(shares), shares, seed=0)
    assert len(watch) == 1 and watch[0].startswith("m")


def test_patients_holding_both_labels_are_stratified_by_their_positive_share():
    """IDC: every slide but one has IDC-positive patches, so there are no benign patients to
    deal; the folds spread the patients' positive shares instead."""
    shares = {f"s{i:02d}": share for i, share in enumerate([0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.35,
                                                             0.4, 0.5, 0.55, 0.6, 0.7, 0.8])}
    patients, labels = [], []
    for patient, share in shares.items():
        positives = round(20 * share)
        patients += [patient] * 20
        labels += [1] * positives + [0] * (20 - positives)
    assert cross_validation.positive_shares(patients, labels) == pytest.approx(shares)
    groups = cross_validation.stratified_patient_folds(patients, labels, 3, seed=4)
    assert sorted(p for group in groups for p in group) == sorted(shares)
    assert sorted(len(group) for group in groups) == [4, 4, 5]
    fold_of = {patient: index for index, group in enumerate(groups) for patient in group}
    ranked = sorted(shares, key=shares.get)
    for start in range(0, 12, 3):  # each fold takes one of every 3 neighbours in share order
        assert sorted(fold_of[p] for p in ranked[start:start + 3]) == [0, 1, 2]
    assert groups != cross_validation.stratified_patient_folds(patients, labels, 3, seed=5)
    watch = cross_validation.inner_eval_patients(sorted(shares), shares, seed=0)
    assert len(watch) == 2 and shares[watch[0]] < 0.35 <= shares[watch[1]]
    with pytest.raises(DataError, match="at least 14 patients, the train and eval splits have 13"):
        cross_validation.stratified_patient_folds(patients, labels, 14, seed=1)


def test_epochs_kept_and_fixed_for_the_refit():
    history = {"phase": ["head", "head", "fine_tune", "fine_tune", "fine_tune"], "kept": [1, 1, 1, 1, 0]}
    kept = cross_validation.kept_epochs(history)
    assert kept == {"head": 2, "fine_tune": 2}
    fixed = cross_validation.fixed_epochs(TrainingConfig(epochs=5, fine_tune_epochs=9), kept)
    assert (fixed.epochs, fixed.fine_tune_epochs) == (2, 2) and not fixed.keep_best_epoch
    assert cross_validation.kept_epochs({"phase": ["head", "fine_tune"], "kept": [1, 0]}) == {"head": 1, "fine_tune": 0}
    rows = [{"kept_epochs": {"train": n}} for n in (3, 4, 8)]
    assert cross_validation.median_kept_epochs(rows) == {"train": 4}


def test_every_patient_is_predicted_by_a_model_that_never_saw_it(tmp_path):
    data = _patients()
    trainer = cross_validation.Trainer(
        MilConfig(**{**TINY_MIL, "image_size": 32, "tile_size": 16}),
        TrainingConfig(epochs=2, batch_size=8, early_stopping_patience=2, seed=3), str(tmp_path))
    result = cross_validation.cross_validate(trainer, data, folds=3, seed=1)
    assert np.isfinite(result["probability"]).all() and len(result["probability"]) == len(data.labels)
    for fold in result["folds"]:
        assert not set(fold["inner_eval"]) & set(fold["held_out"])
        assert 1 <= fold["kept_epochs"]["train"] <= 2
    assert 0.0 <= result["threshold"] <= 1.0 and result["patients"] == 10
    auc = result["metrics"]["image_level"]["metrics"]["auc"]
    assert auc["ci_low"] <= auc["value"] <= auc["ci_high"]
    # Each fold was fitted in its own process; fitted in this one, the folds are the same.
    in_process = cross_validation.cross_validate(trainer, data, folds=3, seed=1, fold_processes=False)
    np.testing.assert_allclose(in_process["probability"], result["probability"], atol=1e-5)
    assert [fold["kept_epochs"] for fold in in_process["folds"]] == [fold["kept_epochs"] for fold in result["folds"]]


def test_a_refit_fold_answers_with_both_models(tmp_path):
    data = _patients()
    trainer = cross_validation.Trainer(
        MilConfig(**{**TINY_MIL, "image_size": 32, "tile_size": 16}),
        TrainingConfig(epochs=2, batch_size=8, early_stopping_patience=2, seed=3), str(tmp_path))
    groups = cross_validation.stratified_patient_folds(data.patients, data.labels, 3, seed=1)
    fold = cross_validation.fold_predictions(trainer, data, groups, 0, seed=1, refit=True)
    held_out = int(np.isin(data.patients, groups[0]).sum())
    assert len(fold["probability"]) == len(fold["refit_probability"]) == held_out
    assert np.isfinite(fold["refit_probability"]).all()
    assert fold["refit_probability"] != fold["probability"]  # the refit trains on the inner eval patients too
    # Each of the two fits in its own process gives the same answers.
    isolated = cross_validation.fold_predictions(trainer, data, groups, 0, seed=1, refit=True, fold_processes=True)
    for key in ("probability", "refit_probability"):
        np.testing.assert_allclose(isolated[key], fold[key], atol=1e-5)
    assert "refit_probability" not in cross_validation.fold_predictions(trainer, data, groups, 1, seed=1)


def test_few_patients_holding_both_labels_keep_most_of_them_in_training():
    """Two or three IDC slides left to train on: one is watched, the rest train; one slide
    alone cannot be split (the fold then watches its training patients)."""
    shares = {"s1": 0.2, "s2": 0.6, "s3": 0.4}
    for train in (["s1", "s2"], ["s1", "s2", "s3"]):
        watch = cross_validation.inner_eval_patients(train, shares, seed=0)
        assert len(watch) == 1 and set(watch) < set(train)
    assert cross_validation.inner_eval_patients(["s1"], shares, seed=0) == []
