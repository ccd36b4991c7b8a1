"""`bench.not_sure` on synthetic cross-validated predictions whose errors sit at the threshold."""

from __future__ import annotations

import numpy as np
import pytest

from bench import not_sure

pytestmark = pytest.mark.bench  # tests of the benchmarks: opt-in (`pytest -m bench`)


def _predictions() -> dict:
    # 20 patients of 5 images: four confident right answers and one ambiguous image near
    # 0.5, whatever the patient's class (so about half of the ambiguous ones are wrong).
    rng = np.random.default_rng(0)
    patients, labels, probability = [], [], []
    for index in range(20):
        label = index % 2
        right = rng.uniform(0.8, 0.95, 4) if label else rng.uniform(0.05, 0.2, 4)
        wrong = [rng.uniform(0.45, 0.55)]
        patients += [f"p{index}"] * 5
        labels += [label] * 5
        probability += [*right, *wrong]
    groups = [[f"p{i}" for i in range(20) if i % 4 == fold] for fold in range(4)]
    return {"labels": labels, "patients": patients, "folds": groups,
            "candidates": {"mil": {"probability": probability, "noise": rng.random(100).tolist()}}}


def test_the_band_of_the_other_folds_leaves_out_the_errors_at_the_threshold():
    result = not_sure.study(_predictions(), "mil", 0.95, 0.8, ["noise"], seed=0)
    assert 5 <= result["wrong"] <= 15
    assert result["not_sure_among_wrong"] > 3 * result["not_sure_among_right"]
    assert 0.8 <= result["coverage"][0] < 1.0  # the narrowest band reaching 0.95, at coverage >= 0.8
    assert result["balanced_accuracy_answered"][0] > result["balanced_accuracy_all"][0]
    assert result["gain"][1] > 0  # the paired interval's lower end
    assert result["error_auroc"]["distance to the threshold"][0] > 0.9 and result["error_auroc"]["noise"][0] < 0.8
    assert result["error_auroc"]["noise - distance to the threshold"][2] < 0
