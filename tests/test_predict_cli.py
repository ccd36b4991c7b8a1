"""`histopath predict` and `histopath evaluate` as a user runs them (installed console script).

The model is the tiny real MIL export of `serving_fixtures.exported_models`; the images are
real IDC patches and full-size BreakHis files (read in place), plus a corrupt file.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from serving_fixtures import full_size_images, idc_images, reference_outputs

HISTOPATH = pathlib.Path(sys.executable).parent / "histopath"


def _run(*args: str, cwd: pathlib.Path, timeout: float = 240) -> subprocess.CompletedProcess:
    command = [str(HISTOPATH)] if HISTOPATH.exists() else [sys.executable, "-m", "histopath.cli"]
    return subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_predict_cli_reports_bad_files_and_writes_heatmaps(exported_models, shared_data, tmp_path):
    folder = tmp_path / "inputs"
    (folder / "nested").mkdir(parents=True)
    patches = idc_images(shared_data, 2)
    for index, patch in enumerate(patches):  # symlinks to the real files, in a nested folder
        (folder / "nested" / f"{index}-{patch.name}").symlink_to(patch)
    (folder / "notes.txt").write_text("not an image, and not picked up from a folder")
    corrupt = folder / "corrupt.png"
    corrupt.write_bytes(patches[0].read_bytes()[:60])
    Image.new("RGB", (700, 460), (0, 0, 0)).save(folder / "blank.png")  # no tissue: no class
    full_size = full_size_images(shared_data, 1)[0]
    heatmaps = tmp_path / "heatmaps"

    completed = _run("predict", "--model", str(exported_models.base / "mil"), str(full_size), str(folder),
                     str(tmp_path / "missing.png"), "--heatmap-dir", str(heatmaps), cwd=tmp_path)
    assert completed.returncode == 1, completed.stderr
    assert "2 file(s) failed" in completed.stderr
    rows = [json.loads(line) for line in completed.stdout.splitlines()]
    assert [pathlib.Path(r["file"]).name for r in rows] == [
        full_size.name, "blank.png", "corrupt.png", f"0-{patches[0].name}", f"1-{patches[1].name}", "missing.png"]
    by_name = {pathlib.Path(r["file"]).name: r for r in rows}
    blank = by_name.pop("blank.png")
    assert (blank["label"], blank["label_name"], blank["tissue_detected"], blank["tissue_fraction"]) == (
        None, "no tissue detected", False, 0.0)
    assert "heatmap" not in blank and blank["not_sure"] is False
    rows = [r for r in rows if r is not blank]
    assert "corrupt.png" in by_name["corrupt.png"]["error"] and "probability" not in by_name["corrupt.png"]
    assert "no such file" in by_name["missing.png"]["error"]
    good = [r for r in rows if "error" not in r]
    assert len(good) == 3
    for row in good:
        assert 0.0 <= row["probability"] <= 1.0
        assert row["label"] == int(row["probability"] >= 0.5)
        assert row["label_name"] == ("benign", "malignant")[row["label"]]
        assert row["tissue_detected"] is True and row["tissue_fraction"] > 0
        assert row["not_sure"] is False  # the test model has no band
        assert row["uncertainty"] == pytest.approx(1 - abs(row["probability"] - 0.5) / 0.5, abs=1e-5)
        assert (row["model_name"], row["model_version"]) == ("mil", 1)
        heatmap = pathlib.Path(row["heatmap"])
        assert heatmap.parent == heatmaps
        assert row["tile_map"] == str(heatmap).replace(".heatmap.png", ".tiles.png")
        with Image.open(row["file"]) as source, Image.open(heatmap) as overlay, Image.open(row["tile_map"]) as tiles:
            assert overlay.format == tiles.format == "PNG" and overlay.size == tiles.size == source.size
    reference = reference_outputs(exported_models.mil, {"image_bytes": [full_size.read_bytes()]})
    assert by_name[full_size.name]["probability"] == pytest.approx(float(reference["probability"][0]), abs=1e-6)
    assert sorted(p.name for p in heatmaps.iterdir()) == sorted(
        pathlib.Path(r[key]).name for r in good for key in ("heatmap", "tile_map"))


def test_evaluate_cli_on_the_test_split_of_a_manifest(exported_models, tmp_path):
    from histopath.data.sample import make_sample

    data = tmp_path / "sample"
    make_sample("breakhis", str(data), patients=4, images_per_patient=3, seed=5)
    from histopath.data.layouts import scan_source

    patients = sorted({f.patient_id for f in scan_source("breakhis", str(data)).files})
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"dataset": "breakhis", "splits": {
        "train": {"patient_ids": patients[:1]}, "test": {"patient_ids": patients[1:]}}}))
    output = tmp_path / "reports" / "mil-test.json"

    completed = _run("evaluate", "--model", str(exported_models.base / "mil"), "--data", str(data),
                     "--dataset", "breakhis", "--split-manifest", str(manifest), "--split", "test",
                     "--bootstrap", "200", "--seed", "3", "--batch-size", "5", "--output", str(output),
                     cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert "patient level: 3" in completed.stdout and "auc" in completed.stdout
    report = json.loads(output.read_text())
    assert sorted(p["patient_id"] for p in report["patients"]) == sorted(patients[1:])
    assert report["data"]["split"] == "test" and report["data"]["split_manifest"] == str(manifest.resolve())
    assert report["image_level"]["n_images"] == 9 and report["bootstrap"]["resamples"] == 200
    assert report["bootstrap"]["warnings"]  # 3 patients: the intervals are flagged as rough
    assert "not sure: the model has no band" in completed.stdout
    for name in ("roc", "calibration", "coverage"):
        plot = output.with_name(f"mil-test.{name}.png")
        assert report["plots"][name] == str(plot)
        assert Image.open(plot).format == "PNG"

    wrong = _run("evaluate", "--model", str(exported_models.mil), "--data", str(data), "--dataset", "idc",
                 "--output", str(tmp_path / "never.json"), cwd=tmp_path, timeout=60)
    assert wrong.returncode == 1
    assert "not in the idc layout" in wrong.stderr and "--dataset breakhis?" in wrong.stderr
    assert "Traceback" not in wrong.stderr and not (tmp_path / "never.json").exists()


def test_predict_slide_context_answers_each_patch_from_its_slide(exported_models, shared_data, tmp_path):
    from histopath.evaluation import slide_context
    from histopath.data import layouts

    model = tmp_path / "model"
    shutil.copytree(exported_models.base / "mil" / "1", model / "1")
    info_path = model / "1" / "assets.extra" / "model_info.json"
    patches = sorted((shared_data / "idc" / "8863" / "1").glob("*.png"))[:12]
    patches += sorted((shared_data / "idc" / "8863" / "0").glob("*.png"))[:12]
    folder = tmp_path / "slide"
    folder.mkdir()
    for patch in patches:
        (folder / patch.name).symlink_to(patch)
    (folder / "scan.png").symlink_to(patches[0])  # an image whose name gives no position
    (folder / "corrupt.png").write_bytes(patches[1].read_bytes()[:60])

    refused = _run("predict", "--model", str(model), "--slide-context", str(folder), cwd=tmp_path)
    assert refused.returncode != 0 and refused.stdout == ""
    assert "has no slide-context threshold" in refused.stderr

    info = json.loads(info_path.read_text())
    info["slide_context"] = {"sigma": 1.5, "grid_step": 50, "decision_threshold": 0.4, "rule": slide_context.RULE}
    info_path.write_text(json.dumps(info))
    completed = _run("predict", "--model", str(model), "--slide-context", str(folder), cwd=tmp_path)
    assert completed.returncode == 1  # the corrupt file and the unplaceable one are reported
    rows = {pathlib.Path(row["file"]).name: row for row in map(json.loads, completed.stdout.splitlines())}
    assert "error" in rows["corrupt.png"] and "context_probability" not in rows["corrupt.png"]
    assert "scan.png: not an IDC patch name" in rows["scan.png"]["context_error"]
    placed = [rows[p.name] for p in patches]
    positions = [layouts.idc_patch_position(row["file"]) for row in placed]
    expected = slide_context.smooth_slide_scores([row["probability"] for row in placed], [p for p, _, _ in positions],
                                                 [x for _, x, _ in positions], [y for _, _, y in positions], 1.5, 50)
    np.testing.assert_allclose([row["context_probability"] for row in placed], expected, rtol=1e-9)
    assert [row["context_label"] for row in placed] == [int(v >= 0.4) for v in expected]
    assert {row["context_label_name"] for row in placed} <= {"benign", "malignant"}
    assert not np.allclose(expected, [row["probability"] for row in placed])  # neighbours did change it
