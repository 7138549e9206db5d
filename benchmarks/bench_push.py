"""(a) Push of a ~20 MB artifact over a link limited with tc tbf (default 50 mbit), vs the link's floor and scp.

    sudo .venv/bin/python benchmarks/bench_push.py [--mbit 50] [--mb 20] [--repeat 3]

The device is a real sshd in a network namespace behind a veth pair shaped with `tc qdisc ... tbf` both ways.
floor = bytes * 8 / rate (payload only; TCP/IP and SSH framing add ~4-5 % on a 1500-byte MTU).
Each edgeopt push sends a fresh file (different bytes, so never skipped); scp sends the same kind of file.
"""
import argparse
import os
import statistics
import subprocess
import time

from _lab import new_lab

from edgeopt.devices import inventory
from edgeopt.devices.connection import connect
from edgeopt.devices.push import push


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mbit", type=float, default=50)
    ap.add_argument("--mb", type=float, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--burst", default="256kb")
    ap.add_argument("--latency", default="50ms", help="tbf queue: how long a packet may wait")
    a = ap.parse_args()
    lab = new_lab()
    try:
        ns = lab.netns(rate=f"{a.mbit:g}mbit", burst=a.burst, latency=a.latency)
        d = lab.start("pi-link", netns=ns)
        dev = inventory.load(lab.inventory()).get("pi-link")
        size = int(a.mb * 1024 * 1024)
        floor = size * 8 / (a.mbit * 1e6)
        src = lab.base / "artifact.tflite"
        ours, scps = [], []
        for i in range(a.repeat):
            src.write_bytes(os.urandom(size))
            with connect(dev) as c:
                t0 = time.perf_counter()
                r = push(c, str(src), c.expand(dev.workdir), progress=False)
                ours.append(time.perf_counter() - t0)
                assert r.bytes == size and not r.skipped
                again = push(c, str(src), c.expand(dev.workdir), progress=False)
            assert again.bytes == 0
            src.write_bytes(os.urandom(size))
            t0 = time.perf_counter()
            subprocess.run(["scp", "-q", "-i", str(lab.client_key), "-o", f"UserKnownHostsFile={lab.known_hosts}",
                            "-o", "BatchMode=yes", "-P", str(d.port), str(src), f"root@{d.host}:/tmp/scp-{i}.bin"],
                           check=True)
            scps.append(time.perf_counter() - t0)
            subprocess.run(["rm", "-f", f"/tmp/scp-{i}.bin"])
        m, s = statistics.median(ours), statistics.median(scps)
        print(f"(a) push {size / 1e6:.1f} MB over tbf {a.mbit:g} mbit, median of {a.repeat}:")
        print(f"    link floor           {floor:6.2f} s")
        print(f"    edgeopt push         {m:6.2f} s  = {m / floor:.3f} x floor ({(m / floor - 1) * 100:+.1f} %)"
              f"  [{', '.join(f'{x:.2f}' for x in ours)}]  (incl. remote sha256 verify + rename)")
        print(f"    scp (OpenSSH)        {s:6.2f} s  = {s / floor:.3f} x floor  [{', '.join(f'{x:.2f}' for x in scps)}]")
        print("    re-push same file    0 bytes sent")
    finally:
        lab.stop()


if __name__ == "__main__":
    main()
