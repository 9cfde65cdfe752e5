"""Quality-targeted storage benchmark: bytes needed to meet a fidelity target, per strategy, in one run.

    .venv/bin/python benchmarks/bench_quality.py [--max-side 512] [--targets 32,35,38,40]

Images: scikit-image's photographs (and ../shared's when present), plus generated graphics (a chart, text on a
flat background, a colour map), each saved as JPEG q90 — what most archives hold. For each PSNR-Y target
(whole image, no border crop) it prints the mean stored bytes as a share of the original JPEG, and the share of
images whose retrieval meets the target, for:

* targeted: ``upscaler.quality`` (x4, x2 or no downscale; AVIF/WebP/JPEG/lossless; the original as fallback);
* targeted, fast search: the same search with bicubic in place of the model, its choice verified once with the
  model (the exact search runs on when it misses);
* full-size AVIF alone, quality bisected to the target (no downscale, no model) — the strong baseline;
* the fixed settings x2 AVIF q60 and x4 AVIF q80 (the service's default), which do not adapt to the target.

Every fidelity is measured on a real retrieval through the service's own code path (SPAN for x2/x4). It also
prints the cost of deciding (seconds per megapixel and model runs, 2 CPU cores), exact and fast.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _photos import photos, table

from upscaler import media, metrics
from upscaler.config import Settings
from upscaler.engine import Engine
from upscaler.providers import open_provider
from upscaler.quality import Target
from upscaler.service import S3CommonUpscaler
from upscaler.store.local import LocalFolderStore


def graphics(side: int) -> list[tuple[str, Image.Image]]:
    chart = Image.new("RGB", (side, side * 3 // 4), "white")
    d = ImageDraw.Draw(chart)
    for i in range(8):
        h = int((0.2 + 0.1 * ((i * 37) % 8)) * chart.height)
        d.rectangle(
            [20 + i * (side - 40) // 8, chart.height - h, 10 + (i + 1) * (side - 40) // 8, chart.height - 10],
            fill=(30 * i % 255, 90, 200 - 20 * i),
        )
    d.line([(10, 10), (10, chart.height - 10), (side - 10, chart.height - 10)], fill="black", width=2)
    text = Image.new("RGB", (side, side // 2), (250, 248, 240))
    d = ImageDraw.Draw(text)
    for row in range(side // 24):
        d.text((8, 6 + row * 12), "Storage saved is money saved; fidelity is what users keep. " * 2, fill=(20, 20, 20))
    y, x = np.mgrid[0 : side // 2, 0:side]
    cmap = np.stack([(x * 255 // side), (y * 510 // side) % 256, ((x + y) * 3) % 256], axis=2).astype(np.uint8)
    return [("graphic/chart", chart), ("graphic/text", text), ("graphic/colormap", Image.fromarray(cmap))]


def jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-side", type=int, default=512)
    parser.add_argument("--targets", default="32,35,38,40")
    parser.add_argument("--limit", type=int, default=None, help="photos to use (default all)")
    args = parser.parse_args()
    settings = Settings.from_env({}, ncnn_threads=2)
    engine = Engine(settings)
    with tempfile.TemporaryDirectory() as tmp:
        svc = S3CommonUpscaler(LocalFolderStore(Path(tmp)), open_provider(settings, engine), engine, settings)
        images = [(n, jpeg(img)) for n, img in photos(limit=args.limit, max_side=args.max_side)]
        images += [(n, jpeg(img)) for n, img in graphics(args.max_side)]
        print(f"{len(images)} images (JPEG q90, <= {args.max_side} px), PSNR-Y over the whole image, SPAN for x2/x4")
        fixed: dict[str, list[tuple[int, float]]] = {}
        for label, scale, quality in (("fixed x2 AVIF q60", 2.0, 60), ("fixed x4 AVIF q80", 4.0, 80)):
            rows = []
            for i, (_, data) in enumerate(images):
                stored = svc.store_image(
                    data, bucket="bench", key=f"{label}/{i}.jpg", scale=scale, codec="avif", quality=quality
                )
                back = svc.retrieve_image(bucket="bench", key=f"{label}/{i}.jpg")
                score = metrics.psnr(media.decode(data, svc.limits).pixels, media.decode(back.data, svc.limits).pixels)
                rows.append((stored.record.stored_bytes, score))
            fixed[label] = rows

        out_rows: list[list[object]] = []
        cost: dict[str, list[tuple[float, int]]] = {"exact": [], "fast": []}
        fast_vs_exact: list[float] = []
        for value in (float(v) for v in args.targets.split(",")):
            goal = Target("psnr", value)
            strategies: dict[str, list[tuple[int, float]]] = {
                "targeted": [],
                "targeted, fast search": [],
                "full-size AVIF to target": [],
            }
            for _, data in images:
                chosen = svc.decide(data, goal)
                cost["exact"].append((chosen.seconds_per_megapixel, chosen.model_runs))
                strategies["targeted"].append((chosen.form.bytes, chosen.form.score))
                quick = svc.decide(data, Target("psnr", value, "fast"))
                cost["fast"].append((quick.seconds_per_megapixel, quick.model_runs))
                strategies["targeted, fast search"].append((quick.form.bytes, quick.form.score))
                fast_vs_exact.append(quick.form.bytes / chosen.form.bytes)
                avif = svc.decide(data, goal, scales=(1.0,), scale1_codecs=("avif",))
                strategies["full-size AVIF to target"].append((avif.form.bytes, avif.form.score))
            strategies.update(fixed)
            for label, rows in strategies.items():
                share = statistics.fmean(b / len(d) for (b, _), (_, d) in zip(rows, images, strict=True))
                met = statistics.fmean(1.0 if s >= value else 0.0 for _, s in rows)
                out_rows.append([f"{value:g} dB", label, f"{100 * share:.1f}%", f"{100 * met:.0f}%"])
        print()
        print(table(["target", "strategy", "mean bytes vs JPEG q90", "images meeting the target"], out_rows))
        print()
        for search, runs in cost.items():
            per_mp = [c for c, _ in runs]
            print(
                f"cost of the {search} decision: median {statistics.median(per_mp):.2f} s/MP, "
                f"max {max(per_mp):.2f} s/MP, mean model runs {statistics.fmean(r for _, r in runs):.1f}"
            )
        print(
            f"fast search bytes / exact search bytes: median {statistics.median(fast_vs_exact):.3f}, "
            f"max {max(fast_vs_exact):.3f} (every form checked against the target on a real retrieval)"
        )


if __name__ == "__main__":
    main()
