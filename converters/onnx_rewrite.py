"""Exact ONNX rewrites before onnx2tf: graph patterns it converts wrongly, replaced by equivalent ones it
converts right. Each rewrite keeps the model's function (same outputs for every valid input) and its I/O.

- One-hot embedding lookups, ``MatMul(Cast(Equal(ids[..., None], arange(K))), W)`` (how JAX and Keras exports
  spell an embedding: Google's Magika): onnx2tf can take the 3-D one-hot for channels-first and transpose the
  arange against it (on Magika its own check, ``-cotof``, fails at this Equal: "2048 and 257"). ``Gather(W, ids)``
  is the same
  lookup (for ids in ``[0, K)``; an id outside gives a zero row in the one-hot form and is not a valid input of
  such a model), and also skips a K-wide one-hot and a matrix product. (Magika's graph is still wrong further
  on, in a JAX Conv onnx2tf lays out wrongly: the pipeline's graph check says so and the conversion fails.)
- Node names TensorFlow refuses as scope names (``Softmax@0`` in Paddle exports), which made onnx2tf fail.
"""
from __future__ import annotations

import re

import numpy as np

__all__ = ["rewrite"]


def rewrite(model) -> tuple[object, list[str]]:
    """(the model with every rewrite applied, notes saying what was rewritten). ``model`` is changed in place."""
    notes = []
    n = _onehot_matmul_to_gather(model)
    if n:
        notes.append(f"{n} one-hot MatMul embedding lookup(s) as Gather")
    n = _scope_safe_node_names(model)
    if n:
        notes.append(f"{n} node name(s) made valid TensorFlow scope names")
    return model, notes


# TensorFlow's scope names (onnx2tf names its layers after the ONNX nodes); anything else is replaced by "_"
_SCOPE_FIRST = re.compile(r"[A-Za-z0-9.]")
_SCOPE_INVALID = re.compile(r"[^A-Za-z0-9_.\-/]")


def _scope_safe_node_names(model) -> int:
    """Node names TensorFlow refuses as scope names (Paddle exports name nodes ``Softmax@0``; onnx2tf then
    fails inside TensorFlow) renamed, unique, in place. Node names are labels: the function is unchanged."""
    names = {n.name for n in model.graph.node}
    changed = 0
    for k, node in enumerate(model.graph.node):
        if not node.name or (_SCOPE_FIRST.match(node.name) and not _SCOPE_INVALID.search(node.name)):
            continue
        base = _SCOPE_INVALID.sub("_", node.name)
        base = base if _SCOPE_FIRST.match(base) else "n" + base
        name = base
        while name in names:
            name = f"{base}_{k}"
            k += 1
        names.add(name)
        node.name = name
        changed += 1
    return changed


def _constants(graph) -> dict:
    from onnx import numpy_helper
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _onehot_matmul_to_gather(model) -> int:
    from onnx import TensorProto, helper, numpy_helper
    graph = model.graph
    constants = _constants(graph)
    readers: dict = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    floats = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE}
    done = 0
    for equal in [n for n in graph.node if n.op_type == "Equal"]:
        ids, values = equal.input
        if values not in constants:
            ids, values = values, ids
        arange = constants.get(values)
        if arange is None or arange.ndim < 1 or arange.dtype.kind not in "iu" or ids in constants:
            continue
        k = arange.shape[-1]
        if arange.size != k or not np.array_equal(arange.reshape(-1), np.arange(k)):
            continue  # not arange(K) laid along the last axis
        casts = readers.get(equal.output[0], [])
        if len(casts) != 1 or casts[0].op_type != "Cast" or equal.output[0] in outputs:
            continue
        cast = casts[0]
        to = next((a.i for a in cast.attribute if a.name == "to"), None)
        matmuls = readers.get(cast.output[0], [])
        if to not in floats or cast.output[0] in outputs or not matmuls or any(
                m.op_type != "MatMul" or m.input[0] != cast.output[0] or m.input[1] not in constants
                or constants[m.input[1]].shape[:1] != (k,) or constants[m.input[1]].ndim != 2 for m in matmuls):
            continue
        squeezed = f"{equal.output[0]}__ids"
        axes = f"{equal.output[0]}__axes"
        graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), axes))
        new = [helper.make_node("Squeeze", [ids, axes], [squeezed], name=f"{equal.name or 'onehot'}_squeeze")]
        for m in matmuls:  # Gather(W, ids) is the MatMul's output: same name, so every reader keeps its input
            new.append(helper.make_node("Gather", [m.input[1], squeezed], list(m.output),
                                        name=f"{m.name or 'onehot'}_gather", axis=0))
        drop = {id(equal), id(cast)} | {id(m) for m in matmuls}
        position = min(i for i, node in enumerate(graph.node) if id(node) in drop)
        kept = [node for node in graph.node if id(node) not in drop]
        del graph.node[:]
        graph.node.extend(kept[:position] + new + kept[position:])
        done += 1
    return done
