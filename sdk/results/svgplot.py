"""Small SVG charts in pure Python (no matplotlib): a latency histogram and latency (or temperature) over time.

Each function returns a complete ``<svg>`` document as a string; :func:`data_uri` makes it an ``<img>`` source.
"""
from __future__ import annotations

import base64
import math
from html import escape

import numpy as np

__all__ = ["PALETTE", "histogram", "timeseries", "data_uri", "nice_ticks"]

PALETTE = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"]
FONT = "font-family=\"system-ui,-apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif\""


def data_uri(svg: str) -> str:
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")


def nice_ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    """Round tick values covering [lo, hi] (1/2/5 x 10^k steps)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks, v = [], start
    while v <= hi + step * 1e-9:
        if v >= lo - step * 1e-9:
            ticks.append(round(v, 10))
        v += step
    return ticks


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

    def legend(self, labels_colors) -> list[str]:
        """One row under the title, left to right (wraps to a second row when long)."""
        p, x, y = [], float(self.l), 42
        for label, color in labels_colors:
            label = label if len(label) <= 60 else label[:59] + "…"
            wtxt = 6.4 * len(label) + 34
            if x + wtxt > self.w - self.r and x > self.l:
                x, y = float(self.l), y + 15
            p.append(f'<rect x="{x:.1f}" y="{y - 10}" width="12" height="12" fill="{color}" rx="2"/>')
            p.append(f'<text x="{x + 16:.1f}" y="{y}" font-size="11" fill="#111827" {FONT}>{escape(label)}</text>')
            x += wtxt
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
