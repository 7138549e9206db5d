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

__all__ = ["layer_errors"]

def _session(model, outputs):
    # float nodes stay float, as edgeopt.runtime runs them
    return onnx_io.tensor_session(model, outputs, optimize=True, disabled_optimizers=list(KEEP_FLOAT_OPTIMIZERS))


def layer_errors(float_path: str, qdq_path_or_bytes, samples: list[dict]) -> list[dict]:
    """[{node, op, tensor, sqnr_db, added_db, quantized}] ranked worst first (largest added error).

    samples: feeds {input name: array} of the float model (batch 1, as the converter saw them).
    Every float output of a node is measured (a Split's second output as much as its first); a node's
    ``tensor``/``sqnr_db`` are those of its worst output. ``quantized``: the node reads an input through a
    DequantizeLinear in the QDQ model (INT8 weights or activations), so keeping it in float changes something.
    """
    import onnx
    fm = onnx.load(float_path)
    qm = onnx.load_from_string(qdq_path_or_bytes) if isinstance(qdq_path_or_bytes, bytes) else onnx.load(qdq_path_or_bytes)
    q_tensors = {o for n in qm.graph.node for o in n.output}
    constants = {i.name for i in fm.graph.initializer} | {
        o for n in fm.graph.node if n.op_type == "Constant" for o in n.output}
    feeds = {i.name for i in fm.graph.input} - constants  # the same arrays go into both models
    nodes = [n for n in fm.graph.node if n.op_type != "Constant" and any(o in q_tensors for o in n.output)]
    names = [o for n in nodes for o in n.output if o in q_tensors]
    fs, qs = _session(fm, names), _session(qm, names)
    f_out = [o.name for o in fs.get_outputs()]
    q_out = [o.name for o in qs.get_outputs()]
    sig = dict.fromkeys(names, 0.0)
    noise = dict.fromkeys(names, 0.0)
    exact = set()  # tensors that are not float (shapes, indices): no quantization error to pass on
    for feed in samples:
        fv = dict(zip(f_out, fs.run(None, feed)))
        qv = dict(zip(q_out, qs.run(None, feed)))
        for n in names:
            a, b = fv.get(n), qv.get(n)
            if a is not None and a.dtype.kind != "f":
                exact.add(n)
            if a is None or b is None or a.dtype.kind != "f" or a.shape != b.shape:
                continue
            a = a.astype(np.float64)
            sig[n] += float(np.sum(a * a))
            noise[n] += float(np.sum((a - b) ** 2))

    def sqnr(t):
        if t in feeds:
            return 99.0
        if t not in sig or sig[t] == 0:
            return None
        return 99.0 if noise[t] == 0 else min(99.0, 10 * math.log10(sig[t] / noise[t]))

    dq_out = {o for n in qm.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    reads_dq = {n.name for n in qm.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
                and any(i in dq_out for i in n.input)}
    # a weighted node already kept in float (nodes_to_exclude): its weights are not behind a DequantizeLinear
    reads_dq -= {n.name for n in qm.graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")
                 and len(n.input) > 1 and n.input[1] not in dq_out}
    rows = []
    for n in nodes:
        outs = [(sqnr(o), o) for o in n.output if o]
        outs = [x for x in outs if x[0] is not None]
        if not outs:
            continue
        out, tensor = min(outs)
        ins = [i for i in n.input if i and i not in constants and i not in exact]
        known = [sqnr(i) for i in ins]
        if any(x is None for x in known):
            added = 0.0  # an input not measured in both models: the loss cannot be put on this node
        else:  # a node that mixes branches is not blamed for the worse one
            added = max(0.0, (min(known) if known else 99.0) - out)
        rows.append({"node": n.name, "op": n.op_type, "tensor": tensor, "sqnr_db": round(out, 2),
                     "added_db": round(added, 3), "quantized": n.name in reads_dq})
    rows.sort(key=lambda r: (-r["added_db"], r["sqnr_db"]))
    return rows
