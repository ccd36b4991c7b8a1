"""`model_comparison`: the selection rules' building blocks on tiny synthetic predictions."""

from __future__ import annotations

import numpy as np
import pytest

from histopath.evaluation import model_comparison


def _predictions(seed: int = 0, patients: int = 30, images: int = 8):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(patients) % 2, images)
    ids = np.repeat([f"p{i}" for i in range(patients)], images)
    noise = rng.normal(0, 1, len(labels))
    return labels, ids, {"mil": labels * 0.5 + noise, "densenet": labels * 3.0 + noise}


def test_interval_is_the_central_percentile_range_of_the_finite_draws():
    draws = np.concatenate([np.linspace(0, 1, 1001), [np.nan, np.inf]])
    low, high = model_comparison.interval(draws)
    assert low == pytest.approx(0.025) and high == pytest.approx(0.975)
    assert model_comparison.interval(np.array([np.nan])) is None


def test_a_clearly_better_candidate_wins_every_rule():
    labels, ids, scores = _predictions()
    assert model_comparison.highest_auc(labels, ids, scores)[0] == "densenet"
    assert model_comparison.highest_lower_bound(labels, ids, scores, resamples=200, seed=0)[0] == "densenet"
    chosen, reason = model_comparison.simpler_unless_better(labels, ids, scores, resamples=200, seed=0)
    assert chosen == "densenet" and "beats the simpler mil" in reason


def test_equal_candidates_go_to_the_simpler_one():
    labels, ids, scores = _predictions()
    same = {"densenet": scores["densenet"], "mil": scores["densenet"]}
    assert model_comparison.simpler_unless_better(labels, ids, same, resamples=200, seed=0)[0] == "mil"
    assert model_comparison.highest_auc(labels, ids, same)[0] == "mil"
    assert model_comparison.highest_lower_bound(labels, ids, same, resamples=200, seed=0)[0] == "mil"
