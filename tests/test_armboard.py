"""edgeopt against an emulated 64-bit Raspberry Pi OS board (tests/armboard.py): Debian bookworm arm64 with
Python 3.11 under PEP 668, Debian's numpy 1.24 and its own sshd, run through qemu-user in a network namespace
with no route out. A bare board is made ready by ``devices --setup`` from the hint edgeopt prints, and then runs
ai_edge_litert's aarch64 wheel. Timings under emulation say nothing about a Pi; they are printed to see what
the tests cost.
"""
import json
import re
import shlex
import time

import pytest

from edgeopt_testkit import edgeopt_cli


def js(p):
    assert p.returncode == 0, (p.returncode, p.stderr[-3000:])
    return json.loads(p.stdout)


@pytest.mark.ssh
def test_board_refuses_pip_into_its_system_python(arm_board):
    """As on a real board (PEP 668): pip will not install into Debian's Python."""
    p = arm_board.ssh("python3 -m pip install --no-index x; echo rc=$?")
    assert p.returncode == 0, p.stderr
    assert "error: externally-managed-environment" in p.stderr and p.stdout.strip().endswith("rc=1"), p
    assert arm_board.ssh("uname -m; id -un").stdout.split() == ["aarch64", "pi"]
    # no way out: the namespace's only route is the link to the host (no default route, destination 0)
    routes = [ln.split() for ln in arm_board.ssh("cat /proc/net/route").stdout.splitlines()[1:]]
    assert routes and all(r[1] != "00000000" for r in routes), routes


@pytest.mark.ssh
def test_devices_reports_the_board(arm_board):
    t0 = time.perf_counter()
    (dev,) = js(edgeopt_cli("devices", "--inventory", arm_board.inventory, "--json"))["devices"]
    print(f"\nboard started in {arm_board.start_seconds:.1f} s; edgeopt devices: {time.perf_counter() - t0:.1f} s")
    assert dev["reachable"] and dev["device"] == arm_board.name and dev["arch"] == "aarch64"
    assert re.fullmatch(r"3\.11\.\d+", dev["python"]["python"]) and dev["python"]["machine"] == "aarch64"
    # Debian's python3-numpy (the setup venv, if a test made it, sees it through --system-site-packages)
    assert re.fullmatch(r"1\.24\.\d+", dev["numpy"]), dev
    assert not any("declared rpi5 (aarch64)" in w for w in dev["warnings"]), dev["warnings"]


@pytest.mark.ssh
@pytest.mark.slow
def test_bare_board_setup_from_the_hint_then_deploy(arm_board, tflite_model, tmp_path):
    """The whole way a user goes: deploy fails on the bare board with a hint; the command in it, run exactly as
    printed (the inventory is edgeopt.toml in the current folder), makes the board ready offline; a second
    setup sends nothing; deploy then runs the artifact on the board's ai_edge_litert."""
    arm_board.reset()
    here, name = arm_board.inventory.parent, arm_board.name
    deploy = ["deploy", tflite_model, "--target", "rpi5", "--device", name, "--out", tmp_path / "build",
              "--runs", 3, "--warmup", 1, "--min-seconds", 0]

    p = edgeopt_cli(*deploy, cwd=here)
    assert p.returncode == 3 and "Traceback" not in p.stderr, p.stderr
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {name}: "), p.stderr
    hint = next(ln for ln in p.stderr.splitlines() if ln.startswith("hint:"))
    command = re.search(r"edgeopt devices --setup --device \S+", hint)
    assert command and command.group(0) == f"edgeopt devices --setup --device {name}", hint

    t0 = time.perf_counter()
    argv = shlex.split(command.group(0))
    p = edgeopt_cli(*argv[1:], cwd=here)
    setup_s = time.perf_counter() - t0
    assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-3000:])
    sent = re.search(r"([\d.]+) MiB", p.stdout)
    assert sent and float(sent.group(1)) > 1, p.stdout  # at least the ai_edge_litert wheel went over

    again = arm_board.ready()
    assert again["bytes_sent"] == 0 and not again["changed"] and again["actions"] == ["ready: nothing to do"]
    assert again["found"]["arch"] == "aarch64" and again["found"]["externally_managed"] is True
    # the venv is on the board (the overlay's upper layer), never in the cached root file system
    assert (arm_board.device.path("/home/pi/.edgeopt/venv/edgeopt-setup.json")).is_file()
    assert not (arm_board.rootfs / "home/pi/.edgeopt").exists()
    litert = next(w["file"] for w in again["wheels"] if w["file"].startswith("ai_edge_litert-"))
    assert "-cp311-" in litert and litert.endswith("_aarch64.whl"), litert
    # Debian's numpy 1.24 is kept: no numpy wheel is part of the set
    assert not any(w["file"].startswith("numpy-") for w in again["wheels"]), again["wheels"]
    total = sum(w["bytes"] for w in again["wheels"])
    assert f"{total / 2**20:.1f} MiB" == sent.group(0)  # the first setup sent every wheel of the set
    print(f"\nsetup of the bare board: {setup_s:.1f} s, {total / 2**20:.1f} MiB sent "
          f"({', '.join(w['file'] for w in again['wheels'])}); second setup {again['seconds']:.1f} s, 0 bytes")

    t0 = time.perf_counter()
    res = js(edgeopt_cli(*deploy, "--json", cwd=here))
    (r,) = res["results"]
    print(f"deploy on the board: {time.perf_counter() - t0:.1f} s")
    assert r["device"] == name and r["runtime"]["name"] == "ai_edge_litert" and r["runs"] >= 3
    assert r["device_facts"]["arch"] == "aarch64"
    assert r["runtime"]["version"] == litert.split("-")[1]
