"""File formats: names, MIME types, extensions, and recognising a file from its first bytes.

JPEG XL is read and written through ``pillow-jxl-plugin`` (libjxl; BSD-3-Clause), registered with Pillow by
:func:`jxl_ready`. Its reader decodes the whole image as soon as a file is opened, so :func:`jxl_size` reads the
size from the codestream header first: the size limits apply before any pixel of a JPEG XL file is decoded.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from upscaler.errors import InvalidInput


class FormatInfo(NamedTuple):
    content_type: str
    extension: str


#: Pillow format name -> (MIME type, file extension): the formats accepted, and written on restore.
FORMATS: dict[str, FormatInfo] = {
    "JPEG": FormatInfo("image/jpeg", ".jpg"),
    "PNG": FormatInfo("image/png", ".png"),
    "WEBP": FormatInfo("image/webp", ".webp"),
    "AVIF": FormatInfo("image/avif", ".avif"),
    "GIF": FormatInfo("image/gif", ".gif"),
    "BMP": FormatInfo("image/bmp", ".bmp"),
    "TIFF": FormatInfo("image/tiff", ".tif"),
    "JXL": FormatInfo("image/jxl", ".jxl"),
}
_ALIASES = {"JPG": "JPEG", "TIF": "TIFF", "IMAGE/JPEG": "JPEG", "IMAGE/PNG": "PNG", "IMAGE/WEBP": "WEBP"}
_ALIASES.update({"IMAGE/AVIF": "AVIF", "IMAGE/GIF": "GIF", "IMAGE/BMP": "BMP", "IMAGE/TIFF": "TIFF"})
_ALIASES.update({"JPEGXL": "JXL", "JPEG-XL": "JXL", "IMAGE/JXL": "JXL"})

_AVIF_BRANDS = {b"avif", b"avis"}
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}
_BMP_HEADERS = {12, 16, 40, 52, 56, 64, 108, 124}


def normalize_format(name: str) -> str:
    """``"jpg"``, ``".png"``, ``"image/webp"`` ... -> the Pillow name (``JPEG``, ``PNG``, ``WEBP``)."""
    key = str(name).strip().upper().lstrip(".")
    key = _ALIASES.get(key, key)
    if key not in FORMATS:
        raise InvalidInput(f"format must be one of {', '.join(f.lower() for f in FORMATS)}, got {name!r}")
    return key


def content_type_for(fmt: str) -> str:
    return FORMATS[normalize_format(fmt)].content_type


def extension_for(fmt: str) -> str:
    return FORMATS[normalize_format(fmt)].extension


def _ftyp_brands(data: bytes) -> set[bytes]:
    """Major and compatible brands of an ISO-BMFF ``ftyp`` box at the start of ``data``."""
    if len(data) < 16 or data[4:8] != b"ftyp":
        return set()
    size = struct.unpack(">I", data[:4])[0]
    end = min(max(size, 16), len(data), 256)
    brands = {data[8:12]}
    brands.update(data[i : i + 4] for i in range(16, end - 3, 4))
    return brands


def sniff(data: bytes) -> str | None:
    """The format of ``data`` from its magic bytes: a key of :data:`FORMATS`, or None."""
    head = bytes(data[:256])
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if _ftyp_brands(head) & _AVIF_BRANDS:
        return "AVIF"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:2] == b"BM" and len(head) >= 18 and struct.unpack("<I", head[14:18])[0] in _BMP_HEADERS:
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head.startswith((JXL_CODESTREAM, JXL_CONTAINER)):
        return "JXL"
    return None


JXL_CODESTREAM = b"\xff\x0a"
JXL_CONTAINER = b"\x00\x00\x00\x0cJXL \r\n\x87\n"
_JXL_RATIOS = {1: (1, 1), 2: (12, 10), 3: (4, 3), 4: (3, 2), 5: (16, 9), 6: (5, 4), 7: (2, 1)}


def jxl_ready() -> None:
    """Register the JPEG XL plugin with Pillow (once; importing it is what registers it)."""
    import pillow_jxl  # noqa: F401


def jxl_codestream(data: bytes) -> bytes | None:
    """The start of the codestream of a JPEG XL file: the file itself, or the payload of its ``jxlc`` box (or first
    ``jxlp`` box) when it is in the ISO-BMFF container. None when there is none."""
    if data.startswith(JXL_CODESTREAM):
        return data
    pos = 0
    while data.startswith(JXL_CONTAINER) and pos + 8 <= len(data):
        size, kind = struct.unpack(">I", data[pos : pos + 4])[0], data[pos + 4 : pos + 8]
        start = pos + 8
        if size == 1 and pos + 16 <= len(data):
            size, start = struct.unpack(">Q", data[pos + 8 : pos + 16])[0], pos + 16
        if kind == b"jxlc":
            return data[start:]
        if kind == b"jxlp":
            return data[start + 4 :]
        if size < 8:
            return None
        pos += size
    return None


def jxl_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG XL file's SizeHeader, without decoding it; None when it cannot be read."""
    stream = jxl_codestream(data)
    if stream is None or not stream.startswith(JXL_CODESTREAM) or len(stream) < 3:
        return None
    bits, pos = int.from_bytes(stream[2:12], "little"), 0

    def read(n: int) -> int:
        nonlocal pos
        value = (bits >> pos) & ((1 << n) - 1)
        pos += n
        return value

    def u32() -> int:
        return 1 + read((9, 13, 18, 30)[read(2)])

    small = read(1)
    height = (read(5) + 1) * 8 if small else u32()
    ratio = read(3)
    if ratio:
        num, den = _JXL_RATIOS[ratio]
        width = height * num // den
    else:
        width = (read(5) + 1) * 8 if small else u32()
    return (width, height) if pos <= 8 * len(stream[2:12]) else None


def unsupported_name(data: bytes) -> str | None:
    """A name for well-known formats we do not handle, for a clearer error message."""
    head = bytes(data[:256])
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<svg", b"<?xml")) or b"<svg" in text:
        return "SVG"
    if _ftyp_brands(head) & _HEIF_BRANDS:
        return "HEIC/HEIF"
    prefixes = {
        b"%PDF": "PDF",
        b"8BPS": "PSD",
        b"\x00\x00\x01\x00": "ICO",
        b"\x00\x00\x02\x00": "CUR",
        b"qoif": "QOI",
    }
    for prefix, name in prefixes.items():
        if head.startswith(prefix):
            return name
    if _ftyp_brands(head):
        return "ISO media (video?)"
    return None
