"""Run a sweep: every cell converted through deploy's content-addressed cache, then benchmarked on each matching
device, one benchmark at a time per device and the devices in parallel.

Where the work runs is a backend: :class:`LocalBackend` (a process pool on this machine, the default) or
:class:`edgeopt.sweep.cluster.RayBackend` (``--ray``). The driver loop here is the same for both.

State: ``OUT/<sweep id>/cells/*.json``, one file per finished record (a cell on a device, or a cell without
devices), written whole (temporary file + rename). A rerun skips the finished records, so a killed sweep resumes
where it stopped, and the cache makes an unchanged sweep's conversions free. Nothing is written outside OUT but
the conversion cache and the history database.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from pathlib import Path

from edgeopt.errors import EdgeoptError, GateError, UsageError
from edgeopt.sweep.describe import describe
from edgeopt.sweep.spec import Cell, Sweep

__all__ = ["run", "sweep_id", "LocalBackend", "Record", "load_records", "summary"]

STATE_VERSION = 1


@dataclasses.dataclass
class Record:
    """One entry of the matrix: a cell on a device (``device`` None: converted and checked only)."""

    cell: Cell
    device: str | None

    @property
    def id(self) -> str:
        """``model.target.recipe@device`` (or the cell's id without a device)."""
        return f"{self.cell.id}@{self.device}" if self.device else self.cell.id

    def file_name(self) -> str:
        return hashlib.sha256(self.id.encode()).hexdigest()[:24] + ".json"


def sweep_id(sweep: Sweep, entries: dict, devices: dict) -> str:
    """``NAME-HASH``: the hash of every cell's cache key, the devices and the bench options; the same sweep file
    with the same inputs has the same id (and resumes), a changed model or option makes another."""
    h = hashlib.sha256()
    h.update(json.dumps({"name": sweep.name, "cells": {c: e.key for c, e in sorted(entries.items())},
                         "devices": {n: [d.address, d.port, d.user, d.target, d.local] for n, d in
                                     sorted(devices.items())},
                         "bench": sweep.bench, "v": STATE_VERSION}, sort_keys=True, default=str).encode())
    return f"{sweep.name}-{h.hexdigest()[:12]}"


def node_info() -> dict:
    """Where a task ran (this machine, for the local pool)."""
    return {"id": f"local:{socket.gethostname()}", "host": socket.gethostname(), "pid": os.getpid()}


def _convert_local(model: str, target: str, cache_root: str | None, keywords: dict) -> dict:
    """A conversion in a pool process: deploy's cache, converted only when its key changed."""
    from edgeopt.devices.deploy import convert_cached

    t0 = time.time()
    manifest, out, reused = convert_cached(model, target, cache_root=cache_root, **keywords)
    return {"manifest": {k: v for k, v in manifest.items() if not k.startswith("_")}, "out": out,
            "converted": not reused, "node": node_info(), "seconds": round(time.time() - t0, 3)}


class LocalBackend:
    """Conversions in a pool of processes (spawned: a fork would copy the driver's SSH threads), benchmarks in
    one thread per device (the device's own queue: one benchmark at a time on a board)."""

    name = "local"

    def __init__(self, jobs: int | None = None, cache_root: str | None = None):
        self.jobs = max(1, jobs or os.cpu_count() or 1)
        self.cache_root = cache_root
        self._pool = None
        self._devices: dict[str, ThreadPoolExecutor] = {}

    def _executor(self):
        if self._pool is None:
            import multiprocessing
            self._pool = ProcessPoolExecutor(self.jobs, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    def convert(self, cell: Cell, entry) -> Future:
        """A future of ``{"manifest", "out", "converted", "node", "seconds"}``."""
        return self._executor().submit(_convert_local, cell.model.path, cell.target, self.cache_root,
                                       cell.convert_keywords())

    def retryable(self, error: BaseException) -> bool:
        """A pool process that died (killed, out of memory): the pool is made again and the task resubmitted."""
        from concurrent.futures.process import BrokenProcessPool
        if isinstance(error, BrokenProcessPool):
            if self._pool is not None and getattr(self._pool, "_broken", False):
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
            return True
        return False

    def bench(self, device, conv: dict, opts, accept_new: bool) -> Future:
        """A future of the device's bench result (or its error entry)."""
        from edgeopt.devices.bench import bench_device
        from edgeopt.runtime import check_artifact_name

        primary = os.path.join(conv["out"], check_artifact_name(conv["manifest"]["artifacts"][0]["file"]))
        pool = self._devices.setdefault(device.name, ThreadPoolExecutor(1, thread_name_prefix=f"dev-{device.name}"))
        return pool.submit(_bench_guarded, bench_device, device, primary, opts, accept_new)

    def close(self):
        """Stop the pools (after the run, or when it is interrupted)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        for pool in self._devices.values():
            pool.shutdown(wait=True, cancel_futures=True)


def _bench_guarded(bench_device, device, primary, opts, accept_new) -> dict:
    try:
        return bench_device(device, primary, opts, accept_new=accept_new)
    except EdgeoptError as e:
        return {"device": device.name, "error": str(e), "hint": getattr(e, "hint", None),
                "exit_code": getattr(e, "exit_code", 3)}


def load_records(state_dir: Path) -> dict:
    """{record id: stored record} of the finished records in ``state_dir`` (a file that is not a record is
    skipped: it is redone)."""
    from edgeopt.json_files import read_json

    done = {}
    cells = state_dir / "cells"
    if not cells.is_dir():
        return done
    for f in sorted(cells.glob("*.json")):
        try:
            rec = read_json(str(f))
        except UsageError:
            continue
        if isinstance(rec, dict) and rec.get("v") == STATE_VERSION and isinstance(rec.get("id"), str):
            done[rec["id"]] = rec
    return done


def _write_json(path: Path, obj) -> None:
    """Written whole or not at all: a sweep killed while writing leaves no half record."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def _record(rec: Record, conv: dict | None, result: dict | None, error: str | None, final: bool) -> dict:
    c = rec.cell
    out = {"v": STATE_VERSION, "id": rec.id, "cell": c.id, "model": c.model.name, "target": c.target,
           "recipe": c.recipe.name, "device": rec.device, "status": "ok" if error is None else "failed",
           "final": final}
    if error is not None:
        out["error"] = error
    if conv:
        m = conv["manifest"]
        out["conversion"] = {k: conv[k] for k in ("out", "converted", "node", "seconds")}
        out.update(describe(m))  # artifact, accuracy, quantization
        out["manifest"] = m
    if result and "error" not in result:
        out["latency_ms"] = result.get("latency_ms")
        out["run_window"] = (result.get("timing") or {}).get("run_window")
        out["result"] = result
    return out


def summary(record: dict) -> dict:
    """A record as ``sweep --json`` shows it: without the full manifest and bench result."""
    return {k: v for k, v in record.items() if k not in ("manifest", "result", "v")}


def run(sweep: Sweep, devices: dict, out_dir: str, backend, *, history: str | None = None, fresh: bool = False,
        accept_new: bool = False, cache_root: str | None = None, progress=None) -> dict:
    """Run ``sweep`` (its cells on ``devices``: {name: Device}) with ``backend``; returns the matrix
    ``{"sweep": {...}, "records": [...], "conversions": N, "benchmarks": M}``.

    Finished records in ``out_dir/<sweep id>`` are not redone (``fresh``: they are, and the conversions still
    come from the cache). A conversion that fails (bad input, an accuracy gate) is a final ``failed`` record; a
    device that fails is a ``failed`` record that a rerun retries.
    """
    from edgeopt.devices.bench import BenchOptions
    from edgeopt.devices.deploy import cache_entry

    say = progress or (lambda msg: None)
    targets_of = {n: ("*" if d.local else d.target) for n, d in devices.items()}
    cells = sweep.cells(targets_of)
    entries = {c.id: cache_entry(c.model.path, c.target, cache_root=cache_root, **c.convert_keywords())
               for c in cells}
    sid = sweep_id(sweep, entries, devices)
    state = Path(out_dir) / sid
    try:
        (state / "cells").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{out_dir}: {e.strerror or e}") from None
    done = {} if fresh else load_records(state)
    records = [Record(c, d) for c in cells for d in (c.devices or (None,))]
    order = {r.id: i for i, r in enumerate(records)}
    todo = [r for r in records if r.id not in done]
    by_cell: dict[str, list[Record]] = {}
    for r in todo:
        by_cell.setdefault(r.cell.id, []).append(r)
    opts = BenchOptions(keep_samples=True, progress=False, **dict(sweep.bench))
    say(f"sweep {sid}: {len(records)} cells, {len(records) - len(todo)} already done, {len(by_cell)} to convert "
        f"({backend.name})")

    results: dict[str, dict] = dict(done)
    counts = {"conversions": 0, "benchmarks": 0}
    finished = [len(records) - len(todo)]

    def finish(rec: Record, conv, result, error, final):
        row = _record(rec, conv, result, error, final)
        results[rec.id] = row
        finished[0] += 1
        lat = (row.get("latency_ms") or {}).get("p50")
        say(f"[{finished[0]}/{len(records)}] {rec.id}: " + (f"error: {error}" if error else
                                                              f"ok{f', p50 {lat:.3f} ms' if lat else ''}"))
        if final:
            _write_json(state / "cells" / rec.file_name(), row)
        _store([row], sid, history, order)  # a killed sweep's report shows what it did, failures included

    pending: dict[Future, tuple] = {}
    cell_by_id = {c.id: c for c in cells}
    for cid in by_cell:
        pending[backend.convert(cell_by_id[cid], entries[cid])] = ("convert", cid, 0)
    try:
        while pending:
            finished_now, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for fut in finished_now:
                kind, item, attempt = pending.pop(fut)
                if kind == "convert":
                    cell = cell_by_id[item]
                    try:
                        conv = fut.result()
                        if hasattr(backend, "finish_convert"):
                            conv = backend.finish_convert(cell, entries[item], conv)
                    except (UsageError, GateError) as e:  # the cell's own verdict: redoing it changes nothing
                        for rec in by_cell[item]:
                            finish(rec, None, None, str(e).splitlines()[0], final=True)
                        continue
                    except Exception as e:  # noqa: BLE001 — a worker that died, a cluster problem: retried
                        if attempt < 3 and backend.retryable(e):
                            pending[backend.convert(cell, entries[item])] = ("convert", item, attempt + 1)
                            continue
                        for rec in by_cell[item]:
                            finish(rec, None, None, f"{type(e).__name__}: {str(e)[:300]}", final=False)
                        continue
                    counts["conversions"] += bool(conv["converted"])
                    for rec in by_cell[item]:
                        if rec.device is None:
                            finish(rec, conv, None, None, final=True)
                            continue
                        dev = devices[rec.device]
                        if dev.local:  # this machine runs the cell's target (the runner needs to know which)
                            dev = dataclasses.replace(dev, target=cell.target)
                        pending[backend.bench(dev, conv, opts, accept_new)] = ("bench", (rec, conv), 0)
                else:
                    rec, conv = item
                    try:
                        res = fut.result()
                    except Exception as e:  # noqa: BLE001
                        res = {"device": rec.device, "error": f"{type(e).__name__}: {str(e)[:300]}"}
                    if "error" in res:
                        finish(rec, conv, res, str(res["error"]).splitlines()[0], final=False)
                    else:
                        counts["benchmarks"] += 1
                        finish(rec, conv, res, None, final=True)
    finally:
        for fut in pending:
            fut.cancel()
        backend.close()
    rows = [results.get(r.id) or _record(r, None, None, "not run", final=False) for r in records]
    ids = _store(rows, sid, history, order)
    for row in rows:
        if row["id"] in ids and row["status"] == "ok":
            row["history_id"] = ids[row["id"]]
    return {"sweep": {"id": sid, "name": sweep.name, "file": sweep.path, "state": str(state),
                      "backend": backend.name},
            "records": rows, **counts}


def _store(rows: list[dict], sid: str, history: str | None, order: dict) -> dict:
    """Store the rows in the history under the sweep id: each ok bench result once (a resumed sweep adds only
    what is missing), and every row's record as it stands now (failed ones too: the sweep report lists them),
    at its place ``order[id]`` in the matrix. Returns {record id: history id}. A problem with the default
    database is a warning only."""
    from edgeopt.results import history as hist

    try:
        db = hist.open_db(history)
        if db is None:
            return {}
        with db:
            have = db.sweep_ids(sid)
            for row in rows:
                if (row["status"] == "ok" and row.get("device") and row["id"] not in have
                        and row.get("result")):
                    have[row["id"]] = db.add(row["result"], manifest=row.get("manifest"), command="sweep",
                                             sweep=(sid, row["id"]))
                db.put_sweep_record(sid, order.get(row["id"], 0),
                                    dict(summary(row), history_id=have.get(row["id"]) if row["status"] == "ok"
                                         else None))
            return have
    except EdgeoptError as e:
        if history:
            raise
        sys.stderr.write(f"warning: results not stored: {e.message}\n")
        return {}
