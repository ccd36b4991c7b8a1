"""bench/evaluate_scale.py: the synthetic score table, and the whole benchmark at a tiny
size (child process, JSON report, sensible metrics). No timing assertions."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from bench import evaluate_scale

pytestmark = pytest.mark.bench  # tests of the benchmarks: opt-in (`pytest -m bench`)


def test_synthetic_table_has_uneven_patients_both_classes_and_a_signal():
    table = evaluate_scale.synthetic_table(3000, 15, seed=0)
    assert {len(table[key]) for key in ("labels", "probabilities", "clusters", "patient_ids", "x", "y")} == {3000}
    counts = np.bincount(table["clusters"], minlength=15)
    assert counts.min() >= 1 and counts.max() >= 3 * counts.min()  # uneven image counts
    assert len(set(table["patient_ids"].tolist())) == 15
    assert set(table["labels"].tolist()) == {0, 1}
    probabilities = table["probabilities"]
    assert probabilities.min() > 0.0 and probabilities.max() < 1.0
    assert np.array_equal(probabilities, probabilities.astype(np.float32))  # float32, as a model returns
    assert probabilities[table["labels"] == 1].mean() > probabilities[table["labels"] == 0].mean() + 0.2
    again = evaluate_scale.synthetic_table(3000, 15, seed=0)
    assert np.array_equal(again["probabilities"], probabilities)  # deterministic
    positions = set(zip(table["patient_ids"].tolist(), table["x"].tolist(), table["y"].tolist()))
    assert len(positions) == 3000  # one position per patch of a patient


def test_benchmark_at_a_tiny_size_writes_its_report(tmp_path):
    output = tmp_path / "evaluate_scale.json"
    completed = subprocess.run(
        [sys.executable, "-m", "bench.evaluate_scale", "--predictions", "3000", "--patients", "15",
         "--bootstrap", "50", "--output-json", str(output)],
        capture_output=True, text=True, check=False, cwd=evaluate_scale.REPO, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["benchmark"] == "evaluate_scale"
    assert (report["predictions"], report["patients"], report["bootstrap_resamples"]) == (3000, 15, 50)
    assert report["target_mib"] == 2048
    assert report["met"] is (report["peak_mib"] < 2048)
    assert 0 < report["peak_mib"] < 2048 and report["seconds"] > 0
    assert [s["step"] for s in report["steps"]] == ["import", "generate", "score", "report", "write", "summary"]
    assert report["peak_mib"] == max(s["peak_mib"] for s in report["steps"])
    assert report["plots_written"] and report["report_bytes"] > 3000 * 50  # one JSON row per image
    assert report["machine"]["cpu"]
    for line in ("import", "score", "write", "peak"):
        assert line in completed.stdout

    metrics = report["metrics"]
    auc = metrics["image_level"]["auc"]
    assert 0.8 < auc["value"] < 0.98  # the synthetic signal
    assert auc["ci_low"] <= auc["value"] <= auc["ci_high"] and auc["bootstrap_valid"] == 50
    assert 0.6 < metrics["image_level"]["balanced_accuracy"]["value"] <= 1.0
    hindsight = metrics["image_balanced_accuracy_in_hindsight"]
    assert hindsight["value"] >= metrics["image_level"]["balanced_accuracy"]["value"] - 1e-9
    assert 0.0 < report["decision_threshold"] < 1.0
    assert metrics["per_patient_rows"] == 15
    assert metrics["patients_benign"] >= 1 and metrics["patients_malignant"] >= 1
    assert metrics["patient_level"]["auc"]["value"] is not None
