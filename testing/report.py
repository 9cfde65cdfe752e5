"""The test bench's results: per-image (and per-video) rows, the terminal summary, and a self-contained HTML report.

The HTML page needs nothing but itself: plots are inline SVG drawn here, crops are PNG data URIs, the style sheet
is inline and uses the system's fonts. Open it from the results folder, mail it, attach it to a ticket.
"""

from __future__ import annotations

import base64
import html
import io
import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from testing.fidelity import PSNR_CAP, capped, same_bytes
from upscaler import metrics
from upscaler.report_style import REPORT_STYLE, Series, bars_svg, scatter_svg

#: Okabe-Ito colours (readable with every common colour-vision deficiency).
COLORS = {"model": "#0072B2", "bicubic": "#E69F00", "full": "#009E73"}
#: Images shown in the crops section: the ``CROPS_EACH`` worst and best by the model's PSNR-Y.
CROPS_EACH = 2
#: Largest crop side (original pixels); shown at twice the size, pixel for pixel.
CROP_SIDE = 128
#: Most images drawn in the per-image bar chart (the worst and best halves beyond it).
MAX_BARS = 40


@dataclass
class ImageResult:
    """One image of a bench run: what was stored, the scores of the three restorations, timings, or the failure.

    The first three fields are the original bench's CSV columns (``testResults`` is its ``orb_sim`` as ``"NN%"``).
    """

    path: str
    destPath: str = ""  # the original's column names
    testResults: str = ""
    key: str = ""
    status: str = "ok"
    error: str = ""
    width: int | None = None
    height: int | None = None
    format: str = ""
    original_bytes: int | None = None
    stored_bytes: int | None = None
    saved_percent: float | None = None
    bpp: float | None = None
    scale: float | None = None
    stored_codec: str = ""
    stored_quality: int | None = None
    model: str = ""
    psnr_y: float | None = None
    ssim_y: float | None = None
    orb_sim: float | None = None
    bicubic_psnr_y: float | None = None
    bicubic_ssim_y: float | None = None
    bicubic_orb_sim: float | None = None
    fullsize_codec: str = ""
    fullsize_quality: int | None = None
    fullsize_bytes: int | None = None
    fullsize_bpp: float | None = None
    fullsize_saved_percent: float | None = None
    fullsize_psnr_y: float | None = None
    fullsize_ssim_y: float | None = None
    fullsize_orb_sim: float | None = None
    store_s: float | None = None
    retrieve_s: float | None = None
    bicubic_s: float | None = None
    #: "image", or "video": stored by a downscale job, given back by an upscale job (store_s / retrieve_s: upload +
    #: downscale job / upscale job + download); its bpp is per frame, its scores the mean over sampled frames.
    kind: str = "image"
    frames: int | None = None
    #: Video: the stored video's frame size (WxH) and its rate control ("crf" or "qp", stored_quality its value).
    stored_size: str = ""
    rate_control: str = ""
    #: With a quality target: the target, and the fidelity the service measured for it (image: its decision; video:
    #: the job's check of the whole stored clip on its sample frames) and whether it met the target.
    target: str = ""
    target_fidelity: float | None = None
    target_met: bool | None = None
    #: Short name in the report (the path relative to the images' common folder); not in the CSV.
    label: str = field(default="", repr=False)
    #: PNG crops (label -> bytes) for the report; never written to the CSV.
    crops: dict[str, bytes] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def name(self) -> str:
        return self.label or self.key or Path(self.path).name


def stored_form(result: ImageResult) -> str:
    """``x4 avif q80``; lossless codecs and the original file have no quality; a video ``x4 av1 crf 30``."""
    if result.scale is None:
        return ""
    if result.kind == "video":
        rate = f" {result.rate_control} {result.stored_quality}" if result.rate_control else ""
        return f"x{result.scale:g} {result.stored_codec}{rate}"
    lossless = result.stored_codec in ("png", "png16", "webp-lossless", "original")
    return f"x{result.scale:g} {result.stored_codec}" + ("" if lossless else f" q{result.stored_quality}")


CSV_COLUMNS = [f.name for f in fields(ImageResult) if f.name not in ("crops", "label")]
_DIGITS = {"saved_percent": 2, "bpp": 4, "fullsize_bpp": 4, "fullsize_saved_percent": 2}


def csv_row(result: ImageResult) -> list[str]:
    """The CSV cells of ``result``: floats rounded (4 decimals, times 3), ``inf`` kept as ``inf``, None empty."""
    cells = []
    for name in CSV_COLUMNS:
        value = getattr(result, name)
        if value is None:
            cells.append("")
        elif isinstance(value, float):
            if math.isinf(value):
                cells.append("inf")
            elif math.isnan(value):
                cells.append("")
            else:
                digits = 3 if name.endswith("_s") else _DIGITS.get(name, 4)
                cells.append(f"{value:g}" if name == "scale" else f"{value:.{digits}f}")
        else:
            cells.append(str(value))
    return cells


# ---- statistics ----------------------------------------------------------------------------------------------


def _values(results: Iterable[ImageResult], name: str) -> list[float]:
    out = []
    for r in results:
        value = getattr(r, name)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        out.append(capped(value) if "psnr" in name else float(value))
    return out


def _stat(values: Sequence[float], how: Callable[[Sequence[float]], float]) -> float:
    return how(values) if values else math.nan


@dataclass
class Summary:
    measured: int
    failed: int
    rows: list[tuple[str, str, list[tuple[float, float]]]]  # (label, unit, [(mean, median) per column])
    wins_vs_bicubic: int
    wins_vs_full: int
    compared_full: int
    #: Images whose smallest full-size file is larger than what was stored (no comparison at the same bytes).
    unreachable: int


#: (label, unit, model field, bicubic field, full-size field); None where a column does not apply.
SUMMARY_ROWS: list[tuple[str, str, str | None, str | None, str | None]] = [
    ("savings", "% of the original bytes", "saved_percent", "saved_percent", "fullsize_saved_percent"),
    ("bits per pixel", "stored bits / original pixels", "bpp", "bpp", "fullsize_bpp"),
    ("PSNR-Y", "dB, higher is better", "psnr_y", "bicubic_psnr_y", "fullsize_psnr_y"),
    ("SSIM-Y", "0-1, higher is better", "ssim_y", "bicubic_ssim_y", "fullsize_ssim_y"),
    ("orb_sim", "original bench's score, 0-1", "orb_sim", "bicubic_orb_sim", "fullsize_orb_sim"),
    ("store time", "s per image", "store_s", None, None),
    ("retrieve time", "s per image", "retrieve_s", "bicubic_s", None),
]


def summarize(results: Sequence[ImageResult]) -> Summary:
    ok = [r for r in results if r.ok]
    rows = []
    for label, unit, *columns in SUMMARY_ROWS:
        cells = []
        for name in columns:
            values = _values(ok, name) if name else []
            cells.append((_stat(values, statistics.fmean), _stat(values, statistics.median)))
        rows.append((label, unit, cells))
    full = [r for r in ok if compared(r)]
    return Summary(
        measured=len(ok),
        failed=len(results) - len(ok),
        rows=rows,
        wins_vs_bicubic=sum(
            1 for r in ok if r.psnr_y is not None and r.bicubic_psnr_y is not None and r.psnr_y > r.bicubic_psnr_y
        ),
        wins_vs_full=sum(1 for r in full if capped(r.psnr_y) > capped(r.fullsize_psnr_y)),  # type: ignore[arg-type]
        compared_full=len(full),
        unreachable=sum(1 for r in ok if unreachable(r)),
    )


def compared(r: ImageResult) -> bool:
    """The full-size baseline was scored at (about) the same bytes as what was stored."""
    return (
        r.psnr_y is not None
        and r.fullsize_psnr_y is not None
        and r.fullsize_bytes is not None
        and same_bytes(r.fullsize_bytes, r.stored_bytes or 0)
    )


def unreachable(r: ImageResult) -> bool:
    """Even the smallest full-size file (quality 1) is larger than what was stored."""
    return r.fullsize_bytes is not None and not same_bytes(r.fullsize_bytes, r.stored_bytes or 0)


def unreachable_note(count: int, full: str) -> str:
    return (
        f"On {count} image(s) even the smallest {full} file (quality 1) is larger than what was stored, so it is "
        "left out of that comparison: at that rate, only downscaling gets the file this small."
    )


def _num(value: float, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def _digits(label: str) -> int:
    return {"bits per pixel": 3, "SSIM-Y": 4, "orb_sim": 3}.get(label, 2)


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns aligned: the first to the left, the others to the right; a rule under the headers."""
    table = [list(headers), *[list(r) for r in rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    lines = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        for row in table
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def images_of(results: Iterable[ImageResult]) -> list[ImageResult]:
    return [r for r in results if r.kind != "video"]


def videos_of(results: Iterable[ImageResult]) -> list[ImageResult]:
    return [r for r in results if r.kind == "video"]


VIDEO_HEADERS = [
    "video",
    "size",
    "frames",
    "source B",
    "stored B",
    "saved %",
    "bpp/frame",
    "stored as",
    "target",
    "service fidelity",
    "PSNR-Y",
    "SSIM-Y",
    "orb_sim",
    "store s",
    "retrieve s",
]


def _fidelity_cell(r: ImageResult) -> str:
    """The fidelity the service measured for the target, and whether it met it."""
    if not r.target:
        return "-"
    met = "" if r.target_met is None else (" met" if r.target_met else " MISSED")
    return f"{_num(r.target_fidelity, 4 if r.target.startswith('ssim') else 2)}{met}"


def video_row(r: ImageResult) -> list[str]:
    """One video's cells, in :data:`VIDEO_HEADERS`' order."""

    def count(value: int | None) -> str:
        return f"{value:,}" if value is not None else "-"

    return [
        r.name,
        f"{r.width}x{r.height}" if r.width else "-",
        count(r.frames),
        count(r.original_bytes),
        count(r.stored_bytes),
        _num(r.saved_percent, 1),
        _num(r.bpp, 4),
        stored_form(r) + (f" ({r.stored_size})" if r.stored_size else "") or "-",
        r.target or "-",
        _fidelity_cell(r),
        _num(r.psnr_y),
        _num(r.ssim_y, 4),
        _num(r.orb_sim, 3),
        _num(r.store_s, 1),
        _num(r.retrieve_s, 1),
    ]


def video_totals(videos: Sequence[ImageResult]) -> str:
    """Bytes stored against the sources' over every measured video."""
    ok = [r for r in videos if r.ok and r.original_bytes and r.stored_bytes is not None]
    source, stored = sum(r.original_bytes or 0 for r in ok), sum(r.stored_bytes or 0 for r in ok)
    if not source:
        return "No video was measured."
    met = [r for r in ok if r.target]
    targets = f"; {sum(1 for r in met if r.target_met)} of {len(met)} met their target" if met else ""
    return (
        f"{len(ok)} video(s): {stored:,} bytes stored for {source:,} bytes of source files "
        f"({100 * (1 - stored / source):.1f} % saved){targets}."
    )


VIDEO_NOTE = (
    "Videos: stored by a downscale job (the sizes, codec and rate control the service chose, or a target's choice), "
    "then given back at full size by an upscale job and downloaded. PSNR-Y/SSIM-Y/orb_sim: the bench's own "
    "measurement of that download against the source, mean over sampled frames (BasicSR, crop = scale); service "
    "fidelity: the target's metric as the job measured it on its sample frames of the stored clip, restored. "
    "bpp/frame = stored bits / (width x height x frames); store s = upload + downscale job, retrieve s = upscale "
    "job + download."
)


def terminal_summary(results: Sequence[ImageResult], info: dict[str, Any]) -> str:
    """The summary printed at the end of a run (plain text)."""
    results, videos = images_of(results), videos_of(results)
    s = summarize(results)
    model = info.get("model_label", "model")
    full = info.get("full_label", "full-size AVIF")
    headers = ["", f"{model} mean", "median", "bicubic mean", "median", f"{full} mean", "median"]
    rows = [[label] + [_num(v, _digits(label)) for cell in cells for v in cell] for label, _, cells in s.rows]
    lines = [
        f"Quality test bench: {s.measured} image(s) measured, {s.failed} failed; results in {info.get('out', '')}",
        f"service {info.get('url', '')} ({info.get('api', '')} routes), stored as: {info.get('store_label', '')}",
        "bicubic = the same stored bytes upscaled by plain bicubic (model=bicubic, same service path);",
        f"{full} = the original re-encoded at full size at the same bytes (quality bisected), no downscale.",
        f"PSNR-Y/SSIM-Y: BasicSR conventions (Y of BT.601, border crop = scale); PSNR inf counts as {PSNR_CAP:g} dB.",
        "",
    ]
    lines.append(text_table(headers, rows))
    if s.measured:
        lines.append("")
        lines.append(f"{model} beats bicubic on PSNR-Y for {s.wins_vs_bicubic} of {s.measured} image(s).")
        if s.compared_full:
            verdict = ": full-size re-encoding is the better use of these bytes." if not s.wins_vs_full else "."
            lines.append(
                f"{model} beats {full} at the same bytes on PSNR-Y for {s.wins_vs_full} of {s.compared_full} image(s)"
                + verdict
            )
        if s.unreachable:
            lines.append(unreachable_note(s.unreachable, full))
    if videos:
        failed = sum(1 for r in videos if not r.ok)
        lines += ["", f"{len(videos) - failed} video(s) measured, {failed} failed. {VIDEO_NOTE}"]
        lines += [text_table(VIDEO_HEADERS, [video_row(r) for r in videos if r.ok]), video_totals(videos)]
    failures = [r for r in [*results, *videos] if not r.ok]
    for r in failures[:10]:
        lines.append(f"FAILED {r.path}: {r.error}")
    if len(failures) > 10:
        lines.append(f"... and {len(failures) - 10} more failures (see testResults.csv)")
    return "\n".join(lines)


# ---- crops ---------------------------------------------------------------------------------------------------


def detail_window(image: object, side: int) -> tuple[int, int, int]:
    """(left, top, side) of the square window of ``image`` with the most luma detail (sum of gradients)."""
    y = metrics.to_y(metrics.as_rgb8(image))  # type: ignore[arg-type]
    h, w = y.shape
    side = max(1, min(side, w, h))
    grad = np.zeros_like(y)
    grad[:, 1:] += np.abs(np.diff(y, axis=1))
    grad[1:, :] += np.abs(np.diff(y, axis=0))
    integral = np.pad(grad.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    step = max(1, side // 4)
    best, where = -1.0, (0, 0)
    for top in [*range(0, h - side + 1, step), h - side]:
        for left in [*range(0, w - side + 1, step), w - side]:
            total = (
                integral[top + side, left + side]
                - integral[top, left + side]
                - integral[top + side, left]
                + integral[top, left]
            )
            if total > best:
                best, where = float(total), (left, top)
    return where[0], where[1], side


def crops(original: object, variants: dict[str, object], side: int = CROP_SIDE) -> dict[str, bytes]:
    """PNG bytes of the same detailed window of ``original`` and of each variant (label -> image)."""
    left, top, side = detail_window(original, side)
    out = {}
    for label, image in {"original": original, **variants}.items():
        arr = metrics.as_rgb8(image)  # type: ignore[arg-type]
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(arr[top : top + side, left : left + side])).save(buf, "PNG")
        out[label] = buf.getvalue()
    return out


class CropKeeper:
    """Keeps the crops of the ``each`` worst and ``each`` best results (by the model's PSNR-Y) seen so far."""

    def __init__(self, each: int = CROPS_EACH) -> None:
        self.each = each
        self.kept: list[ImageResult] = []

    def offer(self, result: ImageResult) -> None:
        if not (result.ok and result.crops and result.psnr_y is not None):
            result.crops = {}
            return
        self.kept.append(result)
        ranked = sorted(self.kept, key=lambda r: capped(r.psnr_y))  # type: ignore[arg-type]
        keep = ranked[: self.each] + ranked[-self.each :]
        for r in ranked:
            if not any(r is k for k in keep):
                r.crops = {}
        self.kept = [r for r in ranked if r.crops]

    def worst_and_best(self) -> tuple[list[ImageResult], list[ImageResult]]:
        ranked = sorted(self.kept, key=lambda r: capped(r.psnr_y))  # type: ignore[arg-type]
        worst = ranked[: self.each]
        best = [r for r in reversed(ranked[-self.each :]) if not any(r is w for w in worst)]
        return worst, best


# ---- SVG plots -----------------------------------------------------------------------------------------------


# scatter_svg, bars_svg and Series live with the stylesheet in upscaler/report_style.py (the migration report
# draws with them too).


# ---- the HTML page -------------------------------------------------------------------------------------------


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _td(value: float | None, digits: int = 2) -> str:
    return f"<td>{_num(value, digits) if value is not None else '-'}</td>"


def _swatch(key: str) -> str:
    return f'<span class="swatch" style="background:{COLORS[key]}"></span>'


def _summary_table(results: Sequence[ImageResult], info: dict[str, Any]) -> str:
    s = summarize(results)
    model, full = html.escape(info.get("model_label", "model")), html.escape(info.get("full_label", "full-size AVIF"))
    head = (
        "<tr><th rowspan=2>measure</th>"
        f"<th colspan=2>{_swatch('model')}{model}<br><span class=unit>stored form, restored by the model</span></th>"
        f"<th colspan=2>{_swatch('bicubic')}bicubic<br><span class=unit>same stored bytes</span></th>"
        f"<th colspan=2>{_swatch('full')}{full}<br><span class=unit>same bytes, no downscale</span></th></tr>"
        "<tr>" + "<th>mean</th><th>median</th>" * 3 + "</tr>"
    )
    body = []
    for label, unit, cells in s.rows:
        d = _digits(label)
        tds = "".join(f"<td>{_num(v, d)}</td>" for cell in cells for v in cell)
        body.append(f"<tr><td>{html.escape(label)} <span class=unit>({html.escape(unit)})</span></td>{tds}</tr>")
    verdict = []
    if s.measured:
        verdict.append(
            f"<p>{model} beats bicubic on PSNR-Y for <b>{s.wins_vs_bicubic} of {s.measured}</b> image(s).</p>"
        )
    if s.compared_full:
        cls = "win" if s.wins_vs_full * 2 > s.compared_full else "lose"
        verdict.append(
            f"<p>{model} beats {full} at the same bytes on PSNR-Y for "
            f'<span class="{cls}">{s.wins_vs_full} of {s.compared_full}</span> image(s).'
            + (
                " For these images and settings, re-encoding at full size is the better use of the bytes."
                if s.wins_vs_full * 2 <= s.compared_full
                else ""
            )
            + "</p>"
        )
    if s.unreachable:
        verdict.append(f"<p>{html.escape(unreachable_note(s.unreachable, full))}</p>")
    return f"<table>{head}{''.join(body)}</table>{''.join(verdict)}"


def _plots(results: Sequence[ImageResult], info: dict[str, Any]) -> str:
    ok = [r for r in results if r.ok and r.psnr_y is not None]
    model, full = info.get("model_label", "model"), info.get("full_label", "full-size AVIF")
    series = [
        Series(
            model,
            COLORS["model"],
            "circle",
            [(r.saved_percent or 0, capped(r.psnr_y), f"{r.name}: {model} {_num(r.psnr_y)} dB") for r in ok],
        ),
        Series(
            "bicubic",
            COLORS["bicubic"],
            "triangle",
            [
                (r.saved_percent or 0, capped(r.bicubic_psnr_y), f"{r.name}: bicubic {_num(r.bicubic_psnr_y)} dB")
                for r in ok
                if r.bicubic_psnr_y is not None
            ],
        ),
        Series(
            full,
            COLORS["full"],
            "square",
            [
                (
                    r.fullsize_saved_percent or 0,
                    capped(r.fullsize_psnr_y),
                    f"{r.name}: {full} q{r.fullsize_quality}, {r.fullsize_bytes} B, {_num(r.fullsize_psnr_y)} dB",
                )
                for r in ok
                if r.fullsize_psnr_y is not None
            ],
        ),
    ]
    scatter = scatter_svg(
        series, x_label="savings (% of the original file's bytes)", y_label="PSNR-Y (dB)", title="Savings vs. PSNR-Y"
    )
    gains = [
        (r.bpp, capped(r.psnr_y) - capped(r.fullsize_psnr_y), f"{r.name}: {r.bpp:.3f} bpp")  # type: ignore[arg-type]
        for r in ok
        if compared(r) and r.bpp
    ]
    gain_plot = scatter_svg(
        [Series(f"{model} - {full}", COLORS["model"], "circle", gains)],
        x_label="stored bits per pixel (log scale)",
        y_label="PSNR-Y difference (dB)",
        title=f"Above 0: {model} wins; below: {full} wins",
        hline=0.0,
        vline=(0.1, "0.1 bpp"),
        x_log=True,
    )
    ranked = sorted(ok, key=lambda r: capped(r.psnr_y))  # type: ignore[arg-type]
    shown = ranked if len(ranked) <= MAX_BARS else ranked[: MAX_BARS // 2] + ranked[-MAX_BARS // 2 :]
    groups = [
        (
            r.name,
            [
                (model, COLORS["model"], capped(r.psnr_y)),  # type: ignore[arg-type]
                ("bicubic", COLORS["bicubic"], None if r.bicubic_psnr_y is None else capped(r.bicubic_psnr_y)),
                (full, COLORS["full"], None if r.fullsize_psnr_y is None else capped(r.fullsize_psnr_y)),
            ],
            f"saved {r.saved_percent:.1f}%, {r.bpp:.3f} bpp",
        )
        for r in shown
    ]
    cut = "" if len(shown) == len(ranked) else f" ({MAX_BARS // 2} worst and {MAX_BARS // 2} best of {len(ranked)})"
    bars = bars_svg(groups, x_label="PSNR-Y (dB)", title=f"PSNR-Y per image, worst first{cut}")
    return f'<div class="plots">{scatter}{gain_plot}</div><div class="plots">{bars}</div>'


def _crops_section(keeper: CropKeeper, info: dict[str, Any]) -> str:
    worst, best = keeper.worst_and_best()
    model, full = info.get("model_label", "model"), info.get("full_label", "full-size AVIF")
    parts = []
    for title, group in (("Worst", worst), ("Best", best)):
        for r in group:
            captions = {
                "original": f"original ({r.width}×{r.height} {r.format}, {r.original_bytes:,} B)",
                "bicubic": f"bicubic, same {r.stored_bytes:,} B: PSNR-Y {_num(r.bicubic_psnr_y)} dB",
                "model": f"{model}, {r.stored_bytes:,} B: PSNR-Y {_num(r.psnr_y)} dB",
                "full": (
                    f"{full} q{r.fullsize_quality}, {r.fullsize_bytes or 0:,} B: PSNR-Y {_num(r.fullsize_psnr_y)} dB"
                ),
            }
            figures = "".join(
                f'<figure><img src="{_data_uri(png)}" alt="{html.escape(label)}">'
                f"<figcaption>{html.escape(captions.get(label, label))}</figcaption></figure>"
                for label, png in r.crops.items()
            )
            parts.append(
                f"<h3>{title}: {html.escape(r.name)} <span class=unit>({r.saved_percent:.1f}% saved, "
                f"{r.bpp:.3f} bpp, stored x{r.scale:g} {html.escape(r.stored_codec)})</span></h3>"
                f'<div class="crops">{figures}</div>'
            )
    if not parts:
        return "<p>No image was measured.</p>"
    return (
        "<p>The same window (the most detailed part of the original), shown at twice its size pixel for pixel.</p>"
        + "".join(parts)
    )


def _images_table(results: Sequence[ImageResult]) -> str:
    head = (
        "<tr><th>image</th><th>original B</th><th>stored B</th><th>saved %</th><th>bpp</th><th>stored as</th>"
        "<th>PSNR-Y SR</th><th>PSNR-Y bicubic</th><th>PSNR-Y full</th><th>SSIM-Y SR</th><th>SSIM-Y full</th>"
        "<th>orb_sim</th><th>store s</th><th>retrieve s</th><th>error</th></tr>"
    )
    rows = []
    for r in results:
        cls = "" if r.ok else ' class="failed"'
        stored_as = stored_form(r)
        rows.append(
            f"<tr{cls}><td>{html.escape(r.name)}</td>"
            + _td(r.original_bytes, 0)
            + _td(r.stored_bytes, 0)
            + _td(r.saved_percent, 1)
            + _td(r.bpp, 3)
            + f"<td>{html.escape(stored_as)}</td>"
            + _td(r.psnr_y)
            + _td(r.bicubic_psnr_y)
            + _td(r.fullsize_psnr_y)
            + _td(r.ssim_y, 4)
            + _td(r.fullsize_ssim_y, 4)
            + _td(r.orb_sim, 3)
            + _td(r.store_s, 3)
            + _td(r.retrieve_s, 3)
            + f'<td class="err" title="{html.escape(r.error)}">{html.escape(r.error)}</td></tr>'
        )
    return f'<div class="scroll"><table>{head}{"".join(rows)}</table></div>'


def _videos_section(videos: Sequence[ImageResult]) -> str:
    """Every video: bytes, saved %, the stored form, the target and its fidelity, the bench's scores, times."""
    if not videos:
        return ""
    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in VIDEO_HEADERS) + "<th>error</th></tr>"
    rows = []
    for r in videos:
        cls = "" if r.ok else ' class="failed"'
        cells = [html.escape(c) for c in video_row(r)]
        first, rest = cells[0], "".join(f"<td>{c}</td>" for c in cells[1:])
        met = "" if r.target_met is None else (' class="win"' if r.target_met else ' class="lose"')
        rest = rest.replace(f"<td>{cells[9]}</td>", f"<td{met}>{cells[9]}</td>", 1)
        error = f'<td class="err" title="{html.escape(r.error)}">{html.escape(r.error)}</td>'
        rows.append(f"<tr{cls}><td>{first}</td>{rest}{error}</tr>")
    return (
        f"<h2>Videos ({len(videos)})</h2><p>{html.escape(VIDEO_NOTE)}</p>"
        f'<div class="scroll"><table>{head}{"".join(rows)}</table></div><p>{html.escape(video_totals(videos))}</p>'
    )


def _failures(results: Sequence[ImageResult]) -> str:
    failed = [r for r in results if not r.ok]
    if not failed:
        return ""
    items = "".join(f"<li>{html.escape(r.path)}: <code>{html.escape(r.error)}</code></li>" for r in failed)
    return (
        f"<h2>Failures ({len(failed)})</h2><p>Recorded per image; the run went on. Stage, then the reason:</p>"
        f'<ul class="failures">{items}</ul>'
    )


def write_html(path: Path, results: Sequence[ImageResult], keeper: CropKeeper, info: dict[str, Any]) -> Path:
    """Write the self-contained report page to ``path``."""
    everything, results, videos = results, images_of(results), videos_of(results)
    s = summarize(results)
    failed = sum(1 for r in videos if not r.ok)
    s_videos = f" · {len(videos) - failed} video(s) measured, {failed} failed" if videos else ""
    model, full = html.escape(info.get("model_label", "model")), html.escape(info.get("full_label", "full-size AVIF"))
    meta = (
        f"{s.measured} image(s) measured, {s.failed} failed{s_videos} · {html.escape(info.get('started', ''))} · "
        f"{html.escape(info.get('url', ''))} ({html.escape(info.get('api', ''))} routes) · "
        f"stored as: {html.escape(info.get('store_label', ''))} · {info.get('workers', 1)} worker(s), "
        f"{info.get('seconds', 0):.1f} s"
    )
    how_to_read = (
        f"<p><b>How to read the baseline columns.</b> <b>{model}</b> is what the service gives back: the image "
        "was stored downscaled and restored by super-resolution. <b>bicubic</b> is the <i>same stored bytes</i> "
        "restored by plain bicubic interpolation through the same service path (<code>model=bicubic</code>): the "
        f"gap between the two is what the model adds. <b>{full}</b> is the original re-encoded <i>at full size</i> "
        "with AVIF, its quality bisected so the file weighs the same bytes as what we stored: if it scores higher, "
        "spending those bytes on a full-size AVIF would have kept more of the image than downscale + "
        "super-resolution. Above about 0.1 bits per pixel that is usually the case, and this page says so.</p>"
        "<p>PSNR-Y and SSIM-Y follow BasicSR's conventions: the luma of BT.601 (MATLAB <code>rgb2ycbcr</code>), in "
        f"float64, with a border of <i>scale</i> pixels cropped. An identical image has PSNR ∞, counted as "
        f"{PSNR_CAP:g} dB in means and plots. <code>orb_sim</code> is the original test bench's score (share of ORB "
        "keypoint matches with Hamming distance under 50): a similarity hint, not a fidelity metric. Savings and "
        "bits per pixel compare the stored bytes with the original file (bpp = stored bytes × 8 / original "
        "pixels). Every score is taken on the file a user gets back, in the original's format.</p>"
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Quality test bench - {html.escape(info.get("started", ""))}</title>
<style>{REPORT_STYLE}</style></head>
<body>
<h1>Quality test bench</h1>
<p class="meta">{meta}</p>
<div class="note">{how_to_read}</div>
<h2>Summary</h2>
{_summary_table(results, info)}
{_failures(everything)}
<h2>Plots</h2>
<p>Hover a point or bar for the image and its values.</p>
{_plots(results, info)}
<h2>Side by side: worst and best images</h2>
{_crops_section(keeper, info)}
<h2>Every image</h2>
{_images_table(results)}
{_videos_section(videos)}
<p class="meta">Files: <code>testResults.csv</code> (first columns as the original bench: path, destPath,
testResults = orb_sim as a percentage; a row per image and per video, <code>kind</code> says which), the restored
images and videos beside this page.</p>
</body></html>
"""
    path.write_text(page, encoding="utf-8")
    return path
