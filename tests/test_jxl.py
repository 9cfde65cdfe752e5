"""JPEG XL everywhere an image is: read (size limits from the header, before libjxl decodes anything), written on
retrieval (format=jxl), stored (lossy, lossless, and JPEG recompressed to give back the very same file), and
refused with the same clear 4xx as other formats when truncated, lying about its size, or a decompression bomb —
through the media layer and through the real HTTP server."""

from __future__ import annotations

import base64
import hashlib
import io

import pytest
import requests
from PIL import Image

from tests.servers import api_server, model_server
from upscaler import media, metrics
from upscaler.errors import TooLarge, UndecodableImage

LIMITS = media.DecodeLimits(max_bytes=4 * 1024 * 1024, max_megapixels=4.0)


def _photo(size: tuple[int, int] = (96, 64)) -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut()[40 : 40 + size[1], 160 : 160 + size[0]])


def _jxl(img: Image.Image, **params: object) -> bytes:
    media.formats.jxl_ready()
    buf = io.BytesIO()
    img.save(buf, "JXL", lossless_jpeg=False, **params)
    return buf.getvalue()


def _jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _lying_header(side: int) -> bytes:
    """A JPEG XL codestream whose SizeHeader claims side x side (U32 selector 2: 18 bits, ratio 1:1), then junk."""
    bits = (2 << 1) | ((side - 1) << 3) | (1 << 21)
    return b"\xff\x0a" + bits.to_bytes(4, "little") + bytes(range(64))


@pytest.mark.parametrize("size", [(96, 64), (33, 17), (8, 8), (1000, 750), (7, 301)])
def test_the_size_is_read_from_the_header_as_libjxl_decodes_it(size: tuple[int, int]) -> None:
    img = Image.new("RGB", size, (10, 200, 30))
    for data in (_jxl(img, quality=80), _jxl(img, lossless=True)):
        assert media.sniff(data) == "JXL" and media.formats.jxl_size(data) == size
        assert Image.open(io.BytesIO(data)).size == size
    boxed = media.recompress_jpeg(_jpeg(img))  # the ISO-BMFF container form
    assert boxed.startswith(media.formats.JXL_CONTAINER) and media.formats.jxl_size(boxed) == size


def test_jxl_originals_are_read_and_restored_as_jxl() -> None:
    lossless = _jxl(_photo(), lossless=True)
    decoded = media.decode(lossless, LIMITS)
    assert decoded.record.format == "JXL" and (decoded.record.width, decoded.record.height) == (96, 64)
    assert metrics.psnr(_photo(), decoded.pixels) == float("inf")
    again, content_type = media.encode_restored(decoded.pixels, decoded.record)
    assert content_type == "image/jxl" and media.sniff(again) == "JXL"
    assert metrics.psnr(_photo(), media.decode(again, LIMITS).pixels) > 35
    as_jxl, content_type = media.encode_restored(media.decode(_jpeg(_photo()), LIMITS).pixels, decoded.record)
    assert content_type == "image/jxl" and media.decode(as_jxl, LIMITS).record.format == "JXL"


def _swapped_primaries_icc() -> bytes:
    """An RGB profile that is sRGB with its red and blue primaries exchanged: a pixel stored as (200, 30, 30) is
    displayed as sRGB (30, 30, 200). Tells a JPEG XL retrieval that honours the profile from one that drops it."""
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    count = int.from_bytes(icc[128:132], "big")
    where = {icc[132 + 12 * i : 136 + 12 * i]: 132 + 12 * i for i in range(count)}
    swapped, red, blue = bytearray(icc), where[b"rXYZ"], where[b"bXYZ"]
    swapped[red + 4 : red + 12], swapped[blue + 4 : blue + 12] = icc[blue + 4 : blue + 12], icc[red + 4 : red + 12]
    return bytes(swapped)


def test_jxl_output_keeps_the_colours_of_an_icc_profile_it_cannot_embed() -> None:
    """The binding writes no ICC profile and a JPEG XL file without one is read as sRGB: the pixels are converted
    to sRGB from the original's profile, so a viewer sees the colours it would have seen in the original."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buf, "JPEG", quality=95, icc_profile=_swapped_primaries_icc())
    decoded = media.decode(buf.getvalue(), LIMITS)
    as_jxl, _ = media.encode_restored(decoded.pixels, decoded.record, format="jxl")
    red, green, blue = Image.open(io.BytesIO(as_jxl)).convert("RGB").getpixel((32, 24))
    assert blue > 150 and red < 80 and abs(green - 30) < 20  # displayed blue, as the profile says
    as_jpeg, _ = media.encode_restored(decoded.pixels, decoded.record)  # the original's format keeps the profile
    with Image.open(io.BytesIO(as_jpeg)) as back:
        assert back.info["icc_profile"] == _swapped_primaries_icc() and back.getpixel((32, 24))[0] > 150


@pytest.mark.parametrize("codec", ["jxl", "jxl-lossless"])
def test_jxl_stored_forms_round_trip(codec: str) -> None:
    rgba = _photo().convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    for img in (_photo(), _photo().convert("L"), rgba):
        blob = media.encode_stored(img, codec, 100)  # lossy 100 is libjxl's finest lossy setting (99)
        back = media.decode_stored(blob)
        assert blob.codec == codec and blob.content_type == "image/jxl" and back.size == img.size
        assert back.mode == img.mode
        score = metrics.psnr(img.convert("RGB"), back.convert("RGB"))
        assert score == float("inf") if codec == "jxl-lossless" else score > 40


def test_a_jpeg_recompressed_into_jxl_gives_back_the_same_file() -> None:
    original = _jpeg(_photo((256, 192)), 90)  # large enough for the container's overhead to be paid back
    blob = media.recompress_jpeg(original)
    assert blob.codec == "jxl-jpeg" and len(blob) < len(original)
    assert hashlib.sha256(media.reconstruct_jpeg(blob)).digest() == hashlib.sha256(original).digest()
    with pytest.raises(UndecodableImage):
        media.reconstruct_jpeg(media.encode_stored(_photo(), "jxl", 80))  # no JPEG inside


@pytest.mark.parametrize("cut", [0.5, 0.1])
def test_a_truncated_jxl_is_refused_like_any_truncated_image(cut: float) -> None:
    data = _jxl(_photo(), quality=80)
    with pytest.raises(UndecodableImage, match="JXL") as caught:
        media.decode(data[: int(len(data) * cut)], LIMITS)
    assert caught.value.status == 422 and "libjxl" not in caught.value.message
    with pytest.raises(UndecodableImage):
        media.decode_stored(data[: int(len(data) * cut)])


def test_a_jxl_over_the_limits_is_refused_from_its_header() -> None:
    with pytest.raises(TooLarge, match="megapixels") as caught:
        media.decode(_lying_header(3000), LIMITS)  # 9 MP claimed in a 70-byte file
    assert caught.value.status == 413
    with pytest.raises(TooLarge, match="decompression bomb"):  # Pillow's own limit, applied before libjxl runs
        media.decode(_lying_header(20000), media.DecodeLimits(max_megapixels=10_000))
    with pytest.raises(UndecodableImage):  # within the limits, the header lies: libjxl fails on it
        media.decode(_lying_header(100), LIMITS)


# ---- through the real server ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> str:
    env = {"UPSCALER_MAX_REQUEST_BYTES": str(2 * 1024 * 1024), "UPSCALER_MAX_SOURCE_MEGAPIXELS": "4"}
    with api_server(tmp_path_factory.mktemp("jxl"), env) as url:
        yield url


def _store(api: str, data: bytes, key: str, **extra: object) -> requests.Response:
    body = {"image": base64.b64encode(data).decode(), "s3_key_name": key, **extra}
    return requests.post(api + "/store", json=body, verify=False)


@pytest.mark.slow
def test_http_jxl_in_and_out_and_exact_jpeg(api: str) -> None:
    resp = _store(api, _jxl(_photo(), quality=90), "photo.jxl", scale=2)
    assert resp.status_code == 200, resp.text
    back = requests.get(api + "/v1/images/photo.jxl", params={"bucket": "media"}, verify=False)
    assert back.status_code == 200 and back.headers["Content-Type"] == "image/jxl"
    assert media.decode(back.content, LIMITS).record.format == "JXL"
    original = _jpeg(_photo((256, 192)), 90)
    url = api + "/v1/images/exact.jpg?bucket=media&target=exact"
    resp = requests.put(url, data=original, headers={"Content-Type": "image/jpeg"}, verify=False)
    assert resp.status_code == 201 and resp.json()["stored"]["codec"] == "jxl-jpeg", resp.text
    assert resp.json()["stored"]["bytes"] < len(original)
    back = requests.get(api + "/v1/images/exact.jpg", params={"bucket": "media"}, verify=False)
    assert back.content == original and back.headers["Content-Type"] == "image/jpeg"
    as_jxl = requests.get(api + "/v1/images/exact.jpg", params={"bucket": "media", "format": "jxl"}, verify=False)
    assert as_jxl.status_code == 200 and as_jxl.headers["Content-Type"] == "image/jxl"
    assert metrics.psnr(_photo((256, 192)), media.decode(as_jxl.content, LIMITS).pixels) > 30


@pytest.mark.slow
def test_http_broken_jxl_gets_the_same_4xx_as_other_formats(api: str) -> None:
    png = io.BytesIO()
    _photo().save(png, "PNG")
    truncated_png = _store(api, png.getvalue()[:300], "cut.png")
    truncated_jxl = _store(api, _jxl(_photo(), quality=80)[:150], "cut.jxl")
    assert truncated_jxl.status_code == truncated_png.status_code == 422, truncated_jxl.text
    assert "JXL" in truncated_jxl.text and "Traceback" not in truncated_jxl.text
    big = io.BytesIO()
    Image.new("L", (3000, 2000)).save(big, "PNG")  # 6 MP, over this server's 4 MP limit
    png_bomb = _store(api, big.getvalue(), "bomb.png")
    jxl_bomb = _store(api, _jxl(Image.new("L", (3000, 2000)), quality=10, effort=1), "bomb.jxl")
    lying = _store(api, _lying_header(3000), "lying.jxl")
    assert jxl_bomb.status_code == png_bomb.status_code == lying.status_code == 413, jxl_bomb.text
    assert "megapixels" in jxl_bomb.text and "megapixels" in lying.text


@pytest.mark.slow
def test_the_model_server_reads_and_answers_jxl(tmp_path) -> None:
    with model_server(tmp_path) as url:
        resp = requests.post(
            url + "/invocations",
            data=_jxl(_photo(), quality=90),
            headers={
                "Content-Type": "image/jxl",
                "Accept": "image/jxl",
                "X-Amzn-SageMaker-Custom-Attributes": "scale=2",
            },
        )
    assert resp.status_code == 200 and resp.headers["Content-Type"] == "image/jxl", resp.text
    back = media.decode(resp.content, LIMITS)
    assert back.record.format == "JXL" and (back.record.width, back.record.height) == (192, 128)
