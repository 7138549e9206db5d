"""Wall time of `edgeopt sweep` on this machine: the local process pool vs a loopback Ray cluster (a head and a
second node, 1 CPU each), and what Ray adds per task.

    python benchmarks/bench_sweep.py [--models 2] [--recipes 2]

Each backend converts the same cells from an empty cache, without devices (conversions and checks only), then
again with every cell cached. Ray's per-task overhead is measured apart: the round trip of an empty task on the
same cluster. Needs `pip install 'edgeopt[cluster]'`. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EDGEOPT = os.path.join(os.path.dirname(sys.executable), "edgeopt")
TARGETS = ["jetson-orin-nano", "jetson-agx-orin"]


def make_sweep(work: Path, n_models: int, n_recipes: int) -> Path:
    """Small ONNX CNNs (the tests' model maker) with random calibration data, and their sweep file."""
    import numpy as np
    sys.path.insert(0, str(ROOT / "tests"))
    from edgeopt_testkit.models import small_cnn_onnx

    lines = ['name = "bench"', f"targets = {json.dumps(TARGETS)}"]
    rng = np.random.default_rng(0)
    for i in range(n_models):
        model = small_cnn_onnx(work / f"m{i}.onnx", size=16 + 8 * i, channels=8)
        np.save(work / f"cal{i}.npy", rng.standard_normal((24, 3, 16 + 8 * i, 16 + 8 * i)).astype(np.float32))
        lines += ["[[models]]", f'path = "{Path(model).name}"', f'calib = "cal{i}.npy"']
    for method in ["minmax", "mse", "mean_minmax", "percentile"][:n_recipes]:
        lines += ["[[recipes]]", f'name = "{method}"', f'calibration = "{method}"']
    path = work / "sweep.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def timed_sweep(sweep: Path, out: Path, env: dict, *extra) -> tuple[float, dict]:
    t0 = time.perf_counter()
    p = subprocess.run([EDGEOPT, "sweep", str(sweep), "--out", str(out), "--json", *extra], capture_output=True,
                       text=True, env=env)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"sweep failed: {p.stderr[-2000:]}")
    return wall, json.loads(p.stdout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=2)
    ap.add_argument("--recipes", type=int, default=2)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgeopt-bench-sweep-"))
    sweep = make_sweep(work, args.models, args.recipes)
    ray_env = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    res = {"cells": args.models * len(TARGETS) * args.recipes, "cpus": os.cpu_count()}
    env = {**os.environ, "EDGEOPT_HISTORY": "off", **ray_env}
    for name, extra in (("local", ()),):
        env["EDGEOPT_CACHE"] = str(work / f"cache-{name}")
        res[f"{name}_cold_s"], _ = timed_sweep(sweep, work / f"out-{name}", env, *extra)
        res[f"{name}_cached_s"], _ = timed_sweep(sweep, work / f"out-{name}-2", env, *extra)

    port = free_port()
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--block", "--disable-usage-stats"]
    procs = []
    try:
        for argv in ([ray_bin, "start", "--head", f"--port={port}", "--include-dashboard=false", *common],
                     [ray_bin, "start", f"--address=127.0.0.1:{port}", *common]):
            procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          env={**os.environ, **ray_env}, start_new_session=True))
            time.sleep(20)
        addr = f"127.0.0.1:{port}"
        env["EDGEOPT_CACHE"] = str(work / "cache-ray")
        res["ray_cold_s"], _ = timed_sweep(sweep, work / "out-ray", env, "--ray", addr)
        res["ray_cached_s"], _ = timed_sweep(sweep, work / "out-ray-2", env, "--ray", addr)
        # Ray's own cost per task: an empty task's round trip, after the workers are warm
        code = ("import ray, time; ray.init(address=%r, log_to_driver=False)\n"
                "f = ray.remote(num_cpus=1)(lambda: None); ray.get([f.remote() for _ in range(20)])\n"
                "t = time.perf_counter(); n = 200\n"
                "for _ in range(n): ray.get(f.remote())\n"
                "print((time.perf_counter() - t) / n * 1000)" % addr)
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        res["ray_task_roundtrip_ms"] = round(float(p.stdout.strip().splitlines()[-1]), 3) if p.returncode == 0 \
            else None
    finally:
        for p in reversed(procs):
            os.killpg(p.pid, signal.SIGTERM)
            p.wait()
    res["ray_overhead_per_cell_s"] = round((res["ray_cold_s"] - res["local_cold_s"]) / res["cells"], 3)
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
