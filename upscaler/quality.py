"""Quality-targeted storage: the cheapest stored form that still comes back at the fidelity asked for.

The caller states a target:

* a fidelity, ``psnr:35`` (PSNR-Y in dB) or ``ssim:0.95`` (SSIM-Y): the smallest form whose retrieval meets it;
* ``exact``: the smallest form that gives back the original *file*, byte for byte: a JPEG recompressed losslessly
  into JPEG XL (``jxl-jpeg``), a lossless form whose restored file is identical to the original, else the
  original bytes;
* a byte budget, ``bpp:0.1`` (bits per pixel of the original) or ``bytes:50000``: the best PSNR-Y whose stored
  bytes stay within it (the dual of a fidelity target).

Candidates (:data:`FORMS`): every scale (1, 2, 4) x stored codec — AVIF 4:2:0 and 4:4:4, JPEG XL lossy, plus WebP
and JPEG at full size; JPEG XL lossless, WebP lossless and PNG; ``jxl-jpeg`` for JPEG inputs; and the original
file itself (fidelity: exact), so nothing is ever stored larger than the original. Each candidate is scored by
*running the retrieval the service will run later* (the ``restore`` callable: same decoder, same model, same
re-encoding to the original's format) and comparing with the original. A full-size form runs no model.

For a lossy candidate, the smallest integer quality (1-100) meeting the target is found by bisection (the
fidelity grows with the quality), with the real retrieval in the loop. A quality whose bytes are already no
smaller than the best form found so far is not measured at all (it cannot win: only lower qualities could), so a
candidate that cannot beat the best costs encodes, not retrievals. Full-size candidates (no model) are tried
first, so the model runs only where a downscaled form can still be smaller. For a downscaled candidate the model
runs are placed by bicubic's scores corrected by the model's measured gain over bicubic (``_Search._guided``): the
same answer as bisecting, in fewer runs; forms whose stored bytes are identical (neighbouring low qualities often
are) are restored once. Each single codec tuned at full size
to the target is one of the candidates, with the same quality search: the choice is never larger than the best
of them (``benchmarks/bench_quality.py`` measures it).

``fast`` (``psnr:35:fast``) runs the same search with plain bicubic in place of the model (full-size candidates
need no model either way): per scale, the model's gain over bicubic is measured once (one retrieval, on a form
near the target), and a downscaled form passes when bicubic plus that gain meets the target. The form found is
then checked with one real retrieval; a form whose check fails sends the exact search on, so the stored form
always meets the target. About 3 model runs instead of 10-30.

PSNR and SSIM are measured on Y (BT.601), over the whole image (no border crop: the user gets the whole image).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from upscaler.engine.pixels import ImageLike
from upscaler.errors import InvalidInput
from upscaler.metrics import psnr, ssim

METRICS = ("psnr", "ssim")
BUDGETS = ("bpp", "bytes")
SEARCHES = ("exact", "fast")
QUALITIES = (1, 100)  # integer qualities searched, inclusive


@dataclass(frozen=True)
class Candidate:
    """One way to store the image: a scale and a stored codec (``jxl-jpeg``: the JPEG file recompressed), and the
    model that restores it ("": for a downscaled form the restorer's own, the default; for a full-size form none)."""

    scale: float
    codec: str
    model: str = ""

    @property
    def lossy(self) -> bool:
        return self.codec not in LOSSLESS and self.codec != "jxl-jpeg"

    @property
    def runs_model(self) -> bool:
        """Whether its retrieval runs a model: a downscaled form, or a full-size one named with its restorer."""
        return self.scale > 1 or bool(self.model)

    def __str__(self) -> str:
        return f"x{self.scale:g} {self.codec}" + (f" {self.model}" if self.model else "")


def with_models(forms: tuple[Candidate, ...], models: dict[float, tuple[str, ...]]) -> tuple[Candidate, ...]:
    """``forms`` and, after them, each lossy form again for every model in ``models[scale]``: the same stored bytes
    restored another way (a model fine-tuned on stored forms, issue 19; at scale 1, a restorer of full-size forms
    that gives back the same size). Their forms name the model, and the stored record keeps it, so an object
    restores with the model its form was measured with."""
    extra = [Candidate(c.scale, c.codec, m) for c in forms if c.lossy for m in models.get(c.scale, ())]
    return (*forms, *(c for c in extra if c not in forms))


LOSSLESS = ("jxl-lossless", "webp-lossless", "png")
#: Candidates, in the order tried: full size first (no model run), then downscaled forms.
FORMS: tuple[Candidate, ...] = (
    Candidate(1.0, "jxl-jpeg"),
    *(Candidate(1.0, c) for c in ("jxl", "avif-420", "avif", "webp", "jpeg", *LOSSLESS)),
    *(Candidate(s, c) for s in (2.0, 4.0) for c in ("jxl", "avif-420", "avif", "jxl-lossless")),
)


@dataclass(frozen=True)
class Target:
    metric: str  # "psnr" (dB, Y), "ssim" (Y), "exact" (the original file), "bpp" or "bytes" (a budget)
    value: float = 0.0
    search: str = "exact"  # or "fast": searched with bicubic, the chosen form verified with the model

    def __post_init__(self) -> None:
        if self.metric not in (*METRICS, *BUDGETS, "exact"):
            known = ", ".join((*METRICS, *BUDGETS, "exact"))
            raise InvalidInput(f"the quality target's metric must be one of {known}, got {self.metric!r}")
        if self.search not in SEARCHES:
            raise InvalidInput(f"the quality target's search must be one of {', '.join(SEARCHES)}, got {self.search!r}")
        if self.metric == "exact":
            return
        lo, hi = {"psnr": (10.0, 100.0), "ssim": (0.0, 1.0), "bpp": (1e-4, 64.0), "bytes": (1.0, 1e12)}[self.metric]
        if not (isinstance(self.value, int | float) and math.isfinite(self.value) and lo <= self.value <= hi):
            raise InvalidInput(f"a {self.metric} target must be between {lo:g} and {hi:g}, got {self.value!r}")

    @classmethod
    def parse(cls, text: str) -> Target:
        """``"psnr:35"``, ``"35"`` (dB), ``"ssim:0.95"``, each optionally followed by ``:fast`` or ``:exact``;
        ``"exact"``; ``"bpp:0.1"``, ``"bytes:50000"``."""
        spec = str(text).strip().lower()
        if spec == "exact":
            return cls("exact")
        search = "exact"
        head, _, tail = spec.rpartition(":")
        if tail in SEARCHES and head:
            spec, search = head, tail
        metric, _, value = spec.rpartition(":")
        try:
            return cls(metric or "psnr", float(value), search)
        except ValueError:
            raise InvalidInput(
                "a quality target is like 'psnr:35', 'ssim:0.95', 'psnr:35:fast', 'exact', 'bpp:0.1' or "
                f"'bytes:50000', got {text!r}"
            ) from None

    @property
    def budget(self) -> bool:
        return self.metric in BUDGETS

    def max_bytes(self, megapixels: float) -> int:
        """The byte budget for an image of ``megapixels`` (budget targets only)."""
        if self.metric == "bytes":
            return int(self.value)
        return int(self.value * megapixels * 1e6 / 8)

    def score(self, reference: ImageLike, restored: ImageLike) -> float:
        """The fidelity this target is about (PSNR-Y for budgets and ``exact``)."""
        return ssim(reference, restored) if self.metric == "ssim" else psnr(reference, restored)

    def met(self, score: float) -> bool:
        if self.metric in ("psnr", "ssim"):
            return score >= self.value
        if self.metric == "exact":
            return math.isinf(score)
        return True

    def __str__(self) -> str:
        if self.metric == "exact":
            return "exact"
        text = f"{self.metric}<={self.value:g}" if self.budget else f"{self.metric}>={self.value:g}"
        return text + (f" ({self.search})" if self.search != "exact" else "")


@dataclass
class Form:
    """One stored form: how it is made, what it weighs, and the fidelity measured after a real retrieval."""

    scale: float
    codec: str  # a stored codec, or "original" (the file as it came)
    quality: int
    data: bytes = field(repr=False)
    score: float
    model: str = ""  # the model it was restored with ("": the restorer's default, or none at full size)

    @property
    def bytes(self) -> int:
        return len(self.data)

    @property
    def runs_model(self) -> bool:
        return Candidate(self.scale, self.codec, self.model).runs_model


@dataclass
class Decision:
    form: Form
    target: Target
    tried: list[tuple[float, str, int, int, float]]  # (scale, codec, quality, bytes, score), in order
    model_runs: int
    seconds: float
    megapixels: float
    #: Per candidate searched to the end: the smallest form meeting the target (fidelity targets), the best
    #: fidelity within the budget (budgets). Pruned candidates are absent.
    best_of: dict[str, Form] = field(default_factory=dict, repr=False)

    @property
    def seconds_per_megapixel(self) -> float:
        return self.seconds / max(self.megapixels, 1e-9)

    def describe(self) -> dict[str, object]:
        return {
            "target": str(self.target),
            "scale": self.form.scale,
            "codec": self.form.codec,
            "quality": self.form.quality,
            **({"model": self.form.model} if self.form.model else {}),
            "bytes": self.form.bytes,
            "fidelity": None if math.isinf(self.form.score) else round(self.form.score, 4),
            "search": self.target.search,
            "candidates_tried": len(self.tried),
            "model_runs": self.model_runs,
            "seconds": round(self.seconds, 3),
            "seconds_per_megapixel": round(self.seconds_per_megapixel, 3),
        }


#: encode(scale, codec, quality) -> stored bytes of that form (the downscale is the caller's, cached per scale);
#: codec "jxl-jpeg" is the original JPEG file recompressed (quality ignored)
Encoder = Callable[[float, str, int], bytes]
#: restore(scale, stored bytes) -> the image the user would get back (decoded), at the original's size; a search
#: with model candidates (:func:`with_models`) also calls restore(scale, stored bytes, model)
Restorer = Callable[..., ImageLike]
#: restore_file(scale, stored bytes) -> the file the user would get back (for the ``exact`` target)
FileRestorer = Callable[[float, bytes], bytes]


def choose_form(
    original: ImageLike,
    original_bytes: bytes,
    target: Target,
    encode: Encoder,
    restore: Restorer,
    *,
    proxy: Restorer | None = None,
    restore_file: FileRestorer | None = None,
    forms: tuple[Candidate, ...] = FORMS,
    prune: bool = True,
    keep_original: bool = True,
    cache: dict[tuple[float, str, int], bytes] | None = None,
    guided: bool = True,
) -> Decision:
    """The smallest form meeting ``target`` (see the module notes), or the original bytes.

    ``proxy`` (a cheap restorer, e.g. bicubic) stands in for ``restore`` in a ``fast`` search; ``restore_file``
    gives back the restored *file* (needed by ``exact``). ``forms`` narrows the candidates (a benchmark's
    single-codec baseline is one candidate); ``prune=False`` searches every candidate to the end (a benchmark
    reading :attr:`Decision.best_of`); ``keep_original=False`` leaves the original file out of the running;
    ``cache`` holds encodes already made of this image, ``(scale, codec, quality) -> bytes`` (filled as it goes);
    ``guided=False`` makes the exact search bisect without ``proxy``'s guesses (a benchmark's reference)."""
    start = time.perf_counter()
    guide = proxy if guided else None
    search = _Search(
        original, original_bytes, target, encode, restore, forms, prune, keep_original, cache=cache, guide=guide
    )
    if target.metric == "exact":
        decision = search.exact(restore_file)
    elif target.budget:
        decision = search.budget()
    elif target.search == "fast" and proxy is not None:
        decision = _fast(search, proxy)
    else:
        decision = search.run()
    decision.seconds = time.perf_counter() - start
    return decision


#: Before the model's gain over bicubic is measured, the fast search calibrates it where bicubic alone falls short
#: of the target by about this much (a typical gain of SPAN on stored forms).
_GAIN_GUESS = {"psnr": 1.0, "ssim": 0.01}


def _fast(exact: _Search, proxy: Restorer) -> Decision:
    """Search with ``proxy`` (bicubic) in place of the model, each model's gain over it measured once per scale, then
    check the choice with one real retrieval (see the module notes); the exact search runs on if it misses."""
    guess = _Search(
        exact.original, exact.original_bytes, exact.target, exact.encode, proxy, exact.forms, exact.prune,
        exact.keep_original, real=exact.restore, cache=exact.cache,
    )  # fmt: skip
    for scale, model in sorted({(c.scale, c.model) for c in exact.forms if c.runs_model and c.lossy}):
        c = next(c for c in exact.forms if (c.scale, c.model) == (scale, model) and c.lossy)
        near = guess.lowest(c, shift=_GAIN_GUESS[exact.target.metric], bounded=False)
        quality = near.quality if near is not None else 90
        bicubic = guess.measure(c, quality)
        guess.shift[scale, model] = max(0.0, _gain(guess.measure(c, quality, real=True), bicubic))
    verified: Form | None = None
    for _ in range(3):  # a check that shows another gain than assumed corrects it and searches again
        form = guess.run().form
        if not form.runs_model:
            verified = form if verified is None or form.bytes < verified.bytes else verified
            break
        checked = guess.measure(Candidate(form.scale, form.codec, form.model), form.quality, real=True)
        if exact.target.met(checked.score) and (verified is None or checked.bytes < verified.bytes):
            verified = checked
        gain = _gain(checked, form)
        if abs(gain - guess.shift.get((form.scale, form.model), 0.0)) <= 1e-6:
            break
        guess.shift[form.scale, form.model] = gain
    if verified is not None:
        return guess.decision(verified)
    exact.tried[:0], exact.model_runs = guess.tried, guess.model_runs
    return exact.run()


def _gain(real: Form, proxy: Form) -> float:
    """What the real retrieval scored above the proxy on the same form (bounded: scores may be infinite)."""
    if math.isinf(real.score) and math.isinf(proxy.score):
        return 0.0
    return max(-100.0, min(100.0, real.score - proxy.score))


class _Search:
    """The state of one search: the best form so far, what was tried, the encodes made (cached)."""

    def __init__(
        self,
        original: ImageLike,
        original_bytes: bytes,
        target: Target,
        encode: Encoder,
        restore: Restorer,
        forms: tuple[Candidate, ...],
        prune: bool,
        keep_original: bool,
        *,
        real: Restorer | None = None,
        cache: dict[tuple[float, str, int], bytes] | None = None,
        guide: Restorer | None = None,
    ) -> None:
        self.original, self.original_bytes, self.target = original, original_bytes, target
        self.encode, self.restore, self.real = encode, restore, real  # real: set when restore is a proxy
        self.guide = guide  # a cheap restorer whose scores place the exact search's model runs (see lowest)
        self.guide_scores: dict[tuple[float, bytes], float] = {}
        self.forms, self.prune, self.keep_original = forms, prune, keep_original
        self.cache: dict[tuple[float, str, int], bytes] = {} if cache is None else cache
        # by scale, model and the stored bytes: qualities that encode alike (libavif gives the same file for
        # neighbouring low qualities) are restored once
        self.scores: dict[tuple[float, str, bytes, bool], float] = {}
        self.tried: list[tuple[float, str, int, int, float]] = []
        self.model_runs = 0
        self.best_of: dict[str, Form] = {}
        height, width = _size(original)
        self.megapixels = width * height / 1e6
        self.initial = Form(1.0, "original", 0, original_bytes, math.inf) if keep_original else None
        self.best = self.initial
        #: Per scale and model, what the real retrieval adds to this search's (proxy) scores: forms pass at
        #: target - shift.
        self.shift: dict[tuple[float, str], float] = {}

    # ---- pieces ------------------------------------------------------------------------------------------
    def blob(self, c: Candidate, quality: int) -> bytes:
        key = (c.scale, c.codec, quality if c.lossy else 100)
        if key not in self.cache:
            self.cache[key] = self.encode(c.scale, c.codec, key[2])
        return self.cache[key]

    def measure(self, c: Candidate, quality: int, *, real: bool = False) -> Form:
        """Restore the form and score it (``real``: with the real restorer when this search runs a proxy). Scores
        are kept: a form measured twice is restored once."""
        restore = self.real if real and self.real is not None else self.restore
        quality = quality if c.lossy else 100
        data = self.blob(c, quality)
        model_run = c.runs_model and (real or self.real is None)
        model = c.model if model_run else ""  # a proxy (bicubic) restores every model's form alike
        key = (c.scale, model, hashlib.blake2b(data, digest_size=16).digest(), restore is self.restore)
        if key not in self.scores:
            if model_run:
                self.model_runs += 1
            restored = restore(c.scale, data, model) if model else restore(c.scale, data)
            self.scores[key] = self.target.score(self.original, restored)
            self.tried.append((c.scale, c.codec, quality, len(data), self.scores[key]))
        return Form(c.scale, c.codec, quality, data, self.scores[key], c.model)

    def bound(self) -> int:
        """Forms of this many bytes or more cannot win."""
        return self.best.bytes if self.prune and self.best is not None else 1 << 62

    def meets(self, form: Form) -> bool:
        return self.target.met(form.score + self.shift.get((form.scale, form.model), 0.0))

    def consider(self, c: Candidate, form: Form | None) -> None:
        if form is None or not self.meets(form):
            return
        self.best_of[str(c)] = form
        if self.best is None or form.bytes < self.best.bytes:
            self.best = form

    def decision(self, form: Form) -> Decision:
        return Decision(form, self.target, self.tried, self.model_runs, 0.0, self.megapixels, self.best_of)

    def lowest(self, c: Candidate, *, shift: float | None = None, bounded: bool = True) -> Form | None:
        """The form of the lowest quality whose score meets the target less ``shift`` (default: :attr:`shift` of
        its scale), or None; qualities whose bytes cannot win (``bounded``) are not measured.

        Downscaled candidates (a model run per measure) are first probed at the highest quality still smaller
        than the best form so far, found from the bytes alone by bisection on encodes: if even that misses, no
        quality of this candidate can win, and one retrieval pruned it. Then the qualities below are bisected."""
        goal = self.target.value - (self.shift.get((c.scale, c.model), 0.0) if shift is None else shift)
        limit = self.bound() if bounded else 1 << 62
        lo, hi, found = QUALITIES[0], QUALITIES[1], None
        if c.runs_model:
            top = None
            while lo <= hi:  # the highest quality under the bound: encodes only
                mid = (lo + hi) // 2
                if len(self.blob(c, mid)) < limit:
                    top, lo = mid, mid + 1
                else:
                    hi = mid - 1
            if top is None:
                return None
            found = self.measure(c, top)
            if found.score < goal:
                return None  # the probe misses: lower qualities would too
            if self.guide is not None:
                return self._guided(c, top, found, goal)
            lo, hi = QUALITIES[0], top - 1
        while lo <= hi:
            mid = (lo + hi) // 2
            if len(self.blob(c, mid)) >= limit:
                hi = mid - 1  # too big to win: only lower qualities could
                continue
            form = self.measure(c, mid)
            if form.score >= goal:
                found, hi = form, mid - 1
            else:
                lo = mid + 1
        return found

    def guess(self, c: Candidate, quality: int) -> float:
        """The guide's score of a form (no model run; not a tried form)."""
        data = self.blob(c, quality)
        key = (c.scale, data)
        if key not in self.guide_scores:
            self.guide_scores[key] = self.target.score(self.original, self.guide(c.scale, data))  # type: ignore[misc]
        return self.guide_scores[key]

    def _guided(self, c: Candidate, top: int, found: Form, goal: float) -> Form:
        """The lowest quality of a downscaled candidate meeting ``goal``, ``top`` known to meet it: the same answer as
        bisecting (the fidelity grows with the quality), for fewer model runs. Each model run is placed where the
        guide (bicubic), corrected by the model's gain over it at the last quality measured, says the target is
        crossed; the quality tried next to it then usually closes the bracket. After two guesses in a row that shrank
        the bracket by less than a quarter it halves the bracket instead, as plain bisection does."""
        fails, meets, best = QUALITIES[0] - 1, top, found
        gain = found.score - self.guess(c, top)
        misses = 0
        while meets - fails > 1:
            if misses >= 2:
                quality = (fails + meets) // 2
            else:
                lo, hi = fails + 1, meets - 1
                quality = meets - 1  # the guide says nothing in the bracket meets: confirm the one below
                while lo <= hi:  # the lowest quality the guide (plus the gain) passes: no model runs
                    mid = (lo + hi) // 2
                    if self.guess(c, mid) + gain >= goal:
                        quality, hi = mid, mid - 1
                    else:
                        lo = mid + 1
            form = self.measure(c, quality)
            shrink = min(quality - fails, meets - quality) / max(meets - fails, 1)
            misses = misses + 1 if shrink < 0.25 else 0
            gain = form.score - self.guess(c, quality)
            if form.score >= goal:
                meets, best = quality, form
            else:
                fails = quality
        return best

    # ---- the searches ------------------------------------------------------------------------------------
    def run(self) -> Decision:
        """Fidelity targets: each candidate's smallest form meeting the target, the smallest overall."""
        self.best, self.best_of = self.initial, {}
        for c in self.forms:
            if c.codec == "jxl-jpeg":
                self.consider(c, self._recompressed(c))
            elif not c.lossy:
                if len(self.blob(c, 100)) < self.bound():
                    self.consider(c, self.measure(c, 100))
            elif len(self.blob(c, QUALITIES[0])) < self.bound():  # else even the lowest quality cannot win
                self.consider(c, self.lowest(c))
        if self.best is None:
            raise InvalidInput(f"no candidate form reaches {self.target}")
        return self.decision(self.best)

    def exact(self, restore_file: FileRestorer | None) -> Decision:
        """The smallest form whose restored file is the original file."""
        for c in self.forms:
            if c.scale != 1 or c.lossy:
                continue
            if c.codec == "jxl-jpeg":
                form = self._recompressed(c)
                self.consider(c, form)
                continue
            data = self.blob(c, 100)
            if len(data) < self.bound() and restore_file is not None:
                same = restore_file(c.scale, data) == self.original_bytes
                form = Form(c.scale, c.codec, 100, data, math.inf if same else 0.0)
                self.tried.append((c.scale, c.codec, 100, form.bytes, form.score))
                self.consider(c, form)
        return self.decision(self.best or Form(1.0, "original", 0, self.original_bytes, math.inf))

    def budget(self) -> Decision:
        """Budgets: per candidate the highest quality within the budget, the best PSNR-Y overall."""
        budget = self.target.max_bytes(self.megapixels)
        best: Form | None = None
        if self.keep_original and len(self.original_bytes) <= budget:
            best = Form(1.0, "original", 0, self.original_bytes, math.inf)
        for c in self.forms:
            if best is not None and math.isinf(best.score) and c.lossy:
                continue  # exact already: only a smaller exact form can do better
            if c.codec == "jxl-jpeg":
                form = self._recompressed(c)
                form = form if form is not None and form.bytes <= budget else None
            elif not c.lossy:
                form = self.measure(c, 100) if len(self.blob(c, 100)) <= budget else None
            else:
                lo, hi, quality = QUALITIES[0], QUALITIES[1], None
                while lo <= hi:  # the highest quality within the budget: encodes only
                    mid = (lo + hi) // 2
                    if len(self.blob(c, mid)) <= budget:
                        quality, lo = mid, mid + 1
                    else:
                        hi = mid - 1
                form = None if quality is None else self.measure(c, quality)
            if form is not None:
                self.best_of[str(c)] = form
                if best is None or (form.score, -form.bytes) > (best.score, -best.bytes):
                    best = form
        if best is None:
            mine = [len(self.blob(c, QUALITIES[0])) for c in self.forms if c.codec != "jxl-jpeg"]
            smallest = min(mine, default=len(self.original_bytes))
            raise InvalidInput(
                f"no stored form fits in {budget} bytes ({self.target}); the smallest found is {smallest} bytes: "
                f"give a larger budget (e.g. 'bytes:{smallest}')"
            )
        return self.decision(best)

    def _recompressed(self, c: Candidate) -> Form | None:
        """The original JPEG recompressed into JPEG XL (restores to the original file: fidelity exact)."""
        try:
            data = self.blob(c, 100)
        except InvalidInput:
            return None  # not a JPEG, or one libjxl cannot carry
        if len(data) >= self.bound() and self.prune:
            return None
        form = Form(c.scale, c.codec, 100, data, math.inf)
        self.tried.append((c.scale, c.codec, 100, form.bytes, form.score))
        return form


def _size(image: ImageLike) -> tuple[int, int]:
    shape = getattr(image, "shape", None)
    if shape is not None:
        return int(shape[0]), int(shape[1])
    return image.height, image.width  # type: ignore[union-attr]
