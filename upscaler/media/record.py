"""The image record: what the original file was, and how the small copy was stored.

It travels with the stored bytes as object metadata, a flat ``str -> str`` map (:meth:`ImageRecord.to_metadata`):
one key per field, binary fields in base64, structured ones in JSON, ``None`` left out, plus ``record_version``.
Readers ignore keys they do not know, so a newer writer's records still load; records of version 1 (one JSON
``record`` key) still load too.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
import types
from dataclasses import dataclass
from typing import Any, Union, get_args, get_origin, get_type_hints

from upscaler.errors import UndecodableImage
from upscaler.media.formats import FORMATS

RECORD_VERSION = 2
#: The metadata entry every record carries: an object that has it was stored by this service (a downscaled form).
RECORD_MARKER = "record_version"


class InvalidRecord(UndecodableImage):
    """The metadata stored with an object is missing or malformed: the original cannot be restored from it."""

    code = "invalid_record"


@dataclass
class ImageRecord:
    """Everything needed to give back the original file (size, format, mode, colour, metadata, encoder hints)."""

    width: int
    height: int
    #: Pillow format name: JPEG, PNG, WEBP, AVIF, GIF, BMP, TIFF.
    format: str
    #: Pillow mode of the original, or ``RGB;16`` / ``RGBA;16`` / ``LA;16`` for 16-bit colour (kept as uint16 arrays).
    mode: str
    bit_depth: int = 8
    has_alpha: bool = False
    icc_profile: bytes | None = None
    #: The EXIF block exactly as the file held it (orientation included: pixels are never rotated).
    exif: bytes | None = None
    xmp: bytes | None = None
    #: EXIF orientation (1-8), for information; restoration keeps the EXIF block itself.
    orientation: int = 1
    original_bytes: int = 0
    #: SHA-256 of the original file's bytes (hex).
    sha256: str = ""
    dpi: tuple[float, float] | None = None
    #: Images in the file (a JPEG with MPF extras, a multi-page TIFF); only the first is kept.
    frames: int = 1
    #: What was not kept exactly, in words ("" when everything was).
    note: str = ""
    # -- JPEG
    jpeg_quality: int | None = None
    #: Pillow's subsampling code: 0 = 4:4:4, 1 = 4:2:2, 2 = 4:2:0.
    jpeg_subsampling: int | None = None
    #: The original quantization tables (natural order), reused when restoring to JPEG.
    jpeg_qtables: list[list[int]] | None = None
    progressive: bool = False
    comment: bytes | None = None
    # -- palette images (P), and colour-key transparency of L/RGB PNGs
    palette: bytes | None = None
    palette_colors: int | None = None
    #: P: the transparent index; L: the transparent grey; RGB: the transparent (r, g, b).
    transparency: int | tuple[int, ...] | None = None
    #: P with per-entry alpha (PNG tRNS with several entries): alpha of each palette entry.
    palette_alpha: bytes | None = None
    # -- PNG: ancillary chunks copied verbatim on restore (gAMA, cHRM, sRGB, cICP, pHYs, text, tIME...)
    png_chunks: bytes | None = None
    # -- WebP / TIFF
    webp_lossless: bool = False
    tiff_compression: str | None = None
    # -- filled by the store path
    scale: float = 1.0
    stored_codec: str = ""
    stored_quality: int = 0
    stored_width: int = 0
    stored_height: int = 0
    stored_bytes: int = 0
    model: str = ""
    #: The quality target the stored form was chosen for ("psnr>=35"), "" when none was asked.
    target: str = ""
    #: The fidelity measured at ingest after a real retrieval (PSNR-Y dB or SSIM-Y; None: exact or not measured).
    fidelity: float | None = None

    # ---- serialisation ---------------------------------------------------------------------------------------
    def to_metadata(self) -> dict[str, str]:
        """A flat ``str -> str`` map that :meth:`from_metadata` turns back into an equal record."""
        out = {RECORD_MARKER: str(RECORD_VERSION)}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = _dump(_KINDS[f.name], value)
        return out

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> ImageRecord:
        """Parse :meth:`to_metadata`'s map; :class:`InvalidRecord` when it is missing or malformed."""
        if not isinstance(metadata, dict) or RECORD_MARKER not in metadata:
            raise InvalidRecord("the stored object has no image record (was it written by this service?)")
        version = str(metadata[RECORD_MARKER])
        if version == "1":
            return _from_v1(metadata)
        values: dict[str, Any] = {}
        for name, kind in _KINDS.items():
            raw = metadata.get(name)
            if raw is None:
                continue
            if not isinstance(raw, str):
                raise InvalidRecord(f"image record field {name!r} is not a string")
            try:
                values[name] = _load(kind, raw)
            except (ValueError, TypeError, binascii.Error) as exc:
                raise InvalidRecord(f"image record field {name!r} is malformed: {exc}") from None
        return _build(values)

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary: binary blocks are given as their sizes."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = len(value) if isinstance(value, bytes) else value
        return out


# ---- field codecs -------------------------------------------------------------------------------------------------


def _kind(hint: Any) -> str:
    if get_origin(hint) in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        hint = args[0] if len(args) == 1 else object
    for simple in (bool, int, float, str, bytes):
        if hint is simple:
            return simple.__name__
    return "json"


_KINDS: dict[str, str] = {name: _kind(hint) for name, hint in get_type_hints(ImageRecord).items()}
_REQUIRED = ("width", "height", "format", "mode")


def _dump(kind: str, value: Any) -> str:
    if kind == "bytes":
        return base64.b64encode(value).decode("ascii")
    if kind == "bool":
        return "1" if value else "0"
    if kind == "float":
        return repr(float(value))
    if kind == "json":
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _load(kind: str, raw: str) -> Any:
    if kind == "bytes":
        return base64.b64decode(raw.encode("ascii"), validate=True)
    if kind == "bool":
        if raw not in ("0", "1"):
            raise ValueError(f"expected 0 or 1, got {raw!r}")
        return raw == "1"
    if kind == "int":
        return int(raw)
    if kind == "float":
        value = float(raw)
        if not math.isfinite(value):
            raise ValueError(f"not a finite number: {raw!r}")
        return value
    if kind == "json":
        return json.loads(raw)
    return raw


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _build(values: dict[str, Any]) -> ImageRecord:
    """Check the parsed values and make the record (JSON lists become the tuples the record holds)."""
    missing = [name for name in _REQUIRED if name not in values]
    if missing:
        raise InvalidRecord(f"image record lacks {', '.join(missing)}")
    if not (_is_int(values["width"]) and _is_int(values["height"])) or not isinstance(values["mode"], str):
        raise InvalidRecord("image record has a malformed size or mode")
    if values["width"] < 1 or values["height"] < 1:
        raise InvalidRecord(f"image record has an empty size ({values['width']}x{values['height']})")
    if values["format"] not in FORMATS:
        raise InvalidRecord(f"image record names an unknown format {values['format']!r}")
    dpi = values.get("dpi")
    if dpi is not None:
        if not (isinstance(dpi, list) and len(dpi) == 2 and all(isinstance(v, int | float) for v in dpi)):
            raise InvalidRecord(f"image record field 'dpi' is malformed: {dpi!r}")
        values["dpi"] = (float(dpi[0]), float(dpi[1]))
    key = values.get("transparency")
    if isinstance(key, list) and key and all(_is_int(v) for v in key):
        values["transparency"] = tuple(key)
    elif key is not None and not _is_int(key):
        raise InvalidRecord(f"image record field 'transparency' is malformed: {key!r}")
    tables = values.get("jpeg_qtables")
    if tables is not None and not (
        isinstance(tables, list)
        and all(isinstance(t, list) and len(t) == 64 and all(_is_int(v) for v in t) for t in tables)
    ):
        raise InvalidRecord("image record field 'jpeg_qtables' is malformed")
    try:
        return ImageRecord(**values)
    except TypeError as exc:
        raise InvalidRecord(f"image record is malformed: {exc}") from None


def _from_v1(metadata: dict[str, str]) -> ImageRecord:
    """Records written before the flat map: one JSON object under ``record``, binary fields in base64."""
    try:
        fields = json.loads(metadata["record"])
        if not isinstance(fields, dict):
            raise ValueError("not an object")
        values = {k: v for k, v in fields.items() if k in _KINDS}
        for name, kind in _KINDS.items():
            if kind == "bytes" and isinstance(values.get(name), str):
                values[name] = base64.b64decode(values[name], validate=True)
    except (KeyError, ValueError, TypeError, binascii.Error) as exc:
        raise InvalidRecord(f"image record (version 1) is malformed: {exc}") from None
    return _build(values)
