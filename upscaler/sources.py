"""Fetching a source image by URL or ``s3://`` for the /v1 API, without becoming an SSRF proxy.

An ``http(s)`` URL is fetched only when its host is on the allow-list (``UPSCALER_ALLOWED_SOURCE_HOSTS``: exact
names or ``*.example.com``) and every address it resolves to is public, unless private addresses are allowed by
``UPSCALER_ALLOW_PRIVATE_SOURCES``; the cloud metadata addresses are refused always. Redirects are followed by
hand (at most 3), each hop checked again. The body is read with a byte limit, all of it within one deadline.
``s3://bucket/key`` reads from the service's object store (bucket allow-list applies).
"""

from __future__ import annotations

import ipaddress
import socket
import time
from typing import Any
from urllib.parse import urljoin, urlsplit

from upscaler.config import Settings
from upscaler.errors import Forbidden, InvalidInput, NotFound, TooLarge, Unavailable

METADATA_ADDRESSES = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
MAX_REDIRECTS = 3


def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    host = host.lower().rstrip(".")
    for entry in allowed:
        entry = entry.lower().rstrip(".")
        if entry.startswith("*.") and (host.endswith(entry[1:]) and host != entry[2:]):
            return True
        if host == entry:
            return True
    return False


def check_address(address: str, allow_private: bool) -> None:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if getattr(ip, "ipv4_mapped", None):
        ip = ip.ipv4_mapped  # type: ignore[union-attr]
    if ip in METADATA_ADDRESSES:
        raise Forbidden("source URL resolves to a cloud metadata address")
    if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
        raise Forbidden(f"source URL resolves to a non-routable address ({ip})")
    if not allow_private and (ip.is_loopback or ip.is_private or ip.is_link_local):
        raise Forbidden(f"source URL resolves to a private address ({ip}); not allowed by this service")


def check_url(url: str, settings: Settings) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise InvalidInput("source URL must be http, https or s3")
    if not parts.hostname:
        raise InvalidInput("source URL has no host")
    if parts.username or parts.password:
        raise InvalidInput("source URL must not carry credentials")
    if not host_allowed(parts.hostname, settings.allowed_source_hosts):
        raise Forbidden(f"host {parts.hostname!r} is not in this service's source allow-list")
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    except socket.gaierror:
        raise InvalidInput(f"host {parts.hostname!r} cannot be resolved") from None
    for info in infos:
        check_address(str(info[4][0]), settings.allow_private_sources)


def fetch_url(url: str, settings: Settings, max_bytes: int) -> bytes:
    """GET ``url`` within the allow-lists, the byte limit and ``source_timeout`` seconds in all: redirects,
    connections and every read of the body included (a source sending a byte at a time is cut off too)."""
    import requests

    deadline = time.monotonic() + settings.source_timeout
    for _ in range(MAX_REDIRECTS + 1):
        check_url(url, settings)
        try:
            resp = requests.get(url, timeout=_remaining(deadline, settings), stream=True, allow_redirects=False)
        except requests.RequestException as exc:
            raise Unavailable(f"source URL could not be fetched: {type(exc).__name__}") from None
        with resp:
            if resp.is_redirect:
                url = urljoin(url, resp.headers.get("Location", ""))
                continue
            if resp.status_code == 404:
                raise NotFound("source URL answered 404")
            if resp.status_code >= 400:
                raise InvalidInput(f"source URL answered HTTP {resp.status_code}")
            declared = resp.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise TooLarge(f"source is {int(declared)} bytes, over the limit of {max_bytes}")
            return _read_body(resp, max_bytes, deadline, settings)
    raise InvalidInput(f"source URL redirected more than {MAX_REDIRECTS} times")


def _remaining(deadline: float, settings: Settings) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise Unavailable(f"source URL took more than {settings.source_timeout:g} s (UPSCALER_SOURCE_TIMEOUT)")
    return left


def _read_body(resp: Any, max_bytes: int, deadline: float, settings: Settings) -> bytes:
    """The body, read as it arrives (``read1``: what is there, not a full chunk) so the deadline is checked after
    every read; one stalled read is cut by the socket timeout, itself no more than what was left at the request."""
    import requests
    import urllib3

    chunks, total = [], 0
    try:
        while chunk := resp.raw.read1(64 * 1024, decode_content=True):
            total += len(chunk)
            if total > max_bytes:
                raise TooLarge(f"source is over the limit of {max_bytes} bytes")
            chunks.append(chunk)
            _remaining(deadline, settings)
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise Unavailable(f"source URL could not be read: {type(exc).__name__}") from None
    return b"".join(chunks)


def parse_s3_url(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or not parts.path.strip("/"):
        raise InvalidInput("s3 source must look like s3://bucket/key")
    return parts.netloc, parts.path.lstrip("/")
