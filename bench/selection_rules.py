"""Which rule picks the candidate that is better on patients nobody has seen?

    python -m bench.selection_rules --predictions bench/results/cv_breakhis.json
                                    [--partitions 200] [--available 0.6] [--output FILE.json]

Writes FILE.json and a plot of each rule's agreement, FILE.png.

Input: the cross-validated predictions of the candidates (`bench/cv_predictions.py`): one
prediction per image of every patient, from a model that never saw the patient; the study
runs on each prediction column every candidate has (`RECIPES`: the refit recipe's, what
`refit_on_all` pushes; with slide context; the fold models' alone). One partition draws,
stratified by label (see `draw_partition` for patients holding both labels and for the two
designs), the patients a user would have (`--available` of the pool) and the unseen
patients, and cuts the available ones into train/eval/test as the pipeline does
(0.7/0.15/0.15 of the patients). Each rule then picks a candidate from the available
patients' predictions only; the truth is the candidate with the higher image AUC
on the unseen patients. Reusing one set of cross-validated predictions for every partition
stands in for retraining per partition.

Rules (AUC is image-level; intervals come from a patient bootstrap):
  test_auc              the higher AUC on the test patients (the pipeline's rule until now)
  eval_test_auc         the higher AUC on the eval and test patients pooled
  cv_auc                the higher cross-validated AUC over every available patient
  cv_lower_bound        the higher 2.5 % bound of that AUC's interval
  cv_simpler_unless_better  the simpler candidate unless the other's AUC is higher with the
                        paired interval of the difference above 0
  test_simpler_unless_better  the same on the test patients only
Reference rows: each candidate always, and the oracle.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from bench.common import save_figure, write_json
from histopath.evaluation import model_comparison

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SPLITS = (("train", 0.7), ("eval", 0.15), ("test", 0.15))
BOOTSTRAP_RESAMPLES = 200
# The prediction columns a study runs on (those every candidate has), and the recipe each is.
RECIPES = {"refit_probability": "refit on all", "context_probability": "with slide context",
           "probability": "fold models"}


class Candidates:
    """The candidates' cross-validated predictions of the same images.

    Args:
      labels, patients: per image.
      probabilities: candidate -> per-image probability.
    """

    def __init__(self, labels: Sequence[int], patients: Sequence[str], probabilities: Mapping[str, Sequence[float]]):
        self.labels = np.asarray(labels).astype(int)
        self.patients = np.asarray(patients).astype(str)
        self.patient_ids, self.cluster = np.unique(self.patients, return_inverse=True)
        self.patient_label = np.zeros(len(self.patient_ids), int)
        np.maximum.at(self.patient_label, self.cluster, self.labels)
        share = np.bincount(self.cluster, self.labels, len(self.patient_ids)) / np.bincount(self.cluster)
        if np.all((share == 0) | (share == 1)):
            self.patient_stratum = self.patient_label
        else:  # patients holding both labels (IDC slides): the lower and upper half by positive share
            rank = np.empty(len(share), int)
            rank[np.argsort(share, kind="stable")] = np.arange(len(share))
            self.patient_stratum = (rank >= len(share) / 2).astype(int)
        self.images_of = [np.flatnonzero(self.cluster == i) for i in range(len(self.patient_ids))]
        self.names = model_comparison.simpler_first(list(probabilities))
        self.scores = {name: np.asarray(values, float) for name, values in probabilities.items()}

    def subset(self, patients: Sequence[int]) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """(labels, patients, scores) of the images of `patients` (indices; a repeated
        patient counts as another patient, as in a bootstrap draw)."""
        rows = [self.images_of[p] for p in patients]
        images = np.concatenate(rows) if rows else np.zeros(0, int)
        pseudo = np.concatenate([[f"{p}#{k}"] * len(r) for k, (p, r) in enumerate(zip(patients, rows))]) \
            if rows else np.zeros(0, str)
        return self.labels[images], pseudo, {n: v[images] for n, v in self.scores.items()}

    def auc(self, name: str, patients: Sequence[int]) -> float:
        labels, pseudo, scores = self.subset(patients)
        return float(model_comparison.auc_draws(labels, pseudo, {name: scores[name]}, 0)[f"{name}:point"][0])


def draw_partition(candidates: Candidates, available: float, rng: np.random.Generator,
                   design: str = "independent") -> Dict[str, np.ndarray]:
    """Patient indices `{"unseen", "train", "eval", "test"}`, stratified by
    `candidates.patient_stratum` (the patient's label; for patients holding both labels,
    the half of the positive share they are in), every split of the available patients
    drawing from both strata.

    `design` "complement": the unseen patients are the rest of the pool (a patient is in
    one place). "independent": the available and the unseen patients are two independent
    draws with replacement from the pool, as two hospitals' patients are from one
    population (the complement design makes the two halves' AUCs anti-correlated when the
    candidates are close on the whole pool).
    """
    parts: Dict[str, List[int]] = {name: [] for name in ("unseen",) + tuple(s for s, _ in SPLITS)}
    for stratum in (0, 1):
        members = np.flatnonzero(candidates.patient_stratum == stratum)
        n_available = max(len(SPLITS), round(available * len(members)))
        if design == "complement":
            shuffled = rng.permutation(members)
            chosen, unseen = shuffled[:n_available], shuffled[n_available:]
        else:
            chosen = rng.choice(members, n_available, replace=True)
            unseen = rng.choice(members, max(1, len(members) - n_available), replace=True)
        parts["unseen"] += list(unseen)
        counts = [max(1, round(fraction * n_available)) for _, fraction in SPLITS[1:]]
        edges = np.cumsum([n_available - sum(counts)] + counts)
        for (name, _), start, end in zip(SPLITS, np.concatenate([[0], edges[:-1]]), edges):
            parts[name] += list(chosen[start:end])
    return {name: np.array(values, int) for name, values in parts.items()}


def rules(candidates: Candidates) -> Dict[str, Callable[[Dict[str, np.ndarray], int], str]]:
    """Rule name -> function(partition, seed) -> the chosen candidate."""
    order = candidates.names

    def pooled(parts, split_names):
        return candidates.subset(np.concatenate([parts[n] for n in split_names]))

    def by_auc(split_names: Sequence[str]):
        return lambda parts, seed: model_comparison.highest_auc(*pooled(parts, split_names))[0]

    def simpler_unless_better(split_names: Sequence[str]):
        return lambda parts, seed: model_comparison.simpler_unless_better(
            *pooled(parts, split_names), resamples=BOOTSTRAP_RESAMPLES, seed=seed)[0]

    def lower_bound(parts, seed):
        return model_comparison.highest_lower_bound(*pooled(parts, ["train", "eval", "test"]),
                                                    resamples=BOOTSTRAP_RESAMPLES, seed=seed)[0]

    everything = ["train", "eval", "test"]
    return {
        "test_auc": by_auc(["test"]),
        "eval_test_auc": by_auc(["eval", "test"]),
        "cv_auc": by_auc(everything),
        "cv_lower_bound": lower_bound,
        "cv_simpler_unless_better": simpler_unless_better(everything),
        "test_simpler_unless_better": simpler_unless_better(["test"]),
        **{f"always_{name}": (lambda parts, seed, name=name: name) for name in order},
    }


def compare_rules(candidates: Candidates, partitions: int, available: float, seed: int,
                  design: str = "independent") -> Dict[str, Any]:
    """Scores every rule over `partitions` random partitions (see the module docstring).

    Returns:
      {"design", "partitions", "available", "rules": {rule: {"agreement", "agreement_ci",
      "unseen_auc", "regret", "picks": {candidate: share}}}, "oracle_unseen_auc",
      "decided_partitions"}.
    """
    rng = np.random.default_rng(seed)
    table = rules(candidates)
    picks: Dict[str, List[str]] = {name: [] for name in table}
    truths, unseen_aucs = [], []
    for index in range(partitions):
        parts = draw_partition(candidates, available, rng, design)
        unseen = {name: candidates.auc(name, parts["unseen"]) for name in candidates.names}
        unseen_aucs.append(unseen)
        best = max(unseen.values())
        winners = [name for name, value in unseen.items() if value == best]
        truths.append(winners[0] if len(winners) == 1 else None)  # a tie decides nothing
        for name, rule in table.items():
            picks[name].append(rule(parts, seed + index))
    decided = [i for i, truth in enumerate(truths) if truth is not None]
    oracle = float(np.mean([max(row.values()) for row in unseen_aucs]))
    result: Dict[str, Any] = {"design": design, "partitions": partitions, "available": available, "decided_partitions": len(decided),
                              "oracle_unseen_auc": round(oracle, 4), "rules": {}}
    for name, chosen in picks.items():
        right = np.array([chosen[i] == truths[i] for i in decided], float)
        achieved = np.array([unseen_aucs[i][chosen[i]] for i in range(partitions)])
        low, high = _wilson(right.sum(), len(right))
        result["rules"][name] = {
            "agreement": round(float(right.mean()), 4) if len(right) else None,
            "agreement_ci": [round(low, 4), round(high, 4)],
            "unseen_auc": round(float(achieved.mean()), 4),
            "regret": round(oracle - float(achieved.mean()), 4),
            "picks": {candidate: round(chosen.count(candidate) / partitions, 3) for candidate in candidates.names},
        }
    return result


def _wilson(successes: float, trials: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion."""
    if trials == 0:
        return float("nan"), float("nan")
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return float(centre - half), float(centre + half)


def pooled_aucs(candidates: Candidates, seed: int) -> Dict[str, Dict[str, Any]]:
    """Each candidate's cross-validated AUC over the whole pool, with its patient-bootstrap
    interval."""
    draws = model_comparison.auc_draws(candidates.labels, candidates.patients, candidates.scores, 1000, seed)
    return {name: {"auc": round(float(draws[f"{name}:point"][0]), 4),
                   "auc_ci": [round(q, 4) for q in model_comparison.interval(draws[name]) or []]}
            for name in candidates.names}


def refit_gain(cv: Mapping[str, Any], seed: int) -> Dict[str, Any]:
    """Per candidate: cross-validated AUC of the fold models and of their refits on every
    training patient, and the paired patient-bootstrap interval of the difference."""
    gains = {}
    for name, block in cv["candidates"].items():
        if "refit_probability" not in block:
            continue
        draws = model_comparison.auc_draws(cv["labels"], cv["patients"], {
            "fold": block["probability"], "refit": block["refit_probability"]}, resamples=1000, seed=seed)
        gains[name] = {"auc": round(float(draws["fold:point"][0]), 4),
                       "refit_auc": round(float(draws["refit:point"][0]), 4),
                       "gain_ci": [round(q, 4) for q in model_comparison.interval(draws["refit"] - draws["fold"]) or []]}
    return gains


def plot_studies(result: Mapping[str, Any], path: pathlib.Path) -> None:
    """One panel per recipe (independent design): each rule's agreement with the candidate
    better on the unseen patients, with its Wilson interval, and the chance line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    studies = [study for study in result["studies"] if study["design"] == "independent"]
    fig, axes = plt.subplots(1, len(studies), figsize=(5.2 * len(studies), 3.6), sharey=True, squeeze=False)
    for ax, study in zip(axes[0], studies):
        names = list(study["rules"])
        rows = [study["rules"][name] for name in names]
        positions = np.arange(len(names))[::-1]
        low = [row["agreement"] - row["agreement_ci"][0] for row in rows]
        high = [row["agreement_ci"][1] - row["agreement"] for row in rows]
        ax.errorbar([row["agreement"] for row in rows], positions, xerr=[low, high], fmt="o", capsize=3)
        for y, row in zip(positions, rows):
            ax.annotate(f"{row['unseen_auc']:.3f}", (1.02, y), xycoords=("axes fraction", "data"), va="center",
                        fontsize=7)
        ax.axvline(0.5, color="grey", linestyle=":")
        ax.set_xlim(0, 1)
        ax.set_yticks(positions, [name.replace("_", " ") for name in names], fontsize=8)
        ax.set_xlabel("agreement with the better candidate on unseen patients")
        ax.set_title(f"{result['dataset']} ({result['unit']}s), {study['recipe']}", fontsize=9)
    fig.suptitle(f"Selection rules over {studies[0]['partitions']} partitions of {result['patients']} patients "
                 "(right: mean unseen AUC of the pick)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--predictions", type=pathlib.Path, required=True)
    parser.add_argument("--partitions", type=int, default=200)
    parser.add_argument("--available", type=float, default=0.6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=pathlib.Path)
    args = parser.parse_args(argv)
    cv = json.loads(args.predictions.read_text())
    recipes = {recipe: {name: block[column] for name, block in cv["candidates"].items()}
               for column, recipe in RECIPES.items()
               if all(column in block for block in cv["candidates"].values())}
    studies, pool = [], {}
    for recipe, probabilities in recipes.items():
        candidates = Candidates(cv["labels"], cv["patients"], probabilities)
        pool[recipe] = pooled_aucs(candidates, args.seed)
        for design in ("independent", "complement"):
            studies.append({"recipe": recipe, **compare_rules(candidates, args.partitions, args.available,
                                                              args.seed, design)})
    result = {"dataset": cv["dataset"], "preset": cv["preset"], "unit": cv.get("unit", "image"),
              "patients": len(candidates.patient_ids),
              "pool": pool, "studies": studies, "refit": refit_gain(cv, args.seed)}
    for recipe, aucs in pool.items():
        print(f"{result['dataset']}: {recipe}, {result['unit']} AUC over the pool: "
              + ", ".join(f"{name} {row['auc']:.3f} {row['auc_ci']}" for name, row in aucs.items()))
    for study in studies:
        print(f"{result['dataset']}: {result['patients']} patients, {study['recipe']}, {study['design']} "
              f"partitions: {study['partitions']} ({study['decided_partitions']} decided), "
              f"oracle unseen AUC {study['oracle_unseen_auc']:.3f}")
        print(f"  {'rule':28} {'agreement':>10} {'95% CI':>18} {'unseen AUC':>11} {'regret':>7}  picks")
        for name, row in study["rules"].items():
            print(f"  {name:28} {row['agreement']:>10.3f} {str(row['agreement_ci']):>18} {row['unseen_auc']:>11.4f} "
                  f"{row['regret']:>7.4f}  {row['picks']}")
    for name, row in result["refit"].items():
        print(f"refit {name}: CV AUC {row['auc']:.4f} -> {row['refit_auc']:.4f}, gain 95% CI {row['gain_ci']}")
    output = args.output or args.predictions.with_name(args.predictions.stem + ".rules.json")
    write_json(output, result)
    plot_studies(result, output.with_suffix(".png"))
    print(f"wrote {output} and {output.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
