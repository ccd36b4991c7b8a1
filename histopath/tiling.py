"""Tiles of a slide in microns: every model sees the same physical scale from any scanner.

A tile is `tile_um` microns a side and is meant to reach the model as `tile_px` pixels, so
its target scale is `tile_um / tile_px` µm/px. It is read from the pyramid level nearest
that scale without being coarser (so it is only ever shrunk), at `read_px` pixels; the
caller brings it to `tile_px` with the project's one resize (`models.image_ops`,
`resize_and_scale`), batch by batch. The grid is laid in level-0 pixels from the slide's
top-left corner.

Only tiles whose footprint is tissue on the thumbnail mask (`histopath.tissue`) are read,
then checked (`tissue.tile_problem`); one tile is in memory at a time, so memory does not
grow with the slide.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, List, Optional

import numpy as np

from histopath import tissue
from histopath.errors import ConfigError
from histopath.slides import Slide

MASK_MAX_SIDE = 2048  # longest side of the thumbnail the tissue mask is computed on
MIN_TISSUE_FRACTION = 0.25  # tiles with less of their footprint on the mask are background
BLUR_CHECK_MAX_SHRINK = 4.0  # the blur check needs tiles read at most this much coarser than the scan


@dataclasses.dataclass(frozen=True)
class TileGrid:
    """How a slide is cut.

    Attributes:
      tile_um: tile edge in microns.
      tile_px: tile edge the model receives, in pixels.
      level: the pyramid level read.
      read_px: tile edge read at that level, in pixels.
      size0: tile edge in level-0 pixels.
      columns, rows: the grid over the whole slide.
    """

    tile_um: float
    tile_px: int
    level: int
    read_px: int
    size0: float
    columns: int
    rows: int

    @property
    def mpp(self) -> float:
        """Microns per pixel of a tile as the model receives it."""
        return self.tile_um / self.tile_px

    def origin(self, column: int, row: int) -> tuple[int, int]:
        """Level-0 top-left pixel of a grid cell."""
        return int(round(column * self.size0)), int(round(row * self.size0))


@dataclasses.dataclass
class Tile:
    """One tile read from a slide.

    Attributes:
      slide_id: the slide's file name without extension.
      x, y: level-0 top-left pixel.
      size: edge in level-0 pixels.
      column, row: its grid cell.
      mpp: microns per pixel once brought to `tile_px` (the grid's target scale).
      read_mpp: microns per pixel of `pixels` as read.
      pixels: uint8 `(read_px, read_px, 3)`.
      tissue_fraction: share of its footprint on the tissue mask.
    """

    slide_id: str
    x: int
    y: int
    size: int
    column: int
    row: int
    mpp: float
    read_mpp: float
    pixels: np.ndarray
    tissue_fraction: float


def make_grid(slide: Slide, tile_um: float, tile_px: int) -> TileGrid:
    """Chooses the level and read size for `tile_um`-micron tiles sent as `tile_px` pixels.

    Raises:
      ConfigError: non-positive sizes, or a tile larger than the slide.
    """
    if tile_um <= 0 or tile_px <= 0:
        raise ConfigError(f"tile_um and tile_px must be positive, got {tile_um} and {tile_px}")
    mpp0 = (slide.mpp[0] + slide.mpp[1]) / 2
    size0 = tile_um / mpp0
    width, height = slide.dimensions
    if size0 > min(width, height):
        raise ConfigError(f"{slide.path}: a {tile_um:g} µm tile ({size0:.0f} px at {mpp0:g} µm/px) is larger "
                          f"than the slide ({width}x{height} px)")
    level = slide.best_level((tile_um / tile_px) / mpp0)
    read_px = max(1, int(round(tile_um / slide.level_mpp(level))))
    return TileGrid(tile_um=float(tile_um), tile_px=int(tile_px), level=level, read_px=read_px, size0=size0,
                    columns=int(width // size0), rows=int(height // size0))


@dataclasses.dataclass
class TissueMap:
    """The thumbnail, its mask and the scale between them and level 0."""

    thumbnail: np.ndarray
    mask: np.ndarray
    scale: float  # thumbnail pixels per level-0 pixel


def tissue_map(slide: Slide, max_side: int = MASK_MAX_SIDE) -> TissueMap:
    """The slide's thumbnail (longest side `max_side`) and its tissue mask."""
    thumbnail = slide.thumbnail(max_side)
    return TissueMap(thumbnail, tissue.tissue_mask(thumbnail), thumbnail.shape[1] / slide.dimensions[0])


class Tiler:
    """Cuts one slide into tiles, keeping the QC counts and the dropped tiles.

    Args:
      slide: an open slide.
      tile_um, tile_px: see `make_grid`.
      min_tissue: least share of a tile's footprint on the tissue mask.
      qc: run the pixel checks (`tissue.tile_problem`) on the tiles read.
      mask: a precomputed `tissue_map` (else made here).

    Attributes:
      grid, tissue, counts (`tissue.QcCounts`), dropped ((x, y, size, reason) of tiles the
      pixel checks dropped).
    """

    def __init__(self, slide: Slide, tile_um: float, tile_px: int, min_tissue: float = MIN_TISSUE_FRACTION,
                 qc: bool = True, mask: Optional[TissueMap] = None):
        self.slide = slide
        self.grid = make_grid(slide, tile_um, tile_px)
        self.tissue = mask or tissue_map(slide)
        self.min_tissue = min_tissue
        self.qc = qc
        self.counts = tissue.QcCounts(total=self.grid.columns * self.grid.rows)
        self.dropped: List[tuple[int, int, int, str]] = []
        self._candidates: Optional[tuple[np.ndarray, np.ndarray, np.ndarray]] = None

    def candidates(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(columns, rows, tissue fractions) of the grid cells on tissue, row-major; counts
        the others as dropped for background (once: later calls return the same cells)."""
        if self._candidates is None:
            self._candidates = self._on_tissue()
        return self._candidates

    def _on_tissue(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        grid = self.grid
        rows, columns = np.divmod(np.arange(grid.columns * grid.rows), grid.columns)
        xs, ys = np.round(columns * grid.size0), np.round(rows * grid.size0)
        fractions = tissue.tissue_fractions(self.tissue.mask, self.tissue.scale, xs, ys, grid.size0)
        keep = fractions >= self.min_tissue
        self.counts.drop("background", int((~keep).sum()))
        return columns[keep], rows[keep], fractions[keep]

    def __iter__(self) -> Iterator[Tile]:
        grid, slide = self.grid, self.slide
        read_mpp = slide.level_mpp(grid.level)
        check_blur = read_mpp <= BLUR_CHECK_MAX_SHRINK * slide.level_mpp(0)
        size = int(round(grid.size0))
        for column, row, fraction in zip(*self.candidates()):
            x, y = grid.origin(int(column), int(row))
            pixels = slide.read_region(x, y, grid.level, grid.read_px, grid.read_px)
            problem = tissue.tile_problem(pixels, check_blur) if self.qc else None
            if problem:
                self.counts.drop(problem)
                self.dropped.append((x, y, size, problem))
                continue
            self.counts.kept += 1
            yield Tile(slide.slide_id, x, y, size, int(column), int(row), grid.mpp, read_mpp, pixels, float(fraction))


def batches(tiles: Iterator[Tile], size: int) -> Iterator[List[Tile]]:
    """Groups tiles into lists of at most `size`."""
    batch: List[Tile] = []
    for tile in tiles:
        batch.append(tile)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch

