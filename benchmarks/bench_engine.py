"""Engine benchmark: roundtrip fidelity per model, throughput against bare ncnn, contention, ncnn options, memory.

    .venv/bin/python benchmarks/bench_engine.py                     # everything (several minutes on 2 cores)
    .venv/bin/python benchmarks/bench_engine.py --only throughput   # one or more tables
    .venv/bin/python benchmarks/bench_engine.py --quick             # one small photo, small inputs, smoke test

Table 1 downscales each photo with the engine (antialiased bicubic, what the store path does) and upscales it back
to the original size with each model; PSNR and SSIM follow BasicSR (crop `scale` px, Y channel of BT.601), plus
the original test bench's orb_sim. Table 2 times each network through `Engine.upscale` with automatic tiles, on an
input that fits one tile and on large inputs (1024x768, 1224x1224), next to a bare ncnn extract of the same input
in the same run (interleaved), with the grid's pixel cover. Table 3 repeats that on a quiet machine and beside a
competing CPU-bound process, under each OpenMP wait setting, each in its own process. Table 4 measures ncnn's own
options (fp16/bf16 storage, convolution algorithms, packing, light mode) for speed and PSNR-Y. Table 5 runs the
engine on the torch runtime (fp32 channels-last, and bf16-mixed on CPUs with AMX) against bare ncnn's fp32 defaults,
with the PSNR-Y move on held-out images; it needs PyTorch (the gpu extra). Table 6 runs a ~24 MP output in a child
process and reports its peak RSS. Times are the best of --repeats; the machine may be
shared, so compare ratios measured in the same run, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
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


def _timed(fn) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def _best_of(repeats: int, fn) -> float:
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bare_net(spec: registry.ModelSpec, threads: int, gpu: bool = False, **options: bool):
    """A plain ``ncnn.Net`` of ``spec`` with ncnn's default options (or ``options`` set before loading)."""
    import ncnn

    param, weights = registry.weight_files(spec)
    net = ncnn.Net()
    net.opt.use_vulkan_compute = gpu
    net.opt.num_threads = threads
    for name, value in options.items():
        setattr(net.opt, name, value)
    net.load_param(str(param))
    net.load_model(str(weights))
    return net


def bare_extract(net, chw: np.ndarray) -> np.ndarray:
    """What a caller of ncnn does at the least: wrap the planar float input, extract, view the output."""
    import ncnn

    ex = net.create_extractor()
    ex.input("data", ncnn.Mat(chw))
    _, out = ex.extract("output")
    return np.asarray(out)


def _planar(image: Image.Image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(image, np.float32).transpose(2, 0, 1) / 255.0)


#: (model, input width, input height): the issue's large cases; 1224x1224 tiles into 16 with the old grid.
LARGE_CASES = (
    ("span-x4", 1024, 768),
    ("span-x4", 1224, 1224),
    ("span-x2", 1024, 768),
    ("realesr-animevideov3-x4", 1024, 768),
)


def throughput(
    engine: Engine, repeats: int, quick: bool, bare_memory_mb: int, only: list[str] | None = None
) -> list[list[object]]:
    """Per network: an input that fits one tile (~1 MP out); then the large cases with automatic tiles. Each next to
    a bare ncnn extract of the whole same input, interleaved (bare, engine, bare, engine, ...), best of each, in
    wall time and in this process's CPU time (on a shared, loaded machine the wall time mostly measures the
    others). A whole input whose bare extract would need more than ``bare_memory_mb`` (ncnn's measured peak per
    pixel) is compared with a bare extract of its 1024x768 centre crop instead, per output pixel, and the table
    says so. ``only``: cases as ``model`` (its one-tile input) or ``model:WxH``."""
    rows: list[list[object]] = []
    src = next(photos(limit=1, include_shared=False))[1]
    threads, overlap = engine.options.resolved_threads(), engine.settings.tile_overlap
    cases = [(spec.name, 0, 0) for spec in registry.MODELS.values() if spec.is_network]
    if not quick:
        cases += LARGE_CASES
    if only:
        cases = [c for c in cases if c[0] in only or f"{c[0]}:{c[1]}x{c[2]}" in only]
    nets: dict[str, object] = {}
    for name, width, height in cases:
        spec = registry.MODELS[name]
        if name not in nets:
            nets[name] = bare_net(spec, threads, engine.options.use_gpu())
        net = nets[name]
        if not width:
            out_px = 150_000 if spec.name == "realesrgan-x4plus" else 1_000_000
            width = height = int(math.sqrt(out_px // (8 if quick else 1)) / spec.scale) // 4 * 4
        lr = src.resize((width, height), Image.Resampling.BICUBIC)
        bare_in, bare_label = lr, "whole"
        if width * height * spec.bytes_per_input_pixel > bare_memory_mb * 2**20:
            left, top = (width - 1024) // 2, (height - 768) // 2
            bare_in, bare_label = lr.crop((left, top, left + 1024, top + 768)), "1024x768 crop"
        chw = _planar(bare_in)
        tile, max_pixels = engine.tile_limits(spec)

        def bare(net=net, chw=chw) -> np.ndarray:
            return bare_extract(net, chw)

        def ours(lr=lr, spec=spec) -> object:
            return engine.upscale(lr, spec.scale, model=spec.name)

        grid = tiling.grid(height, width, tile, overlap, max_pixels)
        if len(grid) == 1:  # the first case of each model: warm both paths
            bare()
            ours()
        (t_bare, c_bare), (t_ours, c_ours) = (math.inf, math.inf), (math.inf, math.inf)
        for _ in range(repeats):
            t_bare, c_bare = (min(a, b) for a, b in zip((t_bare, c_bare), _timed(bare), strict=True))
            t_ours, c_ours = (min(a, b) for a, b in zip((t_ours, c_ours), _timed(ours), strict=True))
        bare_mp = chw.shape[1] * chw.shape[2] * spec.scale**2 / 1e6
        mp = width * height * spec.scale**2 / 1e6
        rows.append(
            [
                spec.name,
                f"{width}x{height}",
                f"{len(grid)} x {grid[0].x1 - grid[0].x0}x{grid[0].y1 - grid[0].y0}",
                tiling.cover(height, width, tile, overlap, max_pixels),
                bare_label,
                bare_mp / t_bare,
                mp / t_ours,
                (mp / t_ours) / (bare_mp / t_bare),
                (mp / c_ours) / (bare_mp / c_bare),
                os.getloadavg()[0],
            ]
        )
        print(f"  timed {spec.name} {width}x{height}", file=sys.stderr)
    return rows


#: OpenMP behaviours compared under contention. ncnn's wheel links libgomp, which reads these once, as it loads.
POLICIES = {
    "libgomp default (spin)": {},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"},
}

_CONTENTION_CHILD = """
import json, sys, time
sys.path.insert(0, {root!r})
import ncnn  # before the engine: libgomp reads this process's environment as given, not the engine's default
import numpy as np
from PIL import Image
from skimage import data
sys.path.insert(0, {bench!r})
from bench_engine import bare_extract, bare_net, _planar
from upscaler.engine import Engine, registry
spec = registry.MODELS[{model!r}]
lr = Image.fromarray(data.astronaut()).resize(({width}, {height}), Image.Resampling.BICUBIC)
eng = Engine()
net = bare_net(spec, eng.options.resolved_threads())
chw = _planar(lr)
bare = lambda: bare_extract(net, chw)
ours = lambda: eng.upscale(lr, spec.scale, model=spec.name)
bare(); ours()
times = {{"bare": [], "engine": []}}
for _ in range({repeats}):
    for name, fn in (("bare", bare), ("engine", ours)):
        t = time.perf_counter(); c = time.process_time(); fn()
        times[name].append((time.perf_counter() - t, time.process_time() - c))
print(json.dumps(times))
"""


def _competitor(seconds: float) -> subprocess.Popen:
    """One CPU-bound process (a busy loop) that ends by itself after ``seconds``."""
    code = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"
    return subprocess.Popen([sys.executable, "-c", code])


def contention(
    repeats: int, rounds: int, model: str = "span-x4", size: tuple[int, int] = (384, 288)
) -> list[list[object]]:
    """Bare ncnn and the engine on the same input, interleaved in one child process per OpenMP policy, on a quiet
    machine and with a competing CPU-bound process running; the policies alternate round by round."""
    spec = registry.MODELS[model]
    mp = size[0] * size[1] * spec.scale**2 / 1e6
    code = _CONTENTION_CHILD.format(
        root=str(Path(__file__).resolve().parents[1]),
        bench=str(Path(__file__).resolve().parent),
        model=model,
        width=size[0],
        height=size[1],
        repeats=repeats,
    )
    base_env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    results: dict[tuple[str, str], dict[str, list[tuple[float, float]]]] = {}
    for phase in ("no added process", "+1 busy process"):
        busy = _competitor(900) if phase != "no added process" else None
        try:
            for _ in range(rounds):
                for policy, env in POLICIES.items():
                    done = subprocess.run(
                        [sys.executable, "-c", code],
                        env={**base_env, **env},
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    got = json.loads(done.stdout.strip().splitlines()[-1])
                    slot = results.setdefault((phase, policy), {"bare": [], "engine": []})
                    for name in slot:
                        slot[name] += got[name]
                    print(f"  {phase}: {policy}", file=sys.stderr)
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
    rows = []
    for (phase, policy), times in results.items():
        bare, ours = min(times["bare"]), min(times["engine"])  # fastest wall time, with its CPU time
        rows.append(
            [phase, policy, mp / bare[0], bare[1] / bare[0], mp / ours[0], ours[1] / ours[0], bare[0] / ours[0]]
        )
    return rows


#: ncnn options measured against ncnn's defaults (fp32 on this CPU unless its fp16/bf16 paths engage).
OPTION_VARIANTS = {
    "ncnn defaults": {},
    "no fp16 storage/arithmetic": {"use_fp16_storage": False, "use_fp16_packed": False, "use_fp16_arithmetic": False},
    "bf16 storage": {"use_bf16_storage": True, "use_bf16_packed": True},
    "no winograd": {"use_winograd_convolution": False},
    "no winograd63": {"use_winograd63_convolution": False},
    "no sgemm": {"use_sgemm_convolution": False},
    "no packing layout": {"use_packing_layout": False},
    "no light mode": {"lightmode": False},
}


def options_table(engine: Engine, repeats: int, model: str = "span-x4", side: int = 256) -> list[list[object]]:
    """Bare ncnn with each option set (interleaved, best of ``repeats``) and the PSNR-Y its output gives: the
    roundtrip of 6 photos (downscaled by the engine, restored by the bare network), and against the defaults'."""
    spec = registry.MODELS[model]
    threads = engine.options.resolved_threads()
    nets = {label: bare_net(spec, threads, **opts) for label, opts in OPTION_VARIANTS.items()}
    src = next(photos(limit=1, include_shared=False))[1]
    chw = _planar(src.resize((side, side), Image.Resampling.BICUBIC))
    times = {label: math.inf for label in nets}
    for net in nets.values():
        bare_extract(net, chw)  # warm
    for _ in range(repeats):
        for label, net in nets.items():
            times[label] = min(times[label], _best_of(1, lambda net=net: bare_extract(net, chw)))
    psnrs: dict[str, list[float]] = {label: [] for label in nets}
    agree: dict[str, list[float]] = {label: [] for label in nets}
    for _, hr in photos(limit=6, include_shared=False, max_side=512):
        lr = engine.downscale(hr, spec.scale)
        outs = {}
        for label, net in nets.items():
            out = bare_extract(net, _planar(lr))
            outs[label] = Image.fromarray((np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0))
            psnrs[label].append(metrics.psnr(hr, outs[label], crop_border=spec.scale, y_channel=True))
        for label in nets:
            same = outs[label] is outs["ncnn defaults"] or np.array_equal(outs[label], outs["ncnn defaults"])
            agree[label].append(math.inf if same else metrics.psnr(outs["ncnn defaults"], outs[label], y_channel=True))
    mp = (side * spec.scale) ** 2 / 1e6
    base_t, base_p = times["ncnn defaults"], statistics.mean(psnrs["ncnn defaults"])
    return [
        [
            label,
            mp / times[label],
            base_t / times[label],
            statistics.mean(psnrs[label]),
            statistics.mean(psnrs[label]) - base_p,
            min(agree[label]),
        ]
        for label in nets
    ]


#: The engine on the torch runtime (issue 21's item 5: past bare ncnn's fp32 defaults), by precision.
TORCH_PRECISIONS = ("fp32", "bf16-mixed")
#: (model, input width, input height) of the runtimes table: the large cases users send.
RUNTIME_CASES = (("span-x4", 1024, 768), ("span-x4", 1224, 1224), ("span-x2", 1024, 768))


def held_out(limit: int, max_side: int) -> list[tuple[str, Image.Image]]:
    """Up to ``limit`` held-out images (bench_quality's: the wallpaper packages we never tune or train on, photos and
    graphics alternately), each resized to at most ``max_side`` pixels a side and cropped to a multiple of 4."""
    from bench_quality import _package_files

    found: list[tuple[str, Image.Image]] = []
    photo_files, graphic_files = _package_files()
    for path in [p for pair in zip(photo_files, graphic_files, strict=False) for p in pair][:limit]:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
        rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        found.append((path.name, rgb.crop((0, 0, rgb.width // 4 * 4, rgb.height // 4 * 4))))
    return found


def runtimes_table(repeats: int, cases: list[tuple[str, int, int]], images: int, max_side: int) -> list[list[object]]:
    """The engine on the torch runtime (channels-last; fp32, and bf16 convolutions inside an fp32 network where the
    CPU has AMX) against a bare ncnn extract with ncnn's fp32 defaults, interleaved (bare, torch fp32, torch
    bf16-mixed, bare, ...), best of ``repeats``; and the PSNR-Y each gives on ``images`` held-out images
    (antialiased downscale, restore) against the engine on ncnn: the mean move, and the lowest and highest one."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        print("  runtimes: PyTorch is not installed (the gpu extra): no rows", file=sys.stderr)
        return []
    from upscaler.engine.torch_net import cpu_has_amx_bf16

    precisions = [p for p in TORCH_PRECISIONS if p == "fp32" or cpu_has_amx_bf16()]
    ncnn_engine = Engine(Settings.from_env({}, runtime="ncnn", gpu="off"))
    engines = {p: Engine(Settings.from_env({}, runtime="torch", precision=p, gpu="off")) for p in precisions}
    threads = ncnn_engine.options.resolved_threads()
    src = next(photos(limit=1, include_shared=False))[1]
    tests = held_out(images, max_side)
    rows: list[list[object]] = []
    for name, width, height in cases:
        spec = registry.MODELS[name]
        net = bare_net(spec, threads)
        lr = src.resize((width, height), Image.Resampling.BICUBIC)
        left, top = (width - min(width, 1024)) // 2, (height - min(height, 768)) // 2
        crop = lr.crop((left, top, left + min(width, 1024), top + min(height, 768)))
        chw = _planar(crop)
        calls = {"bare ncnn": lambda net=net, chw=chw: bare_extract(net, chw)}
        for p, eng in engines.items():
            calls[f"torch {p}"] = lambda eng=eng, spec=spec, lr=lr: eng.upscale(lr, spec.scale, model=spec.name)
        for call in calls.values():
            call()  # warm: load, and let oneDNN pick its kernels for these shapes
        best = {label: math.inf for label in calls}
        for _ in range(repeats):
            for label, call in calls.items():
                best[label] = min(best[label], _timed(call)[0])
        bare_mp = crop.width * crop.height * spec.scale**2 / 1e6 / best["bare ncnn"]
        base: list[float] = []
        moves: dict[str, list[float]] = {p: [] for p in engines}
        for _, hr in tests:
            lr_t = ncnn_engine.downscale(hr, spec.scale)
            base.append(
                metrics.psnr(hr, ncnn_engine.upscale(lr_t, spec.scale, model=spec.name), crop_border=spec.scale)
            )
            for p, eng in engines.items():
                got = metrics.psnr(hr, eng.upscale(lr_t, spec.scale, model=spec.name), crop_border=spec.scale)
                moves[p].append(got - base[-1] if math.isfinite(got) and math.isfinite(base[-1]) else 0.0)
        for p in engines:
            mp = width * height * spec.scale**2 / 1e6 / best[f"torch {p}"]
            rows.append(
                [
                    spec.name,
                    f"{width}x{height}",
                    p,
                    bare_mp,
                    mp,
                    mp / bare_mp,
                    statistics.mean(moves[p]),
                    min(moves[p], default=0.0),
                    max(moves[p], default=0.0),
                    len(tests),
                    os.getloadavg()[0],
                ]
            )
        print(f"  timed {spec.name} {width}x{height} on torch", file=sys.stderr)
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


PARTS = ("fidelity", "throughput", "contention", "options", "runtimes", "memory")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one small photo, small inputs, no large or 24 MP run")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS), help="run these tables only")
    parser.add_argument("--photos", type=int, default=None, help="use at most this many photos")
    parser.add_argument("--max-side", type=int, default=512, help="centre-crop photos to this side (default 512)")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats; the best is kept (default 3)")
    parser.add_argument(
        "--bare-memory-mb",
        type=int,
        default=4096,
        help="largest bare ncnn extract of a whole large input; above it a 1024x768 crop is the reference",
    )
    parser.add_argument(
        "--cases", nargs="+", help="throughput: only these cases, as MODEL (its one-tile input) or MODEL:WxH"
    )
    parser.add_argument(
        "--held-out", type=int, default=12, help="runtimes: held-out images for the PSNR-Y column (default 12)"
    )
    parser.add_argument("--json", type=Path, help="also write the tables to this JSON file")
    args = parser.parse_args()
    engine = Engine(Settings.from_env())
    print(
        f"ncnn threads: {engine.options.resolved_threads()}, GPU: {engine.options.use_gpu()}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '')}, load average: {os.getloadavg()[0]:.1f}"
    )
    repeats = 1 if args.quick else args.repeats
    tables: dict[str, list[list[object]]] = {}

    if "fidelity" in args.only:
        rows = fidelity(engine, 1 if args.quick else args.photos, 128 if args.quick else args.max_side)
        tables["fidelity"] = [["scale", "model", "kind", "PSNR-Y", "vs bicubic", "SSIM-Y", "orb_sim", "photos"], *rows]
        print("\nTable 1. Roundtrip fidelity (engine downscale -> upscale to original size; BasicSR: crop=scale, Y)")
        print(table(tables["fidelity"][0], rows))

    if "throughput" in args.only:
        rows = throughput(engine, repeats, args.quick, args.bare_memory_mb, args.cases)
        h = ["model", "input", "tiles", "cover", "bare on", "bare ncnn MP/s", "engine MP/s", "engine / bare"]
        h += ["engine / bare, CPU time", "load"]
        tables["throughput"] = [h, *rows]
        print("\nTable 2. Throughput in output MP/s, automatic tiles; cover = pixels the tiles hold / image pixels")
        print("(bare ncnn and the engine interleaved on the same input; target engine / bare >= 0.95;")
        print("'CPU time': the same ratio from this process's CPU seconds; load: 1-minute load average after the case)")
        print(table(h, rows))

    if "contention" in args.only:
        rows = contention(repeats=2 if args.quick else args.repeats, rounds=1 if args.quick else 2)
        h = ["machine", "OpenMP", "bare MP/s", "bare CPU/wall", "engine MP/s", "engine CPU/wall", "engine / bare"]
        tables["contention"] = [h, *rows]
        print("\nTable 3. span-x4 384x288 under contention: one child process per OpenMP setting, bare and engine")
        print("interleaved in it; '+1 busy process' = a CPU-bound busy loop this benchmark runs beside it")
        print(table(h, rows))

    if "options" in args.only:
        rows = options_table(engine, repeats)
        h = ["ncnn option", "MP/s", "vs defaults", "PSNR-Y", "dPSNR-Y", "min PSNR-Y vs defaults' output"]
        tables["options"] = [h, *rows]
        print(
            "\nTable 4. ncnn's own options, bare span-x4 at 256x256 (interleaved); PSNR-Y over 6 photos' x4 roundtrip"
        )
        print("(keep: >= 10 % faster with PSNR-Y moving <= 0.05 dB)")
        print(table(h, rows))

    if "runtimes" in args.only:
        cases = [(m, 256, 192) for m in ("span-x4", "span-x2")] if args.quick else list(RUNTIME_CASES)
        rows = runtimes_table(repeats, cases, 2 if args.quick else args.held_out, 512)
        h = ["model", "input", "torch precision", "bare ncnn MP/s", "engine on torch MP/s", "torch / bare"]
        h += ["mean dPSNR-Y", "lowest dPSNR-Y", "highest dPSNR-Y", "held-out images", "load"]
        tables["runtimes"] = [h, *rows]
        print("\nTable 5. Past bare ncnn's fp32 defaults: the engine on the torch runtime (channels-last; bf16-mixed")
        print(
            "where the CPU has AMX) vs a bare ncnn extract (its 1024x768 centre crop, per output pixel), interleaved;"
        )
        print("dPSNR-Y: against the engine on ncnn, held-out images (keep: >= 10 % faster, PSNR-Y moving <= 0.05 dB)")
        print(table(h, rows) if rows else "(no rows: PyTorch is not installed here)")

    if "memory" in args.only and not args.quick:
        rows = []
        for model, tile in (("span-x4", 0), ("realesr-animevideov3-x4", 0)):
            r = peak_rss_child(model, 4896, tile)
            rows.append(
                [model, f"{r['out_mp']:.1f} MP", f"{r['tile']}px", r["seconds"], r["rss_before_mb"], r["peak_rss_mb"]]
            )
        tables["memory"] = [["model", "output", "tile", "seconds", "RSS loaded MB", "peak RSS MB"], *rows]
        print("\nTable 6. Peak memory for a ~24 MP output (target < 2048 MB)")
        print(table(tables["memory"][0], rows))
    print(
        f"\n(peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB, "
        f"load average now {os.getloadavg()[0]:.1f})"
    )
    if args.json:
        args.json.write_text(json.dumps(tables, indent=1))


if __name__ == "__main__":
    main()
