"""edgeopt results [ID] [--json] · edgeopt compare A B [--max-regression PCT] · edgeopt report RESULT... [--out F]"""
from __future__ import annotations

from typing import List, Optional

import typer

from edgeopt.cli import app

HISTORY_HELP = "History database (default $EDGEOPT_HISTORY or ~/.local/share/edgeopt/results.sqlite)."


@app.command("results")
def results(
    id: Optional[int] = typer.Argument(None, help="Show this result (default: list the newest)."),
    history: Optional[str] = typer.Option(None, "--history", help=HISTORY_HELP),
    device: Optional[str] = typer.Option(None, "--device", "-d", help="Only this device."),
    sha: Optional[str] = typer.Option(None, "--sha", help="Only this artifact (sha256 prefix)."),
    limit: int = typer.Option(20, "--limit", "-n", help="How many to list."),
    samples: bool = typer.Option(True, "--samples/--no-samples", help="With ID --json: include the raw samples."),
    json_out: bool = typer.Option(False, "--json", help="Machine output on stdout, nothing else."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
):
    """List stored benchmark results, or show one."""
    from edgeopt.results import history as H
    from edgeopt.cli._devices import echo_json
    from edgeopt.errors import UsageError

    db = H.open_db(history)
    if db is None:
        raise UsageError("the history is turned off (EDGEOPT_HISTORY=off)", hint="pass --history FILE")
    with db:
        if id is not None:
            r = db.get(id)
            if json_out:
                echo_json(r if samples else {k: v for k, v in r.items() if k not in ("samples_ms", "timestamps_s")})
            else:
                _show(r)
            return
        rows = db.list(limit=limit, device=device, sha256=sha)
    if json_out:
        echo_json(rows)
        return
    from edgeopt.cli import console
    from rich.table import Table
    c = console()
    if not rows:
        c.print(f"no results in {db.path}")
        return
    t = Table(title=f"edgeopt results ({db.path})")
    for col in ("id", "when (UTC)", "device", "target", "artifact", "sha256", "runtime", "p50 ms", "p90 ms", "CV",
                "runs", "status"):
        t.add_column(col, justify="right" if col in ("id", "p50 ms", "p90 ms", "CV", "runs") else "left")
    for r in rows:
        st = ("clean" if r["clean"] else "[red]not clean[/red]" if r["clean"] is False else "-")
        if r["unstable"]:
            st += " [yellow]unstable[/yellow]"
        f = lambda v, d=3: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
        t.add_row(str(r["id"]), r["created"].replace("T", " ")[:19], r["device"] or "-", r["target"] or "-",
                  r["artifact_file"] or "-", (r["artifact_sha256"] or "")[:12], f"{r['runtime'] or '-'}",
                  f(r["p50"]), f(r["p90"]), f(r["cv"]), str(r["runs"] or "-"), st)
    c.print(t)


def _show(r: dict):
    from edgeopt.cli import console
    c = console()
    lat = r.get("latency_ms") or {}
    art = r.get("artifact") or {}
    rt = r.get("runtime") or {}
    c.print(f"[bold]result #{r['id']}[/bold]  {r.get('created')}  ({r.get('command') or '?'})")
    c.print(f"device    {r.get('device')} ({r.get('target') or '-'}) {r.get('host') or ''}")
    facts = r.get("device_facts") or {}
    if facts:
        c.print("board     " + ", ".join(str(v) for v in facts.values() if v))
    c.print(f"artifact  {art.get('file')}  sha256 {art.get('sha256')}")
    c.print(f"runtime   {rt.get('name')} {rt.get('version') or ''} {rt.get('delegate') or rt.get('provider') or ''}")
    c.print(f"config    {r.get('config')}  protocol {r.get('protocol', {}).get('warmup_seconds', 0)} s warm-up"
            + (f", sustained {r['protocol']['sustained']:g} s" if (r.get("protocol") or {}).get("sustained") else ""))
    c.print("latency   " + ", ".join(f"{k} {v:.3f}" for k, v in lat.items() if isinstance(v, (int, float))))
    ci = r.get("ci95") or {}
    if ci.get("p50"):
        c.print(f"95% CI    p50 [{ci['p50'][0]:.3f}, {ci['p50'][1]:.3f}] ms, mean [{ci['mean'][0]:.3f}, "
                f"{ci['mean'][1]:.3f}] ms; runs {r.get('runs')}; {'UNSTABLE' if r.get('unstable') else 'stable'}")
    cond = r.get("conditions") or {}
    if cond:
        c.print("conditions " + ("clean" if cond.get("clean") else "[red]NOT clean[/red]"))
        for x in cond.get("reasons") or []:
            c.print(f"  - {x}")
        for x in cond.get("warnings") or []:
            c.print(f"  [dim]- {x}[/dim]")
    m = r.get("manifest")
    if m:
        a0 = (m.get("artifacts") or [{}])[0]
        c.print(f"manifest  {(m.get('source') or {}).get('file')} -> {a0.get('file')} ({a0.get('precision')}) "
                f"for {(m.get('target') or {}).get('name')}")


@app.command("compare")
def compare(
    a: str = typer.Argument(..., help="Baseline: a result id or a JSON file (bench/deploy --json)."),
    b: str = typer.Argument(..., help="Candidate: a result id or a JSON file."),
    max_regression: float = typer.Option(5.0, "--max-regression", help="Gate: exit 1 when B is slower than A by "
                                         "more than PCT percent and the difference is significant."),
    metric: str = typer.Option("p50", "--metric", help="p50, p90, p99 or mean."),
    alpha: float = typer.Option(0.01, "--alpha", help="Significance level of the Mann-Whitney U test."),
    history: Optional[str] = typer.Option(None, "--history", help=HISTORY_HELP),
    junit: Optional[str] = typer.Option(None, "--junit", help="Write JUnit XML here (one testcase per device)."),
    json_out: bool = typer.Option(False, "--json", help="Machine output on stdout, nothing else."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
):
    """Compare two results: change in p50/p90 with a significance test; exit 1 on a regression."""
    from edgeopt.results import compare as C
    from edgeopt.results import history as H
    from edgeopt.cli._devices import echo_json
    from edgeopt.errors import GateError

    rep = C.compare(H.load_results(a, history), H.load_results(b, history), max_regression=max_regression,
                    metric=metric, alpha=alpha)
    if junit:
        from edgeopt.results import junit as J
        cases = []
        for p in rep["pairs"]:
            out = (f"A {p['a']['ref']} ({p['a']['artifact']}): {metric} {p['latency_a'][metric]:.3f} ms\n"
                   f"B {p['b']['ref']} ({p['b']['artifact']}): {metric} {p['latency_b'][metric]:.3f} ms\n"
                   + p["summary"] + "".join(f"\nnote: {n}" for n in p["notes"]))
            cases.append(J.Case(f"{p['device']} {metric} regression <= {max_regression:g}%", "edgeopt.compare",
                                failure=f"regression: {p['summary']}" if p["regressed"] else None, out=out))
        J.write(junit, "edgeopt compare", cases)
    if json_out:
        echo_json(rep)
    else:
        from edgeopt.cli import console
        from rich.table import Table
        c = console()
        t = Table(title=f"edgeopt compare  A={a}  B={b}")
        for col in ("device", "A p50", "B p50", "Δ p50", "A p90", "B p90", "Δ p90", "p (B slower)", "verdict"):
            t.add_column(col, justify="left" if col in ("device", "verdict") else "right")
        for p in rep["pairs"]:
            ch = p["change_pct"]
            pv = p["test"]["p_slower"] if p.get("test") else None
            color = {"regression": "red", "slower": "yellow", "faster": "green", "same": "white"}[p["verdict"]]
            t.add_row(str(p["device"]), f"{p['latency_a']['p50']:.3f}", f"{p['latency_b']['p50']:.3f}",
                      f"{ch['p50']:+.1f}%", f"{p['latency_a']['p90']:.3f}", f"{p['latency_b']['p90']:.3f}",
                      f"{ch['p90']:+.1f}%", "-" if pv is None else f"{pv:.2g}", f"[{color}]{p['verdict']}[/{color}]")
        c.print(t)
        for p in rep["pairs"]:
            c.print(f"{p['device']}: {p['summary']}")
            for n in p["notes"]:
                c.print(f"  note: {n}")
    if rep["regressed"]:
        bad = [p for p in rep["pairs"] if p["regressed"]]
        raise GateError("regression: " + "; ".join(f"{p['device']} {p['summary']}" for p in bad))


@app.command("report")
def report(
    refs: List[str] = typer.Argument(..., help="Result ids or JSON files (bench/deploy --json)."),
    out: str = typer.Option("edgeopt-report.html", "--out", "-o", help="The HTML page to write."),
    markdown: Optional[str] = typer.Option(None, "--markdown", help="Also write a Markdown summary here."),
    title: str = typer.Option("edgeopt benchmark report", "--title", help="Page title."),
    history: Optional[str] = typer.Option(None, "--history", help=HISTORY_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print {html, markdown, results} paths/ids as JSON."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
):
    """Write a self-contained HTML report (plots embedded) and optionally a Markdown summary."""
    import os

    from edgeopt.results import history as H
    from edgeopt.results import report as R
    from edgeopt.cli._devices import echo_json

    results = [r for ref in refs for r in H.load_results(ref, history)]
    page = R.html(results, title=title)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        f.write(page)
    if markdown:
        with open(markdown, "w", encoding="utf-8") as f:
            f.write(R.markdown(results, title=title))
    if json_out:
        echo_json({"html": os.path.abspath(out), "markdown": os.path.abspath(markdown) if markdown else None,
                   "results": [r.get("id") or r.get("source") for r in results]})
    else:
        typer.echo(f"wrote {out}" + (f" and {markdown}" if markdown else "") + f" ({len(results)} results)")
