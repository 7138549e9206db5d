"""INT8 of a SavedModel source on the TFLite route (rpi), with and without its depthwise inputs equalized.

A Keras or SavedModel model has no ONNX graph for edgeopt to rewrite before the converter: the TFLite route
equalizes the depthwise inputs in its calibrated float TFLite model instead (edgeopt.converters.tf_tflite
.equalize_depthwise). This measures what that is worth on a real MobileNet, side by side in one run: the
bench_ptq MobileNetV2 (torchvision's ImageNet weights) made a SavedModel by onnx2tf, converted by edgeopt for
rpi with the default recipe, once as it is and once with every channel scale held at 1 (the floor raised to 1:
nothing equalized), and, for reference, the same ONNX model converted from ONNX (equalized before onnx2tf).

    .venv/bin/python benchmarks/bench_savedmodel.py [--calib 100] [--held-out 200] [--work DIR]

Data: bench_ptq's crops (calibration seed 1; held-out seed 2, used by nothing else), NHWC for the SavedModel.
Each tool gets the calibration crops as --val too (as bench_ptq's plain rows). Columns: top-1 agreement with
FP32 (the ONNX model in onnxruntime) on the held-out crops, the same where FP32's top-2 margin >= 0.1, output
SQNR, blocks equalized, conversion wall time. Needs the wheel bench_ptq names for MobileNetV2.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

import bench_ptq

HERE = os.path.dirname(os.path.abspath(__file__))


def _savedmodel(src: str, out: str) -> str:
    """The ONNX model as a SavedModel (onnx2tf, the converter edgeopt's own ONNX route runs), made once."""
    if not os.path.exists(os.path.join(out, "saved_model.pb")):
        onnx2tf = os.path.join(os.path.dirname(sys.executable), "onnx2tf")
        subprocess.run([onnx2tf, "-i", src, "-o", out], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    return out


def _convert(src, calib, out, floor=None):
    """edgeopt for rpi with the default recipe; ``floor`` replaces DEPTHWISE_EQUALIZATION_FLOOR (1.0: off)."""
    import edgeopt
    from edgeopt.conversion import defaults, pipeline
    keep = defaults.DEPTHWISE_EQUALIZATION_FLOOR, pipeline.DEPTHWISE_EQUALIZATION_FLOOR
    try:
        if floor is not None:
            defaults.DEPTHWISE_EQUALIZATION_FLOOR = pipeline.DEPTHWISE_EQUALIZATION_FLOOR = floor
        t0 = time.perf_counter()
        manifest = edgeopt.convert(src, target="rpi", calib=calib, val=calib, out=out)
        secs = time.perf_counter() - t0
    finally:
        defaults.DEPTHWISE_EQUALIZATION_FLOOR, pipeline.DEPTHWISE_EQUALIZATION_FLOOR = keep
    art = os.path.join(out, next(a["file"] for a in manifest["artifacts"] if a["file"].endswith(".tflite")))
    return art, secs, (manifest.get("calibration") or {}).get("equalization") or {}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calib", type=int, default=100)
    ap.add_argument("--held-out", type=int, default=200)
    ap.add_argument("--work", default=os.path.join(HERE, "out", "savedmodel-work"))
    a = ap.parse_args(argv)
    os.makedirs(a.work, exist_ok=True)
    src, paths = bench_ptq._prepare("mobilenet_v2", a.work, a.calib, a.held_out, 0)
    sm = _savedmodel(src, os.path.join(a.work, "mobilenet_v2_savedmodel"))
    nhwc = {}
    for part in ("calib", "held"):
        nhwc[part] = paths[part].replace(".npy", ".nhwc.npy")
        if not os.path.exists(nhwc[part]):
            np.save(nhwc[part], np.load(paths[part]).transpose(0, 2, 3, 1).copy())
    held = np.load(paths["held"])
    ref = bench_ptq._ort(src, held)
    rows = []
    for tool, model, calib, floor, x in (
            ("edgeopt, SavedModel source (equalized)", sm, nhwc["calib"], None, nhwc["held"]),
            ("edgeopt, SavedModel source, nothing equalized", sm, nhwc["calib"], 1.0, nhwc["held"]),
            ("edgeopt, ONNX source (equalized before onnx2tf)", src, paths["calib"], None, paths["held"])):
        out = os.path.join(a.work, tool.split(",")[1].strip().split(" ")[0].lower() + ("-off" if floor else ""))
        art, secs, eq = _convert(model, calib, out, floor)
        y, info = bench_ptq._runtime(art, np.load(x))
        rows.append({"tool": tool, "artifact": art, "convert_s": round(secs, 1), "runtime": info,
                     "equalized": f"{eq.get('pairs', 0)} of {eq.get('of', 0)}", **bench_ptq._scores(ref, y)})
        print(json.dumps(rows[-1]), flush=True)
    print("| tool | top-1 held-out | top-1 margin>=0.1 (crops) | SQNR dB | blocks equalized | convert s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tool']} | {r['top1']:.3f} | {r['top1_confident']:.3f} ({r['confident_crops']}) | "
              f"{r['sqnr_db']:.2f} | {r['equalized']} | {r['convert_s']:.0f} |")
    with open(os.path.join(HERE, "out", "savedmodel.json"), "w") as f:
        json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
