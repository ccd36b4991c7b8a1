"""Writes pyramidal tiled TIFF slides (tifffile): level 0 and its 2x, 4x, ... reductions as
successive tiled pages, JPEG or lossless, with the microns per pixel in the TIFF resolution
tags, which OpenSlide and tiffslide both read. Used by the IDC re-assembly (`data/`), the
tests and the benchmarks.

Tiles are produced lazily (`region` is asked for one tile at a time), so a slide much
larger than memory can be written; the file is written under a temporary name and renamed
into place.
"""

from __future__ import annotations

import os
import tempfile
from typing import Callable, Iterator

import numpy as np

TILE = 256  # tile edge of the written pages
MIN_LEVEL_SIDE = 512  # no further level once the longer side is below this
COMPRESSIONS = {"jpeg": ("jpeg", 90), "lossless": ("zlib", 6)}

# region(downsample, x, y, width, height) -> uint8 (height, width, 3): the pixels of the level
# whose downsample is `downsample`, top-left at that level's pixel (x, y).
RegionFn = Callable[[int, int, int, int, int], np.ndarray]


def level_sizes(width: int, height: int) -> list[tuple[int, int, int]]:
    """(downsample, width, height) of each level: 1, 2, 4, ... until the longer side is
    below `MIN_LEVEL_SIDE`."""
    sizes, downsample = [(1, width, height)], 2
    while max(width, height) // (downsample // 2) >= 2 * MIN_LEVEL_SIDE:
        sizes.append((downsample, -(-width // downsample), -(-height // downsample)))
        downsample *= 2
    return sizes


def _tiles(region: RegionFn, downsample: int, width: int, height: int) -> Iterator[np.ndarray]:
    for y in range(0, height, TILE):
        for x in range(0, width, TILE):
            w, h = min(TILE, width - x), min(TILE, height - y)
            tile = np.full((TILE, TILE, 3), 255, np.uint8)  # edge tiles padded with glass
            tile[:h, :w] = region(downsample, x, y, w, h)
            yield tile


def write_pyramid(path: str | os.PathLike, width: int, height: int, region: RegionFn, mpp: float | None,
                  compression: str = "jpeg", description: str = "") -> list[tuple[int, int, int]]:
    """Writes a pyramidal tiled TIFF, one tile in memory at a time.

    Args:
      path: the file to write (replaced atomically).
      width, height: level-0 size.
      region: the pixels of any level's window (see `RegionFn`).
      mpp: microns per level-0 pixel (None: no resolution tags, a slide without scale).
      compression: "jpeg" (quality 90) or "lossless" (deflate).
      description: ImageDescription of the first page.

    Returns:
      The levels written, as `level_sizes`.
    """
    import tifffile

    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {sorted(COMPRESSIONS)}, got {compression!r}")
    codec, level = COMPRESSIONS[compression]
    path = os.fspath(path)
    sizes = level_sizes(width, height)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    os.close(handle)
    try:
        with tifffile.TiffWriter(temporary, bigtiff=width * height * 3 > 2**31) as tiff:
            for index, (downsample, w, h) in enumerate(sizes):
                extra = {}
                if mpp:
                    pixels_per_cm = 1e4 / (mpp * downsample)
                    extra = {"resolution": (pixels_per_cm, pixels_per_cm), "resolutionunit": "CENTIMETER"}
                tiff.write(_tiles(region, downsample, w, h), shape=(h, w, 3), dtype=np.uint8,
                           tile=(TILE, TILE), photometric="rgb", compression=codec, compressionargs={"level": level},
                           subfiletype=1 if index else 0, description=description if index == 0 else None,
                           metadata=None, **extra)
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide the slide from other users
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return sizes


def array_region(image: np.ndarray) -> RegionFn:
    """A `RegionFn` over an in-memory level-0 image; the reductions are box means, each made
    once from the previous one."""
    levels = {1: image}

    def region(downsample: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        if downsample not in levels:
            previous = levels[downsample // 2]
            ph, pw = -(-previous.shape[0] // 2) * 2, -(-previous.shape[1] // 2) * 2  # even, glass-padded
            padded = np.full((ph, pw, 3), 255, np.float32)
            padded[:previous.shape[0], :previous.shape[1]] = previous
            hh, ww = padded.shape[0] // 2, padded.shape[1] // 2
            reduced = padded.reshape(hh, 2, ww, 2, 3).mean(axis=(1, 3))
            levels[downsample] = np.rint(reduced).astype(np.uint8)
        return levels[downsample][y:y + h, x:x + w]

    return region
