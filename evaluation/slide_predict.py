"""`histopath predict` on whole slides: tiles in microns through the pushed model, a slide
answer, and what a pathologist opens.

A slide is read (`histopath.slides`), its tissue found and its tiles cut at the model's
scale (`histopath.tiling`): `tile_um = model µm/px × tile_px`, so a model trained on IDC
patches (50 px at about 4 µm/px, 200 µm) sees 200 µm tiles from any scanner. Each batch of
tiles is brought to `tile_px` with the project's one resize (`image_ops.resize_and_scale`),
encoded losslessly and sent through `serving_default` (`exported.predict_bytes`), exactly as
an uploaded image is.

The slide answer aggregates its tile probabilities as the model's Trainer chose on held-out
patients (`evaluation.slide_calling`, `model_info["slide_aggregation"]`, with its own slide
threshold); a model without that choice: the mean of the top 5 % of its tiles (at least
one), labelled at the model's decision threshold, so a slide is malignant when its most
suspicious region is, however much benign tissue surrounds it. The answer and every tile
carry `uncertainty` and `not_sure` as the exported model gives them for an image (the
model's "not sure" band; a slide aggregation with a threshold of its own has no band, so
its slide answer is never "not sure", and `abstention_band` says which band applied).

Per slide, under `OUTPUT/<slide id>/`: `slide.json` (the answer, the tiles' summary, QC
counts, scale), `heatmap.png` (tile probabilities over a thumbnail), `tissue.png` (the
tissue mask and the tiles dropped by QC) and `tiles.geojson` (one polygon per called tile
in level-0 pixels, probability as a measurement: QuPath's File > Import objects).
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
from PIL import Image

from histopath import fileio, images, slides, tiling
from histopath.errors import ConfigError, DataError
from histopath.models import abstention

IDC_MODEL_MPP = 4.0  # µm/px assumed for a model trained on IDC patches without "mpp" in model_info
IDC_TILE_PX = 50  # IDC patch side: the pixels such a model was trained on
PREFETCH_BATCHES = 2  # batches read ahead of the model
_BENIGN_COLOUR, _MALIGNANT_COLOUR = (60, 160, 60), (200, 30, 30)


PredictFn = Callable[[List[bytes], List[str]], List[Dict[str, Any]]]
ProgressFn = Callable[[int, int], None]


@dataclasses.dataclass(frozen=True)
class TileModel:
    """A model reached some other way than in this process (e.g. the web app's backend,
    which may be a TF Serving endpoint), called batch by batch like an exported model.

    Attributes:
      model_info: what the model says of itself (scale, threshold, label names).
      model_name, model_version: who answers, for the outputs.
      predict: (encoded tiles, their names) -> one row per tile as `exported.predict_bytes`
        answers ("probability", "tissue_detected", ...).
    """

    model_info: Dict[str, Any]
    model_name: str
    model_version: str
    predict: PredictFn


@dataclasses.dataclass(frozen=True)
class ModelScale:
    """The physical scale a model expects.

    Attributes:
      mpp: microns per pixel of its training images.
      tile_px: pixels a tile is brought to before the model's own resize.
      source: where the figures came from ("model_info", "caller", or the assumption).
    """

    mpp: float
    tile_px: int
    source: str

    @property
    def tile_um(self) -> float:
        """The tile's side in microns."""
        return self.mpp * self.tile_px


def model_scale(info: Dict[str, Any], model_mpp: Optional[float] = None, tile_px: Optional[int] = None) -> ModelScale:
    """The scale to tile at: the caller's figures, else model_info's "mpp" and "tile_px",
    else for an IDC model the IDC patches' (50 px at about 4 µm/px).

    Raises:
      ConfigError: a model that says nothing of its scale and no `model_mpp` given.
    """
    from histopath.models.exported import model_image_size

    default_px = model_image_size(info) if info.get("image_size") else IDC_TILE_PX
    if model_mpp is not None:
        return ModelScale(float(model_mpp), int(tile_px or info.get("tile_px") or default_px), "caller")
    if info.get("mpp"):
        return ModelScale(float(info["mpp"]), int(tile_px or info.get("tile_px") or default_px), "model_info")
    if info.get("dataset") == "idc":
        return ModelScale(IDC_MODEL_MPP, int(tile_px or IDC_TILE_PX),
                          "assumed: an IDC model sees 50 px patches at about 4 µm/px (40x downsampled 16:1)")
    raise ConfigError(f"model {info.get('model_name', '?')} (dataset {info.get('dataset') or 'unknown'}) does not "
                      "say the microns per pixel of its training images: pass --model-mpp (and --tile-px)")


def tile_inputs(batch: List[tiling.Tile], tile_px: int) -> List[bytes]:
    """PNG bytes of the tiles, each brought to `tile_px` by `image_ops.resize_and_scale`."""
    pixels = np.stack([tile.pixels for tile in batch])
    if pixels.shape[1] != tile_px:
        from histopath.models import image_ops

        resized = image_ops.resize_and_scale(pixels, tile_px).numpy()
        pixels = np.rint(resized * 255.0).astype(np.uint8)
    return [images.encode_png(Image.fromarray(p)) for p in pixels]


def _prepared_batches(tiler: tiling.Tiler, batch_size: int) -> Iterator[tuple[List[tiling.Tile], List[bytes]]]:
    """(tiles, model inputs) batch by batch, read and encoded by a background thread while the
    model runs on the previous batch (TensorFlow releases the GIL); at most `PREFETCH_BATCHES`
    batches wait, so memory stays bounded."""
    pending: queue.Queue = queue.Queue(maxsize=PREFETCH_BATCHES)
    stop = threading.Event()

    def offer(item: Any) -> bool:
        """Queues `item` unless the caller has stopped; False once it has."""
        while not stop.is_set():
            try:
                pending.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in tiling.batches(iter(tiler), batch_size):
                if not offer((batch, tile_inputs(batch, tiler.grid.tile_px))):
                    return
            offer(None)
        except BaseException as error:  # re-raised in the caller's thread
            offer(error)

    worker = threading.Thread(target=produce, name=f"tiles-{tiler.slide.slide_id}", daemon=True)
    worker.start()
    try:
        while (item := pending.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()


def call_tiles(loaded, tiler: tiling.Tiler, batch_size: int = 64,
               progress: Optional[ProgressFn] = None) -> Iterator[Dict[str, Any]]:
    """Runs the model on a slide's tiles, batch by batch (the next batch read meanwhile).

    Args:
      loaded: an `exported.ServingModel` or a `TileModel`.
      tiler: the slide's tiles.
      batch_size: tiles per model call.
      progress: called after each batch with (tiles done, tiles on tissue): called or
        dropped by QC, of all the grid cells on the tissue mask.

    Yields:
      Per called tile: x, y, size, column, row, tissue_fraction, probability,
      tissue_detected (the model's own no-tissue answer).

    Raises:
      SlideError: a tile cannot be read (the message names the slide).
    """
    from histopath.models import exported

    if isinstance(loaded, TileModel):
        predict = loaded.predict
    else:
        def predict(inputs: List[bytes], names: List[str]) -> List[Dict[str, Any]]:
            return exported.predict_bytes(loaded, inputs, names=names)
    total, called = len(tiler.candidates()[0]), 0
    for batch, inputs in _prepared_batches(tiler, batch_size):
        names = [f"{tiler.slide.path} tile ({t.x}, {t.y})" for t in batch]
        rows = predict(inputs, names)
        called += len(batch)
        if progress is not None:  # the tiles QC dropped so far count as done
            progress(min(total, called + len(tiler.dropped)), total)
        for tile, row in zip(batch, rows):
            yield {"x": tile.x, "y": tile.y, "size": tile.size, "column": tile.column, "row": tile.row,
                   "tissue_fraction": round(tile.tissue_fraction, 4), "probability": row["probability"],
                   "tissue_detected": bool(row.get(exported.TISSUE_DETECTED, True))}


def heatmap_image(thumbnail: np.ndarray, scale: float, tiles: Sequence[Dict[str, Any]]) -> Image.Image:
    """Tile probabilities (0 to 1, the model heat-map colours) blended over the thumbnail;
    glass and dropped tiles left as they are."""
    from matplotlib import colormaps

    from histopath.models.heatmap import COLORMAP, OVERLAY_ALPHA

    out = thumbnail.astype(np.float32) / 255.0
    colours = colormaps[COLORMAP]
    height, width = out.shape[:2]
    for tile in tiles:
        x0, y0 = int(tile["x"] * scale), int(tile["y"] * scale)
        x1 = min(width, max(x0 + 1, int((tile["x"] + tile["size"]) * scale)))
        y1 = min(height, max(y0 + 1, int((tile["y"] + tile["size"]) * scale)))
        colour = np.asarray(colours(float(np.clip(tile["probability"], 0, 1)))[:3], np.float32)
        out[y0:y1, x0:x1] = (1 - OVERLAY_ALPHA) * out[y0:y1, x0:x1] + OVERLAY_ALPHA * colour
    return Image.fromarray(np.clip(out * 255 + 0.5, 0, 255).astype(np.uint8))


def tiles_geojson(tiles: Sequence[Dict[str, Any]], threshold: float, label_names: Sequence[str]) -> Dict[str, Any]:
    """A GeoJSON FeatureCollection QuPath imports: one square per tile, level-0 pixels,
    classified at the model's threshold, with probability and tissue fraction as measurements."""
    features = []
    for tile in tiles:
        x, y, s = tile["x"], tile["y"], tile["size"]
        label = int(tile["probability"] >= threshold)
        features.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [[[x, y], [x + s, y], [x + s, y + s], [x, y + s], [x, y]]]},
            "properties": {
                "objectType": "tile",
                "classification": {"name": label_names[label],
                                   "color": list(_MALIGNANT_COLOUR if label else _BENIGN_COLOUR)},
                "measurements": {"probability": round(tile["probability"], 6),
                                 "tissue_fraction": tile["tissue_fraction"]},
            },
        })
    return {"type": "FeatureCollection", "features": features}


def slide_band(tile_band: Optional[Dict[str, float]], slide_threshold: float,
               tile_threshold: float) -> Optional[Dict[str, float]]:
    """The "not sure" band of a slide score: the model's band (chosen by cross-validation
    around its threshold) when the slide is called at that same threshold; None when the
    slide aggregation has a threshold of its own, for which no band was chosen."""
    return tile_band if abs(slide_threshold - tile_threshold) <= 1e-9 else None


def how_sure(probability: Optional[float], threshold: float,
             band: Optional[Dict[str, float]]) -> Dict[str, Any]:
    """`uncertainty` (1 at the threshold, 0 at 0 or 1) and `not_sure` (inside the band) of
    one answer, as the exported model gives them; None without a probability."""
    if probability is None:
        return {"uncertainty": None, "not_sure": None}
    return {"uncertainty": round(float(abstention.uncertainty(probability, threshold)), 6),
            "not_sure": bool(abstention.not_sure(probability, band))}


def _write_png(image: Image.Image, path: str) -> None:
    fileio.write_bytes(path, images.encode_png(image))


def predict_slide(loaded, path: str, output: str, *, mpp: Optional[float] = None, scale: ModelScale,
                  batch_size: int = 64, top_fraction: Optional[float] = None,
                  min_tissue: float = tiling.MIN_TISSUE_FRACTION,
                  progress: Optional[ProgressFn] = None) -> Dict[str, Any]:
    """Calls one slide and writes its outputs under `output/<slide id>/`.

    Args:
      loaded: an `exported.ServingModel` or a `TileModel`.
      path: the slide (local or URI).
      output: the run's output folder.
      mpp: the slide's microns per pixel when its file does not say.
      scale: the model's (`model_scale`).
      batch_size: tiles per model call.
      top_fraction: given: the slide score is the mean of this share of the highest tile
        probabilities; None: the model's aggregation (`slide_calling.model_aggregation`).
      min_tissue: least share of a tile on the tissue mask.
      progress: see `call_tiles`; called once more with (N, N) when every tile is done.

    Returns:
      The slide answer (what `slide.json` holds, without the per-tile rows).

    Raises:
      SlideError / DataError: the slide cannot be read (the message names it).
    """
    from histopath.models import exported

    started = time.monotonic()
    info = loaded.model_info
    threshold = float(info.get("decision_threshold", 0.5))
    label_names = info.get("label_names") or ["benign", "malignant"]
    with slides.open_slide(path, mpp=mpp) as slide:
        tiler = tiling.Tiler(slide, scale.tile_um, scale.tile_px, min_tissue=min_tissue)
        tiles = [t for t in call_tiles(loaded, tiler, batch_size, progress) if t["tissue_detected"]]
        described = slide.describe()
        if progress is not None:
            total = len(tiler.candidates()[0])
            progress(total, total)
    from histopath.evaluation.slide_calling import model_aggregation

    aggregation = model_aggregation(info, top_fraction)
    score = aggregation.score([t["probability"] for t in tiles])
    label = None if score is None else int(score >= aggregation.threshold)
    tile_band = abstention.band_of(info.get("abstention"))
    for tile in tiles:
        tile.update(how_sure(tile["probability"], threshold, tile_band))
    band = slide_band(tile_band, aggregation.threshold, threshold)
    folder = fileio.join(output, described["slide_id"])
    outputs = {name: fileio.join(folder, name) for name in ("slide.json", "heatmap.png", "tissue.png", "tiles.geojson")}
    _write_png(heatmap_image(tiler.tissue.thumbnail, tiler.tissue.scale, tiles), outputs["heatmap.png"])
    from histopath.tissue import mask_overlay

    _write_png(mask_overlay(tiler.tissue.thumbnail, tiler.tissue.mask, tiler.dropped, tiler.tissue.scale),
               outputs["tissue.png"])
    fileio.write_json(outputs["tiles.geojson"], tiles_geojson(tiles, threshold, label_names), indent=None)
    answer = {
        **described, "probability": score, "label": label,
        "label_name": exported.NO_TISSUE if label is None else label_names[label],
        "aggregation": aggregation.describe(), "aggregation_source": aggregation.source,
        "decision_threshold": aggregation.threshold, "tile_threshold": threshold,
        **how_sure(score, aggregation.threshold, band), "abstention_band": band,
        "tiles_called": len(tiles), "qc": tiler.counts.as_dict(),
        "tile_um": scale.tile_um, "tile_px": scale.tile_px, "tile_mpp": tiler.grid.mpp,
        "read_level": tiler.grid.level, "model_scale_source": scale.source,
        "seconds": round(time.monotonic() - started, 2), "outputs": outputs,
        **_model_names(loaded),
    }
    fileio.write_json(outputs["slide.json"], {**answer, "tiles": tiles})
    return answer


def _model_names(loaded) -> Dict[str, Any]:
    """model_name and model_version of an exported model or a `TileModel`."""
    if isinstance(loaded, TileModel):
        return {"model_name": loaded.model_name, "model_version": loaded.model_version}
    from histopath.models import exported

    return {key: value for key, value in exported.describe(loaded).items() if key in ("model_name", "model_version")}


def predict_slides(model_dir: str, paths: Sequence[str], output: str, *, mpp: Optional[float] = None,
                   model_mpp: Optional[float] = None, tile_px: Optional[int] = None, batch_size: int = 64,
                   top_fraction: Optional[float] = None) -> Iterator[Dict[str, Any]]:
    """Calls slides one after the other; a slide that cannot be read yields {"slide", "error"}.

    Raises:
      DataError: the model folder holds no exported model.
      ConfigError: the model's scale is unknown and `model_mpp` is not given.
    """
    from histopath.models import exported

    loaded = exported.load(model_dir)
    scale = model_scale(loaded.model_info, model_mpp, tile_px)
    for path in paths:
        try:
            yield predict_slide(loaded, os.fspath(path), output, mpp=mpp, scale=scale, batch_size=batch_size,
                                top_fraction=top_fraction)
        except (DataError, ConfigError) as error:
            yield {"slide": os.fspath(path), "error": str(error)}
