"""What the zoomable viewer loads: Deep Zoom tiles read from the slide, and the heat-map
overlay (tile probabilities on a transparent image the size of the slide's thumbnail).

Deep Zoom tiles come from `openslide.deepzoom.DeepZoomGenerator` over the slide file,
whole (`limit_bounds=False`), so the overlay, drawn in level-0 coordinates, lies exactly
over it. Open slides are kept per process (a few, least recently used first out);
OpenSlide reads from several threads at once.
"""

from __future__ import annotations

import collections
import io
import json
import pathlib
import threading
from typing import Any

import numpy as np
from PIL import Image

from histopath import fileio

TILE_SIZE = 254
OVERLAP = 1
TILE_FORMAT = "jpeg"
JPEG_QUALITY = 80
OPEN_SLIDES = 8  # slides kept open per process
OVERLAY_MAX_SIDE = 2048  # the heat-map overlay's longer side, in pixels
OVERLAY_NAME = "overlay.png"


class SlideGone(Exception):
    """The slide file cannot be opened any more (deleted or damaged since it was checked)."""


class _Generators:
    """Deep Zoom generators of the slides opened last."""

    def __init__(self, size: int):
        self.size = size
        self._open: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str):
        import openslide
        from openslide.deepzoom import DeepZoomGenerator

        with self._lock:
            if path in self._open:
                self._open.move_to_end(path)
                return self._open[path]
            try:
                handle = openslide.OpenSlide(path)
            except (openslide.OpenSlideError, OSError) as error:
                raise SlideGone(f"{path}: {error}") from None
            generator = DeepZoomGenerator(handle, tile_size=TILE_SIZE, overlap=OVERLAP, limit_bounds=False)
            self._open[path] = generator
            while len(self._open) > self.size:
                self._open.popitem(last=False)  # the OpenSlide handle closes when collected
            return generator


_generators = _Generators(OPEN_SLIDES)


def dzi_xml(path: str) -> str:
    """The slide's Deep Zoom descriptor (.dzi)."""
    return _generators.get(path).get_dzi(TILE_FORMAT)


def tile_jpeg(path: str, level: int, column: int, row: int) -> bytes:
    """One Deep Zoom tile as JPEG.

    Raises:
      ValueError: no such level or tile.
    """
    generator = _generators.get(path)
    if not 0 <= level < generator.level_count:
        raise ValueError(f"no Deep Zoom level {level}")
    columns, rows = generator.level_tiles[level]
    if not (0 <= column < columns and 0 <= row < rows):
        raise ValueError(f"no tile ({column}, {row}) at level {level}")
    tile = generator.get_tile(level, (column, row)).convert("RGB")
    buffer = io.BytesIO()
    tile.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def overlay_image(width: int, height: int, tiles: list[dict], max_side: int = OVERLAY_MAX_SIDE) -> Image.Image:
    """Tile probabilities in the model heat-map colours on a transparent RGBA image with
    the slide's proportions (longer side `max_side` at most); nothing where no tile was called."""
    from matplotlib import colormaps

    from histopath.models.heatmap import COLORMAP, OVERLAY_ALPHA

    scale = min(1.0, max_side / max(width, height))
    out = np.zeros((max(1, round(height * scale)), max(1, round(width * scale)), 4), np.uint8)
    colours = colormaps[COLORMAP]
    alpha = int(round(255 * OVERLAY_ALPHA))
    for tile in tiles:
        x0, y0 = int(tile["x"] * scale), int(tile["y"] * scale)
        x1 = max(x0 + 1, int((tile["x"] + tile["size"]) * scale))
        y1 = max(y0 + 1, int((tile["y"] + tile["size"]) * scale))
        red, green, blue = (np.asarray(colours(float(np.clip(tile["probability"], 0, 1)))[:3]) * 255).round()
        out[y0:y1, x0:x1] = (red, green, blue, alpha)
    return Image.fromarray(out, "RGBA")


def write_overlay(output_dir: str) -> pathlib.Path:
    """Renders `overlay.png` beside a called slide's `slide.json` (write-then-rename)."""
    folder = pathlib.Path(output_dir)
    answer = json.loads((folder / "slide.json").read_text(encoding="utf-8"))
    image = overlay_image(answer["width"], answer["height"], answer["tiles"])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    fileio.write_bytes(str(folder / OVERLAY_NAME), buffer.getvalue())
    return folder / OVERLAY_NAME
