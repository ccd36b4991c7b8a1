"""Spatial MIL bags of IDC patches: the region geometry, in one place.

An IDC bag is the set of one patient's patches whose slide offsets (x, y) fall in one
region of `K x K` patch cells. Ingestion (`histopath ingest --bag-size K`) assembles each
region into ONE mosaic image, `K * patch_size` pixels square, with every patch at its
cell and white where the slide has no patch (background/glass in the original data,
which `components.image_ops.tissue_mask` masks out). The MIL model then tiles that image
with `tile_size = patch_size` INSIDE the model (`components.mil.ImageToBag`), so each
tile is exactly one original patch, attention is per patch, and training, evaluation and
serving (a pathologist's `50K x 50K` crop) all build bags by the same tiling.

Geometry (patch_size P, region_patches K), for a patch at slide offset (x, y):

    region (column, row)          = (x // (P*K), y // (P*K))
    region origin in slide pixels = (column * P*K, row * P*K)
    cell (column, row) in region  = ((x // P) % K, (y // P) % K)

The IDC offsets are `1 + 50 * n`, so `x // 50` is the patch's column on the slide grid.
Cells are row-major: cell (column c, row r) is tile `r * K + c` of
`image_ops.tile_image(mosaic, P)`.

Pure functions (numpy and the standard library only); no file is read here.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Iterable, Mapping, Sequence

import numpy as np

from histopath.data.layouts import ParsedFile, SkippedFile

IDC_PATCH_SIZE = 50  # edge in pixels of a (full) IDC patch
MISSING_LABEL = -1  # label-grid value of a cell without a (valid) patch
WHITE = 255  # fill value of cells without a patch

Cell = tuple[int, int]  # (column, row) of a patch cell inside its region


def check_region_patches(region_patches: int) -> None:
    """Raises ValueError unless a region is at least 2x2 patches."""
    if isinstance(region_patches, bool) or not isinstance(region_patches, int) \
            or region_patches < 2:
        raise ValueError(f"a bag region must be at least 2x2 patches, got {region_patches!r}")


def region_key(
    patch_x: int, patch_y: int, patch_size: int = IDC_PATCH_SIZE, region_patches: int = 2
) -> tuple[int, int]:
    """The region (column, row) holding the patch at slide offset (patch_x, patch_y).

    Args:
      patch_x: x offset of the patch in the slide, in pixels.
      patch_y: y offset of the patch in the slide, in pixels.
      patch_size: edge of a patch cell in pixels.
      region_patches: K, the region's edge in patch cells.

    Returns:
      `(x // (patch_size * K), y // (patch_size * K))`.
    """
    span = patch_size * region_patches
    return patch_x // span, patch_y // span


def cell_in_region(
    patch_x: int, patch_y: int, patch_size: int = IDC_PATCH_SIZE, region_patches: int = 2
) -> Cell:
    """The (column, row) cell of a patch inside its region, each in `[0, K)`."""
    return (patch_x // patch_size) % region_patches, (patch_y // patch_size) % region_patches


def region_origin(
    key: tuple[int, int], patch_size: int = IDC_PATCH_SIZE, region_patches: int = 2
) -> tuple[int, int]:
    """The slide pixel offset (x, y) of the top-left corner of region `key`."""
    span = patch_size * region_patches
    return key[0] * span, key[1] * span


def tile_cells(
    origin_x: Sequence[int], origin_y: Sequence[int], region_patches: int,
    patch_size: int = IDC_PATCH_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """The slide grid cell of every tile of regions given by their origins.

    Args:
      origin_x: per region, the x offset of its top-left corner in slide pixels.
      origin_y: likewise y.
      region_patches: K.
      patch_size: P.

    Returns:
      `(columns, rows)`, each int64 `(n, K*K)`, row-major like the tiles of
      `image_ops.tile_image(mosaic, P)`: tile `r * K + c` of a region at origin (x0, y0)
      is cell `(x0 // P + c, y0 // P + r)`, the same cell as a patch at slide offset
      (x, y) has as `(x // P, y // P)`.
    """
    check_region_patches(region_patches)
    index = np.arange(region_patches * region_patches)
    columns, rows = index % region_patches, index // region_patches
    return (np.asarray(origin_x, np.int64)[:, None] // patch_size + columns[None, :],
            np.asarray(origin_y, np.int64)[:, None] // patch_size + rows[None, :])


def region_id(patient_id: str, origin_x: int, origin_y: int) -> str:
    """The record's source path of a region: `<patient>/region_x<X>_y<Y>`."""
    return f"{patient_id}/region_x{origin_x}_y{origin_y}"


def assemble_region(
    patches: Mapping[Cell, np.ndarray], region_patches: int, patch_size: int = IDC_PATCH_SIZE
) -> np.ndarray:
    """Places patches in a white `K*P x K*P` mosaic.

    Args:
      patches: (column, row) cell -> uint8 RGB patch `(h, w, 3)` with `h, w <= P`. A patch
        smaller than a cell (slide-edge patches) goes to the cell's top-left corner and
        the rest of the cell stays white.
      region_patches: K.
      patch_size: P.

    Returns:
      uint8 array `(K*P, K*P, 3)`.

    Raises:
      ValueError: a cell outside the region, or a patch that is not uint8 RGB or is
        larger than a cell.
    """
    check_region_patches(region_patches)
    size = region_patches * patch_size
    mosaic = np.full((size, size, 3), WHITE, dtype=np.uint8)
    for (column, row), patch in patches.items():
        if not (0 <= column < region_patches and 0 <= row < region_patches):
            raise ValueError(f"cell ({column}, {row}) is outside a {region_patches}x"
                             f"{region_patches} region")
        patch = np.asarray(patch)
        if patch.dtype != np.uint8 or patch.ndim != 3 or patch.shape[2] != 3:
            raise ValueError(f"patch of cell ({column}, {row}) is {patch.dtype} {patch.shape}, "
                             "expected uint8 (h, w, 3)")
        height, width = patch.shape[:2]
        if height > patch_size or width > patch_size:
            raise ValueError(f"patch of cell ({column}, {row}) is {width}x{height}, larger "
                             f"than the {patch_size}x{patch_size} cell")
        top, left = row * patch_size, column * patch_size
        mosaic[top:top + height, left:left + width] = patch
    return mosaic


def patch_label_grid(labels: Mapping[Cell, int], region_patches: int) -> list[int]:
    """The region's patch labels, row-major (`index = row * K + column`), -1 if missing.

    Index k is the label of tile k of `image_ops.tile_image(mosaic, patch_size)`.
    """
    check_region_patches(region_patches)
    grid = [MISSING_LABEL] * (region_patches * region_patches)
    for (column, row), label in labels.items():
        grid[row * region_patches + column] = int(label)
    return grid


def bag_label(patch_labels: Iterable[int]) -> int:
    """1 if any patch is IDC-positive, else 0 (missing cells, -1, do not count)."""
    return int(any(int(label) == 1 for label in patch_labels))


@dataclasses.dataclass(frozen=True)
class Region:
    """The patches of one bag: one patient's region of `K x K` patch cells.

    Attributes:
      patient_id: the patient.
      column: region column on the slide (`x // (patch_size * K)`).
      row: region row on the slide (`y // (patch_size * K)`).
      region_patches: K.
      patch_size: edge of a cell in pixels.
      files: the region's patch files, at most one per cell, sorted by path.
    """

    patient_id: str
    column: int
    row: int
    region_patches: int
    patch_size: int
    files: Sequence[ParsedFile]

    @property
    def origin(self) -> tuple[int, int]:
        """Slide pixel offset (x, y) of the region's top-left corner."""
        return region_origin((self.column, self.row), self.patch_size, self.region_patches)

    @property
    def region_id(self) -> str:
        """`<patient>/region_x<X>_y<Y>`, the record's source path."""
        return region_id(self.patient_id, *self.origin)

    def cell(self, file: ParsedFile) -> Cell:
        """The (column, row) cell of one of the region's files."""
        return cell_in_region(file.patch_x, file.patch_y, self.patch_size, self.region_patches)

    def to_dict(self) -> dict:
        """JSON-able form (for the shard plan); inverse of `from_dict`."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, fields: Mapping) -> "Region":
        """Inverse of `to_dict`."""
        fields = dict(fields)
        fields["files"] = tuple(ParsedFile(**f) for f in fields["files"])
        return cls(**fields)


def group_into_regions(
    files: Iterable[ParsedFile], region_patches: int, patch_size: int = IDC_PATCH_SIZE
) -> tuple[list[Region], list[SkippedFile]]:
    """Groups IDC patch files into regions, by name only (no image is read).

    Args:
      files: parsed IDC files (with `patch_x`, `patch_y`).
      region_patches: K (>= 2).
      patch_size: edge of a cell in pixels.

    Returns:
      `(regions, skipped)`: regions sorted by (patient, row, column); a second file
      falling on an already-taken cell is skipped (the first by path keeps the cell).

    Raises:
      ValueError: K < 2 or a file without patch offsets.
    """
    check_region_patches(region_patches)
    grouped: dict[tuple[str, int, int], dict[Cell, ParsedFile]] = {}
    skipped: list[SkippedFile] = []
    for file in sorted(files, key=lambda f: f.relative_path):
        if file.patch_x is None or file.patch_y is None:
            raise ValueError(f"{file.relative_path} has no patch offsets (not an IDC patch)")
        column, row = region_key(file.patch_x, file.patch_y, patch_size, region_patches)
        cells = grouped.setdefault((file.patient_id, row, column), {})
        cell = cell_in_region(file.patch_x, file.patch_y, patch_size, region_patches)
        if cell in cells:
            skipped.append(SkippedFile(
                file.relative_path,
                f"same bag cell as {cells[cell].relative_path} (region cells are "
                f"{patch_size} px)"))
            continue
        cells[cell] = file
    regions = [
        Region(patient, column, row, region_patches, patch_size,
               tuple(sorted(cells.values(), key=lambda f: f.relative_path)))
        for (patient, row, column), cells in sorted(
            grouped.items(), key=lambda item: ((len(item[0][0]), item[0][0]), item[0][1:]))
    ]
    return regions, skipped
