"""Pixel modes in and out of the engine.

Everything the engine computes works on *planes*: a float32 HxWxC colour array in [0, 1] (C = 3, or 1 for grey)
and an optional float32 HxW alpha plane. This module turns Pillow images and numpy arrays into planes and back,
so the output has the caller's type, mode, bit depth and channel count. Where a mode cannot be kept it says so
(``Planes.note``; Pillow outputs also carry it in ``image.info["upscaler_conversion"]``):

=============================  =================================  =====================================
input                          processed as                       output
=============================  =================================  =====================================
RGB, L                         colour / grey                      same mode
RGBA, LA (also RGBa, La, PA)   colour + alpha (premultiplied)     RGBA / LA
P (palette)                    RGB, or RGBA if it has a           RGB / RGBA (a palette cannot hold
                               transparent entry                  the new colours)
1 (bilevel)                    grey                               L
I;16, I;16B, I;16L, I          grey at 16-bit precision           I;16 (I stays I)
CMYK, YCbCr, LAB, HSV, RGBX    converted to RGB                   RGB
numpy uint8 / uint16 / float   HxW, HxWx1, HxWx3, HxWx4           same dtype and shape layout
=============================  =================================  =====================================
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from upscaler.errors import InvalidInput, UndecodableImage, UnsupportedMedia

ImageLike = Image.Image | np.ndarray

_TO_RGB = {"CMYK", "YCbCr", "LAB", "HSV", "RGBX"}
_SIXTEEN = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


@dataclass
class Planes:
    color: np.ndarray  # HxWxC float32, C in (1, 3)
    alpha: np.ndarray | None  # HxW float32 or None
    # How to rebuild the caller's type:
    is_pil: bool
    out_mode: str = ""  # Pillow mode of the result
    dtype: np.dtype = field(default_factory=lambda: np.dtype(np.uint8))
    ndim: int = 3  # numpy: 2 for HxW input
    note: str = ""

    @property
    def height(self) -> int:
        return int(self.color.shape[0])

    @property
    def width(self) -> int:
        return int(self.color.shape[1])


def dimensions(image: ImageLike) -> tuple[int, int]:
    """(width, height) without decoding pixel data."""
    if isinstance(image, Image.Image):
        return image.size
    if isinstance(image, np.ndarray):
        if image.ndim not in (2, 3):
            raise UnsupportedMedia(f"arrays must be HxW or HxWxC, got shape {image.shape}")
        return int(image.shape[1]), int(image.shape[0])
    raise InvalidInput(f"expected a PIL image or a numpy array, got {type(image).__name__}")


def _maxval(dtype: np.dtype) -> float:
    if dtype == np.uint8:
        return 255.0
    if dtype == np.uint16:
        return 65535.0
    if dtype.kind == "f":
        return 1.0
    raise UnsupportedMedia(f"array dtype {dtype} is not supported (use uint8, uint16 or float in [0, 1])")


def to_planes(image: ImageLike) -> Planes:
    width, height = dimensions(image)
    if width < 1 or height < 1:
        raise UndecodableImage(f"empty image ({width}x{height})")
    if isinstance(image, np.ndarray):
        return _array_to_planes(image)
    try:
        image.load()
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError... for broken data
        raise UndecodableImage(f"image data cannot be decoded: {exc}") from None
    return _pil_to_planes(image)


def _array_to_planes(arr: np.ndarray) -> Planes:
    dtype = arr.dtype
    maxval = _maxval(dtype)
    data = arr if arr.ndim == 3 else arr[:, :, None]
    channels = data.shape[2]
    if channels not in (1, 3, 4):
        raise UnsupportedMedia(f"arrays need 1, 3 or 4 channels, got {channels}")
    planes = data.astype(np.float32)
    if maxval != 1.0:
        planes /= maxval
    else:
        np.clip(planes, 0.0, 1.0, out=planes)
    color = planes[:, :, :3] if channels >= 3 else planes
    alpha = planes[:, :, 3] if channels == 4 else None
    return Planes(np.ascontiguousarray(color), alpha, is_pil=False, dtype=dtype, ndim=arr.ndim)


def _pil_to_planes(image: Image.Image) -> Planes:
    mode, note = image.mode, ""
    if mode == "P":
        has_alpha = "transparency" in image.info
        target = "RGBA" if has_alpha else "RGB"
        image, note = image.convert(target), f"P->{target}"
    elif mode == "PA":
        image, note = image.convert("RGBA"), "PA->RGBA"
    elif mode == "RGBa":
        image = image.convert("RGBA")
    elif mode == "La":
        image = image.convert("LA")
    elif mode == "1":
        image, note = image.convert("L"), "1->L"
    elif mode in _TO_RGB:
        image, note = image.convert("RGB"), f"{mode}->RGB"
    mode = image.mode
    if mode in _SIXTEEN:
        arr = np.asarray(image)
        gray = np.clip(arr.astype(np.float32), 0, 65535) / 65535.0
        out_mode = "I" if mode == "I" else "I;16"
        if mode not in ("I", "I;16"):
            note = note or f"{mode}->I;16"
        return Planes(gray[:, :, None], None, is_pil=True, out_mode=out_mode, note=note)
    if mode not in ("RGB", "RGBA", "L", "LA"):
        raise UnsupportedMedia(f"image mode {mode!r} is not supported")
    arr = np.asarray(image, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if mode in ("RGBA", "LA"):
        color, alpha = np.ascontiguousarray(arr[:, :, :-1]), np.ascontiguousarray(arr[:, :, -1])
    else:
        color, alpha = arr, None
    return Planes(color, alpha, is_pil=True, out_mode=mode, note=note)


#: Elements quantised per step: 1 MiB of float32, which stays in cache through the clip, scale, round and cast.
_QUANTIZE_STEP = 1 << 18


def _quantize(values: np.ndarray, maxval: float | None, dtype: type) -> np.ndarray:
    """Clip ``values`` to [0, 1] and scale them to integers (``maxval``; None keeps floats), a few rows at a time
    in place, into a new C-contiguous array of ``dtype``. ``values`` may be any strided view (the tiler's output
    is planar): reading it a band at a time makes one pass over memory instead of four."""
    out = np.empty(values.shape, dtype)
    if values.size == 0:
        return out
    step = max(1, _QUANTIZE_STEP // (values.size // values.shape[0]))
    # Planar memory is interleaved a channel at a time (numpy would otherwise step over the channels innermost).
    planar = values.ndim == 3 and values.shape[2] > 1 and values.strides[2] != values.itemsize
    for y in range(0, values.shape[0], step):
        band = values[y : y + step]
        np.clip(band, 0.0, 1.0, out=band)
        if maxval is not None:
            band *= maxval
            np.rint(band, out=band)
        if planar:
            for c in range(values.shape[2]):
                out[y : y + step, :, c] = band[:, :, c]
        else:
            out[y : y + step] = band
    return out


def from_planes(planes: Planes, color: np.ndarray, alpha: np.ndarray | None) -> ImageLike:
    """Rebuild the caller's type from processed planes (same layout as ``planes``, new size).

    ``color`` and ``alpha`` are consumed: they are clipped and scaled in place to keep peak memory low."""
    if not planes.is_pil:
        stacked = color if alpha is None else np.concatenate([color, alpha[:, :, None]], axis=2)
        if planes.ndim == 2:
            stacked = stacked[:, :, 0]
        maxval = _maxval(planes.dtype)
        return _quantize(stacked, None if maxval == 1.0 else maxval, planes.dtype.type)
    if planes.out_mode in ("I;16", "I"):
        values = _quantize(color[:, :, 0], 65535.0, np.uint16 if planes.out_mode == "I;16" else np.int32)
        out = Image.fromarray(values)
    else:
        stacked = color if alpha is None else np.concatenate([color, alpha[:, :, None]], axis=2)
        if stacked.shape[2] == 1:
            stacked = stacked[:, :, 0]
        out = Image.fromarray(_quantize(stacked, 255.0, np.uint8))
        if out.mode != planes.out_mode:
            out = out.convert(planes.out_mode)
    if planes.note:
        out.info["upscaler_conversion"] = planes.note
    return out


def premultiply(color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return color * alpha[:, :, None]


def unpremultiply(color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    safe = np.where(alpha > 1.0 / 1024, alpha, 1.0)[:, :, None]
    out = color / safe
    out[alpha <= 1.0 / 1024] = 0.0
    return out


def resize(plane: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    """Resize an HxWxC (or HxW) float32 array to ``size`` = (width, height) with Pillow's antialiased filters."""
    if plane.shape[1] == size[0] and plane.shape[0] == size[1]:
        return plane
    if plane.ndim == 2:
        return np.array(Image.fromarray(plane).resize(size, resample), dtype=np.float32)
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(plane[:, :, c])).resize(size, resample))
        for c in range(plane.shape[2])
    ]
    return np.stack(channels, axis=2).astype(np.float32, copy=False)  # stack copies: writable
