"""The video pipeline on generated clips: every frame, exact size, timestamps, and audio packets byte-identical."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from upscaler.engine import Engine
from video_upscaler.pipeline import probe, transcode


def make_clip(
    path: Path, *, frames: int = 24, size: tuple[int, int] = (64, 48), rate: int = 12, static_after: int | None = None
) -> None:
    """An H.264 clip with a moving pattern and one second of AAC audio."""
    width, height = size
    with av.open(str(path), "w", format="mp4") as out:
        v = out.add_stream("libx264", rate=rate)
        v.width, v.height, v.pix_fmt = width, height, "yuv420p"
        a = out.add_stream("aac", rate=16000)
        a.layout = "mono"
        y, x = np.mgrid[0:height, 0:width]
        for i in range(frames):
            t = min(i, static_after) if static_after is not None else i
            rgb = np.stack([(x * 4 + t * 8) % 256, (y * 5) % 256, ((x + y + t * 3) * 2) % 256], axis=2)
            frame = av.VideoFrame.from_ndarray(rgb.astype(np.uint8), format="rgb24")
            for packet in v.encode(frame):
                out.mux(packet)
        for packet in v.encode(None):
            out.mux(packet)
        samples = (np.sin(np.arange(16000) * 2 * np.pi * 440 / 16000) * 0.3).astype(np.float32)
        for start in range(0, 16000, 1024):
            chunk = samples[start : start + 1024][None, :]
            aframe = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
            aframe.sample_rate, aframe.pts, aframe.time_base = 16000, start, Fraction(1, 16000)
            for packet in a.encode(aframe):
                out.mux(packet)
        for packet in a.encode(None):
            out.mux(packet)


def packets(path: Path, kind: str) -> list[bytes]:
    with av.open(str(path)) as c:
        stream = next(s for s in c.streams if s.type == kind)
        return [bytes(p) for p in c.demux(stream) if p.size]


def video_info(path: Path) -> tuple[int, list[int], tuple[int, int]]:
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        pts = [f.pts for f in c.decode(v)]
        return len(pts), pts, (v.codec_context.width, v.codec_context.height)


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine()


def test_downscale_keeps_every_frame_timestamps_and_audio(tmp_path: Path, engine: Engine) -> None:
    src, dst = tmp_path / "in.mp4", tmp_path / "out.mp4"
    make_clip(src)
    seen = []
    report = transcode(
        src,
        dst,
        lambda rgb: np.asarray(engine.downscale(rgb, 2)),
        size=(32, 24),
        max_workers=2,
        progress=lambda done, total: seen.append(done),
    )
    n_in, pts_in, _ = video_info(src)
    n_out, pts_out, size = video_info(dst)
    assert n_out == n_in == report.frames == 24 and size == (32, 24)
    assert sorted(pts_out) == sorted(pts_in)  # every frame, first one included, at its own time
    assert packets(dst, "audio") == packets(src, "audio")  # copied, not re-encoded
    assert seen[-1] == 24 and report.copied_packets > 0
    assert probe(dst)["duration"] == pytest.approx(probe(src)["duration"], abs=0.1)


def test_upscale_to_an_odd_exact_size(tmp_path: Path, engine: Engine) -> None:
    src, dst = tmp_path / "in.mp4", tmp_path / "out.mp4"
    make_clip(src, frames=6, size=(32, 24))
    transcode(src, dst, lambda rgb: np.asarray(engine.upscale(rgb, model="span", size=(65, 47))), size=(65, 47))
    n, _, size = video_info(dst)
    assert n == 6 and size == (65, 47)


def test_static_frames_are_processed_once(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.mp4", tmp_path / "out.mp4"
    make_clip(src, frames=20, static_after=5)
    calls = []

    def fn(rgb: np.ndarray) -> np.ndarray:
        calls.append(1)
        return rgb

    report = transcode(src, dst, fn, size=(64, 48))
    assert report.frames == 20 and report.repeated_frames >= 10 and len(calls) == 20 - report.repeated_frames


def test_bad_videos(tmp_path: Path) -> None:
    from upscaler.errors import UpscalerError

    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    with pytest.raises(UpscalerError):
        transcode(bad, tmp_path / "o.mp4", lambda x: x, size=(8, 8))
    with pytest.raises(UpscalerError):
        probe(bad)
