"""Keras / SavedModel / tf_keras graphs and float .tflite files -> full-integer INT8 TFLite with TensorFlow's
calibrator and MLIR quantizer (tf.lite.TFLiteConverter for a TensorFlow graph).

The one module of edgeopt that imports TensorFlow. Everything TensorFlow does for edgeopt goes through
here: reading Keras, SavedModel and float TFLite inputs, running them as the FP32 reference, and quantizing
(also the tf_keras model that onnx2tf builds from an ONNX file).
"""
from __future__ import annotations

import os
import re
import struct
import dataclasses

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # oneDNN reorders float sums: results differ run to run

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from edgeopt.conversion import defaults  # noqa: E402
from edgeopt.converters import tflite_blocks  # noqa: E402
from edgeopt.errors import UsageError  # noqa: E402

tf.get_logger().setLevel("ERROR")
import warnings  # noqa: E402

import absl.logging  # noqa: E402

__all__ = ["versions", "Graph", "TFLiteGraph", "RouteState", "route_state", "from_keras_model", "load", "quantize", "Debugger", "io_order", "float_ops_of",
           "RECOVERY_METHODS", "RECOVERY_ROUNDINGS", "MANY_FLOAT_ADVICE", "rebuild", "layer_errors", "float_candidates", "fp32_bytes",
           "bias_correction_info", "op_graph", "block_tensors", "equalize_depthwise"]

absl.logging.set_verbosity(absl.logging.ERROR)
warnings.filterwarnings("ignore", module=r"tensorflow\..*")


def versions() -> dict:
    return {"tensorflow": tf.__version__}


# ----------------------------------------------------------------------------------------- loading

class Graph:
    """A TensorFlow model as an ordered-input, named-output callable with its I/O specs."""

    def __init__(self, fn, inputs: list[dict], outputs: list[str], keep=None):
        self.fn = fn                # positional float tensors (source order) -> dict name -> tensor
        self.inputs = inputs        # [{"name", "shape", "dtype"}]
        self.outputs = outputs      # output names, source order
        self.keep = keep            # trackable object that owns the variables

    def __call__(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        out = self.fn(*[tf.constant(a) for a in arrays])
        return [np.asarray(out[n]) for n in self.outputs]


class TFLiteGraph(Graph):
    """A float .tflite model (``data``: its flatbuffer, float16 weights made float32) as a Graph: run by the
    TFLite interpreter, calibrated and quantized as it is (no TensorFlow graph behind it)."""

    def __init__(self, data: bytes, inputs: list[dict], outputs: list[str], output_index: list[int]):
        super().__init__(None, inputs, outputs)
        self.data = data
        self.output_index = output_index   # the interpreter's tensor index of each of ``outputs``
        self._interp = None

    def __call__(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        if self._interp is None:
            self._interp = _interpreter(self.data)
            self._interp.allocate_tensors()
        details = self._interp.get_input_details()
        for d, a in zip(details, arrays):
            self._interp.set_tensor(d["index"], np.asarray(a, dtype=d["dtype"]))
        self._interp.invoke()
        return [np.array(self._interp.get_tensor(i)) for i in self.output_index]


def feed(sample, dtypes) -> list[np.ndarray]:
    """One calibration sample as the graph takes it: each array in its input's dtype (float32, or an integer
    or bool input's own type: token ids and byte values are fed as they are, never as floats)."""
    return [np.asarray(a, dtype=np.dtype(t) if t else np.float32) for a, t in zip(sample, dtypes)]


def _shape(s) -> list:
    return [None if d is None else int(d) for d in s]


def _tensor_name(t, default: str) -> str:
    """The name users know an output by: the layer that makes it (Keras 3 and tf_keras)."""
    hist = getattr(t, "_keras_history", None)
    layer = getattr(hist, "operation", None) or getattr(hist, "layer", None) if hist is not None else None
    name = getattr(layer, "name", None) or getattr(t, "name", None) or default
    return name.split(":")[0]


def from_keras_model(model, names_hint: list[str] | None = None) -> Graph:
    """A Keras 3 or tf_keras model object."""
    ins = model.inputs
    outs = model.outputs
    in_names = [getattr(t, "name", f"input_{i}").split(":")[0] for i, t in enumerate(ins)]
    out_names = names_hint or [_tensor_name(t, f"output_{i}") for i, t in enumerate(outs)]
    out_names = [n if n else f"output_{i}" for i, n in enumerate(out_names)]
    if len(set(out_names)) != len(out_names):
        out_names = [f"output_{i}" for i in range(len(outs))]
    inputs = [{"name": n, "shape": _shape(t.shape), "dtype": tf.as_dtype(t.dtype).name}
              for n, t in zip(in_names, ins)]

    def fn(*xs):
        y = model(list(xs) if len(xs) > 1 else xs[0], training=False)
        ys = y if isinstance(y, (list, tuple)) else [y]
        if isinstance(y, dict):
            ys = list(y.values())
        return {n: t for n, t in zip(out_names, ys)}

    return Graph(fn, inputs, out_names, keep=model)


_TRUST_HINT = ("re-export the model without Lambda layers or custom objects (or export a SavedModel with "
               "model.export(DIR) and convert that); if you trust this file, pass --trust-model-code "
               "(edgeopt.convert(..., trust_model_code=True))")


def _check_keras_code(path: str, trust_model_code: bool) -> None:
    """Refuse a Keras file whose config would run code on load, unless the user opted in. Runs no code itself."""
    if trust_model_code:
        return
    from edgeopt.converters.keras_tflite import code_risks, keras_config
    try:
        cfg = keras_config(path)
    except Exception as e:  # not readable as Keras without a loader: say so, never fall back to one
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"{path}: cannot read the Keras model config: {first[:300]}") from None
    risks = code_risks(cfg)
    if risks and not trust_model_code:
        more = f" and {len(risks) - 3} more" if len(risks) > 3 else ""
        raise UsageError(f"{path}: the model holds code that would run when it is loaded "
                         f"({', '.join(risks[:3])}{more}); refusing to load it", hint=_TRUST_HINT)


def load(path: str, fmt: str, trust_model_code: bool = False) -> Graph:
    """Load a Keras file, a SavedModel directory or a float .tflite file (:func:`load_tflite`). Bad files raise
    UsageError (exit 2).

    A Keras file with Lambda layers or custom objects (code in the file) is refused unless
    ``trust_model_code``: its config is inspected first, and Keras loads it in safe mode.
    """
    if fmt == "tflite":
        return load_tflite(path)
    try:
        if fmt == "keras":
            _check_keras_code(path, trust_model_code)
            import keras  # Keras 3, as TensorFlow 2.19 ships it
            try:
                model = keras.models.load_model(path, compile=False, safe_mode=not trust_model_code)
            except Exception as first:
                if "safe_mode" in str(first) or "arbitrary code" in str(first):
                    # Keras found code the inspection missed: that refusal is final, never retried
                    # with a loader that has no safe mode
                    raise UsageError(f"{path}: Keras refused to load the model in safe mode (it holds code "
                                     "that would run when it is loaded)", hint=_TRUST_HINT) from None
                if not path.lower().endswith((".h5", ".hdf5")):
                    raise
                try:
                    # legacy .h5 files written by tf.keras 2.x; tf_keras has no safe mode, so it sees only
                    # files whose config was inspected above (or that the user trusts)
                    import tf_keras
                    model = tf_keras.models.load_model(path, compile=False)
                except Exception:
                    raise first from None
            return from_keras_model(model)
        if fmt == "saved_model":
            obj = tf.saved_model.load(path)
            if "serving_default" not in obj.signatures:
                raise UsageError(f"{path}: SavedModel has no 'serving_default' signature",
                                 hint="export it with a serving signature (model.export(path) in Keras)")
            sig = obj.signatures["serving_default"]
            _, kw = sig.structured_input_signature
            names = sorted(kw)
            inputs = [{"name": n, "shape": _shape(kw[n].shape), "dtype": kw[n].dtype.name} for n in names]
            out_names = sorted(sig.structured_outputs)

            def fn(*xs):
                return sig(**dict(zip(names, xs)))

            return Graph(fn, inputs, out_names, keep=obj)
    except UsageError:
        raise
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"{path}: cannot load as {fmt}: {first[:300]}") from None
    raise UsageError(f"{path}: unsupported format {fmt}")


MAX_TFLITE_BYTES = 2 << 30   # a flatbuffer cannot be larger; a bigger file is not a model we read
# ops TensorFlow's INT8 calibrator cannot run a float model through (it ends the process on a WHILE op) or that
# hold a second subgraph the quantizer does not reach
_TFLITE_CONTROL = {"WHILE", "IF", "CALL_ONCE"}


def load_tflite(path: str) -> TFLiteGraph:
    """A float .tflite file as a :class:`TFLiteGraph`: checked by the interpreter (a crafted file it cannot load
    is a UsageError), then made a model TensorFlow's quantizer takes (:func:`_quantizable`: float16 and sparse
    weights made float32 constants, MediaPipe's transposed convolution made the builtin one), which must compute
    what the file computes. A model with control flow (WHILE, IF) is refused before anything runs it."""
    size = os.path.getsize(path)
    if size > MAX_TFLITE_BYTES:
        raise UsageError(f"{path}: {size} bytes is larger than any TFLite flatbuffer")
    with open(path, "rb") as f:
        raw = f.read(MAX_TFLITE_BYTES + 1)
    def unloadable(e):
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return UsageError(f"{path}: not a loadable TFLite model ({first[:200]})")
    try:
        interp = _interpreter(raw)
        interp.allocate_tensors()
        kinds = {op["op_name"] for op in interp._get_ops_details()}
    except Exception as e:
        raise unloadable(e) from None
    if kinds & _TFLITE_CONTROL:   # before anything runs the model (a crafted loop need not end)
        raise UsageError(f"{path}: the model has control flow ({', '.join(sorted(kinds & _TFLITE_CONTROL))}), "
                         "which TensorFlow's INT8 calibrator cannot run",
                         hint="convert from the source model (.onnx/.keras/SavedModel) instead")
    try:
        data = _quantizable(raw)
        folded = _interpreter(data)
        folded.allocate_tensors()
        same = data == raw or _same_outputs(interp, folded)
    except Exception as e:
        raise unloadable(e) from None
    if not same:   # what the calibrator and the FP32 reference would read is not the file's model
        raise UsageError(f"{path}: the model could not be made one TensorFlow's INT8 quantizer takes (float32 "
                         "weights, builtin ops) without changing its outputs",
                         hint="convert from the source model (.onnx/.keras/SavedModel) instead")
    interp = folded
    ins, outs = interp.get_input_details(), interp.get_output_details()
    inputs = [{"name": _tflite_name(d, f"input_{i}"), "shape": [int(x) for x in d["shape"]],
               "dtype": np.dtype(d["dtype"]).name} for i, d in enumerate(ins)]
    names = [_tflite_name(d, f"output_{i}") for i, d in enumerate(outs)]
    if len(set(names)) != len(names) or len({i["name"] for i in inputs}) != len(inputs):
        raise UsageError(f"{path}: the model's input or output tensor names repeat; edgeopt names them by name")
    return TFLiteGraph(data, inputs, names, [int(d["index"]) for d in outs])


def _same_outputs(a, b) -> bool:
    """Whether two allocated interpreters of one model's forms give the same outputs (to float32 rounding) on one
    seeded input: uniform in [-1, 1] for float inputs, zeros for integer ones."""
    rng = np.random.default_rng(0)
    for d in a.get_input_details():
        x = (rng.uniform(-1, 1, d["shape"]) if np.dtype(d["dtype"]).kind == "f" else np.zeros(d["shape"]))
        a.set_tensor(d["index"], x.astype(d["dtype"]))
        b.set_tensor(d["index"], x.astype(d["dtype"]))
    a.invoke()
    b.invoke()
    for da, db in zip(a.get_output_details(), b.get_output_details()):
        x, y = a.get_tensor(da["index"]).astype(np.float64), b.get_tensor(db["index"]).astype(np.float64)
        if x.shape != y.shape or not np.allclose(x, y, rtol=1e-4, atol=1e-5 * (np.nanmax(np.abs(x), initial=0) + 1e-30),
                                                 equal_nan=True):
            return False
    return True


def _tflite_name(detail: dict, default: str) -> str:
    name = detail.get("name")
    return name if isinstance(name, str) and name else default


def _quantizable(data: bytes) -> bytes:
    """``data`` made a model TensorFlow's calibrator and quantizer take, computing the same (:func:`load_tflite`
    checks that it does); the model unchanged when there is nothing to make so:

    - each DENSIFY of a sparse constant (MediaPipe's ``*_sparse`` models: sparse float16 weights, DENSIFY, then
      DEQUANTIZE) becomes the dense constant it computes (:func:`_densified`). Left in place, the DEQUANTIZE after
      it stayed, and XNNPACK ran that model to NaN;
    - each DEQUANTIZE of a float16 constant becomes the float32 constant it makes: the quantizer would take those
      weights for activations, and write asymmetric INT8 weights that TFLite's INT8 convolutions refuse;
    - MediaPipe's custom op ``Convolution2DTransposeBias`` (its segmentation models' upsampling: only XNNPACK runs
      it, the calibrator has no kernel for it) becomes the builtin TRANSPOSE_CONV with its bias, which computes the
      same and has an INT8 kernel (:func:`_builtin_transpose_conv`).

    The ops removed, the copies and op codes nothing uses any more are dropped: the calibrator's op resolver has
    no DEQUANTIZE version 2."""
    from tensorflow.lite.python import schema_py_generated as schema_fb
    from tensorflow.lite.tools import flatbuffer_utils
    fm = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    codes = _op_codes(fm)
    dense = _densified(data, fm, codes)
    dropped = set()   # buffers of the float16 and sparse copies
    changed = False
    for n, sg in enumerate(fm.subgraphs):
        keep = []
        for op in sg.operators:
            if n == 0 and codes[op.opcodeIndex] == schema_fb.BuiltinOperator.DENSIFY and op.outputs[0] in dense:
                new = schema_fb.BufferT()
                new.data = np.frombuffer(np.ascontiguousarray(dense[op.outputs[0]]).tobytes(), np.uint8)
                fm.buffers.append(new)
                sg.tensors[op.outputs[0]].buffer = len(fm.buffers) - 1
                dropped.add(sg.tensors[op.inputs[0]].buffer)
                continue
            if codes[op.opcodeIndex] == schema_fb.BuiltinOperator.DEQUANTIZE and len(op.inputs) == 1:
                src, dst = sg.tensors[op.inputs[0]], sg.tensors[op.outputs[0]]
                buf = fm.buffers[src.buffer].data
                if src.type == schema_fb.TensorType.FLOAT16 and buf is not None and len(buf):
                    values = np.frombuffer(bytes(bytearray(buf)), dtype="<f2").astype("<f4")
                    new = schema_fb.BufferT()
                    new.data = np.frombuffer(values.tobytes(), np.uint8)
                    fm.buffers.append(new)
                    dst.buffer = len(fm.buffers) - 1
                    dropped.add(src.buffer)
                    continue
            changed |= _builtin_transpose_conv(fm, sg, op)
            keep.append(op)
        sg.operators = keep
    if not dropped and not changed:
        return data
    used = {op.opcodeIndex for sg in fm.subgraphs for op in sg.operators}
    in_use = {sg.tensors[i].buffer for sg in fm.subgraphs for op in sg.operators for i in op.inputs if i >= 0}
    for b in dropped - in_use:
        fm.buffers[b].data = None
    remap = {old: new for new, old in enumerate(sorted(used))}
    fm.operatorCodes = [fm.operatorCodes[i] for i in sorted(used)]
    for sg in fm.subgraphs:
        for op in sg.operators:
            op.opcodeIndex = remap[op.opcodeIndex]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(fm))


_TFLITE_PADDING = {1: "SAME", 2: "VALID"}   # TfLitePadding (the custom op's options) -> the schema's Padding


def _builtin_transpose_conv(fm, sg, op) -> bool:
    """Make ``op``, when it is MediaPipe's custom ``Convolution2DTransposeBias`` (inputs: input, weights [O, KH, KW,
    I], bias; options: TfLiteTransposeConvParams, three int32: padding, stride width, stride height), the builtin
    TRANSPOSE_CONV (version 3: with bias) of the same weights, with its output's static shape as a constant.
    Whether it did."""
    from tensorflow.lite.python import schema_py_generated as schema_fb
    code = fm.operatorCodes[op.opcodeIndex]
    if (code.builtinCode != schema_fb.BuiltinOperator.CUSTOM or bytes(code.customCode or b"") !=
            b"Convolution2DTransposeBias" or op.inputs is None or len(op.inputs) != 3 or op.customOptions is None
            or len(op.customOptions) != 12):
        return False
    padding, stride_w, stride_h = (int(v) for v in np.frombuffer(bytes(bytearray(op.customOptions)), "<i4"))
    out = sg.tensors[op.outputs[0]]
    if padding not in _TFLITE_PADDING or out.shape is None or len(out.shape) != 4:
        return False
    index = next((k for k, c in enumerate(fm.operatorCodes) if c.builtinCode == schema_fb.BuiltinOperator.TRANSPOSE_CONV
                  and c.version >= 3), None)
    if index is None:
        new = schema_fb.OperatorCodeT()
        new.builtinCode = new.deprecatedBuiltinCode = schema_fb.BuiltinOperator.TRANSPOSE_CONV
        new.version = 3
        fm.operatorCodes.append(new)
        index = len(fm.operatorCodes) - 1
    buf = schema_fb.BufferT()
    buf.data = np.frombuffer(np.asarray(out.shape, "<i4").tobytes(), np.uint8)
    fm.buffers.append(buf)
    shape = schema_fb.TensorT()
    shape.shape, shape.type, shape.buffer = np.array([4], np.int32), schema_fb.TensorType.INT32, len(fm.buffers) - 1
    shape.name = bytes(out.name or b"") + b"/output_shape"
    sg.tensors.append(shape)
    options = schema_fb.TransposeConvOptionsT()
    options.padding = getattr(schema_fb.Padding, _TFLITE_PADDING[padding])
    options.strideW, options.strideH = stride_w, stride_h
    x, w, b = (int(i) for i in op.inputs)
    op.inputs = np.array([len(sg.tensors) - 1, w, x, b], np.int32)
    op.opcodeIndex = index
    op.builtinOptionsType, op.builtinOptions = schema_fb.BuiltinOptions.TransposeConvOptions, options
    op.customOptions = None
    return True


def _densified(data: bytes, fm, codes) -> dict:
    """{output tensor: its values} of each DENSIFY of a constant in the main subgraph of ``data``, as TFLite's own
    DENSIFY kernel makes them (one run of the model on zeros, every tensor kept, no delegate); {} when there is
    none or the model does not run so (then the DENSIFY ops stay)."""
    from tensorflow.lite.python import schema_py_generated as schema_fb
    sg = fm.subgraphs[0] if fm.subgraphs else None
    outs = [int(op.outputs[0]) for op in (sg.operators if sg else []) if
            codes[op.opcodeIndex] == schema_fb.BuiltinOperator.DENSIFY and len(op.inputs) == 1
            and fm.buffers[sg.tensors[op.inputs[0]].buffer].data is not None]
    if not outs:
        return {}
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    try:
        interp = Interpreter(model_content=data, experimental_preserve_all_tensors=True,
                             experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        interp.allocate_tensors()
        for d in interp.get_input_details():
            interp.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
        interp.invoke()
        return {t: interp.get_tensor(t).copy() for t in outs}
    except Exception:   # e.g. a custom op only a delegate runs
        return {}


class _Calibrating:
    """What tf.lite.TFLiteConverter is to :func:`quantize` and the :class:`Debugger`, for a float .tflite model:
    its ``convert()`` calibrates the model with TensorFlow's calibrator on ``representative_dataset`` and, unless
    ``_experimental_calibrate_only``, quantizes it with the MLIR quantizer and the inference I/O types, as the
    converter does after its own calibration."""

    def __init__(self, data: bytes):
        self.data = data
        self.optimizations = [tf.lite.Optimize.DEFAULT]
        self.representative_dataset = None
        self.target_spec = type("TargetSpec", (), {"supported_ops": None})()
        self.inference_input_type = self.inference_output_type = tf.float32
        self.experimental_new_quantizer = self.experimental_mlir_quantizer = True
        self._experimental_calibrate_only = False
        self._experimental_disable_per_channel = False

    def convert(self) -> bytes:
        from tensorflow.lite.python import convert as lite_convert
        from tensorflow.lite.python.optimize import calibrator
        calibrated = calibrator.Calibrator(self.data).calibrate(self.representative_dataset)
        if self._experimental_calibrate_only:
            return calibrated
        return lite_convert.mlir_quantize(calibrated, disable_per_channel=self._experimental_disable_per_channel,
                                          input_data_type=self.inference_input_type,
                                          output_data_type=self.inference_output_type)


def _converter(graph: Graph, source: str, representative, per_channel: bool):
    """The INT8 converter of ``graph``: TFLiteConverter on its frozen function, or :class:`_Calibrating` on a
    float .tflite model."""
    if isinstance(graph, TFLiteGraph):
        conv = _Calibrating(graph.data)
    else:
        conv = tf.lite.TFLiteConverter.from_concrete_functions([_frozen(graph, source)])
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv._experimental_disable_per_channel = not per_channel
    return conv


# -------------------------------------------------------------------------------------- quantization

_OP_PATTERNS = [
    re.compile(r"'tf\.(\w+)' op is neither a custom op nor a flex op"),
    re.compile(r"Quantization not yet supported for op: '?(\w+)'?"),
    re.compile(r"op '?(\w+)'? is not supported", re.I),
    re.compile(r"tfl\.(\w+)'? op .*(?:quantiz|int8)", re.I),
]


def _failing_ops(msg: str) -> list[str]:
    ops = []
    for p in _OP_PATTERNS:
        ops += p.findall(msg)
    return sorted(set(ops))


def recipe_options(recipe) -> dict:
    """The keywords of :func:`quantize` a recipe (edgeopt.conversion.options.Recipe) asks for. Its float layers
    are recovery's (:func:`rebuild`): a first conversion has none."""
    return {"method": recipe.calibration_method, "bias_correction": bool(recipe.bias_correction),
            "per_channel": bool(recipe.per_channel), "weight_rounding": recipe.weight_rounding}


def quantize(graph: Graph, calib: list[list[np.ndarray]], io_dtype: str, allow_float_fallback: bool = False,
             source: str = "model", method: str = "minmax", bias_correction: bool = False,
             per_channel: bool = True, weight_rounding: str = "nearest", cache: dict | None = None,
             float_blocks: bool = False, max_float_layers: dict | None = None,
             equalize: tuple[float, float] | None = None) -> tuple[bytes, dict]:
    """Full-integer INT8 TFLite (per-channel weights) from a Graph with static batch-1 input shapes.

    calib: list of samples, each a list of arrays (batch 1) in the graph's input order and layout.
    method: activation ranges (edgeopt.conversion.ranges.METHODS); "minmax" is the converter's own.
    bias_correction: each convolution's bias absorbs its INT8 weights' mean output shift (Debugger.bias_corrected).
    per_channel: one weight scale per output channel (False: one per tensor).
    weight_rounding: "gptq" (:func:`_rounded_weights`) or "nearest" (the converter's own).
    cache: a dict kept across calls on the same graph and calibration data (the rounded weights do not depend
    on the activation ranges: "auto" computes them once).
    float_blocks: the target runs float ops where it runs the INT8 ones (not an integer-only one): the
    normalization blocks of a transformer (:func:`tflite_blocks.norm_blocks`: LayerNorm's arithmetic, Softmax, GELU) and the
    output activations on a fixed INT8 grid (:func:`tflite_blocks.output_activations`) stay in float where INT8 does not fit them: ops inside them without an INT8 kernel, or a worst output SQNR (on the
    first AUTO_SAMPLES calibration samples, against the float model) at least FLOAT_BLOCKS_MIN_GAIN_DB better
    with them in float. Each block counts as one float layer against ``max_float_layers``
    (edgeopt.conversion.options.parse_max_float_layers; None: the default budget); more blocks than that keep
    the all-INT8 artifact. Convolutions, FULLY_CONNECTED and BATCH_MATMUL stay INT8. A model without such a
    block (a CNN with class scores out) is converted exactly as without ``float_blocks``.
    equalize: (margin, floor) of :func:`equalize_depthwise`, applied to the calibrated model of a stepwise
    recipe (the converter's one-step min-max conversion has no model between calibration and quantization);
    None: not (an ONNX source was equalized before onnx2tf).
    Returns (tflite bytes, info) where info has the signature's tensor indices, any float ops kept and, where
    the model has such blocks, ``float_blocks`` (the choice; its ``tensors`` are the ops kept float).
    """
    if not isinstance(graph, TFLiteGraph):
        _frozen(graph, source)   # its refusals (input shapes not static, a loop) before any conversion is tried
    # min-max without bias correction is the converter's own one-step conversion; any other recipe calibrates
    # only, sets the ranges it chose (set_ranges), corrects biases, then runs the MLIR quantizer with the I/O
    # types, as TFLiteConverter.convert does after its own calibration
    stepwise = method != "minmax" or bias_correction or weight_rounding != "nearest"
    io = {"int8": tf.int8, "uint8": tf.uint8, "float32": tf.float32}[io_dtype]

    dtypes = [i["dtype"] for i in graph.inputs]

    def representative():
        for sample in calib:
            yield feed(sample, dtypes)

    def convert(ops, calibrate_only=stepwise):
        conv = _converter(graph, source, representative, per_channel)
        conv.target_spec.supported_ops = ops
        if calibrate_only:
            conv.experimental_new_quantizer = True
            conv._experimental_calibrate_only = True
        else:
            conv.inference_input_type = io
            conv.inference_output_type = io
            return integer_splits(conv.convert())
        return conv.convert()

    def final(model, io_type, floats=None):
        return _int8_float_io(model, per_channel, floats or (), io_type)

    float_ops: list[str] = []
    refusal = None  # the full-integer conversion's refusal, while float blocks may still resolve it
    # the calibrated model depends on the graph, the data and the weight granularity only: "auto" and a costly
    # weight rounding convert the same graph 2-3 times (calibration was a quarter of a MobileNetV2 conversion)
    calibrated_key = ("calibrated", bool(per_channel))
    eq_info = (cache or {}).get("equalization") if stepwise and equalize else None
    try:
        if stepwise and cache is not None and calibrated_key in cache:
            data = cache[calibrated_key]
        else:
            data = convert([tf.lite.OpsSet.TFLITE_BUILTINS_INT8])
            if stepwise and equalize:
                data, eq_info = equalize_depthwise(data, calib, *equalize)
                if cache is not None:   # what the cached calibrated model had done to it
                    cache["equalization"] = eq_info
            if stepwise and cache is not None:
                cache[calibrated_key] = data
    except Exception as e:
        named = _failing_ops(str(e))
        # only SPLITs named: with float kernels allowed to the converter they may still come out INT8
        # (integer_splits), so the refusal waits for the artifact, and stands if they do not
        splits_only = bool(named) and set(named) <= set(_SPLITS)
        if not allow_float_fallback and not float_blocks and not splits_only:
            raise _int8_failure(e, source) from None
        try:
            data = convert([tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS])
        except Exception as fallback_error:  # e.g. an op TFLite has no kernel for at all, float included
            if not allow_float_fallback and not float_blocks:
                raise _int8_failure(e, source) from None
            ops = _failing_ops(str(fallback_error))
            raise UsageError(f"{source}: TFLite conversion failed even with float kernels: "
                             + (f"no TFLite kernel for {', '.join(ops)}" if ops else
                                (str(fallback_error).strip().splitlines() or ["unknown error"])[-1][:300]),
                             hint="convert for jetson (ONNX) instead, or replace those ops in the model")
        float_ops = named or ["(unnamed)"]
        if not allow_float_fallback:
            refusal = _int8_failure(e, source)
        if refusal is not None and not stepwise and not float_ops_of(data):
            refusal, float_ops = None, []   # integer_splits made the ops it named INT8
    bc_info = rounding_info = None
    # the float model's outputs both float-block choices (before fitting, then the artifact's) compare with: the
    # same model and samples, run once (a float model at 800x608, the layout detector, on 32 samples)
    float_refs: dict = {}
    raw = cal = data if stepwise else None   # the calibrated float model, and the one quantized from it
    if stepwise:
        cal = set_ranges(data, calib, method)
        if weight_rounding in ("gptq", "gptq_act"):
            weights, _, rounding_info = _cached_rounding(cache, data, calib, per_channel)
            cal = _apply_buffers(cal, weights, set())
        # gptq_act and bias correction fit the weights to the INT8 model's activations: that model must be the
        # artifact's form, with the normalization blocks the target keeps in float. Fitted to the all-INT8 form
        # of a transformer whose INT8 LayerNorm is broken (Magika: correlation 0.34 with FP32 after it), gptq_act
        # left Magika's rpi artifact at 11.7 dB output SQNR where plain GPTQ gives 30.5
        fitting = None
        if float_blocks and (weight_rounding == "gptq_act" or bias_correction) and tflite_blocks.float_block_candidates(op_graph(data)):
            fitting = _fitting_float_blocks(data, cal, io, final, calib, allow_float_fallback, max_float_layers,
                                            float_ops, float_refs)
        if weight_rounding == "gptq_act":  # from the GPTQ model: its layers' INT8 inputs are what it corrects
            weights, _, rounding_info = _cached_compensation(cache, data, cal, calib, per_channel, method, fitting)
            cal = _apply_buffers(cal, weights, set())
        if bias_correction:  # after rounding: it corrects what the rounded weights still shift
            shifts, bc_info = _bias_shifts(cal, final(cal, tf.float32, fitting), calib)
            cal = _apply_buffers(cal, shifts, set())
        try:
            data = final(cal, io)
            if refusal is not None and not float_ops_of(data):
                # the calibration named ops the quantizer leaves float, and integer_splits made them INT8
                refusal, float_ops = None, []
        except Exception as e:
            if not float_blocks:
                raise _int8_failure(e, source) from None
            refusal, float_ops = _int8_failure(e, source), _failing_ops(str(e)) or ["(unnamed)"]
    # The converter may leave an op without an int8 kernel in float (wrapped in DEQUANTIZE/QUANTIZE) even
    # with TFLITE_BUILTINS_INT8 only: check the result itself.
    left = float_ops_of(data) if refusal is None else []
    if left and not allow_float_fallback:
        refusal = _no_int8_kernel(UsageError(f"{source}: ops that cannot be quantized to INT8: {', '.join(left)} "
                                             "(they would run in float)", hint=FLOAT_FALLBACK_HINT))
        float_ops = left
    blocks = None
    if float_blocks and (refusal is not None or stepwise or tflite_blocks.float_block_candidates(op_graph(data))):
        if raw is None:  # the one-step conversion: calibrate only, the same min-max ranges, to requantize
            raw = cal = convert([tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS], True)
        chosen, blocks = _choose_float_blocks(raw, None if refusal is not None else data,
                                              lambda tensors: final(cal, io, tensors), calib,
                                              allow_float_fallback, max_float_layers, float_ops, float_refs)
        if chosen is not None:
            data = chosen
            if blocks.get("float"):
                refusal = None
    if refusal is not None:
        if blocks is not None and "why" in blocks:  # the blocks would have held those ops: say why they did not
            refusal.message = (f"{refusal.message}; the {len(blocks['blocks'])} normalization blocks were not kept "
                               f"in float: {blocks['why']}")
            refusal.args = (refusal.message,)
        raise refusal
    info = io_order(data)
    left = float_ops_of(data)
    if left or float_ops:  # the fallback was used, or blocks kept float: record which ops really compute in float
        info["float_ops"] = left or float_ops
    if blocks is not None:
        info["float_blocks"] = blocks
    if bc_info is not None:
        info["bias_correction"] = bc_info
    if rounding_info is not None:
        info["weight_rounding"] = rounding_info
    if eq_info is not None:
        info["equalization"] = eq_info
    return data, info


def _fitting_float_blocks(raw: bytes, cal: bytes, io, final, calib, allow_float_fallback: bool, max_float_layers,
                          no_kernel: list[str], refs: dict | None = None) -> tuple[str, ...]:
    """The blocks' tensors :func:`_choose_float_blocks` keeps in float for ``cal`` (the model with
    its GPTQ weights, before any fitting): the form the weights are fitted in. () where all-INT8 is chosen."""
    try:
        plain = final(cal, io)
    except Exception:  # no INT8 kernel for some op: the blocks decide whether there is an artifact at all
        plain = None
    _, report = _choose_float_blocks(raw, plain, lambda tensors: final(cal, io, tensors), calib,
                                     allow_float_fallback, max_float_layers, no_kernel, refs)
    return tuple(report.get("tensors", ())) if report else ()


def _int8_failure(e: Exception, source: str) -> UsageError:
    """The converter's refusal of a full-integer conversion as one clear error naming the ops, if it does."""
    msg = str(e)
    ops = _failing_ops(msg)
    last = (msg.strip().splitlines() or [type(e).__name__])[-1]
    what = f" ops that cannot be quantized to INT8: {', '.join(ops)}" if ops else " " + last[:300]
    return _no_int8_kernel(UsageError(f"{source}: full-integer INT8 conversion failed:{what}",
                                      hint=FLOAT_FALLBACK_HINT))


FLOAT_FALLBACK_HINT = "allow float kernels for those ops with --allow-float-fallback (not for Coral)"


def _no_int8_kernel(error: UsageError) -> UsageError:
    """Marks a refusal that float kernels would resolve: the pipeline words the hint for targets that have
    none (``integer_only``: the Edge TPU), where --allow-float-fallback is refused."""
    error.needs_float_kernels = True
    return error


def _float_runs(calibrated: bytes, calib):
    """The calibrated float model (every tensor kept) run on each sample of ``calib`` in turn: yields its
    interpreter after each run, each input fed in its own dtype."""
    from ai_edge_litert.interpreter import Interpreter
    with warnings.catch_warnings():  # "intended for debugging": that is what it is used for here
        warnings.simplefilter("ignore", UserWarning)
        fi = Interpreter(model_content=calibrated, experimental_preserve_all_tensors=True)
    fi.allocate_tensors()
    details = fi.get_input_details()
    for sample in calib:
        for d, a in zip(details, sample):
            fi.set_tensor(d["index"], np.asarray(a, d["dtype"]))
        fi.invoke()
        yield fi


_CONV, _DEPTHWISE, _PAD, _PADV2, _RELU, _RELU6 = 3, 4, 34, 60, 19, 21   # TFLite builtin operator codes
_FUSED_RELU, _FUSED_RELU6 = 1, 3                                      # ActivationFunctionType


def _depthwise_pairs(fm) -> list[tuple]:
    """[(conv op, depthwise op, [tensors between them], hi)] of a model object: a CONV_2D whose output, rectified
    (fused RELU or RELU6, or a RELU/RELU6 op after it; ``hi`` 6.0 or None), reaches a DEPTHWISE_CONV_2D with
    multiplier 1, through a zero PAD at most, each tensor read by the next op only; both with float32 constant
    weights of their own and the conv with a bias of its own (MobileNet's inverted residuals)."""
    sg = fm.subgraphs[0]
    codes = _op_codes(fm)
    readers: dict = {}
    for op in sg.operators:
        for t in op.inputs:
            if t >= 0:
                readers.setdefault(int(t), []).append(op)
    made = {int(op.outputs[0]): op for op in sg.operators if len(op.outputs)}
    users = _buffer_users(sg)
    outputs = set(int(t) for t in sg.outputs)

    def only_reader(t: int):
        r = readers.get(t, [])
        return r[0] if len(r) == 1 and t not in outputs else None

    pairs = []
    for op in sg.operators:
        if codes[op.opcodeIndex] != _DEPTHWISE or len(op.inputs) < 2 or not _own_float(fm, users, int(op.inputs[1])):
            continue
        if int(getattr(op.builtinOptions, "depthMultiplier", 1) or 1) != 1:
            continue
        between, t = [], int(op.inputs[0])
        prev = made.get(t)
        if prev is not None and codes[prev.opcodeIndex] in (_PAD, _PADV2):
            pad_value = int(prev.inputs[2]) if codes[prev.opcodeIndex] == _PADV2 and len(prev.inputs) > 2 else -1
            if pad_value >= 0 or only_reader(t) is not op:   # PADV2 pads with a value of its own: not zero
                continue
            between.append(t)
            t = int(prev.inputs[0])
            prev = made.get(t)
        hi = "none"
        if prev is not None and codes[prev.opcodeIndex] in (_RELU, _RELU6) and only_reader(t) is not None:
            hi = 6.0 if codes[prev.opcodeIndex] == _RELU6 else None
            between.append(t)
            t = int(prev.inputs[0])
            prev = made.get(t)
        if prev is None or codes[prev.opcodeIndex] != _CONV or only_reader(t) is None:
            continue
        fused = int(getattr(prev.builtinOptions, "fusedActivationFunction", 0) or 0)
        if hi == "none":
            hi = {_FUSED_RELU: None, _FUSED_RELU6: 6.0}.get(fused, "none")
        elif fused not in (0,):
            continue
        if hi == "none" or len(prev.inputs) < 3 or prev.inputs[2] < 0:
            continue   # no rectifier (signed ranges fit symmetric INT8 already), or no bias to scale with
        if not (_own_float(fm, users, int(prev.inputs[1])) and _own_float(fm, users, int(prev.inputs[2]))):
            continue
        channels = int(sg.tensors[int(prev.inputs[1])].shape[0])
        if (list(sg.tensors[int(op.inputs[1])].shape)[-1:] != [channels]
                or list(sg.tensors[int(prev.inputs[2])].shape) != [channels]):
            continue
        pairs.append((prev, op, [t, *between], hi))
    return pairs


def equalize_depthwise(calibrated: bytes, calib, margin: float, floor: float) -> tuple[bytes, dict]:
    """(model, info): the calibrated float model with each depthwise convolution's input equalized from the
    calibration data, as edgeopt.converters.onnx_equalize.equalize_depthwise_inputs does for an ONNX source
    (there, before onnx2tf): channel c of the conv that makes it (weights, bias) divided by ``s_c``, depthwise
    filter c multiplied by it, ``s_c = min(1, margin * r_c / 6)`` through RELU6 (the channel is then clipped at
    ``margin`` times its calibration maximum ``r_c`` at the latest) and ``r_c / max(r)`` through RELU (exact),
    at least ``floor``. For Keras and SavedModel sources, whose graphs edgeopt does not rewrite before the
    converter. The tensors between the two layers get their calibrated min/max from the rescaled channels."""
    from tensorflow.lite.tools import flatbuffer_utils
    fm = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
    pairs = _depthwise_pairs(fm)
    info = {"pairs": 0, "of": len(pairs), "margin": margin, "floor": floor}
    if not pairs or not calib:
        return calibrated, info
    sg = fm.subgraphs[0]
    lo: dict = {}
    top: dict = {}
    watched = [t for _, _, ts, _ in pairs for t in ts]
    for fi in _float_runs(calibrated, calib):
        for t in watched:
            v = fi.get_tensor(t).astype(np.float64)
            v = v.reshape(-1, v.shape[-1])
            mx, mn = v.max(0), v.min(0)
            top[t] = mx if t not in top else np.maximum(top[t], mx)
            lo[t] = mn if t not in lo else np.minimum(lo[t], mn)
    spread = []
    for conv, dw, ts, hi in pairs:
        r = top[ts[-1]]   # the depthwise input's channels
        if not np.isfinite(r).all() or r.max() <= 0:
            continue   # a crafted model can overflow to inf (or NaN): its scales would be NaN; leave the pair
        s = np.clip(margin * r / hi, floor, 1.0) if hi is not None else np.maximum(r / r.max(), floor)
        if np.all(s == 1.0):
            continue
        for t, axis, f in ((int(conv.inputs[1]), 0, 1 / s), (int(conv.inputs[2]), 0, 1 / s), (int(dw.inputs[1]), -1, s)):
            tt = sg.tensors[t]
            w = np.frombuffer(bytes(fm.buffers[tt.buffer].data), np.float32).reshape(tt.shape).astype(np.float64)
            shape = [1] * w.ndim
            shape[axis] = -1
            fm.buffers[tt.buffer].data = np.frombuffer((w * f.reshape(shape)).astype(np.float32).tobytes(), np.uint8)
        for t in ts:   # the rescaled channels' calibrated range: each channel's extremes divided by its s
            q = sg.tensors[t].quantization
            if q is not None and q.min is not None and len(q.min) == 1:
                q.min = np.array([min(0.0, float((lo[t] / s).min()))], np.float32)
                q.max = np.array([float((top[t] / s).max())], np.float32)
        info["pairs"] += 1
        spread.append(float(np.median(s)))
    if spread:
        info["median_scale"] = round(float(np.median(spread)), 3)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(fm)), info


def set_ranges(calibrated: bytes, calib, method: str, percentile: float | None = None) -> bytes:
    """The calibrated float model (min/max per tensor, from the converter's calibration) with the ranges of
    its activations chosen by ``method`` (edgeopt.conversion.ranges) from per-sample statistics of the float
    model on ``calib``. The model's input and output tensors keep their min-max ranges: an output range
    narrower than what the model gives would clip the top logits into ties. "minmax" returns the model as is."""
    if method == "minmax":
        return calibrated
    from tensorflow.lite.tools import flatbuffer_utils

    from edgeopt.conversion import ranges
    fm = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
    sg = fm.subgraphs[0]
    io = set(sg.inputs) | set(sg.outputs)
    want = [i for i, t in enumerate(sg.tensors) if i not in io and t.quantization is not None
            and t.quantization.min is not None and len(t.quantization.min) == 1
            and t.quantization.max is not None and len(t.quantization.max) == 1]
    col = ranges.Collector(keep_values=method in ranges.NEEDS_VALUES)
    # a tensor the float run does not keep (an unrolled LSTM's SPLIT output) keeps the calibrator's own range
    unread: set = set()
    for fi in _float_runs(calibrated, calib):
        for i in want:
            if i not in unread:
                try:
                    col.add(str(i), fi.get_tensor(i))
                except ValueError:   # "Tensor data is null"
                    unread.add(i)
    got = col.ranges(method, symmetric=False,
                     percentile=ranges.DEFAULT_PERCENTILE if percentile is None else float(percentile))
    for key, (lo, hi) in got.items():
        q = sg.tensors[int(key)].quantization
        q.min = np.array([lo], np.float32)
        q.max = np.array([hi], np.float32)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(fm))


def _frozen(graph: Graph, source: str):
    """The graph as a frozen concrete function with static batch-1 inputs, a graph with a loop refused
    (:func:`_refuse_loops`); frozen once per graph (recipes, recovery candidates and the debugger quantize the
    same one: 0.6 s a time on MobileNetV2)."""
    cf = getattr(graph, "_frozen_cf", None)
    if cf is None:
        cf = _freeze(graph, source)
        _refuse_loops(cf, source)
        graph._frozen_cf = cf
    return cf


def _freeze(graph: Graph, source: str):
    specs = [tf.TensorSpec([1] + [d for d in s["shape"][1:]], tf.as_dtype(s["dtype"]), name=_sig_name(s["name"], i))
             for i, s in enumerate(graph.inputs)]
    if any(d is None for sp in specs for d in sp.shape):
        raise UsageError(f"{source}: input shapes {[_shape(sp.shape) for sp in specs]} are not static",
                         hint="fix them with --input-shape NAME=1,H,W,C")

    @tf.function(input_signature=specs)
    def serve(*xs):
        out = graph.fn(*xs)
        return tuple(out[n] for n in graph.outputs)  # a tuple keeps the source output order in the TFLite file

    # Freeze variables into constants: Keras 3 models otherwise leave READ_VARIABLE ops in the TFLite file.
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    return convert_variables_to_constants_v2(serve.get_concrete_function())


_LOOPS = {"While", "StatelessWhile", "LoopCond"}   # LoopCond: a While frozen into TF1 control flow


def _refuse_loops(cf, source: str) -> None:
    """A graph with a loop (a recurrent layer over its time steps: Keras' LSTM, GRU) converts to a TFLite WHILE
    op, and TensorFlow's INT8 calibrator (2.19) then ends the process with a segmentation fault while feeding
    it samples: refused before, with what to do instead."""
    gd = cf.graph.as_graph_def()
    ops = {n.op for n in gd.node} | {n.op for f in gd.library.function for n in f.node_def}
    if ops & _LOOPS:
        raise UsageError(f"{source}: the model has a loop ({', '.join(sorted(ops & _LOOPS))}: a recurrent layer over "
                         "its time steps, e.g. LSTM or GRU), which TensorFlow's INT8 calibrator cannot run",
                         hint="unroll it (Keras: LSTM(..., unroll=True)) or export it without a loop")


# ------------------------------------- the op graph that tflite_blocks reads (float blocks, layer counts)

def op_graph(data: bytes):
    """The main subgraph of TFLite ``data`` as a :class:`edgeopt.converters.tflite_blocks.OpGraph` (no
    interpreter), for the structural searches there."""
    from tensorflow.lite.python import schema_py_generated as schema_fb
    from tensorflow.lite.tools import flatbuffer_utils
    fm = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    sg = fm.subgraphs[0]
    names = {v: k for k, v in vars(schema_fb.BuiltinOperator).items() if not k.startswith("_")}
    codes = _op_codes(fm)
    return tflite_blocks.OpGraph(
        kinds=[names.get(codes[op.opcodeIndex], "CUSTOM") for op in sg.operators],
        ins=[[int(i) for i in (op.inputs if op.inputs is not None else []) if i >= 0] for op in sg.operators],
        outs=[[int(i) for i in (op.outputs if op.outputs is not None else [])] for op in sg.operators],
        names=[t.name.decode() if isinstance(t.name, bytes) else str(t.name) for t in sg.tensors],
        const={i for i, t in enumerate(sg.tensors)
               if fm.buffers[t.buffer].data is not None and len(fm.buffers[t.buffer].data)},
        calibrated={i for i, t in enumerate(sg.tensors) if t.quantization is not None
                    and t.quantization.min is not None and len(t.quantization.min)},
        graph_outputs={int(i) for i in sg.outputs},
        shapes=[[int(d) for d in (t.shape if t.shape is not None else [])] for t in sg.tensors],
        output_order=[int(i) for i in sg.outputs])


def _float_computing(data: bytes) -> list[tuple[str, str]]:
    """(op kind, output tensor name) of each op of a TFLite model that computes in float (any float32 input
    or output tensor), QUANTIZE and DEQUANTIZE left out."""
    interp = _interpreter(data)
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    res = []
    for op in interp._get_ops_details():
        if op["op_name"] in ("QUANTIZE", "DEQUANTIZE"):
            continue
        idx = [i for i in list(op["inputs"]) + list(op["outputs"]) if i >= 0 and i in tensors]
        if any(tensors[i]["dtype"] == np.float32 for i in idx):
            out = list(op["outputs"])
            res.append((op["op_name"], tensors[out[0]]["name"] if out and out[0] in tensors else ""))
    return res


def _outputs(data: bytes, samples) -> list[np.ndarray]:
    """A TFLite model's outputs (float, dequantized) on ``samples`` (each a list of arrays, batch 1, inputs
    quantized where the model takes integers), stacked per output in the model's output order."""
    interp = _interpreter(data)
    interp.allocate_tensors()
    ins, outs = interp.get_input_details(), interp.get_output_details()
    got = [[] for _ in outs]
    for sample in samples:
        for d, a in zip(ins, sample):
            a = np.asarray(a)
            scale, zero = d["quantization"]
            if np.dtype(d["dtype"]).kind in "iu" and scale and np.asarray(a).dtype.kind == "f":
                info = np.iinfo(d["dtype"])
                a = np.clip(np.round(a / scale) + zero, info.min, info.max)
            interp.set_tensor(d["index"], a.astype(d["dtype"]))
        interp.invoke()
        for j, d in enumerate(outs):
            v = interp.get_tensor(d["index"]).astype(np.float64)
            scale, zero = d["quantization"]
            got[j].append((v - zero) * scale if np.dtype(d["dtype"]).kind in "iu" and scale else v)
    return [np.concatenate(v) for v in got]


def _worst_sqnr(refs: list[np.ndarray], outs: list[np.ndarray], concats: dict | None = None) -> float:
    """The worst output's SQNR (dB) of ``outs`` against ``refs`` over all samples together; an output a
    concatenation makes (``concats``: {position: (axis, ends)}, :func:`tflite_blocks.output_concats`) by its
    worst part where its parts are uneven (edgeopt.conversion.accuracy.uneven_parts)."""
    from edgeopt.conversion.accuracy import worst_part_sqnr
    worst = float("inf")
    for k, (r, o) in enumerate(zip(refs, outs)):
        worst = min(worst, min(worst_part_sqnr(r, o, (concats or {}).get(k)), 200.0))
    return round(float(worst), 3)


def _choose_float_blocks(raw: bytes, plain: bytes | None, build, calib, allow_float_fallback: bool,
                         max_float_layers, no_kernel: list[str], memo: dict | None = None
                         ) -> tuple[bytes | None, dict | None]:
    """(artifact, report) of the float-blocks choice (see :func:`quantize`), or (None, None) when the model has
    no block (:func:`tflite_blocks.float_block_candidates`; the caller keeps ``plain``: a CNN's bytes are unchanged).

    raw: the calibrated float model (the FP32 reference here); plain: the all-INT8 artifact (None: there is none,
    ops without INT8 kernels); build(tensors): the artifact with those tensors' ops in float; no_kernel: the op
    kinds without an INT8 kernel. A returned artifact of None: neither fits (the caller refuses as before)."""
    from edgeopt.conversion import recover
    from edgeopt.conversion.defaults import AUTO_SAMPLES, FLOAT_BLOCKS_MIN_GAIN_DB
    # an output activation cannot hold an op without an INT8 kernel: where there is no all-INT8 artifact, only
    # the normalization blocks may make one
    g = op_graph(raw)   # parsed once for every search here
    blocks = tflite_blocks.norm_blocks(g) if plain is None else tflite_blocks.float_block_candidates(g)
    if not blocks:
        return None, None
    layers = tflite_blocks.quantizable_layers(g)
    budget, rule = recover.float_budget(max_float_layers, layers)
    dropped = []
    if len(blocks) > budget and any(b["kind"] == "product_sum" for b in blocks):
        # sums of products come last: over the budget they go first, the other blocks are judged as before
        dropped = [b for b in blocks if b["kind"] == "product_sum"]
        blocks = [b for b in blocks if b["kind"] != "product_sum"]
        if not blocks:
            return None, None
    report = {"blocks": [{k: b[k] for k in ("kind", "output", "ops")} for b in blocks],
              "budget": {"max_float_layers": budget, "quantizable_layers": layers, "rule": rule,
                         "counted": "each block as one float layer"}}
    if dropped:
        report["budget"]["left_int8"] = f"{len(dropped)} sums of products (over the budget with the other blocks)"
    if len(blocks) > budget:
        report.update(float=False, why=f"{len(blocks)} blocks are more than the float budget allows ({budget})")
        return plain, report
    tensors = [t for b in blocks for t in b["tensors"]]
    cand = build(tensors)
    # the converter renames some tensors it rebuilds in float by appending digits (".../transpose1" becomes
    # ".../transpose11"): names are compared without them
    inside = {name.rstrip("0123456789") for name in tensors}
    outside = sorted({kind for kind, name in _float_computing(cand) if name.rstrip("0123456789") not in inside})
    if outside and not allow_float_fallback:  # an op without an INT8 kernel outside every block
        report.update(float=False, why=f"ops outside the blocks have no INT8 kernel: {', '.join(outside)}")
        return plain, report
    samples = calib[:AUTO_SAMPLES]
    key = (id(raw), len(samples))   # memo: a dict kept by the caller while ``raw`` lives
    refs = memo.get(key) if memo is not None else None
    if refs is None:
        refs = _outputs(raw, samples)
        if memo is not None:
            memo[key] = refs
    concats = tflite_blocks.output_concats(g)
    sqnr = {"float_blocks": _worst_sqnr(refs, _outputs(cand, samples), concats)}
    report["samples"] = len(samples)
    report["by"] = ("worst output SQNR against the float model on the first calibration samples; the blocks stay "
                    f"float when that gains at least {FLOAT_BLOCKS_MIN_GAIN_DB:g} dB over all-INT8, and the "
                    f"attention products too when they gain that much more")
    report["sqnr_db"] = sqnr
    if plain is None:
        chosen, best = cand, sqnr["float_blocks"]
        report.update(float=True, why="ops without an INT8 kernel inside the blocks: " + ", ".join(no_kernel))
    else:
        sqnr["all_int8"] = _worst_sqnr(refs, _outputs(plain, samples), concats)
        gain = sqnr["float_blocks"] - sqnr["all_int8"]
        if gain < FLOAT_BLOCKS_MIN_GAIN_DB:
            chosen, best = plain, sqnr["all_int8"]
            report.update(float=False, why=f"all-INT8 is as good ({gain:+.2f} dB with the blocks in float)")
        else:
            chosen, best = cand, sqnr["float_blocks"]
            report.update(float=True, why=f"INT8 costs accuracy in the blocks ({gain:+.2f} dB with them in float)")
    # attention's products of two activations (Q K^T, P V): float too when that gains the threshold again
    attention = tflite_blocks.attention_matmuls(g)
    if attention and len(blocks) + len(attention) <= budget:
        more = tensors + [t for b in attention for t in b["tensors"]]
        with_attention = build(more)
        sqnr["with_attention"] = _worst_sqnr(refs, _outputs(with_attention, samples), concats)
        gain = sqnr["with_attention"] - best
        if gain >= FLOAT_BLOCKS_MIN_GAIN_DB:
            report["blocks"] += [{k: b[k] for k in ("kind", "output", "ops")} for b in attention]
            why = report["why"] if report["float"] else "the blocks alone gain too little"
            report.update(float=True, why=f"{why}; with the {len(attention)} attention products of two "
                                          f"activations in float too, {gain:+.2f} dB more")
            chosen, tensors = with_attention, more
    if report["float"]:
        report["tensors"] = tensors
    return chosen, report


# ------------------------------------------------------------------------- per-layer error, float layers

class Debugger:
    """Per-layer quantization error and selective quantization, with tf.lite.experimental.QuantizationDebugger.

    Calibrates once (the same min-max calibration as :func:`quantize`); then
    - :meth:`layers` runs the debug model (a NumericVerify op after every quantized op: the op's INT8 result
      against the same op computed in float on the same dequantized inputs) and returns the error each
      quantized tensor adds, ranked by RMSE in units of its quantization step (``rmse/scale``; rounding
      alone gives 1/sqrt(12) = 0.29);
    - :meth:`model` quantizes again with some layers (by output tensor name) kept in float (seconds each).
    """

    def __init__(self, graph: Graph, calib: list[list[np.ndarray]], io_dtype: str, source: str = "model",
                 per_channel: bool = True, method: str = "minmax", weight_rounding: str = "nearest",
                 cache: dict | None = None, blocks=()):
        self.blocks = list(blocks)   # the blocks the artifact keeps in float: fitted in that form
        self.io_dtype = io_dtype
        self.calib = calib

        self.dtypes = [i["dtype"] for i in graph.inputs]

        def representative():
            for sample in calib:
                yield feed(sample, self.dtypes)

        conv = _converter(graph, source, representative, per_channel)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
        self._debug_data = None
        self._float_weights: dict = {}   # GPTQ-rounded layers' FP32 weights, for the layers kept in float
        try:
            self.dbg = tf.lite.experimental.QuantizationDebugger(
                converter=conv, debug_dataset=lambda: self._data(),
                debug_options=tf.lite.experimental.QuantizationDebugOptions())
        except Exception as e:
            raise UsageError(f"{source}: quantization debugger failed: {str(e).strip().splitlines()[-1][:300]}") from None
        if method != "minmax" or weight_rounding != "nearest":
            # the plain artifact's activation ranges and weights, for the per-layer error and every candidate
            # (a layer recovery keeps in float gets its FP32 weights back in :meth:`model`)
            calibrated = self.dbg.calibrated_model
            model = set_ranges(calibrated, calib, method)
            if weight_rounding in ("gptq", "gptq_act"):
                weights, self._float_weights, _ = _cached_rounding(cache, calibrated, calib, per_channel)
                model = _apply_buffers(model, weights, set())
            if weight_rounding == "gptq_act":
                weights, originals, _ = _cached_compensation(cache, calibrated, model, calib, per_channel, method,
                                                             self.blocks)
                model = _apply_buffers(model, weights, set())
                self._float_weights = {**self._float_weights, **originals}   # with their FP32 biases
            self.dbg.calibrated_model = model
            self.dbg.options = self.dbg.options  # rebuilds its debug model from the calibrated model

    def _data(self):
        for sample in (self._debug_data if self._debug_data is not None else self.calib):
            yield feed(sample, self.dtypes)

    def layers(self, data: list[list[np.ndarray]] | None = None) -> list[dict]:
        """[{tensor, op, rmse_scale, rmse, max_abs_err, scale, elements}] worst first (float-I/O model)."""
        self._debug_data = data
        self.dbg.run()
        interp = self.dbg._quant_interpreter
        rows = []
        for name, m in self.dbg.layer_statistics.items():
            tensor, _ = self.dbg._get_operand_name_and_index(name)
            idx = self.dbg._numeric_verify_op_details[name]["inputs"][0]
            op = interp._get_op_details(self.dbg._defining_op[idx])["op_name"]
            q = interp._get_tensor_details(idx, subgraph_index=0)["quantization_parameters"]
            scale = float(q["scales"][0]) if len(q["scales"]) else 0.0
            rmse = float(np.sqrt(m["mean_squared_error"]))
            rows.append({"tensor": tensor, "op": op, "rmse_scale": round(rmse / scale, 4) if scale else None,
                         "rmse": round(rmse, 6), "max_abs_err": round(float(m["max_abs_error"]), 6),
                         "scale": round(scale, 8), "elements": int(m["num_elements"])})
        rows.sort(key=lambda r: -(r["rmse_scale"] or 0.0))
        return rows

    def model(self, float_layers: list[str] = (), io_dtype: str | None = None, bias_correction: bool = False) -> bytes:
        """INT8 TFLite with the given layers (output tensor names, from :meth:`layers`) computed in float;
        with ``bias_correction``, the biases of the INT8 convolutions corrected (:meth:`bias_corrected`)."""
        from tensorflow.lite.python import convert as lite_convert
        from tensorflow.lite.python import util as lite_util
        io_dtype = io_dtype or self.io_dtype
        src = self.bias_corrected(skip=float_layers) if bias_correction else self.dbg.calibrated_model
        back = {k: v for k, v in self._float_weights.items() if k in set(float_layers)}
        if back:  # float means float: those layers compute with their FP32 weights, not GPTQ's grid values
            src = _apply_buffers(src, back, set())
        data = lite_convert.mlir_quantize(src,
                                          disable_per_channel=self.dbg.converter._experimental_disable_per_channel,
                                          fully_quantize=False, enable_numeric_verify=False,
                                          denylisted_nodes=list(float_layers) or None)
        if io_dtype != "float32":
            io = {"int8": tf.int8, "uint8": tf.uint8}[io_dtype]
            data = lite_util.modify_model_io_type(data, io, io)
        return data


    def bias_corrected(self, skip=()) -> bytes:
        """The calibrated float model with bias correction (Nagel et al. 2019, "Data-Free Quantization",
        empirical variant): INT8 weights W_q = W + dW shift a layer's output by dW . E[x]; each CONV_2D,
        DEPTHWISE_CONV_2D and FULLY_CONNECTED bias b becomes b - dW . E[x], with dW read from the INT8 model
        the quantizer makes (exact rounding and scales) and E[x], the per-channel mean of the layer's input,
        from the float model on the calibration samples. Weights and activation ranges are unchanged.
        Layers in ``skip`` (kept in float) keep their bias."""
        if getattr(self, "_bias_shifts", None) is None:
            self._bias_shifts, self.bias_correction_info = _bias_shifts(
                self.dbg.calibrated_model, self.model(self.blocks, "float32"), self.calib)
        return _apply_buffers(self.dbg.calibrated_model, self._bias_shifts, set(skip or ()))


def _apply_buffers(calibrated: bytes, buffers: dict, skip: set) -> bytes:
    """The model with constant buffers replaced: ``buffers`` {layer output name: (buffer index, bytes), or a list
    of them} from :func:`_bias_shifts`, :func:`_rounded_weights` or :func:`_compensated_weights`; layers in
    ``skip`` keep theirs."""
    from tensorflow.lite.tools import flatbuffer_utils
    fm = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
    for out, val in buffers.items():
        if out not in skip:
            for buf, data in (val if isinstance(val, list) else [val]):
                fm.buffers[buf].data = data
    return bytes(flatbuffer_utils.convert_object_to_bytearray(fm))


_KINDS = {3: "CONV_2D", 4: "DEPTHWISE_CONV_2D", 9: "FULLY_CONNECTED"}


def _compute_layers(fm) -> list[tuple]:
    """[(kind, op, inputs, output name)] of a model object's CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED ops."""
    sg = fm.subgraphs[0]
    codes = _op_codes(fm)
    res = []
    for op in sg.operators:
        kind = _KINDS.get(codes[op.opcodeIndex])
        if kind:
            t = sg.tensors[op.outputs[0]].name
            res.append((kind, op, list(op.inputs), t.decode() if isinstance(t, bytes) else t))
    return res


def _op_codes(fm) -> list[int]:
    """The builtin operator code of each of a model object's operator codes (the larger of the two fields: the
    deprecated one holds codes up to 127, the other the rest)."""
    return [max(int(c.builtinCode), int(c.deprecatedBuiltinCode)) for c in fm.operatorCodes]


def _own_float(fm, users: dict, t: int) -> bool:
    """Tensor ``t`` of a model object's first subgraph is a float32 constant with a buffer of its own (``users``:
    :func:`_buffer_users`): one layer's to rewrite."""
    tt = fm.subgraphs[0].tensors[t]
    data = fm.buffers[tt.buffer].data
    return tt.type == 0 and data is not None and len(data) == 4 * int(np.prod(tt.shape)) and users.get(tt.buffer, 0) == 1


def _buffer_users(sg) -> dict:
    """{buffer index: how many tensors of subgraph ``sg`` use it}: a constant shared by two tensors is not one
    layer's to rewrite."""
    users: dict = {}
    for t in sg.tensors:
        users[t.buffer] = users.get(t.buffer, 0) + 1
    return users


def _roundable_layers(fm, shared: bool = False) -> list[tuple]:
    """[(kind, op, inputs, output name, weight shape)] of a model object's layers whose weights GPTQ may round:
    each with a constant float weight of its own, no depthwise multiplier > 1, no grouped convolution.
    ``shared``: also FULLY_CONNECTED layers reading one weight tensor between them (an unrolled recurrent op's
    recurrent weights, read once per time step), all of whose readers are such layers; rounded once for all
    of them (:func:`_rounded_weights`), never fitted per layer."""
    sg = fm.subgraphs[0]
    users = _buffer_users(sg)
    readers: dict = {}
    for op in sg.operators:
        for i in set(op.inputs if op.inputs is not None else []):
            readers[i] = readers.get(i, 0) + 1
    computed = _compute_layers(fm)
    fc_reads: dict = {}
    for kind, _, inputs, _ in computed:
        if kind == "FULLY_CONNECTED":
            fc_reads[inputs[1]] = fc_reads.get(inputs[1], 0) + 1
    layers = []
    for kind, op, inputs, out in computed:
        shape = list(sg.tensors[inputs[1]].shape)
        # a shared or non-constant weight, or a depthwise multiplier > 1 (output channels != input channels)
        if not _own_float(fm, users, inputs[1]):
            continue
        if readers.get(inputs[1], 0) > 1 and not (shared and fc_reads.get(inputs[1]) == readers[inputs[1]]):
            continue
        if kind == "DEPTHWISE_CONV_2D" and int(getattr(op.builtinOptions, "depthMultiplier", 1) or 1) != 1:
            continue
        if kind == "CONV_2D" and list(sg.tensors[inputs[0]].shape)[-1:] != shape[-1:]:
            # a grouped convolution (onnx2tf makes one of a grouped ONNX Conv: PP-OCRv4 rec): each filter sees
            # input channels / groups, not the patches' channels; its weights keep the converter's rounding
            continue
        layers.append((kind, op, inputs, out, shape))
    return layers


def _layer_rows(kind: str, op, shape: list, x: np.ndarray) -> np.ndarray:
    """The rows a layer's weights see in its input ``x`` (NHWC): [N, I] for FULLY_CONNECTED, im2col patches
    [P, kh*kw*C] (the weights' column order) for CONV_2D, [P, kh*kw, C] for DEPTHWISE_CONV_2D, at fixed
    pseudo-random positions that depend on the shapes only (the same for an FP32 and an INT8 input)."""
    if kind == "FULLY_CONNECTED":
        return x.reshape(-1, shape[1])
    from edgeopt.conversion import rounding
    o = op.builtinOptions
    k, st, dl = shape[1:3], (o.strideH, o.strideW), (o.dilationHFactor, o.dilationWFactor)
    pads = rounding.same_pads(x.shape[1:3], k, st, dl) if o.padding == 0 else (0, 0, 0, 0)
    p = rounding.patches(x, k, st, dl, pads, rows=rounding.ROWS if kind == "CONV_2D" else rounding.CHANNEL_ROWS)
    return p.reshape(len(p), -1) if kind == "CONV_2D" else p.reshape(len(p), -1, p.shape[-1])


def _cached_rounding(cache: dict | None, calibrated: bytes, calib, per_channel: bool) -> tuple[dict, dict, dict]:
    """:func:`_rounded_weights`, computed once per ``cache`` (a job's) and weight granularity: the rounded weights
    depend on the float weights and activations only, not on the activation ranges or the recipe's float layers."""
    cache = {} if cache is None else cache
    key = ("gptq", bool(per_channel))
    if key not in cache:
        cache[key] = _rounded_weights(calibrated, calib, per_channel)
    return cache[key]


def _cached_compensation(cache: dict | None, raw: bytes, cal: bytes, calib, per_channel: bool,
                         method: str, floats=None) -> tuple[dict, dict, dict]:
    """:func:`_compensated_weights` of ``cal`` (GPTQ weights, the ranges of ``method``), once per ``cache``, weight
    granularity, ranges and float blocks (``floats``: the tensors whose ops stay float in the model fitted to):
    what a layer compensates depends on the activation ranges and the numerics of the layers before it."""
    cache = {} if cache is None else cache
    floats = tuple(floats or ())
    key = ("gptq_act", bool(per_channel), method, floats)
    if key not in cache:
        cache[key] = _compensated_weights(raw, cal, calib, per_channel,
                                          lambda model: _int8_float_io(model, per_channel, floats))
    return cache[key]


def _int8_float_io(calibrated: bytes, per_channel: bool, floats=(), io_type=None) -> bytes:
    """The INT8 model the quantizer makes of a calibrated one, its inputs and outputs float (or ``io_type``: a
    tf dtype), the ops of ``floats`` (tensor names) in float. The one call of the MLIR quantizer with a
    denylist: the artifact, the models weights are fitted to and the bias correction's all go through it."""
    from tensorflow.lite.python import convert as lite_convert
    io_type = tf.float32 if io_type is None else io_type
    return integer_splits(lite_convert.mlir_quantize(calibrated, disable_per_channel=not per_channel,
                                                     input_data_type=io_type, output_data_type=io_type,
                                                     denylisted_nodes=list(floats) or None))


_SPLITS = {"SPLIT": 1, "SPLIT_V": 0}   # the data input's position


def integer_splits(data: bytes) -> bytes:
    """``data`` with each float SPLIT / SPLIT_V between a DEQUANTIZE and QUANTIZEs of the same scale and zero
    point made an INT8 one, exactly (it only moves values: dequantizing and quantizing again on the same grid
    gives the same codes). The quantizer leaves a Keras LSTM's gate SPLIT so (unroll=True): the artifact needed
    --allow-float-fallback for it, and Coral refused it."""
    from tensorflow.lite.python import schema_py_generated as schema_fb
    from tensorflow.lite.tools import flatbuffer_utils
    fm = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    sg = fm.subgraphs[0]
    names = {v: k for k, v in vars(schema_fb.BuiltinOperator).items() if not k.startswith("_")}
    codes = _op_codes(fm)
    kinds = [names.get(codes[op.opcodeIndex], "") for op in sg.operators]
    made = {int(t): k for k, op in enumerate(sg.operators) for t in (op.outputs if op.outputs is not None else [])}
    readers: dict = {}
    for k, op in enumerate(sg.operators):
        for t in (op.inputs if op.inputs is not None else []):
            readers.setdefault(int(t), []).append(k)
    outputs = {int(t) for t in sg.outputs}

    def grid(t):
        q = sg.tensors[t].quantization
        if q is None or q.scale is None or q.zeroPoint is None or len(q.scale) != 1 or len(q.zeroPoint) != 1:
            return None
        return float(q.scale[0]), int(q.zeroPoint[0])

    drop, rewire, done = set(), {}, 0
    for k, kind in enumerate(kinds):
        if kind not in _SPLITS or sg.operators[k].inputs is None:
            continue
        split = sg.operators[k]
        pos = _SPLITS[kind]
        if len(split.inputs) <= pos:
            continue
        src = int(split.inputs[pos])
        dq = made.get(src)
        if dq is None or kinds[dq] != "DEQUANTIZE" or readers.get(src) != [k] or src in outputs:
            continue
        q_in = int(sg.operators[dq].inputs[0])
        want = grid(q_in)
        if want is None or sg.tensors[q_in].type != schema_fb.TensorType.INT8:
            continue
        quants = []
        for t in split.outputs:
            rs = readers.get(int(t), [])
            # (an output nothing reads, a step's unused gate, is made INT8 as well)
            if int(t) in outputs or any(kinds[r] != "QUANTIZE" or grid(int(sg.operators[r].outputs[0])) != want
                                        for r in rs):
                break
            quants.append((int(t), rs))
        else:
            split.inputs[pos] = q_in
            for t, rs in quants:
                tensor = sg.tensors[t]
                tensor.type = schema_fb.TensorType.INT8
                tensor.quantization = sg.tensors[q_in].quantization
                for r in rs:
                    drop.add(r)
                    rewire[int(sg.operators[r].outputs[0])] = t
            drop.add(dq)
            code = fm.operatorCodes[split.opcodeIndex]
            code.version = max(int(code.version), 2)   # SPLIT/SPLIT_V take INT8 from version 2
            done += 1
    if not done:
        return data
    for op in sg.operators:
        if op.inputs is not None:
            op.inputs = [rewire.get(int(t), int(t)) for t in op.inputs]
    sg.outputs = [rewire.get(int(t), int(t)) for t in sg.outputs]
    sg.operators = [op for k, op in enumerate(sg.operators) if k not in drop]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(fm))


def _rounded_weights(calibrated: bytes, calib, per_channel: bool = True) -> tuple[dict, dict, dict]:
    """GPTQ-rounded weights of every CONV_2D, DEPTHWISE_CONV_2D (multiplier 1) and FULLY_CONNECTED layer
    (edgeopt.conversion.rounding), as float values on the INT8 grid the quantizer derives from them:
    ({layer output name: (weight buffer index, bytes)}, the same with the FP32 weights, info). The Hessians come from the float model on the
    first ROUNDING_SAMPLES calibration samples."""
    from tensorflow.lite.tools import flatbuffer_utils

    from edgeopt.conversion import rounding
    from edgeopt.conversion.defaults import ROUNDING_SAMPLES
    fm = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
    sg = fm.subgraphs[0]
    layers = _roundable_layers(fm, shared=True)
    hs = rounding.Hessians()   # by weight tensor: a weight read by several layers sums their inputs' Hessians
    n = 0
    for fi in _float_runs(calibrated, calib[:ROUNDING_SAMPLES]):
        n += 1
        for kind, op, inputs, out, shape in layers:
            r = _layer_rows(kind, op, shape, fi.get_tensor(inputs[0]))
            if kind == "DEPTHWISE_CONV_2D":
                hs.add_channels(inputs[1], r)
            else:
                hs.add_rows(inputs[1], r)
    res, originals, done = {}, {}, {}
    for kind, op, inputs, out, shape in layers:
        if inputs[1] in done:   # a shared weight, rounded once
            res[out], originals[out] = res[done[inputs[1]]], originals[done[inputs[1]]]
            continue
        h = hs.get(inputs[1])
        if h is None:
            continue
        done[inputs[1]] = out
        wt = sg.tensors[inputs[1]]
        w = np.frombuffer(bytes(fm.buffers[wt.buffer].data), np.float32).reshape(shape)
        rows = w.reshape(-1, shape[-1]).T if kind == "DEPTHWISE_CONV_2D" else w.reshape(shape[0], -1)
        grid = rounding.grid_values(rows, h, per_row=per_channel)
        new = grid.T.reshape(shape) if kind == "DEPTHWISE_CONV_2D" else grid.reshape(shape)
        res[out] = (wt.buffer, np.frombuffer(new.astype(np.float32).tobytes(), np.uint8))
        originals[out] = (wt.buffer, np.frombuffer(w.tobytes(), np.uint8))
    return res, originals, {"method": "gptq", "layers": len(res), "of": len(_compute_layers(fm)), "calibration_samples": n}


def _compensated_weights(raw: bytes, cal: bytes, calib, per_channel: bool, quantized) -> tuple[dict, dict, dict]:
    """gptq_act on this route: the weights and biases of each layer :func:`_roundable_layers` finds, fitted to
    map the layer's input *in the INT8 model* to its FP32 output (edgeopt.conversion.rounding.compensated, the
    QDQ route's onnx_qdq.gptq_compensated), layer after layer in the model's op order: a layer's INT8 input is
    read from the INT8 model quantized from ``cal`` (its activation ranges, its GPTQ weights) with every layer
    before it already compensated, so none corrects again what an upstream one has corrected.

    ``raw``: the calibrated model with its FP32 weights (the reference); ``quantized(model bytes)``: the INT8
    model with float I/O the quantizer makes of it. Paired inputs on the first ROUNDING_SAMPLES calibration
    samples; a layer whose input has too few positions in them (rounding.compensable) keeps its GPTQ weights.
    Returns ({layer output name: [(weight buffer, bytes), (bias buffer, bytes)]}, the same with the FP32
    values, info); a layer without a bias of its own gets its weights only."""
    from tensorflow.lite.tools import flatbuffer_utils

    from edgeopt.conversion import rounding
    from edgeopt.conversion.defaults import ROUNDING_SAMPLES
    fm = flatbuffer_utils.convert_bytearray_to_object(bytearray(raw))
    sg = fm.subgraphs[0]
    cm = flatbuffer_utils.convert_bytearray_to_object(bytearray(cal))   # updated in place, layer after layer
    users = _buffer_users(sg)
    samples = calib[:ROUNDING_SAMPLES]
    layers = _roundable_layers(fm)
    # the FP32 inputs of every layer, run once (the INT8 model changes after each layer; the float one does not)
    float_inputs = _FloatInputs(raw, samples, [inputs[0] for _, _, inputs, _, _ in layers])
    res, originals = {}, {}
    live = _Int8Weights(quantized(_serialized(cm)))   # the INT8 model, each fitted layer written into it in place
    runs = _Int8Runs(live, samples)
    for k, (kind, op, inputs, out, shape) in enumerate(layers):
        dims = [int(d) for d in sg.tensors[op.outputs[0]].shape]
        if dims and min(dims) > 0 and not rounding.may_compensate(int(np.prod(dims[:-1])), len(samples),
                                                                  kind == "DEPTHWISE_CONV_2D"):
            continue   # too few positions (a 7x7 stage, a classifier): plain GPTQ, without running up to it
        stats = rounding.Pairs()
        for x, xq in zip(float_inputs.get(k), runs.input_of(out)):
            if x.shape != xq.shape:
                break
            r, rq = _layer_rows(kind, op, shape, x), _layer_rows(kind, op, shape, xq)
            if kind == "FULLY_CONNECTED":
                stats.add_rows(out, r, rq)
                continue
            taps = int(np.prod(shape[1:3]))
            mx, mq = (v.reshape(-1, v.shape[-1]).astype(np.float64).mean(0) for v in (x, xq))
            if kind == "CONV_2D":   # per input channel over every position, as the rows' columns (h, w, c)
                stats.add_rows(out, r, rq, (np.tile(mx, taps), np.tile(mq, taps)))
            else:                   # [K, C]
                stats.add_channels(out, r, rq, (np.tile(mx, (taps, 1)), np.tile(mq, (taps, 1))))
        st = stats.get(out)
        if not rounding.compensable(st):   # too few positions (a 7x7 stage, a classifier): plain GPTQ
            continue
        wt = sg.tensors[inputs[1]]
        w = np.frombuffer(bytes(fm.buffers[wt.buffer].data), np.float32).reshape(shape)
        rows = w.reshape(-1, shape[-1]).T if kind == "DEPTHWISE_CONV_2D" else w.reshape(shape[0], -1)
        bias = None
        if len(inputs) > 2 and inputs[2] >= 0:
            bt = sg.tensors[inputs[2]]
            b = fm.buffers[bt.buffer].data
            if (b is not None and bt.type == 0 and users.get(bt.buffer, 0) == 1
                    and len(b) == 4 * len(rows)):
                bias = (bt.buffer, np.frombuffer(bytes(b), np.float32))
        grid, nb = rounding.compensated(rows.astype(np.float64), None if bias is None else bias[1], st,
                                        per_row=per_channel)
        new = grid.T.reshape(shape) if kind == "DEPTHWISE_CONV_2D" else grid.reshape(shape)
        res[out] = [(wt.buffer, np.frombuffer(new.astype(np.float32).tobytes(), np.uint8))]
        originals[out] = [(wt.buffer, np.frombuffer(w.tobytes(), np.uint8))]
        if bias is not None:
            res[out].append((bias[0], np.frombuffer(nb.astype(np.float32).tobytes(), np.uint8)))
            originals[out].append((bias[0], np.frombuffer(bias[1].tobytes(), np.uint8)))
        for buf, data in res[out]:
            cm.buffers[buf].data = data
        if not live.write(out, new, None if bias is None else nb):   # not in the form it knows: quantize again
            live = _Int8Weights(quantized(_serialized(cm)))
            runs = _Int8Runs(live, samples)
    return res, originals, {"method": "gptq_act", "layers": len(res), "of": len(_compute_layers(fm)),
                            "calibration_samples": len(samples)}


class _FloatInputs:
    """The FP32 model's input tensor of each layer on each sample, for gptq_act: the model is run once for a
    window of consecutive layers whose inputs on all samples fit in defaults.GPTQ_ACT_MAX_KEPT_BYTES (every layer at once on
    MobileNet-class models; one run per layer would be 32 runs x 50 layers), the next window when a layer
    past it is asked for."""

    def __init__(self, raw: bytes, samples, tensors: list[int]):
        self.raw, self.samples, self.tensors = raw, samples, tensors
        interp = _interpreter(raw)
        self.sizes = []
        for t in tensors:
            d = interp._get_tensor_details(t, subgraph_index=0)
            self.sizes.append(int(np.prod(d["shape"])) * np.dtype(d["dtype"]).itemsize * len(samples))
        self.window: dict = {}

    def get(self, k: int) -> list[np.ndarray]:
        if k not in self.window:
            chosen, total = [], 0
            for j in range(k, len(self.tensors)):
                if chosen and total + self.sizes[j] > defaults.GPTQ_ACT_MAX_KEPT_BYTES:
                    break
                chosen.append(j)
                total += self.sizes[j]
            self.window = {j: [] for j in chosen}
            for fi in _float_runs(self.raw, self.samples):
                for j in chosen:
                    self.window[j].append(fi.get_tensor(self.tensors[j]))
        return self.window[k]


def _serialized(fm) -> bytes:
    """A flatbuffer object model (flatbuffer_utils) serialized."""
    from tensorflow.lite.tools import flatbuffer_utils
    return bytes(flatbuffer_utils.convert_object_to_bytearray(fm))


class _Int8Weights:
    """An INT8 TFLite model whose CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED layers' weights and biases are
    rewritten in place, as the quantizer derives them from float values (symmetric INT8 codes with a scale of
    max|w| / 127 per quantized channel, INT32 bias codes at input scale x weight scale). gptq_act reads each
    layer's INT8 input from the model with the layers before it fitted: quantizing the whole model again after
    each layer was a third of its time (0.3 s x 50 layers on EfficientNet-Lite0). The artifact itself is still
    the quantizer's, from the fitted float weights."""

    def __init__(self, data: bytes):
        from tensorflow.lite.python import schema_py_generated as schema
        self.buf = bytearray(data)
        self.model = schema.Model.GetRootAsModel(self.buf, 0)
        sg = self.model.Subgraphs(0)
        self.sg = sg
        self.ops = {}
        self.position: dict = {}   # layer output name: index of its op in the subgraph's op list
        self.reads: list = []      # each op's input tensors (-1: an optional input left out)
        self.makes: list = []      # each op's output tensors
        self.users: dict = {}   # buffer index: tensors that use it (a shared INT32 bias is not one layer's)
        for i in range(sg.TensorsLength()):
            self.users[sg.Tensors(i).Buffer()] = self.users.get(sg.Tensors(i).Buffer(), 0) + 1
        for i in range(sg.OperatorsLength()):
            op = sg.Operators(i)
            self.reads.append([int(op.Inputs(j)) for j in range(op.InputsLength())])
            self.makes.append([int(op.Outputs(j)) for j in range(op.OutputsLength())])
            code = self.model.OperatorCodes(op.OpcodeIndex())
            kind = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            if kind in _KINDS and op.OutputsLength():
                name = sg.Tensors(op.Outputs(0)).Name().decode("utf-8", "replace")
                self.ops.setdefault(name, (kind, op.InputsAsNumpy().tolist()))
                self.position.setdefault(name, i)
        # where the subgraph stores its offsets to its op, input and output lists (vtable slots 10, 6 and 8)
        slots = [sg._tab.Offset(v) for v in (10, 6, 8)]
        if not all(slots):
            raise UsageError("INT8 model without an op, input or output list: not one the quantizer makes")
        self.fields = tuple(sg._tab.Pos + o for o in slots)

    def data(self) -> bytes:
        return bytes(self.buf)

    def segment(self, start: int, stop: int, inputs: list[int], outputs: list[int]) -> bytes:
        """The model running only its first subgraph's ops ``start`` to ``stop - 1``, fed through ``inputs``
        (tensor indices: the values those ops read that earlier ops made), giving ``outputs`` (those later ops
        read: a delegate keeps only a subgraph's outputs, not what no op of it reads); tensor indices unchanged.
        In a copy: the op list becomes the tail of the old one from op ``start`` (its length written over the
        slot before it; each element's offset is relative to where it is stored, so they stay valid), the input
        and output lists new vectors past the end (flatbuffer offsets point forward only: all three are after
        the fields that point to them)."""
        buf = bytearray(self.buf)
        buf.extend(b"\0" * (-len(buf) % 4))
        ops_at, inputs_at, outputs_at = self.fields
        first = ops_at + struct.unpack_from("<I", buf, ops_at)[0] + 4 + 4 * start   # op ``start``'s offset
        struct.pack_into("<I", buf, first - 4, stop - start)
        struct.pack_into("<I", buf, ops_at, first - 4 - ops_at)
        for field, tensors in ((inputs_at, inputs), (outputs_at, outputs)):
            at = len(buf)
            buf.extend(struct.pack(f"<I{len(tensors)}i", len(tensors), *tensors))
            struct.pack_into("<I", buf, field, at - field)
        return bytes(buf)

    def codes(self, out: str) -> tuple:
        """(INT8 weight codes, their scales, INT32 bias codes or None) of the layer whose output is ``out``."""
        kind, inputs = self.ops[out]
        t_w = self.sg.Tensors(inputs[1])
        w = self.model.Buffers(t_w.Buffer()).DataAsNumpy().view(np.int8).copy()
        b = None
        if len(inputs) > 2 and inputs[2] >= 0:
            b = self.model.Buffers(self.sg.Tensors(inputs[2]).Buffer()).DataAsNumpy().view(np.int32).copy()
        return w, t_w.Quantization().ScaleAsNumpy().copy(), b

    def write(self, out: str, weights: np.ndarray, bias: np.ndarray | None) -> bool:
        """Write a layer's float ``weights`` (the float model's layout) and ``bias`` as INT8 / INT32 codes; False
        (nothing written) where the layer is not in the form this knows (then quantize the model again). With
        ``bias`` None the layer's INT32 bias keeps its float value: its codes follow the new weight scales."""
        from tensorflow.lite.python import schema_py_generated as schema

        from edgeopt.conversion.rounding import LEVELS
        got = self.ops.get(out)
        if got is None or len(got[1]) < 2 or min(got[1][:2]) < 0:
            return False
        kind, inputs = got
        t_in, t_w = self.sg.Tensors(inputs[0]), self.sg.Tensors(inputs[1])
        if t_w.Type() != schema.TensorType.INT8 or t_w.Quantization() is None or t_in.Quantization() is None:
            return False
        codes = self.model.Buffers(t_w.Buffer()).DataAsNumpy()
        scales = t_w.Quantization().ScaleAsNumpy()
        s_in = t_in.Quantization().ScaleAsNumpy()
        w = np.asarray(weights, np.float64)
        if isinstance(codes, int) or isinstance(scales, int) or isinstance(s_in, int) or codes.size != w.size:
            return False
        axis = t_w.Quantization().QuantizedDimension()
        if len(scales) == 1:
            amax = np.abs(w).max(keepdims=True).reshape(1)
        elif 0 <= axis < w.ndim and w.shape[axis] == len(scales):
            amax = np.abs(np.moveaxis(w, axis, 0)).reshape(len(scales), -1).max(1)
        else:
            return False
        new_scales = np.where(amax > 0, amax / LEVELS, scales.astype(np.float64))
        shape = [1] * w.ndim
        if len(scales) > 1:
            shape[axis] = -1
        q = np.clip(np.round(w / new_scales.reshape(shape)), -LEVELS, LEVELS)
        if bias is not None and (len(inputs) < 3 or inputs[2] < 0):
            return False
        if len(inputs) > 2 and inputs[2] >= 0:
            t_b = self.sg.Tensors(inputs[2])
            b_codes = self.model.Buffers(t_b.Buffer()).DataAsNumpy()
            b_scales = t_b.Quantization().ScaleAsNumpy() if t_b.Quantization() is not None else 0
            if (t_b.Type() != schema.TensorType.INT32 or isinstance(b_codes, int) or isinstance(b_scales, int)
                    or self.users.get(t_b.Buffer(), 0) != 1 or len(b_scales) != b_codes.size // 4
                    or (bias is not None and len(bias) != len(b_scales))):
                return False
            if bias is None:   # the float bias the codes hold now
                bias = b_codes.view(np.int32).astype(np.float64) * b_scales
            bs = float(s_in[0]) * np.broadcast_to(new_scales, (len(b_scales),))
            b_codes.view(np.int32)[:] = np.clip(np.round(np.asarray(bias, np.float64) / bs), -2 ** 31, 2 ** 31 - 1)
            b_scales[:] = bs
        codes.view(np.int8)[:] = q.reshape(-1).astype(np.int8)
        scales[:] = new_scales
        return True


class _Int8Runs:
    """The INT8 model of gptq_act (an :class:`_Int8Weights`) run on the fitting samples a stretch of ops at a
    time, as onnx_prefix.Prefix does on the QDQ route: each layer's INT8 input is made by running only the ops
    between the previous layer asked for (itself included: its weights have changed since) and this one, fed with
    the tensors earlier stretches made, so every op runs once per sample over the whole fit. gptq_act on the
    layout detector (102 layers, 800x608 input) took 293 s running the whole model per layer, 60 s so
    (benchmarks/bench_gptq_act.py), with the same weights.
    Only tensors a later op reads are kept; past ``max_kept_bytes`` of them (or with more than one subgraph:
    control flow), each request runs the whole model again, one sample at a time, keeping nothing."""

    def __init__(self, live: _Int8Weights, samples, max_kept_bytes: int | None = None):
        self.live, self.samples = live, samples
        self.max_kept_bytes = defaults.GPTQ_ACT_MAX_KEPT_BYTES if max_kept_bytes is None else max_kept_bytes
        self.last_read: dict = {}
        for i, ts in enumerate(live.reads):
            for t in ts:
                self.last_read[t] = i
        self.constant = {t for ts in live.reads for t in ts if t >= 0 and self._constant(t)}
        self.graph_inputs = [int(live.sg.Inputs(j)) for j in range(live.sg.InputsLength())]
        self.dtypes = [d["dtype"] for d in _interpreter(live.data()).get_input_details()]
        self.whole = live.model.SubgraphsLength() != 1
        self._start()

    def _start(self) -> None:
        self.state = [{t: np.asarray(a, dt) for t, a, dt in zip(self.graph_inputs, sample, self.dtypes)}
                      for sample in self.samples]
        self.cursor = 0

    def _constant(self, t: int) -> bool:
        b = self.live.model.Buffers(self.live.sg.Tensors(t).Buffer())
        return b is not None and b.DataLength() > 0

    def _dequantized(self, t: int, v: np.ndarray) -> np.ndarray:
        q = self.live.sg.Tensors(t).Quantization()
        scales = q.ScaleAsNumpy() if q is not None else 0
        if v.dtype.kind == "f" or isinstance(scales, int) or not len(scales):
            return v.astype(np.float32)
        return (v.astype(np.float32) - np.float32(q.ZeroPointAsNumpy()[0])) * np.float32(scales[0])

    def input_of(self, out: str):
        """The dequantized input, sample after sample, of the layer whose output is ``out`` (nothing when the
        model has no such layer)."""
        stop = self.live.position.get(out)
        if stop is None:
            return iter(())
        t = self.live.reads[stop][0]
        if self.whole:
            return (self._dequantized(t, fi.get_tensor(t)) for fi in _float_runs(self.live.data(), self.samples))
        if stop < self.cursor:   # asked out of order: start again from the samples
            self._start()
        if stop > self.cursor:
            if not self._run(self.cursor, stop):   # a tensor it cannot feed (a variable's state): as before
                self.whole, self.state = True, None
                return self.input_of(out)
            if sum(v.nbytes for st in self.state for v in st.values()) > self.max_kept_bytes:
                self.whole, state, self.state = True, self.state, None
                return (self._dequantized(t, st[t]) for st in state)
        return (self._dequantized(t, st[t]) for st in self.state)

    def _run(self, start: int, stop: int) -> bool:
        """Runs ops ``start`` to ``stop - 1`` on every sample; False (nothing run) where they read a tensor that
        is neither constant nor made by an op before them nor a graph input."""
        made = {t for ts in self.live.makes[start:stop] for t in ts}
        needed = sorted({t for ts in self.live.reads[start:stop] for t in ts
                         if t >= 0 and t not in made and t not in self.constant})
        if any(t not in st for st in self.state for t in needed):
            return False
        kept = sorted(t for t in made if self.last_read.get(t, -1) >= stop)
        fi = _interpreter(self.live.segment(start, stop, needed, kept))
        fi.allocate_tensors()
        for st in self.state:
            for t in needed:
                fi.set_tensor(t, st[t])
            fi.invoke()
            for t in kept:
                st[t] = fi.get_tensor(t)
            for t in [t for t in st if self.last_read.get(t, -1) < stop]:
                del st[t]
        self.cursor = stop
        return True


def _layers_by_output(interp) -> dict:
    """{name of its output tensor: op details} of each CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED op of an
    interpreter's model: the quantizer keeps the calibrated model's tensor names, so a layer is found again in
    the INT8 model by its output's name (another kind of op may carry the same name: a QUANTIZE after it)."""
    res = {}
    for op in interp._get_ops_details():
        if op["op_name"] in _KINDS.values() and len(op["outputs"]):
            res.setdefault(interp._get_tensor_details(op["outputs"][0], subgraph_index=0)["name"], op)
    return res


def _bias_shifts(calibrated: bytes, quantized: bytes, calib) -> tuple[dict, dict]:
    """{layer output name: (bias buffer index, corrected bias bytes)}, info."""
    from ai_edge_litert.interpreter import Interpreter
    from tensorflow.lite.tools import flatbuffer_utils

    fm = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
    sg = fm.subgraphs[0]
    layers = [(kind, inputs, out) for kind, _, inputs, out in _compute_layers(fm) if len(inputs) > 2 and inputs[2] >= 0]
    # INT8 weights as the quantizer made them, by the op's output name
    qi = Interpreter(model_content=quantized)
    qi.allocate_tensors()
    q_ops = {out: int(op["inputs"][1]) for out, op in _layers_by_output(qi).items()}
    # per-channel means of the layers' inputs, float model on the calibration samples
    want = {inputs[0] for _, inputs, _ in layers}
    sums, n = {}, 0
    for fi in _float_runs(calibrated, calib):
        n += 1
        for t in want:
            v = fi.get_tensor(t)
            v = v.reshape(-1, v.shape[-1]).astype(np.float64).mean(0)
            sums[t] = sums.get(t, 0) + v
    done, shifts, res = 0, [], {}
    buf_users = _buffer_users(sg)
    for kind, inputs, out in layers:
        wi = q_ops.get(out)
        bt = sg.tensors[inputs[2]]
        if wi is None or buf_users.get(bt.buffer, 0) != 1 or inputs[0] not in sums:
            continue
        wt = sg.tensors[inputs[1]]
        w = np.frombuffer(bytes(fm.buffers[wt.buffer].data), np.float32).reshape(wt.shape).astype(np.float64)
        d = qi._get_tensor_details(wi, subgraph_index=0)
        qp = d["quantization_parameters"]
        wq = qi.get_tensor(wi).astype(np.float64)
        if wq.shape != w.shape or not len(qp["scales"]):
            continue
        shape = [1] * wq.ndim
        if len(qp["scales"]) > 1:
            shape[qp["quantized_dimension"]] = -1
        wq = (wq - np.reshape(qp["zero_points"], shape)) * np.reshape(qp["scales"], shape)
        dw = wq - w
        e = sums[inputs[0]] / n
        if kind == "CONV_2D":          # O,H,W,I
            if dw.shape[3] != e.size:
                continue
            shift = np.einsum("ohwi,i->o", dw, e)
        elif kind == "DEPTHWISE_CONV_2D":  # 1,H,W,O; O = I * multiplier
            mult = dw.shape[3] // e.size
            if mult * e.size != dw.shape[3]:
                continue
            shift = np.einsum("hwo,o->o", dw[0], np.repeat(e, mult))
        else:                          # FULLY_CONNECTED: O,I
            if dw.shape[1] != e.size:
                continue
            shift = dw @ e
        b = np.frombuffer(bytes(fm.buffers[bt.buffer].data), np.float32)
        if b.size != shift.size:
            continue
        res[out] = (bt.buffer, np.frombuffer((b - shift).astype(np.float32).tobytes(), np.uint8))
        done += 1
        shifts.append(float(np.abs(shift).max()))
    info = {"layers": done, "of": len(layers), "calibration_samples": n,
            "max_abs_shift": round(max(shifts), 6) if shifts else 0.0}
    return res, info


def _sig_name(name: str, i: int) -> str:
    n = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return n if n and (n[0].isalpha()) else f"input_{i}"


def io_order(data: bytes) -> dict:
    """Tensor indices of the TFLite file's inputs/outputs in source order.

    The converted function takes the inputs positionally and returns a tuple in source output order, and
    a TFLite subgraph keeps its function's input/output order.
    """
    interp = _interpreter(data)
    return {"input_index": [int(d["index"]) for d in interp.get_input_details()],
            "output_index": [int(d["index"]) for d in interp.get_output_details()]}


def _interpreter(data: bytes):
    from ai_edge_litert.interpreter import Interpreter
    return Interpreter(model_content=data)


def output_grids(data: bytes) -> dict:
    """{output tensor index: (scale, zero point, lowest code, highest code)} of each output of a TFLite model that
    is computed on an integer grid: the output's own quantization when it is an integer tensor, else that of the
    integer tensor a DEQUANTIZE makes it from. (INT8 LOGISTIC's grid is fixed, step 1/256: a score map mostly under
    0.01 cannot come closer to FP32 than that, however well the rest is quantized.)"""
    interp = _interpreter(data)
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    made_by = {o: op for op in interp._get_ops_details() for o in op["outputs"]}
    grids = {}
    for d in interp.get_output_details():
        t = tensors.get(d["index"])
        if t is not None and np.dtype(t["dtype"]).kind == "f":
            op = made_by.get(d["index"])
            t = tensors.get(op["inputs"][0]) if op is not None and op["op_name"] == "DEQUANTIZE" else None
        if t is None or np.dtype(t["dtype"]).kind not in "iu":
            continue
        scale, zero = t["quantization"]
        if scale and scale > 0:
            info = np.iinfo(t["dtype"])
            grids[int(d["index"])] = (float(scale), int(zero), int(info.min), int(info.max))
    return grids


def float_ops_of(data: bytes) -> list[str]:
    """Ops of a TFLite model that compute in float (any float32 input/output tensor)."""
    return sorted({kind for kind, _name in _float_computing(data)})


# ------------------------------------------------------------ accuracy recovery hooks (edgeopt.converters.HOOKS)
@dataclasses.dataclass
class RouteState:
    """What the TFLite routes (keras_tflite, onnx_tflite) keep on their job (``job.route_state["tflite"]``, set by
    :func:`keep`) for the recipes ("auto") and the recovery that quantize the same graph again: recovery
    requantizes from it with a Debugger (seconds per candidate, no new conversion)."""
    graph: Graph                     # the graph quantized
    calib: list                      # its calibration samples, in the graph's layout
    perms: list                      # the source-to-graph permutation of each input (None: same layout)
    joins: dict = dataclasses.field(default_factory=dict)      # outputs exported as parts (onnx_split.split's result)
    graph_check: dict | None = None  # onnx_tflite.graph_check's finding
    rounding: dict = dataclasses.field(default_factory=dict)   # :func:`quantize`'s cache (rounded weights, calibrated model)
    debuggers: dict = dataclasses.field(default_factory=dict)  # :func:`_debugger`'s, by recipe
    bias_correction: dict | None = None   # what the last bias-corrected rebuild did (:func:`bias_correction_info`)


def keep(job, state: RouteState) -> RouteState:
    """``state`` kept on ``job`` as the TFLite route's."""
    job.route_state["tflite"] = state
    return state


def route_state(job) -> RouteState | None:
    """The TFLite route's state on ``job`` (None before a TFLite route converted it)."""
    return getattr(job, "route_state", {}).get("tflite")


RECOVERY_METHODS = ()   # recovery tries no other calibration method: the plain recipe's ranges are kept
# then gptq_act (weights fitted layer after layer to the INT8 model's inputs), where the plain recipe kept plain GPTQ
# (the default is gptq_act; auto keeps gptq where it is closer to FP32 on samples gptq_act was not fitted to)
RECOVERY_ROUNDINGS = ("gptq_act",)
MANY_FLOAT_ADVICE = "consider the float model, or a looser --accuracy-target"


def _debugger(job, recipe, art: dict) -> Debugger:
    """The job's Debugger for a recipe's activation ranges and weight granularity and the float blocks of the
    plain artifact ``art``, calibrated once."""
    blocks = tuple(block_tensors(art))
    key = (recipe.calibration_method, bool(recipe.per_channel), recipe.weight_rounding, blocks)
    state = route_state(job)
    if key not in state.debuggers:
        state.debuggers[key] = Debugger(state.graph, state.calib, job.io_dtype, source=job.source_name,
                                        per_channel=key[1], method=key[0], weight_rounding=key[2],
                                        cache=state.rounding, blocks=blocks)
    return state.debuggers[key]


def rebuild(job, art: dict, recipe) -> dict:
    """``art`` (the route's plain artifact) quantized again with ``recipe``: its bias correction, and its float
    layers (tensor names from :func:`layer_errors`) as denylisted nodes that run as float kernels."""
    floats = list(recipe.float_layers)
    dbg = _debugger(job, recipe, art)
    blocks = block_tensors(art)  # the blocks the plain artifact keeps in float stay float
    data = dbg.model(list(dict.fromkeys(blocks + floats)), job.io_dtype, bias_correction=bool(recipe.bias_correction))
    if recipe.bias_correction:
        route_state(job).bias_correction = getattr(dbg, "bias_correction_info", None)
    a = dict(art, data=data)
    a.update(io_order(data))
    if art.get("output_joins"):   # an output held as its parts (edgeopt.converters.onnx_split)
        from edgeopt.converters import onnx_split
        a["output_index"] = onnx_split.grouped(a["output_index"], [o["name"] for o in job.outputs],
                                               art["output_joins"])
    if recipe.bias_correction:
        a["converter"] = art.get("converter", "") + "; bias correction (E[x]-weighted INT8 weight error)"
    if floats:
        a["converter"] = (art.get("converter", "") + f"; {len(floats)} layers kept in float "
                          "(QuantizationDebugger denylisted_nodes)")
    if floats or blocks:
        a["float_ops"] = float_ops_of(data)
    return a


def block_tensors(art: dict) -> list[str]:
    """The tensors of the blocks (normalization, output activations) an artifact keeps in float (:func:`quantize`'s ``float_blocks``)."""
    fb = art.get("float_blocks") or {}
    return list(fb.get("tensors") or []) if fb.get("float") else []


def layer_errors(job, art: dict, samples: list[list]) -> dict:
    """Per-layer error report of the job's TFLite artifact (its plain recipe) on ``samples`` (lists of arrays
    in the source layout; transposed to the graph's here)."""
    dbg = _debugger(job, job.recipe, art)
    perms = route_state(job).perms
    data = [[np.transpose(a, p) if p else a for a, p in zip(s, perms)] for s in samples]
    floats = set(block_tensors(art))  # already float in the artifact: not a candidate
    rows = [r for r in dbg.layers(data) if r["tensor"] not in floats]
    return {"method": "tf.lite.experimental.QuantizationDebugger: each quantized op's INT8 output against "
                      "the same op in float on the same inputs; rmse_scale = RMSE / quantization step "
                      "(0.29 is rounding alone)",
            "metric": "rmse_scale", "samples": len(data), "layers": rows}


def float_candidates(report: dict) -> list[str]:
    """The tensors of a :func:`layer_errors` report recovery may keep in float: all of them, worst first."""
    return [r["tensor"] for r in report["layers"]]


def fp32_bytes(job) -> int:
    """Size of the FP32 model in this route's format: the calibrated float TFLite model (any of the job's
    Debuggers has it: they differ in ranges and weight values, not in size)."""
    dbg = next(iter(route_state(job).debuggers.values()), None) or _debugger(job, job.recipe, {})
    return len(dbg.dbg.calibrated_model)


def bias_correction_info(job) -> dict | None:
    """What the last bias-corrected rebuild of ``job`` did (layers corrected, of how many), None before any."""
    state = route_state(job)
    return state.bias_correction if state else None
