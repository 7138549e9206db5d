"""ONNX -> FP16 ONNX (float16 weights and compute, float32 inputs/outputs) for TensorRT's FP16 path.

As TensorRT does before it builds FP16 kernels, BatchNormalization is folded into the convolution before it in
FP32 first (:mod:`edgeopt.converters.onnx_fold`); a node that still reads a constant beyond FP16's range stays in
FP32 with its constants, instead of having them clamped to 65504, and so do the nodes that make or read an
activation beyond FP16's range on the calibration data (instead of an inf).
"""
from __future__ import annotations

__all__ = ["convert"]

OVERFLOW_SAMPLES = 16  # calibration samples the activations' magnitudes are read from


def convert(job, recipe=None) -> list[dict]:
    """[the FP16 ONNX artifact] of ``job``; ``recipe`` is an INT8 route's and does not apply here."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from edgeopt.converters import onnx_fold

    model = onnx.load(job.static_onnx_path())
    onnx_fold.constants_as_initializers(model)  # the folds, and keeping constants in FP32, need initializers
    folded = onnx_fold.fold_batchnorm(model)
    onnx_fold.name_nodes(model)
    keep = onnx_fold.fp16_unsafe_nodes(model)
    # the FP32 model (folded) on the first calibration samples: the activations' magnitudes
    feeds = job.calib_feeds(OVERFLOW_SAMPLES)
    overflow = [n for n in onnx_fold.fp16_overflow_nodes(model, feeds) if n not in keep]
    keep += overflow
    # op_block_list None: onnxruntime's default list (ops without FP16 kernels) stays in FP32 as before
    fp16 = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False, node_block_list=keep)
    _drop_fp16_round_trips(fp16)
    converter = "onnxruntime.transformers.float16 (keep_io_types)"
    if folded:
        converter += f"; {folded} BatchNormalization folded into the convolution before it (FP32, before FP16)"
    if len(keep) > len(overflow):
        converter += f"; {len(keep) - len(overflow)} node(s) kept in FP32: constants beyond FP16's range"
    if overflow:
        converter += (f"; {len(overflow)} node(s) kept in FP32: activations beyond FP16's range on the "
                      "calibration data")
    art = {"file": "model.fp16.onnx", "format": "onnx", "precision": "fp16", "kind": "onnx-fp16",
           "data": fp16.SerializeToString(), "converter": converter}
    if keep:
        art["float_nodes"] = keep
    return [art]


def _drop_fp16_round_trips(model) -> int:
    """Casts FP32 -> FP16 whose every reader is a Cast back to FP32 removed with those readers, in place;
    returns how many. The converter wraps each FP32-kept node in casts of its own, so a tensor passed from one
    such node to the next went through FP16 anyway: an activation beyond FP16's range became inf between two
    FP32 nodes. A Cast to FP16 of another type (the converter turns an int-to-float Cast into an int-to-FP16
    one: YOLOv8's anchor grid, Range(0, Cast(Gather(Shape(x))), 1)) is no round trip: removed, it handed the
    reader an int64."""
    from onnx import TensorProto
    from edgeopt.converters import onnx_io
    from edgeopt.converters.onnx_fold import attribute
    graph = model.graph
    types = onnx_io.inferred(model)
    if not types:  # without types nothing is known to be FP32: nothing is removed
        return 0
    fp32 = {name for name, (_, elem) in types.items() if elem == TensorProto.FLOAT}
    fp32 |= {i.name for i in graph.initializer if i.data_type == TensorProto.FLOAT}
    readers: dict = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}

    def cast_to(node, dtype):
        return node.op_type == "Cast" and attribute(node, "to") == dtype

    drop, rename = set(), {}
    for node in graph.node:
        out = node.output[0] if node.output else None
        back = readers.get(out, [])
        if (cast_to(node, TensorProto.FLOAT16) and node.input[0] in fp32 and out not in outputs and back
                and all(cast_to(r, TensorProto.FLOAT) for r in back)):
            drop.add(id(node))
            for r in back:
                if r.output[0] in outputs:  # a graph output keeps its name: leave this pair
                    drop.discard(id(node))
                    break
            else:
                drop.update(id(r) for r in back)
                rename.update({r.output[0]: node.input[0] for r in back})
    if not rename:
        return 0
    kept = [n for n in graph.node if id(n) not in drop]
    for n in kept:
        for k, name in enumerate(n.input):
            if name in rename:
                n.input[k] = rename[name]
    del graph.node[:]
    graph.node.extend(kept)
    return len(rename)
