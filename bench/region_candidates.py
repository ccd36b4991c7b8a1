"""The two IDC candidates on one unit, so that selection rules can choose between them.

    python -m bench.region_candidates --patches bench/results/cv_idc.json
                                      --regions bench/results/cv_idc_mil.json
                                      [--output bench/results/cv_idc_regions.json]

The `idc-densenet` preset's DenseNet201 scores 50 px patches; the `idc-mil` preset's attention MIL
scores K x K regions of them, positive when any patch is IDC. A user with IDC slides
chooses between the two, and a rule can only compare them on the same unit: the region.
Each region's patch-model score is the highest cross-validated probability among its
patches (a region is positive when any patch is, so its most suspicious patch speaks for
it), with and without the preset's slide context; the MIL's region probabilities are its
own cross-validated ones. Input: two outputs of `bench.cv_predictions` (the patch preset's
and the region preset's, with their positions). Output: the same format, one row per
region, candidates "densenet" and "mil", columns "probability" and, when both presets use
slide context, "context_probability"; `bench.selection_rules` scores the rules on it.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from bench.common import write_json
from bench.region_bags import MISSING, patches_as_bags
from histopath.errors import DataError

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
COLUMNS = ("probability", "context_probability")


def region_scores(patch_scores: np.ndarray, labels: np.ndarray, patients: np.ndarray, xs: np.ndarray,
                  ys: np.ndarray, region_patches: int) -> Dict[tuple, tuple]:
    """(patient, origin x, origin y) -> (the highest patch score of the region, its label:
    1 when any patch is positive)."""
    bags = patches_as_bags(patch_scores, labels, patients, xs, ys, region_patches)
    present = bags["patch_labels"] != MISSING
    highest = np.where(present, bags["attention"], -np.inf).max(axis=1)
    return {(str(patient), int(x), int(y)): (float(score), int(label)) for patient, x, y, score, label in
            zip(bags["patient_id"], bags["origin_x"], bags["origin_y"], highest, bags["label"])}


def combine(patch_cv: Mapping[str, Any], region_cv: Mapping[str, Any], patch_model: str = "densenet",
            region_model: str = "mil") -> Dict[str, Any]:
    """Both candidates' cross-validated scores of the region preset's regions.

    Raises:
      DataError: an input without positions or bag size, a region without patches in the
        patch predictions, or labels that disagree.
    """
    region_patches = region_cv.get("bag_size")
    if not region_patches or not region_cv.get("positions") or not patch_cv.get("positions"):
        raise DataError("need the patch preset's and the region preset's cross-validated predictions with "
                        "positions (bench.cv_predictions on IDC, the second with a bag_size preset)")
    patch_block, region_block = patch_cv["candidates"][patch_model], region_cv["candidates"][region_model]
    columns = [c for c in COLUMNS if c in patch_block and c in region_block]
    xs, ys = (np.array(axis, np.int64) for axis in zip(*patch_cv["positions"]))
    per_column = {column: region_scores(np.asarray(patch_block[column], float), np.asarray(patch_cv["labels"]),
                                        np.asarray(patch_cv["patients"]).astype(str), xs, ys, region_patches)
                  for column in columns}
    keys = [(str(p), int(x), int(y)) for p, (x, y) in zip(region_cv["patients"], region_cv["positions"])]
    missing = [key for key in keys if key not in per_column[columns[0]]]
    if missing:
        raise DataError(f"{len(missing)} regions have no patch in the patch predictions, e.g. {missing[0]}")
    patch_labels = [per_column[columns[0]][key][1] for key in keys]
    if patch_labels != [int(label) for label in region_cv["labels"]]:
        raise DataError("region labels disagree between the two predictions (different data?)")
    candidates = {
        patch_model: {column: [per_column[column][key][0] for key in keys] for column in columns},
        region_model: {column: list(region_block[column]) for column in columns},
    }
    return {"dataset": region_cv["dataset"], "preset": f"{patch_cv['preset']} vs {region_cv['preset']}",
            "unit": "region", "bag_size": region_patches, "patients": region_cv["patients"],
            "labels": region_cv["labels"], "positions": region_cv["positions"], "candidates": candidates}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patches", type=pathlib.Path, required=True,
                        help="bench.cv_predictions output of the patch preset (idc)")
    parser.add_argument("--regions", type=pathlib.Path, required=True,
                        help="bench.cv_predictions output of the region preset (idc-mil)")
    parser.add_argument("--output", type=pathlib.Path,
                        default=REPO_ROOT / "bench" / "results" / "cv_idc_regions.json")
    args = parser.parse_args(argv)
    result = combine(json.loads(args.patches.read_text()), json.loads(args.regions.read_text()))
    write_json(args.output, result)
    print(f"[regions] {len(result['labels'])} regions of {len(set(result['patients']))} patients, "
          f"columns {', '.join(next(iter(result['candidates'].values())))}: wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
