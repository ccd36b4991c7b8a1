"""Fast unit tests of the serving helpers: TF Serving JSON codec, heat-map tiling, CLI checks."""

from __future__ import annotations

import base64
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from histopath.models.exported import list_versions
from histopath.serving.model_store import SignatureInfo, TensorInfo
from histopath.serving.tensor_codec import RequestError, decode_request, encode_response

IMAGE_SIGNATURE = SignatureInfo(
    "serving_default",
    inputs={"image_bytes": TensorInfo("image_bytes", "object", "string", (None,))},
    outputs={},
)
TWO_INPUTS = SignatureInfo(
    "pair",
    inputs={
        "scale": TensorInfo("scale", "float32", "float32", (None, 2)),
        "count": TensorInfo("count", "int64", "int64", (None,)),
    },
    outputs={},
)


def _png() -> bytes:
    from histopath.images import encode_png

    return encode_png(Image.new("RGB", (4, 4), (1, 2, 3)))


def test_row_and_columnar_requests_decode_to_the_same_batch():
    png = _png()
    encoded = {"b64": base64.b64encode(png).decode()}
    rows = decode_request({"instances": [encoded, {"image_bytes": encoded}]}, IMAGE_SIGNATURE, max_image_pixels=100)
    columns = decode_request({"inputs": {"image_bytes": [encoded, encoded]}}, IMAGE_SIGNATURE)
    assert rows.row_format and not columns.row_format
    assert rows.inputs["image_bytes"].tolist() == columns.inputs["image_bytes"].tolist() == [png, png]


def test_multi_input_signature_needs_named_instances_and_checks_types():
    request = decode_request({"instances": [{"scale": [1.5, 2], "count": 3}]}, TWO_INPUTS)
    assert request.inputs["scale"].dtype == np.float32 and request.inputs["scale"].shape == (1, 2)
    assert request.inputs["count"].tolist() == [3]
    for body, message in [
        ({"instances": [[1.5, 2]]}, "must be an object keyed by input name"),
        ({"instances": [{"scale": [1.5, "x"], "count": 3}]}, "expected a number"),
        ({"instances": [{"scale": [1.5, 2], "count": 3.5}]}, "expected an integer"),
        ({"instances": [{"scale": [[1], [2, 3]], "count": 1}]}, "rectangular"),
        ({"instances": [{"scale": [1, 2, 3], "count": 1}]}, "shape [3] does not match the signature's [2]"),
        ({"inputs": [1, 2]}, "'inputs' must be an object"),
    ]:
        with pytest.raises(RequestError, match=message.replace("[", r"\[").replace("]", r"\]")):
            decode_request(body, TWO_INPUTS)


def test_image_guard_rejects_bombs_and_non_images():
    big = {"b64": base64.b64encode(_png()).decode()}
    with pytest.raises(RequestError, match="more than the limit of 10 pixels"):
        decode_request({"instances": [big]}, IMAGE_SIGNATURE, max_image_pixels=10)
    with pytest.raises(RequestError, match="not a recognisable image"):
        decode_request({"instances": ["plain text"]}, IMAGE_SIGNATURE, max_image_pixels=10)


def test_responses_follow_tf_serving_formats():
    outputs = {"probability": np.array([0.25, 0.75], np.float32), "label": np.array([0, 1])}
    assert encode_response(outputs, row_format=True) == {
        "predictions": [{"label": 0, "probability": 0.25}, {"label": 1, "probability": 0.75}]
    }
    assert encode_response(outputs, row_format=False) == {"outputs": {"label": [0, 1], "probability": [0.25, 0.75]}}
    assert encode_response({"p": np.array([0.5])}, row_format=True) == {"predictions": [0.5]}
    strings = encode_response({"name": np.array([b"abc"], dtype=object), "raw_bytes": np.array([b"\xff"], dtype=object)}, True)
    assert strings == {"predictions": [{"name": "abc", "raw_bytes": {"b64": "/w=="}}]}


def test_only_complete_integer_versions_count(tmp_path):
    for name in ("1", "12", "3", ".4.tmp-abc", "5.tmp", "abc", "0"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "saved_model.pb").write_bytes(b"x")
    (tmp_path / "20").mkdir()  # still being written: no saved_model.pb yet
    assert list_versions(str(tmp_path)) == [1, 3, 12]
    assert list_versions(str(tmp_path / "missing")) == []


def test_heatmap_maps_each_tile_to_its_image_ops_position():
    from histopath.models.heatmap import render_overlay

    rows, cols, k = 3, 4, 6  # tile 6 sits at row 6 // 4 = 1, column 6 % 4 = 2 (tile_image order)
    attention = np.zeros(rows * cols)
    attention[k] = 1.0
    image = Image.new("RGB", (400, 300), (128, 128, 128))
    overlay = np.asarray(render_overlay(image, attention, (rows, cols))).astype(float).sum(axis=2)
    tile_means = overlay.reshape(rows, 100, cols, 100).mean(axis=(1, 3))
    assert np.unravel_index(tile_means.argmax(), tile_means.shape) == (1, 2)
    with pytest.raises(ValueError, match="do not fit a 3x4 grid"):
        render_overlay(image, attention[:-1], (rows, cols))
    # Probabilities keep their scale: a uniform 0.2 map is not stretched to the top colour.
    def colour(values, absolute):
        return np.asarray(render_overlay(image, values, (rows, cols), absolute=absolute))[50, 50]
    low = np.full(rows * cols, 0.2)
    assert not np.array_equal(colour(low, True), colour(low, False))
    np.testing.assert_array_equal(colour(np.ones(rows * cols), True), colour(low, False))


def test_serve_refuses_production_without_secret_key(tmp_path, monkeypatch, capsys):
    from histopath.cli import main

    monkeypatch.delenv("SECRET_KEY", raising=False)
    assert main(["serve", "--serving-dir", str(tmp_path), "--port", "8123"]) == 1
    assert "SECRET_KEY is not set" in capsys.readouterr().err
    assert main(["serve", "--serving-dir", str(tmp_path / "missing")]) == 1
    assert "is not a folder" in capsys.readouterr().err
    assert main(["model-server", "--model-base-path", str(tmp_path / "missing"), "--model-name", "m"]) == 1
    assert "--model-base-path" in capsys.readouterr().err


def test_dev_mode_environment(tmp_path):
    from histopath.cli import build_parser
    from histopath.serving.cli import web_app_environment

    args = build_parser().parse_args(["serve", "--dev", "--serving-dir", str(tmp_path), "--model-name", "mil"])
    env = web_app_environment(args, base={})
    assert env["DEBUG"] == "1" and env["SECRET_KEY"] and env["HISTOPATH_MODEL_NAME"] == "mil"
    args = build_parser().parse_args(["serve", "--tf-serving-url", "http://ms:8501"])
    env = web_app_environment(args, base={"SECRET_KEY": "s", "HISTOPATH_SERVING_DIR": "/nope"})
    assert env["TF_SERVING_URL"] == "http://ms:8501" and env["DEBUG"] == "0"


def test_settings_refuse_to_load_without_secret_key_in_production():
    code = "import os, django; os.environ['DJANGO_SETTINGS_MODULE']='histopath.serving.webapp.settings'; django.setup()"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "DEBUG": "false"}, timeout=60)
    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr

