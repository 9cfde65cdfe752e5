"""The engine: ``upscale`` and its inverse ``downscale``, on Pillow images or numpy arrays.

One engine serves the local provider, the SageMaker model server and the video worker. It resolves a model
(:mod:`upscaler.engine.registry`), runs it through ncnn in tiles (:mod:`upscaler.engine.tiling`), upscales alpha
separately, and resizes to the exact size asked for. Downscaling is Pillow's antialiased bicubic, the degradation
the SPAN models were trained on, so the two sides of a roundtrip match.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable

import numpy as np
from PIL import Image

from upscaler.config import Settings
from upscaler.engine import pixels, registry, runtime, tiling
from upscaler.engine.pixels import ImageLike
from upscaler.errors import InvalidInput, TooLarge, UndecodableImage, UnsupportedScale

log = logging.getLogger(__name__)

ALPHA_MODES = ("model", "bicubic")
#: Inputs with a side below this are mirrored up to it before a network runs (input pixels).
MIN_NETWORK_SIDE = 16
#: Largest automatic tile side (input pixels).
MAX_TILE_SIDE = 2048
_INTERPOLATION = {"bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}


def downscale_size(
    width: int,
    height: int,
    factor: float | None = None,
    *,
    min_size: int | None = None,
    max_size: int | None = None,
) -> tuple[int, int]:
    """The size a ``width`` x ``height`` image is stored at.

    ``factor`` divides both sides (rounded, at least 1 px). ``min_size``/``max_size`` then bound the sides of the
    result, as the original video path did (width/4 first, then clamped), but keeping the aspect ratio: the longer
    side is brought down to ``max_size``, or the shorter side up to ``min_size``, never above the original size.
    """
    if width < 1 or height < 1:
        raise UndecodableImage(f"empty image ({width}x{height})")
    if factor is None:
        factor = 1.0 if (min_size or max_size) else 4.0
    if not (factor >= 1.0 and math.isfinite(factor)):
        raise UnsupportedScale(f"downscale factor must be >= 1, got {factor}")
    if min_size is not None and min_size < 1:
        raise InvalidInput("min_size must be >= 1")
    if max_size is not None and max_size < 1:
        raise InvalidInput("max_size must be >= 1")
    if min_size is not None and max_size is not None and min_size > max_size:
        raise InvalidInput(f"min_size ({min_size}) is larger than max_size ({max_size})")
    ratio = 1.0 / factor
    if max_size is not None and max(width, height) * ratio > max_size:
        ratio = max_size / max(width, height)
    if min_size is not None and min(width, height) * ratio < min_size:
        ratio = min(1.0, min_size / min(width, height))
    return max(1, round(width * ratio)), max(1, round(height * ratio))


def gpu_tile_side(free_bytes: int, bytes_per_input_pixel: int, precision: str, batch: int) -> int:
    """Largest tile side whose batch fits in half of ``free_bytes`` of device memory.

    ``bytes_per_input_pixel`` is the model's peak measured on ncnn in fp32; PyTorch on CUDA measured below it
    (span x2 at 1920x1080: 2.4 kB/px in fp32, 0.97 kB/px in fp16, benchmarks/bench_gpu.py), so it is scaled by
    the element size of the precision and used as is. At most 4096 px a side."""
    itemsize = 2 if precision in ("fp16", "bf16") else 4
    per_pixel = max(1, bytes_per_input_pixel) * itemsize / 4 * max(1, batch)
    side = int(math.sqrt(free_bytes / 2 / per_pixel))
    return int(min(4096, max(64, side // 16 * 16)))


class Engine:
    """Thread-safe; share one per process. Models load on first use (or in :meth:`warmup`)."""

    def __init__(self, settings: Settings | None = None, *, model_dir: str | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self.options = runtime.RuntimeOptions(
            threads=self.settings.ncnn_threads,
            gpu=self.settings.gpu,
            model_dir=model_dir,
            runtime=self.settings.runtime,
            precision=self.settings.precision,
            batch=max(1, self.settings.gpu_batch),
        )

    # ---- models ------------------------------------------------------------------------------------------
    def resolve(self, model: str | None, scale: float) -> registry.ModelSpec:
        return registry.resolve(model or self.settings.default_model, scale)

    def warmup(self, *models: str) -> None:
        """Load the named models (families load every member) so the first request does not pay for it."""
        for name in models or (self.settings.default_model,):
            key = registry.ALIASES.get(name, name)
            specs = registry.FAMILIES.get(key) if key not in registry.MODELS else [registry.MODELS[key]]
            if specs is None:
                registry.resolve(name, 1.0)  # raises UnknownModel with the list of names
                continue
            for spec in specs:
                if spec.is_network:
                    runtime.load(spec, self.options).run(np.zeros((8, 8, 3), np.float32))

    def auto_tile(self, spec: registry.ModelSpec, net: runtime.Network | None = None, batch: int | None = None) -> int:
        """Tile side (input pixels): from ``UPSCALER_TILE_MEMORY_MB`` on the CPU; on a GPU from half the device's
        free memory for a whole batch, so a GPU with room runs large images and video frames in one piece."""
        if self.settings.tile_size > 0:
            return self.settings.tile_size
        free = net.free_memory() if net is not None and net.on_gpu and hasattr(net, "free_memory") else 0
        if free:
            return gpu_tile_side(
                free, spec.bytes_per_input_pixel, getattr(net, "precision", "fp32"), batch or self.options.batch
            )
        side = int(math.sqrt(self._tile_pixels(spec)))
        return int(min(MAX_TILE_SIDE, max(64, side // 16 * 16)))

    def _tile_pixels(self, spec: registry.ModelSpec) -> int:
        return self.settings.tile_memory_mb * 1024 * 1024 // max(spec.bytes_per_input_pixel, 1)

    def tile_limits(self, spec: registry.ModelSpec, net: runtime.Network | None = None) -> tuple[int, int | None]:
        """(largest tile side, largest tile area or None) for automatic tiles. On the CPU the memory budget is an
        area, so tiles may be rectangular (:func:`upscaler.engine.tiling.plan`: 1224x1224 in 9 tiles of 419x419
        where squares of the budget's side need 16); a set ``UPSCALER_TILE_SIZE`` or a GPU's side is a square."""
        side = self.auto_tile(spec, net)
        if self.settings.tile_size > 0 or (net is not None and net.on_gpu):
            return side, None
        return MAX_TILE_SIDE, max(64 * 64, self._tile_pixels(spec))

    # ---- upscale -----------------------------------------------------------------------------------------
    def upscale(
        self,
        image: ImageLike,
        scale: float | None = None,
        *,
        model: str | None = None,
        size: tuple[int, int] | None = None,
        tile: int | None = None,
        alpha: str = "model",
    ) -> ImageLike:
        """Upscale ``image`` by ``scale``, or to exactly ``size`` = (width, height).

        ``model`` is a model or family name (see :func:`upscaler.engine.registry.model_names`); the default is
        the configured one. ``tile`` overrides the tile side (input pixels; 0 or None = automatic). ``alpha``:
        ``"model"`` runs the alpha plane through the same model, ``"bicubic"`` interpolates it.
        Returns the same type as given (see :mod:`upscaler.engine.pixels` for modes).
        """
        width, height = pixels.dimensions(image)
        out_w, out_h = self._output_size(width, height, scale, size)
        self._check_limits(width, height, out_w, out_h)
        if alpha not in ALPHA_MODES:
            raise InvalidInput(f"alpha must be one of {', '.join(ALPHA_MODES)}, got {alpha!r}")
        if tile is not None and tile != 0 and tile < 32:
            raise InvalidInput(f"tile must be 0 (automatic) or at least 32 pixels, got {tile}")
        spec = self.resolve(model, max(out_w / width, out_h / height, 1.0))
        fast = self._uint8_on_device(spec, image, out_w, out_h, tile)
        if fast is not None:
            return fast
        planes = pixels.to_planes(image)
        if planes.note:
            log.info("pixel mode converted", extra={"conversion": planes.note})
        color, alpha_plane = planes.color, planes.alpha
        if alpha_plane is not None and float(alpha_plane.min()) >= 1.0:
            alpha_plane = None  # fully opaque: nothing to upscale, refilled below
            opaque = True
        else:
            opaque = False
        if alpha_plane is not None:
            color = pixels.premultiply(color, alpha_plane)

        up_color = self._run(spec, color, out_w, out_h, tile)
        up_alpha = None
        if alpha_plane is not None:
            alpha_spec = spec if alpha == "model" else registry.MODELS["bicubic"]
            up_alpha = self._run(alpha_spec, alpha_plane[:, :, None], out_w, out_h, tile)[:, :, 0]
            np.clip(up_alpha, 0.0, 1.0, out=up_alpha)
            np.clip(up_color, 0.0, 1.0, out=up_color)
            up_color = pixels.unpremultiply(up_color, up_alpha)
        elif opaque:
            up_alpha = np.ones((out_h, out_w), np.float32)
        return pixels.from_planes(planes, up_color, up_alpha)

    def _uint8_on_device(
        self, spec: registry.ModelSpec, image: ImageLike, out_w: int, out_h: int, tile: int | None
    ) -> ImageLike | None:
        """An 8-bit RGB image or array (a video frame, a retrieval's decoded photo) at the model's own factor on a
        GPU runtime that converts on the device: one upload and one download of bytes, no float planes on the host.
        None = not applicable (the general path runs)."""
        if not spec.is_network:
            return None
        net = runtime.load(spec, self.options)
        run_uint8 = getattr(net, "run_uint8", None)
        if run_uint8 is None or not net.on_gpu:
            return None
        is_pil = isinstance(image, Image.Image)
        if is_pil:
            if image.mode != "RGB":
                return None
            try:
                frame = np.asarray(image)
            except OSError:  # a truncated file: the general path reports it as the others do
                return None
        elif isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
            frame = image
        else:
            return None
        height, width = frame.shape[:2]
        if min(height, width) < MIN_NETWORK_SIDE or (out_w, out_h) != (width * spec.scale, height * spec.scale):
            return None
        if max(height, width) > (tile or self.auto_tile(spec, net, batch=1)):
            return None
        result = run_uint8(frame[None])[0]
        return Image.fromarray(result) if is_pil else result

    def _run(
        self, spec: registry.ModelSpec, planes: np.ndarray, out_w: int, out_h: int, tile: int | None
    ) -> np.ndarray:
        if not spec.is_network:
            return pixels.resize(planes, (out_w, out_h), _INTERPOLATION[spec.name])
        net = runtime.load(spec, self.options)
        # Networks see zero padding around the image, which is what they were trained with (measured: mirroring
        # the border costs 0.01-0.1 dB), but a tiny input is mostly border: mirror it up to a minimum side first.
        s = spec.scale
        pad = max(0, (MIN_NETWORK_SIDE - min(planes.shape[:2]) + 1) // 2)
        padded = np.pad(planes, ((pad, pad), (pad, pad), (0, 0)), mode="symmetric") if pad else planes
        run_tile, run_batch = _network_fns(net)
        side, max_pixels = (tile, None) if tile else self.tile_limits(spec, net)
        result = tiling.apply(
            padded,
            s,
            run_tile,
            tile=side,
            overlap=self.settings.tile_overlap,
            max_pixels=max_pixels,
            batch_fn=run_batch if net.on_gpu else None,
            batch=self.options.batch,
        )
        if pad:
            result = result[pad * s : -pad * s, pad * s : -pad * s]
        if result.shape[0] != out_h or result.shape[1] != out_w:
            np.clip(result, 0.0, 1.0, out=result)
            result = pixels.resize(result, (out_w, out_h), Image.Resampling.LANCZOS)
        return result  # unclipped at the model's own size: the caller clips once, as it quantises

    def _output_size(
        self, width: int, height: int, scale: float | None, size: tuple[int, int] | None
    ) -> tuple[int, int]:
        if width < 1 or height < 1:
            raise UndecodableImage(f"empty image ({width}x{height})")
        if size is not None:
            try:
                out_w, out_h = (int(v) for v in size)
            except (TypeError, ValueError):
                raise InvalidInput(f"size must be (width, height), got {size!r}") from None
            if out_w < width or out_h < height:
                raise UnsupportedScale(
                    f"size {out_w}x{out_h} is smaller than the input {width}x{height}; use downscale"
                )
            return out_w, out_h
        if scale is None:
            raise InvalidInput("give a scale or a size")
        if not (isinstance(scale, int | float) and math.isfinite(scale)) or scale < 1:
            raise UnsupportedScale(f"scale must be a number >= 1, got {scale!r}")
        return max(1, round(width * scale)), max(1, round(height * scale))

    def _check_limits(self, width: int, height: int, out_w: int, out_h: int) -> None:
        limit_in = self.settings.max_input_megapixels * 1e6
        limit_out = self.settings.max_output_megapixels * 1e6
        if width * height > limit_in:
            raise TooLarge(
                f"input is {width * height / 1e6:.1f} MP, over the limit of {self.settings.max_input_megapixels:g} MP"
            )
        if out_w * out_h > limit_out:
            raise TooLarge(
                f"output would be {out_w}x{out_h} = {out_w * out_h / 1e6:.1f} MP, over the limit of "
                f"{self.settings.max_output_megapixels:g} MP"
            )

    # ---- downscale ---------------------------------------------------------------------------------------
    def downscale(
        self,
        image: ImageLike,
        factor: float | None = None,
        *,
        size: tuple[int, int] | None = None,
        min_size: int | None = None,
        max_size: int | None = None,
    ) -> ImageLike:
        """Antialiased bicubic downscale by ``factor``, to ``size``, or into ``min_size``/``max_size`` bounds."""
        width, height = pixels.dimensions(image)
        self._check_limits(width, height, 0, 0)
        if size is not None:
            target = (int(size[0]), int(size[1]))
            if not (1 <= target[0] <= width and 1 <= target[1] <= height):
                raise UnsupportedScale(f"size {target} must be between 1x1 and the input {width}x{height}")
        else:
            target = downscale_size(width, height, factor, min_size=min_size, max_size=max_size)
        planes = pixels.to_planes(image)
        color, alpha = planes.color, planes.alpha
        if alpha is not None and float(alpha.min()) < 1.0:
            small_alpha = pixels.resize(alpha, target, Image.Resampling.BICUBIC)
            np.clip(small_alpha, 0.0, 1.0, out=small_alpha)
            small = pixels.unpremultiply(
                pixels.resize(pixels.premultiply(color, alpha), target, Image.Resampling.BICUBIC), small_alpha
            )
        else:
            small = pixels.resize(color, target, Image.Resampling.BICUBIC)
            small_alpha = None if alpha is None else np.ones((target[1], target[0]), np.float32)
        return pixels.from_planes(planes, small, small_alpha)


def _network_fns(
    net: runtime.Network,
) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[list[np.ndarray]], list[np.ndarray]]]:
    """Adapt a 3-channel network to 1- or 3-channel planes (grey is replicated, then averaged back), one tile at a
    time and a batch of equal-size tiles at a time."""

    def run_batch(tiles: list[np.ndarray]) -> list[np.ndarray]:
        if tiles[0].shape[2] == 3:
            return net.run_batch(tiles)
        outs = net.run_batch([np.repeat(t, 3, axis=2) for t in tiles])
        return [out.mean(axis=2, keepdims=True) for out in outs]

    def run(tile: np.ndarray) -> np.ndarray:
        return run_batch([tile])[0]

    return run, run_batch


_default: Engine | None = None
_default_lock = threading.Lock()


def default_engine() -> Engine:
    """The process-wide engine built from the environment's settings."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Engine()
        return _default


def upscale(image: ImageLike, scale: float | None = None, **kwargs: object) -> ImageLike:
    """:meth:`Engine.upscale` on the process-wide engine."""
    return default_engine().upscale(image, scale, **kwargs)  # type: ignore[arg-type]


def downscale(image: ImageLike, factor: float | None = None, **kwargs: object) -> ImageLike:
    """:meth:`Engine.downscale` on the process-wide engine."""
    return default_engine().downscale(image, factor, **kwargs)  # type: ignore[arg-type]
