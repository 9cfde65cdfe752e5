"""Video files: what a source holds (read from the container, no frame decoded) and the limits a job must fit.

PyAV is imported only when a function here runs, so the image service works without the ``video`` extra.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from upscaler.errors import InvalidInput, TooLarge, UndecodableImage, UnsupportedMedia

log = logging.getLogger(__name__)


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


#: FFmpeg demuxers of image files (besides the ``*_pipe`` ones: png_pipe, jpeg_pipe, webp_pipe, ...), which PyAV
#: opens as one-frame "videos": a video route refuses them (415).
STILL_DEMUXERS = ("image2", "gif", "apng")


def probe(path: Path) -> VideoInfo:
    """Size, frames, duration and streams of a video file. :class:`UnsupportedMedia` when it has no video stream
    or is a still image, :class:`UndecodableImage` when it is not a media file at all."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UnsupportedMedia("the file has no video stream")
            demuxers = container.format.name.split(",")
            if any(name.endswith("_pipe") or name in STILL_DEMUXERS for name in demuxers):
                kind = container.streams.video[0].codec_context.name
                raise UnsupportedMedia(
                    f"the file is a still image ({kind}), not a video: store images with /store or /v1/images"
                )
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
                codec=v.codec_context.codec.canonical_name,  # "av1", not its decoder "libdav1d"
                streams=tuple(s.type for s in container.streams),
            )
    except av.FFmpegError as exc:  # its str() quotes the file's path (a server's scratch file): the reason only
        raise UndecodableImage(f"video cannot be read: {exc.strerror or type(exc).__name__}") from None


X26X_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


@dataclass(frozen=True)
class VideoCodec:
    """A codec a job's video may be written in, and the FFmpeg encoder (in PyAV's build) that writes it."""

    name: str
    encoder: str
    #: Highest CRF/QP the encoder takes (0 is the best quality).
    max_quantizer: int
    presets: tuple[str, ...]
    default_preset: str
    #: The stored video's CRF when none is asked for (benchmarks/bench_video.py --storage, tables 3 and 6).
    stored_crf: int
    #: Whether 4:2:0 is accepted at odd frame sizes (else odd sizes are written in 4:4:4, or refused).
    odd_420: bool
    yuv444: bool
    #: Options that keep the encoder's console quiet (x265 prints a banner and statistics on stderr otherwise).
    quiet: tuple[tuple[str, str], ...] = ()
    #: Smallest frame side the encoder is given: libx265 corrupts its heap (and aborts the process) on frames
    #: under its 64-pixel coding tree unit here (48x32 did, reproducibly), so smaller frames are refused first.
    min_side: int = 1


#: The codecs a job may choose (option ``codec``). Option names and ranges are FFmpeg's: libx264/libx265 take
#: ``crf``/``qp`` 0-51 and a named ``preset``; libsvtav1 takes ``crf``/``qp`` 0-63 and a numbered ``preset``
#: (0 slowest .. 13 fastest).
CODECS: dict[str, VideoCodec] = {
    "h264": VideoCodec("h264", "libx264", 51, X26X_PRESETS, "medium", 18, odd_420=False, yuv444=True),
    "hevc": VideoCodec(
        "hevc",
        "libx265",
        51,
        X26X_PRESETS,
        "medium",
        20,
        odd_420=False,
        yuv444=True,
        quiet=(("x265-params", "log-level=error"),),
        min_side=64,
    ),
    "av1": VideoCodec("av1", "libsvtav1", 63, tuple(str(i) for i in range(14)), "8", 30, odd_420=True, yuv444=False),
}


def encoder_available(encoder: str) -> bool:
    """Whether PyAV's FFmpeg build has the encoder ``encoder`` (asked at run time: builds differ)."""
    import av

    try:
        av.codec.Codec(encoder, "w")
    except (av.codec.codec.UnknownCodecError, ValueError):
        return False
    return True


def demote_realtime_threads() -> int:
    """Put every thread of this process that runs under a real-time policy back to the normal one; how many were.

    SVT-AV1 (libsvtav1 4.x, our stored codec) running as root moves its ~40 encoder threads *and the thread that
    opened it* to SCHED_FIFO priority 99, which outranks every normal process on the machine: on a 2-core host one
    AV1 encode starved the API, the tests and the shell (measured: every encoder thread and the caller FF 99 after
    ``open``). Nothing asks for that, and an unprivileged container only logs "Failed to set thread priority", so
    the worker undoes it right after opening the encoder and its first frame (the encoder makes no threads later).
    """
    if not hasattr(os, "sched_getscheduler"):  # not Linux
        return 0
    demoted = 0
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return 0
    for tid in tids:
        try:
            if os.sched_getscheduler(tid) in (os.SCHED_FIFO, os.SCHED_RR):
                os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
                demoted += 1
        except OSError:  # the thread ended meanwhile, or we may not change it
            continue
    if demoted:
        log.info("video encoder threads returned to normal scheduling", extra={"threads": demoted})
    return demoted


@dataclass(frozen=True)
class VideoEncoding:
    """How a job's video is written: codec, rate control (CRF, or a constant QP) and speed preset."""

    codec: str
    crf: int | None
    qp: int | None
    preset: str

    @classmethod
    def choose(
        cls,
        codec: str,
        *,
        crf: int | None = None,
        qp: int | None = None,
        preset: str | None = None,
        default_crf: int | None = None,
        option: str = "codec",
    ) -> VideoEncoding:
        """Check the choice against the codecs and this machine's encoders; :class:`InvalidInput` naming
        ``option`` (the flag or setting the caller passes the codec as) when it cannot be used."""
        spec = CODECS.get(codec)
        if spec is None:
            raise InvalidInput(f"{option} must be one of {', '.join(CODECS)}, got {codec!r}")
        if not encoder_available(spec.encoder):
            usable = [name for name, c in CODECS.items() if encoder_available(c.encoder)]
            raise InvalidInput(
                f"{option}={codec} needs the {spec.encoder} encoder, which this PyAV/FFmpeg build lacks; "
                f"pass {option} as one of: {', '.join(usable) or 'none available'}"
            )
        if crf is not None and qp is not None:
            raise InvalidInput("pass crf or qp, not both (crf: constant quality, qp: constant quantizer)")
        for label, value in (("crf", crf), ("qp", qp)):
            if value is not None and not 0 <= value <= spec.max_quantizer:
                raise InvalidInput(f"{label} must be between 0 and {spec.max_quantizer} for {codec}, got {value}")
        preset = spec.default_preset if preset in (None, "") else str(preset)
        if preset not in spec.presets:
            raise InvalidInput(f"preset for {codec} must be one of {', '.join(spec.presets)}, got {preset!r}")
        if qp is None and crf is None:
            crf = spec.stored_crf if default_crf is None or default_crf < 0 else default_crf
            if not 0 <= crf <= spec.max_quantizer:
                raise InvalidInput(f"crf must be between 0 and {spec.max_quantizer} for {codec}, got {crf}")
        return cls(codec, crf, qp, preset)

    @property
    def spec(self) -> VideoCodec:
        return CODECS[self.codec]

    def options(self) -> dict[str, str]:
        """The encoder's options (FFmpeg's names)."""
        rate = {"qp": str(self.qp)} if self.qp is not None else {"crf": str(self.crf)}
        return {**rate, "preset": self.preset, **dict(self.spec.quiet)}

    def pix_fmt(self, size: tuple[int, int]) -> str:
        """4:2:0 when the encoder takes it at this size, else 4:4:4 (x264/x265 at odd sizes); :class:`InvalidInput`
        for a size the encoder cannot be given."""
        if min(size) < self.spec.min_side:
            raise InvalidInput(
                f"codec {self.codec} needs frames of at least {self.spec.min_side}x{self.spec.min_side}, "
                f"not {size[0]}x{size[1]}: choose another codec or a larger size"
            )
        if (size[0] % 2 == 0 and size[1] % 2 == 0) or self.spec.odd_420:
            return "yuv420p"
        if self.spec.yuv444:
            return "yuv444p"
        raise InvalidInput(f"codec {self.codec} cannot write a {size[0]}x{size[1]} video (odd sides)")

    def label(self) -> str:
        rate = f"qp {self.qp}" if self.qp is not None else f"crf {self.crf}"
        return f"{self.codec} ({self.spec.encoder}, {rate}, preset {self.preset})"

    def to_dict(self) -> dict[str, object]:
        return {"codec": self.codec, "crf": self.crf, "qp": self.qp, "preset": self.preset}
