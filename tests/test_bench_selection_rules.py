"""The selection-rule study (bench/selection_rules.py) on synthetic cross-validated predictions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench import selection_rules
from histopath.models import cross_validation

pytestmark = pytest.mark.bench  # tests of the benchmarks: opt-in (`pytest -m bench`)


def _predictions(seed: int, strengths: dict[str, float], patients: int = 40, images: int = 12) -> dict:
    rng = np.random.default_rng(seed)
    labels = np.repeat(rng.permutation(np.arange(patients) % 2), images)
    patient_ids = np.repeat([f"p{i}" for i in range(patients)], images)
    patient_effect = np.repeat(rng.normal(0, 0.5, patients), images)
    candidates = {name: {"probability": (1 / (1 + np.exp(-(strength * (labels - 0.5) * 2 + patient_effect
                                                          + rng.normal(0, 1, len(labels)))))).tolist()}
                  for name, strength in strengths.items()}
    return {"dataset": "breakhis", "preset": "breakhis", "labels": labels.tolist(),
            "patients": patient_ids.tolist(), "candidates": candidates}


def test_partitions_are_stratified_and_drawn_by_design():
    cv = _predictions(0, {"mil": 1.0, "densenet": 1.0})
    candidates = selection_rules.Candidates(cv["labels"], cv["patients"],
                                            {k: v["probability"] for k, v in cv["candidates"].items()})
    rng = np.random.default_rng(1)
    complement = selection_rules.draw_partition(candidates, 0.6, rng, "complement")
    assert sorted(np.concatenate(list(complement.values()))) == list(range(40))  # each patient once
    independent = selection_rules.draw_partition(candidates, 0.6, rng, "independent")
    for parts in (complement, independent):
        for name in ("train", "eval", "test", "unseen"):
            assert set(candidates.patient_label[parts[name]]) == {0, 1}, name
        assert len(parts["unseen"]) == 16 and len(parts["test"]) == 4 and len(parts["eval"]) == 4
    labels, pseudo, _ = candidates.subset(np.array([3, 3]))  # a patient drawn twice counts twice
    assert len(labels) == 24 and len(set(pseudo)) == 2


def test_a_clearly_better_candidate_is_found_by_the_cross_validated_rules():
    cv = _predictions(3, {"mil": 0.3, "densenet": 2.0})
    candidates = selection_rules.Candidates(cv["labels"], cv["patients"],
                                            {k: v["probability"] for k, v in cv["candidates"].items()})
    result = selection_rules.compare_rules(candidates, partitions=25, available=0.6, seed=0)
    rows = result["rules"]
    assert rows["always_densenet"]["agreement"] == 1.0 and rows["always_mil"]["agreement"] == 0.0
    assert rows["cv_auc"]["agreement"] == 1.0 and rows["cv_auc"]["regret"] == pytest.approx(0.0)
    assert rows["cv_auc"]["unseen_auc"] == pytest.approx(result["oracle_unseen_auc"])
    for row in rows.values():
        assert 0.0 <= row["agreement_ci"][0] <= row["agreement"] <= row["agreement_ci"][1] <= 1.0
        assert sum(row["picks"].values()) == pytest.approx(1.0)


def test_equal_candidates_make_the_interval_rule_prefer_the_simpler():
    cv = _predictions(5, {"mil": 1.0, "densenet": 1.0})
    candidates = selection_rules.Candidates(cv["labels"], cv["patients"],
                                            {k: v["probability"] for k, v in cv["candidates"].items()})
    result = selection_rules.compare_rules(candidates, partitions=20, available=0.6, seed=0)
    assert result["rules"]["cv_simpler_unless_better"]["picks"]["mil"] >= 0.9


def test_refit_gain_and_the_command_line(tmp_path):
    cv = _predictions(7, {"mil": 1.0, "densenet": 1.5})
    for block in cv["candidates"].values():
        block["refit_probability"] = block["probability"]
    assert selection_rules.refit_gain(cv, 0)["mil"]["gain_ci"] == [0.0, 0.0]
    path = tmp_path / "cv.json"
    path.write_text(json.dumps(cv))
    assert selection_rules.main(["--predictions", str(path), "--partitions", "20"]) == 0
    written = json.loads((tmp_path / "cv.rules.json").read_text())
    assert [(study["recipe"], study["design"]) for study in written["studies"]] == [
        ("refit on all", "independent"), ("refit on all", "complement"),
        ("fold models", "independent"), ("fold models", "complement")]
    study = written["studies"][0]
    assert study["partitions"] == 20 and set(study["rules"]) >= {"test_auc", "cv_auc", "cv_lower_bound"}


def test_folds_are_stratified_by_patient_label():
    patients = [f"p{i}" for i in range(10) for _ in range(3)]
    labels = [int(i < 4) for i in range(10) for _ in range(3)]
    folds = cross_validation.stratified_patient_folds(patients, labels, 2, seed=0)
    assert sorted(p for fold in folds for p in fold) == sorted(set(patients))
    assert [sum(int(p) < 4 for p in (q[1:] for q in fold)) for fold in folds] == [2, 2]


def test_patients_holding_both_labels_are_stratified_by_positive_share():
    # IDC-like: every patient has negative and positive regions, in shares 0.05 .. 0.95.
    shares = np.linspace(0.05, 0.95, 20)
    labels = np.concatenate([(np.arange(20) < round(share * 20)).astype(int) for share in shares])
    patients = np.repeat([f"p{i}" for i in range(20)], 20)
    candidates = selection_rules.Candidates(labels, patients, {"mil": labels * 0.5, "densenet": labels * 0.4})
    assert set(candidates.patient_label) == {1}  # by label alone there would be one stratum
    upper = candidates.patient_stratum[candidates.patient_ids.tolist().index("p19")]
    lower = candidates.patient_stratum[candidates.patient_ids.tolist().index("p0")]
    assert (lower, upper) == (0, 1) and candidates.patient_stratum.sum() == 10
    rng = np.random.default_rng(0)
    for design in ("independent", "complement"):
        parts = selection_rules.draw_partition(candidates, 0.6, rng, design)
        for name in ("train", "eval", "test", "unseen"):
            assert set(candidates.patient_stratum[parts[name]]) == {0, 1}, (design, name)


def test_a_study_runs_on_each_shared_prediction_column(tmp_path):
    cv = _predictions(9, {"mil": 1.0, "densenet": 1.5})
    cv["unit"] = "region"
    for block in cv["candidates"].values():
        block["context_probability"] = block["probability"]
    cv["candidates"]["mil"]["refit_probability"] = cv["candidates"]["mil"]["probability"]  # not shared: skipped
    path = tmp_path / "cv.json"
    path.write_text(json.dumps(cv))
    assert selection_rules.main(["--predictions", str(path), "--partitions", "20"]) == 0
    written = json.loads((tmp_path / "cv.rules.json").read_text())
    assert (tmp_path / "cv.rules.png").read_bytes()[:4] == b"\x89PNG"
    assert written["unit"] == "region"
    assert [study["recipe"] for study in written["studies"]] == [
        "with slide context", "with slide context", "fold models", "fold models"]
    assert written["studies"][0]["rules"] == written["studies"][2]["rules"]  # the same scores
    pool = written["pool"]["fold models"]
    assert pool == written["pool"]["with slide context"] and set(pool) == {"mil", "densenet"}
    for row in pool.values():
        assert row["auc_ci"][0] <= row["auc"] <= row["auc_ci"][1]
    assert pool["densenet"]["auc"] > pool["mil"]["auc"]  # the stronger synthetic candidate
