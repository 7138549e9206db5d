"""Shared pieces of the device commands (bench, deploy, devices): device selection and result output."""
from __future__ import annotations

import json
import sys

import typer


def select_devices(inventory: str | None, device: list[str] | None, all_devices: bool, local: bool,
                   family: str | None = None, local_target: str | None = None, command: str = "bench"):
    """(devices, single): the devices asked for; ``single`` when exactly one was named (JSON: an object)."""
    from edgeopt.devices import inventory as I
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
    return {k: v for k, v in result.items() if samples or k not in ("samples_ms", "timestamps_s")}


def store_history(results: list[dict], history: str | None, command: str, manifest: dict | None = None,
                  artifact: str | None = None, quiet: bool = False) -> None:
    """Store the successful results in the history DB (sets result['id']); a DB problem is a warning only."""
    from edgeopt.results import history as H
    from edgeopt.errors import EdgeoptError
    if manifest is None and artifact:
        manifest = H.manifest_for(artifact)
    try:
        H.store(results, history, manifest=manifest, command=command)
    except EdgeoptError as e:
        if history:  # asked for explicitly: an error
            raise
        sys.stderr.write(f"warning: results not stored: {e.message}\n")


def write_junit(path: str | None, results: list[dict], command: str, max_p90_ms: float | None,
                require_clean: bool = False) -> None:
    if not path:
        return
    from edgeopt.results import junit as J
    J.write(path, f"edgeopt {command}", J.bench_cases(results, command, max_p90_ms, require_clean))


def check_clean(results: list[dict], require_clean: bool):
    if not require_clean:
        return
    from edgeopt.errors import GateError
    bad = [r for r in results if "error" not in r and r.get("clean") is False]
    if bad:
        raise GateError("device conditions not clean: " + "; ".join(
            f"{r['device']}: {', '.join((r.get('conditions') or {}).get('reasons') or [])}" for r in bad),
            hint="let the device cool down / go idle and run again")


def echo_json(obj):
    typer.echo(json.dumps(obj, indent=2))


def print_bench_table(results: list[dict], title: str = "edgeopt bench"):
    """A rich table of results (nothing when every device failed: the errors go to stderr)."""
    if not any("error" not in r for r in results):
        return
    from edgeopt.cli import console
    from rich.table import Table

    c = console()
    t = Table(title=title)
    for col in ("device", "target", "runtime", "p50 ms", "p90 ms", "p99 ms", "mean ms", "CV", "runs", "init ms",
                "transfer", "status"):
        t.add_column(col, justify="right" if col.endswith("ms") or col == "runs" else "left")
    notes = []
    for r in results:
        if "error" in r:
            t.add_row(r["device"], r.get("target") or "-", "[red]failed (see below)[/red]", "-", "-", "-", "-", "-",
                      "-", "-", "-", "-")
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
        st = {True: "clean", False: "[red]not clean[/red]", None: "-"}[r.get("clean")]
        if r.get("unstable"):
            st += " [yellow]unstable[/yellow]"
        if r.get("id"):
            st += f" #{r['id']}"
        t.add_row(r["device"], r.get("target") or "-", how, fmt(lat.get("p50")), fmt(lat.get("p90")),
                  fmt(lat.get("p99")), fmt(lat.get("mean")), "-" if lat.get("cv") is None else f"{lat['cv']:.3f}",
                  str(r.get("runs", "-")), fmt(r.get("init_ms")), trs, st)
        for n in r.get("notes") or []:
            notes.append(f"{r['device']}: {n}")
        for n in (r.get("conditions") or {}).get("reasons") or []:
            notes.append(f"{r['device']}: not clean: {n}")
    c.print(t)
    for n in notes:
        c.print(n)
