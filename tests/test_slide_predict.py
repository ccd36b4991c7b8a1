"""`histopath predict` on whole slides, as a user runs it, with the tiny real MIL export:
a re-assembled IDC patient (lossless, so each tile is its patch) and the real Aperio SVS."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from serving_fixtures import reference_outputs

from histopath.data import idc_slides

HISTOPATH = pathlib.Path(sys.executable).parent / "histopath"
PATIENT = "8916"


def _run(*args: str, cwd: pathlib.Path, timeout: float = 400) -> subprocess.CompletedProcess:
    command = [str(HISTOPATH)] if HISTOPATH.exists() else [sys.executable, "-m", "histopath.cli"]
    return subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_predict_slides_and_images_together(exported_models, shared_data, tmp_path):
    summary = idc_slides.reassemble_patient(str(shared_data / "idc" / PATIENT), str(tmp_path / "slides"),
                                            compression="lossless")
    svs = shared_data / "wsi" / "cmu_small_region.svs"
    fake = tmp_path / "fake.svs"
    shutil.copy(next((shared_data / "idc" / PATIENT / "0").glob("*.png")), fake)
    image = next((shared_data / "idc" / PATIENT / "1").glob("*.png"))
    out = tmp_path / "out"

    completed = _run("predict", "--model", str(exported_models.base / "mil"), str(image), summary["slide"], str(svs),
                     str(fake), "--output", str(out), "--model-mpp", "4", "--tile-px", "50", cwd=tmp_path)
    assert completed.returncode == 1, completed.stderr  # the fake slide
    rows = [json.loads(line) for line in completed.stdout.splitlines()]
    assert [pathlib.Path(r.get("file") or r["slide"]).name for r in rows] == [
        image.name, f"{PATIENT}.tif", svs.name, "fake.svs"]
    image_row, idc_row, svs_row, fake_row = rows
    reference = reference_outputs(exported_models.mil, {"image_bytes": [image.read_bytes()]})
    assert image_row["probability"] == pytest.approx(float(reference["probability"][0]), abs=1e-6)  # unchanged
    assert "fake.svs: it is a PNG image, not a whole-slide image" in fake_row["error"]

    for row in (idc_row, svs_row):
        assert row["tile_um"] == 200.0 and row["tile_px"] == 50 and row["model_scale_source"] == "caller"
        assert row["label"] == int(row["probability"] >= row["decision_threshold"])
        assert 0.0 <= row["uncertainty"] <= 1.0 and isinstance(row["not_sure"], bool)
        assert row["tiles_called"] == row["qc"]["kept"] > 0
        folder = out / row["slide_id"]
        assert sorted(p.name for p in folder.iterdir()) == ["heatmap.png", "slide.json", "tiles.geojson", "tissue.png"]
        for name in ("heatmap.png", "tissue.png"):
            assert Image.open(folder / name).format == "PNG"
        geojson = json.loads((folder / "tiles.geojson").read_text())
        assert len(geojson["features"]) == row["tiles_called"]
    assert svs_row["mpp"] == 0.499 and svs_row["read_level"] == 0

    # Each tile of the lossless IDC slide is one patch: its probability is the patch's own.
    detail = json.loads((out / PATIENT / "slide.json").read_text())
    labels = idc_slides.labels_by_position(idc_slides.read_labels(summary["labels"]))
    sample = detail["tiles"][:5]
    patches = [shared_data / "idc" / PATIENT / str(labels[(t["x"], t["y"])]) /
               f"{PATIENT}_idx5_x{t['x'] + 1}_y{t['y'] + 1}_class{labels[(t['x'], t['y'])]}.png" for t in sample]
    direct = reference_outputs(exported_models.mil, {"image_bytes": [p.read_bytes() for p in patches]})
    for index, tile in enumerate(sample):  # and its "not sure" the exported model's own
        assert tile["probability"] == pytest.approx(float(direct["probability"][index]), abs=1e-5)
        assert tile["uncertainty"] == pytest.approx(float(direct["uncertainty"][index]), abs=1e-5)
        assert tile["not_sure"] == bool(direct["not_sure"][index])
    top = sorted((t["probability"] for t in detail["tiles"]), reverse=True)
    k = -(-len(top) * 5 // 100)
    assert detail["probability"] == pytest.approx(sum(top[:k]) / k)
    feature = json.loads((out / PATIENT / "tiles.geojson").read_text())["features"][0]
    x, y = feature["geometry"]["coordinates"][0][0]
    assert (x, y) in labels and feature["properties"]["measurements"]["probability"] == pytest.approx(
        detail["tiles"][0]["probability"], abs=1e-6)


def test_slide_needs_output_and_scale(exported_models, shared_data, tmp_path):
    svs = str(shared_data / "wsi" / "cmu_small_region.svs")
    no_output = _run("predict", "--model", str(exported_models.base / "mil"), svs, cwd=tmp_path, timeout=120)
    assert no_output.returncode == 1 and "is a whole slide: give --output DIR" in no_output.stderr
    no_scale = _run("predict", "--model", str(exported_models.base / "mil"), svs, "--output", str(tmp_path / "o"),
                    cwd=tmp_path, timeout=120)
    assert no_scale.returncode == 1 and "pass --model-mpp" in no_scale.stderr
    assert "Traceback" not in no_scale.stderr


def test_slide_without_mpp_is_answered_only_with_mpp(exported_models, shared_data, tmp_path):
    from histopath.evaluation.slide_predict import predict_slides

    summary = idc_slides.reassemble_patient(str(shared_data / "idc" / PATIENT), str(tmp_path), mpp=None)
    model = str(exported_models.base / "mil")
    refused, = predict_slides(model, [summary["slide"]], str(tmp_path / "out"), model_mpp=4.0, tile_px=50)
    assert refused["slide"] == summary["slide"]
    assert f"{PATIENT}.tif: the file does not say its microns per pixel" in refused["error"]
    assert not (tmp_path / "out" / PATIENT).exists()  # nothing half-written for a refused slide
    answered, = predict_slides(model, [summary["slide"]], str(tmp_path / "out"), mpp=4.0, model_mpp=4.0, tile_px=50)
    assert answered["mpp_source"] == "caller" and answered["mpp"] == 4.0
    assert answered["tiles_called"] >= 0.8 * summary["patches"]
