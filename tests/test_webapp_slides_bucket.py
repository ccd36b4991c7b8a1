"""Whole slides picked from a bucket: `HISTOPATH_SLIDE_ROOT` as a URI, listed through
`tf.io.gfile` and copied into the app's slide storage like an upload. The bucket is
TensorFlow's own in-memory file system (`ram://`), reached through the same `tf.io.gfile`
calls as `gs://`; the slides are generated pyramidal TIFFs (`slide_samples`)."""

from __future__ import annotations

import io
import pathlib
import uuid

import pytest
from PIL import Image
from serving_fixtures import webapp_user
from slide_samples import write_slide


def _put(uri: str, data: bytes) -> None:
    import tensorflow as tf

    tf.io.gfile.makedirs(uri.rsplit("/", 1)[0])
    with tf.io.gfile.GFile(uri, "wb") as handle:
        handle.write(data)


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 120, 160)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture()
def bucket(django_app, tmp_path):
    """A `ram://` bucket prefix holding a good slide (in a sub-folder), a PNG renamed
    `.svs`, a note, a hidden slide, and a good slide beside the prefix (outside it)."""
    from django.test import override_settings

    root = f"ram://slides-{uuid.uuid4().hex[:8]}/lab/scans"
    good = write_slide(tmp_path / "case-1.tif").read_bytes()
    _put(f"{root}/2024/case-1.tif", good)
    _put(f"{root}/bad.svs", _png())
    _put(f"{root}/notes.txt", b"not a slide")
    _put(f"{root}/.trash/old.tif", good)
    _put(f"{root.rsplit('/', 1)[0]}/outside.tif", good)
    with override_settings(HISTOPATH_SLIDE_DIR=str(tmp_path / "slides"), HISTOPATH_SLIDE_ROOT=root + "/",
                           HISTOPATH_SLIDE_MODEL_MPP=4.0, HISTOPATH_SLIDE_TILE_PX=50):
        yield {"root": root, "good": good, "work": tmp_path}


@pytest.fixture()
def client(bucket):
    from django.test import Client

    signed_in = Client()
    signed_in.force_login(webapp_user("pathologist-bucket", "pathologist"))
    return signed_in


def _files(work: pathlib.Path, folder: str) -> list[pathlib.Path]:
    return sorted(p for p in (work / "slides" / folder).rglob("*") if p.is_file()) \
        if (work / "slides" / folder).is_dir() else []


def test_bucket_slides_are_listed_through_gfile(client):
    page = client.get("/slides/").content.decode()
    assert "<option>2024/case-1.tif</option>" in page
    assert "<option>bad.svs</option>" in page  # listed by its name; refused by its content when picked
    for absent in ("notes.txt", "old.tif", "outside.tif"):
        assert absent not in page


def test_a_bucket_slide_is_copied_in_chunks_checked_queued_and_viewed(client, bucket, monkeypatch):
    from histopath.serving.webapp.predictions import slide_jobs, slide_store
    from histopath.serving.webapp.predictions.models import SlideJob

    chunks = []
    write = slide_store.IncomingSlide.write

    def watch(self, chunk):
        chunks.append((self.path.name, len(chunk)))
        write(self, chunk)

    monkeypatch.setattr(slide_store, "CHUNK_BYTES", 64 * 1024)
    monkeypatch.setattr(slide_store.IncomingSlide, "write", watch)
    response = client.post("/slides/pick", {"slide": "2024/case-1.tif"})
    job = SlideJob.objects.latest("id")
    assert response.status_code == 302 and response["Location"] == f"/slides/{job.pk}/"
    assert job.state == SlideJob.QUEUED and job.source == "folder" and job.display_name == "case-1.tif"
    stored = pathlib.Path(job.slide_path)
    assert stored.parent == bucket["work"] / "slides" / "uploads" and stored.suffix == ".tif"
    assert stored.read_bytes() == bucket["good"]
    assert len(job.slide_sha256) == 64
    assert len(bucket["good"]) > 3 * 64 * 1024 and len(chunks) > 3
    assert {name for name, _ in chunks} == {f"{stored.stem}.part"} and max(size for _, size in chunks) == 64 * 1024
    assert _files(bucket["work"], "incoming") == []

    SlideJob.objects.filter(state=SlideJob.QUEUED).exclude(pk=job.pk).update(state=SlideJob.FAILED)
    done = slide_jobs.run_next("test-worker")
    assert done.pk == job.pk and done.state == SlideJob.DONE, done.error
    described = client.get(f"/slides/{job.pk}/slide.dzi")
    assert described.status_code == 200 and b'Width="1200" Height="900"' in described.content


def test_a_png_renamed_svs_in_the_bucket_is_refused_and_deleted(client, bucket):
    from histopath.serving.webapp.predictions.models import SlideJob

    before = SlideJob.objects.count()
    response = client.post("/slides/pick", {"slide": "bad.svs"})
    assert response.status_code == 400
    assert "“bad.svs”: it is a PNG image, not a whole-slide image." in response.content.decode()
    assert SlideJob.objects.count() == before
    assert _files(bucket["work"], "incoming") == [] and _files(bucket["work"], "uploads") == []


@pytest.mark.parametrize("relative, message", [
    ("../outside.tif", "is not a slide of the slide folder"),
    ("2024/../../outside.tif", "is not a slide of the slide folder"),
    ("/lab/outside.tif", "is not a slide of the slide folder"),
    ("ram://elsewhere/case.tif", "is not in the slide folder"),  # a name inside the prefix, not a URI
    ("", "is not a slide of the slide folder"),
    ("missing.tif", "is not in the slide folder"),
    ("notes.txt", "is not a slide file name"),
])
def test_bucket_names_outside_the_prefix_are_refused(client, bucket, relative, message):
    from histopath.serving.webapp.predictions.models import SlideJob

    before = SlideJob.objects.count()
    response = client.post("/slides/pick", {"slide": relative})
    assert response.status_code == 400 and message in response.content.decode()
    assert SlideJob.objects.count() == before
    assert _files(bucket["work"], "uploads") == []


def test_a_bucket_slide_past_the_limit_is_refused_while_copying(client, bucket):
    from django.test import override_settings

    with override_settings(HISTOPATH_MAX_SLIDE_BYTES=len(bucket["good"]) - 1):
        response = client.post("/slides/pick", {"slide": "2024/case-1.tif"})
    assert response.status_code == 400 and "larger than the limit" in response.content.decode()
    assert _files(bucket["work"], "incoming") == [] and _files(bucket["work"], "uploads") == []


def test_a_bucket_that_cannot_be_read_is_named(client, bucket):
    from django.test import override_settings

    missing = f"ram://no-such-bucket-{uuid.uuid4().hex[:8]}/scans"
    with override_settings(HISTOPATH_SLIDE_ROOT=missing):
        page = client.get("/slides/").content.decode()
    assert f"The slide folder “{missing}” cannot be read" in page
    with override_settings(HISTOPATH_SLIDE_ROOT="nosuchscheme://bucket/scans"):
        page = client.get("/slides/").content.decode()
        picked = client.post("/slides/pick", {"slide": "case.tif"})
    assert "The slide folder “nosuchscheme://bucket/scans” cannot be read" in page
    assert picked.status_code == 400
    assert "The slide folder “nosuchscheme://bucket/scans/case.tif” cannot be read" in picked.content.decode()
