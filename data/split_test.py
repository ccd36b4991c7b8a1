"""Patient splits that are stable and balanced (`histopath.data.split`)."""

from __future__ import annotations

import random

import pytest

from histopath.data import layouts
from histopath.data.layouts import ParsedFile
from histopath.data.split import (
    DEFAULT_SPLITS,
    assign_balanced,
    balance,
    check_cohort,
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


def test_the_split_depends_on_the_cohort_and_the_seed_not_on_the_listing_order():
    files = _synthetic()
    first = split_files(files, DEFAULT_SPLITS, seed=3)
    shuffled = list(files)
    random.Random(99).shuffle(shuffled)
    assert split_files(shuffled, DEFAULT_SPLITS, seed=3) == first
    reordered = dict(reversed(list(DEFAULT_SPLITS.items())))  # as after a JSON round trip
    assert split_files(files, reordered, seed=3) == first
    assert _patients_by_split(split_files(files, DEFAULT_SPLITS, seed=4)) != _patients_by_split(first)


def _strata(benign: int, malignant: int, prefix: str = "") -> dict[str, int]:
    return {**{f"{prefix}b{i}": 0 for i in range(benign)}, **{f"{prefix}m{i}": 1 for i in range(malignant)}}


def _counts(assignment: dict[str, str], strata: dict[str, int]) -> dict[tuple[str, int], int]:
    counts: dict[tuple[str, int], int] = {}
    for patient, split in assignment.items():
        counts[split, strata[patient]] = counts.get((split, strata[patient]), 0) + 1
    return counts


@pytest.mark.parametrize("benign, malignant, expected", [
    # The project's BreakHis cohort: 7 benign, 24 malignant.
    (7, 24, {("train", 0): 5, ("eval", 0): 1, ("test", 0): 1}),
    # 3 of a class: one in every split.
    (3, 10, {("train", 0): 1, ("eval", 0): 1, ("test", 0): 1}),
    # 2 of each: the training split gets both classes, every split a patient.
    (2, 2, {("train", 0): 1, ("train", 1): 1}),
])
def test_new_patients_are_balanced_by_class(benign, malignant, expected):
    strata = _strata(benign, malignant)
    for seed in range(5):
        counts = _counts(assign_balanced(strata, DEFAULT_SPLITS, seed), strata)
        assert {key: counts.get(key, 0) for key in expected} == expected, (seed, counts)
        assert all(any(counts.get((split, label), 0) for label in (0, 1)) for split in DEFAULT_SPLITS)


def test_large_cohorts_follow_the_fractions_in_each_class():
    strata = _strata(50, 120)
    counts = _counts(assign_balanced(strata, DEFAULT_SPLITS, 42), strata)
    for (split, label), count in counts.items():
        total = 50 if label == 0 else 120
        assert abs(count - DEFAULT_SPLITS[split] * total) <= 1, (split, label, counts)


def test_placed_patients_never_move_and_new_ones_restore_the_balance():
    strata = _strata(5, 5)
    first = assign_balanced(strata, DEFAULT_SPLITS, seed=1)
    fixed = {patient: (split, strata[patient]) for patient, split in first.items()}
    more = {**strata, **_strata(5, 5, prefix="new-")}
    second = assign_balanced(more, DEFAULT_SPLITS, seed=1, fixed=fixed)
    assert {p: second[p] for p in first} == first
    counts = _counts(second, more)
    assert {counts[split, label] for split in ("eval", "test") for label in (0, 1)} <= {1, 2}
    assert counts["train", 0] == counts["train", 1] == 7
    # Only the first placement counts for a patient seen again (a later span's images).
    assert assign_balanced({"b0": 0}, DEFAULT_SPLITS, seed=9, fixed=fixed) == {"b0": first["b0"]}


def test_a_skewed_earlier_placement_is_evened_out_by_the_new_patients():
    fixed = {f"old{i}": ("train", 0) for i in range(6)}  # an earlier span put benign in train only
    strata = _strata(4, 0, prefix="new-")
    placed = assign_balanced(strata, DEFAULT_SPLITS, seed=0, fixed=fixed)
    values = list(placed.values())  # 10 benign: 7 / 1.5 / 1.5 wanted
    assert values.count("train") == 1 and sorted({values.count("eval"), values.count("test")}) == [1, 2]


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


def test_a_cohort_too_small_is_one_error_naming_the_minimum():
    one_benign = split_files(_files({"a": (3, 0), "b": (0, 2), "c": (0, 1)}), DEFAULT_SPLITS, seed=0)
    with pytest.raises(DataError, match=r"SOURCE: .*1 benign and 2 malignant.*at least 2 of each class and "
                                        r"4 patients in all \(one of each class to train, one for each other"):
        check_cohort({name: split_entry(files) for name, files in one_benign.items()}, DEFAULT_SPLITS, "SOURCE")

    def entry(patients: dict[str, int], benign: int, malignant: int) -> dict:
        return {"patient_labels": patients, "label_counts": {"benign": benign, "malignant": malignant}}

    check_cohort({"train": entry({"a": 0, "b": 1}, 3, 2), "eval": entry({"c": 0}, 1, 0),
                  "test": entry({"d": 1}, 0, 1)}, DEFAULT_SPLITS, "SOURCE")
    with pytest.raises(DataError, match="the train split holds no benign image"):
        check_cohort({"train": entry({"a": 1}, 0, 4), "eval": entry({"c": 0}, 1, 0),
                      "test": entry({"d": 0}, 1, 0)}, DEFAULT_SPLITS, "SOURCE")
    # IDC: a slide holds both classes, so two "malignant" patients can train and test.
    fractions = {"train": 0.5, "test": 0.5}
    check_cohort({"train": entry({"a": 1}, 30, 5), "test": entry({"b": 1}, 20, 9)}, fractions, "SOURCE")


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


@pytest.mark.parametrize("dataset, folder", [("breakhis", "breakhis-200x-224"), ("idc", "idc")])
def test_the_real_cohorts_split_with_both_classes_everywhere_at_any_seed(shared_data, dataset, folder):
    """The default split of the project's own data: every split holds both classes (IDC:
    the negatives-only patient and positive ones), and the train and eval patients allow the
    default 5 patient folds, whatever the seed."""
    files = layouts.scan_source(dataset, str(shared_data / folder)).files
    for seed in range(10):
        split = split_files(files, DEFAULT_SPLITS, seed)
        entries = {name: split_entry(part) for name, part in split.items()}
        check_cohort(entries, DEFAULT_SPLITS, folder)
        labels = {name: entry["patient_labels"] for name, entry in entries.items()}
        if dataset == "breakhis":
            assert all(set(labels[name].values()) == {0, 1} for name in DEFAULT_SPLITS), (seed, labels)
            learn = list(labels["train"].values()) + list(labels["eval"].values())
            assert learn.count(0) >= 5, (seed, learn)
