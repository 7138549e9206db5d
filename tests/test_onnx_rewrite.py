"""Exact ONNX rewrites before onnx2tf (edgeopt.converters.onnx_rewrite), and GELU (Erf) on the TFLite route."""
from __future__ import annotations

import json

import numpy as np
import pytest

import edgeopt
from edgeopt.converters import onnx_rewrite
from edgeopt_testkit import assert_one_error, edgeopt_cli, onnx_graph, save_arrays

K, L, D = 257, 64, 16


def _onehot_model(path=None):
    """A one-hot embedding lookup as JAX exports it (Magika's first layer), then a classifier head."""
    rng = np.random.default_rng(0)
    nodes = [("Reshape", ["ids", "shape"], ["ids2"]), ("Expand", ["ids2", "shape1"], ["ids3"]),
             ("Equal", ["ids3", "arange"], ["hot"]),
             ("Cast", ["hot"], ["hotf"], {"to": 1}), ("MatMul", ["hotf", "emb"], ["e"]),
             ("ReduceMean", ["e", "axis1"], ["pooled"], {"keepdims": 0}), ("MatMul", ["pooled", "head"], ["logits"])]
    init = {"shape": np.array([-1, L, 1], np.int64), "shape1": np.array([1, L, 1], np.int64), "arange": np.arange(K, dtype=np.int32).reshape(1, 1, K),
            "emb": rng.standard_normal((K, D)).astype(np.float32),
            "axis1": np.array([1], np.int64), "head": rng.standard_normal((D, 10)).astype(np.float32)}
    return onnx_graph(nodes, {"ids": ([1, L], "int32")}, {"logits": [1, 10]}, init, path=path, opset=18)


def _run(model, x):
    import onnxruntime as ort
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"ids": x[i:i + 1]})[0] for i in range(len(x))])


def test_onehot_matmul_becomes_gather_exactly():
    x = np.random.default_rng(1).integers(0, K, (8, L)).astype(np.int32)
    before = _run(_onehot_model(), x)
    model, notes = onnx_rewrite.rewrite(_onehot_model())
    ops = [n.op_type for n in model.graph.node]
    assert notes == ["1 one-hot MatMul embedding lookup(s) as Gather"]
    assert "Equal" not in ops and "Gather" in ops and ops.count("MatMul") == 1
    np.testing.assert_allclose(_run(model, x), before, rtol=1e-5, atol=1e-5)


def test_rewrite_leaves_other_equals_alone():
    from onnx import numpy_helper
    model = _onehot_model()
    for init in model.graph.initializer:
        if init.name == "arange":  # not arange(K): a comparison, not a one-hot
            init.CopyFrom(numpy_helper.from_array(
                (np.arange(K, dtype=np.int32) * 2).reshape(1, 1, K), "arange"))
    model, notes = onnx_rewrite.rewrite(model)
    assert notes == [] and "Equal" in [n.op_type for n in model.graph.node]


@pytest.mark.slow
def test_onehot_model_on_rpi(tmp_path):
    """The int32 ids go through calibration and the check as int32 and the float graph is right (no
    graph_check); the artifact agrees with the ONNX model."""
    path = tmp_path / "onehot.onnx"
    _onehot_model(path)
    ids = np.random.default_rng(2).integers(0, K, (96, L)).astype(np.int32)
    files = save_arrays(tmp_path, calib=ids[:64], val=ids[64:])
    m = edgeopt.convert(str(path), target="rpi", calib=files["calib"], val=files["val"], out=str(tmp_path / "o"))
    art = m["artifacts"][0]
    assert "graph_check" not in art and art["inputs"][0]["dtype"] == "int32"
    assert m["accuracy"]["outputs"]["logits"]["cosine"] > 0.99


def _gelu_model(path):
    rng = np.random.default_rng(0)
    nodes = [("MatMul", ["x", "w1"], ["h"]), ("Div", ["h", "sq2"], ["hd"]), ("Erf", ["hd"], ["e"]),
             ("Add", ["e", "one"], ["e1"]), ("Mul", ["h", "e1"], ["hm"]), ("Mul", ["hm", "half"], ["g"]),
             ("MatMul", ["g", "w2"], ["logits"])]
    init = {"w1": (rng.standard_normal((64, 128)) / 8).astype(np.float32),
            "w2": (rng.standard_normal((128, 10)) / 11).astype(np.float32),
            "sq2": np.array(2 ** 0.5, np.float32), "one": np.array(1.0, np.float32), "half": np.array(0.5, np.float32)}
    onnx_graph(nodes, {"x": [1, 64]}, {"logits": [1, 10]}, init, path=path)
    return save_arrays(path.parent, calib=rng.standard_normal((64, 64)).astype(np.float32))


@pytest.mark.slow
def test_gelu_on_coral_names_the_ops_and_a_hint_that_applies(tmp_path):
    files = _gelu_model(tmp_path / "gelu.onnx")
    r = edgeopt_cli("convert", tmp_path / "gelu.onnx", "--target", "coral", "--calib", files["calib"],
                    "--out", tmp_path / "o")
    err = assert_one_error(r, "ops that cannot be quantized to INT8", "DIV", "runs INT8 ops only")
    assert "--allow-float-fallback (not for Coral)" not in err  # the rpi hint, which Coral refuses


@pytest.mark.slow
def test_gelu_erf_on_rpi(tmp_path):
    """GELU with Erf (no TFLite kernel at all): onnx2tf's pseudo-Erf from builtins; with float fallback the
    artifact agrees with FP32 (before: an internal error from the converter)."""
    files = _gelu_model(tmp_path / "gelu.onnx")
    r = edgeopt_cli("convert", tmp_path / "gelu.onnx", "--target", "rpi", "--calib", files["calib"],
                    "--out", tmp_path / "o", "--allow-float-fallback", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads(r.stdout)
    assert m["accuracy"]["outputs"]["logits"]["cosine"] > 0.99 and "internal error" not in r.stderr


def test_node_names_tensorflow_refuses_are_renamed():
    model = _onehot_model()
    model.graph.node[-1].name = "Softmax@0"
    model.graph.node[-2].name = "_pool"
    x = np.random.default_rng(1).integers(0, K, (4, L)).astype(np.int32)
    before = _run(model, x)
    model, notes = onnx_rewrite.rewrite(model)
    names = [n.name for n in model.graph.node]
    assert "Softmax_0" in names and "n_pool" in names and "Softmax@0" not in names
    assert "2 node name(s) made valid TensorFlow scope names" in notes
    np.testing.assert_allclose(_run(model, x), before, rtol=1e-5, atol=1e-5)


def test_weights_in_constant_nodes_quantize_for_jetson(tmp_path):
    """Paddle exports keep every weight in a Constant node; onnxruntime's quantizer takes initializers only
    (it failed: "Quantization parameters are not specified for param conv1_weights")."""
    import onnx
    from onnx import helper, numpy_helper
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) / 5, "conv1_weights")
    nodes = [helper.make_node("Constant", [], ["conv1_weights"], value=w),
             ("Conv", ["x", "conv1_weights"], ["c"], {"pads": [1, 1, 1, 1]}), ("Relu", ["c"], ["y"])]
    onnx_graph(nodes, {"x": [1, 3, 16, 16]}, {"y": [1, 8, 16, 16]}, path=tmp_path / "paddle_like.onnx")
    files = save_arrays(tmp_path, calib=rng.standard_normal((32, 3, 16, 16)).astype(np.float32))
    m = edgeopt.convert(str(tmp_path / "paddle_like.onnx"), target="jetson", calib=files["calib"],
                        out=str(tmp_path / "o"))
    graph = onnx.load(str(tmp_path / "o" / "model.int8.qdq.onnx")).graph
    int8 = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4}
    assert int8  # the conv's weights are INT8
    assert m["accuracy"]["outputs"]["y"]["cosine"] > 0.99
