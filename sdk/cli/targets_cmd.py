"""edgeopt targets [--json]"""
from __future__ import annotations

import json

import typer

from edgeopt.cli import app


@app.command("targets")
def targets(json_out: bool = typer.Option(False, "--json", help="Machine output on stdout."),
            debug: bool = typer.Option(False, "--debug", help="Show tracebacks.")):
    """List the target profiles and family aliases."""
    from edgeopt import targets as T

    if json_out:
        typer.echo(json.dumps({"targets": [t.to_dict() for t in T.TARGETS.values()], "aliases": T.ALIASES},
                              indent=2))
        return
    from edgeopt.cli import console
    from rich.table import Table

    table = Table(title="edgeopt targets")
    for col in ("name", "family", "cpu", "accelerator", "artifacts", "runtime", "io", "delegate", "threads",
                "host compiler"):
        table.add_column(col)
    for t in T.TARGETS.values():
        table.add_row(t.name, t.family, t.cpu, t.accelerator or "-", ", ".join(t.formats), t.runtime, t.io_dtype,
                      t.delegate or "-", str(t.threads), t.host_compiler or "-")
    console().print(table)
    console().print("aliases: " + ", ".join(f"{a} = {n}" for a, n in T.ALIASES.items()))
