"""Video benchmark: which model restores a x4-downscaled video best, and how fast the streaming pipeline runs.

    .venv/bin/python benchmarks/bench_video.py             # full run (about two minutes on 2 cores)
    .venv/bin/python benchmarks/bench_video.py --quick     # small frames, 12 frames per clip, 1 repeat

Three clips are generated from scikit-image's photographs (no files needed): a slow diagonal pan across `coffee`,
a zoom into `stereo_motorcycle`, and `astronaut` held still for the first half (identical frames) then panned.
Each is encoded with libx264 at crf 12 with an AAC track, like a camera file; its decoded frames are the reference.

Table 1 picks the default video model by measurement. Each clip is downscaled x4 (antialiased bicubic, exactly
w/4 x h/4) and upscaled back to the source size with bicubic, span (SPAN x4, fidelity) and realesr-animevideov3
(x4, GAN/perceptual). PSNR-Y and SSIM-Y follow BasicSR (BT.601 luma, crop 4 px), per frame, averaged. Two inputs:
"stored" is the downscaled video as `transcode` actually writes it (crf 18) then decoded; "lossless" is the same
downscale with no codec. "codec dB" = lossless - stored PSNR-Y, what the stored video's compression costs.
"fps" is the model's frames/s, one frame at a time (ncnn uses every thread it is given).

Table 2 times the upscale job on one clip (a longer take of the pan, --speed-frames frames), median of --repeats
runs, interleaved: (a) decode+encode only, `transcode` with a nearest-neighbour x4 frame function (no model);
(b) model only, frames decoded to memory first, then span over them on a pool of the job's max_workers threads;
(c) the whole job, `transcode` with span. Target: whole job <= 1.2 x max(a, b), i.e. decoding, encoding and the
model overlap; whole / (a + b) = 1 is what a sequential pipeline would cost. A downscale job (`transcode` with
engine.downscale) and a decode-only pass are listed for reference.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _photos import photos, table

from upscaler import metrics
from upscaler.config import Settings
from upscaler.engine import Engine
from video_upscaler.pipeline import transcode

SCALE = 4
RATE = 24
SOURCE_CRF = 12
MODELS = ("bicubic", "span", "realesr-animevideov3")
TARGET = 1.2
Box = tuple[float, float, float, float]


# ---- clips -------------------------------------------------------------------------------------------------
def _lerp(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


def _pan(photo: Image.Image, size: tuple[int, int], i: int, n: int) -> Box:
    """A slow diagonal pan: a window 94 % of the photo's width moves from the top-left to the bottom-right."""
    bw = photo.width * 0.94
    bh = bw * size[1] / size[0]
    t = i / max(n - 1, 1)
    x, y = _lerp(0, photo.width - bw, t), _lerp(0, photo.height - bh, t)
    return x, y, x + bw, y + bh


def _zoom(photo: Image.Image, size: tuple[int, int], i: int, n: int) -> Box:
    """A zoom in: the window shrinks from the full width to 70 % of it, drifting a little right of centre."""
    t = i / max(n - 1, 1)
    bw = photo.width * _lerp(1.0, 0.7, t)
    bh = bw * size[1] / size[0]
    cx, cy = photo.width * _lerp(0.5, 0.55, t), photo.height / 2
    x = min(max(cx - bw / 2, 0.0), photo.width - bw)
    y = min(max(cy - bh / 2, 0.0), photo.height - bh)
    return x, y, x + bw, y + bh


def _static_then_pan(photo: Image.Image, size: tuple[int, int], i: int, n: int) -> Box:
    """Still for the first half (identical frames), then a pan down the full height of the photo."""
    bw = float(photo.width)
    bh = bw * size[1] / size[0]
    half = n // 2
    t = 0.0 if i < half else (i - half + 1) / max(n - half, 1)
    y = _lerp(0, photo.height - bh, t)
    return 0.0, y, bw, y + bh


CLIPS: dict[str, tuple[str, Callable[[Image.Image, tuple[int, int], int, int], Box]]] = {
    "pan (coffee)": ("coffee", _pan),
    "zoom (motorcycle)": ("stereo_motorcycle", _zoom),
    "still+pan (astronaut)": ("astronaut", _static_then_pan),
}


def make_clip(path: Path, photo: Image.Image, motion: Callable[..., Box], size: tuple[int, int], frames: int) -> None:
    """Encode ``frames`` frames of ``motion`` over ``photo`` (Lanczos from a sub-pixel box) at crf 12, with a
    stereo AAC track as long as the video."""
    import av

    width, height = size
    with av.open(str(path), "w", format="mp4") as out:
        v = out.add_stream("libx264", rate=RATE)
        v.width, v.height, v.pix_fmt = width, height, "yuv420p"
        v.options = {"crf": str(SOURCE_CRF), "preset": "medium"}
        a = out.add_stream("aac", rate=48000)
        a.layout = "stereo"
        for i in range(frames):
            box = motion(photo, size, i, frames)
            rgb = np.asarray(photo.resize(size, Image.Resampling.LANCZOS, box=box))
            for packet in v.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in v.encode(None):
            out.mux(packet)
        n = 48000 * frames // RATE
        t = np.arange(n) / 48000
        samples = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 660 * t)]).astype(np.float32) * 0.2
        for start in range(0, n, 1024):
            aframe = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(samples[:, start : start + 1024]), format="fltp", layout="stereo"
            )
            aframe.sample_rate, aframe.pts, aframe.time_base = 48000, start, Fraction(1, 48000)
            for packet in a.encode(aframe):
                out.mux(packet)
        for packet in a.encode(None):
            out.mux(packet)


def decode(path: Path) -> list[np.ndarray]:
    """Every video frame of ``path``, RGB uint8, in presentation order."""
    import av

    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        return [f.to_ndarray(format="rgb24") for f in c.decode(stream)]


# ---- table 1 -----------------------------------------------------------------------------------------------
def score(reference: list[np.ndarray], test: list[np.ndarray]) -> tuple[list[float], list[float]]:
    """Per-frame PSNR-Y and SSIM-Y (BasicSR, crop border = scale)."""
    p = [metrics.psnr(r, t, crop_border=SCALE, y_channel=True) for r, t in zip(reference, test, strict=True)]
    s = [metrics.ssim(r, t, crop_border=SCALE, y_channel=True) for r, t in zip(reference, test, strict=True)]
    return p, s


def fidelity(
    engine: Engine, clips: dict[str, Path], size: tuple[int, int], work: Path, workers: int
) -> tuple[list[list[object]], dict[str, tuple[float, float]], dict[str, Path]]:
    """Table 1 rows, mean PSNR-Y (stored, lossless) per model over all clips, and the stored (x4-downscaled,
    crf 18) file of each clip."""
    small = (size[0] // SCALE, size[1] // SCALE)
    # (clip, model) -> {"stored": (PSNR-Y per frame, SSIM-Y per frame), "lossless": (...)}; model -> [seconds, frames]
    results: dict[tuple[str, str], dict[str, tuple[list[float], list[float]]]] = {}
    speed: dict[str, list[float]] = {m: [0.0, 0.0] for m in MODELS}
    stored_files: dict[str, Path] = {}
    for clip, src in clips.items():
        reference = decode(src)
        stored = work / f"{src.stem}-x4.mp4"
        report = transcode(
            src, stored, lambda rgb: np.asarray(engine.downscale(rgb, size=small)), size=small, max_workers=workers
        )
        stored_files[clip] = stored
        inputs = {
            "stored": decode(stored),
            "lossless": [np.asarray(engine.downscale(f, size=small)) for f in reference],
        }
        if len(inputs["stored"]) != len(reference):
            raise RuntimeError(f"{clip}: stored video has {len(inputs['stored'])} frames, source {len(reference)}")
        for model in MODELS:
            entry = results.setdefault((clip, model), {})
            for variant, frames in inputs.items():
                start = time.perf_counter()
                ups = [np.asarray(engine.upscale(f, size=size, model=model)) for f in frames]
                speed[model][0] += time.perf_counter() - start
                speed[model][1] += len(frames)
                entry[variant] = score(reference, ups)
        print(
            f"  scored {clip}: {len(reference)} frames {size[0]}x{size[1]}, stored {small[0]}x{small[1]} "
            f"({stored.stat().st_size / 1024:.0f} KiB, {report.repeated_frames} repeated frames skipped)",
            file=sys.stderr,
        )

    def row(label: str, model: str, keys: list[tuple[str, str]]) -> list[object]:
        cells: list[object] = [label, model]
        means: dict[str, float] = {}
        for variant in ("stored", "lossless"):
            p = [v for k in keys for v in results[k][variant][0]]
            s = [v for k in keys for v in results[k][variant][1]]
            base = [v for k in keys for v in results[(k[0], "bicubic")][variant][0]]
            means[variant] = statistics.mean(p)
            cells += [
                f"{statistics.mean(p):.2f}",
                f"{statistics.mean(s):.4f}",
                f"{means[variant] - statistics.mean(base):+.2f}",
            ]
        cells += [f"{means['lossless'] - means['stored']:.2f}", f"{speed[model][1] / speed[model][0]:.1f}"]
        return cells

    rows = [row(clip, model, [(clip, model)]) for clip in clips for model in MODELS]
    rows += [row("all clips", model, [(clip, model) for clip in clips]) for model in MODELS]
    overall: dict[str, tuple[float, float]] = {}
    for model in MODELS:
        stored_p, lossless_p = (
            statistics.mean(v for clip in clips for v in results[(clip, model)][variant][0])
            for variant in ("stored", "lossless")
        )
        overall[model] = (stored_p, lossless_p)
    return rows, overall, stored_files


# ---- table 2 -----------------------------------------------------------------------------------------------
def speed_rows(
    engine: Engine, src: Path, stored: Path, size: tuple[int, int], work: Path, workers: int, repeats: int
) -> tuple[list[list[object]], dict[str, float]]:
    small = (size[0] // SCALE, size[1] // SCALE)
    out = work / "out.mp4"
    canvas = np.zeros((size[1], size[0], 3), np.uint8)
    scale_y, scale_x = size[1] // small[1], size[0] // small[0]

    def nearest(rgb: np.ndarray) -> np.ndarray:
        if rgb.shape[0] * scale_y == size[1] and rgb.shape[1] * scale_x == size[0]:
            return np.repeat(np.repeat(rgb, scale_y, axis=0), scale_x, axis=1)
        return canvas  # the size is not an exact multiple: a preallocated frame costs the encoder the same

    def span(rgb: np.ndarray) -> np.ndarray:
        return np.asarray(engine.upscale(rgb, size=size, model="span"))

    def down(rgb: np.ndarray) -> np.ndarray:
        return np.asarray(engine.downscale(rgb, size=small))

    frames_in = decode(stored)
    n = len(frames_in)

    def decode_only() -> None:
        decode(stored)

    def passthrough() -> None:
        transcode(stored, out, nearest, size=size, max_workers=workers)

    def model_only() -> None:
        with ThreadPoolExecutor(workers) as pool:
            for _ in pool.map(span, frames_in):
                pass

    def whole() -> None:
        transcode(stored, out, span, size=size, max_workers=workers)

    def downscale_job() -> None:
        transcode(src, out, down, size=small, max_workers=workers)

    steps = {
        "decode": decode_only,
        "a": passthrough,
        "b": model_only,
        "c": whole,
        "down": downscale_job,
    }
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(repeats):  # interleaved, so drift (thermal, other load) hits every step alike
        for key, fn in steps.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    io = f"{small[0]}x{small[1]} -> {size[0]}x{size[1]}"
    rows: list[list[object]] = [
        ["decode only (reference)", f"{small[0]}x{small[1]}", n, med["decode"], n / med["decode"]],
        ["(a) decode+encode only (nearest x4, no model)", io, n, med["a"], n / med["a"]],
        [f"(b) model only (span, {workers} workers, frames in memory)", io, n, med["b"], n / med["b"]],
        ["(c) whole job (transcode + span)", io, n, med["c"], n / med["c"]],
        [
            "downscale job (transcode + engine.downscale)",
            f"{size[0]}x{size[1]} -> {small[0]}x{small[1]}",
            n,
            med["down"],
            n / med["down"],
        ],
    ]
    return rows, med


def parse_size(text: str) -> tuple[int, int]:
    w, h = (int(v) for v in text.lower().split("x"))
    if w % (2 * SCALE) or h % (2 * SCALE):
        raise argparse.ArgumentTypeError(f"size sides must be multiples of {2 * SCALE} (even after x{SCALE} down)")
    return w, h


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="256x144, 12 frames per clip, 1 repeat")
    parser.add_argument("--size", type=parse_size, default=None, help="source frame size WxH (default 512x288)")
    parser.add_argument("--frames", type=int, default=None, help="frames per clip (default 48, 12 with --quick)")
    parser.add_argument(
        "--speed-frames", type=int, default=None, help="frames of the table 2 clip (default 144, 12 with --quick)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="timing repeats (default 3, 1 with --quick)")
    parser.add_argument("--workers", type=int, default=2, help="transcode max_workers (default 2)")
    parser.add_argument("--threads", type=int, default=0, help="ncnn threads per inference (0 = one per core)")
    args = parser.parse_args()
    size = args.size or ((256, 144) if args.quick else (512, 288))
    n_frames = args.frames or (12 if args.quick else 48)
    speed_frames = args.speed_frames or (12 if args.quick else 144)
    repeats = args.repeats or (1 if args.quick else 3)
    engine = Engine(Settings.from_env({}, ncnn_threads=args.threads))
    engine.warmup(*MODELS[1:])
    threads = engine.options.resolved_threads()
    pics = dict(photos(include_shared=False))

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        clips: dict[str, Path] = {}
        for index, (clip, (photo, motion)) in enumerate(CLIPS.items()):
            path = work / f"clip{index}.mp4"
            make_clip(path, pics[photo], motion, size, n_frames)
            clips[clip] = path
        streams = _streams(next(iter(clips.values())))
        print(
            f"clips: {len(clips)} x {n_frames} frames, {size[0]}x{size[1]} @ {RATE} fps, libx264 crf {SOURCE_CRF} "
            f"+ AAC (streams: {', '.join(streams)}); ncnn {threads} threads, "
            f"transcode max_workers {args.workers}",
            file=sys.stderr,
        )

        rows, overall, stored = fidelity(engine, clips, size, work, args.workers)
        print(
            f"\nTable 1. x{SCALE} roundtrip fidelity per model, {n_frames} frames per clip, {size[0]}x{size[1]} "
            f"(PSNR-Y/SSIM-Y, BasicSR: BT.601 Y, crop {SCALE}); stored = transcode crf 18 then decoded, "
            "lossless = no codec"
        )
        print(
            table(
                [
                    "clip",
                    "model",
                    "stored PSNR-Y",
                    "stored SSIM-Y",
                    "stored vs bicubic dB",
                    "lossless PSNR-Y",
                    "lossless SSIM-Y",
                    "lossless vs bicubic dB",
                    "codec dB",
                    "fps",
                ],
                rows,
            )
        )
        best_stored = max(overall, key=lambda m: overall[m][0])
        best_lossless = max(overall, key=lambda m: overall[m][1])
        print(
            f"winner on PSNR-Y (all clips): {best_stored} on the stored video "
            f"({overall[best_stored][0] - overall['bicubic'][0]:+.2f} dB vs bicubic), "
            f"{best_lossless} on lossless frames ({overall[best_lossless][1] - overall['bicubic'][1]:+.2f} dB)"
        )

        clip = next(iter(clips))
        src, small_src = clips[clip], stored[clip]
        if speed_frames != n_frames:  # a longer take of the same pan, so each timing is seconds, not a blip
            photo, motion = CLIPS[clip]
            src, small_src = work / "speed.mp4", work / "speed-x4.mp4"
            make_clip(src, pics[photo], motion, size, speed_frames)
            small = (size[0] // SCALE, size[1] // SCALE)
            transcode(
                src,
                small_src,
                lambda rgb: np.asarray(engine.downscale(rgb, size=small)),
                size=small,
                max_workers=args.workers,
            )
        rows2, med = speed_rows(engine, src, small_src, size, work, args.workers, repeats)
        print(
            f"\nTable 2. Upscale job speed on '{clip}' (stored x{SCALE}, crf 18), span to {size[0]}x{size[1]}, "
            f"median of {repeats}; max_workers {args.workers}, ncnn {threads} threads, {_cores()} CPU cores"
        )
        print(table(["step", "size", "frames", "seconds", "frames/s"], rows2))
        overlap = med["c"] / max(med["a"], med["b"])
        sequential = med["c"] / (med["a"] + med["b"])
        verdict = "met" if overlap <= TARGET else "NOT met"
        print(f"whole / max(decode+encode, model) = {overlap:.2f} (target <= {TARGET}: {verdict})")
        print(f"whole / (decode+encode + model)   = {sequential:.2f} (1.00 = no overlap at all, a sequential pipeline)")


def _streams(path: Path) -> list[str]:
    import av

    with av.open(str(path)) as c:
        return [f"{s.type} {s.codec_context.name}" for s in c.streams]


def _cores() -> int:
    import os

    return os.cpu_count() or 1


if __name__ == "__main__":
    main()
