"""Shared fixtures: small real photos (scikit-image's bundled data), a CPU engine, and the real service on
loopback with TLS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.servers import api_server
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


@pytest.fixture(scope="module")
def tls_service(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """`upscaler serve` (gunicorn, HTTPS with its self-signed certificate) in a fresh folder, for one test module:
    (URL with the host name the certificate names, so TLS verifies; the certificate to trust). Video segments are
    small and the encoder fast, so video jobs finish quickly; a module's ``SERVICE_ENV`` dict adds settings."""
    work = tmp_path_factory.mktemp("tls-api")
    env = {"UPSCALER_VIDEO_SEGMENT_FRAMES": "8", "UPSCALER_VIDEO_PRESET": "veryfast"}
    env.update(getattr(request.module, "SERVICE_ENV", {}))
    with api_server(work, env) as url:
        yield url.replace("127.0.0.1", "localhost"), work / "data" / "tls" / "cert.pem"
