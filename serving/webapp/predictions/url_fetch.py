"""Fetches an image from a user-supplied URL without letting it reach internal services.

Server-side request forgery guard: only http/https; the host name is resolved and EVERY
resolved address must be public (not loopback, private, link-local, multicast, reserved,
unspecified, shared/CGNAT or a cloud metadata address) unless the allow-list names it; the
connection then goes to that vetted IP (so a second DNS answer cannot rebind it to an
internal address), with the original host name in `Host` and in TLS (SNI and certificate
check). Redirects are followed by hand and every hop is vetted again. The body is streamed
and cut off at the size cap; the content type must be `image/*`.

One deadline covers the whole fetch (connect, response headers, body, every redirect): a
watchdog shuts the socket when it passes, so a server that dribbles its headers byte by
byte cannot hold a request past it. `FetchSlots` bounds how many fetches run at once in a
process, so slow URLs cannot take every worker thread from uploads and `/healthz`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import ipaddress
import socket
import ssl
import threading
import time
from typing import Iterable, Iterator
from urllib.parse import quote, urljoin, urlsplit

REDIRECT_STATUSES = (301, 302, 303, 307, 308)
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(address)
    for address in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)
USER_AGENT = "histopath-webapp/1.0 (+image fetch)"


class UrlFetchError(Exception):
    """The URL cannot or may not be fetched; the message is shown to the user."""


@dataclasses.dataclass(frozen=True)
class FetchPolicy:
    """Limits of one URL fetch."""

    allowlist: tuple[str, ...] = ()  # IPs, CIDRs or host names allowed despite being internal
    timeout_s: float = 10.0  # deadline for the whole fetch, redirects included
    max_bytes: int = 10 * 1024 * 1024  # largest accepted body
    max_redirects: int = 5  # most redirects followed


@dataclasses.dataclass(frozen=True)
class FetchedImage:
    """A fetched body and where it finally came from."""

    data: bytes
    final_url: str
    content_type: str


class FetchSlots:
    """At most `limit` URL fetches at once in this process; a fetch beyond that is refused
    at once (waiting would hold a worker thread as long as a slow fetch does).

    Args:
      limit: the number of simultaneous fetches.
    """

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError(f"at least one simultaneous URL fetch is needed, not {limit}")
        self.limit = limit
        self._slots = threading.BoundedSemaphore(limit)

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Holds one slot for the block.

        Raises:
          UrlFetchError: every slot is taken.
        """
        if not self._slots.acquire(blocking=False):
            raise UrlFetchError(f"{self.limit} image URLs are being fetched right now; try again in a "
                                "minute, or upload the file")
        try:
            yield
        finally:
            self._slots.release()


class _Watchdog:
    """Shuts the connection's socket when the deadline passes, whatever call is blocked on it.

    Socket timeouts bound each read, not the sum of them: a server sending one byte per
    second would never trip them.
    """

    def __init__(self, deadline: float):
        self.deadline = deadline
        self.expired = False
        self._timer: threading.Timer | None = None

    def watch(self, connection: http.client.HTTPConnection) -> None:
        self.cancel()

        def expire() -> None:
            self.expired = True
            sock = connection.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

        self._timer = threading.Timer(max(0.0, self.deadline - time.monotonic()), expire)
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def blocked_reason(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why an address must not be contacted, or None when it is a public address.

    Args:
      address: a resolved IP address.

    Returns:
      e.g. "loopback" or "private", None for a public unicast address.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address.is_site_local:
            return "site-local"
        embedded = _embedded_ipv4(address)
        if embedded is not None:  # the IPv4 address it reaches decides
            return blocked_reason(embedded)
    checks = (
        (address in METADATA_ADDRESSES, "cloud metadata"),
        (address.is_loopback, "loopback"),
        (address.is_unspecified, "unspecified"),
        (address.is_link_local, "link-local"),
        (address.is_multicast, "multicast"),
        (address.is_private, "private"),
        (address.is_reserved, "reserved"),
        (not address.is_global, "non-public"),
    )
    for blocked, reason in checks:
        if blocked:
            return reason
    return None


NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address leads to: IPv4-mapped (::ffff:a.b.c.d), 6to4
    (2002:AABB:CCDD::/48), NAT64 (64:ff9b::a.b.c.d); None for a native IPv6 address."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in NAT64_PREFIX:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _allowed_by_list(host: str, address, allowlist: Iterable[str]) -> bool:
    for entry in allowlist:
        try:
            if address in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            if entry.lower().rstrip(".") == host.lower().rstrip("."):
                return True
    return False


def vet_url(url: str, policy: FetchPolicy) -> tuple[str, str, int, str]:
    """Checks a URL and resolves its host to an address that may be contacted.

    Args:
      url: the absolute URL.
      policy: the fetch limits and allow-list.

    Returns:
      (scheme, host, port, vetted IP address).

    Raises:
      UrlFetchError: bad scheme or URL, unresolvable host, or a forbidden address.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise UrlFetchError("the URL is malformed") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UrlFetchError(f"only http and https URLs are accepted, not {scheme or 'a relative URL'!r}")
    host = parts.hostname
    if not host:
        raise UrlFetchError("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise UrlFetchError("URLs with a user name or password are not accepted")
    port = port or (443 if scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError, OSError):
        raise UrlFetchError(f"the host {host!r} cannot be resolved") from None
    addresses = []
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        reason = blocked_reason(address)
        if reason and not _allowed_by_list(host, address, policy.allowlist):
            raise UrlFetchError(  # the address itself is not shown: it maps the internal network
                f"the host {host!r} resolves to a {reason} address; only public addresses may be fetched"
            )
        addresses.append(address)
    if not addresses:
        raise UrlFetchError(f"the host {host!r} has no address")
    return scheme, host, port, str(addresses[0])


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP connection to a vetted IP, sending the URL's host name in `Host`."""

    def __init__(self, host: str, port: int, ip: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._ip = ip

    def connect(self) -> None:  # noqa: D102
        self.sock = socket.create_connection((self._ip, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS connection to a vetted IP; TLS SNI and certificate check use the host name."""

    def __init__(self, host: str, port: int, ip: str, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._ip = ip

    def connect(self) -> None:  # noqa: D102
        self.sock = socket.create_connection((self._ip, self.port), self.timeout)  # the watchdog's during TLS
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self.host)


def fetch_image(url: str, policy: FetchPolicy) -> FetchedImage:
    """Downloads an image from `url` under `policy`.

    Args:
      url: the user's URL.
      policy: allow-list, deadline, size cap and redirect limit.

    Returns:
      The body, the final URL (after redirects) and its content type.

    Raises:
      UrlFetchError: for any refused, failed, oversized, slow or non-image fetch.
    """
    watchdog = _Watchdog(time.monotonic() + policy.timeout_s)
    try:
        return _fetch(url.strip(), policy, watchdog)
    finally:
        watchdog.cancel()


def _fetch(current: str, policy: FetchPolicy, watchdog: _Watchdog) -> FetchedImage:
    deadline = watchdog.deadline
    too_slow = f"fetching the image took longer than {policy.timeout_s:g} s"
    for _ in range(policy.max_redirects + 1):
        scheme, host, port, ip = vet_url(current, policy)
        target = _request_target(urlsplit(current))
        connection_class = _PinnedHTTPSConnection if scheme == "https" else _PinnedHTTPConnection
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise UrlFetchError(too_slow)
        connection = connection_class(host, port, ip, timeout=remaining)
        try:
            watchdog.watch(connection)
            connection.connect()
            connection.request(
                "GET", target, headers={"User-Agent": USER_AGENT, "Accept": "image/*"}
            )
            response = connection.getresponse()
            if watchdog.expired:  # the headers were cut at the deadline, not complete
                raise UrlFetchError(too_slow)
            if response.status in REDIRECT_STATUSES:
                location = response.getheader("Location")
                if not location:
                    raise UrlFetchError(f"the server answered a redirect ({response.status}) without a location")
                current = urljoin(current, location)
                continue
            if response.status != 200:
                raise UrlFetchError(f"the server answered HTTP {response.status} {response.reason}")
            content_type = (response.getheader("Content-Type") or "").split(";")[0].strip().lower()
            if not content_type.startswith("image/"):
                raise UrlFetchError(
                    f"the URL does not point to an image (content type {content_type or 'missing'!r})"
                )
            declared = response.getheader("Content-Length")
            if declared and declared.isdigit() and int(declared) > policy.max_bytes:
                raise UrlFetchError(_too_large(policy))
            data = _read_capped(response, policy)
            if watchdog.expired:  # the watchdog's shutdown reads as the end of the body
                raise UrlFetchError(too_slow)
            return FetchedImage(data=data, final_url=current, content_type=content_type)
        except (TimeoutError, socket.timeout):
            raise UrlFetchError(too_slow) from None
        except UrlFetchError:
            if watchdog.expired:  # whatever the cut-off answer looked like, it was too slow
                raise UrlFetchError(too_slow) from None
            raise
        except Exception as error:
            if watchdog.expired or time.monotonic() >= deadline:
                raise UrlFetchError(too_slow) from None
            raise _failure(error, host) from None
        finally:
            connection.close()
    raise UrlFetchError(f"too many redirects (more than {policy.max_redirects})")


def _request_target(parts) -> str:
    """The path and query to send, percent-encoded as UTF-8 (a URL may hold any
    character; the request line only ASCII). Existing %-escapes are kept."""
    safe = "/%:@!$&'()*+,;=-._~"
    path = quote(parts.path or "/", safe=safe, encoding="utf-8", errors="strict")
    query = quote(parts.query, safe=safe + "?", encoding="utf-8", errors="strict")
    return path + (f"?{query}" if query else "")


def _failure(error: Exception, host: str) -> UrlFetchError:
    """The user's message for a failed fetch (never a server error page)."""
    if isinstance(error, ssl.SSLError):
        return UrlFetchError(f"secure connection to {host!r} failed ({error.reason})")
    return UrlFetchError(f"could not fetch the image from {host!r} ({type(error).__name__})")


def _read_capped(response: http.client.HTTPResponse, policy: FetchPolicy) -> bytes:
    chunks, size = [], 0
    while True:
        chunk = response.read1(65536) if hasattr(response, "read1") else response.read(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > policy.max_bytes:
            raise UrlFetchError(_too_large(policy))
        chunks.append(chunk)


def _too_large(policy: FetchPolicy) -> str:
    return f"the image is larger than the limit of {policy.max_bytes / 1024 / 1024:.1f} MiB"
