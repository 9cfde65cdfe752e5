"""Engine benchmark: roundtrip fidelity per model, throughput against bare ncnn, peak memory at 24 MP.

    .venv/bin/python benchmarks/bench_engine.py            # full run (a few minutes on 2 cores)
    .venv/bin/python benchmarks/bench_engine.py --quick    # one small photo, smoke test

Table 1 downscales each photo with the engine (antialiased bicubic, what the store path does) and upscales it back
to the original size with each model; PSNR and SSIM follow BasicSR (crop `scale` px, Y channel of BT.601), plus
the original test bench's orb_sim. Table 2 times each network through `Engine.upscale` (untiled and tiled) next to
a bare ncnn extract of the same model on the same input in the same run; the ratio is bare time / our time.
Table 3 runs a ~24 MP output in a child process and reports its peak RSS.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _photos import photos, table

from upscaler import metrics
from upscaler.config import Settings
from upscaler.engine import Engine, registry, tiling

FIDELITY_MODELS = {
    2: ["bicubic", "lanczos", "span", "realesr-animevideov3"],
    4: ["bicubic", "lanczos", "span", "realesr-animevideov3", "realesrgan-x4plus"],
}


def fidelity(engine: Engine, limit: int | None, max_side: int) -> list[list[object]]:
    scores: dict[tuple[int, str], list[tuple[float, float, float]]] = {}
    names = []
    for name, hr in photos(limit=limit, max_side=max_side):
        names.append(name)
        for scale, models in FIDELITY_MODELS.items():
            lr = engine.downscale(hr, scale)
            for model in models:
                up = engine.upscale(lr, model=model, size=hr.size)
                scores.setdefault((scale, model), []).append(
                    (
                        metrics.psnr(hr, up, crop_border=scale, y_channel=True),
                        metrics.ssim(hr, up, crop_border=scale, y_channel=True),
                        metrics.orb_sim(hr, up),
                    )
                )
        print(f"  scored {name} ({hr.width}x{hr.height})", file=sys.stderr)
    rows = []
    for (scale, model), values in scores.items():
        spec = engine.resolve(model, scale)
        base = statistics.mean(v[0] for v in scores[(scale, "bicubic")])
        mean_psnr = statistics.mean(v[0] for v in values)
        rows.append(
            [
                f"x{scale}",
                model if spec.name == model else f"{model} ({spec.name})",
                spec.kind,
                mean_psnr,
                mean_psnr - base,
                statistics.mean(v[1] for v in values),
                statistics.mean(v[2] for v in values),
                len(values),
            ]
        )
    return rows


def _best_of(repeats: int, fn) -> float:
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def throughput(engine: Engine, repeats: int, quick: bool) -> list[list[object]]:
    """Per model: an input that fits one tile (~1 MP out), and one of 2x2 automatic tiles, each next to a bare
    ncnn extract of the whole same input."""
    import ncnn

    rows: list[list[object]] = []
    src = next(photos(limit=1, include_shared=False))[1]
    for spec in registry.MODELS.values():
        if not spec.is_network:
            continue
        param, weights = registry.weight_files(spec)
        net = ncnn.Net()
        net.opt.use_vulkan_compute = engine.options.use_gpu()
        net.opt.num_threads = engine.options.resolved_threads()
        net.load_param(str(param))
        net.load_model(str(weights))
        auto = engine.auto_tile(spec)
        out_px = 150_000 if spec.name == "realesrgan-x4plus" else 1_000_000
        small = int(math.sqrt(out_px // (8 if quick else 1)) / spec.scale) // 4 * 4
        cases = [("untiled", min(small, auto), 4096)]
        if not quick:
            cases.append(("tiled", 2 * auto - engine.settings.tile_overlap, auto))
        for label, side, tile in cases:
            lr = src.resize((side, side), Image.Resampling.BICUBIC)
            chw = np.ascontiguousarray(np.asarray(lr, np.float32).transpose(2, 0, 1) / 255.0)

            def bare(net=net, chw=chw) -> np.ndarray:
                ex = net.create_extractor()
                ex.input("data", ncnn.Mat(chw))
                _, out = ex.extract("output")
                return np.array(out)

            def ours(lr=lr, spec=spec, tile=tile) -> object:
                return engine.upscale(lr, spec.scale, model=spec.name, tile=tile)

            bare()  # warm both paths
            ours()
            t_bare, t_ours = _best_of(repeats, bare), _best_of(repeats, ours)
            mp = (side * spec.scale) ** 2 / 1e6
            n_tiles = tiling.tile_count(side, side, tile, engine.settings.tile_overlap)
            rows.append(
                [
                    spec.name,
                    label,
                    f"{side}x{side}",
                    f"{n_tiles} x {min(tile, side)}px",
                    mp / t_bare,
                    mp / t_ours,
                    t_bare / t_ours,
                ]
            )
            print(f"  timed {spec.name} {label}", file=sys.stderr)
    return rows


def peak_rss_child(model: str, out_side: int, tile: int) -> dict[str, float]:
    """Upscale to out_side x out_side in a fresh process; report its peak RSS (VmHWM of the child: ru_maxrss
    would carry the parent's peak across exec)."""
    code = f"""
import json, sys, time
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from PIL import Image
from upscaler.engine import Engine, registry
spec = registry.resolve({model!r}, 4)
side = {out_side} // spec.scale
from skimage import data
img = Image.fromarray(data.astronaut()).resize((side, side), Image.Resampling.BICUBIC)
eng = Engine()
eng.warmup(spec.name)
def hwm_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
before = hwm_mb()
t = time.perf_counter()
out = eng.upscale(img, spec.scale, model=spec.name, tile={tile} or None)
dt = time.perf_counter() - t
print(json.dumps({{"out_mp": out.width * out.height / 1e6, "seconds": dt,
                  "rss_before_mb": before,
                  "peak_rss_mb": hwm_mb(),
                  "tile": {tile} or eng.auto_tile(spec)}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one small photo, small inputs, no 24 MP run")
    parser.add_argument("--photos", type=int, default=None, help="use at most this many photos")
    parser.add_argument("--max-side", type=int, default=512, help="centre-crop photos to this side (default 512)")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats; the best is kept (default 3)")
    parser.add_argument("--json", type=Path, help="also write the tables to this JSON file")
    args = parser.parse_args()
    engine = Engine(Settings.from_env())
    print(f"ncnn threads: {engine.options.resolved_threads()}, GPU: {engine.options.use_gpu()}")

    limit = 1 if args.quick else args.photos
    max_side = 128 if args.quick else args.max_side
    rows1 = fidelity(engine, limit, max_side)
    h1 = ["scale", "model", "kind", "PSNR-Y", "vs bicubic", "SSIM-Y", "orb_sim", "photos"]
    print("\nTable 1. Roundtrip fidelity (engine downscale -> upscale to original size; BasicSR: crop=scale, Y)")
    print(table(h1, rows1))

    rows2 = throughput(engine, 1 if args.quick else args.repeats, args.quick)
    h2 = ["model", "case", "input", "tiles", "bare ncnn MP/s", "engine MP/s", "ratio"]
    print("\nTable 2. Throughput in output megapixels/s (ratio = bare ncnn time / our time; target >= 0.95)")
    print(table(h2, rows2))

    rows3: list[list[object]] = []
    if not args.quick:
        for model, tile in (("span-x4", 0), ("realesr-animevideov3-x4", 0)):
            r = peak_rss_child(model, 4896, tile)
            rows3.append(
                [model, f"{r['out_mp']:.1f} MP", f"{r['tile']}px", r["seconds"], r["rss_before_mb"], r["peak_rss_mb"]]
            )
        h3 = ["model", "output", "tile", "seconds", "RSS loaded MB", "peak RSS MB"]
        print("\nTable 3. Peak memory for a ~24 MP output (target < 2048 MB)")
        print(table(h3, rows3))
    print(f"\n(peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")
    if args.json:
        args.json.write_text(
            json.dumps({"fidelity": [h1, *rows1], "throughput": [h2, *rows2], "memory": rows3}, indent=1)
        )


if __name__ == "__main__":
    main()
