"""IDC region bags: the records of `histopath ingest --dataset idc --bag-size K`.

One record per K x K region of one patient's slide, with the row-major patch labels of its
cells (`bag_patch_labels`, -1 = no patch). This module reads them (`iter_record_batches`),
runs a MIL model on them (`predict_bags`) and regroups a patch model's per-patch scores into
the same regions (`patches_as_bags`), so that both are scored on the same bags by
`bench.localisation_scoring`.
"""

from __future__ import annotations

import os
from typing import Dict, Iterator, List, Sequence

import histopath  # noqa: F401  (pins Keras 2 before TensorFlow is imported)
import numpy as np

from histopath.data import bags as bag_geometry
from histopath.data import features
from histopath.data.features import patient_sort_key
from histopath.errors import DataError

MISSING = bag_geometry.MISSING_LABEL


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


def iter_record_batches(
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
      model's label at its threshold; -1 where it detected no tissue), "label" `[n]` (bag label), "patient_id" str `[n]`,
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
    for batch in iter_record_batches(records_dir, split, batch_size):
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
        batch["predicted_label"] = np.array([-1 if r["label"] is None else r["label"] for r in rows], dtype=np.int64)
        batch["attention"] = np.array([r["attention"] for r in rows], dtype=np.float64)
        if "tile_probability" in rows[0]:
            batch["tile_probability"] = np.array([r["tile_probability"] for r in rows], dtype=np.float64)
        for key, value in batch.items():
            columns.setdefault(key, []).append(value)
    if not columns:
        raise DataError(f"{records_dir}: split {split!r} holds no record")
    return {key: np.concatenate(parts) for key, parts in columns.items()}


def patches_as_bags(scores: Sequence[float], labels: Sequence[int], patient_ids: Sequence[str],
                    xs: Sequence[int], ys: Sequence[int], region_patches: int) -> Dict[str, np.ndarray]:
    """Per-patch scores regrouped into the region bags `ingest --bag-size K` would make.

    So that a patch model's scores (e.g. `histopath evaluate`'s per-image probabilities) are
    scored by `localisation_scoring.localisation_scores` on the same regions as the MIL's
    attention: each patch goes to its region's cell (`data.bags` geometry), a region's label
    is 1 if any of its patches is positive.

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
    keys = sorted(cells, key=lambda key: (patient_sort_key(key[0]), key[1], key[2]))
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
