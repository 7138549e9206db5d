#!/usr/bin/env python3
"""fm-classify: a small device application running an edgeopt bundle with edgeopt.runtime.

Needs only Python 3, numpy and one runtime (ai-edge-litert / tflite_runtime for TFLite, onnxruntime for
ONNX; libedgetpu for a Coral). It does not need edgeopt itself: the bundle carries edgeopt/runtime.py.

    fm-classify image.pgm [more.pgm ...]      # 8-bit PGM (P5/P2) images, 28x28 for Fashion-MNIST
    fm-classify batch.npy                     # N images, float 0..1, any shape that fits the model
    fm-classify --bench 200                   # latency of the installed model on this device (JSON)

The bundle is found in $EDGEOPT_MODEL_DIR, else --model DIR, else /usr/share/edgeopt/fm (where the Yocto
recipe and the Buildroot package of this directory install it).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

DEFAULT_DIR = "/usr/share/edgeopt/fm"
LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def read_pgm(path: str):
    """8-bit binary (P5) or plain (P2) PGM -> float32 array (H, W) in 0..1; numpy only, no Pillow."""
    import numpy as np
    with open(path, "rb") as f:
        data = f.read()
    tokens, pos = [], 0
    while len(tokens) < 4:  # magic, width, height, maxval; comments start with '#'
        while data[pos:pos + 1].isspace():
            pos += 1
        if data[pos:pos + 1] == b"#":
            pos = data.index(b"\n", pos) + 1
            continue
        end = pos
        while end < len(data) and not data[end:end + 1].isspace():
            end += 1
        tokens.append(data[pos:end])
        pos = end
    magic, w, h, maxval = tokens[0], int(tokens[1]), int(tokens[2]), int(tokens[3])
    if magic == b"P5" and maxval < 256:
        img = np.frombuffer(data, dtype=np.uint8, count=w * h, offset=pos + 1)
    elif magic == b"P2":
        img = np.array(data[pos:].split()[: w * h], dtype=np.float32)
    else:
        raise ValueError(f"{path}: not an 8-bit PGM image (P5 or P2)")
    return img.reshape(h, w).astype(np.float32) / float(maxval)


def load_inputs(paths, shape):
    """Images or .npy files -> one float32 batch shaped like the model's input (source layout)."""
    import numpy as np
    per_sample = [d for d in shape[1:]]
    parts = []
    for p in paths:
        a = np.load(p).astype(np.float32) if p.endswith(".npy") else read_pgm(p)
        n = a.size // int(np.prod(per_sample))
        if n * int(np.prod(per_sample)) != a.size:
            raise SystemExit(f"error: {p}: {list(a.shape)} does not fit the model's input {list(shape)}")
        parts.append(a.reshape([n] + per_sample))
    return np.concatenate(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="fm-classify", description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", help="PGM images or .npy arrays")
    ap.add_argument("--model", default=os.environ.get("EDGEOPT_MODEL_DIR", DEFAULT_DIR), help="unpacked bundle")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: the target's)")
    ap.add_argument("--bench", type=int, metavar="RUNS", default=0, help="time RUNS invocations, print JSON")
    ap.add_argument("--json", action="store_true", help="one JSON object per input on stdout")
    args = ap.parse_args(argv)

    if not os.path.isfile(os.path.join(args.model, "edgeopt", "runtime.py")):
        print(f"error: {args.model}: not an unpacked edgeopt bundle (no edgeopt/runtime.py); "
              "set EDGEOPT_MODEL_DIR or --model", file=sys.stderr)
        return 2
    sys.path.insert(0, os.path.abspath(args.model))  # the bundle's own edgeopt/runtime.py
    import edgeopt.runtime as rt

    try:
        model = rt.load(args.model, threads=args.threads)
    except rt.RuntimeMissing as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except (OSError, ValueError) as e:
        print(f"error: {args.model}: {e}", file=sys.stderr)
        return 2

    if args.bench:
        res = rt.bench(model.path, warmup=10, runs=args.bench, min_seconds=0, threads=args.threads,
                       keep_samples=False)
        print(json.dumps({"model": os.path.basename(model.path), "runtime": res["runtime"],
                          "threads": res["config"]["threads"], "latency_ms": res["latency_ms"]}))
        return 0
    if not args.files:
        ap.error("give image files, or --bench RUNS")

    x = load_inputs(args.files, model.inputs[0].source_shape)
    try:
        (scores,) = model.run(x)  # float32 logits, batch run sample by sample
    except rt.InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for i, s in enumerate(scores):
        k = int(s.argmax())
        label = LABELS[k] if len(s) == len(LABELS) else str(k)
        if args.json:
            print(json.dumps({"index": i, "class": k, "label": label, "score": float(s[k])}))
        else:
            print(f"{i}\t{k}\t{label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
