"""edgeopt.runtime: load an edgeopt artifact and run it with float inputs in the source model's layout.

    import edgeopt.runtime
    model = edgeopt.runtime.load("build/model")      # a directory with manifest.json, or one artifact file
    outputs = model(x)                               # dict: output name -> float32 array (source layout)

This file is self-contained on purpose: it needs only the standard library, numpy and one runtime
(ai_edge_litert, tflite_runtime, tensorflow.lite, onnxruntime). It never imports edgeopt or TensorFlow
(unless TensorFlow is the only TFLite runtime present). The same file is the on-device benchmark runner:
the host pipes it over SSH and runs ``python3 - bench ARTIFACT ...``, so what is benchmarked is what runs.

It runs on Python 3.8 and newer. On an older Python it says so in one line and exits 3 (PYTHON_GUARD below):
the file parses on Python 3.6, hence no ``from __future__ import annotations`` (a SyntaxError before 3.7) and
quoted annotations (``str | None`` is evaluated at definition time without that import, and fails before 3.10).
"""
import json
import os
import sys
import time

# Python 3.8 is the floor (JetPack 5's Python). The check is source in Python 2.7/3.5-era syntax, kept as a
# string so that one text serves two places: it runs here, on import or as a script, and the host
# (edgeopt.devices.bench.runner_source) sends it ahead of this file, for an interpreter that cannot even parse
# this file (f-strings: Python 3.5 and older) to give the same line instead of a SyntaxError.
PYTHON_FLOOR = (3, 8)
PYTHON_GUARD = """import sys
if sys.version_info[:2] < (%d, %d):
    sys.stderr.write("error: edgeopt runner needs Python %d.%d or newer (this is Python %%d.%%d at %%s)\\n"
                     %% (sys.version_info[0], sys.version_info[1], sys.executable or "an unknown path"))
    sys.stderr.flush()
    sys.exit(3)
""" % (PYTHON_FLOOR * 2)
exec(PYTHON_GUARD)

class _NumpyOnFirstUse:
    """numpy, imported on first use: the host's CLI reads RUNNER_OPTIONS (its benchmark defaults) at start-up
    and must not pay for numpy there. The first attribute access imports numpy and puts it in place of this."""

    def __getattr__(self, name):
        import numpy
        globals()["np"] = numpy
        return getattr(numpy, name)


np = _NumpyOnFirstUse()

__all__ = ["load", "Model", "IOSpec", "RuntimeMissing", "InputError", "bench", "latency_stats",
           "check_artifact_name", "RUNNER_OPTIONS", "RUNNER_DEFAULTS", "runner_parser", "runner_argv",
           "import_tflite_interpreter", "KEEP_FLOAT_OPTIMIZERS", "PYTHON_FLOOR", "PYTHON_GUARD", "load_samples",
           "run_samples", "save_outputs", "output_key"]

MANIFEST = "manifest.json"

# The runner's command line, described once: main() builds its parser from this table, the host
# (edgeopt.devices.bench) builds the runner's argv from it, and bench(), the host's BenchOptions and the CLI's
# benchmark options take their defaults from it. (name, type, default, help); a bool is a flag.
RUNNER_OPTIONS = (
    ("warmup", int, 10, "untimed runs first"),
    ("runs", int, 100, "at least this many timed runs"),
    ("min_seconds", float, 1.0, "and at least this long"),
    ("threads", int, None, "CPU threads (default: the runtime's)"),
    ("seed", int, 0, "seed of the generated inputs"),
    ("input", str, None, ".npy/.npz file with inputs in the source layout"),
    ("delegate", str, None, "TFLite delegate: edgetpu, or cpu"),
    ("provider", str, None, "onnxruntime execution provider"),
    ("prefer_tensorrt", bool, False, "ONNX: run with TensorRT (trtexec) when present, else onnxruntime with a note"),
    ("trtexec", str, None, "path of trtexec when not on PATH or in /usr/src/tensorrt/bin"),
    ("engine_cache", str, None, "where TensorRT engines are cached"),
    ("lock", str, None, "lock file: one benchmark at a time on this device"),
    ("lock_timeout", float, 600.0, "seconds to wait for the lock"),
    ("no_samples", bool, False, "leave the raw samples out of the JSON"),
    ("warmup_seconds", float, 0.0, "and warm up for at least this long"),
    ("sustained", float, 0.0, "measure for at least this long, sampling the temperature every second"),
    ("max_samples", int, 20000, "report at most this many samples, evenly spaced (runs stays the true count)"),
    ("time_limit", float, None, "end (exit 3) after this many seconds in all, lock wait included"),
    ("probe", str, None, "shell command run inside the lock before and after measuring (device conditions)"),
    ("manifest", str, None, "manifest.json that describes the artifact: its I/O (names, layout) for --input and --val"),
    ("val", str, None, ".npz of samples (source layout, one array per input): run after timing, on the same model"),
    ("val_out", str, None, "with --val: write their outputs here (.npz: output_0, output_1, ... in manifest order)"),
)
# Lines that frame the probe's output on stdout: before-probe output, RUN mark, the JSON, AFTER mark, after-probe.
PROBE_MARKS = ("@@edgeopt-runner", "@@edgeopt-after")
RUNNER_DEFAULTS = {name: default for name, _kind, default, _help in RUNNER_OPTIONS}


def _runner_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def runner_parser():
    """The runner's argparse parser (``bench ARTIFACT [options]``), built from RUNNER_OPTIONS."""
    import argparse
    parser = argparse.ArgumentParser(prog="edgeopt-runner", description="edgeopt on-device runner")
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench", help="benchmark an artifact, print JSON")
    b.add_argument("artifact")
    for name, kind, default, text in RUNNER_OPTIONS:
        if kind is bool:
            b.add_argument(_runner_flag(name), action="store_true", help=text)
        else:
            b.add_argument(_runner_flag(name), type=kind, default=default, help=text)
    return parser


def runner_argv(artifact: str, **values) -> list:
    """The runner's words ``bench ARTIFACT --name VALUE ...`` for these RUNNER_OPTIONS values, in the table's order;
    None and the runner's own defaults are left out. A name not in the table is a TypeError."""
    unknown = sorted(set(values) - set(RUNNER_DEFAULTS))
    if unknown:
        raise TypeError(f"not runner options: {', '.join(unknown)}")
    argv = ["bench", str(artifact)]
    for name, kind, _default, _help in RUNNER_OPTIONS:
        value = values.get(name)
        if value is None or value == RUNNER_DEFAULTS[name]:
            continue
        argv += [_runner_flag(name)] if kind is bool else [_runner_flag(name), str(kind(value))]
    return argv


class RuntimeMissing(RuntimeError):
    """No runtime that can run this artifact is installed (the runner exits 3 with an install hint)."""


class InputError(ValueError):
    """Inputs that do not fit the model: names the input, the expected and the found shape/dtype."""


def check_artifact_name(name) -> str:
    """``name`` if it is a plain file name (an artifact inside the manifest's directory); ValueError otherwise.

    A manifest is data that may come from anywhere: ``"../../etc/passwd"`` or ``"/etc/passwd"`` as an
    artifact's ``file`` would make a reader open, push or bundle a file outside the model's directory.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"artifact file name {name!r}: not a file name")
    if (name in (".", "..") or "/" in name or "\\" in name or "\0" in name
            or os.path.isabs(name) or os.path.basename(name) != name
            or any(ord(c) < 32 or ord(c) == 127 for c in name)):
        raise ValueError(f"artifact file name {name!r}: must be a plain file name inside the model's "
                         "directory (no path separators, no '..', not absolute)")
    return name


class IOSpec:
    """One input or output of an artifact, as the manifest describes it.

    name         source model's tensor name
    shape        artifact tensor shape (batch included)
    dtype        artifact tensor dtype (int8, uint8, float32, float16)
    scale/zero_point  quantization of the artifact tensor (None for float)
    perm         artifact = source.transpose(perm) (onnx2tf turns NCHW into NHWC); None = same layout
    index        tensor index in the artifact (TFLite) or None
    source_dtype dtype callers give/get (float32 for quantized or float tensors; the artifact's own otherwise)
    parts/axis   an output the artifact holds as several tensors, each on its own scale (the manifest's ``join``:
                 YOLOv8's boxes and class scores on an Edge TPU), joined on source ``axis`` after dequantizing
    """

    def __init__(self, d: dict):
        self.parts, self.axis = _join(d), None
        if self.parts:
            self.axis = int(d["join"]["axis"])
        self.name = d["name"]
        self.shape = [int(s) if s is not None and int(s) >= 0 else None for s in d.get("shape") or []]
        self.dtype = d.get("dtype", "float32")
        self.scale = d.get("scale")
        self.zero_point = d.get("zero_point")
        self.perm = d.get("perm")
        self.index = d.get("index")
        self.source_shape = d.get("source_shape") or (
            _unpermute_shape(self.shape, self.perm) if self.perm else list(self.shape))
        self.source_dtype = d.get("source_dtype") or (
            "float32" if self.scale or np.dtype(self.dtype).kind == "f" else self.dtype)

    def to_dict(self) -> dict:
        d = {"name": self.name, "shape": self.shape, "dtype": self.dtype, "scale": self.scale,
             "zero_point": self.zero_point, "perm": self.perm, "index": self.index, "source_shape": self.source_shape}
        if self.parts:
            d["join"] = {"axis": self.axis, "parts": [p.to_dict() for p in self.parts]}
        return d

    def __repr__(self) -> str:
        return f"IOSpec({self.name!r}, shape={_fmt_shape(self.source_shape)}, dtype={self.source_dtype})"


MAX_JOIN_PARTS = 64


def _join(d: dict) -> "list[IOSpec] | None":
    """The parts of a joined output (``d["join"]``), checked: a manifest can be crafted, and a wrong axis or part
    shape must fail here, in words, not as numpy's error mid-run."""
    join = d.get("join")
    if join is None:
        return None
    name = d.get("name")
    parts = join.get("parts") if isinstance(join, dict) else None
    axis = join.get("axis") if isinstance(join, dict) else None
    shape = d.get("source_shape") or d.get("shape")
    if (not isinstance(parts, list) or not 2 <= len(parts) <= MAX_JOIN_PARTS
            or not all(isinstance(p, dict) and "join" not in p for p in parts)
            or type(axis) is not int or not isinstance(shape, list) or not 0 < axis < len(shape)):
        raise ValueError(f"output {name!r}: malformed join in the manifest (expected 2 to {MAX_JOIN_PARTS} parts "
                         "and an axis of its source shape other than the batch)")
    specs = [IOSpec(p) for p in parts]
    others = [[x for k, x in enumerate(p.source_shape) if k != axis] for p in specs]
    extents = [p.source_shape[axis] if len(p.source_shape) == len(shape) else None for p in specs]
    if (any(len(p.source_shape) != len(shape) for p in specs) or any(o != others[0] for o in others[1:])
            or None in extents or (shape[axis] is not None and sum(extents) != shape[axis])):
        raise ValueError(f"output {name!r}: the join's parts do not make its shape {shape} on axis {axis}")
    return specs


def _unpermute_shape(shape, perm):
    inv = np.argsort(perm)
    return [shape[i] for i in inv]


def _transpose(a: "np.ndarray", perm) -> "np.ndarray":
    """A contiguous ``a.transpose(perm)``. NCHW -> NHWC with few channels (images) is copied channel by channel:
    about 5x faster than numpy's general strided transpose, which matters per call for a 224x224x3 input."""
    if a.ndim == 4 and list(perm) == [0, 2, 3, 1] and a.shape[1] <= 16:
        out = np.empty((a.shape[0], a.shape[2], a.shape[3], a.shape[1]), dtype=a.dtype)
        for c in range(a.shape[1]):
            out[..., c] = a[:, c]
        return out
    return np.ascontiguousarray(np.transpose(a, perm))


def _quantize(x: "np.ndarray", spec: "IOSpec") -> "np.ndarray":
    dt = np.dtype(spec.dtype)
    if spec.scale and dt.kind in "iu":
        info = np.iinfo(dt)
        q = np.round(x.astype(np.float32) / np.float32(spec.scale)) + int(spec.zero_point or 0)
        return np.clip(q, info.min, info.max).astype(dt)
    return x.astype(dt, copy=False)


def _dequantize(q: "np.ndarray", spec: "IOSpec") -> "np.ndarray":
    if spec.scale and q.dtype.kind in "iu":
        return ((q.astype(np.float32) - np.float32(spec.zero_point or 0)) * np.float32(spec.scale))
    return q.astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------------- backends

def import_tflite_interpreter():
    """(Interpreter class, load_delegate, runtime name, version): ai_edge_litert, then tflite_runtime, then TF."""
    try:
        from ai_edge_litert import interpreter as litert  # type: ignore
        return litert.Interpreter, litert.load_delegate, "ai_edge_litert", _dist_version("ai-edge-litert")
    except ImportError:
        pass
    try:
        from tflite_runtime import interpreter as tflite  # type: ignore
        return tflite.Interpreter, tflite.load_delegate, "tflite_runtime", _dist_version("tflite-runtime")
    except ImportError:
        pass
    try:
        import tensorflow as tf  # type: ignore  # last resort only: heavy
        return (tf.lite.Interpreter, tf.lite.experimental.load_delegate, "tensorflow.lite", tf.__version__)
    except ImportError:
        pass
    raise RuntimeMissing("no TFLite runtime found (tried ai_edge_litert, tflite_runtime, tensorflow.lite); "
                         "install one: edgeopt devices --setup from the host, or pip install ai-edge-litert "
                         "in a venv (Raspberry Pi OS refuses pip into the system Python)")


def _first_line(e) -> str:
    """An exception's first line (at most 200 characters), or its repr when it has no message."""
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else repr(e)


def _x86() -> bool:
    import platform
    return platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


def _dist_version(name: str) -> "str | None":
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:
        return None


EDGETPU_LIBS = ("libedgetpu.so.1", "libedgetpu.1.dylib", "edgetpu.dll")


class _TFLiteBackend:
    def __init__(self, path: str, threads: "int | None", delegate: "str | None"):
        Interpreter, load_delegate, self.name, self.version = import_tflite_interpreter()
        self.delegate = None
        self.note = None
        delegates = []
        if delegate in ("cpu", "none", "xnnpack"):  # the CPU kernels (XNNPACK is built in)
            delegate = None
        if delegate == "edgetpu" or path.endswith("_edgetpu.tflite"):
            err = None
            # EDGEOPT_EDGETPU_DEVICE picks one TPU when several are attached: "usb", "usb:0", "pci:0"
            dev = os.environ.get("EDGEOPT_EDGETPU_DEVICE")
            for lib in EDGETPU_LIBS:
                try:
                    delegates.append(load_delegate(lib, {"device": dev} if dev else {}))
                    self.delegate = "edgetpu"
                    break
                except (ValueError, OSError) as e:  # library absent, or no Edge TPU attached
                    err = e
            if not delegates:
                raise RuntimeMissing(f"{os.path.basename(path)}: the Edge TPU delegate could not be loaded ({err}): "
                                     "install libedgetpu1-std from the Coral apt repository and check that the "
                                     "Edge TPU is attached (lsusb: 'Global Unichip' or '18d1:9302'); to run on the "
                                     "CPU instead, load the non-_edgetpu artifact (model.int8.tflite)")
        elif delegate:  # any other TFLite delegate, by its shared library (e.g. libarmnnDelegate.so)
            try:
                delegates.append(load_delegate(delegate))
            except (ValueError, OSError) as e:
                raise RuntimeMissing(f"TFLite delegate {delegate!r} could not be loaded: {e}") from None
            self.delegate = os.path.basename(delegate)
        kwargs = {"model_path": path, "experimental_delegates": delegates or None}
        if threads:
            kwargs["num_threads"] = int(threads)
        self.interp = Interpreter(**kwargs)
        self.interp.allocate_tensors()
        if self.delegate is None:
            # XNNPACK is applied by default for float and int8 models in LiteRT/TFLite >= 2.10 CPU builds.
            self.delegate = "xnnpack"
        self.input_details = self.interp.get_input_details()
        self.output_details = self.interp.get_output_details()

    def describe_io(self):
        def spec(d):
            scale, zp = d.get("quantization", (0.0, 0))
            return {"name": d["name"], "shape": [int(s) for s in d["shape"]], "dtype": np.dtype(d["dtype"]).name,
                    "scale": float(scale) if scale else None, "zero_point": int(zp) if scale else None,
                    "perm": None, "index": int(d["index"])}
        return [spec(d) for d in self.input_details], [spec(d) for d in self.output_details]

    def set_inputs(self, arrays: "list[np.ndarray]", specs: "list[IOSpec]"):
        for a, s in zip(arrays, specs):
            self.interp.set_tensor(s.index, a)

    def invoke(self):
        self.interp.invoke()

    def get_outputs(self, specs: "list[IOSpec]") -> "list[np.ndarray]":
        return [self.interp.get_tensor(s.index) for s in specs]


# onnxruntime (>= 1.20) graph transformers that quantize what a QDQ model keeps in float: WeightBiasQuantization
# gives a Conv/Gemm with float weights behind a DequantizeLinear input per-tensor INT8 weights. A layer kept in
# float on purpose (accuracy recovery: nodes_to_exclude) would then run in INT8 with a worse recipe than the
# rest (EfficientNet-Lite0's first depthwise conv: 18 -> 9 dB); TensorRT runs such a layer in FP16. Names an
# older onnxruntime does not know are ignored.
KEEP_FLOAT_OPTIMIZERS = ("WeightBiasQuantization",)


class _OnnxBackend:
    PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    SHORT = {"tensorrt": "TensorrtExecutionProvider", "trt": "TensorrtExecutionProvider",
             "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}

    def __init__(self, path: str, threads: "int | None", provider: "str | None", qdq: bool = False):
        try:
            import onnxruntime as ort  # type: ignore
        except ImportError:
            raise RuntimeMissing("onnxruntime not found; install it: edgeopt devices --setup from the host, "
                                 "or pip install onnxruntime in a venv (on a Jetson: the onnxruntime-gpu wheel "
                                 "for your JetPack)") from None
        self.name, self.version, self.delegate = "onnxruntime", ort.__version__, None
        self.note = None
        available = ort.get_available_providers()
        if provider:
            provider = self.SHORT.get(provider.lower(), provider)
            if provider not in available:
                raise RuntimeMissing(f"onnxruntime provider {provider} not available (have {', '.join(available)})")
            providers = [provider] + (["CPUExecutionProvider"] if provider != "CPUExecutionProvider" else [])
        else:  # the best one present: TensorRT, then CUDA, then the CPU (never Azure & co.)
            providers = [p for p in self.PREFERRED if p in available] or available
        so = ort.SessionOptions()
        if qdq and providers[0] == "CPUExecutionProvider" and _x86():
            # x86 int8 kernels (VPMADDUBSW without VNNI) saturate on int8 x int8 products and lose accuracy;
            # keep Q/DQ as explicit ops (float math on quantized values), which is what TensorRT computes.
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            self.note = "x86 CPU: Q/DQ kept as explicit ops (TensorRT numerics); fused int8 kernels saturate here"
        if threads:
            so.intra_op_num_threads = int(threads)
            so.inter_op_num_threads = 1
        so.log_severity_level = 3
        opts = [self._provider_options(p, path) for p in providers]
        kw = {"disabled_optimizers": list(KEEP_FLOAT_OPTIMIZERS)} if qdq else {}
        try:
            self.sess = ort.InferenceSession(path, sess_options=so, providers=list(zip(providers, opts)), **kw)
        except Exception as e:
            if providers[0] == "CPUExecutionProvider" and so.graph_optimization_level != \
                    ort.GraphOptimizationLevel.ORT_ENABLE_BASIC:
                # onnxruntime's own graph fusions can fail on a valid model (SimplifiedLayerNormFusion on a
                # PaddleOCR FP16 recognizer): the model runs with the basic ones, the same numbers, say so
                so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
                self.sess = ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"], **kw)
                self.note = f"onnxruntime's graph optimizations failed ({_first_line(e)}); ran with the basic ones"
            elif provider or providers[0] == "CPUExecutionProvider":
                raise
            else:
                # a GPU provider that is listed but cannot start (no GPU, library mismatch): run on the CPU, say so
                self.sess = ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"], **kw)
                self.note = f"{providers[0]} failed ({_first_line(e)}); ran on CPUExecutionProvider"
        self.provider = self.sess.get_providers()[0]
        self._names = [o.name for o in self.sess.get_outputs()]
        self._in_names = [i.name for i in self.sess.get_inputs()]
        self._feed = {}
        self._out = None

    @staticmethod
    def _provider_options(provider: str, path: str) -> dict:
        """TensorRT: FP16 (+ INT8 for QDQ models, explicit quantization) like trtexec --fp16 --int8, and an
        engine cache so a device builds each engine once ($EDGEOPT_TRT_CACHE, else ~/.cache/edgeopt/trt)."""
        if provider != "TensorrtExecutionProvider":
            return {}
        opts = {"trt_fp16_enable": "True"}
        try:
            with open(path, "rb") as f:
                if b"QuantizeLinear" in f.read():
                    opts["trt_int8_enable"] = "True"
        except OSError:
            pass
        cache = os.environ.get("EDGEOPT_TRT_CACHE") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "edgeopt", "trt")
        try:
            os.makedirs(cache, exist_ok=True)
            if os.access(cache, os.W_OK):
                opts.update(trt_engine_cache_enable="True", trt_engine_cache_path=cache)
        except OSError:  # a read-only root file system: no cache, engines are built at each start
            pass
        return opts

    def describe_io(self):
        def spec(a):
            t = a.type  # 'tensor(float)'
            dt = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int8)": "int8",
                  "tensor(uint8)": "uint8", "tensor(int64)": "int64", "tensor(int32)": "int32"}.get(t, "float32")
            shape = [int(s) if isinstance(s, int) else None for s in a.shape]
            return {"name": a.name, "shape": shape, "dtype": dt, "scale": None, "zero_point": None,
                    "perm": None, "index": None}
        return [spec(a) for a in self.sess.get_inputs()], [spec(a) for a in self.sess.get_outputs()]

    def set_inputs(self, arrays, specs):
        # by name; by position when the manifest names the tensors differently from the file
        names = self._in_names
        self._feed = {(s.name if s.name in names else names[k]): a for k, (a, s) in enumerate(zip(arrays, specs))}

    def invoke(self):
        self._out = self.sess.run(None, self._feed)

    def get_outputs(self, specs):
        by_name = dict(zip(self._names, self._out))
        return [by_name[s.name] if s.name in by_name else self._out[k] for k, s in enumerate(specs)]


# ------------------------------------------------------------------------------------------------ model

class Model:
    """A loaded artifact. Call it with float arrays in the source model's layout; get float arrays back.

    Accepts one array (single-input models), a list/tuple in input order, or a dict by input name.
    Inputs whose leading (batch) dimension exceeds the artifact's batch of 1 are run sample by sample.
    """

    def __init__(self, path: str, manifest: "dict | None" = None, artifact: "dict | None" = None,
                 threads: "int | None" = None, delegate: "str | None" = None, provider: "str | None" = None):
        self.path = path
        self.manifest = manifest
        self.artifact = artifact or {}
        fmt = self.artifact.get("format") or ("onnx" if path.endswith(".onnx") else "tflite")
        self.format = fmt
        if fmt == "tflite":
            self._backend = _TFLiteBackend(path, threads, delegate)
        elif fmt == "onnx":
            qdq = self.artifact.get("precision") == "int8" or ".qdq." in os.path.basename(path)
            self._backend = _OnnxBackend(path, threads, provider, qdq=qdq)
        else:
            raise ValueError(f"{path}: unknown artifact format {fmt!r}")
        ins, outs = self._backend.describe_io()
        if self.artifact.get("inputs"):
            self.inputs = [IOSpec(d) for d in self.artifact["inputs"]]
            self.outputs = [IOSpec(d) for d in self.artifact["outputs"]]
        else:  # a bare artifact: what the file itself says, in its own layout
            self.inputs = [IOSpec(d) for d in ins]
            self.outputs = [IOSpec(d) for d in outs]
        # the artifact's output tensors in manifest order: a joined output's parts in its place
        self._tensors_out = [p for s in self.outputs for p in (s.parts or [s])]
        self.threads = threads

    # -- facts
    @property
    def runtime(self) -> dict:
        """The runtime that really runs this model: name, version, delegate, provider."""
        b = self._backend
        return {"name": b.name, "version": b.version, "delegate": getattr(b, "delegate", None),
                "provider": getattr(b, "provider", None)}

    def __repr__(self) -> str:
        return f"<edgeopt.runtime.Model {os.path.basename(self.path)} {self.runtime['name']} inputs={self.inputs}>"

    # -- running
    def _normalize(self, inputs) -> "list[np.ndarray]":
        names = [s.name for s in self.inputs]
        if isinstance(inputs, dict):
            missing = [n for n in names if n not in inputs]
            unknown = [k for k in inputs if k not in names]
            if missing or unknown:
                raise InputError("; ".join(([f"missing input(s) {missing}"] if missing else [])
                                           + ([f"unknown input(s) {unknown}"] if unknown else []))
                                 + f"; the model takes {names}")
            arrays = [inputs[n] for n in names]
        elif isinstance(inputs, (list, tuple)):
            arrays = list(inputs)
        else:
            arrays = [inputs]
        if len(arrays) != len(self.inputs):
            raise InputError(f"the model takes {len(self.inputs)} input(s) {[s.name for s in self.inputs]}, "
                             f"got {len(arrays)}")
        out = []
        for a, s in zip(arrays, self.inputs):
            a = np.asarray(a)
            exp = s.source_shape
            want = np.dtype(s.source_dtype)
            if a.dtype.kind not in "fiu" or (want.kind == "f" and a.dtype.kind != "f"):
                raise InputError(f"input {s.name!r}: expected {want.name} values of shape {_fmt_batch(exp)} "
                                 f"(source layout), got dtype {a.dtype}"
                                 + ("; convert (and scale) integer data as in training, e.g. "
                                    "x.astype(np.float32) / 255" if a.dtype.kind in "iub" and want.kind == "f" else ""))
            if len(exp) == a.ndim + 1 and exp[0] in (1, None):
                a = a[None]  # one sample without its batch dimension
            if len(exp) != a.ndim or any(e is not None and e != f for e, f in zip(exp[1:], a.shape[1:])):
                msg = (f"input {s.name!r}: expected shape {_fmt_batch(exp)} (source layout, N = batch), "
                       f"got {list(a.shape)}")
                if s.perm and a.ndim == len(exp) and list(a.shape[1:]) == list(s.shape[1:]):
                    msg += (f"; that is the artifact's layout {_fmt_batch(s.shape)}: pass the source model's "
                            "layout, edgeopt.runtime transposes")
                raise InputError(msg)
            if a.shape[0] == 0:
                raise InputError(f"input {s.name!r}: empty batch (shape {list(a.shape)})")
            out.append(a)
        if len({a.shape[0] for a in out}) > 1:
            raise InputError("inputs have different batch sizes: "
                             + ", ".join(f"{s.name!r} {a.shape[0]}" for s, a in zip(self.inputs, out)))
        return out

    def _prepare(self, arrays: "list[np.ndarray]") -> "list[np.ndarray]":
        """Source-layout float arrays -> artifact tensors (transposed and quantized)."""
        res = []
        for a, s in zip(arrays, self.inputs):
            if s.perm:
                a = _transpose(a, s.perm)
            res.append(np.ascontiguousarray(_quantize(a, s)))
        return res

    def _finish(self, outs: "list[np.ndarray]") -> "list[np.ndarray]":
        """Artifact output tensors (``_tensors_out``) -> float arrays in the source layout, one per output."""
        def one(q, s):
            a = _dequantize(np.asarray(q), s)
            return np.transpose(a, np.argsort(s.perm)) if s.perm else a

        it = iter(outs)
        return [np.concatenate([one(next(it), p) for p in s.parts], axis=s.axis) if s.parts else one(next(it), s)
                for s in self.outputs]

    def _batch_of_artifact(self) -> "int | None":
        b = self.inputs[0].shape[0] if self.inputs and self.inputs[0].shape else None
        return b

    @property
    def batch_size(self) -> "int | None":
        """The artifact's own batch (1 for edge artifacts; None = dynamic). Larger batches run sample by sample."""
        return self._batch_of_artifact()

    def run(self, inputs) -> "list[np.ndarray]":
        """Like calling the model, but returns the outputs as a list in manifest order."""
        arrays = self._normalize(inputs)
        n = arrays[0].shape[0] if arrays[0].ndim else 1
        fixed = self._batch_of_artifact()
        if fixed is not None and n != fixed:
            if fixed != 1:
                raise InputError(f"input {self.inputs[0].name!r}: batch {n} does not fit the artifact's batch {fixed}")
            # transpose and quantize the whole batch once, then feed the artifact one sample at a time
            prepared = self._prepare(arrays)
            b = self._backend
            parts = []
            for i in range(n):
                b.set_inputs([p[i:i + 1] for p in prepared], self.inputs)
                b.invoke()
                parts.append(b.get_outputs(self._tensors_out))
            return self._finish([np.concatenate([p[k] for p in parts], axis=0)
                                 for k in range(len(self._tensors_out))])
        return self._run_once(arrays)

    def _run_once(self, arrays):
        self._backend.set_inputs(self._prepare(arrays), self.inputs)
        self._backend.invoke()
        return self._finish(self._backend.get_outputs(self._tensors_out))

    def __call__(self, inputs) -> dict:
        """Run on float inputs in the source layout; returns {output name: float32 array} in source layout."""
        return {s.name: a for s, a in zip(self.outputs, self.run(inputs))}

    def predict(self, inputs, batch_size: int = 256) -> "list[np.ndarray]":
        """Run a large set in chunks; returns the outputs as a list in manifest order."""
        chunks = [outs for _, outs in self._chunks(inputs, batch_size)]
        return [np.concatenate([c[k] for c in chunks], axis=0) for k in range(len(self.outputs))]

    def batches(self, inputs, batch_size: int = 256):
        """Yield ``(start, {output name: array})`` chunk by chunk: a large set with bounded memory."""
        for start, outs in self._chunks(inputs, batch_size):
            yield start, {s.name: a for s, a in zip(self.outputs, outs)}

    def _chunks(self, inputs, batch_size):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        arrays = self._normalize(inputs)
        n = arrays[0].shape[0]
        for i in range(0, n, int(batch_size)):
            yield i, self.run([a[i:i + int(batch_size)] for a in arrays])

    # -- benchmarking: time only the runtime's invoke on fixed, already-prepared inputs
    def example_inputs(self, seed: int = 0) -> "list[np.ndarray]":
        """Deterministic inputs in the source layout (batch 1), from the artifact's input specs."""
        rng = np.random.default_rng(seed)
        res = []
        for s in self.inputs:
            shape = [d if d is not None else 1 for d in s.source_shape]
            kind = np.dtype(s.source_dtype).kind
            if kind in "iub":  # ids, byte values, masks: small values every such input takes (0 and 1)
                res.append(rng.integers(0, 2, shape).astype(s.source_dtype))
            else:
                res.append(rng.standard_normal(shape).astype(np.float32))
        return res

    def set_inputs(self, arrays):
        self._backend.set_inputs(self._prepare(self._normalize(arrays)), self.inputs)

    def invoke(self):
        self._backend.invoke()


def _fmt_shape(shape) -> list:
    return [d if d is not None else "N" for d in shape]


def _fmt_batch(shape) -> str:
    """[1, 3, 224, 224] -> '[N, 3, 224, 224]' (any batch is taken), other dynamic dims as '?'."""
    dims = ["N" if i == 0 and d in (1, None) else ("?" if d is None else str(d)) for i, d in enumerate(shape)]
    return "[" + ", ".join(dims) + "]"


def load(path: "str | None" = None, threads: "int | None" = None, artifact: "str | int | None" = None,
         delegate: "str | None" = None, provider: "str | None" = None) -> "Model":
    """Load an artifact directory (with manifest.json) or a single artifact file.

    path:     default: the bundle this module was unpacked with (`edgeopt bundle`: manifest.json one level up).
    artifact: which artifact of the manifest (its file name or index; default: the primary, artifacts[0]).
    threads:  CPU threads for the runtime; default $EDGEOPT_THREADS, else the target's thread count from the
              manifest (at most this machine's CPUs), else the runtime's own default.
    delegate: TFLite: "edgetpu" (default for *_edgetpu.tflite), "cpu", or a delegate library path.
    provider: ONNX: an onnxruntime provider ("tensorrt", "cuda", "cpu" or a full name); default the best present.
    """
    if path is None:
        path = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        if not os.path.exists(os.path.join(path, MANIFEST)):
            raise FileNotFoundError(f"{path}: no {MANIFEST}; edgeopt.runtime.load() without a path works only "
                                    "in an unpacked `edgeopt bundle`")
    path = os.fspath(path)
    manifest, entry = None, None
    if os.path.isdir(path):
        mpath = os.path.join(path, MANIFEST)
        if not os.path.exists(mpath):
            raise FileNotFoundError(f"{path}: no {MANIFEST} (pass an artifact file or an edgeopt output dir)")
        with open(mpath) as f:
            manifest = json.load(f)
        arts = manifest.get("artifacts") or []
        if not arts:
            raise ValueError(f"{mpath}: no artifacts")
        if artifact is None:
            entry = arts[0]
        elif isinstance(artifact, int):
            entry = arts[artifact]
        else:
            matches = [a for a in arts if a["file"] == os.path.basename(str(artifact))]
            if not matches:
                raise ValueError(f"{mpath}: no artifact {artifact!r} (have {[a['file'] for a in arts]})")
            entry = matches[0]
        file = os.path.join(path, check_artifact_name(entry.get("file") if isinstance(entry, dict) else None))
    else:
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such file")
        file = path
        mpath = os.path.join(os.path.dirname(path) or ".", MANIFEST)
        if os.path.exists(mpath):  # an artifact next to its manifest: use what the manifest says of it
            with open(mpath) as f:
                m = json.load(f)
            for a in m.get("artifacts") or []:
                if a.get("file") == os.path.basename(path):
                    manifest, entry = m, a
    if delegate is None and manifest:
        delegate = (manifest.get("target") or {}).get("delegate")
        if delegate == "xnnpack":
            delegate = None
        if delegate == "edgetpu" and not (file.endswith("_edgetpu.tflite")
                                          or str((entry or {}).get("kind", "")).endswith("edgetpu")):
            delegate = None  # the CPU artifact of a Coral target (not compiled for the Edge TPU)
    return Model(file, manifest, entry, threads=_threads(threads, manifest), delegate=delegate, provider=provider)


def _threads(threads, manifest) -> "int | None":
    if threads:
        return int(threads)
    env = os.environ.get("EDGEOPT_THREADS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise ValueError(f"EDGEOPT_THREADS={env!r}: expected a whole number of threads") from None
    want = ((manifest or {}).get("target") or {}).get("threads")
    if want:
        return max(1, min(int(want), os.cpu_count() or 1))
    return None


# --------------------------------------------------------------------------------------------- benchmark

def latency_stats(samples_ms) -> dict:
    """min/p50/p90/p95/p99/mean/std/max/cv of latency samples in milliseconds (numpy's linear percentiles)."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        return {}
    p = np.percentile(a, [50, 90, 95, 99])
    mean = float(a.mean())
    std = float(a.std(ddof=1)) if a.size > 1 else 0.0
    return {"min": float(a.min()), "p50": float(p[0]), "p90": float(p[1]), "p95": float(p[2]),
            "p99": float(p[3]), "mean": mean, "std": std, "max": float(a.max()),
            "cv": (std / mean) if mean > 0 else 0.0}


def _peak_rss_mb() -> "float | None":
    try:
        import resource
        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r / 1024.0 if sys.platform != "darwin" else r / (1024.0 * 1024.0)
    except Exception:
        return None


def _cpu_jiffies():
    """(busy, total) jiffies of all CPUs from /proc/stat, or None off Linux."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)   # idle + iowait
        total = sum(v[:8])                           # guest time is already in user/nice
        return total - idle, total
    except (OSError, ValueError, IndexError):
        return None


def _max_temp_c():
    """Hottest /sys/class/thermal zone in degrees C, or None."""
    import glob
    best = None
    for z in glob.glob("/sys/class/thermal/thermal_zone*/temp"):
        try:
            with open(z) as f:
                t = int(f.read().strip()) / 1000.0
        except (OSError, ValueError):
            continue
        best = t if best is None else max(best, t)
    return best


class _CpuWatch:
    """CPU used by other processes while we measure: /proc/stat busy time minus our own (os.times)."""

    def __init__(self):
        self.j0, self.t0, self.w0 = _cpu_jiffies(), os.times(), time.perf_counter()

    def result(self) -> "dict | None":
        j1, t1, w1 = _cpu_jiffies(), os.times(), time.perf_counter()
        if not self.j0 or not j1 or j1[1] <= self.j0[1]:
            return None
        ncpu = os.cpu_count() or 1
        busy_frac = (j1[0] - self.j0[0]) / (j1[1] - self.j0[1])          # of all CPUs
        self_s = sum(t1[:4]) - sum(self.t0[:4])
        wall = max(1e-9, w1 - self.w0)
        other = max(0.0, busy_frac - self_s / wall / ncpu)
        return {"busy": round(busy_frac, 4), "self_cores": round(self_s / wall, 4), "other_busy": round(other, 4),
                "ncpu": ncpu, "seconds": round(wall, 3)}


def bench(path: str, warmup: int = RUNNER_DEFAULTS["warmup"], runs: int = RUNNER_DEFAULTS["runs"],
          min_seconds: float = RUNNER_DEFAULTS["min_seconds"], threads: "int | None" = None,
          seed: int = RUNNER_DEFAULTS["seed"], inputs=None, artifact=None, delegate=None, provider=None,
          keep_samples: bool = True, warmup_seconds: float = RUNNER_DEFAULTS["warmup_seconds"],
          sustained: float = RUNNER_DEFAULTS["sustained"], max_samples: int = RUNNER_DEFAULTS["max_samples"]) -> dict:
    """Load, warm up (``warmup`` runs and ``warmup_seconds``), then time ``invoke`` until both ``runs`` and
    ``min_seconds`` are met (``sustained`` seconds, when given, also samples the temperature every second).

    Returns the bench result JSON (docs/cli.md, "Bench result JSON") less the device and transfer fields, which
    the host adds, with ``samples_ms`` and ``timestamps_s`` (start of each sample, seconds since the timed loop began).
    """
    t0 = time.perf_counter()
    model = load(path, threads=threads, artifact=artifact, delegate=delegate, provider=provider)
    init_ms = (time.perf_counter() - t0) * 1e3
    return _bench_model(model, init_ms, warmup=warmup, runs=runs, min_seconds=min_seconds, seed=seed, inputs=inputs,
                        keep_samples=keep_samples, warmup_seconds=warmup_seconds, sustained=sustained,
                        max_samples=max_samples)


def _bench_model(model: "Model", init_ms: float, warmup: int, runs: int, min_seconds: float, seed: int, inputs,
                 keep_samples: bool, warmup_seconds: float, sustained: float, max_samples: int) -> dict:
    """:func:`bench` on a model already loaded (the runner keeps it, to run the --val samples on it afterwards)."""
    input_note = None
    if inputs is None:
        arrays = model.example_inputs(seed)
    else:
        arrays = model._normalize(inputs)
        n = arrays[0].shape[0]
        if n > 1 and all(not s.shape or s.shape[0] in (1, None) for s in model.inputs):
            arrays = [a[:1] for a in arrays]  # a batch-1 artifact times one sample; a file may hold many
            input_note = f"the input file holds {n} samples: the first one is timed (the artifact takes a batch of 1)"
    model.set_inputs(arrays)
    clock = time.perf_counter
    w0, n_warm = clock(), 0
    while n_warm < max(0, int(warmup)) or (clock() - w0) < warmup_seconds:
        model.invoke()
        n_warm += 1
    warm_s = clock() - w0
    samples, stamps, temps = [], [], []
    measure_s = max(float(min_seconds), float(sustained or 0))
    next_temp = 0.0
    watch = _CpuWatch()
    start = clock()
    while len(samples) < runs or (clock() - start) < measure_s:
        t = clock()
        model.invoke()
        samples.append((clock() - t) * 1e3)
        stamps.append(t - start)
        if sustained and t - start >= next_temp:
            temps.append([round(t - start, 3), _max_temp_c()])
            next_temp += 1.0
    cpu = watch.result()
    res = {
        "artifact": {"file": os.path.basename(model.path), "sha256": _sha256(model.path)},
        "runtime": model.runtime,
        "config": {"warmup": int(warmup), "runs": int(runs), "min_seconds": float(min_seconds),
                   "threads": model.threads, "warmup_seconds": float(warmup_seconds),
                   "sustained": float(sustained or 0)},
        "latency_ms": latency_stats(samples),
        "runs": len(samples),
        "init_ms": init_ms,
        "peak_rss_mb": _peak_rss_mb(),
        "warmup_done": {"runs": n_warm, "seconds": round(warm_s, 4)},
        "cpu_during": cpu,
    }
    if sustained:
        res["temperature_trace"] = temps
    if getattr(model._backend, "note", None):
        res["note"] = model._backend.note
    if input_note:
        res["input_note"] = input_note
    if keep_samples:
        _keep_samples(res, samples, [round(x, 6) for x in stamps], max_samples)
    return res


# ------------------------------------------------------------------------------------- validation samples

def output_key(k: int) -> str:
    """The name of output ``k`` (manifest order) in an outputs .npz: by position, since output names may hold
    characters a file name in a zip archive should not (``/``, ``:``)."""
    return "output_%d" % k


def load_samples(samples, model: "Model") -> dict:
    """``samples`` for ``model``: {input name: array (N, ...)} from a .npz (one array per input name; a single-input
    model also takes a .npz with one array under any name, and arrays that are not inputs, such as ``labels``, are
    left out) or a .npy (single-input models), read with ``allow_pickle=False``, or a dict given as it is."""
    names = [s.name for s in model.inputs]
    if isinstance(samples, dict):
        return {k: v for k, v in samples.items() if k in names}
    path = os.fspath(samples)
    if path.endswith(".npy"):
        if len(names) != 1:
            raise InputError("%s: a .npy file fits single-input models only; this one takes %s" % (path, names))
        return {names[0]: np.load(path, allow_pickle=False)}
    with np.load(path, allow_pickle=False) as z:
        keys = list(z.files)
        if len(names) == 1 and names[0] not in keys:
            arrays = [k for k in keys if k != "labels"]
            if len(arrays) != 1:
                raise InputError("%s: no array named %r (it has %s)" % (path, names[0], keys))
            return {names[0]: z[arrays[0]]}
        missing = [n for n in names if n not in keys]
        if missing:
            raise InputError("%s: no array for input(s) %s (it has %s)" % (path, missing, keys))
        return {n: z[n] for n in names}


def run_samples(model: "Model", samples, out: "str | None" = None) -> "list[np.ndarray]":
    """Run every sample of ``samples`` (see :func:`load_samples`: a .npz/.npy path or a dict, source layout) through
    ``model``, one batch of the artifact at a time; returns the outputs in manifest order (float32, (N, ...)).

    With ``out``, they are also written there as a .npz (``output_0``, ``output_1``, ... in manifest order; see
    :func:`save_outputs`): what the runner's ``--val``/``--val-out`` leave for the host to read back."""
    outputs = model.predict(load_samples(samples, model), batch_size=64)
    outputs = [np.ascontiguousarray(a, dtype=np.float32) for a in outputs]
    if out:
        save_outputs(outputs, out)
    return outputs


def save_outputs(outputs: "list[np.ndarray]", out: str) -> None:
    """Write ``outputs`` to the .npz ``out`` (``output_0``, ...), through a temporary name and a rename: a reader
    never sees half a file."""
    tmp = "%s.part-%d" % (out, os.getpid())
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **{output_key(k): a for k, a in enumerate(outputs)})
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _keep_samples(res: dict, samples: list, stamps: "list | None", max_samples: int) -> None:
    """Put the samples in ``res``, at most ``max_samples`` of them, evenly spaced over the run.

    A fast model measured for minutes gives millions of samples (hundreds of MB of JSON piped back over SSH);
    the statistics in ``res`` come from all of them, ``measured_s`` is their sum and ``samples_total`` their
    count, so the host can tell a thinned list from a whole one.
    """
    n = len(samples)
    res["measured_s"] = round(sum(samples) / 1e3, 6)
    if max_samples and n > max(2, int(max_samples)):
        k = max(2, int(max_samples))
        idx = [round(i * (n - 1) / (k - 1)) for i in range(k)]
        samples = [samples[i] for i in idx]
        stamps = [stamps[i] for i in idx] if stamps is not None else None
        res["samples_total"] = n
    res["samples_ms"] = samples
    if stamps is not None:
        res["timestamps_s"] = stamps


def _sha256(path: str) -> str:
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------------------------ TensorRT (trtexec)

TRTEXEC_PATHS = ("/usr/src/tensorrt/bin/trtexec", "/usr/local/tensorrt/bin/trtexec")


def find_trtexec(explicit: "str | None" = None) -> "str | None":
    """trtexec: the given path, then PATH, then JetPack's /usr/src/tensorrt/bin."""
    import shutil
    for cand in ([explicit] if explicit else []) + [shutil.which("trtexec")] + list(TRTEXEC_PATHS):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def parse_trtexec_version(text: str) -> "str | None":
    """'[TensorRT v100200]' -> '10.2.0', '[TensorRT v8602]' -> '8.6.2', or 'TensorRT version: 8.6.3'."""
    import re
    m = re.search(r"TensorRT version:\s*([\d.]+)", text or "")
    if m:
        return m.group(1)
    m = re.search(r"\[TensorRT v(\d+)\]", text or "")
    if not m:
        return None
    v = m.group(1)
    if len(v) >= 6:   # TensorRT >= 10: MMmmpp
        return f"{int(v[:-4])}.{int(v[-4:-2])}.{int(v[-2:])}"
    return f"{int(v[:-3])}.{int(v[-3:-2])}.{int(v[-2:])}"  # TensorRT 8: Mmpp (8602 -> 8.6.2)


def parse_trtexec_summary(text: str) -> dict:
    """The '=== Performance summary ===' of trtexec -> {'latency_ms', 'gpu_compute_ms', 'throughput_qps',
    'walltime_s', ...}. Latency keys follow the bench JSON: min, p50 (median), p90, p95, p99, mean, max."""
    import re
    out = {}
    names = {"Latency": "latency_ms", "GPU Compute Time": "gpu_compute_ms", "Enqueue Time": "enqueue_ms",
             "H2D Latency": "h2d_ms", "D2H Latency": "d2h_ms"}
    keymap = {"min": "min", "max": "max", "mean": "mean", "median": "p50", "percentile(90%)": "p90",
              "percentile(95%)": "p95", "percentile(99%)": "p99"}
    in_summary = False
    for raw in (text or "").splitlines():
        line = re.sub(r"^\[[^\]]*\]\s*\[\w\]\s*", "", raw.strip())  # '[10/03/2024-10:47:59] [I] '
        if "=== Performance summary ===" in line:
            in_summary = True
            continue
        if not in_summary:
            continue
        if line.startswith("==="):
            break
        m = re.match(r"Throughput:\s*([\d.eE+-]+)\s*qps", line)
        if m:
            out["throughput_qps"] = float(m.group(1))
            continue
        m = re.match(r"Total Host Walltime:\s*([\d.eE+-]+)\s*s", line)
        if m:
            out["walltime_s"] = float(m.group(1))
            continue
        m = re.match(r"Total GPU Compute Time:\s*([\d.eE+-]+)\s*s", line)
        if m:
            out["gpu_total_s"] = float(m.group(1))
            continue
        for label, key in names.items():
            if line.startswith(label + ":"):
                stats = {}
                for k, v in re.findall(r"(min|max|mean|median|percentile\(\d+%\))\s*=?\s*([\d.eE+-]+)\s*ms",
                                       line[len(label) + 1:]):
                    if k in keymap:
                        stats[keymap[k]] = float(v)
                out[key] = stats
    if "latency_ms" not in out:
        raise ValueError("no performance summary in the trtexec output")
    return out


def _trtexec_version(trtexec: str) -> str:
    import subprocess
    try:
        import tensorrt  # type: ignore
        return tensorrt.__version__
    except Exception:
        pass
    try:
        p = subprocess.run([trtexec, "--help"], capture_output=True, text=True, timeout=60)
        return parse_trtexec_version(p.stdout + p.stderr) or "unknown"
    except Exception:
        return "unknown"


def bench_trtexec(path: str, trtexec: str, warmup: int = RUNNER_DEFAULTS["warmup"],
                  runs: int = RUNNER_DEFAULTS["runs"], min_seconds: float = RUNNER_DEFAULTS["min_seconds"],
                  cache_dir: "str | None" = None, keep_samples: bool = True,
                  warmup_seconds: float = RUNNER_DEFAULTS["warmup_seconds"]) -> dict:
    """Build (once, cached by artifact hash and TensorRT version) and time a TensorRT engine with trtexec."""
    import subprocess
    import tempfile
    sha = _sha256(path)
    version = _trtexec_version(trtexec)
    cache_dir = cache_dir or os.path.join(os.path.dirname(os.path.abspath(path)), "engines")
    os.makedirs(cache_dir, exist_ok=True)
    engine = os.path.join(cache_dir, f"{sha}.trt{version}.engine")
    notes, build_s, cached = [], None, os.path.exists(engine)
    if not cached:
        with open(path, "rb") as f:
            qdq = b"QuantizeLinear" in f.read()
        tmp = f"{engine}.part-{os.getpid()}"
        flags = ["--fp16"] + (["--int8"] if qdq else [])
        t0 = time.perf_counter()
        p = subprocess.run([trtexec, f"--onnx={path}", f"--saveEngine={tmp}"] + flags, capture_output=True,
                           text=True)
        build_s = time.perf_counter() - t0
        if p.returncode != 0 or not os.path.exists(tmp):
            try:
                os.remove(tmp)
            except OSError:
                pass
            tail = (p.stdout + p.stderr).strip().splitlines()[-3:]
            raise RuntimeError("trtexec could not build an engine: " + " | ".join(tail))
        os.replace(tmp, engine)
        notes.append(f"TensorRT engine built on the device in {build_s:.1f} s ({' '.join(flags)}), cached")
    with tempfile.TemporaryDirectory() as td:
        times = os.path.join(td, "times.json")
        warm_ms = max(200, int(warmup) * 10, int(float(warmup_seconds) * 1000))
        t0 = time.perf_counter()
        p = subprocess.run([trtexec, f"--loadEngine={engine}", f"--warmUp={warm_ms}", f"--iterations={int(runs)}",
                            f"--duration={max(0.0, float(min_seconds)):g}", "--avgRuns=1",
                            f"--exportTimes={times}"], capture_output=True, text=True)
        wall = time.perf_counter() - t0
        text = p.stdout + p.stderr
        if p.returncode != 0:
            tail = text.strip().splitlines()[-3:]
            raise RuntimeError("trtexec failed: " + " | ".join(tail))
        summary = parse_trtexec_summary(text)
        samples = []
        try:
            with open(times) as f:
                samples = [float(r["latencyMs"]) for r in json.load(f) if isinstance(r, dict) and "latencyMs" in r]
        except (OSError, ValueError, KeyError, TypeError):
            samples = []
    lat = dict(summary["latency_ms"])
    if samples:
        stats = latency_stats(samples)
        lat.setdefault("std", stats["std"])
        lat.setdefault("p90", stats["p90"])
        n = len(samples)
    else:
        n = int(round(summary.get("throughput_qps", 0) * summary.get("walltime_s", 0))) or int(runs)
        lat.setdefault("std", None)
    import re
    m = re.search(r"Engine deserialized in ([\d.]+) sec", text)
    init_ms = float(m.group(1)) * 1e3 if m else (wall - summary.get("walltime_s", 0)) * 1e3
    import resource
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    res = {
        "artifact": {"file": os.path.basename(path), "sha256": sha},
        "runtime": {"name": "tensorrt", "version": version, "delegate": None, "provider": "trtexec"},
        "config": {"warmup": int(warmup), "runs": int(runs), "min_seconds": float(min_seconds), "threads": None},
        "latency_ms": lat, "runs": n, "init_ms": init_ms, "peak_rss_mb": peak,
        "trtexec": {k: v for k, v in summary.items() if k != "latency_ms"},
        "engine": {"path": engine, "cached": cached, "build_s": build_s},
        "notes": notes + [f"trtexec warm-up {warm_ms} ms; latency is trtexec's host latency (H2D + compute + D2H)"],
    }
    if keep_samples and samples:
        _keep_samples(res, samples, None, RUNNER_DEFAULTS["max_samples"])
    return res


class _Busy(RuntimeError):
    pass


class _UnsafeLock(RuntimeError):
    pass


class _Watchdog:
    """Ends the runner (exit 3) when its controller goes or at its time limit, so that an interrupted or
    vanished host never leaves a benchmark running on the device holding the device lock.

    The controller is gone when our stdout has no reader any more (sshd closes it when the SSH channel closes;
    a local edgeopt's pipe closes when it dies: poll reports POLLERR/POLLHUP) or when our parent changed.
    The runner's source arrives on stdin (``python3 -``), so stdin is at EOF from the start and cannot tell.
    """

    def __init__(self, time_limit: "float | None", period: float = 0.25):
        import threading
        self.deadline = time.monotonic() + time_limit if time_limit else None
        self.time_limit = time_limit
        self.ppid = os.getppid()
        self.period = period
        threading.Thread(target=self._watch, daemon=True, name="edgeopt-watchdog").start()

    def _controller_gone(self) -> bool:
        if os.getppid() != self.ppid:
            return True
        try:
            import select
            poller = select.poll()
            poller.register(sys.stdout.fileno(), select.POLLERR | select.POLLHUP)
            return any(ev & (select.POLLERR | select.POLLHUP) for _fd, ev in poller.poll(0))
        except (OSError, ValueError, AttributeError):
            return False

    def _watch(self):
        while True:
            time.sleep(self.period)
            if self._controller_gone():
                self._end(None)
            if self.deadline is not None and time.monotonic() > self.deadline:
                self._end(json.dumps({"error": f"time limit of {self.time_limit:g} s reached; stopped",
                                      "kind": "time_limit"}))

    @staticmethod
    def _end(message: "str | None"):
        import signal
        me = str(os.getpid())
        try:  # our children (trtexec, the probe) go with us
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    with open(f"/proc/{pid}/stat") as f:
                        ppid = f.read().rsplit(")", 1)[1].split()[1]
                except (OSError, IndexError):
                    continue
                if ppid == me:
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except OSError:
                        pass
        except OSError:
            pass
        if message:
            try:
                os.write(1, ("\n" + message + "\n").encode())
            except OSError:
                pass
        os._exit(3)


def _run_probe(cmd: str) -> str:
    """The output of the conditions probe (a shell command; reads nothing, stderr dropped, 60 s at most)."""
    import subprocess
    try:
        p = subprocess.run(["/bin/sh", "-c", cmd], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return p.stdout.decode("utf-8", "replace")


class _DeviceLock:
    """One benchmark at a time on this device: an flock on a file in the workdir (freed if we die)."""

    def __init__(self, path: "str | None", timeout: float):
        self.path, self.timeout, self.fd = path, timeout, None

    def __enter__(self):
        if not self.path:
            return self
        import fcntl
        import stat
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        # Never through a symlink (a planted bench.lock -> ~/.bashrc would be written), never a FIFO (O_NONBLOCK:
        # no hang on open) or a file with other names (hard link): the lock file is ours alone.
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            self.fd = os.open(self.path, flags, 0o644)
        except OSError as e:
            raise _UnsafeLock(f"cannot open the lock file {self.path}: {e.strerror or e}"
                              + (" (a symbolic link)" if os.path.islink(self.path) else "")) from None
        st = os.fstat(self.fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(self.fd)
            self.fd = None
            raise _UnsafeLock(f"the lock file {self.path} is not a plain file of its own (a device file, FIFO or "
                              f"hard link); remove it")
        deadline = time.monotonic() + max(0.0, self.timeout)
        said = False
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                holder = os.pread(self.fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
                if time.monotonic() >= deadline:
                    os.close(self.fd)
                    raise _Busy(f"device busy: another benchmark ({holder}) holds {self.path}; "
                                f"waited {self.timeout:g} s") from None
                if not said:
                    sys.stderr.write(f"waiting for the benchmark lock held by {holder}\n")
                    sys.stderr.flush()
                    said = True
                time.sleep(0.05)
        # who holds it, for a waiting runner's message; fixed width and no truncation (the file only ever holds this)
        os.pwrite(self.fd, f"pid {os.getpid()}".ljust(32).encode(), 0)
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)


def _runner_model(args, provider_only: bool = False) -> "Model":
    """The runner's model, loaded as :func:`load` loads the artifact file (in a device's store it sits alone: a
    bare file), with the runtime, delegate and threads asked for. With --manifest, the same runtime, delegate and
    threads, and the I/O as that manifest describes the artifact (source names, layout and order): data in the
    source layout (--input, --val) fits, and nothing the runtime runs changes."""
    delegate = None if provider_only else args.delegate
    if not args.manifest:
        return load(args.artifact, threads=args.threads, delegate=delegate, provider=args.provider)
    with open(args.manifest) as f:
        manifest = json.load(f)
    name = os.path.basename(args.artifact)
    arts = manifest.get("artifacts") if isinstance(manifest, dict) else None
    entry = next((a for a in arts or [] if isinstance(a, dict) and a.get("file") == name), None)
    if entry is None:
        raise ValueError("%s does not describe %s" % (args.manifest, name))
    if not os.path.exists(args.artifact):
        raise FileNotFoundError("%s: no such file" % args.artifact)
    return Model(args.artifact, manifest, entry, threads=_threads(args.threads, None), delegate=delegate,
                 provider=args.provider)


def _run_val(model: "Model | None", args) -> dict:
    """The runner's --val: every sample through the model that was timed (its runtime, delegate and threads), the
    outputs written to --val-out for the host to read back. TensorRT timed through trtexec has no model here: the
    samples then run with onnxruntime, and the summary's ``runtime`` says so."""
    if not args.val_out:
        raise ValueError("--val needs --val-out (where the outputs go)")
    if model is None:
        model = _runner_model(args, provider_only=True)
    t0 = time.perf_counter()
    outputs = run_samples(model, args.val, args.val_out)
    return {"samples": int(outputs[0].shape[0]) if outputs else 0, "seconds": round(time.perf_counter() - t0, 4),
            "runtime": model.runtime, "threads": model.threads, "outputs": [s.name for s in model.outputs]}


def main(argv=None) -> int:
    """Runner entry point: ``python3 runtime.py bench ARTIFACT [--warmup N] [--runs N] ...`` prints JSON."""
    import numpy  # noqa: F401  (a missing numpy fails here, on stderr, where the host looks for it)
    args = runner_parser().parse_args(argv)
    if argv is None:  # the runner process itself (not a test calling main()): may end itself
        _Watchdog(args.time_limit)
    inputs = None
    after = model = None
    try:
        if args.input:
            data = np.load(args.input)
            inputs = dict(data) if hasattr(data, "files") else data
        with _DeviceLock(args.lock, args.lock_timeout):
            if args.probe:  # inside the lock: another benchmark's load is not this one's "before"
                sys.stdout.write(_run_probe(args.probe) + f"\n{PROBE_MARKS[0]}\n")
                sys.stdout.flush()
            trt = None
            if args.prefer_tensorrt and args.artifact.endswith(".onnx"):
                trt = find_trtexec(args.trtexec)
            if trt and inputs is None:
                res = bench_trtexec(args.artifact, trt, warmup=args.warmup, runs=args.runs,
                                    min_seconds=max(args.min_seconds, args.sustained), cache_dir=args.engine_cache,
                                    keep_samples=not args.no_samples, warmup_seconds=args.warmup_seconds)
            else:
                t0 = time.perf_counter()
                model = _runner_model(args)
                res = _bench_model(model, (time.perf_counter() - t0) * 1e3, warmup=args.warmup, runs=args.runs,
                                   min_seconds=args.min_seconds, seed=args.seed, inputs=inputs,
                                   keep_samples=not args.no_samples, warmup_seconds=args.warmup_seconds,
                                   sustained=args.sustained, max_samples=args.max_samples)
                notes = [res.pop(k) for k in ("note", "input_note") if res.get(k)]
                if args.prefer_tensorrt and args.artifact.endswith(".onnx"):
                    why = ("TensorRT (trtexec) not found on this device" if not trt
                           else "trtexec cannot take --input data")
                    notes.append(f"{why}: fell back to onnxruntime with {res['runtime'].get('provider')}")
                    res["fallback"] = {"wanted": "tensorrt", "used": "onnxruntime"}
                if notes:
                    res["notes"] = notes
            if args.probe:
                after = _run_probe(args.probe)
            if args.val:  # after the conditions probe: "after" describes the timed run, not this one
                res["val"] = _run_val(model, args)
    except RuntimeMissing as e:
        print(json.dumps({"error": str(e), "kind": "runtime_missing"}))
        return 3
    except _Busy as e:
        print(json.dumps({"error": str(e), "kind": "busy"}))
        return 3
    except _UnsafeLock as e:
        print(json.dumps({"error": str(e), "kind": "unsafe_lock"}))
        return 3
    except Exception as e:  # the host turns this into one clear error line naming the device
        print(json.dumps({"error": f"{type(e).__name__}: {e}", "kind": "run_failed"}))
        return 4
    print(json.dumps(res))
    if after is not None:
        print(f"{PROBE_MARKS[1]}\n{after}", end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
