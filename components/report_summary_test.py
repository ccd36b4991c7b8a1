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
