"""The "not sure" band and uncertainty score, on tiny hand-computed arrays."""

from __future__ import annotations

import numpy as np
import pytest

from histopath.models import abstention
from histopath.models.config import AbstentionConfig, CandidateSettings
from histopath.errors import ConfigError

# Ten images at threshold 0.5: two wrong ones near the threshold (0.45 malignant, 0.6
# benign), the rest right; uncertainties 0.1 0.2 0.2 0.1 0.9 0.8 0.4 0.4 0.6 0.6.
PROBABILITY = np.array([0.05, 0.1, 0.9, 0.95, 0.45, 0.6, 0.2, 0.8, 0.3, 0.7])
LABELS = np.array([0, 0, 1, 1, 1, 0, 0, 1, 0, 1])
PATIENTS = np.array([f"p{i}" for i in range(10)])


def test_uncertainty_is_one_at_the_threshold_and_zero_at_either_end():
    values = abstention.uncertainty([0.4, 0.0, 1.0, 0.2, 0.7], threshold=0.4)
    np.testing.assert_allclose(values, [1.0, 0.0, 0.0, 0.5, 0.5])
    np.testing.assert_allclose(abstention.uncertainty([0.0, 0.5, 1.0], threshold=0.0), [1.0, 0.5, 0.0])


def test_the_narrowest_band_reaching_the_target_is_chosen():
    chosen = abstention.choose_band(LABELS, PROBABILITY, PATIENTS, 0.5, 0.95, 0.8, chosen_on="cv")
    assert (chosen["low"], chosen["high"]) == pytest.approx((0.4, 0.6))
    assert chosen["reached"] and chosen["chosen_on"] == "cv"
    assert chosen["coverage"] == pytest.approx(0.8) and chosen["balanced_accuracy"] == pytest.approx(1.0)
    assert abstention.not_sure([0.4, 0.45, 0.6, 0.39, 0.61], chosen).tolist() == [1, 1, 1, 0, 0]


def test_an_unreachable_target_stops_at_the_minimum_coverage_and_says_so():
    chosen = abstention.choose_band(LABELS, PROBABILITY, PATIENTS, 0.5, 0.95, 0.85)
    assert (chosen["low"], chosen["high"]) == pytest.approx((0.45, 0.55))
    assert not chosen["reached"] and "not reached" in chosen["rule"]
    assert chosen["coverage"] == pytest.approx(0.9) and chosen["balanced_accuracy"] == pytest.approx(0.9)


def test_no_band_when_every_image_can_be_answered_at_the_target():
    chosen = abstention.choose_band(LABELS, PROBABILITY, PATIENTS, 0.5, 0.8, 0.8)
    assert chosen["low"] is None and abstention.band_of(chosen) is None
    assert chosen["coverage"] == 1.0 and chosen["balanced_accuracy"] == pytest.approx(0.8)
    assert abstention.not_sure(PROBABILITY, None).tolist() == [0] * 10


def test_the_curve_trades_coverage_for_accuracy():
    curve = abstention.coverage_curve(LABELS, PROBABILITY, PATIENTS, 0.5, points=3, lowest=0.8)
    assert [point["coverage"] for point in curve] == pytest.approx([1.0, 0.9, 0.8])
    assert [point["balanced_accuracy"] for point in curve] == pytest.approx([0.8, 0.9, 1.0])
    assert curve[0]["low"] is None and (curve[1]["low"], curve[1]["high"]) == pytest.approx((0.45, 0.55))


def test_a_patient_is_answered_by_its_mean_probability():
    # p0: a benign and a malignant image, mean 0.25 (malignant patient); p1: benign, 0.1.
    point = abstention.operating_point([0, 1, 0], [0.05, 0.45, 0.1], ["p0", "p0", "p1"], 0.5,
                                       {"low": 0.2, "high": 0.6})
    assert point["coverage"] == pytest.approx(2 / 3)
    assert point["patient_coverage"] == pytest.approx(0.5)
    assert point["patient_balanced_accuracy"] is None  # only a benign patient is answered


def test_bands_and_settings_are_checked():
    assert abstention.validate_band((0.0, 1.0)) == {"low": 0.0, "high": 1.0}
    with pytest.raises(ValueError, match="0 <= low <= high <= 1"):
        abstention.validate_band((0.6, 0.4))
    with pytest.raises(ConfigError, match="min_coverage"):
        AbstentionConfig(min_coverage=0.0)
    settings = CandidateSettings("mil", {}, {}, 64, abstention={"min_coverage": 0.9})
    assert settings.abstention_config() == AbstentionConfig(0.95, 0.9)
    assert CandidateSettings.from_dict(settings.to_dict()) == settings
