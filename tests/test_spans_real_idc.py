"""Spans on real images: `../shared/data/idc` cut by patient into two spans of symlinks
(two patients' patches in both), ingested span by span as the pipeline's first node does
(`components.ingest.ingest_window`, the Beam ingestion of `histopath ingest`).

Checked: the second run ingests only span 2 and names its new patients; no patient is in
two splits; the patients in both spans keep their split; the window's test set is the union
of both spans' test patients; a third run with nothing new ingests nothing and does not
retrain.
"""

from __future__ import annotations

import pathlib

import pytest

from histopath.components.ingest import ingest_window
from histopath.data import span_store
from histopath.data.split import DEFAULT_SPLITS

PATCHES_PER_CLASS = 20  # of each patient: enough for real shards, quick to ingest
BEAM = ["--direct_running_mode=in_memory"]


def _link(shared: pathlib.Path, root: pathlib.Path, span: str, patient: str, part: slice) -> None:
    for label in ("0", "1"):
        patches = sorted((shared / "idc" / patient / label).glob("*.png"))[part]
        target = root / span / patient / label
        target.mkdir(parents=True, exist_ok=True)
        for patch in patches:
            (target / patch.name).symlink_to(patch)


@pytest.fixture(scope="module")
def two_span_runs(shared_data, tmp_path_factory):
    patients = sorted(p.name for p in (shared_data / "idc").iterdir() if p.is_dir())
    first, second, shared = patients[:12], patients[12:18], patients[:2]
    seed = 42
    root, store = tmp_path_factory.mktemp("idc-spans"), str(tmp_path_factory.mktemp("store"))
    settings = span_store.IngestSettings("idc", dict(DEFAULT_SPLITS), seed)
    for patient in first:
        _link(shared_data, root, "1", patient, slice(0, PATCHES_PER_CLASS))

    def run() -> dict:
        result = ingest_window(str(root), store, settings, "all", 0, BEAM)
        window = {record.name: record.fingerprint for record in result["ingested"]}
        if result["plan"].retrain:  # what the run report records after a training
            span_store.write_trained(span_store.settings_dir(store, settings), window)
        return result

    runs = [run()]
    for patient in second:
        _link(shared_data, root, "2", patient, slice(0, PATCHES_PER_CLASS))
    for patient in shared:  # more patches of two span-1 patients arrive with span 2
        _link(shared_data, root, "2", patient, slice(PATCHES_PER_CLASS, 2 * PATCHES_PER_CLASS))
    runs += [run(), run()]
    linked = sum(1 for _ in root.rglob("*.png"))
    return {"runs": runs, "first": first, "second": second, "shared": shared, "seed": seed, "linked": linked,
            "root": root, "store": store}


def _patient_splits(record) -> dict[str, str]:
    return {patient: split for split, details in record.manifest["splits"].items()
            for patient in details["patient_ids"]}


def test_the_second_run_ingests_only_the_new_span(two_span_runs):
    first_run, second_run, _ = two_span_runs["runs"]
    assert [(r.name, r.newly_ingested) for r in first_run["ingested"]] == [("1", True)]
    assert [(r.name, r.newly_ingested) for r in second_run["ingested"]] == [("1", False), ("2", True)]
    plan = second_run["plan"]
    assert plan.retrain and plan.new_spans == ("2",)
    assert sorted(plan.new_patients) == sorted(two_span_runs["second"])  # the shared ones are not new


def test_splits_never_move_and_the_test_set_is_the_union(two_span_runs):
    _, second_run, _ = two_span_runs["runs"]
    span1, span2 = second_run["ingested"]
    placed1, placed2 = _patient_splits(span1), _patient_splits(span2)
    for patient in two_span_runs["shared"]:
        assert placed1[patient] == placed2[patient]
    # Span 2's new patients are placed so that every split holds patients of the window.
    assert set(placed1.values()) == set(DEFAULT_SPLITS)
    assert all(second_run["window_splits"][split]["patient_labels"] for split in DEFAULT_SPLITS)
    test = {p for p, split in {**placed1, **placed2}.items() if split == "test"}
    assert set(second_run["window_splits"]["test"]["patient_labels"]) == test
    ingested = sum(r.manifest["num_examples"] + r.manifest["num_skipped"] for r in second_run["ingested"])
    assert ingested == two_span_runs["linked"]  # every linked patch, in exactly one span


def test_a_run_with_nothing_new_ingests_nothing_and_does_not_retrain(two_span_runs):
    third_run = two_span_runs["runs"][2]
    assert [r.newly_ingested for r in third_run["ingested"]] == [False, False]
    assert not third_run["plan"].retrain and "no new span" in third_run["plan"].reason


def test_changed_settings_keep_every_patients_split(two_span_runs):
    """Other settings (here the seed) are a new folder of records in the store, but the
    patients placed under the old ones keep their splits: no test patient moves into training."""
    before = {}
    for record in two_span_runs["runs"][1]["ingested"]:
        before.update(_patient_splits(record))
    other = span_store.IngestSettings("idc", dict(DEFAULT_SPLITS), two_span_runs["seed"] + 1)
    result = ingest_window(str(two_span_runs["root"]), two_span_runs["store"], other, "all", 0, BEAM)
    assert all(record.newly_ingested for record in result["ingested"])  # its own records...
    after = {}
    for record in result["ingested"]:
        after.update(_patient_splits(record))
    assert after == before  # ...with the splits recorded before
