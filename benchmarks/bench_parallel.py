"""(d) 4 devices in parallel vs 1: wall time of one `bench` call.

    sudo .venv/bin/python benchmarks/bench_parallel.py [--min-seconds 2] [--devices 4]
    .venv/bin/python benchmarks/bench_parallel.py --inventory edgeopt.toml [--device a,b,c,d]

Each device is its own sshd in its own network namespace (or a real device of --inventory). Every benchmark
measures for --min-seconds (runs=1),
so the ideal ratio is 1.0; what is above it is edgeopt's per-device cost that does not overlap (the CPU of this
2-core machine is shared by the 4 devices' runners, which slows each run but not the wall time of the window).
"""
import argparse
import statistics
import time

from _lab import add_device_args, devices
from zoo import make_tflite

from edgeopt.devices.bench import BenchOptions, bench_devices


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--min-seconds", type=float, default=2.0)
    ap.add_argument("--devices", type=int, default=4, help="how many namespace devices (without --inventory)")
    ap.add_argument("--rounds", type=int, default=3)
    add_device_args(ap)
    a = ap.parse_args()
    with devices(a, a.devices) as (devs, work):
        model = make_tflite(work / "cnn.int8.tflite")
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


if __name__ == "__main__":
    main()
