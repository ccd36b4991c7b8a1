"""Cross-validated on the same folds: the paired AUC difference of two settings of one
candidate, or of two candidates.

    python -m bench.compare_cv A.json B.json [--kind mil] [--column refit_probability]
    python -m bench.compare_cv RUN.json --kinds cnn densenet [--column context_probability]

A and B are `bench.cv_predictions` outputs of the same data, folds and seed (e.g. two
`--config` layers). For each, the image AUC of the chosen column ("probability": the fold
models; "refit_probability": the refit recipe, what `refit_on_all` pushes;
"context_probability": after slide context) with its 95 % patient-bootstrap interval, and
B minus A in the same resamples (paired), so the interval of the difference says whether B
is better on these patients. With `--kinds A B`, A and B are two candidates of one output,
and the pipeline's own rules (`evaluation.model_comparison`) say which each would push.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any, Dict, List, Optional

import numpy as np


def compare(first: Dict[str, Any], second: Dict[str, Any], kind: str, column: str) -> Dict[str, Any]:
    """AUCs of `column` in both outputs and their paired difference (second minus first).

    Raises:
      ValueError: the two outputs are not of the same images and folds.
    """
    from histopath.evaluation import model_comparison

    for key in ("patients", "labels", "folds"):
        if first[key] != second[key]:
            raise ValueError(f"the two cross-validations differ in {key}: compare runs of the same data and folds")
    scores = {"a": first["candidates"][kind][column], "b": second["candidates"][kind][column]}
    draws = model_comparison.auc_draws(first["labels"], first["patients"], scores)
    result = {name: {"auc": float(draws[f"{name}:point"][0]), "interval": model_comparison.interval(draws[name]),
                     "kept_epochs": [fold["kept_epochs"] for fold in run["candidates"][kind]["folds"]]}
              for name, run in (("a", first), ("b", second))}
    result["b_minus_a"] = {"auc": result["b"]["auc"] - result["a"]["auc"],
                           "interval": model_comparison.interval(draws["b"] - draws["a"])}
    return result


def compare_candidates(run: Dict[str, Any], first: str, second: str, column: str) -> Dict[str, Any]:
    """AUCs of two candidates of one `bench.cv_predictions` output, their paired difference
    (second minus first), and the candidate each cross-validated selection rule picks."""
    from histopath.evaluation import model_comparison

    scores = {kind: run["candidates"][kind][column] for kind in (first, second)}
    draws = model_comparison.auc_draws(run["labels"], run["patients"], scores)
    result: Dict[str, Any] = {
        kind: {"auc": float(draws[f"{kind}:point"][0]), "interval": model_comparison.interval(draws[kind]),
               "kept_epochs": [fold["kept_epochs"] for fold in run["candidates"][kind]["folds"]],
               "fold_seconds": [fold["seconds"] for fold in run["candidates"][kind]["folds"]]}
        for kind in (first, second)}
    result[f"{second}_minus_{first}"] = {"auc": result[second]["auc"] - result[first]["auc"],
                                         "interval": model_comparison.interval(draws[second] - draws[first])}
    rules = {"cv_auc": model_comparison.highest_auc, "cv_lower_bound": model_comparison.highest_lower_bound,
             "cv_simpler_unless_better": model_comparison.simpler_unless_better}
    result["rules"] = {name: dict(zip(("winner", "reason"), rule(run["labels"], run["patients"], scores)))
                       for name, rule in rules.items()}
    return result


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("first", type=pathlib.Path)
    parser.add_argument("second", type=pathlib.Path, nargs="?", help="omitted with --kinds")
    parser.add_argument("--kind", default="mil")
    parser.add_argument("--kinds", nargs=2, metavar=("A", "B"), help="compare two candidates of FIRST")
    parser.add_argument("--column", default="refit_probability",
                        choices=["probability", "refit_probability", "context_probability"])
    args = parser.parse_args(argv)
    if (args.second is None) == (args.kinds is None):
        parser.error("give either a second output or --kinds A B")
    first = json.loads(args.first.read_text())
    if args.kinds:
        result = compare_candidates(first, *args.kinds, args.column)
    else:
        result = compare(first, json.loads(args.second.read_text()), args.kind, args.column)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
