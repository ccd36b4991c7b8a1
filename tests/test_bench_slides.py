"""bench/slides.py: the generated glass slide (islands where the levels agree, glass
elsewhere) and its tissue found by the slide stack. No timing assertions."""

from __future__ import annotations

import numpy as np
import pytest

from bench import slides as bench_slides
from histopath import slide_writer, slides, tiling

pytestmark = pytest.mark.bench  # tests of the benchmarks: opt-in (`pytest -m bench`)


def test_glass_slide_region_levels_agree():
    region = bench_slides.glass_slide_region(8000, 6000, seed=0)
    cx, cy, rx, ry = bench_slides._islands(8000, 6000, seed=0)[0]
    centre0 = region(1, int(cx) - 8, int(cy) - 8, 16, 16)
    centre4 = region(4, int(cx) // 4 - 2, int(cy) // 4 - 2, 4, 4)
    assert centre0.shape == (16, 16, 3) and centre4.shape == (4, 4, 3)
    assert (centre0 != bench_slides.GLASS).any(axis=-1).all() and (centre4 != bench_slides.GLASS).any(axis=-1).all()
    corner = region(1, 0, 0, 64, 64)
    assert (corner == bench_slides.GLASS).all()


def test_generated_slide_is_mostly_glass_with_tissue_tiles(tmp_path):
    path = tmp_path / "glass.tif"
    levels = slide_writer.write_pyramid(path, 6000, 4800, bench_slides.glass_slide_region(6000, 4800), mpp=0.25)
    assert [d for d, _, _ in levels] == [1, 2, 4, 8]
    with slides.open_slide(path) as slide:
        assert slide.dimensions == (6000, 4800) and len(slide.levels) == 4
        tiler = tiling.Tiler(slide, tile_um=200, tile_px=50)  # 800 px at level 0, read at level 8
        tiles = list(tiler)
    assert tiler.grid.level == 3 and tiler.grid.read_px == 100
    counts = tiler.counts.as_dict()
    assert counts["total"] == 7 * 6 and 0 < counts["kept"] < counts["total"] // 2
    assert all(np.mean(t.pixels != bench_slides.GLASS) > 0.2 for t in tiles)
