"""ONNX -> FP16 ONNX (float16 weights and compute, float32 inputs/outputs) for TensorRT's FP16 path.

As TensorRT does before it builds FP16 kernels, BatchNormalization is folded into the convolution before it in
FP32 first (:mod:`edgeopt.converters.onnx_fold`); a node that still reads a constant beyond FP16's range stays in
FP32 with its constants, instead of having them clamped to 65504.
"""
from __future__ import annotations

__all__ = ["convert"]


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
    # op_block_list None: onnxruntime's default list (ops without FP16 kernels) stays in FP32 as before
    fp16 = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False, node_block_list=keep)
    converter = "onnxruntime.transformers.float16 (keep_io_types)"
    if folded:
        converter += f"; {folded} BatchNormalization folded into the convolution before it (FP32, before FP16)"
    if keep:
        converter += f"; {len(keep)} node(s) kept in FP32: constants beyond FP16's range"
    art = {"file": "model.fp16.onnx", "format": "onnx", "precision": "fp16", "kind": "onnx-fp16",
           "data": fp16.SerializeToString(), "converter": converter}
    if keep:
        art["float_nodes"] = keep
    return [art]
