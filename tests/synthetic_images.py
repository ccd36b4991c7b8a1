"""Synthetic H&E-like images with a learnable benign/malignant signal (tests, benchmarks).

Pink eosin background with purple haematoxylin nuclei; "malignant" tissue has more,
larger nuclei. Pure NumPy, seeded, fast enough to build small data sets inside a test.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

EOSIN = np.array([0.91, 0.70, 0.82], np.float32)
NUCLEUS = np.array([0.33, 0.18, 0.48], np.float32)
GLASS = np.array([0.95, 0.95, 0.95], np.float32)


def tissue_image(rng: np.random.Generator, size: int, malignant: bool) -> np.ndarray:
    """One float32 `(size, size, 3)` image in [0, 1].

    Args:
      rng: random generator.
      size: edge in pixels.
      malignant: draw many large nuclei (else a few small ones).
    """
    scale = size / 32.0
    count = int(round(rng.integers(9, 14) * scale * scale)) if malignant else int(round(rng.integers(1, 4) * scale * scale))
    radius_range = (2.2, 3.5) if malignant else (1.0, 1.8)
    image = np.broadcast_to(EOSIN, (size, size, 3)).copy()
    image += rng.normal(0.0, 0.03, image.shape).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for _ in range(max(count, 1)):
        cy, cx = rng.uniform(0, size, 2)
        radius = rng.uniform(*radius_range) * max(scale, 0.5)
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        image[inside] = NUCLEUS + rng.normal(0.0, 0.04, 3).astype(np.float32)
    return np.clip(image, 0.0, 1.0)


def glass_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A blank, slightly noisy glass tile `(size, size, 3)` (background)."""
    image = GLASS + rng.normal(0.0, 0.01, (size, size, 3)).astype(np.float32)
    return np.clip(image, 0.0, 1.0)


def image_dataset(n: int, size: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Balanced images and labels: float32 `(n, size, size, 3)`, int64 `(n,)`."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    rng.shuffle(labels)
    images = np.stack([tissue_image(rng, size, bool(label)) for label in labels])
    return images, labels.astype(np.int64)


def bag_image(rng: np.random.Generator, grid: int, tile: int, positive: bool,
              n_glass: int = 2) -> Tuple[np.ndarray, np.ndarray]:
    """One MIL image: a `grid x grid` mosaic of tiles.

    Negative bags hold benign tissue and `n_glass` glass tiles; positive bags replace
    1-3 tissue tiles with malignant ones.

    Returns:
      image float32 `(grid*tile, grid*tile, 3)` and the per-tile kind, row-major:
      0 benign, 1 malignant, 2 glass.
    """
    n_tiles = grid * grid
    kinds = np.zeros(n_tiles, np.int64)
    order = rng.permutation(n_tiles)
    kinds[order[:n_glass]] = 2
    if positive:
        kinds[order[n_glass:n_glass + int(rng.integers(1, 4))]] = 1
    image = np.zeros((grid * tile, grid * tile, 3), np.float32)
    for index, kind in enumerate(kinds):
        row, col = divmod(index, grid)
        content = glass_image(rng, tile) if kind == 2 else tissue_image(rng, tile, bool(kind))
        image[row * tile:(row + 1) * tile, col * tile:(col + 1) * tile] = content
    return image, kinds


def bag_dataset(n: int, grid: int, tile: int, seed: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Balanced MIL images, labels `(n,)` and tile kinds `(n, grid*grid)`."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    rng.shuffle(labels)
    pairs = [bag_image(rng, grid, tile, bool(label)) for label in labels]
    return (np.stack([p[0] for p in pairs]), labels.astype(np.int64), np.stack([p[1] for p in pairs]))


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted as 1/2)."""
    labels = np.asarray(labels).reshape(-1).astype(bool)
    scores = np.asarray(scores, np.float64).reshape(-1)
    positives, negatives = scores[labels], scores[~labels]
    greater = (positives[:, None] > negatives[None, :]).sum()
    ties = (positives[:, None] == negatives[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(positives) * len(negatives)))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(pixels: np.ndarray) -> bytes:
    """A PNG of `pixels` written byte by byte (Pillow cannot write 16-bit colour PNGs).

    Args:
      pixels: uint8 or uint16, `(h, w)` grey or `(h, w, 3)` RGB.
    """
    import struct
    import zlib

    pixels = np.asarray(pixels)
    if pixels.dtype not in (np.uint8, np.uint16) or pixels.ndim not in (2, 3):
        raise ValueError(f"unsupported pixels {pixels.dtype} {pixels.shape}")
    height, width = pixels.shape[:2]
    colour_type = 2 if pixels.ndim == 3 else 0
    bit_depth = 8 * pixels.dtype.itemsize
    rows = pixels.astype(pixels.dtype.newbyteorder(">")).reshape(height, -1).view(np.uint8).reshape(height, -1)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()  # filter 0 per row
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(raw, 9))
            + _png_chunk(b"IEND", b""))


def png_bomb(width: int, height: int) -> bytes:
    """A valid all-black 8-bit grey PNG of `width` x `height` that compresses to almost
    nothing (a decompression bomb), streamed so the test never holds its pixels."""
    import struct
    import zlib

    compressor = zlib.compressobj(9)
    row = bytes(width + 1)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
