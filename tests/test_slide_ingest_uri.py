"""Slide spans read from a URI: a data root in TensorFlow's in-memory file system (`ram://`,
standing in for a `gs://` bucket) is ingested through the span store and gives the very
records a local copy of the same files gives.

`ram://` lives in this process only, so Beam runs in memory (`in_memory` DirectRunner)."""

from __future__ import annotations

import json
import uuid

import histopath  # noqa: F401  (before TensorFlow)
import pytest
import tensorflow as tf

from histopath import fileio, slide_writer
from histopath.components.ingest import ingest_window
from histopath.data import features, slide_layout, span_store, spans
from histopath.errors import DataError
from slide_samples import tissue_image

BEAM = ["--direct_running_mode=in_memory"]
SETTINGS = span_store.IngestSettings(dataset="slides", splits={"train": 0.5, "test": 0.5}, seed=3,
                                     tile_um=100.0, tile_px=32)


def _slide(path, seed: int, size: int = 600) -> None:
    slide_writer.write_pyramid(str(path), size, size, slide_writer.array_region(tissue_image(size, size, seed)),
                               mpp=0.5, compression="lossless")


def _local_root(tmp_path):
    """DATA/1/: three slides in two folders, a labels CSV and a GeoJSON for one slide."""
    span = tmp_path / "data" / "1"
    (span / "batch-a").mkdir(parents=True)
    (span / "batch-b").mkdir()
    _slide(span / "batch-a" / "s1.tif", 1)
    _slide(span / "batch-a" / "s2.tif", 2)
    _slide(span / "batch-b" / "s3.tif", 3)
    ring = [[0, 0], [400, 0], [400, 600], [0, 600], [0, 0]]
    (span / "batch-a" / "s1.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"classification": {"name": "Tumor"}}}]}))
    (span / "slides.csv").write_text("slide,patient,label\nbatch-a/s1.tif,A,1\nbatch-a/s2.tif,B,0\n"
                                     "batch-b/s3.tif,C,1\n")
    return tmp_path / "data"


@pytest.fixture
def bucket():
    """A fresh `ram://` folder, deleted afterwards."""
    root = f"ram://bucket-{uuid.uuid4().hex[:8]}"
    yield root
    fileio.remove_tree(root)


def _records(folder: str) -> dict:
    """(split, slide, x, y) -> every feature of the record, from an ingested span folder."""
    found = {}
    for split in ("train", "test"):
        paths = tf.io.gfile.glob(fileio.join(folder, split, "*.tfrecord.gz"))
        for raw in tf.data.TFRecordDataset(sorted(paths), compression_type="GZIP"):
            feature = tf.train.Example.FromString(raw.numpy()).features.feature
            key = (split, feature[features.SLIDE_ID].bytes_list.value[0].decode(),
                   feature[features.PATCH_X].int64_list.value[0], feature[features.PATCH_Y].int64_list.value[0])
            assert key not in found
            found[key] = {name: value.SerializeToString() for name, value in feature.items()}
    return found


def test_a_span_in_a_bucket_gives_the_records_of_its_local_copy(tmp_path, bucket):
    local = _local_root(tmp_path)
    remote = fileio.join(bucket, "data")
    fileio.copy_tree(str(local), remote)
    assert [s.name for s in spans.find_spans(remote, "slides")] == ["1"]
    local_span, remote_span = spans.find_spans(str(local), "slides")[0], spans.find_spans(remote, "slides")[0]
    assert remote_span.folder == f"{remote}/1"
    assert spans.fingerprint(remote_span) == spans.fingerprint(spans.find_spans(remote, "slides")[0])
    assert span_store.span_patients(remote_span, SETTINGS) == span_store.span_patients(local_span, SETTINGS) \
        == ["A", "B", "C"]

    from_local = ingest_window(str(local), str(tmp_path / "store-local"), SETTINGS, "all", 0, BEAM)
    from_remote = ingest_window(remote, str(tmp_path / "store-remote"), SETTINGS, "all", 0, BEAM)
    (local_record,), (remote_record,) = from_local["ingested"], from_remote["ingested"]
    assert remote_record.newly_ingested and remote_record.manifest["source"] == remote_span.folder
    local_tiles, remote_tiles = _records(local_record.folder), _records(remote_record.folder)
    assert len(remote_tiles) == remote_record.manifest["num_examples"] > 0
    assert remote_tiles == local_tiles  # same tiles, same pixels, labels, positions and splits

    by_slide = {s["slide_id"]: s for s in remote_record.manifest["slides"]}
    assert by_slide["s1"]["annotations"] == "batch-a/s1.geojson" and by_slide["s2"]["annotations"] is None
    assert by_slide["s1"]["qc"]["dropped"]["unannotated"] > 0  # the GeoJSON was read from the bucket
    for key in ("splits", "slides", "qc_totals", "tiling", "num_examples"):
        expected = local_record.manifest[key]
        if key == "slides":  # the time each slide took differs, nothing else
            strip = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]  # noqa: E731
            assert strip(remote_record.manifest[key]) == strip(expected)
        else:
            assert remote_record.manifest[key] == expected

    again = ingest_window(remote, str(tmp_path / "store-remote"), SETTINGS, "all", 0, BEAM)
    assert not again["ingested"][0].newly_ingested  # unchanged files: the same fingerprint, reused


def test_label_folders_and_bad_files_in_a_bucket(tmp_path, bucket):
    local = tmp_path / "src"
    (local / "benign").mkdir(parents=True)
    (local / "malignant").mkdir()
    _slide(local / "benign" / "b1.tif", 4, 300)
    _slide(local / "malignant" / "m1.tif", 5, 300)
    (local / "malignant" / "notes.txt").write_text("not a slide")
    fileio.copy_tree(str(local), bucket)
    assert slide_layout.is_slide_layout(bucket)
    assert [s.name for s in spans.find_spans(bucket, "slides")] == [spans.SINGLE_SPAN]
    entries = slide_layout.scan_slides(bucket)
    assert [(e.relative_path, e.patient_id, e.label) for e in entries] == [
        ("benign/b1.tif", "b1", 0), ("malignant/m1.tif", "m1", 1)]

    fileio.write_text(fileio.join(bucket, "csv", "slides.csv"), "slide,patient,label\nmissing.tif,P,1\n")
    with pytest.raises(DataError, match=rf"{bucket}/csv/slides.csv line 2: slide missing.tif not found"):
        slide_layout.scan_slides(fileio.join(bucket, "csv"))
    fileio.write_text(fileio.join(bucket, "bad.geojson"), '{"type": "FeatureCollection",\n "features": [}')
    with pytest.raises(DataError, match=rf"{bucket}/bad.geojson line 2: not JSON"):
        slide_layout.read_geojson(fileio.join(bucket, "bad.geojson"))
    with pytest.raises(DataError, match=rf"{bucket}/none.geojson: cannot read"):
        slide_layout.read_geojson(fileio.join(bucket, "none.geojson"))
    with pytest.raises(DataError, match=f"{bucket}/nowhere: not a folder"):
        slide_layout.scan_slides(fileio.join(bucket, "nowhere"))
