"""The per-shard work of ingestion: read, validate, serialize and write one shard file.

One Beam element is one `ShardTask` (a whole output shard's list of files), so Beam's
per-element cost is paid a few dozen times, not once per image, and no record goes
through a shuffle. With IDC region bags (`ingest --bag-size K`) a task lists regions
(`bags.Region`) instead of files, and each region becomes one record: the mosaic of its
valid patches, PNG-encoded (the only case where ingestion encodes an image). This module imports neither Beam nor TensorFlow: it runs inside each
Beam worker process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
from typing import Optional, Sequence, Union

import numpy as np
from PIL import Image

from histopath import fileio, images
from histopath.data import bags, features
from histopath.data.layouts import ParsedFile
from histopath.data.records import (
    DEFAULT_COMPRESSION_LEVEL,
    GzipTFRecordWriter,
    serialize_example,
)

DEFAULT_MAX_PIXELS = 50_000_000  # larger images are refused as decompression bombs
PROGRESS_DIR = "_progress"  # in the work folder: files done per shard, for the progress bar
SUMMARY_DIR = "_summaries"  # in the work folder: one JSON summary per finished shard
PLAN_DIR = "_plan"  # in the work folder: one JSON file list per shard, written by the driver
_PROGRESS_INTERVAL_S = 0.5


class ImageRejected(ValueError):
    """An image file that cannot go into the data set (message = reason)."""


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    """What reading an image told us.

    Attributes:
      image_format: the format of the stored bytes, lower case ("png", "jpeg", ...: one of
        `images.MODEL_NATIVE_FORMATS`).
      height: in pixels.
      width: in pixels.
      stored: the bytes the record keeps: the file as it is, or (16-bit, float, alpha,
        TIFF...) a lossless PNG of its 8-bit RGB conversion (`histopath.images`).
      rgb: the decoded 8-bit RGB image (Pillow; `np.asarray` gives its pixels).
    """

    image_format: str
    height: int
    width: int
    stored: bytes = b""
    rgb: Optional[Image.Image] = None


@dataclasses.dataclass(frozen=True)
class ShardTask:
    """One Beam element: the files (or IDC region bags) of one output shard.

    Attributes:
      split: split name, also the sub-folder of the output.
      index: shard number within the split.
      count: number of shards of the split.
      files: the items to write, in order, one record each: image files, or
        `bags.Region`s (all items of a task are of one kind).
    """

    split: str
    index: int
    count: int
    files: Sequence[Union[ParsedFile, bags.Region]]

    @property
    def relative_path(self) -> str:
        """Shard path relative to the output folder."""
        return f"{self.split}/data-{self.index:05d}-of-{self.count:05d}.tfrecord.gz"

    @property
    def key(self) -> str:
        """A file-name-safe unique name of the task."""
        return f"{self.split}-{self.index:05d}"


def save_task(task: ShardTask, output: str) -> None:
    """Writes a task's file list to `output/_plan/<key>.json` for `load_task`.

    Beam elements then carry only the task key: shipping ~20k file records through a Beam
    `Create` costs seconds of pickling (measured 8.5 s vs 0.6 s on IDC).
    """
    folder = os.path.join(output, PLAN_DIR)
    os.makedirs(folder, exist_ok=True)
    plan = {"split": task.split, "index": task.index, "count": task.count}
    if task.files and isinstance(task.files[0], bags.Region):
        plan["regions"] = [region.to_dict() for region in task.files]
    else:
        plan["files"] = [dataclasses.asdict(file) for file in task.files]
    _write_atomically(os.path.join(folder, f"{task.key}.json"), json.dumps(plan))


def load_task(key: str, output: str) -> ShardTask:
    """Reads a task written by `save_task`."""
    with open(os.path.join(output, PLAN_DIR, f"{key}.json"), encoding="utf-8") as handle:
        plan = json.load(handle)
    if "regions" in plan:
        files = tuple(bags.Region.from_dict(fields) for fields in plan["regions"])
    else:
        files = tuple(ParsedFile(**fields) for fields in plan["files"])
    return ShardTask(plan["split"], plan["index"], plan["count"], files)


def write_planned_shard(key: str, source: str, output: str, **options) -> dict:
    """`write_shard` for the task saved under `key` in `output` (the Beam step)."""
    return write_shard(load_task(key, output), source, output, **options)


def validate_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Reads an image completely (`histopath.images.decode`: header, every pixel, the
    conversion to 8-bit RGB by its real range) and says what the record keeps.

    Args:
      data: the file's bytes.
      max_pixels: larger images are refused before they are decoded.

    Returns:
      The format and size of the stored bytes, those bytes and the pixels.

    Raises:
      ImageRejected: with the reason.
    """
    if not data:
        raise ImageRejected("empty file (0 bytes)")
    try:
        decoded = images.decode(data, max_pixels=max_pixels)
    except images.ImageError as error:
        raise ImageRejected(str(error)) from None
    stored = images.model_bytes(data, decoded)
    header = decoded.header
    image_format = header.format.lower() if stored is data else "png"
    return ImageInfo(image_format, header.height, header.width, stored, decoded.rgb)


def _read_valid_image(
    file: ParsedFile, source: str, max_pixels: int, skipped: list[list[str]]
) -> ImageInfo | None:
    """The file's image info, or None after appending `[path, reason]` to `skipped`."""
    path = fileio.join(source, *file.relative_path.split("/"))
    try:
        data = fileio.read_bytes(path)
    except Exception as error:  # OSError locally, tf.errors.OpError for a URI
        skipped.append([file.relative_path, f"cannot read file ({getattr(error, 'strerror', None) or error})"])
        return None
    try:
        return validate_image(data, max_pixels)
    except ImageRejected as rejection:
        skipped.append([file.relative_path, str(rejection)])
        return None


def _file_values(
    file: ParsedFile, source: str, max_pixels: int, skipped: list[list[str]]
) -> dict | None:
    """The record of one image file (its bytes as stored), or None if it is skipped."""
    info = _read_valid_image(file, source, max_pixels, skipped)
    if info is None:
        return None
    values = file.feature_values()
    values[features.IMAGE] = info.stored
    values[features.IMAGE_FORMAT] = info.image_format
    values[features.HEIGHT] = info.height
    values[features.WIDTH] = info.width
    return values


def region_values(
    region: bags.Region, source: str, max_pixels: int, skipped: list[list[str]]
) -> dict | None:
    """The record of one IDC region bag, or None if none of its patches is valid.

    Each patch is read and validated like a single-image record (invalid ones are
    appended to `skipped` with their reason and left white), then the valid patches are
    assembled with `bags.assemble_region` and the mosaic is encoded as PNG (lossless).

    Args:
      region: the region and its patch files.
      source: the source folder the files' relative paths start from.
      max_pixels: patches with more pixels are skipped.
      skipped: receives `[path, reason]` of every skipped patch.

    Returns:
      Feature values: the mosaic PNG, its size, label (any patch positive), patient,
      region id as source path, region origin as patch_x/patch_y, the row-major patch
      label grid and the bag size.
    """
    patches: dict[bags.Cell, np.ndarray] = {}
    labels: dict[bags.Cell, int] = {}
    size = region.patch_size
    for file in region.files:
        info = _read_valid_image(file, source, max_pixels, skipped)
        if info is None:
            continue
        if info.height > size or info.width > size:
            skipped.append([file.relative_path, f"patch is {info.width}x{info.height}, larger "
                            f"than the {size}x{size} bag cell"])
            continue
        cell = region.cell(file)
        patches[cell] = np.asarray(info.rgb)
        labels[cell] = file.label
    if not patches:
        return None
    mosaic = bags.assemble_region(patches, region.region_patches, size)
    origin_x, origin_y = region.origin
    return {
        features.IMAGE: images.encode_png(Image.fromarray(np.ascontiguousarray(mosaic), mode="RGB")),
        features.IMAGE_FORMAT: "png",
        features.HEIGHT: mosaic.shape[0],
        features.WIDTH: mosaic.shape[1],
        features.LABEL: bags.bag_label(labels.values()),
        features.PATIENT_ID: region.patient_id,
        features.SOURCE_PATH: region.region_id,
        features.DATASET: region.files[0].dataset,
        features.PATCH_X: origin_x,
        features.PATCH_Y: origin_y,
        features.BAG_PATCH_LABELS: bags.patch_label_grid(labels, region.region_patches),
        features.BAG_SIZE: region.region_patches,
    }


def _write_atomically(path: str, text: str) -> None:
    partial = f"{path}.{os.getpid()}.partial"
    with open(partial, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(partial, path)


def write_shard(
    task: ShardTask,
    source: str,
    output: str,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    compression_level: int = DEFAULT_COMPRESSION_LEVEL,
) -> dict:
    """Writes one shard: every valid file (or region bag) of the task as one
    `tf.train.Example`.

    Args:
      task: the shard's files or regions.
      source: the source folder the files' relative paths start from.
      output: the (temporary) output folder; the shard goes to
        `output/<task.relative_path>`, progress to `output/_progress/<task.key>` and the
        summary to `output/_summaries/<task.key>.json`.
      max_pixels: images with more pixels are skipped.
      compression_level: gzip level of the shard file.

    Returns:
      The summary: {"split", "shard", "examples", "label_counts" (label -> n),
      "patients" (sorted ids), "patient_labels" (id -> highest label), "skipped" ([path,
      reason] pairs), "seconds"}.
    """
    started = time.monotonic()
    for folder in (task.split, PROGRESS_DIR, SUMMARY_DIR):
        os.makedirs(os.path.join(output, folder), exist_ok=True)
    progress_path = os.path.join(output, PROGRESS_DIR, task.key)
    label_counts = {0: 0, 1: 0}
    patients: dict[str, int] = {}  # patient -> highest label of its records
    skipped: list[list[str]] = []
    last_report = 0.0
    shard_path = os.path.join(output, task.relative_path)
    with warnings.catch_warnings(), GzipTFRecordWriter(shard_path, compression_level) as writer:
        # Our own pixel limit decides; PIL's warning for big images would only be noise.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        for done, item in enumerate(task.files):
            now = time.monotonic()
            if now - last_report > _PROGRESS_INTERVAL_S:
                _write_atomically(progress_path, str(done))
                last_report = now
            if isinstance(item, bags.Region):
                values = region_values(item, source, max_pixels, skipped)
            else:
                values = _file_values(item, source, max_pixels, skipped)
            if values is None:
                continue
            writer.write(serialize_example(values))
            label_counts[values[features.LABEL]] += 1
            patient = values[features.PATIENT_ID]
            patients[patient] = max(patients.get(patient, 0), int(values[features.LABEL]))
    _write_atomically(progress_path, str(len(task.files)))
    summary = {
        "split": task.split,
        "shard": task.relative_path,
        "files": len(task.files),
        "examples": writer.records,
        "label_counts": label_counts,
        "patients": sorted(patients),
        "patient_labels": dict(sorted(patients.items())),
        "skipped": skipped,
        "seconds": round(time.monotonic() - started, 3),
        "worker_pid": os.getpid(),
    }
    _write_atomically(
        os.path.join(output, SUMMARY_DIR, f"{task.key}.json"), json.dumps(summary)
    )
    return summary
