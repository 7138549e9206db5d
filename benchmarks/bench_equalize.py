"""Cross-layer equalization (edgeopt.converters.onnx_equalize) measured: plain INT8 of EfficientNet-Lite0
with and without CLE applied to the source ONNX, for jetson (QDQ) and rpi (TFLite).

    .venv/bin/python benchmarks/bench_equalize.py [--targets jetson,rpi] [--variants base,skip,exact]
                                                  [--method minmax] [--per-tensor] [--work /tmp/ptq-cache]

Calibration: 100 photo crops (seed 1); the pipeline's check: 50 crops (seed 5); held out: 200 crops
(seed 7). Every artifact is compared with the ORIGINAL FP32 model's outputs on the held-out crops (top-1
agreement, SQNR), so a CLE variant that changed the float function would show here. One JSON line per run.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time

import numpy as np

import zoo


def _crops(work, name, n, seed):
    path = os.path.join(work, f"{name}.npy")
    if not os.path.exists(path):
        np.save(path, ((zoo.sample_photos(n, seed=seed) - 0.5) / 0.5).astype(np.float32))
    return path


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", default="jetson,rpi")
    ap.add_argument("--variants", default="base,skip,exact")
    ap.add_argument("--method", default="minmax")
    ap.add_argument("--per-tensor", action="store_true")
    ap.add_argument("--work", default="/tmp/ptq-cache")
    a = ap.parse_args(argv)
    import onnxruntime as ort

    import edgeopt
    from edgeopt import runtime
    from edgeopt.converters import onnx_equalize
    from edgeopt.errors import GateError
    os.makedirs(a.work, exist_ok=True)
    src = os.path.join(a.work, "lite0.onnx")
    if not os.path.exists(src):
        zoo.efficientnet_lite0(src)
    cal = _crops(a.work, "cle-cal100-s1", 100, 1)
    val = _crops(a.work, "cle-val50-s5", 50, 5)
    x = np.load(_crops(a.work, "cle-test200-s7", 200, 7))
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    ref = np.concatenate([sess.run(None, {"image": x[i:i + 20]})[0] for i in range(0, len(x), 20)])
    for variant in a.variants.split(","):
        model, report = src, None
        if variant != "base":
            model = os.path.join(a.work, f"lite0.cle-{variant}.onnx")
            report = onnx_equalize.equalize_file(src, model, clip=variant)
        for target in a.targets.split(","):
            out = os.path.join(a.work, f"cle-out-{variant}-{target}-{a.method}{'-pt' if a.per_tensor else ''}")
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            try:
                edgeopt.convert(model, target=target, calib=cal, val=val, out=out, calibration_method=a.method,
                                per_channel=not a.per_tensor)
            except GateError:
                pass
            (y,) = runtime.load(out).run(x)
            sqnr = 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ref - y) ** 2))
            print(json.dumps({"variant": variant, "target": target, "method": a.method,
                              "per_channel": not a.per_tensor,
                              "held_out_top1": round(float(np.mean(y.argmax(1) == ref.argmax(1))), 4),
                              "held_out_sqnr_db": round(float(sqnr), 2),
                              "convert_s": round(time.perf_counter() - t0, 1),
                              "cle": report and {k: report[k] for k in ("pairs", "depthwise_pairs",
                                                                        "clips_rewritten")}}), flush=True)


if __name__ == "__main__":
    main()
