"""Django views, form validation, upload safety and the prediction record (embedded model).

Django runs in this process with the embedded backend on a tiny real MIL export; the
Django test client drives the views.
"""

from __future__ import annotations

import hashlib
import io
import re

import numpy as np
import pytest
from PIL import Image
from serving_fixtures import (
    LocalHttpServer,
    full_size_images,
    idc_images,
    reference_outputs,
    send_body,
)


@pytest.fixture()
def client(django_app):
    from django.test import Client

    from histopath.serving.webapp.predictions.models import Prediction

    Prediction.objects.all().delete()
    return Client()


def _png(width: int, height: int, colour=(200, 120, 160)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _upload(name: str, data: bytes, content_type: str = "image/png"):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, data, content_type=content_type)


def _errors(response) -> str:
    return re.sub(r"\s+", " ", response.content.decode())


def test_form_page_has_csrf_token_labels_and_security_headers(client):
    response = client.get("/")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'name="csrfmiddlewaretoken"' in html
    assert '<label for="id_image">Image file</label>' in html
    assert '<label for="id_image_url">or image URL</label>' in html
    assert "default-src 'none'" in response["Content-Security-Policy"]
    assert response["X-Frame-Options"] == "DENY"


def test_upload_of_real_image_shows_result_and_records_it(client, shared_data, exported_models):
    from histopath.serving.webapp.predictions.models import Prediction

    path = full_size_images(shared_data, 1)[0]
    data = path.read_bytes()
    response = client.post("/", {"image": _upload(path.name, data)})
    assert response.status_code == 200, _errors(response)
    expected = reference_outputs(exported_models.mil, {"image_bytes": np.array([data], dtype=object)})
    probability = float(expected["probability"][0])
    label_name = ("Benign", "Malignant")[int(expected["label"][0])]
    html = response.content.decode()
    assert re.search(rf'id="result-label"[^>]*>{label_name}<', html)
    assert f"{probability * 100:.1f} %" in html
    assert '<dd id="result-model">mil</dd>' in html and '<dd id="result-version">1</dd>' in html
    assert 'id="heatmap" src="data:image/png;base64,' in html
    assert 'id="tile-map" src="data:image/png;base64,' in html  # the instance classifier's map
    assert 'id="original-image" src="data:image/png;base64,' in html

    record = Prediction.objects.get()
    assert record.image_sha256 == hashlib.sha256(data).hexdigest()
    assert record.source == "upload" and record.source_name == path.name
    assert (record.model_name, record.model_version) == ("mil", "1")
    assert record.probability == pytest.approx(probability, abs=1e-6)
    assert record.label_name == label_name.lower()

    history = client.get("/history/").content.decode()
    assert "1 prediction recorded" in history
    assert record.image_sha256[:14] in history


def test_image_from_allow_listed_url_is_classified_and_recorded(client, shared_data):
    from django.test import override_settings

    from histopath.serving.webapp.predictions.models import Prediction

    data = idc_images(shared_data, 1)[0].read_bytes()
    with LocalHttpServer({"/patch.png": send_body(data, "image/png")}) as server:
        with override_settings(HISTOPATH_URL_ALLOWLIST=["127.0.0.1"]):
            response = client.post("/", {"image_url": f"{server.url}/patch.png"})
    assert response.status_code == 200, _errors(response)
    record = Prediction.objects.get()
    assert record.source == "url" and record.source_name.endswith("/patch.png")
    assert record.image_sha256 == hashlib.sha256(data).hexdigest()


def test_private_url_is_refused_with_a_clear_message(client):
    from histopath.serving.webapp.predictions.models import Prediction

    with LocalHttpServer({"/patch.png": send_body(_png(8, 8), "image/png")}) as server:
        response = client.post("/", {"image_url": f"{server.url}/patch.png"})
        assert server.hits == []
    assert response.status_code == 400
    assert "Cannot use this URL: the host &#x27;127.0.0.1&#x27; resolves to a loopback address" in _errors(response)
    assert not Prediction.objects.exists()


def test_redirect_to_metadata_address_is_refused(client):
    from django.test import override_settings
    from serving_fixtures import redirect_to

    with LocalHttpServer({"/go": redirect_to("http://169.254.169.254/latest/meta-data/")}) as server:
        with override_settings(HISTOPATH_URL_ALLOWLIST=["127.0.0.1"]):
            response = client.post("/", {"image_url": f"{server.url}/go"})
    assert response.status_code == 400
    assert "cloud metadata address" in _errors(response)


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("notes.png", b"this is a text file, not a picture", "“notes.png”: the file is not a recognisable image"),
        ("empty.png", b"", "The submitted file is empty."),
        ("cut.png", None, "“cut.png”: the image is corrupt or truncated"),
        ("vector.svg", b'<svg xmlns="http://www.w3.org/2000/svg"/>', "“vector.svg”: the file is not a recognisable image"),
    ],
)
def test_bad_uploads_get_a_clear_message(client, name, data, message):
    from histopath.serving.webapp.predictions.models import Prediction

    if data is None:  # a real PNG cut in half
        data = _png(64, 64, (10, 200, 30))
        data = data[: len(data) // 2]
    response = client.post("/", {"image": _upload(name, data)})
    assert response.status_code == 400
    assert message in _errors(response)
    assert not Prediction.objects.exists()


def test_decompression_bomb_is_refused_before_decoding(client):
    from django.test import override_settings

    bomb = _png(3000, 3000)  # 9 Mpx of one colour: a few kB compressed
    assert len(bomb) < 100_000
    with override_settings(HISTOPATH_MAX_IMAGE_PIXELS=4_000_000):
        response = client.post("/", {"image": _upload("bomb.png", bomb)})
    assert response.status_code == 400
    assert "3000x3000 pixels, more than the limit of 4,000,000 pixels" in _errors(response)


def test_oversized_upload_is_refused_with_413(client):
    from django.test import override_settings

    big = np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(big).save(buffer, format="PNG")
    with override_settings(HISTOPATH_MAX_UPLOAD_BYTES=100_000):
        response = client.post("/", {"image": _upload("big.png", buffer.getvalue())})
    assert response.status_code == 413
    assert "larger than the limit of 0.1 MiB" in _errors(response)


def test_form_needs_exactly_one_source(client):
    neither = client.post("/", {})
    both = client.post("/", {"image": _upload("a.png", _png(8, 8)), "image_url": "https://example.org/a.png"})
    for response in (neither, both):
        assert response.status_code == 400
        assert "Choose an image file or give an image URL (one of the two)." in _errors(response)


@pytest.mark.parametrize(
    "name, save_format, mode, content_type, shown",
    [
        ("patch.tif", "TIFF", "RGB", "image/tiff", "TIFF, 50 × 50 px"),
        ("patch-cmyk.jpg", "JPEG", "CMYK", "image/jpeg", "JPEG, 50 × 50 px"),
    ],
)
def test_formats_the_graph_cannot_decode_are_transcoded(client, shared_data, name, save_format, mode, content_type, shown):
    image = Image.open(idc_images(shared_data, 1)[0]).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=save_format)
    response = client.post("/", {"image": _upload(name, buffer.getvalue(), content_type)})
    assert response.status_code == 200, _errors(response)
    assert shown in response.content.decode()


def test_csrf_is_enforced(django_app):
    from django.test import Client

    response = Client(enforce_csrf_checks=True).post("/", {"image": _upload("a.png", _png(8, 8))})
    assert response.status_code == 403


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_database_url_parsing():
    from histopath.serving.webapp.settings import database_from_url

    sqlite = database_from_url("sqlite:////var/lib/histopath/web.sqlite3")
    assert sqlite["ENGINE"].endswith("sqlite3") and sqlite["NAME"] == "/var/lib/histopath/web.sqlite3"
    postgres = database_from_url("postgres://hp:p%40ss@db.internal:5433/histopath")
    assert postgres["ENGINE"] == "django.db.backends.postgresql"
    assert (postgres["USER"], postgres["PASSWORD"], postgres["HOST"], postgres["PORT"], postgres["NAME"]) == (
        "hp", "p@ss", "db.internal", "5433", "histopath"
    )
