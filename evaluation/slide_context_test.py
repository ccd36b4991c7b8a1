"""slide_context: Gaussian averaging of patch probabilities over each patient's slide."""

from __future__ import annotations

import numpy as np
import pytest

from histopath.evaluation import slide_context
from histopath.errors import DataError

STEP = 50


def _brute_force(scores, patients, columns, rows, sigma):
    """Direct weighted mean over every patch of the same patient within the cut-off."""
    radius = int(slide_context.TRUNCATE * sigma + 0.5)
    out = np.empty(len(scores))
    for i in range(len(scores)):
        weights = [np.exp(-0.5 * ((columns[i] - columns[j]) ** 2 + (rows[i] - rows[j]) ** 2) / sigma ** 2)
                   if patients[i] == patients[j] and abs(columns[i] - columns[j]) <= radius
                   and abs(rows[i] - rows[j]) <= radius else 0.0 for j in range(len(scores))]
        out[i] = np.dot(weights, scores) / np.sum(weights)
    return out


def _slides(seed=0, size=9, keep=0.7):
    """Two patients' patches on IDC-like grids (offset 1 + 50 k), some positions missing."""
    rng = np.random.default_rng(seed)
    patients, columns, rows = [], [], []
    for patient in ("8863", "9124"):
        for row in range(size):
            for column in range(size):
                if rng.random() < keep:
                    patients.append(patient)
                    columns.append(column)
                    rows.append(row)
    columns, rows = np.array(columns), np.array(rows)
    return np.array(patients), columns, rows, rng.random(len(columns))


def test_equals_the_direct_weighted_mean_over_present_neighbours():
    patients, columns, rows, scores = _slides()
    xs, ys = 1001 + STEP * columns, 351 + STEP * rows
    for sigma in (0.7, 1.5, 2.5):
        smoothed = slide_context.smooth_slide_scores(scores, patients, xs, ys, sigma)
        np.testing.assert_allclose(smoothed, _brute_force(scores, patients, columns, rows, sigma), rtol=1e-10)


def test_sigma_zero_returns_the_scores_and_the_result_stays_in_range():
    patients, columns, rows, scores = _slides(seed=1)
    xs, ys = STEP * columns, STEP * rows
    np.testing.assert_array_equal(slide_context.smooth_slide_scores(scores, patients, xs, ys, 0.0), scores)
    smoothed = slide_context.smooth_slide_scores(scores, patients, xs, ys, 1.5)
    assert smoothed.min() >= scores.min() and smoothed.max() <= scores.max()
    assert not np.allclose(smoothed, scores)


def test_patients_do_not_mix_and_gaps_do_not_pull_towards_zero():
    # Same positions, one patient all 0.9, the other all 0.1; a hole in the middle of each.
    grid = [(c, r) for r in range(5) for c in range(5) if (c, r) != (2, 2)]
    columns = np.array([c for c, _ in grid] * 2)
    rows = np.array([r for _, r in grid] * 2)
    patients = np.array(["a"] * len(grid) + ["b"] * len(grid))
    scores = np.where(patients == "a", 0.9, 0.1)
    smoothed = slide_context.smooth_slide_scores(scores, patients, STEP * columns, STEP * rows, 2.0)
    np.testing.assert_allclose(smoothed, scores, rtol=1e-12)


def test_an_isolated_patch_keeps_its_score_and_a_cluster_lifts_its_members():
    columns = np.array([0, 1, 0, 1, 20])
    rows = np.array([0, 0, 1, 1, 20])
    scores = np.array([0.2, 0.9, 0.9, 0.9, 0.3])
    smoothed = slide_context.smooth_slide_scores(scores, ["p"] * 5, STEP * columns, STEP * rows, 1.0)
    assert smoothed[4] == pytest.approx(0.3)
    assert smoothed[0] > 0.6  # three confident neighbours outweigh the patch's own 0.2


def test_grid_step_is_read_from_the_positions():
    patients, columns, rows, _ = _slides(seed=2)
    assert slide_context.grid_step(1 + STEP * columns, 1 + STEP * rows, patients) == STEP
    assert slide_context.grid_step([0, 200, 400], [0, 0, 200], ["p"] * 3) == 200  # 4x4-patch regions
    with pytest.raises(DataError, match="two patches at different positions"):
        slide_context.grid_step([5], [7], ["p"])


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(DataError, match="one length"):
        slide_context.smooth_slide_scores([0.1, 0.2], ["p"], [0, 50], [0, 0], 1.0)
    with pytest.raises(DataError, match=">= 0"):
        slide_context.smooth_slide_scores([0.1, 0.2], ["p", "p"], [0, 50], [0, 0], -1.0)
    with pytest.raises(DataError, match="patient p: two patches at the same slide position"):
        slide_context.smooth_slide_scores([0.1, 0.2, 0.3], ["p"] * 3, [0, 0, 50], [0, 0, 0], 1.0)
