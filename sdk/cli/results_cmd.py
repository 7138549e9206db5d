"""edgeopt results [ID] [--history FILE] [--device NAME] [--sha PREFIX] [--json]"""
from __future__ import annotations

from typing import Optional

from edgeopt.cli import console, echo_json, styled
from edgeopt.cli.options import DEBUG, DEVICES, HISTORY_READ, JSON, SAMPLES, argument, command, option, variant


@command("results",
         argument("id", Optional[int], None, help="Show this result (default: list the newest)."),
         HISTORY_READ,
         variant(DEVICES, annotation=Optional[str], help="Only this device."),
         option("sha", Optional[str], None, "--sha", help="Only this artifact (sha256 prefix)."),
         option("limit", int, 20, "--limit", "-n", help="How many to list."),
         variant(SAMPLES, help="With ID --json: include the raw samples."),
         JSON, DEBUG)
def results(o):
    """List stored benchmark results, or show one."""
    from edgeopt.errors import UsageError
    from edgeopt.results import history

    db = history.open_db(o.history)
    if db is None:
        raise UsageError("the history is turned off (EDGEOPT_HISTORY=off)", hint="pass --history FILE")
    with db:
        if o.id is not None:
            r = db.get(o.id)
            if o.json_out:
                echo_json(r if o.samples else {k: v for k, v in r.items() if k not in ("samples_ms", "timestamps_s")})
            else:
                _show(r)
            return
        rows = db.list(limit=o.limit, device=o.device, sha256=o.sha)
    if o.json_out:
        echo_json(rows)
        return
    from rich.table import Table
    c = console()
    if not rows:
        c.print(f"no results in {db.path}")
        return
    t = Table(title=f"edgeopt results ({db.path})")
    checked = any(r.get("val_top1") is not None or r.get("val_sqnr_db") is not None for r in rows)
    for col in ("id", "when (UTC)", "device", "target", "artifact", "sha256", "runtime", "p50 ms", "p90 ms", "CV",
                "runs") + (("device top-1", "device SQNR") if checked else ()) + ("status",):
        t.add_column(col, justify="right" if col in ("id", "p50 ms", "p90 ms", "CV", "runs", "device top-1",
                                                     "device SQNR") else "left")
    for r in rows:
        st = ["clean" if r["clean"] else ("not clean", "red") if r["clean"] is False else "-"]
        if r["unstable"]:
            st += [" ", ("unstable", "yellow")]
        f = lambda v, d=3: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
        t.add_row(str(r["id"]), r["created"].replace("T", " ")[:19], r["device"] or "-", r["target"] or "-",
                  r["artifact_file"] or "-", (r["artifact_sha256"] or "")[:12], f"{r['runtime'] or '-'}",
                  f(r["p50"]), f(r["p90"]), f(r["cv"]), str(r["runs"] or "-"),
                  *((f(r.get("val_top1")), f(r.get("val_sqnr_db"), 1)) if checked else ()), styled(*st))
    c.print(t)


def _show(r: dict):
    c = console()
    lat = r.get("latency_ms") or {}
    art = r.get("artifact") or {}
    rt = r.get("runtime") or {}
    c.print(styled((f"result #{r['id']}", "bold"), f"  {r.get('created')}  ({r.get('command') or '?'})"))
    c.print(f"device    {r.get('device')} ({r.get('target') or '-'}) {r.get('host') or ''}")
    facts = r.get("device_facts") or {}
    if facts:
        c.print("board     " + ", ".join(str(v) for v in facts.values() if v))
    c.print(f"artifact  {art.get('file')}  sha256 {art.get('sha256')}")
    c.print(f"runtime   {rt.get('name')} {rt.get('version') or ''} {rt.get('delegate') or rt.get('provider') or ''}")
    c.print(f"config    {r.get('config')}  protocol {r.get('protocol', {}).get('warmup_seconds', 0)} s warm-up"
            + (f", sustained {r['protocol']['sustained']:g} s" if (r.get("protocol") or {}).get("sustained") else ""))
    c.print("latency   " + ", ".join(f"{k} {v:.3f}" for k, v in lat.items() if isinstance(v, (int, float))))
    if isinstance(r.get("accuracy"), dict):
        from edgeopt.devices.val import summary_line
        c.print("accuracy  " + summary_line(str(r.get("device")), r["accuracy"]), markup=False, highlight=False,
                soft_wrap=True)
    ci = r.get("ci95") or {}
    if ci.get("p50"):
        c.print(f"95% CI    p50 [{ci['p50'][0]:.3f}, {ci['p50'][1]:.3f}] ms, mean [{ci['mean'][0]:.3f}, "
                f"{ci['mean'][1]:.3f}] ms; runs {r.get('runs')}; {'UNSTABLE' if r.get('unstable') else 'stable'}")
    cond = r.get("conditions") or {}
    if cond:
        c.print(styled("conditions ", "clean" if cond.get("clean") else ("NOT clean", "red")))
        for x in cond.get("reasons") or []:
            c.print(f"  - {x}")
        for x in cond.get("warnings") or []:
            c.print(styled((f"  - {x}", "dim")))
    m = r.get("manifest")
    if m:
        a0 = (m.get("artifacts") or [{}])[0]
        c.print(f"manifest  {(m.get('source') or {}).get('file')} -> {a0.get('file')} ({a0.get('precision')}) "
                f"for {(m.get('target') or {}).get('name')}")
