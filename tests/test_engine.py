"""The engine on real models: modes, sizes, tiling, roundtrip fidelity and errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from upscaler import metrics
from upscaler.config import Settings
from upscaler.engine import Engine, downscale_size, model_names, pixels, registry, resolve, tiling
from upscaler.errors import (
    InvalidInput,
    TooLarge,
    UndecodableImage,
    UnknownModel,
    UnsupportedMedia,
    UnsupportedScale,
    UpscalerError,
)

# ---- registry -------------------------------------------------------------------------------------------------


def test_registry_has_the_models_with_weights_from_packages() -> None:
    for name in [
        "span-x2",
        "span-x4",
        "realesr-animevideov3-x2",
        "realesr-animevideov3-x3",
        "realesr-animevideov3-x4",
        "realesrgan-x4plus",
    ]:
        spec = registry.MODELS[name]
        param, weights = registry.weight_files(spec)
        assert param.stat().st_size > 1000 and weights.stat().st_size > 100_000
        assert spec.license and spec.package
    assert registry.MODELS["span-x2"].kind == registry.FIDELITY
    assert registry.MODELS["realesrgan-x4plus"].kind == registry.PERCEPTUAL


@pytest.mark.parametrize(
    ("name", "scale", "expected"),
    [
        ("span", 2, "span-x2"),
        ("span", 1.5, "span-x2"),
        ("span", 3, "span-x4"),
        ("span", 4, "span-x4"),
        ("span", 8, "span-x4"),
        ("realesr-animevideov3", 3, "realesr-animevideov3-x3"),
        ("span-x4", 2, "span-x4"),
        ("realesrgan-x4plus", 4, "realesrgan-x4plus"),
        ("realesrgan", 4, "realesrgan-x4plus"),  # the original service's name
        ("bicubic", 7.5, "bicubic"),
        ("SPAN", 2, "span-x2"),
    ],
)
def test_resolve(name: str, scale: float, expected: str) -> None:
    assert resolve(name, scale).name == expected


def test_resolve_errors_name_alternatives() -> None:
    with pytest.raises(UnknownModel, match="span-x2"):
        resolve("nope", 2)
    with pytest.raises(UnsupportedScale, match="span-x4"):
        resolve("span-x2", 4)
    with pytest.raises(UnsupportedScale):
        resolve("span", 0.5)
    with pytest.raises(UnsupportedScale):
        resolve("span", 100)
    assert "span" in model_names() and "span-x4" in model_names()


def test_model_dir_overrides_packaged_weights(tmp_path) -> None:
    spec = registry.MODELS["span-x2"]
    param, weights = registry.weight_files(spec)
    (tmp_path / "span-x2.param").write_bytes(param.read_bytes())
    (tmp_path / "span-x2.bin").write_bytes(weights.read_bytes())
    assert registry.weight_files(spec, tmp_path) == (tmp_path / "span-x2.param", tmp_path / "span-x2.bin")
    assert registry.weight_files(spec, tmp_path / "missing")[0] == param


# ---- modes ----------------------------------------------------------------------------------------------------


def test_rgb_exact_scale(engine: Engine, photo: Image.Image) -> None:
    out = engine.upscale(photo, 2, model="span")
    assert out.size == (256, 192) and out.mode == "RGB"


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA"])
def test_modes_are_kept(engine: Engine, photo: Image.Image, mode: str) -> None:
    src = photo.convert(mode)
    out = engine.upscale(src, 2, model="span")
    assert out.mode == mode and out.size == (256, 192)


def test_alpha_is_upscaled_not_dropped(engine: Engine, gradient_rgba: Image.Image) -> None:
    out = engine.upscale(gradient_rgba, 2, model="span")
    assert out.mode == "RGBA" and out.size == (128, 96)
    alpha = np.asarray(out)[:, :, 3].astype(float)
    expected = np.asarray(gradient_rgba.getchannel("A").resize((128, 96), Image.Resampling.BICUBIC)).astype(float)
    assert np.abs(alpha - expected).mean() < 4.0  # the model's alpha follows the ramp
    assert alpha[:, :20].max() <= 2 and alpha[:, -20:].min() >= 253
    # colour under opaque pixels is not darkened by the transparent area (premultiplied processing)
    rgb_up = np.asarray(out)[:, -30:, :3].astype(float)
    rgb_ref = np.asarray(engine.upscale(gradient_rgba.convert("RGB"), 2, model="span"))[:, -30:].astype(float)
    assert np.abs(rgb_up - rgb_ref).mean() < 3.0


def test_fully_opaque_alpha_is_cheap_and_kept(engine: Engine, photo: Image.Image) -> None:
    out = engine.upscale(photo.convert("RGBA"), 2, model="span")
    assert np.asarray(out)[:, :, 3].min() == 255


def test_bicubic_alpha_option(engine: Engine, gradient_rgba: Image.Image) -> None:
    out = engine.upscale(gradient_rgba, 2, model="span", alpha="bicubic")
    assert out.mode == "RGBA"
    with pytest.raises(InvalidInput):
        engine.upscale(gradient_rgba, 2, alpha="nearest")


def test_palette_with_transparency_becomes_rgba(engine: Engine, gradient_rgba: Image.Image) -> None:
    pal = gradient_rgba.convert("RGB").quantize(16)
    pal.info["transparency"] = 0
    out = engine.upscale(pal, 2, model="span")
    assert out.mode == "RGBA" and out.info["upscaler_conversion"] == "P->RGBA"
    opaque = gradient_rgba.convert("RGB").quantize(16)
    assert engine.upscale(opaque, 2, model="span").mode == "RGB"


def test_sixteen_bit_grey_keeps_its_depth(engine: Engine) -> None:
    ramp = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
    img = Image.fromarray(ramp)
    assert img.mode == "I;16"
    out = engine.upscale(img, 2, model="span")
    assert out.mode == "I;16" and out.size == (128, 96)
    values = np.asarray(out)
    assert values.dtype == np.uint16
    assert len(np.unique(values)) > 1000  # far more levels than 8 bits could hold


def test_sixteen_bit_rgb_array(engine: Engine, photo: Image.Image) -> None:
    arr = np.asarray(photo).astype(np.uint16) * 257
    out = engine.upscale(arr, 2, model="span")
    assert out.dtype == np.uint16 and out.shape == (192, 256, 3)
    assert np.abs(out.astype(float) / 257 - np.asarray(engine.upscale(photo, 2, model="span"))).mean() < 0.5


def test_cmyk_is_converted_and_says_so(engine: Engine, photo: Image.Image) -> None:
    out = engine.upscale(photo.convert("CMYK"), 2, model="bicubic")
    assert out.mode == "RGB" and out.info["upscaler_conversion"] == "CMYK->RGB"


@pytest.mark.parametrize("shape", [(20, 30), (20, 30, 1), (20, 30, 3), (20, 30, 4)])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_numpy_layouts_round_trip(engine: Engine, shape: tuple[int, ...], dtype: type) -> None:
    rng = np.random.default_rng(0)
    arr = rng.random(shape).astype(np.float32)
    if dtype is not np.float32:
        arr = (arr * np.iinfo(dtype).max).astype(dtype)
    out = engine.upscale(arr, 2, model="span")
    assert out.dtype == dtype and out.shape == (40, 60, *shape[2:])


def test_unsupported_modes_and_types(engine: Engine) -> None:
    with pytest.raises(UnsupportedMedia):
        engine.upscale(Image.new("F", (8, 8)), 2)
    with pytest.raises(UnsupportedMedia):
        engine.upscale(np.zeros((8, 8, 2), np.uint8), 2)
    with pytest.raises(UnsupportedMedia):
        engine.upscale(np.zeros((8, 8, 3), np.int64), 2)
    with pytest.raises(InvalidInput):
        engine.upscale(b"not an image", 2)  # type: ignore[arg-type]


# ---- sizes and tiling -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(257, 193), (255, 191), (300, 200), (129, 97)])
def test_exact_output_size(engine: Engine, photo: Image.Image, size: tuple[int, int]) -> None:
    assert engine.upscale(photo, model="span", size=size).size == size


@pytest.mark.parametrize("scale", [1, 1.5, 3, 2.5])
def test_arbitrary_scale(engine: Engine, photo: Image.Image, scale: float) -> None:
    out = engine.upscale(photo, scale, model="span")
    assert out.size == (round(128 * scale), round(96 * scale))


def test_odd_and_tiny_sizes(engine: Engine) -> None:
    for w, h in [(1, 1), (1, 7), (5, 3), (33, 17)]:
        img = Image.new("RGB", (w, h), (200, 30, 60))
        out = engine.upscale(img, 4, model="span")
        assert out.size == (4 * w, 4 * h)
        assert np.abs(np.asarray(out).astype(int) - [200, 30, 60]).max() <= 8  # a flat colour stays flat


@pytest.mark.parametrize("model", ["span-x2", "span-x4", "realesr-animevideov3-x2", "realesr-animevideov3-x4"])
def test_tiled_equals_untiled(engine: Engine, model: str) -> None:
    from skimage import data

    scale = registry.MODELS[model].scale
    hr = Image.fromarray(data.astronaut()[64:320, 128:384])
    lr = engine.downscale(hr, scale)
    untiled = engine.upscale(lr, model=model, size=hr.size, tile=1024)
    tiled = engine.upscale(lr, model=model, size=hr.size, tile=48)  # many tiles, many seams
    assert metrics.psnr(untiled, tiled, crop_border=scale) > 60  # the two agree almost exactly
    gap = abs(metrics.psnr(hr, untiled, scale) - metrics.psnr(hr, tiled, scale))
    assert gap <= 0.01, f"tiling moves PSNR by {gap:.4f} dB"  # measured: 0.0007-0.0056 dB at 48 px tiles


SPAN_X4_TILE_PIXELS = 768 * 2**20 // 4_500  # the default memory budget over span-x4's bytes per input pixel


@pytest.mark.parametrize(
    ("height", "width", "tile", "max_pixels", "tiles", "side", "most"),
    [
        (768, 1024, 416, None, 6, (392, 352), 1.06),  # the old grid took 6 tiles of 416 px: 1.32x the pixels
        (1224, 1224, 416, None, 16, (318, 318), 1.08),  # old: 16 of 416 px, 1.85x
        (816, 816, 416, None, 4, (416, 416), 1.04),
        (300, 200, 416, None, 1, (300, 200), 1.0),
        # The budget as an area: the 416 px square's budget holds 419x419, so 9 tiles instead of 16.
        (1224, 1224, 2048, SPAN_X4_TILE_PIXELS, 9, (419, 419), 1.055),
        (768, 1024, 2048, SPAN_X4_TILE_PIXELS, 6, (392, 352), 1.053),
        (300, 200, 2048, SPAN_X4_TILE_PIXELS, 1, (300, 200), 1.0),
        (100, 3000, 2048, SPAN_X4_TILE_PIXELS, 2, (100, 1508), 1.006),  # a strip: rectangles, not squares
    ],
)
def test_grid_is_the_fewest_equal_tiles(
    height: int, width: int, tile: int, max_pixels: int | None, tiles: int, side: tuple[int, int], most: float
) -> None:
    grid = tiling.grid(height, width, tile, 16, max_pixels)
    assert len(grid) == tiles
    assert {(t.y1 - t.y0, t.x1 - t.x0) for t in grid} == {side}
    assert side[0] * side[1] <= (max_pixels or tile * tile)
    assert max(t.y1 for t in grid) == height and max(t.x1 for t in grid) == width
    cover = tiling.cover(height, width, tile, 16, max_pixels)
    assert cover <= most and (tiles > 1 or cover == 1.0)


def test_cpu_tiles_are_an_area_and_an_explicit_tile_a_square() -> None:
    span = registry.MODELS["span-x4"]
    assert Engine(Settings.from_env({}, gpu="off")).tile_limits(span) == (2048, SPAN_X4_TILE_PIXELS)
    assert Engine(Settings.from_env({}, gpu="off", tile_size=200)).tile_limits(span) == (200, None)


def test_blend_weights_add_up_to_one_without_a_weight_plane() -> None:
    rng = np.random.default_rng(7)
    for case in range(60):
        height, width = (int(v) for v in rng.integers(20, 300, 2))
        tile, overlap, scale = int(rng.integers(32, 160)), int(rng.integers(0, 40)), int(rng.integers(1, 5))
        # Half the cases with an area budget (rectangular tiles), half with ncnn's planar layout.
        max_pixels = int(rng.integers(max(32, 3 * min(overlap, tile // 3)) ** 2, tile * tile + 1)) if case % 2 else None
        planar = bool(rng.integers(0, 2))

        def ones(t: np.ndarray, scale: int = scale, planar: bool = planar) -> np.ndarray:
            out = np.ones((3, t.shape[0] * scale, t.shape[1] * scale), np.float32)
            out = out.transpose(1, 2, 0) if planar else np.ascontiguousarray(out.transpose(1, 2, 0))
            out.flags.writeable = False  # results are only read (a decoded PNG from SageMaker is read-only)
            return out

        grid = tiling.grid(height, width, tile, overlap, max_pixels)
        assert all(t.y1 - t.y0 <= tile and t.x1 - t.x0 <= tile for t in grid)
        assert all((t.y1 - t.y0) * (t.x1 - t.x0) <= (max_pixels or tile * tile) for t in grid)
        image = np.zeros((height, width, 3), np.float32)
        out = tiling.apply(image, scale, ones, tile=tile, overlap=overlap, max_pixels=max_pixels)
        label = f"{height}x{width} tile {tile} overlap {overlap} max_pixels {max_pixels} planar {planar}"
        np.testing.assert_allclose(out, 1.0, atol=1e-6, err_msg=label)


def test_tiles_blend_the_same_in_either_layout_and_with_threads() -> None:
    """ncnn's planar results and HxWxC results give the same output, written in grid order (the output starts
    uninitialised, so a tile written out of order would show), also when tiles run on threads; and a planar output
    quantises to the same C-contiguous bytes."""
    rng = np.random.default_rng(3)
    image = rng.random((150, 170, 3), dtype=np.float32)

    def fn(t: np.ndarray, planar: bool) -> np.ndarray:
        up = np.repeat(np.repeat(np.sin(t * 7.0), 2, axis=0), 2, axis=1)
        return np.ascontiguousarray(up.transpose(2, 0, 1)).transpose(1, 2, 0) if planar else up

    hwc = tiling.apply(image, 2, lambda t: fn(t, False), tile=64, overlap=12)
    planar = tiling.apply(image, 2, lambda t: fn(t, True), tile=64, overlap=12, max_workers=3)
    assert hwc.flags.c_contiguous and not planar.flags.c_contiguous
    np.testing.assert_allclose(planar, hwc, atol=1e-6)
    expected = (np.clip(hwc, 0, 1) * 255).round().astype(np.uint8)
    quantised = pixels.from_planes(pixels.to_planes(np.zeros((150, 170, 3), np.uint8)), planar, None)
    assert quantised.flags.c_contiguous
    np.testing.assert_array_equal(quantised, expected)


def test_tile_validation(engine: Engine, photo: Image.Image) -> None:
    with pytest.raises(InvalidInput):
        engine.upscale(photo, 2, tile=8)


def test_auto_tile_bounds_memory() -> None:
    eng = Engine(Settings.from_env({}, tile_memory_mb=256))
    span = eng.auto_tile(registry.MODELS["span-x4"])
    big = eng.auto_tile(registry.MODELS["realesrgan-x4plus"])
    assert 64 <= big < span <= 2048
    assert span * span * registry.MODELS["span-x4"].bytes_per_input_pixel <= 256 * 2**20
    assert Engine(Settings.from_env({}, tile_size=200)).auto_tile(registry.MODELS["span-x4"]) == 200


# ---- fidelity: the roundtrip the store path will run -------------------------------------------------------------


@pytest.mark.parametrize("scale", [2, 4])
def test_span_roundtrip_beats_bicubic(engine: Engine, scale: int) -> None:
    from skimage import data

    hr = Image.fromarray(data.astronaut()[:192, :192])
    lr = engine.downscale(hr, scale)
    assert lr.size == (192 // scale, 192 // scale)
    span = engine.upscale(lr, model="span", size=hr.size)
    bicubic = engine.upscale(lr, model="bicubic", size=hr.size)
    gain = metrics.psnr(hr, span, scale) - metrics.psnr(hr, bicubic, scale)
    assert gain > 1.0, f"SPAN x{scale} only {gain:.2f} dB over bicubic"
    assert metrics.ssim(hr, span, scale) > metrics.ssim(hr, bicubic, scale)


def test_downscale_is_antialiased_bicubic(engine: Engine, photo: Image.Image) -> None:
    ours = engine.downscale(photo, 2)
    pillow = photo.resize((64, 48), Image.Resampling.BICUBIC)
    assert metrics.psnr(pillow, ours, y_channel=False) > 45


@pytest.mark.parametrize(
    ("size", "factor", "bounds", "expected"),
    [
        ((1920, 1080), 4, {}, (480, 270)),
        ((1921, 1081), 4, {}, (480, 270)),
        ((3, 3), 4, {}, (1, 1)),
        ((1920, 1080), 1, {"max_size": 200}, (200, 112)),
        ((1920, 1080), 4, {"min_size": 100, "max_size": 200}, (200, 112)),
        ((400, 300), 4, {"min_size": 100}, (133, 100)),
        ((300, 80), 4, {"min_size": 100}, (300, 80)),  # never above the original
    ],
)
def test_downscale_size(size, factor, bounds, expected) -> None:
    assert downscale_size(*size, factor, **bounds) == expected


def test_downscale_modes(engine: Engine, gradient_rgba: Image.Image) -> None:
    small = engine.downscale(gradient_rgba, 2)
    assert small.mode == "RGBA" and small.size == (32, 24)
    assert engine.downscale(Image.new("I;16", (20, 20), 1000), 2).mode == "I;16"
    assert engine.downscale(np.zeros((20, 30, 3), np.uint16), 2).shape == (10, 15, 3)
    with pytest.raises(InvalidInput):
        downscale_size(100, 100, 2, min_size=50, max_size=10)
    with pytest.raises(UnsupportedScale):
        engine.downscale(gradient_rgba, 0.5)


# ---- limits and bad input -------------------------------------------------------------------------------------


def test_output_limit_checked_before_allocation(photo: Image.Image) -> None:
    small = Engine(Settings.from_env({}, max_output_megapixels=0.1))
    with pytest.raises(TooLarge, match=r"0\.1 MP"):
        small.upscale(photo, 4)
    # a huge lazily-decoded image is refused from its header, without touching its pixels
    huge = Image.new("RGB", (1, 1))
    huge._size = (20000, 20000)  # type: ignore[attr-defined]
    with pytest.raises(TooLarge):
        Engine().upscale(huge, 2)


def test_corrupt_and_empty_images(engine: Engine, tmp_path) -> None:
    good = tmp_path / "x.png"
    Image.new("RGB", (64, 64), "red").save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(good.read_bytes()[:60])
    with pytest.raises(UndecodableImage):
        engine.upscale(Image.open(bad), 2)
    with pytest.raises(UndecodableImage):
        engine.upscale(np.zeros((0, 5, 3), np.uint8), 2)


@pytest.mark.parametrize("kwargs", [{}, {"scale": 0.5}, {"scale": float("nan")}, {"size": (10, 10)}, {"size": "big"}])
def test_bad_scale_or_size(engine: Engine, photo: Image.Image, kwargs: dict) -> None:
    with pytest.raises(UpscalerError):
        engine.upscale(photo, **kwargs)


def test_errors_are_one_family_with_http_status() -> None:
    assert issubclass(UnknownModel, UpscalerError) and UnknownModel.status == 400
    assert TooLarge.status == 413 and UnsupportedMedia.status == 415 and UndecodableImage.status == 422


def test_concurrent_calls_share_one_network(engine: Engine, photo: Image.Image) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from upscaler.engine import runtime

    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda _: np.asarray(engine.upscale(photo, 2, model="span-x2")), range(4)))
    assert all(np.array_equal(outs[0], o) for o in outs[1:])
    # one network for this engine's options (other tests load the model with other options, e.g. another runtime)
    assert sum(1 for name, opts in runtime._cache if name == "span-x2" and opts == engine.options) == 1


def test_slow_perceptual_model_runs(engine: Engine) -> None:
    img = Image.new("RGB", (12, 10), (10, 120, 200))
    assert engine.upscale(img, 4, model="realesrgan-x4plus").size == (48, 40)
