"""The video pipeline on generated clips: every frame, exact size, timestamps, and audio packets byte-identical."""

from __future__ import annotations

import os
import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from upscaler.engine import Engine
from upscaler.errors import InvalidInput, UndecodableImage, UnsupportedMedia
from upscaler.media.video import VideoEncoding, demote_realtime_threads
from video_upscaler.pipeline import Interrupted, probe, transcode
from video_upscaler.targeting import encode_decode

ASS_HEADER = (
    b"[Script Info]\nScriptType: v4.00+\n\n[V4+ Styles]\nFormat: Name, Fontname, Fontsize\nStyle: Default,Arial,16\n\n"
    b"[Events]\nFormat: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text\n"
)


def make_clip(
    path: Path,
    *,
    frames: int = 24,
    size: tuple[int, int] = (64, 48),
    rate: int = 12,
    static_after: int | None = None,
    vfr: bool = False,
    subtitles: tuple[str, ...] = (),
) -> None:
    """An H.264 clip with a moving pattern, one second of AAC audio and, optionally, mov_text subtitle cues (one a
    second) and a variable frame rate (frame gaps of 1, 2 and 3 ticks of ``1/rate``)."""
    width, height = size
    with av.open(str(path), "w", format="mp4") as out:
        v = out.add_stream("libx264", rate=rate)
        v.width, v.height, v.pix_fmt = width, height, "yuv420p"
        v.codec_context.time_base = Fraction(1, rate)
        a = out.add_stream("aac", rate=16000)
        a.layout = "mono"
        s = None
        if subtitles:
            s = out.add_stream("mov_text")
            s.codec_context.subtitle_header = ASS_HEADER
            s.time_base = Fraction(1, 1000)
        y, x = np.mgrid[0:height, 0:width]
        pts = 0
        for i in range(frames):
            t = min(i, static_after) if static_after is not None else i
            rgb = np.stack([(x * 4 + t * 8) % 256, (y * 5) % 256, ((x + y + t * 3) * 2) % 256], axis=2)
            frame = av.VideoFrame.from_ndarray(rgb.astype(np.uint8), format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, rate)
            pts += 1 + (i % 3 if vfr else 0)
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
        for i, text in enumerate(subtitles):
            cue = text.encode()
            packet = av.Packet(len(cue).to_bytes(2, "big") + cue)
            packet.stream, packet.time_base = s, Fraction(1, 1000)
            packet.pts = packet.dts = i * 1000
            packet.duration = 800
            out.mux(packet)


def cues(path: Path) -> list[tuple[float, bytes]]:
    """The subtitle cues with text (time in seconds, bytes)."""
    with av.open(str(path)) as c:
        stream = next(s for s in c.streams if s.type == "subtitle")
        return [(float(p.pts * p.time_base), bytes(p)) for p in c.demux(stream) if p.size > 2]


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
    assert probe(dst).duration == pytest.approx(probe(src).duration, abs=0.1)


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


class FolderCheckpoints:
    """Checkpoints in a folder (the worker keeps them in the object store)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(exist_ok=True)

    def saved(self) -> list[int]:
        counts = []
        while (self.folder / f"{len(counts)}.mp4").exists():
            counts.append(int((self.folder / f"{len(counts)}.frames").read_text()))
        return counts

    def save(self, index: int, path: Path, frames: int) -> None:
        (self.folder / f"{index}.frames").write_text(str(frames))
        shutil.copyfile(path, self.folder / f"{index}.mp4")

    def load(self, index: int, path: Path) -> None:
        shutil.copyfile(self.folder / f"{index}.mp4", path)


def double(rgb: np.ndarray) -> np.ndarray:
    return np.repeat(np.repeat(rgb, 2, axis=0), 2, axis=1)


def test_segments_keep_variable_frame_rate_timestamps_and_subtitles(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.mp4", tmp_path / "out.mp4"
    make_clip(src, frames=30, vfr=True, subtitles=("one", "two", "three"))
    report = transcode(src, dst, double, size=(128, 96), segment_frames=7)
    assert report.segments == 5 and report.frames == 30 and report.dropped_streams == []
    assert video_info(dst)[1] == video_info(src)[1]  # irregular gaps kept exactly, across segment joins
    assert packets(dst, "audio") == packets(src, "audio")
    assert cues(dst) == cues(src) == [(0.0, b"\x00\x03one"), (1.0, b"\x00\x03two"), (2.0, b"\x00\x05three")]


@pytest.mark.parametrize(("codec", "preset"), [("h264", "veryfast"), ("hevc", "ultrafast"), ("av1", "12")])
@pytest.mark.parametrize("size", [(64, 64), (65, 67)])
def test_each_codec_round_trips_with_audio_and_subtitles(tmp_path: Path, codec: str, preset: str, size) -> None:
    src, dst, back = tmp_path / "in.mp4", tmp_path / "small.mp4", tmp_path / "back.mp4"
    make_clip(src, frames=11, vfr=True, subtitles=("one", "two"))
    encoding = VideoEncoding.choose(codec, preset=preset)
    half = lambda rgb: np.ascontiguousarray(np.asarray(Image.fromarray(rgb).resize(size)))  # noqa: E731
    report = transcode(src, dst, half, size=size, segment_frames=4, encoding=encoding)  # last segment: 3 frames
    assert report.segments == 3 and probe(dst).codec == codec and video_info(dst)[2] == size
    transcode(dst, back, lambda rgb: np.asarray(Image.fromarray(rgb).resize((64, 48))), size=(64, 48))
    if codec == "hevc":  # x265 is not given frames under 64 pixels (it corrupts its heap on 48x32)
        with pytest.raises(InvalidInput, match="hevc needs frames of at least 64x64, not 64x48"):
            transcode(src, tmp_path / "tiny.mp4", lambda rgb: rgb, size=(64, 48), encoding=encoding)
    for out in (dst, back):  # stored in the codec, then decoded from it
        assert video_info(out)[:2] == video_info(src)[:2]  # every frame at its own time
        assert packets(out, "audio") == packets(src, "audio") and cues(out) == cues(src)


def test_a_crashed_run_resumes_from_its_checkpoints_with_identical_output(tmp_path: Path) -> None:
    src = tmp_path / "in.mp4"
    make_clip(src, frames=40)
    transcode(src, tmp_path / "whole.mp4", double, size=(128, 96), segment_frames=8)
    checkpoints = FolderCheckpoints(tmp_path / "cp")
    calls = []

    def crashing(rgb: np.ndarray) -> np.ndarray:
        calls.append(1)
        if len(calls) > 21:
            raise RuntimeError("the worker died")
        return double(rgb)

    with pytest.raises(RuntimeError):
        transcode(src, tmp_path / "a.mp4", crashing, size=(128, 96), segment_frames=8, checkpoints=checkpoints)
    assert checkpoints.saved() == [8, 8]
    report = transcode(src, tmp_path / "b.mp4", double, size=(128, 96), segment_frames=8, checkpoints=checkpoints)
    assert (report.resumed_frames, report.processed_frames, report.frames) == (16, 24, 40)
    assert (tmp_path / "b.mp4").read_bytes() == (tmp_path / "whole.mp4").read_bytes()
    assert not list(tmp_path.glob(".segments-*"))  # scratch cleaned up, after the crash too


@pytest.mark.parametrize(("codec", "preset"), [("hevc", "ultrafast"), ("av1", "12")])
def test_every_codec_resumes_from_its_checkpoints(tmp_path: Path, codec: str, preset: str) -> None:
    src = tmp_path / "in.mp4"
    make_clip(src, frames=20, vfr=True)
    encoding = VideoEncoding.choose(codec, preset=preset)
    checkpoints = FolderCheckpoints(tmp_path / "cp")
    calls = []

    def crashing(rgb: np.ndarray) -> np.ndarray:
        calls.append(1)
        if len(calls) > 13:
            raise RuntimeError("the worker died")
        return double(rgb)

    common = {"size": (128, 96), "segment_frames": 6, "checkpoints": checkpoints, "encoding": encoding}
    with pytest.raises(RuntimeError):
        transcode(src, tmp_path / "a.mp4", crashing, **common)
    assert checkpoints.saved() == [6, 6]
    report = transcode(src, tmp_path / "b.mp4", double, **common)
    assert (report.resumed_frames, report.processed_frames, report.frames) == (12, 8, 20)
    assert probe(tmp_path / "b.mp4").codec == codec and video_info(tmp_path / "b.mp4")[1] == video_info(src)[1]
    assert packets(tmp_path / "b.mp4", "audio") == packets(src, "audio")


def test_stop_cuts_the_segment_short_and_the_next_run_finishes(tmp_path: Path) -> None:
    src = tmp_path / "in.mp4"
    make_clip(src, frames=30)
    checkpoints = FolderCheckpoints(tmp_path / "cp")
    seen = []
    with pytest.raises(Interrupted) as stopped:
        transcode(
            src,
            tmp_path / "a.mp4",
            double,
            size=(128, 96),
            segment_frames=20,
            checkpoints=checkpoints,
            progress=lambda done, total: seen.append(done),
            stop=lambda: len(seen) >= 5,
        )
    assert stopped.value.frames_done == sum(checkpoints.saved()) >= 5  # cut mid-segment, nothing lost
    report = transcode(src, tmp_path / "b.mp4", double, size=(128, 96), segment_frames=20, checkpoints=checkpoints)
    assert report.frames == 30 and report.processed_frames == 30 - report.resumed_frames
    assert video_info(tmp_path / "b.mp4")[1] == video_info(src)[1]
    assert packets(tmp_path / "b.mp4", "audio") == packets(src, "audio")


def test_a_stream_mp4_cannot_carry_is_named_not_silently_lost(tmp_path: Path) -> None:
    src = tmp_path / "in.mkv"
    with av.open(str(src), "w", format="matroska") as out:
        v = out.add_stream("libx264", rate=12)
        v.width, v.height, v.pix_fmt = 32, 24, "yuv420p"
        s = out.add_stream("subrip")
        s.codec_context.subtitle_header = ASS_HEADER
        s.time_base = Fraction(1, 1000)
        for i in range(6):
            for packet in v.encode(av.VideoFrame.from_ndarray(np.full((24, 32, 3), i * 30, np.uint8), format="rgb24")):
                out.mux(packet)
        for packet in v.encode(None):
            out.mux(packet)
        cue = av.Packet(b"hello")
        cue.stream, cue.time_base, cue.pts, cue.dts, cue.duration = s, Fraction(1, 1000), 0, 0, 500
        out.mux(cue)
    report = transcode(src, tmp_path / "out.mp4", lambda x: x, size=(32, 24))
    assert report.frames == 6 and report.dropped_streams == ["subtitle:srt"]


def truncated_copy(src: Path, dst: Path, keep: float = 0.6) -> None:
    """``src`` remuxed with its index first (movflags=faststart, as streaming encoders write), then cut to ``keep``
    of its bytes: the container still lists every frame, the data of the last ones is gone."""
    whole = dst.with_suffix(".whole.mp4")
    with av.open(str(src)) as inp, av.open(str(whole), "w", format="mp4", options={"movflags": "faststart"}) as out:
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams if s.type in ("video", "audio")}
        for packet in inp.demux(*[inp.streams[i] for i in streams]):
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                out.mux(packet)
    data = whole.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])


def test_a_truncated_video_fails_with_its_frame_counts(tmp_path: Path) -> None:
    src, cut = tmp_path / "in.mp4", tmp_path / "cut.mp4"
    make_clip(src, frames=40)
    truncated_copy(src, cut)
    assert probe(cut).frames == 40  # the index is intact: only decoding finds out
    with pytest.raises(UndecodableImage, match=r"truncated or damaged: \d+ of the 40 frames its container lists"):
        transcode(cut, tmp_path / "out.mp4", lambda rgb: rgb, size=(64, 48))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
def test_a_still_image_is_not_a_video(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"still.{fmt.lower()}"
    Image.new("RGB", (48, 32), (200, 10, 10)).save(path, fmt)
    with pytest.raises(UnsupportedMedia, match=r"still image \(\w+\), not a video: store images with"):
        probe(path)


def _realtime_threads() -> list[int]:
    tids = [int(t) for t in os.listdir("/proc/self/task")]
    return [t for t in tids if os.sched_getscheduler(t) in (os.SCHED_FIFO, os.SCHED_RR)]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="thread policies are read from Linux's /proc")
def test_an_av1_encode_leaves_no_thread_under_a_real_time_policy(tmp_path: Path) -> None:
    """SVT-AV1 run as root moves its threads and the thread that opened it to SCHED_FIFO 99, above every normal
    process on the host; the worker's encodes put them back (what a privileged AV1 open does is checked first)."""
    out = av.open(str(tmp_path / "raw.mp4"), "w", format="mp4")
    stream = out.add_stream("libsvtav1", rate=12)
    stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
    stream.codec_context.open()
    escalated = len(_realtime_threads())
    if os.geteuid() == 0 and escalated == 0:
        pytest.skip("this libsvtav1 (or a container without CAP_SYS_NICE) does not raise thread priority")
    assert demote_realtime_threads() == escalated and _realtime_threads() == []
    out.close()

    src = tmp_path / "in.mp4"
    make_clip(src, frames=6, size=(64, 64))
    transcode(
        src, tmp_path / "av1.mp4", lambda rgb: rgb, size=(64, 64), encoding=VideoEncoding.choose("av1", preset="12")
    )
    assert _realtime_threads() == []
    encode_decode([np.zeros((64, 64, 3), np.uint8)] * 3, VideoEncoding.choose("av1", preset="12"), Fraction(12))
    assert _realtime_threads() == []
