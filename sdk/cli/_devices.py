"""Shared pieces of the device commands (bench, deploy, devices): device selection and result output."""
from __future__ import annotations

import json
import sys

import typer


def select_devices(inventory: str | None, device: list[str] | None, all_devices: bool, local: bool,
                   family: str | None = None, local_target: str | None = None, command: str = "bench"):
    """(devices, single): the devices asked for; ``single`` when exactly one was named (JSON: an object)."""
    from edgeopt import inventory as I
    from edgeopt.errors import UsageError

    chosen = sum(bool(x) for x in (device, all_devices, local))
    if chosen > 1:
        raise UsageError("give one of --device, --all, --local")
    if local:
        return [I.local_device(target=local_target)], True
    inv = I.load(inventory)
    if device:
        devs = inv.select(device)
        return devs, len(devs) == 1 and len(device) == 1 and "," not in device[0]
    if all_devices:
        if not inv.devices:
            raise UsageError("--all: the inventory has no devices" if inv.path else
                             "--all: no inventory (no edgeopt.toml here, no --inventory, no $EDGEOPT_INVENTORY)",
                             hint="use --local to run on this machine")
        return list(inv.devices.values()), False
    if family is not None:
        devs = inv.select(family=family)
        if devs:
            return devs, False
        if inv.path is None:  # no lab at all: this machine is the device
            sys.stderr.write("note: no inventory, deploying to this machine (--local)\n")
            return [I.local_device(target=local_target)], False
        raise UsageError(f"no device in {inv.path} has a target in the {family} family",
                         hint="name devices with --device, or use --local")
    if inv.path is None:
        sys.stderr.write("note: no inventory, benchmarking on this machine (--local)\n")
        return [I.local_device(target=local_target)], True
    raise UsageError(f"{command}: which devices? give --device NAME[,NAME...], --all or --local",
                     hint=f"devices in {inv.path}: {', '.join(inv.devices) or 'none'}")


def failures(results: list[dict]) -> list[dict]:
    return [r for r in results if "error" in r]


def raise_for_failures(results: list[dict]):
    from edgeopt.errors import DeviceError, EdgeoptError

    bad = failures(results)
    if not bad:
        return
    if len(bad) == 1:
        e = EdgeoptError(bad[0]["error"], hint=bad[0].get("hint"))
        e.exit_code = bad[0].get("exit_code", 3)
        raise e
    msg = f"{len(bad)} of {len(results)} devices failed:\n" + "\n".join(f"{r['error']}" for r in bad)
    raise DeviceError(msg, hint=bad[0].get("hint"))


def check_p90(results: list[dict], max_p90_ms: float | None):
    if max_p90_ms is None:
        return
    from edgeopt.errors import GateError

    over = [r for r in results if "error" not in r and (r.get("latency_ms") or {}).get("p90") is not None
            and r["latency_ms"]["p90"] > max_p90_ms]
    if over:
        raise GateError("latency budget exceeded: " + ", ".join(
            f"{r['device']} p90 {r['latency_ms']['p90']:.3f} ms > {max_p90_ms:g} ms" for r in over))


def public(result: dict, samples: bool = True) -> dict:
    return {k: v for k, v in result.items() if samples or k != "samples_ms"}


def echo_json(obj):
    typer.echo(json.dumps(obj, indent=2))


def print_bench_table(results: list[dict], title: str = "edgeopt bench"):
    """A rich table of results (nothing when every device failed: the errors go to stderr)."""
    if not any("error" not in r for r in results):
        return
    from rich.console import Console
    from rich.table import Table

    c = Console()
    t = Table(title=title)
    for col in ("device", "target", "runtime", "p50 ms", "p90 ms", "p99 ms", "mean ms", "runs", "init ms",
                "transfer"):
        t.add_column(col, justify="right" if col.endswith("ms") or col == "runs" else "left")
    notes = []
    for r in results:
        if "error" in r:
            t.add_row(r["device"], r.get("target") or "-", "[red]failed (see below)[/red]", "-", "-", "-", "-", "-",
                      "-", "-")
            continue
        rt = r.get("runtime") or {}
        how = rt.get("name") or "?"
        if rt.get("version"):
            how += f" {rt['version']}"
        extra = rt.get("delegate") or rt.get("provider")
        if extra:
            how += f" ({extra})"
        lat = r.get("latency_ms") or {}
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        tr = r.get("transfer")
        if tr is None:
            trs = "-"
        elif tr.get("skipped"):
            trs = "cached"
        else:
            mb = tr["bytes"] / 1e6
            trs = f"{mb:.2f} MB in {tr['seconds']:.2f} s"
        t.add_row(r["device"], r.get("target") or "-", how, fmt(lat.get("p50")), fmt(lat.get("p90")),
                  fmt(lat.get("p99")), fmt(lat.get("mean")), str(r.get("runs", "-")), fmt(r.get("init_ms")), trs)
        for n in r.get("notes") or []:
            notes.append(f"{r['device']}: {n}")
    c.print(t)
    for n in notes:
        c.print(n)
