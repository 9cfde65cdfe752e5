"""Decoding with limits, the image record, stored codecs, and restoration to the original file's form.

Images are generated here (small, so the engine runs for real in a few milliseconds)."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms, PngImagePlugin

from upscaler import media
from upscaler.engine import Engine
from upscaler.errors import InvalidInput, TooLarge, UndecodableImage, UnsupportedMedia, UpscalerError

LIMITS = media.DecodeLimits(max_bytes=5_000_000, max_megapixels=2.0)
ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
SIZE = (64, 48)


def _photo(mode: str = "RGB", size: tuple[int, int] = SIZE) -> Image.Image:
    """A smooth, textured test picture; RGBA/LA get a horizontal alpha ramp."""
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    planes = [128 + 100 * np.sin(x / 5.0), 128 + 100 * np.cos(y / 4.0), (x * 3 + y * 2) % 256]
    rgb = np.stack(planes, axis=2).astype(np.uint8)
    img = Image.fromarray(rgb)
    alpha = Image.fromarray((x * 255 // (size[0] - 1)).astype(np.uint8))
    if mode in ("RGBA", "LA"):
        img = img.convert(mode[:-1])
        img.putalpha(alpha)
        return img
    return img if mode == "RGB" else img.convert(mode)


def _blocks(colors: int = 8, size: tuple[int, int] = SIZE) -> Image.Image:
    """Flat 16x16 blocks of a few colours: what palette images usually hold."""
    rng = np.random.default_rng(3)
    table = rng.integers(0, 256, (colors, 3), dtype=np.uint8)
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    return Image.fromarray(table[(x // 16 + 3 * (y // 16)) % colors])


def _encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def _open(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def _orientation(data: bytes) -> int | None:
    """The EXIF orientation of a file, read without loading (Pillow applies and drops it when loading a TIFF)."""
    return Image.open(io.BytesIO(data)).getexif().get(0x0112)


def _roundtrip(
    engine: Engine, data: bytes, *, codec: str = "avif", quality: int = 80, scale: int = 2, **restore: object
) -> tuple[bytes, str, media.Decoded]:
    """The store/retrieve path without a store: decode, downscale, encode, metadata, decode, upscale, restore."""
    decoded = media.decode(data, LIMITS)
    blob = media.encode_stored(engine.downscale(decoded.pixels, scale), codec, quality)
    record = decoded.record
    record.scale, record.stored_codec, record.stored_quality = scale, blob.codec, quality
    record.stored_bytes = len(blob)
    metadata = record.to_metadata()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    loaded = media.ImageRecord.from_metadata(metadata)
    assert loaded == record
    big = engine.upscale(media.decode_stored(blob), size=(loaded.width, loaded.height), model="span")
    out, ctype = media.encode_restored(big, loaded, **restore)  # type: ignore[arg-type]
    return out, ctype, decoded


# ---- every format and mode ---------------------------------------------------------------------------------------

CASES = [
    ("JPEG", "RGB", {}),
    ("JPEG", "L", {}),
    ("JPEG", "CMYK", {}),
    ("PNG", "RGB", {}),
    ("PNG", "RGBA", {}),
    ("PNG", "L", {}),
    ("PNG", "LA", {}),
    ("PNG", "P", {}),
    ("PNG", "1", {}),
    ("WEBP", "RGB", {}),
    ("WEBP", "RGBA", {"lossless": True}),
    ("AVIF", "RGB", {}),
    ("AVIF", "RGBA", {}),
    ("AVIF", "L", {}),
    ("GIF", "P", {}),
    ("BMP", "RGB", {}),
    ("BMP", "P", {}),
    ("TIFF", "RGB", {"compression": "tiff_lzw"}),
    ("TIFF", "RGBA", {}),
    ("TIFF", "CMYK", {}),
    ("TIFF", "1", {"compression": "group4"}),
]


@pytest.mark.parametrize(("fmt", "mode", "params"), CASES, ids=[f"{f}-{m}" for f, m, _ in CASES])
def test_roundtrip_keeps_format_mode_and_size(engine: Engine, fmt: str, mode: str, params: dict) -> None:
    src = _photo(mode) if mode != "P" else _blocks().quantize(8)
    data = _encode(src, fmt, **params)
    out, ctype, decoded = _roundtrip(engine, data)
    record = decoded.record
    assert (record.format, record.width, record.height, record.original_bytes) == (fmt, *SIZE, len(data))
    back = _open(out)
    assert (back.format, back.size, back.mode) == (fmt, SIZE, _open(data).mode)
    assert ctype == media.FORMATS[fmt].content_type == media.content_type_for(fmt)
    if fmt == "WEBP" and params.get("lossless"):
        assert record.webp_lossless
    if fmt == "TIFF" and "compression" in params:
        assert back.info["compression"] == params["compression"]


def test_sixteen_bit_grey_keeps_its_depth(engine: Engine) -> None:
    values = (np.add.outer(np.arange(48) * 700, np.arange(64) * 300) % 65536).astype(np.uint16)
    grey = Image.fromarray(values)
    for fmt in ("PNG", "TIFF"):
        data = _encode(grey, fmt)
        decoded = media.decode(data, LIMITS)
        assert decoded.record.bit_depth == 16 and decoded.pixels.mode.startswith("I;16")
        blob = media.encode_stored(decoded.pixels, "avif", 80)
        assert blob.codec == "png16" and media.decode_stored(blob).mode == "I;16"
        out, _, _ = _roundtrip(engine, data)
        back = _open(out)
        assert back.format == fmt and back.mode.startswith("I;16")
        restored = np.asarray(back).astype(np.int64)
        assert np.any(restored % 257 != 0)  # not 8-bit values stretched: the low byte carries information
        # no upscaling in between: the values come back exactly
        same, _ = media.encode_restored(decoded.pixels, decoded.record)
        assert np.array_equal(np.asarray(_open(same)), values)


def _png16(arr: np.ndarray, chunks: bytes = b"") -> bytes:
    """A 16-bit PNG written independently of the code under test (filter 0 on every row)."""
    h, w = arr.shape[:2]
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[1 if arr.ndim == 2 else arr.shape[2]]
    rows = arr.astype(">u2").reshape(h, -1).view(np.uint8)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))

    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + ihdr + chunks + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(("channels", "mode"), [(3, "RGB;16"), (4, "RGBA;16"), (2, "LA;16")])
def test_sixteen_bit_colour_png_keeps_depth_and_metadata(engine: Engine, channels: int, mode: str) -> None:
    rng = np.random.default_rng(channels)
    y, x = np.mgrid[0:48, 0:64]
    smooth = (x * 1000 + y * 37).astype(np.uint16)
    arr = np.dstack([smooth + rng.integers(0, 50, smooth.shape, dtype=np.uint16) for _ in range(channels)])
    exif = Image.Exif()
    exif[0x0112] = 6
    exif_bytes = exif.tobytes()
    icc_payload = b"ICC Profile\x00\x00" + zlib.compress(ICC)
    meta = b"".join(
        struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
        for t, d in ((b"iCCP", icc_payload), (b"eXIf", exif_bytes[6:]), (b"gAMA", struct.pack(">I", 45455)))
    )
    data = _png16(arr, meta)
    decoded = media.decode(data, LIMITS)
    rec = decoded.record
    assert (rec.mode, rec.bit_depth, rec.orientation, rec.icc_profile) == (mode, 16, 6, ICC)
    expected = arr if channels != 2 else np.dstack([arr[:, :, 0]] * 3 + [arr[:, :, 1]])
    assert decoded.pixels.dtype == np.uint16 and np.array_equal(decoded.pixels, expected)
    # exact without upscaling, metadata included
    same, ctype = media.encode_restored(decoded.pixels, rec)
    back = _open(same)
    icc = ICC if channels != 2 else None  # an RGB profile does not fit grey pixels: left out
    assert ctype == "image/png" and back.info.get("icc_profile") == icc
    assert back.info["exif"] == _open(data).info["exif"]
    assert back.info["gamma"] == pytest.approx(0.45455)
    assert same[24:26] == data[24:26]  # bit depth 16 and the colour type of the original
    if channels != 2:
        import cv2

        raw = cv2.imdecode(np.frombuffer(same, np.uint8), cv2.IMREAD_UNCHANGED)
        code = cv2.COLOR_BGRA2RGBA if channels == 4 else cv2.COLOR_BGR2RGB
        assert np.array_equal(cv2.cvtColor(raw, code), arr)
    # and through the real pipeline: still 16 bits deep
    out, _, _ = _roundtrip(engine, data, codec="webp")
    assert out[24:26] == data[24:26] and _open(out).info.get("icc_profile") == icc


# ---- metadata -------------------------------------------------------------------------------------------------


def test_jpeg_icc_exif_xmp_and_encoder_settings_survive(engine: Engine) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "Cam"
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"/>'
    data = _encode(
        _photo(),
        "JPEG",
        quality=83,
        subsampling=0,
        progressive=True,
        icc_profile=ICC,
        exif=exif.tobytes(),
        xmp=xmp,
        dpi=(300, 300),
        comment=b"hello",
    )
    src = _open(data)
    out, _, decoded = _roundtrip(engine, data)
    rec = decoded.record
    assert rec.orientation == 6 and rec.icc_profile == ICC and rec.xmp == xmp and rec.comment == b"hello"
    assert rec.jpeg_subsampling == 0 and rec.progressive and abs(rec.jpeg_quality - 83) <= 1
    back = _open(out)
    assert back.info["exif"] == src.info["exif"] and back.info["icc_profile"] == ICC  # byte for byte
    assert back.info["xmp"] == xmp and back.info["comment"] == b"hello" and back.info.get("progressive")
    assert back.info["dpi"] == pytest.approx((300, 300))
    assert back.quantization == src.quantization  # the original's tables: the same quality
    from PIL import JpegImagePlugin

    assert JpegImagePlugin.get_sampling(back) == 0
    assert back.size == SIZE  # pixels are not rotated: the EXIF orientation travels instead
    # a caller's quality wins over the original tables
    lower, _ = media.encode_restored(decoded.pixels, rec, quality=40)
    assert len(lower) < len(out)


@pytest.mark.parametrize("fmt", ["png", "webp", "avif", "tiff", "jpeg"])
def test_metadata_follows_into_another_format(engine: Engine, fmt: str) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _encode(_photo(), "JPEG", icc_profile=ICC, exif=exif.tobytes(), xmp=b"<xmp/>")
    out, ctype, _ = _roundtrip(engine, data, format=fmt)
    back = _open(out)
    assert back.format == media.normalize_format(fmt) and ctype == media.content_type_for(fmt)
    assert back.info.get("icc_profile") == ICC and _orientation(out) == 6
    if fmt in ("png", "webp", "avif", "jpeg"):
        assert back.info.get("xmp") == b"<xmp/>"


def test_png_chunks_text_gamma_icc_and_exif_survive(engine: Engine) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "paint")
    info.add_text("parameters", "long prompt " * 20, zip=True)
    info.add_itxt("Title", "Grüße", lang="de")
    info.add(b"gAMA", struct.pack(">I", 45455))
    exif = Image.Exif()
    exif[0x0112] = 8
    data = _encode(_photo("RGBA"), "PNG", pnginfo=info, icc_profile=ICC, exif=exif.tobytes(), dpi=(144, 144))
    src = _open(data)
    out, _, decoded = _roundtrip(engine, data)
    assert decoded.record.orientation == 8
    back = _open(out)
    for key in ("Software", "parameters", "Title", "gamma", "icc_profile", "exif"):
        assert back.info[key] == src.info[key], key
    assert back.info["dpi"] == pytest.approx(src.info["dpi"])


@pytest.mark.parametrize("fmt", ["WEBP", "AVIF", "TIFF", "PNG"])
def test_orientation_is_kept_and_pixels_are_not_rotated(engine: Engine, fmt: str) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    src = _photo()
    lossless = {"WEBP": {"lossless": True}, "AVIF": {"quality": 90}}.get(fmt, {})
    data = _encode(src, fmt, icc_profile=ICC, exif=exif.tobytes(), **lossless)
    out, _, decoded = _roundtrip(engine, data)
    rec = decoded.record
    assert rec.orientation == 6 and rec.icc_profile == ICC and (rec.width, rec.height) == SIZE
    assert decoded.pixels.size == SIZE  # as stored, not as displayed
    if fmt != "AVIF":
        assert np.array_equal(np.asarray(decoded.pixels), np.asarray(src))
    assert _open(out).info["icc_profile"] == ICC and _orientation(out) == 6
    assert Image.open(io.BytesIO(out)).size == _open(data).size  # displayed the same way as the original


def test_icc_is_dropped_where_its_colour_space_does_not_fit(engine: Engine) -> None:
    cmyk_icc = bytearray(ICC)
    cmyk_icc[16:20] = b"CMYK"  # a profile that claims CMYK: wrong for the RGB pixels a PNG gets
    data = _encode(_photo("CMYK"), "JPEG", icc_profile=bytes(cmyk_icc))
    as_png, _, _ = _roundtrip(engine, data, format="png")
    assert "icc_profile" not in _open(as_png).info
    as_jpeg, _, _ = _roundtrip(engine, data)
    assert _open(as_jpeg).info["icc_profile"] == bytes(cmyk_icc)


# ---- alpha, palettes, grey, CMYK ---------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", media.STORED_CODECS)
@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_survives_every_stored_codec(engine: Engine, codec: str, mode: str) -> None:
    src = _photo(mode)
    blob = media.encode_stored(src, codec, 90)
    assert isinstance(blob, bytes) and blob.content_type.startswith("image/")
    if codec == "jpeg":
        assert blob.codec == "webp"  # JPEG cannot hold alpha: the record says what was used
    back = media.decode_stored(blob)
    assert "A" in back.getbands()
    alpha_err = np.abs(np.asarray(back.getchannel("A"), int) - np.asarray(src.getchannel("A"), int))
    assert alpha_err.mean() < 2
    out, _, _ = _roundtrip(engine, _encode(src, "PNG"), codec=codec, quality=90)
    restored = _open(out)
    assert restored.mode == mode
    err = np.abs(np.asarray(restored.getchannel("A"), float) - np.asarray(src.getchannel("A"), float))
    assert err[2:-2, 2:-2].mean() < 3


def test_opaque_alpha_is_not_stored() -> None:
    blob = media.encode_stored(_photo().convert("RGBA"), "jpeg", 80)
    assert blob.codec == "jpeg" and media.decode_stored(blob).mode == "RGB"


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency_restores_to_the_original_palette(engine: Engine, fmt: str) -> None:
    y, x = np.mgrid[0:48, 0:64]
    arr = ((x // 16 + 3 * (y // 16)) % 6).astype(np.uint8)
    arr[:16, :16] = 6  # one transparent block
    src = Image.frombytes("P", (64, 48), arr.tobytes())
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (240, 240, 20), (20, 240, 240), (90, 90, 90), (0, 0, 0)]
    src.putpalette([v for c in colours for v in c])
    data = _encode(src, fmt, transparency=6)
    original = _open(data)
    out, _, decoded = _roundtrip(engine, data, codec="webp-lossless")
    rec = decoded.record
    assert rec.mode == "P" and rec.has_alpha and rec.transparency == original.info["transparency"]
    back = _open(out)
    assert back.mode == "P" and back.info["transparency"] == original.info["transparency"]
    assert back.getpalette() == original.getpalette()
    same = np.mean(np.asarray(back) == np.asarray(original))
    assert same > 0.9, same  # flat blocks come back as the same palette entries


def test_palette_with_alpha_per_entry(engine: Engine) -> None:
    src = _blocks(colors=4).quantize(4)
    data = _encode(src, "PNG", transparency=bytes([0, 90, 180, 255]))
    out, _, decoded = _roundtrip(engine, data, codec="png")
    assert decoded.record.palette_alpha == bytes([0, 90, 180, 255])
    back = _open(out)
    assert back.mode == "P" and back.info["transparency"] == bytes([0, 90, 180, 255])
    assert back.getpalette() == _open(data).getpalette()
    same = np.asarray(back) == np.asarray(_open(data))
    assert same.mean() > 0.9  # the same entries, per-entry alpha included


def test_colour_key_transparency_of_rgb_png(engine: Engine) -> None:
    src = _blocks(colors=5)
    key = tuple(int(v) for v in np.asarray(src)[0, 0])
    data = _encode(src, "PNG", transparency=key)
    out, _, decoded = _roundtrip(engine, data, codec="png")
    assert decoded.record.transparency == key and decoded.pixels.mode == "RGBA"
    back = _open(out)
    assert back.mode == "RGB" and back.info["transparency"] == key
    assert tuple(np.asarray(back)[2, 2]) == key  # inside the transparent block


@pytest.mark.parametrize("codec", media.STORED_CODECS)
def test_grey_stays_grey(engine: Engine, codec: str) -> None:
    blob = media.encode_stored(_photo("L"), codec, 85)
    if codec != "webp":  # lossy WebP is YUV: its channels come back near-equal, and L on restore
        assert media.decode_stored(blob).mode == "L"
    out, _, _ = _roundtrip(engine, _encode(_photo("L"), "PNG"), codec=codec)
    assert _open(out).mode == "L"


def test_cmyk_jpeg_comes_back_cmyk_with_close_colours(engine: Engine) -> None:
    src = _photo("CMYK")
    data = _encode(src, "JPEG", quality=95, icc_profile=None)
    decoded = media.decode(data, LIMITS)
    assert decoded.record.mode == "CMYK" and decoded.pixels.mode == "RGB" and "CMYK" in decoded.record.note
    same, _ = media.encode_restored(decoded.pixels, decoded.record)
    back = _open(same)
    assert back.mode == "CMYK"
    diff = np.abs(np.asarray(back.convert("RGB"), int) - np.asarray(_open(data).convert("RGB"), int))
    assert diff.mean() < 3  # same colours on screen; the ink separation is recomputed (K from grey)


def test_format_override_flattens_alpha_for_jpeg(engine: Engine) -> None:
    data = _encode(_photo("RGBA"), "PNG")
    out, ctype, _ = _roundtrip(engine, data, format="jpg", quality=90)
    back = _open(out)
    assert ctype == "image/jpeg" and back.mode == "RGB"
    assert np.asarray(back)[:, :3].mean() > 200  # the transparent left edge is white, not black
    as_webp, _, _ = _roundtrip(engine, data, format="webp")
    assert _open(as_webp).mode == "RGBA"
    with pytest.raises(InvalidInput):
        media.encode_restored(_photo(), media.decode(data, LIMITS).record, format="svg")
    with pytest.raises(InvalidInput):
        media.encode_restored(_photo(), media.decode(data, LIMITS).record, quality=0)


def test_multi_image_files_keep_the_first_and_say_so() -> None:
    buf = io.BytesIO()
    _photo().save(buf, "MPO", save_all=True, append_images=[_photo().rotate(90)])
    decoded = media.decode(buf.getvalue(), LIMITS)
    assert decoded.record.format == "JPEG" and decoded.record.frames == 2 and "primary" in decoded.record.note
    buf = io.BytesIO()
    _photo().save(buf, "TIFF", save_all=True, append_images=[_photo("L")])
    with pytest.raises(UnsupportedMedia, match="2 pages"):  # a page would be lost without a word (issue #15)
        media.decode(buf.getvalue(), LIMITS)


@pytest.mark.parametrize("quality", [30, 50, 75, 90, 95])
def test_jpeg_quality_estimate(quality: int) -> None:
    rec = media.decode(_encode(_photo(), "JPEG", quality=quality), LIMITS).record
    assert abs(rec.jpeg_quality - quality) <= 1


# ---- bad input ---------------------------------------------------------------------------------------------


def _png_claiming(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose IHDR is patched to claim another size (CRC fixed)."""
    data = bytearray(_encode(Image.new("L", (1, 1)), "PNG"))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64


@pytest.mark.parametrize(
    ("data", "error", "words"),
    [
        (b"", UndecodableImage, "empty"),
        (bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8)), UnsupportedMedia, "not an image"),
        (b"hello world, plain text\n", UnsupportedMedia, "not an image"),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>', UnsupportedMedia, "SVG"),
        (b"%PDF-1.7\n", UnsupportedMedia, "PDF"),
        (HEIC, UnsupportedMedia, "HEIC"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 50, UndecodableImage, "JPEG"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 50, UndecodableImage, "PNG"),
        (b"GIF89a", UndecodableImage, "GIF"),
        (b"x" * 6_000_000, TooLarge, "bytes"),
        (b"\x89PNG\r\n\x1a\n" * 700_000, TooLarge, "bytes"),  # size is checked before anything else
    ],
)
def test_bad_input(data: bytes, error: type, words: str) -> None:
    with pytest.raises(error, match=words):
        media.decode(data, LIMITS)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "AVIF", "GIF", "BMP", "TIFF"])
def test_truncated_files_are_refused(fmt: str) -> None:
    src = _photo(size=(128, 96))
    data = _encode(src.quantize(64) if fmt == "GIF" else src, fmt)
    with pytest.raises(UndecodableImage, match=r"truncated|corrupt"):
        media.decode(data[: len(data) * 2 // 3], LIMITS)


def test_a_broken_header_is_explained_without_python_internals() -> None:
    with pytest.raises(UndecodableImage) as info:
        media.decode(b"\xff\xd8\xff\xe0" + b"\x00" * 200, LIMITS)  # JPEG magic, then nothing
    assert "corrupt or truncated" in info.value.message and "object at 0x" not in info.value.message


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_corrupt_bytes_never_escape_as_pillow_errors(fmt: str) -> None:
    data = _encode(_photo().quantize(32) if fmt == "GIF" else _photo(), fmt)
    rng = np.random.default_rng(1)
    for _ in range(40):
        broken = bytearray(data)
        for pos in rng.integers(0, len(data), 4):
            broken[pos] = int(rng.integers(0, 256))
        with contextlib.suppress(UpscalerError):
            media.decode(bytes(broken), LIMITS)


def test_decompression_bomb_is_refused_from_the_header() -> None:
    with pytest.raises(TooLarge, match=r"decompression bomb|megapixels"):
        media.decode(_png_claiming(100_000, 100_000), LIMITS)  # over Pillow's own guard too
    with pytest.raises(TooLarge, match="megapixels"):
        media.decode(_png_claiming(2000, 1500), LIMITS)  # 3 MP: over our 2 MP limit, under Pillow's


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP", "AVIF"])
def test_animations_are_refused(fmt: str) -> None:
    frames = [_photo(), _photo().rotate(90)]
    if fmt == "GIF":
        frames = [f.quantize(32) for f in frames]
    buf = io.BytesIO()
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], duration=100)
    with pytest.raises(UnsupportedMedia, match="animated"):
        media.decode(buf.getvalue(), LIMITS)


def test_unsupported_pixel_mode() -> None:
    data = _encode(Image.fromarray(np.ones((8, 8), np.float32)), "TIFF")
    with pytest.raises(UnsupportedMedia, match="mode"):
        media.decode(data, LIMITS)


# ---- the record ------------------------------------------------------------------------------------------------


def test_record_roundtrips_every_field() -> None:
    rec = media.ImageRecord(
        width=3,
        height=2,
        format="PNG",
        mode="P",
        icc_profile=ICC,
        exif=b"Exif\x00\x00MM",
        dpi=(72.009, 72.009),
        transparency=(1, 2, 3),
        jpeg_qtables=[list(range(64))],
        palette=bytes(range(9)),
        has_alpha=True,
        scale=4.0,
        note="a; b",
        model="span",
    )
    meta = rec.to_metadata()
    assert meta["record_version"] == str(media.RECORD_VERSION) and meta["has_alpha"] == "1"
    assert media.ImageRecord.from_metadata(meta) == rec
    json.dumps(rec.describe())  # JSON-friendly


def test_record_ignores_future_fields_and_reads_version_1() -> None:
    rec = media.decode(_encode(_photo(), "PNG"), LIMITS).record
    meta = rec.to_metadata() | {"record_version": "7", "future_field": "x"}
    assert media.ImageRecord.from_metadata(meta) == rec
    legacy = {"width": 4, "height": 3, "format": "JPEG", "mode": "RGB", "exif": base64.b64encode(b"E").decode()}
    old = media.ImageRecord.from_metadata({"record_version": "1", "record": json.dumps(legacy | {"gone": 1})})
    assert (old.width, old.format, old.exif) == (4, "JPEG", b"E")


@pytest.mark.parametrize(
    "change",
    [
        None,  # no record at all
        {"width": "wide"},
        {"width": "0"},
        {"format": "SVG"},
        {"icc_profile": "not base64!"},
        {"has_alpha": "maybe"},
        {"dpi": "[1]"},
        {"dpi": "{not json"},
        {"transparency": '"red"'},
        {"jpeg_qtables": "[[1, 2]]"},
        {"scale": "nan"},
        {"mode": None},
    ],
)
def test_malformed_metadata_is_a_clear_error(change: dict | None) -> None:
    meta = media.decode(_encode(_photo(), "PNG"), LIMITS).record.to_metadata()
    if change is None:
        meta = {}
    else:
        for key, value in change.items():
            if value is None:
                meta.pop(key)
            else:
                meta[key] = value
    with pytest.raises(media.InvalidRecord) as info:
        media.ImageRecord.from_metadata(meta)
    assert isinstance(info.value, UpscalerError) and info.value.status == 422
    with pytest.raises(media.InvalidRecord):
        media.ImageRecord.from_metadata({"record_version": "1", "record": "{not json"})


def test_format_names() -> None:
    assert media.normalize_format("jpg") == "JPEG" and media.normalize_format(".TIF") == "TIFF"
    assert media.content_type_for("image/webp") == "image/webp" and media.extension_for("jpeg") == ".jpg"
    assert set(media.FORMATS) == {"JPEG", "PNG", "WEBP", "AVIF", "JXL", "GIF", "BMP", "TIFF"}
    with pytest.raises(InvalidInput):
        media.normalize_format("svg")
    with pytest.raises(InvalidInput):
        media.encode_stored(_photo(), "heic", 80)
    with pytest.raises(InvalidInput):
        media.encode_stored(_photo(), "avif", 101)


def test_sixteen_bit_colour_tiff_keeps_depth() -> None:
    import cv2

    rgb = (np.random.default_rng(5).random((48, 64, 3)) * 65535).astype(np.uint16)
    _, tif = cv2.imencode(".tiff", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    decoded = media.decode(tif.tobytes(), LIMITS)
    assert decoded.record.mode == "RGB;16" and np.array_equal(decoded.pixels, rgb)
    out, ctype = media.encode_restored(decoded.pixels, decoded.record)
    back = cv2.imdecode(np.frombuffer(out, np.uint8), cv2.IMREAD_UNCHANGED)
    assert ctype == "image/tiff" and np.array_equal(cv2.cvtColor(back, cv2.COLOR_BGR2RGB), rgb)
    as_jpeg, _ = media.encode_restored(decoded.pixels, decoded.record, format="jpeg")
    assert _open(as_jpeg).mode == "RGB"  # 8 bits where the format has no more
