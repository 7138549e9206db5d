"""edgeopt sweep: the sweep file checked strictly, the local pool (resume, zero-conversion rerun, history), and a
real two-node Ray cluster driving two sshd devices in network namespaces."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
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
    # nested past the parser's recursion (or not, with a higher limit): one error either way
    ("targets = " + "[" * 5000 + "]" * 5000, "s.toml"),
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


# --------------------------------------------------------------------------- --ray with or without ADDRESS

def _sweep_command():
    import typer

    from edgeopt import cli
    cli.register_commands()
    return typer.main.get_command(cli.app).commands["sweep"]


@pytest.mark.parametrize("args, sweep_file, ray", [
    (["--ray", "s.toml"], "s.toml", "local"),                       # alone, before the sweep file
    (["s.toml", "--ray"], "s.toml", "local"),                       # alone, last
    (["s.toml", "--ray", "--jobs", "2"], "s.toml", "local"),        # alone, before another option
    (["--ray", "sweep.cfg", "--fresh"], "sweep.cfg", "local"),      # the sweep file is there (any name)
    (["--ray", "10.0.0.1:6379", "s.toml"], "s.toml", "10.0.0.1:6379"),
    (["s.toml", "--ray", "ray://head:10001"], "s.toml", "ray://head:10001"),
    (["s.toml", "--ray=auto"], "s.toml", "auto"),
    (["s.toml"], "s.toml", None),
])
def test_ray_address_is_optional(tmp_path, monkeypatch, args, sweep_file, ray):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sweep.cfg").write_text("")
    ctx = _sweep_command().make_context("sweep", list(args))  # the parser only: nothing runs
    assert (ctx.params["sweep_file"], ctx.params["ray"]) == (sweep_file, ray)


def test_fill_in_stops_at_double_dash_and_takes_each_value_once():
    from edgeopt.cli.optional_value import fill_in
    always = lambda word: True  # noqa: E731
    assert fill_in(["s.toml", "--", "--ray"], "--ray", "auto", always) == ["s.toml", "--", "--ray"]
    assert fill_in(["--ray", "--ray"], "--ray", "auto", always) == ["--ray", "auto", "--ray", "auto"]
    assert fill_in(["--ray", "a", "--ray"], "--ray", "auto", always) == ["--ray", "a", "--ray", "auto"]
    assert fill_in(["--ray", "a"], "--ray", "auto", lambda word: False) == ["--ray", "auto", "a"]


def test_ray_alone_reaches_the_backend_as_local(tmp_path, monkeypatch):
    from edgeopt.errors import UsageError
    from edgeopt.sweep import cluster

    (tmp_path / "m.onnx").write_bytes(b"x")
    f = tmp_path / "s.toml"
    f.write_text('targets = ["rpi5"]\n[[models]]\npath = "m.onnx"\n')
    seen = []

    class FakeRay:  # what the command gives the backend; Ray is not started
        def __init__(self, address=None, num_cpus=1.0, **_):
            seen.append((address, num_cpus))
            raise UsageError(f"fake cluster at {address}")
    monkeypatch.setattr(cluster, "RayBackend", FakeRay)
    out = tmp_path / "out"
    for args, address in ((["--ray", f], "local"), ([f, "--ray"], "local"), ([f, "--ray", "h:6380", "--num-cpus", 2],
                                                                           "h:6380")):
        assert_one_error(edgeopt_cli("sweep", *args, "--out", out, in_process=True), f"fake cluster at {address}")
    assert seen == [("local", 1.0), ("local", 1.0), ("h:6380", 2.0)]
    assert_one_error(edgeopt_cli("sweep", f, "--ray", "", in_process=True), "--ray '': an address")
    assert len(seen) == 3 and not out.exists()


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
    # its report, from the history alone: every cell of the last run, and the front of its p90 and accuracy
    from edgeopt.results.pareto import pareto_front
    from edgeopt.sweep.stored import METRICS
    rep = js(edgeopt_cli("report", "--sweep", res["sweep"]["id"], "--out", tmp_path / "sweep.html", "--json",
                         env=env))
    assert [c["id"] for c in rep["cells"]] == [r["id"] for r in fresh["records"]]
    assert [c["latency_ms"]["p90"] for c in rep["cells"]] == [r["latency_ms"]["p90"] for r in fresh["records"]]
    assert [c["artifact"]["sha256"] for c in rep["cells"]] == [r["artifact"]["sha256"] for r in fresh["records"]]
    key = METRICS[rep["metric"]][0]
    front = pareto_front([(r["latency_ms"]["p90"], r["accuracy"].get(key)) for r in fresh["records"]])
    assert front and rep["front"] == [fresh["records"][i]["id"] for i in front]
    assert sorted(rep["results"]) == sorted(r[0] for r in _ids(env["EDGEOPT_HISTORY"], res["sweep"]["id"]))
    # a cell equals what a plain deploy gives for it (its own cache: converted again)
    cell = next(r for r in recs if r["model"] == "cnn" and r["recipe"] == "minmax")
    assert plain_deploy(models, cell, env, tmp_path / "cache2") == cell["artifact"]["sha256"]
    # the table
    p = edgeopt_cli(*args[:-1], env=env)
    assert p.returncode == 0 and "cnn" in p.stdout and "jetson-agx-orin" in p.stdout


def _ids(path, sweep_id) -> list:
    import sqlite3
    with sqlite3.connect(path) as db:
        return db.execute("SELECT id FROM results WHERE sweep_id = ?", (sweep_id,)).fetchall()


def plain_deploy(models, cell, env, cache) -> str:
    """The sha256 of what ``edgeopt deploy`` makes for a minmax cell, converted in its own cache."""
    model, cal = models[cell["model"]]
    dep = js(edgeopt_cli("deploy", model, "--target", cell["target"], "--local", "--calib", cal, "--calibration",
                         "minmax", "--no-bench", "--json", env={**env, "EDGEOPT_CACHE": str(cache)}))
    return dep["manifest"]["artifacts"][0]["sha256"]


# ------------------------------------------------------------------------------------------ Ray cluster

@pytest.fixture
def ray_cluster(tmp_path):
    """A Ray head and a second node, each `ray start --block` in its own session on loopback (1 CPU each);
    both process groups are ended after the test (never `ray stop`: other Ray users of this machine stay)."""
    pytest.importorskip("ray")
    from sshlab import free_port
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    port = free_port()
    # Ray's unix sockets live under the temp dir: a short path (a socket path is at most 107 bytes)
    temp = Path(f"/tmp/eo-ray-{os.getpid()}-{port}")
    # a private loopback cluster: no token (Ray 2.60's `ray start` and `ray.init` disagree on its default)
    ray_env = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    env = {**os.environ, **ray_env}
    common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--block", "--disable-usage-stats"]
    procs = []
    logs = []
    try:
        for argv in ([ray_bin, "start", "--head", f"--port={port}", "--include-dashboard=false",
                      f"--temp-dir={temp}", *common],
                     [ray_bin, "start", f"--address=127.0.0.1:{port}", *common]):
            log = open(tmp_path / f"ray-{len(procs)}.log", "wb")
            logs.append(log)
            procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                          start_new_session=True))
            if len(procs) == 1:
                _wait_for(lambda: _ray_nodes(port, env) >= 1, 120, tmp_path)
        _wait_for(lambda: _ray_nodes(port, env) >= 2, 120, tmp_path)
        yield {"address": f"127.0.0.1:{port}", "pids": [p.pid for p in procs], "env": ray_env}
    finally:
        started = _descendants([p.pid for p in procs])
        for p in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for pid in started:  # what `ray start` left behind (its processes, by id)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for log in logs:
            log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _ray_nodes(port, env) -> int:
    code = ("import ray; ray.init(address='127.0.0.1:%d', log_to_driver=False, configure_logging=False); "
            "print(sum(n['Alive'] for n in ray.nodes()))" % port)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    return int(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 and p.stdout.strip() else 0


def _wait_for(ok, seconds, tmp_path):
    deadline = time.time() + seconds
    while not ok():
        if time.time() > deadline:
            raise RuntimeError("the Ray cluster did not start: " + " | ".join(
                p.read_text(errors="replace")[-1500:] for p in sorted(tmp_path.glob("ray-*.log"))))
        time.sleep(1)


def _descendants(pids) -> set:
    """Every process under ``pids`` (from /proc): the cluster's own workers, not another Ray user's."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d.name))
    out, todo = set(), list(pids)
    while todo:
        p = todo.pop()
        for c in children.get(p, []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def _kill_one_conversion_worker(cluster, stop) -> list:
    """Kill the first worker seen running a conversion task (SIGKILL: no clean-up, as a crash)."""
    killed = []
    while not stop.is_set() and not killed:
        for pid in _descendants(cluster["pids"]):
            with contextlib.suppress(OSError):
                if b"convert_task" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    break
        time.sleep(0.05)
    return killed


@pytest.mark.ssh
@pytest.mark.slow  # a two-node Ray cluster and 8 + 8 conversions: about 2 minutes
def test_ray_sweep_on_two_nodes_and_two_namespace_devices(lab, models, ray_cluster, tmp_path):
    import threading
    for name, target in (("jet-a", TARGETS[0]), ("jet-b", TARGETS[1])):
        lab.start(name, netns=lab.netns(), target=target)
    inv = lab.inventory()
    env = {"EDGEOPT_CACHE": str(tmp_path / "cache"), "EDGEOPT_HISTORY": str(tmp_path / "h.sqlite"),
           **ray_cluster["env"]}
    f = write_sweep(tmp_path / "s.toml", models, ["jet-a", "jet-b"], inventory=inv,
                    bench="runs = 20\nmin_seconds = 0.5\nwarmup = 1\nthreads = 1\n")
    args = ["sweep", f, "--out", tmp_path / "out", "--ray", ray_cluster["address"], "--json"]
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=lambda: killed.extend(_kill_one_conversion_worker(ray_cluster, stop)))
    killer.start()
    try:
        res = js(edgeopt_cli(*args, env=env))
    finally:
        stop.set()
        killer.join()
    assert killed, "no conversion worker was seen to kill"
    recs = res["records"]
    # every cell, each on its matching device, complete although a worker died mid-sweep
    assert len(recs) == 8 and all(r["status"] == "ok" for r in recs), recs
    assert {(r["model"], r["target"], r["recipe"], r["device"]) for r in recs} == {
        (m, t, r, "jet-a" if t == TARGETS[0] else "jet-b") for m in models for t in TARGETS
        for r in ("minmax", "mse")}
    assert res["conversions"] == 8 and res["sweep"]["backend"] == "ray"
    # conversions ran on both nodes
    assert len({r["conversion"]["node"]["id"] for r in recs}) == 2, [r["conversion"]["node"] for r in recs]
    # one benchmark at a time on a board
    for dev in ("jet-a", "jet-b"):
        windows = sorted(r["run_window"] for r in recs if r["device"] == dev)
        assert len(windows) == 4 and all(a[1] <= b[0] for a, b in zip(windows, windows[1:])), windows
    # a rerun converts nothing (and has nothing left to do)
    again = js(edgeopt_cli(*args, env=env))
    assert again["conversions"] == 0 and again["benchmarks"] == 0
    fresh = js(edgeopt_cli(*args, "--fresh", env=env))
    assert fresh["conversions"] == 0 and fresh["benchmarks"] == 8
    # the same sweep on the local pool (its own cache: converted again) gives the same cells
    local = js(edgeopt_cli("sweep", f, "--out", tmp_path / "out-local", "--json",
                           env={**env, "EDGEOPT_CACHE": str(tmp_path / "cache-local")}))
    assert local["conversions"] == 8 and local["sweep"]["backend"] == "local"
    by = {r["id"]: r["artifact"]["sha256"] for r in recs}
    assert {r["id"]: r["artifact"]["sha256"] for r in local["records"]} == by
    # and a plain deploy gives the same artifact
    cell = next(r for r in recs if r["recipe"] == "minmax" and r["model"] == "tiny")
    assert plain_deploy(models, cell, env, tmp_path / "cache-deploy") == cell["artifact"]["sha256"]


@pytest.mark.slow  # a Ray instance started and stopped, 4 + 4 conversions: 1 to 2.5 minutes on 2 cores
def test_ray_alone_runs_the_sweep_on_a_local_ray_instance(models, tmp_path):
    """`--ray` with no address: a Ray instance started on this machine for the sweep (not the last cluster
    started here, which may be long gone), the same cells as the local pool, and nothing of Ray left after it."""
    env = {"EDGEOPT_LOCAL_WORKDIR": str(tmp_path / "wd"), "EDGEOPT_HISTORY": str(tmp_path / "h.sqlite"),
           "RAY_AUTH_MODE": "disabled"}
    f = write_sweep(tmp_path / "s.toml", {"tiny": models["tiny"]}, ["local"])
    import tempfile
    ray_dir = Path(tempfile.mkdtemp(prefix="eo-ray-", dir="/tmp"))   # short: Ray's socket paths must fit 107 bytes
    # a stale pointer to a cluster that does not exist: ray.init() without an address would try it
    (ray_dir / "ray").mkdir()
    (ray_dir / "ray" / "ray_current_cluster").write_text("192.0.2.250:6399")
    env_ray = {**env, "EDGEOPT_CACHE": str(tmp_path / "c-ray"), "RAY_TMPDIR": str(ray_dir)}
    res = js(edgeopt_cli("sweep", "--ray", f, "--out", tmp_path / "o1", "--json", env=env_ray))
    assert res["sweep"]["backend"] == "ray" and res["conversions"] == 4
    nodes = {r["conversion"]["node"]["id"] for r in res["records"]}
    assert len(nodes) == 1 and all(len(n) > 20 for n in nodes)   # Ray's node id, not "local"
    local = js(edgeopt_cli("sweep", f, "--out", tmp_path / "o2", "--json",
                           env={**env, "EDGEOPT_CACHE": str(tmp_path / "c-local")}))
    assert local["sweep"]["backend"] == "local"
    sha = lambda r: {x["id"]: x["artifact"]["sha256"] for x in r["records"]}  # noqa: E731
    assert sha(res) == sha(local) and len(sha(res)) == 4
    try:
        assert subprocess.run(["pgrep", "-f", f"raylet.*{ray_dir}"], capture_output=True).returncode == 1
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
