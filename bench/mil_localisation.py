"""How well MIL attention finds the IDC-positive patches of region bags.

    python -m bench.mil_localisation --model DIR --records DIR [--split test]
        [--heatmaps DIR] [--output FILE.json] [--bootstrap 1000] [--seed 0]

The records come from `histopath ingest --dataset idc --bag-size K`: one record per
K x K region of one patient's slide, with the row-major patch labels of its cells
(`bag_patch_labels`, -1 = no patch). A MIL model exported with `image_size = K * 50` and
`tile_size = 50` tiles each region mosaic so that tile (r, c) IS patch cell (r, c), so its
attention can be scored against the patch labels the bag-level training never saw:

- pooled: AUC of attention vs patch label over the present tiles of all positive bags;
- within_bag: mean per-bag AUC over positive bags holding both kinds of patch;
- whole_slide: AUC of attention x bag probability vs patch label over all bags.

Every AUC has a 95 % patient-cluster bootstrap interval (patients resampled with
replacement, all their bags kept; `histopath.evaluation.evaluate`). With `--heatmaps`,
one PNG per patient shows the re-assembled slide with the attention x probability map
next to the ground-truth IDC-positive patches.

A MIL model with an instance classifier also returns each tile's own probability; with
`--tile-context-sigma S` those probabilities averaged over each slide's tiles
(`tile_slide_context`: slide context, S in tile widths) are scored the same way
("tile_context" in the JSON) and drawn as `<patient>.tiles-context.png`.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import pathlib
import sys
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

import histopath  # noqa: F401  (pins Keras 2 before TensorFlow is imported)
import numpy as np

from bench.common import write_json
from histopath.data import bags as bag_geometry
from histopath.data import features
from histopath.errors import ConfigError, DataError
from histopath.evaluation.bootstrap import (
    CONFIDENCE, cluster_sums, fill_interval, interval_unavailable, metrics_for_weights, patient_bootstrap_weights)
from histopath.evaluation.metrics import roc_auc
from histopath.evaluation.predict import save_png_atomically

HEATMAP_MAX_SIDE = 1600  # longest side of a written slide PNG
_HEADER = 22  # pixels of title strip above the panels
_GAP = 8  # pixels between the two panels
_TRUTH_COLOUR = np.array([1.0, 0.0, 0.0])  # IDC-positive tint and outline (red)
_TRUTH_ALPHA = 0.35
MISSING = bag_geometry.MISSING_LABEL
_AUC_UNDEFINED = "AUC undefined in them"


def _patient_sort_key(patient: str) -> tuple:
    return (len(patient), patient)  # numeric ids in numeric order, as in evaluation


# --- reading the records ----------------------------------------------------------------


def _split_shards(records_dir: str | os.PathLike, split: str) -> tuple[List[str], int]:
    """The shard files of `split` and the bag size K of a `--bag-size` ingestion.

    Raises:
      DataError: no manifest, records not ingested with `--bag-size`, or no such split
        (see `data.ingest.split_shard_paths`).
    """
    from histopath.data.manifest import load_manifest, split_shard_paths

    manifest = load_manifest(os.fspath(records_dir))
    size = manifest.get("bag_size")
    if not size:
        raise DataError(f"{records_dir}: records are single patches, not region bags "
                        "(ingest with `--dataset idc --bag-size K`)")
    return split_shard_paths(manifest, os.fspath(records_dir), split), int(size)


def _iter_record_batches(
    records_dir: str | os.PathLike, split: str, batch_size: int
) -> Iterator[Dict[str, np.ndarray]]:
    """Yields the split's records in batches of parsed numpy columns (file order).

    Keys: image (bytes), label, patient_id (str), origin_x, origin_y, bag_size,
    patch_labels `[n, K*K]`.
    """
    import tensorflow as tf

    shards, size = _split_shards(records_dir, split)
    spec = {
        features.IMAGE: tf.io.FixedLenFeature([], tf.string),
        features.LABEL: tf.io.FixedLenFeature([], tf.int64),
        features.PATIENT_ID: tf.io.FixedLenFeature([], tf.string),
        features.PATCH_X: tf.io.FixedLenFeature([], tf.int64),
        features.PATCH_Y: tf.io.FixedLenFeature([], tf.int64),
        features.BAG_SIZE: tf.io.FixedLenFeature([], tf.int64),
        features.BAG_PATCH_LABELS: tf.io.FixedLenFeature([size * size], tf.int64),
    }
    dataset = tf.data.TFRecordDataset(shards, compression_type="GZIP").batch(max(1, int(batch_size)))
    for serialized in dataset:
        parsed = {k: v.numpy() for k, v in tf.io.parse_example(serialized, spec).items()}
        yield {
            "image": parsed[features.IMAGE],
            "label": parsed[features.LABEL].astype(np.int64),
            "patient_id": np.array([p.decode("utf-8") for p in parsed[features.PATIENT_ID]]),
            "origin_x": parsed[features.PATCH_X].astype(np.int64),
            "origin_y": parsed[features.PATCH_Y].astype(np.int64),
            "bag_size": parsed[features.BAG_SIZE].astype(np.int64),
            "patch_labels": parsed[features.BAG_PATCH_LABELS].astype(np.int64),
        }


# --- prediction -------------------------------------------------------------------------


def predict_bags(
    model_dir: str | os.PathLike,
    records_dir: str | os.PathLike,
    split: str = "test",
    batch_size: int = 32,
) -> Dict[str, np.ndarray]:
    """Runs a pushed MIL model on every region bag of one split.

    The mosaics go through `serving_default` (`exported.predict_bytes`, as
    `histopath predict` does), so decoding and tiling are the serving graph's own.

    Args:
      model_dir: `<name>/<version>` or `<name>` (newest version); see
        `exported.load`. Must be a MIL model whose tile grid is K x K.
      records_dir: output folder of `histopath ingest --dataset idc --bag-size K`.
      split: the manifest split to read.
      batch_size: bags per signature call.

    Returns:
      Per bag, in record order: "probability" float `[n]`, "predicted_label" `[n]` (the
      model's label at its threshold), "label" `[n]` (bag label), "patient_id" str `[n]`,
      "origin_x"/"origin_y" `[n]` (region origin in slide pixels), "bag_size" `[n]`,
      "attention" float `[n, K*K]` (row-major tiles), "tile_probability" likewise when
      the model has an instance classifier, and "patch_labels" `[n, K*K]`
      (-1 = no patch in that cell).

    Raises:
      DataError: no model / not a MIL model / its tile grid is not the bags' K x K, or
        the records are not region bags, or the split is unknown or empty.
    """
    from histopath.models.exported import predict_bytes
    from histopath.models.exported import load as load_model

    loaded = load_model(model_dir)
    kind = loaded.model_info.get("model_kind")
    if kind != "mil":
        raise DataError(f"{loaded.path}: a {kind} model has no attention (need a MIL model)")
    columns: Dict[str, List[np.ndarray]] = {}
    for batch in _iter_record_batches(records_dir, split, batch_size):
        names = [f"{p}/region_x{x}_y{y}" for p, x, y in
                 zip(batch["patient_id"], batch["origin_x"], batch["origin_y"])]
        rows = predict_bytes(loaded, list(batch.pop("image")), names=names)
        size = int(batch["bag_size"][0])
        for row, name in zip(rows, names):
            if tuple(row["grid_shape"]) != (size, size):
                raise DataError(
                    f"{name}: the model tiles a bag into a {row['grid_shape'][0]}x"
                    f"{row['grid_shape'][1]} grid but the bags are {size}x{size} patches; "
                    f"export the MIL model with image_size={size * 50}, tile_size=50")
        batch["probability"] = np.array([r["probability"] for r in rows], dtype=np.float64)
        batch["predicted_label"] = np.array([r["label"] for r in rows], dtype=np.int64)
        batch["attention"] = np.array([r["attention"] for r in rows], dtype=np.float64)
        if "tile_probability" in rows[0]:
            batch["tile_probability"] = np.array([r["tile_probability"] for r in rows], dtype=np.float64)
        for key, value in batch.items():
            columns.setdefault(key, []).append(value)
    if not columns:
        raise DataError(f"{records_dir}: split {split!r} holds no record")
    return {key: np.concatenate(parts) for key, parts in columns.items()}


# --- scores ------------------------------------------------------------------------------


def _clusters(patient_ids: np.ndarray) -> tuple[np.ndarray, int]:
    """Index of each item's patient in the sorted patient list, and the patient count."""
    patients = sorted(set(patient_ids.tolist()), key=_patient_sort_key)
    index = {p: i for i, p in enumerate(patients)}
    return np.array([index[p] for p in patient_ids.tolist()], dtype=np.int64), len(patients)


def _tile_auc(
    labels: np.ndarray, scores: np.ndarray, patient_ids: np.ndarray, n_bags: int,
    bootstrap: int, seed: int,
) -> Dict[str, Any]:
    """AUC of tile scores vs patch labels with a patient-cluster bootstrap interval."""
    clusters, n_patients = _clusters(patient_ids)
    entry: Dict[str, Any] = {
        "value": roc_auc(labels, scores), "ci_low": None, "ci_high": None, "bootstrap_valid": 0,
        "reason": None, "n_bags": int(n_bags), "n_tiles": int(labels.size),
        "n_positive_tiles": int((labels == 1).sum()), "n_negative_tiles": int((labels == 0).sum()),
        "n_patients": n_patients,
    }
    if entry["value"] is None:
        entry["reason"] = "AUC needs both IDC-positive and IDC-negative patches"
        return entry
    entry["reason"] = interval_unavailable(bootstrap, n_patients)
    if entry["reason"] is None:
        # Per-patient counts at every score level; each resample's AUC is a matrix product.
        statistics = cluster_sums(labels, scores, np.zeros_like(labels), clusters, n_patients)
        weights = patient_bootstrap_weights(n_patients, bootstrap, seed)
        fill_interval(entry, metrics_for_weights(weights, statistics)["auc"], CONFIDENCE,
                      _AUC_UNDEFINED)
    return entry


def _within_bag_auc(
    attention: np.ndarray, patch_labels: np.ndarray, patient_ids: np.ndarray, bootstrap: int, seed: int,
) -> Dict[str, Any]:
    """Mean per-bag AUC over bags with both classes, with a patient-cluster interval."""
    aucs, kept = [], []
    for index in range(len(attention)):
        present = patch_labels[index] != MISSING
        value = roc_auc(patch_labels[index][present], attention[index][present])
        if value is not None:  # None: only one class among the bag's patches
            aucs.append(value)
            kept.append(index)
    aucs_array, kept_array = np.array(aucs, dtype=np.float64), np.array(kept, dtype=np.int64)
    clusters, n_patients = _clusters(patient_ids[kept_array])
    present = patch_labels[kept_array] != MISSING
    entry: Dict[str, Any] = {
        "value": float(aucs_array.mean()) if aucs else None, "ci_low": None, "ci_high": None,
        "bootstrap_valid": 0, "reason": None, "n_bags": len(aucs), "n_tiles": int(present.sum()),
        "n_positive_tiles": int((patch_labels[kept_array][present] == 1).sum()),
        "n_negative_tiles": int((patch_labels[kept_array][present] == 0).sum()),
        "n_patients": n_patients,
        "n_positive_bags_without_both_classes": int(len(attention) - len(aucs)),
    }
    if not aucs:
        entry["reason"] = "no positive bag holds both IDC-positive and IDC-negative patches"
        return entry
    entry["reason"] = interval_unavailable(bootstrap, n_patients)
    if entry["reason"] is None:
        # Resampled mean of bag AUCs = (W @ per-patient AUC sums) / (W @ per-patient bag counts).
        sums = np.bincount(clusters, weights=aucs_array, minlength=n_patients)
        counts = np.bincount(clusters, minlength=n_patients).astype(np.float64)
        weights = patient_bootstrap_weights(n_patients, bootstrap, seed)
        total, number = weights @ sums, weights @ counts
        draws = np.full(len(weights), np.nan)
        np.divide(total, number, out=draws, where=number > 0)
        fill_interval(entry, draws, CONFIDENCE, _AUC_UNDEFINED)
    return entry


def localisation_scores(bags: Mapping[str, np.ndarray], bootstrap: int = 1000, seed: int = 0) -> Dict[str, Any]:
    """Patch-level AUCs of MIL attention against the IDC patch labels.

    Tiles whose cell holds no patch (patch label -1) are left out everywhere.

    - "pooled": every present tile of every POSITIVE bag, AUC of its attention vs its
      patch label. Attention is normalised per bag (it sums to 1 over the bag's tissue
      tiles), so this AUC compares tiles ACROSS bags: a bag with few tissue tiles gives
      each a larger weight, and a bag with only positive patches contributes only
      positives. It asks "is attention higher on positive patches in general". A bag
      with a single patch gives it attention 1 whatever the model thinks (on IDC with
      K = 2 about a quarter of the bags), so sparse regions at tissue edges rank high
      here and in "whole_slide"; "within_bag" is free of this.
    - "within_bag": mean over positive bags holding both positive and negative patches
      of the bag's own AUC (attention ranks within one bag only; free of the per-bag
      normalisation). The interval resamples patients, weighting their bags.
    - "whole_slide": attention x bag probability as a patch score over ALL bags
      (positive and negative): a whole-slide patch-level AUC, where the bag probability
      carries the between-region evidence and attention the within-region one.

    Intervals: 95 % percentile patient-cluster bootstrap (patients drawn with
    replacement, all their bags kept; `evaluation.patient_bootstrap_weights`); resamples
    in which an AUC is undefined are left out and counted in "bootstrap_valid".

    Args:
      bags: from `predict_bags` (needs "attention", "patch_labels", "label",
        "probability", "patient_id").
      bootstrap: resamples (0 = no intervals).
      seed: seed of the resampling.

    Returns:
      {"pooled", "within_bag", "whole_slide"}: each {"value", "ci_low", "ci_high",
      "bootstrap_valid", "reason", "n_bags", "n_tiles", "n_positive_tiles",
      "n_negative_tiles", "n_patients"} (value None with a reason when undefined), plus
      "bootstrap" (method, resamples, seed, confidence), "n_bags" and "n_patients" of all
      bags.

    Raises:
      ValueError: inconsistent array shapes.
    """
    attention = np.asarray(bags["attention"], dtype=np.float64)
    patch_labels = np.asarray(bags["patch_labels"], dtype=np.int64)
    bag_labels = np.asarray(bags["label"], dtype=np.int64).ravel()
    probability = np.asarray(bags["probability"], dtype=np.float64).ravel()
    patient_ids = np.asarray(bags["patient_id"]).astype(str).ravel()
    n = len(bag_labels)
    if attention.shape != patch_labels.shape or attention.ndim != 2 or attention.shape[0] != n \
            or probability.size != n or patient_ids.size != n:
        raise ValueError(f"inconsistent bag arrays: attention {attention.shape}, patch_labels "
                         f"{patch_labels.shape}, {n} labels, {probability.size} probabilities, "
                         f"{patient_ids.size} patient ids")
    present = patch_labels != MISSING
    tile_patients = np.broadcast_to(patient_ids[:, None], patch_labels.shape)
    positive = bag_labels == 1

    pooled_mask = present & positive[:, None]
    pooled = _tile_auc(patch_labels[pooled_mask], attention[pooled_mask], tile_patients[pooled_mask],
                       int(positive.sum()), bootstrap, seed)
    within = _within_bag_auc(attention[positive], patch_labels[positive], patient_ids[positive],
                             bootstrap, seed)
    slide_scores = attention * probability[:, None]
    whole = _tile_auc(patch_labels[present], slide_scores[present], tile_patients[present], n, bootstrap, seed)
    return {
        "pooled": pooled,
        "within_bag": within,
        "whole_slide": whole,
        "bootstrap": {
            "method": "cluster (patient) percentile bootstrap: patients resampled with "
                      "replacement, all their bags kept",
            "resamples": int(bootstrap), "seed": int(seed), "confidence": CONFIDENCE,
        },
        "n_bags": n,
        "n_patients": len(set(patient_ids.tolist())),
    }


# --- slide heat-maps ----------------------------------------------------------------------


def _safe_name(patient: str) -> str:
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


def patches_as_bags(scores: Sequence[float], labels: Sequence[int], patient_ids: Sequence[str],
                    xs: Sequence[int], ys: Sequence[int], region_patches: int) -> Dict[str, np.ndarray]:
    """Per-patch scores regrouped into the region bags `ingest --bag-size K` would make.

    So that a patch model's scores (e.g. `histopath evaluate`'s per-image probabilities) are
    scored by `localisation_scores` on the same regions as the MIL's attention: each patch
    goes to its region's cell (`data.bags` geometry), a region's label is 1 if any of its
    patches is positive.

    Args:
      scores: per patch.
      labels: per patch, 0 / 1.
      patient_ids: per patch.
      xs: per patch, its slide x offset in pixels (from the IDC file name).
      ys: likewise y.
      region_patches: K.

    Returns:
      {"attention": the scores `(n, K*K)` (0 where no patch), "patch_labels" (-1 where no
      patch), "label", "probability" (1.0: no region score), "patient_id", "origin_x",
      "origin_y"}, regions sorted by (patient, row, column).

    Raises:
      ValueError: inputs of different lengths, or two patches in one cell.
    """
    if not len(scores) == len(labels) == len(patient_ids) == len(xs) == len(ys):
        raise ValueError("scores, labels, patient ids and positions must be of one length")
    cells: Dict[tuple, Dict[int, tuple]] = {}
    for score, label, patient, x, y in zip(scores, labels, patient_ids, xs, ys):
        column, row = bag_geometry.region_key(int(x), int(y), bag_geometry.IDC_PATCH_SIZE, region_patches)
        cell_column, cell_row = bag_geometry.cell_in_region(int(x), int(y), bag_geometry.IDC_PATCH_SIZE,
                                                            region_patches)
        region = cells.setdefault((str(patient), row, column), {})
        index = cell_row * region_patches + cell_column
        if index in region:
            raise ValueError(f"patient {patient}: two patches in the cell of ({x}, {y})")
        region[index] = (float(score), int(label))
    keys = sorted(cells, key=lambda key: (_patient_sort_key(key[0]), key[1], key[2]))
    attention = np.zeros((len(keys), region_patches * region_patches))
    patch_labels = np.full(attention.shape, MISSING, dtype=np.int64)
    for row_index, key in enumerate(keys):
        for index, (score, label) in cells[key].items():
            attention[row_index, index], patch_labels[row_index, index] = score, label
    origins = [bag_geometry.region_origin((column, row), bag_geometry.IDC_PATCH_SIZE, region_patches)
               for _, row, column in keys]
    return {"attention": attention, "patch_labels": patch_labels,
            "label": (patch_labels == 1).any(axis=1).astype(np.int64), "probability": np.ones(len(keys)),
            "patient_id": np.array([key[0] for key in keys]),
            "origin_x": np.array([x for x, _ in origins], np.int64),
            "origin_y": np.array([y for _, y in origins], np.int64)}


def tile_slide_context(tile_scores: np.ndarray, patch_labels: np.ndarray, patient_ids: Sequence[str],
                       origin_x: Sequence[int], origin_y: Sequence[int], sigma: float) -> np.ndarray:
    """Tile scores averaged over each patient's slide: slide context for the tiles of bags.

    Every present tile (patch label not -1) of the patient's bags given is a neighbour,
    negative bags included; `slide_context.smooth_slide_scores` does the averaging, with
    `sigma` in tile (patch) widths.

    Args:
      tile_scores: `(n, K*K)` per-tile scores, row-major (e.g. `tile_probability`).
      patch_labels: `(n, K*K)`, -1 where the cell has no patch.
      patient_ids: per bag.
      origin_x: per bag, its region origin in slide pixels (`predict_bags`' "origin_x").
      origin_y: likewise y.
      sigma: Gaussian width in tiles (> 0).

    Returns:
      float64 `(n, K*K)`: the averaged scores; 0 where the cell has no patch.

    Raises:
      ValueError: inconsistent shapes or a non-square tile grid.
    """
    from histopath.evaluation import slide_context

    scores = np.asarray(tile_scores, dtype=np.float64)
    labels = np.asarray(patch_labels)
    grid = int(round(math.sqrt(scores.shape[1]))) if scores.ndim == 2 else 0
    if scores.shape != labels.shape or grid * grid != scores.shape[1] or len(patient_ids) != scores.shape[0]:
        raise ValueError(f"inconsistent tile arrays: scores {scores.shape}, patch_labels {labels.shape}, "
                         f"{len(patient_ids)} patient ids")
    columns, rows = bag_geometry.tile_cells(origin_x, origin_y, grid)
    present = labels != MISSING
    patients = np.broadcast_to(np.asarray(patient_ids).astype(str)[:, None], labels.shape)
    smoothed = np.zeros(scores.shape)
    smoothed[present] = slide_context.smooth_slide_scores(scores[present], patients[present], columns[present],
                                                          rows[present], float(sigma))
    return smoothed


# What a slide heat-map can show: name in the title strip, file suffix.
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
    patients = sorted(set(patient_ids.tolist()), key=_patient_sort_key)
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
    for batch in _iter_record_batches(records_dir, split, 256):
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


def _json_ready(value: Any) -> Any:
    """NaN/inf floats become None so the JSON stays standard."""
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


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
        write_json(target, _json_ready(result))
        print(f"scores: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
