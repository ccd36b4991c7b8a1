"""bench/idc_cohort_size.py: the folds mix both sources, and the paired comparison."""

from __future__ import annotations

import histopath  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import pytest

from bench import idc_cohort_size

pytestmark = pytest.mark.bench  # tests of the benchmarks: opt-in (`pytest -m bench`)


def test_every_fold_holds_patients_of_both_sources_and_folds_are_disjoint():
    folds = idc_cohort_size.cohort_folds(["1", "2", "3"], ["10", "11", "12", "13"], 3)
    assert folds == [["1", "10", "13"], ["2", "11"], ["3", "12"]]
    assert sorted(sum(folds, []), key=int) == ["1", "2", "3", "10", "11", "12", "13"]


def test_compare_pairs_the_arms_on_the_same_patients():
    rng = np.random.default_rng(0)
    patients = np.repeat([f"p{i}" for i in range(20)], 10)
    labels = np.tile([0, 1], 100)
    better = labels + rng.normal(0, 0.5, 200)
    worse = labels + rng.normal(0, 2.0, 200)
    result = idc_cohort_size.compare({"with_sparse": better, "without_sparse": worse}, labels, patients)
    assert result["patients"] == 20 and result["patches"] == 200
    assert result["with_sparse"]["auc"] > result["without_sparse"]["auc"]
    low, high = result["difference"]["ci"]
    assert 0 < low < result["difference"]["auc"] < high
    only_first = idc_cohort_size.compare({"with_sparse": better, "without_sparse": better}, labels, patients,
                                         np.isin(patients, ["p0", "p1", "p2"]))
    assert only_first["patients"] == 3 and only_first["difference"]["auc"] == 0.0
