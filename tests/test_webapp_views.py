"""Django views, form validation, upload safety and the prediction record (embedded model).

Django runs in this process with the embedded backend on a tiny real MIL export; the
Django test client drives the views, signed in as a pathologist.
"""

from __future__ import annotations

import hashlib
import io
import re
from html import unescape

import numpy as np
import pytest
from PIL import Image
from serving_fixtures import (
    LocalHttpServer,
    full_size_images,
    idc_images,
    reference_outputs,
    send_body,
    webapp_user,
)
from synthetic_images import png_bytes


@pytest.fixture()
def client(django_app):
    from django.test import Client

    from histopath.serving.webapp.predictions.models import Prediction

    Prediction.objects.all().delete()
    signed_in = Client()
    signed_in.force_login(webapp_user("pathologist-views", "pathologist"))
    return signed_in


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
    assert record.user.username == "pathologist-views"
    assert record.source == "upload" and record.original_name == ""  # names kept only when asked
    assert record.display_name == record.image_sha256[:12]
    assert (record.model_name, record.model_version) == ("mil", "1")
    assert record.probability == pytest.approx(probability, abs=1e-6)
    assert record.label_name == label_name.lower()

    history = client.get("/history/").content.decode()
    assert "1 prediction recorded by you" in history
    assert record.image_sha256[:14] in history
    assert path.stem not in history


def test_display_name_and_kept_file_names(client, shared_data):
    from django.test import override_settings

    from histopath.serving.webapp.predictions.models import Prediction

    path = idc_images(shared_data, 1)[0]
    client.post("/", {"image": _upload("Doe_Jane_MRN4711_biopsy.png", path.read_bytes()), "display_name": "  case  17 "})
    with override_settings(HISTOPATH_KEEP_FILENAMES=True):
        client.post("/", {"image": _upload("kept.png", path.read_bytes())})
    named, kept = Prediction.objects.order_by("id")
    assert (named.display_name, named.original_name) == ("case 17", "")
    assert kept.original_name == "kept.png"
    history = client.get("/history/").content.decode()
    assert "case 17" in history and "MRN4711" not in history


def test_image_from_allow_listed_url_is_classified_and_recorded(client, shared_data):
    from django.test import override_settings

    from histopath.serving.webapp.predictions.models import Prediction

    data = idc_images(shared_data, 1)[0].read_bytes()
    with LocalHttpServer({"/patch.png": send_body(data, "image/png")}) as server:
        with override_settings(HISTOPATH_URL_ALLOWLIST=["127.0.0.1"]):
            response = client.post("/", {"image_url": f"{server.url}/patch.png"})
    assert response.status_code == 200, _errors(response)
    record = Prediction.objects.get()
    assert record.source == "url"
    assert record.image_sha256 == hashlib.sha256(data).hexdigest()


def test_no_url_part_is_ever_stored_or_shown(client, shared_data):
    """A pre-signed URL's query (its signature) and path reach neither the database nor the history."""
    from django.db import connection
    from django.test import override_settings

    data = idc_images(shared_data, 1)[0].read_bytes()
    query = "X-Amz-Signature=0123abcdef&X-Amz-Credential=AKIAEXAMPLE"
    with LocalHttpServer({"/Doe_Jane_slide.png": send_body(data, "image/png")}) as server:
        with override_settings(HISTOPATH_URL_ALLOWLIST=["127.0.0.1"]):
            response = client.post("/", {"image_url": f"{server.url}/Doe_Jane_slide.png?{query}"})
    assert response.status_code == 200, _errors(response)
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM predictions_prediction")
        stored = repr(cursor.fetchall())
        cursor.execute("SELECT * FROM predictions_auditevent")
        stored += repr(cursor.fetchall())
    history = client.get("/history/").content.decode()
    for secret in ("X-Amz", "Doe_Jane", "127.0.0.1:"):
        assert secret not in stored and secret not in history


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
        ("scan.tif", "float-infinite", "“scan.tif”: the image has pixel values that are not finite numbers"),
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
    elif data == "float-infinite":
        pixels = np.full((16, 16), np.inf, np.float32)
        buffer = io.BytesIO()
        Image.fromarray(pixels, mode="F").save(buffer, format="TIFF")
        data = buffer.getvalue()
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
        ("patch-cmyk.jpg", "JPEG", "CMYK", "image/jpeg", "JPEG (CMYK), 50 × 50 px"),
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

    client = Client(enforce_csrf_checks=True)
    client.force_login(webapp_user("pathologist-views", "pathologist"))
    response = client.post("/", {"image": _upload("a.png", _png(8, 8))})
    assert response.status_code == 403


def _web_probability(client, name: str, data: bytes) -> tuple[float, float, str]:
    from histopath.serving.webapp.predictions.models import Prediction

    response = client.post("/", {"image": _upload(name, data, "application/octet-stream")})
    assert response.status_code == 200, _errors(response)
    record = Prediction.objects.order_by("-id").first()
    return record.probability, record.tissue_fraction, record.label_name


def test_16_bit_32_bit_and_float_twins_get_the_answer_of_the_8_bit_image(client, shared_data, exported_models):
    """The same pixels in 8, 16, 32-bit and float files: one answer, the model server's."""
    rgb = np.asarray(Image.open(full_size_images(shared_data, 1)[0]).convert("RGB"))
    grey = rgb.mean(axis=-1).round().astype(np.uint8)

    def tiff(pixels, mode):
        buffer = io.BytesIO()
        Image.fromarray(pixels, mode=mode).save(buffer, format="TIFF")
        return buffer.getvalue()

    colour_twins = {"rgb8.png": png_bytes(rgb), "rgb16.png": png_bytes(rgb.astype(np.uint16) * 257)}
    grey_twins = {
        "grey8.png": png_bytes(grey),
        "grey16.png": png_bytes(grey.astype(np.uint16) * 257),
        "grey32.tif": tiff(grey.astype(np.int32) << 8, "I"),  # values use 16 of 32 bits
        "grey-float01.tif": tiff(grey.astype(np.float32) / 255, "F"),
        "grey-float255.tif": tiff(grey.astype(np.float32), "F"),
    }
    for twins in (colour_twins, grey_twins):
        original = next(iter(twins.values()))
        reference = reference_outputs(exported_models.mil, {"image_bytes": np.array([original], dtype=object)})
        for name, data in twins.items():
            probability, tissue, _ = _web_probability(client, name, data)
            assert probability == pytest.approx(float(reference["probability"][0]), abs=1e-6), name
            assert tissue == pytest.approx(float(reference["tissue_fraction"][0]), abs=1e-6), name
    assert _web_probability(client, "rgb16.png", colour_twins["rgb16.png"])[2] in ("benign", "malignant")
    assert _web_probability(client, "grey16.png", grey_twins["grey16.png"])[2] == "no tissue detected"


@pytest.mark.parametrize("colour", [(0, 0, 0), (255, 255, 255), (128, 128, 128)])
def test_blank_image_says_no_tissue(client, colour):
    from histopath.serving.webapp.predictions.models import Prediction

    response = client.post("/", {"image": _upload("blank.png", _png(700, 460, colour))})
    assert response.status_code == 200, _errors(response)
    html = _errors(response)
    assert 'id="result-label" class="label no-tissue">No tissue detected<' in html
    assert "Probability of malignancy" not in html and 'id="heatmap"' not in html
    record = Prediction.objects.get()
    assert (record.label, record.label_name, record.tissue_detected) == (None, "no tissue detected", False)


def test_very_long_file_name_gets_a_clear_message(client):
    """The multipart body a browser sends (Django's test client would shorten the name)."""
    boundary = "----histopath-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{'a' * 1200}.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + _png(8, 8) + f"\r\n--{boundary}--\r\n".encode()
    response = client.generic("POST", "/", body, content_type=f"multipart/form-data; boundary={boundary}")
    assert response.status_code == 400
    assert "the file name is too long" in _errors(response)


def test_model_unavailable_page_does_not_show_the_internal_address(client, tmp_path):
    from django.test import override_settings

    internal = "http://model-server.histopath.svc.cluster.local:1"
    with override_settings(TF_SERVING_URL=internal):
        response = client.post("/", {"image": _upload("a.png", _png(64, 64))})
    assert response.status_code == 503
    html = _errors(response)
    assert "The model is not available right now" in html
    assert "cluster.local" not in html


def test_pages_are_never_cached(client):
    for url in ("/", "/history/"):
        assert "no-store" in client.get(url)["Cache-Control"]


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_database_url_parsing(django_app):
    from histopath.serving.webapp.settings import database_from_url

    sqlite = database_from_url("sqlite:////var/lib/histopath/web.sqlite3")
    assert sqlite["ENGINE"].endswith("sqlite3") and sqlite["NAME"] == "/var/lib/histopath/web.sqlite3"
    postgres = database_from_url("postgres://hp:p%40ss@db.internal:5433/histopath")
    assert postgres["ENGINE"] == "django.db.backends.postgresql"
    assert (postgres["USER"], postgres["PASSWORD"], postgres["HOST"], postgres["PORT"], postgres["NAME"]) == (
        "hp", "p@ss", "db.internal", 5433, "histopath"
    )


def test_url_with_a_non_ascii_path_is_fetched_not_a_server_error(client, shared_data):
    from django.test import override_settings

    data = idc_images(shared_data, 1)[0].read_bytes()
    with LocalHttpServer({"/Gewebe/%C3%BCbersicht.png": send_body(data, "image/png")}) as server:
        with override_settings(HISTOPATH_URL_ALLOWLIST=["127.0.0.1"]):
            response = client.post("/", {"image_url": f"{server.url}/Gewebe/übersicht.png"})
    assert response.status_code == 200, _errors(response)
    assert 'id="result-label"' in response.content.decode()


def test_12_bit_images_in_16_bit_pngs_get_the_answer_of_the_8_bit_image(client, shared_data, exported_models):
    """Scanner data: 12 significant bits in 16-bit PNGs, colour and grey, with and without
    an sBIT chunk, made from a real BreakHis image: read by their real range, they get the
    8-bit original's answer (not "no tissue" from a nearly black image)."""
    from serving_fixtures import png16

    rgb = np.asarray(Image.open(full_size_images(shared_data, 1)[0]).convert("RGB"))
    grey = rgb.mean(axis=-1).round().astype(np.uint8)
    twelve_rgb, twelve_grey = rgb.astype(np.uint16) << 4 | rgb >> 4, grey.astype(np.uint16) << 4 | grey >> 4
    for original, twins in (
        (png_bytes(rgb), {"rgb12-sbit.png": png16(twelve_rgb, 12), "rgb12.png": png16(twelve_rgb)}),
        (png_bytes(grey), {"grey12-sbit.png": png16(twelve_grey, 12), "grey12.png": png16(twelve_grey)}),
    ):
        reference = reference_outputs(exported_models.mil, {"image_bytes": np.array([original], dtype=object)})
        for name, data in twins.items():
            probability, tissue, _ = _web_probability(client, name, data)
            assert probability == pytest.approx(float(reference["probability"][0]), abs=1e-6), name
            assert tissue == pytest.approx(float(reference["tissue_fraction"][0]), abs=1e-6), name
    assert _web_probability(client, "rgb12.png", png16(twelve_rgb))[2] in ("benign", "malignant")


def test_decoded_bytes_budget_refuses_a_small_float_file_quoting_the_apps_limit(client):
    """A float TIFF whose pixels are within the pixel limit but whose samples, decoded,
    would pass the byte budget: refused from its header with the app's own limits."""
    from django.test import override_settings

    pixels = np.zeros((1000, 1000), np.float32)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="F").save(buffer, format="TIFF", compression="tiff_adobe_deflate")
    assert len(buffer.getvalue()) < 100_000
    with override_settings(HISTOPATH_MAX_DECODED_MB=3.0):
        response = client.post("/", {"image": _upload("float.tif", buffer.getvalue(), "image/tiff")})
    assert response.status_code == 400
    assert "1000x1000 pixels of F (4 MB once decoded), more than the limit of 3 MB" in _errors(response)


def test_pillow_bomb_refusal_quotes_the_apps_pixel_limit(client):
    from synthetic_images import png_bomb

    response = client.post("/", {"image": _upload("bomb.png", png_bomb(14000, 14000))})
    assert response.status_code == 400
    text = _errors(response)
    assert "more than the limit of 40,000,000 pixels" in text and "178956970" not in text


def test_a_not_sure_answer_asks_for_a_pathologists_review_and_is_recorded(client, shared_data, tmp_path):
    """A model whose "not sure" band covers every probability ([0, 1]): the page says so,
    still shows the probability, and the record and the audit trail keep the flag."""
    from django.test import override_settings
    from model_exports import export_tiny_mil

    from histopath.serving.webapp.predictions.models import AuditEvent, Prediction

    export_tiny_mil(tmp_path / "unsure" / "1", abstention_band={"low": 0.0, "high": 1.0})
    path = full_size_images(shared_data, 1)[0]
    data = path.read_bytes()
    with override_settings(HISTOPATH_SERVING_DIR=str(tmp_path), HISTOPATH_MODEL_NAME="unsure"):
        response = client.post("/", {"image": _upload(path.name, data)})
        assert response.status_code == 200, _errors(response)
        blank = client.post("/", {"image": _upload("black.png", _png(64, 64, (0, 0, 0)))})
    expected = reference_outputs(tmp_path / "unsure" / "1", {"image_bytes": np.array([data], dtype=object)})
    html = unescape(response.content.decode())
    assert re.search(r'id="result-label"[^>]*>Not sure — needs a pathologist\'s review<', html)
    assert f"{float(expected['probability'][0]) * 100:.1f} %" in html
    assert "No tissue detected" in blank.content.decode()  # a black image keeps its own answer
    unsure, black = Prediction.objects.order_by("id")
    assert unsure.not_sure and unsure.uncertainty == pytest.approx(float(expected["uncertainty"][0]), abs=1e-6)
    assert unsure.label_name in ("benign", "malignant") and not black.not_sure
    audit = AuditEvent.objects.get(kind=AuditEvent.PREDICTION, detail__startswith=f"prediction {unsure.pk}:")
    assert audit.detail == f"prediction {unsure.pk}: not sure (leaning {unsure.label_name})"
    assert "Not sure — needs a pathologist&#x27;s review (leaning" in client.get("/history/").content.decode()
