"""Which uncertainty flags a wrong answer better: the spread of the fold models, or the
distance to the threshold? Nested patient cross-validation.

    python -m bench.fold_spread --data DIR --dataset breakhis [--preset breakhis] [--candidate mil]
                                [--outer 5] [--inner 3] [--epochs 12] [--output FILE.json]
                                [--figure FILE.png] [--cache DIR]

The pipeline trains one model per cross-validation fold and, for a new patient, every one of
them is blind to it. Kept as an ensemble, their spread is an uncertainty the issue proposed.
Scoring it honestly needs every fold model of an image to be blind to that image's patient,
so the folds are nested: each OUTER fold's patients play the new patients; the other
patients are cut into `--inner` label-stratified folds, one model per inner fold is trained
exactly as the Trainer trains a fold model (`cross_validation.fold_predictions`: an inner
eval split of its training patients watched, in a child process) and predicts both its
inner fold and the outer patients. Per outer fold, as the pipeline does on its
cross-validated predictions, the decision threshold (best balanced accuracy) and the "not
sure" band (`abstention.choose_band`) are chosen on the inner folds' predictions; the outer
patients are then answered by the ensemble mean and scored:

- the AUROC with which each score flags a wrong answer (`bench.not_sure.error_aurocs`:
  patient-bootstrap intervals, paired differences to the distance): the distance of the
  ensemble mean to the threshold (`abstention.uncertainty`, what the exported model
  returns), the standard deviation of the members' probabilities, and the share of
  members on the other side of the threshold from the mean;
- accuracy against coverage for each score (the most uncertain images left out first),
  pooled over the outer folds, and a plot of it;
- the band chosen on the inner predictions, applied to the ensemble mean: coverage and
  balanced accuracy of the answered images (`bench.not_sure.scored_coverage`).

Each fitted inner model is cached under `--cache`, so an interrupted study resumes.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import histopath  # noqa: F401  (pins Keras 2 before TensorFlow is imported)
import numpy as np

from bench.common import cached_json, content_key, save_figure, write_json
from bench.not_sure import error_aurocs, scored_coverage

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
COVERAGES = np.round(np.linspace(1.0, 0.5, 11), 3)


def member_scores(members: np.ndarray, threshold: float) -> Dict[str, np.ndarray]:
    """The uncertainty scores of an ensemble's answers (higher: less sure).

    Args:
      members: `[models, images]` probabilities of the ensemble's members.
      threshold: the decision threshold the mean is called at.

    Returns:
      {"distance to the threshold", "spread of the fold models" (standard deviation),
      "fold models disagreeing" (share of members on the other side of the threshold from
      the mean)}, each per image.
    """
    from histopath.models import abstention

    mean = members.mean(axis=0)
    called = mean >= threshold
    return {"distance to the threshold": abstention.uncertainty(mean, threshold),
            "spread of the fold models": members.std(axis=0),
            "fold models disagreeing": np.mean((members >= threshold) != called, axis=0)}


def accuracy_against_coverage(labels: np.ndarray, predicted: np.ndarray, score: np.ndarray,
                              coverages: Sequence[float] = COVERAGES) -> List[float]:
    """Balanced accuracy of the answered images when the `1 - coverage` share with the
    highest `score` is left out, for each coverage (ties broken by image order)."""
    order = np.argsort(-score, kind="stable")
    accuracies = []
    for coverage in coverages:
        answered = np.ones(len(labels), bool)
        answered[order[:int(np.floor((1.0 - coverage) * len(labels) + 1e-9))]] = False
        right = predicted == (labels == 1)
        per_class = [right[answered & (labels == c)].mean() for c in (0, 1) if np.any(answered & (labels == c))]
        accuracies.append(float(np.mean(per_class)))
    return accuracies


def outer_fold(trainer, data, outer: List[str], inner_folds: int, seed: int, settings: Dict[str, Any],
               cache: Optional[pathlib.Path]) -> Dict[str, Any]:
    """The inner models of one outer fold: their predictions of the inner patients (one
    model each) and of the outer patients (every model)."""
    from histopath.models import cross_validation

    rest = ~np.isin(data.patients, outer)
    inner_groups = cross_validation.stratified_patient_folds(data.patients[rest], data.labels[rest],
                                                             inner_folds, seed)
    # Holding out an inner fold AND the outer patients trains on the rest of the rest.
    groups = [list(group) + list(outer) for group in inner_groups]
    outer_mask = np.isin(data.patients, outer)
    inner_probability = np.full(len(data.labels), np.nan)
    members = []
    for index, group in enumerate(inner_groups):
        def fit_inner_model() -> Dict[str, Any]:
            started = time.perf_counter()
            fold = cross_validation.fold_predictions(trainer, data, groups, index, seed, fold_processes=True)
            held = np.isin(data.patients, groups[index])
            probability = np.asarray(fold["probability"])
            return {"inner": probability[np.isin(data.patients[held], group)].tolist(),
                    "outer": probability[np.isin(data.patients[held], outer)].tolist(),
                    "kept_epochs": fold["kept_epochs"], "seconds": round(time.perf_counter() - started, 1)}

        key = content_key({"settings": settings, "outer": sorted(outer), "inner": sorted(group), "seed": seed})
        fit, _ = cached_json(cache / f"{key}.json" if cache else None, fit_inner_model)
        inner_probability[np.isin(data.patients, group)] = fit["inner"]
        members.append(fit["outer"])
        print(f"[spread]   inner model {index + 1}/{inner_folds}: {fit['seconds']:.0f} s, kept {fit['kept_epochs']}",
              flush=True)
    return {"inner_probability": inner_probability[rest], "members": np.array(members), "rest": rest,
            "outer_mask": outer_mask}


def study(trainer, data, outer_folds: int, inner_folds: int, seed: int, settings: Dict[str, Any],
          cache: Optional[pathlib.Path], target: float, min_coverage: float) -> Dict[str, Any]:
    """The module docstring's figures."""
    from histopath.evaluation.operating_point import balanced_accuracy_threshold
    from histopath.models import abstention, cross_validation

    groups = cross_validation.stratified_patient_folds(data.patients, data.labels, outer_folds, seed)
    n = len(data.labels)
    mean, predicted, answered = np.zeros(n), np.zeros(n, bool), np.ones(n, bool)
    scores: Dict[str, np.ndarray] = {}
    folds = []
    for number, outer in enumerate(groups, 1):
        print(f"[spread] outer fold {number}/{outer_folds}: {len(outer)} patients held out", flush=True)
        fold = outer_fold(trainer, data, list(outer), inner_folds, seed, settings, cache)
        rest, mask = fold["rest"], fold["outer_mask"]
        threshold = balanced_accuracy_threshold(data.labels[rest], fold["inner_probability"])
        band = abstention.choose_band(data.labels[rest], fold["inner_probability"], data.patients[rest],
                                      threshold, target, min_coverage, chosen_on="cv")
        mean[mask] = fold["members"].mean(axis=0)
        predicted[mask] = mean[mask] >= threshold
        answered[mask] = abstention.not_sure(mean[mask], abstention.band_of(band)) == 0
        for name, values in member_scores(fold["members"], threshold).items():
            scores.setdefault(name, np.zeros(n))[mask] = values
        folds.append({"held_out": list(outer), "threshold": float(threshold), "band": [band["low"], band["high"]],
                      "band_reached": band["reached"]})
    wrong = (predicted != (data.labels == 1)).astype(int)
    return {"images": n, "patients": int(len(set(data.patients))), "outer_folds": outer_folds,
            "inner_folds": inner_folds, "seed": seed, "wrong": int(wrong.sum()), "folds": folds,
            "ensemble_auc": _image_auc(cross_validation.summarize(data, mean, seed)),
            # None when every answer is right (or every one wrong): nothing to flag.
            "error_auroc": error_aurocs(wrong, data.patients, scores, seed) if 0 < wrong.sum() < n else None,
            "coverage_curves": {"coverage": COVERAGES.tolist(), **{
                name: accuracy_against_coverage(data.labels, predicted, values) for name, values in scores.items()}},
            "band_on_the_ensemble": scored_coverage(data.labels, data.patients, predicted, answered, seed),
            "per_image": {"patients": data.patients.tolist(), "labels": data.labels.tolist(),
                          "ensemble_mean": mean.tolist(), **{k: v.tolist() for k, v in scores.items()}}}


def _image_auc(summary: Dict[str, Any]) -> List[float]:
    """[value, ci_low, ci_high] of the image AUC in a `cross_validation.summarize` result."""
    auc = summary["metrics"]["image_level"]["metrics"]["auc"]
    return [auc["value"], auc["ci_low"], auc["ci_high"]]


def plot(result: Dict[str, Any], path: pathlib.Path) -> None:
    """Balanced accuracy of the answered images against coverage, one line per score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = result["coverage_curves"]
    figure, axes = plt.subplots(figsize=(5.5, 4))
    for name, values in curves.items():
        if name != "coverage":
            axes.plot(curves["coverage"], values, marker="o", label=name)
    axes.invert_xaxis()
    axes.set_xlabel("coverage (share of images answered)")
    axes.set_ylabel("balanced accuracy of the answered images")
    axes.set_title(f"Nested patient CV, {result['patients']} patients, {result['images']} images", fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    save_figure(figure, path, dpi=110)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="raw image folder (the data set's layout)")
    parser.add_argument("--dataset", required=True, choices=["breakhis", "idc"])
    parser.add_argument("--preset", help="the recipe (default: the data set's preset)")
    parser.add_argument("--candidate", default="mil", help="the model kind of the preset to train")
    parser.add_argument("--outer", type=int, default=5)
    parser.add_argument("--inner", type=int, default=3)
    parser.add_argument("--epochs", type=int, help="at most this many epochs per phase (default: the preset's)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--min-coverage", type=float, default=0.8)
    parser.add_argument("--cache", type=pathlib.Path, default=REPO_ROOT / "bench" / "results" / "spread-cache")
    parser.add_argument("--output", type=pathlib.Path, default=REPO_ROOT / "bench" / "results" / "fold_spread.json")
    parser.add_argument("--figure", type=pathlib.Path)
    args = parser.parse_args(argv)
    from bench.cv_predictions import load_raw
    from histopath.models import cross_validation
    from histopath.pipeline import presets
    from histopath.pipeline.config import resolve

    preset = args.preset or presets.DEFAULT_PRESETS[args.dataset]
    overrides: Dict[str, Any] = {"dataset": args.dataset, "seed": args.seed}
    if args.epochs is not None:
        kept = resolve(presets.layer(preset), overrides).model_training[args.candidate]
        overrides["model_training"] = {args.candidate: {
            "epochs": min(kept.epochs, args.epochs), "fine_tune_epochs": min(kept.fine_tune_epochs, args.epochs)}}
    config = resolve(presets.layer(preset), overrides)
    trainer = cross_validation.Trainer(config.model_config(args.candidate), config.model_training[args.candidate],
                                       str(args.output.parent / "spread-logs" / args.candidate))
    data, _ = load_raw(args.dataset, args.data, config.image_size, config.stain_normalization, config.bag_size)
    settings = {"model": trainer.model_config.to_dict(), "training": trainer.training_config.to_dict(),
                "image_size": config.image_size, "data": str(pathlib.Path(args.data).resolve())}
    print(f"[spread] {len(data.labels)} images of {len(set(data.patients))} patients; {args.candidate} of "
          f"{preset}; {args.outer} outer x {args.inner} inner folds", flush=True)
    if args.cache:
        args.cache.mkdir(parents=True, exist_ok=True)
    result = {"dataset": args.dataset, "preset": preset, "candidate": args.candidate, "epochs": args.epochs,
              **study(trainer, data, args.outer, args.inner, args.seed, settings, args.cache, args.target,
                      args.min_coverage)}
    write_json(args.output, result)
    if args.figure:
        plot(result, args.figure)
    print(json.dumps({key: result[key] for key in ("ensemble_auc", "error_auroc", "band_on_the_ensemble")},
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
