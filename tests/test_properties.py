"""Property tests (hypothesis): object keys, API keys and image headers from arbitrary input never crash the
service's checks; they are accepted or refused with the service's own error, and refusals say why."""

from __future__ import annotations

import io
import json
import struct
import unicodedata
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from upscaler import media
from upscaler.auth import KeyRing, hash_token
from upscaler.errors import InvalidInput, TooLarge, Unauthorized, UpscalerError
from upscaler.store.keys import validate_bucket, validate_key

LIMITS = media.DecodeLimits(max_bytes=2 * 1024 * 1024, max_megapixels=4)
SIGNATURES = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"RIFF\x00\x00\x00\x00WEBP", b"BM", b"II*\x00"]


@given(st.text(max_size=300))
def test_object_keys_are_accepted_or_refused_with_a_reason(key: str) -> None:
    try:
        validate_key(key)
    except InvalidInput as exc:
        assert exc.status == 400 and exc.message
        return
    parts = key.split("/")
    assert key and not key.startswith("/") and "\\" not in key and all(p not in ("", ".", "..") for p in parts)
    assert all(ord(c) >= 0x20 and ord(c) != 0x7F for c in key) and ".upscaler-" not in key
    assert unicodedata.normalize("NFC", key) == key


@given(st.text(max_size=80))
def test_bucket_names_are_accepted_or_refused_with_a_reason(name: str) -> None:
    try:
        validate_bucket(name)
    except InvalidInput as exc:
        assert exc.status == 400
        return
    assert 3 <= len(name) <= 63 and name == name.lower()


@given(st.one_of(st.none(), st.text(max_size=100)))
def test_presented_api_keys_never_crash_authentication(token: str | None) -> None:
    digest = hash_token("upk_the-real-one")
    ring = KeyRing(inline=json.dumps({"keys": [{"name": "k", "sha256": digest, "grants": []}]}))
    if token == "upk_the-real-one":
        assert ring.authenticate(token).name == "k"
        return
    with pytest.raises(Unauthorized):
        ring.authenticate(token)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SIGNATURES), st.binary(max_size=600))
def test_image_headers_with_arbitrary_tails_are_refused_cleanly(signature: bytes, tail: bytes) -> None:
    try:
        decoded = media.decode(signature + tail, LIMITS)
    except UpscalerError as exc:
        assert exc.status in (413, 415, 422) and exc.message
        return
    assert decoded.record.width > 0  # rarely, random bytes after a signature are a valid tiny image


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 2**31 - 1), st.integers(1, 2**31 - 1))
def test_declared_sizes_over_the_limit_are_refused_before_decoding(width: int, height: int) -> None:
    data = _png_header(width, height) + b"\x00\x00\x00\x00IEND\xaeB`\x82"
    with pytest.raises(UpscalerError) as refused:
        media.decode(data, LIMITS)
    # over the limit: 413 from the header alone; under it: 422, since there are no pixels to decode
    assert refused.value.status == (413 if width * height > 4e6 else 422)
    assert isinstance(refused.value, TooLarge) == (width * height > 4e6)


def test_a_real_image_still_decodes() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, "PNG")
    assert media.decode(buf.getvalue(), LIMITS).record.width == 8
