"""Which codec should hold the downscaled image? Fidelity per stored byte, measured through the real retrieval.

    .venv/bin/python benchmarks/bench_codecs.py [--photos N] [--max-side 512]

For each photo, scale (x2, x4), codec and quality: downscale with the engine, encode the small image, decode it,
upscale it with SPAN back to the original size, and score against the original (PSNR-Y/SSIM-Y, BasicSR: crop =
scale). Bits per pixel count the stored bytes over the ORIGINAL pixel count. The reference in the same run is
the same stored bytes upscaled with plain bicubic. The last lines give the Pareto front (no other setting is both
smaller and better) and the codec that holds most of it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _photos import photos, table

from upscaler import media, metrics
from upscaler.engine import Engine

SETTINGS = (
    [("avif", q) for q in (40, 60, 80, 95)]
    + [("webp", q) for q in (60, 80, 95)]
    + [("jpeg", q) for q in (75, 90, 95)]
    + [("png", 0), ("webp-lossless", 0)]
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=None, help="use at most this many photos")
    parser.add_argument("--max-side", type=int, default=512, help="centre-crop photos to this side")
    args = parser.parse_args()
    engine = Engine()
    rows = []
    results: dict[tuple[int, str, int], list[tuple[float, float, float, float]]] = {}
    for name, hr in photos(limit=args.photos, max_side=args.max_side):
        pixels = hr.width * hr.height
        for scale in (2, 4):
            small = engine.downscale(hr, scale)
            for codec, quality in SETTINGS:
                blob = media.encode_stored(small, codec, quality or 100)
                back = media.decode_stored(blob.data)
                span = engine.upscale(back, model="span", size=hr.size)
                bicubic = engine.upscale(back, model="bicubic", size=hr.size)
                results.setdefault((scale, codec, quality), []).append(
                    (
                        8 * len(blob.data) / pixels,
                        metrics.psnr(hr, span, scale),
                        metrics.ssim(hr, span, scale),
                        metrics.psnr(hr, bicubic, scale),
                    )
                )
        print(f"  {name} done", file=sys.stderr)
    for (scale, codec, quality), values in results.items():
        bpp = statistics.mean(v[0] for v in values)
        psnr = statistics.mean(v[1] for v in values)
        rows.append(
            [
                f"x{scale}",
                codec,
                quality or "-",
                bpp,
                psnr,
                statistics.mean(v[2] for v in values),
                statistics.mean(v[3] for v in values),
                psnr - statistics.mean(v[3] for v in values),
            ]
        )
    print("\nStored codec for the downscaled image; retrieval = SPAN to the original size (PSNR/SSIM on Y, crop=scale)")
    print(table(["scale", "codec", "q", "bpp", "PSNR-Y", "SSIM-Y", "bicubic PSNR-Y", "SPAN gain dB"], rows))
    front = [
        r
        for r in rows
        if not any(o[3] <= r[3] and o[4] >= r[4] and o is not r and (o[3], o[4]) != (r[3], r[4]) for o in rows)
    ]
    front.sort(key=lambda r: r[3])
    print("\nPareto front (smallest bpp for the fidelity):")
    print(table(["scale", "codec", "q", "bpp", "PSNR-Y", "SSIM-Y", "bicubic PSNR-Y", "SPAN gain dB"], front))
    winner = Counter(r[1] for r in front).most_common(1)[0][0]
    print(f"\nMost of the front is held by: {winner}")


if __name__ == "__main__":
    main()
