"""Accuracy recovery: top-1 agreement with FP32 and 1-thread latency of the plain INT8 recipe, the artifact
recovered with ``--accuracy-target top1=0.98``, and FP32, for rpi (TFLite) and jetson (QDQ ONNX).

    .venv/bin/python benchmarks/bench_accuracy.py [--models lite0,fmnist] [--targets rpi,jetson]

Models: EfficientNet-Lite0 (real ImageNet weights; 200 calibration / 200 validation / 200 held-out test crops
and flips of real photos, three seeds) and the Fashion-MNIST CNN (trained here; 200 training images to
calibrate, 1000 test images to validate, the next 1000 held out). The recovery search selects on the
validation samples; "held-out" is the same artifact on samples it never saw.
Latency: edgeopt.runtime.bench on this host, 1 thread, p50. FP32 is the source ONNX in onnxruntime.
On x86, edgeopt.runtime runs QDQ ONNX with graph optimisation at BASIC (explicit Q/DQ, float math: fused
int8 kernels saturate here), so QDQ latency on this host says nothing about TensorRT on a Jetson. The
TFLite numbers are XNNPACK on x86, not a Pi's Cortex-A76: there, INT8 kernels gain more over float ones.
Results: benchmarks/out/accuracy.json and a Markdown table on stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

import zoo

HERE = os.path.dirname(os.path.abspath(__file__))


def _data(name, work):
    if name == "lite0":
        path = zoo.efficientnet_lite0(os.path.join(work, "efficientnet_lite0.onnx"))
        cal, val, test = [((zoo.sample_photos(200, seed=s) - 0.5) / 0.5).astype(np.float32) for s in (1, 2, 3)]
    else:
        path = zoo.train_torch_cnn_onnx(os.path.join(work, "fmnist_cnn.onnx"))
        xtr, _, xte, _ = zoo.fashion_mnist()
        cal, val, test = xtr[:200, None], xte[:1000, None], xte[1000:2000, None]
    np.save(os.path.join(work, f"{name}-calib.npy"), cal)
    np.save(os.path.join(work, f"{name}-val.npy"), val)
    np.save(os.path.join(work, f"{name}-test.npy"), test)
    return path, os.path.join(work, f"{name}-calib.npy"), os.path.join(work, f"{name}-val.npy")


def _p50(path, **kw):
    from edgeopt import runtime
    return round(runtime.bench(path, warmup=5, runs=30, min_seconds=1.0, threads=1, keep_samples=False,
                               **kw)["latency_ms"]["p50"], 3)


def _held_out(src, art_paths, test):
    """Top-1 agreement with FP32 and output SQNR of each artifact on the held-out samples."""
    import onnxruntime as ort

    from edgeopt import runtime
    x = np.load(test)
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    res = []
    for p in art_paths:
        (y,) = runtime.load(p).run(x)
        sq = 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / max(1e-30, np.sum((ref - y) ** 2)))
        res.append((round(float(np.mean(y.argmax(1) == ref.argmax(1))), 4), round(float(sq), 2)))
    return res


def run(name, target, work):
    import edgeopt
    from edgeopt.errors import GateError
    src, cal, val = _data(name, work) if not os.path.exists(os.path.join(work, f"{name}-val.npy")) else (
        os.path.join(work, "efficientnet_lite0.onnx" if name == "lite0" else "fmnist_cnn.onnx"),
        os.path.join(work, f"{name}-calib.npy"), os.path.join(work, f"{name}-val.npy"))
    out = os.path.join(work, f"{name}-{target}")
    t0 = time.perf_counter()
    try:
        m = edgeopt.convert(src, target=target, calib=cal, val=val, out=out, accuracy_target="top1=0.98")
        met = True
    except GateError as e:
        m, met = e.result, False
    secs = time.perf_counter() - t0
    rec = m["recovery"]
    plain_top1 = rec["steps"][0]["accuracy"]["logits"]["top1_agreement"]
    top1 = m["accuracy"]["outputs"]["logits"]["top1_agreement"]
    cost = rec.get("cost")
    art = os.path.join(out, m["artifacts"][0]["file"])
    if cost:
        plain_ms, ms = cost["latency_ms_plain"], cost["latency_ms"]
    else:
        plain_ms = ms = _p50(art)
    fp32_ms = _p50(src)
    # the plain artifact again (no target), for the held-out comparison
    plain_out = out + "-plain"
    try:
        edgeopt.convert(src, target=target, calib=cal, val=val, out=plain_out)
    except GateError:
        pass
    (h_plain, s_plain), (h_rec, s_rec) = _held_out(src, [plain_out, out], os.path.join(work, f"{name}-test.npy"))
    return {"model": name, "target": target, "met": met, "samples": m["accuracy"]["samples"],
            "plain_top1": plain_top1, "recovered_top1": top1, "fp32_top1": 1.0,
            "plain_sqnr_db": rec["steps"][0]["accuracy"]["logits"]["sqnr_db"],
            "recovered_sqnr_db": m["accuracy"]["outputs"]["logits"]["sqnr_db"],
            "held_out_plain_top1": h_plain, "held_out_recovered_top1": h_rec,
            "held_out_plain_sqnr_db": s_plain, "held_out_recovered_sqnr_db": s_rec,
            "recipe": rec["chosen"]["recipe"], "float_layers": len(rec["chosen"].get("float_layers") or []),
            "layers_total": (m.get("layers") or {}).get("total"),
            "plain_ms": plain_ms, "recovered_ms": ms, "fp32_ms": fp32_ms,
            "latency_ratio": round(ms / plain_ms, 3) if plain_ms else None,
            "bytes_plain": cost["bytes_plain"] if cost else m["artifacts"][0]["bytes"],
            "bytes": m["artifacts"][0]["bytes"], "convert_s": round(secs, 1),
            "steps": [{"recipe": s.get("recipe"), "float_layers": len(s.get("float_layers") or []),
                       "top1": (s.get("accuracy") or {}).get("logits", {}).get("top1_agreement")}
                      for s in rec["steps"]]}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="fmnist,lite0")
    ap.add_argument("--targets", default="rpi,jetson")
    ap.add_argument("--work", default=None)
    a = ap.parse_args(argv)
    work = a.work or tempfile.mkdtemp(prefix="edgeopt-bench-acc-")
    os.makedirs(work, exist_ok=True)
    rows = []
    for name in a.models.split(","):
        for tgt in a.targets.split(","):
            r = run(name, tgt, work)
            rows.append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "steps"}), flush=True)
    os.makedirs(os.path.join(HERE, "out"), exist_ok=True)
    with open(os.path.join(HERE, "out", "accuracy.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print("\n| model | target | top-1 plain | top-1 recovered | held-out plain | held-out recovered | recipe | "
          "float layers | ms FP32 | ms plain | ms recovered | x plain | size x |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        recipe = r["recipe"]["calibration_method"] + (" + bias corr." if r["recipe"].get("bias_correction") else "")
        print(f"| {r['model']} | {r['target']} | {r['plain_top1']:.3f} | {r['recovered_top1']:.3f}"
              f"{'' if r['met'] else ' (not met)'} | {r['held_out_plain_top1']:.3f} | "
              f"{r['held_out_recovered_top1']:.3f} | {recipe} | {r['float_layers']}"
              f"/{r['layers_total'] or '-'} | {r['fp32_ms']} | {r['plain_ms']} | {r['recovered_ms']} | "
              f"{r['latency_ratio']} | {round(r['bytes'] / r['bytes_plain'], 2)} |")


if __name__ == "__main__":
    main()
