"""edgeopt report RESULT... [--out FILE.html] [--markdown FILE.md] [--title T] [--json]"""
from __future__ import annotations

from typing import List, Optional

import typer

from edgeopt.cli import echo_json
from edgeopt.cli.options import DEBUG, HISTORY_READ, JSON, argument, command, option, variant


@command("report",
         argument("refs", List[str], ..., help="Result ids or JSON files (bench/deploy --json)."),
         option("out", str, "edgeopt-report.html", "--out", "-o", help="The HTML page to write."),
         option("markdown", Optional[str], None, "--markdown", help="Also write a Markdown summary here."),
         option("title", str, "edgeopt benchmark report", "--title", help="Page title."),
         HISTORY_READ,
         variant(JSON, help="Print {html, markdown, results} paths/ids as JSON."),
         DEBUG)
def report(o):
    """Write a self-contained HTML report (plots embedded) and optionally a Markdown summary."""
    import os

    from edgeopt.results import history
    from edgeopt.results.private_file import write_private
    from edgeopt.results.report import html, markdown

    out, title = o.out, o.title
    results = [r for ref in o.refs for r in history.load_results(ref, o.history)]
    write_private(out, html(results, title=title))
    if o.markdown:
        write_private(o.markdown, markdown(results, title=title))
    if o.json_out:
        echo_json({"html": os.path.abspath(out), "markdown": os.path.abspath(o.markdown) if o.markdown else None,
                   "results": [r.get("id") or r.get("source") for r in results]})
    else:
        typer.echo(f"wrote {out}" + (f" and {o.markdown}" if o.markdown else "") + f" ({len(results)} results)")
