"""Serving benchmark: in-process predictions vs through `histopath model-server`.

    python -m bench.serving [--model-base-path DIR --model-name NAME] [--requests 200]

Measures predictions/s and p50/p99 latency for one image per request, at concurrency 1
and 8, (a) in-process (`ModelStore`, the web app's embedded backend) and (b) through the
model server's TF-Serving REST API (and its gRPC API, for reference), in ONE run, and
reports the server/in-process ratios. Without `--model-base-path` an untrained MIL model
with the default architecture (224 px, 7x7 tiles of 32 px) is exported with the project's
exporter (untrained weights cost the same compute as trained ones). Writes
`bench/results/serving.json`.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import json
import os
import pathlib
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import histopath  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
from tqdm import tqdm

from bench.common import write_json

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "serving.json"
CONCURRENCY = (1, 8)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _images(count: int) -> list[bytes]:
    shared = pathlib.Path(os.environ.get("HISTOPATH_SHARED_DATA", REPO.parent / "shared" / "data"))
    paths = sorted((shared / "breakhis-200x-224").rglob("*.png"))[:count]
    if paths:
        return [path.read_bytes() for path in paths]
    from PIL import Image

    from histopath.images import encode_png

    rng = np.random.default_rng(0)
    return [encode_png(Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8))) for _ in range(count)]


def _export_tiny_mil(version_dir: pathlib.Path) -> None:
    """A small untrained MIL model (production tiling: 224 px, 32 px tiles), exported by
    the project's exporter."""
    import tensorflow as tf

    from histopath.models import image_ops
    from histopath.models.export import export_serving_model
    from histopath.models.mil import build_mil_model
    from histopath.models.config import MilConfig

    tf.keras.utils.set_random_seed(0)
    config = MilConfig(image_size=224, tile_size=32)
    export_serving_model(
        build_mil_model(config),
        str(version_dir),
        preprocess=lambda image_bytes: image_ops.decode_and_resize(image_bytes, config.image_size),
        model_info={"model_kind": "mil", "model_name": "mil", "dataset": "bench"},
        decision_threshold=0.5,
    )


def _stats(latencies: list[float], wall_s: float) -> dict:
    values = np.asarray(latencies) * 1000.0
    return {
        "requests": len(latencies),
        "predictions_per_s": round(len(latencies) / wall_s, 2),
        "p50_ms": round(float(np.percentile(values, 50)), 2),
        "p99_ms": round(float(np.percentile(values, 99)), 2),
    }


def _run_load(call, images: list[bytes], requests_count: int, concurrency: int, label: str) -> dict:
    for image in images[:3]:  # warm-up (graph tracing, connections)
        call(image)
    latencies: list[float] = []

    def one(index: int) -> float:
        started = time.perf_counter()
        call(images[index % len(images)])
        return time.perf_counter() - started

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
        for latency in tqdm(pool.map(one, range(requests_count)), total=requests_count, desc=label, leave=False, disable=None):
            latencies.append(latency)
    return _stats(latencies, time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-base-path", type=pathlib.Path, help="serving folder (<dir>/<name>/<version>/)")
    parser.add_argument("--model-name", default="mil", help="model name under the serving folder")
    parser.add_argument("--requests", type=int, default=200, help="requests per measurement")
    parser.add_argument("--output", type=pathlib.Path, default=RESULTS)
    args = parser.parse_args(argv)

    temp = pathlib.Path(tempfile.mkdtemp(prefix="bench-serving-"))
    try:
        if args.model_base_path is None:
            base, name = temp / "models", "mil"
            _export_tiny_mil(base / name / "1")
            model_source = "untrained MIL (default MilConfig) export"
        else:
            base, name = args.model_base_path, args.model_name
            model_source = str(base / name)
        images = _images(50)

        import grpc
        import requests
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        from histopath.serving.model_store import ModelStore

        store = ModelStore(base, name)
        if not store.refresh():
            raise SystemExit(f"no loadable version under {base / name}")
        loaded = store.current

        def in_process(image: bytes) -> None:
            loaded.run("serving_default", {"image_bytes": np.array([image], dtype=object)})

        rest_port, grpc_port = _free_port(), _free_port()
        log = (temp / "model-server.log").open("wb")
        server = subprocess.Popen(
            [sys.executable, "-m", "histopath.cli", "model-server", "--model-base-path", str(base),
             "--model-name", name, "--rest-port", str(rest_port), "--grpc-port", str(grpc_port),
             "--host", "127.0.0.1"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            rest_url = f"http://127.0.0.1:{rest_port}/v1/models/{name}"
            deadline = time.monotonic() + 180
            while True:
                try:
                    if requests.get(rest_url, timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit(f"model server did not start; see {log.name}")
                time.sleep(0.5)
            sessions: dict[int, requests.Session] = {}

            def through_rest(image: bytes) -> None:
                session = sessions.setdefault(threading.get_ident(), requests.Session())
                body = {"instances": [{"b64": base64.b64encode(image).decode("ascii")}]}
                response = session.post(rest_url + ":predict", json=body, timeout=60)
                response.raise_for_status()

            channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

            def through_grpc(image: bytes) -> None:
                request = predict_pb2.PredictRequest()
                request.model_spec.name = name
                request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([image], dtype=tf.string))
                stub.Predict(request, timeout=60)

            results: dict = {}
            for concurrency in CONCURRENCY:
                for label, call in (("in_process", in_process), ("rest", through_rest), ("grpc", through_grpc)):
                    results.setdefault(label, {})[f"c{concurrency}"] = _run_load(
                        call, images, args.requests, concurrency, f"{label} c={concurrency}"
                    )
            channel.close()
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
            log.close()

        ratios = {}
        for concurrency in CONCURRENCY:
            key = f"c{concurrency}"
            base_stats = results["in_process"][key]
            for label in ("rest", "grpc"):
                stats = results[label][key]
                ratios[f"{label}_vs_in_process_{key}"] = {
                    "throughput_ratio": round(stats["predictions_per_s"] / base_stats["predictions_per_s"], 3),
                    "p50_latency_ratio": round(stats["p50_ms"] / base_stats["p50_ms"], 3),
                    "p99_latency_ratio": round(stats["p99_ms"] / base_stats["p99_ms"], 3),
                }
        report = {
            "benchmark": "serving",
            "model": model_source,
            "model_version": loaded.version,
            "image_count": len(images),
            "requests_per_measurement": args.requests,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "results": results,
            "ratios": ratios,
        }
        write_json(args.output, report)
        print(json.dumps({"results": results, "ratios": ratios}, indent=2))
        print(f"written to {args.output}")
        return 0
    finally:
        shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
