"""Small generated slides for the web-app slide tests: pink, textured tissue islands on
white glass, written as a pyramidal tiled TIFF by the project's `slide_writer`."""

from __future__ import annotations

import pathlib

import numpy as np

from histopath import slide_writer


def tissue_image(width: int, height: int, seed: int = 3) -> np.ndarray:
    """White glass with two elliptical H&E-pink islands of nuclei-like texture."""
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), 245, np.uint8)
    ys, xs = np.mgrid[0:height, 0:width]
    islands = ((xs - 0.32 * width) / (0.22 * width)) ** 2 + ((ys - 0.45 * height) / (0.3 * height)) ** 2 < 1
    islands |= ((xs - 0.72 * width) / (0.16 * width)) ** 2 + ((ys - 0.6 * height) / (0.25 * height)) ** 2 < 1
    pink = np.stack([rng.integers(170, 235, (height, width)), rng.integers(80, 150, (height, width)),
                     rng.integers(140, 200, (height, width))], axis=-1).astype(np.uint8)
    nuclei = rng.random((height, width)) < 0.08
    pink[nuclei] = (70, 40, 120)
    image[islands] = pink[islands]
    return image


def write_slide(path: pathlib.Path, width: int = 1200, height: int = 900, mpp: float | None = 4.0) -> pathlib.Path:
    """A generated slide at `mpp` µm/px (None: without a scale) at `path`."""
    slide_writer.write_pyramid(path, width, height, slide_writer.array_region(tissue_image(width, height)), mpp=mpp,
                               compression="jpeg")
    return path
