"""Keras (.keras/.h5) and SavedModel -> full-integer INT8 TFLite (TFLITE_BUILTINS_INT8, per-channel weights)."""
from __future__ import annotations


def convert(job) -> list[dict]:
    from edgeopt.converters import tf_tflite

    job.tf_graph, job.tf_calib, job.tf_perms = job.graph, job.calib_samples(), [None] * len(job.inputs)
    data, info = tf_tflite.quantize(job.graph, job.tf_calib, job.io_dtype, job.allow_float_fallback,
                                    source=job.source_name)
    art = {"file": "model.int8.tflite", "format": "tflite", "precision": "int8", "kind": "tflite-int8",
           "data": data, "input_index": info["input_index"], "output_index": info["output_index"],
           "input_perm": [None] * len(job.inputs),
           "converter": "tf.lite.TFLiteConverter (TFLITE_BUILTINS_INT8, per-channel weights)"}
    if info.get("float_ops"):
        art["float_ops"] = info["float_ops"]
    return [art]
