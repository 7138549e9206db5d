"""A sweep read back from the history database, for ``edgeopt report --sweep``: its records (a cell on a device,
or a cell without devices), the accuracy metric that compares them, and the Pareto front of p90 latency against
that metric.

The records come from the history's ``sweep_records`` table (every record, failed ones too). A history written
before that table existed has only the benchmarks (``results`` rows with ``sweep_id``): the records are then
rebuilt from those rows and their manifests, so an older sweep still gets its report (its failed cells, which
were never stored, are missing).

A history database is a file anyone can hand over: every value read from it is checked here (strings without
control characters and bounded, numbers finite or None), and rendering escapes them again.
"""
from __future__ import annotations

import json
import os
import sqlite3

from edgeopt.errors import UsageError
from edgeopt.results import sanitize
from edgeopt.results.pareto import pareto_front
from edgeopt.sweep.describe import ACCURACY_KEYS, describe

__all__ = ["METRICS", "load", "cell", "choose_metric", "rank"]

# --metric NAME -> (the accuracy key in a record, how the report names it)
METRICS = {"top1": ("top1_agreement", "top-1 agreement"), "sqnr": ("sqnr_db", "SQNR (dB)"),
           "cosine": ("cosine", "cosine")}
# automatic choice: top-1 agreement when every cell has it (classifiers); else SQNR, which tells artifacts apart
# where their cosines all round to 0.999...; else cosine
AUTO_ORDER = ("top1", "sqnr", "cosine")
MAX_RECORDS = 300_000      # 4096 cells x 64 devices is the largest sweep; more is not a sweep's history
MAX_JSON = 16 << 20        # characters of one stored JSON value read back


def _json(value) -> dict:
    """A stored JSON object, or {} for anything else (not text, too long, not JSON, not an object)."""
    if not isinstance(value, str) or len(value) > MAX_JSON:
        return {}
    try:
        data = json.loads(value)
    except (ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _dict(v) -> dict:
    return v if isinstance(v, dict) else {}


def _text(v, limit: int = 300) -> str | None:
    return None if v is None else sanitize.text(v, limit)


def _bool(v) -> bool | None:
    return v if isinstance(v, bool) else None


def cell(record: dict) -> dict:
    """One record, every value checked: ``{"id", "cell", "model", "target", "recipe", "device", "status",
    "error", "history_id", "latency_ms": {p50, p90}, "accuracy": {output, cosine, sqnr_db, top1_agreement,
    top1_accuracy}, "artifact": {file, sha256, bytes, precision}, "quantization": {...}}`` (a metric that is
    not a finite number is left out)."""
    r = _dict(record)
    lat, acc, art, q = (_dict(r.get(k)) for k in ("latency_ms", "accuracy", "artifact", "quantization"))
    accuracy = {"output": _text(acc.get("output"))}
    accuracy.update({k: sanitize.number(acc[k]) for k in ACCURACY_KEYS if sanitize.number(acc.get(k)) is not None})
    quant = {"calibration_method": _text(q.get("calibration_method"), 40), "per_channel": _bool(q.get("per_channel")),
             "bias_correction": _bool(q.get("bias_correction")), "float_layers": sanitize.integer(q.get("float_layers")),
             "percentile": sanitize.number(q.get("percentile"))}
    return {"id": _text(r.get("id")) or "?", "cell": _text(r.get("cell")), "model": _text(r.get("model")) or "?",
            "target": _text(r.get("target")) or "?", "recipe": _text(r.get("recipe")) or "?",
            "device": _text(r.get("device")), "status": "ok" if r.get("status") == "ok" else "failed",
            "error": _text(r.get("error"), 500), "history_id": sanitize.integer(r.get("history_id")),
            "latency_ms": {k: sanitize.number(lat.get(k)) for k in ("p50", "p90")},
            "accuracy": accuracy,
            "artifact": {"file": _text(art.get("file")), "sha256": _text(art.get("sha256"), 64),
                         "bytes": sanitize.integer(art.get("bytes")), "precision": _text(art.get("precision"), 20)},
            "quantization": {k: v for k, v in quant.items() if v is not None}}


def _from_result(row: dict) -> dict:
    """A record rebuilt from a stored benchmark (a history from before records were kept): the cell's names
    from its id (``model.target.recipe@device``: the names have no dots or @), the rest from the result and its
    manifest."""
    rid = str(row.get("sweep_cell") or "?")
    name, _, device = rid.partition("@")
    parts = name.split(".")
    model, target, recipe = parts if len(parts) == 3 else (name, None, None)
    result, manifest = _json(row.get("result_json")), _json(row.get("manifest_json"))
    lat = _dict(result.get("latency_ms")) or {"p50": row.get("p50"), "p90": row.get("p90")}
    return {"id": rid, "cell": name, "model": model, "target": target or result.get("target"), "recipe": recipe,
            "device": device or result.get("device"), "status": "ok", "history_id": row.get("id"),
            "latency_ms": lat, **describe(manifest)}


def _read(path: str, sweep_id: str) -> tuple[list, list, list]:
    from edgeopt.results import history

    with history.History(path) as db:
        try:
            records = db.sweep_records(sweep_id, limit=MAX_RECORDS)
            results = db.sweep_results(sweep_id, limit=MAX_RECORDS)
            known = [] if records or results else [sanitize.text(s["sweep_id"], 100) for s in db.sweeps(limit=10)]
        except sqlite3.Error as e:  # a database with tables of the same names and other columns
            raise UsageError(f"history database {path}: {e}") from None
    return records, results, known


def load(sweep_id: str, history: str | None = None, metric: str = "auto") -> dict:
    """The sweep ``sweep_id`` of the history (``history``: its path; default ``$EDGEOPT_HISTORY`` or
    ``~/.local/share/edgeopt/results.sqlite``), ranked by ``metric`` (``auto``, ``top1``, ``sqnr``, ``cosine``).

    Returns ``{"sweep", "history", "metric", "metric_key", "metric_name", "cells": [cell(...) + "pareto"],
    "front": [indices into cells, fastest first]}``. An unknown sweep, a missing database or the history turned
    off is a :class:`UsageError`; nothing is written but what opening the database adds to an older one."""
    from edgeopt.results import history as hist

    if metric != "auto" and metric not in METRICS:
        raise UsageError(f"--metric {metric!r}: expected auto, {', '.join(METRICS)}")
    path = os.path.expanduser(history) if history else hist.default_path()
    if path is None:
        raise UsageError("--sweep: the history is turned off (EDGEOPT_HISTORY=off)", hint="pass --history FILE")
    if not os.path.isfile(path):
        raise UsageError(f"--sweep {sweep_id}: no history database at {path}",
                         hint="`edgeopt sweep` stores every cell there; pass --history FILE if it used another")
    records, results, known = _read(path, sweep_id)
    if not records and not results:
        raise UsageError(f"--sweep {sweep_id}: no such sweep in {path}",
                         hint=f"sweeps there, the last run first: {', '.join(known)}" if known
                         else "that history holds no sweep: `edgeopt sweep` stores its cells there")
    cells: dict[str, dict] = {}
    for text in records:
        rec = _json(text)
        if isinstance(rec.get("id"), str):  # a row that is not a record is nothing to show
            c = cell(rec)
            cells[c["id"]] = c
    kept = set(cells)
    for row in results:  # oldest first: the newest benchmark of a cell without a record wins
        c = cell(_from_result(row))
        if c["id"] not in kept:
            cells[c["id"]] = c
    ordered = list(cells.values())
    chosen = choose_metric(ordered, metric)
    front = rank(ordered, chosen)
    key, name = METRICS[chosen]
    return {"sweep": sanitize.text(sweep_id, 300), "history": path, "metric": chosen, "metric_key": key,
            "metric_name": name, "cells": ordered, "front": front}


def choose_metric(cells: list[dict], wanted: str = "auto") -> str:
    """``wanted`` unless it is ``auto``; then the first of top-1 agreement, SQNR and cosine that every ok cell
    with a latency and an accuracy has (the cells it would rank), else the one most of them have."""
    if wanted != "auto":
        return wanted
    keys = [METRICS[m][0] for m in AUTO_ORDER]
    ranked = [c for c in cells if c["status"] == "ok" and c["latency_ms"].get("p90") is not None
              and any(k in c["accuracy"] for k in keys)]
    for m in AUTO_ORDER:
        if ranked and all(METRICS[m][0] in c["accuracy"] for c in ranked):
            return m
    return max(AUTO_ORDER, key=lambda m: (sum(METRICS[m][0] in c["accuracy"] for c in ranked),
                                          -AUTO_ORDER.index(m)))


def rank(cells: list[dict], metric: str) -> list[int]:
    """Mark each cell ``pareto`` (on the front of p90 latency against ``metric``) and return the front's indices,
    fastest first. A failed cell, or one without p90 or that metric, is on no front."""
    key = METRICS[metric][0]
    front = pareto_front([(c["latency_ms"].get("p90"), c["accuracy"].get(key)) if c["status"] == "ok"
                          else (None, None) for c in cells])
    on = set(front)
    for i, c in enumerate(cells):
        c["pareto"] = i in on
    return front
