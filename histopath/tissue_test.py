"""Tissue mask, tile tissue fractions and tile quality control on tiny synthetic arrays and
on the real SVS."""

from __future__ import annotations

import numpy as np
import pytest

from histopath import slides, tissue

PINK, GLASS = (220, 120, 170), (245, 245, 245)


def _rng_tissue(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.array(PINK, np.float32) + rng.normal(0, 25, (h, w, 3))
    return np.clip(base, 0, 255).astype(np.uint8)


def test_hsv_saturation_and_otsu():
    rgb = np.array([[[255, 0, 0], [200, 100, 100], [0, 0, 0], [240, 240, 240]]], np.uint8)
    np.testing.assert_allclose(tissue.hsv_saturation(rgb)[0], [1.0, 0.5, 0.0, 0.0], atol=1e-6)
    values = np.concatenate([np.full(100, 0.1), np.full(50, 0.6)])
    assert 0.1 < tissue.otsu_threshold(values) <= 0.6


def test_mask_finds_the_tissue_block_and_drops_specks():
    thumb = np.full((100, 120, 3), GLASS, np.uint8)
    thumb[20:60, 30:90] = _rng_tissue(40, 60)
    thumb[80, 5] = PINK  # a one-pixel speck
    thumb[40, 60] = GLASS  # a hole inside the tissue
    mask = tissue.tissue_mask(thumb)
    assert mask.shape == (100, 120)
    assert mask[22:58, 32:88].all() and mask[40, 60]
    assert not mask[80, 5] and not mask[:15].any() and not mask[:, 95:].any()


def test_mask_of_glass_only_is_empty():
    rng = np.random.default_rng(1)
    glass = np.clip(np.array(GLASS) + rng.normal(0, 3, (64, 64, 3)), 0, 255).astype(np.uint8)
    assert not tissue.tissue_mask(glass).any()


def test_mask_of_tissue_without_glass_is_whole():
    assert tissue.tissue_mask(_rng_tissue(64, 64, seed=3)).all()


def test_tissue_fractions_by_summed_area_table():
    mask = np.zeros((10, 10), bool)
    mask[0:5, 0:5] = True
    fractions = tissue.tissue_fractions(mask, 0.5, xs=[0, 0, 10, 18], ys=[0, 10, 0, 18], size=10)
    np.testing.assert_allclose(fractions, [1.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(tissue.tissue_fractions(mask, 0.5, xs=[8], ys=[8], size=4), [0.25])


def test_tile_problems():
    assert tissue.tile_problem(_rng_tissue(32, 32)) is None
    assert tissue.tile_problem(np.full((32, 32, 3), GLASS, np.uint8)) == "background"
    inked = _rng_tissue(32, 32)
    inked[:, :8] = (20, 60, 200)  # a blue marker stroke over a quarter of the tile
    assert tissue.pen_fraction(inked) == pytest.approx(0.25)
    assert tissue.tile_problem(inked) == "pen"
    smooth = np.broadcast_to(np.linspace(150, 200, 32)[None, :, None] * np.array([1.0, 0.6, 0.85]),
                             (32, 32, 3)).astype(np.uint8)
    assert tissue.tile_problem(smooth) == "blur" and tissue.tile_problem(smooth, check_blur=False) is None


def test_counts_and_overlay():
    counts = tissue.QcCounts(total=10, kept=6)
    counts.drop("background", 3)
    counts.drop("pen")
    assert counts.as_dict() == {"total": 10, "kept": 6, "dropped": {"background": 3, "pen": 1, "blur": 0}}
    thumb = np.full((40, 40, 3), GLASS, np.uint8)
    thumb[10:30, 10:30] = PINK
    mask = np.zeros((40, 40), bool)
    mask[10:30, 10:30] = True
    overlay = np.asarray(tissue.mask_overlay(thumb, mask, dropped=[(0, 0, 40, "pen")], scale=0.5))
    assert overlay.shape == (40, 40, 3)
    assert tuple(overlay[10, 20]) == (0, 200, 0)  # the outline
    assert tuple(overlay[20, 20]) == PINK  # tissue untouched
    assert tuple(overlay[0, 5]) == (30, 90, 255)  # the dropped tile's box


def test_real_svs_mask_covers_the_section(shared_data):
    with slides.open_slide(shared_data / "wsi" / "cmu_small_region.svs") as slide:
        thumb = slide.thumbnail(512)
    mask = tissue.tissue_mask(thumb)
    assert 0.2 < mask.mean() < 0.6  # a strip of tissue on glass
    assert not mask[100:150, :100].any()  # glass left of the section
    assert tissue.tile_problem(thumb[300:340, 200:240]) is None
