"""A read view of an ONNX graph for the rewrites that change weights in place (onnx_equalize, onnx_center).

:class:`Graph` indexes producers, consumers and initializers and evaluates small constant subgraphs;
:func:`clip_bounds` reads a Clip's bounds whichever opset wrote them; :func:`spatial_pad` tells a Pad that
pads only spatial axes with zeros (or edge/reflect). Only onnx and numpy are used; onnx is
imported inside the functions (edgeopt imports converters lazily).
"""
from __future__ import annotations

import numpy as np

from edgeopt.converters.onnx_fold import attribute

__all__ = ["Graph", "clip_bounds", "constant_node_value", "spatial_pad"]


class Graph:
    """Producers, consumers and constant values of an ONNX graph (its top level: the rewrites leave subgraphs alone)."""

    def __init__(self, model):
        from onnx import numpy_helper
        self.model = model
        g = model.graph
        self.inits = {t.name: t for t in g.initializer}
        self.producer = {}
        self.consumers: dict[str, list] = {}
        for node in g.node:
            for o in node.output:
                self.producer[o] = node
            for i in node.input:
                if i:
                    self.consumers.setdefault(i, []).append(node)
        self.graph_outputs = {o.name for o in g.output}
        self._numpy = numpy_helper
        self._folded: dict[str, np.ndarray | None] = {}

    def const(self, name: str):
        """The value of a tensor computed from constants only (initializer, Constant node, or a small
        constant subgraph such as the static padding of an exported EfficientNet); None otherwise."""
        if not name:
            return None
        if name in self._folded:
            return self._folded[name]
        val = None
        if name in self.inits:
            val = self._numpy.to_array(self.inits[name])
        else:
            node = self.producer.get(name)
            if node is not None and node.op_type == "Constant":
                val = constant_node_value(node)
            elif node is not None:
                val = self._fold(name)
        self._folded[name] = val
        return val

    def _fold(self, name: str, most: int = 64):
        """Evaluate the constant-only ancestry of ``name`` with onnx's reference evaluator (None if it
        depends on a graph input, or is larger than ``most`` nodes: not worth it)."""
        import onnx
        from onnx.reference import ReferenceEvaluator
        nodes, ids, seen, stack = [], set(), set(), [name]
        graph_inputs = {i.name for i in self.model.graph.input} - set(self.inits)
        while stack:
            t = stack.pop()
            if t in seen or t in self.inits or not t:
                continue
            seen.add(t)
            if t in graph_inputs:
                return None
            node = self.producer.get(t)
            if node is None or len(nodes) >= most:
                return None
            if id(node) not in ids:
                ids.add(id(node))
                nodes.append(node)
                stack.extend(node.input)
        order = [n for n in self.model.graph.node if id(n) in ids]  # graph order is topological
        used = {i for n in order for i in n.input}
        graph = onnx.helper.make_graph(order, "fold", [], [onnx.helper.make_tensor_value_info(
            name, onnx.TensorProto.UNDEFINED, None)], [self.inits[i] for i in used if i in self.inits])
        sub = onnx.helper.make_model(graph, opset_imports=list(self.model.opset_import))
        try:
            return np.asarray(ReferenceEvaluator(sub).run(None, {})[0])
        except Exception:  # an op the reference evaluator lacks: treat as not constant
            return None

    def single_consumer(self, tensor: str):
        """The one node reading ``tensor`` (None if several, none, or it is a graph output)."""
        users = self.consumers.get(tensor, [])
        if len(users) != 1 or tensor in self.graph_outputs:
            return None
        return users[0]


def constant_node_value(node):
    """The value of a Constant node (any of its value attributes), or None."""
    from onnx import helper, numpy_helper
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name in ("value_float", "value_int", "value_floats", "value_ints"):
            return np.asarray(helper.get_attribute_value(a))
    return None


def clip_bounds(graph: Graph, node):
    """(lo, hi) of a Clip as floats (None for an open side), or False when a bound is not a constant."""
    if len(node.input) > 1:  # opset >= 11: bounds are inputs
        lo = graph.const(node.input[1]) if node.input[1] else None
        hi = graph.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if (node.input[1] and lo is None) or (len(node.input) > 2 and node.input[2] and hi is None):
            return False
        if (lo is not None and lo.size != 1) or (hi is not None and hi.size != 1):
            return False
        return (None if lo is None else float(lo.reshape(-1)[0]), None if hi is None else float(hi.reshape(-1)[0]))
    return attribute(node, "min"), attribute(node, "max")


def spatial_pad(graph: Graph, node, data_rank: int) -> bool:
    """A Pad that commutes with per-channel scaling: zero (or edge/reflect) padding, none on axes 0 and 1
    of its ``data_rank``-dimensional input."""
    mode = attribute(node, "mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if len(node.input) > 1:
        pads = graph.const(node.input[1])
        value = graph.const(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(1)
        axes = graph.const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
        if pads is None or value is None or (len(node.input) > 3 and node.input[3] and axes is None):
            return False
    else:
        pads, value, axes = np.asarray(attribute(node, "pads", [])), np.asarray(attribute(node, "value", 0.0)), None
    pads = np.asarray(pads).reshape(-1)
    if mode == "constant" and np.any(np.asarray(value) != 0):
        return False
    rank = len(pads) // 2
    axes = list(range(rank)) if axes is None else [int(a) % data_rank for a in np.asarray(axes).reshape(-1)]
    for k, ax in enumerate(axes):
        if ax in (0, 1) and (pads[k] != 0 or pads[k + rank] != 0):
            return False
    return True
