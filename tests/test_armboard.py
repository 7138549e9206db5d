"""edgeopt against an emulated 64-bit Raspberry Pi OS board (tests/armboard.py): Debian bookworm arm64 with
Python 3.11 under PEP 668, Debian's numpy 1.24 and its own sshd, run through qemu-user in a network namespace
with no route out. A bare board is made ready by ``devices --setup`` from the hint edgeopt prints, and then runs
ai_edge_litert's aarch64 wheel. ``deploy --val`` computes the artifact's accuracy on the board, and an unpacked
``edgeopt bundle`` runs there with the board's own Python and numpy: both give the host's top-1. Timings under
emulation say nothing about a Pi; they are printed to see what the tests cost.
"""
import json
import os
import re
import shlex
import subprocess
import sys
import time

import numpy as np
import pytest

from edgeopt import runtime
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


# ------------------------------------------------------------------ on-device accuracy on the board (arm64)

N_VAL = 200  # Fashion-MNIST test images: enough for a real top-1 accuracy, few enough for emulation


@pytest.fixture(scope="module")
def fm_board(arm_board, onnx_cnn, fm_data, fmnist, tmp_path_factory):
    """The Fashion-MNIST CNN deployed for rpi5 to the board (made ready first: ``devices --setup``, a no-op when
    it already is) with ``--val``: its first N_VAL test images with their labels. Also the host's own numbers on
    the same images, computed here: the FP32 model through onnxruntime."""
    d = tmp_path_factory.mktemp("armval")
    _, _, xte, yte = fmnist
    x, labels = xte[:N_VAL, None], yte[:N_VAL].astype(np.int64)
    np.savez(d / "val.npz", image=x, labels=labels)
    t0 = time.perf_counter()
    entry = arm_board.ready()
    ready_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = js(edgeopt_cli("deploy", onnx_cnn, "--target", "rpi5", "--device", arm_board.name, "--inventory",
                         arm_board.inventory, "--calib", fm_data["calib_nchw"], "--val", d / "val.npz", "--out",
                         d / "out", "--runs", 3, "--warmup", 1, "--min-seconds", 0, "--json",
                         env={"EDGEOPT_CACHE": str(d / "cache")}))
    seconds = time.perf_counter() - t0
    import onnxruntime as ort  # the FP32 reference, as the conversion's check runs it (one sample at a time)
    s = ort.InferenceSession(str(onnx_cnn), providers=["CPUExecutionProvider"])
    ref = np.concatenate([s.run(None, {"image": x[i:i + 1]})[0] for i in range(N_VAL)])
    return {"res": res, "seconds": seconds, "ready_s": ready_s, "out": d / "out", "dir": d, "val": d / "val.npz",
            "x": x, "labels": labels, "ref": ref, "python": entry["python"], "model": onnx_cnn}


@pytest.mark.ssh
@pytest.mark.slow
def test_deploy_val_on_the_board_equals_the_host(arm_board, fm_board):
    """deploy --val to the arm64 board: ai_edge_litert's aarch64 XNNPACK runs the 200 samples there, and its
    top-1 agreement with FP32 and real top-1 accuracy are the host's (x86_64 XNNPACK) for the same artifact."""
    (r,) = fm_board["res"]["results"]
    acc = r["accuracy"]
    dev, host = acc["outputs"]["logits"], acc["host"]["outputs"]["logits"]
    print(f"\nboard made ready: {fm_board['ready_s']:.1f} s; deploy --val on the board: {fm_board['seconds']:.1f} s "
          f"(the samples there: {acc['seconds']:.1f} s)\n"
          f"board: {json.dumps(dev)}\nhost:  {json.dumps(host)}\nboard vs host: {json.dumps(acc['vs_host'])}")
    # the samples ran on the board, on what was timed there: ai_edge_litert's aarch64 wheel with XNNPACK
    assert r["device"] == arm_board.name and r["device_facts"]["arch"] == "aarch64"
    assert acc["runtime"] == {k: r["runtime"][k] for k in ("name", "version", "delegate", "provider")}
    assert acc["runtime"]["name"] == "ai_edge_litert" and acc["runtime"]["delegate"] == "xnnpack"
    assert acc["host"]["runtime"]["name"] == "ai_edge_litert"
    assert acc["samples"] == N_VAL and acc["data"]["source"] == "val.npz"
    assert acc["reference"] == f"fp32 source model (onnxruntime CPU) {os.path.basename(fm_board['model'])}"
    # top-1: the board's are the host's, exactly
    for key in ("top1_agreement", "top1_accuracy", "fp32_top1_accuracy"):
        assert dev[key] == host[key], key
    # ... and what the host computes here on its own: the artifact through edgeopt.runtime, FP32, the labels
    got = runtime.load(str(fm_board["out"])).run(fm_board["x"])[0]
    ref, labels = fm_board["ref"], fm_board["labels"]
    assert dev["top1_accuracy"] == pytest.approx(float(np.mean(got.argmax(1) == labels)), abs=1e-9)
    assert dev["top1_agreement"] == pytest.approx(float(np.mean(got.argmax(1) == ref.argmax(1))), abs=1e-9)
    assert dev["fp32_top1_accuracy"] == pytest.approx(float(np.mean(ref.argmax(1) == labels)), abs=1e-9)
    assert dev["top1_accuracy"] > 0.7 and dev["top1_agreement"] > 0.95  # a real model on real images
    # The scores are not bit for bit the host's: the aarch64 XNNPACK kernels (ai_edge_litert 2.3.0 on the board,
    # under qemu) round otherwise than x86_64's (the host's 2.1.0; x86_64's 2.3.0 gives outputs identical to
    # 2.1.0's on this artifact). Measured: 1 of the 2000 logits one step of the output's int8 grid (0.1125) apart,
    # 291 more in the last bits of float32 (at most 4.8e-7); board vs FP32 cosine 0.99997 and SQNR 41.075 dB, host
    # 0.99997 and 41.080 dB; board vs host SQNR 66.9 dB, top-1 agreement 1.0.
    step = float(np.diff(np.unique(got)).min())  # the artifact's logits are int8 dequantized: a grid
    vs_host = acc["vs_host"]["logits"]
    assert vs_host["top1_agreement"] == 1.0 and vs_host["max_abs_err"] <= step * 1.0001, (vs_host, step)
    assert vs_host["mean_abs_err"] * N_VAL * 10 <= 5 * step * 1.0001  # at most 5 logits one step apart
    assert acc["same_as_host"] is (vs_host["max_abs_err"] == 0)
    assert dev["cosine"] == pytest.approx(host["cosine"], abs=1e-5)
    assert dev["sqnr_db"] == pytest.approx(host["sqnr_db"], abs=0.05)


# The documented way to run an unpacked bundle (docs/python-api.md, "Running from a bundle"), run on the board
# from its home directory with the setup venv's python: the bundle's edgeopt.runtime, nothing else of edgeopt.
BUNDLE_APP = r"""
import json, os, sys
sys.path.insert(0, os.path.expanduser("~/fm"))     # the directory the bundle was unpacked into
import numpy as np
import edgeopt.runtime
model = edgeopt.runtime.load()                     # without a path: this bundle's manifest and artifacts
with np.load(os.path.expanduser("~/val.npz")) as z:
    images, labels = z["image"], z["labels"]
top1 = np.zeros(len(images), np.int64)
for start, out in model.batches(images, 64):
    top1[start:start + len(out["logits"])] = out["logits"].argmax(1)
print(json.dumps({"file": edgeopt.runtime.__file__, "runtime": model.runtime, "numpy": np.__version__,
                  "top1": top1.tolist(), "accuracy": float(np.mean(top1 == labels))}))
"""


@pytest.mark.ssh
@pytest.mark.slow
def test_unpacked_bundle_on_the_board_gives_the_hosts_top1(arm_board, fm_board, tmp_path):
    """edgeopt bundle, copied to the board with scp and unpacked there as the docs say: the bundle's
    edgeopt/runtime.py (its runner command line, and edgeopt.runtime from Python) on the board's setup venv
    (Python 3.11, Debian's numpy 1.24) gives, on the same samples, the top-1 the host's run of the same bundle
    gives, and the accuracy deploy --val reported for the board."""
    t0 = time.perf_counter()
    arc = tmp_path / "fm.tar.gz"
    built = js(edgeopt_cli("bundle", fm_board["out"], "-o", arc, "--json"))
    assert built["artifacts"] == ["model.int8.tflite"], built
    host_dir = tmp_path / "host"
    host_dir.mkdir()
    subprocess.run(["tar", "-xzf", str(arc), "-C", str(host_dir)], check=True)
    py = fm_board["python"]
    assert py == "/home/pi/.edgeopt/venv/bin/python", py  # what devices --setup made and recorded
    runner = ["edgeopt/runtime.py", "bench", "model.int8.tflite", "--runs", "1", "--warmup", "0",
              "--min-seconds", "0", "--no-samples", "--val"]
    try:
        for local, remote in ((arc, "fm.tar.gz"), (fm_board["val"], "val.npz")):
            p = arm_board.put(local, remote)
            assert p.returncode == 0, p.stderr
        p = arm_board.ssh("set -e; rm -rf ~/fm; mkdir ~/fm; tar -xzf ~/fm.tar.gz -C ~/fm; cd ~/fm; "
                          "sha256sum -c --quiet SHA256SUMS; "
                          + shlex.join([py, *runner, "/home/pi/val.npz", "--val-out", "/home/pi/out.npz"]))
        assert p.returncode == 0, (p.stdout[-2000:], p.stderr[-3000:])
        board_run = json.loads(p.stdout.strip().splitlines()[-1])
        with np.load(arm_board.device.path("/home/pi/out.npz"), allow_pickle=False) as z:
            assert z.files == ["output_0"]
            board = z["output_0"]
        p = arm_board.ssh(f"cd ~ && {shlex.quote(py)} - <<'EOF'\n{BUNDLE_APP}\nEOF")
        assert p.returncode == 0, p.stderr[-3000:]
        app = json.loads(p.stdout.strip().splitlines()[-1])
    finally:
        arm_board.ssh("rm -rf ~/fm ~/fm.tar.gz ~/val.npz ~/out.npz")
    # the host: the same bundle's runner on the same samples, with this venv's ai_edge_litert (x86_64)
    p = subprocess.run([sys.executable, *runner, str(fm_board["val"]), "--val-out", str(tmp_path / "host.npz")],
                       capture_output=True, text=True, cwd=host_dir, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    host_run = json.loads(p.stdout.strip().splitlines()[-1])
    with np.load(tmp_path / "host.npz", allow_pickle=False) as z:
        host = z["output_0"]
    labels = fm_board["labels"]
    diff = float(np.max(np.abs(board - host)))
    print(f"\nbundle on the board: {time.perf_counter() - t0:.1f} s; runner {board_run['runtime']} "
          f"{board_run['val']}; host {host_run['runtime']}; max |board - host| {diff:g} "
          f"({int(np.sum(board != host))} of {board.size} logits differ, "
          f"{int(np.sum(np.abs(board - host) > 1e-3))} by more than 1e-3); top-1 accuracy board "
          f"{np.mean(board.argmax(1) == labels):.3f}, host {np.mean(host.argmax(1) == labels):.3f}")
    assert board_run["runtime"]["name"] == "ai_edge_litert" and board_run["val"]["samples"] == N_VAL
    assert board.shape == host.shape == (N_VAL, 10) and board.dtype == np.float32
    np.testing.assert_array_equal(board.argmax(1), host.argmax(1))  # the same top-1, sample by sample
    # the logits themselves, as deploy --val found (see the test above): a few one step of the int8 grid apart
    # (measured: 1 of 2000, by 0.1125), the others the same int8 value dequantized to float32 with a last-bits
    # difference at most (measured: 291 of them, at most 4.8e-7 apart)
    step = float(np.diff(np.unique(host)).min())
    apart = np.abs(board - host)
    steps = apart > step / 2
    assert steps.sum() <= 5 and np.allclose(apart[steps], step, rtol=1e-4), (apart[steps], step)
    assert apart[~steps].max() <= 1e-5 * max(1.0, float(np.abs(host).max())), apart[~steps].max()
    # from Python, as documented: the bundle's edgeopt.runtime (not an installed edgeopt) on Debian's numpy
    assert app["file"] == "/home/pi/fm/edgeopt/runtime.py" and app["numpy"].startswith("1.24.")
    assert app["runtime"]["name"] == "ai_edge_litert" and app["runtime"]["delegate"] == "xnnpack"
    assert app["top1"] == host.argmax(1).tolist()
    dev = fm_board["res"]["results"][0]["accuracy"]["outputs"]["logits"]
    assert app["accuracy"] == pytest.approx(dev["top1_accuracy"], abs=1e-9)
    assert float(np.mean(board.argmax(1) == labels)) == pytest.approx(dev["top1_accuracy"], abs=1e-9)
