"""End to end on whole slides: five IDC patients re-assembled into slides, the real TFX
pipeline (LocalDagRunner) with `dataset: slides`, then `histopath evaluate` on the test
patient's slide with the pushed model.

Kept small: a two-layer CNN, one epoch, two patient folds (the slide aggregation is chosen
on their cross-validated predictions) and a refit.
"""

from __future__ import annotations

import json
import pathlib

import pytest

from histopath.data import idc_slides
from histopath.models import exported
from histopath.pipeline.config import resolve
from histopath.pipeline.local_runner import run_local

pytestmark = pytest.mark.e2e

# Small patients; 8956 is the one IDC patient without a positive patch (the benign slide).
# Seven, so that each of the two folds trains on three patients (two of them watched by
# early stopping: `cross_validation.inner_eval_patients`).
PATIENTS = ("8916", "8950", "8951", "8956", "9022", "9124", "9125")


@pytest.fixture(scope="module")
def slides_run(shared_data, tmp_path_factory):
    data = tmp_path_factory.mktemp("slides") / "data"
    idc_slides.reassemble(str(shared_data / "idc"), str(data), PATIENTS)
    config = resolve({
        "dataset": "slides", "data_dir": str(data), "output_dir": str(tmp_path_factory.mktemp("slides_run")),
        "models": ["cnn"], "image_size": 50, "cnn": {"conv_layers": 2, "base_filters": 8},
        "training": {"epochs": 1, "batch_size": 64},
        "selection": {"rule": "cv_auc", "folds": 2, "refit_on_all": True},
        "thresholds": {"min_auc": 0.0, "min_balanced_accuracy": 0.0, "max_auc_drop_vs_pushed": 1.0},
        "version_policy": "increment", "beam_args": ["--direct_running_mode=in_memory"],
    })
    report = run_local(config)
    return data, config, report


def test_the_pipeline_tiles_slides_in_its_ingest_step_and_pushes_a_slide_model(slides_run):
    data, config, report = slides_run
    assert report["pushed"]["pushed"] and report["winner"] == "cnn"
    window = report["data"]["window"]
    assert len(window) == 1 and window[0]["tiling"] == {"tile_um": 200.0, "tile_px": 50, "mpp": 4.0,
                                                        "min_tissue": 0.25}
    qc = {row["slide_id"]: row for row in window[0]["slides"]}
    assert sorted(qc) == sorted(PATIENTS)
    patches = {p: len(idc_slides.read_labels(str(data / f"{p}.labels.csv"))) for p in PATIENTS}
    for patient, row in qc.items():  # every tile kept is one patch; QC counts add up
        assert 0 < row["examples"] == row["qc"]["kept"] <= patches[patient]
        assert row["qc"]["total"] == row["qc"]["kept"] + sum(row["qc"]["dropped"].values())
    assert sum(s["examples"] for s in window) == report["data"]["examples_per_split"]["train"] + sum(
        n for name, n in report["data"]["examples_per_split"].items() if name != "train")
    info = exported.read_model_info(f"{config.serving_path}/{config.model_name}/1")
    assert (info["tile_um"], info["tile_px"], info["mpp"], info["dataset"]) == (200.0, 50, 4.0, "slides")
    chosen = info["slide_aggregation"]
    held_out = len(report["data"]["splits"]["train"]["patients"]) + len(report["data"]["splits"]["eval"]["patients"])
    assert chosen["chosen_on"] == "cv" and chosen["patients"] == held_out and 0.0 <= chosen["threshold"] <= 1.0


def test_evaluate_scores_the_test_patients_slide_per_tile_and_per_slide(slides_run, tmp_path):
    from histopath.evaluation import slide_evaluate

    data, config, report = slides_run
    test_patients = report["data"]["splits"]["test"]["patients"]
    output = tmp_path / "evaluation.json"
    result = slide_evaluate.evaluate_slides(f"{config.serving_path}/{config.model_name}", str(data), str(output),
                                            patients=test_patients, bootstrap=50)
    assert [row["patient"] for row in result["slides"]] == test_patients and not result["failed_slides"]
    row = result["slides"][0]
    tiles = json.loads(pathlib.Path(row["outputs"]["slide.json"]).read_text())
    assert tiles["aggregation_source"] == "model_info" and tiles["tile_um"] == 200.0
    labels = idc_slides.labels_by_position(idc_slides.read_labels(str(data / f"{test_patients[0]}.labels.csv")))
    assert row["tiles_labelled"] == row["tiles_called"] == len(tiles["tiles"])
    assert all((t["x"], t["y"]) in labels for t in tiles["tiles"])  # each called tile is a labelled patch
    level = result["tile_level"]
    assert level["n_items"] == row["tiles_labelled"] and level["n_patients"] == 1
    assert set(level["metrics"]) >= {"auc", "balanced_accuracy"}
    assert result["slide_level"]["n_items"] == 1 and result["aggregation"]["source"] == "model_info"
