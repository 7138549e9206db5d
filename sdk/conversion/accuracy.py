"""Agreement metrics between the FP32 reference and an artifact's outputs (numpy only)."""
from __future__ import annotations

import math

import numpy as np


__all__ = ["looks_like_scores", "metrics", "compare", "gate"]


def looks_like_scores(shape) -> bool:
    """Class scores: (N, C) with C >= 2, or (N, C, 1, 1) / (N, 1, 1, C)."""
    s = [d for d in shape[1:] if d != 1]
    return len(s) == 1 and s[0] >= 2


def metrics(ref: np.ndarray, got: np.ndarray) -> dict:
    """cosine, SQNR (dB), max/mean abs error; top1_agreement for class-score outputs."""
    r = np.asarray(ref, dtype=np.float64).reshape(ref.shape[0], -1)
    g = np.asarray(got, dtype=np.float64).reshape(got.shape[0], -1)
    err = r - g
    noise = float(np.sum(err * err))
    signal = float(np.sum(r * r))
    sqnr = 10.0 * math.log10(signal / noise) if noise > 0 else float("inf")
    denom = np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1)
    cos = np.where(denom > 0, np.sum(r * g, axis=1) / np.where(denom > 0, denom, 1), 1.0)
    res = {"cosine": round(float(np.mean(cos)), 6),
           "sqnr_db": round(sqnr, 3) if math.isfinite(sqnr) else 999.0,
           "max_abs_err": round(float(np.max(np.abs(err))), 6),
           "mean_abs_err": round(float(np.mean(np.abs(err))), 6)}
    if looks_like_scores(ref.shape):
        res["top1_agreement"] = round(float(np.mean(np.argmax(r, 1) == np.argmax(g, 1))), 6)
    return res


def compare(refs: list[np.ndarray], gots: list[np.ndarray], names: list[str]) -> dict:
    return {n: metrics(r, g) for n, r, g in zip(names, refs, gots)}


def gate(outputs: dict, min_sqnr: float | None, min_top1: float | None) -> list[str]:
    """Failures of the accuracy gates, as readable strings (empty when all pass)."""
    fails = []
    for name, m in outputs.items():
        if min_sqnr is not None and m["sqnr_db"] < min_sqnr:
            fails.append(f"output {name!r}: SQNR {m['sqnr_db']:.2f} dB < {min_sqnr} dB")
        if min_top1 is not None and "top1_agreement" in m and m["top1_agreement"] < min_top1:
            fails.append(f"output {name!r}: top-1 agreement {m['top1_agreement']:.4f} < {min_top1}")
    return fails
