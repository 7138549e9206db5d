"""Agreement metrics between the FP32 reference and an artifact's outputs (numpy only)."""
from __future__ import annotations

import math
import re

import numpy as np

from edgeopt.conversion.defaults import OUTPUT_GRID_MARGIN_DB, OUTPUT_PARTS_RANGE_RATIO
from edgeopt.errors import UsageError


__all__ = ["OUTPUT_KINDS", "looks_like_scores", "guess_kind", "parse_output_kinds", "metrics", "grid_limit",
           "held_by_grid", "uneven_parts", "worst_part_sqnr", "stored_concats", "compare", "add_label_accuracy",
           "top1_accuracy", "gate"]

# What an output is decides which numbers mean something: class scores (top-1 agreement), an embedding (cosine:
# its direction is what is compared downstream), a dense map or boxes (SQNR and max error).
OUTPUT_KINDS = ("scores", "embedding", "dense")
# names that say "a vector to compare", not "a score per class"
_EMBEDDING_WORDS = re.compile(r"embed|pool|sentence|feature|vector|hidden|encod|latent", re.IGNORECASE)


def looks_like_scores(shape) -> bool:
    """Class scores: (N, C) with C >= 2, or (N, C, 1, 1) / (N, 1, 1, C). Not (N, A, 1): one score per anchor of a
    detector (BlazeFace's classificators [1, 896, 1]), where the "top-1" would be the most confident anchor."""
    if len(shape) == 3 and shape[-1] == 1 and shape[1] != 1:
        return False
    s = [d for d in shape[1:] if d != 1]
    return len(s) == 1 and s[0] >= 2


def guess_kind(name: str, shape) -> str:
    """An output's kind from its shape and name: one vector per sample is class scores unless its name says
    embedding (``pooler_output``, ``sentence_embedding``, ...); anything else is dense. ``--output-kind``
    overrides the guess."""
    if not looks_like_scores(shape):
        return "dense"
    return "embedding" if _EMBEDDING_WORDS.search(name or "") else "scores"


def parse_output_kinds(spec, outputs: list[str]) -> dict:
    """``--output-kind NAME=KIND`` items (or a dict) -> {output name: kind}, checked against the model's outputs."""
    if not spec:
        return {}
    items = spec.items() if isinstance(spec, dict) else [str(s).split("=", 1) if "=" in str(s) else (s, None)
                                                          for s in spec]
    res = {}
    for name, kind in items:
        kind = (kind or "").strip().lower()
        if kind not in OUTPUT_KINDS:
            raise UsageError(f"--output-kind {name}={kind}: expected NAME=KIND with KIND one of "
                             f"{', '.join(OUTPUT_KINDS)}")
        if name not in outputs:
            raise UsageError(f"--output-kind {name}={kind}: the model has no output {name!r}; its outputs are "
                             f"{', '.join(repr(o) for o in outputs)}")
        res[name] = kind
    return res


def metrics(ref: np.ndarray, got: np.ndarray, kind: str | None = None) -> dict:
    """``kind`` (guessed from the shape when None), cosine, SQNR (dB), max/mean abs error; top1_agreement for
    class scores only."""
    r = np.asarray(ref, dtype=np.float64).reshape(ref.shape[0], -1)
    g = np.asarray(got, dtype=np.float64).reshape(got.shape[0], -1)
    err = r - g
    noise = float(np.sum(err * err))
    signal = float(np.sum(r * r))
    sqnr = 10.0 * math.log10(signal / noise) if noise > 0 else float("inf")
    kind = kind or ("scores" if looks_like_scores(ref.shape) else "dense")
    if kind == "dense":
        # over all samples at once: a detector's map is ~0 on a crop with nothing in it, and the cosine of
        # two near-zero maps is noise (PaddleOCR's text detector: 0.70 averaged per crop, 99.8% of pixels agree)
        r_all, g_all = r.reshape(1, -1), g.reshape(1, -1)
    else:
        r_all, g_all = r, g
    nr, ng = np.linalg.norm(r_all, axis=1), np.linalg.norm(g_all, axis=1)
    denom = nr * ng
    # two zero vectors agree; an output that is all zero where FP32's is not (scores rounded away) does not
    cos = np.where(denom > 0, np.sum(r_all * g_all, axis=1) / np.where(denom > 0, denom, 1),
                   np.where((nr > 0) | (ng > 0), 0.0, 1.0))
    res = {"cosine": round(float(np.mean(cos)), 6),
           "sqnr_db": round(sqnr, 3) if math.isfinite(sqnr) else 999.0,
           "max_abs_err": round(float(np.max(np.abs(err))), 6),
           "mean_abs_err": round(float(np.mean(np.abs(err))), 6)}
    res["kind"] = kind
    if kind == "scores":
        res["top1_agreement"] = round(float(np.mean(np.argmax(r, 1) == np.argmax(g, 1))), 6)
    return res


def grid_limit(ref: np.ndarray, grid, kind: str | None = None) -> dict:
    """The closest an output computed on an integer ``grid`` (scale, zero point, lowest code, highest code) can
    come to ``ref``: the metrics of ``ref`` rounded onto that grid (``step``, ``cosine``, ``sqnr_db``)."""
    scale, zero, lowest, highest = grid
    r = np.asarray(ref, dtype=np.float64)
    on_grid = (np.clip(np.round(r / scale) + zero, lowest, highest) - zero) * scale
    m = metrics(r, on_grid, kind)
    return {"step": float(scale), "cosine": m["cosine"], "sqnr_db": m["sqnr_db"]}


def held_by_grid(m: dict) -> bool:
    """Whether an output's metrics ``m`` are within OUTPUT_GRID_MARGIN_DB of what its own integer grid allows
    (``m["output_grid"]``, :func:`grid_limit`): half its error or more is that grid's, an imprecise output and
    not a broken one."""
    grid = m.get("output_grid")
    return bool(grid) and m.get("sqnr_db", -999.0) >= grid["sqnr_db"] - OUTPUT_GRID_MARGIN_DB


def uneven_parts(ref: np.ndarray, concat) -> list[tuple[int, int]] | None:
    """The parts [(start, end)] along the axis of an output made by a concatenation, ``concat`` = (axis, [end of
    each input along it]), when their largest magnitudes in ``ref`` (the FP32 outputs) differ
    OUTPUT_PARTS_RANGE_RATIO times or more: one INT8 scale cannot serve both, and the whole tensor's numbers are
    the largest part's. None otherwise (parts of one kind: the whole is judged)."""
    if not concat:
        return None
    axis, ends = concat
    r = np.asarray(ref)
    if (not -r.ndim <= axis < r.ndim or not ends or ends[0] <= 0 or ends[-1] != r.shape[axis]
            or list(ends) != sorted(set(ends))):
        return None
    bounds = list(zip([0] + list(ends[:-1]), ends))
    peaks = [float(np.max(np.abs(np.take(r, range(lo, hi), axis=axis)))) for lo, hi in bounds]
    small = min(peaks)
    return bounds if max(peaks) >= OUTPUT_PARTS_RANGE_RATIO * small and small > 0 else None


def _part_metrics(ref: np.ndarray, got: np.ndarray, kind: str, concat) -> dict:
    """:func:`metrics` of an output, with the worst part's cosine and SQNR where its parts are uneven
    (:func:`uneven_parts`): ``parts`` [{"range", "cosine", "sqnr_db"}] and ``whole`` (the whole tensor's)."""
    m = metrics(ref, got, kind)
    bounds = uneven_parts(ref, concat)
    if not bounds:
        return m
    axis = concat[0]
    parts = []
    for lo, hi in bounds:
        pm = metrics(np.take(ref, range(lo, hi), axis=axis), np.take(got, range(lo, hi), axis=axis), "dense")
        parts.append({"range": [lo, hi], "cosine": pm["cosine"], "sqnr_db": pm["sqnr_db"]})
    worst = min(parts, key=lambda p: p["sqnr_db"])
    m["whole"] = {"cosine": m["cosine"], "sqnr_db": m["sqnr_db"]}
    m.update(cosine=min(p["cosine"] for p in parts), sqnr_db=worst["sqnr_db"], parts=parts, axis=axis)
    return m


def worst_part_sqnr(ref: np.ndarray, got: np.ndarray, concat=None) -> float:
    """An output's SQNR (dB) of ``got`` against ``ref``: its worst part's where its parts are uneven."""
    return _part_metrics(ref, got, "dense", concat)["sqnr_db"]


def stored_concats(outputs: dict) -> dict:
    """{output name: (axis, [ends])} of the outputs a manifest's accuracy (``outputs``: {name: metrics}) judged
    part by part, for judging them so again (the on-device check). A manifest can be crafted: anything but
    integer parts is left out (such an output is judged whole)."""
    res = {}
    for name, m in (outputs or {}).items():
        parts = m.get("parts") if isinstance(m, dict) else None
        axis = m.get("axis") if isinstance(m, dict) else None
        if not isinstance(parts, list) or type(axis) is not int or not parts:
            continue
        ends = [p["range"][-1] if isinstance(p, dict) and isinstance(p.get("range"), list) and p["range"]
                else None for p in parts]
        if all(type(e) is int for e in ends):
            res[name] = (axis, ends)
    return res


def compare(refs: list[np.ndarray], gots: list[np.ndarray], names: list[str], kinds: dict | None = None,
            concats: dict | None = None) -> dict:
    """{output name: metrics}; ``kinds`` {name: kind} (declared), else guessed from name and shape; ``concats``
    {name: (axis, [ends])} for outputs made by a concatenation (judged part by part where the parts are
    uneven: :func:`uneven_parts`)."""
    kinds, concats = kinds or {}, concats or {}
    return {n: _part_metrics(r, g, kinds.get(n) or guess_kind(n, r.shape), concats.get(n))
            for n, r, g in zip(names, refs, gots)}



def top1_accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    """The fraction of samples whose highest score is their label (rounded as the metrics are)."""
    return round(float(np.mean(np.argmax(outputs.reshape(len(outputs), -1), 1) == labels)), 6)


def add_label_accuracy(acc: dict, refs: list[np.ndarray], gots: list[np.ndarray], names: list[str],
                       labels: np.ndarray | None) -> dict:
    """``acc`` ({output name: metrics}) with the real top-1 accuracy of the reference (``fp32_top1_accuracy``) and
    of the compared outputs (``top1_accuracy``) on every class-score output, when the data carries ``labels``."""
    if labels is None:
        return acc
    for name, r, g in zip(names, refs, gots):
        if "top1_agreement" in acc[name]:
            acc[name]["fp32_top1_accuracy"] = top1_accuracy(r, labels)
            acc[name]["top1_accuracy"] = top1_accuracy(g, labels)
    return acc

def gate(outputs: dict, min_sqnr: float | None, min_top1: float | None) -> list[str]:
    """Failures of the accuracy gates, as readable strings (empty when all pass)."""
    fails = []
    for name, m in outputs.items():
        if min_sqnr is not None and m["sqnr_db"] < min_sqnr:
            fails.append(f"output {name!r}: SQNR {m['sqnr_db']:.2f} dB < {min_sqnr} dB")
        if min_top1 is not None and "top1_agreement" in m and m["top1_agreement"] < min_top1:
            fails.append(f"output {name!r}: top-1 agreement {m['top1_agreement']:.4f} < {min_top1}")
    return fails
