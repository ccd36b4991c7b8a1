"""The IDC preset re-chosen on every patient: the candidate and its slide-context width.

    python -m bench.idc_presets CV.json [--full-patients DIR] [--sigmas 0 0.5 1 1.5 2 3]
                                [--output FILE.json] [--plot FILE.png]

CV.json is a `bench.cv_predictions --dataset idc` output: every candidate's cross-validated
patch probabilities over the same patient folds, with the patches' slide positions.

Every choice is nested in the folds, so no figure scores a choice made on its own patients:
for each held-out fold, the slide-context width is the one with the highest patch AUC on the
other folds' patches, the decision threshold their balanced-accuracy threshold, and the
"not sure" band `abstention.choose_band` on them (the pipeline's rule: balanced accuracy 0.95
on the answered patches, coverage at least 0.8); the held-out fold is scored with all three.
The pipeline's cross-validated selection rules (`compare_cv.compare_candidates`) then pick a
candidate from those nested probabilities.

Reported per candidate: the sweep (pooled AUC per width, for reading, not for choosing), the
nested estimate (patch and patient metrics with 95 % patient-bootstrap intervals, and per
subset: the full slides of `--full-patients` and the other, sparse patients), the answered
share and its balanced accuracy; and the paired difference of the candidates.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any, Dict, List, Optional, Sequence

import histopath  # noqa: F401  (pins Keras 2 before TensorFlow is imported)
import numpy as np

from bench.common import save_figure, write_json
from bench.compare_cv import compare_candidates
from bench.study.tables import with_interval

SIGMAS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)  # slide-context widths in patch widths; 0 = none
RESAMPLES = 1000


def context_columns(run: Dict[str, Any], kind: str, sigmas: Sequence[float]) -> Dict[float, np.ndarray]:
    """The candidate's probabilities after slide context at each width (0: unchanged)."""
    from histopath.evaluation.slide_context import smooth_slide_scores

    probability = np.asarray(run["candidates"][kind]["probability"], np.float64)
    xs, ys = zip(*run["positions"])
    return {float(sigma): (smooth_slide_scores(probability, run["patients"], xs, ys, float(sigma)) if sigma
                           else probability) for sigma in sigmas}


def nested_choices(run: Dict[str, Any], columns: Dict[float, np.ndarray]) -> Dict[str, Any]:
    """Per held-out fold: width, threshold and band chosen on the other folds (module docstring).

    Returns:
      {"probability", "predicted", "not_sure" (per patch, pooled), "folds": [{"sigma",
      "threshold", "band"}]}.
    """
    from histopath.evaluation.metrics import roc_auc
    from histopath.evaluation.operating_point import balanced_accuracy_threshold
    from histopath.models import abstention

    labels = np.asarray(run["labels"], np.int64)
    patients = np.asarray(run["patients"])
    probability = np.zeros(len(labels))
    predicted = np.zeros(len(labels), np.int64)
    not_sure = np.zeros(len(labels), np.int64)
    folds = []
    for held_out in run["folds"]:
        held = np.isin(patients, held_out)
        sigma = max(columns, key=lambda width: (roc_auc(labels[~held], columns[width][~held]), -width))
        scores = columns[sigma]
        threshold = balanced_accuracy_threshold(labels[~held], scores[~held])
        chosen = abstention.choose_band(labels[~held], scores[~held], patients[~held], threshold, chosen_on="cv")
        band = None if chosen["low"] is None else {"low": chosen["low"], "high": chosen["high"]}
        probability[held] = scores[held]
        predicted[held] = scores[held] >= threshold
        not_sure[held] = abstention.not_sure(scores[held], band)
        folds.append({"sigma": sigma, "threshold": float(threshold), "band": band})
    return {"probability": probability, "predicted": predicted, "not_sure": not_sure, "folds": folds}


def _scored(labels, probability, predicted, patients, mask, threshold: float, seed: int) -> Dict[str, Any]:
    """Patch and patient metrics of the `mask`ed patches; patients are called at `threshold`."""
    from histopath.evaluation import scoring

    scored = scoring.score_predictions(labels[mask], probability[mask], predicted[mask], patients[mask],
                                       threshold=threshold, bootstrap=RESAMPLES, seed=seed)
    return {"images": int(mask.sum()), "patients": int(len(set(patients[mask]))),
            "image_level": scored["image_level"]["metrics"], "patient_level": scored["patient_level"]["metrics"]}


def estimate(run: Dict[str, Any], kind: str, sigmas: Sequence[float], full_patients: Sequence[str],
             seed: int = 0) -> tuple[Dict[str, Any], np.ndarray]:
    """One candidate: the sweep, the nested estimate, per subset, and the answered share;
    and its nested probabilities. Patients are called at the median of the folds' thresholds."""
    from histopath.evaluation.metrics import roc_auc

    labels = np.asarray(run["labels"], np.int64)
    patients = np.asarray(run["patients"])
    columns = context_columns(run, kind, sigmas)
    nested = nested_choices(run, columns)
    everyone = np.ones(len(labels), bool)
    full = np.isin(patients, list(full_patients))
    subsets = {"all": everyone, "full slides": full, "sparse patients": ~full}
    answered = nested["not_sure"] == 0
    threshold = float(np.median([fold["threshold"] for fold in nested["folds"]]))
    result = {
        "sweep_auc": {f"{sigma:g}": float(roc_auc(labels, values)) for sigma, values in columns.items()},
        "folds": nested["folds"],
        "nested": {name: _scored(labels, nested["probability"], nested["predicted"], patients, mask, threshold, seed)
                   for name, mask in subsets.items() if mask.any()},
        "answered": {"coverage": float(answered.mean()),
                     **_scored(labels, nested["probability"], nested["predicted"], patients, answered,
                               threshold, seed)},
    }
    return result, nested["probability"]


def plot(results: Dict[str, Any], path: pathlib.Path) -> None:
    """Pooled patch AUC against the slide-context width, one line per candidate."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(5.5, 3.6))
    for kind, result in results["candidates"].items():
        widths = sorted(result["sweep_auc"], key=float)
        axes.plot([float(w) for w in widths], [result["sweep_auc"][w] for w in widths], marker="o", label=kind)
    axes.set_xlabel("slide-context width (sigma, patch widths; 0 = none)")
    axes.set_ylabel("cross-validated patch AUC")
    axes.set_title(f"IDC, {results['patients']} patients, {len(results['folds'])} patient folds")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    save_figure(figure, path, dpi=120)


def run(cv: Dict[str, Any], sigmas: Sequence[float], full_patients: Sequence[str]) -> Dict[str, Any]:
    """Every candidate of `cv` estimated, and the rules' pick between the first two."""
    if not cv.get("positions"):
        raise ValueError("the cross-validation output has no slide positions: run it on IDC patches")
    results: Dict[str, Any] = {"patients": len(set(cv["patients"])), "images": len(cv["labels"]),
                               "folds": cv["folds"], "sigmas": list(sigmas), "candidates": {}}
    nested_columns = {}
    for kind in cv["candidates"]:
        results["candidates"][kind], nested_columns[kind] = estimate(cv, kind, sigmas, full_patients)
    kinds = list(cv["candidates"])
    if len(kinds) >= 2:
        nested_run = {**cv, "candidates": {kind: {"probability": nested_columns[kind].tolist(),
                                                  "folds": cv["candidates"][kind]["folds"]} for kind in kinds}}
        results["comparison"] = compare_candidates(nested_run, kinds[0], kinds[1], "probability")
    return results


def table(results: Dict[str, Any]) -> List[str]:
    """The nested estimates as a markdown table, and the rules' pick."""
    lines = ["| candidate | width per fold | patch AUC | balanced accuracy | sensitivity / specificity | "
             "AUC, full slides | AUC, sparse patients | answered | balanced accuracy, answered |",
             "|---|---|---|---|---|---|---|---|---|"]
    for kind, result in results["candidates"].items():
        nested = result["nested"]
        image = nested["all"]["image_level"]
        subset = {name: with_interval(nested[name]["image_level"]["auc"]) if name in nested else "n/a"
                  for name in ("full slides", "sparse patients")}
        widths = ", ".join(f"{fold['sigma']:g}" for fold in result["folds"])
        lines.append(f"| {kind} | {widths} | {with_interval(image['auc'])} | "
                     f"{with_interval(image['balanced_accuracy'])} | "
                     f"{image['sensitivity']['value']:.3f} / {image['specificity']['value']:.3f} | "
                     f"{subset['full slides']} | {subset['sparse patients']} | "
                     f"{result['answered']['coverage']:.3f} | "
                     f"{with_interval(result['answered']['image_level']['balanced_accuracy'])} |")
    comparison = results.get("comparison")
    if comparison:
        name = next(key for key in comparison if "_minus_" in key)
        low, high = comparison[name]["interval"]
        lines += ["", f"paired difference {name}: {comparison[name]['auc']:+.3f} [{low:+.3f}, {high:+.3f}]"]
        lines.extend(f"{rule}: {choice['winner']} ({choice['reason']})" for rule, choice in comparison["rules"].items())
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cv", type=pathlib.Path, help="a bench.cv_predictions output of IDC patches")
    parser.add_argument("--full-patients", type=pathlib.Path,
                        help="a folder whose subfolders are the patients with full slides (e.g. idc/)")
    parser.add_argument("--sigmas", type=float, nargs="+", default=list(SIGMAS))
    parser.add_argument("--output", type=pathlib.Path)
    parser.add_argument("--plot", type=pathlib.Path)
    args = parser.parse_args(argv)
    full = sorted(p.name for p in args.full_patients.iterdir() if p.is_dir()) if args.full_patients else []
    results = run(json.loads(args.cv.read_text()), args.sigmas, full)
    if args.output:
        write_json(args.output, results)
    if args.plot:
        plot(results, args.plot)
    print("\n".join(table(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
