"""edgeopt sweep SWEEP.toml [--out DIR] [--ray [ADDRESS]] [--json]"""
from __future__ import annotations

import os

from edgeopt.cli import console, echo_json
from edgeopt.cli.optional_value import optional_value_command
from edgeopt.cli.options import DEBUG, JSON, SWEEP, command, variant

# --ray alone: a Ray instance started on this machine for the sweep (ray.init(address="local")), as ``--ray auto``
# joins the cluster this machine is part of and ``--ray HOST:PORT`` another
RAY_LOCAL = "local"


def ray_address_or_not(word: str) -> bool:
    """Whether the word after ``--ray`` is its address: not when it is the sweep file (a .toml name, or a file
    that is there), so that ``sweep --ray s.toml`` means ``--ray local s.toml``. A Ray address is ``local``, ``auto``,
    ``HOST:PORT`` or ``ray://HOST:PORT``: never a file name."""
    return not (word.lower().endswith(".toml") or os.path.isfile(word))


@command("sweep", SWEEP, variant(JSON, help="Print the matrix as JSON on stdout, nothing else."), DEBUG,
         cls=optional_value_command("--ray", RAY_LOCAL, ray_address_or_not))
def sweep(o):
    """Convert, check and benchmark every cell of models x targets x recipes on each matching device."""
    import contextlib
    import sys

    from edgeopt.errors import DeviceError, GateError, UsageError
    from edgeopt.sweep import run as runner
    from edgeopt.sweep import spec

    s = spec.load(o.sweep_file)
    devices = _devices(s, o.inventory)
    if o.jobs is not None and o.jobs < 1:
        raise UsageError(f"--jobs {o.jobs}: at least 1")
    if o.ray is not None and not o.ray.strip():
        raise UsageError("--ray '': an address (HOST:PORT, ray://HOST:PORT, auto or local), or --ray alone for local")
    if not 0 < o.num_cpus <= 1024:
        raise UsageError(f"--num-cpus {o.num_cpus:g}: from more than 0 to 1024")
    # stdout is the matrix's alone: what Ray prints for its driver (a worker that died, ...) goes to stderr
    with contextlib.redirect_stdout(sys.stderr):
        if o.ray is not None:
            from edgeopt.sweep.cluster import RayBackend
            backend = RayBackend(address=o.ray, num_cpus=o.num_cpus)
        else:
            backend = runner.LocalBackend(jobs=o.jobs)
        matrix = runner.run(s, devices, o.out, backend, history=o.history, fresh=o.fresh, accept_new=o.accept_new,
                            progress=lambda msg: (sys.stderr.write(msg + "\n"), sys.stderr.flush()))
    if o.json_out:
        echo_json({**{k: v for k, v in matrix.items() if k != "records"},
                   "records": [runner.summary(r) for r in matrix["records"]]})
    else:
        print_matrix(matrix)
    bad = [r for r in matrix["records"] if r["status"] != "ok"]
    if bad:
        unfinished = [r for r in bad if not r.get("final")]
        msg = (f"sweep {matrix['sweep']['id']}: {len(bad)} of {len(matrix['records'])} cells failed: "
               f"{bad[0]['id']}: {bad[0].get('error')}")
        if unfinished:
            raise DeviceError(msg, hint="rerun the same command: the finished cells are kept")
        raise GateError(msg)


def _devices(s, inventory_path) -> dict:
    """{name: Device} of the sweep's devices ('local': this machine)."""
    from edgeopt.devices import inventory

    names = [d for d in s.devices if d != "local"]
    out = {}
    if names:
        inv = inventory.load(inventory_path or s.inventory)
        out = {d.name: d for d in inv.select(names)}
    if "local" in s.devices:
        out["local"] = inventory.local_device()
    return out


def print_matrix(matrix: dict) -> None:
    """The matrix as a terminal table: one row per cell and device."""
    from rich.table import Table

    sw = matrix["sweep"]
    t = Table(title=f"edgeopt sweep {sw['id']} ({sw['backend']}: {matrix['conversions']} converted, "
                    f"{matrix['benchmarks']} benchmarked)")
    for col in ("model", "target", "recipe", "device", "artifact", "cosine", "SQNR dB", "p50 ms", "p90 ms",
                "status"):
        t.add_column(col, justify="right" if col in ("cosine", "SQNR dB", "p50 ms", "p90 ms") else "left")
    for r in matrix["records"]:
        acc, lat = r.get("accuracy") or {}, r.get("latency_ms") or {}
        art = r.get("artifact") or {}

        def num(v, fmt):
            return format(v, fmt) if isinstance(v, (int, float)) else "-"
        t.add_row(r["model"], r["target"], r["recipe"], r.get("device") or "-",
                  f"{art.get('precision') or '-'} {num((art.get('bytes') or 0) / 1024, '.1f')} KiB" if art else "-",
                  num(acc.get("cosine"), ".4f"), num(acc.get("sqnr_db"), ".1f"), num(lat.get("p50"), ".3f"),
                  num(lat.get("p90"), ".3f"), "ok" if r["status"] == "ok" else f"failed: {r.get('error', '')[:80]}")
    console().print(t)
