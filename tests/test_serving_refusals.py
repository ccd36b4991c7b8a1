"""`histopath model-server` tried as an attacker and with awkward images (issue 21).

Each test is one reproduced finding: the repository `unload` request, the `tf.Example`
bomb, the gRPC shape bomb, a version whose `variables/` arrive late, a blank image, a
truncated PNG, and 16-bit twins of 8-bit images. The REAL server runs as a subprocess on
loopback; memory is read from `/proc/<pid>/status`.
"""

from __future__ import annotations

import base64
import io
import shutil
import time

import numpy as np
import pytest
import requests
from PIL import Image
from serving_fixtures import MIL_NAME, full_size_images, served_copy
from synthetic_images import png_bomb, png_bytes

MIB = 1024 * 1024
AVAILABLE = {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}


@pytest.fixture(scope="module")
def server(exported_models, tmp_path_factory):
    with served_copy(exported_models.mil, tmp_path_factory.mktemp("refusals-base")) as running:
        yield running


@pytest.fixture(scope="module")
def tissue(shared_data) -> np.ndarray:
    """A real 700x460 BreakHis image as 8-bit RGB pixels."""
    return np.asarray(Image.open(full_size_images(shared_data, 1)[0]).convert("RGB"))


def _b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode("ascii")}


def _example(image: bytes) -> bytes:
    import tensorflow as tf

    feature = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image]))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _predict(server, body: dict) -> requests.Response:
    return requests.post(f"{server['rest']}/v1/models/{MIL_NAME}:predict", json=body, timeout=120)


def _rss_bytes(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _grpc_stub(server):
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    channel = grpc.insecure_channel(server["grpc"])
    return channel, prediction_service_pb2_grpc.PredictionServiceStub(channel)


def _grpc_request(images: list[bytes], signature: str = "serving_default", name: str = "image_bytes"):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = MIL_NAME
    request.model_spec.signature_name = signature
    request.inputs[name].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string))
    return request


def _assert_still_serving(server, image: bytes) -> None:
    assert requests.get(f"{server['rest']}/v1/models/{MIL_NAME}", timeout=10).json() == {"model_version_status": [AVAILABLE]}
    assert _predict(server, {"instances": [_b64(image)]}).status_code == 200


# 1. Nobody who can reach the server can take the model away.
@pytest.mark.parametrize("method, path", [
    ("POST", f"/v2/repository/models/{MIL_NAME}/unload"),
    ("POST", f"/v2/repository/models/{MIL_NAME}/load"),
    ("POST", "/v2/repository/index"),
    ("POST", f"/v1/models/{MIL_NAME}:unload"),
    ("DELETE", f"/v1/models/{MIL_NAME}"),
    ("PUT", f"/v1/models/{MIL_NAME}"),
])
def test_no_request_unloads_the_model(server, tissue, method, path):
    response = requests.request(method, server["rest"] + path, timeout=10)
    assert response.status_code in (404, 405), response.text
    _assert_still_serving(server, png_bytes(tissue))


def test_grpc_configuration_cannot_be_changed(server, tissue):
    import grpc
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

    with grpc.insecure_channel(server["grpc"]) as channel:
        with pytest.raises(grpc.RpcError) as error:
            model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
                model_management_pb2.ReloadConfigRequest(), timeout=10)
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    _assert_still_serving(server, png_bytes(tissue))


# 3. The pixel limit holds on both signatures, REST and gRPC, before anything is decoded.
def test_decompression_bomb_is_refused_on_every_input_path(server, tissue):
    import grpc

    bomb = png_bomb(14000, 14000)
    rss_before = _rss_bytes(server["process"].pid)
    started = time.monotonic()
    for body in ({"instances": [_b64(bomb)]},
                 {"signature_name": "serving_examples", "instances": [_b64(_example(bomb))]},
                 {"signature_name": "serving_examples", "inputs": {"examples": [_b64(_example(bomb))]}}):
        response = _predict(server, body)
        assert response.status_code == 400, response.text
        assert "too large" in response.json()["error"]
    channel, stub = _grpc_stub(server)
    with channel:
        for request in (_grpc_request([bomb]), _grpc_request([_example(bomb)], "serving_examples", "examples")):
            with pytest.raises(grpc.RpcError) as error:
                stub.Predict(request, timeout=30)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "too large" in error.value.details()
    assert time.monotonic() - started < 10, "the bombs were decoded"
    assert _rss_bytes(server["process"].pid) - rss_before < 150 * MIB
    _assert_still_serving(server, png_bytes(tissue))


# 4. gRPC checks a tensor's declared shape against its content before allocating it.
@pytest.mark.parametrize("dims, values, message", [
    ([250_000_000], 1, "batch of 250000000"),
    ([2], 1, "holds 2 value(s), the tensor carries 1"),
    ([1, 1], 1, "does not match the signature's [?]"),
])
def test_grpc_shape_bomb_is_refused_before_allocation(server, tissue, dims, values, message):
    import grpc
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2

    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[b"x"] * values)
    proto.tensor_shape.CopyFrom(tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in dims]))
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MIL_NAME
    request.inputs["image_bytes"].CopyFrom(proto)
    assert request.ByteSize() < 100
    rss_before = _rss_bytes(server["process"].pid)
    channel, stub = _grpc_stub(server)
    with channel:
        with pytest.raises(grpc.RpcError) as error:
            stub.Predict(request, timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.value.details()
    assert _rss_bytes(server["process"].pid) - rss_before < 100 * MIB
    _assert_still_serving(server, png_bytes(tissue))


# 8. An image without tissue gets no class.
def test_blank_images_are_not_classified(server, tissue):
    black, white = np.zeros((460, 700, 3), np.uint8), np.full((460, 700, 3), 255, np.uint8)
    response = _predict(server, {"instances": [_b64(png_bytes(image)) for image in (black, white, tissue)]})
    assert response.status_code == 200, response.text
    rows = response.json()["predictions"]
    assert [row["tissue_detected"] for row in rows] == [0, 0, 1]
    assert [row["label"] for row in rows[:2]] == [-1, -1]  # the raw answer gives no class either
    assert rows[0]["tissue_fraction"] == 0.0 and rows[1]["tissue_fraction"] == 0.0
    assert rows[2]["tissue_fraction"] > 0.3


# 9. A corrupt or truncated image gets an error that says so, on every path.
def test_truncated_png_error_names_the_problem(server, tissue):
    import grpc

    truncated = png_bytes(tissue)[:20_000]
    for body in ({"instances": [_b64(truncated)]},
                 {"signature_name": "serving_examples", "instances": [_b64(_example(truncated))]}):
        response = _predict(server, body)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert "image 0" in error and "truncated" in error and "Graph execution" not in error
    channel, stub = _grpc_stub(server)
    with channel:
        with pytest.raises(grpc.RpcError) as raised:
            stub.Predict(_grpc_request([png_bytes(tissue), truncated]), timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "image 1" in raised.value.details() and "truncated" in raised.value.details()
    _assert_still_serving(server, png_bytes(tissue))


# 2. (model server half) 16-bit images are read by their real range: twins agree.
def test_16_bit_twins_get_the_answers_of_their_8_bit_originals(server, tissue):
    grey = tissue.mean(axis=-1).astype(np.uint8)
    twins = [png_bytes(tissue), png_bytes(tissue.astype(np.uint16) * 257),
             png_bytes(grey), png_bytes(grey.astype(np.uint16) * 257)]
    rows = _predict(server, {"instances": [_b64(image) for image in twins]}).json()["predictions"]
    for original, twin in ((rows[0], rows[1]), (rows[2], rows[3])):
        assert twin["probability"] == pytest.approx(original["probability"], abs=1e-6)
        assert twin["tissue_fraction"] == original["tissue_fraction"]
    assert Image.open(io.BytesIO(twins[3])).mode == "I;16"


# 6. A version that failed to load is retried until it loads.
def test_version_with_late_variables_is_retried_until_it_loads(exported_models, tmp_path_factory, tissue):
    base = tmp_path_factory.mktemp("late-variables")
    model_dir = base / MIL_NAME
    with served_copy(exported_models.mil, base, poll_interval=0.5) as running:
        late = model_dir / "2"
        late.mkdir()
        shutil.copy2(exported_models.mil_v2 / "saved_model.pb", late / "saved_model.pb")
        status_url = f"{running['rest']}/v1/models/{MIL_NAME}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            versions = requests.get(status_url, timeout=10).json()["model_version_status"]
            if len(versions) == 2:
                break
            time.sleep(0.3)
        assert versions[0] == AVAILABLE and versions[1]["version"] == "2" and versions[1]["state"] == "END"
        for item in exported_models.mil_v2.iterdir():  # the rest of the push, seconds later
            if item.name != "saved_model.pb":
                (shutil.copytree if item.is_dir() else shutil.copy2)(item, late / item.name)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            versions = requests.get(status_url, timeout=10).json()["model_version_status"]
            if versions[0]["version"] == "2":
                break
            time.sleep(0.3)
        assert versions == [{**AVAILABLE, "version": "2"}]
        response = _predict(running, {"instances": [_b64(png_bytes(tissue))]})
        assert response.headers["x-model-version"] == "2"
