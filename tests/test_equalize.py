"""Cross-layer equalization (edgeopt.converters.onnx_equalize): the float function is unchanged, the
per-channel weight ranges of each pair end up equal, and patterns it must not touch are left alone."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

helper, numpy_helper = onnx.helper, onnx.numpy_helper

from edgeopt.converters import onnx_equalize  # noqa: E402
from edgeopt_testkit import onnx_graph  # noqa: E402


def _conv_w(rng, out_c, in_c, k, spread=3.0):
    """Conv weights whose output channels differ in range by up to 10**spread (what CLE evens out)."""
    w = rng.standard_normal((out_c, in_c, k, k))
    return (w * 10 ** rng.uniform(-spread / 2, spread / 2, (out_c, 1, 1, 1))).astype(np.float32)


def _model(nodes, inits, in_c=3, out_c=4, size=8, extra_outputs=(), out_shape=(None, None, None, None)):
    model = onnx_graph(nodes, {"x": [None, in_c, size, size]},
                       {n: list(out_shape) for n in ("y",) + tuple(extra_outputs)}, inits)
    onnx.checker.check_model(model)
    return model


def _separable(rng, clip_hi=6.0, multiplier=1, pad_value=0.0):
    """conv 3->8 + Relu -> depthwise 3x3 (x multiplier) + Clip(0, clip_hi) -> Pad -> 1x1 conv -> 4."""
    c, m = 8, 8 * multiplier
    inits = {"w1": _conv_w(rng, c, 3, 3), "b1": rng.standard_normal(c).astype(np.float32),
             "w2": _conv_w(rng, m, 1, 3), "b2": rng.standard_normal(m).astype(np.float32),
             "w3": _conv_w(rng, 4, m, 1), "b3": rng.standard_normal(4).astype(np.float32),
             "lo": np.array(0.0, np.float32), "hi": np.array(clip_hi, np.float32),
             "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pv": np.array(pad_value, np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["a1"]),
             helper.make_node("Conv", ["a1", "w2", "b2"], ["c2"], group=c, pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["c2", "lo", "hi"], ["a2"]),
             helper.make_node("Pad", ["a2", "pads", "pv"], ["p2"]),
             helper.make_node("Conv", ["p2", "w3", "b3"], ["y"])]
    return _model(nodes, inits)


def _run(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})


def _inputs(rng, n=4, c=3, size=8):
    # scaled up so that the ReLU6 bound is reached on many channels (the clip rewrite must be exact there)
    return (rng.standard_normal((n, c, size, size)) * 3).astype(np.float32)


def _weights(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _assert_same(a, b, rel=1e-5):
    for u, v in zip(a, b):
        assert np.max(np.abs(u - v)) <= rel * max(1e-6, float(np.max(np.abs(u)))), np.max(np.abs(u - v))


def test_separable_block_float_unchanged_and_ranges_equal():
    rng = np.random.default_rng(0)
    model = _separable(rng)
    x = _inputs(rng)
    ref = _run(model, x)
    assert np.mean(ref[0] != 0) > 0.5
    out, report = onnx_equalize.equalize(model, clip="exact")
    assert report["pairs"] == 2 and report["depthwise_pairs"] == 2 and report["clips_rewritten"] == 1
    _assert_same(ref, _run(out, x))
    w = _weights(out)
    # pair 1: output channel i of w1 and the depthwise filter i; pair 2: depthwise i and input column i of w3
    r1 = np.abs(w["w1"]).reshape(8, -1).max(1)
    r2 = np.abs(w["w2"]).reshape(8, -1).max(1)
    r3 = np.abs(w["w3"][:, :, 0, 0]).max(0)
    # iterated to a fixed point: every channel's range equals its partner's on both sides of the dw conv
    np.testing.assert_allclose(r1, r2, rtol=1e-3)
    np.testing.assert_allclose(r2, r3, rtol=1e-3)
    assert report["range_spread_after"] < report["range_spread_before"]
    # the ReLU6 became Relu + a per-channel Min (bounds 6 / s_i), and the old scalar bounds are gone
    ops = [n.op_type for n in out.graph.node]
    assert "Clip" not in ops and ops.count("Min") == 1
    bound = next(v for k, v in w.items() if k.endswith("_hi"))
    assert bound.shape == (1, 8, 1, 1) and not np.allclose(bound, 6.0)
    assert "hi" not in w and "lo" not in w


def test_bias_scaled_with_its_channel():
    rng = np.random.default_rng(1)
    model = _separable(rng)
    out, _ = onnx_equalize.equalize(model, clip="exact")
    before, after = _weights(model), _weights(out)
    s = before["w1"].reshape(8, -1)[:, 0] / after["w1"].reshape(8, -1)[:, 0]
    np.testing.assert_allclose(before["b1"] / s, after["b1"], rtol=1e-5)


def test_skip_mode_leaves_relu6_pairs_alone():
    rng = np.random.default_rng(2)
    model = _separable(rng)
    x = _inputs(rng)
    out, report = onnx_equalize.equalize(model, clip="skip")
    assert report["pairs"] == 1 and report["clips_rewritten"] == 0
    assert report["skipped"] == {"clip with a finite bound (clip='skip')": 1}
    before, after = _weights(model), _weights(out)
    np.testing.assert_array_equal(before["w3"], after["w3"])  # the pair behind the clip is untouched
    assert not np.allclose(before["w1"], after["w1"])           # the Relu pair is equalized
    assert [n.op_type for n in out.graph.node].count("Clip") == 1
    # float32 rounding of intermediates ~100x larger than the output (weights spread over 10**3)
    _assert_same(_run(model, x), _run(out, x), rel=1e-4)


def test_depthwise_multiplier_channel_correspondence():
    rng = np.random.default_rng(3)
    model = _separable(rng, multiplier=2)  # depthwise 8 -> 16: input channel i feeds output rows 2i, 2i+1
    x = _inputs(rng)
    out, report = onnx_equalize.equalize(model, clip="exact")
    assert report["pairs"] == 2
    _assert_same(_run(model, x), _run(out, x))
    w = _weights(out)
    r1 = np.abs(w["w1"]).reshape(8, -1).max(1)
    r2 = np.abs(w["w2"]).reshape(8, -1).max(1)  # both filters of input channel i together
    np.testing.assert_allclose(r1, r2, rtol=1e-3)


def test_grouped_conv_channel_correspondence():
    rng = np.random.default_rng(4)
    inits = {"w1": _conv_w(rng, 8, 3, 3), "w2": _conv_w(rng, 6, 4, 3), "w3": _conv_w(rng, 4, 6, 1)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("LeakyRelu", ["c1"], ["a1"], alpha=0.1),
             helper.make_node("Conv", ["a1", "w2"], ["c2"], group=2, pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["c2", "w3"], ["y"])]
    model = _model(nodes, inits)
    x = _inputs(rng)
    out, report = onnx_equalize.equalize(model, clip="exact")
    assert report["pairs"] == 2
    _assert_same(_run(model, x), _run(out, x))
    w = _weights(out)
    r1 = np.abs(w["w1"]).reshape(8, -1).max(1)
    # input channel i of the grouped conv: group i // 4 (output rows 3g..3g+2), column i % 4
    r2 = np.array([np.abs(w["w2"][3 * (i // 4):3 * (i // 4) + 3, i % 4]).max() for i in range(8)])
    np.testing.assert_allclose(r1, r2, rtol=1e-3)


def test_clip_with_negative_lower_bound_is_exact():
    rng = np.random.default_rng(5)
    inits = {"w1": _conv_w(rng, 8, 3, 3), "w2": _conv_w(rng, 4, 8, 1),
             "lo": np.array(-1.0, np.float32), "hi": np.array(2.0, np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["c1", "lo", "hi"], ["a1"]),
             helper.make_node("Conv", ["a1", "w2"], ["y"])]
    model = _model(nodes, inits)
    x = _inputs(rng)
    out, report = onnx_equalize.equalize(model, clip="exact")
    assert report["clips_rewritten"] == 1
    assert [n.op_type for n in out.graph.node] == ["Conv", "Max", "Min", "Conv"]
    _assert_same(_run(model, x), _run(out, x))


@pytest.mark.parametrize("case", ["residual", "graph_output", "sigmoid", "pad_value", "shared_weights"])
def test_patterns_left_alone(case):
    rng = np.random.default_rng(6)
    inits = {"w1": _conv_w(rng, 8, 3, 3), "w2": _conv_w(rng, 8, 8, 1), "w3": _conv_w(rng, 4, 8, 1),
             "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pv": np.array(0.5, np.float32)}
    extra = ()
    act = helper.make_node("Relu", ["c1"], ["a1"])
    tail = [helper.make_node("Conv", ["a1", "w2"], ["c2"]), helper.make_node("Conv", ["c2", "w3"], ["y"])]
    if case == "residual":      # the activation is read by the conv and by an Add: scaling one reader breaks the other
        tail = [helper.make_node("Conv", ["a1", "w2"], ["c2"]), helper.make_node("Add", ["c2", "a1"], ["s"]),
                helper.make_node("Conv", ["s", "w3"], ["y"])]
    elif case == "graph_output":
        extra = ("a1",)
    elif case == "sigmoid":     # not positively homogeneous
        act = helper.make_node("Sigmoid", ["c1"], ["a1"])
    elif case == "pad_value":   # padding with 0.5 does not commute with scaling
        act = helper.make_node("Pad", ["c1", "pads", "pv"], ["a1"])
        tail = [helper.make_node("Conv", ["a1", "w2"], ["c2"]), helper.make_node("Relu", ["c2"], ["r2"]),
                helper.make_node("Add", ["r2", "r2"], ["y"])]
    elif case == "shared_weights":
        tail = [helper.make_node("Conv", ["a1", "w2"], ["c2"]), helper.make_node("Conv", ["c2", "w2"], ["c3"]),
                helper.make_node("Add", ["c3", "c3"], ["y"])]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]), act] + tail
    model = _model(nodes, inits, extra_outputs=extra)
    out, report = onnx_equalize.equalize(model, clip="exact")
    before, after = _weights(model), _weights(out)
    # the first pair (w1 -> w2) must not be scaled in any of these graphs
    np.testing.assert_array_equal(before["w1"], after["w1"])
    # what remains equalizable: w2 -> w3 where c2 is read by w3 alone
    assert report["pairs"] == {"residual": 0, "graph_output": 1, "sigmoid": 1, "pad_value": 0,
                               "shared_weights": 0}[case]
    if case == "pad_value":
        assert report["skipped"] == {"pad that mixes channels or pads with a non-zero value": 1}
    x = _inputs(rng)
    _assert_same(_run(model, x), _run(out, x))


def test_default_leaves_bounded_clips_alone():
    """The default (clip="skip"): measured on EfficientNet-Lite0, rewriting ReLU6 cost INT8 accuracy."""
    out, report = onnx_equalize.equalize(_separable(np.random.default_rng(10)))
    assert report["clip_mode"] == "skip" and report["pairs"] == 1 and report["clips_rewritten"] == 0


def test_bad_clip_mode():
    with pytest.raises(ValueError, match="clip must be one of"):
        onnx_equalize.equalize(_separable(np.random.default_rng(7)), clip="relu")


def test_equalize_file_roundtrip(tmp_path):
    rng = np.random.default_rng(8)
    model = _separable(rng)
    src, dst = tmp_path / "m.onnx", tmp_path / "m.cle.onnx"
    onnx.save(model, str(src))
    report = onnx_equalize.equalize_file(str(src), str(dst), clip="exact")
    assert report["pairs"] == 2 and dst.exists()
    x = _inputs(rng)
    _assert_same(_run(model, x), _run(onnx.load(str(dst)), x))


def test_conv_pool_conv_and_dense_pairs():
    """The Fashion-MNIST CNN's shape: conv -> Relu -> MaxPool -> conv, then Gemm (B transposed) -> Relu ->
    Gemm, and MatMul -> ReLU6 -> MatMul (per-channel Min on the last axis)."""
    rng = np.random.default_rng(9)
    inits = {"w1": _conv_w(rng, 8, 3, 3), "b1": rng.standard_normal(8).astype(np.float32),
             "w2": _conv_w(rng, 8, 8, 3),
             "g1": _conv_w(rng, 16, 8 * 4 * 4, 1)[:, :, 0, 0], "c1": rng.standard_normal(16).astype(np.float32),
             "g2": _conv_w(rng, 12, 16, 1)[:, :, 0, 0].T.copy(),  # (K, N): not transposed
             "m1": _conv_w(rng, 10, 12, 1)[:, :, 0, 0].T.copy(), "m2": _conv_w(rng, 4, 10, 1)[:, :, 0, 0].T.copy(),
             "lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1o"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1o"], ["a1"]),
             helper.make_node("MaxPool", ["a1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "w2"], ["c2o"], pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["c2o"], ["f"]),
             helper.make_node("Gemm", ["f", "g1", "c1"], ["d1"], transB=1),
             helper.make_node("Relu", ["d1"], ["r1"]),
             helper.make_node("Gemm", ["r1", "g2"], ["d2"]),
             helper.make_node("MatMul", ["d2", "m1"], ["e1"]),
             helper.make_node("Clip", ["e1", "lo", "hi"], ["q1"]),
             helper.make_node("MatMul", ["q1", "m2"], ["y"])]
    model = _model(nodes, inits, out_shape=(None, 4))
    x = _inputs(rng)
    out, report = onnx_equalize.equalize(model, clip="exact")
    # conv->pool->conv, Gemm->Relu->Gemm, Gemm->MatMul (identity), MatMul->Clip->MatMul; not conv->Flatten->Gemm
    assert report["pairs"] == 4 and report["clips_rewritten"] == 1
    _assert_same(_run(model, x), _run(out, x), rel=1e-4)
    w = _weights(out)
    np.testing.assert_allclose(np.abs(w["w1"]).reshape(8, -1).max(1),
                               np.abs(w["w2"]).transpose(1, 0, 2, 3).reshape(8, -1).max(1), rtol=1e-3)
    np.testing.assert_allclose(np.abs(w["m1"]).max(0), np.abs(w["m2"]).max(1), rtol=1e-3)
    assert next(v for k, v in w.items() if k.endswith("_hi")).shape == (10,)


def test_module_import_is_light():
    """Importing the module pulls in neither onnx nor onnxruntime (edgeopt imports converters lazily)."""
    import subprocess
    import sys
    code = ("import sys, edgeopt.converters.onnx_equalize; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('onnx', 'onnxruntime')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr


def _depthwise_block(rng, clip_hi=6.0, group=8):
    """conv 3->8 whose output channels differ in range by up to 100x -> Relu or Clip(0, clip_hi) -> zero Pad
    -> depthwise 3x3 (``group`` 8; 1: an ordinary conv) -> 1x1 conv -> 4; the rectified tensor is "a1"."""
    c = 8
    w1 = rng.standard_normal((c, 3, 3, 3)) * np.logspace(-2, 0, c)[:, None, None, None]
    inits = {"w1": w1.astype(np.float32), "b1": (0.1 * rng.standard_normal(c)).astype(np.float32),
             "w2": rng.standard_normal((c, c // group, 3, 3)).astype(np.float32),
             "b2": rng.standard_normal(c).astype(np.float32),
             "w3": rng.standard_normal((4, c, 1, 1)).astype(np.float32), "b3": np.zeros(4, np.float32),
             "lo": np.array(0.0, np.float32), "hi": np.array(clip_hi or 0, np.float32),
             "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)}
    rect = (helper.make_node("Clip", ["c1", "lo", "hi"], ["a1"]) if clip_hi else helper.make_node("Relu", ["c1"], ["a1"]))
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]), rect,
             helper.make_node("Pad", ["a1", "pads"], ["p1"]),
             helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], group=group),
             helper.make_node("Conv", ["c2", "w3", "b3"], ["y"])]
    return _model(nodes, inits)


def _with_a1(model, x):
    """(y, a1) of a :func:`_depthwise_block` on x."""
    from edgeopt.converters import onnx_io
    return onnx_io.tensor_session(model, ["a1"]).run(["y", "a1"], {"x": x})


@pytest.mark.parametrize("clip_hi", [6.0, None], ids=["relu6", "relu"])
def test_depthwise_inputs_equalized_from_the_calibration_data(clip_hi):
    """Each channel of a depthwise input reaches about the same range (Relu: the tensor's maximum; Clip(0, hi):
    hi / margin, or hi where its calibration maximum is over hi / margin already); the function is the same on
    the calibration data; the INT8 error of that tensor (one symmetric scale, as TensorRT and TFLite take it)
    falls; the calibration data's channel maxima came from the data given."""
    rng = np.random.default_rng(7)
    model = _depthwise_block(rng, clip_hi)
    x = (rng.standard_normal((8, 3, 8, 8)) * 2).astype(np.float32)
    y0, a0 = _with_a1(model, x)
    eq = onnx.ModelProto()
    eq.CopyFrom(model)
    info = onnx_equalize.equalize_depthwise_inputs(eq, [{"x": x[i:i + 1]} for i in range(len(x))], margin=2.0,
                                                   floor=1 / 16)
    assert info["pairs"] == 1 and info["of"] == 1, info
    y1, a1 = _with_a1(eq, x)
    np.testing.assert_allclose(y1, y0, rtol=1e-4, atol=1e-4 * np.abs(y0).max())
    r0, r1 = a0.max(axis=(0, 2, 3)), a1.max(axis=(0, 2, 3))
    s = r0 / r1                                            # each channel's scale
    assert r0.min() < 0.1 * r0.max()                      # the block's channels differ (what it evens out)
    if clip_hi:
        want = np.where(2.0 * r0 / clip_hi >= 1, r0, clip_hi / 2.0)
        want = np.where(2.0 * r0 / clip_hi < 1 / 16, r0 * 16, want)
        np.testing.assert_allclose(r1, want, rtol=1e-4)
    else:
        np.testing.assert_allclose(r1, np.where(r0 >= r0.max() / 16, r0.max(), r0 * 16), rtol=1e-4)
    assert s.min() >= 1 / 16 - 1e-6 and s.max() <= 1 + 1e-6

    def int8_error(a, scale):   # per channel: symmetric INT8 of the whole tensor, in the original units
        step = np.abs(a).max() / 127
        return np.sqrt(np.mean((np.round(a / step) * step * scale - a * scale) ** 2, axis=(0, 2, 3)))
    e0, e1 = int8_error(a0, 1.0), int8_error(a1, s[None, :, None, None])
    assert (e1 <= e0 * 1.05 + 1e-9).all() and np.mean(e1 / a0.std(axis=(0, 2, 3))) < 0.5 * np.mean(
        e0 / a0.std(axis=(0, 2, 3)))


def test_depthwise_equalization_leaves_other_patterns_alone():
    """An ordinary convolution after the rectifier (its weights are quantized per output channel: scaling its
    inputs would move precision between them) and a block with no data are left as they are."""
    rng = np.random.default_rng(8)
    model = _depthwise_block(rng, 6.0, group=1)
    before = _weights(model)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    info = onnx_equalize.equalize_depthwise_inputs(model, [{"x": x[:1]}, {"x": x[1:]}], 2.0, 1 / 16)
    assert info["pairs"] == 0 and info["of"] == 0
    assert all(np.array_equal(before[k], v) for k, v in _weights(model).items())
    dw = _depthwise_block(rng, 6.0)
    assert onnx_equalize.equalize_depthwise_inputs(dw, [], 2.0, 1 / 16) == {"pairs": 0, "of": 1, "margin": 2.0,
                                                                            "floor": 1 / 16}


def test_depthwise_equalization_skips_overflowing_channels():
    """A crafted model whose rectified channel overflows to inf on the calibration data (weights near float32's
    maximum) would get NaN scales (inf / inf) and NaN weights; the pair is left as it is instead."""
    rng = np.random.default_rng(9)
    model = _depthwise_block(rng, None)
    w1 = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w1")).copy()
    w1[0] = 3e38
    next(i for i in model.graph.initializer if i.name == "w1").CopyFrom(numpy_helper.from_array(w1, "w1"))
    x = np.abs(rng.standard_normal((2, 3, 8, 8))).astype(np.float32) + 1
    assert np.isinf(_with_a1(model, x)[1]).any()          # the attack: channel 0 is inf
    before = _weights(model)
    info = onnx_equalize.equalize_depthwise_inputs(model, [{"x": x[:1]}, {"x": x[1:]}], 2.0, 1 / 16)
    assert info["pairs"] == 0 and info["of"] == 1, info
    after = _weights(model)
    assert all(np.array_equal(before[k], v) for k, v in after.items())
    assert all(np.isfinite(v).all() for k, v in after.items() if k != "w1")


def _gated_block(rng, gate: str, extra_reader: bool = False, second: str | None = None):
    """conv 3->8 (channel ranges 100x apart) -> BatchNormalization -> a gated activation ``gate`` ("paddle":
    hard-swish spelled out as Paddle exports it, y * clip(y + 3, 0, 6) / 6; "hardswish": the HardSwish node;
    "swish": y * sigmoid(y)) -> zero Pad -> depthwise 3x3 -> 1x1 conv -> 4; the depthwise input is "a1".
    ``extra_reader``: y is also a graph output (a third reader the rewrite must respect). ``second``: a1 is
    also read by a second depthwise conv ("depthwise") or an ordinary 1x1 conv ("conv"), added into c2."""
    c = 8
    w1 = rng.standard_normal((c, 3, 3, 3)) * np.logspace(-2, 0, c)[:, None, None, None]
    inits = {"w1": w1.astype(np.float32),
             "bn_s": rng.uniform(0.5, 2.0, c).astype(np.float32), "bn_b": (0.1 * rng.standard_normal(c)).astype(np.float32),
             "bn_m": (0.1 * rng.standard_normal(c)).astype(np.float32), "bn_v": rng.uniform(0.5, 2, c).astype(np.float32),
             # the depthwise filters amplify the small channels (as BatchNormalization folding leaves them in
             # PP-LCNet): each channel then matters as much at the output
             "w2": (rng.standard_normal((c, 1, 3, 3)) / np.logspace(-2, 0, c)[:, None, None, None]).astype(np.float32),
             "b2": rng.standard_normal(c).astype(np.float32),
             "w3": rng.standard_normal((4, c, 1, 1)).astype(np.float32), "b3": np.zeros(4, np.float32),
             "three": np.array(3.0, np.float32), "six": np.array(6.0, np.float32), "zero": np.array(0.0, np.float32),
             "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["y1"])]
    if gate == "paddle":
        nodes += [helper.make_node("Add", ["y1", "three"], ["g0"]), helper.make_node("Clip", ["g0", "zero", "six"], ["g1"]),
                  helper.make_node("Mul", ["y1", "g1"], ["h"]), helper.make_node("Div", ["h", "six"], ["a1"])]
    elif gate == "hardswish":
        nodes += [helper.make_node("HardSwish", ["y1"], ["a1"])]
    else:
        nodes += [helper.make_node("Sigmoid", ["y1"], ["g1"]), helper.make_node("Mul", ["g1", "y1"], ["a1"])]
    nodes += [helper.make_node("Pad", ["a1", "pads"], ["p1"]),
              helper.make_node("Conv", ["p1", "w2", "b2"], ["c2a"], group=c)]
    if second is None:
        nodes.append(helper.make_node("Identity", ["c2a"], ["c2"]))
    else:
        inits["w4"] = rng.standard_normal((c, 1, 3, 3) if second == "depthwise" else (c, c, 1, 1)).astype(np.float32)
        nodes += [helper.make_node("Conv", ["a1", "w4"], ["c4"], group=c if second == "depthwise" else 1,
                                   pads=[1, 1, 1, 1] if second == "depthwise" else [0, 0, 0, 0]),
                  helper.make_node("Add", ["c2a", "c4"], ["c2"])]
    nodes.append(helper.make_node("Conv", ["c2", "w3", "b3"], ["y"]))
    return _model(nodes, inits, extra_outputs=("y1",) if extra_reader else ())


@pytest.mark.parametrize("gate,second", [("paddle", None), ("hardswish", None), ("swish", None),
                                         ("paddle", "depthwise")])
def test_gated_depthwise_inputs_equalized_exactly(gate, second):
    """Hard-swish and swish are not homogeneous; the depthwise input is equalized through them exactly: the
    BatchNormalization's scale and bias are divided by s, the gate reads y * s, the depthwise filters are
    multiplied by s (both depthwise convs' where two read it). The model's output is the same (to float
    rounding), every channel of the depthwise input reaches the tensor's maximum (or 16x its own), and its INT8
    error in the original units falls."""
    rng = np.random.default_rng(11)
    model = _gated_block(rng, gate, second=second)
    x = (rng.standard_normal((8, 3, 8, 8)) * 2).astype(np.float32)
    y0, a0 = _with_a1(model, x)
    eq = onnx.ModelProto()
    eq.CopyFrom(model)
    info = onnx_equalize.equalize_depthwise_inputs(eq, [{"x": x[i:i + 1]} for i in range(len(x))], 2.0, 1 / 16)
    assert info["pairs"] == 1 and info["gated"] == 1 and info["of"] == 1, info
    onnx.checker.check_model(eq)
    assert sum(n.op_type == "Mul" for n in eq.graph.node) == sum(n.op_type == "Mul" for n in model.graph.node) + 1 + (
        gate == "hardswish")
    y1, a1 = _with_a1(eq, x)
    np.testing.assert_allclose(y1, y0, rtol=1e-4, atol=1e-4 * np.abs(y0).max())
    r0, r1 = np.abs(a0).max(axis=(0, 2, 3)), np.abs(a1).max(axis=(0, 2, 3))
    assert r0.min() < 0.05 * r0.max()                                   # channels ~100x apart before
    np.testing.assert_allclose(r1, np.where(r0 >= r0.max() / 16, r0.max(), r0 * 16), rtol=1e-4)
    s = r0 / r1

    def int8_error(a, scale):
        step = np.abs(a).max() / 127
        return np.sqrt(np.mean((np.round(a / step) * step * scale - a * scale) ** 2, axis=(0, 2, 3)))
    e0, e1 = int8_error(a0, 1.0), int8_error(a1, s[None, :, None, None])
    rel0, rel1 = e0 / a0.std(axis=(0, 2, 3)), e1 / a0.std(axis=(0, 2, 3))
    assert np.median(rel1) < 0.3 * np.median(rel0), (rel0, rel1)


@pytest.mark.parametrize("case", ["y read elsewhere", "ordinary conv reads a1"])
def test_gated_equalization_leaves_shared_tensors_alone(case):
    """y read by a third node (here a graph output) would see the scaled values, and an ordinary convolution
    reading the depthwise input too would move precision between its weights' input channels: such blocks are
    left as they are."""
    rng = np.random.default_rng(12)
    model = (_gated_block(rng, "paddle", extra_reader=True) if case == "y read elsewhere"
             else _gated_block(rng, "paddle", second="conv"))
    before = _weights(model)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    info = onnx_equalize.equalize_depthwise_inputs(model, [{"x": x[:1]}, {"x": x[1:]}], 2.0, 1 / 16)
    assert info["pairs"] == 0 and info["of"] == 0, info
    assert all(np.array_equal(before[k], v) for k, v in _weights(model).items())


def test_gated_block_converts_equalized_on_both_routes(tmp_path, monkeypatch):
    """End to end on the TFLite (rpi) and QDQ (jetson) routes: the manifest counts the gated block, the artifact
    computes the rewritten graph (the inserted Mul is there) and is closer to FP32 than the same conversion with
    every channel scale 1 (the floor raised to 1: nothing equalized)."""
    import edgeopt
    from edgeopt.conversion import pipeline
    from edgeopt_testkit import save_arrays
    rng = np.random.default_rng(13)
    path = str(tmp_path / "gated.onnx")
    onnx.save(_gated_block(rng, "hardswish"), path)
    files = save_arrays(tmp_path, calib=(rng.standard_normal((32, 3, 8, 8)) * 2).astype(np.float32),
                        val=(rng.standard_normal((32, 3, 8, 8)) * 2).astype(np.float32))
    got = {}
    for floor in (1 / 16, 1.0):
        monkeypatch.setattr(pipeline, "DEPTHWISE_EQUALIZATION_FLOOR", floor)
        for target in ("rpi", "jetson"):
            m = edgeopt.convert(path, target, calib=files["calib"], val=files["val"],
                                out=str(tmp_path / f"{target}-{floor}"))
            assert m["calibration"]["equalization"]["gated"] == 1, m["calibration"]["equalization"]
            got[target, floor] = m["accuracy"]["outputs"]["y"]["sqnr_db"]
    art = onnx.load(str(tmp_path / "jetson-0.0625" / "model.int8.qdq.onnx"))
    assert sum(n.op_type == "HardSigmoid" for n in art.graph.node) == 1
    for target in ("rpi", "jetson"):
        assert got[target, 1 / 16] > got[target, 1.0] + 3, got


@pytest.mark.parametrize("activation,pad", [("relu6", False), ("relu", False), ("relu6", True)],
                         ids=["relu6", "relu", "relu6-zero-padding"])
def test_keras_depthwise_inputs_equalized_on_the_tflite_route(tmp_path, monkeypatch, activation, pad):
    """A Keras source has no ONNX graph to rewrite: the TFLite route equalizes its calibrated float model
    (tf_tflite.equalize_depthwise), Conv2D -> ReLU(6) [-> ZeroPadding2D the converter keeps as a PAD op, as
    in onnx2tf's SavedModels] -> DepthwiseConv2D as for an ONNX source. The manifest counts the pair, and the artifact is closer to
    FP32 (the Keras model itself) than the same conversion with every channel scale 1 (the floor raised to 1:
    nothing equalized)."""
    keras = pytest.importorskip("keras")
    import edgeopt
    from edgeopt.conversion import defaults
    from edgeopt_testkit import save_arrays
    rng = np.random.default_rng(17)
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((8, 8, 3), name="x"),
                          keras.layers.Conv2D(16, 1, activation=activation, name="expand"),
                          *([keras.layers.ZeroPadding2D(1)] if pad else []),
                          keras.layers.DepthwiseConv2D(3, strides=2 if pad else 1, padding="valid" if pad else "same",
                                                       name="dw"),
                          keras.layers.Conv2D(4, 1, name="y")])
    w, b = m.get_layer("expand").get_weights()
    # channel ranges spread by ~50x, all under 6: one activation scale for the tensor wastes most of its codes
    spread = 10 ** np.linspace(-1.7, 0, 16)
    m.get_layer("expand").set_weights([(np.abs(w) * spread).astype(np.float32), (np.zeros_like(b) + 0.01)])
    wd, bd = m.get_layer("dw").get_weights()  # the depthwise output's channels alike again: only its input spreads
    m.get_layer("dw").set_weights([(wd / spread[:, None]).astype(np.float32), bd])
    path = str(tmp_path / "block.keras")
    m.save(path)
    files = save_arrays(tmp_path, calib=np.abs(rng.standard_normal((32, 8, 8, 3))).astype(np.float32),
                        val=np.abs(rng.standard_normal((32, 8, 8, 3))).astype(np.float32))
    got = {}
    for floor in (1 / 16, 1.0):
        monkeypatch.setattr(defaults, "DEPTHWISE_EQUALIZATION_FLOOR", floor)
        man = edgeopt.convert(path, "rpi", calib=files["calib"], val=files["val"], out=str(tmp_path / f"{floor}"))
        eq = man["calibration"]["equalization"]
        assert eq["of"] == 1 and eq["pairs"] == (1 if floor < 1 else 0), eq
        got[floor] = man["accuracy"]["outputs"]["y"]["sqnr_db"]
    assert got[1 / 16] > got[1.0] + 3, got
