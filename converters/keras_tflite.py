"""Keras (.keras/.h5), SavedModel and float .tflite -> full-integer INT8 TFLite (per-channel weights).

Also the code-free inspection of a Keras file (:func:`code_risks`): a Keras model can carry Python code
(a ``Lambda`` layer's marshalled bytecode, or a reference to any importable module that tf_keras would
import and call). It is read from the file's JSON config, with h5py or zipfile, before any Keras loader
sees the file, so nothing in the file runs unless the user opted in with ``--trust-model-code``.
"""
from __future__ import annotations

import json
import zipfile

# Top-level packages a Keras config may name in "module" without bringing code of its own.
_KERAS_PACKAGES = {"keras", "tf_keras", "keras_hub", "keras_cv", "keras_nlp"}
_CODE_CLASSES = {"Lambda", "__lambda__"}   # marshalled Python code (Keras 3 and tf_keras)
_MAX_CONFIG_BYTES = 64 << 20               # a model config larger than this is not a model we read


def keras_config(path: str) -> dict:
    """The JSON model config of a ``.keras`` archive or a legacy ``.h5`` file, read without running code.

    Raises ValueError when the file has no model config (e.g. weights only) or it is not JSON.
    """
    if path.lower().endswith((".h5", ".hdf5")) or _is_hdf5(path):
        import h5py
        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
            if raw is None and "model_config" in f:  # some writers store it as a dataset
                raw = f["model_config"][()]
    else:
        with zipfile.ZipFile(path) as z:
            info = z.getinfo("config.json")
            if info.file_size > _MAX_CONFIG_BYTES:
                raise ValueError(f"config.json is {info.file_size} bytes")
            raw = z.read(info)
    if raw is None:
        raise ValueError("no model_config in the file (weights only?)")
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")
    if len(raw) > _MAX_CONFIG_BYTES:
        raise ValueError(f"model config is {len(raw)} bytes")
    cfg = json.loads(str(raw))
    if not isinstance(cfg, dict):
        raise ValueError("model config is not a JSON object")
    return cfg


def _is_hdf5(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == b"\x89HDF\r\n\x1a\n"


def code_risks(config) -> list[str]:
    """What in a Keras model config would run code on load: Lambda layers and objects from non-Keras modules.

    Returns short descriptions (``"Lambda layer 'lambda'"``, ``"custom object os.system"``), empty when
    the config names only Keras' own classes.
    """
    found: list[str] = []
    stack = [config]
    while stack:  # iterative: a hostile config may nest deeper than Python's recursion limit
        node = stack.pop()
        if isinstance(node, dict):
            cls = node.get("class_name")
            if cls in _CODE_CLASSES or node.get("function_type") == "lambda":
                cfg = node.get("config") if isinstance(node.get("config"), dict) else {}
                name = cfg.get("name") or node.get("name")
                found.append(f"Lambda layer {name!r}" if cls == "Lambda" and name else "a Python lambda")
                continue  # its function's own entries say the same again
            module = node.get("module")
            if isinstance(module, str) and module.split(".", 1)[0] not in _KERAS_PACKAGES:
                found.append(f"custom object {module}.{cls}")
            registered = node.get("registered_name")
            if isinstance(registered, str) and ">" in registered:
                found.append(f"custom object {registered}")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return list(dict.fromkeys(found))


def convert(job, recipe=None) -> list[dict]:
    """[the full-integer INT8 TFLite artifact] of a Keras/SavedModel/float TFLite ``job``, quantized with ``recipe``
    (None: ``job.recipe``)."""
    from edgeopt.conversion.defaults import DEPTHWISE_EQUALIZATION_FLOOR, DEPTHWISE_EQUALIZATION_MARGIN
    from edgeopt.converters import tf_tflite

    recipe = job.recipe if recipe is None else recipe
    state = tf_tflite.route_state(job) or tf_tflite.keep(job, tf_tflite.RouteState(
        job.graph, job.calib_samples(), [None] * len(job.inputs)))
    data, info = tf_tflite.quantize(job.graph, state.calib, job.io_dtype, job.allow_float_fallback,
                                    source=job.source_name, cache=state.rounding,
                                    float_blocks=not job.target.integer_only,
                                    max_float_layers=job.options.max_float_layers,
                                    equalize=(DEPTHWISE_EQUALIZATION_MARGIN, DEPTHWISE_EQUALIZATION_FLOOR),
                                    **tf_tflite.recipe_options(recipe))
    if info.get("equalization") is not None:   # the manifest's calibration.equalization, as for an ONNX source
        job.equalization = info["equalization"]
    art = {"file": "model.int8.tflite", "format": "tflite", "precision": "int8", "kind": "tflite-int8",
           "data": data, "input_index": info["input_index"], "output_index": info["output_index"],
           "input_perm": [None] * len(job.inputs),
           "converter": ("TFLite calibrator + MLIR quantizer (float .tflite, per-channel weights)"
                         if isinstance(job.graph, tf_tflite.TFLiteGraph)
                         else "tf.lite.TFLiteConverter (TFLITE_BUILTINS_INT8, per-channel weights)")}
    if info.get("float_ops"):
        art["float_ops"] = info["float_ops"]
    if info.get("float_blocks"):
        art["float_blocks"] = info["float_blocks"]
    return [art]
