"""`histopath idc-slides` on real IDC patients: the re-assembled slide's tiles are the
patches, at their offsets, with their labels."""

from __future__ import annotations

import csv
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from histopath import slides, tiling
from histopath.data import idc_slides
from histopath.errors import DataError

PATIENT = "8916"  # the smallest patient: 171 patches, 111 IDC-positive


@pytest.fixture(scope="module")
def reassembled(shared_data, tmp_path_factory) -> pathlib.Path:
    output = tmp_path_factory.mktemp("idc-slides")
    completed = subprocess.run(
        [sys.executable, "-m", "histopath.cli", "idc-slides", "--source", str(shared_data / "idc"),
         "--output", str(output), "--patient", PATIENT],
        capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert f'"patient": "{PATIENT}"' in completed.stdout
    return output


def test_slide_metadata_and_slide_labels(reassembled):
    with slides.open_slide(reassembled / f"{PATIENT}.tif") as slide:
        assert slide.mpp == pytest.approx((4.0, 4.0)) and slide.mpp_source == "file"
        assert slide.dimensions == (1200, 1700)  # max offset + 50 px
        assert len(slide.levels) == 2
    with open(reassembled / "slides.csv", newline="") as stream:
        assert list(csv.DictReader(stream)) == [{"slide": f"{PATIENT}.tif", "patient": PATIENT, "label": "1"}]


def test_tile_labels_match_the_patch_labels(reassembled, shared_data):
    labels = idc_slides.read_labels(str(reassembled / f"{PATIENT}.labels.csv"))
    assert len(labels) == 171 and sum(label.label for label in labels) == 111
    by_position = idc_slides.labels_by_position(labels)
    with slides.open_slide(reassembled / f"{PATIENT}.tif") as slide:
        tiler = tiling.Tiler(slide, tile_um=200, tile_px=50)  # one IDC patch per tile
        tiles = list(tiler)
    assert (tiler.grid.level, tiler.grid.read_px, tiler.grid.size0) == (0, 50, 50.0)
    assert len(tiles) >= 0.8 * len(labels)  # nearly every patch is tissue; glass is never kept
    source = shared_data / "idc" / PATIENT
    for tile in tiles:
        label = by_position.get((tile.x, tile.y))
        assert label is not None, f"tile at ({tile.x}, {tile.y}) is not on a patch"
        patch = source / str(label) / f"{PATIENT}_idx5_x{tile.x + 1}_y{tile.y + 1}_class{label}.png"
        assert patch.exists(), patch
        original = np.asarray(Image.open(patch).convert("RGB"), np.float32)
        h, w = original.shape[:2]
        assert np.abs(tile.pixels[:h, :w].astype(np.float32) - original).mean() < 10  # JPEG q90, chroma subsampled


def test_lossless_slide_holds_the_patch_pixels(shared_data, tmp_path):
    summary = idc_slides.reassemble_patient(str(shared_data / "idc" / PATIENT), str(tmp_path), compression="lossless")
    first = idc_slides.read_labels(summary["labels"])[0]
    patch = np.asarray(Image.open(shared_data / "idc" / PATIENT / str(first.label) / first.file).convert("RGB"))
    with slides.open_slide(summary["slide"]) as slide:
        np.testing.assert_array_equal(slide.read_region(first.x, first.y, 0, first.width, first.height), patch)


def test_refusals(shared_data, tmp_path):
    with pytest.raises(DataError, match="no patient folder 1234"):
        idc_slides.reassemble(str(shared_data / "idc"), str(tmp_path), patients=["1234"])
    with pytest.raises(DataError, match="not a folder"):
        idc_slides.reassemble(str(tmp_path / "none"), str(tmp_path))
    (tmp_path / "empty" / "77" / "0").mkdir(parents=True)
    with pytest.raises(DataError, match="no IDC patches"):
        idc_slides.reassemble(str(tmp_path / "empty"), str(tmp_path / "out"))
