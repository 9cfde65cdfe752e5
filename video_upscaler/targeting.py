"""Quality-targeted video: choose the stored form (scale x codec x CRF) that restores to a fidelity target.

The counterpart of the image feature (``upscaler.quality``). A job with a ``target`` (PSNR-Y or SSIM-Y of the
restored video against its source, as an upscale delivers it) is not sized by ``min_size``/``max_size``: sample
segments of the source (``segments`` runs of ``length`` consecutive frames, spread over the clip) are encoded at
each candidate scale (1 = full size, 2, 4) in each codec, decoded, restored through the job's own restoration
path (the provider and model an upscale job would use) and encoded as an upscale's output is (``deliver``), then
scored against the source frames; a video stored at full size is delivered as stored (no second encode). For each
scale and codec the highest CRF that still meets the target is found by bisection (fidelity falls as the CRF
rises); the candidate with the fewest bytes wins. Full size with a modern codec is a candidate, as for images.
Then the whole clip is encoded with the choice and checked again on the same frames of the real stored video;
while it misses, the CRF steps down. The decision and the measured fidelity go into the job record.

Restoring the samples is nearly all of a decision's time (the model: 86 % of it at 640x360, timed), so the
search restores only what can still win. Full size needs no model and is searched first, for every codec (the
honest baseline, each codec tuned to the target). A downscaled candidate then only matters where its bytes are
below the fewest bytes that already meet the target: its CRFs are first narrowed by encoding alone (bytes fall
as the CRF rises) to those that would store fewer bytes, and if the lowest of those misses the target, none of
them can meet it and the scale x codec is dropped after one restoration (``pruned``, with the reason). Frames
that decode identically (a still scene) are restored once. Under the same monotonicity the bisection already
assumes, the choice is the one an exhaustive search makes.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from upscaler.errors import InvalidInput
from upscaler.media.video import CODECS, VideoEncoding, demote_realtime_threads, encoder_available
from upscaler.quality import Target
from upscaler.videos import encodable_size, parse_target

__all__ = ["Candidate", "Decision", "Pruned", "choose", "parse_target", "sample_indices"]

log = logging.getLogger("video_upscaler.targeting")

SCALES = (1, 2, 4)
#: CRFs searched per codec: from a high quality to the codec's end of the scale.
CRF_RANGE = {"h264": (12, 51), "hevc": (12, 51), "av1": (16, 63)}
#: Scales that would store frames with a side under this are not tried (a codec's own floor is checked too).
MIN_SIDE = 16

Restore = Callable[[np.ndarray, tuple[int, int]], np.ndarray]


@dataclass
class Candidate:
    scale: int
    codec: str
    crf: int
    size: tuple[int, int]
    bytes: int  # of the sample segments, encoded
    fidelity: float  # the target's metric, mean over the sample frames


@dataclass
class Pruned:
    """A scale x codec the search dropped without finding its best CRF, because it cannot win."""

    scale: int
    codec: str
    crf: int  # the CRF it was last measured at
    bytes: int  # its sample bytes there
    fidelity: float | None  # None: not restored (its bytes alone rule it out)
    why: str


@dataclass
class Decision:
    target: str
    chosen: Candidate
    tried: list[Candidate] = field(default_factory=list)  # the best CRF of each scale x codec that met the target
    sample_frames: int = 0
    pruned: list[Pruned] = field(default_factory=list)
    restorations: int = 0  # sample frames run through the restoration (the model), all candidates together

    def finalists(self, count: int) -> list[Candidate]:
        """The candidates to encode over the whole clip: ``chosen``, then the best of each other codec, then the
        rest, each group by fewest sample bytes; ``count`` of them. Codecs first, because what short segments get
        wrong is mostly the codecs' ranking (they are mostly key frames), not the scales'."""
        ranked = sorted(self.tried, key=lambda c: (c is not self.chosen, c.bytes))
        firsts = [c for i, c in enumerate(ranked) if all(o.codec != c.codec for o in ranked[:i])]
        return (firsts + [c for c in ranked if c not in firsts])[: max(1, count)]

    def to_dict(self) -> dict[str, Any]:
        """The job record's ``decision``: the choice, and every scale x codec's best CRF measured."""
        return {
            "target": self.target,
            "scale": self.chosen.scale,
            "codec": self.chosen.codec,
            "crf": self.chosen.crf,
            "size": f"{self.chosen.size[0]}x{self.chosen.size[1]}",
            "sample_frames": self.sample_frames,
            "sample_fidelity": round(self.chosen.fidelity, 4),
            "candidates": [
                {
                    "scale": c.scale,
                    "codec": c.codec,
                    "crf": c.crf,
                    "sample_bytes": c.bytes,
                    "fidelity": round(c.fidelity, 4),
                }
                for c in self.tried
            ],
            "pruned": [
                {
                    "scale": p.scale,
                    "codec": p.codec,
                    "crf": p.crf,
                    "sample_bytes": p.bytes,
                    "fidelity": None if p.fidelity is None else round(p.fidelity, 4),
                    "why": p.why,
                }
                for p in self.pruned
            ],
            "restorations": self.restorations,
        }


def sample_indices(frames: int, segments: int = 3, length: int = 12) -> list[int]:
    """Frame numbers of ``segments`` runs of ``length`` consecutive frames spread over ``frames`` (all of them
    when the clip is that short)."""
    if frames <= segments * length:
        return list(range(frames))
    starts = np.linspace(0, frames - length, segments).round().astype(int)
    return sorted({int(s) + i for s in starts for i in range(length)})


def read_frames(path: Path, indices: list[int]) -> list[np.ndarray]:
    """The RGB frames of ``path`` at ``indices`` (decode order = presentation order for our encodes)."""
    import av

    wanted, out = set(indices), []
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(c.decode(stream)):
            if i in wanted:
                out.append(frame.to_ndarray(format="rgb24"))
            if i >= indices[-1]:
                break
    return out


def runs_of(indices: list[int]) -> list[list[int]]:
    """Consecutive runs of frame numbers (each sample segment is encoded on its own, starting with a keyframe)."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def count_frames(path: Path) -> int:
    """Frames of a video whose container does not say (decoded, to count them)."""
    import av

    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(c.streams.video[0]))


def encode_decode(frames: list[np.ndarray], encoding: VideoEncoding, rate: Fraction) -> tuple[int, list[np.ndarray]]:
    """Encode ``frames`` (one segment) as ``encoding`` in memory; its bytes and its decoded frames."""
    import av

    h, w = frames[0].shape[:2]
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream(encoding.spec.encoder, rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, encoding.pix_fmt((w, h))
        stream.options = encoding.options()
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
            if i == 0:  # the encoder is open and has made its threads
                demote_realtime_threads()
        for packet in stream.encode(None):
            out.mux(packet)
    data = buf.getvalue()
    with av.open(io.BytesIO(data)) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]
    return len(data), decoded


def delivered(
    restored: list[np.ndarray], runs: list[list[int]], deliver: VideoEncoding | None, rate: Fraction
) -> list[np.ndarray]:
    """``restored`` (the sample frames, in the order of ``runs``) as an upscale delivers them: each segment encoded
    as ``deliver`` says and decoded (None: as they are)."""
    if deliver is None:
        return restored
    out: list[np.ndarray] = []
    start = 0
    for run in runs:
        out += encode_decode(restored[start : start + len(run)], deliver, rate)[1]
        start += len(run)
    return out


def stored_size(width: int, height: int, scale: int) -> tuple[int, int]:
    """The even frame size a clip is stored at for ``scale``."""
    return encodable_size((round(width / scale), round(height / scale)))


def score(target: Target, reference: list[np.ndarray], restored: list[np.ndarray]) -> float:
    return float(np.mean([target.score(r, t) for r, t in zip(reference, restored, strict=True)]))


class _Series:
    """One scale x codec of the search: its encodes by CRF (kept, so bytes alone cost one encode) and their
    restored fidelity."""

    def __init__(
        self,
        scale: int,
        codec: str,
        size: tuple[int, int],
        small: list[np.ndarray],
        reference: list[np.ndarray],
        runs: list[list[int]],
        target: Target,
        restore: Restore,
        rate: Fraction,
        deliver: VideoEncoding | None = None,
    ) -> None:
        self.scale, self.codec, self.size, self.small, self.reference = scale, codec, size, small, reference
        self.runs = runs
        self.offsets = np.cumsum([0] + [len(r) for r in runs])
        self.target, self.restore, self.rate, self.deliver = target, restore, rate, deliver
        self.encoded: dict[int, tuple[int, list[np.ndarray]]] = {}
        self.restored = 0  # frames run through ``restore``

    def encode(self, crf: int) -> int:
        """Sample bytes at ``crf`` (each segment encoded on its own); the decoded frames are kept for ``measure``."""
        if crf not in self.encoded:
            encoding = VideoEncoding.choose(self.codec, crf=crf)
            total, decoded = 0, []
            for k in range(len(self.offsets) - 1):
                n, frames = encode_decode(self.small[self.offsets[k] : self.offsets[k + 1]], encoding, self.rate)
                total, decoded = total + n, decoded + frames
            self.encoded[crf] = (total, decoded)
        return self.encoded[crf][0]

    def measure(self, crf: int) -> Candidate:
        """The candidate at ``crf``: decoded, restored (frames that decode identically once) and scored."""
        total = self.encode(crf)
        decoded = self.encoded[crf][1]
        width, height = self.reference[0].shape[1], self.reference[0].shape[0]
        restored = decoded
        if self.scale > 1:
            seen: dict[bytes, np.ndarray] = {}
            restored = []
            for f in decoded:
                key = hashlib.blake2b(f.tobytes(), digest_size=16).digest()
                if key not in seen:
                    seen[key] = self.restore(f, (width, height))
                    self.restored += 1
                restored.append(seen[key])
            restored = delivered(restored, self.runs, self.deliver, self.rate)
        return Candidate(self.scale, self.codec, crf, self.size, total, score(self.target, self.reference, restored))


def choose(
    reference: list[np.ndarray],
    runs: list[list[int]],
    target: Target,
    restore: Restore,
    downscale: Restore,
    *,
    rate: Fraction,
    codecs: tuple[str, ...] | None = None,
    scales: tuple[int, ...] = SCALES,
    prune: bool = True,
    deliver: VideoEncoding | None = None,
) -> Decision:
    """The candidate with the fewest sample bytes that meets ``target``. ``reference``: the sample frames, in the
    order of ``runs`` (their frame numbers); ``restore(rgb, size)`` brings a stored frame back to the source size,
    ``downscale(rgb, size)`` makes the stored frame; ``deliver``: the encoding an upscale writes restored frames
    in (None: scored as restored). ``prune=False`` finds the best CRF of every scale x codec
    (what the module's docstring says the pruned search skips, for comparison)."""
    height, width = reference[0].shape[:2]
    codecs = codecs or tuple(name for name, c in CODECS.items() if encoder_available(c.encoder))
    tried: list[Candidate] = []
    pruned: list[Pruned] = []
    restored_frames = 0
    full_first = sorted(scales, key=lambda s: s != 1)  # full size needs no model: searched first, as the bound

    for scale in full_first:
        size = stored_size(width, height, scale) if scale > 1 else (width, height)
        if min(size) < MIN_SIDE:
            continue
        small = [downscale(f, size) if scale > 1 else f for f in reference]
        fewest = {c.codec: c.bytes for c in tried if c.scale == 1}
        for codec in sorted(codecs, key=lambda c: fewest.get(c, math.inf)):  # the likely winner first: a tighter bound
            series = _Series(scale, codec, size, small, reference, runs, target, restore, rate, deliver)
            encode, measure = series.encode, series.measure
            lo, hi = CRF_RANGE[codec]
            try:
                encode(lo)
            except InvalidInput as exc:  # this encoder cannot write frames this small, say
                log.info("candidate skipped", extra={"scale": scale, "codec": codec, "reason": exc.message})
                continue
            bound = min((c.bytes for c in tried), default=None) if prune and scale > 1 else None
            if bound is not None and encode(lo) >= bound:
                if encode(hi) >= bound:
                    why = f"at crf {hi}, its highest, it stores {encode(hi)} bytes, not fewer than {bound}"
                    pruned.append(Pruned(scale, codec, hi, encode(hi), None, why))
                    continue
                below = hi  # the lowest CRF whose bytes are below the bound lies in (lo, below]
                while below - lo > 1:
                    mid = (lo + below) // 2
                    if encode(mid) < bound:
                        below = mid
                    else:
                        lo = mid
                lo = below
            best = measure(lo)
            if not target.met(best.fidelity):
                why = (
                    "misses the target at its best quality"
                    if lo == CRF_RANGE[codec][0]
                    else f"misses the target at crf {lo}, the lowest that stores fewer bytes than {bound}"
                )
                pruned.append(Pruned(scale, codec, lo, best.bytes, best.fidelity, why))
                restored_frames += series.restored
                continue
            while hi - lo > 1:  # invariant: lo meets the target; the highest CRF that does lies in [lo, hi]
                mid = (lo + hi) // 2
                candidate = measure(mid)
                if target.met(candidate.fidelity):
                    lo, best = mid, candidate
                else:
                    hi = mid
            if hi == CRF_RANGE[codec][1] and hi != best.crf:
                top = measure(hi)
                if target.met(top.fidelity):
                    best = top
            tried.append(best)
            restored_frames += series.restored
    if not tried:
        raise InvalidInput(f"no stored form reaches the target {target} (full size at the best quality included)")
    chosen = min(tried, key=lambda c: (c.bytes, -c.scale))
    return Decision(str(target), chosen, tried, len(reference), pruned, restored_frames)
