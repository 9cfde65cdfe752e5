"""Shared fixtures: small real photos (scikit-image's bundled data) and a CPU engine."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from upscaler.config import Settings
from upscaler.engine import Engine


@pytest.fixture(scope="session")
def engine() -> Engine:
    return Engine(Settings.from_env({}, ncnn_threads=2, gpu="off"))


@pytest.fixture(scope="session")
def photo() -> Image.Image:
    """A 96x128 crop of a real photograph (textured enough for SR to matter)."""
    from skimage import data

    return Image.fromarray(data.astronaut()[40:136, 160:288])


@pytest.fixture(scope="session")
def gradient_rgba() -> Image.Image:
    """An RGBA image with a soft alpha edge and colour under transparent pixels."""
    h, w = 48, 64
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 4 % 256, y * 5 % 256, (x + y) * 2 % 256], axis=2).astype(np.uint8)
    alpha = np.clip((x - 16) * 12, 0, 255).astype(np.uint8)
    return Image.fromarray(np.dstack([rgb, alpha]))
