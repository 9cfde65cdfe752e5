"""URL sources: host allow-list and address checks that keep /v1 from being an SSRF proxy."""

from __future__ import annotations

import http.server
import threading

import pytest

from tests.servers import free_port
from upscaler import sources
from upscaler.config import Settings
from upscaler.errors import Forbidden, InvalidInput, TooLarge


@pytest.mark.parametrize(
    ("host", "allowed", "ok"),
    [
        ("images.example.com", ("images.example.com",), True),
        ("a.cdn.example.com", ("*.cdn.example.com",), True),
        ("cdn.example.com", ("*.cdn.example.com",), False),
        ("evilcdn.example.com", ("*.cdn.example.com",), False),
        ("images.example.com.", ("images.example.com",), True),
        ("other.com", (), False),
    ],
)
def test_host_allowed(host: str, allowed: tuple[str, ...], ok: bool) -> None:
    assert sources.host_allowed(host, allowed) is ok


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "192.168.0.1",
        "172.16.0.1",
        "169.254.1.1",
        "::1",
        "fe80::1",
        "::ffff:127.0.0.1",
        "0.0.0.0",
        "224.0.0.1",
    ],
)
def test_private_and_special_addresses_refused(address: str) -> None:
    with pytest.raises(Forbidden):
        sources.check_address(address, allow_private=False)


def test_metadata_address_refused_even_when_private_allowed() -> None:
    for address in ("169.254.169.254", "fd00:ec2::254", "::ffff:169.254.169.254"):
        with pytest.raises(Forbidden, match="metadata"):
            sources.check_address(address, allow_private=True)
    sources.check_address("10.0.0.1", allow_private=True)
    sources.check_address("93.184.216.34", allow_private=False)


def test_url_shapes() -> None:
    settings = Settings.from_env({}, allowed_source_hosts=("localhost",))
    for url in ("ftp://localhost/x", "file:///etc/passwd", "http:///x", "http://user:pw@localhost/x"):
        with pytest.raises(InvalidInput):
            sources.check_url(url, settings)
    with pytest.raises(Forbidden):
        sources.check_url("http://localhost/x.png", settings)  # allowed host, but loopback
    assert sources.parse_s3_url("s3://bucket/a/b.png") == ("bucket", "a/b.png")
    with pytest.raises(InvalidInput):
        sources.parse_s3_url("s3://bucket/")


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.end_headers()
            return
        body = b"x" * (2048 if self.path == "/big" else 10)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_fetch_with_limits_and_redirect_checks() -> None:
    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        settings = Settings.from_env(
            {}, allowed_source_hosts=("127.0.0.1", "169.254.169.254"), allow_private_sources=True
        )
        assert sources.fetch_url(f"http://127.0.0.1:{port}/small", settings, 100) == b"x" * 10
        with pytest.raises(TooLarge):
            sources.fetch_url(f"http://127.0.0.1:{port}/big", settings, 1000)
        with pytest.raises(Forbidden, match="metadata"):
            sources.fetch_url(f"http://127.0.0.1:{port}/redirect", settings, 1000)
    finally:
        server.shutdown()
