"""Small SVG charts in pure Python (no matplotlib): a latency histogram, latency (or temperature) over time, and
latency against accuracy with its Pareto front.

Each function returns a complete ``<svg>`` document as a string; :func:`data_uri` makes it an ``<img>`` source.
"""
from __future__ import annotations

import base64
import math
from html import escape

import numpy as np

__all__ = ["PALETTE", "histogram", "timeseries", "scatter", "data_uri", "nice_ticks"]

PALETTE = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"]
FONT = "font-family=\"system-ui,-apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif\""


def data_uri(svg: str) -> str:
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")


def nice_ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    """Round tick values covering [lo, hi] (1/2/5 x 10^k steps); at most a few hundred, whatever the values."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        lo = lo if math.isfinite(lo) else 0.0
        hi = lo + 1.0
    raw = (hi - lo) / max(1, n)
    if not math.isfinite(raw) or raw <= 0:  # a span too wide or too narrow for floats: ends only
        return [lo, hi] if hi > lo else [lo]
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    # ticks counted in whole steps (adding a step to a large value may not change it: a loop would not end)
    first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
    digits = max(0, 3 - math.floor(math.log10(step)))  # no float noise (0.30000000000000004) in the labels
    return [round(k * step, digits) for k in range(first, min(last, first + 500) + 1)]


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}".rstrip("0").rstrip(".")
    if abs(v) >= 1:
        return f"{v:.2f}".rstrip("0").rstrip(".")
    return f"{v:.3g}"


class _Frame:
    def __init__(self, width, height, xlo, xhi, ylo, yhi, left=64, right=16, top=56, bottom=48):
        self.w, self.h = width, height
        self.l, self.r, self.t, self.b = left, right, top, bottom
        self.xlo, self.xhi, self.ylo, self.yhi = xlo, xhi if xhi > xlo else xlo + 1, ylo, yhi if yhi > ylo else ylo + 1

    def x(self, v):
        return self.l + (v - self.xlo) / (self.xhi - self.xlo) * (self.w - self.l - self.r)

    def y(self, v):
        return self.h - self.b - (v - self.ylo) / (self.yhi - self.ylo) * (self.h - self.t - self.b)

    def axes(self, xticks, yticks, xlabel, ylabel, title) -> list[str]:
        p = [f'<rect x="0" y="0" width="{self.w}" height="{self.h}" fill="#ffffff"/>',
             f'<text x="{self.l}" y="20" font-size="14" font-weight="600" fill="#111827" {FONT}>{escape(title)}</text>']
        for t in yticks:
            y = self.y(t)
            p.append(f'<line x1="{self.l}" x2="{self.w - self.r}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e7eb"/>')
            p.append(f'<text x="{self.l - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end" fill="#374151" '
                     f'{FONT}>{_fmt(t)}</text>')
        for t in xticks:
            x = self.x(t)
            p.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{self.h - self.b}" y2="{self.h - self.b + 4}" '
                     f'stroke="#6b7280"/>')
            p.append(f'<text x="{x:.1f}" y="{self.h - self.b + 17}" font-size="11" text-anchor="middle" '
                     f'fill="#374151" {FONT}>{_fmt(t)}</text>')
        p.append(f'<line x1="{self.l}" x2="{self.w - self.r}" y1="{self.h - self.b}" y2="{self.h - self.b}" '
                 f'stroke="#6b7280"/>')
        p.append(f'<line x1="{self.l}" x2="{self.l}" y1="{self.t}" y2="{self.h - self.b}" stroke="#6b7280"/>')
        p.append(f'<text x="{(self.l + self.w - self.r) / 2:.1f}" y="{self.h - 10}" font-size="12" '
                 f'text-anchor="middle" fill="#111827" {FONT}>{escape(xlabel)}</text>')
        cy = (self.t + self.h - self.b) / 2
        p.append(f'<text x="14" y="{cy:.1f}" font-size="12" text-anchor="middle" fill="#111827" '
                 f'transform="rotate(-90 14 {cy:.1f})" {FONT}>{escape(ylabel)}</text>')
        return p

    def legend(self, labels_colors, y: float = 42, mark=None) -> list[str]:
        """One row under the title, left to right (wraps to further rows when long); ``mark(x, y)`` draws an
        entry's symbol instead of a square of its colour. ``self.legend_end`` is the baseline of the last row."""
        p, x = [], float(self.l)
        for label, color in labels_colors:
            label = label if len(label) <= 60 else label[:59] + "…"
            wtxt = 6.4 * len(label) + 34
            if x + wtxt > self.w - self.r and x > self.l:
                x, y = float(self.l), y + 15
            p.append(mark(x, y, color) if mark else
                     f'<rect x="{x:.1f}" y="{y - 10}" width="12" height="12" fill="{color}" rx="2"/>')
            p.append(f'<text x="{x + 16:.1f}" y="{y}" font-size="11" fill="#111827" {FONT}>{escape(label)}</text>')
            x += wtxt
        self.legend_end = y
        return p


def _svg(width, height, parts, desc) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img"><title>{escape(desc)}</title>' + "".join(parts) + "</svg>")


def _upper(a: np.ndarray) -> float:
    """Upper end of the axis: the 99.5th percentile, but no further than 5 IQRs past the 3rd quartile
    (a few preempted runs must not squash the distribution into one bar)."""
    q1, q3, p995 = np.percentile(a, [25, 75, 99.5])
    return float(min(p995, q3 + 5 * max(q3 - q1, 1e-9 * abs(q3))))


def histogram(series: list[tuple[str, list[float]]], width: int = 1000, height: int = 320, bins: int = 60,
              title: str = "Latency distribution") -> str:
    """Overlaid histograms (share of runs per bin); x from the 0.5th percentile to :func:`_upper`."""
    arrs = [np.asarray(s, dtype=np.float64) for _, s in series if len(s)]
    if not arrs:
        return _svg(width, height, [f'<text x="20" y="40" {FONT}>no samples</text>'], title)
    lo = min(float(np.percentile(a, 0.5)) for a in arrs)
    hi = max(_upper(a) for a in arrs)
    if hi <= lo:
        lo, hi = lo * 0.95, hi * 1.05 + 1e-6
    pad = (hi - lo) * 0.03
    lo, hi = max(0.0, lo - pad), hi + pad
    edges = np.linspace(lo, hi, bins + 1)
    shares, clipped = [], 0
    for a in arrs:
        c, _ = np.histogram(a[(a >= lo) & (a <= hi)], edges)
        clipped += int((a > hi).sum())
        shares.append(c / a.size * 100)
    ymax = max(float(s.max()) for s in shares) * 1.1
    yt = nice_ticks(0, ymax, 5)
    f = _Frame(width, height, lo, hi, 0, max(yt[-1], ymax))
    parts = f.axes(nice_ticks(lo, hi, 8), yt, "latency (ms)", "share of runs (%)", title)
    multi = len(arrs) > 1
    for i, s in enumerate(shares):
        color = PALETTE[i % len(PALETTE)]
        for j, v in enumerate(s):
            if v <= 0:
                continue
            x0, x1 = f.x(edges[j]), f.x(edges[j + 1])
            y = f.y(v)
            parts.append(f'<rect x="{x0:.2f}" y="{y:.2f}" width="{max(0.5, x1 - x0 - 0.6):.2f}" '
                         f'height="{f.y(0) - y:.2f}" fill="{color}" fill-opacity="{0.45 if multi else 0.8}"/>')
    for i, a in enumerate(arrs):  # p50 markers
        color = PALETTE[i % len(PALETTE)]
        x = f.x(float(np.median(a)))
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{f.t}" y2="{f.y(0)}" stroke="{color}" '
                     f'stroke-width="1.5" stroke-dasharray="4 3"/>')
    parts += f.legend([(f"{lab} (p50 {float(np.median(a)):.3g} ms)", PALETTE[i % len(PALETTE)])
                       for i, ((lab, _), a) in enumerate(zip(series, arrs))])
    if clipped:
        parts.append(f'<text x="{width - 16}" y="{height - 10}" font-size="10" text-anchor="end" fill="#6b7280" '
                     f'{FONT}>{clipped} slow outliers beyond the axis</text>')
    return _svg(width, height, parts, title)


def _rolling_median(y: np.ndarray, k: int) -> np.ndarray:
    if y.size < k or k < 3:
        return y
    from numpy.lib.stride_tricks import sliding_window_view
    m = np.median(sliding_window_view(y, k), axis=1)
    return np.concatenate([np.full(k // 2, m[0]), m, np.full(y.size - m.size - k // 2, m[-1])])


def timeseries(series: list[tuple[str, list[float], list[float]]], width: int = 1000, height: int = 320,
               title: str = "Latency over time", ylabel: str = "latency (ms)", xlabel: str = "time (s)",
               points: bool = True, max_points: int = 1500) -> str:
    """Each series (label, t, y): dots (down-sampled) plus a rolling median line; y clipped at p99.5."""
    data = [(lab, np.asarray(t, dtype=np.float64), np.asarray(y, dtype=np.float64)) for lab, t, y in series
            if len(y)]
    if not data:
        return _svg(width, height, [f'<text x="20" y="40" {FONT}>no samples</text>'], title)
    xlo = min(float(t.min()) for _, t, _ in data)
    xhi = max(float(t.max()) for _, t, _ in data)
    ylo = min(float(np.percentile(y, 0.5)) for _, _, y in data)
    yhi = max(_upper(y) for _, _, y in data)
    pad = (yhi - ylo) * 0.08 or abs(yhi) * 0.05 or 1.0
    ylo, yhi = max(0.0, ylo - pad) if ylo >= 0 else ylo - pad, yhi + pad
    yt = nice_ticks(ylo, yhi, 5)
    f = _Frame(width, height, xlo, xhi if xhi > xlo else xlo + 1, min(yt[0], ylo), max(yt[-1], yhi))
    parts = f.axes(nice_ticks(xlo, xhi if xhi > xlo else xlo + 1, 8), yt, xlabel, ylabel, title)
    for i, (lab, t, y) in enumerate(data):
        color = PALETTE[i % len(PALETTE)]
        if points:
            step = max(1, y.size // max_points)
            yc = np.clip(y[::step], f.ylo, f.yhi)
            parts.append("".join(f'<circle cx="{f.x(a):.1f}" cy="{f.y(b):.1f}" r="1.6" fill="{color}" '
                                 f'fill-opacity="0.35"/>' for a, b in zip(t[::step], yc)))
        k = max(3, min(201, (y.size // 50) | 1)) if points else 1
        m = _rolling_median(y, k) if points else y
        step = max(1, m.size // 600)
        pts = " ".join(f"{f.x(a):.1f},{f.y(min(max(b, f.ylo), f.yhi)):.1f}" for a, b in zip(t[::step], m[::step]))
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2"/>')
    parts += f.legend([(lab + (" (rolling median)" if points else ""), PALETTE[i % len(PALETTE)])
                       for i, (lab, _, _) in enumerate(data)])
    return _svg(width, height, parts, title)


# Marks for a second grouping (shape) next to colour; drawn centred on (x, y) with size r.
_SHAPES = ("circle", "square", "triangle", "diamond")
PLOT_LIMIT = 1e12   # values beyond this are not drawn: a crafted or broken number must not flatten the others


def _mark(shape: str, x: float, y: float, r: float, attrs: str) -> str:
    if shape == "square":
        return f'<rect x="{x - r:.1f}" y="{y - r:.1f}" width="{2 * r:.1f}" height="{2 * r:.1f}" {attrs}/>'
    if shape == "triangle":
        return f'<polygon points="{x:.1f},{y - r * 1.2:.1f} {x - r * 1.1:.1f},{y + r * 0.8:.1f} ' \
               f'{x + r * 1.1:.1f},{y + r * 0.8:.1f}" {attrs}/>'
    if shape == "diamond":
        return f'<polygon points="{x:.1f},{y - r * 1.3:.1f} {x + r * 1.3:.1f},{y:.1f} {x:.1f},{y + r * 1.3:.1f} ' \
               f'{x - r * 1.3:.1f},{y:.1f}" {attrs}/>'
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" {attrs}/>'


def _span(values: list[float]) -> tuple[float, float]:
    """An axis range around ``values`` with a margin; never empty, never narrower than floats can tell apart."""
    lo, hi = min(values), max(values)
    width = max(hi - lo, 1e-6 * max(abs(lo), abs(hi)), 1e-9)
    return lo - width * 0.06, hi + width * 0.06


def _capped(entries: list[tuple[str, str]], n: int) -> list[tuple[str, str]]:
    """At most ``n`` legend entries, then one that says how many more (a legend must not cover the plot)."""
    return entries if len(entries) <= n else entries[:n] + [(f"… {len(entries) - n} more", "#ffffff")]


def scatter(points: list[tuple[str, float, float, str, str]], front: list[int] = (), width: int = 1000,
            height: int = 440, title: str = "Latency against accuracy", xlabel: str = "p90 latency (ms)",
            ylabel: str = "accuracy", max_labels: int = 24) -> str:
    """Points ``(label, x, y, colour group, shape group)``: colour by the first group (a model), shape by the
    second (a target), with a legend of both. ``front``: indices of the Pareto front, drawn ringed, joined by a
    step line and labelled (at most ``max_labels``). Every point has a ``<title>`` (its label and values).

    A point with a value that is not a finite number within ±1e12 is not drawn; the plot says how many."""
    ok = [i for i, p in enumerate(points)
          if all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and abs(v) <= PLOT_LIMIT
                 for v in (p[1], p[2]))]
    if not ok:
        return _svg(width, height, [f'<text x="20" y="40" {FONT}>no cell with both a latency and an accuracy</text>'],
                    title)
    xlo, xhi = _span([float(points[i][1]) for i in ok])
    ylo, yhi = _span([float(points[i][2]) for i in ok])
    if min(float(points[i][1]) for i in ok) >= 0:
        xlo = max(0.0, xlo)  # latencies: the axis starts at 0 or above, not at a negative margin
    colours = {g: PALETTE[n % len(PALETTE)] for n, g in enumerate(dict.fromkeys(str(points[i][3]) for i in ok))}
    shapes = {g: _SHAPES[n % len(_SHAPES)] for n, g in enumerate(dict.fromkeys(str(points[i][4]) for i in ok))}
    # the legends first (on a scratch frame): the plot area starts under their last row
    scratch = _Frame(width, height, 0, 1, 0, 1, left=72)
    legend = scratch.legend(_capped(list(colours.items()), 12))
    legend += scratch.legend(_capped([(g, shapes[g]) for g in shapes], 8), y=scratch.legend_end + 18,
                             mark=lambda x, y, shape: _mark(shape, x + 6, y - 4, 5, 'fill="#6b7280"')
                             if shape in _SHAPES else "")
    xt, yt = nice_ticks(xlo, xhi, 8), nice_ticks(ylo, yhi, 6)
    f = _Frame(width, height, min([xlo] + xt[:1]), max([xhi] + xt[-1:]), min([ylo] + yt[:1]), max([yhi] + yt[-1:]),
               left=72, top=min(int(scratch.legend_end) + 20, height // 2))
    parts = f.axes(xt, yt, xlabel, ylabel, title) + legend
    drawn = set(ok)
    on_front = [i for i in front if i in drawn]
    if len(on_front) > 1:  # the front as a staircase: what each latency buys at best
        pts = []
        for a, b in zip(on_front, on_front[1:]):
            pts += [(points[a][1], points[a][2]), (points[b][1], points[a][2])]
        pts.append((points[on_front[-1]][1], points[on_front[-1]][2]))
        parts.append('<polyline points="' + " ".join(f"{f.x(x):.1f},{f.y(y):.1f}" for x, y in pts)
                     + '" fill="none" stroke="#111827" stroke-width="1.2" stroke-dasharray="5 3" opacity="0.7"/>')
    front_set = set(on_front)
    for i in ok:
        label, x, y, cg, sg = points[i]
        tip = f"{label}: {_fmt(float(x))} ms, {_fmt(float(y))}" + (" (Pareto front)" if i in front_set else "")
        attrs = (f'fill="{colours[str(cg)]}" fill-opacity="0.9" stroke="#111827" stroke-width="1.6"'
                 if i in front_set else f'fill="{colours[str(cg)]}" fill-opacity="0.55" stroke="#ffffff" '
                                        f'stroke-width="0.8"')
        parts.append(f"<g><title>{escape(tip)}</title>"
                     + _mark(shapes[str(sg)], f.x(x), f.y(y), 6.5 if i in front_set else 5, attrs) + "</g>")
    placed, unlabelled = [], 0  # label boxes (x0, x1, baseline): a label that would cover another is left out
    for i in on_front:
        label = str(points[i][0])
        label = label if len(label) <= 40 else label[:39] + "…"
        x, y = f.x(points[i][1]), f.y(points[i][2])
        wide = 5.8 * len(label)
        x0 = x - 9 - wide if x > width * 0.75 else x + 9
        spot = next((b for b in (y - 8, y + 16) if not any(x0 < p1 and p0 < x0 + wide and abs(b - pb) < 12
                                                           for p0, p1, pb in placed)), None)
        if spot is None or len(placed) >= max_labels:
            unlabelled += 1
            continue
        placed.append((x0, x0 + wide, spot))
        parts.append(f'<text x="{x0:.1f}" y="{spot:.1f}" font-size="10.5" fill="#111827" {FONT}>{escape(label)}'
                     f'</text>')
    skipped = len(points) - len(ok)
    notes = [f"{skipped} not drawn (a value that is not a finite number within ±1e12)"] if skipped else []
    if unlabelled:
        notes.append(f"{unlabelled} on the front not labelled (no room: see the table)")
    if notes:
        parts.append(f'<text x="{width - 16}" y="{height - 10}" font-size="10" text-anchor="end" fill="#6b7280" '
                     f'{FONT}>{escape("; ".join(notes))}</text>')
    return _svg(width, height, parts, title)
