"""ASGI entry point of the web app: Django behind a whole-request buffer.

`histopath serve` runs this app with gunicorn's uvicorn worker (`gunicorn_conf.py`): the
event loop reads every request, headers and body, before Django sees it, so a client
sending its request one byte at a time holds a socket and a little memory, never one of
the threads that run Django. `BufferedRequests`:

- refuses a body larger than the upload limit with 413 before reading it (declared
  `Content-Length`) or as soon as it grows past it (chunked), and one that has not arrived
  within `HISTOPATH_BODY_TIMEOUT` seconds with 408;
- spools the body to a temporary file beyond `SPOOL_IN_MEMORY_BYTES`, and answers 503 to a
  body that would take the bodies being received at once past `HISTOPATH_BUFFERED_MB`
  (memory and temporary files stay bounded however many clients send at once);
- then hands the complete request to Django, at most `HISTOPATH_REQUEST_THREADS` at once
  (the others wait their turn in the loop, not in a thread); `/healthz` never waits.

A slide upload (`POST /slides/upload`, gigabytes) is not buffered: it is streamed to a
file by `predictions/slide_stream.py`, with its own limit and time-out.
"""

from __future__ import annotations

import asyncio
import html
import os
import tempfile

import histopath  # noqa: F401  (pins Keras 2 before the embedded backend imports TensorFlow)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "histopath.serving.webapp.settings")

from django.conf import settings  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402

from histopath.serving.webapp.predictions.middleware import MULTIPART_OVERHEAD, SLIDE_UPLOAD_PATH  # noqa: E402
from histopath.serving.webapp.predictions.slide_stream import stream_slide_upload  # noqa: E402

SPOOL_IN_MEMORY_BYTES = 64 * 1024  # larger bodies wait on disk until Django reads them
CHUNK_BYTES = 64 * 1024
UNQUEUED_PATHS = frozenset({"/healthz"})  # cheap, and must answer while the app is busy


class _Busy(Exception):
    """Receiving this body would pass the bytes all bodies being received may take."""


class BufferedRequests:
    """Reads each whole HTTP request before the wrapped ASGI app sees it.

    Args:
      app: the ASGI app (Django's).
      max_body_bytes: larger bodies are answered 413.
      concurrency: complete requests handed to the app at once.
      body_timeout_s: a body still arriving after this is answered 408.
      max_buffered_bytes: the bytes of all bodies held at once (being received, or waiting
        for Django; memory and temporary files); a body that would pass it is answered 503.
    """

    def __init__(self, app, max_body_bytes: int, concurrency: int, body_timeout_s: float = 120.0,
                 max_buffered_bytes: int = 160 * 1000 * 1000):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.concurrency = max(1, concurrency)
        self.body_timeout_s = body_timeout_s
        self.max_buffered_bytes = max_buffered_bytes
        self.buffered = 0  # bytes of the bodies held now
        self._slots: asyncio.Semaphore | None = None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrency)
        if scope.get("path") == SLIDE_UPLOAD_PATH and scope.get("method") == "POST":
            await stream_slide_upload(self.app, scope, receive, send, self._slots)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._too_large(send)
            return
        body = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES)
        counted = [0]  # this request's share of `buffered`
        try:
            try:
                size = await asyncio.wait_for(self._read(receive, body, counted), self.body_timeout_s)
            except asyncio.TimeoutError:
                await _answer(send, 408, "Request timeout", f"The request took longer than "
                              f"{self.body_timeout_s:g} s to arrive. Try again on a faster connection.")
                return
            except _Busy:
                await _answer(send, 503, "Busy", "The server is receiving many uploads right now. "
                              "Try again in a minute.")
                return
            if size is None:
                return  # the client went away
            if size > self.max_body_bytes:
                await self._too_large(send)
                return
            body.seek(0)
            if scope.get("path") in UNQUEUED_PATHS:  # probes answer even when every slot is busy
                await self.app(scope, _replay(body, size, receive), send)
                return
            async with self._slots:
                await self.app(scope, _replay(body, size, receive), send)
        finally:
            body.close()
            self.buffered -= counted[0]

    async def _read(self, receive, body, counted: list[int]) -> int | None:
        """Reads the body into `body` and returns its size (stops reading once past the
        limit); None when the client disconnects first.

        Raises:
          _Busy: the bodies held would pass `max_buffered_bytes`.
        """
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return size
            if self.buffered + len(chunk) > self.max_buffered_bytes:
                raise _Busy()
            self.buffered += len(chunk)
            counted[0] += len(chunk)
            body.write(chunk)
            if not message.get("more_body", False):
                return size

    async def _too_large(self, send) -> None:
        limit = settings.HISTOPATH_MAX_UPLOAD_BYTES / 1024 / 1024
        await _answer(send, 413, "Upload too large", f"The upload is larger than the limit of {limit:.1f} MiB.")


async def _answer(send, status: int, title: str, message: str) -> None:
    """A short HTML page with `message`, and the connection closed."""
    payload = f"<!doctype html><title>{html.escape(title)}</title><p>{html.escape(message)}</p>".encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/html; charset=utf-8"), (b"connection", b"close"),
                            (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


def _replay(body, size: int, receive):
    """An ASGI `receive` giving the buffered body in chunks, then the client's messages."""
    done = False

    async def replay():
        nonlocal done
        if done:
            return await receive()  # after the body: only the client's disconnect
        chunk = body.read(CHUNK_BYTES)
        done = body.tell() >= size
        return {"type": "http.request", "body": chunk, "more_body": not done}

    return replay


application = BufferedRequests(
    get_asgi_application(),
    max_body_bytes=settings.HISTOPATH_MAX_UPLOAD_BYTES + MULTIPART_OVERHEAD,
    concurrency=settings.HISTOPATH_REQUEST_THREADS,
    body_timeout_s=settings.HISTOPATH_BODY_TIMEOUT,
    max_buffered_bytes=int(settings.HISTOPATH_BUFFERED_MB * 1e6),
)
