"""Whole-slide pages: upload or pick a slide, follow its job, look at it in the viewer.

Uploads come to `SLIDE_UPLOAD_PATH` as the raw file body (the page's script sends it with
the CSRF token and the file name in headers). Behind `histopath serve`, the ASGI layer
(`serving/webapp/asgi.py`) has already streamed it to `incoming/` and hands the view the
`IncomingSlide` in the request's scope; under any other server the view streams the body
itself. Every page needs a signed-in user; a job is seen by its owner and by auditors.
"""

from __future__ import annotations

import pathlib
import urllib.parse
from typing import Optional

from django.contrib.auth.decorators import permission_required
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from histopath.models.exported import NOT_SURE_TEXT
from histopath.serving.webapp.predictions import accounts, slide_store, slide_viewer
from histopath.serving.webapp.predictions.models import AuditEvent, SlideJob
from histopath.serving.webapp.predictions.slide_stream import SCOPE_KEY

VIEWER_POLICY = ("default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self' data: blob:; "
                 "style-src 'unsafe-inline'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
STATIC_ROOT = pathlib.Path(__file__).resolve().parent.parent / "static"
STATIC_TYPES = {".js": "text/javascript", ".png": "image/png", ".txt": "text/plain"}


def _with_scripts(response: HttpResponse) -> HttpResponse:
    response["Content-Security-Policy"] = VIEWER_POLICY
    return response


def _mpp(text: Optional[str]) -> Optional[float]:
    """The user's microns per pixel (blank: the file's).

    Raises:
      SlideRefused: not a positive number below 100.
    """
    text = (text or "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 100:
        raise slide_store.SlideRefused(f"“{text[:30]}” is not a number of microns per pixel (e.g. 0.25 or 0.5)")
    return value


def _display_name(text: Optional[str], fallback: str) -> str:
    return " ".join((text or "").split())[:120] or fallback


def _queue(request: HttpRequest, source: str, path: pathlib.Path, name: str, mpp: Optional[float],
           sha256: str = "") -> SlideJob:
    job = SlideJob.objects.create(user=request.user, source=source, slide_path=str(path), slide_sha256=sha256,
                                  display_name=name, mpp=mpp)
    accounts.record(AuditEvent.SLIDE_QUEUED, request.user.get_username(), request, request.user,
                    detail=f"slide job {job.pk} queued ({source})")
    return job


def _visible_jobs(request: HttpRequest):
    jobs = SlideJob.objects.select_related("user")
    if not request.user.has_perm("predictions.view_all_predictions"):
        jobs = jobs.filter(user=request.user)
    return jobs


def _job(request: HttpRequest, pk: int) -> SlideJob:
    job = _visible_jobs(request).filter(pk=pk).first()
    if job is None:
        raise Http404("no such slide job")
    return job


def _folder_context(pick_error: str = "") -> dict:
    """The slide folder's (or bucket's) slides for the list page (and the "not sure" text of
    its jobs); a bucket that cannot be read is said in the pick error."""
    try:
        listed = slide_store.folder_slides()
    except slide_store.SlideRefused as error:
        listed, pick_error = [], pick_error or f"{error}."
    return {"folder_slides": listed, "has_folder": slide_store.has_root(), "pick_error": pick_error,
            "not_sure_text": NOT_SURE_TEXT}


@never_cache
@permission_required("predictions.view_prediction", raise_exception=True)
@require_GET
def slide_list(request: HttpRequest) -> HttpResponse:
    """The upload form, the slide folder's slides and the user's slide jobs."""
    return _with_scripts(render(request, "predictions/slides.html", {
        "jobs": list(_visible_jobs(request)[:100]),
        **_folder_context(),
        "limit_text": slide_store.limit_text(),
        "extensions": ", ".join(slide_store.UPLOAD_EXTENSIONS),
        "can_add": request.user.has_perm("predictions.add_prediction"),
    }))


@never_cache
@permission_required("predictions.add_prediction", raise_exception=True)
@require_POST
def slide_upload(request: HttpRequest) -> JsonResponse:
    """A slide file as the raw body (headers X-Slide-Name, X-Display-Name, X-Slide-Mpp):
    201 with the job's page, or 400/413 with the reason."""
    name = urllib.parse.unquote(request.headers.get("X-Slide-Name", ""))[:1000]
    incoming = request.scope.get(SCOPE_KEY) if hasattr(request, "scope") else None
    try:
        mpp = _mpp(urllib.parse.unquote(request.headers.get("X-Slide-Mpp", "")))
        slide_store.suffix_of(name)
        if incoming is None:
            incoming = slide_store.IncomingSlide()
            while chunk := request.read(slide_store.CHUNK_BYTES):
                incoming.write(chunk)
        path = incoming.keep(name, mpp)
    except slide_store.TooLarge as error:
        return JsonResponse({"error": str(error)}, status=413)
    except slide_store.SlideRefused as error:
        if incoming is not None:
            incoming.discard()
        return JsonResponse({"error": f"{error}."}, status=400)
    display = _display_name(urllib.parse.unquote(request.headers.get("X-Display-Name", "")), incoming.sha256[:12])
    job = _queue(request, SlideJob.SOURCE_UPLOAD, path, display, mpp, incoming.sha256)
    return JsonResponse({"job": job.pk, "url": reverse("slide", args=[job.pk])}, status=201)


@never_cache
@permission_required("predictions.add_prediction", raise_exception=True)
@require_POST
def slide_pick(request: HttpRequest) -> HttpResponse:
    """A slide of `HISTOPATH_SLIDE_ROOT` (form field `slide`, relative): queued, or the
    list page with the reason. A slide of a URI root (a bucket) is copied in first, like an
    upload, while this request waits."""
    relative = request.POST.get("slide", "")
    try:
        mpp = _mpp(request.POST.get("mpp"))
        path, sha256 = slide_store.pick(relative, mpp)
    except slide_store.SlideRefused as error:
        response = render(request, "predictions/slides.html", {
            "jobs": list(_visible_jobs(request)[:100]), **_folder_context(f"{error}."),
            "limit_text": slide_store.limit_text(),
            "extensions": ", ".join(slide_store.UPLOAD_EXTENSIONS), "can_add": True}, status=400)
        return _with_scripts(response)
    shown = pathlib.PurePosixPath(relative.strip().replace("\\", "/")).name
    job = _queue(request, SlideJob.SOURCE_FOLDER, path, _display_name(request.POST.get("display_name"), shown),
                 mpp, sha256)
    return redirect("slide", job.pk)


def _status(job: SlideJob) -> dict:
    return {"state": job.state, "tiles_done": job.tiles_done, "tiles_total": job.tiles_total,
            "percent": job.percent, "error": job.error}


@never_cache
@permission_required("predictions.view_prediction", raise_exception=True)
@require_GET
def slide_page(request: HttpRequest, pk: int) -> HttpResponse:
    """The job's progress while it runs; the answer and the viewer once done."""
    job = _job(request, pk)
    return _with_scripts(render(request, "predictions/slide.html", {
        "job": job, "status": _status(job), "not_sure_text": NOT_SURE_TEXT,
        "probability_percent": f"{job.probability * 100:.1f}" if job.probability is not None else "",
    }))


@never_cache
@permission_required("predictions.view_prediction", raise_exception=True)
@require_GET
def slide_status(request: HttpRequest, pk: int) -> JsonResponse:
    """The job's state and progress, polled by its page."""
    return JsonResponse(_status(_job(request, pk)))


def _done(request: HttpRequest, pk: int) -> SlideJob:
    job = _job(request, pk)
    if job.state != SlideJob.DONE:
        raise Http404("the slide has not been called yet")
    return job


@permission_required("predictions.view_prediction", raise_exception=True)
@require_GET
def slide_dzi(request: HttpRequest, pk: int) -> HttpResponse:
    """The slide's Deep Zoom descriptor."""
    job = _job(request, pk)
    try:
        described = slide_viewer.dzi_xml(job.slide_path)
    except slide_viewer.SlideGone:
        raise Http404("the slide file is no longer on the server") from None
    return _privately_cached(described, "application/xml")


@permission_required("predictions.view_prediction", raise_exception=True)
@require_GET
def slide_tile(request: HttpRequest, pk: int, level: int, column: int, row: int) -> HttpResponse:
    """One Deep Zoom tile (JPEG) read from the slide."""
    job = _job(request, pk)
    try:
        data = slide_viewer.tile_jpeg(job.slide_path, level, column, row)
    except (ValueError, slide_viewer.SlideGone):
        raise Http404("no such tile") from None
    return _privately_cached(data, "image/jpeg")


def _privately_cached(content: bytes | str, content_type: str) -> HttpResponse:
    """A viewer response the browser may keep for an hour, and no shared cache at all."""
    response = HttpResponse(content, content_type=content_type)
    response["Cache-Control"] = "private, max-age=3600"
    return response


@permission_required("predictions.view_prediction", raise_exception=True)
@require_GET
def slide_output(request: HttpRequest, pk: int, name: str) -> FileResponse:
    """The heat-map overlay (overlay.png), the tiles for QuPath (tiles.geojson) or the
    slide answer (slide.json) of a called slide."""
    job = _done(request, pk)
    if name not in (slide_viewer.OVERLAY_NAME, "tiles.geojson", "slide.json", "heatmap.png"):
        raise Http404("no such output")
    path = pathlib.Path(job.output_dir) / name
    if not path.is_file():
        raise Http404("no such output")
    attachment = name.endswith(".geojson")
    response = FileResponse(open(path, "rb"), as_attachment=attachment,  # noqa: SIM115 (closed by Django)
                            filename=f"slide-{job.pk}-{name}" if attachment else None)
    response["Cache-Control"] = "private, no-cache"
    return response


@require_GET
def viewer_static(request: HttpRequest, path: str) -> FileResponse:
    """The viewer's scripts and images (`serving/webapp/static/`), for signed-in users."""
    target = (STATIC_ROOT / path).resolve()
    if not target.is_relative_to(STATIC_ROOT) or not target.is_file() or target.suffix not in STATIC_TYPES:
        raise Http404("no such file")
    response = FileResponse(open(target, "rb"), content_type=STATIC_TYPES[target.suffix])  # noqa: SIM115
    response["Cache-Control"] = "private, max-age=3600"
    return response
