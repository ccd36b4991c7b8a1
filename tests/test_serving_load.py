"""Load test: the web app (gunicorn, TF_SERVING_URL backend) and the model server together,
on loopback, with signed-in users.

- web uploads: 300 from 8 concurrent clients signed in as 4 pathologists; no request may
  fail and every prediction must be in the database with the user who asked for it;
- REST: 300 predictions at concurrency 8, then 300 at concurrency 16, 0 failures;
- slow URLs: 8 image URLs whose server dribbles its headers byte by byte do not take the
  threads that uploads and `/healthz` need.

Throughput figures are printed (and measured properly in `bench/serving.py`), not asserted.
"""

from __future__ import annotations

import base64
import collections
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
    TEST_PASSWORD,
    LocalHttpServer,
    dribble,
    free_port,
    idc_images,
    model_server,
    start_process,
    wait_for_http,
)

REQUESTS = 300
PATHOLOGISTS = [f"load-pathologist-{index}" for index in range(4)]
URL_TIMEOUT_S = 6


def _web_session(base_url: str, username: str) -> tuple[requests.Session, str]:
    """A session signed in as `username`, and the CSRF token of its form page."""
    session = requests.Session()
    login = session.get(base_url + "/accounts/login/", timeout=30)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text).group(1)
    signed_in = session.post(base_url + "/accounts/login/", timeout=30, allow_redirects=False,
                             data={"csrfmiddlewaretoken": token, "username": username, "password": TEST_PASSWORD})
    assert signed_in.status_code == 302, signed_in.text[-1000:]
    page = session.get(base_url + "/", timeout=30)
    page.raise_for_status()
    return session, re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)


@pytest.fixture(scope="module")
def stack(exported_models, tmp_path_factory):
    """The model server and the web app in front of it, with four pathologists."""
    work = tmp_path_factory.mktemp("load")
    shutil.copytree(exported_models.mil, work / "models" / MIL_NAME / "1")
    database = work / "webapp.sqlite3"
    env = {
        "SECRET_KEY": "load-test-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz",
        "ALLOWED_HOSTS": "127.0.0.1",
        "DATABASE_URL": f"sqlite:///{database}",
        "HISTOPATH_URL_ALLOWLIST": "127.0.0.1",
        "HISTOPATH_URL_TIMEOUT": str(URL_TIMEOUT_S),
        "HISTOPATH_URL_FETCHES": "4",
        "USER_PASSWORD": TEST_PASSWORD,
    }
    for username in PATHOLOGISTS:
        adduser = start_process(["webapp", "adduser", username, "--role", "pathologist", "--password-env",
                                 "USER_PASSWORD"], work / f"adduser-{username}.log", env=env)
        assert adduser.process.wait(timeout=300) == 0, adduser.log.read_text()
    with model_server(work / "models", MIL_NAME, work) as server:
        port = free_port()
        web = start_process(
            ["serve", "--port", str(port), "--tf-serving-url", server["rest"], "--model-name", MIL_NAME,
             "--threads", "8"],
            work / "webapp.log", env=env)
        try:
            base_url = f"http://127.0.0.1:{port}"
            wait_for_http(base_url + "/healthz", 90, web.process, web.log)
            yield {"web": base_url, "rest": server["rest"], "database": database}
        finally:
            web.stop()


def test_web_uploads_are_all_answered_and_recorded_with_their_user(stack, shared_data):
    images = [path.read_bytes() for path in idc_images(shared_data, 40)]
    failures: list[str] = []
    sent: list[tuple[str, str]] = []
    lock = threading.Lock()
    clients = 8

    def web_worker(worker: int) -> None:
        username = PATHOLOGISTS[worker % len(PATHOLOGISTS)]
        session, token = _web_session(stack["web"], username)
        for index in range(worker, REQUESTS, clients):
            data = images[index % len(images)]
            response = session.post(stack["web"] + "/", data={"csrfmiddlewaretoken": token},
                                    files={"image": (f"{index}.png", data, "image/png")}, timeout=60)
            ok = response.status_code == 200 and 'id="result-label"' in response.text
            with lock:
                sent.append((username, hashlib.sha256(data).hexdigest()))
                if not ok:
                    failures.append(f"web {index}: HTTP {response.status_code}")

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=clients) as pool:
        for job in [pool.submit(web_worker, worker) for worker in range(clients)]:
            job.result(timeout=600)
    elapsed = time.monotonic() - started
    assert failures == []
    with sqlite3.connect(stack["database"]) as connection:
        rows = connection.execute(
            "SELECT u.username, p.image_sha256, p.model_name, p.model_version FROM predictions_prediction p "
            "JOIN auth_user u ON u.id = p.user_id").fetchall()
        unowned = connection.execute("SELECT COUNT(*) FROM predictions_prediction WHERE user_id IS NULL").fetchone()
    assert unowned == (0,)
    assert collections.Counter((row[0], row[1]) for row in rows) == collections.Counter(sent)
    assert {(row[2], row[3]) for row in rows} == {(MIL_NAME, "1")}
    print(f"web: {REQUESTS} uploads at concurrency {clients} in {elapsed:.1f} s")


@pytest.mark.parametrize("clients", [8, 16])
def test_rest_predictions_under_concurrency(stack, shared_data, clients):
    images = [path.read_bytes() for path in idc_images(shared_data, 40)]
    failures: list[str] = []
    lock = threading.Lock()

    def rest_worker(worker: int) -> None:
        session = requests.Session()
        for index in range(worker, REQUESTS, clients):
            body = {"instances": [{"b64": base64.b64encode(images[index % len(images)]).decode()}]}
            response = session.post(f"{stack['rest']}/v1/models/{MIL_NAME}:predict", json=body, timeout=60)
            ok = response.status_code == 200 and 0.0 <= response.json()["predictions"][0]["probability"] <= 1.0
            if not ok:
                with lock:
                    failures.append(f"rest {index}: HTTP {response.status_code}")

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=clients) as pool:
        for job in [pool.submit(rest_worker, worker) for worker in range(clients)]:
            job.result(timeout=600)
    assert failures == []
    print(f"rest: {REQUESTS} predictions at concurrency {clients} in {time.monotonic() - started:.1f} s")


def test_slow_urls_do_not_starve_uploads_or_healthz(stack, shared_data):
    """8 URLs whose headers arrive one byte per second (each read is quick, the answer is
    not): each is cut at the deadline or refused as busy, while `/healthz` and an upload
    answer at once."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nX-Padding: " + b"a" * 200 + b"\r\n\r\n"
    image = idc_images(shared_data, 1)[0].read_bytes()
    with LocalHttpServer({"/slow.png": dribble(head, interval_s=1.0)}) as slow:
        def slow_request(index: int) -> tuple[float, str]:
            session, token = _web_session(stack["web"], PATHOLOGISTS[index % len(PATHOLOGISTS)])
            started = time.monotonic()
            response = session.post(stack["web"] + "/", timeout=120, data={
                "csrfmiddlewaretoken": token, "image_url": f"{slow.url}/slow.png?{index}"})
            return time.monotonic() - started, re.sub(r"\s+", " ", response.text)

        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            jobs = [pool.submit(slow_request, index) for index in range(8)]
            time.sleep(2.0)  # every slow request is in flight
            health_started = time.monotonic()
            health = requests.get(stack["web"] + "/healthz", timeout=30)
            health_s = time.monotonic() - health_started
            session, token = _web_session(stack["web"], PATHOLOGISTS[0])
            upload_started = time.monotonic()
            upload = session.post(stack["web"] + "/", data={"csrfmiddlewaretoken": token},
                                  files={"image": ("patch.png", image, "image/png")}, timeout=60)
            upload_s = time.monotonic() - upload_started
            answers = [job.result(timeout=120) for job in jobs]
    assert health.status_code == 200 and health_s < 2.0, f"/healthz waited {health_s:.1f} s"
    assert upload.status_code == 200 and 'id="result-label"' in upload.text and upload_s < 5.0
    for took, text in answers:
        assert took < URL_TIMEOUT_S + 3, f"a slow URL held a request {took:.1f} s"
        assert f"longer than {URL_TIMEOUT_S} s" in text or "image URLs are being fetched right now" in text
    print(f"slow URLs: /healthz {health_s:.2f} s, upload {upload_s:.2f} s, "
          f"slowest URL {max(took for took, _ in answers):.1f} s")
