"""The image-URL guard: schemes, address checks after DNS and on every redirect, limits.

Uses a real HTTP server on loopback; loopback is reachable only through the allow-list,
exactly as a test deployment would configure it.
"""

from __future__ import annotations

import ipaddress
import socket
import time

import pytest
from serving_fixtures import LocalHttpServer, redirect_to, send_body

from histopath.serving.webapp.predictions import url_fetch
from histopath.serving.webapp.predictions.url_fetch import FetchPolicy, UrlFetchError, fetch_image

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de"
    "0000000c4944415408d763f8cfc0000003010100c9fe92ef0000000049454e44ae426082"
)
LOOPBACK_ALLOWED = FetchPolicy(allowlist=("127.0.0.1/32",), timeout_s=5, max_bytes=4096)


@pytest.mark.parametrize(
    "address, reason",
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("169.254.169.254", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("240.0.0.1", "private"),  # reserved (Python reports it as private first)
        ("100.64.0.1", "non-public"),  # carrier-grade NAT
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("2002:a00:1::1", "private"),  # 6to4 of 10.0.0.1
        ("2002:a9fe:a9fe::", "cloud metadata"),  # 6to4 of 169.254.169.254
        ("2002:808:808::", None),  # 6to4 of 8.8.8.8: public
        ("64:ff9b::7f00:1", "loopback"),  # NAT64 of 127.0.0.1
        ("fec0::1", "site-local"),
        ("feff::1", "site-local"),
    ],
)
def test_blocked_reason_classifies_addresses(address, reason):
    assert url_fetch.blocked_reason(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize(
    "url, message",
    [
        ("file:///etc/passwd", "only http and https"),
        ("ftp://example.org/a.png", "only http and https"),
        ("gopher://127.0.0.1:70/", "only http and https"),
        ("/relative/path.png", "only http and https"),
        ("http:///no-host.png", "no host"),
        ("http://user:secret@example.org/a.png", "user name or password"),
        ("http://example.org:99999/a.png", "malformed"),
        ("http://does-not-exist.invalid/a.png", "cannot be resolved"),
    ],
)
def test_rejects_bad_urls(url, message):
    with pytest.raises(UrlFetchError, match=message):
        fetch_image(url, FetchPolicy())


def test_loopback_is_refused_without_allow_list_even_by_host_name():
    with LocalHttpServer({"/a.png": send_body(PNG, "image/png")}) as server:
        for url in (f"{server.url}/a.png", f"http://localhost:{server.port}/a.png"):
            with pytest.raises(UrlFetchError, match="loopback address"):
                fetch_image(url, FetchPolicy())
        assert server.hits == []  # refused before connecting


def test_allow_listed_server_is_fetched():
    with LocalHttpServer({"/a.png": send_body(PNG, "image/png")}) as server:
        fetched = fetch_image(f"{server.url}/a.png?x=1", LOOPBACK_ALLOWED)
    assert fetched.data == PNG
    assert fetched.content_type == "image/png"
    assert server.hits == ["/a.png?x=1"]


def test_allow_list_by_host_name():
    policy = FetchPolicy(allowlist=("localhost",), timeout_s=5)
    with LocalHttpServer({"/a.png": send_body(PNG, "image/png")}) as server:
        assert fetch_image(f"http://localhost:{server.port}/a.png", policy).data == PNG


def test_redirect_within_allowed_server_is_followed():
    with LocalHttpServer({"/start": redirect_to("/a.png"), "/a.png": send_body(PNG, "image/png")}) as server:
        fetched = fetch_image(f"{server.url}/start", LOOPBACK_ALLOWED)
    assert fetched.data == PNG
    assert fetched.final_url.endswith("/a.png")


@pytest.mark.parametrize(
    "target, reason",
    [
        ("http://10.0.0.7/secret.png", "private"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://192.168.0.1/a.png", "private"),
        ("http://[::1]:{port}/a.png", "loopback"),  # loopback, but not the allow-listed IPv4
        ("file:///etc/passwd", "only http and https"),
    ],
)
def test_redirect_from_allowed_server_to_internal_address_is_refused(target, reason):
    routes = {"/a.png": send_body(PNG, "image/png")}
    with LocalHttpServer(routes) as server:
        routes["/go"] = redirect_to(target.format(port=server.port), status=307)
        with pytest.raises(UrlFetchError, match=reason):
            fetch_image(f"{server.url}/go", LOOPBACK_ALLOWED)
        assert server.hits == ["/go"]


def test_redirect_loop_stops():
    with LocalHttpServer({"/loop": redirect_to("/loop")}) as server:
        with pytest.raises(UrlFetchError, match="too many redirects"):
            fetch_image(f"{server.url}/loop", LOOPBACK_ALLOWED)
        assert len(server.hits) == LOOPBACK_ALLOWED.max_redirects + 1


def test_non_image_content_type_is_refused():
    with LocalHttpServer({"/page": send_body(b"<html></html>", "text/html")}) as server:
        with pytest.raises(UrlFetchError, match="does not point to an image"):
            fetch_image(f"{server.url}/page", LOOPBACK_ALLOWED)


def test_http_error_status_is_reported():
    with LocalHttpServer({}) as server:
        with pytest.raises(UrlFetchError, match="HTTP 404"):
            fetch_image(f"{server.url}/missing.png", LOOPBACK_ALLOWED)


@pytest.mark.parametrize("declare_length", [True, False])
def test_oversized_body_is_cut_off(declare_length):
    big = PNG + b"\0" * 100_000
    with LocalHttpServer({"/big.png": send_body(big, "image/png", length=declare_length)}) as server:
        with pytest.raises(UrlFetchError, match="larger than the limit"):
            fetch_image(f"{server.url}/big.png", LOOPBACK_ALLOWED)


def _assert_fetch_ends_at_deadline(route, timeout_s: float, match: str) -> None:
    """Fetching from a server answering with `route` fails with `match` well before 2.5 s."""
    policy = FetchPolicy(allowlist=("127.0.0.1",), timeout_s=timeout_s)
    with LocalHttpServer({"/answer.png": route}) as server:
        started = time.monotonic()
        with pytest.raises(UrlFetchError, match=match):
            fetch_image(f"{server.url}/answer.png", policy)
        assert time.monotonic() - started < 2.5


def test_slow_server_times_out():
    def slow(request):
        time.sleep(3)
        send_body(PNG, "image/png")(request)

    _assert_fetch_ends_at_deadline(slow, timeout_s=0.5, match="longer than")


SLOW_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nX-Padding: " + b"a" * 100 + b"\r\n\r\n"


@pytest.mark.parametrize("head_interval, body_interval", [(0.2, 0.0), (0.0, 0.2)], ids=["headers", "body"])
def test_one_deadline_covers_headers_and_body(head_interval, body_interval):
    """A server dribbling its headers (or body) byte by byte: each read is quick, the whole
    answer is not; the fetch ends at its deadline."""
    from serving_fixtures import dribble

    head_route = dribble(SLOW_HEAD, interval_s=head_interval) if head_interval else None

    def route(request):
        if head_route:
            head_route(request)
            return
        request.wfile.write(SLOW_HEAD.replace(b"X-Padding", b"Content-Length: 200\r\nX-Padding"))
        request.wfile.flush()
        dribble(b"", PNG * 20, body_interval)(request)

    _assert_fetch_ends_at_deadline(route, timeout_s=1.5, match="longer than 1.5 s")


def test_fetch_slots_refuse_beyond_the_limit():
    from histopath.serving.webapp.predictions.url_fetch import FetchSlots

    slots = FetchSlots(2)
    with slots.slot(), slots.slot():
        with pytest.raises(UrlFetchError, match="2 image URLs are being fetched"):
            with slots.slot():
                pass
    with slots.slot():  # released again
        pass


def test_connects_to_the_vetted_address_without_resolving_again(monkeypatch):
    """DNS rebinding: the first answer is vetted and used; a second lookup never happens."""
    real_getaddrinfo = socket.getaddrinfo
    lookups = []

    def rebinding_getaddrinfo(host, port, *args, **kwargs):
        if host == "images.example.test":
            lookups.append(host)
            address = "127.0.0.1" if len(lookups) == 1 else "10.9.9.9"
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]
        return real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(url_fetch.socket, "getaddrinfo", rebinding_getaddrinfo)
    with LocalHttpServer({"/a.png": send_body(PNG, "image/png")}) as server:
        fetched = fetch_image(f"http://images.example.test:{server.port}/a.png", LOOPBACK_ALLOWED)
    assert fetched.data == PNG
    assert lookups == ["images.example.test"]


def test_host_resolving_to_mixed_addresses_is_refused(monkeypatch):
    def mixed(host, port, *args, **kwargs):
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.1", port)),
        ]

    monkeypatch.setattr(url_fetch.socket, "getaddrinfo", mixed)
    with pytest.raises(UrlFetchError, match="private address"):
        fetch_image("http://mixed.example.test/a.png", FetchPolicy())


def test_refusal_does_not_show_the_internal_address(monkeypatch):
    """The user learns the address is internal, not which address the name maps to."""
    def internal(host, port, *args, **kwargs):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.20.30.40", port)),
                (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2002:a14:1e28::", port, 0, 0))]

    monkeypatch.setattr(url_fetch.socket, "getaddrinfo", internal)
    with pytest.raises(UrlFetchError) as refused:
        fetch_image("http://intranet.example.test/a.png", FetchPolicy())
    assert "private address" in str(refused.value)
    assert "10.20.30.40" not in str(refused.value) and "2002:" not in str(refused.value)


def test_non_ascii_path_is_sent_percent_encoded():
    with LocalHttpServer({"/caf%C3%A9/%C3%BCber.png": send_body(PNG, "image/png")}) as server:
        fetched = fetch_image(f"{server.url}/café/über.png?näme=1", LOOPBACK_ALLOWED)
    assert fetched.data == PNG
    assert server.hits == ["/caf%C3%A9/%C3%BCber.png?n%C3%A4me=1"]


def test_headers_cut_at_the_deadline_are_reported_as_too_slow():
    """The status line at once, the headers one byte at a time: the user is told it took
    too long, not that the answer was no image."""
    from serving_fixtures import dribble

    def route(request):
        request.wfile.write(b"HTTP/1.1 200 OK\r\n")
        request.wfile.flush()
        dribble(b"X-Padding: " + b"a" * 100 + b"\r\nContent-Type: image/png\r\n\r\n", interval_s=0.05)(request)

    _assert_fetch_ends_at_deadline(route, timeout_s=1.0, match="longer than 1 s")
