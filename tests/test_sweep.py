"""edgeopt sweep: the sweep file checked strictly, the local pool (resume, zero-conversion rerun, history), and a
real two-node Ray cluster driving two sshd devices in network namespaces."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeopt_testkit import edgeopt_cli, save_arrays
from edgeopt_testkit.cli import assert_one_error
from edgeopt_testkit.models import small_cnn_onnx, tiny_conv_onnx

TARGETS = ("jetson-orin-nano", "jetson-agx-orin")   # the QDQ route: no TensorFlow, seconds per conversion


def js(p):
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two tiny ONNX models with their calibration data."""
    import numpy as np
    d = tmp_path_factory.mktemp("sweep models")
    rng = np.random.default_rng(0)
    files = save_arrays(d, tiny_cal=rng.standard_normal((24, 3, 8, 8)).astype(np.float32),
                        cnn_cal=rng.standard_normal((24, 3, 16, 16)).astype(np.float32))
    return {"tiny": (tiny_conv_onnx(d / "tiny.onnx"), files["tiny_cal"]),
            "cnn": (str(small_cnn_onnx(d / "cnn.onnx", size=16, channels=8)), files["cnn_cal"])}


def write_sweep(path: Path, models: dict, devices, inventory=None, bench="runs = 5\nmin_seconds = 0\nwarmup = 1\n"
                "threads = 1\n") -> Path:
    rel = lambda p: os.path.relpath(p, path.parent)  # noqa: E731 — paths relative to the sweep file
    lines = ['name = "t"', f"targets = {json.dumps(list(TARGETS))}", f"devices = {json.dumps(devices)}"]
    if inventory:
        lines.append(f'inventory = "{rel(inventory)}"')
    for name, (model, cal) in models.items():
        lines += ["[[models]]", f'name = "{name}"', f'path = "{rel(model)}"', f'calib = "{rel(cal)}"']
    lines += ["[[recipes]]", 'name = "minmax"', 'calibration = "minmax"',
              "[[recipes]]", 'name = "mse"', 'calibration = "mse"', "bias_correction = false"]
    lines += ["[bench]", bench]
    path.write_text("\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------------------------------------- the file

@pytest.mark.parametrize("body, needle", [
    ("targets = [", "not valid TOML"),
    ('targets = ["rpi5"]\nmodels = []\n', "models: at least one"),
    ('targets = ["rpi5"]\nbogus = 1\n[[models]]\npath = "m.onnx"\n', "unknown key 'bogus'"),
    ('targets = ["nope"]\n[[models]]\npath = "m.onnx"\n', "unknown target"),
    ('targets = ["rpi5"]\n[[models]]\npath = "../../etc/none.onnx"\n', "no such file"),
    ('targets = ["rpi5"]\n[[models]]\npath = "m.onnx"\nname = "../x"\n', "models[0].name"),
    ('targets = ["rpi5"]\n[[models]]\npath = "m.onnx"\n[[recipes]]\nname = "a"\ncalibration = "kl"\n',
     "recipes[0].calibration"),
    ('targets = ["rpi5"]\n[[models]]\npath = "m.onnx"\n[[recipes]]\nname = "a"\nmax_float_layers = "3"\n',
     "--max-float-layers bounds"),
    ('targets = ["rpi5", "rpi5"]\n[[models]]\npath = "m.onnx"\n', "'rpi5' twice"),
    ('targets = ["rpi5"]\n[[models]]\npath = "m.onnx"\n[bench]\nruns = -1\n', "bench.runs"),
    ('targets = ["rpi5"]\ndevices = ["a b"]\n[[models]]\npath = "m.onnx"\n', "not a device name"),
    ("x = " + "[" * 5000 + "]" * 5000, "not valid TOML"),
])
def test_bad_sweep_files_are_one_error(tmp_path, body, needle):
    (tmp_path / "m.onnx").write_bytes(b"x")
    f = tmp_path / "s.toml"
    f.write_text(body)
    out = tmp_path / "out"
    assert_one_error(edgeopt_cli("sweep", f, "--out", out, in_process=True), str(f), needle)
    assert not out.exists()  # nothing written for a bad file


def test_oversized_and_binary_sweep_files(tmp_path):
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * (2 << 20))
    assert_one_error(edgeopt_cli("sweep", big, in_process=True), "not a sweep file")
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    assert_one_error(edgeopt_cli("sweep", binary, in_process=True), "not UTF-8")
    assert_one_error(edgeopt_cli("sweep", tmp_path / "none.toml", in_process=True), "no such file")


# ------------------------------------------------------------------------------------------ local pool

def test_local_sweep_resumes_and_reruns_without_converting(models, tmp_path):
    env = {"EDGEOPT_LOCAL_WORKDIR": str(tmp_path / "wd"), "EDGEOPT_CACHE": str(tmp_path / "cache"),
           "EDGEOPT_HISTORY": str(tmp_path / "h.sqlite")}
    (tmp_path / "sweep dir").mkdir()
    f = write_sweep(tmp_path / "sweep dir" / "s.toml", models, ["local"])
    out = tmp_path / "out"
    args = ["sweep", f, "--out", out, "--jobs", 2, "--json"]
    # killed after its first finished cell: the rerun keeps what was done
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "edgeopt"), *map(str, args[:-1]),
                             "--jobs", "1"], env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not list(out.glob("*/cells/*.json")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = {p.name: p.read_bytes() for p in out.glob("*/cells/*.json")}
    assert kept, "no cell finished before the kill"
    res = js(edgeopt_cli(*args, env=env))
    recs = res["records"]
    assert len(recs) == 8 and all(r["status"] == "ok" for r in recs), recs
    assert {(r["model"], r["target"], r["recipe"]) for r in recs} == {
        (m, t, r) for m in models for t in TARGETS for r in ("minmax", "mse")}
    assert res["benchmarks"] == 8 - len(kept)   # the finished cells were not redone
    assert all(p.read_bytes() == kept[p.name] for p in out.glob("*/cells/*.json") if p.name in kept)
    assert all(r["latency_ms"]["p50"] > 0 and r["artifact"]["sha256"] and r["accuracy"]["cosine"] > 0.9
               for r in recs)
    # an unchanged sweep: nothing to do; --fresh: benchmarked again, every conversion from the cache
    again = js(edgeopt_cli(*args, env=env))
    assert again["conversions"] == 0 and again["benchmarks"] == 0
    assert again["sweep"]["id"] == res["sweep"]["id"]
    fresh = js(edgeopt_cli(*args, "--fresh", env=env))
    assert fresh["conversions"] == 0 and fresh["benchmarks"] == 8
    # all cells in the history under the sweep id
    import sqlite3
    with sqlite3.connect(env["EDGEOPT_HISTORY"]) as db:
        rows = db.execute("SELECT sweep_cell FROM results WHERE sweep_id = ?", (res["sweep"]["id"],)).fetchall()
    assert {r[0] for r in rows} == {r["id"] for r in recs}
    # a cell equals what a plain deploy gives for it (its own cache: converted again)
    cell = next(r for r in recs if r["model"] == "cnn" and r["recipe"] == "minmax")
    assert plain_deploy(models, cell, env, tmp_path / "cache2") == cell["artifact"]["sha256"]
    # the table
    p = edgeopt_cli(*args[:-1], env=env)
    assert p.returncode == 0 and "cnn" in p.stdout and "jetson-agx-orin" in p.stdout


def plain_deploy(models, cell, env, cache) -> str:
    """The sha256 of what ``edgeopt deploy`` makes for a minmax cell, converted in its own cache."""
    model, cal = models[cell["model"]]
    dep = js(edgeopt_cli("deploy", model, "--target", cell["target"], "--local", "--calib", cal, "--calibration",
                         "minmax", "--no-bench", "--json", env={**env, "EDGEOPT_CACHE": str(cache)}))
    return dep["manifest"]["artifacts"][0]["sha256"]
