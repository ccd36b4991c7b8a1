"""The winner rule of `SelectWinner`."""

from __future__ import annotations

import numpy as np

from histopath.components import winner_selection


def _candidate(blessed: bool, auc: float, balanced_accuracy: float = 0.8) -> dict:
    return {"blessed": blessed, "metrics": {"auc": auc, "balanced_accuracy": balanced_accuracy}}


def test_winner_is_the_blessed_candidate_with_the_highest_auc():
    winner, reason = winner_selection.choose_winner(
        {"densenet": _candidate(True, 0.91), "mil": _candidate(True, 0.95)}, "test_auc"
    )
    assert winner == "mil" and "0.9500" in reason and "runner-up densenet" in reason
    winner, reason = winner_selection.choose_winner(
        {"densenet": _candidate(True, 0.91), "mil": _candidate(False, 0.99)}, "test_auc"
    )
    assert winner == "densenet" and "not blessed: mil" in reason


def test_auc_ties_go_to_balanced_accuracy_and_no_blessing_means_no_winner():
    winner, _ = winner_selection.choose_winner(
        {"densenet": _candidate(True, 0.9, 0.85), "mil": _candidate(True, 0.9, 0.80)}, "test_auc"
    )
    assert winner == "densenet"
    winner, reason = winner_selection.choose_winner(
        {"densenet": _candidate(False, 0.9), "mil": _candidate(False, 0.8)}, "test_auc"
    )
    assert winner is None and "nothing is pushed" in reason


def _cross_validated(seed: int, strengths: dict[str, float], patients: int = 30, images: int = 10) -> dict:
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(patients) % 2, images)
    patient_ids = np.repeat([f"p{i}" for i in range(patients)], images).tolist()
    candidates = {}
    for name, strength in strengths.items():
        scores = 1 / (1 + np.exp(-(strength * (2 * labels - 1) + rng.normal(0, 1, len(labels)))))
        candidates[name] = {**_candidate(True, 0.9),
                            "cross_validation": {"labels": labels.tolist(), "patients": patient_ids,
                                                 "probability": scores.tolist(), "threshold": 0.5}}
    return candidates


def test_cross_validated_rules():
    import pytest

    from histopath.errors import DataError

    clearly_better = _cross_validated(0, {"mil": 0.3, "densenet": 2.5})
    for rule in ("cv_auc", "cv_simpler_unless_better"):
        winner, reason = winner_selection.choose_winner(clearly_better, rule)
        assert winner == "densenet" and "30 train and eval patients" in reason and "only reports" in reason
    alike = _cross_validated(1, {"mil": 1.0, "densenet": 1.05})
    winner, reason = winner_selection.choose_winner(alike, "cv_simpler_unless_better")
    assert winner == "mil" and "no candidate beats the simpler mil" in reason
    alike["densenet"]["cross_validation"] = None
    with pytest.raises(DataError, match="densenet did not write"):
        winner_selection.choose_winner(alike, "cv_auc")
    alike["densenet"]["blessed"] = False  # one eligible candidate needs no comparison
    assert winner_selection.choose_winner(alike, "cv_auc")[0] == "mil"


def _cv_image_level(labels: list, probability: list, threshold: float) -> dict:
    """The cross-validated image-level scores as a Trainer stores them (`cross_validation.summarize`)."""
    from histopath.evaluation import scoring

    labels, probability = np.array(labels), np.array(probability)
    return scoring.score_predictions(labels, probability, (probability >= threshold).astype(int),
                                     np.array([f"p{i}" for i in range(len(labels))]), threshold=threshold,
                                     bootstrap=10, seed=0)["image_level"]


def test_a_one_class_test_split_is_judged_on_the_cross_validated_predictions():
    predictions = _cv_image_level([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9], 0.5)
    bounds = {"auc": 0.7, "balanced_accuracy": 0.5}
    judged = winner_selection.judge_on_cross_validation(predictions, bounds)
    assert judged["blessed"]  # AUC 0.75, balanced accuracy 0.5 at the threshold
    assert "AUC 0.750 >= 0.7, balanced accuracy 0.500 >= 0.5" in judged["judged_on"]
    judged = winner_selection.judge_on_cross_validation(predictions, {"auc": 0.8})
    assert not judged["blessed"] and "AUC 0.750 < 0.8" in judged["judged_on"]
    one_class = winner_selection.judge_on_cross_validation(_cv_image_level([1, 1, 1, 1], [0.1, 0.6, 0.4, 0.9], 0.5),
                                                           bounds)
    assert not one_class["blessed"] and "neither" in one_class["judged_on"]
    candidates = {"cnn": {**_candidate(False, 0.0), **judged}, "mil": _candidate(False, 0.0)}
    winner, reason = winner_selection.choose_winner(candidates, "cv_auc")
    assert winner is None and reason.endswith("cnn was judged on " + judged["judged_on"])
