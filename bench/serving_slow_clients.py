"""Serving under slow clients: throughput with and without 200 of them connected.

    python -m bench.serving_slow_clients [--requests 160] [--slow-clients 200]

Starts `histopath model-server` and `histopath serve` (in front of it, TF_SERVING_URL) on
loopback, as an operator does, and measures in ONE run:

- web app uploads/s (signed-in pathologists posting real BreakHis patches through the
  form) at concurrency 8 and 16;
- REST predictions/s on the model server at concurrency 8 and 16;

each first with no other client, then while `--slow-clients` connections to the same
server send their request one byte per second (half the headers, half a body after
complete headers). Reports the ratios (with / without) and p50/p99 latencies. Writes
`bench/results/serving_slow_clients.json`. The model is an untrained MIL export with the
default architecture (the compute of a trained one).
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import json
import os
import pathlib
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from bench.common import write_json
from bench.serving import _export_tiny_mil, _free_port, _images

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "serving_slow_clients.json"
CONCURRENCY = (8, 16)
PASSWORD = "bench-password-correct-horse-17"  # noqa: S105  (a throw-away bench user)


class SlowClients:
    """`count` connections sending their request one byte per `interval_s` (even ones the
    headers, odd ones a body after complete headers), from one thread, until stopped or
    `max_s` has passed.

    Args:
      port: the server's loopback port.
      count: connections to open.
      path: the request path (a POST for the body senders).
      interval_s: seconds between two bytes on each connection.
      max_s: the longest they keep going.
    """

    def __init__(self, port: int, count: int, path: str = "/", interval_s: float = 1.0, max_s: float = 600.0):
        self.port, self.count, self.path = port, count, path
        self.interval_s, self.max_s = interval_s, max_s
        self.sockets: list[socket.socket] = []
        self.pending: list[bytes] = []
        self.closed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slow-clients", daemon=True)

    def __enter__(self) -> "SlowClients":
        host = f"Host: 127.0.0.1:{self.port}\r\n".encode()
        for index in range(self.count):
            connection = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            connection.setblocking(False)
            if index % 2:
                connection.sendall(f"POST {self.path} HTTP/1.1\r\n".encode() + host
                                   + b"Content-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n")
                self.pending.append(b"x" * 100_000)
            else:
                self.pending.append(f"GET {self.path} HTTP/1.1\r\n".encode() + host + b"X-Padding: " + b"a" * 100_000)
            self.sockets.append(connection)
        self._thread.start()
        return self

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_s
        while not self._stop.wait(self.interval_s) and time.monotonic() < deadline:
            for index, connection in enumerate(self.sockets):
                if connection.fileno() < 0 or not self.pending[index]:
                    continue
                try:
                    connection.send(self.pending[index][:1])
                    self.pending[index] = self.pending[index][1:]
                except BlockingIOError:
                    pass
                except OSError:
                    connection.close()
                    self.closed += 1

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        for connection in self.sockets:
            connection.close()


def _start(args: list[str], log: pathlib.Path, env: dict[str, str]) -> subprocess.Popen:
    handle = log.open("wb")
    process = subprocess.Popen([sys.executable, "-m", "histopath.cli", *args], stdout=handle,
                               stderr=subprocess.STDOUT, env={**os.environ, **env})
    handle.close()
    return process


def _wait_for(url: str, process: subprocess.Popen, log: pathlib.Path, timeout_s: float = 240) -> None:
    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} did not come up; see {log}:\n{log.read_text(errors='replace')[-3000:]}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _signed_in(base_url: str, username: str):
    import requests

    session = requests.Session()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', session.get(base_url + "/accounts/login/", timeout=30).text).group(1)
    response = session.post(base_url + "/accounts/login/", allow_redirects=False, timeout=60,
                            data={"csrfmiddlewaretoken": token, "username": username, "password": PASSWORD})
    if response.status_code != 302:
        raise SystemExit(f"cannot sign in as {username}: HTTP {response.status_code}")
    page = session.get(base_url + "/", timeout=30)
    return session, re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)


def _measure(calls, requests_count: int) -> dict:
    """Runs `requests_count` calls spread over `len(calls)` threads (one callable each)."""
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()

    def worker(index: int) -> None:
        for request_index in range(index, requests_count, len(calls)):
            started = time.perf_counter()
            ok = calls[index](request_index)
            with lock:
                latencies.append(time.perf_counter() - started)
                failures[0] += 0 if ok else 1

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(calls)) as pool:
        list(pool.map(worker, range(len(calls))))
    wall = time.perf_counter() - started
    values = np.asarray(latencies) * 1000.0
    return {"requests": len(latencies), "failures": failures[0], "per_s": round(len(latencies) / wall, 2),
            "p50_ms": round(float(np.percentile(values, 50)), 1), "p99_ms": round(float(np.percentile(values, 99)), 1)}


def _upload_calls(web_url: str, images: list[bytes], clients: int, users: list[str]):
    sessions = [_signed_in(web_url, users[index % len(users)]) for index in range(clients)]

    def make(index: int):
        session, token = sessions[index]

        def call(request_index: int) -> bool:
            response = session.post(web_url + "/", data={"csrfmiddlewaretoken": token}, timeout=120,
                                    files={"image": ("patch.png", images[request_index % len(images)], "image/png")})
            return response.status_code == 200 and 'id="result-label"' in response.text

        return call

    return [make(index) for index in range(clients)]


def _rest_calls(rest_url: str, name: str, images: list[bytes], clients: int):
    import requests

    def make(_: int):
        session = requests.Session()

        def call(request_index: int) -> bool:
            body = {"instances": [{"b64": base64.b64encode(images[request_index % len(images)]).decode("ascii")}]}
            return session.post(f"{rest_url}/v1/models/{name}:predict", json=body, timeout=120).status_code == 200

        return call

    return [make(index) for index in range(clients)]


def _run_all(web_url: str, rest_url: str, name: str, images: list[bytes], users: list[str],
             requests_count: int, slow_count: int) -> dict:
    results: dict = {"web_uploads": {}, "rest_predictions": {}}
    web_port, rest_port = int(web_url.rsplit(":", 1)[1]), int(rest_url.rsplit(":", 1)[1])
    for concurrency in CONCURRENCY:
        for label, port, path, make in (
            ("web_uploads", web_port, "/", lambda c: _upload_calls(web_url, images, c, users)),
            ("rest_predictions", rest_port, f"/v1/models/{name}:predict", lambda c: _rest_calls(rest_url, name, images, c)),
        ):
            calls = make(concurrency)
            calls[0](0)  # warm-up
            quiet = _measure(calls, requests_count)
            with SlowClients(port, slow_count, path) as slow:
                time.sleep(3.0)  # every slow client is connected and dribbling
                loaded = _measure(calls, requests_count)
                loaded["slow_clients_dropped_by_server"] = slow.closed
            results[label][f"c{concurrency}"] = {
                "without_slow_clients": quiet, f"with_{slow_count}_slow_clients": loaded,
                "throughput_ratio": round(loaded["per_s"] / quiet["per_s"], 3),
                "p99_latency_ratio": round(loaded["p99_ms"] / quiet["p99_ms"], 3),
            }
            print(f"{label} c={concurrency}: {quiet['per_s']}/s alone, {loaded['per_s']}/s with {slow_count} "
                  f"slow clients (ratio {results[label][f'c{concurrency}']['throughput_ratio']})", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=160, help="requests per measurement")
    parser.add_argument("--slow-clients", type=int, default=200, help="slow connections opened")
    parser.add_argument("--output", type=pathlib.Path, default=RESULTS)
    args = parser.parse_args(argv)

    temp = pathlib.Path(tempfile.mkdtemp(prefix="bench-slow-clients-"))
    processes: list[subprocess.Popen] = []
    try:
        _export_tiny_mil(temp / "models" / "mil" / "1")
        images = _images(50)
        users = [f"bench-pathologist-{index}" for index in range(4)]
        env = {"SECRET_KEY": "bench-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz",
               "DATABASE_URL": f"sqlite:///{temp / 'webapp.sqlite3'}", "ALLOWED_HOSTS": "127.0.0.1",
               "BENCH_PASSWORD": PASSWORD, "TF_USE_LEGACY_KERAS": "1"}
        for user in users:
            added = subprocess.run([sys.executable, "-m", "histopath.cli", "webapp", "adduser", user, "--role",
                                    "pathologist", "--password-env", "BENCH_PASSWORD"], env={**os.environ, **env},
                                   capture_output=True, text=True, timeout=300)
            if added.returncode:
                raise SystemExit(added.stderr[-2000:])
        rest_port, grpc_port, web_port = _free_port(), _free_port(), _free_port()
        processes.append(_start(["model-server", "--model-base-path", str(temp / "models"), "--model-name", "mil",
                                 "--rest-port", str(rest_port), "--grpc-port", str(grpc_port)],
                                temp / "model-server.log", env))
        rest_url = f"http://127.0.0.1:{rest_port}"
        _wait_for(f"{rest_url}/v1/models/mil", processes[-1], temp / "model-server.log")
        processes.append(_start(["serve", "--port", str(web_port), "--tf-serving-url", rest_url, "--model-name", "mil"],
                                temp / "webapp.log", env))
        web_url = f"http://127.0.0.1:{web_port}"
        _wait_for(f"{web_url}/healthz", processes[-1], temp / "webapp.log")
        results = _run_all(web_url, rest_url, "mil", images, users, args.requests, args.slow_clients)
        report = {
            "benchmark": "serving_slow_clients",
            "model": "untrained MIL (default MilConfig) export",
            "servers": "histopath serve (gunicorn, 1 uvicorn worker, --threads 8) -> histopath model-server",
            "requests_per_measurement": args.requests,
            "slow_clients": args.slow_clients,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "results": results,
        }
        write_json(args.output, report)
        print(json.dumps(results, indent=2))
        print(f"written to {args.output}")
        return 0
    finally:
        for process in reversed(processes):
            _stop(process)
        shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
