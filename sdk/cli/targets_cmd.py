"""edgeopt targets [--json]"""
from __future__ import annotations

from edgeopt.cli import console, echo_json
from edgeopt.cli.options import DEBUG, JSON, command, variant


@command("targets", variant(JSON, help="Machine output on stdout."), DEBUG)
def targets(o):
    """List the target profiles and family aliases."""
    from edgeopt.targets import ALIASES, TARGETS

    if o.json_out:
        echo_json({"targets": [t.to_dict() for t in TARGETS.values()], "aliases": ALIASES})
        return
    from rich.table import Table

    table = Table(title="edgeopt targets")
    for col in ("name", "family", "cpu", "accelerator", "artifacts", "runtime", "io", "delegate", "threads",
                "host compiler"):
        table.add_column(col)
    for t in TARGETS.values():
        table.add_row(t.name, t.family, t.cpu, t.accelerator or "-", ", ".join(t.formats), t.runtime, t.io_dtype,
                      t.delegate or "-", str(t.threads), t.host_compiler or "-")
    console().print(table)
    console().print("aliases: " + ", ".join(f"{a} = {n}" for a, n in ALIASES.items()))
