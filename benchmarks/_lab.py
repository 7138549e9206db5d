"""Devices of the device benchmarks (bench_overhead, bench_parallel, bench_push, bench_repeat).

``--inventory edgeopt.toml [--device a,b]``: real devices, through edgeopt's own inventory (bench_parallel,
bench_repeat). Without it, namespace sshd devices on this machine, started by the tests' sshd lab
(tests/sshlab.py; needs root). That lab is the one thing the benchmarks take from tests/, loaded here only:
bench_push always needs it (it shapes the link to the device with ``tc`` in a network namespace), and
bench_overhead compares against an in-process loop on this machine, so its device must be this machine.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import zoo

from edgeopt.devices import inventory

ROOT = Path(__file__).resolve().parent.parent
EDGEOPT = os.path.join(os.path.dirname(sys.executable), "edgeopt")


def new_lab():
    """A Lab of the tests' sshd lab in a fresh temporary folder; exits with the reason where none can run."""
    sshlab = zoo.load_file("edgeopt_sshlab", ROOT / "tests" / "sshlab.py")
    why = sshlab.lab_available()
    if why:
        sys.exit(f"cannot run: {why}")
    return sshlab.Lab(Path(tempfile.mkdtemp(prefix="edgeopt-bench-")) / "lab")


def add_device_args(ap):
    """--inventory / --device: bench real devices instead of namespace sshd devices of this machine."""
    ap.add_argument("--inventory", help="edgeopt.toml of real devices (default: namespace sshd devices here, root)")
    ap.add_argument("--device", help="comma-separated device names in --inventory (default: all of them)")


@contextlib.contextmanager
def devices(a, count: int):
    """(devices, work folder): those of ``a.inventory`` (``a.device``), or ``count`` namespace sshd devices
    started here (pi-0, pi-1, ...) and stopped after."""
    if a.inventory:
        devs = inventory.load(a.inventory, required=True).select(a.device, all_devices=not a.device)
        work = Path(tempfile.mkdtemp(prefix="edgeopt-bench-"))
        try:
            yield devs, work
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    lab = new_lab()
    try:
        for i in range(count):
            lab.start(f"pi-{i}", netns=lab.netns())
        yield list(inventory.load(lab.inventory()).devices.values()), lab.base
    finally:
        lab.stop()
