"""Tiny inline-SVG charts for the HTML report: no JavaScript, no fonts, no network.

Two charts cover the report: a labelled scatter (size vs accuracy) and a
horizontal latency chart (p50 bar, p90 tick, whisker to p99) with one row per
(bundle, where it ran). Colours are the Okabe-Ito palette, readable for
colour-blind readers and in print.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

from edgepack.errors import Status

PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#8C564B",
           "#F0E442")
FAILED = "#C62828"
INK, MUTED, GRID = "#1f2933", "#616e7c", "#e4e7eb"
FONT = "font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif"


@dataclass
class Scale:
    """Maps a data interval onto pixels, linear or log10."""

    lo: float
    hi: float
    start: float
    end: float
    log: bool = False

    def __call__(self, v: float) -> float:
        f = self._t(v)
        a, b = self._t(self.lo), self._t(self.hi)
        frac = 0.5 if b == a else (f - a) / (b - a)
        return self.start + frac * (self.end - self.start)

    def _t(self, v: float) -> float:
        return math.log10(max(v, 1e-12)) if self.log else v

    def ticks(self, n: int = 5) -> list[float]:
        if self.log:
            return log_ticks(self.lo, self.hi)
        return nice_ticks(self.lo, self.hi, n)


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5, 5 x 10^k steps) covering [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks, v = [], first
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 12))
        v += step
    return ticks


def log_ticks(lo: float, hi: float) -> list[float]:
    """1-2-5 ticks per decade inside [lo, hi] (only decades when the range is wide)."""
    lo, hi = max(lo, 1e-12), max(hi, 1e-12)
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    mults = (1,) if len(decades) > 4 else (1, 2, 5)
    ticks = [m * 10.0 ** d for d in decades for m in mults]
    inside = [t for t in ticks if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)]
    return inside or [lo, hi]


def padded(lo: float, hi: float, frac: float = 0.08, floor: float | None = None,
           log: bool = False) -> tuple[float, float]:
    """[lo, hi] with a margin so marks never sit on the frame."""
    if log:
        lo, hi = max(lo, 1e-12), max(hi, 1e-12)
        if hi / lo < 1.5:
            return lo / 1.25, hi * 1.25
        f = (hi / lo) ** frac
        return lo / f, hi * f
    if hi - lo < 1e-12:
        span = abs(hi) * 0.01 or 1.0
        lo, hi = lo - span, hi + span
    pad = (hi - lo) * frac
    lo, hi = lo - pad, hi + pad
    return (max(lo, floor) if floor is not None else lo), hi


def fmt_tick(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000 or abs(v) < 0.01:
        return f"{v:.3g}"
    return f"{v:.4g}"


def _svg(width: int, height: int, body: list[str], label: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
            f'width="100%" role="img" aria-label="{escape(label)}" '
            f'style="max-width:{width}px;{FONT}">' + "".join(body) + "</svg>")


def _text(x: float, y: float, s: str, size: int = 12, anchor: str = "start",
          color: str = MUTED, weight: str = "normal", extra: str = "") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" fill="{color}" '
            f'text-anchor="{anchor}" font-weight="{weight}" {extra}>{escape(s)}</text>')


@dataclass
class Point:
    x: float
    y: float
    label: str  # drawn beside the point
    series: str  # colour group (legend)
    tooltip: str
    status: str = Status.PASSED  # passed: filled; deferred: hollow ring; failed: red ring


def scatter(points: list[Point], x_label: str, y_label: str, *, x_log: bool = True,
            reference: tuple[float, str] | None = None, y_max: float | None = None,
            width: int = 900, height: int = 420) -> str:
    """Labelled scatter: filled = passed, hollow ring = deferred (proxy metrics), red ring
    = failed; optional dashed reference line (e.g. the source model's accuracy); y_max
    caps the axis (100 for a percentage)."""
    left, right, top, bottom = 70, 190, 20, 56
    xs = [p.x for p in points]
    ys = [p.y for p in points] + ([reference[0]] if reference else [])
    sx = Scale(*padded(min(xs), max(xs), log=x_log), left, width - right, log=x_log)
    ylo, yhi = padded(min(ys), max(ys), frac=0.12)
    if y_max is not None:
        yhi = min(yhi, max(max(ys), y_max) + (yhi - ylo) * 0.04)
    sy = Scale(ylo, yhi, height - bottom, top)
    body = _frame(sx, sy, left, top, width - right, height - bottom, x_label, y_label)
    # Label boxes must avoid every point and the reference label.
    placed = [(sx(p.x) - 7, sy(p.y) - 7, sx(p.x) + 7, sy(p.y) + 7) for p in points]
    if reference is not None:
        y = sy(reference[0])
        body.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" '
                    f'stroke="{MUTED}" stroke-dasharray="5 4" stroke-width="1"/>')
        placed.append((left, y - 1, width - right, y + 1))
    colours = _series_colours(points)
    for p in sorted(points, key=lambda p: (p.x, p.y)):
        x, y, colour = sx(p.x), sy(p.y), colours[p.series]
        ring = {Status.FAILED: f'fill="white" stroke="{FAILED}" stroke-width="2.5"',
                Status.DEFERRED: f'fill="white" stroke="{colour}" stroke-width="3"'}.get(
            p.status, f'fill="{colour}" stroke="white" stroke-width="1.5"')
        body.append(f'<g class="point"><title>{escape(p.tooltip)}</title>'
                    f'<circle cx="{x:.1f}" cy="{y:.1f}" r="7" {ring}/></g>')
        lx, ly, anchor = _place_label(x, y, p.label, placed, left, width - right)
        body.append(_text(lx, ly, p.label, 12, anchor,
                          FAILED if p.status == Status.FAILED else INK))
    statuses = {p.status for p in points}
    body += _legend(colours, width - right + 16, top + 6, statuses,
                    reference=reference[1] if reference else None)
    return _svg(width, height, body, f"{y_label} against {x_label}")


# Where a label may go, nearest first: centred above/below (slid to stay in the plot),
# beside, then further up/down.
_SPOTS = [(0, -12), (0, 22), (10, 4), (-10, 4), (0, -28), (0, 38), (10, -12), (-10, -12),
          (10, 20), (-10, 20), (0, -44), (0, 54), (0, -60), (0, 70), (0, -76), (0, 86)]


def _place_label(x: float, y: float, label: str, placed: list, lo: float, hi: float
                 ) -> tuple[float, float, str]:
    """The nearest spot around the point whose box stays in the plot and overlaps no
    point, no earlier label and not the reference line. Returns (x, y, anchor)."""
    w, h = 7.0 * len(label), 14.0
    for dx, dy in _SPOTS:
        if dx == 0:
            x0 = min(max(x - w / 2, lo), hi - w)
        else:
            x0 = x + dx if dx > 0 else x + dx - w
        box = (x0, y + dy - h + 3, x0 + w, y + dy + 3)
        if box[0] >= lo and box[2] <= hi and not any(_overlap(box, b) for b in placed):
            placed.append(box)
            return x0, y + dy, "start"
    placed.append((x - 10 - w, y - 10, x - 10, y + 4))
    return x - 10, y + 4, "end"


def _overlap(a: tuple, b: tuple) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _series_colours(points: list[Point]) -> dict[str, str]:
    names = list(dict.fromkeys(p.series for p in points))
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}


def _legend(colours: dict[str, str], x: float, y: float, statuses: set[str],
            reference: str | None = None) -> list[str]:
    out = []
    for name, colour in colours.items():
        out.append(f'<circle cx="{x + 6}" cy="{y:.1f}" r="6" fill="{colour}"/>')
        out.append(_text(x + 18, y + 4, name, 12, color=INK))
        y += 22
    if Status.DEFERRED in statuses:
        out.append(f'<circle cx="{x + 6}" cy="{y:.1f}" r="5" fill="white" stroke="{MUTED}" '
                   'stroke-width="2.5"/>')
        out.append(_text(x + 18, y + 4, "deferred (proxy metrics)", 12, color=INK))
        y += 22
    if Status.FAILED in statuses:
        out.append(f'<circle cx="{x + 6}" cy="{y:.1f}" r="5" fill="white" stroke="{FAILED}" '
                   'stroke-width="2.5"/>')
        out.append(_text(x + 18, y + 4, "failed validation", 12, color=FAILED))
        y += 22
    if reference:
        out.append(f'<line x1="{x - 2}" x2="{x + 13}" y1="{y:.1f}" y2="{y:.1f}" stroke="{MUTED}" '
                   'stroke-dasharray="4 3"/>')
        out.append(_text(x + 18, y + 4, reference, 12, color=INK))
    return out


def _frame(sx: Scale, sy: Scale | None, x0: float, y0: float, x1: float, y1: float,
           x_label: str, y_label: str | None) -> list[str]:
    """Grid, ticks and axis titles."""
    out = [f'<rect x="{x0}" y="{y0}" width="{x1 - x0}" height="{y1 - y0}" fill="#fbfcfd" '
           f'stroke="{GRID}"/>']
    for t in sx.ticks(6):
        x = sx(t)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y0}" y2="{y1}" stroke="{GRID}"/>')
        out.append(_text(x, y1 + 18, fmt_tick(t), 11, "middle"))
    out.append(_text((x0 + x1) / 2, y1 + 40, x_label, 12, "middle", INK, "600"))
    if sy is not None and y_label is not None:
        for t in sy.ticks(6):
            y = sy(t)
            out.append(f'<line x1="{x0}" x2="{x1}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}"/>')
            out.append(_text(x0 - 8, y + 4, fmt_tick(t), 11, "end"))
        mid = (y0 + y1) / 2
        out.append(_text(16, mid, y_label, 12, "middle", INK, "600",
                         f'transform="rotate(-90 16 {mid:.1f})"'))
    return out


@dataclass
class Bar:
    """One latency row: p50 bar, p90 tick, whisker from min(p50, p90) to p99."""

    group: str  # bundle label, shown once per group
    where: str  # host / device label
    p50: float
    p90: float | None
    p99: float | None
    series: str  # colour group: "host" or a device


def latency_chart(bars: list[Bar], x_label: str = "latency (ms), batch as built",
                  width: int = 900) -> str:
    """Horizontal latency ranges grouped by bundle; log scale when the spread is wide."""
    left, right, top, bottom, row, gap = 230, 24, 12, 52, 24, 10
    groups = list(dict.fromkeys(b.group for b in bars))
    height = top + bottom + row * len(bars) + gap * (len(groups) - 1)
    values = [v for b in bars for v in (b.p50, b.p90, b.p99) if v]
    lo, hi = min(values), max(values)
    log = hi / max(lo, 1e-12) > 20
    dlo, dhi = padded(lo, hi, log=log) if log else (0.0, padded(lo, hi, 0.06)[1])
    sx = Scale(dlo, dhi, left, width - right, log=log)
    body = _frame(sx, None, left, top, width - right, height - bottom, x_label, None)
    colours = {n: PALETTE[i % len(PALETTE)]
               for i, n in enumerate(dict.fromkeys(b.series for b in bars))}
    y, previous = float(top) + 4, None
    for b in bars:
        if previous is not None and b.group != previous:
            y += gap
            body.append(f'<line x1="8" x2="{width - right}" y1="{y - gap / 2 - 2:.1f}" '
                        f'y2="{y - gap / 2 - 2:.1f}" stroke="{GRID}"/>')
        mid = y + row / 2 - 2
        if b.group != previous:
            body.append(_text(8, mid + 4, b.group, 12, color=INK, weight="600"))
        body.append(_text(left - 8, mid + 4, b.where, 11, "end"))
        x0, colour = sx(dlo), colours[b.series]
        tip = (f"{b.group} on {b.where}: p50 {b.p50:.4g} ms"
               + (f", p90 {b.p90:.4g}" if b.p90 else "") + (f", p99 {b.p99:.4g}" if b.p99 else ""))
        parts = [f'<title>{escape(tip)}</title>',
                 f'<rect x="{x0:.1f}" y="{mid - 7:.1f}" width="{max(sx(b.p50) - x0, 1):.1f}" '
                 f'height="14" rx="3" fill="{colour}" opacity="0.85"/>']
        if b.p99:
            w0 = sx(min(b.p50, b.p90 or b.p50))
            parts.append(f'<line x1="{w0:.1f}" x2="{sx(b.p99):.1f}" y1="{mid:.1f}" '
                         f'y2="{mid:.1f}" stroke="{INK}" stroke-width="1.2"/>')
            parts.append(f'<line x1="{sx(b.p99):.1f}" x2="{sx(b.p99):.1f}" y1="{mid - 5:.1f}" '
                         f'y2="{mid + 5:.1f}" stroke="{INK}" stroke-width="1.2"/>')
        if b.p90:
            parts.append(f'<line x1="{sx(b.p90):.1f}" x2="{sx(b.p90):.1f}" y1="{mid - 7:.1f}" '
                         f'y2="{mid + 7:.1f}" stroke="{INK}" stroke-width="2"/>')
        body.append('<g class="latency">' + "".join(parts) + "</g>")
        y += row
        previous = b.group
    if log:
        body.append(_text(width - right, height - 12, "log scale", 11, "end"))
    return _svg(width, height, body, "latency percentiles per bundle")
