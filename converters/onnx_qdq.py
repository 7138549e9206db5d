"""ONNX -> INT8 QDQ ONNX for TensorRT (explicit quantization) with onnxruntime.quantization.

TensorRT takes INT8 only as symmetric quantization with zero point 0 (TensorRT Developer Guide,
"Explicit Quantization"): activations and weights are both symmetric int8, weights per channel.
"""
from __future__ import annotations

import os

import numpy as np

from edgeopt.errors import UsageError


class _Reader:
    """CalibrationDataReader over the job's calibration samples (source layout, batch 1)."""

    def __init__(self, names, samples):
        self._it = iter([dict(zip(names, s)) for s in samples])

    def get_next(self):
        return next(self._it, None)


def convert(job) -> list[dict]:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src = job.static_onnx_path()
    prep = os.path.join(job.workdir, "qdq-prep.onnx")
    try:
        # symbolic shape inference + graph optimisation, as onnxruntime recommends before quantizing
        quant_pre_process(src, prep, skip_symbolic_shape=False)
    except Exception:
        prep = src
    model = onnx.load(prep)
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=13)
    if opset < 13:  # per-channel QuantizeLinear needs opset 13
        model = onnx.version_converter.convert_version(model, 13)
        prep = os.path.join(job.workdir, "qdq-prep13.onnx")
        onnx.save(model, prep)
    out = os.path.join(job.workdir, "model.int8.qdq.onnx")
    names = [i["name"] for i in job.inputs]
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[job.options.get("calibration_method", "minmax")]
    job.qdq_prep = prep  # the float graph the QDQ model was made from (same node and tensor names)
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True}
    if job.options.get("calib_percentile") is not None:
        extra["CalibPercentile"] = float(job.options["calib_percentile"])
    exclude = list(job.options.get("nodes_to_exclude") or [])
    try:
        quantize_static(
            prep, out, _Reader(names, job.calib_samples()),
            quant_format=QuantFormat.QDQ,
            per_channel=bool(job.options.get("per_channel", True)),
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=method,
            nodes_to_exclude=exclude,
            extra_options=extra,
        )
    except Exception as e:
        raise UsageError(f"{job.source_name}: QDQ quantization failed: {str(e).strip()[:300]}") from None
    with open(out, "rb") as f:
        data = f.read()
    check_symmetric(onnx.load_from_string(data))
    art = {"file": "model.int8.qdq.onnx", "format": "onnx", "precision": "int8", "kind": "onnx-qdq-int8",
           "data": data, "converter": "onnxruntime.quantization.quantize_static (QDQ, symmetric, per-channel)"}
    if exclude:
        art["float_nodes"] = exclude
    return [art]


def check_symmetric(model) -> None:
    """Every QuantizeLinear/DequantizeLinear zero point is 0 (TensorRT rejects others)."""
    from onnx import numpy_helper
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            zp = inits.get(node.input[2])
            if zp is not None and np.any(numpy_helper.to_array(zp) != 0):
                raise UsageError(f"QDQ node {node.name}: zero point is not 0 (TensorRT needs symmetric INT8)")
