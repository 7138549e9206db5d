"""Exact FP32 folds of an ONNX graph, made before it is converted to FP16, and the nodes FP16 cannot hold.

TensorRT builds an FP16 engine from an ONNX model after folding BatchNormalization into the convolution before
it and folding constant arithmetic, in FP32; only then are the weights cast to FP16. A converter that casts every
constant first loses what does not fit FP16 (largest finite value 65504): PaddleOCR's text detector (PP-OCRv4 det)
has a BatchNormalization with running variance 9.8e7, which a plain cast clamps to 65504, and its FP16 model had
cosine 0.45 against FP32. Folded, the scale ``gamma / sqrt(var + eps)`` lands in the convolution's weights, well
inside FP16's range, and the FP16 model agrees with FP32 (cosine 0.9999).

- :func:`constants_as_initializers`: ``Constant`` nodes made initializers (Paddle exports keep every weight in
  one); the folds and onnxruntime's quantizer read weights from initializers only.
- :func:`fold_batchnorm`: ``Conv``/``ConvTranspose`` followed by ``BatchNormalization`` (inference form) becomes
  one convolution with scaled weights and a shifted bias, computed in float64 and stored as float32.
- :func:`fp16_unsafe_nodes`: the nodes that still read a float constant beyond FP16's range: the FP16 converter
  keeps them, and their constants, in FP32 (TensorRT runs such a layer in FP32 too).
- :func:`fp16_overflow_nodes`: the nodes that make or read an *activation* beyond FP16's range on the
  calibration data (FP16 would make it inf): kept in FP32 as well.
"""
from __future__ import annotations

import numpy as np

__all__ = ["FP16_MAX", "attribute", "constants_as_initializers", "fold_batchnorm", "fp16_overflow_nodes", "fp16_unsafe_nodes",
           "name_nodes"]

FP16_MAX = float(np.finfo(np.float16).max)  # 65504


def constants_as_initializers(model) -> int:
    """Constant nodes (a tensor ``value``) made initializers of the same name, in place; returns how many.
    onnxruntime's quantizer takes weights from initializers only: Paddle exports keep every weight in a
    Constant node, which failed with "Quantization parameters are not specified for param conv1_weights"."""
    graph = model.graph
    constants = [n for n in graph.node if n.op_type == "Constant" and len(n.attribute) == 1
                 and n.attribute[0].name == "value"]
    for node in constants:
        tensor = node.attribute[0].t
        tensor.name = node.output[0]
        graph.initializer.append(tensor)
    if constants:
        made = {n.output[0] for n in constants}
        kept = [n for n in graph.node if not (n.op_type == "Constant" and n.output[0] in made)]
        del graph.node[:]
        graph.node.extend(kept)
    return len(constants)


def attribute(node, name, default=None):
    """The value of a node's attribute ``name`` (onnx.helper's Python value), or ``default``."""
    from onnx import helper
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def fold_batchnorm(model) -> int:
    """Every ``Conv``/``ConvTranspose`` -> ``BatchNormalization`` pair folded into the convolution, in place;
    returns how many. The convolution's weights and bias must be initializers it alone reads, the
    BatchNormalization's parameters initializers, and the BatchNormalization its output's only reader (not a
    graph output); other pairs are left as they are. With s = gamma / sqrt(var + eps) per output channel:
    W' = W * s (along the output-channel axis) and b' = (b - mean) * s + beta, the same function."""
    from onnx import numpy_helper
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    readers: dict = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    outputs = {o.name for o in graph.output}
    producer = {o: n for n in graph.node for o in n.output}
    dropped, folded = set(), 0
    for bn in [n for n in graph.node if n.op_type == "BatchNormalization"]:
        conv = producer.get(bn.input[0])
        if (conv is None or conv.op_type not in ("Conv", "ConvTranspose") or len(bn.output) != 1
                or attribute(bn, "training_mode", 0) or readers.get(conv.output[0]) != 1 or conv.output[0] in outputs
                or len(bn.input) != 5 or any(t not in inits for t in bn.input[1:])):
            continue
        weight = conv.input[1]
        bias = conv.input[2] if len(conv.input) > 2 and conv.input[2] else None
        if weight not in inits or readers.get(weight) != 1 or (bias is not None and (
                bias not in inits or readers.get(bias) != 1)):
            continue
        w = numpy_helper.to_array(inits[weight])
        if w.dtype != np.float32 or w.ndim < 3:
            continue
        gamma, beta, mean, var = (numpy_helper.to_array(inits[t]).astype(np.float64) for t in bn.input[1:])
        scale = gamma / np.sqrt(var + float(attribute(bn, "epsilon", 1e-5)))
        group = int(attribute(conv, "group", 1))
        w64 = w.astype(np.float64)
        if conv.op_type == "Conv":  # W [C_out, C_in / group, k...]
            channels = w.shape[0]
            if scale.shape != (channels,):
                continue
            w64 = w64 * scale.reshape((-1,) + (1,) * (w.ndim - 1))
        else:  # ConvTranspose: W [C_in, C_out / group, k...]; output channel g * (C_out / group) + j
            per_group = w.shape[1]
            channels = per_group * group
            if scale.shape != (channels,) or w.shape[0] % group:
                continue
            shaped = w64.reshape((group, w.shape[0] // group, per_group) + w.shape[2:])
            w64 = (shaped * scale.reshape((group, 1, per_group) + (1,) * (w.ndim - 2))).reshape(w.shape)
        b = numpy_helper.to_array(inits[bias]).astype(np.float64) if bias is not None else np.zeros(channels)
        if b.shape != (channels,):
            continue
        inits[weight].CopyFrom(numpy_helper.from_array(w64.astype(np.float32), weight))
        new_bias = ((b - mean) * scale + beta).astype(np.float32)
        if bias is None:
            bias = fresh_name(f"{conv.name or weight}_bn_bias", inits, producer)
            graph.initializer.append(numpy_helper.from_array(new_bias, bias))
            inits[bias] = graph.initializer[-1]
            while len(conv.input) < 3:
                conv.input.append("")
            conv.input[2] = bias
        else:
            inits[bias].CopyFrom(numpy_helper.from_array(new_bias, bias))
        conv.output[0] = bn.output[0]  # the convolution now makes the tensor its readers expect
        dropped.add(id(bn))
        folded += 1
    if dropped:
        kept = [n for n in graph.node if id(n) not in dropped]
        del graph.node[:]
        graph.node.extend(kept)
        used = {t for n in graph.node for t in n.input} | outputs
        for init in [i for i in graph.initializer if i.name not in used]:
            graph.initializer.remove(init)  # the BatchNormalizations' parameters, read by nothing now
    return folded


def fresh_name(base: str, *taken) -> str:
    """``base``, or else ``base_1``, ``base_2``, ...: the first name in none of ``taken`` (sets of names a graph
    already uses). Callers add it to their set when they make more than one."""
    name, k = base, 0
    while any(name in t for t in taken):
        k += 1
        name = f"{base}_{k}"
    return name


def name_nodes(model) -> int:
    """Unnamed nodes given unique names, in place (the FP16 converter keeps nodes in FP32 by name); returns how
    many. Node names are labels: the function is unchanged."""
    names = {n.name for n in model.graph.node if n.name}
    done = 0
    for k, node in enumerate(model.graph.node):
        if not node.name:
            node.name = fresh_name(f"{node.op_type}_{k}", names)
            names.add(node.name)
            done += 1
    return done


def fp16_unsafe_nodes(model, limit: float = FP16_MAX) -> list[str]:
    """Names of the nodes that read a float initializer holding a finite value beyond ``limit`` (FP16's
    largest), in graph order: cast to FP16, that constant would become 65504 (or inf), a different model.
    Call :func:`name_nodes` first: an unnamed node cannot be kept by name."""
    from onnx import TensorProto, numpy_helper
    big = set()
    for init in model.graph.initializer:
        if init.data_type in (TensorProto.FLOAT, TensorProto.DOUBLE):
            v = numpy_helper.to_array(init)
            finite = v[np.isfinite(v)]
            if finite.size and float(np.abs(finite).max()) > limit:
                big.add(init.name)
    return [n.name for n in model.graph.node if any(t in big for t in n.input)]


# Calibration maxima understate what unseen inputs reach: an activation is unsafe in FP16 from half its range.
FP16_ACTIVATION_LIMIT = FP16_MAX / 2


def fp16_overflow_nodes(model, feeds: list[dict], limit: float = FP16_ACTIVATION_LIMIT) -> list[str]:
    """Names of the nodes that make or read a float activation whose magnitude exceeds ``limit`` on any of
    ``feeds`` ({input name: array}, the FP32 model run node by node), in graph order. In FP16 such a tensor
    becomes inf (a Conv summing to 1e5, a transformer's outlier features): its producer must compute it in
    FP32 and its readers must take it in FP32. Call :func:`name_nodes` first."""
    from edgeopt.converters import onnx_io
    nodes = [n for n in model.graph.node if n.op_type != "Constant"]
    tensors = [o for n in nodes for o in n.output if o]
    if not feeds or not tensors:
        return []
    sess = onnx_io.tensor_session(model, tensors)
    names = [o.name for o in sess.get_outputs()]
    big = set()
    for feed in feeds:
        for name, value in zip(names, sess.run(None, feed)):
            value = np.asarray(value)
            if name not in big and value.dtype.kind == "f" and value.size:
                finite = np.abs(value[np.isfinite(value)])
                if finite.size and float(finite.max()) > limit:
                    big.add(name)
    return [n.name for n in nodes if big.intersection(n.output) or big.intersection(n.input)]
