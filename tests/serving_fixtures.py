"""Shared helpers and fixtures of the serving and web-app tests.

Test modules import what they need: `from serving_fixtures import ...` (pytest puts
`tests/` on `sys.path`). The exported models are REAL SavedModels written by
`histopath.models.export.export_serving_model` from tiny, untrained MIL (and, in the
`e2e` test, DenseNet) models: the contract is what is tested, not accuracy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Callable, Iterator

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PYTHON = sys.executable
MIL_NAME = "mil"
DENSENET_NAME = "densenet"


def free_port() -> int:
    """A TCP port that is free on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_http(url: str, timeout_s: float, process: subprocess.Popen | None = None, log: pathlib.Path | None = None) -> None:
    """Polls `url` until it answers 200; fails with the server log when it never does."""
    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            break
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    tail = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
    pytest.fail(f"{url} did not come up within {timeout_s} s\n{tail}")


@dataclasses.dataclass
class RunningProcess:
    """A server started by a test, with its log file."""

    process: subprocess.Popen
    log: pathlib.Path

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s (only this process, by pid)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def _interruptible() -> None:
    """In the child: Ctrl-C's default action, as from a terminal. A shell starts background
    jobs with SIGINT ignored, and a Python started so never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_process(args: list[str], log: pathlib.Path, env: dict[str, str] | None = None) -> RunningProcess:
    """Starts the `histopath` command (the installed console script) with output to `log`."""
    script = pathlib.Path(PYTHON).parent / "histopath"
    command = [str(script)] if script.exists() else [PYTHON, "-m", "histopath.cli"]
    handle = log.open("wb")
    process = subprocess.Popen(
        [*command, *args],
        stdout=handle,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        cwd=str(log.parent),
        preexec_fn=_interruptible,
    )
    handle.close()
    return RunningProcess(process, log)


@contextlib.contextmanager
def model_server(
    base: pathlib.Path, name: str, log_dir: pathlib.Path, poll_interval: float = 1.0, startup_timeout: float = 180,
    host: str | None = "127.0.0.1", args: tuple[str, ...] = (),
) -> Iterator[dict]:
    """Runs `histopath model-server` on free ports until the block ends.

    Args:
      host: the `--host` flag; None leaves it out (the default, loopback).
      args: more flags.

    Yields:
      {"rest": "http://127.0.0.1:<port>", "grpc": "127.0.0.1:<port>", "process": ...}
    """
    rest_port, grpc_port = free_port(), free_port()
    server = start_process(
        [
            "model-server", "--model-base-path", str(base), "--model-name", name,
            "--rest-port", str(rest_port), "--grpc-port", str(grpc_port), *(("--host", host) if host else ()),
            "--poll-interval", str(poll_interval), "--max-request-mb", "4", *args,
        ],
        log_dir / f"model-server-{name}-{rest_port}.log",
    )
    try:
        wait_for_http(f"http://127.0.0.1:{rest_port}/v1/models/{name}", startup_timeout, server.process, server.log)
        yield {"rest": f"http://127.0.0.1:{rest_port}", "grpc": f"127.0.0.1:{grpc_port}", "process": server.process, "log": server.log}
    finally:
        server.stop()


@contextlib.contextmanager
def served_copy(version_dir: pathlib.Path, base: pathlib.Path, **options) -> Iterator[dict]:
    """`model_server` over a copy of one exported version as `<base>/mil/1/`."""
    shutil.copytree(version_dir, base / MIL_NAME / "1")
    with model_server(base, MIL_NAME, base, **options) as running:
        yield running


def push_version(source: pathlib.Path, model_dir: pathlib.Path, version: int) -> pathlib.Path:
    """Copies an exported version under a temporary name, then renames it (as the pusher does)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = model_dir / f".push-{version}.tmp"
    shutil.copytree(source, staging)
    final = model_dir / str(version)
    staging.rename(final)
    return final


WEB_SECRET_KEY = "web-test-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz"  # noqa: S105


@contextlib.contextmanager
def web_app(
    work: pathlib.Path,
    *,
    serving_dir: pathlib.Path | None = None,
    tf_serving_url: str | None = None,
    users: tuple[tuple[str, str], ...] = (),
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
    startup_timeout: float = 180,
) -> Iterator[dict]:
    """Runs `histopath serve` (as an operator starts it) on a free loopback port.

    Args:
      work: folder for the database and the logs.
      serving_dir: the embedded backend's models (else `tf_serving_url`).
      tf_serving_url: the model server's REST URL.
      users: (user name, role) pairs created first with `histopath webapp adduser`.
      env: more environment variables.
      args: more `histopath serve` flags.
      startup_timeout: seconds allowed until `/healthz` answers.

    Yields:
      {"url": "http://127.0.0.1:<port>", "database": <sqlite file>, "process", "log"}
    """
    database = work / "webapp.sqlite3"
    environment = {"SECRET_KEY": WEB_SECRET_KEY, "ALLOWED_HOSTS": "127.0.0.1,localhost",
                   "DATABASE_URL": f"sqlite:///{database}", "USER_PASSWORD": TEST_PASSWORD, **(env or {})}
    for username, role in users:
        adduser = start_process(["webapp", "adduser", username, "--role", role, "--password-env", "USER_PASSWORD"],
                                work / f"adduser-{username}.log", env=environment)
        assert adduser.process.wait(timeout=300) == 0, adduser.log.read_text()
    port = free_port()
    source = ["--tf-serving-url", tf_serving_url] if tf_serving_url else ["--serving-dir", str(serving_dir)]
    web = start_process(["serve", "--port", str(port), "--model-name", MIL_NAME, *source, *args],
                        work / f"webapp-{port}.log", env=environment)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_http(url + "/healthz", startup_timeout, web.process, web.log)
        yield {"url": url, "port": port, "database": database, "process": web.process, "log": web.log}
    finally:
        web.stop()


def csrf_token(html: str) -> str:
    """The CSRF token of a page's form."""
    import re

    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)


def web_session(base_url: str, username: str, password: str | None = None):
    """A `requests` session signed in as `username`, and the CSRF token of its form page."""
    import requests

    session = requests.Session()
    login = session.get(base_url + "/accounts/login/", timeout=30)
    signed_in = session.post(base_url + "/accounts/login/", timeout=60, allow_redirects=False, data={
        "csrfmiddlewaretoken": csrf_token(login.text), "username": username,
        "password": password or TEST_PASSWORD})
    assert signed_in.status_code == 302, signed_in.text[-1000:]
    page = session.get(base_url + "/", timeout=30)
    page.raise_for_status()
    return session, csrf_token(page.text)


# --- real images -----------------------------------------------------------------------


def idc_images(shared_data: pathlib.Path, count: int) -> list[pathlib.Path]:
    """`count` real IDC patches (50x50 PNG), sorted for determinism."""
    return sorted((shared_data / "idc").glob("*/*/*.png"))[:count]


def full_size_images(shared_data: pathlib.Path, count: int) -> list[pathlib.Path]:
    """`count` real full-size BreakHis images (700x460 PNG)."""
    return sorted((shared_data / "breakhis-full-size-samples").rglob("*.png"))[:count]


def png16(samples, significant_bits: int | None = None) -> bytes:
    """A 16-bit PNG of `samples` (uint16, H x W grey or H x W x 3 colour), with an `sBIT`
    chunk saying `significant_bits` when given (as scanners writing 12-bit data do)."""
    import zlib

    import numpy as np
    import tensorflow as tf

    pixels = np.asarray(samples, np.uint16)
    data = tf.io.encode_png(pixels if pixels.ndim == 3 else pixels[..., None]).numpy()
    if significant_bits is None:
        return data
    channels = 1 if pixels.ndim == 2 else pixels.shape[-1]
    payload = b"sBIT" + bytes([significant_bits] * channels)
    chunk = len(payload[4:]).to_bytes(4, "big") + payload + zlib.crc32(payload).to_bytes(4, "big")
    end_of_header = 8 + 25  # signature, IHDR chunk
    return data[:end_of_header] + chunk + data[end_of_header:]


# --- a real loopback HTTP server for the URL tests -----------------------------------


class LocalHttpServer:
    """A threaded HTTP server on 127.0.0.1 whose routes are plain functions.

    Args:
      routes: path -> handler(request_handler) that writes the whole response.
    """

    def __init__(self, routes: dict[str, Callable[[http.server.BaseHTTPRequestHandler], None]]):
        self.routes = routes
        self.hits: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.hits.append(self.path)
                route = outer.routes.get(self.path.split("?")[0])
                if route is None:
                    self.send_error(404)
                    return
                try:
                    route(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):  # keep test output quiet
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "LocalHttpServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def send_body(body: bytes, content_type: str, status: int = 200, length: bool = True):
    """A route handler answering `body` with `content_type`."""

    def handler(request: http.server.BaseHTTPRequestHandler) -> None:
        request.send_response(status)
        request.send_header("Content-Type", content_type)
        if length:
            request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    return handler


def dribble(head: bytes, body: bytes = b"", interval_s: float = 1.0):
    """A route handler sending `head` (status line and headers) one byte per `interval_s`,
    then `body` the same way: every single read is quick, the whole answer is not."""

    def handler(request: http.server.BaseHTTPRequestHandler) -> None:
        request.close_connection = True
        for byte in head + body:
            request.wfile.write(bytes([byte]))
            request.wfile.flush()
            time.sleep(interval_s)

    return handler


def redirect_to(location: str, status: int = 302):
    """A route handler redirecting to `location`."""

    def handler(request: http.server.BaseHTTPRequestHandler) -> None:
        request.send_response(status)
        request.send_header("Location", location)
        request.send_header("Content-Length", "0")
        request.end_headers()

    return handler


# --- exported models and in-process reference predictions ----------------------------


@dataclasses.dataclass(frozen=True)
class ExportedModels:
    """Tiny real MIL exports in the serving layout `<base>/mil/1/`."""

    base: pathlib.Path  # holds mil/1/ (the web-app tests serve this folder)
    mil: pathlib.Path  # version 1: the MIL model every serving test uses
    mil_v2: pathlib.Path  # another MIL model (other weights), pushed as version 2


@pytest.fixture(scope="session")
def exported_models(tmp_path_factory) -> ExportedModels:
    """Exports two tiny untrained MIL models with the project's exporter (~15 s each)."""
    base = tmp_path_factory.mktemp("serving-models")
    from model_exports import export_tiny_mil

    mil = export_tiny_mil(base / MIL_NAME / "1", seed=7)
    mil_v2 = export_tiny_mil(tmp_path_factory.mktemp("mil-v2") / "export", seed=8)
    return ExportedModels(base=base, mil=mil, mil_v2=mil_v2)


@pytest.fixture(scope="session")
def exported_densenet(tmp_path_factory) -> pathlib.Path:
    """A tiny-input DenseNet201 export in `<base>/densenet/1/` (minutes: 707 layers to trace)."""
    from model_exports import export_tiny_densenet

    return export_tiny_densenet(tmp_path_factory.mktemp("serving-densenet") / DENSENET_NAME / "1")


_loaded_references: dict[str, object] = {}


def reference_outputs(version_dir: pathlib.Path, inputs: dict, signature: str = "serving_default") -> dict:
    """Runs a SavedModel in this process (the ground truth the servers must reproduce)."""
    import histopath  # noqa: F401
    import tensorflow as tf

    key = str(version_dir)
    if key not in _loaded_references:
        _loaded_references[key] = tf.saved_model.load(key)
    function = _loaded_references[key].signatures[signature]
    outputs = function(**{name: tf.constant(value) for name, value in inputs.items()})
    return {name: tensor.numpy() for name, tensor in outputs.items()}


TEST_PASSWORD = "correct-horse-battery-staple-42"  # noqa: S105  (test users only)


def webapp_user(username: str, role: str):
    """A web-app user with `role` and `TEST_PASSWORD` (created once, by the project's own
    `accounts.create_user`)."""
    from django.contrib.auth import get_user_model

    from histopath.serving.webapp.predictions.accounts import create_user

    existing = get_user_model().objects.filter(username=username).first()
    return existing or create_user(username, TEST_PASSWORD, role)


@pytest.fixture(scope="session")
def django_app(exported_models, tmp_path_factory):
    """Configures Django in this process (embedded MIL backend, temp SQLite, migrated)."""
    state = tmp_path_factory.mktemp("webapp-state")
    settings_environment = {
        "DJANGO_SETTINGS_MODULE": "histopath.serving.webapp.settings",
        "SECRET_KEY": "test-secret-key-for-the-webapp-tests-only-0123456789",
        "DEBUG": "0",
        "ALLOWED_HOSTS": "testserver,localhost,127.0.0.1",
        "DATABASE_URL": f"sqlite:///{state / 'webapp.sqlite3'}",
        "HISTOPATH_SERVING_DIR": str(exported_models.base),
        "HISTOPATH_MODEL_NAME": MIL_NAME,
        "HISTOPATH_RELOAD_INTERVAL": "1",
        "TF_SERVING_URL": "",
    }
    saved = {name: os.environ.get(name) for name in settings_environment}
    os.environ.update(settings_environment)
    try:
        import django
        from django.conf import settings
        from django.core.management import call_command
        from django.test.utils import setup_test_environment

        django.setup()  # reads the settings (and so the environment) once, now
        assert settings.DATABASES["default"]["NAME"].startswith(str(state))
        setup_test_environment()
        call_command("migrate", interactive=False, verbosity=0)
    finally:  # do not leak the settings into servers other tests start
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return state
