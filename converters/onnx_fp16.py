"""ONNX -> FP16 ONNX (float16 weights and compute, float32 inputs/outputs) for TensorRT's FP16 path."""
from __future__ import annotations

__all__ = ["convert"]


def convert(job, recipe=None) -> list[dict]:
    """[the FP16 ONNX artifact] of ``job``; ``recipe`` is an INT8 route's and does not apply here."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(job.static_onnx_path())
    fp16 = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    return [{"file": "model.fp16.onnx", "format": "onnx", "precision": "fp16", "kind": "onnx-fp16",
             "data": fp16.SerializeToString(),
             "converter": "onnxruntime.transformers.float16 (keep_io_types)"}]
