"""Encoding the upscaled image the way the original file was: format, mode, depth, alpha, colour and metadata.

The pixel mode written is the original's where the format can hold it (:func:`target_mode`):

===================  =====================================================================================
original             restored as
===================  =====================================================================================
P (palette)          P with the *original palette*: nearest entry, no dithering; the transparent index, or the
                     per-entry alpha (PNG tRNS; matched premultiplied), kept
1 (bilevel)          1 (thresholded at 50 %)
L / RGB + colour     L / RGB with the same tRNS colour key: pixels under 50 % alpha get the key colour
key (PNG tRNS)
I;16 / 16-bit PNG    16 bits (grey through Pillow, colour through OpenCV, with ICC/EXIF/chunks spliced in;
                     16-bit colour TIFF is written by OpenCV, without ICC/EXIF)
CMYK (JPEG/TIFF)     CMYK again, by full grey-component replacement (K = 255 - max(R, G, B)), which inverts
                     Pillow's CMYK->RGB exactly; the original ink separation is not recovered
===================  =====================================================================================

Where the format asked for cannot hold the mode, the nearest it can is used: JPEG flattens alpha over white,
GIF quantises to a palette, 16 bits become 8 outside PNG/TIFF. ICC profiles are attached only where their colour
space matches the pixels written; EXIF (orientation included, pixels never rotated), XMP, DPI and comments go
wherever the format holds them. PNG ancillary chunks (gAMA, cHRM, sRGB, cICP, pHYs, text, tIME) are copied
verbatim when the original was a PNG. JPEG restored as JPEG reuses the original quantisation tables and chroma
subsampling (so the quality is the original's), unless the caller gives a quality.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from upscaler.engine.pixels import ImageLike
from upscaler.errors import InvalidInput, UnsupportedMedia
from upscaler.media import pngio
from upscaler.media.formats import FORMATS, jxl_ready, normalize_format
from upscaler.media.record import ImageRecord
from upscaler.media.stored import _as_image

_COLOR16 = {"RGB;16": 3, "RGBA;16": 4, "LA;16": 2}
_PALETTE_FORMATS = ("PNG", "GIF", "BMP", "TIFF")
_ICC_SPACE = {b"RGB ": ("RGB", "RGBA", "P", "RGB;16", "RGBA;16"), b"GRAY": ("L", "LA", "1", "I;16", "I", "LA;16")}
_ICC_SPACE[b"CMYK"] = ("CMYK",)
_WHITE = {"RGB": (255, 255, 255), "L": 255}
DEFAULT_QUALITY = {"JPEG": 90, "WEBP": 90, "AVIF": 85, "JXL": 90}


def target_mode(record: ImageRecord, fmt: str) -> str:
    """The mode restoration writes for ``record`` in ``fmt``: the original's, or the nearest ``fmt`` holds."""
    mode = record.mode
    if mode in _COLOR16:
        if fmt == "PNG" or (fmt == "TIFF" and mode != "LA;16"):
            return mode
        mode = mode[:-3]
    elif mode.startswith("I;16") or mode == "I":
        if fmt in ("PNG", "TIFF"):
            return "I" if mode == "I" and fmt == "TIFF" else "I;16"
        mode = "L"
    if mode == "1":
        return "1" if fmt in _PALETTE_FORMATS else "L"
    if mode in ("P", "PA"):
        if fmt in _PALETTE_FORMATS:
            return "P"
        mode = "RGBA" if record.has_alpha else "RGB"
    if mode == "CMYK":
        return "CMYK" if fmt in ("JPEG", "TIFF") else "RGB"
    mode = {"RGBa": "RGBA", "La": "LA", "RGBX": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB"}.get(mode, mode)
    if _colour_key(record) is not None and fmt not in ("PNG", "GIF", "JPEG"):
        mode = "RGBA" if mode == "RGB" or fmt == "BMP" else "LA"  # formats without colour keys get real alpha
    if fmt == "JPEG":
        return {"RGBA": "RGB", "LA": "L"}.get(mode, mode)
    if fmt == "JXL" and mode not in ("RGB", "RGBA", "L", "LA"):
        return "RGBA" if record.has_alpha else "RGB"
    if fmt == "GIF":
        return mode if mode == "L" else "P"
    if fmt == "BMP" and mode == "LA":
        return "RGBA"
    return mode


def encode_restored(
    pixels: ImageLike,
    record: ImageRecord,
    *,
    format: str | None = None,
    quality: int | None = None,
    png_compress_level: int = 6,
) -> tuple[bytes, str]:
    """Encode the upscaled ``pixels`` like the original described by ``record``, or as ``format`` (png, jpeg,
    webp, avif, tiff, gif, bmp) when given; ``quality`` (1-100) overrides the lossy encoders' quality.
    ``png_compress_level`` (0-9) trades PNG size for encoding time (the model server answers with 1).
    Returns (file bytes, content type)."""
    fmt = normalize_format(format) if format else record.format
    if quality is not None and (isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100):
        raise InvalidInput(f"quality must be an integer between 1 and 100, got {quality!r}")
    same = fmt == record.format
    target = target_mode(record, fmt)
    if target in _COLOR16:
        arr = _as_uint16(pixels, _COLOR16[target])
        if fmt == "TIFF":
            return pngio.encode16(arr, ".tiff"), FORMATS[fmt].content_type
        extra = _png_chunks(record, same, target, with_icc_exif=True)
        return pngio.splice(pngio.encode16(arr, level=png_compress_level), extra), FORMATS[fmt].content_type
    if fmt == "JXL":
        jxl_ready()
    source = _as_pil(pixels)
    img, key = _convert(source, target, record, fmt)
    if fmt == "JXL" and record.icc_profile:
        img = _to_srgb(img, record.icc_profile)
    if img.info:  # Pillow's encoders fall back on info (ICC, transparency, comment): only the record counts
        img = img.copy() if img is source else img
        img.info = {}
    params = _params(img, key, record, fmt, same, quality)
    if fmt == "PNG":
        params["compress_level"] = png_compress_level
    data = _save(img, fmt, params)
    if fmt == "PNG":
        data = pngio.splice(data, _png_chunks(record, same, target, with_icc_exif=False))
    return data, FORMATS[fmt].content_type


# ---- pixels -------------------------------------------------------------------------------------------------


def _as_pil(pixels: ImageLike) -> Image.Image:
    img = _as_image(pixels)
    if isinstance(img, Image.Image):
        return img
    arr = np.clip(np.rint(img.astype(np.float32) / 257.0), 0, 255).astype(np.uint8)  # uint16 colour -> 8 bits
    if arr.shape[2] == 2:
        return Image.merge("LA", [Image.fromarray(np.ascontiguousarray(arr[:, :, i])) for i in range(2)])
    return Image.fromarray(arr)


def _as_uint16(pixels: ImageLike, channels: int) -> np.ndarray:
    """A uint16 HxWx``channels`` array (2 = grey + alpha) from whatever the upscaler returned."""
    if isinstance(pixels, np.ndarray) and pixels.dtype == np.uint16:
        arr = pixels if pixels.ndim == 3 else pixels[:, :, None]
    else:
        img = _as_pil(pixels)
        if img.mode.startswith("I"):
            arr = np.clip(np.asarray(img), 0, 65535).astype(np.uint16)[:, :, None]
        else:
            img = img.convert("RGBA" if "A" in img.getbands() else "RGB")
            arr = np.asarray(img).astype(np.uint16) * 257
    have = arr.shape[2]
    alpha = arr[:, :, -1:] if have in (2, 4) else None
    color = arr[:, :, : have - 1] if alpha is not None else arr
    if channels == 2:
        grey = color if color.shape[2] == 1 else np.rint(color.mean(axis=2, keepdims=True)).astype(np.uint16)
        return np.dstack([grey, alpha if alpha is not None else np.full_like(grey, 65535)])
    rgb = color if color.shape[2] == 3 else np.repeat(color, 3, axis=2)
    if channels == 3:
        return np.ascontiguousarray(rgb)
    return np.dstack([rgb, alpha if alpha is not None else np.full_like(rgb[:, :, :1], 65535)])


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and img.has_transparency_data)


def _flatten(img: Image.Image, mode: str) -> Image.Image:
    """``img`` in ``mode`` (L or RGB), composited over white where it had alpha."""
    if _has_alpha(img):
        rgba = img.convert("RGBA")
        if rgba.getchannel("A").getextrema()[0] < 255:
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert(mode)
    return img.convert(mode)


def _colour_key(record: ImageRecord) -> int | tuple[int, ...] | None:
    """The tRNS colour key of an L/RGB original (None for palette indices and images without one)."""
    if record.mode in ("L", "RGB") and record.transparency is not None:
        return record.transparency
    return None


def _convert(img: Image.Image, target: str, record: ImageRecord, fmt: str) -> tuple[Image.Image, Any]:
    """``img`` in mode ``target``, and the transparency (index or colour key) to write with it, if any."""
    if target == "P":
        return _to_palette(img, record, fmt)
    if target == "1":
        return _flatten(img, "L").convert("1", dither=Image.Dither.NONE), None
    if target == "CMYK":
        return _rgb_to_cmyk(_flatten(img, "RGB")), None
    if target in ("I;16", "I"):
        if img.mode.startswith("I"):
            arr = np.clip(np.asarray(img), 0, 65535)
        else:
            arr = np.asarray(_flatten(img, "L")).astype(np.uint16) * 257
        return Image.fromarray(arr.astype(np.uint16 if target == "I;16" else np.int32)), None
    if img.mode.startswith("I"):
        img = Image.fromarray(np.clip(np.rint(np.asarray(img) / 257.0), 0, 255).astype(np.uint8))
    key = _colour_key(record)
    if target in ("L", "RGB") and key is not None and fmt in ("PNG", "GIF") and _has_alpha(img):
        return _apply_colour_key(img, target, key)
    if target in ("L", "RGB"):
        return _flatten(img, target), None
    return (img if img.mode == target else img.convert(target)), None


def _apply_colour_key(img: Image.Image, mode: str, key: Any) -> tuple[Image.Image, Any]:
    rgba = img.convert("RGBA")
    transparent = np.asarray(rgba)[:, :, 3] < 128
    arr = np.array(rgba.convert(mode))
    fits = isinstance(key, int) if mode == "L" else isinstance(key, tuple) and len(key) == 3
    if not fits:
        return _flatten(img, mode), None
    arr[transparent] = key
    return Image.fromarray(arr), key


def _to_palette(img: Image.Image, record: ImageRecord, fmt: str) -> tuple[Image.Image, Any]:
    """Quantise to the original palette when there is one (no dithering), else to an adaptive palette.
    Returns the image and its transparency (an index, or per-entry alpha bytes)."""
    rgba = img.convert("RGBA")
    transparent = np.asarray(rgba)[:, :, 3] < 128
    rgb = rgba.convert("RGB")
    if record.palette and record.palette_alpha and fmt == "PNG":
        size = len(record.palette) // 3
        alpha = (record.palette_alpha + b"\xff" * size)[:size]
        rgb_entries = np.frombuffer(record.palette[: 3 * size], np.uint8).reshape(-1, 3)
        arr = _nearest_entries(np.asarray(rgba), np.column_stack([rgb_entries, np.frombuffer(alpha, np.uint8)]))
        out = Image.frombytes("P", img.size, arr.tobytes())
        out.putpalette(record.palette[: 3 * size])
        return out, record.palette_alpha
    if record.palette and len(record.palette) >= 3:
        original = list(record.palette)
        size = len(original) // 3
        index = record.transparency if isinstance(record.transparency, int) else None
        index = index if index is not None and 0 <= index < size and size > 1 else None
        usable = list(original)
        if index is not None:  # opaque pixels must not land on the transparent entry: give it a twin's colour
            twin = 1 if index == 0 else 0
            usable[3 * index : 3 * index + 3] = original[3 * twin : 3 * twin + 3]
        reference = Image.new("P", (1, 1))
        reference.putpalette(usable)
        arr = np.array(rgb.quantize(palette=reference, dither=Image.Dither.NONE))
        if index is not None:
            arr[arr == index] = twin
            arr[transparent] = index
        out = Image.frombytes("P", img.size, arr.tobytes())
        out.putpalette(original)
        return out, index
    colors = max(2, min(256, record.palette_colors or 256))
    if not transparent.any():
        return rgb.quantize(colors), None
    out = rgb.quantize(colors - 1)
    arr = np.array(out)
    arr[transparent] = colors - 1
    palette = (out.getpalette("RGB") or [])[: 3 * (colors - 1)]
    palette += [0] * (3 * colors - len(palette))
    result = Image.frombytes("P", img.size, arr.tobytes())
    result.putpalette(palette)
    return result, colors - 1


def _nearest_entries(pixels: np.ndarray, entries: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """Index of the nearest palette entry for each RGBA pixel, compared premultiplied (colour under transparency
    does not count), as |e|^2 - 2 p.e: one matrix product per chunk."""

    def premultiplied(rgba: np.ndarray) -> np.ndarray:
        out = rgba.reshape(-1, 4).astype(np.float32)
        out[:, :3] *= out[:, 3:] / 255.0
        return out

    height, width = pixels.shape[:2]
    values, table = premultiplied(pixels), premultiplied(entries)
    norms = (table**2).sum(axis=1)
    nearest = np.empty(len(values), np.uint8)
    for start in range(0, len(values), chunk):
        distance = norms[None, :] - 2.0 * (values[start : start + chunk] @ table.T)
        nearest[start : start + chunk] = distance.argmin(axis=1)
    return nearest.reshape(height, width)


def _rgb_to_cmyk(img: Image.Image) -> Image.Image:
    """Full grey-component replacement: K = 255 - max(R, G, B); exact inverse of Pillow's CMYK -> RGB."""
    rgb = np.asarray(img, dtype=np.float32)
    peak = rgb.max(axis=2)
    cmy = 255.0 - rgb * (255.0 / np.maximum(peak, 1.0))[:, :, None]
    cmy[peak == 0] = 0.0
    cmyk = np.dstack([cmy, 255.0 - peak])
    return Image.frombytes("CMYK", img.size, np.clip(np.rint(cmyk), 0, 255).astype(np.uint8).tobytes())


# ---- encoder parameters ------------------------------------------------------------------------------------------


def _to_srgb(img: Image.Image, icc: bytes) -> Image.Image:
    """Colour pixels converted from the original's ICC profile to sRGB, for JPEG XL output: the binding writes no ICC
    profile, and a JPEG XL file without one is read as sRGB, so converting keeps the colours the viewer sees. Grey
    images and profiles LittleCMS cannot read are left as they are (the profile is then lost, not misapplied)."""
    if img.mode not in ("RGB", "RGBA") or not _icc_fits(icc, "RGB", "JXL"):
        return img
    from PIL import ImageCms

    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))  # sRGB to sRGB is exact (LittleCMS), so no special case
        rgb = ImageCms.profileToProfile(img.convert("RGB"), source, ImageCms.createProfile("sRGB"), outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError):
        return img
    if img.mode == "RGBA":
        rgb.putalpha(img.getchannel("A"))
    return rgb


def _icc_fits(icc: bytes, mode: str, fmt: str) -> bool:
    if fmt == "WEBP" and mode in ("L", "LA", "1"):
        mode = "RGB"  # WebP has no grey: Pillow writes it as RGB
    return mode in _ICC_SPACE.get(bytes(icc[16:20]), ())


def _png_chunks(record: ImageRecord, same: bool, mode: str, *, with_icc_exif: bool) -> bytes:
    """Chunks spliced into a restored PNG: the original's ancillary chunks, and what the encoder did not write."""
    copied = record.png_chunks if same and record.png_chunks else b""
    has_phys = any(ctype == b"pHYs" for ctype, _ in pngio.chunks(pngio.SIGNATURE + copied))
    icc = record.icc_profile if with_icc_exif else None
    icc = icc if icc and _icc_fits(icc, mode, "PNG") else None
    meta = pngio.metadata_chunks(
        icc,
        record.exif if with_icc_exif else None,
        None if has_phys else record.dpi,
        None if same else record.xmp,
    )
    return meta + copied


def _params(
    img: Image.Image, key: Any, record: ImageRecord, fmt: str, same: bool, quality: int | None
) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if record.icc_profile and fmt != "BMP" and fmt != "GIF" and _icc_fits(record.icc_profile, img.mode, fmt):
        params["icc_profile"] = record.icc_profile
    if record.exif and fmt in ("JPEG", "PNG", "WEBP", "AVIF", "TIFF", "JXL"):
        params["exif"] = record.exif
    if record.xmp and fmt in ("JPEG", "WEBP", "AVIF", "JXL"):
        params["xmp"] = record.xmp
    if record.dpi and fmt in ("JPEG", "TIFF", "BMP"):
        params["dpi"] = record.dpi
    if record.comment and fmt in ("JPEG", "GIF"):
        params["comment"] = record.comment
    if key is not None and fmt in ("PNG", "GIF"):
        params["transparency"] = key
    if fmt == "JPEG":
        sampling = record.jpeg_subsampling if same and img.mode == "RGB" else None
        if quality is None and same and record.jpeg_qtables:
            params["qtables"] = record.jpeg_qtables
        else:
            params["quality"] = quality or (record.jpeg_quality if same and record.jpeg_quality else 90)
        if sampling is not None:
            params["subsampling"] = sampling
        params["progressive"] = bool(same and record.progressive)
    elif fmt == "WEBP":
        if quality is None and same and record.webp_lossless:
            params.update(lossless=True, quality=80, method=4)
        else:
            params.update(quality=quality or DEFAULT_QUALITY["WEBP"], method=4)
    elif fmt == "AVIF":
        params["quality"] = quality or DEFAULT_QUALITY["AVIF"]
    elif fmt == "JXL":
        params.update(quality=quality or DEFAULT_QUALITY["JXL"], lossless_jpeg=False)
    elif fmt == "GIF":
        params["optimize"] = False  # keep the palette as it is
    elif fmt == "TIFF":
        compression = record.tiff_compression if same and record.tiff_compression else "tiff_lzw"
        params["compression"] = compression
        if compression in ("jpeg", "tiff_jpeg"):
            params["quality"] = quality or DEFAULT_QUALITY["JPEG"]
    return params


#: Parameters dropped, in this order, when an encoder refuses the full set (a malformed EXIF block, an odd table).
_OPTIONAL = ("xmp", "exif", "qtables", "compression", "icc_profile", "comment")


def _save(img: Image.Image, fmt: str, params: dict[str, Any]) -> bytes:
    attempt = dict(params)
    while True:
        buf = io.BytesIO()
        try:
            img.save(buf, fmt, **attempt)
            return buf.getvalue()
        except (OSError, ValueError, TypeError, KeyError, SyntaxError) as exc:
            dropped = next((name for name in _OPTIONAL if name in attempt), None)
            if dropped is None:
                raise UnsupportedMedia(f"cannot write {fmt} in mode {img.mode}: {exc}") from None
            attempt.pop(dropped)
            if dropped == "qtables":
                attempt["quality"] = DEFAULT_QUALITY["JPEG"]
