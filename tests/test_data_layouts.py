"""Name parsers of the BreakHis and IDC layouts, on the real files of ../shared/data."""

from __future__ import annotations

import collections
import os
import re

import pytest

from histopath.data import layouts
from histopath.data.layouts import LayoutNameError, parse_breakhis_path, parse_idc_path
from histopath.errors import ConfigError, DataError

BREAKHIS_224 = "breakhis-200x-224"
BREAKHIS_FULL = "breakhis-full-size-samples"


def _all_files(folder):
    return sorted(
        os.path.join(root, name) for root, _, names in os.walk(folder) for name in names
    )


@pytest.mark.parametrize("subset, count", [(BREAKHIS_224, 585), (BREAKHIS_FULL, 21)])
def test_every_real_breakhis_file_parses(shared_data, subset, count):
    source = shared_data / subset
    scan = layouts.scan_source("breakhis", str(source))
    assert scan.skipped == []
    assert len(scan.files) == count == len([f for f in _all_files(source) if f.endswith(".png")])
    for parsed in scan.files:
        # Independent re-derivation from the path: folder class, subtype, magnification.
        parts = parsed.relative_path.split("/")
        assert parts[:3] == ["BreaKHis_v1", "histology_slides", "breast"]
        assert parsed.label == {"benign": 0, "malignant": 1}[parts[3]]
        assert layouts.BREAKHIS_SUBTYPES[parsed.subtype][0] == parts[5]
        assert parts[7] == f"{parsed.magnification}X"
        assert parts[6].endswith("-" + parsed.slide_id)
        assert parsed.slide_id.startswith(parsed.patient_id)
        assert re.fullmatch(r"\d+", parsed.patient_id)
        assert (source / parsed.relative_path).is_file()


def test_breakhis_224_patients_and_labels(shared_data):
    scan = layouts.scan_source("breakhis", str(shared_data / BREAKHIS_224))
    labels = collections.defaultdict(set)
    slides = collections.defaultdict(set)
    for parsed in scan.files:
        labels[parsed.patient_id].add(parsed.label)
        slides[parsed.patient_id].add(parsed.slide_id)
        assert parsed.magnification == 200
    assert len(labels) == 31
    assert all(len(v) == 1 for v in labels.values())
    patient_label = {p: next(iter(v)) for p, v in labels.items()}
    assert sum(1 for v in patient_label.values() if v == 0) == 7
    assert sum(1 for v in patient_label.values() if v == 1) == 24
    # 29960AB (fibroadenoma) and 29960CD (adenosis) are one patient.
    assert slides["29960"] == {"29960AB", "29960CD"}
    subtypes = {p.subtype for p in scan.files if p.patient_id == "29960"}
    assert subtypes == {"F", "A"}
    assert slides["18842"] == {"18842", "18842D"}


def test_full_size_samples_mixed_magnifications(shared_data):
    scan = layouts.scan_source("breakhis", str(shared_data / BREAKHIS_FULL))
    assert {p.magnification for p in scan.files} == {40, 100, 200, 400}
    only_200 = layouts.scan_source("breakhis", str(shared_data / BREAKHIS_FULL), (200,))
    assert {p.magnification for p in only_200.files} == {200}
    assert len(only_200.files) + sum(only_200.filtered.values()) == 21


def test_source_may_point_inside_the_breakhis_tree(shared_data):
    slide = (shared_data / BREAKHIS_224 / "BreaKHis_v1/histology_slides/breast/benign/SOB"
             / "adenosis/SOB_B_A_14-29960CD")
    scan = layouts.scan_source("breakhis", str(slide))
    assert scan.files and scan.skipped == []
    assert all(p.relative_path.startswith("200X/") for p in scan.files)
    assert {p.patient_id for p in scan.files} == {"29960"}
    breast = shared_data / BREAKHIS_224 / "BreaKHis_v1/histology_slides/breast"
    assert len(layouts.scan_source("breakhis", str(breast)).files) == 585


def test_slide_ids_group_by_leading_digits():
    a = parse_breakhis_path(
        "malignant/SOB/ductal_carcinoma/SOB_M_DC_14-23060AB/100X/SOB_M_DC-14-23060AB-100-001.png")
    b = parse_breakhis_path(
        "malignant/SOB/ductal_carcinoma/SOB_M_DC_14-23060CD/100X/SOB_M_DC-14-23060CD-100-001.png")
    assert a.patient_id == b.patient_id == "23060"
    assert (a.slide_id, b.slide_id) == ("23060AB", "23060CD")
    assert (a.label, a.subtype, a.magnification) == (1, "DC", 100)


def test_idc_real_patients_and_known_file(shared_data):
    scan = layouts.scan_source("idc", str(shared_data / "idc"))
    assert scan.skipped == []
    assert len(scan.files) == 22557
    assert len({p.patient_id for p in scan.files}) == 21
    counts = collections.Counter(p.label for p in scan.files)
    assert counts == {0: 17754, 1: 4803}
    assert {p.label for p in scan.files if p.patient_id == "8956"} == {0}
    known = {p.relative_path: p for p in scan.files}["8863/1/8863_idx5_x1001_y1501_class1.png"]
    assert (known.label, known.patient_id, known.patch_x, known.patch_y) == (1, "8863", 1001, 1501)
    for parsed in scan.files[::97]:  # independent check of folders vs fields
        patient, klass, _ = parsed.relative_path.split("/")
        assert (patient, int(klass)) == (parsed.patient_id, parsed.label)


@pytest.mark.parametrize(
    "path, reason",
    [
        ("benign/SOB/adenosis/SOB_B_A_14-1/200X/SOB_M_A-14-1-200-001.png", "subtype A is benign"),
        ("benign/SOB/ductal_carcinoma/SOB_M_DC_14-1/200X/SOB_M_DC-14-1-200-001.png",
         "class folder 'benign'"),
        ("malignant/SOB/adenosis/SOB_B_A_14-1/200X/SOB_B_A-14-1-200-001.png",
         "class folder 'malignant'"),
        ("benign/SOB/adenosis/SOB_B_A_14-1/100X/SOB_B_A-14-1-200-001.png",
         "magnification folder '100X'"),
        ("benign/SOB/adenosis/SOB_B_A_14-2/200X/SOB_B_A-14-1-200-001.png", "slide folder"),
        ("benign/SOB/fibroadenoma/SOB_B_A_14-1/200X/SOB_B_A-14-1-200-001.png",
         "subtype folder 'fibroadenoma'"),
        ("benign/SOB/adenosis/SOB_B_A_14-1/200X/SOB_B_A-14-1-300-001.png", "magnification 300"),
        ("benign/SOB/adenosis/SOB_B_XX_14-1/200X/SOB_B_XX-14-1-200-001.png", "unknown BreakHis subtype"),
        ("benign/SOB/adenosis/SOB_B_A_14-1/200X/SOB_B_A_14-1-200-001.png", "does not match"),
        ("benign/SOB/adenosis/SOB_B_A_14-1/200X/SOB_B_A-14-1-200-001.txt", "not an image"),
        ("benign/SOB/adenosis/SOB_B_A_14-1/200X/notes.png", "does not match"),
        ("benign/other/adenosis/SOB_B_A_14-1/200X/SOB_B_A-14-1-200-001.png", "folder 'other'"),
    ],
)
def test_malformed_breakhis_paths_are_rejected_with_reasons(path, reason):
    with pytest.raises(LayoutNameError, match=re.escape(reason)):
        parse_breakhis_path(path)


@pytest.mark.parametrize(
    "path, reason",
    [
        ("8863/0/8863_idx5_x1_y1_class1.png", "class folder '0' disagrees"),
        ("8864/1/8863_idx5_x1_y1_class1.png", "patient folder '8864' disagrees"),
        ("8863/1/8863_idx5_x1_y1_class2.png", "neither 0 nor 1"),
        ("8863/1/8863_idx6_x1_y1_class1.png", "does not match the IDC pattern"),
        ("8863/1/8863_idx5_xA_y1_class1.png", "does not match the IDC pattern"),
        ("8863/pos/8863_idx5_x1_y1_class1.png", "folder 'pos'"),
    ],
)
def test_malformed_idc_paths_are_rejected_with_reasons(path, reason):
    with pytest.raises(LayoutNameError, match=re.escape(reason)):
        parse_idc_path(path)


def test_bad_names_in_a_tree_are_skipped_not_fatal(tmp_path):
    good = tmp_path / "8863" / "1" / "8863_idx5_x51_y101_class1.png"
    bad = tmp_path / "8863" / "0" / "8863_idx5_x1_y1_class1.png"
    stray = tmp_path / "8863" / "notes.txt"
    for path in (good, bad, stray):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    scan = layouts.scan_source("idc", str(tmp_path))
    assert [p.relative_path for p in scan.files] == ["8863/1/8863_idx5_x51_y101_class1.png"]
    reasons = {s.path: s.reason for s in scan.skipped}
    assert "class folder '0' disagrees" in reasons["8863/0/8863_idx5_x1_y1_class1.png"]
    assert "does not match" in reasons["8863/notes.txt"]


def test_duplicate_file_names_are_skipped(tmp_path):
    for top in ("a", "b"):
        path = tmp_path / top / "8863" / "1" / "8863_idx5_x51_y101_class1.png"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
    scan = layouts.scan_source("idc", str(tmp_path))
    assert [p.relative_path for p in scan.files] == ["a/8863/1/8863_idx5_x51_y101_class1.png"]
    assert scan.skipped[0].path == "b/8863/1/8863_idx5_x51_y101_class1.png"
    assert "duplicate of a/8863/1/" in scan.skipped[0].reason


def test_wrong_layout_missing_or_empty_source_is_a_data_error(shared_data, tmp_path):
    with pytest.raises(DataError, match=r"not in the idc layout.*--dataset breakhis"):
        layouts.scan_source("idc", str(shared_data / BREAKHIS_FULL))
    with pytest.raises(DataError, match=r"not in the breakhis layout.*--dataset idc"):
        layouts.scan_source("breakhis", str(shared_data / "idc" / "8956"))
    with pytest.raises(DataError, match="does not exist"):
        layouts.scan_source("idc", str(tmp_path / "missing"))
    with pytest.raises(DataError, match="holds no files"):
        layouts.scan_source("idc", str(tmp_path))
    with pytest.raises(ConfigError):
        layouts.scan_source("idc", str(tmp_path), magnifications=(200,))
    with pytest.raises(ConfigError):
        layouts.parse_magnifications("200,300")
    assert layouts.parse_magnifications("400,40X") == (40, 400)
