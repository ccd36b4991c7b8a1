"""Slides as a data set: re-assembled IDC patients and an annotated synthetic slide, tiled
by Beam into tf.Examples whose labels, pixels and positions are checked."""

from __future__ import annotations

import io
import json

import histopath  # noqa: F401  (before TensorFlow)
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from histopath import slide_writer
from histopath.components import slide_ingest
from histopath.data import features, idc_slides
from histopath.errors import DataError

PATIENTS = ("8916", "9124")  # the two smallest IDC patients (171 and 465 patches)
BEAM = ["--direct_running_mode=in_memory"]


def _records(folder, split):
    paths = sorted(str(p) for p in (folder / split).glob("*.tfrecord.gz"))
    for raw in tf.data.TFRecordDataset(paths, compression_type="GZIP"):
        yield tf.train.Example.FromString(raw.numpy()).features.feature


@pytest.fixture(scope="module")
def idc_source(shared_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("idc-slides")
    idc_slides.reassemble(str(shared_data / "idc"), str(folder), PATIENTS, compression="lossless")
    return folder


def test_idc_slide_tiles_carry_the_patch_labels_and_pixels(idc_source, shared_data, tmp_path):
    out = tmp_path / "out"
    manifest = slide_ingest.ingest_slides(str(idc_source), str(out), splits="train=0.5,test=0.5",
                                          beam_args=BEAM, require_every_split=False)
    assert manifest["dataset"] == "slides" and manifest["tiling"]["mpp"] == 4.0
    assert {s["slide_id"] for s in manifest["slides"]} == set(PATIENTS)
    split_of = {p: name for name, split in manifest["splits"].items() for p in split["patient_ids"]}
    assert sorted(split_of) == sorted(PATIENTS) and len(set(split_of.values())) == 2  # patient-disjoint
    checked = 0
    for split in manifest["splits"]:
        for feature in _records(out, split):
            patient = feature[features.PATIENT_ID].bytes_list.value[0].decode()
            assert split_of[patient] == split
            x, y = feature[features.PATCH_X].int64_list.value[0], feature[features.PATCH_Y].int64_list.value[0]
            labels = idc_slides.labels_by_position(idc_slides.read_labels(str(idc_source / f"{patient}.labels.csv")))
            assert feature[features.LABEL].int64_list.value[0] == labels[(x, y)]
            assert feature[features.MPP].float_list.value[0] == pytest.approx(4.0)
            assert feature[features.SLIDE_ID].bytes_list.value[0].decode() == patient
            if checked < 20:  # lossless slide, 50 px tiles at level 0: the very patch
                tile = np.asarray(Image.open(io.BytesIO(feature[features.IMAGE].bytes_list.value[0])).convert("RGB"))
                row = next(r for r in idc_slides.read_labels(str(idc_source / f"{patient}.labels.csv"))
                           if (r.x, r.y) == (x, y))
                patch = np.asarray(Image.open(shared_data / "idc" / patient / str(row.label) / row.file).convert("RGB"))
                h, w = patch.shape[:2]
                assert np.array_equal(tile[:h, :w], patch)
            checked += 1
    assert checked == manifest["num_examples"] > 0
    for slide in manifest["slides"]:
        qc = slide["qc"]
        assert slide["examples"] == qc["kept"] and qc["total"] == qc["kept"] + sum(qc["dropped"].values())
    assert manifest["qc_totals"]["kept"] == manifest["num_examples"]


def _tissue_slide(path, width=1200, height=800, mpp=0.5):
    rng = np.random.default_rng(0)
    image = np.full((height, width, 3), 245, np.uint8)
    noise = rng.integers(0, 60, (height - 200, width - 200, 3), dtype=np.uint8)
    image[100:-100, 100:-100] = np.array([190, 90, 170], np.uint8) - noise // 2  # pink, textured tissue
    slide_writer.write_pyramid(str(path), width, height, slide_writer.array_region(image), mpp,
                               compression="lossless")


def test_geojson_annotations_label_tiles_and_unannotated_tiles_are_dropped(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    _tissue_slide(source / "s1.tif")
    _tissue_slide(source / "s2.tif")
    # 100 µm tiles = 200 px at 0.5 µm/px: the square covers tiles (1, 1) to (2, 2) exactly, and
    # tile (3, 1) for 30 %: too little to label it.
    ring = [[200, 200], [660, 200], [660, 600], [200, 600], [200, 200]]
    (source / "s1.geojson").write_text(json.dumps([{
        "type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"classification": {"name": "Tumor"}}}]))
    (source / "slides.csv").write_text("slide,patient,label\ns1.tif,A,1\ns2.tif,B,0\n")
    manifest = slide_ingest.ingest_slides(str(source), str(tmp_path / "out"), splits="train=1", tile_um=100,
                                          tile_px=40, beam_args=BEAM, require_every_split=False)
    by_slide = {s["slide_id"]: s for s in manifest["slides"]}
    s1, s2 = by_slide["s1"], by_slide["s2"]
    assert s1["annotations"] == "s1.geojson" and s2["annotations"] is None
    assert s1["qc"]["dropped"]["unannotated"] > 0 and "unannotated" not in s2["qc"]["dropped"]
    labels = {}
    for feature in _records(tmp_path / "out", "train"):
        slide = feature[features.SLIDE_ID].bytes_list.value[0].decode()
        x, y = feature[features.PATCH_X].int64_list.value[0], feature[features.PATCH_Y].int64_list.value[0]
        labels[(slide, x, y)] = feature[features.LABEL].int64_list.value[0]
        assert feature[features.HEIGHT].int64_list.value[0] == 40
        assert feature[features.MPP].float_list.value[0] == pytest.approx(2.5)
    s1_tiles = {(x, y): label for (slide, x, y), label in labels.items() if slide == "s1"}
    assert s1_tiles and set(s1_tiles.values()) == {1}
    assert sorted(s1_tiles) == [(200, 200), (200, 400), (400, 200), (400, 400)]
    assert {label for (slide, _, _), label in labels.items() if slide == "s2"} == {0}
    assert s1["examples"] == len(s1_tiles) and s2["examples"] == len(labels) - len(s1_tiles)


def test_a_cohort_too_small_is_refused_before_any_tiling(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    _tissue_slide(source / "s1.tif", 600, 600)
    (source / "slides.csv").write_text("slide,patient,label\ns1.tif,A,1\n")
    with pytest.raises(DataError, match="received no patient"):
        slide_ingest.ingest_slides(str(source), str(tmp_path / "out"), beam_args=BEAM)
    assert not (tmp_path / "out").exists()


def test_slide_spans_keep_each_patients_split_and_place_only_new_patients(tmp_path):
    from histopath.components.ingest import ingest_window
    from histopath.data import span_store

    root = tmp_path / "root"
    spans = {"1": [("a1", "P1", 1), ("b1", "P2", 0), ("c1", "P3", 1), ("d1", "P4", 0)],
             "2": [("a2", "P1", 1), ("e1", "P5", 1), ("f1", "P6", 0)]}
    for span, rows in spans.items():
        folder = root / span
        folder.mkdir(parents=True)
        for slide, _, _ in rows:
            _tissue_slide(folder / f"{slide}.tif", 600, 600)
        (folder / "slides.csv").write_text("slide,patient,label\n" + "".join(
            f"{slide}.tif,{patient},{label}\n" for slide, patient, label in rows))
    settings = span_store.IngestSettings(dataset="slides", splits={"train": 0.5, "test": 0.5}, seed=1,
                                         tile_um=100.0, tile_px=32)
    result = ingest_window(str(root), str(tmp_path / "store"), settings, "all", 0, BEAM)
    first, second = (record.manifest for record in result["ingested"])
    placed = {p: name for name, split in first["splits"].items() for p in split["patient_ids"]}
    again = {p: name for name, split in second["splits"].items() for p in split["patient_ids"]}
    assert again["P1"] == placed["P1"] and {"P5", "P6"} <= set(again)
    assert {"P5", "P6"}.isdisjoint(placed) and first["tiling"]["tile_px"] == 32
    assert all(record.folder.startswith(span_store.settings_dir(str(tmp_path / "store"), settings))
               for record in result["ingested"])
    assert settings.key() != span_store.IngestSettings("slides", {"train": 0.5, "test": 0.5}, 1,
                                                       tile_um=200.0, tile_px=32).key()


def test_the_real_aperio_slide_is_tiled_by_the_pipeline_as_predict_tiles_it(shared_data, tmp_path):
    """The real SVS in a labels-CSV data root beside a generated slide: ingestion reads its
    microns per pixel from the file and keeps exactly the tiles `predict` calls (the same
    `tiling.Tiler`), each 200 µm at 50 px."""
    from histopath import slides, tiling

    svs = shared_data / "wsi" / "cmu_small_region.svs"
    source = tmp_path / "src"
    source.mkdir()
    (source / "cmu.svs").symlink_to(svs)
    _tissue_slide(source / "other.tif", 1600, 1200)
    (source / "slides.csv").write_text("slide,patient,label\ncmu.svs,CMU,1\nother.tif,B,0\n")
    manifest = slide_ingest.ingest_slides(str(source), str(tmp_path / "out"), splits="train=1", tile_um=200,
                                          tile_px=50, beam_args=BEAM, require_every_split=False)
    entry = {s["slide_id"]: s for s in manifest["slides"]}["cmu"]
    with slides.open_slide(str(svs)) as slide:
        tiler = tiling.Tiler(slide, 200, 50)
        expected = sorted((tile.x, tile.y) for tile in tiler)
    assert entry["qc"]["kept"] == len(expected) > 0
    positions = []
    for feature in _records(tmp_path / "out", "train"):
        if feature[features.SLIDE_ID].bytes_list.value[0].decode() != "cmu":
            continue
        positions.append((feature[features.PATCH_X].int64_list.value[0], feature[features.PATCH_Y].int64_list.value[0]))
        assert feature[features.MPP].float_list.value[0] == pytest.approx(4.0)
        assert feature[features.HEIGHT].int64_list.value[0] == 50
        assert feature[features.PATIENT_ID].bytes_list.value[0] == b"CMU"
        assert feature[features.LABEL].int64_list.value[0] == 1
    assert sorted(positions) == expected
