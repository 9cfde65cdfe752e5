"""Decoding an uploaded file within limits, and describing the original in an :class:`ImageRecord`."""

from __future__ import annotations

import hashlib
import io
import re
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from upscaler.engine.pixels import ImageLike
from upscaler.errors import InvalidInput, TooLarge, UndecodableImage, UnsupportedMedia, UpscalerError
from upscaler.media import pngio
from upscaler.media.formats import jxl_ready, jxl_size, sniff, unsupported_name
from upscaler.media.record import ImageRecord

if TYPE_CHECKING:
    from upscaler.config import Settings

#: Pillow modes accepted. Pixels handed out are L, LA, RGB, RGBA, I;16 (I;16B/L/N), I, or uint16 RGB(A) arrays.
SUPPORTED_MODES = frozenset(
    {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "I"}
    | {"I;16", "I;16B", "I;16L", "I;16N"}
)
#: Modes converted on decode (the record keeps the original mode; restoration converts back where it can).
_CONVERT = {"1": "L", "RGBX": "RGB", "RGBa": "RGBA", "La": "LA", "PA": "RGBA", "CMYK": "RGB", "YCbCr": "RGB"}
_CONVERT.update({"LAB": "RGB", "HSV": "RGB"})
_INEXACT = {"CMYK", "LAB", "HSV"}  # colour conversions that do not round-trip exactly
_ANIMATED_FORMATS = {"GIF", "PNG", "WEBP", "AVIF"}
_COLOR16 = {2: "RGB;16", 6: "RGBA;16", 4: "LA;16"}  # PNG colour type at 16 bits -> record mode


@dataclass(frozen=True)
class DecodeLimits:
    """Refuse files over ``max_bytes`` and images over ``max_megapixels`` (from the header, before decoding)."""

    max_bytes: int = 40 * 1024 * 1024
    max_megapixels: float = 50.0

    @classmethod
    def from_settings(cls, settings: Settings) -> DecodeLimits:
        return cls(max_bytes=settings.max_image_bytes, max_megapixels=settings.max_source_megapixels)


@dataclass
class Decoded:
    """The pixels to process, and the record that restores the original file around them."""

    pixels: ImageLike
    record: ImageRecord


def decode(data: bytes, limits: DecodeLimits) -> Decoded:
    """Decode an image file within ``limits``. Only :class:`UpscalerError` subclasses are raised:

    :class:`TooLarge` (413) over ``max_bytes`` or ``max_megapixels`` (read from the header, before any pixel is
    decoded; Pillow's own decompression-bomb guard maps here too), :class:`UndecodableImage` (422) for empty,
    truncated or corrupt data, :class:`UnsupportedMedia` (415) for other formats, animations and unknown modes.
    """
    if isinstance(data, bytearray | memoryview):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise InvalidInput(f"image data must be bytes, got {type(data).__name__}")
    if len(data) > limits.max_bytes:
        raise TooLarge(f"the image file is {len(data)} bytes, over the limit of {limits.max_bytes} bytes")
    if not data:
        raise UndecodableImage("the image is empty (0 bytes)")
    fmt = sniff(data)
    if fmt is None:
        name = unsupported_name(data)
        expected = "send JPEG, PNG, WebP, AVIF, JPEG XL, GIF, BMP or TIFF"
        if name:
            raise UnsupportedMedia(f"{name} files are not supported; {expected}")
        raise UnsupportedMedia(f"the data is not an image format this service reads; {expected}")
    img = _open(data, fmt, limits)
    if img.mode not in SUPPORTED_MODES:
        raise UnsupportedMedia(f"{fmt} images in pixel mode {img.mode!r} are not supported")
    record = ImageRecord(
        width=img.width,
        height=img.height,
        format=fmt,
        mode=img.mode,
        original_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    with _decoding(fmt):
        _describe(img, data, record)
        if fmt == "TIFF":
            _keep_tiff_orientation(img, record)
        return Decoded(_pixels(img, data, record), record)


def _keep_tiff_orientation(img: Image.Image, record: ImageRecord) -> None:
    """Pillow's TIFF reader reports the *displayed* size and rotates the pixels by the orientation tag on load
    (dropping the tag). We keep pixels as stored, like every other format: undo both before loading."""
    if record.orientation == 1:
        return
    img.getexif().pop(0x0112, None)  # exif_transpose on load reads this (cached) block
    getattr(img, "tag_v2", {}).pop(0x0112, None)
    stored = getattr(img, "_tile_size", None)
    if isinstance(stored, tuple) and len(stored) == 2:
        img._size = stored
        record.width, record.height = stored


def _open(data: bytes, fmt: str, limits: DecodeLimits) -> Image.Image:
    """Read the header only, and apply the size limits before any pixel data is decoded.

    Pillow's global ``Image.MAX_IMAGE_PIXELS`` is left as it is; its error (and its warning, where warnings are
    errors) becomes :class:`TooLarge`. The warnings filters are not touched: they are process-wide, not thread-safe.
    JPEG XL's reader decodes on open, so its size is read from the codestream header first (and Pillow's
    decompression-bomb limit applied to it here).
    """
    try:
        if fmt == "JXL":
            _check_jxl_header(data, limits)
        img = Image.open(io.BytesIO(data), formats=[fmt])
        width, height = img.size
        if width < 1 or height < 1:
            raise UndecodableImage(f"the {fmt} header gives an empty size ({width}x{height})")
        if width * height > limits.max_megapixels * 1e6:
            raise TooLarge(
                f"the image is {width}x{height} = {width * height / 1e6:.1f} megapixels, over the limit of "
                f"{limits.max_megapixels:g}"
            )
        if fmt in _ANIMATED_FORMATS and getattr(img, "is_animated", False):
            raise UnsupportedMedia(
                f"animated {fmt} images ({img.n_frames} frames) are not supported: store them as video, "
                "or send a single frame"
            )
        if fmt == "TIFF" and getattr(img, "n_frames", 1) > 1:  # only the first page would be kept: refuse
            raise UnsupportedMedia(f"multi-page TIFF files ({img.n_frames} pages) are not supported: send each page")
        return img
    except UpscalerError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooLarge(f"the image is refused as a decompression bomb: {exc}") from None
    except MemoryError:
        raise TooLarge("the image is too large to decode") from None
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, struct.error... for broken headers
        if fmt == "JXL":  # libjxl says only "Generic Error", with advice on rebuilding it
            raise UndecodableImage("the JXL file cannot be decoded (truncated or corrupt)") from None
        reason = re.sub(r"\s*<[^>]*object at 0x[0-9a-f]+>", "", str(exc))  # Pillow names its in-memory file
        raise UndecodableImage(f"the {fmt} file cannot be read (corrupt or truncated header): {reason}") from None


def _check_jxl_header(data: bytes, limits: DecodeLimits) -> None:
    jxl_ready()
    size = jxl_size(data)
    if size is None:
        raise UndecodableImage("the JXL file cannot be read (no codestream header: corrupt or truncated)")
    width, height = size
    if width * height > limits.max_megapixels * 1e6:
        raise TooLarge(
            f"the image is {width}x{height} = {width * height / 1e6:.1f} megapixels, over the limit of "
            f"{limits.max_megapixels:g}"
        )
    bomb = Image.MAX_IMAGE_PIXELS
    if bomb and width * height > 2 * bomb:
        raise TooLarge(
            f"the image is refused as a decompression bomb: {width * height} pixels exceeds limit of {2 * bomb} pixels"
        )


@contextmanager
def _decoding(fmt: str) -> Iterator[None]:
    """Pillow's errors while pixel data is read (some metadata accessors read it too) as ours."""
    try:
        yield
    except UpscalerError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooLarge(f"the image is refused as a decompression bomb: {exc}") from None
    except MemoryError:
        raise TooLarge("the image is too large to decode") from None
    except Exception as exc:
        raise UndecodableImage(f"the {fmt} image data cannot be decoded (truncated or corrupt): {exc}") from None


def _pixels(img: Image.Image, data: bytes, record: ImageRecord) -> ImageLike:
    if record.mode in _COLOR16.values():
        return pngio.decode16(data)
    img.load()
    mode = img.mode
    if mode == "P":
        return img.convert("RGBA" if record.has_alpha else "RGB")
    if mode in ("L", "RGB") and record.transparency is not None:
        return img.convert("RGBA" if mode == "RGB" else "LA")  # colour key -> alpha, upscaled as such
    if mode in _CONVERT:
        return img.convert(_CONVERT[mode])
    return img


# ---- the record ---------------------------------------------------------------------------------------------


def _note(record: ImageRecord, text: str) -> None:
    record.note = f"{record.note}; {text}" if record.note else text


def _describe(img: Image.Image, data: bytes, record: ImageRecord) -> None:
    """Fill ``record`` from the header and metadata (no pixel decoding)."""
    info, fmt, mode = img.info, record.format, img.mode
    record.icc_profile = info.get("icc_profile") or None
    xmp = info.get("xmp")
    record.xmp = (xmp.encode() if isinstance(xmp, str) else bytes(xmp)) if xmp else None
    record.exif, record.orientation = _exif(img, fmt)
    record.bit_depth = {"1": 1, "I": 32}.get(mode, 16 if mode.startswith("I;16") else 8)
    record.has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in info
    dpi = info.get("dpi")
    if dpi and (fmt != "JPEG" or info.get("jfif_unit") in (1, 2)):  # Pillow makes up 72 dpi for some JPEGs
        record.dpi = (float(dpi[0]), float(dpi[1]))
    if isinstance(info.get("comment"), bytes) and info["comment"]:
        record.comment = info["comment"]
    if mode in _INEXACT:
        _note(record, f"{mode} pixels are processed as RGB; colours come back close, not exact")
    if mode in ("P", "PA"):
        palette = img.getpalette("RGB") or []
        record.palette = bytes(palette)
        record.palette_colors = max(1, len(palette) // 3)
    transparency = info.get("transparency")
    if isinstance(transparency, bytes):
        record.palette_alpha = transparency
    elif isinstance(transparency, int) or (
        isinstance(transparency, tuple) and all(isinstance(v, int) for v in transparency)
    ):
        record.transparency = transparency
    if fmt == "JPEG":
        _describe_jpeg(img, record)
    elif fmt == "PNG":
        header = pngio.header(data)
        if header:
            record.bit_depth = header[2]
            if header[2] == 16 and header[3] in _COLOR16:
                record.mode = _COLOR16[header[3]]
        record.png_chunks = pngio.extract(data) or None
    elif fmt == "WEBP":
        record.webp_lossless = _webp_lossless(data)
    elif fmt == "TIFF":
        compression = info.get("compression")
        record.tiff_compression = compression if isinstance(compression, str) else None
        _describe_tiff(img, record)


def _describe_jpeg(img: Image.Image, record: ImageRecord) -> None:
    from PIL import JpegImagePlugin

    tables = getattr(img, "quantization", None) or {}
    record.jpeg_qtables = [[int(v) for v in tables[k]] for k in sorted(tables)] or None
    record.jpeg_quality = estimate_jpeg_quality(tables)
    sampling = JpegImagePlugin.get_sampling(img)
    record.jpeg_subsampling = sampling if sampling >= 0 else None
    record.progressive = bool(img.info.get("progressive") or img.info.get("progression"))
    if img.format == "MPO" or getattr(img, "n_frames", 1) > 1:
        record.frames = int(getattr(img, "n_frames", 1))
        _note(record, f"the file holds {record.frames} images (MPF); only the primary image is kept")


def _describe_tiff(img: Image.Image, record: ImageRecord) -> None:
    tags = getattr(img, "tag_v2", {})
    bits = tags.get(258)
    bits = bits if isinstance(bits, tuple) else (bits,) if bits else (8,)
    record.bit_depth = int(max(bits))
    if len(bits) in (3, 4) and set(bits) == {16} and tags.get(262) == 2:  # 16-bit RGB(A): Pillow would reduce it
        record.mode = "RGBA;16" if len(bits) == 4 else "RGB;16"


#: IFD0 tags of a TIFF that describe the picture (its structural tags are rewritten by the encoder).
_TIFF_DESCRIPTIVE = (0x010E, 0x010F, 0x0110, 0x0112, 0x0131, 0x0132, 0x013B, 0x8298)


def _exif(img: Image.Image, fmt: str) -> tuple[bytes | None, int]:
    """The EXIF block as stored in the file, and the orientation it gives (1 when absent or invalid)."""
    try:
        parsed = img.getexif()
    except Exception:  # a broken EXIF block must not make the image unreadable
        parsed = Image.Exif()
    orientation = parsed.get(0x0112, 1)
    orientation = orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1
    raw = img.info.get("exif")
    if fmt == "TIFF":  # TIFF tags are the file's structure: keep only the descriptive ones
        subset = Image.Exif()
        for tag in _TIFF_DESCRIPTIVE:
            if tag in parsed:
                subset[tag] = parsed[tag]
        raw = subset.tobytes() if len(subset) else None
    return (bytes(raw) if raw else None), orientation


def _webp_lossless(data: bytes) -> bool:
    """Whether a WebP file's image chunk is VP8L (lossless) rather than VP8 (lossy)."""
    pos = 12
    while pos + 8 <= len(data):
        fourcc = data[pos : pos + 4]
        if fourcc in (b"VP8L", b"VP8 "):
            return fourcc == b"VP8L"
        size = struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        pos += 8 + size + (size & 1)
    return False


# IJG's standard luminance table (natural order), which quality q scales by 5000/q (q < 50) or 200 - 2q.
# fmt: off
_STD_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61,     12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,     14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,   24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
], dtype=np.float64)
# fmt: on


def estimate_jpeg_quality(tables: dict[int, object] | None) -> int | None:
    """The IJG quality (1-100) whose scaling of the standard table best matches the file's luminance table."""
    if not tables or 0 not in tables:
        return None
    luma = np.asarray(list(tables[0]), dtype=np.float64)  # type: ignore[call-overload]
    if luma.size != 64:
        return None
    if np.all(luma <= 1):
        return 100
    scale = float(np.median((luma * 100 - 50) / _STD_LUMA))  # table = floor((std * scale + 50) / 100)
    quality = 5000 / scale if scale > 100 else (200 - scale) / 2
    return int(min(100, max(1, round(quality))))
