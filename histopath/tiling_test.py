"""Tiling in microns on a generated pyramid with tissue, pen and blur at known cells, and
on the real SVS."""

from __future__ import annotations

import numpy as np
import pytest

from histopath import slide_writer, slides, tiling
from histopath.errors import ConfigError


def _slide_image() -> np.ndarray:
    rng = np.random.default_rng(0)
    image = np.full((768, 1024, 3), 245, np.uint8)
    tissue = np.clip(np.array((220, 120, 170)) + rng.normal(0, 30, (256, 512, 3)), 0, 255)
    image[256:512, 128:640] = tissue.astype(np.uint8)  # grid rows 2-3, columns 1-4 at 128 px
    ink = np.clip(np.array((20, 60, 200)) + rng.normal(0, 10, (128, 128, 3)), 0, 255)
    image[512:640, 768:896] = ink.astype(np.uint8)  # row 4, column 6: a pen mark
    ramp = np.linspace(150, 200, 128)[None, :, None] * np.array([1.0, 0.6, 0.85])
    image[0:128, 768:896] = np.broadcast_to(ramp, (128, 128, 3)).astype(np.uint8)  # row 0, column 6: blurred
    return image


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    image = _slide_image()
    path = tmp_path_factory.mktemp("tiling") / "cells.tif"
    slide_writer.write_pyramid(path, 1024, 768, slide_writer.array_region(image), mpp=0.5, compression="lossless")
    return path, image


def test_grid_reads_the_level_nearest_the_target_scale(synthetic):
    with slides.open_slide(synthetic[0]) as slide:
        coarse = tiling.make_grid(slide, tile_um=64, tile_px=64)  # 1 µm/px: level 1 (1 µm/px)
        assert (coarse.level, coarse.read_px, coarse.size0, coarse.columns, coarse.rows) == (1, 64, 128.0, 8, 6)
        assert coarse.mpp == 1.0
        between = tiling.make_grid(slide, tile_um=64, tile_px=96)  # 0.67 µm/px: level 0, shrunk by the caller
        assert (between.level, between.read_px) == (0, 128)
        with pytest.raises(ConfigError, match="larger than the slide"):
            tiling.make_grid(slide, tile_um=1000, tile_px=50)
        with pytest.raises(ConfigError, match="must be positive"):
            tiling.make_grid(slide, tile_um=0, tile_px=50)


def test_tiles_kept_and_dropped_by_reason(synthetic):
    path, image = synthetic
    with slides.open_slide(path) as slide:
        tiler = tiling.Tiler(slide, tile_um=64, tile_px=64)
        tiles = list(tiler)
    assert sorted((t.row, t.column) for t in tiles) == [(r, c) for r in (2, 3) for c in (1, 2, 3, 4)]
    assert tiler.counts.as_dict() == {"total": 48, "kept": 8, "dropped": {"background": 38, "pen": 1, "blur": 1}}
    assert sorted(reason for *_, reason in tiler.dropped) == ["blur", "pen"]
    first = min(tiles, key=lambda t: (t.row, t.column))
    assert (first.slide_id, first.x, first.y, first.size, first.mpp, first.read_mpp) == ("cells", 128, 256, 128, 1.0, 1.0)
    expected = image[256:384, 128:256].astype(np.float32).reshape(64, 2, 64, 2, 3).mean(axis=(1, 3))
    assert first.pixels.shape == (64, 64, 3)
    np.testing.assert_allclose(first.pixels, expected, atol=0.6)
    assert first.tissue_fraction > 0.95


def test_only_tissue_cells_are_read(synthetic, monkeypatch):
    with slides.open_slide(synthetic[0]) as slide:
        reads = []
        original = slide.read_region
        tiler = tiling.Tiler(slide, tile_um=64, tile_px=64, qc=False)
        monkeypatch.setattr(slide, "read_region", lambda *a: reads.append(a) or original(*a))
        kept = list(tiler)
    assert len(reads) == len(kept) == 10  # 8 tissue + pen + blurred cells; none of the glass
    assert tiler.counts.kept == 10 and tiler.counts.dropped["background"] == 38


def test_batches():
    assert [len(b) for b in tiling.batches(iter(range(7)), 3)] == [3, 3, 1]


def test_real_svs_in_microns(shared_data):
    with slides.open_slide(shared_data / "wsi" / "cmu_small_region.svs") as slide:
        tiler = tiling.Tiler(slide, tile_um=200, tile_px=50)
        tiles = list(tiler)
    assert (tiler.grid.level, tiler.grid.read_px) == (0, 401)  # 200 µm at 0.499 µm/px
    counts = tiler.counts.as_dict()
    assert counts["total"] == 5 * 7 and counts["kept"] == len(tiles)
    assert counts["kept"] + sum(counts["dropped"].values()) == counts["total"]
    assert 8 <= len(tiles) <= 25
    assert all(t.pixels.shape == (401, 401, 3) and t.mpp == 4.0 for t in tiles)
