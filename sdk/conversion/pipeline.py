"""The conversion pipeline behind ``edgeopt convert`` and :func:`edgeopt.convert`.

source file -> (format, inputs/outputs) -> calibration + validation data -> one converter per artifact kind
of the target (see edgeopt.converters.ROUTES) -> artifacts described and checked against the FP32 model
-> manifest.json. Everything is staged in a temporary directory beside ``out`` and renamed into place at
the end, so a failed conversion never leaves half-written files where a user or a device would pick them up.
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
import sys
import tempfile

import numpy as np

from edgeopt import __version__, converters, runtime, targets
from edgeopt.conversion import data, recover, reference
from edgeopt.conversion.accuracy import (add_label_accuracy, compare as compare_outputs, gate as accuracy_gate,
                                        grid_limit, guess_kind, held_by_grid, parse_output_kinds, uneven_parts)
from edgeopt.conversion.defaults import (AUTO_METHODS, AUTO_SAMPLES, CALIBRATION_METHODS, DEFAULT_MAX_CALIB,
                                         DEFAULT_MAX_VAL, DEFAULT_MIN_COSINE, DEPTHWISE_EQUALIZATION_FLOOR,
                                         DEPTHWISE_EQUALIZATION_MARGIN, IO_DTYPES, MIN_CHECK_SAMPLES,
                                         OUTPUT_PARTS_RANGE_RATIO, ROUNDING_SAMPLES, TFLITE_METHODS)
from edgeopt.conversion.options import ConversionOptions, Recipe
from edgeopt.conversion.quiet import native_stderr_captured
from edgeopt.converters import edgetpu, onnx_io, onnx_split, onnx_unroll
from edgeopt.converters.onnx_tflite import layout_perm
from edgeopt.errors import GateError, UsageError
from edgeopt.json_files import read_json
from edgeopt.hashing import sha256_file, sha256_tree

__all__ = ["detect_format", "parse_input_shapes", "Job", "convert", "check_replaceable", "toolchain"]


# ------------------------------------------------------------------------------------------- helpers

def detect_format(path: str) -> str:
    """onnx | keras | saved_model | tflite, from the name and the first bytes; UsageError otherwise."""
    if not os.path.exists(path):
        raise UsageError(f"{path}: no such file or directory")
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "saved_model.pb")) or os.path.exists(os.path.join(path, "saved_model.pbtxt")):
            return "saved_model"
        raise UsageError(f"{path}: a directory but not a TensorFlow SavedModel (no saved_model.pb)")
    if not os.access(path, os.R_OK):
        raise UsageError(f"{path}: not readable")
    size = os.path.getsize(path)
    if size == 0:
        raise UsageError(f"{path}: empty file, not a model")
    with open(path, "rb") as f:
        head = f.read(16)
    low = path.lower()
    if head[4:8] == b"TFL3" or low.endswith(".tflite"):
        if head[4:8] != b"TFL3":
            raise UsageError(f"{path}: not a TFLite model (no TFL3 identifier)")
        return "tflite"
    if low.endswith(".keras"):
        if head[:2] != b"PK":
            raise UsageError(f"{path}: not a Keras .keras archive")
        return "keras"
    if low.endswith((".h5", ".hdf5")):
        if head[:8] != b"\x89HDF\r\n\x1a\n":
            raise UsageError(f"{path}: not an HDF5 (.h5) Keras file")
        return "keras"
    if low.endswith(".onnx"):
        return "onnx"
    if head[:8] == b"\x89HDF\r\n\x1a\n":
        return "keras"
    raise UsageError(f"{path}: unsupported model file (use .onnx, .keras, .h5, .tflite or a SavedModel directory)")


def parse_input_shapes(items) -> dict:
    """['name=1,3,224,224', ...] or a dict -> {name: [ints]}."""
    if not items:
        return {}
    if isinstance(items, dict):
        return {k: [int(d) for d in v] for k, v in items.items()}
    res = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"--input-shape {item!r}: expected NAME=D1,D2,... (e.g. input=1,3,224,224)")
        name, dims = item.rsplit("=", 1)
        try:
            shape = [int(d) for d in dims.replace("x", ",").split(",") if d.strip()]
        except ValueError:
            raise UsageError(f"--input-shape {item!r}: dimensions must be integers") from None
        if not shape or any(d <= 0 for d in shape):
            raise UsageError(f"--input-shape {item!r}: dimensions must be positive integers")
        res[name.strip()] = shape
    return res


def _floats(v, what):
    if v is None:
        return None
    if isinstance(v, str):
        try:
            v = [float(x) for x in v.split(",") if x.strip()]
        except ValueError:
            raise UsageError(f"--{what} {v!r}: expected comma-separated numbers, e.g. 0.485,0.456,0.406") from None
    return [float(x) for x in (v if isinstance(v, (list, tuple)) else [v])]


class Job:
    """What a converter needs: source, static I/O specs, calibration samples, target, options (the recipe
    among them), a workdir. Converters read ``job.recipe``; recovery hands its candidates' recipes to the
    route's hooks and never changes the job's options."""

    def __init__(self, source: str, fmt: str, target, inputs, outputs, calib: dict, io_dtype: str,
                 workdir: str, onnx_model=None, options: ConversionOptions | None = None):
        self.source = source
        self.source_name = os.path.basename(source.rstrip("/"))
        self.format = fmt
        self.target = target
        self.inputs = inputs          # static shapes, batch 1, source layout
        self.outputs = outputs
        self.calib = calib
        self.io_dtype = io_dtype
        self.workdir = workdir
        self.onnx_model = onnx_model
        self.options = options or ConversionOptions()
        self._static_onnx = None
        self._static_model = None
        self._quantizable_onnx = None
        self._centered_onnx = None
        self.equalization = None      # what quantizable_onnx_path() did (the manifest's calibration.equalization)
        self.centering = None         # what quantizable_onnx_path(symmetric=True) did (calibration.centering)
        self.unrolled = None          # what quantizable_onnx_path() unrolled (calibration.unrolled)
        self._calib_refs = None       # (inputs, FP32 outputs) of the first calibration samples (_calib_reference)
        self._output_concats = None
        self._split_outputs = None
        self._control = None
        self.graph = None             # TensorFlow Graph for keras/saved_model/tflite sources
        # what a route keeps for the recipes and recovery that quantize its graph again, by route
        # (edgeopt.converters.tf_tflite.RouteState under "tflite", onnx_qdq.RouteState under "qdq")
        self.route_state: dict = {}

    @property
    def recipe(self) -> Recipe:
        """The recipe of this conversion (its options'): what a route quantizes with unless given another."""
        return self.options.recipe

    @property
    def allow_float_fallback(self) -> bool:
        """Ops that cannot be INT8 may stay float (not for Coral)."""
        return self.options.allow_float_fallback

    def calib_samples(self) -> list[list[np.ndarray]]:
        n = data.count(self.calib)
        return [[self.calib[i["name"]][k:k + 1] for i in self.inputs] for k in range(n)]

    def calib_feeds(self, limit: int | None = None) -> list[dict]:
        """The first ``limit`` (None: all) calibration samples as onnxruntime feeds: {input name: batch-1 array}."""
        names = [i["name"] for i in self.inputs]
        return [dict(zip(names, sample)) for sample in self.calib_samples()[:limit]]

    def data_dependent_control(self) -> list[dict]:
        """The source's If/Loop/Scan nodes that depend on its data (edgeopt.converters.onnx_control), which no
        INT8 route quantizes; [] for a model without them or a non-ONNX source."""
        if self._control is None:
            from edgeopt.converters import onnx_control
            self._control = onnx_control.data_dependent(self.onnx_model) if self.onnx_model else []
        return self._control

    def output_concats(self) -> dict:
        """{output name: (axis, [ends])} of the outputs a Concat makes (ONNX sources; edgeopt.converters.onnx_io
        .output_concats): judged part by part where their parts are uneven."""
        if self._output_concats is None:
            self._output_concats = onnx_io.output_concats(self.onnx_model_static()) if self.onnx_model else {}
        return self._output_concats

    def split_outputs(self) -> dict:
        """{output name: {"axis", "ends", "shape"}} of the outputs a Concat makes whose parts are uneven on the first
        calibration samples' FP32 outputs (:func:`edgeopt.conversion.accuracy.uneven_parts`), with the output's
        batch-1 shape: a route whose outputs are integer exports each part as an output of its own
        (edgeopt.converters.onnx_split), since one scale cannot hold them."""
        if self._split_outputs is None:
            concats = self.output_concats()
            refs = dict(zip([o["name"] for o in self.outputs], _calib_reference(self, "onnx")[1])) if concats else {}
            self._split_outputs = {name: {"axis": axis, "ends": ends, "shape": [1] + list(refs[name].shape[1:])}
                                   for name, (axis, ends) in concats.items()
                                   if name in refs and uneven_parts(refs[name], (axis, ends))}
        return self._split_outputs

    def onnx_model_static(self):
        """The source ONNX model with its inputs' static shapes (a copy, made once: read it, do not change it;
        :meth:`static_onnx_path` saves it)."""
        if self._static_model is None:
            import onnx
            m = onnx.ModelProto()
            m.CopyFrom(self.onnx_model)
            onnx_io.fix_shapes(m, {i["name"]: i["shape"] for i in self.inputs})
            self._static_model = m
        return self._static_model

    def static_onnx_path(self) -> str:
        """The source ONNX with every input fixed to its static shape (batch 1), saved in the workdir."""
        if self._static_onnx is None:
            import onnx
            m = self.onnx_model_static()
            self._static_onnx = os.path.join(self.workdir, "source.static.onnx")
            onnx.save(m, self._static_onnx)
        return self._static_onnx

    def quantizable_onnx_path(self, symmetric: bool = False) -> str:
        """The float ONNX the routes quantize: :meth:`static_onnx_path` with its depthwise inputs equalized on
        the calibration samples (edgeopt.converters.onnx_equalize.equalize_depthwise_inputs), or that file itself
        where there is nothing to equalize. ``symmetric``: the route quantizes activations symmetrically, zero
        point 0 (TensorRT's QDQ): its rectified inputs of padding-free convolutions are centred too
        (edgeopt.converters.onnx_center). Before equalization, its recurrent ops (LSTM, GRU, RNN) are unrolled
        over their time steps (edgeopt.converters.onnx_unroll). The FP32 reference is the static source, never
        this."""
        from edgeopt.converters import onnx_center, onnx_equalize
        if self._quantizable_onnx is None:
            # recurrent ops first: unrolled, their gates are products the routes quantize (and equalization sees)
            unrolled, self.unrolled = self._rewritten(self.static_onnx_path(), "source.unrolled.onnx",
                                                      lambda m: onnx_unroll.unroll(m, self.calib_feeds(1)[0]))
            self._quantizable_onnx, self.equalization = self._rewritten(
                unrolled, "source.equalized.onnx",
                lambda m: onnx_equalize.equalize_depthwise_inputs(
                    m, self.calib_feeds(), DEPTHWISE_EQUALIZATION_MARGIN, DEPTHWISE_EQUALIZATION_FLOOR))
        if symmetric and self._centered_onnx is None:
            self._centered_onnx, self.centering = self._rewritten(
                self._quantizable_onnx, "source.centered.onnx",
                lambda m: onnx_center.center_rectified_inputs(m, self.calib_feeds()))
        return self._centered_onnx if symmetric else self._quantizable_onnx

    def _rewritten(self, src: str, name: str, rewrite) -> tuple[str, dict]:
        """(path, info): ``src`` loaded, ``rewrite(model) -> info`` applied in place, saved in the workdir as
        ``name`` when it changed something (``info["pairs"]``), else ``src`` itself."""
        import onnx

        from edgeopt.converters.onnx_fold import constants_as_initializers
        m = onnx.load(src)
        # the rewrites change initializers only: Paddle exports keep every weight in a Constant node
        constants_as_initializers(m)
        info = rewrite(m)
        if not info["pairs"]:
            return src, info
        path = os.path.join(self.workdir, name)
        onnx.save(m, path)
        return path, info


def _say(progress, msg):
    if progress:
        progress(msg)


def _warn(msg):
    sys.stderr.write(f"warning: {msg}\n")
    sys.stderr.flush()


# ------------------------------------------------------------------------------------------ pipeline

def convert(model, target: str, calib=None, val=None, out=None, input_shapes=None, mean=None, std=None,
            io: str | None = None, min_sqnr: float | None = None, min_top1: float | None = None,
            min_cosine: float = DEFAULT_MIN_COSINE, output_kinds=None,
            allow_float_fallback: bool = False, max_samples: int = DEFAULT_MAX_CALIB,
            max_val_samples: int = DEFAULT_MAX_VAL, progress=None, warn=_warn, accuracy_target=None,
            allow_cpu_ops: bool = False, trust_model_code: bool = False, max_float_layers=None, **recipe) -> dict:
    """See :func:`edgeopt.convert`. ``trust_model_code``: load models whose file can run code (Keras Lambda).
    ``recipe``: the recipe keywords (calibration_method, per_channel, bias_correction, calib_percentile,
    histogram_samples, weight_rounding) and ``explain``; another keyword is a TypeError naming it."""
    # one typed object from here on (converters, recovery, manifest); a misspelt keyword is a TypeError
    options = ConversionOptions.from_keywords(
        accuracy_target=accuracy_target, max_float_layers=max_float_layers, allow_cpu_ops=allow_cpu_ops,
        allow_float_fallback=allow_float_fallback, trust_model_code=trust_model_code, **recipe)
    target_spec = options.accuracy_target
    if min_cosine is None or not 0 <= float(min_cosine) <= 1:
        raise UsageError(f"--min-cosine {min_cosine!r}: expected a cosine between 0 (off) and 1, e.g. 0.9")

    try:
        tgt = targets.get(target)
    except KeyError as e:
        raise UsageError(str(e.args[0]), hint="see `edgeopt targets` for the list") from None
    model = os.fspath(model)
    fmt = detect_format(model)
    io_dtype = (io or tgt.io_dtype).lower()
    if io_dtype not in IO_DTYPES:
        raise UsageError(f"--io {io!r}: expected one of {', '.join(IO_DTYPES)}")
    if tgt.integer_only and allow_float_fallback:
        raise UsageError("--allow-float-fallback is not possible for Coral: the Edge TPU runs only INT8 ops",
                         hint="convert for rpi to keep float ops on the CPU")
    method = options.recipe.calibration_method
    if method not in CALIBRATION_METHODS:
        raise UsageError(f"calibration method {method!r}: expected {', '.join(CALIBRATION_METHODS[:-1])} or "
                         f"{CALIBRATION_METHODS[-1]}")
    if method not in TFLITE_METHODS and "onnx-qdq-int8" not in tgt.formats:
        raise UsageError(f"calibration method {method!r} is not available for {tgt.name}: TFLite targets take "
                         f"{', '.join(TFLITE_METHODS[:-1])} or {TFLITE_METHODS[-1]}",
                         hint="use --accuracy-target to recover accuracy instead")
    mean, std = _floats(mean, "mean"), _floats(std, "std")
    shapes = parse_input_shapes(input_shapes)
    routes = [converters.route(fmt, kind, tgt) for kind in tgt.formats]
    out = os.path.abspath(out or os.path.join("edgeopt-out", f"{_stem(model)}-{tgt.name}"))
    if os.path.lexists(out):
        check_replaceable(out)  # before minutes of conversion; checked again when the result is moved in
    parent = os.path.dirname(out)
    try:
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
    except OSError as e:
        raise UsageError(f"--out {out}: cannot write there ({e.strerror or e})") from None
    workdir = tempfile.mkdtemp(prefix="edgeopt-work-")
    try:
        with native_stderr_captured():
            manifest, failures = _convert(model, fmt, tgt, routes, calib, val, staging, workdir, shapes, mean, std,
                                          io_dtype, {"min_sqnr": min_sqnr, "min_top1": min_top1,
                                                     "min_cosine": min_cosine, "output_kinds": output_kinds},
                                          max_samples, max_val_samples, progress, warn, options)
        _commit(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    manifest["_out"] = out  # not written to disk: where the caller finds the files
    if failures:
        need = (manifest.get("recovery") or {}).get("needs_cpu_ops")
        unmet = (manifest.get("recovery") or {}).get("unmet")
        if unmet and target_spec:
            failures = failures + [unmet]
        raise GateError("accuracy gate failed: " + "; ".join(failures),
                        hint=(need["note"] + "; " if need else "") + f"artifacts and report kept in {out}",
                        result=manifest)
    return manifest


def _stem(path: str) -> str:
    base = os.path.basename(path.rstrip("/"))
    return os.path.splitext(base)[0] if not os.path.isdir(path) else base


# Files edgeopt itself writes into an output directory besides the artifacts its manifest lists
# (manifest.json; deploy's cache stamp, edgeopt.devices.deploy.STAMP).
_OWN_FILES = ("manifest.json", ".edgeopt-deploy-key")
_MAX_MANIFEST_BYTES = 64 << 20


def check_replaceable(out: str) -> None:
    """UsageError unless ``out`` may be replaced: empty, or an edgeopt output directory and nothing else.

    Replacing deletes the old directory, so a directory that merely holds a ``manifest.json`` (a web
    app's, a dataset's) is not enough: the manifest must be edgeopt's (``schema`` 1, an ``edgeopt``
    version, ``artifacts`` and ``toolchain``) and the directory must hold only the files it lists.
    """
    def refuse(why):
        raise UsageError(f"--out {out}: exists and is not an edgeopt output directory ({why}); refusing to "
                         "replace it", hint="choose another --out, or remove the directory yourself")

    if os.path.islink(out) or not os.path.isdir(out):
        refuse("not a directory")
    names = os.listdir(out)
    if not names:
        return
    mpath = os.path.join(out, "manifest.json")
    if os.path.islink(mpath) or not os.path.isfile(mpath):
        refuse("no manifest.json")
    try:
        manifest = read_json(mpath, limit=_MAX_MANIFEST_BYTES)
    except UsageError:
        refuse("manifest.json is not readable JSON of at most 64 MiB")
    from edgeopt.runtime import check_artifact_name
    if not (isinstance(manifest, dict) and manifest.get("schema") == 1 and isinstance(manifest.get("edgeopt"), str)
            and isinstance(manifest.get("toolchain"), dict) and isinstance(manifest.get("artifacts"), list)):
        refuse("its manifest.json was not written by edgeopt")
    listed = set(_OWN_FILES)
    for a in manifest["artifacts"]:
        try:
            listed.add(check_artifact_name(a.get("file") if isinstance(a, dict) else None))
        except ValueError as e:
            refuse(str(e))
    for name in sorted(names):
        path = os.path.join(out, name)
        if name not in listed:
            refuse(f"it holds {name!r}, which its manifest does not list")
        if os.path.islink(path) or not os.path.isfile(path):
            refuse(f"{name!r} is not a regular file")


def _commit(staging: str, out: str):
    """Move the finished staging dir to `out`, replacing an earlier result atomically."""
    old = None
    if os.path.lexists(out):
        check_replaceable(out)
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old-", dir=os.path.dirname(out))
        os.rmdir(old)
        os.rename(out, old)
    os.rename(staging, out)
    os.chmod(out, 0o755)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def _source_io(model, fmt, progress, trust_model_code=False):
    """(inputs, outputs, reference-callable factory, extra) of the source model."""
    if fmt == "onnx":
        m = onnx_io.load(model)
        ins, outs = onnx_io.io_specs(m)
        return ins, outs, {"onnx_model": m}
    if fmt in ("keras", "saved_model", "tflite"):
        _say(progress, "loading TensorFlow")
        tf_tflite = converters.load("edgeopt.converters.tf_tflite")
        g = tf_tflite.load(model, fmt, trust_model_code=trust_model_code)
        return [dict(i) for i in g.inputs], [{"name": n, "shape": None, "dtype": "float32"} for n in g.outputs], {"graph": g}
    raise AssertionError(fmt)


def _static(inputs, shapes, fmt, time_major=frozenset()):
    unknown = [n for n in shapes if n not in {i["name"] for i in inputs}]
    if unknown:
        raise UsageError(f"--input-shape: no input named {unknown[0]!r}; the model's inputs are "
                         f"{[i['name'] for i in inputs]}")
    res = []
    for i in inputs:
        shape = list(shapes.get(i["name"], i["shape"]))
        if fmt == "tflite" and shape != list(i["shape"]):
            raise UsageError(f"--input-shape {i['name']}: a .tflite model's input shapes are fixed in the file: "
                             f"{data.shape_str(i['shape'])}")
        if i["name"] in shapes and len(shape) != len(i["shape"]):
            raise UsageError(f"--input-shape {i['name']}: rank {len(shape)} does not match the model's "
                             f"{data.shape_str(i['shape'])}")
        if shape and shape[0] is None:
            shape[0] = 1
        if any(d is None for d in shape):
            raise UsageError(f"input {i['name']!r} has dynamic dimensions {data.shape_str(i['shape'])}",
                             hint=f"fix them with --input-shape {i['name']}=1,...")
        if shape and shape[0] != 1 and i["name"] in time_major:
            raise UsageError(f"input {i['name']!r} {data.shape_str(shape)} is time-major (steps, batch, features: "
                             "a recurrent op reads it as its sequence); edge artifacts are built batch first, "
                             "for batch 1", hint="export the model batch first (PyTorch: batch_first=True)")
        if shape and shape[0] != 1:
            raise UsageError(f"input {i['name']!r}: batch {shape[0]}; edge artifacts are built for batch 1",
                             hint=f"--input-shape {i['name']}=1,{','.join(str(d) for d in shape[1:])}")
        res.append({"name": i["name"], "shape": shape, "dtype": i["dtype"]})
    return res


def _convert(model, fmt, tgt, routes, calib, val, staging, workdir, shapes, mean, std, io_dtype, check_spec,
             max_samples, max_val_samples, progress, warn, options: ConversionOptions):
    min_sqnr, min_top1, min_cosine = check_spec["min_sqnr"], check_spec["min_top1"], check_spec["min_cosine"]
    source = {"file": os.path.basename(model.rstrip("/")), "format": fmt,
              "sha256": sha256_tree(model) if os.path.isdir(model) else sha256_file(model)}
    if fmt == "tflite":
        tfl = _tflite_facts(model)
        if calib is None or not tfl["float_ops"]:   # INT8 already, or nothing to calibrate a float model with
            return _passthrough(model, tfl, tgt, source, staging, io_dtype, progress, warn)

    _say(progress, f"reading {source['file']}")
    src_in, src_out, extra = _source_io(model, fmt, progress, options.trust_model_code)
    time_major = onnx_unroll.time_major_inputs(extra["onnx_model"]) if fmt == "onnx" else set()
    static_in = _static(src_in, shapes, fmt, time_major)
    data_in = [dict(i, shape=[None] + i["shape"][1:]) for i in static_in]
    declared_kinds = parse_output_kinds(check_spec["output_kinds"], [o["name"] for o in src_out])

    if calib is None:
        raise UsageError("calibration data is required for INT8 conversion",
                         hint="--calib data.npy | data.npz | images/ (or --calib random, for trying only)")
    # read no more than is used: without --val the last fifth of what is read is held out for the check
    cal_limit = max_samples if val is not None else max_samples + max_val_samples
    cal, cal_info = data.load(calib, data_in, "calibration", mean, std, limit=cal_limit)
    if cal_info["source"] == "random":
        warn(cal_info["warning"])
    n = data.count(cal)
    if val is not None:
        vdata, v_info = data.load(val, data_in, "validation", mean, std, limit=max_val_samples)
        v_info["held_out"] = False
    elif n >= 5:
        k = max(1, n // 5)
        vdata = data.take(cal, slice(n - k, n))
        cal = data.take(cal, slice(0, n - k))
        v_info = {"source": cal_info["source"], "held_out": True,
                  "note": f"no --val given: the last {k} of {n} calibration samples were held out for the check"}
    else:
        vdata = cal
        v_info = {"source": cal_info["source"], "held_out": False,
                  "note": "no --val given and too few calibration samples to hold any out: checked on calibration data"}
    if data.count(cal) > max_samples:
        cal = data.take(cal, slice(0, max_samples))
    if data.count(vdata) > max_val_samples:
        vdata = data.take(vdata, slice(0, max_val_samples))
    split = None
    if options.accuracy_target:  # select on one half, confirm on the other; refused before converting
        split = recover.split_samples(data.count(vdata), options.accuracy_target, max_val_samples)
    cal_info.update(samples=data.count(cal), sha256=data.digest(cal), max_samples=max_samples)
    v_info.update(samples=data.count(vdata), sha256=data.digest(vdata))

    job = Job(model, fmt, tgt, static_in, src_out, cal, io_dtype, workdir, onnx_model=extra.get("onnx_model"),
              options=options)
    job.graph = extra.get("graph")

    _check_finite(job, fmt)
    arts = []
    auto = None
    try:
        arts, auto = _run_routes(job, routes, fmt, progress)
    except UsageError as e:
        if tgt.integer_only and getattr(e, "needs_float_kernels", False):
            e.hint = (f"{tgt.name} runs INT8 ops only, so these cannot map there: convert for a target with float "
                      "kernels (rpi with --allow-float-fallback, or jetson), or replace those ops in the model")
        raise
    options = job.options  # with auto, the recipe of the method chosen

    # reference outputs (FP32 source) on the validation samples
    _say(progress, f"checking against FP32 on {data.count(vdata)} samples")
    ref = _reference(job, fmt)
    vlist = [vdata[i["name"]] for i in static_in]
    ref_out = reference.run_batched(ref, vlist)
    out_names = [o["name"] for o in src_out]
    for o, r in zip(src_out, ref_out):
        o["shape"] = [None] + list(r.shape[1:])
    kinds = {name: declared_kinds.get(name) or guess_kind(name, r.shape) for name, r in zip(out_names, ref_out)}

    labels = data.read_labels(val, data.count(vdata)) if val is not None else None
    by_artifact = {}
    # the samples each part sees: all of them, or (with --accuracy-target) the selection / confirmation half
    parts = {None: (vlist, ref_out, labels)}
    for part, idx in (split or {}).items():
        parts[part] = ([v[idx] for v in vlist], [r[idx] for r in ref_out], None if labels is None else labels[idx])

    def check(a, path, part=None):
        """(manifest entry with accuracy) of an artifact written at path, on the samples of ``part``."""
        inputs, refs, labs = parts[part]
        entry = _describe(a, path, static_in, src_out)
        m = runtime.Model(path, None, entry, threads=None)
        got = m.predict(inputs, batch_size=64)
        acc = add_label_accuracy(compare_outputs(refs, got, out_names, kinds, job.output_concats()), refs, got,
                                 out_names, labs)
        under = [n for n in out_names if min_cosine and acc[n].get("cosine", 1.0) < min_cosine]
        if under and a.get("format") == "tflite":   # under the sanity floor because of its own output grid?
            _output_grids(acc, a["data"], entry, refs, out_names, under)
        entry["accuracy"] = acc
        return entry

    recovery = layer_report = None
    target_spec = options.accuracy_target
    selection_acc = fallback = None
    if target_spec or options.explain:
        arts[0], recovery, layer_report, selection_acc, fallback = _recover(
            job, arts[0], check, target_spec, vdata, static_in, progress, options.allow_cpu_ops, split)
    final = "confirmation" if split else None  # the claim is measured on samples no choice saw

    def write_checked(a):
        path = os.path.join(staging, a["file"])
        with open(path, "wb") as f:
            f.write(a["data"])
        entry = check(a, path, final)
        by_artifact[a["file"]] = entry["accuracy"]
        return entry

    entries = [write_checked(a) for a in arts]
    if split and fallback is not None and not recover.meets(entries[0]["accuracy"], target_spec):
        # the float layers were not borne out on the confirmation half: the best all-INT8 artifact instead
        _say(progress, "the float layers missed the target on the confirmation samples: keeping the best all-INT8 "
                       "artifact")
        recover.reject_float(recovery, fallback, entries[0]["accuracy"], target_spec, len(split["selection"]),
                             len(split["confirmation"]))
        os.remove(os.path.join(staging, arts[0]["file"]))
        del by_artifact[arts[0]["file"]]
        arts[0], selection_acc = fallback["art"], fallback["acc"]
        entries[0] = write_checked(arts[0])
    if split and recovery is not None:
        recover.confirm(recovery, target_spec, selection_acc, by_artifact[arts[0]["file"]],
                        len(split["selection"]), len(split["confirmation"]))

    preflight = None
    if tgt.edgetpu_preflight:
        entries, preflight = _coral(entries, staging, progress, warn)

    for e in entries:
        _stamp(os.path.join(staging, e["file"]))
    primary = entries[0]
    accuracy = {"reference": reference.label(fmt),
                "data": v_info, "samples": v_info["samples"], "artifact": primary["file"],
                "outputs": primary["accuracy"], "by_artifact": by_artifact}
    if split:
        n_sel, n_conf = len(split["selection"]), len(split["confirmation"])
        accuracy["samples"] = n_conf
        accuracy["split"] = {"method": recovery["split"]["method"], "confirmation_samples": n_conf,
                             "selection_samples": n_sel, "selection_outputs": recovery["chosen"]["selection"]["accuracy"]}
        if "top1_ci95" in recovery["chosen"]:
            accuracy["top1_ci95"] = recovery["chosen"]["top1_ci95"]
    failures = []
    sanity = _sanity(entries, min_cosine)
    if sanity is not None:
        accuracy["sanity"] = sanity
        failures += sanity["failures"]
        for note in sanity.get("grid_limited", []):
            warn(note)
    if min_sqnr is not None or min_top1 is not None:
        failures = accuracy_gate(primary["accuracy"], min_sqnr, min_top1)
        accuracy["gate"] = {"min_sqnr": min_sqnr, "min_top1": min_top1, "passed": not failures,
                            "failures": failures}
    if target_spec:
        missed = recover.failures(primary["accuracy"], target_spec)
        if missed:
            failures.append(f"accuracy target {recover.target_str(target_spec)} not met even after recovery ("
                            + "; ".join(missed) + ")")
    manifest = _manifest(source, tgt, entries, cal_info, accuracy, io_dtype, static_in, src_out, mean, std, fmt,
                         options)
    if auto is not None:
        manifest["calibration"]["auto"] = auto
    if job.equalization is not None:
        manifest["calibration"]["equalization"] = job.equalization
    if job.centering is not None:
        manifest["calibration"]["centering"] = job.centering
    if job.unrolled and job.unrolled["of"]:
        manifest["calibration"]["unrolled"] = {"ops": job.unrolled["pairs"], "of": job.unrolled["of"],
                                               "steps": job.unrolled["steps"], "left": job.unrolled["left"]}
    if recovery is not None:
        manifest["calibration"]["method"] = recovery["chosen"]["recipe"]["calibration_method"]
        manifest["calibration"]["recipe"] = recovery["chosen"]["recipe"]
        if target_spec:
            manifest["recovery"] = recovery
            manifest["options"]["accuracy_target"] = target_spec
    if layer_report is not None:
        manifest["layers"] = dict(layer_report, layers=layer_report["layers"][:recover.TOP_LAYERS],
                                  total=len(layer_report["layers"]), artifact=arts[0]["file"])
    if preflight is not None:
        manifest["edgetpu"] = preflight
    _write_manifest(staging, manifest)
    return manifest, failures


def _run_routes(job, routes, fmt, progress) -> tuple[list[dict], dict | None]:
    """(artifacts of every route, the auto-ranges report or None). With ``auto``, the primary route picks the
    range method and ``job.options`` carries the chosen one from then on (other routes, recovery, manifest)."""
    arts, auto = [], None
    for kind, fn in routes:
        _say(progress, f"converting to {kind}")
        if kind == routes[0][0] and job.options.recipe.calibration_method == "auto":
            got, auto = _auto_ranges(job, fn, fmt, progress)
            kept = (auto.get("weight_rounding") or {}).get("kept")
            job.options = job.options.with_recipe(calibration_method=auto["chosen"],
                                                  **({"weight_rounding": kept} if kept else {}))
        else:
            got = fn(job)
        arts += got
    return arts, auto


def _output_grids(acc: dict, data: bytes, entry: dict, refs, names, under: list[str]) -> None:
    """Add ``output_grid`` (:func:`edgeopt.conversion.accuracy.grid_limit`) to the metrics of each output of
    ``under`` that the TFLite artifact ``data`` computes on an integer grid."""
    from edgeopt.converters import tf_tflite
    grids = tf_tflite.output_grids(data)
    index = {o["name"]: o.get("index") for o in entry.get("outputs") or []}
    for name, r in zip(names, refs):
        grid = grids.get(index.get(name))
        if grid is not None and name in under:
            acc[name]["output_grid"] = grid_limit(r, grid, acc[name].get("kind"))


def _sanity(entries: list[dict], floor: float) -> dict | None:
    """The sanity floor over every artifact: each output whose cosine against FP32 is below ``floor`` is a
    failure naming the artifact, the output and its numbers (and, where the converter found it, that the
    float graph was already wrong), unless its own integer grid holds it there
    (:func:`edgeopt.conversion.accuracy.held_by_grid`: ``grid_limited``). None when the floor is off."""
    if not floor or floor <= 0:
        return None
    failures, limited = [], []
    for e in entries:
        for name, m in (e.get("accuracy") or {}).items():
            cosine = m.get("cosine")
            if cosine is None or cosine >= floor:
                continue
            if held_by_grid(m):
                grid = m["output_grid"]
                limited.append(f"{e['file']}: output {name!r} has cosine {cosine:.4f} (SQNR {m.get('sqnr_db')} dB) "
                               f"against FP32, and the FP32 values rounded onto its INT8 grid alone (step "
                               f"{grid['step']:.4g}) give {grid['cosine']:.4f} ({grid['sqnr_db']} dB): the grid's "
                               "limit, not a broken artifact")
                continue
            why = (f"{e['file']}: output {name!r} has cosine {cosine:.4f} (SQNR {m.get('sqnr_db')} dB) against "
                   f"FP32, below the sanity floor {floor:g} (--min-cosine): a broken artifact, not an imprecise one")
            if m.get("parts"):   # judged part by part (accuracy.uneven_parts): say which part and why
                worst = min(m["parts"], key=lambda p: p["cosine"])
                why += (f"; that is its part {worst['range'][0]}:{worst['range'][1]} on axis {m['axis']} (the whole "
                        f"tensor: cosine {m['whole']['cosine']:.4f}), one of {len(m['parts'])} concatenated parts "
                        "whose magnitudes differ "
                        f"{OUTPUT_PARTS_RANGE_RATIO:g}x or more: an INT8 tensor holds them on one scale, the largest "
                        "part's (a target with float ops joins them in float; an integer-only one holds an ONNX "
                        "Concat's parts as outputs of their own, which this model's could not be: export the "
                        "parts as separate outputs)")
            if e.get("graph_check"):
                why += "; " + e["graph_check"]["note"]
            failures.append(why)
    res = {"min_cosine": floor, "passed": not failures, "failures": failures}
    if limited:
        res["grid_limited"] = limited
    return res


def _auto_ranges(job, fn, fmt, progress):
    """(artifacts, report) of the primary route built with each of AUTO_METHODS, keeping the one whose outputs
    are closest to FP32 (the worst output's SQNR) on the first AUTO_SAMPLES calibration samples. The choice
    sees calibration data only, never the validation samples the check reports on. A costly weight rounding
    (gptq_act: fitted to the ranges it is given) is built once, for the ranges chosen with plain GPTQ, and kept
    only if its outputs are at least as close to FP32 as plain GPTQ's (:func:`_rounding_check`)."""
    inputs, refs = _calib_reference(job, fmt)
    n = len(inputs[0])
    names = [o["name"] for o in job.outputs]
    src_out = [dict(o, shape=[None] + list(r.shape[1:])) for o, r in zip(job.outputs, refs)]
    tried, best = {}, None
    costly = job.recipe.weight_rounding == "gptq_act"
    for method in AUTO_METHODS:
        _say(progress, f"activation ranges: trying {method}")
        got = fn(job, job.recipe.replace(calibration_method=method, **({"weight_rounding": "gptq"} if costly else {})))
        tried[method] = _worst_sqnr(job, got[0], inputs, refs, src_out, names)
        if best is None or tried[method] > tried[best[0]]:
            best = (method, got)
    method, got = best
    report = {"chosen": method, "sqnr_db": tried, "samples": n,
              "by": "worst output SQNR against FP32 on the calibration samples"
                    + (", each with plain GPTQ weights (gptq_act is fitted to the chosen ranges)" if costly else "")}
    if costly:
        _say(progress, f"weight rounding: gptq_act for {method}")
        act = fn(job, job.recipe.replace(calibration_method=method))
        report["weight_rounding"] = _rounding_check(job, fmt, got[0], act[0], names, src_out)
        if report["weight_rounding"]["kept"] == "gptq_act":
            got = act
    return got, report


def _worst_sqnr(job, art: dict, inputs, refs, src_out, names) -> float:
    """The worst output's SQNR (dB) against ``refs`` of an artifact run on ``inputs`` (edgeopt.runtime)."""
    path = os.path.join(job.workdir, f"auto-{len(os.listdir(job.workdir))}-{art['file']}")
    with open(path, "wb") as f:
        f.write(art["data"])
    try:
        entry = _describe(art, path, job.inputs, src_out)
        outs = runtime.Model(path, None, entry, threads=None).predict(inputs, batch_size=64)
    finally:
        os.remove(path)
    return min(m["sqnr_db"] for m in compare_outputs(refs, outs, names, concats=job.output_concats()).values())


def _rounding_check(job, fmt, plain: dict, act: dict, names, src_out) -> dict:
    """Which of two artifacts of the chosen ranges to keep: plain GPTQ's or gptq_act's, by the worst output's
    SQNR against FP32 on calibration samples that gptq_act was not fitted to (those after the first
    ROUNDING_SAMPLES, at most AUTO_SAMPLES of them; with fewer than MIN_CHECK_SAMPLES there, the first
    AUTO_SAMPLES, which it was fitted to). gptq_act fits each layer to a few samples' INT8 inputs: a layer that
    fits them and not the layer loses accuracy on other inputs, and a model kind it was never measured on must
    not come out worse than plain GPTQ. A tie keeps gptq_act."""
    total = data.count(job.calib)
    lo = ROUNDING_SAMPLES if total - ROUNDING_SAMPLES >= MIN_CHECK_SAMPLES else 0
    hi = min(total, lo + AUTO_SAMPLES)
    inputs = [job.calib[i["name"]][lo:hi] for i in job.inputs]
    refs = reference.run_batched(_reference(job, fmt), inputs)
    got = {"gptq": _worst_sqnr(job, plain, inputs, refs, src_out, names),
           "gptq_act": _worst_sqnr(job, act, inputs, refs, src_out, names)}
    kept = "gptq_act" if got["gptq_act"] >= got["gptq"] else "gptq"
    return {"kept": kept, "sqnr_db": got, "samples": hi - lo, "fitted_on_them": lo == 0,
            "by": "worst output SQNR against FP32 on calibration samples "
                  + ("gptq_act was fitted to (too few others)" if lo == 0 else "gptq_act was not fitted to")}


def _recover(job, art, check, target, vdata, static_in, progress, allow_cpu_ops, split=None):
    """(artifact, recovery report or None, layer report or None, its accuracy on the samples it was chosen on,
    the best all-INT8 candidate when the artifact keeps float layers, else None) for the primary artifact. With
    ``split``, every choice sees the selection samples only."""
    counter = [0]
    part = "selection" if split else None

    def evaluate(a, keep=False):
        counter[0] += 1
        path = os.path.join(job.workdir, f"candidate-{counter[0]}-{a['file']}")
        with open(path, "wb") as f:
            f.write(a["data"])
        acc = check(a, path, part)["accuracy"]
        if not keep:
            os.remove(path)
        return acc, path

    chosen_from = split["selection"] if split else range(data.count(vdata))
    samples = [[vdata[i["name"]][k:k + 1] for i in static_in] for k in chosen_from[:recover.DEBUG_SAMPLES]]
    acc = evaluate(art)[0]
    if not target:  # explain only: the per-layer report of the plain artifact
        _say(progress, "per-layer error")
        return (art, {"chosen": {"recipe": job.recipe.to_manifest()}}, recover.layers(job, art, samples), acc, None)
    if recover.meets(acc, target) and not job.options.explain:
        report = {"target": target, "target_str": recover.target_str(target), "met": True,
                  "steps": [recover.step_entry({"recipe": job.recipe, "float": [], "acc": acc}, target)],
                  "chosen": {"recipe": job.recipe.to_manifest(), "float_layers": [],
                             "accuracy": recover.brief_accuracy(acc)},
                  "note": "the plain recipe meets the target"}
        return art, report, None, acc, None
    new, new_acc, report, fallback = recover.recover(job, art, acc, target, evaluate, allow_cpu_ops=allow_cpu_ops,
                                                     progress=progress, samples=samples,
                                                     n_val=None if split else data.count(vdata),
                                                     n_selection=len(split["selection"]) if split else data.count(vdata),
                                                     max_float_layers=job.options.max_float_layers)
    return new, report, report.pop("layers", None), new_acc, fallback


def _check_finite(job, fmt) -> None:
    """Refuse (exit 2) a model whose FP32 outputs are not finite on the first AUTO_SAMPLES calibration samples:
    inf or NaN has no INT8 range and no SQNR to check against, and a crafted model whose weights overflow float32
    reached the runtime as an internal error (XNNPACK refused the scales made of it)."""
    inputs, outs = _calib_reference(job, fmt)
    n = len(inputs[0])
    for o, r in zip(job.outputs, outs):
        if r.dtype.kind == "f" and not np.all(np.isfinite(r)):
            bad = int(np.sum(~np.isfinite(r).reshape(len(r), -1).all(axis=1)))
            raise UsageError(f"{job.source_name}: the FP32 model's output {o['name']!r} is not finite (inf or NaN) on "
                             f"{bad} of the first {n} calibration samples: there is nothing to quantize it to or check "
                             "it against", hint="check the model's weights (a float32 overflow) and that the "
                             "calibration data is scaled as the model expects")


def _calib_reference(job, fmt) -> tuple[list, list]:
    """(inputs, FP32 outputs) of the first AUTO_SAMPLES calibration samples, computed once per job: the finite
    check (:func:`_check_finite`) and "auto"'s choice (:func:`_auto_ranges`) both read them."""
    if job._calib_refs is None:
        n = min(AUTO_SAMPLES, data.count(job.calib))
        inputs = [job.calib[i["name"]][:n] for i in job.inputs]
        job._calib_refs = (inputs, reference.run_batched(_reference(job, fmt), inputs))
    return job._calib_refs


def _reference(job, fmt):
    if fmt == "onnx":
        return onnx_io.Reference(job.static_onnx_path(), [o["name"] for o in job.outputs])
    return job.graph


def _describe(a: dict, path: str, static_in, src_out) -> dict:
    """Manifest entry of one artifact: file facts and its I/O in artifact terms, mapped to source names."""
    m = runtime.load(path)
    ins, outs = m.inputs, m.outputs
    if a["format"] == "tflite":
        by_index = {s.index: s for s in ins + outs}
        ins = [by_index[i] for i in a["input_index"]]
        outs = [[by_index[k] for k in i] if isinstance(i, list) else by_index[i] for i in a["output_index"]]
    perms = a.get("input_perm") or [None] * len(ins)
    inputs, outputs = [], []
    for s, src, perm in zip(ins, static_in, perms):
        d = s.to_dict()
        d.update(name=src["name"], perm=perm, source_shape=src["shape"])
        inputs.append(d)
    joins = a.get("output_joins") or {}
    for s, src in zip(outs, src_out):
        if isinstance(s, list):   # one source output exported as its parts (converters.onnx_split)
            outputs.append(_joined_output(s, src, joins[src["name"]]))
            continue
        d = s.to_dict()
        d["name"] = src["name"]
        if a["format"] == "tflite" and src.get("shape"):
            sshape = [1] + list(src["shape"][1:])
            d["perm"] = layout_perm(sshape, d["shape"])
            d["source_shape"] = sshape
        else:
            d["perm"] = None
            d["source_shape"] = d["shape"]
        outputs.append(d)
    for d in inputs + outputs + [p for o in outputs for p in (o.get("join") or {}).get("parts", [])]:
        if a["format"] == "onnx":
            d.pop("index", None)
        for k in ("scale",):
            if d.get(k) is not None:
                d[k] = float(np.float32(d[k]))
    entry = {"file": a["file"], "format": a["format"], "precision": a["precision"], "kind": a["kind"],
             "sha256": sha256_file(path), "bytes": os.path.getsize(path), "inputs": inputs, "outputs": outputs,
             "layout": _layout_note(inputs), "converter": a.get("converter")}
    if a.get("float_ops"):
        entry["float_ops"] = a["float_ops"]
    if a.get("float_blocks"):  # the normalization blocks and the choice (tensor names stay with the artifact)
        entry["float_blocks"] = {k: v for k, v in a["float_blocks"].items() if k != "tensors"}
    if a.get("graph_check"):
        entry["graph_check"] = a["graph_check"]
    return entry


def _joined_output(parts: list, src: dict, join: dict) -> dict:
    """Manifest entry of a source output the artifact holds as parts, each its own tensor on its own scale:
    ``join`` says on which source axis edgeopt.runtime joins them back (in float) and what each part is."""
    sshape = [1] + list(src["shape"][1:])
    pieces = []
    for s, name, shape in zip(parts, join["parts"], onnx_split.part_shapes(sshape, join["axis"], join["ends"])):
        d = s.to_dict()
        d.update(name=name, perm=layout_perm(shape, d["shape"]), source_shape=shape)
        pieces.append(d)
    return {"name": src["name"], "shape": sshape, "dtype": "float32", "scale": None, "zero_point": None,
            "perm": None, "index": None, "source_shape": sshape, "join": {"axis": join["axis"], "parts": pieces}}


def _layout_note(inputs) -> str:
    notes = []
    for d in inputs:
        if d.get("perm"):
            notes.append(f"{d['name']}: artifact tensor is the source tensor transposed by {d['perm']} "
                         f"(NCHW -> NHWC); edgeopt.runtime takes source-layout arrays and transposes")
    return "; ".join(notes) if notes else "same as source"


def _coral(entries, staging, progress, warn):
    _say(progress, "Edge TPU pre-flight")
    e = entries[0]
    path = os.path.join(staging, e["file"])
    report = edgetpu.preflight(path)
    compiled = edgetpu.compile_if_available(path, staging)
    report["compiler"] = compiled["compiler"]
    if compiled.get("file"):
        tpu = dict(e)
        tpu.update(file=compiled["file"], kind="tflite-int8-edgetpu", sha256=sha256_file(compiled["path"]),
                   bytes=os.path.getsize(compiled["path"]), converter="edgetpu_compiler")
        tpu["accuracy"] = e["accuracy"]  # same quantization; the TPU part cannot run on this host
        entries = [tpu] + entries
    else:
        warn(compiled["compiler"].get("note") or "edgetpu_compiler did not produce a model")
    if report["summary"]["cpu_ops"]:
        warn(f"Edge TPU pre-flight: {report['summary']['cpu_ops']} of {report['summary']['ops']} ops would run "
             f"on the CPU (first unmappable: {report['summary']['first_unmapped']})")
    return entries, report


def _stamp(path):
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch and epoch.isdigit():
        os.utime(path, (int(epoch), int(epoch)))


def toolchain(fmt: str | None) -> dict:
    """Versions of edgeopt, Python, numpy and the converter packages a source format goes through."""
    tc = {"edgeopt": __version__, "python": ".".join(map(str, sys.version_info[:3])), "numpy": np.__version__}
    for mod in converters.TOOL_MODULES.get(fmt, ()):
        try:
            tc.update(converters.load(mod).versions())
        except Exception:
            pass
    return dict(sorted(tc.items()))


def _manifest(source, tgt, entries, cal_info, accuracy, io_dtype, static_in, src_out, mean, std, fmt,
              options: ConversionOptions, passed_through: bool = False) -> dict:
    flags = options.to_manifest()
    m = {
        "schema": 1,
        "edgeopt": __version__,
        "source": dict(source, inputs=[{"name": i["name"], "shape": i["shape"], "dtype": i["dtype"]} for i in static_in],
                       outputs=[{"name": o["name"], "shape": o.get("shape")} for o in src_out]),
        "target": {"name": tgt.name, "family": tgt.family, "runtime": tgt.runtime, "delegate": tgt.delegate,
                   "io_dtype": io_dtype, "threads": tgt.threads, "cpu_arch": tgt.cpu_arch},
        "artifacts": entries,
        # the recipe of a conversion (a .tflite passed through was not calibrated here: no recipe)
        "calibration": dict(cal_info, method=options.recipe.calibration_method,
                            **({"recipe": options.recipe.to_manifest()} if not passed_through else {}),
                            mean=mean, std=std),
        "accuracy": accuracy,
        "options": {"io": io_dtype, "allow_float_fallback": flags.pop("allow_float_fallback"),
                    "input_shapes": {i["name"]: i["shape"] for i in static_in}, **flags},
        "toolchain": toolchain(None if passed_through else fmt),
    }
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch and epoch.isdigit():
        m["created"] = datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return m


def _write_manifest(staging, manifest):
    path = os.path.join(staging, "manifest.json")
    with open(path, "w") as f:
        json.dump(manifest, f, indent=2, default=_json_default)
        f.write("\n")
    _stamp(path)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(type(o).__name__)


# -------------------------------------------------------------------------------------- .tflite input

def _tflite_facts(model) -> dict:
    """A .tflite input loaded by the runtime (a file it cannot load is a UsageError): {"model", "q_in" (integer
    inputs), "float_ops" (ops that compute in float)}."""
    try:
        m = runtime.load(model)
    except runtime.RuntimeMissing:
        raise
    except Exception as e:
        raise UsageError(f"{model}: not a loadable TFLite model ({str(e).strip().splitlines()[0][:200]})") from None
    return {"model": m, "q_in": all(np.dtype(s.dtype).kind in "iu" for s in m.inputs),
            "float_ops": _tflite_ops(model)["float_ops"]}


def _passthrough(model, tfl, tgt, source, staging, io_dtype, progress, warn):
    """A .tflite input that is INT8 already, or float with no --calib to quantize it with: validated, described,
    checked against the target, copied as the artifact."""
    m, q_in, float_ops = tfl["model"], tfl["q_in"], tfl["float_ops"]
    if tgt.integer_only and (float_ops or not q_in):
        raise UsageError(f"{model}: a float TFLite model cannot run on the Edge TPU "
                         f"({len(float_ops)} float ops: {', '.join(float_ops[:5]) or 'float inputs'})",
                         hint="give --calib (representative inputs) to quantize it to full-integer INT8"
                         if float_ops else "convert from the source model (.onnx/.keras/SavedModel) with --target coral")
    if float_ops:
        warn(f"{os.path.basename(model)} is a float model ({len(float_ops)} float ops), passed through as it is: "
             "give --calib to quantize it to INT8")
    name = os.path.basename(model)
    dst = os.path.join(staging, name)
    shutil.copyfile(model, dst)
    _stamp(dst)
    entry = {"file": name, "format": "tflite", "precision": "int8" if not float_ops and q_in else "float32",
             "kind": "tflite-passthrough", "sha256": sha256_file(dst), "bytes": os.path.getsize(dst),
             "inputs": [s.to_dict() for s in m.inputs], "outputs": [s.to_dict() for s in m.outputs],
             "layout": "as in the file", "converter": "passthrough"}
    if float_ops:
        entry["float_ops"] = float_ops
    entries, preflight = [entry], None
    if tgt.edgetpu_preflight:
        entries, preflight = _coral(entries, staging, progress, warn)
    manifest = _manifest(source, tgt, entries, {"source": None, "samples": 0, "note": "already converted"},
                         None, io_dtype, [], [], None, None, "tflite", ConversionOptions(), passed_through=True)
    manifest["source"]["inputs"] = entry["inputs"]
    manifest["source"]["outputs"] = entry["outputs"]
    if preflight is not None:
        manifest["edgetpu"] = preflight
    _write_manifest(staging, manifest)
    return manifest, []


def _tflite_ops(path) -> dict:
    ops = edgetpu.read_ops(path)
    return {"ops": [o["op"] for o in ops],
            "float_ops": sorted({o["op"] for o in ops if o["float"] and o["op"] not in ("QUANTIZE", "DEQUANTIZE")})}
