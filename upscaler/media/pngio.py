"""PNG chunks and 16-bit colour files.

Pillow reduces 16-bit colour PNGs (and TIFFs) to 8 bits, so those are read and written with OpenCV as uint16
arrays (RGB order here, BGR inside OpenCV). OpenCV writes no metadata, so the original's ICC profile, EXIF and
ancillary chunks are spliced into its output; grey+alpha at 16 bits, which OpenCV cannot write, is written here.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

import numpy as np

from upscaler.errors import UndecodableImage, UpscalerError

SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Ancillary chunks of an original PNG copied verbatim into its restored copy (colour space, density, text, time).
COPIED_CHUNKS = frozenset({b"gAMA", b"cHRM", b"sRGB", b"cICP", b"mDCV", b"cLLI", b"pHYs", b"tEXt", b"zTXt", b"iTXt"})
COPIED_CHUNKS |= {b"tIME"}


def header(data: bytes) -> tuple[int, int, int, int] | None:
    """(width, height, bit depth, colour type) from the IHDR chunk, or None when there is none."""
    if len(data) < 33 or not data.startswith(SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height, depth, color_type = struct.unpack(">IIBB", data[16:26])
    return width, height, depth, color_type


def chunk(ctype: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", zlib.crc32(ctype + payload))


def chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(type, raw chunk bytes) for each chunk up to IEND; stops quietly at a truncated or malformed chunk."""
    pos = len(SIGNATURE)
    while pos + 12 <= len(data):
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        ctype = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > len(data) or not ctype.isalpha():
            return
        yield ctype, data[pos:end]
        if ctype == b"IEND":
            return
        pos = end


def extract(data: bytes, types: frozenset[bytes] = COPIED_CHUNKS) -> bytes:
    """The raw chunks of ``data`` whose type is in ``types``, concatenated in file order."""
    return b"".join(raw for ctype, raw in chunks(data) if ctype in types)


def splice(png: bytes, extra: bytes) -> bytes:
    """Insert the raw chunks ``extra`` right after IHDR, dropping chunks of the same types that ``png`` had."""
    if not extra:
        return png
    types = {ctype for ctype, _ in chunks(SIGNATURE + extra)}
    if b"iCCP" in types:
        types.add(b"sRGB")  # one colour space declaration: the original's
    out = [SIGNATURE]
    for ctype, raw in chunks(png):
        if ctype in types:
            continue
        out.append(raw)
        if ctype == b"IHDR":
            out.append(extra)
    return b"".join(out)


def metadata_chunks(icc: bytes | None, exif: bytes | None, dpi: tuple[float, float] | None, xmp: bytes | None) -> bytes:
    """iCCP, eXIf, pHYs and an XMP iTXt chunk for the given metadata (each only when given)."""
    out = []
    if icc:
        out.append(chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc)))
    if exif:
        out.append(chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif))
    if dpi:
        ppm = [round(v / 0.0254) for v in dpi]
        out.append(chunk(b"pHYs", struct.pack(">IIB", ppm[0], ppm[1], 1)))
    if xmp:
        out.append(chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + xmp))
    return b"".join(out)


def decode16(data: bytes) -> np.ndarray:
    """A 16-bit colour PNG or TIFF as an HxWx3 (RGB) or HxWx4 (RGBA; grey+alpha is widened) uint16 array."""
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.dtype != np.uint16 or arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise UndecodableImage("the 16-bit image data cannot be decoded (truncated or corrupt)")
    return cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA if arr.shape[2] == 4 else cv2.COLOR_BGR2RGB)


def encode16(arr: np.ndarray, ext: str = ".png", level: int = 6) -> bytes:
    """Write a uint16 array (HxW, HxWx2 grey+alpha, HxWx3 RGB, HxWx4 RGBA) as a 16-bit PNG (zlib ``level``) or
    ``.tiff``."""
    import cv2

    if arr.dtype != np.uint16:
        raise UpscalerError(f"16-bit encoding needs a uint16 array, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 3 and arr.shape[2] == 2:
        if ext != ".png":
            arr = np.dstack([arr[:, :, :1].repeat(3, axis=2), arr[:, :, 1:]])
        else:
            return _raw_png16(arr, color_type=4, level=level)
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGBA2BGRA if arr.shape[2] == 4 else cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_PNG_COMPRESSION, level] if ext == ".png" else []
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(arr), params)
    if not ok:
        raise UpscalerError(f"16-bit {ext} encoding failed")
    return buf.tobytes()


def _raw_png16(arr: np.ndarray, color_type: int, level: int) -> bytes:
    height, width = arr.shape[:2]
    rows = np.ascontiguousarray(arr.astype(">u2")).view(np.uint8).reshape(height, -1)
    filtered = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1)  # filter type 0 on every row
    ihdr = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    idat = zlib.compress(filtered.tobytes(), level)
    return SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
