"""The stylesheet and SVG plots of the HTML reports (the test bench's and the archive migration's): one look, in
the core so that the API and worker images, which do not ship ``testing/``, can write a report."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

REPORT_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 24px 32px;
       color: #1d1d1f; max-width: 1220px; line-height: 1.45; }
h1 { font-size: 26px; margin: 0 0 4px; } h2 { font-size: 20px; margin: 32px 0 8px; border-bottom: 2px solid #eee; }
.meta { color: #555; font-size: 14px; } .note { background: #f3f7fb; border-left: 4px solid #0072B2;
        padding: 10px 14px; font-size: 14px; }
table { border-collapse: collapse; font-size: 14px; margin: 8px 0; }
th, td { padding: 4px 10px; border-bottom: 1px solid #e6e6e6; text-align: right; }
th { background: #f6f6f6; } td:first-child, th:first-child { text-align: left; }
.unit { color: #777; font-size: 12px; } .win { color: #0b7a3b; font-weight: 600; }
.lose { color: #b3261e; font-weight: 600; } tr.failed td { background: #fdecea; }
.plots { display: flex; flex-wrap: wrap; gap: 16px; }
.plot { background: white; border: 1px solid #e6e6e6; border-radius: 6px; }
.ptitle { font-size: 15px; font-weight: 600; fill: #1d1d1f; } .tick { font-size: 11px; fill: #444; }
.axis { font-size: 13px; fill: #222; }
.crops { display: flex; gap: 10px; flex-wrap: wrap; margin-bottom: 18px; }
.crops figure { margin: 0; } .crops img { width: 256px; height: 256px; image-rendering: pixelated;
        border: 1px solid #ccc; object-fit: contain; background: #f0f0f0; }
figcaption { font-size: 12px; color: #333; max-width: 256px; }
.swatch { display: inline-block; width: 11px; height: 11px; border-radius: 2px; margin-right: 4px; }
.scroll { max-height: 520px; overflow: auto; border: 1px solid #eee; }
.scroll th, .scroll td { white-space: nowrap; }
.scroll td.err { text-align: left; max-width: 340px; overflow: hidden; text-overflow: ellipsis; color: #b3261e; }
ul.failures { font-size: 14px; } ul.failures code { color: #b3261e; }
"""


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if not math.isfinite(lo) or not math.isfinite(hi) or hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag)
    first = math.ceil(lo / step) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _range(values: list[float], pad: float = 0.06) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    lo, hi = min(finite), max(finite)
    if hi - lo < 1e-9:
        lo, hi = lo - 1, hi + 1
    margin = (hi - lo) * pad
    return lo - margin, hi + margin


def _fmt_tick(value: float) -> str:
    return f"{value:g}" if abs(value) >= 0.01 or value == 0 else f"{value:.3f}"


_MARKERS = {
    "circle": lambda x, y, c: f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4.5" fill="{c}" fill-opacity="0.85"/>',
    "triangle": lambda x, y, c: (
        f'<path d="M{x:.1f},{y - 5.5:.1f} L{x + 5:.1f},{y + 3.5:.1f} L{x - 5:.1f},{y + 3.5:.1f} Z" fill="{c}" '
        'fill-opacity="0.85"/>'
    ),
    "square": lambda x, y, c: (
        f'<rect x="{x - 4:.1f}" y="{y - 4:.1f}" width="8" height="8" fill="{c}" fill-opacity="0.85"/>'
    ),
}


@dataclass
class Series:
    label: str
    color: str
    marker: str
    points: list[tuple[float, float, str]]  # (x, y, tooltip)


def scatter_svg(
    series: Sequence[Series],
    *,
    x_label: str,
    y_label: str,
    title: str,
    width: int = 580,
    height: int = 380,
    hline: float | None = None,
    vline: tuple[float, str] | None = None,
    x_log: bool = False,
) -> str:
    """An SVG scatter plot with axes, ticks, a legend and a tooltip per point."""
    left, right, top, bottom = 64, 16, 40, 52
    xs = [p[0] for s in series for p in s.points]
    ys = [p[1] for s in series for p in s.points] + ([hline] if hline is not None else [])
    tx = (lambda v: math.log10(max(v, 1e-6))) if x_log else (lambda v: v)
    x0, x1 = _range([tx(v) for v in xs + ([vline[0]] if vline else [])])
    y0, y1 = _range(ys)
    pw, ph = width - left - right, height - top - bottom

    def px(v: float) -> float:
        return left + (tx(v) - x0) / (x1 - x0) * pw

    def py(v: float) -> float:
        return top + (1 - (min(max(v, y0), y1) - y0) / (y1 - y0)) * ph

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{html.escape(title)}" class="plot">',
        f'<text x="{left}" y="20" class="ptitle">{html.escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#bbb"/>',
    ]
    if x_log:
        mantissas = (1, 2, 5) if x1 - x0 > 1 else (1, 1.5, 2, 3, 4, 5, 7)
        xticks = [round(10**e * m, 10) for e in range(math.floor(x0), math.ceil(x1) + 1) for m in mantissas]
        xticks = [v for v in xticks if x0 <= math.log10(v) <= x1]
    else:
        xticks = _ticks(x0, x1)
    for v in xticks:
        x = px(v)
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + ph}" stroke="#e4e4e4"/>')
        out.append(f'<text x="{x:.1f}" y="{top + ph + 16}" class="tick" text-anchor="middle">{_fmt_tick(v)}</text>')
    for v in _ticks(y0, y1):
        y = py(v)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#e4e4e4"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">{_fmt_tick(v)}</text>')
    if hline is not None:
        y = py(hline)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#555" stroke-width="1.5"/>')
    if vline is not None:
        x = px(vline[0])
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + ph}" stroke="#555" stroke-dasharray="5,4"/>')
        out.append(f'<text x="{x + 4:.1f}" y="{top + 14}" class="tick">{html.escape(vline[1])}</text>')
    for s in series:
        draw = _MARKERS[s.marker]
        for x, y, tip in s.points:
            if math.isfinite(x) and math.isfinite(y):
                out.append(f"<g><title>{html.escape(tip)}</title>{draw(px(x), py(y), s.color)}</g>")
    out.append(
        f'<text x="{left + pw / 2}" y="{height - 10}" class="axis" text-anchor="middle">{html.escape(x_label)}</text>'
    )
    out.append(
        f'<text x="16" y="{top + ph / 2}" class="axis" text-anchor="middle" '
        f'transform="rotate(-90 16 {top + ph / 2})">{html.escape(y_label)}</text>'
    )
    out.append(_legend([(s.label, s.color, s.marker) for s in series], left + pw, 30))
    out.append("</svg>")
    return "\n".join(out)


def _legend(entries: Sequence[tuple[str, str, str]], right: float, y: float) -> str:
    """A one-line legend (label, colour, marker) ending at ``right``."""
    out, x = [], right
    for label, color, marker in reversed(entries):
        x -= 7 * len(label) + 24
        out.append(_MARKERS[marker](x + 6, y, color))
        out.append(f'<text x="{x + 14}" y="{y + 4}" class="tick">{html.escape(label)}</text>')
    return "".join(out)


def bars_svg(
    groups: Sequence[tuple[str, list[tuple[str, str, float | None]], str]],
    *,
    x_label: str,
    title: str,
    width: int = 1000,
) -> str:
    """Horizontal grouped bars: one group per image (name, [(series, colour, value)], note on the right)."""
    label_w, note_w, top, bottom, bar_h = 230, 170, 40, 44, 9
    per_group = bar_h * max((len(g[1]) for g in groups), default=1) + 10
    height = top + bottom + per_group * len(groups)
    values = [v for _, bars, _ in groups for _, _, v in bars if v is not None and math.isfinite(v)]
    lo, hi = _range(values, pad=0.04)
    lo = max(0.0, math.floor(lo)) if values and min(values) >= 0 else lo
    pw = width - label_w - note_w - 10

    def px(v: float) -> float:
        return label_w + (min(max(v, lo), hi) - lo) / (hi - lo) * pw

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{html.escape(title)}" class="plot">',
        f'<text x="{label_w}" y="20" class="ptitle">{html.escape(title)}</text>',
        f'<rect x="{label_w}" y="{top - 4}" width="{pw}" height="{height - top - bottom + 4}" fill="#fafafa"/>',
    ]
    for v in _ticks(lo, hi, 8):
        x = px(v)
        out.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{height - bottom}" stroke="#e4e4e4"/>')
        out.append(f'<text x="{x:.1f}" y="{height - bottom + 16}" class="tick" text-anchor="middle">{v:g}</text>')
    for i, (name, bars, note) in enumerate(groups):
        y = top + i * per_group
        short = name if len(name) <= 34 else "…" + name[-33:]
        mid = y + bar_h * len(bars) / 2 + 4
        out.append(f'<text x="{label_w - 6}" y="{mid:.1f}" class="tick" text-anchor="end">{html.escape(short)}</text>')
        for j, (series, color, value) in enumerate(bars):
            if value is None or not math.isfinite(value):
                continue
            w = max(1.0, px(value) - label_w)
            tip = f"{name} - {series}: {value:.2f}"
            out.append(
                f'<g><title>{html.escape(tip)}</title><rect x="{label_w}" y="{y + j * bar_h}" width="{w:.1f}" '
                f'height="{bar_h - 1}" fill="{color}"/></g>'
            )
        out.append(f'<text x="{label_w + pw + 8}" y="{mid:.1f}" class="tick">{html.escape(note)}</text>')
    if groups:
        out.append(_legend([(label, color, "square") for label, color, _ in groups[0][1]], label_w + pw, 18))
    out.append(
        f'<text x="{label_w + pw / 2}" y="{height - 8}" class="axis" text-anchor="middle">{html.escape(x_label)}</text>'
    )
    out.append("</svg>")
    return "\n".join(out)
