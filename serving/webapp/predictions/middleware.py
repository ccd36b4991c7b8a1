"""Request-size limit and Content-Security-Policy header."""

from __future__ import annotations

from django.conf import settings
from django.shortcuts import render

MULTIPART_OVERHEAD = 64 * 1024  # form fields and multipart boundaries around the file
SLIDE_UPLOAD_PATH = "/slides/upload"  # a raw slide body, streamed by the ASGI layer


class RequestSizeLimitMiddleware:
    """Answers 413 before anything reads a body larger than the upload limit allows."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        declared = request.META.get("CONTENT_LENGTH") or "0"
        shown = settings.HISTOPATH_MAX_UPLOAD_BYTES
        limit = shown + MULTIPART_OVERHEAD
        if request.path == SLIDE_UPLOAD_PATH:  # a slide: its own limit (predictions/slide_store.py)
            shown = limit = settings.HISTOPATH_MAX_SLIDE_BYTES
        if declared.isdigit() and int(declared) > limit:
            message = (
                f"The upload is larger than the limit of "
                f"{shown / 1024 / 1024:.1f} MiB."
            )
            response = render(request, "predictions/error.html", {"message": message}, status=413)
            response["Connection"] = "close"
            return response
        return self.get_response(request)


class ContentSecurityPolicyMiddleware:
    """No scripts, inline styles only, images from this site or inline data URLs."""

    POLICY = (
        "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        response.setdefault("Content-Security-Policy", self.POLICY)
        return response
