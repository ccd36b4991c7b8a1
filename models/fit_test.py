"""fit.slide_context_info: the eval-split threshold and AUCs of slide-context scores."""

from __future__ import annotations

import numpy as np

from histopath.evaluation import operating_point, slide_context
from histopath.models.fit import slide_context_info
from histopath.evaluation.metrics import roc_auc


def test_slide_context_threshold_is_chosen_on_the_smoothed_eval_scores():
    rng = np.random.default_rng(0)
    columns, rows = np.meshgrid(np.arange(8), np.arange(8))
    columns, rows = columns.ravel(), rows.ravel()
    labels = (columns >= 4).astype(int)  # a tumour half of the slide
    scores = np.clip(0.35 * labels + 0.3 + rng.normal(0, 0.2, labels.size), 0, 1)  # noisy single patches
    positions = {"patient_id": np.array([b"8914"] * labels.size), "patch_x": 1 + 50 * columns,
                 "patch_y": 1 + 50 * rows}
    info = slide_context_info(labels, scores, positions, 1.5)
    smoothed = slide_context.smooth_slide_scores(scores, ["8914"] * labels.size, positions["patch_x"],
                                                 positions["patch_y"], 1.5)
    assert info["grid_step"] == 50 and info["sigma"] == 1.5 and info["eval_patients"] == 1
    assert info["decision_threshold"] == operating_point.balanced_accuracy_threshold(labels, smoothed)
    assert info["eval_auc"] == roc_auc(labels, smoothed)
    assert info["eval_auc_without"] == roc_auc(labels, scores)
    assert info["eval_auc"] > info["eval_auc_without"]  # neighbours outvote the noise


def test_the_not_sure_band_is_chosen_on_the_cross_validated_predictions_when_folds_ran():
    from histopath.models.config import CandidateSettings
    from histopath.models.fit import choose_abstention

    settings = CandidateSettings("mil", {}, {}, 64, abstention={"target_balanced_accuracy": 0.95,
                                                                 "min_coverage": 0.8})
    # Cross-validated: two wrong images near the threshold; eval split: all right.
    cv = {"labels": [0, 0, 1, 1, 1, 0, 0, 1, 0, 1], "patients": list("abcdefghij"),
          "probability": [0.05, 0.1, 0.9, 0.95, 0.45, 0.6, 0.2, 0.8, 0.3, 0.7]}
    eval_split = {"labels": [0, 1], "patients": ["k", "l"], "probability": [0.2, 0.9]}
    chosen = choose_abstention(settings, 0.5, cv, eval_split)
    assert chosen["chosen_on"] == "cv" and (chosen["low"], chosen["high"]) == (0.4, 0.6)
    assert chosen["coverage"] == 0.8 and chosen["images"] == 10
    on_eval = choose_abstention(settings, 0.5, None, eval_split)
    assert on_eval["chosen_on"] == "eval" and on_eval["low"] is None and on_eval["coverage"] == 1.0
    assert choose_abstention(settings, 0.5, None, None) is None


def test_a_slide_model_records_its_tile_scale_and_the_aggregation_chosen_on_held_out_patients():
    from histopath.models.config import CandidateSettings
    from histopath.models.fit import slide_info

    tiling = {"tile_um": 200.0, "tile_px": 50, "mpp": 4.0}
    settings = CandidateSettings("cnn", {}, {}, 50, dataset="slides", slide_tiling=tiling)
    cv = {"patients": ["a"] * 4 + ["b"] * 4 + ["c"] * 4 + ["d"] * 4,
          "labels": [0] * 4 + [0] * 4 + [0, 0, 0, 1] + [0, 0, 0, 1],
          "probability": [0.4] * 8 + [0.1, 0.1, 0.1, 0.9] * 2}  # focal tumours: the top tiles tell
    info = slide_info(settings, 0.5, cv, {"patients": ["e"], "labels": [1], "probability": [0.9]})
    assert {k: info[k] for k in tiling} == tiling
    chosen = info["slide_aggregation"]
    assert chosen["chosen_on"] == "cv" and chosen["name"] != "mean" and chosen["auc"] == 1.0
    assert "slide_aggregation" not in slide_info(settings, 0.5, None, None)
