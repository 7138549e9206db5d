"""ONNX -> INT8 QDQ ONNX for TensorRT (explicit quantization) with onnxruntime.quantization.

TensorRT takes INT8 only as symmetric quantization with zero point 0 (TensorRT Developer Guide,
"Explicit Quantization"): activations and weights are both symmetric int8, weights per channel.

Placement follows TensorRT's (and NNCF's): Q/DQ on the inputs of operations, not between a Conv/Gemm/MatMul
and the activation after it. TensorRT fuses the activation into the layer and runs it on the layer's
higher-precision output, so a quantizer there would be an error TensorRT does not make.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib
import io
import os
import sys

import numpy as np

from edgeopt.conversion import ranges
from edgeopt.converters import onnx_control
from edgeopt.converters.onnx_unroll import left_in_float
from edgeopt.errors import UsageError

__all__ = ["convert", "gptq_rounded", "bias_corrected", "weights_only", "float_inputs", "check_symmetric", "RECOVERY_METHODS", "RECOVERY_ROUNDINGS",
           "MANY_FLOAT_ADVICE",
           "rebuild", "layer_errors", "float_candidates", "fp32_bytes", "bias_correction_info", "RouteState", "route_state"]

# What gets Q/DQ on its inputs: the compute layers, pooling, and residual Adds (two computed inputs: TensorRT
# fuses the Add into the layer before it when both inputs are INT8). Everything else (activations, LayerNorm,
# Softmax, GELU, elementwise arithmetic) runs in higher precision, as TensorRT runs an op without Q/DQ: a
# quantizer inside a LayerNorm's arithmetic cost Google's Magika its output (cosine 0.72).
QUANTIZED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "AveragePool", "GlobalAveragePool", "MaxPool",
                 "Add")
# layers whose output is not quantized by the layer itself (only where a consumer quantizes its input)
OUTPUT_NOT_QUANTIZED = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _unquantized_adds(path: str) -> list[str]:
    """Add nodes that are no residuals, left float: those with a constant input (a bias, a LayerNorm's beta or
    epsilon), and sums of two elementwise products (an LSTM's cell state, ``f * c + i * g``: unbounded, +-80 in
    Silero VAD, where one INT8 step of 0.4 left its hidden state output at 7 dB; TensorRT adds in higher
    precision what has no Q/DQ)."""
    import onnx
    graph = onnx.load(path, load_external_data=False).graph
    constants = {i.name for i in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    products = {o for n in graph.node if n.op_type == "Mul" for o in n.output}
    return [n.name for n in graph.node if n.op_type == "Add" and (
        any(i in constants for i in n.input) or (len(n.input) == 2 and all(i in products for i in n.input)))]


class _Reader:
    """CalibrationDataReader over the job's calibration samples (source layout, batch 1)."""

    def __init__(self, names, samples):
        self._feeds = [dict(zip(names, s)) for s in samples]
        self._it = iter(self._feeds)

    def get_next(self):
        return next(self._it, None)

    def __len__(self):
        return len(self._feeds)

    def set_range(self, start_index, end_index):  # CalibStridedMinMax: calibrate in chunks
        self._it = iter(self._feeds[start_index:end_index])


def _stride(n: int, most: int = 16) -> int:
    """Largest chunk size <= most that divides n (onnxruntime requires it)."""
    return next(d for d in range(min(most, n), 0, -1) if n % d == 0)


def convert(job, recipe=None) -> list[dict]:
    """[the INT8 QDQ ONNX artifact] of ``job`` quantized with ``recipe`` (an edgeopt.conversion.options.Recipe;
    None: ``job.recipe``). Its float layers are ONNX node names (``nodes_to_exclude``, with float inputs)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    recipe = job.recipe if recipe is None else recipe
    src = job.quantizable_onnx_path(symmetric=True)   # this route's activations: symmetric INT8, zero point 0
    recurrent = left_in_float(job.unrolled, job.source_name, job.allow_float_fallback)
    recurrent += onnx_control.refuse_or_keep(job.data_dependent_control(), job.source_name,
                                             job.allow_float_fallback)
    state = route_state(job)
    if state.prep is None:   # every recipe and recovery candidate quantizes the same float graph
        state.prep = _prepare(job, src)
    prep, cache = state.prep, state.calibrations
    out = os.path.join(job.workdir, "model.int8.qdq.onnx")
    names = [i["name"] for i in job.inputs]
    method_name = recipe.calibration_method
    ours = method_name in ranges.METHODS and method_name != "minmax"  # ranges estimated here, not by onnxruntime
    method = CalibrationMethod.Entropy if method_name == "entropy" else CalibrationMethod.MinMax
    base = prep   # the FP32 graph (same node and tensor names as the QDQ model)
    ranges_from = None   # the float graph the activation ranges are calibrated on, when not the one quantized
    if recipe.weight_rounding in ("gptq", "gptq_act"):  # before bias correction: it corrects what they still shift
        prep = gptq_rounded(job, prep, names, bool(recipe.per_channel))
    if recipe.weight_rounding == "gptq_act":
        # the compensated weights are fitted to the INT8 model's inputs: the float graph with them computes other
        # activations than either model, so the ranges stay plain GPTQ's (those the weights were fitted under)
        ranges_from = prep
        prep = gptq_compensated(job, base, names, recipe)
    if recipe.bias_correction:
        prep = bias_corrected(job, prep, names, set(recipe.float_layers), recipe)
    if recipe.weight_rounding != "nearest" and recipe.float_layers:
        # float means float: the nodes kept in float compute with their FP32 weights, not GPTQ's grid values
        prep = _weights_from(job, prep, base, set(recipe.float_layers))
    # biases stay float, as TensorRT's explicit quantization keeps them (it adds them in the layer's higher
    # precision); onnxruntime's int32 bias path would also rescale weights for it, and fails on some per-channel
    # layers ("truth value of an array" on Google's Magika)
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True,
             "OpTypesToExcludeOutputQuantization": list(OUTPUT_NOT_QUANTIZED),
             "QuantizeBias": False, "QDQDisableWeightAdjustForInt32Bias": True}
    if recipe.calib_percentile is not None:
        extra["CalibPercentile"] = float(recipe.calib_percentile)
    calib = job.calib_samples()
    if recipe.histogram_samples and method_name in ("percentile", "entropy"):
        # recovery: histograms of every tensor are costly (minutes), the first samples give the tails
        calib = calib[:int(recipe.histogram_samples)]
    if method_name == "entropy" and len(calib) > 16:
        # histogram calibrators keep every sample's tensors until they histogram them: in chunks, memory
        # stays bounded (all samples at once, entropy on EfficientNet-Lite0 with 200 samples ran out of it)
        extra["CalibStridedMinMax"] = _stride(len(calib))
    exclude = list(recipe.float_layers)
    key = (method_name, extra.get("CalibPercentile"), bool(recipe.per_channel), len(calib))
    factory = None
    if ours:
        def factory(*a, **k):
            return _RangeCalibrator(ranges_from or prep, method_name, extra.get("CalibPercentile"))
    elif ranges_from:
        create = importlib.import_module("onnxruntime.quantization.calibrate").create_calibrator

        def factory(model, *a, **k):
            return create(ranges_from, *a, **k)
    try:
        # the histogram calibrators print their progress: on stderr with --debug, else nowhere
        sink = sys.stderr if os.environ.get("EDGEOPT_DEBUG") == "1" else io.StringIO()
        with _reuse_calibration(cache, key, factory), contextlib.redirect_stdout(sink), _third_party_logs():
            quantize_static(
                prep, out, _Reader(names, calib),
                quant_format=QuantFormat.QDQ,
                per_channel=bool(recipe.per_channel),
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=method,
                op_types_to_quantize=list(QUANTIZED_OPS),
                nodes_to_exclude=exclude + _unquantized_adds(prep),
                extra_options=extra,
            )
    except Exception as e:
        raise UsageError(f"{job.source_name}: QDQ quantization failed: {str(e).strip()[:300]}") from None
    with open(out, "rb") as f:
        data = f.read()
    model = onnx.load_from_string(data)
    if exclude:
        float_inputs(model, set(exclude))
        data = model.SerializeToString()
    check_symmetric(model)
    art = {"file": "model.int8.qdq.onnx", "format": "onnx", "precision": "int8", "kind": "onnx-qdq-int8",
           "data": data, "converter": "onnxruntime.quantization.quantize_static (QDQ, symmetric, per-channel)"
           + (f"; activation ranges: {method_name} (edgeopt)" if ours else "")}
    if exclude:
        art["float_nodes"] = exclude
    if recurrent:   # quantize_static leaves them (and control flow's bodies) as they are, float weights and all
        art["float_ops"] = recurrent
    return [art]


@contextlib.contextmanager
def _third_party_logs():
    """onnxruntime's quantizer logs warnings on the root logger ("Please consider pre-processing before
    quantization", LayerNorm weights, ...): shown with --debug only, like every third-party message."""
    if os.environ.get("EDGEOPT_DEBUG") == "1":
        yield
        return
    import logging
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _prepare(job, src: str) -> str:
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgeopt.converters.onnx_fold import constants_as_initializers
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
    if constants_as_initializers(model):
        prep = os.path.join(job.workdir, "qdq-prep-init.onnx")
        onnx.save(model, prep)
    return prep


class _CachedCalibrator:
    """Stands in for onnxruntime's calibrator: no data collected, the ranges of an earlier run returned."""

    def __init__(self, data):
        self._data = data

    def collect_data(self, reader):
        pass

    def compute_data(self):
        return copy.deepcopy(self._data)


class _RangeCalibrator:
    """Stands in for onnxruntime's calibrator with edgeopt's range estimators (edgeopt.conversion.ranges):
    the float graph runs once per calibration sample with every float activation as an extra output, and
    each tensor gets a symmetric range (-t, t) (TensorRT: zero point 0) by ``method``."""

    def __init__(self, model_path: str, method: str, percentile=None):
        self.model_path, self.method = model_path, method
        self.percentile = ranges.DEFAULT_PERCENTILE if percentile is None else float(percentile)
        self.collector = ranges.Collector(keep_values=method in ranges.NEEDS_VALUES)
        self.io: set = set()

    def collect_data(self, reader):
        import onnx
        import onnxruntime as ort
        m = onnx.load(self.model_path)
        inits = {i.name for i in m.graph.initializer}
        have = {o.name for o in m.graph.output}
        # the model's inputs and outputs keep min-max ranges: a narrower output range would clip the top
        # logits into ties (as on the TFLite route, tf_tflite.set_ranges)
        self.io = have | {i.name for i in m.graph.input}
        for n in m.graph.node:
            if n.op_type in ("Constant", "QuantizeLinear", "DequantizeLinear"):
                continue
            for t in n.output:
                if t and t not in have and t not in inits:
                    m.graph.output.append(onnx.ValueInfoProto(name=t))
                    have.add(t)
        so = ort.SessionOptions()
        so.log_severity_level = 3
        # no graph optimisation: fused nodes would drop the intermediate tensors asked for
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(m.SerializeToString(), sess_options=so, providers=["CPUExecutionProvider"])
        outs = [o.name for o in sess.get_outputs()]
        while True:
            feed = reader.get_next()
            if feed is None:
                break
            for name, v in feed.items():
                self.collector.add(name, v)
            for name, v in zip(outs, sess.run(None, feed)):
                self.collector.add(name, v)

    def compute_data(self):
        from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData
        got = self.collector.ranges(self.method, symmetric=True, percentile=self.percentile)
        got.update({k: v for k, v in self.collector.ranges("minmax", symmetric=True).items() if k in self.io})
        return TensorsData(CalibrationMethod.MinMax,
                           {k: (np.array(lo, np.float32), np.array(hi, np.float32)) for k, (lo, hi) in got.items()})


class _reuse_calibration:
    """Within quantize_static, calibrate once per recipe key and reuse the ranges (TensorsData) afterwards.

    The ranges do not depend on nodes_to_exclude (the calibrator augments every quantizable tensor), so a
    candidate with float nodes gets exactly the artifact a fresh quantize_static would make, without running
    the calibration data through the augmented model again. Without ``cache`` (plain path) it only puts
    ``factory`` (edgeopt's range estimators, :class:`_RangeCalibrator`), when given, in place of onnxruntime's
    calibrator.
    """

    def __init__(self, cache, key, factory=None):
        self.cache, self.key, self.factory = cache, key, factory

    def __enter__(self):
        q = importlib.import_module("onnxruntime.quantization.quantize")  # the module, not the function
        self._mod, self._orig = q, q.create_calibrator
        if self.cache is None:
            if self.factory is not None:  # edgeopt's range estimators instead of onnxruntime's calibrator
                q.create_calibrator = self.factory
            return self
        cache, key, orig = self.cache, self.key, self.factory or q.create_calibrator
        if key in cache:
            q.create_calibrator = lambda *a, **k: _CachedCalibrator(cache[key])
        else:
            def create(*a, **k):
                cal = orig(*a, **k)
                compute = cal.compute_data

                def compute_and_keep():
                    data = compute()
                    cache[key] = copy.deepcopy(data)
                    return data
                cal.compute_data = compute_and_keep
                return cal
            q.create_calibrator = create
        return self

    def __exit__(self, *exc):
        self._mod.create_calibrator = self._orig
        return False


def _weights_from(job, prep: str, base: str, nodes: set) -> str:
    """``prep`` with the weights of ``nodes`` taken from ``base`` (the same graph before GPTQ)."""
    import onnx
    m, b = onnx.load(prep), onnx.load(base)
    originals = {i.name: i for i in b.graph.initializer}
    inits = {i.name: i for i in m.graph.initializer}
    for n in m.graph.node:
        if n.name in nodes:   # the weights, and the bias gptq_act moved (bias correction skips float nodes)
            for t in n.input[1:3]:
                if t in inits and t in originals:
                    inits[t].CopyFrom(originals[t])
    out = os.path.join(job.workdir, "qdq-prep-float-weights.onnx")
    onnx.save(m, out)
    return out


def _rounding_layers(fm, shared: bool = False) -> list[tuple]:
    """[(node, kind, auto_pad)] of the Conv (dense or depthwise), Gemm and MatMul nodes of ``fm`` whose weights
    GPTQ rounds: a float32 initializer read by that node only. ``shared``: also Gemm/MatMul nodes reading one
    weight between them, all in the same orientation, and nothing else reading it (an unrolled recurrent op's
    recurrent weights, once per time step); :func:`gptq_rounded` rounds such a weight once for all of them."""
    from onnx import numpy_helper

    from edgeopt.converters.onnx_fold import attribute
    inits = {i.name: i for i in fm.graph.initializer}
    users: dict = {}
    for n in fm.graph.node:
        for t in n.input:
            users[t] = users.get(t, 0) + 1
    layers = []
    for n in fm.graph.node:
        if len(n.input) < 2 or n.input[1] not in inits or (users[n.input[1]] > 1 and not shared):
            continue
        w = numpy_helper.to_array(inits[n.input[1]])
        if w.dtype != np.float32:
            continue
        if n.op_type == "Conv" and w.ndim == 4:
            g = attribute(n, "group", 1)
            auto = attribute(n, "auto_pad", b"NOTSET")
            auto = auto.decode() if isinstance(auto, bytes) else auto
            if auto not in ("NOTSET", "VALID", "SAME_UPPER"):
                continue
            if g == 1:
                kind = "conv"
            elif w.shape[1] == 1 and g == w.shape[0]:
                kind = "depthwise"
            else:
                continue
            layers.append((n, kind, auto))
        elif n.op_type == "Gemm" and w.ndim == 2 and not attribute(n, "transA", 0):
            layers.append((n, "gemm_t" if attribute(n, "transB", 0) else "matmul", None))
        elif n.op_type == "MatMul" and w.ndim == 2:
            layers.append((n, "matmul", None))
    if shared:   # a shared weight: only where every reader is a dense layer of the same orientation
        kinds: dict = {}
        for n, kind, _ in layers:
            kinds.setdefault(n.input[1], []).append(kind)
        layers = [(n, kind, auto) for n, kind, auto in layers if users[n.input[1]] == 1
                  or (kind in ("matmul", "gemm_t") and kinds[n.input[1]] == [kind] * users[n.input[1]])]
    return layers


def _layer_rows(n, kind: str, auto, x, w_shape):
    """A layer's input ``x`` (NCHW for Conv) as what a Hessian takes: ("rows", [P, K]) or ("channels",
    [P, K, C]) for a depthwise layer, at fixed pseudo-random output positions (the same for every tensor of
    the same shape); None when it cannot (a Conv input that is not 4-D)."""
    from edgeopt.conversion import rounding
    from edgeopt.converters.onnx_fold import attribute
    if kind in ("gemm_t", "matmul"):
        return "rows", x.reshape(-1, x.shape[-1])
    if x.ndim != 4:
        return None
    k = tuple(w_shape[2:])
    st = tuple(attribute(n, "strides", [1, 1]))
    dl = tuple(attribute(n, "dilations", [1, 1]))
    xh = np.transpose(x, (0, 2, 3, 1))
    if auto == "SAME_UPPER":
        pads = rounding.same_pads(xh.shape[1:3], k, st, dl)
    else:
        p = list(attribute(n, "pads", [0, 0, 0, 0]))
        pads = (p[0], p[2], p[1], p[3])        # ONNX: begins then ends
    pt = rounding.patches(xh, k, st, dl, pads, rows=rounding.ROWS if kind == "conv" else rounding.CHANNEL_ROWS)
    if kind == "conv":   # ONNX weights [O, I, kh, kw]: rows over (I, kh, kw)
        return "rows", np.transpose(pt, (0, 3, 1, 2)).reshape(len(pt), -1)
    return "channels", pt.reshape(len(pt), -1, pt.shape[-1])


def gptq_rounded(job, prep: str, names: list[str], per_channel: bool = True) -> str:
    """The float graph with the weights of its Conv (dense or depthwise), Gemm and MatMul layers rounded by GPTQ
    (edgeopt.conversion.rounding) and written back as float values on the INT8 grid quantize_static derives
    from them (symmetric, max|w| / 127 per output channel: Conv axis 0, Gemm/MatMul the output axis), so its
    own rounding keeps every code. Hessians from the float graph on the first ROUNDING_SAMPLES calibration
    samples. Same node and tensor names as ``prep``; computed once per job and graph."""
    import onnx
    from onnx import numpy_helper

    from edgeopt.conversion import rounding
    from edgeopt.conversion.defaults import ROUNDING_SAMPLES
    from edgeopt.converters import onnx_prefix
    cache = route_state(job).rounded
    key = (prep, per_channel)
    if key in cache:
        return cache[key]
    fm = onnx.load(prep)
    inits = {i.name: i for i in fm.graph.initializer}
    layers = _rounding_layers(fm, shared=True)
    if not layers:
        cache[key] = prep
        return prep
    sess, outs = onnx_prefix.session_with_outputs(fm, {n.input[0] for n, _, _ in layers})
    # by weight: node names may be empty, and a weight read by several layers sums their inputs' Hessians
    hs = rounding.Hessians()
    for sample in job.calib_samples()[:ROUNDING_SAMPLES]:
        got = dict(zip(outs, sess.run(None, dict(zip(names, sample)))))
        for n, kind, auto in layers:
            r = _layer_rows(n, kind, auto, got[n.input[0]], inits[n.input[1]].dims)
            if r is not None:
                (hs.add_rows if r[0] == "rows" else hs.add_channels)(n.input[1], r[1])
    done = set()
    for n, kind, _ in layers:
        h = hs.get(n.input[1])
        if h is None or n.input[1] in done:
            continue
        done.add(n.input[1])
        w = numpy_helper.to_array(inits[n.input[1]]).astype(np.float64)
        rows = w.T if kind == "matmul" else w.reshape(w.shape[0], -1)
        grid = rounding.grid_values(rows, h, per_row=per_channel)
        new = grid.T if kind == "matmul" else grid.reshape(w.shape)
        inits[n.input[1]].CopyFrom(numpy_helper.from_array(new.astype(np.float32), n.input[1]))
    out = os.path.join(job.workdir, "qdq-prep-gptq.onnx")
    onnx.save(fm, out)
    cache[key] = out
    return out


def _beside_plain(job, graph: str, recipe) -> tuple:
    """(QDQ model of ``recipe``'s all-INT8 form without bias correction, the float graph ``graph``, its
    initializers by name, the QDQ model's initializers by name, its DequantizeLinear nodes by output): what
    bias correction and gptq_act read exact scales and rounding from."""
    import onnx
    plain = recipe.replace(bias_correction=False, float_layers=())
    qm = onnx.load_from_string(convert(job, plain)[0]["data"])
    fm = onnx.load(graph)
    return (qm, fm, {i.name: i for i in fm.graph.initializer}, {i.name: i for i in qm.graph.initializer},
            {n.output[0]: n for n in qm.graph.node if n.op_type == "DequantizeLinear"})


def gptq_compensated(job, base: str, names: list[str], recipe) -> str:
    """The float graph ``base`` with GPTQ weights that compensate the INT8 model's activation error
    (edgeopt.conversion.rounding.compensated): each layer's weights map its input *in the INT8 model* to its
    FP32 output, rounded against that input's Hessian, and its bias absorbs the mean shift left. Layers are
    fitted one after the other in graph order (GPTQ's sequential mode): a layer's INT8 input comes from the QDQ
    model of ``recipe`` with plain GPTQ (its activation ranges) whose upstream layers already carry their
    compensated weights and biases, so no layer corrects again what an upstream one has corrected. Paired
    inputs (FP32 graph, QDQ model at ORT_DISABLE_ALL) on the first ROUNDING_SAMPLES calibration samples; a layer
    whose input has too few positions in them (rounding.compensable) keeps its GPTQ weights. Computed once per
    job, graph and activation ranges."""
    import onnx
    from onnx import numpy_helper

    from edgeopt.conversion import rounding
    from edgeopt.conversion.defaults import ROUNDING_SAMPLES
    from edgeopt.converters import onnx_prefix
    cache = route_state(job).rounded
    key = (base, "compensated", bool(recipe.per_channel), recipe.calibration_method, recipe.calib_percentile)
    if key in cache:
        return cache[key]
    qm, fm, inits, q_inits, dq = _beside_plain(job, base, recipe.replace(weight_rounding="gptq"))
    q_by_out = {n.output[0]: n for n in qm.graph.node if n.output}
    pairs = []   # (node, kind, auto, the node's input tensor in the QDQ model, its weight DQ node, its bias name)
    for n, kind, auto in _rounding_layers(fm):
        qn = q_by_out.get(n.output[0])    # quantize_static keeps the float graph's tensor names
        if qn is None or qn.op_type != n.op_type:
            continue
        d = dq.get(qn.input[1])
        if d is None or d.input[0] not in q_inits or d.input[1] not in q_inits:
            continue
        q_bias = qn.input[2] if len(qn.input) > 2 and qn.input[2] in q_inits else None
        pairs.append((n, kind, auto, qn.input[0], d, q_bias))
    if not pairs:
        cache[key] = gptq_rounded(job, base, names, bool(recipe.per_channel))
        return cache[key]
    feeds = job.calib_feeds(ROUNDING_SAMPLES)
    reference = onnx.ModelProto()
    reference.CopyFrom(fm)   # FP32 weights: fm's change below, layer after layer
    ref = onnx_prefix.Prefix(reference, feeds)
    live = onnx_prefix.Prefix(qm, feeds, disable_all=True)   # reads each layer's weights once its input is read
    for n, kind, auto, t, d, q_bias in pairs:
        stats = rounding.Pairs()
        dims = inits[n.input[1]].dims
        for x, xq in zip(ref.get(n.input[0]), live.get(t)):
            if x.shape != xq.shape:
                break
            r, rq = _layer_rows(n, kind, auto, x, dims), _layer_rows(n, kind, auto, xq, dims)
            if r is None:
                break
            if kind == "conv":    # per-channel means over every position, as the rows' columns (I, kh, kw)
                taps = int(np.prod(dims[2:]))
                means = tuple(np.repeat(v.mean(axis=(0, 2, 3), dtype=np.float64), taps) for v in (x, xq))
                stats.add_rows(n.output[0], r[1], rq[1], means)
            elif kind == "depthwise":   # [K, C]
                taps = int(np.prod(dims[2:]))
                means = tuple(np.tile(v.mean(axis=(0, 2, 3), dtype=np.float64), (taps, 1)) for v in (x, xq))
                stats.add_channels(n.output[0], r[1], rq[1], means)
            else:
                stats.add_rows(n.output[0], r[1], rq[1])
        st = stats.get(n.output[0])
        if not rounding.compensable(st):   # too few positions (a 7x7 stage, a classifier): plain GPTQ
            continue
        w = numpy_helper.to_array(inits[n.input[1]]).astype(np.float64)
        rows = w.T if kind == "matmul" else w.reshape(w.shape[0], -1)
        has_bias = len(n.input) > 2 and n.input[2] in inits and n.op_type in ("Conv", "Gemm")
        b = numpy_helper.to_array(inits[n.input[2]]).astype(np.float64) if has_bias else None
        if b is not None and b.shape != (len(rows),):
            b, has_bias = None, False
        grid, nb = rounding.compensated(rows, b, st, per_row=bool(recipe.per_channel))
        new = grid.T if kind == "matmul" else grid.reshape(w.shape)
        inits[n.input[1]].CopyFrom(numpy_helper.from_array(new.astype(np.float32), n.input[1]))
        if has_bias:
            inits[n.input[2]].CopyFrom(numpy_helper.from_array(nb.astype(np.float32), n.input[2]))
        # the same layer in the QDQ model the next layers are fitted against: codes and scales as
        # quantize_static will derive them from these grid values (symmetric, max|w| / 127), the float bias
        codes_of = numpy_helper.to_array(q_inits[d.input[0]])
        axis = next((a.i for a in d.attribute if a.name == "axis"), 1) if np.ndim(
            numpy_helper.to_array(q_inits[d.input[1]])) else None
        amax = np.abs(new).max(axis=tuple(i for i in range(new.ndim) if i != axis)) if axis is not None \
            else np.abs(new).max()
        scale = np.where(amax > 0, amax / rounding.LEVELS, 1.0).astype(np.float32)
        shape = [1] * new.ndim
        if axis is not None:
            shape[axis] = -1
        codes = np.clip(np.round(new / scale.reshape(shape)), -rounding.LEVELS, rounding.LEVELS)
        if codes.shape == codes_of.shape:
            q_inits[d.input[0]].CopyFrom(numpy_helper.from_array(codes.astype(codes_of.dtype), d.input[0]))
            q_inits[d.input[1]].CopyFrom(numpy_helper.from_array(scale, d.input[1]))
            if has_bias and q_bias is not None:
                q_inits[q_bias].CopyFrom(numpy_helper.from_array(nb.astype(np.float32), q_bias))
    out = os.path.join(job.workdir, f"qdq-prep-gptq-act-{len(cache)}.onnx")
    onnx.save(fm, out)
    cache[key] = out
    return out


def _input_means(job, fm, layers, names: list[str]) -> tuple[dict, int]:
    """({input tensor: its per-channel mean (axis 1; a 2-D tensor's columns)}, samples) of the layers' inputs in
    the float graph ``fm`` over every calibration sample: the E[x] of bias correction."""
    import onnx
    import onnxruntime as ort
    m = onnx.ModelProto()
    m.CopyFrom(fm)
    want = sorted({n.input[0] for n in layers})
    have = {o.name for o in m.graph.output}
    for t in want:
        if t not in have:
            m.graph.output.append(onnx.ValueInfoProto(name=t))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), sess_options=so, providers=["CPUExecutionProvider"])
    outs = [o.name for o in sess.get_outputs()]
    sums, k = {}, 0
    for sample in job.calib_samples():
        got = dict(zip(outs, sess.run(None, dict(zip(names, sample)))))
        k += 1
        for t in want:
            v = got[t].astype(np.float64)
            v = v.mean(axis=tuple(i for i in range(v.ndim) if i != 1)) if v.ndim > 2 else v.mean(0)
            sums[t] = sums.get(t, 0) + v
    return {t: v / k for t, v in sums.items()}, k


def _bias_shift(n, dw, e):
    """dW . E[x]: what a layer's weight error ``dw`` (its ONNX layout) adds to its output's mean, for the input
    mean ``e``; None where the shapes do not fit (MatMul weights are [in, out])."""
    if n.op_type in ("Gemm", "MatMul"):
        tb = next((a.i for a in n.attribute if a.name == "transB"), 0) if n.op_type == "Gemm" else 0
        dd = dw if tb else dw.T
        return dd @ e if dd.shape[1] == e.size else None
    g = next((a.i for a in n.attribute if a.name == "group"), 1)
    n_out, ig = dw.shape[:2]
    if ig * g != e.size or n_out % g:
        return None
    dsum = dw.reshape(n_out, ig, -1).sum(2).reshape(g, n_out // g, ig)
    return np.einsum("gok,gk->go", dsum, e.reshape(g, ig)).reshape(n_out)


def weights_only(job, graph: str, names: list[str]) -> str:
    """The float graph ``graph`` with only its weights on the INT8 grid both routes use (GPTQ, as
    :func:`gptq_rounded`, then bias correction from the float graph's input means), activations left in float:
    how close to FP32 INT8 weights alone keep the model, so how much of an all-INT8 artifact's loss is its
    activations' (one scale per tensor on TensorRT and TFLite alike), which no weight recipe recovers. Recovery
    reports it beside a target it cannot meet; bench_ptq's --weights-only row."""
    import onnx
    from onnx import numpy_helper
    rounded = onnx.load(gptq_rounded(job, graph, names))
    fm = onnx.load(graph)
    orig = {i.name: i for i in fm.graph.initializer}
    inits = {i.name: i for i in rounded.graph.initializer}
    layers = [n for n, _, _ in _rounding_layers(fm)]
    means, _ = _input_means(job, fm, layers, names)
    for n in layers:
        bias = n.input[2] if len(n.input) > 2 and n.input[2] in inits else None
        if bias is None or n.input[0] not in means:
            continue
        dw = (numpy_helper.to_array(inits[n.input[1]]).astype(np.float64)
              - numpy_helper.to_array(orig[n.input[1]]).astype(np.float64))
        shift = _bias_shift(n, dw, means[n.input[0]])
        b = numpy_helper.to_array(inits[bias]).astype(np.float64)
        if shift is not None and b.shape == shift.shape:
            inits[bias].CopyFrom(numpy_helper.from_array((b - shift).astype(np.float32), bias))
    out = os.path.join(job.workdir, "weights-only.onnx")
    onnx.save(rounded, out)
    return out


def bias_corrected(job, prep: str, names: list[str], skip: set, recipe=None) -> str:
    """The float graph with bias correction (Nagel et al. 2019, empirical variant): a Conv/Gemm whose INT8
    weights are W + dW gets bias b - dW . E[x], dW read from the QDQ model the plain recipe makes (exact
    scales and rounding), E[x] the per-channel mean of its input in the float graph on the calibration
    samples. Nodes in ``skip`` (kept in float) keep their bias. Same node and tensor names as ``prep``.
    ``recipe``: the recipe being built (None: ``job.recipe``); dW is that of its all-INT8 form."""
    import onnx
    from onnx import numpy_helper
    state = route_state(job)
    cache = state.corrected
    if prep not in cache:
        qdq, fm, inits, q_inits, dq = _beside_plain(job, prep, job.recipe if recipe is None else recipe)
        q_nodes = {n.output[0]: n for n in qdq.graph.node if n.output and n.op_type in ("Conv", "Gemm")}
        layers = [n for n in fm.graph.node if n.op_type in ("Conv", "Gemm") and len(n.input) > 2
                  and n.input[1] in inits and n.input[2] in inits]
        sums, k = _input_means(job, fm, layers, names)
        shifts = {}
        for n in layers:
            qn = q_nodes.get(n.output[0])  # quantize_static keeps the float graph's tensor names
            d = dq.get(qn.input[1]) if qn is not None and len(qn.input) > 1 else None
            if d is None or d.input[0] not in q_inits or n.input[0] not in sums:
                continue
            wq = numpy_helper.to_array(q_inits[d.input[0]]).astype(np.float64)
            sc = numpy_helper.to_array(q_inits[d.input[1]]).astype(np.float64)
            zp = numpy_helper.to_array(q_inits[d.input[2]]).astype(np.float64) if len(d.input) > 2 and d.input[2] in q_inits else 0
            axis = next((a.i for a in d.attribute if a.name == "axis"), 1)
            shape = [1] * wq.ndim
            if np.ndim(sc):
                shape[axis] = -1
            w = numpy_helper.to_array(inits[n.input[1]]).astype(np.float64)
            if wq.shape != w.shape:
                continue
            dw = (wq - np.reshape(zp, shape if np.ndim(zp) else [])) * np.reshape(sc, shape if np.ndim(sc) else []) - w
            shift = _bias_shift(n, dw, sums[n.input[0]])
            b = numpy_helper.to_array(inits[n.input[2]]).astype(np.float64)
            if shift is None or b.shape != shift.shape:
                continue
            shifts[n.name] = (n.input[2], (b - shift).astype(np.float32))
        cache[prep] = (fm, shifts)
        state.bias_correction = {"layers": len(shifts), "of": len(layers), "calibration_samples": k}
    fm, shifts = cache[prep]
    m = onnx.ModelProto()
    m.CopyFrom(fm)
    inits = {i.name: i for i in m.graph.initializer}
    for node, (bname, b) in shifts.items():
        if node not in skip:
            inits[bname].CopyFrom(numpy_helper.from_array(b, bname))
    out = os.path.join(job.workdir, "qdq-prep-bc.onnx")
    onnx.save(m, out)
    return out


def float_inputs(model, nodes: set) -> int:
    """Nodes kept in float read their activations unquantized: each of their inputs that comes out of a
    QuantizeLinear -> DequantizeLinear pair is rewired to the float tensor before the pair, and pairs nothing
    reads any more are removed. Returns how many inputs were rewired.

    quantize_static's nodes_to_exclude only leaves a node's weights in float; its input keeps the Q/DQ its
    producer (a quantized Clip, Add, ...) puts on its output, so the "float" layer still sees INT8 activations
    (bypassing them: +0.4 dB output SQNR with 8 float Convs in EfficientNet-Lite0), and TensorRT, which runs a
    layer without Q/DQ on its inputs in FP16, would get an INT8 input for it. Other readers keep the pair."""
    g = model.graph
    inits = {i.name for i in g.initializer}
    by_out = {o: n for n in g.node for o in n.output}

    def pair(t):  # the float tensor behind a Q -> DQ pair that produces t, else None
        dq = by_out.get(t)
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] in inits:
            return None
        q = by_out.get(dq.input[0])
        return q.input[0] if q is not None and q.op_type == "QuantizeLinear" else None

    readers: dict[str, set] = {}  # float tensor -> nodes reading it, directly or through its Q -> DQ pair
    for n in g.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for t in n.input:
            readers.setdefault(pair(t) or t, set()).add(n.name)
    graph_outputs = {o.name for o in g.output}
    # an activation (Clip/Relu) whose only reader is a float node joins it: its input is otherwise quantized
    # with the activation's range (Clip after a DQ on the same grid changes nothing), so the float node would
    # still see INT8 values
    floats, todo = set(nodes), list(nodes)
    names = {n.name: n for n in g.node}
    while todo:
        n = names.get(todo.pop())
        for t in (n.input if n is not None else ()):
            p = by_out.get(pair(t) or t)
            if (p is not None and p.op_type in ("Clip", "Relu") and p.name not in floats
                    and p.output[0] not in graph_outputs and readers.get(p.output[0], set()) <= floats):
                floats.add(p.name)
                todo.append(p.name)
    rewired = 0
    for n in g.node:
        if n.name not in floats:
            continue
        for k, t in enumerate(n.input):
            f = pair(t)
            if f is not None:
                n.input[k] = f
                rewired += 1
    for op in ("DequantizeLinear", "QuantizeLinear"):  # a DQ no one reads any more, then the Q behind it
        used = {t for n in g.node for t in n.input} | graph_outputs
        for n in [n for n in g.node if n.op_type == op and n.output[0] not in used]:
            g.node.remove(n)
    used_inits = {t for m in g.node for t in m.input}
    for i in [i for i in g.initializer if i.name not in used_inits and i.name.endswith(("_scale", "_zero_point"))]:
        g.initializer.remove(i)
    return rewired


def check_symmetric(model) -> None:
    """Every QuantizeLinear/DequantizeLinear zero point is 0 (TensorRT rejects others)."""
    from onnx import numpy_helper
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            zp = inits.get(node.input[2])
            if zp is not None and np.any(numpy_helper.to_array(zp) != 0):
                raise UsageError(f"QDQ node {node.name}: zero point is not 0 (TensorRT needs symmetric INT8)")


# ------------------------------------------------------------ accuracy recovery hooks (edgeopt.converters.HOOKS)

# calibration methods recovery tries after the plain recipe, cheapest first (entropy: onnxruntime's histograms)
RECOVERY_METHODS = ("percentile", "entropy")
# all-INT8 weight roundings recovery tries after the calibration methods and bias correction, before any float layer:
# gptq_act is the default (defaults.WEIGHT_ROUNDINGS); this step is for a plain recipe that kept gptq (auto's check)
RECOVERY_ROUNDINGS = ("gptq_act",)
MANY_FLOAT_ADVICE = ("the FP16 artifact (model.fp16.onnx) is the simpler choice, and TensorRT runs float layers in "
                     "FP16 anyway")

# Activation-only nodes (Clip/Relu after a Conv) add no error of their own (a Clip on its input's INT8 grid is exact)
# and join a float layer they feed by themselves (float_inputs); TensorRT fuses them into the conv. Data movement
# ops add no error of their own either.
_NOT_FLOAT_CANDIDATES = {"Clip", "Relu", "LeakyRelu", "MaxPool", "Reshape", "Flatten", "Squeeze", "Unsqueeze",
                         "Transpose", "Concat", "Split", "Pad", "Gather", "Resize", "Where", "ArgMax"}


def rebuild(job, art: dict, recipe) -> dict:
    """The QDQ artifact of ``job`` made again with ``recipe`` (its float layers: nodes_to_exclude, with float
    inputs). Calibration is reused per recipe where the route keeps it (:class:`RouteState`'s ``calibrations``)."""
    a = convert(job, recipe)[0]
    if recipe.float_layers:
        a["converter"] += f"; {len(recipe.float_layers)} nodes kept in float (nodes_to_exclude)"
    return a


def layer_errors(job, art: dict, samples: list[list]) -> dict:
    """Per-layer error report of a QDQ artifact of ``job`` against the float graph it was made from
    (:class:`RouteState`'s ``prep``) on ``samples`` (lists of arrays in the job's input order)."""
    from edgeopt.converters import debug_onnx
    names = [i["name"] for i in job.inputs]
    rows = debug_onnx.layer_errors(route_state(job).prep, art["data"], [dict(zip(names, s)) for s in samples])
    return {"method": "QDQ model's intermediate tensors against the float model's (onnxruntime); sqnr_db of "
                      "each node's output, added_db = dB lost at that node",
            "metric": "added_db", "samples": len(samples), "layers": rows}


def float_candidates(report: dict) -> list[str]:
    """The nodes of a :func:`layer_errors` report recovery may keep in float, in the report's order.

    A node whose output SQNR is above its input's (added_db 0: a conv averages uncorrelated noise) still adds
    INT8 error of its own, so it stays a candidate, after the others (the report's order)."""
    return [r["node"] for r in report["layers"]
            if r.get("quantized") and r["node"] and r["op"] not in _NOT_FLOAT_CANDIDATES]


def fp32_bytes(job) -> int:
    """Size of the FP32 model in this route's format: the source ONNX with static shapes."""
    return os.path.getsize(job.static_onnx_path())


def bias_correction_info(job) -> dict | None:
    """What the last bias correction of ``job`` did (layers corrected, of how many), None before any."""
    state = job.route_state.get("qdq")
    return state.bias_correction if state else None


@dataclasses.dataclass
class RouteState:
    """What the QDQ route keeps on its job (``job.route_state["qdq"]``, made by :func:`route_state`) for the recipes
    ("auto"), bias correction, gptq_act and recovery, which quantize the same float graph again."""
    prep: str | None = None            # the float graph every recipe quantizes (:func:`_prepare`'s), made once
    calibrations: dict | None = None   # activation ranges by recipe key (:class:`_reuse_calibration`); None: not kept
    rounded: dict = dataclasses.field(default_factory=dict)     # :func:`gptq_rounded` / :func:`gptq_compensated`'s graphs
    corrected: dict = dataclasses.field(default_factory=dict)   # :func:`bias_corrected`'s graph and shifts, by graph
    bias_correction: dict | None = None   # what the last bias correction did (:func:`bias_correction_info`)


def route_state(job) -> RouteState:
    """The QDQ route's state on ``job``, made on first use. Activation ranges are kept per recipe when recovery or
    ``--explain`` will rebuild the artifact with float layers: its candidates then differ from the plain
    artifact in those layers only."""
    state = job.route_state.get("qdq")
    if state is None:
        keep = bool(job.options.accuracy_target or job.options.explain)
        state = job.route_state["qdq"] = RouteState(calibrations={} if keep else None)
    return state
