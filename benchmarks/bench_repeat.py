"""Repeatability: the same artifact benched N times (default 5) on one device, spread of p50 across the runs.

    sudo .venv/bin/python benchmarks/bench_repeat.py [--repeats 5] [--min-seconds 3] [--size 96 --filters 32]

Device: a namespace sshd device of the sshd lab (tests/sshlab.py), i.e. this machine behind SSH, or the first
device of --inventory (a real one; `--inventory edgeopt.toml --device pi-01`). Artifact: a
real INT8 TFLite CNN built with TensorFlow (96x96x3, two 32-filter convs; ~ms per run). Each repeat is a full
`bench_device` call (push cached, runner started afresh, warm-up by time, then >= runs and >= min-seconds),
one thread. Spread = (max p50 - min p50) / median p50; target < 3 %. Also printed: each run's p50 and its
bootstrap 95% CI, CV, the conditions verdict, and the other processes' share of the CPUs during the run
(on a shared machine that is what moves the numbers). Writes benchmarks/out/repeat.json.
"""
import argparse
import json
import statistics
from pathlib import Path

from _lab import add_device_args, devices
from zoo import make_tflite

from edgeopt.devices.bench import BenchOptions, bench_device


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--min-seconds", type=float, default=3.0)
    ap.add_argument("--warmup-seconds", type=float, default=1.0)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--filters", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    add_device_args(ap)
    a = ap.parse_args()
    with devices(a, 1) as (devs, work):
        dev = devs[0]
        model = make_tflite(work / f"cnn{a.size}.int8.tflite", size=a.size, filters=a.filters)
        opts = BenchOptions(runs=a.runs, min_seconds=a.min_seconds, warmup_seconds=a.warmup_seconds,
                            threads=a.threads, progress=False)
        bench_device(dev, str(model), BenchOptions(runs=1, min_seconds=0, progress=False))  # push once
        rows = []
        for i in range(a.repeats):
            r = bench_device(dev, str(model), opts)
            c = r["conditions"]
            rows.append({"p50": r["latency_ms"]["p50"], "ci95_p50": r["ci95"]["p50"], "p90": r["latency_ms"]["p90"],
                         "cv": r["latency_ms"]["cv"], "runs": r["runs"], "clean": r["clean"],
                         "other_busy": (c.get("cpu_during") or {}).get("other_busy"),
                         "load1": ((c.get("before") or {}).get("loadavg") or {}).get("1m"),
                         "reasons": c["reasons"]})
            x = rows[-1]
            print(f"run {i + 1}: p50 {x['p50']:.4f} ms  CI [{x['ci95_p50'][0]:.4f}, {x['ci95_p50'][1]:.4f}]  "
                  f"p90 {x['p90']:.4f}  cv {x['cv']:.3f}  runs {x['runs']}  clean {x['clean']}  "
                  f"others {x['other_busy'] * 100:.0f}% CPU  load1 {x['load1']}", flush=True)
        p50s = [x["p50"] for x in rows]
        med = statistics.median(p50s)
        spread = (max(p50s) - min(p50s)) / med
        print(f"p50 spread over {a.repeats} runs: {spread * 100:.2f} %  (max {max(p50s):.4f}, min {min(p50s):.4f}, "
              f"median {med:.4f} ms; target < 3 %)")
        out = Path(__file__).parent / "out"
        out.mkdir(exist_ok=True)
        (out / "repeat.json").write_text(json.dumps({"args": vars(a), "runs": rows, "spread": spread}, indent=2))


if __name__ == "__main__":
    main()
