"""edgeopt devices [--inventory FILE] [--json]"""
from __future__ import annotations

from typing import List, Optional

import typer

from edgeopt.cli import app


def probe_device(dev, accept_new: bool) -> dict:
    from edgeopt.devices import probes
    from edgeopt.devices.connection import connect

    with connect(dev, accept_new=accept_new) as conn:
        info = probes.probe(conn)
    return {"device": dev.name, "target": dev.target, "address": dev.describe(), "reachable": True, **info}


@app.command("devices")
def devices(
    inventory: Optional[str] = typer.Option(None, "--inventory", "-i", help="Inventory file (default ./edgeopt.toml or $EDGEOPT_INVENTORY)."),
    device: Optional[List[str]] = typer.Option(None, "--device", "-d", help="Only these devices: NAME[,NAME...]."),
    local: bool = typer.Option(False, "--local", help="Probe this machine."),
    accept_new: bool = typer.Option(False, "--accept-new", help="Trust unknown host keys on first use (recorded)."),
    json_out: bool = typer.Option(False, "--json", help="Machine output on stdout, nothing else."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
):
    """Probe each device: reachable or why not, CPU, board, Python, runtimes, free space, fit to its target."""
    from edgeopt.devices import inventory as I
    from edgeopt.devices.bench import for_each_device
    from edgeopt.cli._devices import echo_json, raise_for_failures

    if local:
        devs = [I.local_device()]
    else:
        inv = I.load(inventory)
        devs = inv.select(device) if device else list(inv.devices.values())
        if not devs:
            import sys
            sys.stderr.write("note: no inventory devices; probing this machine (--local)\n")
            devs = [I.local_device()]
    results = for_each_device(devs, lambda d: probe_device(d, accept_new))
    for r, d in zip(results, devs):
        if "error" in r:
            r.update({"reachable": False, "address": d.describe()})
    if json_out:
        echo_json({"devices": results})
    else:
        _table(results)
    raise_for_failures(results)


def _table(results):
    from edgeopt.cli import console
    from rich.table import Table

    c = console()
    t = Table(title="edgeopt devices")
    for col in ("device", "target", "address", "status", "arch", "board", "python", "runtimes", "free"):
        t.add_column(col)
    notes = []
    for r in results:
        if not r.get("reachable"):
            t.add_row(r["device"], r.get("target") or "-", r["address"], "[red]unreachable[/red]", "-", "-", "-", "-", "-")
            notes.append(f"[red]{r['error']}[/red]" + (f"\n  hint: {r['hint']}" if r.get("hint") else ""))
            continue
        board = r.get("model") or "-"
        if r.get("tegra"):
            tg = r["tegra"]
            board += f" (L4T {tg['l4t']}" + (f", JetPack {tg['jetpack']})" if tg.get("jetpack") else ")")
        rts = []
        for name, info in (r.get("runtimes") or {}).items():
            v = info.get("version")
            s = name + (f" {v}" if v else "")
            if info.get("providers"):
                s += " [" + ",".join(p.replace("ExecutionProvider", "") for p in info["providers"]) + "]"
            rts.append(s)
        disk = r.get("disk") or {}
        free = f"{disk['free_bytes'] / 2**30:.1f} GiB" if disk else "-"
        py = r.get("python") or {}
        status = "[yellow]ok, warnings[/yellow]" if r.get("warnings") else "[green]ok[/green]"
        t.add_row(r["device"], r.get("target") or "-", r["address"], status, r.get("arch") or "-", board,
                  py.get("python") or py.get("error", "-"), "\n".join(rts) or "none", free)
        for w in r.get("warnings") or []:
            notes.append(f"[yellow]{r['device']}: warning: {w}[/yellow]")
    c.print(t)
    for n in notes:
        c.print(n)
