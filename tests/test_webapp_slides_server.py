"""Slide uploads and jobs against `histopath serve` as deployed: gunicorn with two uvicorn
workers, each running a slide worker thread.

- A slide upload far larger than the image buffer streams to disk: the server's memory
  stays flat while 768 MiB arrive, the body is then refused by its content and deleted;
  a declared size past the limit is answered 413 before any body is sent.
- A slide queued through one worker is called exactly once, whichever worker answers the
  page's polls.
"""

from __future__ import annotations

import http.client
import os
import sqlite3
import time
import urllib.parse

import pytest
import requests
from serving_fixtures import MIL_NAME, web_app, web_session
from slide_samples import write_slide
from test_webapp_hostile import _peak_rss_during

USER = "dr-stream"
BIG_MIB = 768
LIMIT = 1024**3


@pytest.fixture(scope="module")
def server(exported_models, tmp_path_factory):
    import shutil

    work = tmp_path_factory.mktemp("slides-server")
    serving_dir = work / "models"
    shutil.copytree(exported_models.mil, serving_dir / MIL_NAME / "1")
    with web_app(work, serving_dir=serving_dir, users=((USER, "pathologist"),), args=("--workers", "2"),
                 env={"HISTOPATH_SLIDE_DIR": str(work / "slides"), "HISTOPATH_SLIDE_MODEL_MPP": "4",
                      "HISTOPATH_SLIDE_TILE_PX": "50", "HISTOPATH_MAX_SLIDE_BYTES": str(LIMIT)}) as web:
        yield {**web, "work": work}


def _headers(token: str, name: str) -> dict:
    return {"X-CSRFToken": token, "X-Slide-Name": urllib.parse.quote(name), "Content-Type": "application/octet-stream"}


@pytest.mark.hostile
def test_a_large_upload_streams_to_disk_with_flat_memory_then_is_refused_by_content(server):
    session, token = web_session(server["url"], USER)
    chunk = os.urandom(1024 * 1024)

    def body():
        for _ in range(BIG_MIB):
            yield chunk

    def upload():
        started = time.monotonic()
        response = session.post(server["url"] + "/slides/upload", data=body(), timeout=600,
                                headers=_headers(token, "big.svs"))  # chunked: no size declared
        return response, time.monotonic() - started

    _, _ = _peak_rss_during(server["process"].pid, lambda: time.sleep(1.0))
    baseline, _ = _peak_rss_during(server["process"].pid, lambda: time.sleep(1.0))
    peak, (response, seconds) = _peak_rss_during(server["process"].pid, upload)
    assert response.status_code == 400, response.text[:500]
    assert "“big.svs”: not a whole-slide image" in response.json()["error"]
    growth = (peak - baseline) / 1024**2
    print(f"{BIG_MIB} MiB slide upload: {BIG_MIB / seconds:.0f} MiB/s, server RSS {baseline / 1024**2:.0f} MiB "
          f"before, +{growth:.0f} MiB at the peak")
    assert growth < 100, f"the server grew by {growth:.0f} MiB while a {BIG_MIB} MiB slide arrived"
    assert not [p for p in (server["work"] / "slides").rglob("*") if p.is_file()]


@pytest.mark.hostile
def test_a_declared_size_past_the_limit_is_refused_before_the_body(server):
    session, token = web_session(server["url"], USER)
    parsed = urllib.parse.urlparse(server["url"])
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    connection.putrequest("POST", "/slides/upload")
    cookie = "; ".join(f"{key}={value}" for key, value in session.cookies.items())
    for key, value in {**_headers(token, "huge.svs"), "Cookie": cookie, "Content-Length": str(LIMIT + 1)}.items():
        connection.putheader(key, value)
    connection.endheaders()  # no body at all
    response = connection.getresponse()
    assert response.status == 413
    assert b"larger than the limit of 1.0 GiB" in response.read()
    connection.close()


def test_a_slide_is_called_once_with_two_workers_answering_the_polls(server, tmp_path):
    session, token = web_session(server["url"], USER)
    slide = write_slide(tmp_path / "two-workers.tif")
    created = session.post(server["url"] + "/slides/upload", data=slide.read_bytes(), timeout=120,
                           headers=_headers(token, "two-workers.tif"))
    assert created.status_code == 201, created.text
    job = created.json()["job"]
    states, deadline = [], time.monotonic() + 300
    while time.monotonic() < deadline:
        poll = requests.get(f"{server['url']}/slides/{job}/status", cookies=session.cookies, timeout=30)
        states.append(poll.json()["state"])  # a fresh connection each time: either worker answers
        if states[-1] in ("done", "failed"):
            break
        time.sleep(0.3)
    assert states[-1] == "done", states
    database = sqlite3.connect(server["database"])
    try:
        (worker, started), = database.execute("SELECT worker, started_at FROM predictions_slidejob WHERE id = ?",
                                              (job,)).fetchall()
        called = database.execute("SELECT COUNT(*) FROM predictions_auditevent WHERE kind = 'slide_prediction' "
                                  "AND detail LIKE ?", (f"slide job {job}:%",)).fetchone()[0]
    finally:
        database.close()
    assert worker and started and called == 1
