"""Whole slides in the web app: uploads (Django views and the streaming ASGI layer), picks
from the slide folder, the job queue, and the Deep Zoom viewer's access control. Django
runs in this process with the embedded backend on the tiny real MIL export; the slides are
generated pyramidal TIFFs (`slide_samples`)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import io
import json
import pathlib
import shutil
import time

import pytest
from PIL import Image
from serving_fixtures import webapp_user
from slide_samples import write_slide

UPLOAD = "/slides/upload"


@pytest.fixture()
def slide_settings(django_app, tmp_path):
    from django.test import override_settings

    root = tmp_path / "lab-slides"
    root.mkdir()
    write_slide(root / "case-1.tif")
    with override_settings(HISTOPATH_SLIDE_DIR=str(tmp_path / "slides"), HISTOPATH_SLIDE_ROOT=str(root),
                           HISTOPATH_SLIDE_MODEL_MPP=4.0, HISTOPATH_SLIDE_TILE_PX=50):
        yield tmp_path


@pytest.fixture()
def client(slide_settings):
    from django.test import Client

    signed_in = Client()
    signed_in.force_login(webapp_user("pathologist-slides", "pathologist"))
    return signed_in


def _upload(client, name: str, data: bytes, **headers):
    return client.post(UPLOAD, data=data, content_type="application/octet-stream", HTTP_X_SLIDE_NAME=name,
                       **{f"HTTP_{key.upper()}": value for key, value in headers.items()})


def _left_behind(work: pathlib.Path) -> list[str]:
    return sorted(p.name for p in (work / "slides").rglob("*") if p.is_file())


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 120, 160)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_good_slide_upload_is_renamed_into_place_and_queued(client, slide_settings, tmp_path):
    from histopath.serving.webapp.predictions.models import AuditEvent, SlideJob

    data = write_slide(tmp_path / "mine.tif").read_bytes()
    response = _upload(client, "mine.tif", data, x_display_name="case%2042")
    assert response.status_code == 201, response.content
    job = SlideJob.objects.get(pk=response.json()["job"])
    assert response.json()["url"] == f"/slides/{job.pk}/"
    assert job.state == SlideJob.QUEUED and job.display_name == "case 42" and job.source == "upload"
    stored = pathlib.Path(job.slide_path)
    assert stored.parent == slide_settings / "slides" / "uploads" and stored.suffix == ".tif"
    assert stored.read_bytes() == data
    assert not list((slide_settings / "slides" / "incoming").iterdir())
    event = AuditEvent.objects.filter(kind=AuditEvent.SLIDE_QUEUED).first()
    assert event.detail == f"slide job {job.pk} queued (upload)" and "mine" not in event.detail


@pytest.mark.parametrize("name, data, message", [
    ("photo.svs", "png", "“photo.svs”: it is a PNG image, not a whole-slide image."),
    ("cut.tif", "truncated", "“cut.tif”: "),
    ("empty.svs", b"", "“empty.svs” is empty."),
    ("notes.txt", b"hello", "“notes.txt” is not a slide file name"),
])
def test_files_that_are_not_slides_are_refused_and_deleted(client, slide_settings, tmp_path, name, data, message):
    if data == "png":
        data = _png()
    elif data == "truncated":
        whole = write_slide(tmp_path / "whole.tif").read_bytes()
        data = whole[: len(whole) // 2]
    response = _upload(client, name, data)
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert str(slide_settings) not in response.json()["error"]  # no server path
    assert _left_behind(slide_settings) == []


def test_slide_without_microns_needs_them_from_the_user(client, slide_settings, tmp_path):
    data = write_slide(tmp_path / "bare.tif", mpp=None).read_bytes()
    refused = _upload(client, "bare.tif", data)
    assert refused.status_code == 400 and "give them in the form" in refused.json()["error"]
    accepted = _upload(client, "bare.tif", data, x_slide_mpp="4")
    assert accepted.status_code == 201


def test_upload_over_the_limit_is_refused_with_413(client, slide_settings, tmp_path):
    from django.test import override_settings

    data = write_slide(tmp_path / "big.tif").read_bytes()
    with override_settings(HISTOPATH_MAX_SLIDE_BYTES=len(data) - 1):
        response = _upload(client, "big.tif", data)
    assert response.status_code == 413
    assert "larger than the limit" in response.content.decode()
    assert _left_behind(slide_settings) == []


@pytest.mark.parametrize("relative", ["../outside.tif", "/etc/passwd", "sub/../../outside.tif", "link.tif",
                                      "missing.tif", ""])
def test_slide_folder_refuses_paths_outside_it(client, slide_settings, relative):
    from histopath.serving.webapp.predictions.models import SlideJob

    outside = write_slide(slide_settings / "outside.tif")
    (slide_settings / "lab-slides" / "link.tif").symlink_to(outside)
    before = SlideJob.objects.count()
    response = client.post("/slides/pick", {"slide": relative})
    assert response.status_code == 400
    assert "not a slide of the slide folder" in response.content.decode() or "is not in the slide folder" in \
        response.content.decode()
    assert SlideJob.objects.count() == before


def test_slide_from_the_folder_is_listed_and_queued(client, slide_settings):
    from histopath.serving.webapp.predictions.models import SlideJob

    page = client.get("/slides/")
    assert "<option>case-1.tif</option>" in page.content.decode()
    assert "script-src 'self'" in page["Content-Security-Policy"]
    response = client.post("/slides/pick", {"slide": "case-1.tif", "display_name": "lab case"})
    job = SlideJob.objects.latest("id")
    assert response.status_code == 302 and response["Location"] == f"/slides/{job.pk}/"
    assert job.source == "folder" and job.slide_path == str(slide_settings / "lab-slides" / "case-1.tif")


def _queued(client) -> int:
    return client.post("/slides/pick", {"slide": "case-1.tif"})["Location"].split("/")[2]


def test_job_lifecycle_queued_running_done_with_progress_and_audit(client, slide_settings):
    from histopath.serving.webapp.predictions import slide_jobs
    from histopath.serving.webapp.predictions.models import AuditEvent, SlideJob

    SlideJob.objects.filter(state=SlideJob.QUEUED).update(state=SlideJob.FAILED)  # earlier tests' jobs
    pk = int(_queued(client))
    assert client.get(f"/slides/{pk}/status").json()["state"] == "queued"
    seen = []
    original = slide_jobs._Progress.__call__

    def watch(self, done, total):
        seen.append((done, total, SlideJob.objects.get(pk=pk).state))
        original(self, done, total)

    slide_jobs._Progress.__call__ = watch
    try:
        job = slide_jobs.run_next("test-worker")
    finally:
        slide_jobs._Progress.__call__ = original
    assert job.pk == pk and job.state == SlideJob.DONE, job.error
    assert {state for *_, state in seen} == {"running"} and seen[-1][0] == seen[-1][1] == job.tiles_total > 0
    status = client.get(f"/slides/{pk}/status").json()
    assert status == {"state": "done", "tiles_done": job.tiles_total, "tiles_total": job.tiles_total,
                      "percent": 100, "error": ""}
    answer = json.loads((pathlib.Path(job.output_dir) / "slide.json").read_text())
    assert job.probability == pytest.approx(answer["probability"]) and job.tiles_called == answer["tiles_called"]
    assert job.label == int(job.probability >= answer["decision_threshold"]) and job.uncertainty is not None
    overlay = Image.open(pathlib.Path(job.output_dir) / "overlay.png")
    assert overlay.mode == "RGBA" and overlay.size == (1200, 900)
    assert overlay.getextrema()[3] == (0, 140)  # transparent glass, coloured tiles
    event = AuditEvent.objects.filter(kind=AuditEvent.SLIDE_PREDICTION).first()
    assert event.detail.startswith(f"slide job {pk}: ") and event.user.username == "pathologist-slides"
    page = client.get(f"/slides/{pk}/").content.decode()
    assert 'id="slide-viewer"' in page and 'id="heatmap-toggle"' in page and job.model_name in page
    geojson = client.get(f"/slides/{pk}/tiles.geojson")
    assert len(json.loads(b"".join(geojson.streaming_content))["features"]) == job.tiles_called
    assert slide_jobs.run_next("test-worker") is None  # nothing left


def test_a_job_is_claimed_once_and_a_silent_workers_job_is_queued_again(client, slide_settings):
    from django.utils import timezone

    from histopath.serving.webapp.predictions import slide_jobs
    from histopath.serving.webapp.predictions.models import SlideJob

    SlideJob.objects.filter(state=SlideJob.QUEUED).update(state=SlideJob.FAILED)
    pk = int(_queued(client))
    assert slide_jobs.claim_next("worker-a").pk == pk
    assert slide_jobs.claim_next("worker-b") is None
    SlideJob.objects.filter(pk=pk).update(heartbeat_at=timezone.now() - datetime.timedelta(hours=1))
    assert slide_jobs.requeue_stale() == 1
    assert slide_jobs.claim_next("worker-b").worker == "worker-b"
    stale = SlideJob.objects.get(pk=pk)
    stale.worker = "worker-a"  # the first worker wakes up: it may no longer write
    assert not slide_jobs._still_mine(stale, tiles_done=5)
    assert SlideJob.objects.get(pk=pk).tiles_done == 0


def test_a_slide_gone_before_its_job_runs_fails_with_a_message(client, slide_settings, tmp_path):
    from histopath.serving.webapp.predictions import slide_jobs
    from histopath.serving.webapp.predictions.models import SlideJob

    SlideJob.objects.filter(state=SlideJob.QUEUED).update(state=SlideJob.FAILED)
    response = _upload(client, "short-lived.tif", write_slide(tmp_path / "s.tif").read_bytes(),
                       x_display_name="gone")
    job = SlideJob.objects.get(pk=response.json()["job"])
    pathlib.Path(job.slide_path).unlink()
    failed = slide_jobs.run_next("test-worker")
    assert failed.state == SlideJob.FAILED and "“gone”: no such file" in failed.error
    assert str(slide_settings) not in failed.error
    assert "“gone”: no such file" in client.get(f"/slides/{job.pk}/").content.decode()
    assert client.get(f"/slides/{job.pk}/slide.dzi").status_code == 404
    assert client.get(f"/slides/{job.pk}/slide_files/8/0_0.jpeg").status_code == 404


def test_deep_zoom_needs_the_owner_or_an_auditor(client, slide_settings):
    from django.test import Client

    pk = _queued(client)
    dzi, tile = f"/slides/{pk}/slide.dzi", f"/slides/{pk}/slide_files/11/0_0.jpeg"
    anonymous = Client()
    for url in (dzi, tile, f"/slides/{pk}/status", "/static/slides.js"):
        response = anonymous.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    colleague = Client()
    colleague.force_login(webapp_user("pathologist-slides-2", "pathologist"))
    assert colleague.get(dzi).status_code == 404 and colleague.get(tile).status_code == 404
    auditor = Client()
    auditor.force_login(webapp_user("auditor-slides", "auditor"))
    for viewer in (client, auditor):
        described = viewer.get(dzi)
        assert described.status_code == 200 and b'Width="1200" Height="900"' in described.content
        image = Image.open(io.BytesIO(viewer.get(tile).content))
        assert image.format == "JPEG" and image.size == (255, 255)  # 254 + the overlap on the inner sides
    assert client.get(f"/slides/{pk}/slide_files/11/99_0.jpeg").status_code == 404
    assert client.get(f"/slides/{pk}/slide_files/40/0_0.jpeg").status_code == 404
    assert client.get("/static/../settings.py").status_code == 404


# --- the streaming ASGI layer (what `histopath serve` runs) ------------------------------


def _asgi_post(headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> tuple[int, bytes]:
    from histopath.serving.webapp.asgi import application

    messages = [{"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
                for i, chunk in enumerate(chunks)]
    sent = []

    async def receive():
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": UPLOAD, "raw_path": UPLOAD.encode(), "query_string": b"",
             "root_path": "", "headers": [(b"host", b"testserver"), *headers],
             "client": ("127.0.0.1", 5000), "server": ("testserver", 80)}
    asyncio.run(application(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def _signed_in_headers(name: str) -> list[tuple[bytes, bytes]]:
    import re

    from django.test import Client

    browser = Client(enforce_csrf_checks=True)
    browser.force_login(webapp_user("pathologist-slides", "pathologist"))
    page = browser.get("/slides/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode()).group(1)
    cookies = "; ".join(f"{key}={morsel.value}" for key, morsel in browser.cookies.items())
    return [(b"cookie", cookies.encode()), (b"x-csrftoken", token.encode()), (b"x-slide-name", name.encode()),
            (b"content-type", b"application/octet-stream")]


def test_asgi_layer_streams_a_slide_to_disk_in_chunks(slide_settings, tmp_path):
    from histopath.serving.webapp.predictions.models import SlideJob

    data = write_slide(tmp_path / "streamed.tif").read_bytes()
    chunks = [data[i:i + 65536] for i in range(0, len(data), 65536)]
    status, body = _asgi_post(_signed_in_headers("streamed.tif"), chunks)
    assert status == 201, body
    job = SlideJob.objects.get(pk=json.loads(body)["job"])
    assert pathlib.Path(job.slide_path).read_bytes() == data
    assert not list((slide_settings / "slides" / "incoming").iterdir())


def test_asgi_layer_refuses_past_the_limit_while_streaming_and_deletes_the_part(slide_settings, tmp_path):
    from django.test import override_settings

    data = write_slide(tmp_path / "streamed.tif").read_bytes()
    chunks = [data[i:i + 65536] for i in range(0, len(data), 65536)]  # no Content-Length: chunked
    with override_settings(HISTOPATH_MAX_SLIDE_BYTES=100_000):
        status, body = _asgi_post(_signed_in_headers("streamed.tif"), chunks)
        assert status == 413 and b"larger than the limit of 0.1 MiB" in body
        declared = [*_signed_in_headers("x.tif"), (b"content-length", b"5000000000")]
        status, body = _asgi_post(declared, [b""])
        assert status == 413
    assert _left_behind(slide_settings) == []


def test_asgi_layer_refuses_a_slide_past_the_uploads_at_once(slide_settings, tmp_path):
    from django.test import override_settings

    from histopath.serving.webapp.predictions import slide_stream

    data = write_slide(tmp_path / "streamed.tif").read_bytes()
    with override_settings(HISTOPATH_SLIDE_UPLOADS=1):
        slide_stream._arriving = 1  # another slide is arriving
        try:
            status, body = _asgi_post(_signed_in_headers("busy.tif"), [data])
        finally:
            slide_stream._arriving = 0
        assert status == 503 and b"receiving other slides" in body
        status, _ = _asgi_post(_signed_in_headers("free.tif"), [data])
        assert status == 201
    assert slide_stream._arriving == 0


def test_asgi_layer_reads_nothing_for_a_signed_out_client_or_without_csrf(slide_settings, tmp_path):
    data = write_slide(tmp_path / "streamed.tif").read_bytes()
    status, _ = _asgi_post([(b"x-slide-name", b"a.tif")], [data])
    assert status == 403  # no session, no CSRF cookie
    headers = [h for h in _signed_in_headers("a.tif") if h[0] != b"x-csrftoken"]
    status, _ = _asgi_post(headers, [data])
    assert status == 403
    assert _left_behind(slide_settings) == []
    shutil.rmtree(slide_settings / "slides", ignore_errors=True)


def test_through_tf_serving_a_slide_gets_the_embedded_answer(client, slide_settings, tmp_path, monkeypatch):
    """With `TF_SERVING_URL` the tiles go to `histopath model-server` through TF Serving's
    REST predict API, a batch per request. TF Serving does not serve `assets.extra`: the job
    reads what the model says of itself (threshold, band, aggregation, scale) through its
    `model_info` signature, so its answer is the embedded backend's, tile by tile."""
    from django.test import override_settings
    from model_exports import export_tiny_mil
    from serving_fixtures import MIL_NAME, served_copy

    from histopath.serving.webapp.predictions import slide_jobs
    from histopath.serving.webapp.predictions.backends import TFServingBackend
    from histopath.serving.webapp.predictions.models import SlideJob

    batches = []
    original = TFServingBackend.predict_tiles

    def counted(self, images, names, **options):
        batches.append(len(images))
        return original(self, images, names, **options)

    monkeypatch.setattr(TFServingBackend, "predict_tiles", counted)

    described = {"mpp": 4.0, "tile_px": 50,
                 "slide_aggregation": {"name": "top_mean", "parameter": 0.2, "threshold": 0.3}}
    model = export_tiny_mil(tmp_path / "pushed" / MIL_NAME / "1", seed=9, abstention_band={"low": 0.0, "high": 1.0},
                            decision_threshold=0.3, model_info=described)
    answers = {}
    for backend in ("embedded", "tf-serving"):
        SlideJob.objects.filter(state=SlideJob.QUEUED).update(state=SlideJob.FAILED)
        with contextlib.ExitStack() as stack:
            url = stack.enter_context(served_copy(model, tmp_path / "served"))["rest"] if backend == "tf-serving" else ""
            stack.enter_context(override_settings(TF_SERVING_URL=url, HISTOPATH_SERVING_DIR=str(tmp_path / "pushed"),
                                                  HISTOPATH_SLIDE_MODEL_MPP=None, HISTOPATH_SLIDE_TILE_PX=None))
            _queued(client)
            job = slide_jobs.run_next("test-worker")
        assert job.state == SlideJob.DONE, job.error
        answers[backend] = json.loads((pathlib.Path(job.output_dir) / "slide.json").read_text())
        assert job.not_sure  # the band covers every probability
    served, embedded = answers["tf-serving"], answers["embedded"]
    assert served["tile_threshold"] == 0.3 and served["abstention_band"] == {"low": 0.0, "high": 1.0}
    assert served["model_scale_source"] == "model_info" and served["aggregation_source"] == "model_info"
    assert served["model_version"] == "1"
    for key in ("label", "decision_threshold", "tile_threshold", "abstention_band", "not_sure", "tile_um", "tile_px",
                "aggregation", "tiles_called"):
        assert served[key] == embedded[key], key
    assert abs(served["probability"] - embedded["probability"]) < 1e-5
    assert all(tile["not_sure"] for tile in served["tiles"])
    assert served["tiles_called"] > 64 and sum(batches) == served["tiles_called"]  # a request per batch
    assert max(batches) == slide_jobs.BATCH_SIZE
    mine = {(t["x"], t["y"]): t["probability"] for t in embedded["tiles"]}
    theirs = {(t["x"], t["y"]): t["probability"] for t in served["tiles"]}
    assert mine.keys() == theirs.keys() and max(abs(mine[key] - theirs[key]) for key in mine) < 1e-5


def test_a_version_replaced_mid_slide_calls_the_slide_again_with_the_newest(client, slide_settings, tmp_path,
                                                                          monkeypatch, caplog):
    """Every tile of a slide goes to one model version. A push while the slide is being
    called retires that version (404): the job calls the slide again with the new one and
    its description, rather than mix two models' tiles or fail."""
    import requests
    from django.test import override_settings
    from model_exports import export_tiny_mil
    from serving_fixtures import MIL_NAME, push_version, served_copy

    from histopath.serving.webapp.predictions import slide_jobs
    from histopath.serving.webapp.predictions.backends import TFServingBackend
    from histopath.serving.webapp.predictions.models import SlideJob

    described = {"mpp": 4.0, "tile_px": 50}
    first = export_tiny_mil(tmp_path / "v1", seed=9, decision_threshold=0.3, model_info=described)
    second = export_tiny_mil(tmp_path / "v2", seed=10, decision_threshold=0.4, model_info=described)
    asked = []
    original = TFServingBackend.predict_tiles

    def push_during_the_slide(self, images, names, version=None):
        asked.append(version)
        if version == "1" and len(asked) == 2:  # the second batch: version 2 arrives
            push_version(second, tmp_path / "served" / MIL_NAME, 2)
            deadline = time.monotonic() + 60
            while requests.get(f"{self.base_url}/v1/models/{MIL_NAME}", timeout=10).json()[
                    "model_version_status"][0]["version"] != "2":
                assert time.monotonic() < deadline, "version 2 was not loaded"
                time.sleep(0.5)
        return original(self, images, names, version=version)

    monkeypatch.setattr(TFServingBackend, "predict_tiles", push_during_the_slide)
    SlideJob.objects.filter(state=SlideJob.QUEUED).update(state=SlideJob.FAILED)
    with served_copy(first, tmp_path / "served") as server, \
            override_settings(TF_SERVING_URL=server["rest"], HISTOPATH_SLIDE_MODEL_MPP=None,
                              HISTOPATH_SLIDE_TILE_PX=None), caplog.at_level("WARNING"):
        _queued(client)
        job = slide_jobs.run_next("test-worker")
    assert job.state == SlideJob.DONE, job.error
    answer = json.loads((pathlib.Path(job.output_dir) / "slide.json").read_text())
    assert job.model_version == "2" and answer["tile_threshold"] == 0.4  # version 2's own threshold
    assert asked[:2] == ["1", "1"] and set(asked[2:]) == {"2"}
    assert sum(1 for version in asked if version == "2") * slide_jobs.BATCH_SIZE >= job.tiles_called
    assert "calling the slide again with the newest version" in caplog.text


def test_a_model_without_the_description_signature_is_called_at_threshold_one_half(slide_settings, tmp_path,
                                                                                     caplog):
    """An older export (no `model_info` signature): the backend says so in the log and
    falls back to threshold 0.5 without a band, as before the signature existed."""
    import tensorflow as tf
    from serving_fixtures import MIL_NAME, model_server

    from histopath.models import image_ops
    from histopath.serving.webapp.predictions.backends import TFServingBackend

    class OlderExport(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def serve(self, image_bytes):
            images = image_ops.decode_and_resize(image_bytes, 16)
            return {"probability": tf.reduce_mean(images, axis=[1, 2, 3]),
                    "label": tf.zeros(tf.shape(image_bytes), tf.int64)}

    module = OlderExport()
    base = tmp_path / "older"
    tf.saved_model.save(module, str(base / MIL_NAME / "1"), signatures={"serving_default": module.serve})
    (base / MIL_NAME / "1" / "assets.extra").mkdir()
    (base / MIL_NAME / "1" / "assets.extra" / "model_info.json").write_text(
        json.dumps({"model_kind": "densenet", "model_name": "older", "image_size": 16}))
    with model_server(base, MIL_NAME, base) as server, caplog.at_level("WARNING"):
        backend = TFServingBackend(server["rest"], MIL_NAME)
        assert backend.served_model_info("1") == {}
        model = backend.tile_model()
    assert model.model_info == {"label_names": ["benign", "malignant"]} and model.model_version == "1"
    assert "has no 'model_info' signature: slides are called at threshold 0.5" in caplog.text


def test_uploads_cut_short_are_swept_from_incoming(slide_settings):
    import os
    import time

    from histopath.serving.webapp.predictions import slide_store

    incoming = slide_settings / "slides" / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    old, fresh = incoming / "old.part", incoming / "fresh.part"
    old.write_bytes(b"x" * 10)
    fresh.write_bytes(b"y" * 10)
    long_ago = time.time() - 3600 * 3
    os.utime(old, (long_ago, long_ago))
    assert slide_store.sweep_incoming() == 1
    assert not old.exists() and fresh.exists()
