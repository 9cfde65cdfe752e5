"""Image files in and out: decoding with limits, the record that makes exact restoration possible, the codec the
small image is stored with, and re-encoding the upscaled image as the original file was.

Decisions, so that nothing surprising happens silently:

* Pixels are kept as decoded. EXIF orientation is *not* applied: the EXIF block travels unchanged, so the restored
  file shows the way the original did in every viewer.
* 16-bit PNGs keep their depth: grey through Pillow (``I;16``), colour through OpenCV as uint16 arrays (Pillow
  would reduce them to 8 bits).
* Animated GIF/WebP/PNG/AVIF are refused (415): one frame of an animation is not the original; store it as video.
* A stored image with alpha never uses JPEG (no alpha channel): WebP at the same quality is used instead, and the
  record says so. 16-bit images are stored as 16-bit PNG, whatever the codec asked.
* CMYK JPEGs are processed in RGB and converted back to CMYK on restore (naive conversion, the original ICC
  profile attached): colours are close, not exact.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageFile

from upscaler.engine.pixels import ImageLike
from upscaler.errors import InvalidInput, TooLarge, UndecodableImage, UnsupportedMedia, UpscalerError

RECORD_VERSION = 1

#: Format name -> (MIME type, file extension). These are the formats accepted and written.
FORMATS: dict[str, tuple[str, str]] = {
    "JPEG": ("image/jpeg", ".jpg"),
    "PNG": ("image/png", ".png"),
    "WEBP": ("image/webp", ".webp"),
    "AVIF": ("image/avif", ".avif"),
    "GIF": ("image/gif", ".gif"),
    "BMP": ("image/bmp", ".bmp"),
    "TIFF": ("image/tiff", ".tif"),
}
_ALIASES = {"JPG": "JPEG", "TIF": "TIFF"}
STORED_CODECS = ("avif", "webp", "webp-lossless", "jpeg", "png")


def normalize_format(name: str) -> str:
    key = name.strip().upper().lstrip(".")
    key = _ALIASES.get(key, key)
    if key not in FORMATS:
        raise InvalidInput(f"format must be one of {', '.join(f.lower() for f in FORMATS)}, got {name!r}")
    return key


def content_type_for(fmt: str) -> str:
    return FORMATS[normalize_format(fmt)][0]


def sniff(data: bytes) -> str | None:
    """The format of ``data`` from its magic bytes, or None."""
    head = data[:32]
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis"):
        return "AVIF"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:2] == b"BM":
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    return None


@dataclass(frozen=True)
class DecodeLimits:
    max_bytes: int = 40 * 1024 * 1024
    max_megapixels: float = 50.0


@dataclass
class ImageRecord:
    """Everything needed to give back the original: kept with the stored bytes as metadata."""

    width: int
    height: int
    format: str
    mode: str
    bit_depth: int = 8
    has_alpha: bool = False
    icc_profile: bytes | None = None
    exif: bytes | None = None
    orientation: int = 1
    original_bytes: int = 0
    sha256: str = ""
    dpi: tuple[float, float] | None = None
    jpeg_quality: int | None = None
    jpeg_subsampling: int | None = None
    progressive: bool = False
    palette_colors: int | None = None
    transparency: int | None = None
    webp_lossless: bool = False
    tiff_compression: str | None = None
    # filled by the store path
    scale: float = 1.0
    stored_codec: str = ""
    stored_quality: int = 0
    stored_width: int = 0
    stored_height: int = 0
    stored_bytes: int = 0
    model: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_metadata(self) -> dict[str, str]:
        fields = dataclasses.asdict(self)
        for name in ("icc_profile", "exif"):
            if fields[name] is not None:
                fields[name] = base64.b64encode(fields[name]).decode("ascii")
        return {"record_version": str(RECORD_VERSION), "record": json.dumps(fields, separators=(",", ":"))}

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> ImageRecord:
        if "record" not in metadata:
            raise UpscalerError("stored object has no image record (was it written by this service?)")
        try:
            fields = json.loads(metadata["record"])
            known = {f.name for f in dataclasses.fields(cls)}
            fields = {k: v for k, v in fields.items() if k in known}  # newer versions may add fields
            for name in ("icc_profile", "exif"):
                if fields.get(name) is not None:
                    fields[name] = base64.b64decode(fields[name])
            if fields.get("dpi") is not None:
                fields["dpi"] = tuple(fields["dpi"])
            return cls(**fields)
        except (ValueError, TypeError) as exc:
            raise UpscalerError(f"stored image record is malformed: {exc}") from None

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary (binary blocks as sizes)."""
        out = dataclasses.asdict(self)
        out["icc_profile"] = len(self.icc_profile) if self.icc_profile else 0
        out["exif"] = len(self.exif) if self.exif else 0
        out.pop("extra")
        return out


@dataclass
class Decoded:
    pixels: ImageLike
    record: ImageRecord


def _png_depth(data: bytes) -> tuple[int, int]:
    """(bit depth, colour type) from a PNG's IHDR."""
    return data[24], data[25]


def decode(data: bytes, limits: DecodeLimits) -> Decoded:
    """Decode an image file within ``limits``; the record describes the original."""
    if not data:
        raise UndecodableImage("the image is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise TooLarge(f"image is {len(data)} bytes, over the limit of {limits.max_bytes}")
    fmt = sniff(data)
    if fmt is None:
        raise UnsupportedMedia(
            "not a supported image (JPEG, PNG, WebP, AVIF, GIF, BMP or TIFF expected; the bytes say otherwise)"
        )
    max_pixels = int(limits.max_megapixels * 1e6)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                raise TooLarge(
                    f"image is {width}x{height} = {width * height / 1e6:.1f} MP, over the limit of "
                    f"{limits.max_megapixels:g} MP"
                )
            if getattr(img, "n_frames", 1) > 1:
                raise UnsupportedMedia("animated images are not supported; store them as video")
            img.load()
    except UpscalerError:
        raise
    except Image.DecompressionBombError as exc:
        raise TooLarge(f"image refused as a decompression bomb: {exc}") from None
    except Exception as exc:  # Pillow raises many types for broken files
        raise UndecodableImage(f"{fmt} data cannot be decoded: {exc}") from None
    record = ImageRecord(
        width=width,
        height=height,
        format=fmt,
        mode=img.mode,
        has_alpha=img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info,
        icc_profile=img.info.get("icc_profile") or None,
        original_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    _describe_file(img, record)
    if fmt == "WEBP":
        record.webp_lossless = b"VP8L" in data[12:4096]
    pixels: ImageLike = img
    if fmt == "PNG" and len(data) > 26:
        depth, color_type = _png_depth(data)
        record.bit_depth = depth if depth in (1, 2, 4, 8, 16) else 8
        if depth == 16 and color_type in (2, 6):
            pixels = _decode_png16(data)
            record.mode = "RGBA;16" if color_type == 6 else "RGB;16"
    elif img.mode.startswith("I;16"):
        record.bit_depth = 16
    return Decoded(pixels, record)


def _decode_png16(data: bytes) -> np.ndarray:
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.dtype != np.uint16:
        raise UndecodableImage("16-bit PNG data cannot be decoded")
    code = cv2.COLOR_BGRA2RGBA if arr.shape[2] == 4 else cv2.COLOR_BGR2RGB
    return cv2.cvtColor(arr, code)


def _describe_file(img: Image.Image, record: ImageRecord) -> None:
    exif = img.info.get("exif")
    parsed = img.getexif()
    if not exif and len(parsed):
        exif = parsed.tobytes()
    record.exif = exif or None
    record.orientation = int(parsed.get(0x0112, 1) or 1)
    dpi = img.info.get("dpi")
    if dpi:
        record.dpi = (float(dpi[0]), float(dpi[1]))
    if record.format == "JPEG":
        from PIL import JpegImagePlugin

        record.jpeg_quality = _jpeg_quality(getattr(img, "quantization", None))
        record.jpeg_subsampling = JpegImagePlugin.get_sampling(img)
        record.progressive = bool(img.info.get("progressive") or img.info.get("progression"))
    if img.mode == "P":
        palette = img.getpalette() or []
        record.palette_colors = max(1, len(palette) // 3)
        transparency = img.info.get("transparency")
        record.transparency = transparency if isinstance(transparency, int) else None
        record.has_alpha = transparency is not None
    if record.format == "TIFF":
        compression = img.info.get("compression")
        record.tiff_compression = compression if isinstance(compression, str) else None


_STD_LUMA = np.array(
    [
        16,
        11,
        10,
        16,
        24,
        40,
        51,
        61,
        12,
        12,
        14,
        19,
        26,
        58,
        60,
        55,
        14,
        13,
        16,
        24,
        40,
        57,
        69,
        56,
        14,
        17,
        22,
        29,
        51,
        87,
        80,
        62,
        18,
        22,
        37,
        56,
        68,
        109,
        103,
        77,
        24,
        35,
        55,
        64,
        81,
        104,
        113,
        92,
        49,
        64,
        78,
        87,
        103,
        121,
        120,
        101,
        72,
        92,
        95,
        98,
        112,
        100,
        103,
        99,
    ],
    dtype=np.float64,
)


def _jpeg_quality(tables: dict | None) -> int | None:
    """IJG quality that produces the file's luminance table (zig-zag order is the same for both)."""
    if not tables or 0 not in tables:
        return None
    luma = np.asarray(list(tables[0]), dtype=np.float64)
    if luma.size != 64:
        return None
    if np.all(luma == 1):
        return 100
    # IJG: table = floor((std * s + 50) / 100), s = 5000/q (q < 50) or 200 - 2q
    s = float(np.median((luma * 100 - 50) / _STD_LUMA))
    quality = 5000 / s if s > 100 else (200 - s) / 2
    return int(min(100, max(1, round(quality))))


# ---- the stored (small) image -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredBlob:
    data: bytes
    codec: str
    content_type: str


def encode_stored(pixels: ImageLike, codec: str, quality: int) -> StoredBlob:
    """Encode the downscaled image for storage; see the module notes for when another codec is used."""
    codec = codec.lower()
    if codec not in STORED_CODECS:
        raise InvalidInput(f"codec must be one of {', '.join(STORED_CODECS)}, got {codec!r}")
    if isinstance(pixels, np.ndarray):
        return StoredBlob(_png16_bytes(pixels), "png16", "image/png")
    img = pixels
    if img.mode.startswith("I"):
        buf = io.BytesIO()
        img.save(buf, "PNG")
        return StoredBlob(buf.getvalue(), "png16", "image/png")
    if img.mode not in ("RGB", "RGBA", "L", "LA"):
        img = img.convert("RGBA" if "A" in img.getbands() or "transparency" in img.info else "RGB")
    has_alpha = img.mode in ("RGBA", "LA")
    if codec == "jpeg" and has_alpha:
        codec = "webp"
    buf = io.BytesIO()
    if codec == "avif":
        img.save(buf, "AVIF", quality=quality, speed=6)
    elif codec == "webp":
        img.save(buf, "WEBP", quality=quality, method=4)
    elif codec == "webp-lossless":
        img.save(buf, "WEBP", lossless=True, quality=100, method=4)
    elif codec == "jpeg":
        img.save(buf, "JPEG", quality=quality, subsampling=0 if quality >= 90 else 2)
    else:
        img.save(buf, "PNG", compress_level=6)
    ctype = {"avif": "image/avif", "webp": "image/webp", "webp-lossless": "image/webp", "jpeg": "image/jpeg"}
    return StoredBlob(buf.getvalue(), codec, ctype.get(codec, "image/png"))


def _png16_bytes(arr: np.ndarray) -> bytes:
    import cv2

    data = arr
    if arr.dtype != np.uint16:
        data = (
            (np.clip(arr.astype(np.float64), 0, 1) * 65535).round().astype(np.uint16)
            if arr.dtype.kind == "f"
            else (arr.astype(np.uint16) * 257)
        )
    if data.ndim == 3 and data.shape[2] in (3, 4):
        data = cv2.cvtColor(data, cv2.COLOR_RGBA2BGRA if data.shape[2] == 4 else cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", data)
    if not ok:
        raise UpscalerError("16-bit PNG encoding failed")
    return buf.tobytes()


def decode_stored(data: bytes) -> ImageLike:
    """The stored small image, as written by :func:`encode_stored`."""
    fmt = sniff(data)
    try:
        if fmt == "PNG" and len(data) > 26 and _png_depth(data) in ((16, 2), (16, 6)):
            return _decode_png16(data)
        img = Image.open(io.BytesIO(data))
        img.load()
        return img
    except UpscalerError:
        raise
    except Exception as exc:
        raise UndecodableImage(f"stored image cannot be decoded: {exc}") from None


# ---- restoration ------------------------------------------------------------------------------------------------


def _to_mode(img: Image.Image, record: ImageRecord, fmt: str) -> Image.Image:
    """Bring the upscaled image back to the original's mode where ``fmt`` can hold it."""
    mode = record.mode
    if mode == "P" and fmt in ("PNG", "GIF", "BMP", "TIFF", "WEBP"):
        return _to_palette(img, record)
    if mode == "1":
        return img.convert("L").convert("1")
    if mode == "CMYK" and fmt in ("JPEG", "TIFF"):
        return img.convert("RGB").convert("CMYK")
    if fmt == "JPEG":  # no alpha, no 16 bits
        if img.mode in ("RGBA", "LA", "P"):
            img = img.convert("RGB" if img.mode != "LA" else "L")
        if img.mode.startswith("I"):
            img = _i16_to_l(img)
        return img
    if fmt in ("WEBP", "AVIF", "GIF") and img.mode.startswith("I"):
        return _i16_to_l(img)
    if fmt == "BMP" and img.mode in ("LA",):
        return img.convert("RGBA")
    if mode in ("L", "LA", "RGB", "RGBA") and img.mode != mode and img.mode in ("L", "LA", "RGB", "RGBA"):
        return img.convert(mode)  # e.g. grey+alpha comes back from AVIF/WebP as RGBA
    return img


def _i16_to_l(img: Image.Image) -> Image.Image:
    arr = np.asarray(img).astype(np.float64) / 257.0
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))


def _to_palette(img: Image.Image, record: ImageRecord) -> Image.Image:
    colors = max(2, min(256, record.palette_colors or 256))
    rgba = img.convert("RGBA")
    if not record.has_alpha:
        return rgba.convert("RGB").quantize(colors=colors)
    pal = rgba.convert("RGB").quantize(colors=max(1, colors - 1))
    index = colors - 1
    arr = np.asarray(pal).copy()
    arr[np.asarray(rgba)[:, :, 3] < 128] = index
    out = Image.frombytes("P", pal.size, arr.tobytes())
    palette = (pal.getpalette() or [])[: 3 * (colors - 1)]
    palette += [0] * (3 * colors - len(palette))
    out.putpalette(palette)
    out.info["transparency"] = index
    return out


def encode_restored(
    pixels: ImageLike,
    record: ImageRecord,
    *,
    format: str | None = None,
    quality: int | None = None,
    png_compress_level: int = 6,
) -> tuple[bytes, str]:
    """Encode the upscaled image like the original (format, mode, ICC, EXIF, DPI, JPEG quality and subsampling),
    or as ``format`` when the caller asks for another. Returns (bytes, content type)."""
    fmt = normalize_format(format) if format else record.format
    if quality is not None and not 1 <= quality <= 100:
        raise InvalidInput("quality must be between 1 and 100")
    if isinstance(pixels, np.ndarray):
        if fmt in ("PNG", "TIFF") and pixels.dtype == np.uint16:
            return _png16_bytes(pixels), "image/png"
        arr = pixels if pixels.dtype == np.uint8 else np.clip(np.rint(pixels / 257.0), 0, 255).astype(np.uint8)
        pixels = Image.fromarray(arr)
    img = _to_mode(pixels, record, fmt)
    params: dict[str, Any] = {}
    if record.icc_profile and fmt in ("JPEG", "PNG", "WEBP", "AVIF", "TIFF"):
        params["icc_profile"] = record.icc_profile
    if record.exif and fmt in ("JPEG", "PNG", "WEBP", "AVIF", "TIFF"):
        params["exif"] = record.exif
    if record.dpi and fmt in ("JPEG", "PNG", "TIFF", "BMP"):
        params["dpi"] = record.dpi
    same = fmt == record.format
    if fmt == "JPEG":
        params["quality"] = quality or (record.jpeg_quality if same and record.jpeg_quality else 90)
        if same and record.jpeg_subsampling is not None and record.jpeg_subsampling >= 0 and img.mode != "L":
            params["subsampling"] = record.jpeg_subsampling
        params["progressive"] = record.progressive and same
        params["optimize"] = False
    elif fmt == "WEBP":
        if same and record.webp_lossless and quality is None:
            params["lossless"] = True
        params["quality"] = quality or 90
    elif fmt == "AVIF":
        params["quality"] = quality or 85
    elif fmt == "PNG":
        params["compress_level"] = png_compress_level
        if img.mode == "P" and "transparency" in img.info:
            params["transparency"] = img.info["transparency"]
    elif fmt == "GIF":
        if "transparency" in img.info:
            params["transparency"] = img.info["transparency"]
    elif fmt == "TIFF":
        params["compression"] = record.tiff_compression if same and record.tiff_compression else "tiff_lzw"
    buf = io.BytesIO()
    try:
        img.save(buf, fmt, **params)
    except (OSError, ValueError) as exc:
        raise UpscalerError(f"cannot write {fmt} in mode {img.mode}: {exc}") from None
    return buf.getvalue(), FORMATS[fmt][0]


ImageFile.LOAD_TRUNCATED_IMAGES = False  # truncated files are errors (422), never half images
