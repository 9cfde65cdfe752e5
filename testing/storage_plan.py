"""Storage plan: for your images, what each storage setting saves and keeps, next to plain full-size AVIF.

    python -m testing.storage_plan ~/photos
    python -m testing.storage_plan ~/photos --scales 2,3,4 --codecs avif,webp --qualities 20,50,80 --csv plan.csv
    python testing/storage_plan.py ~/photos --max-side 1024 --limit 20     # quicker on big photos

Nothing is stored and no service is needed: each setting runs here, with the service's own engine and encoders.
For every image and every setting (scale x stored codec x quality), the image is downscaled, encoded as the
service would store it, decoded and upscaled back with the model (SPAN by default), and scored against the
original. Beside it, two references for the SAME stored bytes:

  bicubic     the same small image upscaled by plain bicubic: what the model adds;
  full-size   the original re-encoded at full size with AVIF (--full-size), no downscale, its quality bisected so
              that the file weighs what the setting stored: what you would get by simply re-encoding.

How to read the table (one row per setting, means over your images):

  bpp              stored bits per original pixel (stored bytes x 8 / width x height): the cost
  saved %          bytes saved against your original files
  PSNR-Y SR        fidelity of downscale + super-resolution, dB (BT.601 luma, border of `scale` px cropped)
  PSNR-Y full      fidelity of full-size AVIF at the same bytes
  SR - full        positive: downscale + SR keeps more of the image than full-size AVIF for those bytes;
                   negative: re-encoding at full size would be the better use of the bytes
  SR wins          on how many images the model beat full-size AVIF (PSNR-Y); "+N*": on N more, full-size
                   AVIF cannot get as small as the stored form at all

Rule of thumb, measured on photographs: above about 0.1 bpp a full-size AVIF of the same bytes restores better
than downscale + SR. Downscaling is the only way to the lowest rates, where even AVIF's smallest file (quality 1)
is larger than the stored form ("full size cannot get this small": marked *, left out of the comparisons; the
PSNR-Y SR column says what that rate costs in fidelity).
The table per bpp band at the end shows where the line falls for YOUR images. PSNR inf counts as 100 dB.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # also runs as `python testing/storage_plan.py`

import argparse
import csv
import math
import time
from collections import defaultdict

from testing import fidelity
from testing.fidelity import PlanRow, Setting, capped
from testing.report import text_table
from testing.testHelp import find_images
from upscaler import media
from upscaler.config import Settings
from upscaler.engine import Engine
from upscaler.errors import UpscalerError

LIMITS = media.DecodeLimits(max_bytes=1 << 34, max_megapixels=1000.0)
CSV_COLUMNS = [
    "image",
    "setting",
    "original_bytes",
    "stored_bytes",
    "bpp",
    "saved_percent",
    "psnr_y",
    "ssim_y",
    "bicubic_psnr_y",
    "bicubic_ssim_y",
    "fullsize_codec",
    "fullsize_quality",
    "fullsize_bytes",
    "fullsize_psnr_y",
    "fullsize_ssim_y",
    "gain_db",
    "same_bytes",
]
#: Upper edges of the bpp bands of the "where does it win" table.
BANDS = (0.05, 0.1, 0.2, 0.5, math.inf)


def _numbers(text: str, kind: type = float) -> list:
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def settings_grid(scales: list[float], codecs: list[str], qualities: list[int]) -> list[Setting]:
    """Every (scale, codec, quality); lossless codecs once per scale (quality 0)."""
    grid: list[Setting] = []
    for scale in scales:
        for codec in codecs:
            for quality in [0] if codec in ("png", "webp-lossless") else qualities:
                grid.append(Setting(float(scale), codec, quality))
    return grid


def load(path: Path, max_side: int | None) -> tuple[object, int]:
    """(pixels, file bytes) of an image; with ``max_side``, the centre cropped to at most that side."""
    data = path.read_bytes()
    pixels = media.decode(data, LIMITS).pixels
    if max_side:
        from upscaler.engine.pixels import dimensions

        w, h = dimensions(pixels)  # type: ignore[arg-type]
        cw, ch = min(w, max_side), min(h, max_side)
        if (cw, ch) != (w, h):
            left, top = (w - cw) // 2, (h - ch) // 2
            if hasattr(pixels, "crop"):
                pixels = pixels.crop((left, top, left + cw, top + ch))  # type: ignore[union-attr]
            else:
                pixels = pixels[top : top + ch, left : left + cw]  # type: ignore[index]
            # the crop's share of the file: savings stay comparable with the whole file's
            data_len = round(len(data) * cw * ch / (w * h))
            return pixels, data_len
    return pixels, len(data)


def _mean(rows: list[PlanRow], value: object) -> float:
    return fidelity.mean(value(r) for r in rows)  # type: ignore[operator]


def setting_table(rows: list[PlanRow], full_label: str) -> str:
    by_setting: dict[Setting, list[PlanRow]] = defaultdict(list)
    for r in rows:
        by_setting[r.setting].append(r)
    headers = [
        "setting",
        "bpp",
        "saved %",
        "PSNR-Y SR",
        "PSNR-Y bicubic",
        f"PSNR-Y {full_label}",
        "SR - full dB",
        "SSIM-Y SR",
        f"SSIM-Y {full_label}",
        "SR wins",
    ]
    out = []
    for setting, group in sorted(by_setting.items(), key=lambda kv: _mean(kv[1], lambda r: r.bpp)):
        full = [r for r in group if r.compared]
        wins = sum(1 for r in full if r.gain_db > 0)
        smaller = sum(1 for r in group if r.unreachable)
        out.append(
            [
                str(setting),
                f"{_mean(group, lambda r: r.bpp):.3f}",
                f"{_mean(group, lambda r: r.saved_percent):.1f}",
                f"{_mean(group, lambda r: capped(r.model.psnr_y)):.2f}",
                f"{_mean(group, lambda r: capped(r.bicubic.psnr_y)):.2f}",
                f"{_mean(full, lambda r: capped(r.full_size_scores.psnr_y)):.2f}" if full else "-",
                f"{_mean(full, lambda r: r.gain_db):+.2f}" if full else "-",
                f"{_mean(group, lambda r: r.model.ssim_y):.4f}",
                f"{_mean(full, lambda r: r.full_size_scores.ssim_y):.4f}" if full else "-",
                f"{wins}/{len(full)}" + (f" (+{smaller}*)" if smaller else ""),
            ]
        )
    return text_table(headers, out)


def band_table(rows: list[PlanRow]) -> str:
    """(image, setting) pairs grouped by bpp band: how often downscale + SR beats the full-size codec."""
    out, lo = [], 0.0
    for hi in BANDS:
        band = [r for r in rows if lo <= r.bpp < hi]
        if band:
            compared = [r for r in band if r.compared]
            wins = sum(1 for r in compared if r.gain_db > 0)
            label = f"{lo:g} - {hi:g} bpp" if math.isfinite(hi) else f">= {lo:g} bpp"
            gain = f"{_mean(compared, lambda r: r.gain_db):+.2f}" if compared else "-"
            only = sum(1 for r in band if r.unreachable)
            out.append([label, str(len(band)), f"{wins}/{len(compared)}", gain, str(only)])
        lo = hi
    headers = ["stored rate", "cases", "SR wins", "mean SR - full dB", "full size cannot get this small"]
    return text_table(headers, out)


def write_csv(path: Path, named: list[tuple[str, PlanRow]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        for name, r in named:
            cells = [name, str(r.setting), r.original_bytes, r.stored_bytes, f"{r.bpp:.4f}", f"{r.saved_percent:.2f}"]
            cells += [f"{v:.4f}" for v in (r.model.psnr_y, r.model.ssim_y, r.bicubic.psnr_y, r.bicubic.ssim_y)]
            f, fs = r.full_size, r.full_size_scores
            if f is not None and fs is not None:
                cells += [f.codec, f.quality, f.bytes, f"{fs.psnr_y:.4f}", f"{fs.ssim_y:.4f}", f"{r.gain_db:.4f}"]
                cells.append("yes" if r.compared else "no")
            writer.writerow(cells)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="storage_plan", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", help="folder of images (walked recursively, any extension case), or one image")
    parser.add_argument("--scales", type=_numbers, default=[2.0, 4.0], help="downscale factors (default 2,4)")
    parser.add_argument(
        "--codecs",
        type=lambda t: [c.strip().lower() for c in t.split(",") if c.strip()],
        default=["avif", "jxl", "webp", "jpeg"],
        help="stored codecs: avif (4:4:4), avif-420, jxl, webp, jpeg, jxl-lossless, webp-lossless, png "
        "(default avif,jxl,webp,jpeg)",
    )
    parser.add_argument(
        "--qualities",
        type=lambda t: _numbers(t, int),
        default=[40, 80],
        help="stored qualities for lossy codecs (default 40,80; the service stores q80)",
    )
    parser.add_argument("--model", default=None, help="model to restore with (default: the service's, span)")
    parser.add_argument(
        "--full-size",
        choices=fidelity.FULL_SIZE_CODECS,
        default="avif",
        help="full-size codec (default avif: 4:4:4; avif-420 and jxl are often smaller on photos)",
    )
    parser.add_argument("--limit", type=int, default=None, help="at most this many images")
    parser.add_argument("--max-side", type=int, default=None, help="centre-crop images to this side (quicker)")
    parser.add_argument("--csv", default=None, help="also write every (image, setting) row to this CSV")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    bad = [c for c in args.codecs if c not in media.STORED_CODECS]
    if bad or any(s not in (1, 2, 3, 4) for s in args.scales) or any(not 1 <= q <= 100 for q in args.qualities):
        print(f"error: scales are 1-4, qualities 1-100, codecs among {', '.join(media.STORED_CODECS)}", file=sys.stderr)
        return 2
    paths = list(find_images(args.folder))[: args.limit] if Path(args.folder).exists() else []
    if not paths:
        print(f"error: no images under {args.folder}", file=sys.stderr)
        return 2
    settings = Settings.from_env()
    model = args.model or settings.default_model
    engine = Engine(settings)
    grid = settings_grid(args.scales, args.codecs, args.qualities)
    from tqdm import tqdm

    bar = tqdm(
        total=len(paths) * len(grid), unit="setting", file=sys.stderr, dynamic_ncols=True, disable=args.no_progress
    )
    named: list[tuple[str, PlanRow]] = []
    failures = []
    start = time.perf_counter()
    for number, path in enumerate(paths, 1):
        bar.set_postfix_str(path.name[-30:])
        try:
            pixels, size = load(path, args.max_side)
            rows = fidelity.plan_image(
                engine, pixels, size, grid, model=model, full_size_codec=args.full_size, on_setting=bar.update
            )
        except (UpscalerError, OSError, ValueError) as exc:
            failures.append(f"{path}: {getattr(exc, 'message', None) or exc}")
            bar.update(number * len(grid) - bar.n)  # the settings this image did not get to
            continue
        named += [(str(path), r) for r in rows]
    bar.close()
    rows = [r for _, r in named]
    full_label = f"full {args.full_size.upper()}"
    images = len(paths) - len(failures)
    print(
        f"Storage plan: {images} image(s) under {args.folder}"
        + (f", centre-cropped to {args.max_side} px" if args.max_side else "")
        + f"; model {model}; {len(grid)} settings; {time.perf_counter() - start:.0f} s. Nothing was stored."
    )
    print(
        f"SR = downscale + {model}; bicubic = the same stored bytes upscaled by bicubic; {full_label} = the original "
        f"re-encoded at full size with {args.full_size.upper()} at the same bytes (quality bisected)."
    )
    print("PSNR-Y/SSIM-Y: BT.601 luma, border of `scale` px cropped (BasicSR); means over the images.\n")
    for line in failures:
        print(f"FAILED {line}", file=sys.stderr)
    if not rows:
        return 1
    print(setting_table(rows, full_label))
    print("\nWhere downscale + SR wins, by stored rate (every image x setting):")
    print(band_table(rows))
    wins = [r for r in rows if r.compared and r.gain_db > 0]
    compared = sum(1 for r in rows if r.compared)
    only = [r for r in rows if r.unreachable]
    if wins:
        print(
            f"\nDownscale + {model} beat {full_label} at the same bytes in {len(wins)} of {compared} cases, all at "
            f"or below {max(r.bpp for r in wins):.3f} bpp; in the others, re-encoding at full size keeps more of the "
            "image."
        )
    elif compared:
        print(
            f"\nDownscale + {model} never beat {full_label} where both reach the same bytes ({compared} cases): there, "
            "re-encoding at full size keeps more of the image for the same storage."
        )
    if only:
        print(
            f"* {len(only)} case(s) at or below {max(r.bpp for r in only):.3f} bpp: even the smallest {full_label} "
            "file (quality 1) is larger than the stored form, so only downscaling reaches that rate. They are left "
            f"out of the comparisons: in rows marked *, the {full_label} columns and SR - full are means over the "
            "other images only."
        )
    if args.csv:
        write_csv(Path(args.csv), named)
        print(f"wrote {args.csv}")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
