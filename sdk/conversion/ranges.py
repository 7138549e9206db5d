"""Activation range estimators for INT8 calibration (numpy only, deterministic).

Both routes quantize activations per tensor; the range given to the quantizer decides the step
(``(hi - lo) / levels``) and what is clipped. Estimators, from per-sample statistics of a tensor's float
values on the calibration samples:

- ``minmax``: the global minimum and maximum (what the converters do by themselves);
- ``mean_minmax``: the mean over samples of each sample's minimum and of each sample's maximum (NNCF's
  default, ``RangeEstimatorParametersSet.MEAN_MINMAX``): one outlier sample does not stretch the step for all;
- ``percentile``: the ``percentile``-th percentile of the values (of ``|x|`` when symmetric);
- ``mse``: the range whose INT8 grid gives the smallest mean squared quantization error on the values:
  clipping error exactly, rounding error as ``step**2 / 12`` per value inside the range (the uniform model;
  exact zeros cost nothing: 0 is on the grid of both routes).

Asymmetric ranges (TFLite activations, 255 steps) always include 0, as the TFLite quantizer requires;
symmetric ranges (QDQ for TensorRT, zero point 0, 254 steps: -127..127) are ``(-t, t)``.
"""
from __future__ import annotations

import numpy as np

from edgeopt.conversion.defaults import DEFAULT_PERCENTILE

__all__ = ["METHODS", "NEEDS_VALUES", "Collector", "estimate", "mse_range"]

METHODS = ("minmax", "mean_minmax", "percentile", "mse")
NEEDS_VALUES = frozenset({"percentile", "mse"})   # methods that look at the values, not only min/max
KEEP_PER_SAMPLE = 1024   # values kept per tensor and sample for percentile/mse (a fixed pseudo-random subset)
_CANDIDATES = 100        # clipping points tried per side by the MSE search


class Collector:
    """Per-tensor statistics over calibration samples: each sample's min and max, and (``keep_values``) a
    fixed pseudo-random subset of its values (the same positions for every sample of a given size, so
    the result does not depend on anything but the data)."""

    def __init__(self, keep_values: bool = False, keep: int = KEEP_PER_SAMPLE):
        self.keep_values, self.keep = keep_values, keep
        self.mins: dict[str, list] = {}
        self.maxs: dict[str, list] = {}
        self.values: dict[str, list] = {}
        self._index: dict[int, np.ndarray] = {}

    def add(self, name: str, array) -> None:
        """One sample's values of tensor ``name`` (non-finite values ignored)."""
        v = np.asarray(array).reshape(-1)
        if v.size == 0 or not np.issubdtype(v.dtype, np.floating):
            return
        if not np.all(np.isfinite(v)):
            v = v[np.isfinite(v)]
            if v.size == 0:
                return
        self.mins.setdefault(name, []).append(float(v.min()))
        self.maxs.setdefault(name, []).append(float(v.max()))
        if self.keep_values:
            if v.size > self.keep:
                # a strided subset could alias with the channel count (NHWC: every k-th value one channel)
                idx = self._index.get(v.size)
                if idx is None:
                    idx = np.sort(np.random.default_rng(v.size).choice(v.size, self.keep, replace=False))
                    self._index[v.size] = idx
                v = v[idx]
            self.values.setdefault(name, []).append(v.astype(np.float32))

    def names(self) -> list[str]:
        """Tensors seen, in the order first added."""
        return list(self.mins)

    def ranges(self, method: str, symmetric: bool, percentile: float = DEFAULT_PERCENTILE) -> dict:
        """{tensor: (lo, hi)} by ``method`` (one of METHODS)."""
        if method in NEEDS_VALUES and not self.keep_values:
            raise ValueError(f"range method {method!r} needs a Collector(keep_values=True)")
        res = {}
        for name in self.mins:
            vals = np.concatenate(self.values[name]) if method in NEEDS_VALUES else None
            res[name] = estimate(method, self.mins[name], self.maxs[name], vals, symmetric, percentile)
        return res


def estimate(method: str, mins, maxs, values=None, symmetric: bool = False,
             percentile: float = DEFAULT_PERCENTILE) -> tuple[float, float]:
    """(lo, hi) of one tensor from per-sample minima/maxima and (percentile, mse) its values."""
    if method not in METHODS:
        raise ValueError(f"range method {method!r}: expected one of {', '.join(METHODS)}")
    mins = np.asarray(mins, np.float64)
    maxs = np.asarray(maxs, np.float64)
    if mins.size == 0:
        raise ValueError("no samples")
    if method == "minmax":
        lo, hi = float(mins.min()), float(maxs.max())
    elif method == "mean_minmax":
        lo, hi = float(mins.mean()), float(maxs.mean())
    else:
        v = np.asarray(values, np.float64).reshape(-1)
        if v.size == 0:
            raise ValueError("no values")
        if method == "percentile":
            if symmetric:
                t = float(np.percentile(np.abs(v), percentile))
                lo, hi = -t, t
            else:
                lo = float(np.percentile(v, 100.0 - percentile))
                hi = float(np.percentile(v, percentile))
        else:
            return mse_range(v, symmetric)
    if symmetric:
        t = max(abs(lo), abs(hi))
        return -t, t
    return min(lo, 0.0), max(hi, 0.0)


def mse_range(values, symmetric: bool = False, candidates: int = _CANDIDATES) -> tuple[float, float]:
    """The clipping range that minimises the mean squared INT8 quantization error of ``values``.

    Candidates are fractions (1/candidates .. 1) of the min-max range, per side for asymmetric ranges
    (a grid of both), of the absolute maximum for symmetric ones. Clipping error is computed exactly
    (sorted values, prefix sums); rounding error as step**2/12 per non-zero value inside the range.
    The first minimum wins (ties: the narrower range), so the result is deterministic."""
    v = np.asarray(values, np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("no values")
    frac = np.arange(1, candidates + 1, dtype=np.float64) / candidates
    if symmetric:
        a = np.sort(np.abs(v))
        top = a[-1]
        if top == 0:
            return 0.0, 0.0
        t = top * frac
        c1 = np.concatenate([[0.0], np.cumsum(a)])
        c2 = np.concatenate([[0.0], np.cumsum(a * a)])
        n = a.size
        k = np.searchsorted(a, t, side="right")       # values inside [-t, t]
        clip = (c2[n] - c2[k]) - 2 * t * (c1[n] - c1[k]) + (n - k) * t * t
        zeros = np.searchsorted(a, 0.0, side="right")
        step = 2 * t / 254.0
        cost = clip + (k - zeros) * step * step / 12.0
        best = int(np.argmin(cost))
        return -float(t[best]), float(t[best])
    s = np.sort(v)
    n = s.size
    lo_all, hi_all = min(float(s[0]), 0.0), max(float(s[-1]), 0.0)
    if hi_all == lo_all:
        return lo_all, hi_all
    c1 = np.concatenate([[0.0], np.cumsum(s)])
    c2 = np.concatenate([[0.0], np.cumsum(s * s)])
    his = hi_all * frac if hi_all > 0 else np.zeros(1)
    los = lo_all * frac if lo_all < 0 else np.zeros(1)
    kh = np.searchsorted(s, his, side="right")       # s[kh:] > hi are clipped down to hi
    clip_hi = (c2[n] - c2[kh]) - 2 * his * (c1[n] - c1[kh]) + (n - kh) * his * his
    kl = np.searchsorted(s, los, side="left")        # s[:kl] < lo are clipped up to lo
    clip_lo = c2[kl] - 2 * los * c1[kl] + kl * los * los
    zeros = np.searchsorted(s, 0.0, side="right") - np.searchsorted(s, 0.0, side="left")
    inside = kh[None, :] - kl[:, None] - zeros        # non-zero values inside [lo, hi]
    step = (his[None, :] - los[:, None]) / 255.0
    cost = clip_lo[:, None] + clip_hi[None, :] + inside * step * step / 12.0
    i, j = np.unravel_index(int(np.argmin(cost)), cost.shape)
    return float(los[i]), float(his[j])
