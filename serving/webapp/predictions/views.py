"""Views: classify an uploaded or linked image, list recent predictions, health check."""

from __future__ import annotations

import hashlib
import logging

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_http_methods

from histopath.serving.image_checks import (
    MODEL_NATIVE_FORMATS,
    TRANSCODED_FORMATS,
    ImageCheckError,
    decode_rgb,
    encode_png,
    read_header,
)
from histopath.models import heatmap
from histopath.serving.webapp.predictions.backends import BackendError, ImageRejected, get_backend
from histopath.serving.webapp.predictions.forms import PredictForm
from histopath.serving.webapp.predictions.models import Prediction
from histopath.serving.webapp.predictions.url_fetch import FetchPolicy, UrlFetchError, fetch_image

logger = logging.getLogger(__name__)
RECENT_ON_HISTORY_PAGE = 100


def _fetch_policy() -> FetchPolicy:
    return FetchPolicy(
        allowlist=tuple(settings.HISTOPATH_URL_ALLOWLIST),
        timeout_s=settings.HISTOPATH_URL_TIMEOUT,
        max_bytes=settings.HISTOPATH_MAX_UPLOAD_BYTES,
    )


def _form_error(request: HttpRequest, form: PredictForm, field: str | None, message: str, status: int = 400):
    form.add_error(field, message)
    return render(request, "predictions/index.html", {"form": form}, status=status)


@require_http_methods(["GET", "POST"])
def index(request: HttpRequest) -> HttpResponse:
    """The upload/URL form (GET) and the classification result (POST)."""
    if request.method == "GET":
        return render(request, "predictions/index.html", {"form": PredictForm()})
    form = PredictForm(request.POST, request.FILES)
    if not form.is_valid():
        return render(request, "predictions/index.html", {"form": form}, status=400)

    upload = form.cleaned_data.get("image")
    if upload:
        source, source_name, field = Prediction.SOURCE_UPLOAD, upload.name or "upload", "image"
        data = b"".join(upload.chunks())
    else:
        url = form.cleaned_data["image_url"].strip()
        source, source_name, field = Prediction.SOURCE_URL, url, "image_url"
        try:
            data = fetch_image(url, _fetch_policy()).data
        except UrlFetchError as error:
            return _form_error(request, form, field, f"Cannot use this URL: {error}.")

    max_pixels = settings.HISTOPATH_MAX_IMAGE_PIXELS
    try:
        header = read_header(data, allowed_formats=MODEL_NATIVE_FORMATS + TRANSCODED_FORMATS, max_pixels=max_pixels)
        image = decode_rgb(data, max_pixels=max_pixels)
    except ImageCheckError as error:
        return _form_error(request, form, field, f"“{source_name[:200]}”: {error}.")
    # Anything the serving graph would not decode as Pillow does (TIFF, WebP, CMYK or
    # 16-bit files) is re-encoded losslessly as 8-bit RGB PNG.
    model_bytes = data if header.model_native else encode_png(image)

    try:
        answer = get_backend().predict(model_bytes)
    except ImageRejected as error:
        return _form_error(request, form, field, f"“{source_name[:200]}”: {error}.")
    except BackendError as error:
        logger.warning("prediction failed: %s", error)
        return render(request, "predictions/error.html", {"message": f"The model is not available: {error}"}, status=503)

    record = Prediction.objects.create(
        image_sha256=hashlib.sha256(data).hexdigest(),
        source=source,
        source_name=source_name[:500],
        model_name=answer.model_name,
        model_version=answer.model_version,
        probability=answer.probability,
        label=answer.label,
        label_name=answer.label_name,
    )
    shown = heatmap.display_copy(image)
    heatmap_url = tile_map_url = None
    if answer.grid_shape is not None:
        try:
            if answer.attention is not None:
                heatmap_url = heatmap.png_data_url(heatmap.render_overlay(shown, answer.attention, answer.grid_shape))
            if answer.tile_probability is not None:
                tile_map_url = heatmap.png_data_url(
                    heatmap.render_overlay(shown, answer.tile_probability, answer.grid_shape, absolute=True))
        except ValueError as error:
            logger.warning("no heat-map for prediction %d: %s", record.pk, error)
    context = {
        "form": PredictForm(),
        "result": answer,
        "record": record,
        "image_format": header.format,
        "image_size": f"{header.width} × {header.height}",
        "original_url": heatmap.png_data_url(shown),
        "heatmap_url": heatmap_url,
        "tile_map_url": tile_map_url,
        "grid_text": f"{answer.grid_shape[0]} × {answer.grid_shape[1]}" if answer.grid_shape else "",
        "probability_percent": f"{answer.probability * 100:.1f}",
    }
    return render(request, "predictions/index.html", context)


@require_GET
def history(request: HttpRequest) -> HttpResponse:
    """The most recent predictions."""
    recent = list(Prediction.objects.all()[:RECENT_ON_HISTORY_PAGE])
    return render(
        request,
        "predictions/history.html",
        {"predictions": recent, "total": Prediction.objects.count()},
    )


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness/readiness probe: the process answers and the database is reachable."""
    Prediction.objects.exists()
    return JsonResponse({"status": "ok"})
