"""Validation of object keys and bucket names, shared by every store."""

from __future__ import annotations

import ipaddress
import re

from upscaler.errors import InvalidInput

MAX_KEY_BYTES = 1024
#: Substring reserved for the stores' own files (metadata sidecars, temporary files); keys may not contain it.
RESERVED = ".upscaler-"
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def validate_key(key: object) -> str:
    """``key`` if it is a safe object key; :class:`InvalidInput` saying why not otherwise."""
    if not isinstance(key, str) or not key:
        raise InvalidInput("key must be a non-empty string")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise InvalidInput(f"key is longer than {MAX_KEY_BYTES} bytes")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        raise InvalidInput("key must not contain control characters")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in key):
        raise InvalidInput("key must be valid UTF-8")
    if "\\" in key:
        raise InvalidInput("key must not contain backslashes")
    if key.startswith("/"):
        raise InvalidInput("key must be relative (no leading '/')")
    if key.endswith("/"):
        raise InvalidInput("key must name an object, not a folder (no trailing '/')")
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise InvalidInput("key must not contain empty, '.' or '..' segments")
    if RESERVED in key:
        raise InvalidInput(f"key must not contain {RESERVED!r} (reserved for the store's own files)")
    return key


def validate_bucket(bucket: object) -> str:
    """``bucket`` if it follows S3's naming rules; :class:`InvalidInput` otherwise."""
    if not isinstance(bucket, str) or not _BUCKET.match(bucket):
        raise InvalidInput(
            "bucket must be 3-63 characters of lowercase letters, digits, dots and hyphens, "
            "starting and ending with a letter or digit"
        )
    if ".." in bucket or ".-" in bucket or "-." in bucket:
        raise InvalidInput("bucket must not contain '..', '.-' or '-.'")
    try:
        ipaddress.IPv4Address(bucket)
    except ValueError:
        return bucket
    raise InvalidInput("bucket must not look like an IP address")
