"""Training images and the (stored, original) pairs made from them exactly as the service stores an image.

    python -m training.data --out training/data [--scales 2 4] [--limit N]

Sources (each image's source and licence go into the manifest; the README lists them):

* scikit-image's bundled data (``skimage.data``; the images are public domain or CC0/CC-BY as listed in
  ``skimage/data/README.txt``), colour and grey photographs, textures, text;
* Debian ``sway-backgrounds`` (CC0), ``desktop-base`` (GPL-2+ / CC-BY-SA, per theme, see its copyright file) and
  ``gimp-data`` (GPL-3+ / CC-BY-SA) raster files of at least 0.25 MP (``apt-get install sway-backgrounds
  desktop-base gimp-data``); missing packages are skipped;
* images generated here from a seed (text, vector shapes, gradients with noise): no licence needed.

Never the wallpaper packages the project evaluates on (``mate-backgrounds``, ``ukui-wallpapers``): a file under
:data:`HELD_OUT_ROOTS` or owned by those packages is refused. Whole groups (a scikit-image image, a desktop-base
theme, a generated kind) go to the validation split named in :data:`VALIDATION_GROUPS`, so a theme's grub and
plymouth pictures never sit on both sides.

Pairs: each image is brought to about :data:`MEGAPIXELS` (Lanczos, as ``benchmarks/bench_quality.py`` prepares
its originals), cropped to a multiple of 4, downscaled by the service's own function
(:func:`upscaler.engine.downscale`, Pillow's antialiased bicubic), encoded by :func:`upscaler.media.encode_stored`
with the service's default AVIF speed / JPEG XL effort and chroma per codec (``avif`` 4:4:4, ``avif-420``), at a
spread of qualities (:func:`plan`), and decoded back with :func:`upscaler.media.decode_stored`. One lossless pair
per image keeps the clean case in the mix. Nothing here is committed: the folder is rebuilt by this script.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

log = logging.getLogger("training.data")

MEGAPIXELS = 1.05
MIN_MEGAPIXELS = 0.25
DEBIAN_PACKAGES = {
    "sway-backgrounds": "CC0-1.0",
    "desktop-base": "GPL-2+ / CC-BY-SA (per theme; /usr/share/doc/desktop-base/copyright)",
    "gimp-data": "GPL-3+ / CC-BY-SA (/usr/share/doc/gimp-data/copyright)",
}
#: Evaluation images: never trained on.
HELD_OUT_PACKAGES = ("mate-backgrounds", "ukui-wallpapers")
HELD_OUT_ROOTS = ("/usr/share/backgrounds/mate", "/usr/share/backgrounds/ukui", "/usr/share/ukui-wallpapers")
SKIMAGE = (
    "astronaut",
    "chelsea",
    "coffee",
    "colorwheel",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "rocket",
    "stereo_motorcycle",
    "camera",
    "brick",
    "grass",
    "gravel",
    "moon",
    "clock",
    "coins",
    "page",
    "text",
    "logo",
)
SKIMAGE_LICENCE = "public domain / CC0 / CC-BY (skimage/data/README.txt)"
GENERATED = ("text", "shapes", "gradient", "chart", "noise")
#: Our own held-out split: whole groups.
VALIDATION_GROUPS = frozenset(
    {"skimage/coffee", "skimage/gravel", "desktop-base/softwaves", "desktop-base/joy", "generated/shapes"}
)
#: (codec, lowest quality, highest quality) drawn per image; the last entry is the lossless pair.
CODEC_SPREAD = (
    ("avif", 20, 40),
    ("avif", 40, 60),
    ("avif", 60, 80),
    ("avif", 80, 95),
    ("avif-420", 25, 50),
    ("avif-420", 50, 85),
    ("jxl", 30, 90),
    ("webp", 40, 90),
    ("png", 100, 100),
)


@dataclass
class Source:
    name: str  # unique, also the group's prefix
    group: str
    origin: str  # where it came from (package and path, or skimage/generated)
    licence: str
    image: Image.Image

    @property
    def split(self) -> str:
        return "val" if self.group in VALIDATION_GROUPS else "train"


@dataclass
class Pair:
    image: str
    group: str
    split: str
    origin: str
    licence: str
    scale: int
    codec: str
    quality: int
    stored_bytes: int
    bpp: float  # stored bits per pixel of the original
    hr: str  # paths relative to the dataset folder
    lr: str


# ---- sources ------------------------------------------------------------------------------------------------------


def _rgb(img: Image.Image) -> Image.Image:
    """RGB; transparency flattened on white (as bench_quality prepares its originals)."""
    if img.mode in ("RGBA", "LA", "P", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return img.convert("RGB")


def skimage_sources() -> Iterator[Source]:
    from skimage import data

    for name in SKIMAGE:
        pixels = getattr(data, name)()
        if isinstance(pixels, tuple):  # stereo_motorcycle: (left, right, disparity)
            pixels = pixels[0]
        pixels = np.asarray(pixels)
        img = Image.fromarray(pixels)
        yield Source(f"skimage/{name}", f"skimage/{name}", f"skimage.data.{name}", SKIMAGE_LICENCE, _rgb(img))


def _owned_by_held_out() -> set[str]:
    owned: set[str] = set()
    for package in HELD_OUT_PACKAGES:
        try:
            listing = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            continue
        owned.update(listing.split())
    return owned


def is_held_out(path: str | Path, owned: set[str] | None = None) -> bool:
    """True for a file of the evaluation set (never to be trained on)."""
    text = str(Path(path).resolve())
    if any(text.startswith(root) for root in HELD_OUT_ROOTS) or "ukui" in text.lower() or "/mate" in text.lower():
        return True
    return text in (owned if owned is not None else _owned_by_held_out())


def _group(package: str, path: str) -> str:
    parts = Path(path).parts
    for part in parts:  # desktop-base: the theme ("joy-theme", plymouth "joy") is the group
        if part.endswith("-theme"):
            return f"{package}/{part[: -len('-theme')]}"
    if "plymouth" in parts:
        return f"{package}/{parts[parts.index('themes') + 1]}"
    return f"{package}/{Path(path).stem.split('_')[0].lower()}"


def debian_sources(per_group: int = 2) -> Iterator[Source]:
    """The largest ``per_group`` raster files of each group (a theme, sway's wallpaper): the rest are the same
    pictures again at other sizes."""
    owned = _owned_by_held_out()
    for package, licence in DEBIAN_PACKAGES.items():
        try:
            listing = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            log.warning("package %s is not installed: skipped (apt-get install %s)", package, package)
            continue
        groups: dict[str, list[tuple[int, str]]] = {}
        for path in sorted(listing.split()):
            if Path(path).suffix.lower() not in (".png", ".jpg", ".jpeg") or not Path(path).is_file():
                continue
            if is_held_out(path, owned):
                raise RuntimeError(f"{path} belongs to the evaluation set")
            try:
                with Image.open(path) as img:
                    size, mode = img.width * img.height, img.mode
            except OSError:
                continue
            if size < MIN_MEGAPIXELS * 1e6 or (mode in ("RGBA", "LA") and package == "desktop-base"):
                continue  # icons; logos and glows that are mostly transparency
            groups.setdefault(_group(package, path), []).append((size, path))
        for group, files in groups.items():
            for _size, path in sorted(files, reverse=True)[:per_group]:
                with Image.open(path) as img:
                    pixels = _rgb(img)
                yield Source(f"{group}/{Path(path).stem}", group, f"{package}:{path}", licence, pixels)


def generated_sources(seed: int = 19, size: tuple[int, int] = (1184, 888)) -> Iterator[Source]:
    """Synthetic images (no licence): rendered text, vector shapes, noisy gradients, a chart, filtered noise."""
    rng = random.Random(seed)
    w, h = size
    words = ("storage", "fidelity", "bytes", "restore", "quality", "model", "target", "codec", "pixel", "archive")
    words += ("budget",)
    for kind in GENERATED:
        img = Image.new("RGB", size, tuple(rng.randrange(200, 256) for _ in range(3)))
        d = ImageDraw.Draw(img)
        if kind == "text":
            for row in range(h // 16):
                colour = tuple(rng.randrange(0, 90) for _ in range(3))
                line = " ".join(rng.choice(words) for _ in range(30))
                d.text((rng.randrange(0, 20), row * 16 + 2), line, fill=colour)
        elif kind == "shapes":
            for _ in range(120):
                x0, y0 = rng.randrange(w), rng.randrange(h)
                box = [x0, y0, x0 + rng.randrange(10, 300), y0 + rng.randrange(10, 300)]
                colour = tuple(rng.randrange(256) for _ in range(3))
                shape = rng.choice(("rect", "ellipse", "line"))
                if shape == "rect":
                    d.rectangle(box, fill=colour)
                elif shape == "ellipse":
                    d.ellipse(box, fill=colour, outline=(0, 0, 0))
                else:
                    d.line(box, fill=colour, width=rng.randrange(1, 8))
        elif kind == "gradient":
            y, x = np.mgrid[0:h, 0:w].astype(np.float32)
            base = np.stack([x / w, y / h, (x + y) / (w + h)], axis=2) * 255
            noise = np.random.default_rng(seed).normal(0, 6, (h, w, 3))
            img = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
        elif kind == "chart":
            for i in range(24):
                bar = int(h * (0.1 + 0.8 * rng.random()))
                x0 = 40 + i * (w - 80) // 24
                colour = tuple(rng.randrange(256) for _ in "rgb")
                d.rectangle([x0, min(h - bar, h - 30), x0 + (w - 80) // 30, h - 30], fill=colour)
                d.text((x0, h - 24), f"{i:02d}", fill=(0, 0, 0))
            d.line([(30, 20), (30, h - 30), (w - 20, h - 30)], fill="black", width=2)
        else:
            noise = np.random.default_rng(seed + 1).integers(0, 256, (h // 4, w // 4, 3), dtype=np.uint8)
            img = Image.fromarray(noise).resize(size, Image.Resampling.BICUBIC).filter(ImageFilter.DETAIL)
        yield Source(f"generated/{kind}", f"generated/{kind}", f"generated (seed {seed})", "none (generated)", img)


def sources() -> Iterator[Source]:
    yield from skimage_sources()
    yield from debian_sources()
    yield from generated_sources()


# ---- pairs ----------------------------------------------------------------------------------------------------------


def prepared(img: Image.Image, megapixels: float = MEGAPIXELS) -> Image.Image:
    """At most ``megapixels`` (Lanczos), each side a multiple of 4 so that x2 and x4 are exact."""
    if img.width * img.height > megapixels * 1e6 * 1.15:
        factor = math.sqrt(megapixels * 1e6 / (img.width * img.height))
        img = img.resize((round(img.width * factor), round(img.height * factor)), Image.Resampling.LANCZOS)
    return img.crop((0, 0, img.width // 4 * 4, img.height // 4 * 4))


def plan(name: str, spread: tuple[tuple[str, int, int], ...] = CODEC_SPREAD) -> list[tuple[str, int]]:
    """The (codec, quality) pairs made of one image: one quality drawn per band, seeded by the image's name."""
    rng = random.Random(hashlib.sha256(name.encode()).digest())
    return [(codec, rng.randint(lo, hi)) for codec, lo, hi in spread]


def stored_pair(hr: Image.Image, scale: int, codec: str, quality: int) -> tuple[Image.Image, int]:
    """(the decoded stored small image, its stored bytes) — the service's downscale, encoder and decoder."""
    from upscaler import media
    from upscaler.config import Settings
    from upscaler.engine import downscale

    settings = Settings()
    small = downscale(hr, float(scale)) if scale > 1 else hr
    blob = media.encode_stored(small, codec, quality, speed=settings.avif_speed, effort=settings.jxl_effort)
    back = media.decode_stored(blob)
    if not isinstance(back, Image.Image):
        raise TypeError(f"unexpected stored form {type(back).__name__}")
    return back.convert("RGB"), len(blob)


def build(
    out: Path,
    scales: tuple[int, ...] = (2,),
    limit: int | None = None,
    spread: tuple[tuple[str, int, int], ...] = CODEC_SPREAD,
    images: Iterator[Source] | None = None,
    progress: bool = True,
) -> list[Pair]:
    """Write ``out/hr/*.png``, ``out/lr/x<s>/*.png`` and ``out/manifest.json``; returns the pairs."""
    out.mkdir(parents=True, exist_ok=True)
    pairs: list[Pair] = []
    start = time.perf_counter()
    for count, src in enumerate(images if images is not None else sources()):
        if limit is not None and count >= limit:
            break
        hr = prepared(src.image)
        stem = src.name.replace("/", "__")
        hr_path = Path("hr") / f"{stem}.png"
        (out / hr_path).parent.mkdir(parents=True, exist_ok=True)
        hr.save(out / hr_path, compress_level=1)
        for scale in scales:
            for codec, quality in plan(src.name, spread):
                lr, nbytes = stored_pair(hr, scale, codec, quality)
                lr_path = Path("lr") / f"x{scale}" / f"{stem}__{codec}-q{quality}.png"
                (out / lr_path).parent.mkdir(parents=True, exist_ok=True)
                lr.save(out / lr_path, compress_level=1)
                bpp = 8 * nbytes / (hr.width * hr.height)
                pairs.append(
                    Pair(
                        src.name,
                        src.group,
                        src.split,
                        src.origin,
                        src.licence,
                        scale,
                        codec,
                        quality,
                        nbytes,
                        bpp,
                        str(hr_path),
                        str(lr_path),
                    )
                )
        if progress:
            print(
                f"\r{count + 1} images, {len(pairs)} pairs, {time.perf_counter() - start:.0f} s  {src.name:<50}",
                end="",
                file=sys.stderr,
                flush=True,
            )
    if progress:
        print(file=sys.stderr)
    (out / "manifest.json").write_text(json.dumps([asdict(p) for p in pairs], indent=1))
    return pairs


def load_manifest(folder: Path) -> list[Pair]:
    return [Pair(**row) for row in json.loads((folder / "manifest.json").read_text())]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("training/data"), help="dataset folder (rebuilt)")
    parser.add_argument(
        "--scales",
        type=int,
        nargs="+",
        default=[2],
        choices=(1, 2, 4),
        help="downscale factors; 1 = the full-size stored forms, for the x1 restorer",
    )
    parser.add_argument("--limit", type=int, default=None, help="at most this many source images")
    parser.add_argument("--list", action="store_true", help="only list the source images, their split and licence")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.list:
        for src in sources():
            print(f"{src.split:5} {src.image.width}x{src.image.height:<5} {src.name:<55} {src.licence}")
        return 0
    pairs = build(args.out, tuple(args.scales), args.limit)
    train = sum(p.split == "train" for p in pairs)
    print(f"{len(pairs)} pairs ({train} train, {len(pairs) - train} val) in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
