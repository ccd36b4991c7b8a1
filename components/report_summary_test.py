"""The run report's Markdown summary (`report_summary`)."""

from __future__ import annotations

from histopath.components import report_summary


def test_summary_shows_intervals_and_test_patients():
    report = {"created": "now", "data": None, "retrained": True, "winner": "mil", "reason": "higher AUC",
              "already_serving": False, "pushed": {"pushed": True, "destination": "d", "version": "3"},
              "anomalies": {}, "candidates": {"mil": {
                  "blessed": True, "metrics": {"overall": {"auc": 0.91, "balanced_accuracy": 0.8, "recall": 0.7,
                                                           "specificity": 0.9, "example_count": 60.0}},
                  "intervals": {"auc": {"ci_low": 0.85, "ci_high": 0.97}},
                  "test_patients": {"benign": 3, "malignant": 7}, "warnings": ["only 3 benign test patients"]}}}
    text = report_summary.render_summary(report)
    assert "| mil | yes | 3 / 7 | 60 | 0.910 [0.850, 0.970] | 0.800 | 0.700 | 0.900 |" in text
    assert "Warning: only 3 benign test patients" in text


def test_a_test_split_is_one_class_by_its_images_not_its_patients():
    def report(test_images: dict) -> dict:
        return {"created": "now", "data": None, "retrained": True, "winner": "densenet", "reason": "r",
                "already_serving": False, "pushed": {"pushed": True, "destination": "d", "version": "1"},
                "anomalies": {}, "candidates": {"densenet": {
                    "blessed": True, "metrics": {"overall": {"auc": 0.9, "balanced_accuracy": 0.8, "recall": 0.7,
                                                             "specificity": 0.85, "example_count": 90.0}},
                    "intervals": {}, "test_patients": {"benign": 0, "malignant": 3}, "test_images": test_images}}}

    # IDC: three "malignant" patients whose patches hold both classes: the AUC is defined.
    text = report_summary.render_summary(report({"benign": 60, "malignant": 30}))
    assert "| densenet | yes | 0 / 3 | 90 | 0.900 | 0.800 | 0.700 | 0.850 |" in text
    text = report_summary.render_summary(report({"benign": 0, "malignant": 90}))
    assert "| 90 | undefined (one class) | undefined (one class) | 0.700 | - |" in text


def test_summary_warns_how_cross_validation_was_adapted():
    report = {"created": "now", "data": None, "retrained": True, "winner": "cnn", "reason": "r", "rule": "cv_auc",
              "already_serving": False, "pushed": {"pushed": False, "destination": "", "version": ""},
              "anomalies": {}, "candidates": {"cnn": {
                  "blessed": True, "metrics": {"overall": {"auc": 0.8}}, "intervals": {}, "test_patients": {},
                  "cross_validation": {"patients": 4, "images": 40, "auc": 0.75, "auc_ci": [0.5, 0.9],
                                       "warnings": ["5-fold cross-validation asked for, 2 folds"]}}}}
    text = report_summary.render_summary(report)
    assert "| cnn | 4 | 40 | 0.750 [0.500, 0.900] |" in text
    assert "Warning: cnn cross-validation: 5-fold cross-validation asked for, 2 folds" in text


def test_summary_and_plot_show_each_candidates_not_sure_band(tmp_path):
    from histopath.models import abstention

    probability = [0.05, 0.1, 0.9, 0.95, 0.45, 0.6, 0.2, 0.8, 0.3, 0.7]
    chosen = abstention.choose_band([0, 0, 1, 1, 1, 0, 0, 1, 0, 1], probability, list("abcdefghij"), 0.5,
                                    0.95, 0.8, chosen_on="cv")
    report = {"created": "now", "data": None, "retrained": True, "winner": "mil", "reason": "r",
              "already_serving": False, "pushed": {"pushed": False, "destination": "", "version": ""},
              "anomalies": {}, "candidates": {
                  "mil": {"blessed": True, "metrics": {"overall": {}}, "abstention": chosen},
                  "cnn": {"blessed": True, "metrics": {"overall": {}}, "abstention": None}}}
    text = report_summary.render_summary(report)
    assert "| mil | cv | [0.400, 0.600] | 0.800 | 1.000 | 0.800 | 1.000 | yes (0.95, coverage >= 0.8) |" in text
    assert "| cnn | cv" not in text
    assert report_summary.plot_coverage(report["candidates"], str(tmp_path / "coverage.png"))
    assert (tmp_path / "coverage.png").read_bytes()[:4] == b"\x89PNG"
    assert not report_summary.plot_coverage({"cnn": {"abstention": None}}, str(tmp_path / "none.png"))


def test_summary_shows_what_each_trainer_cost():
    report = {"created": "now", "data": None, "retrained": True, "winner": "mil", "reason": "r",
              "already_serving": False, "pushed": {"pushed": False, "destination": "", "version": ""},
              "anomalies": {}, "candidates": {
                  "mil": {"blessed": True, "metrics": {"overall": {}},
                          "training_resources": {"wall_seconds": 754.4, "cpu_seconds": 1400.0,
                                                 "start_rss_bytes": 2**30, "peak_rss_bytes": 3 * 2**30 + 2**29,
                                                 "end_rss_bytes": 2**31}},
                  "cnn": {"blessed": True, "metrics": {"overall": {}}, "training_resources": None}}}
    text = report_summary.render_summary(report)
    assert "| mil | 12 min 34 s | 23 min 20 s | 3.50 GiB | 1.00 GiB |" in text
    assert "| cnn | " not in text.split("What each Trainer cost")[1]


def test_summary_shows_each_slides_tiles_kept_and_dropped():
    slide = {"slide_id": "8916", "patient": "8916", "split": "train",
             "qc": {"total": 816, "kept": 160, "dropped": {"background": 650, "pen": 6, "blur": 0}}}
    data = {"window": [{"span": "0", "examples": 160, "ingested_now": True, "skipped": [],
                        "tiling": {"tile_um": 200.0, "tile_px": 50, "mpp": 4.0}, "slides": [slide]}],
            "balance": {}, "plan": {"reason": "first training"}}
    lines = report_summary._data_lines(data)
    assert "Slides tiled at 200 µm in 50 px tiles (4 µm/px):" in lines
    assert "| span | slide | patient | split | tiles | kept | dropped: background | dropped: blur | dropped: pen |" in lines
    assert "| 0 | 8916 | 8916 | train | 816 | 160 | 650 | 0 | 6 |" in lines
    assert not report_summary._slide_lines({"window": [{"span": "0", "skipped": []}]})
