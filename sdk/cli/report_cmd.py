"""edgeopt report RESULT... | --sweep ID [--metric M] [--out FILE.html] [--markdown FILE.md] [--title T] [--json]"""
from __future__ import annotations

from typing import List, Optional

import typer

from edgeopt.cli import echo_json
from edgeopt.cli.options import DEBUG, HISTORY_READ, JSON, argument, command, default_of, option, variant

METRIC = option("metric", str, "auto", "--metric",
                help="With --sweep: the accuracy the cells are ranked by: auto (top-1 agreement when every cell has "
                     "it, else SQNR, else cosine), top1, sqnr or cosine.")
TITLE = option("title", str, "edgeopt benchmark report", "--title",
               help="Page title (with --sweep, default 'edgeopt sweep ID').")


@command("report",
         argument("refs", Optional[List[str]], None, help="Result ids or JSON files (bench/deploy --json); none with "
                                                          "--sweep."),
         option("sweep", Optional[str], None, "--sweep",
                help="Report on this sweep of the history instead: every cell, and p90 latency against accuracy "
                     "with the Pareto front."),
         METRIC,
         option("out", str, "edgeopt-report.html", "--out", "-o", help="The HTML page to write."),
         option("markdown", Optional[str], None, "--markdown", help="Also write a Markdown summary here."),
         TITLE,
         HISTORY_READ,
         variant(JSON, help="Print {html, markdown, results} paths/ids as JSON (with --sweep also sweep, metric, "
                            "front and cells)."),
         DEBUG)
def report(o):
    """Write a self-contained HTML report (plots embedded) and optionally a Markdown summary."""
    import os

    from edgeopt.errors import UsageError
    from edgeopt.results import history
    from edgeopt.results.private_file import write_private
    from edgeopt.results.report import html, markdown

    refs = list(o.refs or [])
    if o.sweep is not None:
        if refs:
            raise UsageError(f"{refs[0]}: result ids and files, or --sweep, not both",
                             hint="one report is of results or of one sweep")
        return _sweep_report(o)
    if not refs:
        raise UsageError("nothing to report: give result ids or JSON files, or --sweep ID",
                         hint="ids are listed by `edgeopt results`; a sweep prints its id")
    if o.metric != default_of(METRIC):
        raise UsageError("--metric: only with --sweep")
    out, title = o.out, o.title
    results = [r for ref in refs for r in history.load_results(ref, o.history)]
    write_private(out, html(results, title=title))
    if o.markdown:
        write_private(o.markdown, markdown(results, title=title))
    if o.json_out:
        echo_json({"html": os.path.abspath(out), "markdown": os.path.abspath(o.markdown) if o.markdown else None,
                   "results": [r.get("id") or r.get("source") for r in results]})
    else:
        typer.echo(f"wrote {out}" + (f" and {o.markdown}" if o.markdown else "") + f" ({len(results)} results)")


def _sweep_report(o):
    """``--sweep ID``: the sweep read back from the history, ranked, written as a page (and a summary)."""
    import os

    from edgeopt.results import sweep_report
    from edgeopt.results.private_file import write_private
    from edgeopt.sweep import stored

    rep = stored.load(o.sweep, o.history, o.metric)  # before anything is written: a bad id writes nothing
    title = None if o.title == default_of(TITLE) else o.title
    write_private(o.out, sweep_report.html(rep, title))
    if o.markdown:
        write_private(o.markdown, sweep_report.markdown(rep, title))
    cells, front = rep["cells"], [rep["cells"][i] for i in rep["front"]]
    if o.json_out:
        echo_json({"html": os.path.abspath(o.out), "markdown": os.path.abspath(o.markdown) if o.markdown else None,
                   "results": [c["history_id"] for c in cells if c["history_id"] is not None],
                   "sweep": rep["sweep"], "metric": rep["metric"], "front": [c["id"] for c in front],
                   "cells": cells})
        return
    typer.echo(f"wrote {o.out}" + (f" and {o.markdown}" if o.markdown else "")
               + f" ({len(cells)} cells of sweep {rep['sweep']}; Pareto front of p90 latency and "
                 f"{rep['metric_name']}: {len(front)} cells)")
    for c in front:
        p90 = c["latency_ms"]["p90"]
        typer.echo(f"  {c['id']}  p90 {format(p90, '.3f' if abs(p90) < 1e9 else '.3g')} ms  {rep['metric_name']} "
                   f"{c['accuracy'][rep['metric_key']]:.4g}")
