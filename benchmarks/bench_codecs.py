"""Which codec should hold the downscaled image? Fidelity per stored byte, measured through the real retrieval.

    .venv/bin/python benchmarks/bench_codecs.py [--photos N] [--max-side 512] [--budget 0.3]

Photos: scikit-image's astronaut, coffee, chelsea, rocket (RGB) and camera (grey), plus every .jpg/.png under
../shared (beside the repository) when it is there; each centre-cropped to at most ``--max-side`` pixels and to a
multiple of 4. For each photo, scale (x2, x4), codec and quality: downscale with the engine, encode the small
image with :func:`upscaler.media.encode_stored`, decode it, upscale it back to the original size with SPAN, and
score against the original: PSNR-Y and SSIM-Y (BasicSR conventions, crop = scale). The reference, in the same
run, is the same stored bytes upscaled with plain bicubic.

* bpp: stored bits per pixel of the ORIGINAL image; "% PNG": stored bytes over the original's PNG bytes.
* dB/bpp: SPAN PSNR-Y divided by bpp (fidelity per stored bit; favours small files by construction).
* The winner is the setting with the best SPAN PSNR-Y among those under ``--budget`` bpp at the service's default
  scale (x4); the Pareto fronts (no other setting both smaller and better) are printed too.

Two more tables compare encoder settings the first one fixes (JPEG and AVIF chroma subsampling, AVIF speed) on
the x4 retrieval, scored on Y and, since chroma barely shows in Y, on RGB (the two are never compared).

    .venv/bin/python benchmarks/bench_codecs.py --efforts [--photos N] [--target 35]

measures the encoder effort instead (the settings UPSCALER_AVIF_SPEED and UPSCALER_JXL_EFFORT): for each AVIF
speed and JPEG XL effort, at full size, the smallest integer quality whose decode meets ``--target`` dB PSNR-Y
(the quality-targeted search's own bisection), and the bytes and encode time per megapixel it takes, next to the
default in the same run (interleaved per photo).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _photos import SHARED, table
from PIL import Image

from testing.fidelity import restore_stored
from upscaler import metrics
from upscaler.config import Settings
from upscaler.engine import Engine

SCALES = (2, 4)
SETTINGS = (
    [("avif", q) for q in (40, 60, 80, 95)]
    + [("webp", q) for q in (60, 80, 95)]
    + [("jpeg", q) for q in (75, 90, 95)]
    + [("png", 0), ("webp-lossless", 0)]
)
#: (label, codec, quality, encode_stored keyword arguments): encoder choices behind the defaults.
VARIANTS = [
    ("jpeg q75 4:2:0", "jpeg", 75, {"subsampling": "4:2:0"}),
    ("jpeg q75 4:4:4", "jpeg", 75, {"subsampling": "4:4:4"}),
    ("jpeg q85 4:2:0", "jpeg", 85, {"subsampling": "4:2:0"}),
    ("jpeg q90 4:2:0", "jpeg", 90, {"subsampling": "4:2:0"}),
    ("jpeg q90 4:4:4", "jpeg", 90, {"subsampling": "4:4:4"}),
    ("jpeg q95 4:2:0", "jpeg", 95, {"subsampling": "4:2:0"}),
    ("avif q40 4:2:0", "avif", 40, {"subsampling": "4:2:0"}),
    ("avif q40 4:4:4", "avif", 40, {"subsampling": "4:4:4"}),
    ("avif q60 4:2:0", "avif", 60, {"subsampling": "4:2:0"}),
    ("avif q60 4:4:4", "avif", 60, {"subsampling": "4:4:4"}),
    ("avif q80 4:2:0", "avif", 80, {"subsampling": "4:2:0"}),
    ("avif q80 4:4:4", "avif", 80, {"subsampling": "4:4:4"}),
    ("avif q85 4:2:0", "avif", 85, {"subsampling": "4:2:0"}),
    ("avif q95 4:2:0", "avif", 95, {"subsampling": "4:2:0"}),
    ("avif q95 4:4:4", "avif", 95, {"subsampling": "4:4:4"}),
    ("avif q80 speed 4", "avif", 80, {"speed": 4}),
    ("avif q80 speed 6", "avif", 80, {"speed": 6}),
    ("avif q80 speed 8", "avif", 80, {"speed": 8}),
]
SKIMAGE = ("astronaut", "coffee", "chelsea", "rocket", "camera")


def load_photos(max_side: int, limit: int | None) -> Iterator[tuple[str, Image.Image]]:
    """(name, image): RGB photos and the grey camera, centre-cropped to ``max_side`` and a multiple of 4."""
    from skimage import data

    found = [(name, Image.fromarray(getattr(data, name)())) for name in SKIMAGE]
    if SHARED.is_dir():
        for path in sorted(SHARED.rglob("*")):
            if path.suffix.lower() in (".jpg", ".jpeg", ".png"):
                try:
                    with Image.open(path) as img:
                        found.append((f"shared/{path.relative_to(SHARED)}", img.convert("RGB")))
                except OSError:
                    continue
    for name, img in found[:limit]:
        w, h = min(img.width, max_side) // 4 * 4, min(img.height, max_side) // 4 * 4
        left, top = (img.width - w) // 2, (img.height - h) // 2
        yield name, img.crop((left, top, left + w, top + h))


def png_bytes(img: Image.Image) -> int:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.tell()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=None, help="use at most this many photos")
    parser.add_argument("--max-side", type=int, default=512, help="centre-crop photos to this side")
    parser.add_argument("--budget", type=float, default=0.3, help="bpp budget for the winner (x4)")
    parser.add_argument("--efforts", action="store_true", help="measure AVIF speed and JPEG XL effort instead")
    parser.add_argument("--target", type=float, default=35.0, help="PSNR-Y (dB) of --efforts (default 35)")
    args = parser.parse_args()
    if args.efforts:
        efforts(list(load_photos(args.max_side, args.photos)), args.target)
        return
    engine = Engine(Settings.from_env())
    engine.warmup("span")
    start = time.perf_counter()
    # (scale, codec, quality) -> per-photo values
    runs: dict[tuple[int, str, int], list[dict[str, float]]] = defaultdict(list)
    variants: dict[str, list[dict[str, float]]] = defaultdict(list)
    names = []
    for name, hr in load_photos(args.max_side, args.photos):
        names.append(f"{name} {hr.width}x{hr.height} {hr.mode}")
        pixels, png = hr.width * hr.height, png_bytes(hr)
        for scale in SCALES:
            small = engine.downscale(hr, scale)
            for codec, quality in SETTINGS:
                runs[(scale, codec, quality)].append(measure(engine, hr, small, scale, pixels, png, codec, quality))
        small = engine.downscale(hr, 4)
        for label, codec, quality, options in VARIANTS:
            variants[label].append(measure(engine, hr, small, 4, pixels, png, codec, quality, rgb=True, **options))
        print(f"  {name}: done ({time.perf_counter() - start:.0f} s)", file=sys.stderr)

    print(f"Photos ({len(names)}): " + "; ".join(names))
    print("Retrieval: stored image decoded, upscaled to the original size; PSNR/SSIM on Y (BT.601), crop = scale.")
    headers = ["scale", "codec", "q", "bpp", "% PNG", "PSNR-Y", "SSIM-Y", "dB/bpp"]
    headers += ["bicubic PSNR-Y", "bicubic SSIM-Y", "SPAN gain dB", "encode ms", "decode ms"]
    rows = [summary(key, values) for key, values in runs.items()]
    for scale in SCALES:
        print(f"\nx{scale}: SPAN (model='span') and the bicubic reference on the same stored bytes")
        print(table(headers, [r for r in rows if r[0] == f"x{scale}"]))
    for scale in SCALES:
        front = pareto([r for r in rows if r[0] == f"x{scale}"])
        print(f"\nx{scale} Pareto front (no other setting is both smaller and better on SPAN PSNR-Y):")
        print("  " + " -> ".join(f"{r[1]} q{r[2]} ({r[3]:.3f} bpp, {r[5]:.2f} dB)" for r in front))

    means = {label: {k: statistics.mean(v[k] for v in values) for k in values[0]} for label, values in variants.items()}
    for space, suffix in (("Y", ""), ("RGB", "_rgb")):
        print(
            f"\nEncoder settings at x4, SPAN retrieval, scored on {space}" + (" (chroma shows here)" if suffix else "")
        )
        vheaders = ["setting", "bpp", "% PNG", f"PSNR-{space}", f"SSIM-{space}", "encode ms", "decode ms"]
        vrows = [
            [label, m["bpp"], m["png_pct"], m["psnr" + suffix], m["ssim" + suffix], m["enc_ms"], m["dec_ms"]]
            for label, m in means.items()
        ]
        print(table(vheaders, vrows))

    default_scale = Settings().default_scale
    for scale in SCALES:
        within = [r for r in rows if r[0] == f"x{scale}" and r[3] <= args.budget]
        if within:
            best = max(within, key=lambda r: r[5])
            print(
                f"x{scale}: best SPAN PSNR-Y under {args.budget:g} bpp: {best[1]} q{best[2]} "
                f"({best[3]:.3f} bpp, {best[4]:.1f} % of PNG, {best[5]:.2f} dB, SSIM {best[6]:.3f})"
            )
    within = [r for r in rows if r[0] == f"x{default_scale}" and r[3] <= args.budget]
    best = max(within or rows, key=lambda r: r[5])
    print(f"\nTotal {time.perf_counter() - start:.0f} s.")
    print(
        f"WINNER (default scale x{default_scale}, best fidelity under {args.budget:g} bpp): "
        f"codec={best[1]} quality={best[2]}"
    )


#: (codec, keyword, values) the --efforts table compares; the first value of each is the library's default.
EFFORTS = (("avif-420", "speed", (6, 4, 8)), ("jxl", "effort", (7, 3, 5, 9)))


def efforts(photos: list[tuple[str, Image.Image]], target: float) -> None:
    """Bytes and encode time of each effort at the smallest quality meeting ``target`` (see the module notes)."""
    from upscaler import media
    from upscaler.quality import Candidate, Target, choose_form

    goal = Target("psnr", target)
    results: dict[tuple[str, str, int], list[tuple[int, float]]] = defaultdict(list)
    for name, img in photos:
        megapixels = img.width * img.height / 1e6
        for codec, keyword, values in EFFORTS:
            for value in values:
                spent = [0.0, 0]

                def encode(scale: float, c: str, quality: int, kw=keyword, v=value, src=img, spent=spent) -> bytes:
                    start = time.perf_counter()
                    data = media.encode_stored(src, c, quality, **{kw: v})
                    spent[0], spent[1] = spent[0] + time.perf_counter() - start, spent[1] + 1
                    return data

                decision = choose_form(img, b"", goal, encode, lambda s, b: media.decode_stored(b),
                                       forms=(Candidate(1.0, codec),), keep_original=False)  # fmt: skip
                per_mp = spent[0] / spent[1] / megapixels
                results[(codec, keyword, value)].append((decision.form.bytes, per_mp))
        print(f"  {name}: done", file=sys.stderr)
    print(f"{len(photos)} photos; full size, smallest integer quality with PSNR-Y >= {target:g} dB on the decode")
    rows = []
    for codec, keyword, values in EFFORTS:
        default = results[(codec, keyword, values[0])]
        for value in values:
            got = results[(codec, keyword, value)]
            ratio = statistics.fmean(b / d for (b, _), (d, _) in zip(got, default, strict=True))
            seconds = statistics.fmean(t for _, t in got)
            speedup = statistics.fmean(d / t for (_, t), (_, d) in zip(got, default, strict=True))
            rows.append([codec, f"{keyword} {value}", sum(b for b, _ in got), f"{ratio:.3f}", f"{seconds:.2f}",
                         f"{speedup:.2f}x"])  # fmt: skip
    print(table(["codec", "setting", "bytes", "bytes / default", "encode s/MP", "speed vs default"], rows))


def measure(
    engine: Engine,
    hr: Image.Image,
    small: Image.Image,
    scale: int,
    pixels: int,
    png: int,
    codec: str,
    quality: int,
    *,
    rgb: bool = False,
    **options: object,
) -> dict[str, float]:
    models = ("span",) if rgb else ("span", "bicubic")
    restored = restore_stored(engine, hr, small, codec, quality, models=models, **options)
    span = restored.images["span"]
    values = {
        "bpp": 8 * len(restored.blob) / pixels,
        "png_pct": 100.0 * len(restored.blob) / png,
        "psnr": metrics.psnr(hr, span, scale),
        "ssim": metrics.ssim(hr, span, scale),
        "enc_ms": 1000 * restored.encode_s,
        "dec_ms": 1000 * restored.decode_s,
    }
    if rgb:
        values["psnr_rgb"] = metrics.psnr(hr, span, scale, y_channel=False)
        values["ssim_rgb"] = metrics.ssim(hr, span, scale, y_channel=False)
    else:
        bicubic = restored.images["bicubic"]
        values["bic_psnr"] = metrics.psnr(hr, bicubic, scale)
        values["bic_ssim"] = metrics.ssim(hr, bicubic, scale)
    return values


def summary(key: tuple[int, str, int], values: list[dict[str, float]]) -> list[object]:
    scale, codec, quality = key
    mean = {k: statistics.mean(v[k] for v in values) for k in values[0]}
    return [
        f"x{scale}",
        codec,
        quality or "-",
        mean["bpp"],
        mean["png_pct"],
        mean["psnr"],
        mean["ssim"],
        mean["psnr"] / mean["bpp"],
        mean["bic_psnr"],
        mean["bic_ssim"],
        mean["psnr"] - mean["bic_psnr"],
        mean["enc_ms"],
        mean["dec_ms"],
    ]


def pareto(rows: list[list]) -> list[list]:
    """Rows no other row beats on both bpp (smaller) and SPAN PSNR-Y (higher), by increasing bpp."""
    front = [r for r in rows if not any(o[3] <= r[3] and o[5] >= r[5] and (o[3], o[5]) != (r[3], r[5]) for o in rows)]
    return sorted(front, key=lambda r: r[3])


if __name__ == "__main__":
    main()
