"""Streaming video transcoding with a per-frame function, in PyAV, in resumable segments.

Frames are decoded one by one and handed to ``frame_fn`` on a thread pool (``max_workers`` at a time, at most
``2 * max_workers`` frames in flight: memory is bounded by that, not by the video); results are encoded in order
(H.264, HEVC or AV1: :class:`~upscaler.media.video.VideoEncoding`) while the next frames decode and run, so decode,
model and encode overlap. Every frame keeps its
presentation timestamp, so variable frame rate and A/V sync survive. A frame identical to the one before it (static
scenes) is processed once. Even output sizes are encoded in 4:2:0; odd sizes in 4:4:4 with x264/x265 (which need
whole chroma samples), in 4:2:0 with SVT-AV1 (which pads).

The video is encoded in segments of ``segment_frames`` frames, each a closed, self-contained stream that starts
with a keyframe. A finished segment is handed to :class:`Checkpoints` (the worker saves it to the object
store), so a run that dies is resumed from the last saved segment: earlier frames are decoded and skipped, never
run through the model again. Because the segment boundaries are fixed and the encoders are deterministic, a resumed run
writes the same bytes as an uninterrupted one. Each segment's timestamps start at zero (MP4 would otherwise round a
non-zero start to its movie timescale through the edit list); the join adds each segment's start back. When
``stop()`` turns true, the segment in progress is cut short at the current frame, saved, and :class:`Interrupted`
is raised. Finally the segments are joined and the source's audio and subtitle packets are copied in unchanged (no
re-encode), interleaved by time.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import itertools
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from upscaler.errors import InvalidInput, UndecodableImage, UnsupportedMedia
from upscaler.media.video import VideoEncoding, demote_realtime_threads, probe

__all__ = ["Checkpoints", "Interrupted", "TranscodeReport", "probe", "transcode"]

FrameFn = Callable[[np.ndarray], np.ndarray]
Progress = Callable[[int, int | None], None]


class Interrupted(Exception):
    """``stop()`` turned true: the work so far is checkpointed; run again to continue."""

    def __init__(self, frames_done: int) -> None:
        super().__init__(f"stopped after {frames_done} frames (checkpointed)")
        self.frames_done = frames_done


class Checkpoints(Protocol):
    """Where finished segments are kept between runs of the same job."""

    def saved(self) -> list[int]:
        """Frame counts of the segments 0..n-1 saved so far (consecutive from 0)."""

    def save(self, index: int, path: Path, frames: int) -> None:
        """Keep segment ``index`` (a file of ``frames`` frames) durably."""

    def load(self, index: int, path: Path) -> None:
        """Write saved segment ``index`` to ``path``."""


@dataclass
class TranscodeReport:
    frames: int  # frames in the output
    processed_frames: int  # frames run through frame_fn in this run (resumed and repeated ones excluded)
    resumed_frames: int  # frames taken from checkpoints of an earlier run
    repeated_frames: int
    copied_packets: int
    dropped_streams: list[str]  # streams MP4 cannot carry (e.g. "subtitle:subrip"), left out
    segments: int
    seconds: float
    width: int
    height: int


class _SegmentWriter:
    """One segment file: frames in (with their source pts), a closed stream out."""

    def __init__(
        self,
        path: Path,
        *,
        start: int,
        size: tuple[int, int],
        rate: Fraction,
        time_base: Fraction,
        encoding: VideoEncoding,
    ) -> None:
        import av

        pix_fmt = encoding.pix_fmt(size)  # refuses a size the encoder cannot take, before a file is opened
        self.path, self.start = path, start
        self.frames = 0
        self.container = av.open(str(path), "w", format="mp4")
        self.stream = self.container.add_stream(encoding.spec.encoder, rate=rate)
        self.stream.width, self.stream.height = size
        self.stream.pix_fmt = pix_fmt
        self.stream.time_base = time_base
        self.stream.codec_context.time_base = time_base
        self.stream.options = encoding.options()
        self.time_base, self.encoding, self.size = time_base, encoding, size
        self.packets: list[Any] = []  # muxed at close, once their decode timestamps are known to be sound

    def write(self, rgb: np.ndarray, pts: int, duration: int) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb, dtype=np.uint8), format="rgb24")
        frame.pts, frame.time_base = pts - self.start, self.time_base
        if duration:
            frame.duration = duration  # the packet keeps it: the last frame lasts as long as in the source
        self._encode(frame)
        self.frames += 1

    def _encode(self, frame: Any) -> None:
        import av

        try:
            self.packets.extend(self.stream.encode(frame))
        except av.FFmpegError as exc:
            raise self._refused(exc) from None
        if self.frames == 0:  # the encoder is open and has made its threads
            demote_realtime_threads()

    def _refused(self, exc: Exception) -> InvalidInput:
        """The encoder refused its settings or this frame size: the job's choice, not the source's fault."""
        w, h = self.size
        return InvalidInput(f"{self.encoding.label()} cannot write {w}x{h} frames: {exc}")

    def close(self) -> None:
        import av

        self._encode(None)
        _sound_dts(self.packets)
        try:
            for packet in self.packets:
                self.container.mux(packet)
        except av.FFmpegError as exc:
            raise self._refused(exc) from None
        self.container.close()

    def abort(self) -> None:
        with contextlib.suppress(Exception):  # a half-written segment is thrown away anyway
            self.container.close()


def _sound_dts(packets: list[Any]) -> None:
    """Give the packets (in decode order) valid decode timestamps when the encoder's are not: libx265 reports a
    garbage dts for the first packet of a stream shorter than its B-frame delay (a segment's last few frames).
    dts is then the presentation times in order, delayed by the stream's reorder depth, so dts <= pts and it rises."""
    pts = [p.pts for p in packets]
    dts = [p.dts for p in packets]
    if None in pts or not packets:
        return
    order = sorted(pts)
    tick = min((b - a for a, b in itertools.pairwise(order) if b > a), default=1)
    reach = order[-1] - order[0] + len(packets) * tick  # no sound dts lies further before its pts
    if None not in dts and all(0 <= p - d <= reach for d, p in zip(dts, pts, strict=True)) and dts == sorted(set(dts)):
        return
    rank = {value: i for i, value in enumerate(order)}
    delay = max(0, *(i - rank[p] for i, p in enumerate(pts)))
    for i, packet in enumerate(packets):
        packet.dts = order[i - delay] if i >= delay else order[0] - (delay - i) * tick


def transcode(
    src: Path,
    dst: Path,
    frame_fn: FrameFn,
    *,
    size: tuple[int, int],
    max_workers: int = 2,
    encoding: VideoEncoding | None = None,
    progress: Progress | None = None,
    segment_frames: int = 0,
    checkpoints: Checkpoints | None = None,
    stop: Callable[[], bool] | None = None,
) -> TranscodeReport:
    """Write ``dst`` (MP4): every video frame of ``src`` through ``frame_fn`` (RGB uint8 HxWx3 -> RGB uint8 of
    ``size`` = (width, height)), audio and subtitles copied, the video written as ``encoding`` says (default: H.264
    at crf 18, preset medium). ``segment_frames`` = 0 makes one segment."""
    import av

    start = time.perf_counter()
    width, height = size
    try:
        src_c = av.open(str(src))
    except av.FFmpegError as exc:
        raise UndecodableImage(f"video cannot be read: {exc}") from None
    with src_c, tempfile.TemporaryDirectory(dir=dst.parent, prefix=".segments-") as tmp:
        if not src_c.streams.video:
            raise UnsupportedMedia("the file has no video stream")
        vin = src_c.streams.video[0]
        vin.thread_type = "AUTO"
        rate = vin.average_rate or Fraction(25)
        encoding = encoding or VideoEncoding.choose("h264", crf=18)
        total = vin.frames or None
        saved = checkpoints.saved() if checkpoints else []
        resumed = sum(saved)

        def segment_path(index: int) -> Path:
            return Path(tmp) / f"seg-{index:06d}.mp4"

        counts = list(saved)  # frame count per segment, saved ones first
        boundaries = {sum(saved[:i]) + 1: i for i in range(len(saved))}  # 1-based frame number -> segment
        starts: list[int] = [0] * len(saved)  # each segment's first pts, in the source's time base
        tick = max(1, round(1 / (rate * vin.time_base))) if vin.time_base else 1
        durations: dict[int, int] = {}  # source pts -> frame duration: MP4 segments trim their last frame's
        end = (vin.start_time or 0) + vin.duration if vin.duration else None  # where the source's track ends
        frames = processed = repeated = 0
        writer: _SegmentWriter | None = None
        pending: deque[tuple[Future[np.ndarray] | np.ndarray, int, int]] = deque()
        last_key: bytes | None = None
        last_result: Future[np.ndarray] | np.ndarray | None = None

        def finish_segment() -> None:
            nonlocal writer, last_key, last_result
            while pending:
                emit(pending.popleft())
            if writer is None:
                return
            writer.close()
            index = len(counts)
            counts.append(writer.frames)
            if checkpoints:
                checkpoints.save(index, writer.path, writer.frames)
            writer, last_key, last_result = None, None, None  # a segment never refers to another's frames

        def emit(item: tuple[Future[np.ndarray] | np.ndarray, int, int]) -> None:
            nonlocal frames
            result, pts, duration = item
            arr = result.result() if isinstance(result, Future) else result
            if arr.shape[:2] != (height, width):
                raise ValueError(f"frame function returned {arr.shape[1]}x{arr.shape[0]}, expected {width}x{height}")
            assert writer is not None
            writer.write(arr, pts, duration)
            frames += 1
            if progress:
                progress(frames, total)

        try:
            with ThreadPoolExecutor(max(1, max_workers)) as pool:
                try:
                    decoded = src_c.decode(vin)
                    index = 0
                    for frame in decoded:
                        index += 1
                        pts = frame.pts if frame.pts is not None else (index - 1) * tick  # raw streams: no pts
                        if index in boundaries:
                            starts[boundaries[index]] = pts
                        if frame.duration:
                            durations[pts] = min(frame.duration, end - pts) if end and end > pts else frame.duration
                        if index <= resumed:  # done by an earlier run: decode past it, nothing else
                            frames += 1
                            if progress and (frames % 25 == 0 or frames == resumed):
                                progress(frames, total)
                            continue
                        if writer is not None and (
                            (segment_frames and writer.frames + len(pending) >= segment_frames)
                            or (stop is not None and stop())
                        ):
                            finish_segment()
                            if stop is not None and stop():
                                raise Interrupted(frames)
                        if writer is None:
                            starts.append(pts)
                            writer = _SegmentWriter(
                                segment_path(len(counts)),
                                start=pts,
                                size=size,
                                rate=rate,
                                time_base=vin.time_base,
                                encoding=encoding,
                            )
                        rgb = frame.to_ndarray(format="rgb24")
                        key = hashlib.blake2b(rgb.tobytes(), digest_size=16).digest()
                        if key == last_key and last_result is not None:
                            result = last_result
                            repeated += 1
                        else:
                            result = pool.submit(frame_fn, rgb)
                            processed += 1
                        last_key, last_result = key, result
                        pending.append((result, pts, frame.duration or 0))
                        while len(pending) > 2 * max_workers:
                            emit(pending.popleft())
                    finish_segment()
                except av.FFmpegError as exc:
                    raise UndecodableImage(f"video cannot be decoded: {exc}") from None
                finally:
                    for item, _, _ in pending:
                        if isinstance(item, Future):
                            item.cancel()
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        if frames == 0:
            raise UndecodableImage("the video has no decodable frames")
        # A truncated file is never passed off as the whole video; a few frames short is an edit list trimming
        # the start (camera files), which the demuxer applies.
        if total and total - frames > max(2, total // 100):
            raise UndecodableImage(
                f"the video is truncated or damaged: {frames} of the {total} frames its container lists could be "
                "decoded"
            )
        if frames < resumed:
            raise UndecodableImage(f"the video has {frames} frames, fewer than its checkpoints hold ({resumed})")
        for i in range(len(saved)):
            assert checkpoints is not None
            checkpoints.load(i, segment_path(i))
        segments = [(segment_path(i), starts[i] * vin.time_base) for i in range(len(counts))]
        copied, dropped = _join(src, segments, dst, durations, vin.time_base)
    return TranscodeReport(
        frames=frames,
        processed_frames=processed,
        resumed_frames=resumed,
        repeated_frames=repeated,
        copied_packets=copied,
        dropped_streams=dropped,
        segments=len(counts),
        seconds=time.perf_counter() - start,
        width=width,
        height=height,
    )


def _join(
    src: Path, segments: list[tuple[Path, Fraction]], dst: Path, durations: dict[int, int], source_tb: Fraction
) -> tuple[int, list[str]]:
    """Write ``dst``: the segments' video packets in order, each shifted by its start (seconds) and given its source
    frame's duration (``durations``: source pts -> duration, in ``source_tb``), and ``src``'s audio and subtitle
    packets copied, interleaved by decode time. Returns the number of copied (non-video) packets and the streams
    left out."""
    import av

    parts = [av.open(str(p)) for p, _ in segments]
    try:
        with av.open(str(src)) as src_c, av.open(str(dst), "w", format="mp4") as out:
            vout = out.add_stream_from_template(parts[0].streams.video[0], opaque=True)  # no encoder needed
            copies, dropped = {}, []
            for stream in src_c.streams:
                if stream.type in ("audio", "subtitle"):
                    name = f"{stream.type}:{stream.codec_context.name}"
                    if stream.codec_context.name not in out.supported_codecs:  # e.g. subrip, ass, dvd_subtitle
                        dropped.append(name)
                        continue
                    try:
                        copies[stream.index] = out.add_stream_from_template(stream)
                    except (ValueError, av.FFmpegError):
                        dropped.append(name)

            def video() -> Iterator[tuple[float, int, Any]]:
                last_dts: int | None = None
                for part, (_, start) in zip(parts, segments, strict=True):
                    stream = part.streams.video[0]
                    shift = round(start / stream.time_base)
                    for packet in part.demux(stream):
                        if packet.dts is None:
                            continue
                        packet.dts += shift
                        if packet.pts is not None:
                            packet.pts += shift
                            source_pts = packet.pts * stream.time_base / source_tb
                            if source_pts.denominator == 1 and int(source_pts) in durations:
                                packet.duration = round(durations[int(source_pts)] * source_tb / stream.time_base)
                        # A variable frame rate can make a segment's first dts (pts minus the B-frame delay) reach
                        # the previous segment's last: nudge it one tick, the frame's pts is unchanged.
                        if last_dts is not None and packet.dts <= last_dts:
                            packet.dts = last_dts + 1
                            if packet.pts is not None and packet.pts < packet.dts:
                                packet.pts = packet.dts
                        last_dts = packet.dts
                        yield float(packet.dts * packet.time_base), 0, packet

            def others() -> Iterator[tuple[float, int, Any]]:
                if not copies:
                    return
                for packet in src_c.demux([s for s in src_c.streams if s.index in copies]):
                    if packet.dts is None:
                        continue  # demuxer flush packet
                    if packet.size == 2 and packet.stream.codec_context.name == "mov_text" and bytes(packet) == b"\0\0":
                        continue  # an empty cue: the MP4 muxer writes these gaps itself
                    yield float(packet.dts * packet.time_base), 1, packet

            copied = 0
            for _, kind, packet in heapq.merge(video(), others(), key=lambda item: (item[0], item[1])):
                if kind == 0:
                    packet.stream = vout
                else:
                    packet.stream = copies[packet.stream.index]
                    copied += 1
                out.mux(packet)
        return copied, dropped
    finally:
        for part in parts:
            part.close()
