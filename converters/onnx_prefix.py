"""Tensors of an ONNX model on fixed samples, computed one graph segment at a time (for sequential fitting).

gptq_act (onnx_qdq.gptq_compensated) fits a model's layers one after the other, each against its input in the
INT8 model *with every layer before it already fitted*. Running the whole model per layer and sample made that
quadratic in depth: on MobileNetV2 (53 layers, 32 samples) 4636 full runs, 141 of the conversion's 250 s.
:class:`Prefix` runs only the nodes a requested tensor needs that have not run yet, keeps the tensors later
nodes read and drops the rest, so each node runs once per sample in all.

That is exact for sequential fitting because a layer fitted after its input was read is never an ancestor of
a tensor read before it (tensors are requested in graph order): the nodes already run never read a weight
changed since. The model's initializers are read when a segment is built, so a weight changed in place
(``initializer.CopyFrom``) is what the segments after the change compute with.
"""
from __future__ import annotations

import numpy as np

from edgeopt.conversion import defaults
from edgeopt.converters import onnx_io

__all__ = ["Prefix", "supported", "session_with_outputs"]


def session_with_outputs(model, tensors, disable_all: bool = False):
    """(onnxruntime session of ``model`` with ``tensors`` as extra outputs, its output names). Unlike
    onnx_io.tensor_session, onnxruntime's own optimization level and threads unless ``disable_all``: a prefix
    is run on every calibration sample once per layer."""
    sess = _session(onnx_io.with_outputs(model, sorted(tensors)), disable_all)
    return sess, [o.name for o in sess.get_outputs()]


def _session(model, disable_all: bool):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if disable_all:  # Q/DQ as explicit ops (TensorRT's arithmetic), and no fused node hides a tensor
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), sess_options=so, providers=["CPUExecutionProvider"])


def supported(model) -> bool:
    """Whether :class:`Prefix` can cut ``model``: no node with a subgraph (If, Loop, Scan read outer tensors
    a segment would not pass them)."""
    return not any(a.g.node or len(a.graphs) for n in model.graph.node for a in n.attribute)


class Prefix:
    """``get(tensor)``: that tensor's value on each of ``feeds`` (dicts of graph input name -> array).
    ``model`` is read live (its initializers when each segment is built); ``disable_all`` runs segments at
    ORT_DISABLE_ALL (Q/DQ as explicit ops, TensorRT's arithmetic). Past ``max_kept_bytes`` of kept tensors it
    runs the whole model per request from then on."""

    def __init__(self, model, feeds: list[dict], disable_all: bool = False, max_kept_bytes: int | None = None):
        self.model, self.disable_all, self.feeds = model, disable_all, feeds
        self.max_kept_bytes = defaults.GPTQ_ACT_MAX_KEPT_BYTES if max_kept_bytes is None else max_kept_bytes
        graph = model.graph
        self.nodes = list(graph.node)     # ONNX graphs are stored in topological order
        self.inits = {i.name: i for i in graph.initializer}
        self.producer = {t: k for k, n in enumerate(self.nodes) for t in n.output if t}
        self.consumers: dict = {}
        for k, n in enumerate(self.nodes):
            for t in n.input:
                if t:
                    self.consumers.setdefault(t, set()).add(k)
        self.done: set = set()
        self.values = {name: [f[name] for f in feeds] for name in (feeds[0] if feeds else {})}
        self.n = len(feeds)
        self.runs = 0
        self.whole = not supported(model)   # then each request runs the whole model (nothing kept)

    def get(self, tensor: str) -> list[np.ndarray]:
        if tensor in self.values:
            return self.values[tensor]
        if self.whole:
            return self._run_whole(tensor)
        self._run_segment(tensor)
        return self.values[tensor]

    def _run_whole(self, tensor: str) -> list[np.ndarray]:
        sess, _ = session_with_outputs(self.model, {tensor}, self.disable_all)
        names = [i.name for i in sess.get_inputs()]
        self.runs += self.n
        return [sess.run([tensor], {k: self.feeds[i][k] for k in names})[0] for i in range(self.n)]

    def _needed(self, tensor: str) -> list[int]:
        need, stack = set(), [tensor]
        while stack:
            t = stack.pop()
            k = self.producer.get(t)
            if k is None or k in need or k in self.done or t in self.values:
                continue
            need.add(k)
            stack.extend(x for x in self.nodes[k].input if x and x not in self.inits)
        return sorted(need)

    def _run_segment(self, tensor: str) -> None:
        import onnx
        need = self._needed(tensor)
        if not need:
            raise KeyError(f"tensor {tensor!r} is neither computed by the model nor one of its inputs")
        inside = set(need)
        produced = {t for k in need for t in self.nodes[k].output if t}
        ins, init_names = [], []
        for k in need:
            for t in self.nodes[k].input:
                if not t or t in produced or t in ins or t in init_names:
                    continue
                (init_names if t in self.inits else ins).append(t)
        outs = [t for t in sorted(produced) if t == tensor or self.consumers.get(t, set()) - inside
                or t in {o.name for o in self.model.graph.output}]
        graph = onnx.helper.make_graph(
            [self.nodes[k] for k in need], "segment",
            [onnx.helper.make_tensor_value_info(t, onnx.helper.np_dtype_to_tensor_dtype(self.values[t][0].dtype),
                                                list(self.values[t][0].shape)) for t in ins],
            [onnx.ValueInfoProto(name=t) for t in outs],
            [self.inits[t] for t in init_names])
        m = onnx.helper.make_model(graph, opset_imports=list(self.model.opset_import))
        m.ir_version = self.model.ir_version
        m.functions.extend(self.model.functions)
        sess = _session(m, self.disable_all)
        got = [sess.run(outs, {t: self.values[t][i] for t in ins}) for i in range(self.n)]
        self.runs += self.n
        for j, t in enumerate(outs):
            self.values[t] = [g[j] for g in got]
        self.done |= inside
        # drop what no node still to run reads (the requested tensor stays until the caller is done with it)
        for t in [t for t in self.values if t != tensor]:
            if self.consumers.get(t, set()) <= self.done:
                del self.values[t]
        if sum(v.nbytes for vs in self.values.values() for v in vs) > self.max_kept_bytes:
            self.whole, self.values = True, {tensor: self.values[tensor]}
