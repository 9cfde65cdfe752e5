"""Fidelity of stored forms, shared by the quality test bench, the storage plan and ``benchmarks/bench_codecs.py``.

* :func:`score`: PSNR-Y and SSIM-Y (BasicSR conventions, :mod:`upscaler.metrics`) and the original test bench's
  ``orb_sim``, for one restored image against its original.
* :func:`encode_at_bytes`: the full-size baseline. The original encoded at full size with a modern codec (AVIF by
  default, the service's own encoder), its quality bisected so that the file is as close as possible to a byte
  budget: "what if we had spent the same bytes without downscaling?".
* :func:`restore_stored`: one stored form (codec, quality) of a downscaled image, decoded and upscaled back to the
  original size by one or more models, through the engine: what the service's retrieval computes.
* :func:`plan_image`: every (scale, codec, quality) setting of the storage plan for one image, next to the
  full-size codec at the same bytes.

PSNR is ``inf`` for identical images; averages count it as :data:`PSNR_CAP` dB (said wherever they are shown).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from upscaler import media, metrics
from upscaler.engine import Engine
from upscaler.engine.pixels import ImageLike, dimensions

#: PSNR (dB) an identical image (PSNR = inf) counts as in means and plots.
PSNR_CAP = 100.0
#: Codecs the full-size baseline may use (bisected over quality 1-100).
FULL_SIZE_CODECS = ("avif", "avif-420", "jxl", "webp", "jpeg")
#: A full-size file counts as "the same bytes" up to this share over the budget. When even its smallest file
#: (quality 1) is larger, full-size re-encoding cannot reach the stored rate at all: only downscaling gets there.
SAME_BYTES_TOLERANCE = 0.10
#: Typical growth of log(file size) per quality step (AVIF, photographs): the search's first guess.
_LOG_BYTES_PER_QUALITY = 0.035


@dataclass(frozen=True)
class Scores:
    """Fidelity of a restored image: PSNR-Y (dB), SSIM-Y, and ``orb_sim`` (share of close ORB matches, 0-1)."""

    psnr_y: float
    ssim_y: float
    orb: float


def score(original: ImageLike, restored: ImageLike, crop_border: int = 0) -> Scores:
    """Score ``restored`` against ``original`` (same size): PSNR-Y and SSIM-Y with ``crop_border`` pixels cropped
    from every side (BasicSR: the scale factor), and the original bench's ``orb_sim`` on the whole image.
    SSIM of an image smaller than 11x11 after the crop is ``nan``. Raises ValueError when the sizes differ."""
    psnr_y = metrics.psnr(original, restored, crop_border)
    try:
        ssim_y = metrics.ssim(original, restored, crop_border)
    except ValueError:
        if dimensions(original) != dimensions(restored):
            raise
        ssim_y = math.nan
    return Scores(psnr_y, ssim_y, metrics.orb_sim(original, restored))


def crop_for(scale: float) -> int:
    """BasicSR's border crop for a scale factor (0 when nothing was downscaled)."""
    return math.ceil(scale) if scale > 1 else 0


def capped(psnr_db: float) -> float:
    """``psnr_db`` with ``inf`` counted as :data:`PSNR_CAP` (for means and plots)."""
    return min(psnr_db, PSNR_CAP)


# ---- the full-size baseline ------------------------------------------------------------------------------------


@dataclass
class FullSize:
    """The original encoded at full size with ``codec`` at ``quality``: ``data`` is the file."""

    codec: str
    quality: int
    data: bytes = field(repr=False)

    @property
    def bytes(self) -> int:
        return len(self.data)


def encode_at_bytes(pixels: ImageLike, target_bytes: int, codec: str = "avif") -> FullSize | None:
    """Encode ``pixels`` at full size with ``codec``, the quality (1-100) bisected so that the file size is as
    close as possible to ``target_bytes`` (the closer of the largest quality at or under the budget and the next
    one up). About 4-6 encodes. ``None`` when the encoder would not use ``codec`` for these pixels (16-bit images
    are stored as 16-bit PNG whatever the codec asked)."""
    if codec not in FULL_SIZE_CODECS:
        raise ValueError(f"full-size codec must be one of {', '.join(FULL_SIZE_CODECS)}, got {codec!r}")
    sizes: dict[int, bytes] = {}

    def blob(quality: int) -> bytes:
        if quality not in sizes:
            sizes[quality] = media.encode_stored(pixels, codec, quality)
        return sizes[quality]

    first = blob(1)
    if getattr(first, "codec", codec) != codec:
        return None
    if len(first) >= target_bytes:
        return FullSize(codec, 1, first)
    # The file size grows about exponentially with the quality, so the search interpolates on log(bytes): first
    # along a typical slope from quality 1 (aiming a little over the target, to bracket it), then between the
    # bracket's ends; an interpolation that does not halve the bracket is followed by a plain bisection.
    lo, hi = 1, 101  # invariant: blob(lo) <= target < blob(hi); 101 stands for "above", never encoded
    bisect = False
    while hi - lo > 1:
        if bisect:
            mid = (lo + hi) // 2
        elif hi > 100:
            slope = _LOG_BYTES_PER_QUALITY if lo == 1 else math.log(len(blob(lo)) / len(first)) / (lo - 1)
            guess = lo + math.log(1.15 * target_bytes / len(blob(lo))) / max(slope, 1e-3)
            mid = min(100, max(lo + 1, round(guess)))
        else:
            a, b = math.log(len(blob(lo))), math.log(len(blob(hi)))
            guess = lo + (math.log(target_bytes) - a) / max(b - a, 1e-9) * (hi - lo)
            mid = min(hi - 1, max(lo + 1, round(guess)))
        interpolated, width = not bisect and hi <= 100, hi - lo
        if len(blob(mid)) <= target_bytes:
            lo = mid
        else:
            hi = mid
        bisect = interpolated and (hi - lo) * 2 > width
    best = min((q for q in (lo, hi) if q <= 100), key=lambda q: (abs(len(blob(q)) - target_bytes), q))
    return FullSize(codec, best, blob(best))


def same_bytes(full_bytes: int, budget: int) -> bool:
    """Whether a full-size file of ``full_bytes`` is a fair comparison for a stored form of ``budget`` bytes."""
    return full_bytes <= budget * (1 + SAME_BYTES_TOLERANCE)


def restore_full_size(full: FullSize, record: media.ImageRecord) -> ImageLike:
    """What a user would get back had ``full`` been stored: decoded and re-encoded like the original file (its
    format, mode and quality), as the service's retrieval does for an image stored without downscaling."""
    restored, _ = media.encode_restored(media.decode_stored(full.data), record)
    return media.decode(restored, media.DecodeLimits(max_bytes=1 << 40, max_megapixels=1e6)).pixels


# ---- stored forms, restored through the engine -----------------------------------------------------------------


@dataclass
class Restored:
    """A stored form of a downscaled image and what each model made of it at the original size."""

    blob: media.StoredBlob = field(repr=False)
    encode_s: float
    decode_s: float
    images: dict[str, ImageLike] = field(repr=False)


def as_mode(img: ImageLike, mode: str | None) -> ImageLike:
    """The retrieved image in the original's mode, as restoration writes it (lossy WebP brings grey back as RGB)."""
    if not isinstance(img, Image.Image) or mode is None or img.mode == mode:
        return img
    return img.convert(mode)


def restore_stored(
    engine: Engine,
    original: ImageLike,
    small: ImageLike,
    codec: str,
    quality: int,
    *,
    models: Iterable[str] = ("span", "bicubic"),
    **options: object,
) -> Restored:
    """Encode ``small`` with ``codec`` at ``quality`` (0 = lossless: ignored), decode it, and upscale it back to
    ``original``'s size with each of ``models``. ``options`` go to :func:`upscaler.media.encode_stored`."""
    t0 = time.perf_counter()
    blob = media.encode_stored(small, codec, quality or 100, **options)  # type: ignore[arg-type]
    t1 = time.perf_counter()
    back = media.decode_stored(blob)
    t2 = time.perf_counter()
    size, mode = dimensions(original), getattr(original, "mode", None)
    images = {m: as_mode(engine.upscale(back, model=m, size=size), mode) for m in models}
    return Restored(blob, t1 - t0, t2 - t1, images)


# ---- the storage plan ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    scale: float
    codec: str
    quality: int

    def __str__(self) -> str:
        return f"x{self.scale:g} {self.codec}" + (f" q{self.quality}" if self.quality else "")


@dataclass
class PlanRow:
    """One image under one setting: bytes, and fidelity of the model, bicubic and the full-size codec."""

    setting: Setting
    original_bytes: int
    pixels: int
    stored_bytes: int
    model: Scores
    bicubic: Scores
    full_size: FullSize | None
    full_size_scores: Scores | None

    @property
    def bpp(self) -> float:
        return 8.0 * self.stored_bytes / self.pixels

    @property
    def saved_percent(self) -> float:
        return 100.0 * (1.0 - self.stored_bytes / max(self.original_bytes, 1))

    @property
    def compared(self) -> bool:
        """The full-size codec was scored at (about) the same bytes (see :data:`SAME_BYTES_TOLERANCE`)."""
        return (
            self.full_size is not None
            and self.full_size_scores is not None
            and same_bytes(self.full_size.bytes, self.stored_bytes)
        )

    @property
    def unreachable(self) -> bool:
        """Even the smallest full-size file is larger than the stored form: only downscaling reaches this rate."""
        return self.full_size is not None and not same_bytes(self.full_size.bytes, self.stored_bytes)

    @property
    def gain_db(self) -> float:
        """Model PSNR-Y minus the full-size codec's at the same bytes (positive: downscale + SR wins); ``nan``
        when there was no comparison at the same bytes."""
        if not self.compared:
            return math.nan
        return capped(self.model.psnr_y) - capped(self.full_size_scores.psnr_y)  # type: ignore[union-attr]


def plan_image(
    engine: Engine,
    original: ImageLike,
    original_bytes: int,
    settings: Sequence[Setting],
    *,
    model: str = "span",
    full_size_codec: str = "avif",
    on_setting: object = None,
) -> list[PlanRow]:
    """Every setting for one image: downscale by its scale with the engine, store with its codec, restore with
    ``model`` and with bicubic (the same stored bytes), and encode the original at full size with
    ``full_size_codec`` at the same bytes. Scores on the decoded pixels (PSNR-Y/SSIM-Y with crop = scale).
    ``on_setting`` (a callable, if given) is called after each setting, for a progress bar."""
    width, height = dimensions(original)
    mode = getattr(original, "mode", None)
    smalls: dict[float, ImageLike] = {}
    rows = []
    for setting in settings:
        if setting.scale not in smalls:
            smalls[setting.scale] = engine.downscale(original, setting.scale)
        restored = restore_stored(
            engine, original, smalls[setting.scale], setting.codec, setting.quality, models=(model, "bicubic")
        )
        crop = crop_for(setting.scale)
        full = encode_at_bytes(original, len(restored.blob), full_size_codec)
        full_scores = None
        if full is not None:
            full_scores = score(original, as_mode(media.decode_stored(full.data), mode), crop)
        rows.append(
            PlanRow(
                setting,
                original_bytes,
                width * height,
                len(restored.blob),
                score(original, restored.images[model], crop),
                score(original, restored.images["bicubic"], crop),
                full,
                full_scores,
            )
        )
        if callable(on_setting):
            on_setting()
    return rows


def mean(values: Iterable[float]) -> float:
    """Mean of the finite values (``nan`` when there are none)."""
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def median(values: Iterable[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.median(finite)) if finite else math.nan


# ---- videos ----------------------------------------------------------------------------------------------------


def sample_indices(frames: int, count: int) -> list[int]:
    """``count`` frame numbers spread evenly over ``frames`` (first and last included; all when there are fewer)."""
    if frames <= count:
        return list(range(frames))
    return sorted({round(i * (frames - 1) / (count - 1)) for i in range(count)}) if count > 1 else [frames // 2]


def _packets(path: str | Path) -> int:
    """Frames of ``path``'s first video stream, counted from its packets (nothing decoded)."""
    import av

    with av.open(str(path)) as container:
        return sum(1 for packet in container.demux(container.streams.video[0]) if packet.size)


def _frames_at(path: str | Path, indices: list[int]) -> tuple[list[np.ndarray], int]:
    """The RGB frames of ``path``'s first video stream at ``indices`` (decode order), and how many frames it has."""
    import av

    wanted, out, count = set(indices), [], 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for count, frame in enumerate(container.decode(stream), 1):
            if count - 1 in wanted:
                out.append(frame.to_ndarray(format="rgb24"))
    return out, count


def score_video(source: str | Path, restored: str | Path, samples: int, crop_border: int = 0) -> tuple[Scores, int]:
    """Score ``restored`` against ``source`` (same size, same frames) on ``samples`` frames spread over the clip:
    the mean of each frame's :func:`score` (PSNR ``inf`` counted as :data:`PSNR_CAP` unless every frame is
    identical), and the number of frames. Raises ValueError when the frame counts or sizes differ."""
    indices = sample_indices(_packets(source), samples)
    reference, count = _frames_at(source, indices)
    back, back_count = _frames_at(restored, indices)
    if back_count != count:
        raise ValueError(f"the restored video has {back_count} frames, its source {count}")
    scores = [score(a, b, crop_border) for a, b in zip(reference, back, strict=True)]
    psnrs = [s.psnr_y for s in scores]
    psnr_y = math.inf if all(math.isinf(p) for p in psnrs) else mean(capped(p) for p in psnrs)
    return Scores(psnr_y, mean(s.ssim_y for s in scores), mean(s.orb for s in scores)), count
