"""GPTQ weight rounding (edgeopt.conversion.rounding), numpy only: what it rounds to, that it lowers the layer's
output error against nearest rounding, and that convolution patches are the convolution's inputs."""
import numpy as np
import pytest

from edgeopt.conversion import rounding


def _correlated_inputs(n=2000, k=48, seed=0):
    """Inputs whose features are correlated (as neighbouring pixels and channels are): GPTQ's case."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 8))
    mix = rng.normal(size=(8, k))
    return base @ mix + 0.1 * rng.normal(size=(n, k))


def _nearest(w, scales):
    return np.clip(np.round(w / scales[:, None]), -127, 127)


def test_gptq_lowers_the_output_error_of_nearest_rounding():
    rng = np.random.default_rng(1)
    x = _correlated_inputs()
    w = rng.normal(size=(16, x.shape[1])) * 0.05
    s = np.abs(w).max(1) / 127
    h = x.T @ x
    q = rounding.gptq(w, h, s)
    near = _nearest(w, s)
    err_gptq = np.sum(((w - q * s[:, None]) @ x.T) ** 2)
    err_near = np.sum(((w - near * s[:, None]) @ x.T) ** 2)
    assert err_gptq < 0.5 * err_near        # measured: 0.18x on these inputs
    # integer codes on the grid, each row keeping its largest weight at +-127 (the converter's scale)
    assert np.array_equal(q, np.round(q)) and np.abs(q).max() <= 127
    rows = np.arange(len(w))
    top = np.abs(w).argmax(1)
    assert np.array_equal(q[rows, top], np.sign(w[rows, top]) * 127)
    # and it moves few codes, by at most a few levels: still a rounding of the same weights
    assert np.abs(q - near).max() <= 8


def test_grid_values_are_codes_times_the_converters_scale():
    rng = np.random.default_rng(2)
    x = _correlated_inputs(k=20)
    w = rng.normal(size=(6, 20))
    g = rounding.grid_values(w, x.T @ x)
    scales = np.abs(w).max(1) / 127
    assert np.allclose(np.abs(g).max(1), np.abs(w).max(1))      # max|w| kept: the same scale is derived
    codes = g / scales[:, None]
    assert np.allclose(codes, np.round(codes), atol=1e-9)
    # per tensor: one scale, the tensor's largest weight at +-127 and no other row forced there
    g1 = rounding.grid_values(w * np.arange(1, 7)[:, None], x.T @ x, per_row=False)
    s1 = np.abs(w * np.arange(1, 7)[:, None]).max() / 127
    c1 = g1 / s1
    assert np.allclose(c1, np.round(c1), atol=1e-9)
    assert np.isclose(np.abs(c1).max(), 127)
    assert np.abs(c1[0]).max() < 127


def test_gptq_per_channel_hessians_and_dead_inputs():
    """Depthwise layers: one Hessian per row; the weight of an input that is always zero on the calibration data
    is rounded to nearest (other data may reach it) and spreads no error to the others."""
    rng = np.random.default_rng(3)
    c, k = 5, 9
    p = rng.normal(size=(500, k, c))
    p[:, 4, 0] = 0.0                                    # channel 0's centre tap never sees anything
    h = np.einsum("nkc,nlc->ckl", p, p)
    w = rng.normal(size=(c, k))
    w[0, 4] = 0.4
    s = np.abs(w).max(1) / 127
    q = rounding.gptq(w, h, s, keep_rows=False)
    assert q[0, 4] == np.round(0.4 / s[0]) != 0
    live = [i for i in range(k) if i != 4]      # the others are rounded as if that input did not exist
    alone = rounding.gptq(w[:1, live], h[:1][:, live][:, :, live], s[:1], keep_rows=False)
    assert np.array_equal(q[0, live], alone[0])
    for i in range(c):
        e_g = np.sum(((w[i] - q[i] * s[i]) @ p[:, :, i].T) ** 2)
        e_n = np.sum(((w[i] - _nearest(w[i:i + 1], s[i:i + 1])[0] * s[i]) @ p[:, :, i].T) ** 2)
        assert e_g <= e_n * 1.0001


def test_zero_rows_and_all_zero_inputs_stay_zero():
    w = np.zeros((3, 4))
    w[1] = [0.5, -1.0, 0.25, 0.0]
    q = rounding.gptq(w, np.zeros((4, 4)), np.where(np.abs(w).max(1) > 0, np.abs(w).max(1) / 127, 0))
    assert np.array_equal(q[0], np.zeros(4)) and np.array_equal(q[2], np.zeros(4))
    assert q[1, 1] == -127 and np.isfinite(q).all()


def _upstream_int8(x, gain, step):
    """What an upstream INT8 layer hands on: its output off by a per-channel gain (its rounded weights), then
    quantized to an activation grid of ``step``."""
    return np.round(x * gain / step) * step


def test_compensated_weights_undo_a_known_input_error():
    """Fed the INT8 model's input xq, the compensated layer reproduces the FP32 output W x + b better than plain
    GPTQ (fitted to x) does, on data it was not fitted on; still codes on the converter's grid."""
    rng = np.random.default_rng(5)
    k = 32
    gain = 1 + 0.05 * rng.normal(size=k)
    x = _correlated_inputs(n=8000, k=k, seed=5) + 0.5      # a mean the bias has to carry
    step = np.abs(x).max() / 127
    xq = _upstream_int8(x, gain, step)
    w = rng.normal(size=(16, k)) * 0.05
    b = rng.normal(size=16) * 0.1
    pairs = rounding.Pairs()
    for i in range(0, 4000, 1000):                            # four calibration samples, the first half
        pairs.add_rows("layer", x[i:i + 1000], xq[i:i + 1000])
    g, nb = rounding.compensated(w, b, pairs.get("layer"))
    plain = rounding.grid_values(w, x[:4000].T @ x[:4000])
    want = x[4000:] @ w.T + b
    e_comp = np.sum((xq[4000:] @ g.T + nb - want) ** 2)
    e_plain = np.sum((xq[4000:] @ plain.T + b - want) ** 2)
    assert e_comp < 0.5 * e_plain            # measured: 0.13
    scales = np.abs(g).max(1) / 127
    codes = g / scales[:, None]
    assert np.allclose(codes, np.round(codes), atol=1e-9) and np.abs(np.round(codes)).max() == 127


def test_compensated_depthwise_and_too_few_rows():
    """One Hessian per channel (depthwise) compensates too; with fewer rows than MIN_ROWS_PER_INPUT per weight
    column the weights are not refitted (plain GPTQ against xq^T xq) and only the bias moves."""
    rng = np.random.default_rng(6)
    c, k = 6, 9
    p = rng.normal(size=(2000, k, c)) + 0.3
    p += 0.5 * p[:, ::-1]                                     # correlated taps
    gain = 1 + 0.05 * rng.normal(size=c)
    pq = _upstream_int8(p, gain, np.abs(p).max() / 127)
    w = rng.normal(size=(c, k))
    b = np.zeros(c)
    pairs = rounding.Pairs()
    for i in range(0, 1000, 250):                             # four samples: 1000 rows, > 32 per column
        pairs.add_channels("dw", p[i:i + 250], pq[i:i + 250])
    g, nb = rounding.compensated(w, b, pairs.get("dw"), damp=0.01)   # a light ridge: a clean signal
    plain = rounding.grid_values(w, np.einsum("nkc,nlc->ckl", p[:1000], p[:1000]))
    want = np.einsum("nkc,ck->nc", p[1000:], w)
    e_comp = np.sum((np.einsum("nkc,ck->nc", pq[1000:], g) + nb - want) ** 2, 0)
    e_plain = np.sum((np.einsum("nkc,ck->nc", pq[1000:], plain) - want) ** 2, 0)
    assert (e_comp < e_plain).all() and e_comp.sum() < 0.5 * e_plain.sum()   # measured: 0.01..0.51, 0.03
    few = rounding.Pairs()
    few.add_channels("dw", p[:10], pq[:10])                  # 10 rows < 2 x 9 columns
    hq, _, mx, mq, n = st = few.get("dw")
    assert n == 10
    g2, nb2 = rounding.compensated(w, b, st)
    assert np.allclose(g2, rounding.grid_values(w, hq))
    assert np.allclose(nb2, (w * mx).sum(1) - (g2 * mq).sum(1))


def test_compensable_needs_enough_positions():
    """A layer is compensated only with MIN_POSITIONS input positions behind its statistics: 32 samples of a 7x7
    map (1568) or of a classifier's one position are not."""
    x = np.ones((1, 4), np.float32)
    for n, want in ((32 * 49, False), (32 * 196, True), (32, False)):
        p = rounding.Pairs()
        p.add_rows("l", np.repeat(x, n, 0), np.repeat(x, n, 0))
        assert rounding.compensable(p.get("l")) is want
    assert not rounding.compensable(None)


@pytest.mark.parametrize("positions, samples, depthwise", [(49, 32, False), (196, 32, False), (1, 32, False),
                                                            (3136, 8, True), (3136, 7, True), (4096 * 4, 1, False)])
def test_may_compensate_says_before_the_runs_what_compensable_says_after(positions, samples, depthwise):
    """gptq_act on the TFLite route skips running the INT8 model up to a layer whose shape already says its
    statistics will be refused (rounding.may_compensate): it must agree with rounding.compensable on the rows
    Pairs keeps (at most ROWS per sample, CHANNEL_ROWS for a depthwise layer), at each side of MIN_POSITIONS."""
    pairs = rounding.Pairs()
    for _ in range(samples):
        if depthwise:
            p = np.ones((positions, 9, 2), np.float32)
            pairs.add_channels("l", p, p)
        else:
            x = np.ones((positions, 4), np.float32)
            pairs.add_rows("l", x, x)
    assert rounding.may_compensate(positions, samples, depthwise) is rounding.compensable(pairs.get("l"))


@pytest.mark.parametrize("stride, dilation, same", [((1, 1), (1, 1), True), ((2, 2), (1, 1), True),
                                                     ((1, 2), (2, 1), False)])
def test_patches_are_the_convolutions_inputs(stride, dilation, same):
    """A convolution computed from the patches equals one computed directly (TensorFlow's SAME padding)."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 9, 8, 3)).astype(np.float32)
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)       # O, kh, kw, I (TFLite CONV_2D)
    pads = rounding.same_pads(x.shape[1:3], (3, 3), stride, dilation) if same else (0, 0, 0, 0)
    p = rounding.patches(x, (3, 3), stride, dilation, pads, rows=None)
    got = p.reshape(len(p), -1) @ w.reshape(4, -1).T
    xp = np.pad(x, ((0, 0), pads[:2], pads[2:], (0, 0)))
    oh = (xp.shape[1] - 2 * dilation[0] - 1) // stride[0] + 1
    ow = (xp.shape[2] - 2 * dilation[1] - 1) // stride[1] + 1
    want = np.zeros((2, oh, ow, 4), np.float32)
    for i in range(oh):
        for j in range(ow):
            win = xp[:, i * stride[0]: i * stride[0] + 2 * dilation[0] + 1: dilation[0],
                     j * stride[1]: j * stride[1] + 2 * dilation[1] + 1: dilation[1], :]
            want[:, i, j] = np.einsum("nhwi,ohwi->no", win, w)
    if same:
        assert (oh, ow) == (-(-9 // stride[0]), -(-8 // stride[1]))
    assert np.allclose(got, want.reshape(-1, 4), atol=1e-4)
    # a subset of positions: the same rows, fixed by the data size alone
    sub = rounding.patches(x, (3, 3), stride, dilation, pads, rows=7)
    assert len(sub) == 7
    assert np.array_equal(sub, rounding.patches(x, (3, 3), stride, dilation, pads, rows=7))
    assert all(any(np.array_equal(r, q) for q in p) for r in sub)


# ------------------------------------------------------------------------------ through the real routes

def _weights(path):
    """{layer: (INT8 codes, scales)} of a TFLite or QDQ ONNX artifact's compute layers, in graph order."""
    res = []
    if str(path).endswith(".tflite"):
        from ai_edge_litert.interpreter import Interpreter
        it = Interpreter(model_path=str(path))
        it.allocate_tensors()
        for op in it._get_ops_details():
            if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
                d = it._get_tensor_details(op["inputs"][1], subgraph_index=0)
                res.append((it.get_tensor(op["inputs"][1]).astype(np.int32),
                            np.asarray(d["quantization_parameters"]["scales"])))
        return res
    import onnx
    from onnx import numpy_helper
    m = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    dq = {n.output[0]: n for n in m.graph.node if n.op_type == "DequantizeLinear"}
    for n in m.graph.node:
        if n.op_type in ("Conv", "Gemm", "MatMul") and n.input[1] in dq:
            d = dq[n.input[1]]
            res.append((inits[d.input[0]].astype(np.int32), inits[d.input[1]]))
    return res


@pytest.mark.parametrize("target", ["rpi", "jetson"])
def test_gptq_codes_survive_each_converter_and_lower_the_error(onnx_cnn, fm_data, tmp_path, target):
    """gptq against nearest rounding on the Fashion-MNIST CNN, on each route: the converter derives
    the very same weight scales from the rounded values (they are on its grid, each channel's largest weight
    kept), the codes differ from nearest rounding's by a level or a few, and the output is closer to FP32."""
    import edgeopt
    common = dict(calib=fm_data["calib_nchw"], val=fm_data["val_nchw"])
    near = edgeopt.convert(onnx_cnn, target, out=str(tmp_path / "n"), weight_rounding="nearest", **common)
    gq = edgeopt.convert(onnx_cnn, target, out=str(tmp_path / "g"), weight_rounding="gptq", **common)
    assert near["calibration"]["recipe"]["weight_rounding"] == "nearest"
    assert gq["calibration"]["recipe"]["weight_rounding"] == "gptq"
    f = near["artifacts"][0]["file"]
    assert gq["artifacts"][0]["file"] == f
    wn, wg = _weights(tmp_path / "n" / f), _weights(tmp_path / "g" / f)
    assert len(wn) == len(wg) == 4
    moved = 0
    for (cn, sn), (cg, sg) in zip(wn, wg):
        assert cn.shape == cg.shape and np.allclose(sn, sg, rtol=1e-6)
        assert np.abs(cg).max() == 127 and np.abs(cn - cg).max() <= 16
        moved += int((cn != cg).sum())
    assert moved > 100
    sq = lambda m: m["accuracy"]["outputs"]["logits"]["sqnr_db"]  # noqa: E731
    print(target, "SQNR nearest", sq(near), "gptq", sq(gq), "codes moved", moved)
    assert sq(gq) > sq(near)



def _grouped_cnn(path, named=True):
    """Conv -> grouped Conv (2 groups of 4 channels, not depthwise) -> pool -> Gemm; nodes named or not."""
    from edgeopt_testkit import onnx_graph
    rng = np.random.default_rng(0)
    init = {"w1": (rng.standard_normal((8, 3, 3, 3)) / 4).astype(np.float32),
            "w2": (rng.standard_normal((8, 4, 3, 3)) / 6).astype(np.float32),
            "w3": (rng.standard_normal((10, 8)) / 3).astype(np.float32)}
    name = (lambda n: {"name": n}) if named else (lambda n: {})  # noqa: E731
    nodes = [("Conv", ["x", "w1"], ["a"], {"pads": [1, 1, 1, 1], **name("conv1")}), ("Relu", ["a"], ["ar"]),
             ("Conv", ["ar", "w2"], ["b"], {"pads": [1, 1, 1, 1], "group": 2, **name("grouped")}),
             ("Relu", ["b"], ["br"]), ("GlobalAveragePool", ["br"], ["p"]), ("Flatten", ["p"], ["f"]),
             ("Gemm", ["f", "w3"], ["y"], {"transB": 1, **name("fc")})]
    onnx_graph(nodes, {"x": [1, 3, 12, 12]}, {"y": [1, 10]}, init, path=path)
    return path


def _convert_small(path, target, tmp_path):
    import edgeopt
    from edgeopt_testkit import save_arrays
    x = np.random.default_rng(1).standard_normal((48, 3, 12, 12)).astype(np.float32)
    files = save_arrays(tmp_path, calib=x[:32], val=x[32:])
    m = edgeopt.convert(str(path), target, calib=files["calib"], val=files["val"], out=str(tmp_path / "o"),
                        weight_rounding="gptq")
    assert m["calibration"]["recipe"]["weight_rounding"] == "gptq"
    return m


@pytest.mark.parametrize("target", ["rpi", "jetson"])
def test_grouped_convolution_converts_with_gptq(tmp_path, target):
    """A grouped Conv (PP-OCRv4's recognizer has one): onnx2tf makes a grouped CONV_2D whose filters see 4 of
    its input's 8 channels. GPTQ built that layer's Hessian over all 8 and failed on rpi ("operands could not be
    broadcast together with shapes (72,72) (36,36)"); such a layer now keeps the converter's rounding."""
    m = _convert_small(_grouped_cnn(tmp_path / "grouped.onnx"), target, tmp_path)
    assert m["accuracy"]["outputs"]["y"]["cosine"] > 0.99


def test_gptq_on_a_qdq_model_with_unnamed_nodes(tmp_path):
    """ONNX node names may be empty: the QDQ route's GPTQ kept its Hessians by node name, so every unnamed layer
    shared one ("operands could not be broadcast together with shapes (27,27) (8,8)")."""
    m = _convert_small(_grouped_cnn(tmp_path / "unnamed.onnx", named=False), "jetson", tmp_path)
    assert m["accuracy"]["outputs"]["y"]["cosine"] > 0.99


@pytest.mark.parametrize("target", ["rpi", "jetson"])
def test_gptq_act_on_each_route(onnx_cnn, fm_data, tmp_path, target):
    """gptq_act on the Fashion-MNIST CNN, on each route: recorded in the recipe, codes on the grid the converter
    derives (each channel's largest weight at +-127), weights moved from plain GPTQ's (each layer fitted to its input in the INT8 model), and the output no further
    from FP32 than plain GPTQ's on the validation samples (on real models it is closer: benchmarks/bench_ptq.py)."""
    import edgeopt
    common = dict(calib=fm_data["calib_nchw"], val=fm_data["val_nchw"])
    gq = edgeopt.convert(onnx_cnn, target, out=str(tmp_path / "g"), weight_rounding="gptq", **common)
    act = edgeopt.convert(onnx_cnn, target, out=str(tmp_path / "a"), weight_rounding="gptq_act",
                          calibration_method=gq["calibration"]["method"], **common)   # no auto: no check
    assert act["calibration"]["recipe"]["weight_rounding"] == "gptq_act"
    f = act["artifacts"][0]["file"]
    wg, wa = _weights(tmp_path / "g" / f), _weights(tmp_path / "a" / f)
    assert len(wg) == len(wa) == 4
    moved = 0
    for (cg, _), (ca, _) in zip(wg, wa):
        assert cg.shape == ca.shape and np.abs(ca).max() == 127
        moved += int((cg != ca).sum())
    assert moved > 20   # the first layers (28x28, 14x14 maps); the 7x7 stage and the classifier keep GPTQ's
    sq = lambda m: m["accuracy"]["outputs"]["logits"]["sqnr_db"]  # noqa: E731
    print(target, "SQNR gptq", sq(gq), "gptq_act", sq(act), "codes moved", moved)
    assert sq(act) > sq(gq) - 0.3   # 42.33 -> 42.36 dB (rpi), 44.89 -> 44.92 (jetson): a small model fits well already


@pytest.mark.parametrize("target", ["rpi", "jetson"])
def test_default_keeps_the_rounding_closer_to_fp32_on_samples_not_fitted(onnx_cnn, fm_data, tmp_path, target):
    """The default (gptq_act, calibration auto) is checked against plain GPTQ on calibration samples gptq_act was
    not fitted to (32-63 of the 200), and the artifact written is the one kept: the same weights as that
    rounding asked for explicitly with the ranges auto chose. With 32 calibration samples there are no others:
    the check says it judged on the fitted ones."""
    import edgeopt
    common = dict(calib=fm_data["calib_nchw"], val=fm_data["val_nchw"])
    m = edgeopt.convert(onnx_cnn, target, out=str(tmp_path / "d"), **common)
    check = m["calibration"]["auto"]["weight_rounding"]
    print(target, check)
    assert m["calibration"]["samples"] == 200
    assert check["samples"] == 32 and check["fitted_on_them"] is False
    sq = check["sqnr_db"]
    assert set(sq) == {"gptq", "gptq_act"} and all(20 < v < 80 for v in sq.values())
    assert check["kept"] == ("gptq_act" if sq["gptq_act"] >= sq["gptq"] else "gptq")
    assert m["calibration"]["recipe"]["weight_rounding"] == check["kept"]
    edgeopt.convert(onnx_cnn, target, out=str(tmp_path / "e"), weight_rounding=check["kept"],
                    calibration_method=m["calibration"]["method"], **common)
    f = m["artifacts"][0]["file"]
    for (cd, sd), (ce, se) in zip(_weights(tmp_path / "d" / f), _weights(tmp_path / "e" / f)):
        assert np.array_equal(cd, ce) and np.allclose(sd, se, rtol=1e-6)
    if target == "jetson":
        import edgeopt_testkit
        x = np.random.default_rng(1).standard_normal((32, 3, 12, 12)).astype(np.float32)
        files = edgeopt_testkit.save_arrays(tmp_path, calib=x, val=x[:16])
        small = edgeopt.convert(str(_grouped_cnn(tmp_path / "g.onnx")), target, calib=files["calib"],
                                val=files["val"], out=str(tmp_path / "s"))
        c = small["calibration"]["auto"]["weight_rounding"]
        assert c["fitted_on_them"] is True and c["samples"] == 32 and "fitted to (too few others)" in c["by"]


def test_int8_weights_written_in_place_as_the_quantizer_derives_them():
    """gptq_act on the TFLite route writes each fitted layer into the INT8 model in place (tf_tflite._Int8Weights)
    instead of quantizing the whole model again: the codes and scales must be the quantizer's own for the same
    float weights and biases (conv: a scale per output channel; depthwise: along axis 3; dense), with scales
    that change (weights scaled per channel by 0.5-1.5). A layer written without a bias (gptq_act did not move
    it: a shared float bias) keeps its float bias, its INT32 codes at the new scales."""
    import keras
    from tensorflow.lite.tools import flatbuffer_utils

    from edgeopt.converters import tf_tflite
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16, 16, 3), name="image"), keras.layers.Conv2D(8, 3, activation="relu"),
                              keras.layers.DepthwiseConv2D(3, activation="relu"), keras.layers.Conv2D(6, 1),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10, name="logits")])
    rng = np.random.default_rng(1)
    for layer in model.layers:   # biases of their own (zero biases of one length share one constant)
        if getattr(layer, "bias", None) is not None:
            layer.bias.assign(rng.normal(0, 0.1, layer.bias.shape).astype(np.float32))
    calib = [[s] for s in rng.standard_normal((16, 1, 16, 16, 3)).astype(np.float32)]
    cache = {}
    tf_tflite.quantize(tf_tflite.from_keras_model(model), calib, "float32", method="mse", weight_rounding="gptq",
                       cache=cache)
    cal = cache[("calibrated", True)]
    fm = flatbuffer_utils.convert_bytearray_to_object(bytearray(cal))
    live = tf_tflite._Int8Weights(tf_tflite._int8_float_io(cal, True))
    layers = tf_tflite._roundable_layers(fm)
    assert sorted(kind for kind, *_ in layers) == ["CONV_2D", "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"]
    written = []
    for kind, op, inputs, out, shape in layers:
        if out not in live.ops:   # the classifier's output is renamed in the INT8 model (gptq_act never fits it)
            continue
        wbuf = fm.buffers[fm.subgraphs[0].tensors[inputs[1]].buffer]
        w = np.frombuffer(bytes(wbuf.data), np.float32).reshape(shape)
        axis = 3 if kind == "DEPTHWISE_CONV_2D" else 0
        factor = rng.uniform(0.5, 1.5, w.shape[axis]).reshape([-1 if i == axis else 1 for i in range(w.ndim)])
        new = (w * factor + rng.normal(0, 0.01, w.shape)).astype(np.float32)
        wbuf.data = np.frombuffer(new.tobytes(), np.uint8)
        if kind == "DEPTHWISE_CONV_2D":   # its bias not moved
            assert live.write(out, new, None)
            written.append(out)
            continue
        bbuf = fm.buffers[fm.subgraphs[0].tensors[inputs[2]].buffer]
        b = np.frombuffer(bytes(bbuf.data), np.float32) + rng.normal(0, 0.05, new.shape[axis]).astype(np.float32)
        bbuf.data = np.frombuffer(b.tobytes(), np.uint8)
        assert live.write(out, new, b)
        written.append(out)
    assert len(written) == 3
    again = tf_tflite._Int8Weights(tf_tflite._int8_float_io(tf_tflite._serialized(fm), True))
    for out in written:
        (w1, s1, b1), (w2, s2, b2) = live.codes(out), again.codes(out)
        np.testing.assert_allclose(s1, s2, rtol=1e-6)
        assert np.abs(w1.astype(int) - w2).max() <= 1 and np.mean(w1 != w2) < 0.01   # a .5 tie at most
        assert np.abs(b1.astype(np.int64) - b2).max() <= 1
        assert np.abs(w1).max() == 127
    # gptq_act runs the model a stretch of ops at a time (_Int8Runs, _Int8Weights.segment): each layer's input as
    # the whole model computes it, each op run once
    runs = tf_tflite._Int8Runs(live, [c for c in calib[:3]])
    ran = []
    real_segment = live.segment
    live.segment = lambda start, stop, *tensors: ran.append((start, stop)) or real_segment(start, stop, *tensors)
    for out in written:
        t = live.ops[out][1][0]
        whole = [runs._dequantized(t, fi.get_tensor(t)) for fi in tf_tflite._float_runs(live.data(), calib[:3])]
        got = list(runs.input_of(out))
        assert len(got) == 3 and all(np.array_equal(a, b) for a, b in zip(whole, got))
    assert ran[0][0] == 0 and all(a[1] == b[0] for a, b in zip(ran, ran[1:]))   # consecutive, none twice
    assert ran[-1][1] == live.position[written[-1]] < live.sg.OperatorsLength()
    assert list(runs.input_of("no such layer")) == []
    # a tensor a stretch cannot be fed (here the graph input, dropped; in a model: a variable's state): the whole
    # model per layer, as before, with the same values
    runs = tf_tflite._Int8Runs(live, [c for c in calib[:3]])
    for st in runs.state:
        st.clear()
    t = live.ops[written[-1]][1][0]
    whole = [runs._dequantized(t, fi.get_tensor(t)) for fi in tf_tflite._float_runs(live.data(), calib[:3])]
    got = list(runs.input_of(written[-1]))
    assert runs.whole and len(got) == 3 and all(np.array_equal(a, b) for a, b in zip(whole, got))


@pytest.mark.parametrize("target", ["rpi", "jetson"])
def test_gptq_act_past_its_memory_bound_gives_the_same_weights(onnx_cnn, fm_data, tmp_path, monkeypatch, target):
    """gptq_act keeps the FP32 inputs of the layers and the INT8 model's live tensors (TFLite) or the live tensors
    of both models (QDQ) for its 32 fitting samples up to defaults.GPTQ_ACT_MAX_KEPT_BYTES; past it (a
    high-resolution model) it runs the FP32 model once per window of layers that fits (TFLite; here one layer
    each) and the whole INT8 model per layer, or the whole models per layer (QDQ): the same weights."""
    import edgeopt
    from edgeopt.conversion import defaults
    common = dict(calib=fm_data["calib_nchw"], val=fm_data["val_nchw"], calibration_method="mse",
                  weight_rounding="gptq_act")
    edgeopt.convert(onnx_cnn, target, out=str(tmp_path / "kept"), **common)
    monkeypatch.setattr(defaults, "GPTQ_ACT_MAX_KEPT_BYTES", 0)
    m = edgeopt.convert(onnx_cnn, target, out=str(tmp_path / "bounded"), **common)
    f = m["artifacts"][0]["file"]
    kept, bounded = _weights(tmp_path / "kept" / f), _weights(tmp_path / "bounded" / f)
    assert len(kept) == len(bounded) == 4
    for (ck, sk), (cb, sb) in zip(kept, bounded):
        assert np.array_equal(ck, cb) and np.allclose(sk, sb, rtol=1e-6)
