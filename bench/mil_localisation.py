"""How well MIL attention finds the IDC-positive patches of region bags: the command line
and its whole-slide heat-maps.

    python -m bench.mil_localisation --model DIR --records DIR [--split test]
        [--heatmaps DIR] [--output FILE.json] [--bootstrap 1000] [--seed 0]

The records come from `histopath ingest --dataset idc --bag-size K` (`bench.region_bags`).
A MIL model exported with `image_size = K * 50` and `tile_size = 50` tiles each region
mosaic so that tile (r, c) IS patch cell (r, c), so its attention can be scored against
the patch labels the bag-level training never saw (`bench.localisation_scoring`):

- pooled: AUC of attention vs patch label over the present tiles of all positive bags;
- within_bag: mean per-bag AUC over positive bags holding both kinds of patch;
- whole_slide: AUC of attention x bag probability vs patch label over all bags.

Every AUC has a 95 % patient-cluster bootstrap interval (patients resampled with
replacement, all their bags kept; `histopath.evaluation.evaluate`). With `--heatmaps`,
one PNG per patient shows the re-assembled slide with the attention x probability map
next to the ground-truth IDC-positive patches.

A MIL model with an instance classifier also returns each tile's own probability; with
`--tile-context-sigma S` those probabilities averaged over each slide's tiles
(`localisation_scoring.tile_slide_context`: slide context, S in tile widths) are scored
the same way ("tile_context" in the JSON) and drawn as `<patient>.tiles-context.png`.
"""

from __future__ import annotations

import argparse
import io
import os
import pathlib
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence

import histopath  # noqa: F401  (pins Keras 2 before TensorFlow is imported)
import numpy as np

from bench.common import write_json
from bench.localisation_scoring import json_ready, localisation_scores, tile_slide_context
from bench.region_bags import iter_record_batches, predict_bags
from histopath.data import bags as bag_geometry
from histopath.data.features import patient_sort_key
from histopath.errors import ConfigError, DataError
from histopath.evaluation.predict import save_png_atomically

HEATMAP_MAX_SIDE = 1600  # longest side of a written slide PNG
_HEADER = 22  # pixels of title strip above the panels
_GAP = 8  # pixels between the two panels
_TRUTH_COLOUR = np.array([1.0, 0.0, 0.0])  # IDC-positive tint and outline (red)
_TRUTH_ALPHA = 0.35
MISSING = bag_geometry.MISSING_LABEL


# --- slide heat-maps ----------------------------------------------------------------------


def _safe_name(patient: str) -> str:
    """The patient id as a file name (characters other than letters, digits, `-_.` become `_`)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in patient) or "patient"


def _render_slide(
    canvas: np.ndarray, scores: np.ndarray, labels: np.ndarray, vmax: float, title: str, score_name: str,
):
    """Two panels side by side: heat-map overlay and ground-truth positive patches.

    Args:
      canvas: uint8 `(rows*P, cols*P, 3)` re-assembled slide (white = no patch).
      scores: `(rows, cols)` score per patch cell (see `SLIDE_SCORES`), NaN = no patch.
      labels: `(rows, cols)` patch labels, -1 = no patch.
      vmax: score mapped to the top of the colour map (shared by all slides of a run).
      title: the patient's line in the title strip.
      score_name: what the scores are, for the title strip.

    Returns:
      An RGB Pillow image whose longest side is at most `HEATMAP_MAX_SIDE`.
    """
    from matplotlib import colormaps
    from PIL import Image, ImageDraw

    from histopath.models.heatmap import COLORMAP, OVERLAY_ALPHA

    height, width = canvas.shape[:2]
    rows, cols = labels.shape
    scale = min(1.0, (HEATMAP_MAX_SIDE - _GAP) / (2.0 * width), (HEATMAP_MAX_SIDE - _HEADER) / height)
    panel_w, panel_h = max(1, int(width * scale)), max(1, int(height * scale))
    slide = Image.fromarray(canvas)
    if (panel_w, panel_h) != (width, height):
        slide = slide.resize((panel_w, panel_h), Image.Resampling.LANCZOS)
    base = np.asarray(slide, dtype=np.float64) / 255.0
    # Cell of every displayed pixel (the canvas is exactly rows x cols cells).
    row_of = np.minimum(np.arange(panel_h) * rows // panel_h, rows - 1)
    col_of = np.minimum(np.arange(panel_w) * cols // panel_w, cols - 1)

    cell_scores = scores[row_of[:, None], col_of[None, :]]
    present = ~np.isnan(cell_scores)
    level = np.clip(np.nan_to_num(cell_scores) / vmax, 0.0, 1.0) if vmax > 0 else np.zeros(cell_scores.shape)
    heat = colormaps[COLORMAP](level)[..., :3]
    overlay = np.where(present[..., None], (1 - OVERLAY_ALPHA) * base + OVERLAY_ALPHA * heat, base)

    positive = labels[row_of[:, None], col_of[None, :]] == 1
    truth = np.where(positive[..., None], (1 - _TRUTH_ALPHA) * base + _TRUTH_ALPHA * _TRUTH_COLOUR, base)
    inner = positive.copy()  # outline = positive pixels with a non-positive 4-neighbour
    inner[1:, :] &= positive[:-1, :]
    inner[:-1, :] &= positive[1:, :]
    inner[:, 1:] &= positive[:, :-1]
    inner[:, :-1] &= positive[:, 1:]
    truth[positive & ~inner] = _TRUTH_COLOUR

    figure = np.ones((_HEADER + panel_h, 2 * panel_w + _GAP, 3))
    figure[_HEADER:, :panel_w] = overlay
    figure[_HEADER:, panel_w + _GAP:] = truth
    bar_w = min(80, panel_w // 4)  # colour bar of the heat-map scale in the title strip
    if bar_w > 1:
        figure[6:_HEADER - 6, panel_w - bar_w:panel_w] = colormaps[COLORMAP](np.linspace(0, 1, bar_w))[None, :, :3]
    image = Image.fromarray(np.clip(figure * 255.0 + 0.5, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.text((2, 5), f"{title}  {score_name}, 0..{vmax:.3g}", fill=(0, 0, 0))
    draw.text((panel_w + _GAP + 2, 5), "ground truth: IDC-positive patches (red)", fill=(0, 0, 0))
    return image


def assemble_slide(mosaics: Mapping[tuple[int, int], bytes], bag_size: int) -> np.ndarray:
    """Re-assembles a patient's slide from its region mosaics.

    Args:
      mosaics: region origin (x, y) in slide pixels -> the record's encoded mosaic.
      bag_size: K (a mosaic is K*50 px square).

    Returns:
      uint8 `(rows*50, cols*50, 3)`, white where no region or patch is; the patch with
      slide offset (x, y) (IDC names, `1 + 50 n`) sits at `[y - 1 : y + 49, x - 1 : x + 49]`.
    """
    from PIL import Image

    span = bag_size * bag_geometry.IDC_PATCH_SIZE  # origins are multiples of span
    height = max(y for _, y in mosaics) + span
    width = max(x for x, _ in mosaics) + span
    canvas = np.full((height, width, 3), bag_geometry.WHITE, dtype=np.uint8)
    for (x, y), encoded in mosaics.items():
        mosaic = np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"))
        canvas[y:y + span, x:x + span] = mosaic[:span, :span]
    return canvas


SLIDE_SCORES = {"attention": ("attention x P(malignant)", ".localisation.png"),
                "tile_probability": ("tile P(malignant)", ".tiles.png"),
                "tile_context": ("tile P(malignant), slide context", ".tiles-context.png")}


def slide_heatmaps(
    bags: Mapping[str, np.ndarray],
    records_dir: str | os.PathLike,
    split: str,
    output_dir: str | os.PathLike,
    max_patients: Optional[int] = None,
    scores: Sequence[str] = ("attention",),
) -> Dict[str, List[pathlib.Path]]:
    """Writes whole-slide PNGs per patient, one per score: heat-map | ground truth.

    The slide is re-assembled once per patient from the region mosaics (read again from
    the same records) at their origins. Left panel, per patch: for "attention" the
    attention x bag probability, on one colour scale for all patients of the call (0 ..
    the largest score over `bags`), so slides compare; for "tile_probability" the instance
    classifier's probability of the patch and for "tile_context" that probability with
    slide context (`tile_slide_context`), each on 0 .. 1. Cells without a patch are not
    coloured. Right panel: the same slide with the IDC-positive patches tinted and
    outlined in red. Scaled down so the PNG's longest side is at most 1600 px; written
    under a temporary name, then renamed.

    Args:
      bags: from `predict_bags` on `records_dir` / `split` (plus "tile_context" if drawn).
      records_dir: the ingested region-bag records.
      split: the split `bags` came from.
      output_dir: folder for `<patient>.localisation.png` (`.tiles.png`,
        `.tiles-context.png`; created).
      max_patients: only the first N patients (numeric order); None = all.
      scores: which of `SLIDE_SCORES` to draw (`bags` must hold each).

    Returns:
      score -> the written paths, in patient order.

    Raises:
      DataError: see `predict_bags` (records), or `bags` lacks a score.
    """
    for score in scores:
        if score not in SLIDE_SCORES or score not in bags:
            raise DataError(f"no {score!r} in the predictions to draw (the model may lack an instance classifier)")
    patient_ids = np.asarray(bags["patient_id"]).astype(str)
    patients = sorted(set(patient_ids.tolist()), key=patient_sort_key)
    if max_patients is not None:
        patients = patients[:max(0, int(max_patients))]
    written: Dict[str, List[pathlib.Path]] = {score: [] for score in scores}
    if not patients:
        return written
    wanted = set(patients)
    size = int(np.asarray(bags["bag_size"]).ravel()[0])
    maps = {}  # score -> (per-tile values (n, K*K), colour-scale top)
    for score in scores:
        if score == "attention":
            values = np.asarray(bags["attention"], dtype=np.float64) * np.asarray(
                bags["probability"], dtype=np.float64)[:, None]
            maps[score] = (values, float(values.max()) if values.size else 0.0)
        else:
            maps[score] = (np.asarray(bags[score], dtype=np.float64), 1.0)
    by_region = {(p, int(x), int(y)): i for i, (p, x, y) in
                 enumerate(zip(patient_ids, bags["origin_x"], bags["origin_y"]))}

    # Encoded mosaics of the wanted patients (PNG bytes; decoded one slide at a time).
    mosaics: Dict[str, Dict[tuple[int, int], bytes]] = {p: {} for p in patients}
    for batch in iter_record_batches(records_dir, split, 256):
        for image, patient, x, y in zip(batch["image"], batch["patient_id"], batch["origin_x"], batch["origin_y"]):
            if patient in wanted:
                mosaics[patient][(int(x), int(y))] = image

    output = pathlib.Path(output_dir)
    for patient in patients:
        regions = mosaics[patient]
        if not regions:
            continue
        canvas = assemble_slide(regions, size)
        rows, cols = (side // bag_geometry.IDC_PATCH_SIZE for side in canvas.shape[:2])
        cell_scores = {score: np.full((rows, cols), np.nan) for score in scores}
        cell_labels = np.full((rows, cols), MISSING, dtype=np.int64)
        positive_bags = probability_max = 0.0
        for x, y in regions:
            index = by_region.get((patient, x, y))
            if index is None:  # a record without a prediction: drawn, not scored
                continue
            labels = np.asarray(bags["patch_labels"][index]).reshape(size, size)
            r0, c0 = y // bag_geometry.IDC_PATCH_SIZE, x // bag_geometry.IDC_PATCH_SIZE
            cell_labels[r0:r0 + size, c0:c0 + size] = labels
            for score in scores:
                cell_scores[score][r0:r0 + size, c0:c0 + size] = np.where(
                    labels != MISSING, maps[score][0][index].reshape(size, size), np.nan)
            positive_bags += float(bags["label"][index] == 1)
            probability_max = max(probability_max, float(bags["probability"][index]))
        title = f"patient {patient} ({len(regions)} bags, {int(positive_bags)} positive, max P {probability_max:.2f})"
        for score in scores:
            score_name, suffix = SLIDE_SCORES[score]
            figure = _render_slide(canvas, cell_scores[score], cell_labels, maps[score][1], title, score_name)
            path = output / f"{_safe_name(patient)}{suffix}"
            save_png_atomically(figure, path)
            written[score].append(path)
    return written


# --- command line -------------------------------------------------------------------------


def summary_lines(scores: Mapping[str, Any]) -> List[str]:
    """Human-readable lines of `localisation_scores`."""
    lines = [f"{scores['n_bags']} bags of {scores['n_patients']} patients; 95 % patient-bootstrap "
             f"intervals ({scores['bootstrap']['resamples']} resamples)"]
    for name in ("pooled", "within_bag", "whole_slide"):
        entry = scores[name]
        value = "undefined" if entry["value"] is None else f"{entry['value']:.3f}"
        interval = (f" [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"
                    if entry["ci_low"] is not None else "")
        counts = (f"{entry['n_bags']} bags, {entry['n_tiles']} tiles "
                  f"({entry['n_positive_tiles']} positive), {entry['n_patients']} patients")
        reason = f"  ({entry['reason']})" if entry["reason"] else ""
        lines.append(f"  {name:12s} AUC {value}{interval}  {counts}{reason}")
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m bench.mil_localisation`: scores, optional heat-maps and JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.mil_localisation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="pushed MIL model: <name>/<version> or <name>")
    parser.add_argument("--records", required=True, help="records of `histopath ingest --dataset idc --bag-size K`")
    parser.add_argument("--split", default="test", help="manifest split (default: test)")
    parser.add_argument("--heatmaps", help="write one <patient>.localisation.png per patient here")
    parser.add_argument("--max-patients", type=int, help="heat-maps of the first N patients only")
    parser.add_argument("--output", help="write the scores as JSON here")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (0 = none)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    parser.add_argument("--batch-size", type=int, default=32, help="bags per model call")
    parser.add_argument("--tile-context-sigma", type=float,
                        help="also score the instance classifier's tile probabilities with slide context "
                             "(Gaussian width in tiles, > 0)")
    args = parser.parse_args(argv)
    if args.tile_context_sigma is not None and not args.tile_context_sigma > 0:
        parser.error(f"--tile-context-sigma must be > 0, got {args.tile_context_sigma}")
    try:
        from histopath.models.exported import resolve_version_dir

        bags = predict_bags(args.model, args.records, args.split, args.batch_size)
        scores = localisation_scores(bags, args.bootstrap, args.seed)
        drawn = ["attention"]
        result = {"model": resolve_version_dir(args.model),
                  "records": os.path.abspath(args.records), "split": args.split,
                  "bag_size": int(bags["bag_size"][0]), **scores}
        if args.tile_context_sigma is not None:
            if "tile_probability" not in bags:
                raise DataError(f"{args.model} has no instance classifier: no tile probabilities to average "
                                "(--tile-context-sigma)")
            bags = {**bags, "tile_context": tile_slide_context(
                bags["tile_probability"], bags["patch_labels"], bags["patient_id"], bags["origin_x"],
                bags["origin_y"], args.tile_context_sigma)}
            context = localisation_scores({**bags, "attention": bags["tile_context"]}, args.bootstrap, args.seed)
            result["tile_context"] = {"sigma": args.tile_context_sigma, **context}
            drawn.append("tile_context")
        heatmaps = (slide_heatmaps(bags, args.records, args.split, args.heatmaps, args.max_patients, scores=drawn)
                    if args.heatmaps else {})
        result["heatmaps"] = [str(p) for p in heatmaps.get("attention", [])]
        if "tile_context" in result:
            result["tile_context"]["heatmaps"] = [str(p) for p in heatmaps.get("tile_context", [])]
    except (DataError, ConfigError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    print("\n".join(summary_lines(scores)))
    if "tile_context" in result:
        print(f"tile probabilities with slide context (sigma {args.tile_context_sigma:g} tiles):")
        print("\n".join(summary_lines(result["tile_context"])[1:]))
    for path in (path for paths in heatmaps.values() for path in paths):
        print(f"heat-map: {path}")
    if args.output:
        target = pathlib.Path(args.output)
        write_json(target, json_ready(result))
        print(f"scores: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())