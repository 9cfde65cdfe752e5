"""Fidelity scores, with BasicSR's conventions, and the original test bench's ``orb_sim``.

* PSNR and SSIM are computed in float64 on 8-bit values, after cropping ``crop_border`` pixels (use the scale
  factor) from every side. ``y_channel=True`` scores the BT.601 luma (MATLAB ``rgb2ycbcr``:
  Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255), ``False`` scores RGB. The two differ by about 2 dB on the
  same image, so every report says which it used.
* SSIM is Wang et al.'s, with an 11x11 Gaussian window (sigma 1.5), C1 = (0.01 L)^2, C2 = (0.03 L)^2, L = 255,
  averaged over channels, like BasicSR's ``calculate_ssim``.
* ``orb_sim`` is the score of the original test bench (ORB keypoint matches closer than 50), kept for comparison;
  it is not a fidelity metric.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

ImageLike = Image.Image | np.ndarray


def as_rgb8(image: ImageLike) -> np.ndarray:
    """HxWx3 (or HxW for grey) uint8 array of ``image``; alpha is dropped, 16-bit reduced to 8-bit."""
    if isinstance(image, Image.Image):
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(image).astype(np.float64) / 257.0
            return np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        if image.mode not in ("RGB", "L"):
            image = image.convert("RGBA" if "A" in image.getbands() or image.mode == "P" else "RGB")
            if image.mode == "RGBA":
                image = image.convert("RGB")
        return np.asarray(image)
    arr = np.asarray(image)
    if arr.dtype == np.uint16:
        arr = np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)
    elif arr.dtype.kind == "f":
        arr = np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    return arr


def to_y(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma in [16, 235] (float64) of an RGB uint8 array; grey arrays are returned as float64."""
    arr = rgb.astype(np.float64)
    if arr.ndim == 2:
        return arr
    return 16.0 + (65.481 * arr[..., 0] + 128.553 * arr[..., 1] + 24.966 * arr[..., 2]) / 255.0


def _prepare(reference: ImageLike, test: ImageLike, crop_border: int, y_channel: bool) -> tuple[np.ndarray, ...]:
    a, b = as_rgb8(reference), as_rgb8(test)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if y_channel:
        a, b = to_y(a), to_y(b)
    else:
        a, b = a.astype(np.float64), b.astype(np.float64)
    if crop_border:
        a = a[crop_border:-crop_border, crop_border:-crop_border]
        b = b[crop_border:-crop_border, crop_border:-crop_border]
    return a, b


def psnr(reference: ImageLike, test: ImageLike, crop_border: int = 0, y_channel: bool = True) -> float:
    """PSNR in dB (``inf`` for identical images)."""
    a, b = _prepare(reference, test, crop_border, y_channel)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def _ssim_plane(a: np.ndarray, b: np.ndarray) -> float:
    import cv2

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    k = cv2.getGaussianKernel(11, 1.5)
    window = np.outer(k, k.transpose())
    mu1 = cv2.filter2D(a, -1, window)[5:-5, 5:-5]
    mu2 = cv2.filter2D(b, -1, window)[5:-5, 5:-5]
    mu1_sq, mu2_sq, mu1_mu2 = mu1**2, mu2**2, mu1 * mu2
    sigma1_sq = cv2.filter2D(a**2, -1, window)[5:-5, 5:-5] - mu1_sq
    sigma2_sq = cv2.filter2D(b**2, -1, window)[5:-5, 5:-5] - mu2_sq
    sigma12 = cv2.filter2D(a * b, -1, window)[5:-5, 5:-5] - mu1_mu2
    ssim_map = ((2 * mu1_mu2 + c1) * (2 * sigma12 + c2)) / ((mu1_sq + mu2_sq + c1) * (sigma1_sq + sigma2_sq + c2))
    return float(ssim_map.mean())


def ssim(reference: ImageLike, test: ImageLike, crop_border: int = 0, y_channel: bool = True) -> float:
    """SSIM in [-1, 1] (1 for identical images)."""
    a, b = _prepare(reference, test, crop_border, y_channel)
    if min(a.shape[:2]) < 11:
        raise ValueError("SSIM needs images of at least 11x11 pixels after the border crop")
    if a.ndim == 2:
        return _ssim_plane(a, b)
    return float(np.mean([_ssim_plane(a[..., c], b[..., c]) for c in range(a.shape[2])]))


def orb_sim(original: ImageLike, result: ImageLike, distance: int = 50) -> float:
    """The original test bench's score in [0, 1]: share of ORB matches closer than ``distance``.

    Both images are turned grey and the original resized to the result's size first, as the original did.
    Unlike the original, an image without keypoints scores 0 instead of crashing.
    """
    import cv2

    a, b = as_rgb8(original), as_rgb8(result)
    a = a if a.ndim == 2 else cv2.cvtColor(a, cv2.COLOR_RGB2GRAY)
    b = b if b.ndim == 2 else cv2.cvtColor(b, cv2.COLOR_RGB2GRAY)
    if a.shape != b.shape:
        a = cv2.resize(a, (b.shape[1], b.shape[0]))
    orb = cv2.ORB_create()
    _, desc_a = orb.detectAndCompute(a, None)
    _, desc_b = orb.detectAndCompute(b, None)
    if desc_a is None or desc_b is None:
        return 0.0
    matches = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True).match(desc_a, desc_b)
    if not matches:
        return 0.0
    return sum(1 for m in matches if m.distance < distance) / len(matches)
