"""Slide aggregations and their choice by held-out patient predictions."""

from __future__ import annotations

import numpy as np
import pytest

from histopath.evaluation import slide_calling


def test_aggregations():
    tiles = [0.1, 0.2, 0.9, 0.4]
    assert slide_calling.aggregate(tiles, "mean") == pytest.approx(0.4)
    assert slide_calling.aggregate(tiles, "max") == pytest.approx(0.9)
    assert slide_calling.aggregate(tiles, "top_mean", 0.5) == pytest.approx(0.65)
    assert slide_calling.aggregate(tiles, "top_mean", 0.05) == pytest.approx(0.9)  # at least one tile
    assert slide_calling.aggregate(tiles, "fraction_above", 0.4) == pytest.approx(0.5)
    assert slide_calling.aggregate([], "mean") is None
    with pytest.raises(ValueError, match="unknown slide aggregation"):
        slide_calling.aggregate(tiles, "median", 0.5)


def test_a_focal_tumour_is_found_by_a_top_aggregation_not_the_mean():
    """Malignant patients hold a few high tiles among many low ones; benign patients' tiles
    are uniformly a bit higher: the mean ranks them wrongly, the top tiles rightly."""
    rng = np.random.default_rng(0)
    patients, labels, probabilities = [], [], []
    for p in range(12):
        malignant = p % 2
        tiles = rng.uniform(0.0, 0.2, 100) if malignant else rng.uniform(0.2, 0.4, 100)
        tile_labels = np.zeros(100, int)
        if malignant:
            tiles[:3] = rng.uniform(0.8, 1.0, 3)
            tile_labels[:3] = 1
        patients += [f"P{p}"] * 100
        labels += tile_labels.tolist()
        probabilities += tiles.tolist()
    chosen = slide_calling.choose_aggregation(patients, labels, probabilities, 0.5, "cv")
    by_name = {(c["name"], c["parameter"]): c["auc"] for c in chosen["candidates"]}
    assert by_name[("mean", None)] < 0.5
    assert (chosen["name"], chosen["parameter"]) == ("top_mean", 0.05) and chosen["auc"] == 1.0
    assert 0.4 < chosen["threshold"] < 0.8 and chosen["patients"] == 12 and chosen["chosen_on"] == "cv"


def test_one_class_of_patients_keeps_the_default():
    chosen = slide_calling.choose_aggregation(["a", "a", "b"], [1, 0, 1], [0.9, 0.1, 0.7], 0.42, "eval")
    assert (chosen["name"], chosen["parameter"], chosen["threshold"]) == ("top_mean", 0.05, 0.42)
    assert "all of one class" in chosen["reason"]


def test_model_aggregation_prefers_the_caller_then_model_info():
    info = {"decision_threshold": 0.3, "slide_aggregation": {"name": "mean", "parameter": None, "threshold": 0.6}}
    assert slide_calling.model_aggregation(info) == slide_calling.Aggregation("mean", None, 0.6, "model_info")
    assert slide_calling.model_aggregation(info, 0.1) == slide_calling.Aggregation("top_mean", 0.1, 0.3, "caller")
    assert slide_calling.model_aggregation({}).describe() == "mean of the top 0.05 of tile probabilities"


def test_top_mean_is_the_mean_of_the_top_fraction():
    probabilities = [0.1] * 38 + [0.9, 0.7]
    assert slide_calling.aggregate(probabilities, "top_mean", 0.05) == pytest.approx(0.8)  # top 2 of 40
    assert slide_calling.aggregate([0.2, 0.6], "top_mean", 0.01) == pytest.approx(0.6)  # at least one tile
    assert slide_calling.aggregate([], "top_mean", 0.05) is None
