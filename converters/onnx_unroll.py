"""Recurrent ONNX ops (``LSTM``, ``GRU``, ``RNN``) unrolled over their time steps into ops both INT8 routes
quantize.

Why: the recurrent ops hold most of a recurrent model's weights, and neither route quantizes them as they
are. onnxruntime's QDQ quantizer leaves an ``LSTM`` in float (the Jetson artifact was the FP32 model's size,
labelled int8), and onnx2tf turns it into a TensorFlow loop whose WHILE op TensorFlow's INT8 calibrator cannot
run (edgeopt refuses it). With the sequence length static (the input shapes are fixed before conversion), the
same function is a fixed chain of steps: per gate one ``Gemm`` on the input rows of all steps (bias included),
of which each step slices its rows, and per step and gate one ``MatMul`` on the previous hidden state, then
``Add``, ``Sigmoid``/``Tanh`` and ``Mul``, which TFLite, the Edge TPU and TensorRT all run in INT8. Each gate
gets its own products, so each gets its own activation scale (a product of all gates at once would share one
scale between gates whose ranges differ).

The recurrent weights are the same initializer in every step (written once in the ONNX file, and in TFLite
one tensor read by every step: GPTQ rounds it once, for all its readers).

Left as they are, with the reason (:func:`unroll` returns them): a sequence length that is not static,
``sequence_lens`` other than the full length for every batch row, peepholes (``P``) that are not zero, ``clip``,
``input_forget``, and activations other than the defaults (LSTM/GRU: Sigmoid, Tanh; RNN: Tanh).

Only onnx and numpy are used; onnx is imported inside the functions (edgeopt imports converters lazily).
"""
from __future__ import annotations

import numpy as np

from edgeopt.converters.onnx_fold import attribute

__all__ = ["unroll", "left_in_float", "time_major_inputs", "RECURRENT_OPS"]

RECURRENT_OPS = ("LSTM", "GRU", "RNN")
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}  # ONNX weight order: LSTM i, o, f, c; GRU z, r, h; RNN i
DEFAULT_ACTIVATIONS = {"LSTM": ["sigmoid", "tanh", "tanh"], "GRU": ["sigmoid", "tanh"], "RNN": ["tanh"]}
MAX_STEPS = 512   # a longer sequence is left as it is: ~25 ops per step and direction, onnx2tf and the
                  # quantizers would take minutes over a graph of tens of thousands of ops


def unroll(model, feeds: dict | None = None) -> dict:
    """Every recurrent op of ``model`` (changed in place) that can be unrolled, unrolled; returns
    ``{"pairs": unrolled ops, "of": recurrent ops found, "steps": the longest sequence unrolled, "left": [
    {"node", "op", "reason"}]}`` (``pairs`` for the pipeline's rewrite bookkeeping).

    ``feeds`` (one sample: {input name: array}): where ONNX shape inference cannot tell a recurrent op's
    sequence shape (computed through Shape, Slice or Pad from inputs whose shapes are all static: Silero VAD's
    front end), the model is run once on it to read that shape."""
    from onnx import numpy_helper, shape_inference

    graph = model.graph
    found = [n for n in graph.node if n.op_type in RECURRENT_OPS and n.domain in ("", "ai.onnx")]
    info = {"pairs": 0, "of": len(found), "steps": 0, "left": []}
    if not found:
        return info
    try:
        shapes = _shapes(shape_inference.infer_shapes(model, strict_mode=False))
    except Exception:   # a model shape inference cannot follow: no static sequence length is known
        shapes = {}
    unknown = {n.input[0] for n in found if not _static(shapes.get(n.input[0]))}
    if unknown and feeds:
        shapes.update(_measured(model, unknown, feeds))
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    consts.update({n.output[0]: numpy_helper.to_array(attribute(n, "value")) for n in graph.node
                   if n.op_type == "Constant" and attribute(n, "value") is not None})
    used = {n.name for n in graph.node} | {i.name for i in graph.initializer}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 14)
    for node in found:
        plan = _plan(node, shapes, consts)
        if isinstance(plan, str):
            info["left"].append({"node": node.name or node.output[0], "op": node.op_type, "reason": plan})
            continue
        plan["y_seq"] = _sequence_reader(graph, node, plan, consts)
        plan["opset"] = opset
        nodes, inits = _Builder(node, plan, used).build()
        at = list(graph.node).index(node)
        graph.node.remove(node)
        for reader in (plan["y_seq"] or {}).get("replaced", []):
            graph.node.remove(reader)
        for k, new in enumerate(nodes):
            graph.node.insert(at + k, new)
        graph.initializer.extend(inits)
        info["pairs"] += 1
        info["steps"] = max(info["steps"], plan["steps"])
        _drop_unread(graph, set(node.input))
    return info


def _sequence_reader(graph, node, plan, consts) -> dict | None:
    """Where ``Y`` ([seq, num_directions, batch, hidden]) is only read to become [seq, batch, num_directions *
    hidden], as PyTorch exports it (``Squeeze(axis 1)`` for one direction, ``Transpose(0, 2, 1, 3)`` then
    ``Reshape`` for two): ``{"output": that tensor, "replaced": [those readers]}``, so the unrolled steps build
    it directly. None otherwise. A 4-D Y would reach onnx2tf, which takes every 4-D tensor for NCHW image data
    and transposes it (a Squeeze of axis 1 then fails)."""
    if plan["layout"] or not node.output or not node.output[0]:
        return None
    readers = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    outputs = {o.name for o in graph.output}

    def only_reader(tensor):
        r = readers.get(tensor, [])
        return r[0] if len(r) == 1 and tensor not in outputs else None

    first = only_reader(node.output[0])
    if first is None:
        return None
    dirs = len(plan["reverse"])
    if first.op_type == "Squeeze" and dirs == 1:
        axes = attribute(first, "axes") if len(first.input) < 2 else consts.get(first.input[1])
        if axes is not None and [int(a) % 4 for a in np.atleast_1d(axes)] == [1]:
            return {"output": first.output[0], "replaced": [first]}
    if first.op_type == "Transpose" and list(attribute(first, "perm", [])) == [0, 2, 1, 3]:
        second = only_reader(first.output[0])
        shape = consts.get(second.input[1]) if second is not None and second.op_type == "Reshape" else None
        want = [plan["steps"], plan["batch"], dirs * plan["hidden"]]
        if shape is not None and len(shape) == 3 and not attribute(second, "allowzero", 0):
            got = [want[k] if int(d) == 0 else int(d) for k, d in enumerate(shape)]
            if -1 in got and got.count(-1) == 1:
                got[got.index(-1)] = int(np.prod(want) // -np.prod(got))
            if got == want:
                return {"output": second.output[0], "replaced": [first, second]}
    return None


def left_in_float(info: dict | None, source: str, float_ok: bool) -> list[str]:
    """The op types of the recurrent ops :func:`unroll` left as they are (``info`` its result), which would
    compute in float with float weights; a UsageError naming them and why, unless ``float_ok`` (the route runs
    them in float and the user allowed float ops)."""
    from edgeopt.converters.onnx_control import refuse_or_keep
    return refuse_or_keep((info or {}).get("left") or [], source, float_ok,
                          what="recurrent op(s) cannot be unrolled into INT8 ops",
                          hint="fix the sequence length with --input-shape, or keep them in float with "
                               "--allow-float-fallback (Jetson only)")


def _drop_unread(graph, names: set) -> None:
    """The initializers and Constant nodes among ``names`` (the unrolled node's W, R, B) that nothing reads now."""
    read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    gone = names - read
    for init in [i for i in graph.initializer if i.name in gone]:
        graph.initializer.remove(init)
    for const in [n for n in graph.node if n.op_type == "Constant" and n.output[0] in gone]:
        graph.node.remove(const)


def time_major_inputs(model) -> set[str]:
    """The graph inputs a recurrent op reads directly as its sequence in layout 0 ([steps, batch, features]):
    their first axis is time, not the batch."""
    inputs = {i.name for i in model.graph.input}
    return {n.input[0] for n in model.graph.node if n.op_type in RECURRENT_OPS and n.input
            and n.input[0] in inputs and not attribute(n, "layout", 0)}


def _shapes(model) -> dict[str, list]:
    """{tensor name: shape as ints (None where not static)} from a shape-inferred model."""
    out = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return out


def _static(shape) -> bool:
    return bool(shape) and all(d is not None and d > 0 for d in shape)


def _measured(model, tensors: set, feeds: dict) -> dict:
    """{tensor: shape} of ``tensors`` in one run of ``model`` on ``feeds`` ({} if it does not run)."""
    from edgeopt.converters import onnx_prefix
    try:
        sess, outs = onnx_prefix.session_with_outputs(model, tensors, disable_all=True)
        got = dict(zip(outs, sess.run(None, feeds)))
    except Exception:   # a model that does not run here: its recurrent ops stay as they are, with the reason
        return {}
    return {t: list(got[t].shape) for t in tensors if t in got}


def _input(node, k: int) -> str:
    return node.input[k] if len(node.input) > k else ""


def _plan(node, shapes, consts):
    """What the unrolled node needs (weights per direction, sizes), or the reason it is left as it is."""
    op = node.op_type
    layout = attribute(node, "layout", 0)
    x_shape = shapes.get(node.input[0])
    if not x_shape or len(x_shape) != 3 or not _static(x_shape):
        return "the sequence length is not static (fix it with --input-shape)"
    steps, batch = (x_shape[1], x_shape[0]) if layout else (x_shape[0], x_shape[1])
    if not 0 < steps <= MAX_STEPS:
        return f"{steps} time steps (unrolled up to {MAX_STEPS})"
    w, r = consts.get(node.input[1]), consts.get(node.input[2])
    if w is None or r is None:
        return "its weights are not constants"
    dirs = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}
    direction = attribute(node, "direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    if direction not in dirs:
        return f"direction {direction!r}"
    hidden = int(attribute(node, "hidden_size", r.shape[-1]))
    gates = GATES[op]
    if w.shape[0] != len(dirs[direction]) or w.shape[1] != gates * hidden or r.shape[1:] != (gates * hidden, hidden):
        return "its weights do not have the shapes of its direction and hidden_size"
    acts = [a.decode().lower() if isinstance(a, bytes) else str(a).lower() for a in attribute(node, "activations", [])]
    if acts and acts != DEFAULT_ACTIVATIONS[op] * len(dirs[direction]):
        return f"activations {acts} (only the defaults are unrolled)"
    if attribute(node, "clip") is not None:
        return "clip is set"
    if attribute(node, "input_forget", 0):
        return "input_forget is set"
    b = consts.get(_input(node, 3)) if _input(node, 3) else np.zeros((w.shape[0], 2 * gates * hidden), np.float32)
    if b is None:
        return "its bias is not a constant"
    if _input(node, 4):
        lens = consts.get(_input(node, 4))
        if lens is None or not np.all(np.asarray(lens) == steps):
            return "sequence_lens is not the full length for every sequence"
    if op == "LSTM" and _input(node, 7):
        p = consts.get(_input(node, 7))
        if p is None or np.any(p):
            return "it has peepholes"
    initial = {}
    for k, name in ((5, "h"), (6, "c")):
        t = _input(node, k)
        if t and not (t in consts and not np.any(consts[t])):  # a constant zero state is no state
            initial[name] = t
    return {"steps": steps, "batch": batch, "hidden": hidden, "layout": layout, "reverse": dirs[direction],
            "w": w.astype(np.float32), "r": r.astype(np.float32), "b": np.asarray(b, np.float32),
            "initial": initial, "lbr": int(attribute(node, "linear_before_reset", 0))}


class _Builder:
    """Emits the unrolled nodes and their initializers for one recurrent node."""

    def __init__(self, node, plan, used):
        self.node, self.plan, self.used = node, plan, used
        # short names ("lstm/0.12_i_act": direction 0, step 12): the QDQ route names a Q node, a DQ node and two
        # constants after each tensor it quantizes, and each step has dozens; long names made a GRU's QDQ
        # file larger than its FP32 source
        self.base = node.op_type.lower()
        self.nodes, self.inits = [], []

    def _name(self, what: str) -> str:
        name, k = f"{self.base}/{what}", 1
        while name in self.used:
            name, k = f"{self.base}/{what}_{k}", k + 1
        self.used.add(name)
        return name

    def const(self, what, value) -> str:
        from onnx import numpy_helper
        name = self._name(what)
        self.inits.append(numpy_helper.from_array(np.array(value, order="C"), name))  # keeps 0-d indices 0-d
        return name

    def op(self, op_type, inputs, what, output=None, **attrs) -> str:
        from onnx import helper
        name = self._name(what)
        out = output or name
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=name, **attrs))
        return out

    def build(self):
        p, node = self.plan, self.node
        steps, batch, hidden = p["steps"], p["batch"], p["hidden"]
        # the input products of every step in one Gemm per gate, on the input's rows ([steps * batch, input]; a
        # step's rows sliced from it): one bias per gate, not one per step and gate (each a per-channel scale
        # array in TFLite), and 2-D tensors only (onnx2tf takes 3-D and 4-D ones for channels-first)
        self.rows = self.op("Reshape", [node.input[0], self.const("shape_rows", np.array([-1, p["w"].shape[2]],
                                                                                          np.int64))], "rows")
        # a step's rows: one Slice where they are contiguous (the Edge TPU maps SLICE, not GATHER), else a Gather
        self.step_rows = [[b * steps + t if p["layout"] else t * batch + b for b in range(batch)]
                          for t in range(steps)]
        dir_axis_h = 1 if p["layout"] else 0
        shape_state = self.const("shape_state", np.array([batch, hidden], np.int64)) if p["initial"] else None
        ys, hs, cs = [], [], []
        for d, reverse in enumerate(p["reverse"]):
            dn = f"{d}"
            state = {k: self.op("Reshape", [self._slice(v, d, d + 1, dir_axis_h, f"{dn}.{k}0_dir"), shape_state],
                                f"{dn}.{k}0") for k, v in p["initial"].items()}
            order = range(steps - 1, -1, -1) if reverse else range(steps)
            outs = [None] * steps
            step = {"LSTM": self._lstm, "GRU": self._gru, "RNN": self._rnn}[node.op_type]
            weights = self._weights(d)
            for t in order:
                state = step(weights, t, state, f"{dn}.{t}")
                outs[t] = state["h"]
            ys.append(outs)
            hs.append(state["h"])
            cs.append(state.get("c"))
        names = list(node.output) + [""] * (3 - len(node.output))
        if p["y_seq"]:   # [seq, batch, num_directions * hidden], what Y's readers made of it
            shape = self.const("shape_y_seq", np.array([1, batch, len(ys) * hidden], np.int64))
            per_t = [ys[0][t] if len(ys) == 1 else self.op("Concat", [y[t] for y in ys], f"y{t}", axis=1)
                     for t in range(steps)]
            self.op("Concat", [self.op("Reshape", [y, shape], f"y{t}_seq") for t, y in enumerate(per_t)], "y_seq",
                    output=p["y_seq"]["output"], axis=0)
        elif names[0]:
            shape4 = self.const("shape_y", np.array([1, 1, batch, hidden], np.int64))
            per_t = [self.op("Concat", [self.op("Reshape", [ys[d][t], shape4], f"y{t}_{d}") for d in range(len(ys))],
                             f"y{t}", axis=1) for t in range(steps)]
            if p["layout"]:   # [batch, seq, num_directions, hidden]
                y = self.op("Concat", per_t, "y", axis=0)
                self.op("Transpose", [y], "y_layout", output=names[0], perm=[2, 0, 1, 3])
            else:             # [seq, num_directions, batch, hidden]
                self.op("Concat", per_t, "y", output=names[0], axis=0)
        shape3 = self.const("shape_h", np.array([1, batch, hidden], np.int64)) if any(names[1:]) else None
        for out, last, what in ((names[1], hs, "h"), (names[2], cs, "c")):
            if not out:
                continue
            parts = [self.op("Reshape", [v, shape3], f"{what}_last{d}") for d, v in enumerate(last)]
            if p["layout"]:   # [batch, num_directions, hidden]
                both = self.op("Concat", parts, f"{what}_last", axis=0)
                self.op("Transpose", [both], f"{what}_layout", output=out, perm=[1, 0, 2])
            else:
                self.op("Concat", parts, f"{what}_last", output=out, axis=0)
        return self.nodes, self.inits

    def _weights(self, d: int) -> list[dict]:
        """Per gate: the input product of all steps (``xw``: Gemm on the input rows, W as its B with transB, and
        the bias: W's and R's summed, except in GRU's h gate, whose R bias sits inside the reset product), the
        recurrent weights as MatMul's B (``r``: [hidden, hidden] transposed) and R's bias where it is apart."""
        p = self.plan
        hidden, gates = p["hidden"], GATES[self.node.op_type]
        out = []
        for g in range(gates):
            rows = slice(g * hidden, (g + 1) * hidden)
            wb, rb = p["b"][d, :gates * hidden][rows], p["b"][d, gates * hidden:][rows]
            apart = self.node.op_type == "GRU" and g == 2
            xw = self.op("Gemm", [self.rows, self.const(f"d{d}/W{g}", p["w"][d, rows]),
                                  self.const(f"d{d}/B{g}", wb if apart else wb + rb)], f"d{d}/xw{g}", transB=1)
            gate = {"xw": xw, "r": self.const(f"d{d}/R{g}", p["r"][d, rows].T)}
            if apart:
                gate["rb"] = self.const(f"d{d}/RB{g}", rb)
            out.append(gate)
        return out

    def _slice(self, tensor, start: int, stop: int, axis: int, what) -> str:
        """``tensor[start:stop]`` along ``axis`` (Slice; before opset 10 its bounds are attributes)."""
        if self.plan["opset"] < 10:
            return self.op("Slice", [tensor], what, starts=[start], ends=[stop], axes=[axis])
        bounds = [self.const(f"{what}_{k}", np.array([v], np.int64)) for k, v in
                  (("start", start), ("stop", stop), ("axis", axis))]
        return self.op("Slice", [tensor, *bounds], what)

    def _x(self, gate, t, what) -> str:
        """x_t W^T + b of a gate: step ``t``'s rows of its input product."""
        rows = self.step_rows[t]
        if rows == list(range(rows[0], rows[0] + len(rows))):
            return self._slice(gate["xw"], rows[0], rows[0] + len(rows), 0, f"{what}_x")
        return self.op("Gather", [gate["xw"], self.const(f"{what}_rows", np.array(rows, np.int64))], f"{what}_x",
                       axis=0)

    def _pre(self, gate, x, h, what) -> str:
        """x W^T + b (+ h R^T): a gate's input before its activation at step ``x``; no recurrent product without
        a state."""
        xw = self._x(gate, x, what)
        if h is None:
            return xw
        return self.op("Add", [xw, self.op("MatMul", [h, gate["r"]], f"{what}_h")], f"{what}_pre")

    def _lstm(self, weights, x, state, what):
        h, c = state.get("h"), state.get("c")
        i = self.op("Sigmoid", [self._pre(weights[0], x, h, f"{what}_i")], f"{what}_i_act")
        o = self.op("Sigmoid", [self._pre(weights[1], x, h, f"{what}_o")], f"{what}_o_act")
        g = self.op("Tanh", [self._pre(weights[3], x, h, f"{what}_c")], f"{what}_c_act")
        new_c = self.op("Mul", [i, g], f"{what}_ig")
        if c is not None:   # a zero cell state forgets nothing: no forget gate
            f = self.op("Sigmoid", [self._pre(weights[2], x, h, f"{what}_f")], f"{what}_f_act")
            new_c = self.op("Add", [self.op("Mul", [f, c], f"{what}_fc"), new_c], f"{what}_c")
        new_h = self.op("Mul", [o, self.op("Tanh", [new_c], f"{what}_c_tanh")], f"{what}_h")
        return {"h": new_h, "c": new_c}

    def _gru(self, weights, x, state, what):
        h = state.get("h")
        z = self.op("Sigmoid", [self._pre(weights[0], x, h, f"{what}_z")], f"{what}_z_act")
        if h is None:   # a zero state: r does not matter, h R^T + Rb is Rb
            n_in = self._pre(weights[2], x, None, f"{what}_n")
            if self.plan["lbr"]:
                r = self.op("Sigmoid", [self._pre(weights[1], x, None, f"{what}_r")], f"{what}_r_act")
                n_in = self.op("Add", [n_in, self.op("Mul", [r, weights[2]["rb"]], f"{what}_r_rb")], f"{what}_n_pre")
            else:
                n_in = self.op("Add", [n_in, weights[2]["rb"]], f"{what}_n_pre")
            n = self.op("Tanh", [n_in], f"{what}_n_act")
            # (1 - z) n = n - z n
            return {"h": self.op("Sub", [n, self.op("Mul", [z, n], f"{what}_zn")], f"{what}_h")}
        r = self.op("Sigmoid", [self._pre(weights[1], x, h, f"{what}_r")], f"{what}_r_act")
        xn = self._x(weights[2], x, f"{what}_n")
        if self.plan["lbr"]:   # r (h R^T + Rb)
            hr = self.op("Add", [self.op("MatMul", [h, weights[2]["r"]], f"{what}_n_h"), weights[2]["rb"]],
                         f"{what}_n_hb")
            inner = self.op("Mul", [r, hr], f"{what}_n_rh")
        else:                  # (r h) R^T + Rb
            inner = self.op("Add", [self.op("MatMul", [self.op("Mul", [r, h], f"{what}_rh"), weights[2]["r"]],
                                            f"{what}_n_h"), weights[2]["rb"]], f"{what}_n_hb")
        n = self.op("Tanh", [self.op("Add", [xn, inner], f"{what}_n_pre")], f"{what}_n_act")
        # (1 - z) n + z h = n + z (h - n)
        return {"h": self.op("Add", [n, self.op("Mul", [z, self.op("Sub", [h, n], f"{what}_hn")], f"{what}_zhn")],
                             f"{what}_h")}

    def _rnn(self, weights, x, state, what):
        return {"h": self.op("Tanh", [self._pre(weights[0], x, state.get("h"), f"{what}_i")], f"{what}_h")}
