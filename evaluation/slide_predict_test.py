"""The slide answer, the model's scale, the QuPath GeoJSON and the heat-map on tiny arrays."""

from __future__ import annotations

import numpy as np
import pytest

from histopath.errors import ConfigError
from histopath.evaluation import slide_predict


def test_model_scale_sources():
    assert slide_predict.model_scale({"dataset": "idc", "image_size": 64}) == slide_predict.ModelScale(
        4.0, 50, "assumed: an IDC model sees 50 px patches at about 4 µm/px (40x downsampled 16:1)")
    recorded = slide_predict.model_scale({"mpp": 0.5, "tile_px": 224, "dataset": "breakhis"})
    assert (recorded.mpp, recorded.tile_px, recorded.tile_um, recorded.source) == (0.5, 224, 112.0, "model_info")
    given = slide_predict.model_scale({"dataset": "breakhis", "image_size": 96}, model_mpp=1.0)
    assert (given.tile_px, given.tile_um, given.source) == (96, 96.0, "caller")
    with pytest.raises(ConfigError, match="pass --model-mpp"):
        slide_predict.model_scale({"dataset": "breakhis", "model_name": "densenet"})


def test_geojson_tiles_in_level0_pixels():
    tiles = [{"x": 100, "y": 50, "size": 10, "probability": 0.7, "tissue_fraction": 1.0},
             {"x": 110, "y": 50, "size": 10, "probability": 0.2, "tissue_fraction": 0.5}]
    collection = slide_predict.tiles_geojson(tiles, 0.5, ["benign", "malignant"])
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == 2
    first, second = collection["features"]
    assert first["geometry"] == {"type": "Polygon",
                                 "coordinates": [[[100, 50], [110, 50], [110, 60], [100, 60], [100, 50]]]}
    assert first["properties"]["classification"]["name"] == "malignant"
    assert second["properties"]["classification"]["name"] == "benign"
    assert first["properties"]["measurements"] == {"probability": 0.7, "tissue_fraction": 1.0}


def test_heatmap_colours_only_the_called_tiles():
    thumbnail = np.full((20, 30, 3), 255, np.uint8)
    tiles = [{"x": 0, "y": 0, "size": 20, "probability": 1.0}, {"x": 20, "y": 0, "size": 20, "probability": 0.0}]
    image = np.asarray(slide_predict.heatmap_image(thumbnail, 0.5, tiles))  # 10 thumbnail px per tile
    assert image.shape == (20, 30, 3)
    hot, cold = image[5, 5].astype(int), image[5, 15].astype(int)
    assert hot.sum() > cold.sum()  # inferno: yellow at 1, black at 0
    assert tuple(image[5, 25]) == (255, 255, 255) and tuple(image[15, 5]) == (255, 255, 255)


def test_prepared_batches_in_order_and_errors_reach_the_caller(tmp_path):
    from histopath import slide_writer, slides, tiling

    rng = np.random.default_rng(0)
    image = np.full((400, 400, 3), 245, np.uint8)
    image[:, :200] = np.clip(np.array((220, 120, 170)) + rng.normal(0, 30, (400, 200, 3)), 0, 255).astype(np.uint8)
    path = tmp_path / "half.tif"
    slide_writer.write_pyramid(path, 400, 400, slide_writer.array_region(image), mpp=1.0, compression="lossless")
    with slides.open_slide(path) as slide:
        tiler = tiling.Tiler(slide, tile_um=50, tile_px=25)  # 8x8 cells, the left 4 columns tissue
        batches = list(slide_predict._prepared_batches(tiler, 5))
        assert [len(tiles) for tiles, _ in batches] == [5] * 6 + [2]
        cells = [(t.row, t.column) for tiles, _ in batches for t in tiles]
        assert cells == [(r, c) for r in range(8) for c in range(4)]
        assert all(len(inputs) == len(tiles) and inputs[0].startswith(b"\x89PNG") for tiles, inputs in batches)

        original, calls = slide.read_region, []

        def failing(*args):
            calls.append(args)
            if len(calls) == 7:
                raise slides.SlideError(f"{path}: cannot read the region")
            return original(*args)

        slide.read_region = failing
        with pytest.raises(slides.SlideError, match="half.tif: cannot read the region"):
            list(slide_predict._prepared_batches(tiling.Tiler(slide, tile_um=50, tile_px=25), 5))


def test_prepared_batches_stop_when_the_caller_stops(tmp_path):
    from histopath import slide_writer, slides, tiling

    rng = np.random.default_rng(2)
    image = np.clip(np.array((220, 120, 170)) + rng.normal(0, 30, (400, 400, 3)), 0, 255).astype(np.uint8)
    path = tmp_path / "full.tif"
    slide_writer.write_pyramid(path, 400, 400, slide_writer.array_region(image), mpp=1.0, compression="lossless")
    with slides.open_slide(path) as slide:
        tiler = tiling.Tiler(slide, tile_um=25, tile_px=25)  # 256 tissue cells, 64 batches of 4
        batches = slide_predict._prepared_batches(tiler, 4)
        first = next(batches)
        batches.close()  # the consumer gives up (e.g. the model refused a batch): the reader ends too
    assert len(first[0]) == 4
    assert tiler.counts.kept < 256  # it did not read the whole slide


def test_the_models_band_applies_to_a_slide_only_at_the_models_own_threshold():
    band = {"low": 0.4, "high": 0.7}
    assert slide_predict.slide_band(band, 0.55, 0.55) == band
    assert slide_predict.slide_band(band, 0.30, 0.55) is None  # an aggregation threshold of its own
    assert slide_predict.how_sure(0.5, 0.55, band) == {"uncertainty": pytest.approx(0.5 / 0.55, abs=1e-6),
                                                        "not_sure": True}
    assert slide_predict.how_sure(0.9, 0.55, None)["not_sure"] is False
    assert slide_predict.how_sure(None, 0.55, band) == {"uncertainty": None, "not_sure": None}
