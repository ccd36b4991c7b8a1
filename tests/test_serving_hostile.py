"""`histopath model-server` tried as an attacker on the hospital network would (issue 26).

The REAL server runs as a subprocess (on loopback: even the default-bind test only looks
at which addresses it listens on); raw requests go through plain sockets.
"""

from __future__ import annotations

import base64
import pathlib
import re
import shlex
import shutil
import socket
import time

import numpy as np
import psutil
import pytest
import requests
import yaml
from serving_fixtures import MIL_NAME, REPO_ROOT, model_server, served_copy
from synthetic_images import png_bytes


@pytest.fixture(scope="module")
def server(exported_models, tmp_path_factory):
    with served_copy(exported_models.mil, tmp_path_factory.mktemp("hostile-base")) as running:
        yield running


def _listening_addresses(pid: int) -> set[str]:
    process = psutil.Process(pid)
    return {connection.laddr.ip for connection in process.net_connections(kind="inet")
            if connection.status == psutil.CONN_LISTEN}


def _loopback(address: str) -> bool:
    import ipaddress

    parsed = ipaddress.ip_address(address)
    mapped = getattr(parsed, "ipv4_mapped", None)
    return parsed.is_loopback or (mapped is not None and mapped.is_loopback)


def _raw(url: str, request: bytes, timeout: float = 10) -> bytes:
    """Sends `request` as is and returns what the server answers until it closes."""
    host, port = url.split("//")[1].split(":")
    answer = b""
    with socket.create_connection((host, int(port)), timeout=timeout) as connection:
        connection.sendall(request)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = connection.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            answer += chunk
            if b"\r\n\r\n" in answer and b"content-length" in answer.lower():
                head, _, body = answer.partition(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
                if len(body) >= length:
                    break
    return answer


def test_model_server_listens_on_loopback_only_by_default(exported_models, tmp_path):
    """Started as the README starts it (no --host): nothing listens beyond the machine."""
    shutil.copytree(exported_models.mil, tmp_path / MIL_NAME / "1")
    with model_server(tmp_path, MIL_NAME, tmp_path, host=None) as running:
        addresses = _listening_addresses(running["process"].pid)
    assert addresses and all(_loopback(address) for address in addresses), addresses


def test_foreign_host_header_is_refused(server):
    status_url = f"{server['rest']}/v1/models/{MIL_NAME}"
    port = server["rest"].rsplit(":", 1)[1]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "localhost"):
        assert requests.get(status_url, headers={"Host": host}, timeout=10).status_code == 200, host
    for host in ("attacker.example", f"attacker.example:{port}", "127.0.0.1.nip.io"):
        refused = requests.get(status_url, headers={"Host": host}, timeout=10)
        assert refused.status_code == 400, host
        assert "Host header" in refused.json()["error"]


def test_status_of_a_version_that_fails_to_load_shows_no_server_path(exported_models, tmp_path):
    import grpc
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    with served_copy(exported_models.mil, tmp_path, poll_interval=0.5) as running:
        broken = tmp_path / MIL_NAME / "2"
        broken.mkdir()
        (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
        deadline = time.monotonic() + 30
        versions = []
        while time.monotonic() < deadline and len(versions) < 2:
            versions = requests.get(f"{running['rest']}/v1/models/{MIL_NAME}", timeout=10).json()["model_version_status"]
            time.sleep(0.3)
        with grpc.insecure_channel(running["grpc"]) as channel:
            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = MIL_NAME
            grpc_status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=10)
    assert len(versions) == 2 and versions[1]["state"] == "END", versions
    messages = [versions[1]["status"]["error_message"], grpc_status.model_version_status[1].status.error_message]
    for message in messages:
        assert message, "the failure has no reason"
        assert str(tmp_path) not in message and str(tmp_path.resolve()) not in message, message
        assert not re.search(r"(?<![\w>])/(tmp|home|work|var|root)\b", message), message


def test_http_0_9_style_request_is_refused(server):
    answer = _raw(server["rest"], f"GET /v1/models/{MIL_NAME}\r\n\r\n".encode())
    assert b"model_version_status" not in answer
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400"), answer[:200]


@pytest.mark.parametrize("path", [
    f"/v1/models/{MIL_NAME}%0d%0aX-Injected:%20yes",
    f"/v1/models/{MIL_NAME}%0aX-Injected:%20yes",
    f"/v1/models/{MIL_NAME}?%0d%0aX-Injected:%20yes",
])
def test_crlf_in_the_path_is_refused(server, path):
    port = server["rest"].rsplit(":", 1)[1]
    answer = _raw(server["rest"], f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"x-injected" not in answer.lower()


def test_raw_crlf_in_the_request_line_is_refused(server):
    port = server["rest"].rsplit(":", 1)[1]
    answer = _raw(server["rest"], f"GET /v1/models/{MIL_NAME}\rX: y HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    assert b"model_version_status" not in answer
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400"), answer[:200]


def _readme_serving_lines() -> list[list[str]]:
    text = (REPO_ROOT / "README.md").read_text()
    block = text.split("## Serving in five lines", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    joined = block.replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in joined.splitlines() if line.strip()]


def test_readme_five_lines_start_nothing_beyond_the_machine():
    """The quick start's servers, parsed by the real command line: loopback only."""
    from histopath import cli

    parser = cli.build_parser()
    commands = [words for words in _readme_serving_lines() if words and words[0] == "histopath"]
    servers = [words for words in commands if words[1] in ("model-server", "serve")]
    assert [words[1] for words in servers] == ["model-server", "serve"]
    for words in servers:
        args = parser.parse_args([word for word in words[1:] if word != "&"])
        assert args.host in ("127.0.0.1", "::1", "localhost"), words


def test_deployments_and_images_name_the_interface_they_listen_on():
    """The containers that must be reachable from other pods say so explicitly."""
    deployment = yaml.safe_load((REPO_ROOT / "serving" / "k8s" / "webapp-deployment.yaml").read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    words = [*container.get("command", []), *container.get("args", [])]
    assert "serve" in words and words[words.index("--host") + 1] == "0.0.0.0"
    dockerfile = (REPO_ROOT / "serving" / "docker" / "webapp.Dockerfile").read_text()
    assert re.search(r'^CMD .*histopath serve --host 0\.0\.0\.0', dockerfile, re.MULTILINE)


def _b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode("ascii")}


def _predict(server, body) -> requests.Response:
    return requests.post(f"{server['rest']}/v1/models/{MIL_NAME}:predict", json=body, timeout=120)


def _example(image: bytes) -> bytes:
    import tensorflow as tf

    feature = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image]))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _png_header_only(width: int, height: int, bits: int, colour_type: int) -> bytes:
    """A PNG whose header announces `width` x `height` samples of `bits` bits (its pixel
    data is a stub: a server must refuse it from the header alone)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bits, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("depth", [200, 100_000])
def test_deeply_nested_json_is_a_bad_request(server, depth):
    body = '{"instances": ' + "[" * depth + "]" * depth + "}"
    response = requests.post(f"{server['rest']}/v1/models/{MIL_NAME}:predict", data=body, timeout=60,
                             headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text[:300]
    assert "nested more than" in response.json()["error"]


def test_decoded_bytes_budget_holds_on_rest_both_signatures_and_grpc(server):
    """25 Mpx of 16-bit RGB (150 MB decoded): under the pixel limit, over the byte budget;
    refused from its header on every input path, with the server's own limit."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    wide = _png_header_only(5000, 5000, 16, 2)
    for body in ({"instances": [_b64(wide)]},
                 {"inputs": {"image_bytes": [_b64(wide)]}},
                 {"signature_name": "serving_examples", "instances": [_b64(_example(wide))]}):
        response = _predict(server, body)
        assert response.status_code == 400, response.text
        assert "(150 MB once decoded), more than the limit of 120 MB" in response.json()["error"]
    with grpc.insecure_channel(server["grpc"]) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for signature, name, value in (("serving_default", "image_bytes", wide),
                                       ("serving_examples", "examples", _example(wide))):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = MIL_NAME
            request.model_spec.signature_name = signature
            request.inputs[name].CopyFrom(tf.make_tensor_proto([value], dtype=tf.string))
            with pytest.raises(grpc.RpcError) as refused:
                stub.Predict(request, timeout=30)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "more than the limit of 120 MB" in refused.value.details()


def test_bomb_refusal_quotes_the_servers_pixel_limit(server):
    from synthetic_images import png_bomb

    response = _predict(server, {"instances": [_b64(png_bomb(14000, 14000))]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert "more than the limit of 40,000,000 pixels" in error and "178956970" not in error


def test_12_bit_twins_get_the_answer_of_their_8_bit_original(server, shared_data):
    """12 significant bits in 16-bit PNGs (with and without sBIT) made from a real BreakHis
    image: the model server reads them by their real range, as the web app does."""
    from PIL import Image
    from serving_fixtures import full_size_images, png16

    rgb = np.asarray(Image.open(full_size_images(shared_data, 1)[0]).convert("RGB"))
    twelve = rgb.astype(np.uint16) << 4 | rgb >> 4
    images = [png_bytes(rgb), png16(twelve, 12), png16(twelve)]
    rows = _predict(server, {"instances": [_b64(image) for image in images]}).json()["predictions"]
    for twin in rows[1:]:
        assert twin["probability"] == pytest.approx(rows[0]["probability"], abs=1e-6)
        assert twin["tissue_fraction"] == pytest.approx(rows[0]["tissue_fraction"], abs=1e-6)
        assert twin["tissue_detected"] == 1
