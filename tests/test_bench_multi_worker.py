"""`bench/multi_worker.py` end to end on a tiny model (three Trainer processes: marked bench)."""

from __future__ import annotations

import json

import pytest

from bench import multi_worker


@pytest.mark.bench
def test_the_bench_writes_both_runs_and_their_ratio(tmp_path):
    output = tmp_path / "multi_worker.json"
    assert multi_worker.main(["--train", "64", "--epochs", "2", "--conv-layers", "2", "--base-filters", "4",
                              "--per-replica-batch", "8", "--output", str(output)]) == 0
    result = json.loads(output.read_text())
    one, two = result["runs"]["1"], result["runs"]["2"]
    assert one["global_batch"] == two["global_batch"] == 16
    assert (one["distribution"], two["distribution"]["workers"]) == (None, 2)
    assert one["steps_timed"] == two["steps_timed"] == 4  # the second epoch: 64 / 16
    assert result["ratio_2_over_1_examples_per_second"] == pytest.approx(
        two["examples_per_second"] / one["examples_per_second"], rel=1e-2)
    assert "not a speed-up" in result["note"]
