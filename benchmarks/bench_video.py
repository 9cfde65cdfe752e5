"""Video benchmark: which model restores a x4-downscaled video best, how fast the streaming pipeline runs, and
whether downscale + SPAN beats the full-size codecs at the same bytes.

    .venv/bin/python benchmarks/bench_video.py             # tables 1-2 (about two minutes on 2 cores)
    .venv/bin/python benchmarks/bench_video.py --quick     # small frames, 12 frames per clip, 1 repeat
    .venv/bin/python benchmarks/bench_video.py --speed-only --repeats 5                  # table 2 alone
    .venv/bin/python benchmarks/bench_video.py --storage --jobs 6 --points pts.jsonl   # tables 3-7
    .venv/bin/python benchmarks/bench_video.py --storage --quick --clips 2              # a 40 s smoke run

--storage: 6 clips of 10 s at 1280x720, camera moves over real photographs from Debian's mate-backgrounds
(/usr/share/backgrounds/mate/nature; scikit-image photos stand in, named so, when it is not installed). Each clip
is (b) downscaled x2 and x4 and stored in H.264, HEVC and AV1 at 3 CRFs, restored with span, (c) the same stored
frames with bicubic, (d) each codec at full size at 6 CRFs, interpolated in log(bytes) to (b)'s bytes. Every
encode goes through `transcode`, as a job's does. Table 3 per clip, table 4 by bits per pixel, table 5 encode
speed, table 6 the stored codec at equal restored PSNR-Y, table 7 the fewest bytes reaching a PSNR-Y target.
About an hour on 2 cores; 6 minutes with --jobs 6 on 16 cores and a CUDA GPU.

--footage: tables 3-7 on real footage instead of camera moves over photos: the two clips Debian ships
(python3-mecavideo's balle-jbart.mp4, 720x576, CC BY-SA 3.0; opencv-doc's vtest.avi, 768x576, Apache-2.0 AND
BSD-3-Clause; apt-get install python3-mecavideo opencv-doc), or the files named, each cut to its first --seconds
(10) by copying packets, so the source is the footage's own bytes. No Debian package was found with real footage
at 720p or more.

--searches: table 9, the targeted search exhaustive against pruned (video_upscaler.targeting), A B interleaved on
the same sample frames (--clips, --targets, --repeats, --segments, --segment-frames; 640x360 clips of 2 s unless
--size/--seconds say otherwise).

--targeted: table 8, quality-targeted downscale jobs (--targets, PSNR-Y) on the same clips, run by the real worker
(local store, SQLite queue, span restoring): the form each job chose, its stored bytes and checked fidelity, and
the whole clip at full size in the best full-size codec and CRF the job measured for the same target.

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
import dataclasses
import itertools
import json
import math
import os
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
from upscaler.media.video import VideoEncoding, probe
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
    cpu: dict[str, list[float]] = {k: [] for k in steps}  # CPU seconds of every thread of this process
    for _ in range(repeats):  # interleaved, so drift (thermal, other load) hits every step alike
        for key, fn in steps.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            times[key].append(time.perf_counter() - start)
            cpu[key].append(time.process_time() - start_cpu)
    med = {k: statistics.median(v) for k, v in times.items()}
    med.update({f"cpu_{k}": statistics.median(v) for k, v in cpu.items()})
    each = [c / max(a, b) for a, b, c in zip(times["a"], times["b"], times["c"], strict=True)]
    print("whole / max(a, b) in each repeat: " + ", ".join(f"{r:.2f}" for r in each), file=sys.stderr)
    io = f"{small[0]}x{small[1]} -> {size[0]}x{size[1]}"
    labels = {
        "decode": ("decode only (reference)", f"{small[0]}x{small[1]}"),
        "a": ("(a) decode+encode only (nearest x4, no model)", io),
        "b": (f"(b) model only (span, {workers} workers, frames in memory)", io),
        "c": ("(c) whole job (transcode + span)", io),
        "down": ("downscale job (transcode + engine.downscale)", f"{size[0]}x{size[1]} -> {small[0]}x{small[1]}"),
    }
    rows: list[list[object]] = [
        [label, shape, n, med[key], n / med[key], med[f"cpu_{key}"], med[f"cpu_{key}"] / med[key]]
        for key, (label, shape) in labels.items()
    ]
    return rows, med


# ---- storage: stored codecs + SR against full-size codecs at the same bytes (--storage) ------------------------
#: Real photographs from Debian's mate-backgrounds package (GPL-2+; /usr/share/backgrounds/mate/nature), held out of
#: training and tuning; each becomes a camera move at 1280x720. scikit-image's photos stand in when it is missing.
STORAGE_CLIPS: dict[str, tuple[str, Callable[[Image.Image, tuple[int, int], int, int], Box]]] = {
    "pan (Storm)": ("mate/nature/Storm.jpg", _pan),
    "zoom (Dune)": ("mate/nature/Dune.jpg", _zoom),
    "pan (TwoWings)": ("mate/nature/TwoWings.jpg", _pan),
    "zoom (LadyBird)": ("mate/nature/LadyBird.jpg", _zoom),
    "still+pan (Wood)": ("mate/nature/Wood.jpg", _static_then_pan),
    "zoom (RainDrops)": ("mate/nature/RainDrops.jpg", _zoom),
}
BACKGROUNDS = Path("/usr/share/backgrounds")
#: CRFs of the stored (downscaled) video per codec, and of the full-size baseline's rate-distortion curve.
STORED_CRFS = {"h264": (18, 24, 30), "hevc": (20, 26, 32), "av1": (30, 38, 46)}
FULL_CRFS = {"h264": (24, 30, 36, 42, 48, 51), "hevc": (26, 32, 38, 44, 50, 51), "av1": (30, 38, 46, 54, 60, 63)}
TARGETS = (38.0, 40.0)
BPP_BANDS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, float("inf"))


@dataclasses.dataclass
class Point:
    """One encoding of one clip: its video bytes, encode seconds and the fidelity of what it restores to."""

    clip: str
    form: str  # "full" or "x2"/"x4"
    codec: str
    crf: int
    bytes: int
    bpp: float  # bits per source pixel per frame
    seconds: float
    psnr: float
    ssim: float
    bicubic: tuple[float, float] | None = None  # the same stored frames, bicubic instead of the model


def video_bytes(path: Path) -> int:
    """Bytes of the video stream alone (audio is copied unchanged by every form, so it is left out)."""
    import av

    with av.open(str(path)) as c:
        return sum(p.size for p in c.demux(c.streams.video[0]) if p.size)


def sampled_frames(path: Path, indices: set[int]) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        return [f.to_ndarray(format="rgb24") for i, f in enumerate(c.decode(stream)) if i in indices]


def scored(reference: list[np.ndarray], test: list[np.ndarray]) -> tuple[float, float]:
    p, s = score(reference, test)
    return statistics.mean(p), statistics.mean(s)


def at_bytes(curve: list[Point], budget: int) -> tuple[float, float] | None:
    """PSNR-Y/SSIM-Y of a full-size curve at ``budget`` bytes, linear in log(bytes) between its two neighbouring
    encodes; above its largest encode, that encode's (a lower bound: more bytes would only do better); None when
    the curve cannot get that small."""
    pts = sorted(curve, key=lambda p: p.bytes)
    if pts and budget >= pts[-1].bytes:
        return pts[-1].psnr, pts[-1].ssim
    for lo, hi in itertools.pairwise(pts):
        if lo.bytes <= budget <= hi.bytes:
            t = 0.0 if hi.bytes == lo.bytes else math.log(budget / lo.bytes) / math.log(hi.bytes / lo.bytes)
            return _lerp(lo.psnr, hi.psnr, t), _lerp(lo.ssim, hi.ssim, t)
    return None


def storage_points(
    engine: Engine,
    name: str,
    src: Path,
    size: tuple[int, int],
    work: Path,
    samples: int,
    workers: int,
    save: str | None = None,
) -> list[Point]:
    """(b) and (c): x2 and x4 with each stored codec and CRF, restored by span and by bicubic; (d) the full-size
    curve of each codec. Every encode runs the job's own path (`transcode`); fidelity on ``samples`` frames."""
    frames = probe(src).frames or len(decode(src))
    indices = set(np.linspace(0, frames - 1, samples).round().astype(int).tolist())
    reference = sampled_frames(src, indices)
    pixels = size[0] * size[1] * frames
    points: list[Point] = []

    def measured(point: Point) -> None:  # appended to ``save`` at once, so a run cut short keeps what it measured
        points.append(point)
        if save:
            with open(save, "a") as fh:
                fh.write(json.dumps(dataclasses.asdict(point)) + "\n")

    for codec, crfs in FULL_CRFS.items():
        for crf in crfs:
            out = work / f"full-{codec}-{crf}.mp4"
            enc = VideoEncoding.choose(codec, crf=crf)
            report = transcode(src, out, lambda rgb: rgb, size=size, max_workers=workers, encoding=enc)
            n = video_bytes(out)
            p, s = scored(reference, sampled_frames(out, indices))
            measured(Point(name, "full", codec, crf, n, 8 * n / pixels, report.seconds, p, s))
    for scale in (2, 4):
        small = (size[0] // scale, size[1] // scale)
        for codec, crfs in STORED_CRFS.items():
            for crf in crfs:
                out = work / f"x{scale}-{codec}-{crf}.mp4"
                enc = VideoEncoding.choose(codec, crf=crf)
                down = lambda rgb, small=small: np.asarray(engine.downscale(rgb, size=small))  # noqa: E731
                report = transcode(src, out, down, size=small, max_workers=workers, encoding=enc)
                stored = sampled_frames(out, indices)
                n = video_bytes(out)
                sr = [np.asarray(engine.upscale(f, size=size, model="span")) for f in stored]
                bic = [np.asarray(engine.upscale(f, size=size, model="bicubic")) for f in stored]
                p, s = scored(reference, sr)
                point = Point(name, f"x{scale}", codec, crf, n, 8 * n / pixels, report.seconds, p, s)
                point.bicubic = scored(reference, bic)
                measured(point)
        print(f"  {name}: x{scale} measured", file=sys.stderr)
    return points


def storage_tables(points: list[Point], size: tuple[int, int], frames: int, samples: int) -> None:
    full = [p for p in points if p.form == "full"]
    rows: list[list[object]] = []
    bands: dict[int, list[tuple[float, float]]] = {}
    unreachable: dict[int, int] = {}
    for p in (p for p in points if p.form != "full"):
        same = {c: at_bytes([f for f in full if f.clip == p.clip and f.codec == c], p.bytes) for c in FULL_CRFS}
        reachable = {c: v for c, v in same.items() if v is not None}
        best = max(reachable.items(), key=lambda kv: kv[1][0]) if reachable else None
        margin = p.psnr - best[1][0] if best else None
        band = next(i for i, hi in enumerate(BPP_BANDS[1:]) if p.bpp < hi)
        if margin is not None:
            bands.setdefault(band, []).append((margin, p.ssim - best[1][1]))
        else:
            unreachable[band] = unreachable.get(band, 0) + 1
        assert p.bicubic is not None
        rows.append(
            [
                p.clip,
                f"{p.form} {p.codec}",
                p.crf,
                f"{p.bytes / 1024:.0f}",
                f"{p.bpp:.4f}",
                f"{p.psnr:.2f}",
                f"{p.ssim:.4f}",
                f"{p.bicubic[0]:.2f}",
                *(f"{v[0]:.2f}" if v else "-" for v in same.values()),
                f"{margin:+.2f}" if margin is not None else "full size can't",
            ]
        )
    print(
        f"\nTable 3. Stored form + span vs the full-size codecs at the same bytes: {len({p.clip for p in points})} "
        f"clips, {frames} frames {size[0]}x{size[1]} each; bytes = the video stream; bpp = bits per source pixel "
        f"per frame; PSNR-Y/SSIM-Y (BasicSR, crop 4) on {samples} evenly spaced frames against the decoded source. "
        "Full-size columns: that codec's own curve (6 CRFs) interpolated in log(bytes) to the stored form's bytes "
        "(above its lowest CRF: that encode's, fewer bytes); '-' = it cannot get that small."
    )
    headers = ["clip", "stored", "crf", "KiB", "bpp", "span PSNR-Y", "span SSIM-Y", "bicubic PSNR-Y"]
    print(table([*headers, *(f"full {c}" for c in FULL_CRFS), "span - best full dB"], rows))
    band_rows = []
    for i in sorted(set(bands) | set(unreachable)):
        margins = [m for m, _ in bands.get(i, [])]
        stats = (
            [f"{statistics.mean(margins):+.2f}", f"{min(margins):+.2f}", f"{max(margins):+.2f}"]
            if margins
            else ["-"] * 3
        )
        ssim = f"{statistics.mean(s for _, s in bands[i]):+.4f}" if margins else "-"
        row = [f"{BPP_BANDS[i]:g}-{BPP_BANDS[i + 1]:g}", len(margins), sum(m > 0 for m in margins), *stats, ssim]
        band_rows.append([*row, unreachable.get(i, 0)])
    print(
        "\nTable 4. By bits per pixel per frame: where downscale + span beats the best full-size codec at its bytes "
        "(dB = span - best full size; last column: stored forms smaller than any full-size encode measured)"
    )
    headers4 = ["bpp", "compared", "span wins", "mean dB", "min dB", "max dB", "mean SSIM-Y", "full size can't"]
    print(table(headers4, band_rows))
    speed_rows_ = []
    for form in ("full", "x2", "x4"):
        for codec in FULL_CRFS:
            sel = [p for p in points if p.form == form and p.codec == codec]
            if sel:
                secs = sum(p.seconds for p in sel)
                speed_rows_.append([form, codec, len(sel), f"{secs:.1f}", f"{len(sel) * frames / secs:.1f}"])
    print("\nTable 5. Encode speed per codec (transcode: decode the source + resize + encode), default presets")
    print(table(["form", "codec", "encodes", "seconds", "frames/s"], speed_rows_))
    choice_rows = []
    for scale in ("x2", "x4"):
        for codec in STORED_CRFS:
            ratios = []
            for clip in {p.clip for p in points}:
                ref = next(p for p in points if (p.clip, p.form, p.codec) == (clip, scale, "h264") and p.crf == 18)
                curve = sorted(
                    (p for p in points if (p.clip, p.form, p.codec) == (clip, scale, codec)), key=lambda p: p.psnr
                )
                for lo, hi in itertools.pairwise(curve):
                    if lo.psnr <= ref.psnr <= hi.psnr and hi.psnr > lo.psnr:
                        t = (ref.psnr - lo.psnr) / (hi.psnr - lo.psnr)
                        ratios.append(math.exp(_lerp(math.log(lo.bytes), math.log(hi.bytes), t)) / ref.bytes)
                        break
            secs = [p.seconds for p in points if p.form == scale and p.codec == codec]
            choice_rows.append(
                [
                    scale,
                    codec,
                    len(ratios),
                    f"{statistics.mean(ratios):.2f}" if ratios else "-",
                    f"{statistics.mean(secs):.1f}",
                ]
            )
    print(
        "\nTable 6. Stored codec choice: bytes at the restored PSNR-Y of h264 crf 18 (interpolated on each codec's "
        "CRFs), relative to h264, mean over the clips where it is reached; and mean encode seconds per clip"
    )
    print(table(["scale", "codec", "clips", "bytes vs h264", "encode s"], choice_rows))
    target_rows = []
    for target in TARGETS:
        for clip in sorted({p.clip for p in points}):
            mine = [p for p in points if p.clip == clip]
            stored = [
                (bytes_at(mine, form, codec, target), form, codec) for form in ("x2", "x4") for codec in FULL_CRFS
            ]
            full_ = [(bytes_at(mine, "full", codec, target), "full", codec) for codec in FULL_CRFS]
            best_s = min((b for b in stored if b[0] is not None), default=None)
            best_f = min((b for b in full_ if b[0] is not None), default=None)
            cells = [
                f"{'<= ' if b[0][1] else ''}{b[0][0] / 1024:.0f} KiB {b[1]} {b[2]}" if b else "not reached"
                for b in (best_s, best_f)
            ]
            capped = bool(best_s and best_f and (best_s[0][1] or best_f[0][1]))
            ratio = f"{'~' if capped else ''}{best_s[0][0] / best_f[0][0]:.2f}" if best_s and best_f else "-"
            target_rows.append([f"PSNR-Y {target:g}", clip, *cells, ratio])
    print(
        "\nTable 7. Targeted: the fewest bytes that reach a restored PSNR-Y target, among the stored forms + span "
        "(x2/x4 x codec, CRF interpolated in log(bytes)) and among the full-size codecs tuned to the same target; "
        "'<=': the smallest encode measured already exceeds the target (so '~' on the ratio)"
    )
    print(table(["target", "clip", "stored + span", "full size", "stored / full"], target_rows))


def bytes_at(points: list[Point], form: str, codec: str, target: float) -> tuple[float, bool] | None:
    """Bytes at which ``form``/``codec`` reaches PSNR-Y ``target`` (log-linear between its two neighbouring CRFs),
    and whether that is only an upper bound (its smallest encode measured is already above the target)."""
    curve = sorted((p for p in points if (p.form, p.codec) == (form, codec)), key=lambda p: p.bytes)
    if curve and curve[0].psnr >= target:
        return float(curve[0].bytes), True
    for lo, hi in itertools.pairwise(curve):
        if lo.psnr <= target <= hi.psnr and hi.psnr > lo.psnr:
            t = (target - lo.psnr) / (hi.psnr - lo.psnr)
            return math.exp(_lerp(math.log(lo.bytes), math.log(hi.bytes), t)), False
    return None


def _clip_photo(index: int, name: str, folder: str) -> tuple[str, Image.Image, Callable[..., Box]]:
    """The photo of clip ``name`` and its motion; a scikit-image photo (named so) when the folder lacks it."""
    rel, motion = STORAGE_CLIPS[name]
    path = Path(folder) / rel
    if path.is_file():
        return name, Image.open(path).convert("RGB"), motion
    stand_in = SKIMAGE_FALLBACK[index % len(SKIMAGE_FALLBACK)]
    return f"{name.split(' (')[0]} (skimage {stand_in})", dict(photos(include_shared=False))[stand_in], motion


def _targeted_jobs(job: tuple[int, str, tuple[int, int], int, tuple[float, ...], argparse.Namespace]) -> list[dict]:
    """Targeted downscale jobs on one clip, run by the real worker (local store, SQLite queue, span provider); for
    each target, the whole clip is also encoded at full size with the best full-size candidate the job measured."""
    from upscaler.jobs import COMPLETED, Job, SqliteJobStore, SqliteQueue, submit
    from upscaler.providers import LocalUpscaleProvider
    from upscaler.store.local import LocalFolderStore
    from video_upscaler.worker import VideoWorker

    index, name, size, frames, targets, args = job
    name, photo, motion = _clip_photo(index, name, args.photos)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        settings = Settings.from_env(
            {},
            ncnn_threads=args.threads,
            video_scratch=tmp,
            video_target_segments=args.segments,
            video_target_segment_frames=args.segment_frames,
        )
        engine = Engine(settings, model_dir=args.model_dir)
        store, jobs = LocalFolderStore(work / "objects"), SqliteJobStore(work / "jobs.db")
        queue = SqliteQueue(work / "queue.db", poll_interval=0.05)
        provider = LocalUpscaleProvider(engine, "span")
        worker = VideoWorker(store=store, jobs=jobs, queue=queue, provider=provider, engine=engine, settings=settings)
        src = work / "source.mp4"
        make_clip(src, photo, motion, size, frames)
        store.put_file("media", "clip.mp4", src, metadata={}, content_type="video/mp4")
        source_bytes = video_bytes(src)
        for target in targets:
            key = f"t{target:g}.mp4"
            spec = Job(method="downscale", video="s3://media/clip.mp4", target=f"psnr:{target:g}", output_key=key)
            done = submit(jobs, queue, spec)
            start = time.perf_counter()
            message = queue.receive(wait_seconds=5, visibility=3600)
            assert message is not None
            worker.handle(message)
            seconds = time.perf_counter() - start
            done = jobs.get(done.id)
            if done.status != COMPLETED or not done.decision or not done.fidelity:
                rows.append(_saved(args.points, {"clip": name, "target": target, "error": done.error}))
                continue
            stored = work / key
            store.get_file("media", key, stored)
            fulls = [c for c in done.decision["candidates"] if c["scale"] == 1]
            row = {
                "clip": name,
                "target": target,
                "form": f"x{done.decision['scale']} {done.codec} crf {done.crf}",
                "bytes": video_bytes(stored),
                "source_bytes": source_bytes,
                "psnr": done.fidelity["psnr"],
                "met": done.fidelity["met"],
                "seconds": seconds,
                "sample_bytes": min(c["sample_bytes"] for c in done.decision["candidates"]),
                "restorations": done.decision.get("restorations"),
                "pruned": len(done.decision.get("pruned", [])),
                "whole_clip": done.decision.get("whole_clip", []),
            }
            if fulls:
                best = min(fulls, key=lambda c: c["sample_bytes"])
                row |= {"full": f"{best['codec']} crf {best['crf']}", "full_sample_bytes": best["sample_bytes"]}
                row |= {"full_psnr": best["fidelity"], "fulls": {}}
                for c in fulls:  # each full-size codec at the CRF the job tuned to the target, over the whole clip
                    out = work / f"full-{c['codec']}.mp4"
                    enc = VideoEncoding.choose(c["codec"], crf=c["crf"])
                    transcode(src, out, lambda rgb: rgb, size=size, max_workers=args.workers, encoding=enc)
                    checked = _sample_psnr(src, out, target, done.decision.get("sample_frames"), args)
                    row["fulls"][c["codec"]] = {"crf": c["crf"], "bytes": video_bytes(out), "psnr": checked}
                    if c is best:
                        row["full_bytes"] = row["fulls"][c["codec"]]["bytes"]
            row["load"] = [round(v, 1) for v in os.getloadavg()]
            rows.append(_saved(args.points, row))
            print(f"  {name}: target {target:g} done in {seconds:.0f} s", file=sys.stderr)
    return rows


def _saved(points: str | None, row: dict) -> dict:
    """``row``, appended to the ``points`` file as each job ends (so a run cut short keeps what it did)."""
    if points:
        with open(points, "a") as fh:
            fh.write(json.dumps(row) + "\n")
    return row


def _sample_psnr(src: Path, encoded: Path, target: float, frames: int | None, args: argparse.Namespace) -> float:
    """PSNR-Y of ``encoded`` against ``src`` on the frames a targeted job samples (its segments), as its check."""
    from upscaler.quality import Target
    from video_upscaler import targeting

    total = targeting.count_frames(src)
    indices = targeting.sample_indices(total, args.segments, args.segment_frames)
    if frames is not None and frames != len(indices):
        raise RuntimeError(f"the job sampled {frames} frames, this check {len(indices)}")
    reference, back = targeting.read_frames(src, indices), targeting.read_frames(encoded, indices)
    return targeting.score(Target("psnr", target), reference, back)


def targeted_main(args: argparse.Namespace) -> None:
    size = args.size or ((320, 176) if args.quick else (1280, 720))
    frames = int((args.seconds or (1.0 if args.quick else 10.0)) * RATE)
    targets = tuple(args.targets)
    names = list(STORAGE_CLIPS)[args.first_clip : args.first_clip + args.clips]
    work = [(args.first_clip + i, n, size, frames, (t,), args) for i, n in enumerate(names) for t in targets]
    start = time.perf_counter()
    rows: list[dict] = []

    if args.jobs > 1:
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(args.jobs) as pool:
            for future in as_completed([pool.submit(_targeted_jobs, w) for w in work]):
                rows += future.result()  # each job's row is saved as it ends
    else:
        for w in work:
            rows += _targeted_jobs(w)
    print(f"targeted run: {time.perf_counter() - start:.0f} s, {args.jobs} jobs at a time", file=sys.stderr)
    targeted_table(rows, size, frames, args.segments, args.segment_frames)


def _full_cell(r: dict, codec: str) -> str:
    """``KiB (PSNR-Y)`` of the whole clip at full size in ``codec`` at the CRF the job tuned; ``*`` when it misses."""
    full = r.get("fulls", {}).get(codec)
    if not full:
        return "-"
    miss = "*" if full["psnr"] < r["target"] else ""
    return f"{full['bytes'] / 1024:.0f} ({full['psnr']:.2f}{miss})"


def _finalists_cell(r: dict) -> str:
    """The job's whole-clip encodes of its finalists: ``x2 av1 61: 20`` (KiB of the file), ``*`` when one missed."""
    return (
        "; ".join(
            f"x{w['scale']} {w['codec']} {w['crf']}: {w['bytes'] / 1024:.0f}{'' if w['met'] else '*'}"
            for w in r.get("whole_clip", [])
        )
        or "-"
    )


def _best_full_met(r: dict) -> int | None:
    """Bytes of the smallest whole-clip full-size encode that meets the target on the sample frames."""
    met = [f["bytes"] for f in r.get("fulls", {}).values() if f["psnr"] >= r["target"]]
    return min(met) if met else None


def targeted_table(rows: list[dict], size: tuple[int, int], frames: int, segments: int, length: int) -> None:
    out = []
    for r in sorted(rows, key=lambda r: (r["target"], r["clip"])):
        if "error" in r:
            out.append([f"PSNR-Y {r['target']:g}", r["clip"], "failed: " + str(r["error"])[:60]] + [""] * 15)
            continue
        ratio = f"{r['bytes'] / r['full_bytes']:.2f}" if r.get("full_bytes") else "-"
        full = f"{r['full']} {r['full_bytes'] / 1024:.0f} KiB" if r.get("full_bytes") else "none met the target"
        source, met_full = r.get("source_bytes"), _best_full_met(r)
        out.append(
            [
                f"PSNR-Y {r['target']:g}",
                r["clip"],
                r["form"],
                f"{source / 1024:.0f}" if source else "-",
                f"{r['bytes'] / 1024:.0f}",
                f"{100 * (1 - r['bytes'] / source):.1f}" if source else "-",
                f"{r['psnr']:.2f}",
                "yes" if r["met"] else "NO",
                full,
                ratio,
                f"{r['sample_bytes'] / r['full_sample_bytes']:.2f}" if r.get("full_sample_bytes") else "-",
                *(_full_cell(r, codec) for codec in ("h264", "hevc", "av1")),
                f"{r['bytes'] / met_full:.2f}" if met_full else "-",
                _finalists_cell(r),
                f"{r['seconds']:.0f}",
                r.get("restorations", "-"),
                f"{r['load'][0]:.1f}" if r.get("load") else "-",
            ]
        )
    print(
        f"\nTable 8. Targeted downscale jobs (the real worker, span restoring), {frames} frames {size[0]}x{size[1]}; "
        f"the job measures {segments} segments of {length} frames. Stored KiB = the video stream; PSNR-Y = the "
        "stored clip restored, on the sample frames (met = the job's check). Full size = the best full-size "
        "candidate the job measured (the codec and CRF tuned to the same target), encoded over the whole clip; "
        "H.264/HEVC/AV1 full = each codec at full size at the CRF the job tuned for it, over the whole clip, KiB "
        "(PSNR-Y on the same sample frames; * = misses the target there); / met = stored bytes over the smallest "
        "of those that meets the target. Finalists = the job's own whole-clip encodes of its best candidates, "
        "KiB of the file (* = missed the target; the smallest that met was stored). Model runs = sample frames "
        "the job's search restored; load = the "
        "machine's 1-minute load average as the job's row was written."
    )
    headers = ["target", "clip", "chosen", "source KiB", "stored KiB", "saved %", "PSNR-Y", "met", "best full size"]
    headers += ["bytes / full", "samples / full", "H.264 full", "HEVC full", "AV1 full", "/ met", "finalists"]
    print(table([*headers, "job s", "model runs", "load"], out))


def searches_main(args: argparse.Namespace) -> None:
    """The targeted search exhaustive (every scale x codec's best CRF) and pruned (what can still win), interleaved
    A B A B on the same sample frames of each clip: seconds, model runs, and the choice (which must be the same)."""
    from upscaler.quality import Target
    from video_upscaler import targeting

    size = args.size or ((320, 176) if args.quick else (640, 360))
    frames = int((args.seconds or 2.0) * RATE)
    engine = Engine(Settings.from_env({}, ncnn_threads=args.threads), model_dir=args.model_dir)
    runs_of_model = [0]

    def restore(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        runs_of_model[0] += 1
        return np.asarray(engine.upscale(rgb, size=size, model="span"))

    def down(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        return np.asarray(engine.downscale(rgb, size=size))

    rows = []
    for index, clip in enumerate(list(STORAGE_CLIPS)[args.first_clip : args.first_clip + args.clips]):
        name, photo, motion = _clip_photo(args.first_clip + index, clip, args.photos)
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "source.mp4"
            make_clip(src, photo, motion, size, frames)
            indices = targeting.sample_indices(frames, args.segments, args.segment_frames)
            reference = targeting.read_frames(src, indices)
            for target, repeat, prune in itertools.product(args.targets, range(args.repeats or 1), (False, True)):
                runs_of_model[0] = 0
                start = time.perf_counter()
                decision = targeting.choose(
                    reference,
                    targeting.runs_of(indices),
                    Target("psnr", target),
                    restore,
                    down,
                    rate=Fraction(RATE),
                    prune=prune,
                )
                c = decision.chosen
                row = {
                    "clip": name,
                    "target": target,
                    "repeat": repeat,
                    "search": "pruned" if prune else "exhaustive",
                    "seconds": round(time.perf_counter() - start, 1),
                    "model_runs": runs_of_model[0],
                    "chosen": f"x{c.scale} {c.codec} crf {c.crf}",
                    "sample_bytes": c.bytes,
                    "fidelity": round(c.fidelity, 3),
                    "load": round(os.getloadavg()[0], 1),
                }
                rows.append(_saved(args.points, row))
                print(f"  {json.dumps(row)}", file=sys.stderr)
    searches_table(rows, size, frames, args.segments, args.segment_frames)


def searches_table(rows: list[dict], size: tuple[int, int], frames: int, segments: int, length: int) -> None:
    out = []
    for (clip, target, repeat), pair in itertools.groupby(
        sorted(rows, key=lambda r: (r["clip"], r["target"], r["repeat"], r["search"])),
        key=lambda r: (r["clip"], r["target"], r["repeat"]),
    ):
        arms = {r["search"]: r for r in pair}
        a, b = arms.get("exhaustive"), arms.get("pruned")
        if not (a and b):
            continue
        same = (a["chosen"], a["sample_bytes"]) == (b["chosen"], b["sample_bytes"])
        out.append(
            [
                clip,
                f"PSNR-Y {target:g}",
                repeat,
                f"{a['chosen']} ({a['sample_bytes']} B)",
                "yes" if same else f"NO: {b['chosen']} ({b['sample_bytes']} B)",
                a["model_runs"],
                b["model_runs"],
                f"{a['seconds']:.0f}",
                f"{b['seconds']:.0f}",
                f"{b['seconds'] / a['seconds']:.2f}",
                f"{a['load']:.1f} / {b['load']:.1f}",
            ]
        )
    print(
        f"\nTable 9. Targeted search, exhaustive (every scale x codec's best CRF) against pruned (only what can still "
        f"win), run A B interleaved on the same {segments} x {length} sample frames of {frames}-frame "
        f"{size[0]}x{size[1]} clips, SPAN restoring; model runs = sample frames restored; load = 1-minute load "
        "average after each arm"
    )
    headers = ["clip", "target", "repeat", "exhaustive chose", "pruned: the same?", "model runs A", "model runs B"]
    print(table([*headers, "A s", "B s", "B / A", "load A / B"], out))


def _clip_points(job: tuple[int, str, tuple[int, int], int, int, argparse.Namespace]) -> list[Point]:
    """Make clip ``index`` and measure it (one process per clip with --jobs)."""
    index, name, size, frames, samples, args = job
    name, photo, motion = _clip_photo(index, name, args.photos)
    engine = Engine(Settings.from_env({}, ncnn_threads=args.threads), model_dir=args.model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "source.mp4"
        make_clip(src, photo, motion, size, frames)
        return storage_points(engine, name, src, size, Path(tmp), samples, args.workers, args.points)


#: Real camera footage that Debian packages ship: none at 720p or more was found (apt-cache searches for sample,
#: test and demo videos), so these two, below 720p: path -> (clip, what it shows, package, licence).
FOOTAGE = {
    "/usr/share/pymecavideo/data/video/balle-jbart.mp4": (
        "balle-jbart",
        "a ball thrown in a room, 720x576 25 fps, with audio",
        "python3-mecavideo",
        "CC BY-SA 3.0, Benoit Markey",
    ),
    "/usr/share/doc/opencv-doc/examples/data/vtest.avi": (
        "vtest",
        "people walking past a fixed camera, 768x576 10 fps (MS-MPEG4)",
        "opencv-doc",
        "Apache-2.0 AND BSD-3-Clause, OpenCV",
    ),
}


def cut(src: Path, dst: Path, seconds: float) -> None:
    """The first ``seconds`` of ``src``, its video and audio packets copied as they are (no re-encode), into
    ``dst`` (the same container format): the footage as shipped, shortened."""
    import av

    with av.open(str(src)) as c, av.open(str(dst), "w", format=c.format.name.split(",")[0]) as out:
        streams = [s for s in c.streams if s.type in ("video", "audio")]
        copies = {s.index: out.add_stream_from_template(s) for s in streams}
        for packet in c.demux(streams):
            if packet.dts is None or packet.pts is None:
                continue
            if packet.pts * packet.time_base >= seconds:
                continue
            packet.stream = copies[packet.stream.index]
            out.mux(packet)


def _footage_points(job: tuple[str, float, int, argparse.Namespace]) -> list[Point]:
    path, seconds, samples, args = job
    name = FOOTAGE.get(path, (Path(path).stem,))[0]
    engine = Engine(Settings.from_env({}, ncnn_threads=args.threads), model_dir=args.model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / f"source{Path(path).suffix}"
        cut(Path(path), src, seconds)
        info = probe(src)
        size = (info.width - info.width % (2 * SCALE), info.height - info.height % (2 * SCALE))
        if size != (info.width, info.height):
            raise SystemExit(f"{path}: {info.width}x{info.height} is not a multiple of {2 * SCALE} on each side")
        return storage_points(engine, name, src, size, Path(tmp), samples, args.workers, args.points)


def footage_main(args: argparse.Namespace) -> None:
    """Tables 3-7 on real footage (FOOTAGE, or the files given), each clip cut to --seconds (10)."""
    paths = args.footage or [p for p in FOOTAGE if Path(p).is_file()]
    if not paths:
        raise SystemExit("no footage: apt-get install python3-mecavideo opencv-doc, or name files after --footage")
    seconds, samples = args.seconds or 10.0, args.samples or 12
    start = time.perf_counter()
    points: list[Point] = []
    for path in paths:
        print(f"  {path}: {' / '.join(FOOTAGE.get(path, ('given',))[1:])}", file=sys.stderr)
        points += _footage_points((path, seconds, samples, args))
    print(f"footage run: {time.perf_counter() - start:.0f} s, load {os.getloadavg()[0]:.1f}", file=sys.stderr)
    footage_tables(points, paths, seconds, samples)


def footage_tables(points: list[Point], paths: list[str], seconds: float, samples: int) -> None:
    """Tables 3-7 for each footage clip on its own (each has its own size and frame rate)."""
    for path in paths:
        name = FOOTAGE.get(path, (Path(path).stem,))[0]
        mine = [p for p in points if p.clip == name]
        if not mine:
            continue
        what = FOOTAGE.get(path, (name, "given", "", ""))
        info = probe(Path(path))
        frames = min(info.frames or math.inf, round(seconds * info.rate))
        print(f"\n== {name}: {what[1]}; Debian package {what[2]}, {what[3]}; first {seconds:g} s ({frames} frames)")
        storage_tables(mine, (info.width, info.height), frames, samples)


def storage_main(args: argparse.Namespace) -> None:
    size = args.size or ((320, 176) if args.quick else (1280, 720))
    frames = int((args.seconds or (1.0 if args.quick else 10.0)) * RATE)
    samples = args.samples or (4 if args.quick else 12)
    names = list(STORAGE_CLIPS)[: args.clips]
    jobs = [(i, name, size, frames, samples, args) for i, name in enumerate(names)]
    start = time.perf_counter()
    points: list[Point] = []

    def keep(clip: list[Point]) -> None:
        points.extend(clip)

    if args.jobs > 1:
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(args.jobs) as pool:
            for future in as_completed([pool.submit(_clip_points, job) for job in jobs]):
                keep(future.result())
    else:
        for job in jobs:
            keep(_clip_points(job))
    runtime = Engine(Settings.from_env({}, ncnn_threads=args.threads)).options
    print(
        f"clips from {args.photos}/mate/nature (Debian mate-backgrounds, real photographs) unless named skimage; "
        f"{frames} frames @ {RATE} fps, source libx264 crf {SOURCE_CRF}; {args.jobs} clips at a time, "
        f"{_cores()} CPU cores, ncnn threads {runtime.resolved_threads()}; {time.perf_counter() - start:.0f} s",
        file=sys.stderr,
    )
    storage_tables(points, size, frames, samples)


SKIMAGE_FALLBACK = ("coffee", "astronaut", "chelsea", "rocket", "stereo_motorcycle", "camera")


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
    parser.add_argument("--speed-only", action="store_true", help="table 2 alone (no model comparison first)")
    parser.add_argument("--workers", type=int, default=2, help="transcode max_workers (default 2)")
    parser.add_argument("--threads", type=int, default=0, help="ncnn threads per inference (0 = one per core)")
    parser.add_argument(
        "--storage",
        action="store_true",
        help="tables 3-6 instead: stored codecs x2/x4 + span against full-size H.264/HEVC/AV1 at the same bytes",
    )
    parser.add_argument(
        "--footage",
        nargs="*",
        default=None,
        help="tables 3-7 on real footage (no paths: the Debian clips in FOOTAGE), each cut to --seconds",
    )
    parser.add_argument("--clips", type=int, default=6, help="--storage: clips (default 6)")
    parser.add_argument("--seconds", type=float, default=None, help="--storage: seconds per clip (default 10)")
    parser.add_argument("--samples", type=int, default=None, help="--storage: frames scored per clip (default 12)")
    parser.add_argument("--jobs", type=int, default=1, help="--storage: clips measured at once, one process each")
    parser.add_argument("--photos", default=str(BACKGROUNDS), help=f"--storage: photo folder (default {BACKGROUNDS})")
    parser.add_argument("--model-dir", default=None, help="folder with <model>.param/.bin (default: the packages)")
    parser.add_argument("--targeted", action="store_true", help="table 8: targeted downscale jobs on the clips")
    parser.add_argument("--first-clip", type=int, default=0, help="--targeted: index of the first clip (default 0)")
    parser.add_argument("--targeted-table", action="store_true", help="with --tables-from: print table 8 from it")
    parser.add_argument(
        "--searches", action="store_true", help="table 9: the targeted search exhaustive vs pruned, interleaved"
    )
    parser.add_argument("--targets", type=float, nargs="+", default=[38.0, 40.0], help="--targeted: PSNR-Y targets")
    parser.add_argument("--segments", type=int, default=3, help="--targeted: sample segments per job (default 3)")
    parser.add_argument("--segment-frames", type=int, default=12, help="--targeted: frames per segment (default 12)")
    parser.add_argument("--points", default=None, help="--storage: append each clip's measurements (JSON lines) here")
    parser.add_argument("--tables-from", default=None, help="print tables 3-7 from a --points file, measure nothing")
    args = parser.parse_args()
    if args.searches:
        searches_main(args)
        return
    if args.targeted:
        targeted_main(args)
        return
    if args.tables_from and args.targeted_table:
        rows = [json.loads(line) for line in Path(args.tables_from).read_text().splitlines() if line]
        size = args.size or (1280, 720)
        targeted_table(rows, size, int((args.seconds or 10.0) * RATE), args.segments, args.segment_frames)
        return
    if args.tables_from and args.footage is not None:
        saved = [Point(**json.loads(line)) for line in Path(args.tables_from).read_text().splitlines() if line]
        footage_tables(saved, args.footage or list(FOOTAGE), args.seconds or 10.0, args.samples or 12)
        return
    if args.footage is not None:
        footage_main(args)
        return
    if args.tables_from:
        saved = [Point(**json.loads(line)) for line in Path(args.tables_from).read_text().splitlines() if line]
        for p in saved:
            p.bicubic = tuple(p.bicubic) if p.bicubic else None  # type: ignore[assignment]
        storage_tables(saved, args.size or (1280, 720), int((args.seconds or 10.0) * RATE), args.samples or 12)
        return
    if args.storage:
        storage_main(args)
        return
    size = args.size or ((256, 144) if args.quick else (512, 288))
    n_frames = args.frames or (12 if args.quick else 48)
    speed_frames = args.speed_frames or (12 if args.quick else 144)
    repeats = args.repeats or (1 if args.quick else 3)
    engine = Engine(Settings.from_env({}, ncnn_threads=args.threads))
    engine.warmup(*(("span",) if args.speed_only else MODELS[1:]))
    threads = engine.options.resolved_threads()
    pics = dict(photos(include_shared=False))

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        clips: dict[str, Path] = {}
        for index, (clip, (photo, motion)) in enumerate(CLIPS.items()):
            if args.speed_only and index:
                break  # table 2 times the first clip only
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

        stored: dict[str, Path] = {}
        if not args.speed_only:
            rows, overall, stored = fidelity(engine, clips, size, work, args.workers)
            table_1(rows, overall, n_frames, size)
        clip = next(iter(clips))
        src, small_src = clips[clip], stored.get(clip)
        if args.speed_only or speed_frames != n_frames:  # a longer take of the same pan: seconds, not a blip
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
        print(table(["step", "size", "frames", "seconds", "frames/s", "CPU s", "cores busy"], rows2))
        overlap = med["c"] / max(med["a"], med["b"])
        sequential = med["c"] / (med["a"] + med["b"])
        # The whole job does (a)'s work and (b)'s: it cannot finish before their CPU seconds fit on the cores.
        floor = (med["cpu_a"] + med["cpu_b"]) / _cores() / max(med["a"], med["b"])
        verdict = "met" if overlap <= TARGET else "NOT met"
        print(f"whole / max(decode+encode, model) = {overlap:.2f} (target <= {TARGET}: {verdict})")
        print(f"whole / (decode+encode + model)   = {sequential:.2f} (1.00 = no overlap at all, a sequential pipeline)")
        print(
            f"lowest whole / max possible here   = {floor:.2f} ((a)'s and (b)'s CPU seconds spread over all "
            f"{_cores()} cores with none idle)"
        )


def table_1(rows: list, overall: dict, n_frames: int, size: tuple[int, int]) -> None:
    """Print table 1 (the x4 roundtrip fidelity per model) and the winner."""
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


def _streams(path: Path) -> list[str]:
    import av

    with av.open(str(path)) as c:
        return [f"{s.type} {s.codec_context.name}" for s in c.streams]


def _cores() -> int:
    import os

    return os.cpu_count() or 1


if __name__ == "__main__":
    main()
