"""Photos for benchmarks: scikit-image's bundled photographs, plus images under ../shared when it is there."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from PIL import Image

SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "stereo_motorcycle", "camera")
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp"}


def photos(
    limit: int | None = None, include_shared: bool = True, max_side: int | None = None
) -> Iterator[tuple[str, Image.Image]]:
    """(name, RGB image) pairs, each cropped to a multiple of 4 pixels (BasicSR's mod crop) and at most
    ``max_side`` pixels per side (centre crop), so x2 and x4 downscaling are exact."""
    from skimage import data

    found: list[tuple[str, Image.Image]] = []
    for name in SKIMAGE_PHOTOS:
        pixels = getattr(data, name)()
        if name == "stereo_motorcycle":
            pixels = pixels[0]  # (left, right, disparity): the left view
        found.append((name, Image.fromarray(pixels).convert("RGB")))
    if include_shared and SHARED.is_dir():
        for path in sorted(SHARED.rglob("*")):
            if path.suffix.lower() in EXTENSIONS:
                try:
                    with Image.open(path) as img:
                        found.append((f"shared/{path.relative_to(SHARED)}", img.convert("RGB")))
                except OSError:
                    continue
    for count, (name, img) in enumerate(found):
        if limit is not None and count >= limit:
            return
        if max_side:
            w, h = min(img.width, max_side), min(img.height, max_side)
            left, top = (img.width - w) // 2, (img.height - h) // 2
            img = img.crop((left, top, left + w, top + h))
        yield name, img.crop((0, 0, img.width // 4 * 4, img.height // 4 * 4))


def median_time(fn, repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``fn``."""
    import statistics
    import time

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A plain aligned text table (floats with 3 decimals)."""
    from testing.report import text_table

    return text_table(
        [str(h) for h in headers], [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    )
