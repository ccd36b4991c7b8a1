"""`bench.cv_predictions.held_out_estimate` on tiny synthetic predictions."""

from __future__ import annotations

import numpy as np
import pytest

from bench.cv_predictions import held_out_estimate
from histopath.evaluation.operating_point import balanced_accuracy_threshold

pytestmark = pytest.mark.bench  # tests of the benchmarks: opt-in (`pytest -m bench`)


def _predictions():
    patients = np.repeat([f"p{i}" for i in range(6)], 10)
    labels = np.repeat([1, 0, 1, 0, 1, 0], 10)
    rng = np.random.default_rng(0)
    probability = np.clip(0.25 + 0.4 * labels + rng.normal(0, 0.15, len(labels)), 0, 1)
    probability[patients == "p4"] -= 0.3  # a fold whose scores sit lower than the others'
    return labels, probability, patients, [["p0", "p1"], ["p2", "p3"], ["p4", "p5"]]


def test_each_fold_is_called_at_the_threshold_of_the_other_folds():
    labels, probability, patients, groups = _predictions()
    estimate = held_out_estimate(labels, probability, patients, groups, seed=1)
    for held_out, threshold in zip(groups, estimate["fold_thresholds"]):
        others = ~np.isin(patients, held_out)
        assert threshold == pytest.approx(balanced_accuracy_threshold(labels[others], probability[others]))
    image = estimate["image_level"]["metrics"]
    assert image["auc"]["ci_low"] <= image["auc"]["value"] <= image["auc"]["ci_high"]
    # The pooled threshold chosen in hindsight can only do as well or better.
    hindsight = balanced_accuracy_threshold(labels, probability)
    called = probability >= hindsight
    best = (called[labels == 1].mean() + (~called)[labels == 0].mean()) / 2
    assert image["balanced_accuracy"]["value"] <= best + 1e-9
    assert estimate["patient_level"]["metrics"]["accuracy"]["value"] is not None


def test_perfectly_separated_predictions_score_one():
    labels, _, patients, groups = _predictions()
    estimate = held_out_estimate(labels, labels * 0.8 + 0.1, patients, groups, seed=1)
    image = estimate["image_level"]["metrics"]
    assert image["auc"]["value"] == pytest.approx(1.0)
    assert image["balanced_accuracy"]["value"] == pytest.approx(1.0)


def test_a_bag_size_loads_the_region_mosaics_ingest_writes(tmp_path):
    from PIL import Image

    from bench.cv_predictions import load_raw
    from histopath.data import bags, sample
    from histopath.data.layouts import scan_source

    sample.make_sample("idc", str(tmp_path / "idc"), patients=2, images_per_patient=16, seed=3)
    patches, patch_positions = load_raw("idc", str(tmp_path / "idc"), 50, False)
    regions, positions = load_raw("idc", str(tmp_path / "idc"), 100, False, bag_size=2)
    files = scan_source("idc", str(tmp_path / "idc")).files
    expected, _ = bags.group_into_regions(files, 2)
    assert positions == [region.origin for region in expected] and len(patch_positions) == len(files)
    assert regions.images.shape == (len(expected), 100, 100, 3)
    assert regions.labels.tolist() == [bags.bag_label(f.label for f in region.files) for region in expected]
    assert regions.patients.tolist() == [region.patient_id for region in expected]
    first = expected[0]
    mosaic = bags.assemble_region({first.cell(f): np.asarray(Image.open(tmp_path / "idc" / f.relative_path)
                                                             .convert("RGB")) for f in first.files}, 2)
    assert np.abs(regions.images[0].astype(int) - mosaic.astype(int)).max() <= 1
