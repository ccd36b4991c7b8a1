"""`evaluate_model` with a real exported model (the tiny MIL export of
`serving_fixtures.exported_models`) on a generated sample and on symlinks to three real
BreakHis patients, and `write_evaluation`."""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image

from histopath.errors import DataError
from histopath.evaluation import evaluate as evaluation
from histopath.evaluation.metrics import roc_auc


@pytest.fixture(scope="module")
def breakhis_sample(tmp_path_factory) -> pathlib.Path:
    """6 synthetic patients x 4 images in the BreaKHis_v1 layout, plus one corrupt image."""
    from histopath.data.sample import make_sample

    root = tmp_path_factory.mktemp("eval-sample") / "sample"
    make_sample("breakhis", str(root), patients=6, images_per_patient=4, seed=3)
    first = sorted(root.rglob("*.png"))[0]
    corrupt = first.with_name(first.name.replace("-001.png", "-099.png"))
    corrupt.write_bytes(first.read_bytes()[:200])  # truncated PNG with a valid BreakHis name
    return root


def _check_consistency(result: dict) -> None:
    threshold = result["decision_threshold"]
    by_patient: dict = {}
    for image in result["images"]:
        assert 0.0 <= image["probability"] <= 1.0
        assert image["prediction"] == int(image["probability"] >= threshold)
        by_patient.setdefault(image["patient_id"], []).append(image)
    assert len(result["patients"]) == result["patient_level"]["n_patients"] == len(by_patient)
    for row in result["patients"]:
        images = by_patient[row["patient_id"]]
        assert row["n_images"] == len(images)
        assert row["score"] == pytest.approx(np.mean([i["probability"] for i in images]))
        assert row["label"] == int(any(i["label"] for i in images))
        assert row["prediction"] == int(row["score"] >= threshold)
    for level in ("image_level", "patient_level"):
        block = result[level]
        cm = block["confusion_matrix"]
        assert cm["tn"] + cm["fp"] + cm["fn"] + cm["tp"] == block["n_items"]
        for name, metric in block["metrics"].items():
            if metric["value"] is None:
                assert metric["reason"], (level, name)
            else:
                assert 0.0 <= metric["value"] <= 1.0, (level, name)
                if metric["ci_low"] is not None:
                    assert 0.0 <= metric["ci_low"] <= metric["ci_high"] <= 1.0, (level, name)
    images = result["images"]
    assert result["image_level"]["metrics"]["auc"]["value"] == pytest.approx(
        roc_auc([i["label"] for i in images], [i["probability"] for i in images]))


def test_evaluate_model_on_a_generated_sample(exported_models, breakhis_sample, tmp_path):
    from serving_fixtures import reference_outputs

    result = evaluation.evaluate_model(
        exported_models.base / "mil", breakhis_sample, "breakhis", bootstrap=300, seed=1, batch_size=7)
    assert result["model"]["model_version"] == 1 and result["model"]["model_name"] == "mil"
    assert result["model"]["info"]["model_kind"] == "mil"
    assert result["image_level"]["n_images"] == 24 and result["patient_level"]["n_patients"] == 6
    assert result["image_level"]["label_counts"] == {"benign": 12, "malignant": 12}
    assert result["patient_level"]["label_counts"] == {"benign": 3, "malignant": 3}
    assert [f["path"] for f in result["failed_images"]] == [
        p.relative_to(breakhis_sample).as_posix() for p in breakhis_sample.rglob("*-099.png")]
    assert "-099.png: the image is corrupt or truncated" in result["failed_images"][0]["error"]
    assert result["patient_score_rule"].startswith("patient score = MEAN")
    assert result["bootstrap"] == {**result["bootstrap"], "resamples": 300, "seed": 1}
    _check_consistency(result)
    # probabilities are those of the serving signature itself
    first = result["images"][0]
    reference = reference_outputs(exported_models.mil, {"image_bytes": [(breakhis_sample / first["path"]).read_bytes()]})
    assert first["probability"] == pytest.approx(float(reference["probability"][0]), abs=1e-6)

    # only some patients; an unknown one is reported; benign-only gives null AUC, no crash
    benign = sorted({p["patient_id"] for p in result["patients"] if p["label"] == 0})
    subset = evaluation.evaluate_model(exported_models.mil, breakhis_sample, "breakhis",
                                       patients=benign[:2] + ["999999"], bootstrap=50)
    assert {p["patient_id"] for p in subset["patients"]} == set(benign[:2])
    assert subset["data"]["patients_not_found"] == ["999999"]
    assert subset["image_level"]["metrics"]["auc"]["value"] is None
    assert "both" in subset["patient_level"]["metrics"]["auc"]["reason"]
    with pytest.raises(DataError, match="none of the 1 requested patients"):
        evaluation.evaluate_model(exported_models.mil, breakhis_sample, "breakhis", patients=["999999"])

    written = evaluation.write_evaluation(subset, tmp_path / "benign.json")
    assert json.loads(written["json"].read_text())["image_level"]["metrics"]["auc"]["value"] is None
    assert Image.open(written["roc"]).size[0] > 300


def _link_patients(shared_data: pathlib.Path, destination: pathlib.Path, slides: list[str]) -> pathlib.Path:
    """A BreaKHis_v1 tree whose slide folders are SYMLINKS to the real ones (no copies)."""
    source = shared_data / "breakhis-200x-224"
    for slide in slides:
        real = next(source.glob(f"BreaKHis_v1/histology_slides/breast/*/SOB/*/{slide}"))
        link = destination / real.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(real, target_is_directory=True)
    return destination


def test_evaluate_model_on_real_breakhis_patients(exported_models, shared_data, tmp_path, artifacts_dir):
    data = _link_patients(shared_data, tmp_path / "real", ["SOB_B_PT_14-29315EF", "SOB_B_TA_14-13200", "SOB_M_DC_14-2980"])
    result = evaluation.evaluate_model(exported_models.mil, data, "breakhis", bootstrap=1000, seed=0)
    assert result["failed_images"] == []
    assert result["image_level"]["n_images"] == 14 + 21 + 21
    assert [(p["patient_id"], p["n_images"], p["label"]) for p in result["patients"]] == [
        ("2980", 21, 1), ("13200", 21, 0), ("29315", 14, 0)]
    _check_consistency(result)
    auc = result["image_level"]["metrics"]["auc"]
    assert auc["bootstrap_valid"] < 1000  # some resamples draw no benign or no malignant patient
    assert "resamples left out" in auc["reason"]
    written = evaluation.write_evaluation(result, tmp_path / "out" / "real.json")
    assert written["roc"] == tmp_path / "out" / "real.roc.png"
    assert written["calibration"] == tmp_path / "out" / "real.calibration.png"
    document = json.loads(written["json"].read_text())  # strict JSON: no NaN
    assert document["plots"]["roc"] == str(written["roc"])
    assert written["coverage"] == tmp_path / "out" / "real.coverage.png"
    assert document["abstention"]["low"] is None and document["abstention"]["coverage"] == 1.0  # no band
    assert [p["target_coverage"] for p in document["abstention"]["curve"]][0] == 1.0
    for key in ("roc", "calibration", "coverage"):
        assert written[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        shutil.copy(written[key], artifacts_dir / f"evaluation-real-breakhis.{key}.png")
    assert not list((tmp_path / "out").glob(".*tmp*"))  # no temporary files left


def test_idc_gets_a_slide_level_tumour_fraction_instead_of_a_patient_label(exported_models, shared_data, tmp_path):
    """Every IDC slide holds tumour: the patient level is not reported, each slide's share of
    patches called IDC is compared with its labelled share."""
    data = tmp_path / "idc"
    for patient in sorted(p.name for p in (shared_data / "idc").iterdir())[:3]:
        for label in ("0", "1"):
            target = data / patient / label
            target.mkdir(parents=True)
            for patch in sorted((shared_data / "idc" / patient / label).glob("*.png"))[:6]:
                (target / patch.name).symlink_to(patch)
    result = evaluation.evaluate_model(exported_models.mil, data, "idc", bootstrap=200, seed=0)
    assert result["patient_level"]["reported"] is False and "tumour_fraction" in result["patient_level"]["reason"]
    block = result["tumour_fraction"]
    assert [row["labelled_fraction"] for row in block["patients"]] == [0.5, 0.5, 0.5]
    images = result["images"]
    for row in block["patients"]:
        mine = [image["prediction"] for image in images if image["patient_id"] == row["patient_id"]]
        assert row["predicted_fraction"] == pytest.approx(np.mean(mine)) and row["idc_present_labelled"]
    errors = [abs(row["predicted_fraction"] - row["labelled_fraction"]) for row in block["patients"]]
    assert block["mean_absolute_error"]["value"] == pytest.approx(np.mean(errors))
    lines = "\n".join(evaluation.summary_lines(result))
    assert "slide level: tumour fraction called vs labelled, over 3 patients" in lines and "patient level" not in lines
    written = evaluation.write_evaluation(result, tmp_path / "idc.json")
    assert written["calibration"].exists()


def test_the_models_band_is_scored_on_the_evaluated_images(tmp_path):
    # Ten images at threshold 0.5, two wrong ones near it (0.45 malignant, 0.6 benign).
    probability = [0.05, 0.1, 0.9, 0.95, 0.45, 0.6, 0.2, 0.8, 0.3, 0.7]
    labels = [0, 0, 1, 1, 1, 0, 0, 1, 0, 1]
    patients = ["a", "a", "b", "b", "b", "c", "c", "d", "e", "f"]
    info = {"abstention": {"low": 0.4, "high": 0.6, "chosen_on": "cv", "target_balanced_accuracy": 0.95,
                           "min_coverage": 0.8, "curve": []}}
    block = evaluation.coverage_evaluation(info, labels, probability, patients, 0.5)
    assert (block["low"], block["high"], block["chosen_on"]) == (0.4, 0.6, "cv")
    assert block["coverage"] == pytest.approx(0.8) and block["balanced_accuracy"] == pytest.approx(1.0)
    # patient b: mean 0.767 (answered, malignant, right); c: mean 0.4 (not sure)
    assert block["patient_coverage"] == pytest.approx(5 / 6)
    assert block["curve"][0]["coverage"] == 1.0 and block["curve"][0]["balanced_accuracy"] == pytest.approx(0.8)
    lines = evaluation._coverage_lines(block)
    assert lines[0].startswith("not sure: band [0.400, 0.600] (chosen on cv): coverage 0.800")
    none = evaluation.coverage_evaluation({}, labels, probability, patients, 0.5)
    assert none["low"] is None and none["coverage"] == 1.0
    assert "no band" in evaluation._coverage_lines(none)[0]
