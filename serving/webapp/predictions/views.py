"""Views: classify an uploaded or linked image, the user's (or everyone's) predictions, and
the health check. Every page but `/healthz` and the sign-in page needs a signed-in user
(`LoginRequiredMiddleware`); result and history pages are never cached.
"""

from __future__ import annotations

import hashlib
import logging
import threading

from django.conf import settings
from django.contrib.auth.decorators import login_not_required, permission_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.multipartparser import MultiPartParserError
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods

from histopath.images import ImageError, decode, model_bytes, read_header
from histopath.models import heatmap
from histopath.models.exported import NOT_SURE_TEXT
from histopath.serving.webapp.predictions import accounts
from histopath.serving.webapp.predictions.backends import BackendError, ImageRejected, get_backend
from histopath.serving.webapp.predictions.forms import PredictForm
from histopath.serving.webapp.predictions.limits import ByteBudget, DecodeBusy
from histopath.serving.webapp.predictions.models import AuditEvent, Prediction
from histopath.serving.webapp.predictions.url_fetch import FetchPolicy, FetchSlots, UrlFetchError, fetch_image

logger = logging.getLogger(__name__)
RECENT_ON_HISTORY_PAGE = 100
MODEL_UNAVAILABLE = "The model is not available right now. Try again in a minute; if it persists, tell the administrator."

_slots: FetchSlots | None = None
_slots_lock = threading.Lock()


def _fetch_slots() -> FetchSlots:
    global _slots
    with _slots_lock:
        if _slots is None or _slots.limit != settings.HISTOPATH_URL_FETCHES:
            _slots = FetchSlots(settings.HISTOPATH_URL_FETCHES)
        return _slots


def _fetch_policy() -> FetchPolicy:
    return FetchPolicy(
        allowlist=tuple(settings.HISTOPATH_URL_ALLOWLIST),
        timeout_s=settings.HISTOPATH_URL_TIMEOUT,
        max_bytes=settings.HISTOPATH_MAX_UPLOAD_BYTES,
    )


def _form_error(request: HttpRequest, form: PredictForm, field: str | None, message: str, status: int = 400):
    form.add_error(field, message)
    return render(request, "predictions/index.html", {"form": form}, status=status)


def _read_source(form: PredictForm) -> tuple[str, str, bytes]:
    """(source, form field, bytes) of the submitted image.

    Raises:
      UrlFetchError: the URL cannot be used (message for the user).
    """
    upload = form.cleaned_data.get("image")
    if upload:
        return Prediction.SOURCE_UPLOAD, "image", b"".join(upload.chunks())
    with _fetch_slots().slot():
        return Prediction.SOURCE_URL, "image_url", fetch_image(form.cleaned_data["image_url"].strip(), _fetch_policy()).data


@never_cache
@permission_required("predictions.add_prediction", raise_exception=True)
@require_http_methods(["GET", "POST"])
def index(request: HttpRequest) -> HttpResponse:
    """The upload/URL form (GET) and the classification result (POST)."""
    if request.method == "GET":
        return render(request, "predictions/index.html", {"form": PredictForm()})
    form = PredictForm(request.POST, request.FILES)
    if not form.is_valid():
        return render(request, "predictions/index.html", {"form": form}, status=400)
    try:
        source, field, data = _read_source(form)
    except UrlFetchError as error:
        return _form_error(request, form, "image_url", f"Cannot use this URL: {error}.")
    upload = form.cleaned_data.get("image")
    named = f"“{upload.name[:200]}”" if upload else "The image at the URL"  # shown, never stored
    try:
        header = read_header(data, max_pixels=settings.HISTOPATH_MAX_IMAGE_PIXELS,
                             max_decoded_bytes=_max_decoded_bytes())
        with _decode_budget().hold(header.decoded_bytes):  # decoded, classified, rendered
            return _classify(request, form, source, field, data, named)
    except ImageError as error:
        return _form_error(request, form, field, f"{named}: {error}.")
    except DecodeBusy as error:
        return _form_error(request, form, field, f"{named}: {error}.", status=503)


def _max_decoded_bytes() -> int:
    return int(settings.HISTOPATH_MAX_DECODED_MB * 1e6)


_budget: ByteBudget | None = None
_budget_lock = threading.Lock()


def _decode_budget() -> ByteBudget:
    """The process's budget of decoded-image bytes in flight (`HISTOPATH_DECODE_BUDGET_MB`)."""
    global _budget
    capacity = int(settings.HISTOPATH_DECODE_BUDGET_MB * 1e6)
    with _budget_lock:
        if _budget is None or _budget.capacity != capacity:
            _budget = ByteBudget(capacity)
        return _budget


def _classify(request: HttpRequest, form: PredictForm, source: str, field: str, data: bytes,
              named: str) -> HttpResponse:
    """Decodes `data`, asks the model, records the prediction and renders the result.

    Raises:
      ImageError: the image cannot be read (shown on the form).
    """
    image = decode(data, max_pixels=settings.HISTOPATH_MAX_IMAGE_PIXELS, max_decoded_bytes=_max_decoded_bytes())
    try:
        answer = get_backend().predict(model_bytes(data, image))
    except ImageRejected as error:
        return _form_error(request, form, field, f"{named}: {error}.")
    except BackendError as error:
        logger.warning("prediction failed: %s", error)  # the internal address stays in the log
        return render(request, "predictions/error.html", {"message": MODEL_UNAVAILABLE}, status=503)

    digest = hashlib.sha256(data).hexdigest()
    upload = form.cleaned_data.get("image")
    record = Prediction.objects.create(
        user=request.user,
        image_sha256=digest,
        source=source,
        display_name=form.cleaned_data.get("display_name") or digest[:12],
        original_name=(upload.name or "")[:255] if upload and settings.HISTOPATH_KEEP_FILENAMES else "",
        model_name=answer.model_name,
        model_version=answer.model_version,
        tissue_detected=answer.tissue_detected,
        tissue_fraction=answer.tissue_fraction,
        probability=answer.probability,
        label=answer.label,
        label_name=answer.label_name,
        not_sure=answer.not_sure,
        uncertainty=answer.uncertainty,
    )
    said = f"not sure (leaning {answer.label_name})" if answer.not_sure else answer.label_name
    accounts.record(AuditEvent.PREDICTION, request.user.get_username(), request, request.user,
                    detail=f"prediction {record.pk}: {said}")
    return render(request, "predictions/index.html", _result_context(answer, record, image))


def _for_display(rgb):
    """`rgb` reduced by a whole factor towards the display size first (a small copy, not
    one as large as the image)."""
    factor = max(rgb.size) // (2 * heatmap.DISPLAY_MAX_SIDE)
    return rgb.reduce(factor) if factor > 1 else rgb


def _result_context(answer, record: Prediction, image) -> dict:
    shown = heatmap.display_copy(_for_display(image.rgb))
    heatmap_url = tile_map_url = None
    if answer.grid_shape is not None and answer.tissue_detected:
        try:
            if answer.attention is not None:
                heatmap_url = heatmap.png_data_url(heatmap.render_overlay(shown, answer.attention, answer.grid_shape))
            if answer.tile_probability is not None:
                tile_map_url = heatmap.png_data_url(
                    heatmap.render_overlay(shown, answer.tile_probability, answer.grid_shape, absolute=True))
        except ValueError as error:
            logger.warning("no heat-map for prediction %d: %s", record.pk, error)
    header = image.header
    return {
        "form": PredictForm(),
        "result": answer,
        "record": record,
        "image_format": header.format if header.mode in ("RGB", "L") else f"{header.format} ({header.mode})",
        "image_size": f"{header.width} × {header.height}",
        "original_url": heatmap.png_data_url(shown),
        "heatmap_url": heatmap_url,
        "tile_map_url": tile_map_url,
        "grid_text": f"{answer.grid_shape[0]} × {answer.grid_shape[1]}" if answer.grid_shape else "",
        "probability_percent": f"{answer.probability * 100:.1f}",
        "not_sure_text": NOT_SURE_TEXT,
        "tissue_percent": f"{(answer.tissue_fraction or 0) * 100:.1f}",
    }


@never_cache
@permission_required("predictions.view_prediction", raise_exception=True)
@require_GET
def history(request: HttpRequest) -> HttpResponse:
    """The user's most recent predictions; everyone's for auditors."""
    sees_all = request.user.has_perm("predictions.view_all_predictions")
    predictions = Prediction.objects.select_related("user")
    if not sees_all:
        predictions = predictions.filter(user=request.user)
    return render(request, "predictions/history.html", {
        "predictions": list(predictions[:RECENT_ON_HISTORY_PAGE]),
        "total": predictions.count(),
        "sees_all": sees_all,
        "not_sure_text": NOT_SURE_TEXT,
    })


@login_not_required
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness/readiness probe: the process answers and the database is reachable."""
    Prediction.objects.exists()
    return JsonResponse({"status": "ok"})


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """400 page that says what was wrong with the request."""
    if isinstance(exception, MultiPartParserError) and "header size" in str(exception):
        message = ("The upload could not be read: the file name is too long (the form allows about "
                   "1,000 characters). Rename the file and upload it again.")
    else:
        message = "The request could not be read. Reload the page and try again."
    return render(request, "predictions/error.html", {"message": message}, status=400)


def forbidden(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """403 page: signed in, but the role does not allow this page."""
    message = ("Your account's role does not allow this page. Classifying needs the pathologist role; "
               "ask an administrator if you should have it.")
    return render(request, "predictions/error.html", {"message": message}, status=403)
