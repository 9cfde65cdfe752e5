"""API keys: who may call the service, and on which buckets and key prefixes, for reading or writing.

Keys live in a JSON file (``UPSCALER_API_KEYS_FILE``) and/or an environment variable holding the same JSON
(``UPSCALER_API_KEYS``, for a Kubernetes secret), only as SHA-256 hashes:

    {"keys": [{"name": "archive-team", "sha256": "<hex>",
               "grants": [{"bucket": "media", "prefix": "archive/", "access": ["read", "write"]},
                          {"bucket": "*", "access": ["read"]}]}]}

A key is a random 256-bit token (``upscaler keys new`` makes one and prints it once), so one SHA-256 is the right
hash: there is nothing to brute-force. A presented token is hashed and compared with every entry in constant time.
The file is read again when it changes (checked at most every ``reload_seconds``), so keys rotate without a restart:
add the new key, move the clients, remove the old one.

With no key configured at all, every request acts as :data:`ANONYMOUS` (full access): the embedded default for one
machine, which ``upscaler serve`` allows on a loopback address only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from upscaler.errors import Forbidden, Unauthorized

ACCESS = ("read", "write")


@dataclass(frozen=True)
class Grant:
    bucket: str  # a bucket name, or "*" for any
    prefix: str  # keys starting with this ("" = every key)
    access: frozenset[str]

    def allows(self, access: str, bucket: str, key: str | None) -> bool:
        if access not in self.access or self.bucket not in ("*", bucket):
            return False
        if key is None:
            return not self.prefix  # a bucket-wide operation needs a bucket-wide grant
        return key.startswith(self.prefix)


@dataclass(frozen=True)
class Principal:
    name: str
    grants: tuple[Grant, ...]

    def allows(self, access: str, bucket: str, key: str | None = None) -> bool:
        return any(g.allows(access, bucket, key) for g in self.grants)

    def check(self, access: str, bucket: str, key: str | None = None) -> None:
        """:class:`Forbidden` unless this principal may ``access`` (read/write) ``bucket``/``key``. With no key,
        the grant must cover the whole bucket."""
        if not self.allows(access, bucket, key):
            where = f"{bucket}/{key}" if key is not None else bucket
            raise Forbidden(f"key {self.name!r} may not {access} {where}")


ANONYMOUS = Principal("anonymous", (Grant("*", "", frozenset(ACCESS)),))


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh API key: 32 random bytes, URL-safe, with a recognisable prefix."""
    return "upk_" + secrets.token_urlsafe(32)


def parse_keys(text: str, source: str) -> list[tuple[str, Principal]]:
    """(sha256, principal) pairs from the JSON document; :class:`ValueError` naming ``source`` when malformed."""
    try:
        doc = json.loads(text) if text.strip() else {"keys": []}
        entries = doc["keys"] if isinstance(doc, dict) else doc
        out = []
        for entry in entries:
            digest = str(entry["sha256"]).lower()
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError(f"key {entry.get('name')!r}: sha256 must be 64 hex digits")
            grants = []
            for g in entry.get("grants", []):
                access = frozenset(g.get("access", ACCESS))
                if not access <= set(ACCESS):
                    raise ValueError(f"key {entry.get('name')!r}: access must be among {ACCESS}")
                grants.append(Grant(str(g.get("bucket", "*")), str(g.get("prefix", "")), access))
            out.append((digest, Principal(str(entry.get("name", digest[:8])), tuple(grants))))
        return out
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"{source}: not a valid API key document: {exc}") from None


class KeyRing:
    """The configured keys; :meth:`authenticate` turns a presented token into a :class:`Principal`."""

    def __init__(self, path: str | os.PathLike[str] | None = None, inline: str = "", reload_seconds: float = 2.0):
        self.path = Path(path) if path else None
        self.inline = parse_keys(inline, "UPSCALER_API_KEYS") if inline else []
        self.reload_seconds = reload_seconds
        self._lock = threading.Lock()
        self._from_file: list[tuple[str, Principal]] = []
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._reload(force=True)

    @property
    def enabled(self) -> bool:
        return bool(self.path) or bool(self.inline)

    @property
    def count(self) -> int:
        """Keys configured now (an empty or blank document, inline or in the file, has none)."""
        self._reload()
        return len(self.inline) + len(self._from_file)

    def _reload(self, force: bool = False) -> None:
        if self.path is None:
            return
        now = time.monotonic()
        if not force and now - self._checked < self.reload_seconds:
            return
        with self._lock:
            self._checked = now
            try:
                st = self.path.stat()
            except FileNotFoundError:
                if force:
                    raise ValueError(f"API key file {self.path} does not exist") from None
                self._from_file, self._stamp = [], None  # removed: no key from it is valid any more
                return
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                self._from_file = parse_keys(self.path.read_text(), str(self.path))
                self._stamp = stamp

    def authenticate(self, token: str | None) -> Principal:
        if not self.enabled:
            return ANONYMOUS
        if not token:
            raise Unauthorized("an API key is required (Authorization: Bearer <key>, or X-Api-Key)")
        self._reload()
        digest = hash_token(token)
        found: Principal | None = None
        for known, principal in [*self.inline, *self._from_file]:
            if hmac.compare_digest(digest, known):  # every entry is compared: the time says nothing
                found = found or principal
        if found is None:
            raise Unauthorized("the API key is not valid")
        return found


def add_key(path: Path, name: str, grants: list[dict[str, Any]]) -> str:
    """Create a key, store its hash in ``path`` (created if missing), and return the key itself."""
    token = new_token()
    doc = json.loads(path.read_text()) if path.exists() else {"keys": []}
    doc["keys"].append({"name": name, "sha256": hash_token(token), "grants": grants, "created": int(time.time())})
    parse_keys(json.dumps(doc), str(path))  # refuse to write a document the service would not read
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return token
