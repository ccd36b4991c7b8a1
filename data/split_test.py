"""Patient splits that never move (`histopath.data.split`): a pure function of the patient
id and the seed."""

from __future__ import annotations

import random

import pytest

from histopath.data import layouts
from histopath.data.layouts import ParsedFile
from histopath.data.split import (
    DEFAULT_SPLITS,
    assign_split,
    balance,
    check_every_split_has_patients,
    merge_split_entries,
    parse_split_spec,
    split_entry,
    split_files,
)
from histopath.errors import ConfigError, DataError


def _files(spec: dict[str, tuple[int, int]]) -> list[ParsedFile]:
    """spec: patient -> (negatives, positives) as IDC-like files."""
    files = []
    for patient, (negatives, positives) in spec.items():
        for i in range(negatives + positives):
            label = int(i >= negatives)
            files.append(ParsedFile(f"{patient}/{label}/{patient}_idx5_x{i}_y0_class{label}.png",
                                    "idc", label, patient, patch_x=i, patch_y=0))
    return files


def _synthetic(seed: int = 0, patients: int = 40) -> list[ParsedFile]:
    rng = random.Random(seed)
    return _files({
        f"p{i:03d}": (rng.randint(5, 60), rng.randint(1, 30) if i % 3 else 0)
        for i in range(patients)
    })


def _patients_by_split(split):
    return {name: {f.patient_id for f in files} for name, files in split.items()}


def test_no_patient_in_two_splits_and_every_file_kept():
    files = _synthetic()
    split = split_files(files, DEFAULT_SPLITS, seed=7)
    by_split = _patients_by_split(split)
    names = list(by_split)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not by_split[a] & by_split[b]
    assert sorted(f.relative_path for s in split.values() for f in s) == sorted(
        f.relative_path for f in files)


def test_a_patients_split_depends_on_its_id_and_the_seed_only():
    files = _synthetic()
    first = split_files(files, DEFAULT_SPLITS, seed=3)
    shuffled = list(files)
    random.Random(99).shuffle(shuffled)
    assert split_files(shuffled, DEFAULT_SPLITS, seed=3) == first  # listing order
    # Other patients (a new span, more patients) move nobody already placed.
    placed = {p: name for name, patients in _patients_by_split(first).items() for p in patients}
    more = split_files(files + _files({f"new{i}": (5, 1) for i in range(30)}), DEFAULT_SPLITS, seed=3)
    assert {p: name for name, patients in _patients_by_split(more).items() for p in patients
            if p in placed} == placed
    # A mapping in another order (as after a JSON round trip) gives the same splits.
    reordered = dict(reversed(list(DEFAULT_SPLITS.items())))
    assert all(assign_split(p, reordered, 3) == placed[p] for p in placed)
    # Another seed places them differently.
    assert _patients_by_split(split_files(files, DEFAULT_SPLITS, seed=4)) != _patients_by_split(first)


def test_patient_shares_follow_the_fractions_on_average():
    counts = {name: 0 for name in DEFAULT_SPLITS}
    for index in range(20000):
        counts[assign_split(f"patient-{index}", DEFAULT_SPLITS, seed=42)] += 1
    for name, fraction in DEFAULT_SPLITS.items():
        assert abs(counts[name] / 20000 - fraction) < 0.01, (name, counts)


def test_balance_reports_each_split_against_the_whole():
    files = _files({"a": (10, 0), "b": (4, 6), "c": (8, 2), "d": (5, 0)})
    entries = {"x": split_entry([f for f in files if f.patient_id in "ab"]),
               "y": split_entry([f for f in files if f.patient_id in "cd"])}
    assert entries["x"]["patient_labels"] == {"a": 0, "b": 1}
    assert entries["x"]["label_counts"] == {"benign": 14, "malignant": 6}
    report = balance(entries)
    assert report["x"]["patients"] == {"benign": 1, "malignant": 1}
    assert report["x"]["malignant_share_of_images"] == pytest.approx(6 / 20)
    whole = 8 / 35
    assert report["x"]["difference_from_all"]["malignant_share_of_images"] == pytest.approx(6 / 20 - whole, abs=1e-4)
    assert report["y"]["difference_from_all"]["malignant_share_of_patients"] == pytest.approx(0.5 - 0.5)
    # The same split over two spans: a patient malignant in either span is malignant.
    merged = merge_split_entries([{"patient_labels": {"a": 0}, "label_counts": {"benign": 3, "malignant": 0}},
                                  {"patient_labels": {"a": 1, "e": 0}, "label_counts": {"benign": 1, "malignant": 2}}])
    assert merged == {"patient_labels": {"a": 1, "e": 0}, "label_counts": {"benign": 4, "malignant": 2}}


def test_real_idc_split_is_disjoint(shared_data):
    scan = layouts.scan_source("idc", str(shared_data / "idc"))
    split = split_files(scan.files, DEFAULT_SPLITS, seed=42)
    by_split = _patients_by_split(split)
    assert sum(len(p) for p in by_split.values()) == 21
    assert len(set().union(*by_split.values())) == 21
    assert sum("8956" in p for p in by_split.values()) == 1  # the negatives-only patient, once


def test_an_empty_split_is_a_data_error_naming_it():
    two = split_files(_files({"a": (3, 1), "b": (2, 0)}), DEFAULT_SPLITS, seed=0)
    with pytest.raises(DataError, match=r"split\(s\) .* received no patient.*seed \(0\)"):
        check_every_split_has_patients(two, 0, "SOURCE")


def test_custom_split_names_and_spec_errors():
    assert parse_split_spec("fit=0.8, holdout=0.2") == {"fit": 0.8, "holdout": 0.2}
    split = split_files(_synthetic(), parse_split_spec("fit=0.8,holdout=0.2"), 0)
    assert set(split) == {"fit", "holdout"}
    for bad, message in [
        ("train=0.7,eval=0.2", "sum to 1"),
        ("train=0.7,train=0.3", "given twice"),
        ("train=1.2,eval=-0.2", "must be in"),
        ("train", "NAME=FRACTION"),
        ("tr/ain=1", "letters, digits"),
        ("train=abc", "not a number"),
        ("", "no split"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_split_spec(bad)
