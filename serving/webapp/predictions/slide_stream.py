"""The ASGI side of a slide upload: the body streamed to disk, never whole in memory.

`serving/webapp/asgi.py` buffers every other request whole (with a small cap) before
Django sees it. A slide is gigabytes, so `POST /slides/upload` goes through
`stream_slide_upload` instead:

1. a declared `Content-Length` past `HISTOPATH_MAX_SLIDE_BYTES` is answered 413 at once;
2. the session cookie must belong to an active user allowed to classify (checked in the
   database before a byte is read), else Django answers the request without its body
   (sign-in redirect or 403);
3. at most `HISTOPATH_SLIDE_UPLOADS` slides arrive at once per worker process (the disk
   they take is bounded: 503 beyond);
4. the body goes chunk by chunk into `IncomingSlide` (`incoming/<random>.part`, writes in
   a thread, not the event loop), 413 as soon as it passes the limit, 408 past
   `HISTOPATH_SLIDE_BODY_TIMEOUT`;
5. Django then gets the request with an empty body and the `IncomingSlide` in its scope:
   the view checks CSRF, checks the file by its content and renames it into place, or
   refuses it; whatever the view did not keep is deleted here.
"""

from __future__ import annotations

import asyncio
import http.cookies

from asgiref.sync import sync_to_async
from django.conf import settings

from histopath.serving.http_guard import refuse
from histopath.serving.webapp.predictions import slide_store

SCOPE_KEY = "histopath.slide_upload"


def may_upload(cookie_header: bytes) -> bool:
    """Whether the session of `cookie_header` is an active user with the classify permission."""
    from importlib import import_module

    from django.contrib.auth import BACKEND_SESSION_KEY, SESSION_KEY, get_user_model
    from django.db import close_old_connections

    cookies = http.cookies.SimpleCookie()
    try:
        cookies.load(cookie_header.decode("latin-1"))
    except http.cookies.CookieError:
        return False
    morsel = cookies.get(settings.SESSION_COOKIE_NAME)
    if morsel is None or not morsel.value:
        return False
    close_old_connections()
    try:
        session = import_module(settings.SESSION_ENGINE).SessionStore(morsel.value)
        user_id, backend = session.get(SESSION_KEY), session.get(BACKEND_SESSION_KEY)
        if user_id is None or backend not in settings.AUTHENTICATION_BACKENDS:
            return False
        user = get_user_model().objects.filter(pk=user_id).first()
        return bool(user and user.is_active and user.has_perm("predictions.add_prediction"))
    finally:
        close_old_connections()


async def _receive_into(receive, incoming: slide_store.IncomingSlide) -> bool:
    """Writes the body into `incoming`; False when the client went away.

    Raises:
      TooLarge: past the limit (the partial file is deleted).
    """
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return False
        chunk = message.get("body", b"")
        if chunk:
            await asyncio.to_thread(incoming.write, chunk)
        if not message.get("more_body", False):
            return True


def _empty_body(receive):
    """An ASGI `receive` giving Django an empty body, then only the client's disconnect
    (body chunks still arriving, from a client Django refuses unread, are dropped)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return message

    return replay


async def stream_slide_upload(app, scope, receive, send, slots: asyncio.Semaphore) -> None:
    """Serves `POST /slides/upload` (see the module docstring); `app` is Django's."""
    headers = dict(scope.get("headers") or [])
    declared = headers.get(b"content-length", b"")
    if declared.isdigit() and int(declared) > settings.HISTOPATH_MAX_SLIDE_BYTES:
        await refuse(send, 413, f"The slide is larger than the limit of {slide_store.limit_text()}.")
        return
    without_length = [(k, v) for k, v in scope.get("headers") or [] if k != b"content-length"]
    bodyless = {**scope, "headers": [*without_length, (b"content-length", b"0")]}
    if not await sync_to_async(may_upload, thread_sensitive=False)(headers.get(b"cookie", b"")):
        async with slots:  # Django answers: sign-in redirect or 403, never reading the body
            await app(bodyless, _empty_body(receive), send)
        return
    global _arriving
    if _arriving >= settings.HISTOPATH_SLIDE_UPLOADS:
        await refuse(send, 503, "The server is receiving other slides right now. Try again in a few minutes.")
        return
    _arriving += 1
    try:
        await _stream_to_django(app, bodyless, receive, send, slots)
    finally:
        _arriving -= 1


_arriving = 0  # slide uploads being received by this process (one event loop: no lock needed)


async def _stream_to_django(app, bodyless, receive, send, slots: asyncio.Semaphore) -> None:
    """Steps 4 and 5 of the module docstring."""
    incoming = await asyncio.to_thread(slide_store.IncomingSlide)
    try:
        try:
            arrived = await asyncio.wait_for(_receive_into(receive, incoming),
                                             settings.HISTOPATH_SLIDE_BODY_TIMEOUT)
        except asyncio.TimeoutError:
            await refuse(send, 408, f"The slide took longer than {settings.HISTOPATH_SLIDE_BODY_TIMEOUT:g} s "
                        "to arrive. Try again on a faster connection, or ask for it to be put in the slide folder.")
            return
        except slide_store.TooLarge as error:
            await refuse(send, 413, str(error))
            return
        if not arrived:
            return
        incoming.close()
        async with slots:
            await app({**bodyless, SCOPE_KEY: incoming}, _empty_body(receive), send)
    finally:
        if incoming.path.suffix == ".part" or incoming.path.parent.name == "incoming":
            await asyncio.to_thread(incoming.discard)  # not kept by the view
