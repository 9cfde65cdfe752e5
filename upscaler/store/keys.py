"""Validation shared by every store: object keys, bucket names, user metadata and content types.

Each check raises :class:`upscaler.errors.InvalidInput` with a message saying what is wrong, so a bad name from a
request becomes a 400 before any store is touched.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Mapping

from upscaler.errors import InvalidInput

#: Longest key, in bytes of UTF-8 (S3's limit).
MAX_KEY_BYTES = 1024
#: Substring reserved for the stores' own objects and files (metadata sidecars, temporary and lock files). No key
#: may contain it, so a store's internal names can never collide with a key, and listings can skip them.
RESERVED = ".upscaler-"
#: Longest content type accepted (it travels as an HTTP header and in metadata records).
MAX_CONTENT_TYPE = 255

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_BUCKET_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_BUCKET_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")


def _is_text(value: str) -> bool:
    """True when ``value`` encodes to UTF-8 (no lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def validate_key(key: object) -> str:
    """Return ``key`` when it is a safe object key; raise :class:`InvalidInput` saying why not otherwise.

    A key is 1 to 1024 bytes of UTF-8, relative (no leading ``/``), names an object rather than a folder (no
    trailing ``/``), has no empty, ``.`` or ``..`` segment, no backslash, no control character, does not
    contain the reserved marker ``.upscaler-``, and is in Unicode normalisation form NFC: ``café`` typed as ``e`` +
    U+0301 (NFD, as macOS file names come) is refused rather than stored as a second object beside the composed
    ``café`` (S3 tells the two apart, a local store on APFS would not: refusing keeps every store the same).
    """
    if not isinstance(key, str) or not key:
        raise InvalidInput("key must be a non-empty string")
    if not _is_text(key):
        raise InvalidInput("key must be valid Unicode (no lone surrogates)")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise InvalidInput(f"key must be at most {MAX_KEY_BYTES} bytes of UTF-8")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        raise InvalidInput("key must not contain control characters")
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
    composed = unicodedata.normalize("NFC", key)
    if composed != key:
        raise InvalidInput(
            f"key must be in Unicode normalisation form NFC (composed characters, here {composed!r}): "
            "the same name written another way would otherwise be another object"
        )
    return key


def validate_bucket(bucket: object) -> str:
    """Return ``bucket`` when it follows S3's naming rules; raise :class:`InvalidInput` otherwise.

    3 to 63 characters of lowercase letters, digits, dots and hyphens, starting and ending with a letter or digit,
    no ``..`` (nor ``.-`` / ``-.``), not an IP address, and none of the prefixes and suffixes S3 reserves.
    """
    if not isinstance(bucket, str) or not _BUCKET.fullmatch(bucket):
        raise InvalidInput(
            "bucket must be 3-63 characters of lowercase letters, digits, dots and hyphens, "
            "starting and ending with a letter or digit"
        )
    if ".." in bucket or ".-" in bucket or "-." in bucket:
        raise InvalidInput("bucket must not contain '..', '.-' or '-.'")
    if bucket.startswith(_BUCKET_PREFIXES) or bucket.endswith(_BUCKET_SUFFIXES):
        raise InvalidInput(f"bucket {bucket!r} uses a prefix or suffix that S3 reserves")
    try:
        ipaddress.IPv4Address(bucket)
    except ValueError:
        return bucket
    raise InvalidInput("bucket must not be formatted as an IP address")


def validate_metadata(metadata: object) -> dict[str, str]:
    """Return a plain copy of ``metadata`` when it maps non-empty strings to strings; raise otherwise.

    Any size and any Unicode is accepted: the stores encode it themselves.
    """
    if not isinstance(metadata, Mapping):
        raise InvalidInput("metadata must be a mapping of strings to strings")
    out: dict[str, str] = {}
    for name, value in metadata.items():
        if not isinstance(name, str) or not name or not isinstance(value, str):
            raise InvalidInput("metadata must map non-empty strings to strings")
        if not _is_text(name) or not _is_text(value):
            raise InvalidInput(f"metadata {name!r} must be valid Unicode (no lone surrogates)")
        out[name] = value
    return out


def validate_content_type(content_type: object) -> str:
    """Return ``content_type`` when it is a non-empty line of printable ASCII of at most 255 characters."""
    if (
        not isinstance(content_type, str)
        or not content_type
        or len(content_type) > MAX_CONTENT_TYPE
        or any(not 0x20 <= ord(c) < 0x7F for c in content_type)
        or content_type != content_type.strip()
    ):
        raise InvalidInput(f"content type must be 1-{MAX_CONTENT_TYPE} printable ASCII characters")
    return content_type
