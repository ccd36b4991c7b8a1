"""`bench.region_candidates`: the patch model's scores regrouped into the MIL's regions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench import region_candidates
from histopath.errors import DataError

pytestmark = pytest.mark.bench  # tests of the benchmarks: opt-in (`pytest -m bench`)


def _patch_cv():
    # Patient a: region (0, 0) holds patches at (0,0), (50,0), (0,50); region (100, 0) one
    # patch. Patient b: region (0, 100) two patches.
    positions = [(0, 0), (50, 0), (0, 50), (100, 0), (0, 100), (50, 150)]
    return {"dataset": "idc", "preset": "idc", "patients": ["a", "a", "a", "a", "b", "b"],
            "labels": [0, 1, 0, 0, 0, 0], "positions": positions,
            "candidates": {"densenet": {"probability": [0.1, 0.7, 0.3, 0.2, 0.4, 0.6],
                                        "context_probability": [0.2, 0.5, 0.4, 0.3, 0.5, 0.5]}}}


def _region_cv():
    return {"dataset": "idc", "preset": "idc-mil", "bag_size": 2, "patients": ["a", "a", "b"],
            "labels": [1, 0, 0], "positions": [[0, 0], [100, 0], [0, 100]],
            "candidates": {"mil": {"probability": [0.9, 0.3, 0.2], "context_probability": [0.8, 0.4, 0.3]}}}


def test_each_region_gets_its_highest_patch_score_in_the_mil_order():
    combined = region_candidates.combine(_patch_cv(), _region_cv())
    assert combined["unit"] == "region" and combined["labels"] == [1, 0, 0]
    assert combined["candidates"]["densenet"]["probability"] == pytest.approx([0.7, 0.2, 0.6])
    assert combined["candidates"]["densenet"]["context_probability"] == pytest.approx([0.5, 0.3, 0.5])
    assert combined["candidates"]["mil"] == _region_cv()["candidates"]["mil"]


def test_a_column_only_one_candidate_has_is_left_out():
    patch_cv = _patch_cv()
    del patch_cv["candidates"]["densenet"]["context_probability"]
    combined = region_candidates.combine(patch_cv, _region_cv())
    assert set(combined["candidates"]["mil"]) == {"probability"}


@pytest.mark.parametrize("change, message", [
    (lambda patch, region: region.update(labels=[0, 0, 0]), "labels disagree"),
    (lambda patch, region: region.update(positions=[[0, 0], [100, 0], [400, 400]]), "no patch"),
    (lambda patch, region: region.pop("bag_size"), "positions"),
])
def test_inputs_that_do_not_match_are_refused(change, message):
    patch_cv, region_cv = _patch_cv(), _region_cv()
    change(patch_cv, region_cv)
    with pytest.raises(DataError, match=message):
        region_candidates.combine(patch_cv, region_cv)


def test_the_command_line_writes_the_combined_predictions(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps(_patch_cv()))
    (tmp_path / "r.json").write_text(json.dumps(_region_cv()))
    output = tmp_path / "out.json"
    assert region_candidates.main(["--patches", str(tmp_path / "p.json"), "--regions", str(tmp_path / "r.json"),
                                   "--output", str(output)]) == 0
    assert json.loads(output.read_text())["candidates"]["densenet"]["probability"] == pytest.approx([0.7, 0.2, 0.6])
