"""Which ops of a TFLite model form a block that may stay in float beside INT8 ones, recognised by structure on
its op graph: a transformer's normalization blocks, output activations on a fixed INT8 grid, attention products;
and how many layers the quantizer makes INT8 (what the float budget is a share of).

Pure Python over an :class:`OpGraph` (op kinds, tensor indices and names); :func:`edgeopt.converters.tf_tflite.op_graph`
parses one from TFLite bytes, since TensorFlow is imported only there.
"""
from __future__ import annotations


# Ops that are a layer of their own (weights): never inside a normalization block, and INT8 on every route.
_WEIGHTED = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL", "TRANSPOSE_CONV", "CONV_3D"}
_BLOCK_MAX_OPS = 40          # a block spans at most this many ops (LayerNorm's is ~10, pseudo-Erf GELU's ~25)
_ROOTS = {"RSQRT", "SQRT", "DIV", "POW"}   # a LayerNorm divides by the standard deviation


class OpGraph:
    """The main subgraph of a TFLite model as op kinds, tensor indices and names (no interpreter): ``kinds`` (one
    builtin op name per op, in execution order), ``ins`` and ``outs`` (each op's tensor indices), ``names`` (each
    tensor's name), ``const`` (tensors with data), ``calibrated`` (tensors with calibration statistics) and
    ``graph_outputs`` (the subgraph's output tensors); where known, ``shapes`` (each tensor's) and
    ``output_order`` (the output tensors in the model's output order)."""

    def __init__(self, kinds: list[str], ins: list[list[int]], outs: list[list[int]], names: list[str],
                 const: set[int], calibrated: set[int], graph_outputs: set[int], shapes: list | None = None,
                 output_order: list[int] | None = None):
        self.kinds, self.ins, self.outs, self.names = kinds, ins, outs, names
        self.const, self.calibrated, self.graph_outputs = const, calibrated, graph_outputs
        self.shapes, self.output_order = shapes, output_order
        self.consumers: dict[int, list[int]] = {}
        for k, op_ins in enumerate(self.ins):
            for i in op_ins:
                self.consumers.setdefault(i, []).append(k)

    def region(self, first: int, seeds: set, start=(), complete=lambda kinds: True) -> tuple[list[int], int] | None:
        """Ops from op ``first`` on (execution order) that read a tensor of the region (``seeds`` or a region op's
        output), the ops in ``start`` included, up to where the region is ``complete`` (a test of its op kinds)
        and its live tensors (those read outside it, or graph outputs) are one op's single output: (op indices,
        that output), or None when that does not happen within _BLOCK_MAX_OPS ops or a weighted layer is reached."""
        live, inside = set(seeds), []
        for k in range(first, len(self.kinds)):
            if k not in start and not live.intersection(self.ins[k]):
                continue
            if self.kinds[k] in _WEIGHTED or len(inside) >= _BLOCK_MAX_OPS:
                return None
            inside.append(k)
            live.update(self.outs[k])
            done = set(inside)
            frontier = {t for t in live if t in self.graph_outputs
                        or any(c not in done for c in self.consumers.get(t, ()))}
            if (len(inside) > 1 and len(self.outs[k]) == 1 and frontier == {self.outs[k][0]}
                    and complete([self.kinds[o] for o in inside])):
                return inside, self.outs[k][0]
        return None

    def affine_tail(self, ops: list[int], out: int) -> tuple[list[int], int]:
        """``ops`` extended by the per-channel scale and shift after them (MUL/ADD/SUB with constants: LayerNorm's
        gamma and beta), so the block hands one tensor to the next layer."""
        while out not in self.graph_outputs and len(self.consumers.get(out, ())) == 1:
            c = self.consumers[out][0]
            if self.kinds[c] not in ("MUL", "ADD", "SUB") or any(i != out and i not in self.const for i in self.ins[c]):
                break
            ops, out = ops + [c], self.outs[c][0]
        return ops, out


_REDUCTIONS = ("MEAN", "SUM")   # a LayerNorm's mean and variance: MEANs, or SUMs times 1/n (JAX's E[x^2] - E[x]^2)


def _is_layernorm(kinds: list[str]) -> bool:
    """A region that holds a LayerNorm: the mean's and the variance's reductions and the division by the
    variance's square root."""
    return sum(kinds.count(r) for r in _REDUCTIONS) >= 2 and bool(_ROOTS.intersection(kinds))


def _is_gelu(kinds: list[str]) -> bool:
    """A region from a tensor that holds a GELU: Erf's EXP or the approximation's TANH, ending in the product
    with its input (Swish, x * sigmoid(x), has neither)."""
    return kinds[-1] == "MUL" and bool({"EXP", "TANH"}.intersection(kinds)) and not {"MEAN", "SOFTMAX"} & set(kinds)


def norm_blocks(g: OpGraph) -> list[dict]:
    """The normalization blocks of a (calibrated float or INT8) TFLite model, recognised by structure:

    - ``layernorm``: from a MEAN, the ops until the paths reconverge, with a second MEAN (the variance) and a
      square root or division among them (mean -> subtract -> square -> mean -> add eps -> rsqrt/sqrt ->
      mul/div), then gamma and beta; or from the normalized tensor, every op reading it and the ops after them
      until they reconverge, with two MEAN or SUM reductions and a square root among them (JAX's
      E[x^2] - E[x]^2 variance);
    - ``softmax``: a SOFTMAX (or LOG_SOFTMAX) op;
    - ``gelu``: a GELU op, or the ops from a tensor all of whose readers join again in a MUL, with an EXP or
      TANH among them (x * (1 + erf(x / sqrt 2)) / 2 with onnx2tf's pseudo-Erf, or the tanh approximation).

    Returns [{"kind", "ops": [op kinds], "tensors": [output tensor names], "output": the block's output}] in
    execution order; no op is in two blocks."""
    used: set[int] = set()
    found = []

    def add(kind, ops, out):
        if used.intersection(ops):
            return
        used.update(ops)
        ops = sorted(ops)
        found.append({"kind": kind, "ops": [g.kinds[k] for k in ops],
                      "tensors": [g.names[t] for k in ops for t in g.outs[k]], "output": g.names[out], "_at": ops[0]})

    for k, kind in enumerate(g.kinds):
        if k in used:
            continue
        if kind in ("SOFTMAX", "LOG_SOFTMAX"):
            add("softmax", [k], g.outs[k][0])
        elif kind == "GELU":
            add("gelu", [k], g.outs[k][0])
        elif kind == "MEAN":
            got = g.region(k, set(g.outs[k]), start={k}, complete=_is_layernorm)
            if got is not None:
                add("layernorm", *g.affine_tail(*got))
        for x in g.outs[k]:
            readers = g.consumers.get(x, ())
            if len(readers) < 2 or x in g.const:
                continue
            if any(g.kinds[r] in _REDUCTIONS for r in readers):
                # a LayerNorm whose variance is not a MEAN of the centred input (magika's, from JAX: SUM(x * x)
                # / n - mean^2): from the normalized tensor, every reader of it inside
                got = g.region(min(readers), {x}, complete=_is_layernorm)
                if got is not None:
                    add("layernorm", *g.affine_tail(*got))
                    continue
            got = g.region(min(readers), {x}, complete=_is_gelu)
            if got is not None:
                add("gelu", *g.affine_tail(*got))
    found.sort(key=lambda b: b.pop("_at"))
    return found


# INT8 kernels whose output grid is fixed whatever the calibration saw: LOGISTIC's step is 1/256, TANH's 1/128
_FIXED_GRID = ("LOGISTIC", "TANH")
# ops that only move values: an output activation reaches the model's output through them unchanged
_MOVES = ("RESHAPE", "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS", "CONCATENATION")


def output_activations(g: OpGraph) -> list[dict]:
    """The LOGISTIC and TANH ops of a TFLite model whose result is a model output (directly or through ops that
    only move values: RESHAPE, TRANSPOSE, ..., CONCATENATION), as blocks of kind ``output`` (the activation and
    those ops), in execution order. INT8 writes such an output on its kernel's fixed grid: a detector's score map
    on crops with nothing to find (scores mostly under 0.01) rounded to steps of 1/256 comes no closer to FP32
    than 7 dB SQNR (the PP layout detector), however well the network before it is quantized; in float, the
    activation reads its INT8 input, whose grid follows the logits' calibrated range. A CONCATENATION joining
    such scores with other values (YOLOv8's output0: box coordinates up to 320 beside class scores in 0-1) has
    one INT8 scale for all of them, the largest's: in float, each input keeps its own grid."""
    found = []
    for k, kind in enumerate(g.kinds):
        if kind not in _FIXED_GRID or len(g.outs[k]) != 1:
            continue
        ops, out = [k], g.outs[k][0]
        while out not in g.graph_outputs:
            readers = g.consumers.get(out, ())
            # (a crafted flatbuffer's ops may read their own outputs in a loop: an op met twice ends the walk)
            if (len(readers) != 1 or g.kinds[readers[0]] not in _MOVES or len(g.outs[readers[0]]) != 1
                    or readers[0] in ops):
                break
            ops.append(readers[0])
            out = g.outs[readers[0]][0]
        if out in g.graph_outputs:
            ops = sorted(ops + _moves_into_concats(g, ops))
            found.append({"kind": "output", "ops": [g.kinds[o] for o in ops],
                          "tensors": [g.names[t] for o in ops for t in g.outs[o]], "output": g.names[out]})
    return found


def _moves_into_concats(g: OpGraph, ops: list[int]) -> list[int]:
    """The ops that only move values (RESHAPE, TRANSPOSE, ...) into the other inputs of the CONCATENATIONs among
    ``ops``, back to the op that computes them: in float the concatenation makes them float too (the converter
    dequantizes where they start, not where they end), so they belong to its block."""
    made = {t: k for k, outs in enumerate(g.outs) for t in outs}
    more: list[int] = []
    for c in ops:
        if g.kinds[c] != "CONCATENATION":
            continue
        for t in g.ins[c]:
            k = made.get(t)
            while (k is not None and k not in ops and k not in more and g.kinds[k] in _MOVES
                   and g.kinds[k] != "CONCATENATION" and len(g.outs[k]) == 1
                   and len(g.consumers.get(g.outs[k][0], ())) == 1):
                more.append(k)
                k = made.get(g.ins[k][0]) if g.ins[k] else None
    return more


def output_concats(g: OpGraph) -> dict:
    """{output position (in ``g.output_order``): (axis, [end of each input along it])} of the model outputs a
    CONCATENATION makes, from the tensors' shapes (empty without shapes or an output order): such an output is
    judged part by part where its parts are uneven (edgeopt.conversion.accuracy.uneven_parts)."""
    if not g.shapes or not g.output_order:
        return {}
    made = {t: k for k, outs in enumerate(g.outs) for t in outs}
    res = {}
    for pos, t in enumerate(g.output_order):
        k = made.get(t)
        final = t   # the output tensor; a TRANSPOSE after the CONCATENATION moves its axis (found by its size)
        if k is not None and g.kinds[k] == "TRANSPOSE" and g.ins[k] and made.get(g.ins[k][0]) is not None:
            t = g.ins[k][0]
            k = made.get(t)
        if k is None or g.kinds[k] != "CONCATENATION" or len(g.ins[k]) < 2:
            continue
        if any(not 0 <= i < len(g.shapes) for i in [t, final] + g.ins[k]):   # a crafted file's indices
            continue
        out, shapes = list(g.shapes[t]), [list(g.shapes[i]) for i in g.ins[k]]
        if any(len(s) != len(out) for s in shapes):
            continue
        axes = [a for a in range(len(out)) if sum(s[a] for s in shapes) == out[a]
                and all(s[b] == out[b] for s in shapes for b in range(len(out)) if b != a)]
        if len(axes) == 1:
            ends, at = [], 0
            for s in shapes:
                at += s[axes[0]]
                ends.append(int(at))
            axis = axes[0]
            if final != t:   # where the transposed output has that extent, if only one axis has it
                where = [a for a, d in enumerate(g.shapes[final]) if d == out[axis]]
                if len(where) != 1 or sorted(g.shapes[final]) != sorted(out):
                    continue
                axis = where[0]
            res[pos] = (axis, ends)
    return res


def product_sums(g: OpGraph) -> list[dict]:
    """Sums of two elementwise products, as blocks of kind ``product_sum``: each ADD of two MUL outputs, with those
    MULs and the TANHs reading the sum, joined into one block where a product reads an earlier sum (an unrolled
    LSTM's cell state, c = f * c_prev + i * g, over its time steps), in execution order. Such a sum is unbounded
    and spans a wide range: the cell state (+-80 in Silero VAD), an STFT's power re^2 + im^2; one INT8 scale for
    it rounds most of its values coarsely. In float, the weights and gates around it stay INT8. (The QDQ route
    leaves such an Add without Q/DQ: edgeopt.converters.onnx_qdq._unquantized_adds.)"""
    made = {t: k for k, outs in enumerate(g.outs) for t in outs}

    def product(t):
        k = made.get(t)
        return k if k is not None and g.kinds[k] == "MUL" and t not in g.const else None

    seeds = [k for k, kind in enumerate(g.kinds) if kind == "ADD" and len(g.ins[k]) == 2 and len(g.outs[k]) == 1
             and all(product(t) is not None for t in g.ins[k])]
    parent = {k: k for k in seeds}

    def root(k):
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    ops: dict[int, set] = {}
    for a in seeds:
        ops[a] = {a} | {product(t) for t in g.ins[a]} | {r for r in g.consumers.get(g.outs[a][0], ())
                                                          if g.kinds[r] == "TANH"}
    by_sum = {g.outs[a][0]: a for a in seeds}
    for a in seeds:   # linked where this step's product reads an earlier step's sum
        for m in (product(t) for t in g.ins[a]):
            for t in g.ins[m]:
                if t in by_sum:
                    parent[root(a)] = root(by_sum[t])
    chains: dict[int, list[int]] = {}
    for a in seeds:
        chains.setdefault(root(a), []).append(a)
    found = []
    for members in chains.values():
        inside = sorted(set().union(*(ops[a] for a in members)))
        found.append({"kind": "product_sum", "ops": [g.kinds[k] for k in inside],
                      "tensors": [g.names[t] for k in inside for t in g.outs[k]],
                      "output": g.names[g.outs[max(members)][0]], "_at": inside[0]})
    found.sort(key=lambda b: b.pop("_at"))
    return found


def float_block_candidates(g: OpGraph) -> list[dict]:
    """What a TFLite target that runs float ops beside INT8 ones (rpi) may keep in float as blocks, each counted
    as one float layer: a transformer's normalization blocks (:func:`norm_blocks`), the activations on a fixed
    INT8 grid that make a model output (:func:`output_activations`) and sums of two products such as an unrolled
    LSTM's cell state (:func:`product_sums`), those not inside a normalization block (a Keras LayerNorm ends in
    x * scale + beta - mean * scale)."""
    blocks = norm_blocks(g) + output_activations(g)
    taken = {t for b in blocks for t in b["tensors"]}
    return blocks + [b for b in product_sums(g) if not taken.intersection(b["tensors"])]


def attention_matmuls(g: OpGraph) -> list[dict]:
    """The BATCH_MATMULs of a TFLite model whose two inputs are both activations (attention's Q K^T and P V), as
    blocks of kind ``attention`` (one op each), in execution order: per-tensor INT8 on both sides of a product of
    activations is where a transformer's INT8 graph can lose most (PP-OCRv4's SVTR: output cosine 0.907 all-INT8,
    0.974 with its 4 attention products in float)."""
    return [{"kind": "attention", "ops": ["BATCH_MATMUL"], "tensors": [g.names[t] for t in g.outs[k]],
             "output": g.names[g.outs[k][0]]}
            for k, kind in enumerate(g.kinds)
            if kind == "BATCH_MATMUL" and len(g.ins[k]) >= 2 and not g.const.intersection(g.ins[k][:2])]


def quantizable_layers(g: OpGraph) -> int:
    """Ops of a calibrated float model (``g``) whose output has calibration statistics (what the quantizer makes
    INT8): the count the float budget is a percentage of."""
    return sum(1 for k, kind in enumerate(g.kinds) if kind not in ("QUANTIZE", "DEQUANTIZE")
               and g.outs[k] and g.outs[k][0] in g.calibrated)
