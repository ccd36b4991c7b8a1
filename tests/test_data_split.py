"""Patient-disjoint, stratified, seeded splitting (`histopath.data.split`)."""

from __future__ import annotations

import random

import pytest

from histopath.data import layouts
from histopath.data.layouts import ParsedFile
from histopath.data.split import (
    DEFAULT_SPLITS,
    assign_patients,
    parse_split_spec,
    patient_strata,
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


def test_reproducible_with_a_seed_and_independent_of_listing_order():
    files = _synthetic()
    first = split_files(files, DEFAULT_SPLITS, seed=3)
    shuffled = list(files)
    random.Random(99).shuffle(shuffled)
    again = split_files(shuffled, DEFAULT_SPLITS, seed=3)
    assert first == again
    other = split_files(files, DEFAULT_SPLITS, seed=4)
    assert _patients_by_split(other) != _patients_by_split(first)


def test_stratified_image_counts_track_fractions():
    files = _synthetic(patients=60)
    split = split_files(files, DEFAULT_SPLITS, seed=1)
    strata = patient_strata(files)
    total = len(files)
    for name, fraction in DEFAULT_SPLITS.items():
        assert abs(len(split[name]) / total - fraction) < 0.05, name
        # Both strata (patients with / without positives) are in every split.
        assert {strata[f.patient_id][0] for f in split[name]} == {0, 1}
        assert {f.label for f in split[name]} == {0, 1}


def test_real_idc_split_is_disjoint_and_balanced(shared_data):
    scan = layouts.scan_source("idc", str(shared_data / "idc"))
    split = split_files(scan.files, DEFAULT_SPLITS, seed=42)
    by_split = _patients_by_split(split)
    assert sum(len(p) for p in by_split.values()) == 21
    assert len(set().union(*by_split.values())) == 21
    for name, fraction in DEFAULT_SPLITS.items():
        assert abs(len(split[name]) / len(scan.files) - fraction) < 0.06
        assert {f.label for f in split[name]} == {0, 1}
    # Patient 8956 (negatives only) lands in exactly one split.
    assert sum("8956" in p for p in by_split.values()) == 1


def test_every_split_gets_a_patient_even_with_small_strata():
    # 2 patients per stratum (< 3 splits): every split still gets at least one patient.
    files = _files({"a": (10, 0), "b": (12, 0), "c": (3, 5), "d": (4, 4)})
    for seed in range(10):
        split = split_files(files, DEFAULT_SPLITS, seed=seed)
        assert all(split[name] for name in DEFAULT_SPLITS), seed
    # Exactly as many patients as splits: one each.
    three = _files({"a": (10, 0), "b": (100, 0), "c": (1, 0)})
    assert sorted(len(_patients_by_split(split_files(three, DEFAULT_SPLITS, 0))[n])
                  for n in DEFAULT_SPLITS) == [1, 1, 1]


def test_too_few_patients_is_a_data_error():
    with pytest.raises(DataError, match="need at least 3 patients"):
        split_files(_files({"a": (3, 1), "b": (2, 0)}), DEFAULT_SPLITS, seed=0)
    assert assign_patients({"a": (0, 5), "b": (1, 5)}, {"train": 0.5, "test": 0.5}, 0) in (
        {"a": "train", "b": "test"}, {"a": "test", "b": "train"})


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
