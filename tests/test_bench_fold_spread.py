"""`bench.fold_spread`: the scores on tiny arrays, and one nested run on a generated sample."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench import fold_spread

pytestmark = pytest.mark.bench  # tests of the benchmarks: opt-in (`pytest -m bench`)


def test_member_scores_distance_spread_and_disagreement():
    members = np.array([[0.9, 0.45, 0.2],
                        [0.9, 0.65, 0.4],
                        [0.9, 0.70, 0.6]])
    scores = fold_spread.member_scores(members, threshold=0.5)
    np.testing.assert_allclose(scores["spread of the fold models"], members.std(axis=0))
    # Means 0.9, 0.6, 0.4: distance 0.2 / 0.5 away from 1 at the threshold.
    np.testing.assert_allclose(scores["distance to the threshold"], [0.2, 0.8, 0.8])
    np.testing.assert_allclose(scores["fold models disagreeing"], [0.0, 1 / 3, 1 / 3])


def test_accuracy_against_coverage_leaves_out_the_highest_scores_first():
    labels = np.array([1, 1, 0, 0])
    predicted = np.array([True, False, False, True])  # images 1 and 3 are wrong
    score = np.array([0.1, 0.9, 0.2, 0.8])  # ... and the least sure
    accuracies = fold_spread.accuracy_against_coverage(labels, predicted, score, [1.0, 0.75, 0.5])
    assert accuracies == [0.5, 0.75, 1.0]


def test_a_nested_run_on_a_sample_writes_every_figure_and_resumes_from_its_cache(tmp_path):
    from histopath.data import sample

    source = tmp_path / "breakhis"
    sample.make_sample("breakhis", str(source), patients=8, images_per_patient=4, seed=5)
    output, figure = tmp_path / "spread.json", tmp_path / "spread.png"
    args = ["--data", str(source), "--dataset", "breakhis", "--outer", "2", "--inner", "2", "--epochs", "1",
            "--cache", str(tmp_path / "cache"), "--output", str(output), "--figure", str(figure)]
    assert fold_spread.main(args) == 0
    result = json.loads(output.read_text())
    assert result["images"] == 32 and len(result["folds"]) == 2
    assert len(list((tmp_path / "cache").glob("*.json"))) == 4  # 2 outer x 2 inner models
    for name in ("spread of the fold models", "fold models disagreeing", "distance to the threshold"):
        assert len(result["coverage_curves"][name]) == len(fold_spread.COVERAGES)
        assert len(result["per_image"][name]) == 32
    if 0 < result["wrong"] < 32:
        assert set(result["error_auroc"]) >= {"spread of the fold models - distance to the threshold"}
    else:
        assert result["error_auroc"] is None
    assert figure.stat().st_size > 0
    first = output.read_text()
    assert fold_spread.main(args) == 0  # every model from the cache: the same figures
    assert json.loads(output.read_text())["error_auroc"] == json.loads(first)["error_auroc"]
