"""Edge TPU pre-flight: which ops of a full-integer TFLite model the Edge TPU compiler can map, and why not.

Rules from coral.ai/docs/edgetpu/models-intro ("Model requirements", "Supported operations"):
- tensors are 8-bit quantized (int8/uint8; int32 only for biases), sizes constant at compile time;
- tensors are 1-, 2- or 3-dimensional, or only the 3 innermost dimensions are larger than 1;
- the compiler makes one TPU partition: the first op it cannot map, and every op after it, run on the CPU.
If ``edgetpu_compiler`` is on PATH it is run and its console log parsed into the manifest.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import numpy as np

from edgeopt.runtime import import_tflite_interpreter

__all__ = ["SUPPORTED", "read_ops", "why_not", "preflight", "parse_compiler_log", "compile_if_available"]

# TFLite builtin op names the Edge TPU supports (coral.ai/docs/edgetpu/models-intro#supported-operations),
# with the documented limits that the pre-flight checks.
SUPPORTED = {
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "EXPAND_DIMS", "FULLY_CONNECTED",
    "L2_NORMALIZATION", "LOGISTIC", "LSTM", "UNIDIRECTIONAL_SEQUENCE_LSTM", "MAXIMUM", "MAX_POOL_2D", "MEAN",
    "MINIMUM", "MUL", "PACK", "PAD", "PRELU", "QUANTIZE", "REDUCE_MAX", "REDUCE_MIN", "RELU", "RELU6",
    "RELU_N1_TO_1", "RESHAPE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "RSQRT", "SLICE", "SOFTMAX",
    "SPACE_TO_DEPTH", "SPLIT", "SQUEEZE", "STRIDED_SLICE", "SUB", "SUM", "SQUARED_DIFFERENCE", "TANH",
    "TRANSPOSE", "TRANSPOSE_CONV", "HARD_SWISH",
}
NO_FUSED_ACTIVATION = {"AVERAGE_POOL_2D", "MAX_POOL_2D", "CONCATENATION"}
_Q = (np.int8, np.uint8)


def read_ops(path: str) -> list[dict]:
    """Ops of a TFLite file in execution order: name, tensor facts, whether any tensor is float."""
    Interpreter = import_tflite_interpreter()[0]
    interp = Interpreter(model_path=path)
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    details = interp._get_ops_details()
    # activations: graph inputs and op outputs; everything else is a constant (weights, biases)
    act = {d["index"] for d in interp.get_input_details()} | {i for op in details for i in op["outputs"]}
    ops = []
    for op in details:
        idx = [i for i in list(op["inputs"]) + list(op["outputs"]) if i >= 0 and i in tensors]
        ts = [tensors[i] for i in idx]
        ops.append({
            "index": int(op["index"]), "op": op["op_name"],
            "dtypes": sorted({np.dtype(t["dtype"]).name for t in ts}),
            "float": any(np.dtype(t["dtype"]).kind == "f" for t in ts),
            "shapes": [list(map(int, tensors[i]["shape"])) for i in idx if i in act],
            "dynamic": any(-1 in list(t.get("shape_signature", t["shape"])) for t in ts),
        })
    return ops


def why_not(op: dict) -> str | None:
    """Why the Edge TPU cannot map this op, or None if it can."""
    name = op["op"]
    if name not in SUPPORTED:
        return "operation not supported by the Edge TPU"
    if op["float"]:
        return "operation works on float data (the Edge TPU needs 8-bit quantized tensors)"
    bad = [d for d in op["dtypes"] if d not in ("int8", "uint8", "int32")]
    if bad:
        return f"tensor data type {bad[0]} is not supported"
    if op["dynamic"]:
        return "tensor sizes are not constant (dynamic shape)"
    for s in op["shapes"]:
        if len(s) > 3 and any(d > 1 for d in s[:-3]):
            return f"tensor {s} has more than 3 dimensions larger than 1"
    return None


def preflight(path: str) -> dict:
    """Every op with whether the Edge TPU can map it and why not, and where the single TPU partition ends."""
    ops = read_ops(path)
    rows, ended, first = [], False, None
    for op in ops:
        reason = why_not(op)
        if reason is None and not ended:
            rows.append({"index": op["index"], "op": op["op"], "edgetpu": True, "reason": None})
            continue
        if not ended:
            ended, first = True, f"{op['op']} (op {op['index']})"
        rows.append({"index": op["index"], "op": op["op"], "edgetpu": False,
                     "reason": reason or "after the first unmappable op: the Edge TPU has one partition"})
    n_tpu = sum(r["edgetpu"] for r in rows)
    return {"ops": rows,
            "summary": {"ops": len(rows), "tpu_ops": n_tpu, "cpu_ops": len(rows) - n_tpu,
                        "partition_end": first, "first_unmapped": first},
            "rules": "coral.ai/docs/edgetpu/models-intro"}


_NUM = {
    "version": re.compile(r"Edge TPU Compiler version (\S+)"),
    "subgraphs": re.compile(r"Number of Edge TPU subgraphs: (\d+)"),
    "total_ops": re.compile(r"Total number of operations: (\d+)"),
    "tpu_ops": re.compile(r"Number of operations that will run on Edge TPU: (\d+)"),
    "cpu_ops": re.compile(r"Number of operations that will run on CPU: (\d+)"),
    "on_chip": re.compile(r"On-chip memory used for caching model parameters: (\S+)"),
    "off_chip": re.compile(r"Off-chip memory used for streaming uncached model parameters: (\S+)"),
    "output_model": re.compile(r"Output model: (\S+)"),
}
_ROW = re.compile(r"^([A-Z][A-Z0-9_]+)\s+(\d+)\s+(\S.*?)\s*$")


def parse_compiler_log(text: str) -> dict:
    """Parse edgetpu_compiler's console output: counts, memory, and the operator table."""
    res: dict = {}
    for key, rx in _NUM.items():
        m = rx.search(text)
        if m:
            v = m.group(1)
            res[key] = int(v) if v.isdigit() else v
    rows = []
    in_table = False
    for line in text.splitlines():
        if line.startswith("Operator") and "Status" in line:
            in_table = True
            continue
        if in_table:
            m = _ROW.match(line.strip())
            if m:
                rows.append({"op": m.group(1), "count": int(m.group(2)), "status": m.group(3),
                             "edgetpu": m.group(3) == "Mapped to Edge TPU"})
    res["operators"] = rows
    if "tpu_ops" not in res and "total_ops" in res and rows:
        mapped = sum(r["count"] for r in rows if r["edgetpu"])
        if mapped == res["total_ops"] or all(r["edgetpu"] for r in rows):
            res["tpu_ops"], res["cpu_ops"] = res["total_ops"], 0
    res["compiled"] = "compiled successfully" in text
    return res


def compile_if_available(path: str, outdir: str, timeout: int = 600) -> dict:
    """Run edgetpu_compiler when it is on PATH; otherwise say so (the conversion carries on)."""
    exe = shutil.which("edgetpu_compiler")
    if not exe:
        return {"compiler": {"available": False,
                             "note": "edgetpu_compiler not on PATH: Edge TPU compilation skipped (pre-flight report "
                                     "only); install it from the Coral apt repository on an x86-64 Linux host"}}
    try:
        proc = subprocess.run([exe, "-s", "-o", outdir, path], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"compiler": {"available": True, "ok": False, "note": f"edgetpu_compiler failed: {e}"}}
    log = parse_compiler_log(proc.stdout + proc.stderr)
    stem = os.path.splitext(os.path.basename(path))[0]
    out = os.path.join(outdir, f"{stem}_edgetpu.tflite")
    ok = proc.returncode == 0 and os.path.exists(out)
    for extra in (os.path.join(outdir, f"{stem}_edgetpu.log"),):
        if os.path.exists(extra):
            os.remove(extra)  # its facts are in the manifest; keep the output dir to artifacts + manifest
    res = {"compiler": dict(log, available=True, ok=ok, returncode=proc.returncode)}
    if ok:
        res.update(file=os.path.basename(out), path=out)
    return res
