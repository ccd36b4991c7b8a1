"""The winner rule of `SelectWinner`."""

from __future__ import annotations

from histopath.components import winner_selection


def _candidate(blessed: bool, auc: float, balanced_accuracy: float = 0.8) -> dict:
    return {"blessed": blessed, "metrics": {"auc": auc, "balanced_accuracy": balanced_accuracy}}


def test_winner_is_the_blessed_candidate_with_the_highest_auc():
    winner, reason = winner_selection.choose_winner(
        {"densenet": _candidate(True, 0.91), "mil": _candidate(True, 0.95)}
    )
    assert winner == "mil" and "0.9500" in reason and "runner-up densenet" in reason
    winner, reason = winner_selection.choose_winner(
        {"densenet": _candidate(True, 0.91), "mil": _candidate(False, 0.99)}
    )
    assert winner == "densenet" and "not blessed: mil" in reason


def test_auc_ties_go_to_balanced_accuracy_and_no_blessing_means_no_winner():
    winner, _ = winner_selection.choose_winner(
        {"densenet": _candidate(True, 0.9, 0.85), "mil": _candidate(True, 0.9, 0.80)}
    )
    assert winner == "densenet"
    winner, reason = winner_selection.choose_winner(
        {"densenet": _candidate(False, 0.9), "mil": _candidate(False, 0.8)}
    )
    assert winner is None and "nothing is pushed" in reason
