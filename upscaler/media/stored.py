"""The codec the small (downscaled) image is stored with.

* ``avif`` (lossy, 4:4:4 chroma), ``avif-420`` (lossy, 4:2:0 chroma), ``jxl`` (lossy JPEG XL), ``jxl-lossless``,
  ``webp`` (lossy, method 4, alpha lossless), ``webp-lossless``, ``jpeg`` (4:4:4 from quality 90 up, 4:2:0 below,
  Huffman-optimised) and ``png`` (lossless). Which one wins depends on the image: the quality-targeted search
  (:mod:`upscaler.quality`) tries them all; ``benchmarks/bench_codecs.py`` measures them.
* ``jxl-jpeg`` is not made from pixels: it is a JPEG file recompressed losslessly into JPEG XL
  (:func:`recompress_jpeg`), from which :func:`reconstruct_jpeg` gives back the original file byte for byte.
* AVIF chroma: 4:4:4 keeps colour edges, 4:2:0 spends fewer bits on chroma; on photos 4:2:0 measured about
  +0.2 dB PSNR-Y at the same bytes (issue 14), on graphics 4:4:4 usually wins. The search tries both.
* Encoder effort: ``speed`` (AVIF, libavif 0 slowest .. 10) and ``effort`` (JPEG XL, 1 fastest .. 9); defaults
  :data:`AVIF_SPEED` and :data:`JXL_EFFORT`, the settings ``UPSCALER_AVIF_SPEED`` / ``UPSCALER_JXL_EFFORT``.
* Alpha survives every codec. JPEG has none: an image with (non-opaque) alpha asked for as JPEG is stored as lossy
  WebP at the same quality, and the returned :class:`StoredBlob` (hence the record) says ``webp``.
* 16-bit images (``I;16`` grey, uint16 RGB(A) arrays) are stored as 16-bit PNG, whatever the codec asked: Pillow
  writes AVIF at 8 bits only, and 8 bits would lose the depth the original had. The codec is then ``png16``.
* Grey stays grey: L/LA are written as grey JPEG/PNG/AVIF/JPEG XL (4:0:0); WebP has no grey mode, so a WebP whose
  three channels come back equal is returned as L/LA.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from upscaler.engine.pixels import ImageLike
from upscaler.errors import InvalidInput, UndecodableImage
from upscaler.media import pngio
from upscaler.media.formats import jxl_ready, sniff

#: Codecs a caller may ask for. The record's ``stored_codec`` is one of these or ``png16``.
STORED_CODECS = ("avif", "avif-420", "jxl", "jxl-lossless", "webp", "webp-lossless", "jpeg", "png")
#: Codecs that keep every pixel.
LOSSLESS_CODECS = ("jxl-lossless", "webp-lossless", "png")
CONTENT_TYPES = {
    "avif": "image/avif",
    "avif-420": "image/avif",
    "jxl": "image/jxl",
    "jxl-lossless": "image/jxl",
    "jxl-jpeg": "image/jxl",
    "webp": "image/webp",
    "webp-lossless": "image/webp",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "png16": "image/png",
}
AVIF_SPEED = 6  # libavif 0 (slowest, smallest) .. 10; see benchmarks/bench_codecs.py
AVIF_SUBSAMPLING = "4:4:4"  # chroma of codec "avif" (the fixed store's); "avif-420" is the 4:2:0 choice
JXL_EFFORT = 3  # libjxl 1 (fastest) .. 9: at a PSNR-Y target 3 stored less than 7, 8x faster (bench_codecs)
JPEG_444_FROM = 90  # JPEG quality from which chroma is kept at full resolution
_SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}


class StoredBlob(bytes):
    """The stored bytes (it *is* ``bytes``), with the codec actually used and its MIME type."""

    codec: str
    content_type: str

    def __new__(cls, data: bytes, codec: str) -> StoredBlob:
        blob = super().__new__(cls, data)
        blob.codec = codec
        blob.content_type = CONTENT_TYPES[codec]
        return blob

    @property
    def data(self) -> bytes:
        return self

    def __repr__(self) -> str:
        return f"StoredBlob({len(self)} bytes, codec={self.codec!r})"


def encode_stored(
    pixels: ImageLike,
    codec: str,
    quality: int,
    *,
    subsampling: str | None = None,
    speed: int | None = None,
    effort: int | None = None,
) -> StoredBlob:
    """Encode the downscaled image with ``codec`` at ``quality`` (1-100; ignored by lossless codecs).

    ``subsampling`` ("4:4:4", "4:2:0"...) overrides the JPEG/AVIF chroma default, ``speed`` the AVIF speed,
    ``effort`` the JPEG XL effort.
    See the module notes for when another codec is used than the one asked for.
    """
    codec = str(codec).lower()
    if codec not in STORED_CODECS:
        raise InvalidInput(f"codec must be one of {', '.join(STORED_CODECS)}, got {codec!r}")
    if isinstance(quality, bool) or not isinstance(quality, int | np.integer) or not 1 <= quality <= 100:
        raise InvalidInput(f"quality must be an integer between 1 and 100, got {quality!r}")
    if subsampling is not None and subsampling not in _SUBSAMPLING:
        raise InvalidInput(f"subsampling must be one of {', '.join(_SUBSAMPLING)}, got {subsampling!r}")
    img = _as_image(pixels)
    if not isinstance(img, Image.Image):
        return StoredBlob(pngio.encode16(img), "png16")
    if img.mode.startswith("I"):
        return StoredBlob(_save(_to_i16(img), "PNG", compress_level=6), "png16")
    if img.mode == "1":
        img = img.convert("L")
    elif img.mode not in ("RGB", "RGBA", "L", "LA"):
        img = img.convert("RGBA" if img.has_transparency_data else "RGB")
    if img.mode in ("RGBA", "LA") and img.getchannel("A").getextrema() == (255, 255):
        img = img.convert(img.mode[:-1])  # opaque: the alpha plane would only cost bytes
    if codec == "jpeg" and img.mode in ("RGBA", "LA"):
        codec = "webp"
    quality = int(quality)
    if codec in ("avif", "avif-420"):
        chroma = "4:0:0" if img.mode == "L" else subsampling or ("4:2:0" if codec == "avif-420" else AVIF_SUBSAMPLING)
        data = _save(img, "AVIF", quality=quality, speed=AVIF_SPEED if speed is None else speed, subsampling=chroma)
    elif codec in ("jxl", "jxl-lossless"):
        jxl_ready()
        lossless = codec == "jxl-lossless"
        # lossy quality 100 would be distance 0, which libjxl only accepts in lossless mode: 99 is its finest
        params = {"lossless": lossless, "quality": 100 if lossless else min(quality, 99), "lossless_jpeg": False}
        data = _save(img, "JXL", effort=JXL_EFFORT if effort is None else effort, **params)
    elif codec == "webp":
        data = _save(img, "WEBP", quality=quality, method=4, alpha_quality=100)
    elif codec == "webp-lossless":
        data = _save(img, "WEBP", lossless=True, quality=100, method=4, exact=True)
    elif codec == "jpeg":
        chroma = subsampling or ("4:4:4" if quality >= JPEG_444_FROM else "4:2:0")
        params = {} if img.mode == "L" else {"subsampling": _SUBSAMPLING[chroma]}
        data = _save(img, "JPEG", quality=quality, optimize=True, **params)
    else:
        data = _save(img, "PNG", compress_level=6)
    return StoredBlob(data, codec)


def recompress_jpeg(jpeg: bytes, *, effort: int | None = None) -> StoredBlob:
    """A JPEG file recompressed losslessly into JPEG XL (codec ``jxl-jpeg``): :func:`reconstruct_jpeg` gives back
    the very same file. Raises :class:`InvalidInput` when libjxl cannot recompress it (arithmetic-coded,
    12-bit or lossless JPEG)."""
    from pillow_jxl import Encoder

    try:
        with Image.open(io.BytesIO(jpeg), formats=["JPEG"]) as img:
            width, height, mode = img.width, img.height, img.mode
        encoder = Encoder(
            mode=mode if mode in ("RGB", "L") else "RGB", lossless=True, quality=100, effort=effort or JXL_EFFORT
        )
        data = encoder(jpeg, width, height, jpeg_encode=True)
    except Exception as exc:  # libjxl refuses JPEG flavours it cannot carry
        raise InvalidInput(f"this JPEG cannot be recompressed into JPEG XL: {exc}") from None
    return StoredBlob(data, "jxl-jpeg")


def reconstruct_jpeg(data: bytes) -> bytes:
    """The original JPEG file kept in a ``jxl-jpeg`` blob (see :func:`recompress_jpeg`)."""
    from pillow_jxl import Decoder

    try:
        is_jpeg, _info, out, *_ = Decoder()(bytes(data))
    except Exception:
        raise UndecodableImage("the stored JPEG XL data cannot be decoded (truncated or corrupt)") from None
    if not is_jpeg:
        raise UndecodableImage("the stored JPEG XL data holds no JPEG to reconstruct")
    return bytes(out)


def decode_stored(data: bytes) -> ImageLike:
    """The small image written by :func:`encode_stored`: a Pillow image, or a uint16 array for 16-bit colour."""
    fmt = sniff(data)
    if fmt not in ("AVIF", "WEBP", "JPEG", "PNG", "JXL"):
        raise UndecodableImage(
            "the stored object is not an image this service wrote (AVIF, JPEG XL, WebP, JPEG or PNG)"
        )
    if fmt == "JXL":
        jxl_ready()
    header = pngio.header(data)
    if header and header[2] == 16 and header[3] in (2, 4, 6):
        return pngio.decode16(data)
    try:
        img = Image.open(io.BytesIO(data), formats=[fmt])
        img.load()
    except Exception as exc:  # Pillow's many error types for broken data (libjxl's say only "Generic Error")
        reason = "truncated or corrupt" if fmt == "JXL" else exc
        raise UndecodableImage(f"the stored {fmt} image cannot be decoded: {reason}") from None
    if fmt == "WEBP" and img.mode in ("RGB", "RGBA"):
        arr = np.asarray(img)
        if np.array_equal(arr[:, :, 0], arr[:, :, 1]) and np.array_equal(arr[:, :, 1], arr[:, :, 2]):
            img = img.convert("L" if img.mode == "RGB" else "LA")
    return img


def _as_image(pixels: ImageLike) -> Image.Image | np.ndarray:
    """Pillow image, or a uint16 colour array (kept as an array: Pillow has no 16-bit colour mode)."""
    if isinstance(pixels, Image.Image):
        return pixels
    if not isinstance(pixels, np.ndarray):
        raise InvalidInput(f"expected a PIL image or a numpy array, got {type(pixels).__name__}")
    arr = pixels[:, :, 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (2, 3, 4)):
        raise InvalidInput(f"arrays must be HxW or HxWx(1-4), got shape {pixels.shape}")
    if arr.dtype == np.uint16:
        return Image.fromarray(arr) if arr.ndim == 2 else arr
    if arr.dtype != np.uint8:
        raise InvalidInput(f"arrays must be uint8 or uint16, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 2:
        return Image.merge("LA", [Image.fromarray(np.ascontiguousarray(arr[:, :, i])) for i in range(2)])
    return Image.fromarray(arr)


def _to_i16(img: Image.Image) -> Image.Image:
    if img.mode == "I;16":
        return img
    return Image.fromarray(np.clip(np.asarray(img), 0, 65535).astype(np.uint16))


def _save(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()
