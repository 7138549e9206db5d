"""Benchmark history: every result in a local SQLite database.

Path: ``--history FILE``, else ``$EDGEOPT_HISTORY``, else ``$XDG_DATA_HOME/edgeopt/results.sqlite``
(``~/.local/share/edgeopt/results.sqlite``). ``EDGEOPT_HISTORY=off`` turns storing off.

    from edgeopt.results import history
    db = history.open_db()
    rid = db.add(result, manifest=manifest, command="bench")
    db.list(limit=20); db.get(rid)            # the full result, samples included

A row keeps the artifact hash, the manifest (when known), device facts (name, target, host, board, kernel),
runtime, config and protocol, the summary numbers, the conditions verdict, and the raw samples (float64
blobs), so any two results can be compared later with their raw data.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import sqlite3
from array import array

from edgeopt.errors import UsageError
from edgeopt.json_files import read_json
from edgeopt.results import sanitize

__all__ = ["default_path", "open_db", "History", "manifest_for", "load_results"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created TEXT NOT NULL,
    command TEXT,
    device TEXT,
    target TEXT,
    host TEXT,
    artifact_file TEXT,
    artifact_sha256 TEXT,
    runtime TEXT,
    runtime_version TEXT,
    p50 REAL, p90 REAL, p99 REAL, mean REAL, cv REAL,
    runs INTEGER,
    clean INTEGER,
    unstable INTEGER,
    label TEXT,
    result_json TEXT NOT NULL,
    manifest_json TEXT,
    samples BLOB,
    timestamps BLOB
);
CREATE INDEX IF NOT EXISTS results_sha ON results(artifact_sha256);
CREATE INDEX IF NOT EXISTS results_device ON results(device);
CREATE TABLE IF NOT EXISTS sweep_records (
    sweep_id TEXT NOT NULL,
    record TEXT NOT NULL,
    position INTEGER NOT NULL,
    updated TEXT NOT NULL,
    status TEXT,
    result_id INTEGER,
    record_json TEXT NOT NULL,
    PRIMARY KEY (sweep_id, record)
);
"""
# sweep_records: every record of a sweep (a cell on a device, or a cell without devices) as it stands after the
# last run, failed ones included: `sweep --json`'s record without the manifest and the bench result, whose
# benchmark (when it has one) is the row result_id of `results`. Added with the sweep report; a database from
# before has no rows there, and the report rebuilds its sweeps from `results` alone.
# Columns added after the first release: an older database gets them on open (ALTER TABLE ... ADD COLUMN).
# sweep_id / sweep_cell: the sweep a result belongs to and its cell (model.target.recipe@device).
# val_top1 / val_sqnr_db: the on-device check (bench/deploy --val): the lowest top-1 agreement with FP32 over the
# class-score outputs and the lowest SQNR over all outputs, on the device (NULL when there was no check).
_ADDED_COLUMNS = (("sweep_id", "TEXT"), ("sweep_cell", "TEXT"), ("val_top1", "REAL"), ("val_sqnr_db", "REAL"))

_SUMMARY = ("id", "created", "command", "device", "target", "host", "artifact_file", "artifact_sha256", "runtime",
            "runtime_version", "p50", "p90", "p99", "mean", "cv", "runs", "clean", "unstable", "label", "val_top1",
            "val_sqnr_db")


def default_path() -> str | None:
    """The database path from the environment (None: storing is turned off)."""
    env = os.environ.get("EDGEOPT_HISTORY")
    if env is not None:
        if env.strip().lower() in ("", "off", "0", "no", "none"):
            return None
        return os.path.expanduser(env)
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(base, "edgeopt", "results.sqlite")


def _blob(values) -> bytes | None:
    if values is None:
        return None
    return array("d", [float(v) for v in values]).tobytes()


def _unblob(b) -> list[float] | None:
    if b is None:
        return None
    a = array("d")
    a.frombytes(bytes(b))
    return a.tolist()



def _val_summary(result: dict) -> tuple:
    """(val_top1, val_sqnr_db) of a result's on-device check: the worst output's numbers, or NULLs."""
    outs = (result.get("accuracy") or {}).get("outputs") or {}
    metrics = [m for m in outs.values() if isinstance(m, dict)]
    top1 = [m["top1_agreement"] for m in metrics if isinstance(m.get("top1_agreement"), (int, float))]
    sqnr = [m["sqnr_db"] for m in metrics if isinstance(m.get("sqnr_db"), (int, float))]
    return (min(top1) if top1 else None, min(sqnr) if sqnr else None)

class History:
    def __init__(self, path: str):
        self.path = path
        d = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(d, mode=0o700, exist_ok=True)
            # results name the lab's hosts and users: readable by the owner only, whatever the umask
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600))
            self.db = sqlite3.connect(path, timeout=30)
            self.db.executescript(SCHEMA)
            have = {row[1] for row in self.db.execute("PRAGMA table_info(results)")}
            with self.db:
                for name, kind in _ADDED_COLUMNS:
                    if name not in have:
                        self.db.execute(f"ALTER TABLE results ADD COLUMN {name} {kind}")
                self.db.execute("CREATE INDEX IF NOT EXISTS results_sweep ON results(sweep_id)")
        except (OSError, sqlite3.Error) as e:
            raise UsageError(f"history database {path}: {e}",
                             hint="set --history FILE or $EDGEOPT_HISTORY to a writable path") from None
        self.db.row_factory = sqlite3.Row

    def close(self):
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def add(self, result: dict, manifest: dict | None = None, command: str | None = None,
            label: str | None = None, sweep: tuple[str, str] | None = None) -> int:
        """Store one bench result (a device's entry; error entries are not stored). Returns its id.

        ``sweep``: (sweep id, cell id) when the result is a cell of ``edgeopt sweep``."""
        if "error" in result:
            raise ValueError("error entries are not stored")
        lat = result.get("latency_ms") or {}
        rt = result.get("runtime") or {}
        art = result.get("artifact") or {}
        body = {k: v for k, v in result.items() if k not in ("samples_ms", "timestamps_s", "id")}
        created = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
        clean = result.get("clean")
        with self.db:
            cur = self.db.execute(
                "INSERT INTO results (created, command, device, target, host, artifact_file, artifact_sha256, "
                "runtime, runtime_version, p50, p90, p99, mean, cv, runs, clean, unstable, label, result_json, "
                "manifest_json, samples, timestamps, sweep_id, sweep_cell, val_top1, val_sqnr_db) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (created, command, result.get("device"), result.get("target"), result.get("host"), art.get("file"),
                 art.get("sha256"), rt.get("name"), rt.get("version"), lat.get("p50"), lat.get("p90"),
                 lat.get("p99"), lat.get("mean"), lat.get("cv"), result.get("runs"),
                 None if clean is None else int(bool(clean)), int(bool(result.get("unstable"))), label,
                 json.dumps(body, default=str), json.dumps(manifest) if manifest else None,
                 _blob(result.get("samples_ms")), _blob(result.get("timestamps_s")),
                 sweep[0] if sweep else None, sweep[1] if sweep else None, *_val_summary(result)))
        return int(cur.lastrowid)

    def sweep_ids(self, sweep_id: str) -> dict:
        """{cell id: result id} of the results stored for ``sweep_id`` (the newest per cell)."""
        rows = self.db.execute("SELECT sweep_cell, MAX(id) FROM results WHERE sweep_id = ? GROUP BY sweep_cell",
                               (sweep_id,)).fetchall()
        return {r[0]: int(r[1]) for r in rows}

    def put_sweep_record(self, sweep_id: str, position: int, record: dict) -> None:
        """Store (or replace) one record of a sweep: ``record["id"]`` is ``model.target.recipe@device``,
        ``position`` its place in the sweep's matrix, ``record["history_id"]`` its benchmark's result id."""
        now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO sweep_records (sweep_id, record, position, updated, status, "
                            "result_id, record_json) VALUES (?,?,?,?,?,?,?)",
                            (sweep_id, record["id"], int(position), now, record.get("status"),
                             record.get("history_id"), json.dumps(record, default=str)))

    def sweep_records(self, sweep_id: str, limit: int = 1_000_000) -> list[str]:
        """The records stored for ``sweep_id`` (JSON text), in matrix order, as stored (not checked: see
        :mod:`edgeopt.sweep.stored` for reading them back safely)."""
        rows = self.db.execute("SELECT record_json FROM sweep_records WHERE sweep_id = ? ORDER BY position, record "
                               "LIMIT ?", (sweep_id, int(limit))).fetchall()
        return [r[0] for r in rows]

    def sweep_results(self, sweep_id: str, limit: int = 1_000_000) -> list[dict]:
        """Raw rows of the benchmarks stored for ``sweep_id``, oldest first: ``{"id", "sweep_cell", "p50",
        "p90", "result_json", "manifest_json"}`` (not checked)."""
        rows = self.db.execute("SELECT id, sweep_cell, p50, p90, result_json, manifest_json FROM results "
                               "WHERE sweep_id = ? ORDER BY id LIMIT ?", (sweep_id, int(limit))).fetchall()
        return [dict(zip(("id", "sweep_cell", "p50", "p90", "result_json", "manifest_json"), r)) for r in rows]

    def sweeps(self, limit: int = 50) -> list[dict]:
        """The sweeps in the history, the last run first: ``{"sweep_id", "results", "records", "last"}``
        (benchmarks stored, records stored: 0 for a sweep run before records were kept)."""
        rows = self.db.execute(
            "SELECT sweep_id, SUM(r), SUM(c), MAX(t) AS last FROM ("
            " SELECT sweep_id, 1 AS r, 0 AS c, created AS t FROM results WHERE sweep_id IS NOT NULL"
            " UNION ALL SELECT sweep_id, 0, 1, updated FROM sweep_records"
            ") GROUP BY sweep_id ORDER BY last DESC, sweep_id LIMIT ?", (int(limit),)).fetchall()
        return [{"sweep_id": r[0], "results": int(r[1]), "records": int(r[2]), "last": r[3]} for r in rows]

    def list(self, limit: int = 50, device: str | None = None, sha256: str | None = None) -> list[dict]:
        """Newest first: one summary dict per result."""
        where, args = [], []
        if device:
            where.append("device = ?")
            args.append(device)
        if sha256:
            where.append("artifact_sha256 LIKE ?")
            args.append(sha256 + "%")
        sql = f"SELECT {', '.join(_SUMMARY)} FROM results"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        rows = self.db.execute(sql, args + [int(limit)]).fetchall()
        out = []
        for r in rows:
            d = dict(r)
            d["clean"] = None if d["clean"] is None else bool(d["clean"])
            d["unstable"] = bool(d["unstable"])
            out.append(d)
        return out

    def get(self, rid: int) -> dict:
        """The full stored result: the bench JSON plus 'id', 'created', 'command', 'manifest', 'samples_ms'."""
        r = self.db.execute("SELECT * FROM results WHERE id = ?", (int(rid),)).fetchone()
        if r is None:
            n = self.db.execute("SELECT MAX(id) FROM results").fetchone()[0]
            raise UsageError(f"no result {rid} in {self.path}",
                             hint=f"results are numbered 1..{n}" if n else "the history is empty")
        res = json.loads(r["result_json"])
        res = {"id": r["id"], "created": r["created"], "command": r["command"], **res}
        if r["label"]:
            res["label"] = r["label"]
        if r["manifest_json"]:
            res["manifest"] = json.loads(r["manifest_json"])
        if r["samples"] is not None:
            res["samples_ms"] = _unblob(r["samples"])
        if r["timestamps"] is not None:
            res["timestamps_s"] = _unblob(r["timestamps"])
        return sanitize.result(res)

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM results").fetchone()[0])


def open_db(path: str | None = None) -> History | None:
    """The history at ``path`` (or the default); None when storing is turned off."""
    p = os.path.expanduser(path) if path else default_path()
    return History(p) if p else None


def manifest_for(artifact: str) -> dict | None:
    """The edgeopt manifest describing ``artifact`` (an output dir, or a file listed in a sibling manifest.json)."""
    p = os.fspath(artifact)
    mpath = os.path.join(p, "manifest.json") if os.path.isdir(p) else os.path.join(os.path.dirname(p) or ".",
                                                                                  "manifest.json")
    try:
        m = read_json(mpath)
    except UsageError:
        return None
    if not isinstance(m, dict) or not isinstance(m.get("artifacts"), list):
        return None
    if os.path.isdir(p):
        return m
    name = os.path.basename(p)
    return m if any(isinstance(a, dict) and a.get("file") == name for a in m["artifacts"]) else None


def store(results: list[dict], path: str | None = None, manifest: dict | None = None, command: str | None = None,
          label: str | None = None) -> list[int | None]:
    """Store every successful result; sets ``result['id']``. Returns the ids (None for error entries)."""
    db = open_db(path)
    if db is None:
        return [None] * len(results)
    ids = []
    with db:
        for r in results:
            if "error" in r:
                ids.append(None)
                continue
            rid = db.add(r, manifest=manifest, command=command, label=label)
            r["id"] = rid
            ids.append(rid)
    return ids


def load_results(ref: str, path: str | None = None) -> list[dict]:
    """A result reference -> results: a history id ('12'), or a JSON file written by ``bench --json`` /
    ``deploy --json`` / ``results ID --json`` (one object, a list, or {"manifest", "results"})."""
    ref = str(ref)
    if ref.isdigit():
        db = open_db(path)
        if db is None:
            raise UsageError(f"{ref}: a result id, but the history is turned off (EDGEOPT_HISTORY=off)",
                             hint="pass --history FILE, or JSON files")
        with db:
            return [db.get(int(ref))]
    if not os.path.isfile(ref):
        raise UsageError(f"{ref}: neither a result id nor a JSON file",
                         hint="ids are listed by `edgeopt results`; JSON comes from `bench --json`")
    data = read_json(ref)
    manifest = None
    if isinstance(data, dict) and "results" in data:
        manifest = data.get("manifest")
        data = data["results"]
    items = data if isinstance(data, list) else [data]
    out = []
    for r in items:
        if not isinstance(r, dict) or "latency_ms" not in r:
            if isinstance(r, dict) and "error" in r:
                continue
            raise UsageError(f"{ref}: not a bench result (no latency_ms)")
        if manifest and "manifest" not in r:
            r = dict(r, manifest=manifest)
        r.setdefault("source", ref)
        out.append(sanitize.result(r))  # a result file can be crafted: numbers as numbers, no control characters
    if not out:
        raise UsageError(f"{ref}: no successful result in it")
    return out
