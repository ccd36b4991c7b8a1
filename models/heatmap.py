"""Renders a MIL tile grid (attention, or tile probabilities) as a colour overlay on the
pathologist's image.

Tiling follows `histopath.models.image_ops`: the model resizes the whole image to a
square of `grid_rows * tile_size` pixels and cuts it row-major with `tile_image`, so
attention entry `k` belongs to grid row `k // cols`, column `k % cols`, and that tile
covers the fraction `[row / rows, (row + 1) / rows)` of the original height (likewise for
the width). The overlay maps each pixel of the original image back to its tile.
"""

from __future__ import annotations

import base64
import io
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

DISPLAY_MAX_SIDE = 640  # longest side of the images shown on the page
OVERLAY_ALPHA = 0.55  # weight of the colour map over the tissue
COLORMAP = "inferno"


def display_copy(image: Image.Image, max_side: int = DISPLAY_MAX_SIDE) -> Image.Image:
    """An RGB copy scaled down (never up) so its longest side is at most `max_side`."""
    copy = image.convert("RGB")
    copy.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return copy


def attention_grid(attention: Sequence[float], grid_shape: tuple[int, int]) -> np.ndarray:
    """Reshapes row-major tile attention to `(rows, cols)` (image_ops' tile order).

    Raises:
      ValueError: the attention length does not match the grid.
    """
    rows, cols = grid_shape
    values = np.asarray(attention, dtype=np.float64)
    if rows <= 0 or cols <= 0 or values.size != rows * cols:
        raise ValueError(f"{values.size} attention weights do not fit a {rows}x{cols} grid")
    return values.reshape(rows, cols)


def render_overlay(image: Image.Image, attention: Sequence[float], grid_shape: tuple[int, int],
                   absolute: bool = False) -> Image.Image:
    """Blends a colour map of the attention grid over `image`, with tile outlines.

    Args:
      image: the image as shown (any size; tiles are mapped proportionally).
      attention: one weight per tile, row-major.
      grid_shape: (rows, cols) of the tile grid.
      absolute: colour the values as they are (probabilities, 0 to 1) instead of
        relative to the largest (attention weights, which sum to 1 over the bag).

    Returns:
      An RGB image of the same size as `image`.
    """
    from matplotlib import colormaps

    grid = attention_grid(attention, grid_shape)
    peak = grid.max()
    normalised = np.clip(grid, 0.0, 1.0) if absolute else (grid / peak if peak > 0 else grid)
    colours = colormaps[COLORMAP](normalised)[..., :3]  # (rows, cols, 3) in [0, 1]
    base = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    height, width = base.shape[:2]
    rows, cols = grid.shape
    row_of_pixel = np.minimum(np.arange(height) * rows // height, rows - 1)
    col_of_pixel = np.minimum(np.arange(width) * cols // width, cols - 1)
    heat = colours[row_of_pixel[:, None], col_of_pixel[None, :]]
    blended = (1.0 - OVERLAY_ALPHA) * base + OVERLAY_ALPHA * heat
    result = Image.fromarray(np.clip(blended * 255.0 + 0.5, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(result)
    for row in range(1, rows):
        y = round(row * height / rows)
        draw.line([(0, y), (width, y)], fill=(255, 255, 255), width=1)
    for col in range(1, cols):
        x = round(col * width / cols)
        draw.line([(x, 0), (x, height)], fill=(255, 255, 255), width=1)
    return result


def png_data_url(image: Image.Image) -> str:
    """Encodes an image as an inline `data:image/png;base64,...` URL."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
