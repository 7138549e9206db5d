"""Exact ONNX rewrites before onnx2tf: graph patterns it converts wrongly, replaced by equivalent ones it
converts right. Each rewrite keeps the model's function (same outputs for every valid input) and its I/O.

- One-hot embedding lookups, ``MatMul(Cast(Equal(ids[..., None], arange(K))), W)`` (how JAX and Keras exports
  spell an embedding: Google's Magika): onnx2tf can take the 3-D one-hot for channels-first and transpose the
  arange against it (on Magika its own check, ``-cotof``, fails at this Equal: "2048 and 257"). ``Gather(W, ids)``
  is the same
  lookup (for ids in ``[0, K)``; an id outside gives a zero row in the one-hot form and is not a valid input of
  such a model), and also skips a K-wide one-hot and a matrix product.
- Slices over several axes, ``Slice(x, starts, ends, axes=[0, 1, 2, 3])`` (tf2onnx spells a strided slice so,
  even one that keeps everything: Magika's ``x[..., :1]`` after its Conv, on a tensor whose last axis has size 1):
  onnx2tf turns ``axes`` into the channels-last axes of a transposed tensor but leaves ``starts``/``ends`` in
  ONNX order, so it slices the wrong axes (Magika: the Conv's 512 channels cut to 1; its float graph had cosine
  0.00 against the ONNX model). The same Slice as a chain of one-axis Slices, an axis that keeps its whole
  extent left out (a Slice left with none is dropped), is exact, and onnx2tf converts one-axis Slices right.
- Node names TensorFlow refuses as scope names (``Softmax@0`` in Paddle exports), which made onnx2tf fail.
- Gathers of activations at constant indices, ``Gather(x, i, axis)`` (PyTorch's ``y[:, -1]``, ``x[:, 0]``): the
  Edge TPU maps no GATHER, so such a Gather ends its partition and leaves the rest of the model on the CPU. One
  index is ``Slice(x, i, i + 1, axis)`` then ``Squeeze(axis)``; a run of consecutive indices is one Slice; both
  the Edge TPU maps.
- For the Edge TPU only (``edgetpu=True``): ``LeakyRelu(x, alpha)`` on a 3-D or 4-D tensor as ``PRelu(x, slope)``
  with alpha in every channel of the slope. The Edge TPU maps PRELU and not LEAKY_RELU, and a LEAKY_RELU ends
  its partition (openWakeWord's speech embedding: 4 of 67 ops mapped; YOLOv3/v4-style detectors). Elsewhere
  LEAKY_RELU stays: its INT8 kernel holds alpha exactly, PRELU quantizes the slope.
- For the Edge TPU only: ``HardSigmoid(x)`` = ``Clip(alpha x + beta, 0, 1)`` and ``Clip(x, 0, 1)`` as
  ``Clip(6 (alpha x + beta), 0, 6) / 6``: TFLite makes RELU_0_TO_1 of a clip to [0, 1], which the Edge TPU does not
  map (PP-OCRv4's text detector: its partition ended at the first of 10 hard-sigmoid gates, 116 of 246 ops), and
  RELU6 (fused into the convolution before it, with the scaling) and MUL, which it maps. The same function up to
  float32 rounding.
"""
from __future__ import annotations

import re

import numpy as np

from edgeopt.converters.onnx_fold import fresh_name

__all__ = ["rewrite"]


def rewrite(model, edgetpu: bool = False) -> tuple[object, list[str]]:
    """(the model with every rewrite applied, notes saying what was rewritten). ``model`` is changed in place.
    ``edgetpu``: the artifact is for the Edge TPU (also the rewrites to ops it maps)."""
    notes = []
    shapes = _Shapes(model)
    if edgetpu:
        n = shapes.changed(_leaky_relus_as_prelu(model, shapes))
        if n:
            notes.append(f"{n} LeakyRelu(s) as PRelu (the Edge TPU maps PRELU)")
        n = shapes.changed(_unit_clips_as_relu6(model))
        if n:
            notes.append(f"{n} HardSigmoid/Clip(0, 1) as Relu6 of 6x, over 6 (the Edge TPU maps RELU6)")
    n = shapes.changed(_onehot_matmul_to_gather(model))
    if n:
        notes.append(f"{n} one-hot MatMul embedding lookup(s) as Gather")
    n = shapes.changed(_constant_index_gathers_as_slices(model, shapes))
    if n:
        notes.append(f"{n} Gather(s) at constant indices as Slice")
    n = shapes.changed(_split_multi_axis_slices(model, shapes))
    if n:
        notes.append(f"{n} multi-axis Slice(s) as one-axis Slices")
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


class _Shapes:
    """ONNX shape inference of the model being rewritten (:func:`edgeopt.converters.onnx_io.inferred`), run once
    and again only after a rewrite changed the graph: three rewrites read shapes, and inference is most of their
    time on a big model. {} when inference fails: shapes only sharpen the rewrites, without them they apply where
    they need none."""

    def __init__(self, model):
        self.model, self._inferred = model, None

    def inferred(self) -> dict:
        """{tensor name: ([dim or None], ONNX element type)}."""
        if self._inferred is None:
            from edgeopt.converters import onnx_io
            self._inferred = onnx_io.inferred(self.model)
        return self._inferred

    def dims(self) -> dict:
        """{tensor name: [dim or None]} (the pipeline's models have static inputs)."""
        return {name: dims for name, (dims, _) in self.inferred().items()}

    def changed(self, count: int) -> int:
        """``count`` (what a rewrite did), forgetting the shapes when it did anything."""
        if count:
            self._inferred = None
        return count


def _whole_extent(start: int, end: int, step: int, dim) -> bool:
    """Whether ONNX Slice's (start, end, step) on an axis of size ``dim`` keeps the axis whole (clamping as the
    ONNX spec does); False when the size is unknown."""
    if dim is None or step != 1:
        return False
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    return min(max(start, 0), dim) == 0 and min(max(end, 0), dim) == dim


def _constant_index_gathers_as_slices(model, shapes: _Shapes | None = None) -> int:
    """Every Gather of a computed float tensor at constant indices that are one index or consecutive ascending ones
    replaced, in place, by the Slice of them (and a Squeeze of the axis for one scalar index: Gather drops it).
    The same values in the same order: the same function. A negative index needs the axis' static size.
    Returns the count."""
    from onnx import TensorProto, helper, numpy_helper
    graph = model.graph
    constants = _constants(graph)
    inferred = (shapes or _Shapes(model)).inferred()
    floats = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    names = {i.name for i in list(graph.initializer) + list(graph.input)} | {o for n in graph.node for o in n.output}
    new_nodes, done = [], 0
    for node in graph.node:
        index = constants.get(node.input[1]) if node.op_type == "Gather" and len(node.input) == 2 else None
        shape, dtype = inferred.get(node.input[0], (None, None)) if index is not None else (None, None)
        # activations only: a Gather of a weight is an embedding lookup, one of a Shape is onnx2tf's to handle
        if index is None or node.input[0] in constants or dtype not in floats or index.dtype.kind not in "iu" \
                or index.ndim > 1 or index.size < 1 or not shape:
            new_nodes.append(node)
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        axis = axis + len(shape) if axis < 0 else axis
        dim = shape[axis] if 0 <= axis < len(shape) else None
        flat = index.reshape(-1).astype(np.int64)
        if (flat < 0).any():
            if dim is None:
                new_nodes.append(node)
                continue
            flat = np.where(flat < 0, flat + dim, flat)
        if (flat < 0).any() or (dim is not None and (flat >= dim).any()) or (np.diff(flat) != 1).any():
            new_nodes.append(node)   # out of range (an invalid model, left to fail as it would) or not a run
            continue
        out = node.output[0]
        base = fresh_name(f"{out}__slice", names)
        params = []
        for what, value in (("starts", flat[0]), ("ends", flat[-1] + 1), ("axes", axis)):
            graph.initializer.append(numpy_helper.from_array(np.array([value], np.int64), f"{base}_{what}"))
            params.append(f"{base}_{what}")
        sliced = out if index.ndim == 1 else base
        names.update(params + [sliced])
        new_nodes.append(helper.make_node("Slice", [node.input[0]] + params, [sliced], name=f"{node.name or 'gather'}_slice"))
        if index.ndim == 0:   # a scalar index drops the axis
            if opset >= 13:
                new_nodes.append(helper.make_node("Squeeze", [sliced, params[2]], [out],
                                                  name=f"{node.name or 'gather'}_squeeze"))
            else:
                new_nodes.append(helper.make_node("Squeeze", [sliced], [out], axes=[axis],
                                                  name=f"{node.name or 'gather'}_squeeze"))
        done += 1
    if done:
        del graph.node[:]
        graph.node.extend(new_nodes)
    return done


def _leaky_relus_as_prelu(model, shapes: _Shapes | None = None) -> int:
    """Every LeakyRelu of a 3-D or 4-D tensor with a static channel count replaced, in place, by PRelu with a
    [channels, 1(, 1)] slope of its alpha (the form PyTorch exports PReLU in, which onnx2tf makes one PRELU op
    of). The same function. Returns the count."""
    from onnx import helper, numpy_helper
    graph = model.graph
    dims = (shapes or _Shapes(model)).dims()
    names = {i.name for i in list(graph.initializer) + list(graph.input)} | {o for n in graph.node for o in n.output}
    done = 0
    for node in graph.node:
        shape = dims.get(node.input[0]) if node.op_type == "LeakyRelu" and node.input else None
        if not shape or len(shape) not in (3, 4) or not shape[1]:
            continue
        alpha = next((a.f for a in node.attribute if a.name == "alpha"), 0.01)   # ONNX's default
        slope = fresh_name(f"{node.output[0]}__slope", names)
        names.add(slope)
        values = np.full([shape[1]] + [1] * (len(shape) - 2), alpha, np.float32)   # one alpha per channel
        graph.initializer.append(numpy_helper.from_array(values, slope))
        node.CopyFrom(helper.make_node("PRelu", [node.input[0], slope], list(node.output), name=node.name or None))
        done += 1
    return done


def _unit_clips_as_relu6(model) -> int:
    """Every HardSigmoid, and every Clip to [0, 1] with constant bounds, replaced in place by Mul/Add (the scaling
    by 6), Clip(0, 6) and Mul by 1/6 (see the module's docstring). Returns the count."""
    from onnx import helper, numpy_helper

    from edgeopt.converters.onnx_graph import Graph, clip_bounds
    graph = model.graph
    view = Graph(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    names = {i.name for i in list(graph.initializer) + list(graph.input)} | {o for n in graph.node for o in n.output}
    new_nodes, done = [], 0

    def const(base, value):
        name = fresh_name(base, names)
        names.add(name)
        graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32), name))
        return name

    for node in graph.node:
        attrs = {a.name: a.f for a in node.attribute}
        if node.op_type == "HardSigmoid":
            alpha, beta = attrs.get("alpha", 0.2), attrs.get("beta", 0.5)   # ONNX's defaults
        elif node.op_type == "Clip" and clip_bounds(view, node) == (0.0, 1.0):
            alpha, beta = 1.0, 0.0
        else:
            new_nodes.append(node)
            continue
        out, base = node.output[0], fresh_name(f"{node.output[0]}__relu6", names)
        names.add(base)
        scaled = f"{base}_in"
        new_nodes.append(helper.make_node("Mul", [node.input[0], const(f"{base}_a", 6.0 * alpha)], [scaled]))
        if beta:
            new_nodes.append(helper.make_node("Add", [scaled, const(f"{base}_b", 6.0 * beta)], [f"{base}_in_b"]))
            scaled = f"{base}_in_b"
        if opset >= 11:
            new_nodes.append(helper.make_node("Clip", [scaled, const(f"{base}_lo", 0.0), const(f"{base}_hi", 6.0)],
                                              [base]))
        else:
            new_nodes.append(helper.make_node("Clip", [scaled], [base], min=0.0, max=6.0))
        new_nodes.append(helper.make_node("Mul", [base, const(f"{base}_sixth", 1.0 / 6.0)], [out],
                                          name=node.name or None))
        done += 1
    if done:
        del graph.node[:]
        graph.node.extend(new_nodes)
    return done


def _split_multi_axis_slices(model, shapes: _Shapes | None = None) -> int:
    """Every Slice with constant starts/ends/axes/steps over two or more axes, or over an axis it keeps whole,
    replaced by one-axis Slices in a chain (slices along distinct axes commute, so the chain is the same
    function). A Slice that keeps everything is dropped: its readers read its input. Returns the count."""
    from onnx import helper, numpy_helper
    graph = model.graph
    constants = _constants(graph)
    dims = (shapes or _Shapes(model)).dims()
    # a name read inside a subgraph (If, Loop) is not rewired here: such Slices stay as Identity
    keep_names = {o.name for o in graph.output} | (
        {o for n in graph.node for o in n.output} if any(a.type in (a.GRAPH, a.GRAPHS) for n in graph.node
                                                        for a in n.attribute) else set())
    names = {i.name for i in list(graph.initializer) + list(graph.input)} | {o for n in graph.node for o in n.output}
    renamed: dict = {}  # output of a dropped Slice -> its input
    new_nodes, done = [], 0
    for node in graph.node:
        node.input[:] = [renamed.get(i, i) for i in node.input]
        consts = [constants.get(i) if i else None for i in node.input[1:5]]
        if node.op_type != "Slice" or len(node.input) < 3 or any(
                c is None for c, i in zip(consts, node.input[1:5]) if i) or node.attribute:
            new_nodes.append(node)
            continue
        starts, ends = (np.asarray(c).reshape(-1) for c in consts[:2])
        axes = np.asarray(consts[2]).reshape(-1) if len(consts) > 2 and consts[2] is not None \
            else np.arange(len(starts))
        steps = np.asarray(consts[3]).reshape(-1) if len(consts) > 3 and consts[3] is not None \
            else np.ones(len(starts), np.int64)
        shape = dims.get(node.input[0])
        if shape is None and (axes < 0).any():
            new_nodes.append(node)
            continue
        axes = [int(a) + len(shape) if a < 0 else int(a) for a in axes]
        kept = [(a, int(s), int(e), int(t)) for a, s, e, t in zip(axes, starts, ends, steps)
                if not _whole_extent(int(s), int(e), int(t), shape[a] if shape and a < len(shape) else None)]
        if len(kept) == len(axes) and len(kept) <= 1:
            new_nodes.append(node)
            continue
        done += 1
        out = node.output[0]
        if not kept and out not in keep_names:
            renamed[out] = node.input[0]
            continue
        if not kept:  # a graph output (or a name a subgraph reads) keeps its name
            new_nodes.append(helper.make_node("Identity", [node.input[0]], [out], name=node.name or None))
            continue
        dtype = np.asarray(consts[0]).dtype
        prev = node.input[0]
        for k, (axis, start, end, step) in enumerate(kept):
            base = fresh_name(f"{out}__slice{k}", names)
            params = []
            for what, value in (("starts", start), ("ends", end), ("axes", axis), ("steps", step)):
                graph.initializer.append(numpy_helper.from_array(np.array([value], dtype), f"{base}_{what}"))
                params.append(f"{base}_{what}")
                names.add(params[-1])
            target = out if k == len(kept) - 1 else base
            names.add(target)
            new_nodes.append(helper.make_node("Slice", [prev] + params, [target],
                                              name=f"{node.name or 'slice'}_{k}"))
            prev = target
    if done:
        del graph.node[:]
        graph.node.extend(new_nodes)
    return done
