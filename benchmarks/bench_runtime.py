"""CPU benchmark of the three runtimes on every shipped model: ncnn, PyTorch and ONNX Runtime, through the engine.

    .venv/bin/python benchmarks/bench_runtime.py            # every model, untiled and tiled (a few minutes)
    .venv/bin/python benchmarks/bench_runtime.py --quick    # smaller inputs, one repeat

Each model upscales a real photograph (scikit-image's ``coffee``) by its native factor through ``Engine.upscale``
(tiling, blending and conversions included) with ``UPSCALER_RUNTIME`` set to each runtime, at ``--threads``
threads. "untiled" runs the input in one piece; "tiled" forces ``--tile`` pixel tiles on a larger input. Runs are
interleaved (ncnn, torch, onnx, ncnn, torch, onnx, ...) so drift hits each runtime alike; the table gives the
median output megapixels per second, the ratio to ncnn measured in the same run, and the largest difference of the
8-bit result from ncnn's. A runtime that is not installed (torch is the ``gpu`` extra) is listed as missing.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _photos import table

from upscaler.config import Settings
from upscaler.engine import Engine, registry

RUNTIMES = ("ncnn", "torch", "onnx")
MODULES = {"ncnn": "ncnn", "torch": "torch", "onnx": "onnxruntime"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per runtime (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timed runs per case (median)")
    parser.add_argument("--tile", type=int, default=128, help="tile side of the tiled case (input pixels)")
    parser.add_argument("--quick", action="store_true", help="small inputs and one repeat: a smoke run")
    parser.add_argument("--models", default=",".join(n for n, s in registry.MODELS.items() if s.is_network))
    args = parser.parse_args()
    if args.quick:
        args.repeats = 1
    from skimage import data

    photo = Image.fromarray(data.coffee()).convert("RGB")
    present = [r for r in RUNTIMES if importlib.util.find_spec(MODULES[r]) is not None]
    engines = {r: Engine(Settings.from_env({}, runtime=r, gpu="off", ncnn_threads=args.threads)) for r in present}
    rows: list[list[object]] = []
    for name in args.models.split(","):
        spec = registry.MODELS[name]
        heavy = spec.bytes_per_input_pixel > 10_000  # RRDB (realesrgan-x4plus): 40x the work of SPAN per pixel
        untiled = (96, 64) if heavy or args.quick else (256, 192)
        tiled = (192, 128) if heavy or args.quick else (384, 288)
        for case, size, tile in (("untiled", untiled, 0), ("tiled", tiled, args.tile)):
            img = photo.resize(size, Image.Resampling.BICUBIC)
            times: dict[str, list[float]] = {r: [] for r in present}
            outputs: dict[str, np.ndarray] = {}
            for r in present:  # warm-up: load the model, first-call allocations
                outputs[r] = np.asarray(engines[r].upscale(img, spec.scale, model=name, tile=tile), np.int16)
            for _ in range(args.repeats):
                for r in present:
                    start = time.perf_counter()
                    engines[r].upscale(img, spec.scale, model=name, tile=tile)
                    times[r].append(time.perf_counter() - start)
            out_mp = size[0] * size[1] * spec.scale**2 / 1e6
            base = statistics.median(times["ncnn"]) if "ncnn" in times else None
            for r in RUNTIMES:
                if r not in present:
                    rows.append([name, case, f"{size[0]}x{size[1]}", r, "not installed", "", ""])
                    continue
                med = statistics.median(times[r])
                diff = int(np.abs(outputs[r] - outputs["ncnn"]).max()) if "ncnn" in outputs else ""
                ratio = f"{base / med:.2f}" if base else ""
                rows.append([name, case, f"{size[0]}x{size[1]}", r, out_mp / med, ratio, diff])
            print(table(["model", "case", "input", "runtime", "out MP/s", "vs ncnn", "max |diff| (8-bit)"], rows[-3:]))
            print(flush=True)
    print(f"\nCPU, {args.threads} threads, median of {args.repeats} interleaved runs; ratio = ncnn time / runtime time")
    print(table(["model", "case", "input", "runtime", "out MP/s", "vs ncnn", "max |diff| (8-bit)"], rows))


if __name__ == "__main__":
    main()
