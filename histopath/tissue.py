"""Where the tissue is on a slide, and which tiles are good enough to call.

- `tissue_mask`: on a thumbnail, HSV saturation thresholded by Otsu's method (never below
  `MIN_SATURATION`, so a slide of glass stays empty, nor above `MAX_SATURATION_THRESHOLD`,
  so a field of tissue without glass is not cut in two), then a morphological opening and
  closing, holes filled and specks smaller than `MIN_REGION_FRACTION` of the slide removed.
- `tissue_fractions`: the share of each tile's footprint that the mask covers (a summed-area
  table, so any number of tiles costs one pass).
- `tile_problem`: quality control on a tile's pixels: background (glass), pen marks (blue,
  green or black ink) and blur (a low variance of the Laplacian).
- `QcCounts`: per slide, tiles kept and dropped by reason; `mask_overlay`: the thumbnail
  with the mask outlined and the dropped tiles boxed, for people to check.

Arrays are uint8 RGB `(h, w, 3)`; no TensorFlow here (a ground-layer module).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Iterable, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

MIN_SATURATION = 0.07  # HSV saturation below which a pixel is glass whatever Otsu says
MAX_SATURATION_THRESHOLD = 0.20  # above this Otsu is splitting tissue from tissue (a field without glass)
MIN_REGION_FRACTION = 0.0005  # connected tissue regions smaller than this share of the thumbnail are specks
BACKGROUND_BRIGHTNESS = 0.85  # a pixel brighter than this (mean RGB) and unsaturated is glass
MAX_BACKGROUND_FRACTION = 0.75  # a tile with more glass pixels than this is background
PEN_FRACTION = 0.10  # a tile with more pen-coloured pixels than this is a pen mark
MIN_LAPLACIAN_VARIANCE = 20.0  # grey-level Laplacian variance (0-255 scale) below which a tile is blurred
REASONS = ("background", "pen", "blur")
_REASON_COLOURS = {"background": (160, 160, 160), "pen": (30, 90, 255), "blur": (255, 150, 0)}


def hsv_saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation, (max - min) / max of RGB, float32 in [0, 1] (0 for black)."""
    rgb = rgb.astype(np.float32)
    high, low = rgb.max(axis=-1), rgb.min(axis=-1)
    return np.where(high > 0, (high - low) / np.maximum(high, 1e-6), 0.0).astype(np.float32)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1]: the cut maximising the between-class variance."""
    counts, edges = np.histogram(np.clip(values, 0, 1), bins=bins, range=(0.0, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(counts)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(counts * centres)
    mean_low = sum_low / np.maximum(weight_low, 1)
    mean_high = (sum_low[-1] - sum_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def tissue_mask(thumbnail: np.ndarray) -> np.ndarray:
    """The tissue of a slide thumbnail.

    Args:
      thumbnail: uint8 `(h, w, 3)`.

    Returns:
      bool `(h, w)`, True on tissue.
    """
    saturation = hsv_saturation(thumbnail)
    threshold = min(max(otsu_threshold(saturation), MIN_SATURATION), MAX_SATURATION_THRESHOLD)
    mask = saturation > threshold
    structure = np.ones((3, 3), bool)
    # Opened and closed on an edge-padded copy, so that tissue touching the border keeps its edge.
    padded = ndimage.binary_opening(np.pad(mask, 3, mode="edge"), structure, border_value=1)
    mask = ndimage.binary_closing(padded, structure, iterations=2)[3:-3, 3:-3]
    mask = ndimage.binary_fill_holes(mask)
    labels, count = ndimage.label(mask)
    if count:
        sizes = np.bincount(labels.ravel())
        keep = sizes >= max(1, MIN_REGION_FRACTION * mask.size)
        keep[0] = False
        mask = keep[labels]
    return mask


def tissue_fractions(mask: np.ndarray, scale: float, xs: Sequence[float], ys: Sequence[float],
                     size: float) -> np.ndarray:
    """The share of each square tile's footprint covered by the mask.

    Args:
      mask: bool `(h, w)` at `scale` mask pixels per level-0 pixel.
      scale: mask pixels per level-0 pixel.
      xs, ys: tiles' top-left corners in level-0 pixels.
      size: tile edge in level-0 pixels.

    Returns:
      float64 `(n,)` in [0, 1] (a tile reaching past the mask counts the outside as glass).
    """
    h, w = mask.shape
    table = np.zeros((h + 1, w + 1), np.int64)
    table[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    x0 = np.clip(np.floor(np.asarray(xs, float) * scale).astype(int), 0, w)
    y0 = np.clip(np.floor(np.asarray(ys, float) * scale).astype(int), 0, h)
    side = max(1, int(round(size * scale)))
    x1, y1 = np.clip(x0 + side, 0, w), np.clip(y0 + side, 0, h)
    covered = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
    return covered / float(side * side)


def _hue(rgb: np.ndarray) -> np.ndarray:
    """HSV hue in degrees [0, 360)."""
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    high, low = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
    spread = np.maximum(high - low, 1e-6)
    hue = np.where(high == r, (g - b) / spread % 6, np.where(high == g, (b - r) / spread + 2, (r - g) / spread + 4))
    return hue * 60.0


def pen_fraction(rgb: np.ndarray) -> float:
    """The share of pixels coloured like marker ink: saturated blue or green, or near black.

    H&E is pink to purple (hues about 280-360 and 0-30 degrees); blue ink sits at 190-245,
    green at 80-170, and black ink is darker than any stained tissue.
    """
    saturation, value = hsv_saturation(rgb), rgb.max(axis=-1) / 255.0
    hue = _hue(rgb)
    blue = (hue >= 190) & (hue <= 245) & (saturation > 0.4)
    green = (hue >= 80) & (hue <= 170) & (saturation > 0.25)
    black = value < 0.15
    return float(np.mean(blue | green | black))


def laplacian_variance(rgb: np.ndarray) -> float:
    """The variance of the Laplacian of the grey image (0-255 scale): low when blurred."""
    grey = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return float(ndimage.laplace(grey).var())


def background_fraction(rgb: np.ndarray) -> float:
    """The share of bright, unsaturated (glass) pixels."""
    bright = rgb.astype(np.float32).mean(axis=-1) / 255.0 > BACKGROUND_BRIGHTNESS
    return float(np.mean(bright & (hsv_saturation(rgb) < MIN_SATURATION)))


def tile_problem(rgb: np.ndarray, check_blur: bool = True) -> Optional[str]:
    """Why a tile should not be called ("background", "pen" or "blur"), or None.

    Args:
      rgb: uint8 `(h, w, 3)` tile.
      check_blur: False for tiles whose scale makes the Laplacian meaningless (e.g. tiles
        read far coarser than the scan).
    """
    if background_fraction(rgb) > MAX_BACKGROUND_FRACTION:
        return "background"
    if pen_fraction(rgb) > PEN_FRACTION:
        return "pen"
    if check_blur and laplacian_variance(rgb) < MIN_LAPLACIAN_VARIANCE:
        return "blur"
    return None


@dataclasses.dataclass
class QcCounts:
    """Tiles of one slide kept and dropped, and why.

    Attributes:
      total: tiles of the grid over the whole slide.
      kept: tiles that passed every check.
      dropped: tiles dropped per reason ("background", "pen", "blur").
    """

    total: int = 0
    kept: int = 0
    dropped: Dict[str, int] = dataclasses.field(default_factory=lambda: {reason: 0 for reason in REASONS})

    def drop(self, reason: str, count: int = 1) -> None:
        """Counts `count` tiles dropped for `reason`."""
        self.dropped[reason] = self.dropped.get(reason, 0) + count

    def as_dict(self) -> dict:
        """{"total", "kept", "dropped": {reason: n}}."""
        return {"total": self.total, "kept": self.kept, "dropped": dict(self.dropped)}


def mask_overlay(thumbnail: np.ndarray, mask: np.ndarray,
                 dropped: Iterable[tuple[float, float, float, str]] = (), scale: float = 1.0) -> Image.Image:
    """The thumbnail with the glass dimmed, the mask's outline in green and dropped tiles boxed.

    Args:
      thumbnail: uint8 `(h, w, 3)`.
      mask: bool `(h, w)`.
      dropped: (x, y, size, reason) of tiles dropped by the pixel checks, level-0 pixels.
      scale: thumbnail pixels per level-0 pixel.
    """
    image = thumbnail.astype(np.float32)
    image[~mask] = image[~mask] * 0.6 + 255 * 0.4
    edge = mask & ~ndimage.binary_erosion(mask, np.ones((3, 3), bool), border_value=0)
    edge = ndimage.binary_dilation(edge)
    image[edge] = (0, 200, 0)
    result = Image.fromarray(image.astype(np.uint8))
    draw = ImageDraw.Draw(result)
    for x, y, size, reason in dropped:
        box = [x * scale, y * scale, (x + size) * scale - 1, (y + size) * scale - 1]
        draw.rectangle(box, outline=_REASON_COLOURS.get(reason, (255, 0, 0)))
    return result
