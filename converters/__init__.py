"""Converters, chosen by (source format, artifact kind), imported lazily by dotted path (as Olive does).

Nothing here imports TensorFlow, onnx or onnxruntime: :func:`route` returns the converter function and
only then is its module imported. ``tests/test_registry.py`` imports every entry.
"""
from __future__ import annotations

import importlib

from edgeopt.errors import UsageError

__all__ = ["ROUTES", "HOOKS", "HOOK_NAMES", "REFUSED", "TOOL_MODULES", "MODULES", "load", "resolve", "route", "hooks"]

# (source format, artifact kind) -> "module:function"
ROUTES: dict[tuple[str, str], str] = {
    ("onnx", "tflite-int8"): "edgeopt.converters.onnx_tflite:convert",
    ("keras", "tflite-int8"): "edgeopt.converters.keras_tflite:convert",
    ("saved_model", "tflite-int8"): "edgeopt.converters.keras_tflite:convert",
    ("tflite", "tflite-int8"): "edgeopt.converters.keras_tflite:convert",   # a float .tflite with --calib
    ("onnx", "onnx-qdq-int8"): "edgeopt.converters.onnx_qdq:convert",
    ("onnx", "onnx-fp16"): "edgeopt.converters.onnx_fp16:convert",
}

# artifact kind -> the module that owns that kind's accuracy-recovery hooks (edgeopt.conversion.recover keeps only
# the search): rebuild(job, art, recipe) -> artifact, layer_errors(job, art, samples) -> per-layer report,
# float_candidates(report) -> layer names, fp32_bytes(job), bias_correction_info(job), and RECOVERY_METHODS (the
# calibration methods recovery tries, cheapest first), RECOVERY_ROUNDINGS (the costlier all-INT8 weight roundings it
# tries after them) and MANY_FLOAT_ADVICE (what to say when most layers stay
# float). A route keeps what its hooks need in one object on the job: the TFLite routes (Keras, SavedModel, float
# TFLite; ONNX via onnx2tf) job.route_state["tflite"] (tf_tflite.RouteState), the QDQ route job.route_state["qdq"]
# (onnx_qdq.RouteState).
HOOKS: dict[str, str] = {
    "tflite-int8": "edgeopt.converters.tf_tflite",
    "onnx-qdq-int8": "edgeopt.converters.onnx_qdq",
}
HOOK_NAMES = ("rebuild", "layer_errors", "float_candidates", "fp32_bytes", "bias_correction_info",
              "RECOVERY_METHODS", "RECOVERY_ROUNDINGS", "MANY_FLOAT_ADVICE")

# Routes we refuse on purpose, with the reason users get.
REFUSED: dict[tuple[str, str], str] = {
    ("keras", "onnx-qdq-int8"): "Keras/SavedModel models are not converted for Jetson: TensorRT takes ONNX, and "
                                "TensorFlow-to-ONNX export (tf2onnx) is not part of edgeopt's offline toolchain",
    ("saved_model", "onnx-qdq-int8"): "Keras/SavedModel models are not converted for Jetson: TensorRT takes ONNX, "
                                      "and TensorFlow-to-ONNX export (tf2onnx) is not part of edgeopt's toolchain",
    ("tflite", "onnx-qdq-int8"): "a .tflite file cannot be turned into an ONNX model for TensorRT",
}
REFUSE_HINT = {
    "keras": "export the model to ONNX first (python -m tf2onnx.convert --saved-model DIR --output model.onnx) "
             "and convert the .onnx file",
    "saved_model": "export the model to ONNX first (python -m tf2onnx.convert --saved-model DIR --output model.onnx) "
                   "and convert the .onnx file",
    "tflite": "convert from the source model (.onnx) instead",
}

# Modules whose versions() describe the toolchain of a source format.
TOOL_MODULES: dict[str, tuple[str, ...]] = {
    "onnx": ("edgeopt.converters.onnx_io", "edgeopt.converters.onnx_tflite", "edgeopt.converters.tf_tflite"),
    "keras": ("edgeopt.converters.tf_tflite",),
    "saved_model": ("edgeopt.converters.tf_tflite",),
    "tflite": ("edgeopt.converters.tf_tflite",),
}

# Helper modules (no converter function) that tests import too.
MODULES = ("edgeopt.converters.onnx_io", "edgeopt.converters.tf_tflite", "edgeopt.converters.tflite_blocks",
           "edgeopt.converters.edgetpu")


def load(dotted: str):
    """Import a converter module by dotted path; a missing extra becomes a clear UsageError."""
    try:
        return importlib.import_module(dotted)
    except ImportError as e:
        raise UsageError(f"the converters need {e.name or 'a package'} which is not installed",
                         hint="pip install 'edgeopt[convert]'") from None


def resolve(spec: str):
    mod, _, fn = spec.partition(":")
    return getattr(load(mod), fn)


def hooks(kind: str):
    """The module holding the recovery hooks (HOOK_NAMES) of an artifact kind, imported now; UsageError for a
    kind recovery cannot rebuild (a target profile whose primary artifact is, say, FP16)."""
    if kind not in HOOKS:
        raise UsageError(f"--accuracy-target and --explain need an INT8 primary artifact; {kind} has no per-layer "
                         "report or recovery", hint=f"kinds with one: {', '.join(HOOKS)}")
    return load(HOOKS[kind])


def route(fmt: str, kind: str, target=None):
    """(kind, converter function) for a source format and an artifact kind; UsageError if refused."""
    if (fmt, kind) in REFUSED:
        raise UsageError(REFUSED[(fmt, kind)], hint=REFUSE_HINT.get(fmt))
    spec = ROUTES.get((fmt, kind))
    if spec is None:
        name = getattr(target, "name", kind)
        raise UsageError(f"no converter from {fmt} to {kind} (target {name})")
    return kind, _Lazy(spec)


class _Lazy:
    """Calls the converter, importing its module only on first use."""

    def __init__(self, spec: str):
        self.spec = spec

    def __call__(self, job, recipe=None):
        """The route's artifacts for ``job``, quantized with ``recipe`` (None: the job's own, ``job.recipe``)."""
        return resolve(self.spec)(job, recipe)
