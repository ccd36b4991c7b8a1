"""bench/compare_cv.py on tiny cross-validation outputs."""

from __future__ import annotations

import numpy as np
import pytest

from bench.compare_cv import compare, compare_candidates

pytestmark = pytest.mark.bench  # tests of the benchmarks: opt-in (`pytest -m bench`)


def _run(probability: list, kept: int) -> dict:
    patients = [f"p{i // 2}" for i in range(12)]
    labels = [int(i // 2 >= 3) for i in range(12)]
    return {"patients": patients, "labels": labels, "folds": [["p0", "p3"]],
            "candidates": {"mil": {"refit_probability": probability, "folds": [{"kept_epochs": {"train": kept}}]}}}


def test_a_perfect_ranking_against_a_random_one_is_a_paired_gain():
    rng = np.random.default_rng(0)
    perfect = [0.1] * 6 + [0.9] * 6
    noisy = rng.uniform(size=12).tolist()
    result = compare(_run(noisy, 1), _run(perfect, 6), "mil", "refit_probability")
    assert result["b"]["auc"] == pytest.approx(1.0) and result["b"]["kept_epochs"] == [{"train": 6}]
    assert result["b_minus_a"]["auc"] == pytest.approx(1.0 - result["a"]["auc"])
    assert result["b_minus_a"]["interval"][0] <= result["b_minus_a"]["auc"] <= result["b_minus_a"]["interval"][1]


def test_runs_of_other_folds_are_refused():
    other = _run([0.5] * 12, 1)
    other["folds"] = [["p1", "p4"]]
    with pytest.raises(ValueError, match="differ in folds"):
        compare(_run([0.5] * 12, 1), other, "mil", "refit_probability")


def test_two_candidates_of_one_run_and_the_rules_pick():
    rng = np.random.default_rng(0)
    run = _run(rng.uniform(size=12).tolist(), 1)
    folds = [{"kept_epochs": {"train": 2}, "seconds": 3.0}]
    run["candidates"] = {"cnn": {"probability": [0.2] * 6 + [0.8] * 6, "folds": folds},
                         "densenet": {"probability": rng.uniform(size=12).tolist(), "folds": folds}}
    result = compare_candidates(run, "cnn", "densenet", "probability")
    assert result["cnn"]["auc"] == pytest.approx(1.0) and result["cnn"]["fold_seconds"] == [3.0]
    difference = result["densenet_minus_cnn"]
    assert difference["auc"] == pytest.approx(result["densenet"]["auc"] - 1.0) and difference["interval"][1] <= 0.0
    assert {rule["winner"] for rule in result["rules"].values()} == {"cnn"}
    assert set(result["rules"]) == {"cv_auc", "cv_lower_bound", "cv_simpler_unless_better"}
