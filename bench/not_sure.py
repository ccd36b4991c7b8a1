"""What the "not sure" band buys, scored on cross-validated predictions.

    python -m bench.not_sure --predictions bench/results/cv_predictions.json [--candidate mil]
                             [--target 0.95] [--min-coverage 0.8] [--uncertainty COLUMN ...]
                             [--output FILE.json]

Reads the per-image out-of-fold predictions `bench/cv_predictions.py` writes. Each fold's
images get the decision threshold and the abstention band (`models.abstention.choose_band`)
chosen on the OTHER folds' predictions, so nothing is chosen on what it is scored on; the
answers are pooled and scored with patient-bootstrap intervals: coverage, balanced accuracy of
the answered images and of all images, and their paired difference. Then the AUROC with which
each uncertainty score flags a wrong answer: the distance to the threshold
(`abstention.uncertainty`, what the exported model returns) and any extra per-image column of
the candidate named with `--uncertainty` (e.g. an MC-dropout spread), with the paired
difference to the distance.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

RESAMPLES = 2000


def nested_answers(labels: np.ndarray, probability: np.ndarray, patients: np.ndarray,
                   groups: Sequence[Sequence[str]], target: float, min_coverage: float) -> Dict[str, Any]:
    """Per image: the call at the other folds' threshold, whether it is answered (outside
    the other folds' band), and that threshold; per fold: the band chosen."""
    from histopath.evaluation.operating_point import balanced_accuracy_threshold
    from histopath.models import abstention

    predicted = np.zeros(len(labels), bool)
    answered = np.ones(len(labels), bool)
    thresholds = np.zeros(len(labels))
    bands = []
    for held_out in groups:
        mask = np.isin(patients, held_out)
        threshold = balanced_accuracy_threshold(labels[~mask], probability[~mask])
        chosen = abstention.choose_band(labels[~mask], probability[~mask], patients[~mask], threshold,
                                        target, min_coverage)
        predicted[mask] = probability[mask] >= threshold
        answered[mask] = abstention.not_sure(probability[mask], abstention.band_of(chosen)) == 0
        thresholds[mask] = threshold
        bands.append({"threshold": threshold, **{key: chosen[key] for key in (
            "low", "high", "reached", "coverage", "balanced_accuracy")}})
    return {"predicted": predicted, "answered": answered, "thresholds": thresholds, "bands": bands}


def _interval(draws: np.ndarray) -> List[float]:
    draws = draws[np.isfinite(draws)]
    return [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))]


def scored_coverage(labels: np.ndarray, patients: np.ndarray, predicted: np.ndarray, answered: np.ndarray,
                    seed: int) -> Dict[str, List[float]]:
    """Coverage and balanced accuracy (answered, all, their difference), each as
    [value, ci_low, ci_high] over patient-bootstrap resamples."""
    from histopath.evaluation.bootstrap import patient_bootstrap_weights

    names, index = np.unique(patients, return_inverse=True)
    weights = np.vstack([np.ones(len(names)), patient_bootstrap_weights(len(names), RESAMPLES, seed)])

    def totals(mask: np.ndarray) -> np.ndarray:
        return weights @ np.bincount(index, weights=mask.astype(float), minlength=len(names))

    def balanced(keep: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return (totals(keep & (labels == 1) & predicted) / totals(keep & (labels == 1))
                    + totals(keep & (labels == 0) & ~predicted) / totals(keep & (labels == 0))) / 2

    everything = np.ones(len(labels), bool)
    values = {"coverage": totals(answered) / totals(everything), "balanced_accuracy_answered": balanced(answered),
              "balanced_accuracy_all": balanced(everything)}
    values["gain"] = values["balanced_accuracy_answered"] - values["balanced_accuracy_all"]
    return {name: [float(draws[0]), *_interval(draws[1:])] for name, draws in values.items()}


def error_aurocs(wrong: np.ndarray, patients: np.ndarray, scores: Dict[str, np.ndarray],
                 seed: int, resamples: int = 1000) -> Dict[str, List[float]]:
    """AUROC of each score for "this answer is wrong", and each extra score's paired
    difference to the first, with patient-bootstrap intervals."""
    from sklearn.metrics import roc_auc_score

    names, index = np.unique(patients, return_inverse=True)
    members = [np.flatnonzero(index == g) for g in range(len(names))]
    rng = np.random.default_rng(seed)
    draws: Dict[str, List[float]] = {name: [] for name in scores}
    for _ in range(resamples):
        rows = np.concatenate([members[g] for g in rng.integers(0, len(names), len(names))])
        if wrong[rows].min() != wrong[rows].max():
            for name, values in scores.items():
                draws[name].append(roc_auc_score(wrong[rows], values[rows]))
    first = next(iter(scores))
    result = {name: [float(roc_auc_score(wrong, values)), *_interval(np.array(draws[name]))]
              for name, values in scores.items()}
    for name in list(scores)[1:]:
        result[f"{name} - {first}"] = [result[name][0] - result[first][0],
                                      *_interval(np.array(draws[name]) - np.array(draws[first]))]
    return result


def study(predictions: Dict[str, Any], candidate: str, target: float, min_coverage: float,
          extra: Sequence[str], seed: int) -> Dict[str, Any]:
    """The module docstring's figures for one candidate of a `cv_predictions` output."""
    from histopath.models import abstention

    labels, patients = np.array(predictions["labels"]), np.array(predictions["patients"])
    columns = predictions["candidates"][candidate]
    probability = np.array(columns["probability"], float)
    nested = nested_answers(labels, probability, patients, predictions["folds"], target, min_coverage)
    wrong = (nested["predicted"] != (labels == 1)).astype(int)
    scores = {"distance to the threshold": np.array(
        [abstention.uncertainty(p, t) for p, t in zip(probability, nested["thresholds"])])}
    scores.update({name: np.array(columns[name], float) for name in extra})
    return {"candidate": candidate, "target_balanced_accuracy": target, "min_coverage": min_coverage,
            "images": int(len(labels)), "patients": int(len(set(patients))), "wrong": int(wrong.sum()),
            "not_sure_among_wrong": float(np.mean(~nested["answered"][wrong == 1])),
            "not_sure_among_right": float(np.mean(~nested["answered"][wrong == 0])),
            "fold_bands": nested["bands"],
            **scored_coverage(labels, patients, nested["predicted"], nested["answered"], seed),
            "error_auroc": error_aurocs(wrong, patients, scores, seed)}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--predictions", type=pathlib.Path, required=True, help="bench.cv_predictions output")
    parser.add_argument("--candidate", default="mil")
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--min-coverage", type=float, default=0.8)
    parser.add_argument("--uncertainty", nargs="*", default=[], help="extra per-image columns to compare")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=pathlib.Path)
    args = parser.parse_args(argv)
    import histopath  # noqa: F401

    result = study(json.loads(args.predictions.read_text()), args.candidate, args.target, args.min_coverage,
                   args.uncertainty, args.seed)
    text = json.dumps(result, indent=2)
    if args.output:
        args.output.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
