"""The web app tried as an attacker on the hospital network would (issue 26).

The REAL app runs as `histopath serve` starts it (a subprocess on loopback), with the
embedded MIL backend; every loop and wait is bounded.
"""

from __future__ import annotations

import concurrent.futures
import sqlite3
import threading
import time

import pytest
import requests
from serving_fixtures import TEST_PASSWORD, csrf_token, idc_images, web_app, web_session

from bench.serving_slow_clients import SlowClients

GUESSES = 20
RIGHT_GUESS = 9  # the 10th guess carries the right password
LOCKOUT_FAILURES = 5  # the app's default HISTOPATH_LOCKOUT_FAILURES


@pytest.fixture(scope="module")
def web(exported_models, tmp_path_factory):
    work = tmp_path_factory.mktemp("webapp-hostile")
    with web_app(work, serving_dir=exported_models.base, users=(("race-victim", "pathologist"), ("slow-victim", "pathologist"))) as running:
        yield running


def _events(database, username: str) -> dict[str, int]:
    with sqlite3.connect(database) as connection:
        rows = connection.execute("SELECT kind, COUNT(*) FROM predictions_auditevent WHERE username = ? "
                                  "GROUP BY kind", (username,)).fetchall()
    return dict(rows)


def test_parallel_guesses_cannot_beat_the_lock_out(web):
    """20 simultaneous sign-ins for one user, the right password 10th: no more than the
    allowed number of passwords is ever checked, and the right one does not get in."""
    login_url = web["url"] + "/accounts/login/"
    sessions = []
    for _ in range(GUESSES):
        session = requests.Session()
        sessions.append((session, csrf_token(session.get(login_url, timeout=30).text)))
    barrier = threading.Barrier(GUESSES)

    def guess(index: int) -> int:
        session, token = sessions[index]
        password = TEST_PASSWORD if index == RIGHT_GUESS else f"wrong-password-{index}"
        barrier.wait(timeout=60)
        time.sleep(index * 0.02)  # in order, all in flight together
        response = session.post(login_url, allow_redirects=False, timeout=180, data={
            "csrfmiddlewaretoken": token, "username": "race-victim", "password": password})
        return response.status_code

    with concurrent.futures.ThreadPoolExecutor(max_workers=GUESSES) as pool:
        statuses = list(pool.map(guess, range(GUESSES)))
    events = _events(web["database"], "race-victim")
    assert statuses[RIGHT_GUESS] == 200, "the right password signed in after the account was locked"
    assert events.get("sign_in", 0) == 0
    assert events.get("sign_in_failed", 0) == LOCKOUT_FAILURES, events  # passwords checked
    assert 302 not in statuses
    session = requests.Session()
    token = csrf_token(session.get(login_url, timeout=30).text)
    after = session.post(login_url, allow_redirects=False, timeout=60, data={
        "csrfmiddlewaretoken": token, "username": "race-victim", "password": TEST_PASSWORD})
    assert after.status_code == 200 and "This account is locked" in after.text


@pytest.mark.hostile
def test_200_slow_clients_do_not_stall_healthz_or_uploads(web, shared_data):
    """200 connections dribbling headers or bodies one byte per second: `/healthz` and a
    signed-in upload still answer within a second."""
    image = idc_images(shared_data, 1)[0].read_bytes()
    session, token = web_session(web["url"], "slow-victim")
    with SlowClients(web["port"], 200) as slow:
        time.sleep(3.0)  # every slow client has sent a few bytes
        timings = {}
        for attempt in range(3):
            started = time.monotonic()
            health = requests.get(web["url"] + "/healthz", timeout=10)
            timings[f"healthz {attempt}"] = time.monotonic() - started
            assert health.status_code == 200
            started = time.monotonic()
            upload = session.post(web["url"] + "/", data={"csrfmiddlewaretoken": token},
                                  files={"image": ("patch.png", image, "image/png")}, timeout=10)
            timings[f"upload {attempt}"] = time.monotonic() - started
            assert upload.status_code == 200 and 'id="result-label"' in upload.text
        still_connected = slow.count - slow.closed
    print("with 200 slow clients: " + ", ".join(f"{name} {took:.2f} s" for name, took in timings.items()))
    assert max(timings.values()) < 1.0, timings
    assert still_connected >= 190, f"the server dropped {slow.closed} slow clients instead of serving beside them"


def test_a_keep_alive_connection_dropped_by_the_model_server_is_retried(django_app):
    """The model server closes a pooled keep-alive connection just as the web app reuses
    it (the race behind the resets seen under load): the prediction is sent again on a
    fresh connection instead of failing as "model unavailable"."""
    import json

    from serving_fixtures import LocalHttpServer

    from histopath.serving.webapp.predictions.backends import TFServingBackend

    body = json.dumps({"predictions": [{"probability": 0.25, "label": 0, "tissue_detected": 1,
                                        "tissue_fraction": 0.5}]}).encode()

    def answer_once_per_connection(request) -> None:
        request.served = getattr(request, "served", 0) + 1
        if request.served > 1:  # a reused connection: closed without an answer
            request.close_connection = True
            return
        request.rfile.read(int(request.headers["Content-Length"]))
        request.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nx-model-version: 3\r\n"
                            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        request.wfile.flush()
        request.close_connection = False  # keep-alive, as the client expects

    routes = {f"/v1/models/{name}:predict": answer_once_per_connection for name in ("mil",)}
    with LocalHttpServer(routes) as server:
        server.server.RequestHandlerClass.do_POST = server.server.RequestHandlerClass.do_GET
        backend = TFServingBackend(server.url, "mil", timeout_s=10)
        answers = [backend.predict(b"image") for _ in range(3)]
    assert [(answer.probability, answer.model_version) for answer in answers] == [(0.25, "3")] * 3
    assert len(server.hits) >= 5  # each reuse was dropped, then sent again


POD_MEMORY_LIMIT = 2 * 1024**3  # serving/k8s/webapp-deployment.yaml: limits.memory 2Gi


def _float_tiff(side: int) -> bytes:
    """A `side` x `side` 32-bit float TIFF of a few KB (deflate): decoding it is what costs."""
    import io

    import numpy as np
    from PIL import Image

    pixels = np.zeros((side, side), np.float32)
    pixels[::50] = 0.5
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="F").save(buffer, format="TIFF", compression="tiff_adobe_deflate")
    return buffer.getvalue()


def _peak_rss_during(pid: int, work) -> tuple[int, list]:
    """Runs `work()` while sampling the RSS of `pid` and its children every 20 ms."""
    import psutil

    server, peak, stop = psutil.Process(pid), [0], threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            total = 0
            for process in [server, *server.children(recursive=True)]:
                try:
                    total += process.memory_info().rss
                except psutil.Error:
                    pass
            peak[0] = max(peak[0], total)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = work()
    finally:
        stop.set()
        sampler.join(timeout=10)
    return peak[0], result


@pytest.mark.hostile
@pytest.mark.parametrize("side, accepted", [(6000, False), (5400, True)], ids=["over-budget", "largest-accepted"])
def test_three_concurrent_worst_case_uploads_stay_under_the_pod_limit(web, side, accepted):
    """Three pathologists upload at once a small file of 32-bit floats: 6000x6000 (36 Mpx,
    under the pixel limit, 144 MB decoded) is refused from its header quoting the app's
    byte limit; 5400x5400 (117 MB, the largest the budget admits) is classified. The
    server's memory (gunicorn and its worker) stays under the pod's limit."""
    data = _float_tiff(side)
    assert len(data) < 2 * 1024 * 1024
    sessions = [web_session(web["url"], "slow-victim") for _ in range(3)]

    def upload(index: int):
        session, token = sessions[index]
        started = time.monotonic()
        response = session.post(web["url"] + "/", data={"csrfmiddlewaretoken": token},
                                files={"image": (f"scan-{index}.tif", data, "image/tiff")}, timeout=300)
        return response, time.monotonic() - started

    def three_at_once():
        with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
            return list(pool.map(upload, range(3)))

    peak, answers = _peak_rss_during(web["process"].pid, three_at_once)
    print(f"3 x {side}x{side} float TIFF: peak RSS {peak / 2**20:.0f} MiB, "
          + ", ".join(f"{took:.1f} s" for _, took in answers))
    for response, _ in answers:
        if accepted:
            assert response.status_code == 200 and 'id="result-label"' in response.text, response.text[-500:]
        else:
            assert response.status_code == 400
            assert "more than the limit of 120 MB of decoded pixels" in response.text
    assert peak < POD_MEMORY_LIMIT, f"peak RSS {peak / 2**20:.0f} MiB"


def test_byte_budget_queues_and_then_refuses_beyond_its_capacity():
    from histopath.serving.webapp.predictions.limits import ByteBudget, DecodeBusy

    budget = ByteBudget(100, wait_s=0.3)
    with budget.hold(60):
        with budget.hold(40):  # fits beside it
            assert budget.held == 100
        started = time.monotonic()
        with pytest.raises(DecodeBusy, match="other large images"):
            with budget.hold(50):
                pass
        assert 0.25 < time.monotonic() - started < 2
    with budget.hold(500):  # one image larger than the budget holds all of it, alone
        assert budget.held == 100
    assert budget.held == 0


def test_a_body_that_never_finishes_is_answered_408_at_its_deadline(django_app):
    """The buffer in front of Django gives up on a body still trickling in at its deadline
    (the client's side of the ASGI conversation is played here; Django is real)."""
    import asyncio

    from histopath.serving.webapp.asgi import BufferedRequests, application

    buffered = BufferedRequests(application.app, max_body_bytes=1_000_000, concurrency=2, body_timeout_s=0.3)
    scope = {"type": "http", "method": "POST", "path": "/", "raw_path": b"/", "query_string": b"",
             "headers": [(b"host", b"localhost"), (b"content-length", b"100000")], "http_version": "1.1",
             "scheme": "http", "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 5000), "asgi": {"version": "3.0"}}
    sent = []

    async def trickle():
        await asyncio.sleep(0.1)  # a byte now and then, never the end
        return {"type": "http.request", "body": b"x", "more_body": True}

    async def send(message):
        sent.append(message)

    started = time.monotonic()
    asyncio.run(buffered(scope, trickle, send))
    assert sent[0]["status"] == 408 and b"took longer than 0.3 s" in sent[1]["body"]
    assert time.monotonic() - started < 2


def _asgi_post(buffered, chunks: list[bytes], declared: int | None = None) -> list[dict]:
    """Plays one POST with `chunks` as its body through `buffered`; the messages sent back."""
    import asyncio

    headers = [(b"host", b"localhost")] + ([(b"content-length", str(declared).encode())] if declared else [])
    scope = {"type": "http", "method": "POST", "path": "/", "raw_path": b"/", "query_string": b"",
             "headers": headers, "http_version": "1.1", "scheme": "http", "server": ("127.0.0.1", 80),
             "client": ("127.0.0.1", 5000), "asgi": {"version": "3.0"}}
    pending, sent = list(chunks), []

    async def receive():
        if pending:
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pending)}
        await asyncio.sleep(10)
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(buffered(scope, receive, send))
    return sent


def test_bodies_over_the_limits_are_refused_before_django_reads_them(django_app):
    """413 for a declared or a chunked body over the upload limit; 503 for a body that
    would take the bodies held at once past their budget."""
    from histopath.serving.webapp.asgi import BufferedRequests, application

    buffered = BufferedRequests(application.app, max_body_bytes=1000, concurrency=2, max_buffered_bytes=3000)
    assert _asgi_post(buffered, [b"x" * 10], declared=5000)[0]["status"] == 413
    assert _asgi_post(buffered, [b"x" * 600, b"x" * 600])[0]["status"] == 413
    buffered.buffered = 2500  # other bodies held now
    busy = _asgi_post(buffered, [b"x" * 600])
    assert busy[0]["status"] == 503 and b"many uploads" in busy[1]["body"]
    assert buffered.buffered == 2500  # the refused body's bytes are not kept
    buffered.buffered = 0
    passed = _asgi_post(buffered, [b"x" * 600])  # reaches Django: CSRF refuses it, 403
    assert passed[0]["status"] == 403 and buffered.buffered == 0
