"""bench/idc_presets.py on a tiny synthetic cross-validation of IDC patches."""

from __future__ import annotations

import numpy as np
import pytest

from bench.idc_presets import context_columns, nested_choices, run, table

pytestmark = pytest.mark.bench  # tests of the benchmarks: opt-in (`pytest -m bench`)


def _cv(seed: int = 0) -> dict:
    """12 patients on 6 x 6 grids of 50 px patches, a tumour block in the malignant corner;
    "good" sees the label through noise, "random" does not."""
    rng = np.random.default_rng(seed)
    patients, labels, positions = [], [], []
    for index in range(12):
        for x in range(6):
            for y in range(6):
                patients.append(f"p{index}")
                labels.append(int(x < 3 and y < 3 and index % 3 != 0))
                positions.append((x * 50, y * 50))
    labels_array = np.asarray(labels)
    good = np.clip(0.3 + 0.4 * labels_array + rng.normal(0, 0.25, len(labels)), 0, 1)
    folds = [[f"p{i}" for i in range(k, 12, 3)] for k in range(3)]
    candidate = {"folds": [{"kept_epochs": {"train": 2}, "seconds": 1.0}] * 3}
    return {"patients": patients, "labels": labels, "positions": positions, "folds": folds,
            "candidates": {"random": {**candidate, "probability": rng.uniform(size=len(labels)).tolist()},
                           "good": {**candidate, "probability": good.tolist()}}}


def test_slide_context_of_width_zero_is_the_model_alone_and_smooths_otherwise():
    cv = _cv()
    columns = context_columns(cv, "good", [0.0, 1.5])
    np.testing.assert_array_equal(columns[0.0], cv["candidates"]["good"]["probability"])
    assert columns[1.5].shape == (len(cv["labels"]),) and columns[1.5].std() < columns[0.0].std()


def test_each_fold_is_scored_with_choices_made_on_the_other_folds():
    cv = _cv()
    nested = nested_choices(cv, context_columns(cv, "good", [0.0, 1.0, 2.0]))
    assert len(nested["folds"]) == 3 and all(f["sigma"] in (0.0, 1.0, 2.0) for f in nested["folds"])
    # Neighbouring tumour patches agree, so some context helps this candidate.
    assert any(f["sigma"] > 0 for f in nested["folds"])
    patients = np.asarray(cv["patients"])
    for fold, held_out in zip(nested["folds"], cv["folds"]):
        held = np.isin(patients, held_out)
        np.testing.assert_array_equal(nested["predicted"][held], nested["probability"][held] >= fold["threshold"])


def test_the_rules_pick_the_candidate_that_sees_the_label():
    result = run(_cv(), [0.0, 1.0], full_patients=["p0", "p1", "p2"])
    good = result["candidates"]["good"]
    assert set(good["nested"]) == {"all", "full slides", "sparse patients"}
    assert good["nested"]["full slides"]["patients"] == 3 and good["nested"]["all"]["images"] == 12 * 36
    assert good["nested"]["all"]["image_level"]["auc"]["value"] > 0.85
    assert 0.8 <= good["answered"]["coverage"] <= 1.0
    assert {rule["winner"] for rule in result["comparison"]["rules"].values()} == {"good"}
    assert result["comparison"]["good_minus_random"]["interval"][0] > 0
    lines = table(result)
    assert lines[2].startswith("| random | ") and lines[3].startswith("| good | ")
    assert "cv_lower_bound: good" in "\n".join(lines)
