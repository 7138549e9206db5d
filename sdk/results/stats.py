"""Latency statistics on the host, from the raw samples the runner returns (numpy only).

    from edgeopt.results import stats
    s = stats.summarize(samples_ms)            # percentiles, mean, std, cv, ci95, unstable
    t = stats.mann_whitney(a_ms, b_ms)         # U test, normal approximation, tie corrected

Percentiles are numpy's linear ones. Confidence intervals are percentile bootstraps with a fixed seed, so the
same samples always give the same interval. Latency samples in a row are not fully independent (caches,
clocks, neighbours), so the intervals and p-values are a little optimistic: read them as "noise vs signal",
not as exact probabilities.
"""
from __future__ import annotations

import math

import numpy as np

from edgeopt.runtime import latency_stats

__all__ = ["CV_THRESHOLD", "summarize", "percentiles", "bootstrap_ci", "mann_whitney", "compare_samples",
           "over_time"]

CV_THRESHOLD = 0.10   # coefficient of variation above which a run is flagged unstable
N_BOOT = 2000
SEED = 0


def percentiles(samples_ms) -> dict:
    """min/p50/p90/p95/p99/mean/std/max/cv of the samples (std with ddof=1; cv = std/mean): the runner's own
    computation, so host and device report the same numbers."""
    return latency_stats(samples_ms)


def _boot_stats(a: np.ndarray, n_boot: int, seed: int, fns) -> list[np.ndarray]:
    """Bootstrap replicates of each statistic in ``fns`` (resampling with replacement, chunked for memory)."""
    rng = np.random.default_rng(seed)
    n = a.size
    out = [np.empty(n_boot) for _ in fns]
    chunk = max(1, min(n_boot, 4_000_000 // max(1, n)))
    for s in range(0, n_boot, chunk):
        k = min(chunk, n_boot - s)
        res = a[rng.integers(0, n, size=(k, n))]
        for o, fn in zip(out, fns):
            o[s:s + k] = fn(res)
    return out


BOOT_BUDGET = 1_500_000   # resampled values per statistic: long runs get fewer replicates (>= 200)


def boot_count(n: int, n_boot: int = N_BOOT) -> int:
    """Replicates for ``n`` samples: ``n_boot``, fewer for long runs so a CI costs well under a second."""
    return int(max(200, min(n_boot, BOOT_BUDGET // max(1, n))))


def bootstrap_ci(samples_ms, level: float = 0.95, n_boot: int = N_BOOT, seed: int = SEED) -> dict:
    """Percentile-bootstrap confidence intervals of the median and the mean: {'p50': [lo, hi], 'mean': [lo, hi]}."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size < 2:
        v = float(a[0]) if a.size else None
        return {"p50": [v, v], "mean": [v, v], "level": level, "n_boot": 0}
    n_boot = boot_count(a.size, n_boot)
    med, mean = _boot_stats(a, n_boot, seed, [lambda r: np.median(r, axis=1), lambda r: r.mean(axis=1)])
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    return {"p50": [float(x) for x in np.percentile(med, q)], "mean": [float(x) for x in np.percentile(mean, q)],
            "level": level, "n_boot": n_boot}


def over_time(samples_ms, timestamps_s=None, buckets: int = 10) -> list[dict]:
    """The run cut into ``buckets`` equal time slices: [{'t_s', 'p50', 'n'}...] (drift / thermal behaviour)."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        return []
    t = np.asarray(timestamps_s, dtype=np.float64) if timestamps_s is not None and len(timestamps_s) == a.size \
        else np.cumsum(a) / 1e3
    edges = np.linspace(t.min(), t.max() + 1e-9, buckets + 1)
    out = []
    for i in range(buckets):
        m = (t >= edges[i]) & (t < edges[i + 1])
        if m.any():
            out.append({"t_s": float((edges[i] + edges[i + 1]) / 2), "p50": float(np.median(a[m])),
                        "n": int(m.sum())})
    return out


def summarize(samples_ms, timestamps_s=None, cv_threshold: float = CV_THRESHOLD, n_boot: int = N_BOOT,
              seed: int = SEED) -> dict:
    """Everything the bench JSON reports about latency, computed from the samples.

    Returns ``{"latency_ms": {...percentiles, cv}, "ci95": {"p50": [lo, hi], "mean": [lo, hi]},
    "unstable": bool, "drift": {"first_p50", "last_p50", "change"}}``.
    """
    a = np.asarray(samples_ms, dtype=np.float64)
    lat = percentiles(a)
    out = {"latency_ms": lat, "ci95": bootstrap_ci(a, 0.95, n_boot, seed),
           "unstable": bool(lat and lat["cv"] > cv_threshold), "cv_threshold": cv_threshold}
    if a.size >= 20:
        # first vs last tenth of the run: a slow-down here is what thermal throttling looks like
        k = max(2, a.size // 10)
        first, last = float(np.median(a[:k])), float(np.median(a[-k:]))
        out["drift"] = {"first_p50": first, "last_p50": last, "change": (last / first - 1) if first > 0 else 0.0}
    return out


def _ranks(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average ranks (1-based) of x, and the sizes of the groups of ties."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    # boundaries of runs of equal values
    change = np.flatnonzero(np.diff(xs) != 0) + 1
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change, [xs.size]))
    avg = (starts + ends + 1) / 2.0          # mean of ranks start+1 .. end
    ranks_sorted = np.repeat(avg, ends - starts)
    ranks = np.empty(x.size)
    ranks[order] = ranks_sorted
    return ranks, (ends - starts)


def _norm_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def mann_whitney(a, b, alternative: str = "two-sided") -> dict:
    """Mann-Whitney U test of samples ``a`` vs ``b`` (normal approximation, tie correction, continuity
    correction), as scipy.stats.mannwhitneyu(a, b, method="asymptotic").

    ``alternative``: "two-sided", "greater" (b tends to be larger than a... see below) or "less".
    U is the statistic of ``a`` (the number of pairs with a > b, ties counting half); "greater" tests
    whether ``a`` tends to be larger than ``b``. Returns {'u', 'z', 'p', 'effect'} where effect = U/(n1*n2)
    is the probability that a random sample of ``a`` exceeds one of ``b`` (0.5: no difference).
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    n1, n2 = x.size, y.size
    if n1 == 0 or n2 == 0:
        raise ValueError("mann_whitney needs samples on both sides")
    ranks, ties = _ranks(np.concatenate((x, y)))
    r1 = ranks[:n1].sum()
    u1 = r1 - n1 * (n1 + 1) / 2.0
    n = n1 + n2
    mu = n1 * n2 / 2.0
    tie_term = float((ties ** 3 - ties).sum())
    var = n1 * n2 / 12.0 * ((n + 1) - tie_term / (n * (n - 1))) if n > 1 else 0.0
    if var <= 0:
        return {"u": float(u1), "z": 0.0, "p": 1.0, "effect": float(u1 / (n1 * n2))}
    sd = math.sqrt(var)
    if alternative == "two-sided":
        u = max(u1, n1 * n2 - u1)
        z = (u - mu - 0.5) / sd
        p = min(1.0, 2 * _norm_sf(z))
    elif alternative == "greater":
        z = (u1 - mu - 0.5) / sd
        p = _norm_sf(z)
    elif alternative == "less":
        z = (u1 - mu + 0.5) / sd
        p = 1.0 - _norm_sf(z)
    else:
        raise ValueError(f"alternative: {alternative!r}")
    return {"u": float(u1), "z": float((u1 - mu) / sd), "p": float(p), "effect": float(u1 / (n1 * n2))}


def compare_samples(a, b, alpha: float = 0.01, n_boot: int = N_BOOT, seed: int = SEED) -> dict:
    """B against A: relative change of p50/p90/mean, a one-sided U test for "B slower", a two-sided one, and a
    bootstrap 95% interval of the p50 ratio B/A - 1."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    pa, pb = percentiles(x), percentiles(y)
    change = {k: (pb[k] / pa[k] - 1.0) if pa[k] else None for k in ("p50", "p90", "p99", "mean")}
    slower = mann_whitney(y, x, "greater")
    faster = mann_whitney(y, x, "less")
    two = mann_whitney(y, x, "two-sided")
    nb = min(boot_count(x.size, n_boot), boot_count(y.size, n_boot))
    ma, = _boot_stats(x, nb, seed, [lambda r: np.median(r, axis=1)])
    mb, = _boot_stats(y, nb, seed + 1, [lambda r: np.median(r, axis=1)])
    ratio = mb / ma - 1.0
    return {"a": {k: pa[k] for k in ("p50", "p90", "p99", "mean", "cv")}, "n_a": int(x.size),
            "b": {k: pb[k] for k in ("p50", "p90", "p99", "mean", "cv")}, "n_b": int(y.size),
            "change": change,
            "ci95_p50_change": [float(v) for v in np.percentile(ratio, [2.5, 97.5])],
            "test": {"name": "mann-whitney-u", "p_slower": slower["p"], "p_faster": faster["p"],
                     "p_two_sided": two["p"], "z": two["z"], "effect": two["effect"], "alpha": alpha},
            "slower": bool(slower["p"] < alpha), "faster": bool(faster["p"] < alpha)}
