"""The FP16 artifact (edgeopt.converters.onnx_fp16) and the exact FP32 folds before it (edgeopt.converters.onnx_fold).

PaddleOCR's text detector has a BatchNormalization with running variance 9.8e7, beyond FP16's largest value
(65504): cast as it was, its FP16 model had cosine 0.45 against FP32. The models here are small graphs with the
same traits, built in the tests.
"""
from __future__ import annotations

import types

import numpy as np
import pytest

import edgeopt
from edgeopt.converters import onnx_fold, onnx_fp16, onnx_io
from edgeopt_testkit import onnx_graph, save_arrays


def _run(model, x, name="x"):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # no folding of its own
    sess = ort.InferenceSession(model.SerializeToString(), sess_options=so, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])


def _bn(prefix, c, rng, var=None):
    """BatchNormalization parameters for ``c`` channels (``var``: the running variances, else around 1)."""
    return {f"{prefix}_g": rng.uniform(0.5, 1.5, c).astype(np.float32),
            f"{prefix}_b": rng.standard_normal(c).astype(np.float32),
            f"{prefix}_m": rng.standard_normal(c).astype(np.float32),
            f"{prefix}_v": (rng.uniform(0.5, 2, c) if var is None else var).astype(np.float32)}


def _bn_node(prefix, x, y):
    return ("BatchNormalization", [x, f"{prefix}_g", f"{prefix}_b", f"{prefix}_m", f"{prefix}_v"], [y],
            {"epsilon": 1e-5})


def _paddle_like_det(path=None, big_var=1e8):
    """Conv -> BatchNormalization (6 of its 8 channels with running variance ``big_var``, means around 3e3:
    as in PP-OCRv4 det, their output is beta - mean * gamma / sqrt(var)) -> Relu -> Conv, weights in
    Constant nodes as Paddle exports them."""
    from onnx import helper, numpy_helper
    rng = np.random.default_rng(0)
    big = np.arange(8) % 4 != 0  # 6 of 8 channels
    var = np.where(big, big_var, rng.uniform(0.5, 2, 8))
    bn = _bn("bn", 8, rng, var)
    bn["bn_m"] = np.where(big, rng.standard_normal(8) * 3e3, bn["bn_m"]).astype(np.float32)
    consts = dict(bn, w1=(rng.standard_normal((8, 3, 3, 3)) / 5).astype(np.float32),
                  w2=(rng.standard_normal((4, 8, 1, 1)) / 3).astype(np.float32))
    nodes = [helper.make_node("Constant", [], [k], value=numpy_helper.from_array(v, k)) for k, v in consts.items()]
    nodes += [("Conv", ["x", "w1"], ["c"], {"pads": [1, 1, 1, 1], "name": "conv1"}), _bn_node("bn", "c", "b"),
              ("Relu", ["b"], ["r"]), ("Conv", ["r", "w2"], ["y"], {"name": "conv2"})]
    return onnx_graph(nodes, {"x": [1, 3, 16, 16]}, {"y": [1, 4, 16, 16]}, path=path)


def test_fold_batchnorm_is_exact_for_conv_and_grouped_conv_transpose():
    rng = np.random.default_rng(1)
    init = {"w1": (rng.standard_normal((8, 3, 3, 3)) / 5).astype(np.float32),
            "b1": rng.standard_normal(8).astype(np.float32),
            # ConvTranspose, 2 groups: W [C_in 8, C_out/group 3, k, k] -> 6 output channels
            "w2": (rng.standard_normal((8, 3, 2, 2)) / 3).astype(np.float32),
            **_bn("bn1", 8, rng), **_bn("bn2", 6, rng)}
    nodes = [("Conv", ["x", "w1", "b1"], ["c1"], {"pads": [1, 1, 1, 1]}), _bn_node("bn1", "c1", "n1"),
             ("Relu", ["n1"], ["r1"]), ("ConvTranspose", ["r1", "w2"], ["c2"], {"strides": [2, 2], "group": 2}),
             _bn_node("bn2", "c2", "y")]
    model = onnx_graph(nodes, {"x": [1, 3, 8, 8]}, {"y": [1, 6, 16, 16]}, init)
    x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    before = _run(model, x)
    assert onnx_fold.fold_batchnorm(model) == 2
    assert [n.op_type for n in model.graph.node] == ["Conv", "Relu", "ConvTranspose"]
    assert not any(i.name.startswith("bn") for i in model.graph.initializer)  # the BN parameters are gone
    np.testing.assert_allclose(_run(model, x), before, rtol=1e-4, atol=1e-4)


def test_fold_leaves_a_conv_whose_output_has_other_readers():
    rng = np.random.default_rng(2)
    init = {"w": (rng.standard_normal((4, 3, 1, 1))).astype(np.float32), **_bn("bn", 4, rng)}
    nodes = [("Conv", ["x", "w"], ["c"]), _bn_node("bn", "c", "n"), ("Add", ["c", "n"], ["y"])]
    model = onnx_graph(nodes, {"x": [1, 3, 4, 4]}, {"y": [1, 4, 4, 4]}, init)
    assert onnx_fold.fold_batchnorm(model) == 0
    assert "BatchNormalization" in [n.op_type for n in model.graph.node]


def _fp16(model, tmp_path, calib=()):
    """The FP16 artifact of ``model`` as onnx_fp16.convert makes it (a job with the static model and the
    calibration samples ``calib`` of its input ``x``)."""
    import onnx
    path = tmp_path / "static.onnx"
    onnx.save(model, str(path))
    job = types.SimpleNamespace(static_onnx_path=lambda: str(path), inputs=[{"name": "x"}],
                                calib_feeds=lambda limit=None: [{"x": c[None]} for c in calib][:limit])
    art = onnx_fp16.convert(job)[0]
    return onnx.load_from_string(art["data"]), art


def test_fp16_of_a_batchnorm_with_variance_beyond_fp16(tmp_path):
    x = np.random.default_rng(3).standard_normal((8, 3, 16, 16)).astype(np.float32)
    ref = _run(_paddle_like_det(), x)
    fp16, art = _fp16(_paddle_like_det(), tmp_path)
    got = _run(fp16, x)
    cosine = float(ref.ravel() @ got.ravel() / np.linalg.norm(ref) / np.linalg.norm(got))
    assert cosine > 0.999, cosine  # cast without the fold: 0.82 (the variance clamped to 65504)
    assert "BatchNormalization" not in [n.op_type for n in fp16.graph.node]
    assert "1 BatchNormalization folded" in art["converter"]


def test_fp16_keeps_a_node_with_constants_beyond_fp16_in_fp32(tmp_path):
    """A Div by 2e5 after a conv whose output is ~1e4: cast to FP16 the divisor becomes 65504 (3x too big an
    output); kept in FP32 with its constant, the output is FP32's to FP16 precision."""
    import onnx
    rng = np.random.default_rng(4)
    init = {"w": (rng.standard_normal((4, 3, 3, 3)) * 2e3).astype(np.float32), "d": np.array(2e5, np.float32)}
    nodes = [("Conv", ["x", "w"], ["c"], {"pads": [1, 1, 1, 1], "name": "conv"}),
             ("Div", ["c", "d"], ["y"], {"name": "scale_down"})]
    model = onnx_graph(nodes, {"x": [1, 3, 8, 8]}, {"y": [1, 4, 8, 8]}, init)
    x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    ref = _run(model, x)
    fp16, art = _fp16(model, tmp_path)
    assert art["float_nodes"] == ["scale_down"]
    d = next(i for i in fp16.graph.initializer if i.name == "d")
    assert d.data_type == onnx.TensorProto.FLOAT
    np.testing.assert_allclose(_run(fp16, x), ref, rtol=0.02, atol=0.02 * np.abs(ref).max())


def test_fp16_keeps_activations_beyond_fp16_in_fp32(tmp_path):
    """A Conv whose output reaches ~2e5 on real-looking inputs (weights well inside FP16), then a Mul by 1e-3:
    cast as it is, the Conv's output is inf in FP16 and so is the model's; the calibration data shows the
    activation's range, and the Conv and its reader stay in FP32, the rest in FP16."""
    rng = np.random.default_rng(6)
    init = {"w": (rng.standard_normal((4, 3, 3, 3)) * 1e4).astype(np.float32), "s": np.array(1e-3, np.float32),
            "w2": (rng.standard_normal((2, 4, 1, 1))).astype(np.float32)}
    nodes = [("Conv", ["x", "w"], ["c"], {"pads": [1, 1, 1, 1], "name": "conv"}),
             ("Mul", ["c", "s"], ["m"], {"name": "scale_down"}),
             ("Conv", ["m", "w2"], ["y"], {"name": "conv2"})]
    model = onnx_graph(nodes, {"x": [1, 3, 8, 8]}, {"y": [1, 2, 8, 8]}, init)
    x = rng.standard_normal((12, 3, 8, 8)).astype(np.float32)
    ref = _run(model, x[8:])
    assert np.abs(ref).max() < 1e3 and _activation_max(model, x[:8]) > 1e5  # large inside only
    plain, art = _fp16(model, tmp_path)  # no calibration data: what a cast alone gives
    # onnxruntime's CPU computes FP16 nodes in FP32 and drops the casts between them: the tensor TensorRT
    # would hold in FP16 is read out on its own, where the cast stays
    assert np.isinf(_activation_max(plain, x[8:])) and "float_nodes" not in art
    fp16, art = _fp16(model, tmp_path, calib=x[:8])
    assert art["float_nodes"] == ["conv", "scale_down"] and "activations beyond FP16" in art["converter"]
    conv_out = next(n.output[0] for n in fp16.graph.node if n.name == "conv")
    assert 1e5 < _activation_max(fp16, x[8:], conv_out) < np.inf  # not cast to FP16 between conv and Mul
    got = _run(fp16, x[8:])
    np.testing.assert_allclose(got, ref, rtol=0.02, atol=0.01 * np.abs(ref).max())
    import onnx
    w2 = next(i for i in fp16.graph.initializer if i.name.startswith("w2"))
    assert w2.data_type == onnx.TensorProto.FLOAT16  # the rest is FP16


def _activation_max(model, x, tensor="c") -> float:
    sess = onnx_io.tensor_session(model, [tensor])
    return max(float(np.abs(sess.run([tensor], {"x": x[i:i + 1]})[0]).max()) for i in range(len(x)))


def test_fp16_artifact_of_paddle_like_batchnorm_passes_the_check(tmp_path):
    """End to end for jetson: the FP16 artifact's cosine against FP32 in the manifest (before the fold: 0.82,
    a GateError at the sanity floor)."""
    _paddle_like_det(tmp_path / "det.onnx")
    rng = np.random.default_rng(5)
    files = save_arrays(tmp_path, calib=rng.standard_normal((24, 3, 16, 16)).astype(np.float32),
                        val=rng.standard_normal((16, 3, 16, 16)).astype(np.float32))
    m = edgeopt.convert(str(tmp_path / "det.onnx"), target="jetson", calib=files["calib"], val=files["val"],
                        out=str(tmp_path / "o"))
    fp16 = m["accuracy"]["by_artifact"]["model.fp16.onnx"]["y"]
    assert fp16["cosine"] > 0.999, fp16


@pytest.mark.parametrize("unnamed", [True, False])
def test_name_nodes_gives_every_node_a_unique_name(unnamed):
    nodes = [("Relu", ["x"], ["a"]), ("Relu", ["a"], ["b"], {"name": "Relu_0" if unnamed else "r"}),
             ("Relu", ["b"], ["y"])]
    model = onnx_graph(nodes, {"x": [1, 4]}, {"y": [1, 4]})
    assert onnx_fold.name_nodes(model) == 2
    names = [n.name for n in model.graph.node]
    assert all(names) and len(set(names)) == 3


def test_fp16_of_anchors_made_from_a_shape(tmp_path):
    """YOLOv8's head makes its anchor grid at run time: Range(0, Cast(Gather(Shape(x)), float), 1). The
    converter keeps Range in FP32 and turns the integer-to-float Cast into one to FP16; its pair of Casts
    (to FP16, back to FP32) is not a round trip of an FP32 tensor, and removing it handed Range an int64 (the
    FP16 model of nudenet's YOLOv8n did not load: Range bound to float and int64)."""
    rng = np.random.default_rng(7)
    init = {"w": (rng.standard_normal((4, 3, 3, 3)) / 3).astype(np.float32), "i3": np.array(3, np.int64),
            "zero": np.array(0.0, np.float32), "one": np.array(1.0, np.float32)}
    nodes = [("Conv", ["x", "w"], ["c"], {"pads": [1, 1, 1, 1], "name": "conv"}),
             ("Shape", ["c"], ["s"]), ("Gather", ["s", "i3"], ["n"]), ("Cast", ["n"], ["nf"], {"to": 1}),
             ("Range", ["zero", "nf", "one"], ["grid"]), ("Add", ["c", "grid"], ["y"])]
    model = onnx_graph(nodes, {"x": [1, 3, 8, 8]}, {"y": [1, 4, 8, 8]}, init)
    x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    ref = _run(model, x)
    fp16, _ = _fp16(model, tmp_path)
    np.testing.assert_allclose(_run(fp16, x), ref, rtol=0.01, atol=0.01)
