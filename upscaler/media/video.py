"""Video files: what a source holds (read from the container, no frame decoded) and the limits a job must fit.

PyAV is imported only when a function here runs, so the image service works without the ``video`` extra.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from upscaler.errors import TooLarge, UndecodableImage, UnsupportedMedia


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    frames: int | None  # as the container says (None when it does not)
    duration: float | None  # seconds
    rate: float | None  # average frames per second
    codec: str
    streams: tuple[str, ...]  # "video", "audio", "subtitle", ...

    def to_dict(self) -> dict[str, object]:
        return {
            "width": self.width,
            "height": self.height,
            "frames": self.frames,
            "duration": self.duration,
            "rate": self.rate,
            "codec": self.codec,
            "streams": list(self.streams),
        }


@dataclass(frozen=True)
class VideoLimits:
    max_bytes: int
    max_seconds: float
    max_frames: int
    max_megapixels: float

    def check_bytes(self, size: int) -> None:
        if size > self.max_bytes:
            raise TooLarge(f"video of {size} bytes is over the limit of {self.max_bytes} bytes")

    def check(self, info: VideoInfo, output: tuple[int, int] | None = None) -> None:
        """Raise :class:`TooLarge` when the video (or its ``output`` size) is over a limit."""
        if info.duration is not None and info.duration > self.max_seconds:
            raise TooLarge(f"video of {info.duration:.1f} s is over the limit of {self.max_seconds:g} s")
        if info.frames is not None and info.frames > self.max_frames:
            raise TooLarge(f"video of {info.frames} frames is over the limit of {self.max_frames} frames")
        frames = [("source", (info.width, info.height))] + ([("output", output)] if output else [])
        for label, (w, h) in frames:
            if w * h > self.max_megapixels * 1e6:
                raise TooLarge(
                    f"{label} frames of {w}x{h} ({w * h / 1e6:.1f} MP) are over the limit of {self.max_megapixels:g} MP"
                )


def probe(path: Path) -> VideoInfo:
    """Size, frames, duration and streams of a video file. :class:`UnsupportedMedia` when it has no video stream,
    :class:`UndecodableImage` when it is not a media file at all."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UnsupportedMedia("the file has no video stream")
            v = container.streams.video[0]
            duration = float(container.duration / av.time_base) if container.duration else None
            if duration is None and v.duration and v.time_base:
                duration = float(v.duration * v.time_base)
            if not v.codec_context.width or not v.codec_context.height:
                raise UndecodableImage("the video stream has no frame size")
            return VideoInfo(
                width=v.codec_context.width,
                height=v.codec_context.height,
                frames=v.frames or None,
                duration=duration,
                rate=float(v.average_rate) if v.average_rate else None,
                codec=v.codec_context.name,
                streams=tuple(s.type for s in container.streams),
            )
    except av.FFmpegError as exc:
        raise UndecodableImage(f"video cannot be read: {exc}") from None
