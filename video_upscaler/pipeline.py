"""Streaming video transcoding with a per-frame function, in PyAV.

Frames are decoded one by one and handed to ``frame_fn`` on a thread pool (``max_workers`` at a time, at most
``2 * max_workers`` frames in flight: memory is bounded by that, not by the video); results are encoded in order
with libx264. Every frame keeps its presentation timestamp, so variable frame rate and A/V sync survive. Audio and
subtitle packets are copied unchanged (no re-encode). A frame identical to the one before it (static scenes) is
processed once. Odd output sizes are encoded in 4:4:4, which H.264 allows at any size; even sizes in 4:2:0.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from upscaler.errors import UndecodableImage, UnsupportedMedia

FrameFn = Callable[[np.ndarray], np.ndarray]
Progress = Callable[[int, int | None], None]


@dataclass
class TranscodeReport:
    frames: int
    repeated_frames: int
    copied_packets: int
    seconds: float
    width: int
    height: int


def probe(path: Path) -> dict[str, object]:
    """Frames (estimated), duration, size and streams of a video, without decoding it."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UnsupportedMedia("the file has no video stream")
            v = container.streams.video[0]
            duration = float(container.duration / av.time_base) if container.duration else None
            return {
                "width": v.codec_context.width,
                "height": v.codec_context.height,
                "frames": v.frames or None,
                "duration": duration,
                "rate": float(v.average_rate) if v.average_rate else None,
                "streams": [s.type for s in container.streams],
            }
    except av.FFmpegError as exc:
        raise UndecodableImage(f"video cannot be read: {exc}") from None


def transcode(
    src: Path,
    dst: Path,
    frame_fn: FrameFn,
    *,
    size: tuple[int, int],
    max_workers: int = 2,
    crf: int = 18,
    preset: str = "medium",
    progress: Progress | None = None,
) -> TranscodeReport:
    """Write ``dst`` (MP4): every video frame of ``src`` through ``frame_fn`` (RGB uint8 HxWx3 -> RGB uint8 of
    ``size`` = (width, height)), audio and subtitles copied."""
    import av

    start = time.perf_counter()
    width, height = size
    frames = repeated = copied = 0
    try:
        src_c = av.open(str(src))
    except av.FFmpegError as exc:
        raise UndecodableImage(f"video cannot be read: {exc}") from None
    with src_c, av.open(str(dst), "w", format="mp4") as out, ThreadPoolExecutor(max_workers) as pool:
        if not src_c.streams.video:
            raise UnsupportedMedia("the file has no video stream")
        vin = src_c.streams.video[0]
        vin.thread_type = "AUTO"
        vout = out.add_stream("libx264", rate=vin.average_rate or 25)
        vout.width, vout.height = width, height
        vout.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        vout.time_base = vin.time_base
        vout.codec_context.time_base = vin.time_base
        vout.options = {"crf": str(crf), "preset": preset}
        copies = {}
        for stream in src_c.streams:
            if stream.type in ("audio", "subtitle") and stream is not vin:
                try:
                    copies[stream.index] = out.add_stream_from_template(stream)
                except (ValueError, av.FFmpegError):
                    continue  # a codec MP4 cannot carry (e.g. some subtitle formats) is left out, not fatal
        total = vin.frames or None
        pending: deque[tuple[Future[np.ndarray] | np.ndarray, int | None]] = deque()
        last_key: bytes | None = None
        last_result: Future[np.ndarray] | np.ndarray | None = None

        def emit(item: tuple[Future[np.ndarray] | np.ndarray, int | None]) -> None:
            nonlocal frames
            result, pts = item
            arr = result.result() if isinstance(result, Future) else result
            if arr.shape[:2] != (height, width):
                raise ValueError(f"frame function returned {arr.shape[1]}x{arr.shape[0]}, expected {width}x{height}")
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr, dtype=np.uint8), format="rgb24")
            frame.pts, frame.time_base = pts, vin.time_base
            for packet in vout.encode(frame):
                out.mux(packet)
            frames += 1
            if progress:
                progress(frames, total)

        for packet in src_c.demux():
            if packet.stream.index in copies:
                if packet.dts is None:
                    continue  # demuxer flush packet
                packet.stream = copies[packet.stream.index]
                out.mux(packet)
                copied += 1
                continue
            if packet.stream is not vin:
                continue
            for frame in packet.decode():
                rgb = frame.to_ndarray(format="rgb24")
                key = hashlib.blake2b(rgb.tobytes(), digest_size=16).digest()
                if key == last_key and last_result is not None:
                    result = last_result
                    repeated += 1
                else:
                    result = pool.submit(frame_fn, rgb)
                last_key, last_result = key, result
                pending.append((result, frame.pts))
                while len(pending) > 2 * max_workers:
                    emit(pending.popleft())
        while pending:
            emit(pending.popleft())
        for packet in vout.encode(None):
            out.mux(packet)
    if frames == 0:
        raise UndecodableImage("the video has no decodable frames")
    return TranscodeReport(frames, repeated, copied, time.perf_counter() - start, width, height)
