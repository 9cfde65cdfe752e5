"""Quality-targeted storage: the cheapest stored form that still comes back at the fidelity asked for.

The caller states a target (PSNR-Y in dB, or SSIM-Y); :func:`choose_form` tries stored forms — no downscale, x2,
x4, each with a stored codec at some quality — by *running the retrieval the service will run later* (the
``restore`` callable: same decoder, same model, same re-encoding to the original's format) and measuring the result
against the original, and keeps the smallest that meets the target. The original file itself is always a
candidate (fidelity: exact), so nothing is ever stored larger than the original, and a target nothing smaller
reaches falls back to the original bytes.

The search does not try every combination:

* scales are tried from the most aggressive (x4) down; a scale whose smallest encoding is already no smaller than
  the best form found so far is skipped without running the model;
* per scale, the top of the quality ladder is tried first: if even that misses the target, the scale's lossless
  form is the only other chance (one more model run), and lower qualities are never tried;
* otherwise the ladder is bisected (the fidelity grows with the quality): about log2(10) = 3-4 model runs;
* AVIF is the lossy codec at x2 and x4 (it won every point of the size/fidelity front in
  ``benchmarks/bench_codecs.py``); at scale 1 no model runs, so WebP and JPEG are bisected too.

PSNR and SSIM are measured on Y (BT.601), over the whole image (no border crop: the user gets the whole image).

A cheaper search, ``fast`` (a target like ``"psnr:35:fast"``), runs the same search with plain bicubic in place of
the model — a fidelity the model almost always exceeds, at a tiny fraction of its cost — then runs the real
retrieval once on the form it found. If that meets the target (the usual case) it is kept; if not, the exact search
runs after all. So the stored form always meets the target; it may only weigh more than the exact search's, since
bicubic undersells what the model restores. ``benchmarks/bench_quality.py`` measures both, bytes and seconds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from upscaler.engine.pixels import ImageLike
from upscaler.errors import InvalidInput
from upscaler.metrics import psnr, ssim

#: Qualities tried, low to high (bisected).
LADDER = (20, 30, 40, 50, 60, 70, 80, 88, 94, 98)
METRICS = ("psnr", "ssim")
SEARCHES = ("exact", "fast")


@dataclass(frozen=True)
class Target:
    metric: str  # "psnr" (dB, Y) or "ssim" (Y)
    value: float
    search: str = "exact"  # or "fast": searched with bicubic, the chosen form verified with the model

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise InvalidInput(f"the quality target's metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        if self.search not in SEARCHES:
            raise InvalidInput(f"the quality target's search must be one of {', '.join(SEARCHES)}, got {self.search!r}")
        lo, hi = (10.0, 100.0) if self.metric == "psnr" else (0.0, 1.0)
        if not (isinstance(self.value, int | float) and math.isfinite(self.value) and lo <= self.value <= hi):
            raise InvalidInput(f"a {self.metric} target must be between {lo:g} and {hi:g}, got {self.value!r}")

    @classmethod
    def parse(cls, text: str) -> Target:
        """``"psnr:35"``, ``"35"`` (dB), ``"ssim:0.95"``, each optionally followed by ``:fast`` or ``:exact``."""
        spec = text.strip().lower()
        search = "exact"
        head, _, tail = spec.rpartition(":")
        if tail in SEARCHES:
            spec, search = head, tail
        metric, _, value = spec.rpartition(":")
        try:
            return cls(metric or "psnr", float(value), search)
        except ValueError:
            raise InvalidInput(
                f"a quality target is like 'psnr:35', 'ssim:0.95' or 'psnr:35:fast', got {text!r}"
            ) from None

    def score(self, reference: ImageLike, restored: ImageLike) -> float:
        return psnr(reference, restored) if self.metric == "psnr" else ssim(reference, restored)

    def met(self, score: float) -> bool:
        return score >= self.value

    def __str__(self) -> str:
        return f"{self.metric}>={self.value:g}" + (f" ({self.search})" if self.search != "exact" else "")


@dataclass
class Form:
    """One stored form: how it is made, what it weighs, and the fidelity measured after a real retrieval."""

    scale: float
    codec: str  # a stored codec, or "original" (the file as it came)
    quality: int
    data: bytes = field(repr=False)
    score: float

    @property
    def bytes(self) -> int:
        return len(self.data)


@dataclass
class Decision:
    form: Form
    target: Target
    tried: list[tuple[float, str, int, int, float]]  # (scale, codec, quality, bytes, score), in order
    model_runs: int
    seconds: float
    megapixels: float

    @property
    def seconds_per_megapixel(self) -> float:
        return self.seconds / max(self.megapixels, 1e-9)

    def describe(self) -> dict[str, object]:
        return {
            "target": str(self.target),
            "scale": self.form.scale,
            "codec": self.form.codec,
            "quality": self.form.quality,
            "bytes": self.form.bytes,
            "fidelity": None if math.isinf(self.form.score) else round(self.form.score, 4),
            "search": self.target.search,
            "candidates_tried": len(self.tried),
            "model_runs": self.model_runs,
            "seconds": round(self.seconds, 3),
            "seconds_per_megapixel": round(self.seconds_per_megapixel, 3),
        }


#: encode(scale, codec, quality) -> stored bytes of that form (the downscale is the caller's, cached per scale)
Encoder = Callable[[float, str, int], bytes]
#: restore(scale, stored bytes) -> the image the user would get back (decoded), at the original's size
Restorer = Callable[[float, bytes], ImageLike]


def choose_form(
    original: ImageLike,
    original_bytes: bytes,
    target: Target,
    encode: Encoder,
    restore: Restorer,
    *,
    proxy: Restorer | None = None,
    scales: tuple[float, ...] = (4.0, 2.0, 1.0),
    ladder: tuple[int, ...] = LADDER,
    scale1_codecs: tuple[str, ...] = ("avif", "webp", "jpeg"),
) -> Decision:
    """The smallest form meeting ``target`` (see the module notes), or the original bytes. With ``target.search``
    ``"fast"``, ``proxy`` (a cheap restorer, e.g. bicubic) stands in for ``restore`` during the search, and the
    form it finds is verified once with ``restore``; a form that fails that check sends the exact search on."""
    if target.search == "fast" and proxy is not None:
        start = time.perf_counter()
        guess = _search(original, original_bytes, target, encode, proxy, scales, ladder, scale1_codecs, cheap=True)
        form = guess.form
        if form.scale > 1:  # scale 1 forms need no model: the proxy's score is the real one
            form = Form(
                form.scale, form.codec, form.quality, form.data, target.score(original, restore(form.scale, form.data))
            )
            guess.tried.append((form.scale, form.codec, form.quality, form.bytes, form.score))
            guess.model_runs += 1
        if target.met(form.score):
            return Decision(form, target, guess.tried, guess.model_runs, time.perf_counter() - start, guess.megapixels)
        exact = _search(original, original_bytes, target, encode, restore, scales, ladder, scale1_codecs)
        exact.tried[:0], exact.model_runs = guess.tried, exact.model_runs + guess.model_runs
        exact.seconds = time.perf_counter() - start
        return exact
    return _search(original, original_bytes, target, encode, restore, scales, ladder, scale1_codecs)


def _search(
    original: ImageLike,
    original_bytes: bytes,
    target: Target,
    encode: Encoder,
    restore: Restorer,
    scales: tuple[float, ...],
    ladder: tuple[int, ...],
    scale1_codecs: tuple[str, ...],
    cheap: bool = False,
) -> Decision:
    start = time.perf_counter()
    best = Form(1.0, "original", 0, original_bytes, math.inf)
    tried: list[tuple[float, str, int, int, float]] = []
    model_runs = 0

    def measure(scale: float, codec: str, quality: int, data: bytes) -> Form:
        nonlocal model_runs
        if scale > 1 and not cheap:
            model_runs += 1
        form = Form(scale, codec, quality, data, target.score(original, restore(scale, data)))
        tried.append((scale, codec, quality, form.bytes, form.score))
        return form

    def consider(form: Form) -> None:
        nonlocal best
        if target.met(form.score) and form.bytes < best.bytes:
            best = form

    for scale in sorted(scales, reverse=True):
        for codec in scale1_codecs if scale == 1 else ("avif",):
            sizes: dict[int, bytes] = {}

            def blob(i: int, codec: str = codec, scale: float = scale, sizes: dict[int, bytes] = sizes) -> bytes:
                if i not in sizes:
                    sizes[i] = encode(scale, codec, ladder[i])
                return sizes[i]

            if len(blob(0)) >= best.bytes:
                continue  # even the lowest quality is no smaller than what we have: cannot win
            top = measure(scale, codec, ladder[-1], blob(len(ladder) - 1))
            if not target.met(top.score):
                if scale > 1 and codec == "avif":  # the lossless form is this scale's last chance
                    lossless = encode(scale, "png", 100)
                    if len(lossless) < best.bytes:
                        consider(measure(scale, "png", 100, lossless))
                continue
            lo, hi, found = 0, len(ladder) - 1, top  # found: the lowest quality measured to meet the target
            while lo < hi:
                mid = (lo + hi) // 2
                if len(blob(mid)) >= best.bytes:  # too big to win: only lower qualities could, no model run
                    hi = mid
                    continue
                form = measure(scale, codec, ladder[mid], blob(mid))
                if target.met(form.score):
                    hi, found = mid, form
                else:
                    lo = mid + 1
            consider(found)
    h, w = _size(original)
    return Decision(best, target, tried, model_runs, time.perf_counter() - start, w * h / 1e6)


def _size(image: ImageLike) -> tuple[int, int]:
    shape = getattr(image, "shape", None)
    if shape is not None:
        return int(shape[0]), int(shape[1])
    return image.height, image.width  # type: ignore[union-attr]
