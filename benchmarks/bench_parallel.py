"""(d) 4 devices in parallel vs 1: wall time of one `bench` call.

    sudo .venv/bin/python benchmarks/bench_parallel.py [--min-seconds 2] [--devices 4]

Each device is its own sshd in its own network namespace. Every benchmark measures for --min-seconds (runs=1),
so the ideal ratio is 1.0; what is above it is edgeopt's per-device cost that does not overlap (the CPU of this
2-core machine is shared by the 4 devices' runners, which slows each run but not the wall time of the window).
"""
import argparse
import statistics
import time

from _lab import make_tflite, new_lab

from edgeopt.devices import inventory as I
from edgeopt.devices.bench import BenchOptions, bench_devices


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--min-seconds", type=float, default=2.0)
    ap.add_argument("--devices", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    lab = new_lab()
    try:
        model = make_tflite(lab.base / "cnn.int8.tflite")
        for i in range(a.devices):
            lab.start(f"pi-{i}", netns=lab.netns())
        inv = I.load(lab.inventory())
        devs = list(inv.devices.values())
        opts = BenchOptions(runs=1, min_seconds=a.min_seconds, threads=1, keep_samples=False, progress=False)
        bench_devices(devs, str(model), BenchOptions(runs=1, min_seconds=0, progress=False))  # push once
        one, many = [], []
        for _ in range(a.rounds):
            t0 = time.perf_counter()
            r1 = bench_devices(devs[:1], str(model), opts)
            one.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            rn = bench_devices(devs, str(model), opts)
            many.append(time.perf_counter() - t0)
            assert all("error" not in r for r in r1 + rn), r1 + rn
        o, m = statistics.median(one), statistics.median(many)
        print(f"(d) bench wall time, --min-seconds {a.min_seconds:g}, median of {a.rounds}:")
        print(f"    1 device                 {o:.2f} s  [{', '.join(f'{x:.2f}' for x in one)}]")
        print(f"    {a.devices} devices in parallel    {m:.2f} s  [{', '.join(f'{x:.2f}' for x in many)}]")
        print(f"    ratio                    {m / o:.2f} x")
    finally:
        lab.stop()


if __name__ == "__main__":
    main()
