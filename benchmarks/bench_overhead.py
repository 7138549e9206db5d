"""(b) p50 from `edgeopt bench --device` on a namespace device vs a plain in-process timing loop, same artifact;
(c) wall time of `bench` beyond the measured runs.

    sudo .venv/bin/python benchmarks/bench_overhead.py [--runs 300] [--rounds 3]

The artifact is a real INT8 TFLite CNN (TensorFlow-built, 96x96x3, ~ms per run). Both sides use one thread
and ai_edge_litert; rounds alternate edgeopt / in-process to spread any drift of the machine.
(c) is measured twice: the SDK call (bench_device) and the whole CLI process (`edgeopt bench ... --json`,
Python start-up and imports included), each minus the sum of the measured run times.
"""
import argparse
import json
import statistics
import subprocess
import time

import numpy as np
from _lab import EDGEOPT, new_lab
from zoo import make_tflite

from edgeopt.devices import inventory
from edgeopt.devices.bench import BenchOptions, bench_device


def in_process(path, runs, warmup=10):
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    d = it.get_input_details()[0]
    it.set_tensor(d["index"], np.random.default_rng(0).integers(-128, 127, d["shape"]).astype(d["dtype"]))
    for _ in range(warmup):
        it.invoke()
    s = []
    for _ in range(runs):
        t = time.perf_counter()
        it.invoke()
        s.append((time.perf_counter() - t) * 1e3)
    return float(np.percentile(s, 50))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    lab = new_lab()
    try:
        model = make_tflite(lab.base / "cnn96.int8.tflite", size=96, filters=32)
        ns = lab.netns()
        lab.start("pi-ns", netns=ns)
        inv = lab.inventory()
        dev = inventory.load(inv).get("pi-ns")
        opts = BenchOptions(runs=a.runs, min_seconds=0, threads=1, keep_samples=True, progress=False)
        bench_device(dev, str(model), opts)  # push once
        ours, theirs, sdk_over, cli_over = [], [], [], []
        for _ in range(a.rounds):
            r = bench_device(dev, str(model), opts)
            ours.append(r["latency_ms"]["p50"])
            sdk_over.append(r["timing"]["wall_s"] - sum(r["samples_ms"]) / 1e3)
            theirs.append(in_process(model, a.runs))
            t0 = time.perf_counter()
            p = subprocess.run([EDGEOPT, "bench", str(model), "--device", "pi-ns", "--inventory", str(inv), "--runs",
                                str(a.runs), "--min-seconds", "0", "--threads", "1", "--json"], capture_output=True,
                               text=True, check=True)
            wall = time.perf_counter() - t0
            cli_over.append(wall - sum(json.loads(p.stdout)["samples_ms"]) / 1e3)
        po, pt = statistics.median(ours), statistics.median(theirs)
        print(f"(b) p50 over {a.runs} runs, 1 thread, median of {a.rounds} rounds:")
        print(f"    edgeopt bench --device (ssh, netns) {po:.3f} ms  [{', '.join(f'{x:.3f}' for x in ours)}]")
        print(f"    in-process timing loop              {pt:.3f} ms  [{', '.join(f'{x:.3f}' for x in theirs)}]")
        print(f"    difference                          {(po / pt - 1) * 100:+.1f} %")
        print(f"(c) wall time beyond the measured runs (artifact already on the device), median of {a.rounds}:")
        print(f"    SDK bench_device                    {statistics.median(sdk_over):.2f} s  "
              f"[{', '.join(f'{x:.2f}' for x in sdk_over)}]")
        print(f"    CLI process `edgeopt bench --json`  {statistics.median(cli_over):.2f} s  "
              f"[{', '.join(f'{x:.2f}' for x in cli_over)}]")
        r = bench_device(dev, str(model), opts)
        print("    breakdown of one SDK call: " + ", ".join(f"{k} {v:.3f} s" for k,
                                                            v in r["timing"].items() if v is not None)
              + f", runtime init {r['init_ms'] / 1e3:.3f} s")
    finally:
        lab.stop()


if __name__ == "__main__":
    main()
