"""ASGI guards in front of the model server's REST API: the request line, the Host header.

- `RequestLineGuard`: only HTTP/1.0 and 1.1 requests (no HTTP/0.9-style request without a
  version, no unknown versions) whose path holds no control characters, raw or
  percent-encoded (CR/LF in a path is how responses and logs are split).
- `HostGuard`: the `Host` header must name this server (loopback names, the address it
  listens on, or `--allowed-hosts`): a web page on a user's machine cannot reach the
  server through a name that resolves to it (DNS rebinding).

Refusals are 400 `{"error": ...}` with `Connection: close`; they never echo the refused
value back.
"""

from __future__ import annotations

import json
import re
from typing import Iterable
from urllib.parse import unquote_to_bytes

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
WILDCARD_ADDRESSES = ("", "0.0.0.0", "::")
ACCEPTED_HTTP_VERSIONS = ("1.0", "1.1")
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")


async def refuse(send, status: int, message: str) -> None:
    """Answers `status` with `{"error": message}` and closes the connection."""
    payload = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"connection", b"close"),
                            (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


class RequestLineGuard:
    """Refuses requests of another HTTP version than 1.0/1.1, and paths with control
    characters (raw or percent-encoded)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope.get("http_version") not in ACCEPTED_HTTP_VERSIONS:
            await refuse(send, 400, "only HTTP/1.0 and HTTP/1.1 requests are accepted")
            return
        raw = scope.get("raw_path") or scope.get("path", "").encode("utf-8", "surrogateescape")
        target = raw + b"?" + (scope.get("query_string") or b"")
        if _CONTROL.search(target) or _CONTROL.search(unquote_to_bytes(target)):
            await refuse(send, 400, "the request path holds control characters")
            return
        await self.app(scope, receive, send)


def allowed_host_names(host: str, extra: Iterable[str]) -> frozenset[str] | None:
    """The Host names a server listening on `host` answers; None when any is ('*').

    Args:
      host: the address it listens on (a wildcard address adds nothing).
      extra: the operator's further names (`--allowed-hosts`).
    """
    names = {name.strip().lower().strip("[]") for name in extra if name.strip()}
    if "*" in names:
        return None
    names.update(LOOPBACK_HOSTS)
    if host not in WILDCARD_ADDRESSES:
        names.add(host.lower().strip("[]"))
    return frozenset(names)


def host_name(header: bytes) -> str:
    """The name of a Host header value, without its port ("[::1]:8501" -> "::1")."""
    text = header.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[1:text.find("]")] if "]" in text else text
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


class HostGuard:
    """Answers only requests whose Host header names this server.

    Args:
      app: the ASGI app.
      allowed: `allowed_host_names(...)`; None answers any Host.
    """

    def __init__(self, app, allowed: frozenset[str] | None):
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.allowed is not None:
            hosts = [value for key, value in scope.get("headers") or [] if key == b"host"]
            if len(hosts) != 1 or host_name(hosts[0]) not in self.allowed:
                await refuse(send, 400, "the Host header does not name this server (see --allowed-hosts)")
                return
        await self.app(scope, receive, send)
