"""Load test: the web app (gunicorn, TF_SERVING_URL backend) and the model server together.

200 image uploads from 8 concurrent clients through the web app (which calls the model
server), plus 200 direct REST predictions from 8 more clients, all on loopback: no request
may fail and every web-app prediction must be in the database.
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import re
import shutil
import sqlite3
import threading
import time

import pytest
import requests
from serving_fixtures import (
    MIL_NAME,
    free_port,
    idc_images,
    model_server,
    start_process,
    wait_for_http,
)

REQUESTS_PER_TARGET = 200
CLIENTS = 8
TIME_LIMIT_S = 60.0


def _web_client(base_url: str):
    """A session holding the CSRF cookie and a function posting one image."""
    session = requests.Session()
    page = session.get(base_url + "/", timeout=30)
    page.raise_for_status()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)

    def post(name: str, data: bytes) -> requests.Response:
        return session.post(
            base_url + "/",
            data={"csrfmiddlewaretoken": token},
            files={"image": (name, data, "image/png")},
            timeout=60,
        )

    return post


def test_web_app_and_model_server_under_concurrent_load(exported_models, shared_data, tmp_path_factory):
    work = tmp_path_factory.mktemp("load")
    shutil.copytree(exported_models.mil, work / "models" / MIL_NAME / "1")
    images = [(path.name, path.read_bytes()) for path in idc_images(shared_data, 40)]
    database = work / "webapp.sqlite3"
    with model_server(work / "models", MIL_NAME, work) as server:
        port = free_port()
        web = start_process(
            ["serve", "--port", str(port), "--tf-serving-url", server["rest"], "--model-name", MIL_NAME, "--threads", "8"],
            work / "webapp.log",
            env={
                "SECRET_KEY": "load-test-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz",
                "ALLOWED_HOSTS": "127.0.0.1",
                "DATABASE_URL": f"sqlite:///{database}",
            },
        )
        try:
            base_url = f"http://127.0.0.1:{port}"
            wait_for_http(base_url + "/healthz", 90, web.process, web.log)
            failures: list[str] = []
            lock = threading.Lock()
            sent_hashes: list[str] = []

            def web_worker(worker: int) -> None:
                post = _web_client(base_url)
                for index in range(worker, REQUESTS_PER_TARGET, CLIENTS):
                    name, data = images[index % len(images)]
                    response = post(name, data)
                    ok = response.status_code == 200 and 'id="result-label"' in response.text and 'id="heatmap"' in response.text
                    with lock:
                        sent_hashes.append(hashlib.sha256(data).hexdigest())
                        if not ok:
                            failures.append(f"web {index}: HTTP {response.status_code}")

            def rest_worker(worker: int) -> None:
                session = requests.Session()
                for index in range(worker, REQUESTS_PER_TARGET, CLIENTS):
                    data = images[index % len(images)][1]
                    body = {"instances": [{"b64": base64.b64encode(data).decode()}]}
                    response = session.post(f"{server['rest']}/v1/models/{MIL_NAME}:predict", json=body, timeout=60)
                    ok = response.status_code == 200 and 0.0 <= response.json()["predictions"][0]["probability"] <= 1.0
                    if not ok:
                        with lock:
                            failures.append(f"rest {index}: HTTP {response.status_code}")

            started = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(max_workers=2 * CLIENTS) as pool:
                jobs = [pool.submit(web_worker, w) for w in range(CLIENTS)]
                jobs += [pool.submit(rest_worker, w) for w in range(CLIENTS)]
                for job in jobs:
                    job.result(timeout=TIME_LIMIT_S * 3)
            elapsed = time.monotonic() - started
        finally:
            web.stop()

    assert failures == []
    assert elapsed < TIME_LIMIT_S, f"{2 * REQUESTS_PER_TARGET} requests took {elapsed:.1f} s"
    with sqlite3.connect(database) as connection:
        rows = connection.execute("SELECT image_sha256, model_name, model_version FROM predictions_prediction").fetchall()
    assert len(rows) == REQUESTS_PER_TARGET
    assert sorted(row[0] for row in rows) == sorted(sent_hashes)
    assert {(row[1], row[2]) for row in rows} == {(MIL_NAME, "1")}
    print(f"load: {2 * REQUESTS_PER_TARGET} requests in {elapsed:.1f} s")
