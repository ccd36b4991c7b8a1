"""Contract tests of `histopath model-server` as a TensorFlow Serving client sees it.

The REAL server runs as a subprocess on loopback; requests are the ones a TF Serving client
sends (REST JSON, gRPC `PredictRequest` built with the official protos and
`tf.make_tensor_proto`); answers are compared with the same SavedModel run in this process.
"""

from __future__ import annotations

import base64
import json
import shutil
import time

import numpy as np
import pytest
import requests
from serving_fixtures import (
    DENSENET_NAME,
    MIL_NAME,
    full_size_images,
    idc_images,
    model_server,
    served_copy,
    push_version,
    reference_outputs,
)

TOLERANCE = 1e-5
MIL_OUTPUTS = {"probability", "label", "decision_score", "tissue_fraction", "tissue_detected",
               "uncertainty", "not_sure", "attention", "tile_probability", "grid_shape"}
WHOLE_IMAGE_OUTPUTS = {"probability", "label", "decision_score", "tissue_fraction", "tissue_detected",
                       "uncertainty", "not_sure"}


@pytest.fixture(scope="module")
def server(exported_models, tmp_path_factory):
    with served_copy(exported_models.mil, tmp_path_factory.mktemp("model-server-base")) as running:
        yield running


@pytest.fixture(scope="module")
def images(shared_data) -> list[bytes]:
    """A 50x50 IDC patch and a 700x460 BreakHis image: different sizes in one batch."""
    return [idc_images(shared_data, 1)[0].read_bytes(), full_size_images(shared_data, 1)[0].read_bytes()]


def _b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode("ascii")}


def _predict(server, body, path: str = f"/v1/models/{MIL_NAME}:predict", **kwargs) -> requests.Response:
    return requests.post(server["rest"] + path, json=body, timeout=60, **kwargs)


def _assert_mil_row(row: dict, expected: dict, index: int) -> None:
    assert set(row) == MIL_OUTPUTS
    assert row["probability"] == pytest.approx(float(expected["probability"][index]), abs=TOLERANCE)
    assert row["label"] == int(expected["label"][index])
    assert row["not_sure"] == int(expected["not_sure"][index])
    assert row["uncertainty"] == pytest.approx(float(expected["uncertainty"][index]), abs=TOLERANCE)
    np.testing.assert_allclose(row["attention"], expected["attention"][index], atol=TOLERANCE)
    np.testing.assert_allclose(row["tile_probability"], expected["tile_probability"][index], atol=TOLERANCE)
    assert row["grid_shape"] == expected["grid_shape"][index].tolist()
    assert sum(row["attention"]) == pytest.approx(1.0, abs=1e-4)


def test_model_status_is_tf_serving_json(server):
    expected = {"model_version_status": [{"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    assert requests.get(f"{server['rest']}/v1/models/{MIL_NAME}", timeout=10).json() == expected
    assert requests.get(f"{server['rest']}/v1/models/{MIL_NAME}/versions/1", timeout=10).json() == expected
    missing = requests.get(f"{server['rest']}/v1/models/{MIL_NAME}/versions/7", timeout=10)
    assert missing.status_code == 404 and "version 7" in missing.json()["error"]
    assert requests.get(f"{server['rest']}/v1/models/other", timeout=10).status_code == 404


def test_metadata_lists_the_contract_signatures(server):
    metadata = requests.get(f"{server['rest']}/v1/models/{MIL_NAME}/metadata", timeout=10).json()
    assert metadata["model_spec"] == {"name": MIL_NAME, "signature_name": "", "version": "1"}
    signatures = metadata["metadata"]["signature_def"]["signature_def"]
    default = signatures["serving_default"]
    assert default["inputs"]["image_bytes"]["dtype"] == "DT_STRING"
    assert set(default["outputs"]) == MIL_OUTPUTS
    assert signatures["serving_examples"]["inputs"]["examples"]["dtype"] == "DT_STRING"
    assert signatures["model_info"]["outputs"]["model_info"]["dtype"] == "DT_STRING"


def test_the_model_describes_itself_through_the_predict_api(server, exported_models):
    """TF Serving does not serve `assets.extra`: the `model_info` signature answers the
    served part of it."""
    from histopath.models.exported import served_model_info

    response = _predict(server, {"signature_name": "model_info", "instances": [{"request": ""}]})
    assert response.status_code == 200, response.text
    (described,) = response.json()["predictions"]
    stored = json.loads((exported_models.mil / "assets.extra" / "model_info.json").read_text())
    assert json.loads(described) == served_model_info(stored) and stored["decision_threshold"] == 0.5
    many = _predict(server, {"signature_name": "model_info", "instances": [{"request": ""}] * 64})
    assert many.status_code == 400 and "request" in many.json()["error"]  # one request value, one answer


def test_rest_row_format_matches_in_process_predictions(server, exported_models, images):
    response = _predict(server, {"instances": [_b64(image) for image in images]})
    assert response.status_code == 200, response.text
    assert response.headers["x-model-version"] == "1"
    expected = reference_outputs(exported_models.mil, {"image_bytes": np.array(images, dtype=object)})
    predictions = response.json()["predictions"]
    assert len(predictions) == 2
    for index, row in enumerate(predictions):
        _assert_mil_row(row, expected, index)
    # Named-input instances and the version-specific URL give the same answer.
    named = _predict(server, {"instances": [{"image_bytes": _b64(images[0])}]}, f"/v1/models/{MIL_NAME}/versions/1:predict")
    assert named.status_code == 200, named.text
    _assert_mil_row(named.json()["predictions"][0], expected, 0)


def test_rest_columnar_format(server, exported_models, images):
    response = _predict(server, {"signature_name": "serving_default", "inputs": {"image_bytes": [_b64(image) for image in images]}})
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    expected = reference_outputs(exported_models.mil, {"image_bytes": np.array(images, dtype=object)})
    np.testing.assert_allclose(outputs["probability"], expected["probability"], atol=TOLERANCE)
    assert outputs["label"] == expected["label"].tolist()
    np.testing.assert_allclose(outputs["attention"], expected["attention"], atol=TOLERANCE)
    assert outputs["grid_shape"] == expected["grid_shape"].tolist()


def test_rest_examples_signature(server, exported_models, images):
    import tensorflow as tf

    examples = [
        tf.train.Example(features=tf.train.Features(feature={"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image]))})).SerializeToString()
        for image in images
    ]
    response = _predict(server, {"signature_name": "serving_examples", "instances": [_b64(example) for example in examples]})
    assert response.status_code == 200, response.text
    expected = reference_outputs(exported_models.mil, {"examples": np.array(examples, dtype=object)}, "serving_examples")
    for index, row in enumerate(response.json()["predictions"]):
        _assert_mil_row(row, expected, index)


def test_grpc_predict_metadata_and_status(server, exported_models, images):
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        get_model_status_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    expected = reference_outputs(exported_models.mil, {"image_bytes": np.array(images, dtype=object)})
    with grpc.insecure_channel(server["grpc"]) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = MIL_NAME
        request.model_spec.signature_name = "serving_default"
        request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string))
        response = stub.Predict(request, timeout=60)
        assert response.model_spec.name == MIL_NAME and response.model_spec.version.value == 1
        outputs = {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}
        assert set(outputs) == MIL_OUTPUTS
        np.testing.assert_allclose(outputs["probability"], expected["probability"], atol=TOLERANCE)
        np.testing.assert_array_equal(outputs["label"], expected["label"])
        np.testing.assert_allclose(outputs["attention"], expected["attention"], atol=TOLERANCE)
        np.testing.assert_allclose(outputs["tile_probability"], expected["tile_probability"], atol=TOLERANCE)
        np.testing.assert_array_equal(outputs["grid_shape"], expected["grid_shape"])

        request.output_filter.append("probability")
        assert list(stub.Predict(request, timeout=60).outputs) == ["probability"]

        metadata_request = get_model_metadata_pb2.GetModelMetadataRequest()
        metadata_request.model_spec.name = MIL_NAME
        metadata_request.metadata_field.append("signature_def")
        metadata = stub.GetModelMetadata(metadata_request, timeout=30)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        metadata.metadata["signature_def"].Unpack(signature_map)
        assert {"serving_default", "serving_examples"} <= set(signature_map.signature_def)

        status_request = get_model_status_pb2.GetModelStatusRequest()
        status_request.model_spec.name = MIL_NAME
        status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status_request, timeout=30)
        assert [(entry.version, entry.state) for entry in status.model_version_status] == [
            (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)
        ]

        def refused(input_name: str, value: bytes):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = MIL_NAME
            request.inputs[input_name].CopyFrom(tf.make_tensor_proto([value], dtype=tf.string))
            with pytest.raises(grpc.RpcError) as error:
                stub.Predict(request, timeout=30)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            return request, error.value.details()

        bad, _ = refused("image_bytes", b"not an image")
        _, details = refused("wrong_name", b"x")
        assert "expected input(s) ['image_bytes'], got ['wrong_name']" in details
        bad.model_spec.name = "unknown"
        with pytest.raises(grpc.RpcError) as error:
            stub.Predict(bad, timeout=30)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    "body, status, message",
    [
        (b"{not json", 400, "Unrecognized request format"),
        ({"instances": "not a list"}, 400, "instances"),
        ({"instances": []}, 400, "non-empty list"),
        ({"data": [1]}, 400, "exactly one of 'instances' or 'inputs'"),
        ({"instances": [1.5]}, 400, "expected a string"),
        ({"instances": [[{"b64": "aGk="}]]}, 400, "shape [1] does not match the signature's []"),
        ({"instances": [{"b64": "!!!not base64!!!"}]}, 400, "not valid base64"),
        ({"instances": [{"b64": base64.b64encode(b"GIF89a-but-broken").decode()}]}, 400, "not a recognisable image"),
        ({"instances": [{"wrong_name": {"b64": "aGk="}}]}, 400, "expected input(s) ['image_bytes']"),
        ({"signature_name": "nope", "instances": [{"b64": "aGk="}]}, 400, "signature name: \"nope\" not found"),
        ({"instances": [{"b64": "aGk="}] * 65}, 400, "too many instances"),
        ("oversized", 413, "larger than the limit"),
    ],
)
def test_bad_requests_get_4xx_json_and_the_server_keeps_serving(server, images, body, status, message):
    url = f"{server['rest']}/v1/models/{MIL_NAME}:predict"
    if body == "oversized":
        response = requests.post(url, data=b"x" * (5 * 1024 * 1024), timeout=60)
    elif isinstance(body, bytes):
        response = requests.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=60)
    else:
        response = requests.post(url, json=body, timeout=60)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    healthy = _predict(server, {"instances": [_b64(images[0])]})
    assert healthy.status_code == 200


def test_truncated_image_is_a_400(server, images):
    response = _predict(server, {"instances": [_b64(images[1][: len(images[1]) // 3])]})
    assert response.status_code == 400, response.text
    assert response.json()["error"]


def test_new_version_is_picked_up_without_restart(exported_models, tmp_path_factory, images):
    """Push v2 while serving: partial pushes are ignored, v2 is swapped in, a broken v3 is not."""
    base = tmp_path_factory.mktemp("hot-reload")
    model_dir = base / MIL_NAME
    shutil.copytree(exported_models.mil, model_dir / "1")
    with model_server(base, MIL_NAME, base, poll_interval=0.5) as running:
        pid = running["process"].pid
        body = {"instances": [_b64(images[0])]}
        # Pushes in progress: a temp-named copy, and a numbered folder without saved_model.pb.
        shutil.copytree(exported_models.mil_v2, model_dir / ".5.tmp-abc123")
        (model_dir / "9" / "variables").mkdir(parents=True)
        time.sleep(2.0)
        assert _predict(running, body).headers["x-model-version"] == "1"

        push_version(exported_models.mil_v2, model_dir, 2)  # temp name + rename, as the pusher
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = requests.get(f"{running['rest']}/v1/models/{MIL_NAME}", timeout=10).json()
            if status["model_version_status"][0]["version"] == "2":
                break
            time.sleep(0.3)
        assert status["model_version_status"] == [{"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]
        response = _predict(running, body)
        assert response.headers["x-model-version"] == "2"
        expected = reference_outputs(exported_models.mil_v2, {"image_bytes": np.array(images[:1], dtype=object)})
        old = reference_outputs(exported_models.mil, {"image_bytes": np.array(images[:1], dtype=object)})
        assert abs(float(expected["probability"][0]) - float(old["probability"][0])) > 1e-4  # distinguishable
        _assert_mil_row(response.json()["predictions"][0], expected, 0)

        broken = model_dir / ".3.tmp"
        shutil.copytree(exported_models.mil_v2, broken)
        (broken / "saved_model.pb").write_bytes(b"corrupt")
        broken.rename(model_dir / "3")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            versions = requests.get(f"{running['rest']}/v1/models/{MIL_NAME}", timeout=10).json()["model_version_status"]
            if len(versions) == 2:
                break
            time.sleep(0.3)
        assert versions[0] == {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        assert versions[1]["version"] == "3" and versions[1]["state"] == "END" and versions[1]["status"]["error_message"]
        assert _predict(running, body).headers["x-model-version"] == "2"
        assert running["process"].poll() is None and running["process"].pid == pid


@pytest.mark.e2e
def test_densenet_export_served_through_rest_and_grpc(exported_densenet, images):
    """The whole-image DenseNet201 export: two outputs, no attention (minutes: big graph)."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    expected = reference_outputs(exported_densenet, {"image_bytes": np.array(images, dtype=object)})
    with model_server(exported_densenet.parents[1], DENSENET_NAME, exported_densenet.parents[1], startup_timeout=600) as running:
        response = _predict(running, {"instances": [_b64(image) for image in images]}, f"/v1/models/{DENSENET_NAME}:predict")
        assert response.status_code == 200, response.text
        for index, row in enumerate(response.json()["predictions"]):
            assert set(row) == WHOLE_IMAGE_OUTPUTS
            assert row["probability"] == pytest.approx(float(expected["probability"][index]), abs=TOLERANCE)
            assert row["label"] == int(expected["label"][index])
        with grpc.insecure_channel(running["grpc"]) as channel:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = DENSENET_NAME
            request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string))
            outputs = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=120).outputs
            assert set(outputs) == WHOLE_IMAGE_OUTPUTS
            np.testing.assert_allclose(tf.make_ndarray(outputs["probability"]), expected["probability"], atol=TOLERANCE)
