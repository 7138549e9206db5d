"""Center rectified activations for symmetric INT8 (TensorRT's QDQ route).

TensorRT quantizes every activation symmetrically, zero point 0: a ReLU6 output, all in [0, m], uses codes
0..127 of -127..127, one bit of the eight lost. TFLite's asymmetric INT8 has no such loss (its zero point moves
the grid onto [0, m]), which is most of why the same recipe was ~2 dB further from FP32 on the QDQ route than on
TFLite (EfficientNet-Lite0, bench_ptq).

:func:`center_rectified_inputs` moves such a tensor onto [-c, m - c] where a convolution reads it
(MobileNet's projection convs read the depthwise ReLU6 output, its depthwise convs the expansion's; detectors'
1x1 convs read Relu outputs): ``Conv A -> Clip(0, hi) -> Conv B`` becomes ``Conv A (bias - c) -> Clip(-c, hi -
c) -> Conv B (bias + c * sum of each output's weights)``, and a Relu becomes Clip(-c) (max(y - c, -c) = Relu(y) -
c). The same function exactly (B's input is x - c, and B(x - c) + c W 1 = B(x)); c is half the range that
quantizes the tensor best on the calibration data (:func:`_shift`; about m / 2 for ReLU6), and the symmetric step
halves. A convolution with padding would read its zeros as -c: its padding moves into an explicit
``Pad(value=-c)`` before it (B's own pads set to 0), or the exporter's zero Pad already there fills -c, so the
border reads x - c = -c where x read 0, exactly. The
Pad sits before the Q/DQ pair the quantizer puts on B's input, so B still reads INT8 straight from a
DequantizeLinear (the only form TensorRT runs as an INT8 convolution), and -c is code -127 of the centred
grid. Left alone: tensors read by anything else (a residual Add, a second consumer), Clips whose lower bound is
not 0, and convolutions with ``auto_pad`` SAME (their padding depends on the input size).

Only onnx and numpy are used; onnx is imported inside the functions (edgeopt imports converters lazily).
"""
from __future__ import annotations

import numpy as np

from edgeopt.converters.onnx_fold import attribute
from edgeopt.converters.onnx_graph import Graph, clip_bounds, spatial_pad

__all__ = ["center_rectified_inputs"]


def _padding(node) -> list[int] | None:
    """A Conv's explicit pads (begins then ends; [] for none), or None for auto_pad SAME_UPPER / SAME_LOWER."""
    auto = attribute(node, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto == "VALID":
        return []
    if auto != "NOTSET":
        return None
    pads = list(attribute(node, "pads", []) or [])
    return pads if any(pads) else []


KEPT_VALUES = 200_000  # values of each tensor kept over all calibration samples to choose its shift (random)
SHIFTS = 64           # candidate ranges tried, up to the calibration maximum


def _int8_error(y, step: float, lowest: int) -> float:
    """Mean squared error of ``y`` in INT8 with zero point 0, ``step`` and codes ``lowest``..127."""
    return float(np.mean((np.clip(np.round(y / step), lowest, 127) * step - y) ** 2))


def _shift(x, m: float) -> float | None:
    """The shift c for the non-negative values ``x`` (calibration maximum ``m``): centred, x - c is quantized
    on [-c, c], so c = r / 2 gives the values in [0, r] half the step of the uncentred tensor on [0, r] (codes
    0..127) and clips those above r alike; c is chosen from SHIFTS candidates up to m / 2 by that error (a
    long-tailed Relu output is best cut under its maximum). None when the error is not below the uncentred
    tensor's best, chosen the same way (a safeguard: the zeros sit exactly on -c)."""
    grid = np.linspace(m / SHIFTS, m, SHIFTS)
    plain = min(_int8_error(x, r / 127.0, 0) for r in grid)               # [0, r]: codes 0..127
    err, c = min((_int8_error(x - r / 2.0, r / 254.0, -127), r / 2.0) for r in grid)   # [-r/2, r/2]
    return c if err < plain else None


def _pairs(graph: Graph) -> list[tuple]:
    """(Conv A, Clip or Relu, Conv B, hi, B's pads, Pad): A's output read only by a Clip(0, hi) (hi None: a Relu),
    whose output only B reads as its data, or only a zero (or edge/reflect) Pad of the spatial axes that only B
    reads; A and B with constant weights (and biases, where they have them). B's own pads ([] for none) need opset
    11 for the Pad that takes them over, and are not taken where the exporter's Pad is already there."""
    found = []
    opset11 = any(o.domain in ("", "ai.onnx") and o.version >= 11 for o in graph.model.opset_import)
    for clip in graph.model.graph.node:
        if not ((clip.op_type == "Clip" and len(clip.input) >= 3) or (clip.op_type == "Relu" and opset11)):
            continue   # a Relu becomes a Clip with inputs (opset 11)
        a = graph.producer.get(clip.input[0])
        b = graph.single_consumer(clip.output[0])
        pad = None
        if b is not None and b.op_type == "Pad" and b.input[0] == clip.output[0]:
            # an exporter's own Pad before the conv (EfficientNet's "same" padding): a zero one fills -c instead
            pad, b = b, graph.single_consumer(b.output[0])
        if a is None or b is None or a.op_type != "Conv" or b.op_type != "Conv" or b.input[0] != (pad or clip).output[0]:
            continue
        if pad is not None and not (len(pad.input) > 1 and b.input[1] in graph.inits
                                    and spatial_pad(graph, pad, len(graph.inits[b.input[1]].dims))):
            continue   # (a Pad with its pads as an attribute is from before opset 11: no fill value input)
        pads = _padding(b)
        if graph.single_consumer(a.output[0]) is not clip or pads is None or (pads and (not opset11 or pad)):
            continue
        bounds = (0.0, None) if clip.op_type == "Relu" else clip_bounds(graph, clip)
        if bounds is False or bounds[0] != 0 or (bounds[1] is not None and (not np.isfinite(bounds[1])
                                                                            or bounds[1] <= 0)):
            continue
        if clip.op_type == "Clip" and bounds[1] is None:
            continue   # Clip(0) with no upper bound: a Relu written as a Clip; left as the exporter wrote it
        weights = [a.input[1], b.input[1]] + [n.input[2] for n in (a, b) if len(n.input) > 2 and n.input[2]]
        if not all(w in graph.inits for w in weights):
            continue
        found.append((a, clip, b, bounds[1], pads, pad))
    return found


def _fill(pad, value: str) -> None:
    """Make the zero Pad ``pad`` fill with the scalar initializer ``value`` (an input from opset 11, which the
    Clip with input bounds or the Relu turned into one already needs); edge and reflect padding copy values of the
    tensor, already shifted: left alone."""
    mode = attribute(pad, "mode", b"constant")
    if (mode.decode() if isinstance(mode, bytes) else mode) != "constant":
        return
    if len(pad.input) > 2:   # pads, constant_value (and axes) are inputs
        pad.input[2] = value
    else:
        pad.input.append(value)


def _pad_before(model, conv, pads: list[int], value: str) -> None:
    """Move ``conv``'s padding into a Pad node before it that fills with the scalar initializer ``value``."""
    from onnx import helper, numpy_helper
    half = len(pads) // 2   # Conv pads: spatial begins, then spatial ends; Pad's: every axis (N, C first)
    name = f"{conv.name or conv.output[0]}_centered_pad"
    model.graph.initializer.append(numpy_helper.from_array(
        np.array([0, 0, *pads[:half], 0, 0, *pads[half:]], np.int64), f"{name}_pads"))
    node = helper.make_node("Pad", [conv.input[0], f"{name}_pads", value], [f"{name}_output"], name=name,
                            mode="constant")
    conv.input[0] = node.output[0]
    for attr in conv.attribute:
        if attr.name == "pads":
            del attr.ints[:]
            attr.ints.extend([0] * len(pads))
    nodes = model.graph.node
    nodes.insert(list(nodes).index(conv), node)


def center_rectified_inputs(model, feeds: list[dict]) -> dict:
    """Center, in place, the ReLU / ReLU6 tensors convolutions read (see the module's docstring),
    each by the shift :func:`_shift` chooses on the calibration inputs ``feeds``; returns {"pairs": centered,
    "of": found, "padded": of those, how many got a Pad}. A tensor whose maximum is 0 or not finite (a crafted
    model) is left alone."""
    import onnx
    from onnx import numpy_helper

    from edgeopt.converters import onnx_io
    graph = Graph(model)
    pairs = _pairs(graph)
    info = {"pairs": 0, "of": len(pairs), "padded": 0}
    if not pairs or not feeds:
        return info
    tensors = [clip.output[0] for _, clip, _, _, _, _ in pairs]
    sess = onnx_io.tensor_session(model, tensors)
    top = dict.fromkeys(tensors, -np.inf)
    kept: dict[str, list] = {t: [] for t in tensors}
    rng = np.random.default_rng(0)
    per_sample = max(1, KEPT_VALUES // len(feeds))   # bounded: 200 samples of 50 large tensors stay ~40 MB
    for feed in feeds:
        for t, v in zip(tensors, sess.run(tensors, feed)):
            flat = v.reshape(-1)
            top[t] = max(top[t], float(np.max(flat)) if flat.size else -np.inf)
            kept[t].append(flat if flat.size <= per_sample else rng.choice(flat, per_sample, replace=False))

    def put(name, value):
        graph.inits[name].CopyFrom(numpy_helper.from_array(np.asarray(value, np.float32), name))

    def bias_of(node, channels: int) -> str:
        """The name of ``node``'s bias initializer, one of zeros added where it has none."""
        if len(node.input) > 2 and node.input[2]:
            return node.input[2]
        name = f"{node.name or node.output[0]}_centering_bias"
        model.graph.initializer.append(numpy_helper.from_array(np.zeros(channels, np.float32), name))
        graph.inits[name] = model.graph.initializer[-1]
        if len(node.input) > 2:
            node.input[2] = name
        else:
            node.input.append(name)   # a Conv has its weights: input 2 is next
        return name

    for a, clip, b, hi, pads, pad in pairs:
        m = top[clip.output[0]]
        if not np.isfinite(m) or m <= 0:
            continue
        c = _shift(np.concatenate(kept[clip.output[0]]).astype(np.float64), m)
        if c is None:
            continue
        wa = numpy_helper.to_array(graph.inits[a.input[1]])
        wb = numpy_helper.to_array(graph.inits[b.input[1]]).astype(np.float64)
        ba, bb = bias_of(a, wa.shape[0]), bias_of(b, wb.shape[0])
        if graph.inits[ba].dims != [wa.shape[0]] or graph.inits[bb].dims != [wb.shape[0]]:
            continue
        # A's bias is A's alone (checked: one consumer reads A, A's bias is its own initializer unless shared)
        if sum(ba in n.input for n in model.graph.node) != 1 or sum(bb in n.input for n in model.graph.node) != 1:
            continue
        put(ba, numpy_helper.to_array(graph.inits[ba]).astype(np.float64) - c)
        put(bb, numpy_helper.to_array(graph.inits[bb]).astype(np.float64) + c * wb.reshape(wb.shape[0], -1).sum(1))
        lo_name, hi_name = f"{clip.name or clip.output[0]}_centered_min", f"{clip.name or clip.output[0]}_centered_max"
        model.graph.initializer.append(numpy_helper.from_array(np.array(-c, np.float32), lo_name))
        if hi is None:   # Relu(y) - c = max(y - c, -c): a Clip with a lower bound only
            clip.op_type = "Clip"
            clip.input.append(lo_name)
        else:
            model.graph.initializer.append(numpy_helper.from_array(np.array(hi - c, np.float32), hi_name))
            clip.input[1], clip.input[2] = lo_name, hi_name
        if pads:
            _pad_before(model, b, pads, lo_name)
        elif pad is not None:
            _fill(pad, lo_name)
        info["padded"] += bool(pads) or pad is not None
        info["pairs"] += 1
    onnx.checker.check_model(model)
    return info
