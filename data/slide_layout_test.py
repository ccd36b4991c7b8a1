"""The slide layout: labels CSV, folder per label, GeoJSON and rectangle annotations, tile labels."""

from __future__ import annotations

import json

import numpy as np
import pytest

from histopath.data import slide_layout
from histopath.errors import DataError


def _touch(folder, *names):
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"II*\x00")


def test_slides_csv_lists_slides_with_patients_labels_and_annotations(tmp_path):
    _touch(tmp_path, "a.svs", "sub/b.tif")
    (tmp_path / "a.geojson").write_text("[]")
    (tmp_path / "sub" / "b.labels.csv").write_text("x,y,width,height,label\n")
    (tmp_path / "slides.csv").write_text("slide,patient,label,site\na.svs,P1,malignant,x\nsub/b.tif,P1,0,y\n")
    entries = slide_layout.scan_slides(str(tmp_path))
    assert entries == [slide_layout.SlideEntry("a.svs", "a", "P1", 1, "a.geojson"),
                       slide_layout.SlideEntry("sub/b.tif", "b", "P1", 0, "sub/b.labels.csv")]


@pytest.mark.parametrize("rows, message", [
    ("slide,label\na.svs,1\n", "line 1: missing column(s) patient"),
    ("slide,patient,label\na.svs,P1,maybe\n", "line 2: slide a.svs: label 'maybe' is not 0/1"),
    ("slide,patient,label\na.svs,P1,1\nmissing.svs,P2,0\n", "line 3: slide missing.svs not found"),
    ("slide,patient,label\na.svs,,1\n", "line 2: slide a.svs: empty patient"),
    ("slide,patient,label\na.svs,P1,1\na.svs,P2,0\n", "line 3: slide a.svs repeats the slide id a of line 2"),
    ("slide,patient,label\n../a.svs,P1,1\n", "line 2: slide ../a.svs must be a path inside"),
    ("slide,patient,label\na.svs,P1\n", "line 2: expected 3 columns"),
    ("slide,patient,label\n", "lists no slide"),
])
def test_bad_rows_of_the_labels_csv_are_refused_naming_file_and_line(tmp_path, rows, message):
    _touch(tmp_path, "a.svs")
    (tmp_path / "slides.csv").write_text(rows)
    with pytest.raises(DataError) as raised:
        slide_layout.scan_slides(str(tmp_path))
    assert str(tmp_path / "slides.csv") in str(raised.value)
    assert message in str(raised.value)


def test_a_folder_per_label_makes_each_slide_its_own_patient(tmp_path):
    _touch(tmp_path, "benign/n1.svs", "malignant/t1.ndpi", "malignant/notes.txt")
    entries = slide_layout.scan_slides(str(tmp_path))
    assert [(e.relative_path, e.patient_id, e.label) for e in entries] == [
        ("benign/n1.svs", "n1", 0), ("malignant/t1.ndpi", "t1", 1)]
    assert slide_layout.is_slide_layout(str(tmp_path))


def test_a_folder_without_slides_says_what_it_expected(tmp_path):
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(DataError, match="slides.csv .slide,patient,label. or a folder per label"):
        slide_layout.scan_slides(str(tmp_path))
    assert not slide_layout.is_slide_layout(str(tmp_path))


def _square(x, y, side, name, holes=()):
    ring = [[x, y], [x + side, y], [x + side, y + side], [x, y + side], [x, y]]
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring, *holes]},
            "properties": {"objectType": "annotation", "classification": {"name": name}}}


def test_geojson_tile_labels_follow_the_class_covering_most_of_the_tile(tmp_path):
    path = tmp_path / "s.geojson"
    hole = [[210, 10], [290, 10], [290, 90], [210, 90], [210, 10]]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        _square(0, 0, 200, "Tumor"),           # tiles (0, 0), (1, 0), (0, 1), (1, 1) of 100 px
        _square(100, 0, 100, "benign"),  # benign under the tumour: tumour wins
        _square(200, 0, 100, "benign", holes=[hole]),  # a ring: 36 % covered -> unannotated
        _square(300, 0, 60, "benign"),          # 36 % of tile (3, 0) -> unannotated
        _square(300, 100, 80, "benign"),        # 64 % of tile (3, 1) -> benign
    ]}))
    regions = slide_layout.read_geojson(str(path))
    labeller = slide_layout.TileLabeller(regions, size0=100, columns=5, rows=3)
    assert [labeller.label(c, 0) for c in range(5)] == [1, 1, None, None, None]
    assert [labeller.label(c, 1) for c in range(5)] == [1, 1, None, 0, None]
    assert labeller.label(0, 2) is None


@pytest.mark.parametrize("document, message", [
    ("{\n  \"type\": \"FeatureCollection\",\n  \"features\": [\n  oops\n]}", "line 4: not JSON"),
    ({"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": {"type": "Point",
      "coordinates": [1, 2]}, "properties": {"classification": {"name": "Tumor"}}}]},
     "feature 1: geometry 'Point' is not a Polygon"),
    ([_square(0, 0, 5, "Tumor"), _square(0, 0, 5, "Necrosis")], "feature 2: label 'Necrosis' is not 0/1"),
    ([{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]},
       "properties": {"label": 1}}], "feature 1: a ring needs at least 3 finite"),
    ([{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1]]]},
       "properties": {}}], "feature 1: no class"),
    ({"type": "Topology"}, "not GeoJSON features"),
])
def test_bad_geojson_is_refused_naming_file_and_feature(tmp_path, document, message):
    path = tmp_path / "bad.geojson"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    with pytest.raises(DataError) as raised:
        slide_layout.read_geojson(str(path))
    assert str(path) in str(raised.value) and message in str(raised.value)


def test_labelled_rectangles_label_the_tiles_they_fill(tmp_path):
    path = tmp_path / "p.labels.csv"
    path.write_text("x,y,width,height,label,file\n0,0,50,50,1,a.png\n50,0,50,50,0,b.png\n")
    labeller = slide_layout.TileLabeller(slide_layout.read_patch_labels(str(path)), size0=50, columns=3, rows=1)
    assert [labeller.label(c, 0) for c in range(3)] == [1, 0, None]


@pytest.mark.parametrize("rows, message", [
    ("x,y,width,label\n", "line 1: missing column(s) height"),
    ("x,y,width,height,label\n0,0,50,fifty,1\n", "line 2: x, y, width and height must be numbers"),
    ("x,y,width,height,label\n0,0,50,50,1\n0,0,0,50,1\n", "line 3: width and height must be positive"),
    ("x,y,width,height,label\n0,0,50,50,7\n", "line 2: label '7'"),
])
def test_bad_rectangle_rows_are_refused_naming_file_and_line(tmp_path, rows, message):
    path = tmp_path / "p.labels.csv"
    path.write_text(rows)
    with pytest.raises(DataError) as raised:
        slide_layout.read_patch_labels(str(path))
    assert str(path) in str(raised.value) and message in str(raised.value)


def test_tiles_of_a_slide_without_annotations_would_have_no_labeller_sample_grid():
    labeller = slide_layout.TileLabeller([], size0=10, columns=2, rows=2)
    assert labeller.samples.shape == (16, 16) and np.all(labeller.samples == -1)
    assert labeller.label(1, 1) is None


def test_numbered_span_folders_are_not_label_folders(tmp_path):
    _touch(tmp_path, "1/a.svs", "2/b.svs")
    (tmp_path / "1" / "slides.csv").write_text("slide,patient,label\na.svs,P1,1\n")
    assert not slide_layout.is_slide_layout(str(tmp_path))
    assert slide_layout.is_slide_layout(str(tmp_path / "1"))
