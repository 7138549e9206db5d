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


BIG = 2 ** 31 - 1


def _conv_slice_model(starts, ends, axes, out_shape, x_shape=(1, 4, 16, 16), kernel=(3, 3), steps=None, after=None):
    """Conv then a Slice over ``axes`` (as tf2onnx writes strided slices); ``after``: one more op reading it."""
    rng = np.random.default_rng(0)
    init = {"w": (rng.standard_normal((8, x_shape[1]) + kernel) / 5).astype(np.float32),
            "st": np.array(starts, np.int64), "en": np.array(ends, np.int64), "ax": np.array(axes, np.int64)}
    slice_inputs = ["c", "st", "en", "ax"]
    if steps is not None:
        init["sp"] = np.array(steps, np.int64)
        slice_inputs.append("sp")
    nodes = [("Conv", ["x", "w"], ["c"], {"kernel_shape": list(kernel)}),
             ("Slice", slice_inputs, ["s" if after else "y"])]
    if after:
        nodes.append((after, ["s"], ["y"]))
    return onnx_graph(nodes, {"x": list(x_shape)}, {"y": out_shape}, init, opset=13)


# (starts, ends, axes, output shape, input shape, kernel, steps, Slices after the rewrite)
SLICES = {
    # Magika's x[..., :1] after its Conv: every axis whole, the Slice is dropped
    "keeps_all": ([0, 0, 0, 0], [BIG, BIG, BIG, 1], [0, 1, 2, 3], [1, 8, 12, 1], (1, 4, 16, 1), (5, 1), None, 0),
    "four_axes": ([0, 0, 2, 1], [1, 8, 12, 13], [0, 1, 2, 3], [1, 8, 10, 12], (1, 4, 16, 16), (3, 3), None, 2),
    "channels_and_width": ([2, -13], [6, -1], [1, -1], [1, 4, 14, 12], (1, 4, 16, 16), (3, 3), None, 2),
    "steps": ([1, 0], [BIG, BIG], [2, 3], [1, 8, 7, 7], (1, 4, 16, 16), (3, 3), [2, 2], 2),
}


def _ort(model, x):
    import onnxruntime as ort
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("case", sorted(SLICES))
def test_multi_axis_slices_become_one_axis_slices_exactly(case):
    starts, ends, axes, out_shape, x_shape, kernel, steps, slices = SLICES[case]
    x = np.random.default_rng(1).standard_normal(x_shape).astype(np.float32)
    for after in (None, "Relu"):  # the Slice's output a graph output, or read by another node
        model = _conv_slice_model(starts, ends, axes, out_shape, x_shape, kernel, steps, after)
        before = _ort(model, x)
        model, notes = onnx_rewrite.rewrite(model)
        ops = [n.op_type for n in model.graph.node]
        assert notes == ["1 multi-axis Slice(s) as one-axis Slices"], notes
        assert ops.count("Slice") == slices
        if not slices:  # dropped: an output keeps its name through an Identity, a reader reads the Conv
            assert ops == (["Conv", "Relu"] if after else ["Conv", "Identity"])
        for node in model.graph.node:
            if node.op_type == "Slice":
                assert [len(init.dims) and init.dims[0] for init in model.graph.initializer
                        if init.name in node.input[1:]] == [1] * (len(node.input) - 1)
        assert before.shape == tuple(out_shape)
        np.testing.assert_array_equal(_ort(model, x), before)


def test_one_axis_and_dynamic_slices_are_left_alone():
    model = _conv_slice_model([1], [13], [3], [1, 8, 14, 12])
    assert onnx_rewrite.rewrite(model)[1] == []
    model = _conv_slice_model([0, 1], [8, 13], [1, 3], [1, 8, 14, 12])
    model.graph.initializer.pop(1)  # ends computed at run time: not rewritten
    model.graph.input.append(onnx_graph([], {"en": ([2], "int64")}, {}).graph.input[0])
    assert onnx_rewrite.rewrite(model)[1] == []


@pytest.mark.parametrize("case", sorted(SLICES))
def test_onnx2tf_float_graph_of_rewritten_slices_matches_onnxruntime(tmp_path, case):
    """The float graph onnx2tf builds after the rewrite computes what onnxruntime computes (before it, onnx2tf
    applied starts/ends in ONNX order to its channels-last axes: Magika's Conv output cut from 512 channels to 1,
    the other cases the wrong rows and columns)."""
    import onnx

    from edgeopt.converters import onnx_tflite
    starts, ends, axes, out_shape, x_shape, kernel, steps, _ = SLICES[case]
    model = _conv_slice_model(starts, ends, axes, out_shape, x_shape, kernel, steps)
    onnx.save(model, str(tmp_path / "m.onnx"))
    x = np.random.default_rng(1).standard_normal(x_shape).astype(np.float32)
    keras_model = onnx_tflite.to_keras(onnx_tflite.simplify(str(tmp_path / "m.onnx"), "m.onnx"), None)
    got = np.asarray(keras_model(np.transpose(x, (0, 2, 3, 1))))  # channels-last in and out
    np.testing.assert_allclose(np.transpose(got, (0, 3, 1, 2)), _ort(model, x), rtol=1e-4, atol=1e-5)


def _token_gather_model(index, axis=1, opset=13, of_constant=False):
    """Tokens [1, 8, 16] through a MatMul, then a Gather of some tokens on ``axis`` (PyTorch's ``h[:, -1]``,
    ``h[:, 0]``, a ViT's class token) and a head. ``of_constant``: the Gather reads the weight (an embedding
    lookup, axis 0) and the head adds it to every token."""
    rng = np.random.default_rng(0)
    index = np.asarray(index, np.int64)
    init = {"w": (rng.standard_normal((16, 32)) / 4).astype(np.float32), "i": index,
            "head": (rng.standard_normal((32, 10)) / 6).astype(np.float32)}
    if of_constant:
        nodes = [("MatMul", ["x", "w"], ["h"]), ("Gather", ["w", "i"], ["g"], {"axis": 0}),
                 ("ReduceSum", ["g"], ["e"], {"keepdims": 0}), ("Add", ["h", "e"], ["s"]),
                 ("MatMul", ["s", "head"], ["y"])]
        return onnx_graph(nodes, {"x": [1, 8, 16]}, {"y": [1, 8, 10]}, init, opset=opset)
    nodes = [("MatMul", ["x", "w"], ["h"]), ("Gather", ["h", "i"], ["g"], {"axis": axis}),
             ("MatMul", ["g", "head"], ["y"])]
    return onnx_graph(nodes, {"x": [1, 8, 16]}, {"y": [1] + list(index.shape) + [10]}, init, opset=opset)


# index, axis, opset, the ops after the rewrite
GATHERS = {
    "last": (-1, 1, 13, ["MatMul", "Slice", "Squeeze", "MatMul"]),
    "first_opset11": (0, 1, 11, ["MatMul", "Slice", "Squeeze", "MatMul"]),
    "run": ([2, 3, 4], 1, 13, ["MatMul", "Slice", "MatMul"]),
    "one_of_1d": ([-2], -2, 13, ["MatMul", "Slice", "MatMul"]),
}


@pytest.mark.parametrize("case", sorted(GATHERS))
def test_constant_index_gathers_become_slices_exactly(case):
    """A Gather at constant indices (the Edge TPU maps no GATHER: on a PyTorch LSTM classifier the partition
    ended at ``y[:, -1]``) is the Slice of them, and the Squeeze of the axis for one scalar index."""
    index, axis, opset, ops = GATHERS[case]
    x = np.random.default_rng(1).standard_normal((1, 8, 16)).astype(np.float32)
    before = _ort(_token_gather_model(index, axis, opset), x)
    model, notes = onnx_rewrite.rewrite(_token_gather_model(index, axis, opset))
    assert notes == ["1 Gather(s) at constant indices as Slice"]
    assert [n.op_type for n in model.graph.node] == ops
    np.testing.assert_array_equal(_ort(model, x), before)


def test_gathers_that_are_not_a_run_of_activations_are_left_alone():
    for model in (_token_gather_model([0, 2]), _token_gather_model([3, 2]), _token_gather_model([[1, 2]]),
                  _token_gather_model([1, 3], of_constant=True)):   # an embedding lookup reads a weight
        assert onnx_rewrite.rewrite(model)[1] == []
        assert "Gather" in [n.op_type for n in model.graph.node]


@pytest.mark.parametrize("index", [0, -1])
def test_onnx2tf_float_graph_of_a_gathered_token_matches_onnxruntime(tmp_path, index):
    """onnx2tf builds the Slice and Squeeze of a 3-D tensor right (it reads 3-D tensors channels-last)."""
    import onnx

    from edgeopt.converters import onnx_tflite
    model = _token_gather_model(index)
    onnx.save(model, str(tmp_path / "m.onnx"))
    x = np.random.default_rng(1).standard_normal((1, 8, 16)).astype(np.float32)
    keras_model = onnx_tflite.to_keras(onnx_tflite.simplify(str(tmp_path / "m.onnx"), "m.onnx"), None)
    fed = x if tuple(keras_model.inputs[0].shape[1:]) == (8, 16) else np.transpose(x, (0, 2, 1))
    np.testing.assert_allclose(np.asarray(keras_model(fed)), _ort(model, x), rtol=1e-4, atol=1e-5)


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


def _leaky_model(path=None, rank=4):
    """Conv -> LeakyRelu(0.1) -> Conv (rank 4; rank 3: Conv1d), or MatMul -> LeakyRelu -> MatMul (rank 2)."""
    rng = np.random.default_rng(5)
    if rank == 3:
        init = {"w": (rng.standard_normal((8, 3, 3)) / 3).astype(np.float32),
                "w2": (rng.standard_normal((4, 8, 3)) / 5).astype(np.float32)}
        nodes = [("Conv", ["x", "w"], ["c"], {"pads": [1, 1]}), ("LeakyRelu", ["c"], ["l"], {"alpha": 0.1}),
                 ("Conv", ["l", "w2"], ["y"], {"pads": [1, 1]})]
        return onnx_graph(nodes, {"x": [1, 3, 64]}, {"y": [1, 4, 64]}, init, path=path, opset=13)
    if rank == 2:
        init = {"w": (rng.standard_normal((16, 8)) / 3).astype(np.float32),
                "w2": (rng.standard_normal((8, 4)) / 3).astype(np.float32)}
        nodes = [("MatMul", ["x", "w"], ["c"]), ("LeakyRelu", ["c"], ["l"], {"alpha": 0.1}),
                 ("MatMul", ["l", "w2"], ["y"])]
        return onnx_graph(nodes, {"x": [1, 16]}, {"y": [1, 4]}, init, path=path, opset=13)
    init = {"w": (rng.standard_normal((8, 3, 3, 3)) / 3).astype(np.float32),
            "w2": (rng.standard_normal((4, 8, 3, 3)) / 5).astype(np.float32)}
    nodes = [("Conv", ["x", "w"], ["c"], {"pads": [1, 1, 1, 1]}), ("LeakyRelu", ["c"], ["l"], {"alpha": 0.1}),
             ("Conv", ["l", "w2"], ["y"], {"pads": [1, 1, 1, 1]})]
    return onnx_graph(nodes, {"x": [1, 3, 16, 16]}, {"y": [1, 4, 16, 16]}, init, path=path, opset=13)


@pytest.mark.parametrize("rank, shape", [(4, (1, 3, 16, 16)), (3, (1, 3, 64))])
def test_leaky_relu_becomes_prelu_for_the_edge_tpu_only(rank, shape):
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    before = _ort(_leaky_model(rank=rank), x)
    model, notes = onnx_rewrite.rewrite(_leaky_model(rank=rank), edgetpu=True)
    assert notes == ["1 LeakyRelu(s) as PRelu (the Edge TPU maps PRELU)"]
    assert [n.op_type for n in model.graph.node] == ["Conv", "PRelu", "Conv"]
    np.testing.assert_allclose(_ort(model, x), before, rtol=1e-6, atol=1e-6)
    assert onnx_rewrite.rewrite(_leaky_model(rank=rank))[1] == []   # rpi: LEAKY_RELU holds alpha exactly
    assert onnx_rewrite.rewrite(_leaky_model(rank=2), edgetpu=True)[1] == []   # 3-D and 4-D only


@pytest.mark.slow
@pytest.mark.parametrize("rank", [4, 3])
def test_leaky_relu_model_maps_to_the_edge_tpu(tmp_path, rank):
    """Every op of a Conv/LeakyRelu model on the Edge TPU (a LEAKY_RELU ended the partition: openWakeWord's
    speech embedding had 4 of its 67 ops mapped, 67 after), and the artifact as close to FP32 as LEAKY_RELU's."""
    _leaky_model(tmp_path / "leaky.onnx", rank=rank)
    rng = np.random.default_rng(2)
    shape = (3, 16, 16) if rank == 4 else (3, 64)
    files = save_arrays(tmp_path, calib=rng.uniform(0, 1, (64,) + shape).astype(np.float32),
                        val=rng.uniform(0, 1, (32,) + shape).astype(np.float32))
    results = {}
    for target in ("coral", "rpi"):
        r = edgeopt_cli("convert", tmp_path / "leaky.onnx", "--target", target, "--calib", files["calib"],
                        "--val", files["val"], "--out", tmp_path / target, "--json")
        assert r.returncode == 0, r.stderr[-2000:]
        results[target] = json.loads((tmp_path / target / "manifest.json").read_text())
    summary = results["coral"]["edgetpu"]["summary"]
    assert summary["cpu_ops"] == 0, summary
    ops = [o["op"] for o in results["coral"]["edgetpu"]["ops"]]
    assert "PRELU" in ops and "LEAKY_RELU" not in ops
    coral, rpi = (results[t]["accuracy"]["outputs"]["y"]["sqnr_db"] for t in ("coral", "rpi"))
    assert coral > 25 and coral > rpi - 3, (coral, rpi)


def _gate_model(path=None, opset=13):
    """An SE-style gate: Conv -> HardSigmoid(1/6, 1/2) -> Mul with the features, then a Conv -> Clip(0, 1) output
    (PP-OCR's MobileNetV3 blocks; a PyTorch hardsigmoid exports as the same HardSigmoid)."""
    rng = np.random.default_rng(6)
    init = {"w": (rng.standard_normal((8, 3, 3, 3)) / 2).astype(np.float32),
            "wg": (rng.standard_normal((8, 8, 1, 1)) / 2).astype(np.float32),
            "w2": (rng.standard_normal((4, 8, 3, 3)) / 5).astype(np.float32)}
    clip = ("Clip", ["c2"], ["y"], {"min": 0.0, "max": 1.0})
    if opset >= 11:
        init.update(lo=np.array(0.0, np.float32), hi=np.array(1.0, np.float32))
        clip = ("Clip", ["c2", "lo", "hi"], ["y"])
    nodes = [("Conv", ["x", "w"], ["f"], {"pads": [1, 1, 1, 1]}), ("Conv", ["f", "wg"], ["g0"]),
             ("HardSigmoid", ["g0"], ["g"], {"alpha": 1 / 6, "beta": 0.5}), ("Mul", ["f", "g"], ["fg"]),
             ("Conv", ["fg", "w2"], ["c2"], {"pads": [1, 1, 1, 1]}), clip]
    return onnx_graph(nodes, {"x": [1, 3, 16, 16]}, {"y": [1, 4, 16, 16]}, init, path=path, opset=opset)


@pytest.mark.parametrize("opset", [13, 10])
def test_unit_clips_become_relu6_for_the_edge_tpu_only(opset):
    """HardSigmoid and Clip(0, 1) as Clip(6 x, 0, 6) / 6 for the Edge TPU (TFLite's RELU_0_TO_1 ends its
    partition): the same outputs up to float32 rounding, over the clips' whole range; rpi keeps them."""
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32) * 3
    before = _ort(_gate_model(opset=opset), x)
    assert 0 < np.mean(before == 0) < 1 and 0 < np.mean(before == 1) < 1   # both bounds are reached
    model, notes = onnx_rewrite.rewrite(_gate_model(opset=opset), edgetpu=True)
    assert notes == ["2 HardSigmoid/Clip(0, 1) as Relu6 of 6x, over 6 (the Edge TPU maps RELU6)"]
    ops = [n.op_type for n in model.graph.node]
    assert "HardSigmoid" not in ops and ops.count("Clip") == 2
    np.testing.assert_allclose(_ort(model, x), before, rtol=1e-6, atol=1e-6)
    assert onnx_rewrite.rewrite(_gate_model(opset=opset))[1] == []


def test_gate_model_maps_to_the_edge_tpu(tmp_path):
    """Every op of the gate model on the Edge TPU (PP-OCRv4's text detector: 116 of 246 ops before), no
    RELU_0_TO_1 left, as close to FP32 as rpi's RELU_0_TO_1 artifact."""
    _gate_model(tmp_path / "gate.onnx")
    rng = np.random.default_rng(2)
    files = save_arrays(tmp_path, calib=rng.uniform(0, 1, (64, 3, 16, 16)).astype(np.float32),
                        val=rng.uniform(0, 1, (32, 3, 16, 16)).astype(np.float32))
    results = {}
    for target in ("coral", "rpi"):
        r = edgeopt_cli("convert", tmp_path / "gate.onnx", "--target", target, "--calib", files["calib"],
                        "--val", files["val"], "--out", tmp_path / target)
        assert r.returncode == 0, r.stderr[-2000:]
        results[target] = json.loads((tmp_path / target / "manifest.json").read_text())
    coral = results["coral"]["edgetpu"]
    assert coral["summary"]["cpu_ops"] == 0, coral["summary"]
    assert "RELU_0_TO_1" not in [o["op"] for o in coral["ops"]]
    sqnr = {t: results[t]["accuracy"]["outputs"]["y"]["sqnr_db"] for t in results}
    assert sqnr["coral"] > 25 and sqnr["coral"] > sqnr["rpi"] - 3, sqnr
