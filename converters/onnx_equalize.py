"""Cross-layer equalization (CLE; Nagel et al. 2019, "Data-Free Quantization") of a float ONNX graph.

For two layers in a row, W1 -> ops -> W2 (Conv -> Conv, or Gemm/MatMul -> Gemm/MatMul), where the ops in
between are positively homogeneous per channel (f(x / s) = f(x) / s for s > 0: Relu, LeakyRelu, Identity,
zero Pad, MaxPool/AveragePool), output channel i of W1 and its bias are divided by s_i and the matching input
channel of W2 multiplied by s_i, with s_i = sqrt(r1_i * r2_i) / r2_i (r = per-channel max |w|), so both
layers end up with the same range on channel i. The pass iterates over every pair until the scales settle;
a layer that is W2 of one pair and W1 of the next (the depthwise conv of a depthwise-separable block) is
balanced from both sides. Groups and depthwise multipliers map input channel i to its rows of W2.

Clip (ReLU6) is not homogeneous: clip(y / s, 0, 6) != clip(y, 0, 6) / s. Replacing ReLU6 by ReLU (what
some tools do) changes the float model that edgeopt checks INT8 against (on EfficientNet-Lite0: top-1
agreement with the original 0.45), so it is not offered. ``clip="exact"`` rewrites a scaled Clip(lo, hi) as
Relu (or Max with lo / s) and Min with a per-channel bound hi / s_i: the same function, exactly.
``clip="skip"`` (the default) leaves pairs through a bounded Clip alone.

Measured (EfficientNet-Lite0, 100 calibration crops, 200 held-out crops, INT8 vs the original FP32; see
benchmarks/bench_equalize.py): with per-channel weights, as both routes
quantize, CLE does not help. "exact" equalizes 34 pairs (32 depthwise) and costs 10.6 dB SQNR on the QDQ
route and 3.8 dB on TFLite: the per-channel clip bounds hi / s_i spread over a factor ~24 per layer, and
the per-tensor activation scale of that tensor then wastes most of its levels, where ReLU6 had made every
channel's range about equal (same with mean_minmax ranges: -9.7 / -3.5 dB). "skip" touches 2 pairs and
gains nothing (-0.25 dB QDQ, -0.2 dB TFLite). CLE pays off only with
per-tensor weights (QDQ: +1.25 dB, top-1 0.63 -> 0.79), still far below per-channel without it. Hence
edgeopt does not run it by default; the function is here, tested, for ReLU networks and per-tensor recipes.

What does run by default is :func:`equalize_depthwise_inputs`: the same rescaling of a conv -> ReLU(6) ->
depthwise pair, with the scales chosen from the *activations* on the calibration data (each channel of the
depthwise input brought to about the same range) rather than from the weights, and ReLU6 kept as it is.

The float model's outputs are unchanged up to float rounding. Only onnx and numpy are used; onnx is
imported inside the functions (edgeopt imports converters lazily).
"""
from __future__ import annotations

import numpy as np

from edgeopt.converters.onnx_fold import attribute
from edgeopt.converters.onnx_graph import Graph, clip_bounds, spatial_pad

__all__ = ["equalize", "equalize_file", "equalize_depthwise_inputs", "CLIP_MODES"]

CLIP_MODES = ("skip", "exact")
# Activations with f(x / s) == f(x) / s for every s > 0.
_HOMOGENEOUS = {"Relu", "LeakyRelu"}
# Per-channel ops that commute with a positive per-channel scale (between convs: channels on axis 1).
_POOLS = {"MaxPool", "AveragePool"}
_MIN_RANGE = 1e-12  # a channel with (almost) all-zero weights on either side is left unscaled


_LAYERS = ("Conv", "Gemm", "MatMul")


def _layer_weights(graph: Graph, node, weight_users: dict):
    """(weight name, bias name or None) of a Conv, Gemm (A not transposed) or MatMul whose weights (and
    bias) are float32 initializers read by it alone; None for any other node."""
    if node.op_type not in _LAYERS or len(node.input) < 2 or node.input[1] not in graph.inits:
        return None
    if node.op_type == "Gemm" and attribute(node, "transA", 0):
        return None
    w = node.input[1]
    b = node.input[2] if node.op_type != "MatMul" and len(node.input) > 2 and node.input[2] else None
    if weight_users.get(w, 0) != 1 or (b is not None and (b not in graph.inits or weight_users.get(b, 0) != 1)):
        return None
    if graph.inits[w].data_type != 1 or (b is not None and graph.inits[b].data_type != 1):  # float32 only
        return None
    if node.op_type != "Conv" and len(graph.inits[w].dims) != 2:
        return None
    if b is not None and int(np.prod(graph.inits[b].dims)) != _out_channels(node, graph.inits[w].dims):
        return None  # a Gemm C that broadcasts over rows, or a scalar: not per output channel
    return w, b


def _out_axis(node) -> int:
    """Axis of the weight that indexes output channels (Conv: 0; Gemm: 0 when B is transposed; MatMul: 1)."""
    if node.op_type == "Conv" or (node.op_type == "Gemm" and attribute(node, "transB", 0)):
        return 0
    return 1


def _out_channels(node, dims) -> int:
    return int(dims[_out_axis(node)])


def _in_channel_index(node, w2_shape, channels: int):
    """For each input channel i of ``node``, the index of the weights that read it. Conv: group
    g = i // (C/g) owns output rows g*M/g .. (g+1)*M/g and reads channel i at column i % (C/g) (depthwise:
    row block i, column 0). Gemm/MatMul: row i of B (column i when B is transposed)."""
    if node.op_type != "Conv":
        return [(slice(None), i) if _out_axis(node) == 0 else (i,) for i in range(channels)]
    groups = attribute(node, "group", 1)
    per_group_in = channels // groups
    per_group_out = w2_shape[0] // groups
    index = []
    for i in range(channels):
        g = i // per_group_in
        index.append((slice(g * per_group_out, (g + 1) * per_group_out), i % per_group_in))
    return index


def _channels_match(node, w2_dims, channels: int) -> bool:
    if node.op_type != "Conv":
        return len(w2_dims) == 2 and w2_dims[1 - _out_axis(node)] == channels
    groups = attribute(node, "group", 1)
    return len(w2_dims) >= 2 and w2_dims[1] * groups == channels and w2_dims[0] % groups == 0


class _Pair:
    __slots__ = ("first", "second", "clips", "path")

    def __init__(self, first, second, clips, path):
        self.first, self.second, self.clips, self.path = first, second, clips, path


def _weight_users(graph: Graph) -> dict[str, int]:
    """{initializer name: how many node inputs read it} (a weight read twice cannot be rescaled for one reader)."""
    users: dict[str, int] = {}
    for node in graph.model.graph.node:
        for i in node.input:
            if i in graph.inits:
                users[i] = users.get(i, 0) + 1
    return users


def _find_pairs(graph: Graph, clip: str, skipped: dict):
    """Conv -> (homogeneous ops) -> Conv and Gemm/MatMul -> (homogeneous ops) -> Gemm/MatMul pairs whose
    intermediate tensors have a single reader."""
    weight_users = _weight_users(graph)
    pairs = []

    def skip(why):
        skipped[why] = skipped.get(why, 0) + 1

    for node in graph.model.graph.node:
        if _layer_weights(graph, node, weight_users) is None:
            continue
        conv = node.op_type == "Conv"
        tensor, clips, path, end = node.output[0], [], [], None
        while True:
            nxt = graph.single_consumer(tensor)
            if nxt is None:
                break
            if nxt.op_type in _LAYERS:
                # channels stay on axis 1 only from conv to conv, and on the last axis from dense to dense
                if nxt.input[0] == tensor and (nxt.op_type == "Conv") == conv:
                    end = nxt
                break
            if nxt.input[0] != tensor:
                break
            if nxt.op_type in _HOMOGENEOUS or nxt.op_type == "Identity":
                pass
            elif conv and nxt.op_type in _POOLS and len([o for o in nxt.output if o]) == 1:
                pass
            elif conv and nxt.op_type == "Pad":
                if not spatial_pad(graph, nxt, len(graph.inits[node.input[1]].dims)):
                    skip("pad that mixes channels or pads with a non-zero value")
                    break
            elif nxt.op_type == "Clip":
                bounds = clip_bounds(graph, nxt)
                if bounds is False:
                    skip("clip with non-constant bounds")
                    break
                lo, hi = bounds
                bounded = (lo is not None and lo != 0) or (hi is not None and np.isfinite(hi))
                if bounded and clip == "skip":
                    skip("clip with a finite bound (clip='skip')")
                    break
                if (lo is not None and lo > 0) or (hi is not None and hi < 0):
                    skip("clip whose range excludes zero")
                    break
                if bounded:  # Clip(0, inf) is a Relu: homogeneous as it is
                    clips.append(nxt)
            else:
                break
            path.append(nxt)
            tensor = nxt.output[0]
        if end is None:
            continue
        if _layer_weights(graph, end, weight_users) is None:
            skip("second layer with shared or non-float weights")
            continue
        channels = _out_channels(node, graph.inits[node.input[1]].dims)
        if not _channels_match(end, graph.inits[end.input[1]].dims, channels):
            skip("channel counts do not match")
            continue
        pairs.append(_Pair(node, end, clips, path))
    return pairs


def equalize(model, clip: str = "skip", iterations: int = 50, tolerance: float = 1e-4):
    """(equalized copy of ``model``, report) after cross-layer equalization of its Conv -> Conv and
    Gemm/MatMul -> Gemm/MatMul pairs.

    ``clip``: "skip" (default) leaves pairs through a bounded Clip (ReLU6) unscaled; "exact" scales them
    too and rewrites each such Clip as Relu/Max + a per-channel Min (the same float function). The report counts pairs, depthwise pairs,
    rewritten clips, skipped patterns and iterations, and gives the mean range spread
    (max / min per-channel weight range of each conv) before and after.
    """
    import onnx
    from onnx import numpy_helper
    if clip not in CLIP_MODES:
        raise ValueError(f"clip must be one of {CLIP_MODES}, not {clip!r}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = Graph(out)
    skipped: dict[str, int] = {}
    pairs = _find_pairs(graph, clip, skipped)
    weights = {}  # name -> float64 array, written back at the end
    for p in pairs:
        for n in (p.first, p.second):
            for name in n.input[1:3]:
                if name and name not in weights:
                    weights[name] = numpy_helper.to_array(graph.inits[name]).astype(np.float64)
    spread_before = _spread(weights, pairs)
    # per-channel bound scale of each rewritten clip: total factor applied to its input channels
    channels = {id(p): _out_channels(p.first, weights[p.first.input[1]].shape) for p in pairs}
    clip_scale = {id(c): np.ones(channels[id(p)]) for p in pairs for c in p.clips}
    index = {id(p): _in_channel_index(p.second, weights[p.second.input[1]].shape, channels[id(p)]) for p in pairs}
    done = 0
    for done in range(1, iterations + 1):
        worst = 0.0
        for p in pairs:
            w1 = weights[p.first.input[1]]
            b1 = weights.get(p.first.input[2]) if len(p.first.input) > 2 and p.first.input[2] else None
            w2 = weights[p.second.input[1]]
            r1 = _out_ranges(p.first, w1)
            r2 = np.array([np.abs(w2[ix]).max() for ix in index[id(p)]])
            ok = (r1 > _MIN_RANGE) & (r2 > _MIN_RANGE)
            s = np.ones_like(r1)
            s[ok] = np.sqrt(r1[ok] / r2[ok])  # = sqrt(r1 * r2) / r2
            worst = max(worst, float(np.max(np.abs(np.log(s)))))
            shape = [1] * w1.ndim
            shape[_out_axis(p.first)] = -1
            w1 /= s.reshape(shape)
            if b1 is not None:
                b1 /= s.reshape(b1.shape)
            for i, ix in enumerate(index[id(p)]):
                w2[ix] *= s[i]
            for c in p.clips:
                clip_scale[id(c)] /= s
        if worst < tolerance:
            break
    for name, arr in weights.items():
        graph.inits[name].CopyFrom(numpy_helper.from_array(arr.astype(np.float32), name))
    rewritten = _rewrite_clips(graph, pairs, clip_scale)
    report = {"pairs": len(pairs),
              "depthwise_pairs": sum(1 for p in pairs if attribute(p.second, "group", 1) > 1
                                     or attribute(p.first, "group", 1) > 1),
              "clips_rewritten": rewritten, "clip_mode": clip, "iterations": done,
              "skipped": skipped, "range_spread_before": spread_before,
              "range_spread_after": _spread(weights, pairs)}
    return out, report


def _out_ranges(node, w: np.ndarray) -> np.ndarray:
    """max |w| of each output channel of a layer."""
    return np.abs(np.moveaxis(w, _out_axis(node), 0).reshape(_out_channels(node, w.shape), -1)).max(1)


def _spread(weights: dict, pairs) -> float | None:
    """Mean over the equalized convs of log10(max / min) of their per-output-channel weight ranges."""
    vals = []
    layers = {p.first.input[1]: p.first for p in pairs}
    layers.update({p.second.input[1]: p.second for p in pairs})
    for name, node in layers.items():
        r = _out_ranges(node, weights[name])
        r = r[r > _MIN_RANGE]
        if len(r):
            vals.append(np.log10(r.max() / r.min()))
    return round(float(np.mean(vals)), 3) if vals else None


def _rewrite_clips(graph: Graph, pairs, clip_scale: dict) -> int:
    """Replace each scaled Clip(lo, hi) by Relu (lo == 0) or Max(x, lo * f) and Min(x, hi * f), with f the
    per-channel factor its input was scaled by: clip(y * f, lo * f, hi * f) == clip(y, lo, hi) * f.
    The node list is rebuilt once at the end (no edits while holding references into it)."""
    import onnx
    from onnx import helper, numpy_helper
    replace, drop = {}, set()
    for p in pairs:
        rank = len(graph.inits[p.first.input[1]].dims)
        for c in p.clips:
            f = clip_scale[id(c)]
            if np.all(f == 1.0):
                continue
            lo, hi = clip_bounds(graph, c)
            # conv: channels on axis 1 of an N-C-spatial tensor; dense: on the last axis (broadcasts)
            shape = (1, len(f)) + (1,) * (rank - 2) if p.first.op_type == "Conv" else (len(f),)
            base, cur, new = (c.name or c.output[0]) + "_cle", c.input[0], []
            if lo is not None and np.isfinite(lo):
                if lo == 0:
                    new.append(helper.make_node("Relu", [cur], [base + "_relu"], name=base + "_relu"))
                else:
                    graph.model.graph.initializer.append(numpy_helper.from_array(
                        (lo * f).reshape(shape).astype(np.float32), base + "_lo"))
                    new.append(helper.make_node("Max", [cur, base + "_lo"], [base + "_max"], name=base + "_max"))
                cur = new[-1].output[0]
            if hi is not None and np.isfinite(hi):
                graph.model.graph.initializer.append(numpy_helper.from_array(
                    (hi * f).reshape(shape).astype(np.float32), base + "_hi"))
                new.append(helper.make_node("Min", [cur, base + "_hi"], [base + "_min"], name=base + "_min"))
            new[-1].output[0] = c.output[0]  # a rewritten clip is bounded: at least one node
            replace[id(c)] = new
            drop |= _unused_bounds(graph, c)
    if not replace:
        return 0
    nodes = []
    for n in graph.model.graph.node:
        if id(n) in replace:
            nodes += replace[id(n)]
        elif not (n.op_type == "Constant" and n.output[0] in drop):
            nodes.append(n)
    graph.model.graph.ClearField("node")
    graph.model.graph.node.extend(nodes)
    inits = [t for t in graph.model.graph.initializer if t.name not in drop]
    graph.model.graph.ClearField("initializer")
    graph.model.graph.initializer.extend(inits)
    onnx.checker.check_model(graph.model)
    return len(replace)


def _unused_bounds(graph: Graph, clip) -> set:
    """Names of the Clip's bound tensors (Constant node outputs or initializers) that nothing else reads."""
    return {name for name in clip.input[1:] if name and name not in graph.graph_outputs
            and all(u is clip for u in graph.consumers.get(name, []))
            and (name in graph.inits or getattr(graph.producer.get(name), "op_type", None) == "Constant")}


def equalize_file(src: str, dst: str, **options) -> dict:
    """Equalize the ONNX model at ``src`` and save it to ``dst``; the report of :func:`equalize`."""
    import onnx
    model, report = equalize(onnx.load(src), **options)
    onnx.save(model, dst)
    return report


def equalize_depthwise_inputs(model, feeds: list[dict], margin: float, floor: float) -> dict:
    """Equalize the channel ranges of each depthwise convolution's input from data, in place; returns what it did.

    A depthwise input (Conv -> Relu or Clip(0, hi) -> zero Pad -> depthwise Conv: MobileNet's inverted
    residuals) is quantized with one scale for all its channels, and many channels use a fraction of it
    (MobileNetV2: half of the channels under 0.35-0.5 of the tensor's range; TensorRT and TFLite take one scale
    per activation tensor, NNCF's per-channel scales there run on neither). Channel c of the first Conv (weights,
    bias) is divided by s_c and the depthwise filter c multiplied by it, so every channel reaches about the same
    range; the depthwise weights are quantized per channel, so they lose nothing. ``feeds``: calibration inputs,
    on which each channel's maximum ``r_c`` is measured. Through a Relu, ``s_c = r_c / max(r)`` (exact: Relu is
    homogeneous). Through Clip(0, hi), ``s_c = min(1, margin * r_c / hi)``: the Clip stays, so channel c is now
    clipped at ``min(hi, margin * r_c)``: the same function wherever a channel stays under ``margin`` times its
    calibration maximum (every calibration sample), where the INT8 model's own range clips it anyway for most
    channels. ``floor``: the smallest ``s_c`` (a channel that is almost always zero is not blown up).

    Gated activations (hard-swish ``y * relu6(y + 3) / 6``, as a HardSwish node or spelled out; swish
    ``y * sigmoid(y)``; any ``y * g(y)`` with an elementwise gate ``g``) are not homogeneous either; they are
    rescaled exactly instead (:class:`_Gated`): y is scaled by ``1 / s`` where it is made (Conv or
    BatchNormalization), the gate reads ``y * s`` (one Mul inserted), so ``(y / s) * g(y) = z / s``, and
    ``s_c = r_c / max(r)`` as through a Relu. Only the gate's input keeps the original spread, and it feeds a
    function bounded in [0, 1] (PP-LCNet's 37 hard-swish depthwise inputs span a factor ~300 between channels)."""
    from edgeopt.converters import onnx_io
    graph = Graph(model)
    skipped: dict = {}
    pairs = []
    for p in _find_pairs(graph, "exact", skipped):
        w2 = graph.inits[p.second.input[1]]
        channels = _out_channels(p.first, graph.inits[p.first.input[1]].dims)
        if p.first.op_type != "Conv" or attribute(p.second, "group", 1) != channels or list(w2.dims[:2]) != [channels, 1]:
            continue   # not a depthwise convolution with multiplier 1
        bounds = [clip_bounds(graph, c) for c in p.clips]
        if len(bounds) > 1 or any(b is False or b[0] != 0 or b[1] is None or b[1] <= 0 for b in bounds):
            continue   # one Clip(0, hi) at most
        if not any(n.op_type in ("Relu", "Clip") for n in p.path):
            continue   # no rectifier: the ranges are signed and symmetric INT8 already fits them
        pairs.append((p, bounds[0][1] if bounds else None))
    gated = _gated_pairs(graph)
    info = {"pairs": 0, "of": len(pairs) + len(gated), "margin": margin, "floor": floor}
    if gated:
        info["gated"] = 0
    if not (pairs or gated) or not feeds:
        return info
    tensors = [p.second.input[0] for p, _ in pairs] + [g.tensor for g in gated]
    sess = onnx_io.tensor_session(model, tensors)
    top = {t: None for t in tensors}
    for feed in feeds:
        for t, v in zip(tensors, sess.run(tensors, feed)):
            if v.ndim < 2:
                break
            m = np.abs(v).reshape(v.shape[0], v.shape[1], -1).max(axis=(0, 2)).astype(np.float64)
            top[t] = m if top[t] is None else np.maximum(top[t], m)
    spread = []
    for p, hi in pairs:
        r = top[p.second.input[0]]
        if r is None or not np.isfinite(r).all() or r.max() <= 0:
            continue   # a crafted model can overflow to inf (or NaN): its scales would be NaN; leave the pair
        s = np.clip(margin * r / hi, floor, 1.0) if hi is not None else np.maximum(r / r.max(), floor)
        scaled = [p.first.input[1]] + ([p.first.input[2]] if len(p.first.input) > 2 and p.first.input[2] else [])
        if _rescale(graph, scaled, [p.second.input[1]], s):
            info["pairs"] += 1
            spread.append(float(np.median(s)))
    edits = {}
    for g in gated:
        r = top[g.tensor]
        if r is None or not np.isfinite(r).all() or r.max() <= 0:
            continue
        s = np.maximum(r / r.max(), floor)
        if not _rescale(graph, g.scaled_inputs(), [d.input[1] for d in g.depthwise], s):
            continue
        edits[id(g.act if g.act is not None else g.entry)] = g.rewrite(graph, s)
        info["pairs"] += 1
        info["gated"] += 1
        spread.append(float(np.median(s)))
    if edits:
        nodes = []
        for n in graph.model.graph.node:
            nodes += edits.get(id(n), [n])
        graph.model.graph.ClearField("node")
        graph.model.graph.node.extend(nodes)
    if spread:
        info["median_scale"] = round(float(np.median(spread)), 3)
    return info


def _rescale(graph: Graph, first: list[str], depthwise: list[str], s: np.ndarray) -> bool:
    """Divide the per-channel initializers ``first`` (a Conv's weights and bias, or a BatchNormalization's scale
    and bias) by ``s`` and multiply the depthwise filters ``depthwise`` by it; False (nothing changed) if a shape
    disagrees."""
    from onnx import numpy_helper
    arrays = [numpy_helper.to_array(graph.inits[n]).astype(np.float64) for n in first]
    filters = [numpy_helper.to_array(graph.inits[n]).astype(np.float64) for n in depthwise]
    if any(a.ndim < 1 or a.shape[0] != len(s) for a in arrays + filters):
        return False
    for name, a in zip(first, arrays):
        graph.inits[name].CopyFrom(numpy_helper.from_array(
            (a / s.reshape((-1,) + (1,) * (a.ndim - 1))).astype(np.float32), name))
    for name, w in zip(depthwise, filters):
        graph.inits[name].CopyFrom(numpy_helper.from_array(
            (w * s.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32), name))
    return True


# Elementwise ops a gate g(y) may be made of (the other inputs scalar constants): hard-swish, swish, their spellings.
_GATE_OPS = {"Sigmoid", "HardSigmoid", "Tanh", "Relu", "Clip", "Add", "Sub", "Mul", "Div"}


class _Gated:
    """A gated activation ``z = y * g(y)`` (times a scalar) read by depthwise Convs alone (each directly or
    through a zero Pad), with y made by a Conv or BatchNormalization whose per-channel initializers only it
    reads. ``act``: the HardSwish node (None when spelled out); ``entry``: the gate's first node (it reads y);
    ``tensor``: z, the depthwise input."""
    __slots__ = ("maker", "y", "act", "entry", "depthwise", "tensor")

    def __init__(self, maker, y, act, entry, depthwise, tensor):
        self.maker, self.y, self.act, self.entry, self.depthwise, self.tensor = maker, y, act, entry, depthwise, tensor

    def scaled_inputs(self) -> list[str]:
        n = self.maker
        if n.op_type == "BatchNormalization":
            return [n.input[1], n.input[2]]
        return [n.input[1]] + ([n.input[2]] if len(n.input) > 2 and n.input[2] else [])

    def rewrite(self, graph: Graph, s: np.ndarray) -> list:
        """The nodes that replace ``act`` (or precede ``entry``): the gate reads y * s, the original y."""
        from onnx import helper, numpy_helper
        base = (self.act or self.entry).name or self.y
        base = f"{base}_eq"
        graph.model.graph.initializer.append(numpy_helper.from_array(
            s.reshape(1, -1, 1, 1).astype(np.float32), base + "_s"))
        scale = helper.make_node("Mul", [self.y, base + "_s"], [base + "_gate_in"], name=base + "_gate_in")
        if self.act is not None:   # HardSwish(y) = y * HardSigmoid(y) with alpha 1/6, beta 1/2
            return [scale,
                    helper.make_node("HardSigmoid", [base + "_gate_in"], [base + "_gate"], name=base + "_gate",
                                     alpha=1.0 / 6.0, beta=0.5),
                    helper.make_node("Mul", [self.y, base + "_gate"], list(self.act.output), name=self.act.name)]
        for i, name in enumerate(self.entry.input):
            if name == self.y:
                self.entry.input[i] = base + "_gate_in"
        return [scale, self.entry]


def _scalar(graph: Graph, name: str) -> bool:
    v = graph.const(name)
    return v is not None and v.size == 1


def _data_input(graph: Graph, node):
    """The one non-constant input of an elementwise node whose other inputs are scalar constants, else None
    (Sub and Div only with the data first: c - y and c / y do not scale with y)."""
    data = [i for i in node.input if i and not _scalar(graph, i)]
    if len(data) != 1 or (node.op_type in ("Sub", "Div") and node.input[0] != data[0]):
        return None
    return data[0]


def _depthwise_reader(graph: Graph, node, tensor: str, weight_users: dict):
    """``node`` if it is a depthwise Conv (multiplier 1) reading ``tensor`` with weights it alone reads, or the
    one such Conv behind a zero Pad ``node``; else None."""
    if node.op_type == "Pad" and node.input[0] == tensor and spatial_pad(graph, node, 4):
        tensor, node = node.output[0], graph.single_consumer(node.output[0])
        if node is None:
            return None
    if node.op_type != "Conv" or node.input[0] != tensor or len(node.input) < 2 or node.input[1] not in graph.inits:
        return None
    w = graph.inits[node.input[1]].dims
    if len(w) != 4 or w[1] != 1 or attribute(node, "group", 1) != w[0] or weight_users.get(node.input[1]) != 1:
        return None
    return node


def _gated_pairs(graph: Graph) -> list[_Gated]:
    """Every gated activation whose readers are all depthwise Convs with multiplier 1 (see :class:`_Gated`)."""
    weight_users = _weight_users(graph)
    found = []
    for node in graph.model.graph.node:
        if node.op_type not in ("Mul", "HardSwish"):
            continue
        gate = _gate_of(graph, node)
        if gate is None:
            continue
        y, act, entry = gate
        t = node.output[0]
        nxt = graph.single_consumer(t)
        # on through scalar Mul/Div (hard-swish's / 6), each the tensor's only reader
        while nxt is not None and nxt.op_type in ("Mul", "Div") and len(nxt.input) == 2 \
                and _data_input(graph, nxt) == t:
            t = nxt.output[0]
            nxt = graph.single_consumer(t)
        readers = graph.consumers.get(t, [])
        depthwise = [_depthwise_reader(graph, r, t, weight_users) for r in readers]
        if not readers or t in graph.graph_outputs or any(d is None for d in depthwise):
            continue
        maker = graph.producer.get(y)
        if maker is None or y in graph.graph_outputs:
            continue
        if maker.op_type == "BatchNormalization":
            params = maker.input[1:3]
        elif maker.op_type == "Conv" and maker.input[1] in graph.inits:
            params = [i for i in maker.input[1:3] if i]
        else:
            continue
        if len([o for o in maker.output if o]) != 1 or any(
                p not in graph.inits or weight_users.get(p) != 1 or graph.inits[p].data_type != 1 for p in params):
            continue
        channels = int(graph.inits[params[0]].dims[0])
        if any(int(graph.inits[d.input[1]].dims[0]) != channels for d in depthwise):
            continue
        found.append(_Gated(maker, y, act, entry, depthwise, t))
    return found


def _gate_of(graph: Graph, node):
    """(y, HardSwish node or None, gate entry node or None) when ``node`` computes ``y * g(y)``, with y read by
    that node and the gate alone; else None."""
    if node.op_type == "HardSwish":
        y = node.input[0]
        return (y, node, None) if len(graph.consumers.get(y, [])) == 1 else None
    if node.op_type != "Mul" or len(node.input) != 2 or any(_scalar(graph, i) for i in node.input):
        return None
    for y, g in (node.input, node.input[::-1]):
        t, reader = g, node
        gate = graph.producer.get(t)
        while gate is not None and gate.op_type in _GATE_OPS and graph.single_consumer(t) is reader:
            if gate.op_type == "Clip" and clip_bounds(graph, gate) is False:
                break
            data = gate.input[0] if gate.op_type in ("Sigmoid", "HardSigmoid", "Tanh", "Relu", "Clip") \
                else _data_input(graph, gate)
            if data is None:
                break
            if data == y:
                users = graph.consumers.get(y, [])
                if len(users) == 2 and {id(u) for u in users} == {id(node), id(gate)}:
                    return y, None, gate
                break
            t, reader, gate = data, gate, graph.producer.get(data)
    return None
