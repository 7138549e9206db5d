"""Per-layer error of an INT8 QDQ ONNX model against the float graph it was made from (onnxruntime only).

Both models keep the float graph's node and tensor names (quantize_static inserts QuantizeLinear /
DequantizeLinear pairs around them), so every node output is made a graph output in both, both run on the
same samples, and each tensor's SQNR against the float model is accumulated. A node's *added* error is how
many dB it loses against the best of its inputs (its weights' and its output's quantization error, on top
of what reached it); nodes are ranked by that, which is the order in which keeping them in float helps most.
"""
from __future__ import annotations

import math

import numpy as np

from edgeopt.converters import onnx_io
from edgeopt.runtime import KEEP_FLOAT_OPTIMIZERS

__all__ = ["QUANTIZED_OPS", "WEIGHTED_OPS", "layer_errors"]

# nodes quantize_static quantizes (and nodes_to_exclude can keep in float)
QUANTIZED_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "Relu", "Clip", "AveragePool",
                 "GlobalAveragePool", "MaxPool", "Concat", "Sigmoid", "HardSigmoid", "Resize", "Softmax",
                 "LeakyRelu", "Where", "Split", "Pad", "ArgMax", "Squeeze", "Unsqueeze", "Reshape", "Transpose",
                 "Flatten", "Gather", "InstanceNormalization", "LayerNormalization", "Sub", "Div"}
WEIGHTED_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


def _session(model, outputs):
    # float nodes stay float, as edgeopt.runtime runs them
    return onnx_io.tensor_session(model, outputs, optimize=True, disabled_optimizers=list(KEEP_FLOAT_OPTIMIZERS))


def layer_errors(float_path: str, qdq_path_or_bytes, samples: list[dict]) -> list[dict]:
    """[{node, op, tensor, sqnr_db, added_db, quantized}] ranked worst first (largest added error).

    samples: feeds {input name: array} of the float model (batch 1, as the converter saw them).
    """
    import onnx
    fm = onnx.load(float_path)
    qm = onnx.load_from_string(qdq_path_or_bytes) if isinstance(qdq_path_or_bytes, bytes) else onnx.load(qdq_path_or_bytes)
    q_tensors = {o for n in qm.graph.node for o in n.output}
    inits = {i.name for i in fm.graph.initializer}
    nodes = [n for n in fm.graph.node if n.output and n.output[0] in q_tensors and n.op_type != "Constant"]
    names = [n.output[0] for n in nodes]
    fs, qs = _session(fm, names), _session(qm, names)
    f_out = [o.name for o in fs.get_outputs()]
    q_out = [o.name for o in qs.get_outputs()]
    sig = dict.fromkeys(names, 0.0)
    noise = dict.fromkeys(names, 0.0)
    for feed in samples:
        fv = dict(zip(f_out, fs.run(None, feed)))
        qv = dict(zip(q_out, qs.run(None, feed)))
        for n in names:
            a, b = fv.get(n), qv.get(n)
            if a is None or b is None or a.dtype.kind != "f" or a.shape != b.shape:
                continue
            a = a.astype(np.float64)
            sig[n] += float(np.sum(a * a))
            noise[n] += float(np.sum((a - b) ** 2))

    def sqnr(t):
        if t not in sig or sig[t] == 0:
            return None
        return 99.0 if noise[t] == 0 else min(99.0, 10 * math.log10(sig[t] / noise[t]))

    q_nodes = {n.name for n in qm.graph.node}
    dq_out = {o for n in qm.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    float_w = {n.name for n in qm.graph.node  # kept in float (nodes_to_exclude): weights not behind a DQ
               if n.op_type in WEIGHTED_OPS and len(n.input) > 1 and n.input[1] not in dq_out}
    rows = []
    for n in nodes:
        out = sqnr(n.output[0])
        if out is None:
            continue
        ins = [sqnr(i) for i in n.input if i and i not in inits]
        ins = [x for x in ins if x is not None]
        before = min(ins) if ins else 99.0  # a node that mixes branches is not blamed for the worse one
        rows.append({"node": n.name, "op": n.op_type, "tensor": n.output[0], "sqnr_db": round(out, 2),
                     "added_db": round(max(0.0, before - out), 3),
                     "quantized": n.op_type in QUANTIZED_OPS and n.name in q_nodes and n.name not in float_w})
    rows.sort(key=lambda r: (-r["added_db"], r["sqnr_db"]))
    return rows
