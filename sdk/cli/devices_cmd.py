"""edgeopt devices [--inventory FILE] [--setup [--dry-run]] [--json]"""
from __future__ import annotations

from edgeopt.cli import console, echo_json, styled
from edgeopt.cli.options import ACCEPT_NEW, DEBUG, DEVICES, DRY_RUN, INVENTORY, JSON, LOCAL, SETUP, command, variant


def probe_device(dev, accept_new: bool) -> dict:
    """Connect to ``dev`` and probe it: the ``devices`` JSON entry of one reachable device."""
    from edgeopt.devices import probes, provision
    from edgeopt.devices.connection import connect

    with connect(dev, accept_new=accept_new) as conn:
        info = probes.probe(conn, python=provision.interpreter(conn))
    return {"device": dev.name, "target": dev.target, "address": dev.describe(), "reachable": True, **info}


def setup_device(dev, accept_new: bool, dry_run: bool) -> dict:
    """Connect to ``dev`` and make it ready (``--setup``): the JSON entry of one device."""
    from edgeopt.devices import provision
    from edgeopt.devices.connection import connect

    with connect(dev, accept_new=accept_new) as conn:
        plan = provision.setup_device(conn, dry_run=dry_run)
    return {**plan.to_dict(), "address": dev.describe(), "reachable": True}


@command("devices", INVENTORY,
         variant(DEVICES, help="Only these devices: NAME[,NAME...]."),
         variant(LOCAL, help="Probe this machine."),
         SETUP, DRY_RUN, ACCEPT_NEW, JSON, DEBUG)
def devices(o):
    """Probe each device: reachable or why not, CPU, board, Python, runtimes, free space, fit to its target.
    With --setup, make each one ready to run its target's artifacts offline."""
    from edgeopt.cli.bench_output import raise_for_failures
    from edgeopt.devices import inventory
    from edgeopt.devices.bench import for_each_device
    from edgeopt.errors import UsageError

    if o.dry_run and not o.setup:
        raise UsageError("--dry-run goes with --setup")
    if o.setup and o.local:
        raise UsageError("--setup is for inventory devices, not --local",
                         hint="this machine's Python is yours to manage")
    if o.local:
        devs = [inventory.local_device()]
    else:
        inv = inventory.load(o.inventory)
        devs = inv.select(o.device) if o.device else list(inv.devices.values())
        if not devs and o.setup:
            raise UsageError("--setup: no inventory devices",
                             hint="write edgeopt.toml (docs/inventory.md) or pass --inventory FILE")
        if not devs:
            import sys
            sys.stderr.write("note: no inventory devices; probing this machine (--local)\n")
            devs = [inventory.local_device()]
    if o.setup:
        results = for_each_device(devs, lambda d: setup_device(d, o.accept_new, o.dry_run))
    else:
        results = for_each_device(devs, lambda d: probe_device(d, o.accept_new))
    for r, d in zip(results, devs):
        if "error" in r:
            r.update({"reachable": False, "address": d.describe()})
    if o.json_out:
        echo_json({"devices": results})
    elif o.setup:
        _setup_table(results, o.dry_run)
    else:
        _table(results)
    raise_for_failures(results)


def _setup_table(results, dry_run: bool):
    from rich.table import Table

    c = console()
    t = Table(title="edgeopt devices --setup" + (" --dry-run" if dry_run else ""))
    for col in ("device", "target", "found", "did" if not dry_run else "would do", "sent", "seconds"):
        t.add_column(col)
    notes = []
    for r in results:
        if "error" in r:
            t.add_row(r["device"], r.get("target") or "-", "-", styled(("failed", "red")), "-", "-")
            notes.append(styled((r["error"], "red"), f"\n  hint: {r['hint']}" if r.get("hint") else ""))
            continue
        f = r["found"]
        found = (f"{f.get('arch')}, glibc {f.get('glibc')}\nPython {f.get('python')}"
                 + (f", numpy {f['numpy']}" if f.get("numpy") else "")
                 + (" (PEP 668)" if f.get("externally_managed") else ""))
        t.add_row(r["device"], r.get("target") or "-", found, "\n".join(r["actions"]),
                  f"{r['bytes_sent'] / 2**20:.1f} MiB" if r["bytes_sent"] else "0 B", f"{r['seconds']:.1f}")
        notes += [styled((f"{r['device']}: note: {n}", "yellow")) for n in r.get("notes") or []]
    c.print(t)
    for n in notes:
        c.print(n)


def _table(results):
    from rich.table import Table

    c = console()
    t = Table(title="edgeopt devices")
    for col in ("device", "target", "address", "status", "arch", "board", "python", "runtimes", "free"):
        t.add_column(col)
    notes = []
    for r in results:
        if not r.get("reachable"):
            t.add_row(r["device"], r.get("target") or "-", r["address"], styled(("unreachable", "red")), "-", "-", "-", "-",
                      "-")
            notes.append(styled((r["error"], "red"), f"\n  hint: {r['hint']}" if r.get("hint") else ""))
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
        status = styled(("ok, warnings", "yellow") if r.get("warnings") else ("ok", "green"))
        t.add_row(r["device"], r.get("target") or "-", r["address"], status, r.get("arch") or "-", board,
                  py.get("python") or py.get("error", "-"), "\n".join(rts) or "none", free)
        for w in r.get("warnings") or []:
            notes.append(styled((f"{r['device']}: warning: {w}", "yellow")))
    c.print(t)
    for n in notes:
        c.print(n)
