"""bench/stain_cv.py: the paired comparison, the normalised copies, and a tiny real run on four
IDC patients (two folds, one epoch, two methods)."""

from __future__ import annotations

import json
import os

import histopath  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import pytest

from bench import stain_cv

pytestmark = pytest.mark.bench  # tests of the benchmarks: opt-in (`pytest -m bench`)

PATIENTS = ("8916", "9022", "9124", "8951")  # small slides, both classes each


def test_compare_gives_each_methods_auc_and_the_paired_difference_to_od_scaling():
    rng = np.random.default_rng(0)
    patients = np.repeat([f"p{i}" for i in range(12)], 20)
    labels = np.tile([0, 1], 120)
    scores = {"od_scaling": rng.uniform(size=240), "macenko": labels + rng.normal(0, 0.3, 240)}
    table = stain_cv.compare(labels, patients, scores, seed=1)
    assert 0.35 < table["od_scaling"]["auc"] < 0.65 and table["macenko"]["auc"] > 0.9
    low, high = table["macenko"]["difference_interval"]
    assert 0 < low < table["macenko"]["difference_to_od_scaling"] < high
    assert table["macenko"]["share_of_draws_better"] == 1.0
    assert "difference_interval" not in table["od_scaling"]


def test_normalized_copies_are_the_transforms_method_on_the_stored_images():
    import tensorflow as tf

    from histopath.models import stain_normalization

    images = np.random.default_rng(2).integers(0, 256, (5, 12, 12, 3), dtype=np.uint8)
    out = stain_cv.normalized(images, "reinhard", batch=2)
    expected = stain_normalization.normalize(tf.constant(images, tf.float32) / 255.0, "reinhard").numpy()
    assert out.dtype == np.uint8 and out.shape == images.shape
    assert np.abs(out.astype(float) - np.round(expected * 255.0)).max() <= 1


def test_a_tiny_real_comparison_holds_every_patient_out_once(shared_data, tmp_path):
    source = tmp_path / "idc"
    source.mkdir()
    for patient in PATIENTS:
        os.symlink(shared_data / "idc" / patient, source / patient)
    output = tmp_path / "stain_cv.json"
    argv = ["--data", str(source), "--methods", "none,od_scaling", "--folds", "2", "--epochs", "1",
            "--cache", str(tmp_path / "cache"), "--output", str(output)]
    assert stain_cv.main(argv) == 0
    result = json.loads(output.read_text())
    assert result["n_patients"] == 4 and sorted(sum(result["folds"], [])) == sorted(PATIENTS)
    assert set(result["methods"]) == {"none", "od_scaling"}
    assert 0.0 <= result["methods"]["none"]["auc"] <= 1.0
    assert "difference_interval" in result["methods"]["none"]
    folds = sorted(path.name for path in (tmp_path / "cache").glob("*.json"))
    assert len(folds) == 4 and len(list((tmp_path / "cache").glob("decoded-*.npz"))) == 1
    assert stain_cv.main(argv) == 0  # read back from the cache, same result
    again = json.loads(output.read_text())
    assert again["methods"]["none"]["auc"] == result["methods"]["none"]["auc"]
    assert again["settings"]["weight_averaging"] is None
    averaged = output.with_name("averaged.json")
    assert stain_cv.main([*argv[:-1], str(averaged), "--methods", "none", "--weight-averaging", "0.9"]) == 0
    assert json.loads(averaged.read_text())["settings"]["weight_averaging"] == 0.9
    assert len(list((tmp_path / "cache").glob("none-*.json"))) == 4  # its own folds, not the cached ones
