"""Decoding with limits, the image record, stored codecs, and restoration to the original file's form."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms

from upscaler import media
from upscaler.errors import TooLarge, UndecodableImage, UnsupportedMedia, UpscalerError

LIMITS = media.DecodeLimits(max_bytes=5_000_000, max_megapixels=2.0)
ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _photo(mode: str = "RGB", size: tuple[int, int] = (64, 48)) -> Image.Image:
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    rgb = np.stack([x * 4 % 256, y * 5 % 256, (x * y) % 256], axis=2).astype(np.uint8)
    img = Image.fromarray(rgb)
    if mode == "RGBA":
        img.putalpha(Image.fromarray((x * 255 // size[0]).astype(np.uint8)))
    elif mode != "RGB":
        img = img.convert(mode)
    return img


def _encode(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("fmt", "mode"),
    [
        ("JPEG", "RGB"),
        ("JPEG", "L"),
        ("PNG", "RGB"),
        ("PNG", "RGBA"),
        ("PNG", "L"),
        ("PNG", "LA"),
        ("PNG", "P"),
        ("WEBP", "RGB"),
        ("WEBP", "RGBA"),
        ("AVIF", "RGB"),
        ("GIF", "P"),
        ("BMP", "RGB"),
        ("TIFF", "RGB"),
        ("TIFF", "CMYK"),
        ("JPEG", "CMYK"),
    ],
)
def test_roundtrip_keeps_format_mode_and_size(fmt: str, mode: str) -> None:
    data = _encode(_photo(mode), fmt)
    decoded = media.decode(data, LIMITS)
    record = media.ImageRecord.from_metadata(decoded.record.to_metadata())
    assert record == decoded.record
    assert (record.format, record.width, record.height, record.original_bytes) == (fmt, 64, 48, len(data))
    stored = media.encode_stored(decoded.pixels, "avif", 80)
    small = media.decode_stored(stored.data)
    out, ctype = media.encode_restored(small, record)
    back = Image.open(io.BytesIO(out))
    assert back.format == fmt and back.size == (64, 48) and ctype == media.FORMATS[fmt][0]
    assert back.mode == record.mode


def test_icc_exif_orientation_and_jpeg_settings_survive() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "Cam"
    data = _encode(_photo(), "JPEG", quality=83, subsampling=0, icc_profile=ICC, exif=exif.tobytes(), dpi=(300, 300))
    decoded = media.decode(data, LIMITS)
    rec = decoded.record
    assert rec.orientation == 6 and rec.icc_profile == ICC and rec.jpeg_subsampling == 0
    assert abs(rec.jpeg_quality - 83) <= 1
    out, _ = media.encode_restored(decoded.pixels, rec)
    back = Image.open(io.BytesIO(out))
    assert back.info["icc_profile"] == ICC and back.getexif()[0x0112] == 6 and back.getexif()[0x010F] == "Cam"
    assert back.info["dpi"] == pytest.approx((300, 300))
    # pixels are not rotated: the EXIF travels instead
    assert back.size == (64, 48)
    # the caller may ask for another format; ICC and EXIF follow where the format holds them
    webp, ctype = media.encode_restored(decoded.pixels, rec, format="webp")
    assert ctype == "image/webp" and Image.open(io.BytesIO(webp)).info.get("icc_profile") == ICC


@pytest.mark.parametrize("codec", media.STORED_CODECS)
def test_alpha_survives_every_stored_codec(codec: str) -> None:
    img = _photo("RGBA")
    blob = media.encode_stored(img, codec, 90)
    back = media.decode_stored(blob.data)
    assert back.mode == "RGBA"
    alpha_err = np.abs(np.asarray(back)[:, :, 3].astype(int) - np.asarray(img)[:, :, 3].astype(int)).mean()
    assert alpha_err < 3
    if codec == "jpeg":
        assert blob.codec == "webp"  # JPEG cannot hold alpha: said in the record, not silently dropped


def test_palette_with_transparency_restores_to_palette() -> None:
    img = _photo("RGBA").convert("RGB").quantize(32)
    img.info["transparency"] = 0
    data = _encode(img, "PNG", transparency=0)
    decoded = media.decode(data, LIMITS)
    assert decoded.record.mode == "P" and decoded.record.has_alpha and decoded.record.palette_colors
    up = decoded.pixels.convert("RGBA")
    out, _ = media.encode_restored(up, decoded.record)
    back = Image.open(io.BytesIO(out))
    assert back.mode == "P" and "transparency" in back.info


def test_sixteen_bit_grey_and_colour_png_keep_depth() -> None:
    grey = Image.fromarray((np.arange(64 * 48).reshape(48, 64) * 20).astype(np.uint16))
    decoded = media.decode(_encode(grey, "PNG"), LIMITS)
    assert decoded.record.bit_depth == 16 and decoded.pixels.mode == "I;16"
    blob = media.encode_stored(decoded.pixels, "avif", 80)
    assert blob.codec == "png16"
    out, _ = media.encode_restored(media.decode_stored(blob.data), decoded.record)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(out))), np.asarray(grey))

    import cv2

    rgb16 = (np.random.default_rng(0).random((48, 64, 3)) * 65535).astype(np.uint16)
    _, png = cv2.imencode(".png", cv2.cvtColor(rgb16, cv2.COLOR_RGB2BGR))
    decoded = media.decode(png.tobytes(), LIMITS)
    assert decoded.record.mode == "RGB;16" and decoded.pixels.dtype == np.uint16
    assert np.array_equal(decoded.pixels, rgb16)
    out, ctype = media.encode_restored(decoded.pixels, decoded.record)
    back = cv2.cvtColor(cv2.imdecode(np.frombuffer(out, np.uint8), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)
    assert ctype == "image/png" and np.array_equal(back, rgb16)


def _png_claiming(width: int, height: int) -> bytes:
    data = bytearray(_encode(Image.new("L", (1, 1)), "PNG"))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", UndecodableImage),
        (b"\x00\x01\x02" * 100, UnsupportedMedia),
        (b"hello world, plain text", UnsupportedMedia),
        (b'<svg xmlns="http://www.w3.org/2000/svg"></svg>', UnsupportedMedia),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 50, UndecodableImage),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 50, UndecodableImage),
        (b"x" * 6_000_000, TooLarge),
    ],
)
def test_bad_input(data: bytes, error: type) -> None:
    with pytest.raises(error):
        media.decode(data, LIMITS)


def test_truncated_files_are_refused() -> None:
    for fmt in ("JPEG", "PNG", "WEBP"):
        data = _encode(_photo(size=(128, 96)), fmt)
        with pytest.raises(UndecodableImage):
            media.decode(data[: len(data) // 2], LIMITS)


def test_decompression_bomb_refused_from_the_header() -> None:
    with pytest.raises(TooLarge, match=r"decompression bomb|MP"):
        media.decode(_png_claiming(100_000, 100_000), LIMITS)


def test_animation_refused() -> None:
    frames = [_photo().convert("P"), _photo().rotate(90).convert("P")]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    with pytest.raises(UnsupportedMedia, match="animated"):
        media.decode(buf.getvalue(), LIMITS)


def test_malformed_metadata() -> None:
    with pytest.raises(UpscalerError):
        media.ImageRecord.from_metadata({})
    with pytest.raises(UpscalerError):
        media.ImageRecord.from_metadata({"record": "{not json"})
    with pytest.raises(UpscalerError):
        media.ImageRecord.from_metadata({"record": '{"width": 1}'})
    rec = media.decode(_encode(_photo(), "PNG"), LIMITS).record
    meta = rec.to_metadata()
    meta["record"] = meta["record"][:-1] + ',"future_field":1}'
    assert media.ImageRecord.from_metadata(meta) == rec  # newer writers' fields are ignored


def test_format_names() -> None:
    assert media.normalize_format("jpg") == "JPEG" and media.content_type_for("tif") == "image/tiff"
    with pytest.raises(UpscalerError):
        media.normalize_format("svg")
