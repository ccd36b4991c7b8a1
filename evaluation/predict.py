"""Runs a pushed model on image files: `histopath predict` and the prediction step of
`histopath evaluate`.

Images go through the exported `serving_default` signature (`exported.predict_bytes`), so
the graph does its own decoding and resizing exactly as at serving time. Each file is
first read with `histopath.images`: a corrupt, truncated, giant or
non-image file becomes an error naming the file instead of stopping the other images, and
TIFF/WebP files are re-encoded losslessly to PNG (the graph decodes PNG/JPEG/BMP/GIF only).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import tempfile
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence

from histopath.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

PREDICT_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")  # picked up inside folders
HEATMAP_MAX_SIDE = 2048  # longest side of a written heat-map (larger images are scaled down)


def read_model_input(path: str | os.PathLike, keep_image: bool = False):
    """Reads one image file and returns the bytes to send to the model.

    Args:
      path: the file.
      keep_image: also return the decoded RGB Pillow image (for heat-maps).

    Returns:
      `(encoded_bytes, image_or_None)`: the file as it is when the serving graph decodes
      its format natively, else (TIFF, WebP, 16-bit, CMYK) a lossless PNG re-encoding.

    Raises:
      DataError: unreadable, not an image, corrupt/truncated or too large; the message
        names the file.
    """
    from histopath import images

    try:
        data = pathlib.Path(path).read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error})") from None
    try:
        decoded = images.decode(data)  # the header first, then every pixel, by its real range
    except images.ImageError as error:
        raise DataError(f"{path}: {error}") from None
    encoded, image = images.model_bytes(data, decoded), decoded.rgb
    return encoded, (image if keep_image else None)


@dataclasses.dataclass
class ImageOutcome:
    """The model's answer for one file, or why there is none.

    Attributes:
      path: the file.
      prediction: `exported.predict_bytes` row ("probability", "label", "label_name", and
        for MIL "attention", "grid_shape"); None on error.
      error: one sentence naming the file and the problem; None on success.
      image: the decoded RGB image when asked for (heat-maps), else None.
    """

    path: str
    prediction: Optional[Dict[str, Any]] = None
    error: Optional[str] = None
    image: Any = None


def predict_files(
    loaded, paths: Sequence[str], batch_size: int = 32, keep_images: bool = False
) -> Iterator[ImageOutcome]:
    """Predicts image files in batches through `serving_default`, in input order.

    A file that cannot be read or decoded yields an outcome with `error` set; the rest of
    its batch is still predicted.

    Args:
      loaded: an `exported.ServingModel`.
      paths: image files.
      batch_size: images per signature call.
      keep_images: attach the decoded Pillow image to each outcome.

    Yields:
      One `ImageOutcome` per path.
    """
    from histopath.models.exported import predict_bytes

    batch_size = max(1, int(batch_size))
    for start in range(0, len(paths), batch_size):
        outcomes = [ImageOutcome(str(p)) for p in paths[start:start + batch_size]]
        ready: List[tuple] = []
        for outcome in outcomes:
            try:
                encoded, outcome.image = read_model_input(outcome.path, keep_image=keep_images)
                ready.append((outcome, encoded))
            except DataError as error:
                outcome.error = str(error)
        if ready:
            try:
                rows = predict_bytes(loaded, [e for _, e in ready], names=[o.path for o, _ in ready])
                for (outcome, _), row in zip(ready, rows):
                    outcome.prediction = row
            except DataError:  # the graph rejected one of them: isolate it
                for outcome, encoded in ready:
                    try:
                        outcome.prediction = predict_bytes(loaded, [encoded], names=[outcome.path])[0]
                    except DataError as error:
                        outcome.error = str(error)
        yield from outcomes


def expand_inputs(paths: Iterable[str | os.PathLike]) -> Iterator[tuple[str, Optional[str]]]:
    """Lists the files to predict: files as given, folders recursively (images only).

    Args:
      paths: files and folders. A named file is used whatever its extension; inside
        folders only .png/.jpg/.jpeg/.tif/.tiff files count (hidden ones are skipped).

    Yields:
      `(path, error)`: error is None, or a sentence when the path does not exist.
    """
    for raw in paths:
        path = os.fspath(raw)
        if os.path.isdir(path):
            found = False
            for root, dirs, files in os.walk(path, followlinks=True):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if not name.startswith(".") and name.lower().endswith(PREDICT_EXTENSIONS):
                        found = True
                        yield os.path.join(root, name), None
            if not found:
                logger.warning("%s: no image files (%s) in this folder", path, ", ".join(PREDICT_EXTENSIONS))
        elif os.path.isfile(path):
            yield path, None
        else:
            yield path, f"{path}: no such file or folder"


def _unique_heatmap_path(heatmap_dir: pathlib.Path, source: str, used: set) -> pathlib.Path:
    stem = pathlib.Path(source).stem
    candidate, counter = f"{stem}.heatmap.png", 1
    while candidate in used:
        counter += 1
        candidate = f"{stem}-{counter}.heatmap.png"
    used.add(candidate)
    return heatmap_dir / candidate


def write_heatmap(image, attention: Sequence[float], grid_shape: Sequence[int], path: pathlib.Path,
                  absolute: bool = False) -> None:
    """Writes the attention overlay of one image as PNG (temp name, then rename).

    Uses the web app's renderer (`serving/webapp/predictions/heatmap.py`, no Django), so
    the CLI and the web app draw identical heat-maps (image_ops' row-major tile order).
    `absolute`: the values are probabilities (coloured on 0..1, not relative to the largest).
    """
    from histopath.models.heatmap import display_copy, render_overlay

    overlay = render_overlay(display_copy(image, HEATMAP_MAX_SIDE), attention, tuple(grid_shape), absolute)
    save_png_atomically(overlay, path)


def save_png_atomically(image, path: pathlib.Path) -> None:
    """Saves a Pillow image as PNG under a temporary name, then renames it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            image.save(stream, format="PNG")
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def predict_paths(
    model_dir: str | os.PathLike,
    paths: Sequence[str | os.PathLike],
    heatmap_dir: Optional[str | os.PathLike] = None,
    batch_size: int = 16,
) -> Iterator[Dict[str, Any]]:
    """Predicts image files and folders with a pushed model, one result per image.

    Args:
      model_dir: `<name>/<version>` or `<name>` (newest version), see `exported.resolve_version_dir`.
      paths: image files and folders (searched recursively for images).
      heatmap_dir: for MIL models, write `<stem>.heatmap.png` (attention over the image)
        per image here, and `<stem>.tiles.png` (each tile's probability) when the model
        has an instance classifier; ignored with a warning for models without attention.
      batch_size: images per signature call.

    Yields:
      Per image, in input order: {"file", "probability", "label", "label_name",
      "tissue_fraction", "tissue_detected", "uncertainty", "not_sure" (True: "needs a
      pathologist's review", the class is then only a leaning), "model_name",
      "model_version"} (+ "heatmap" and
      "tile_map" paths when written; "label" None and "label_name" "no tissue detected" for
      an image without tissue), or {"file",
      "error", "model_name", "model_version"} for a missing/corrupt/unsupported file.

    Raises:
      DataError: the model folder holds no exported model.
    """
    from histopath.models import exported

    loaded = exported.load(model_dir)
    model = exported.describe(loaded)
    tag = {"model_name": model["model_name"], "model_version": model["model_version"]}
    heatmaps = None
    if heatmap_dir is not None:
        if model["model_kind"] == "mil":
            heatmaps = pathlib.Path(heatmap_dir)
            heatmaps.mkdir(parents=True, exist_ok=True)
        else:
            logger.warning("--heatmap-dir ignored: model %s is %s, it has no attention",
                           model["model_name"], model["model_kind"])
    used_names: set = set()
    pending: List[str] = []

    def flush() -> Iterator[Dict[str, Any]]:
        for outcome in predict_files(loaded, pending, batch_size, keep_images=heatmaps is not None):
            if outcome.error:
                yield {"file": outcome.path, "error": outcome.error, **tag}
                continue
            row = outcome.prediction
            result = {"file": outcome.path, "probability": row["probability"], "label": row["label"],
                      "label_name": row["label_name"], **tag}
            for key in (exported.TISSUE_FRACTION, exported.TISSUE_DETECTED,  # label None without tissue
                        exported.UNCERTAINTY, exported.NOT_SURE):
                if key in row:
                    result[key] = row[key]
            if heatmaps is not None and "attention" in row and row.get(exported.TISSUE_DETECTED, True):
                target = _unique_heatmap_path(heatmaps, outcome.path, used_names)
                try:
                    write_heatmap(outcome.image, row["attention"], row["grid_shape"], target)
                    result["heatmap"] = str(target)
                    if "tile_probability" in row:
                        tiles = target.with_name(target.name.replace(".heatmap.png", ".tiles.png"))
                        write_heatmap(outcome.image, row["tile_probability"], row["grid_shape"], tiles, absolute=True)
                        result["tile_map"] = str(tiles)
                except (OSError, ValueError) as error:
                    result["heatmap_error"] = f"{target}: cannot write heat-map ({error})"
            yield result
        pending.clear()

    for path, error in expand_inputs(paths):
        if error:
            yield from flush()
            yield {"file": path, "error": error, **tag}
            continue
        pending.append(path)
        if len(pending) >= batch_size:
            yield from flush()
    yield from flush()


def slide_context_setting(model_info: Dict[str, Any]) -> Dict[str, Any]:
    """The model's slide-context setting (sigma, grid step, threshold), written by its Trainer.

    Raises:
      ConfigError: the model was trained without one.
    """
    setting = model_info.get("slide_context")
    if not setting:
        raise ConfigError(f"model {model_info.get('model_name', '?')} has no slide-context threshold: train it with "
                          "\"slide_context_sigma\" > 0 in the pipeline config (IDC only)")
    return setting


def add_slide_context(rows: Sequence[Dict[str, Any]], model_info: Dict[str, Any]) -> List[Dict[str, Any]]:
    """`predict_paths` rows of IDC patches, plus each patch's slide-context answer.

    The patches of one patient (from the IDC file names, in any folder) are one slide; each
    successful row gains `context_probability` (`slide_context.smooth_slide_scores` with the
    model's sigma), `context_label` and `context_label_name` (at the model's slide-context
    threshold). A row whose name is not an IDC patch name gets `context_error` instead.

    Raises:
      ConfigError: the model was trained without a slide-context setting.
    """
    from histopath.evaluation import slide_context
    from histopath.data import layouts
    from histopath.data.features import LABEL_NAMES

    setting = slide_context_setting(model_info)
    rows = [dict(row) for row in rows]
    placed = []
    for index, row in enumerate(rows):
        if "error" in row:
            continue
        position = layouts.idc_patch_position(row["file"])
        if position is None:
            row["context_error"] = (f"{row['file']}: not an IDC patch name "
                                    "(<patient>_idx5_x<X>_y<Y>_class<C>.png), so its slide position is unknown")
            continue
        placed.append((index, *position))
    if placed:
        indices, patients, xs, ys = zip(*placed)
        try:
            smoothed = slide_context.smooth_slide_scores(
                [rows[i]["probability"] for i in indices], patients, xs, ys, float(setting["sigma"]),
                setting.get("grid_step"))
        except DataError as error:  # e.g. the same patch given twice
            for i in indices:
                rows[i]["context_error"] = str(error)
            return rows
        threshold = float(setting["decision_threshold"])
        for i, value in zip(indices, smoothed):
            label = int(value >= threshold)
            rows[i].update(context_probability=float(value), context_label=label,
                           context_label_name=LABEL_NAMES[label])
    return rows
