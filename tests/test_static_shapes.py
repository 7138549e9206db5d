"""Static input shapes on a model whose output shape ONNX shape inference cannot tell (a Paddle export), and
what onnx2tf then gets.

PP-OCRv4's SVTR recognizer computes a Reshape's target from the tensor's own shape (``Shape -> Slice(0:2) ->
Concat(-1)``: ``x[1,120,1,40] -> [1,120,-1]``). Shape inference cannot follow that, and fixing the input shapes
left the model's output with no shape at all, which onnxsim's checker refuses ("Field 'shape' of 'type' is
required but missing"): the model went to onnx2tf unsimplified, onnx2tf took the Shape of the tensor it had
made channels-last, reshaped the wrong axes together, and its float graph did not run. The model here is that
pattern, small.
"""
from __future__ import annotations

import numpy as np

import edgeopt
from edgeopt.converters import onnx_io
from edgeopt_testkit import onnx_graph, save_arrays

C, W = 16, 20


def _svtr_like(path=None):
    """Conv to [N, C, 1, W] -> Reshape to [N, C, -1] (target computed from the tensor's Shape, as Paddle exports
    it) -> Transpose(0, 2, 1) -> MatMul over C -> Softmax; input and output dims dynamic."""
    rng = np.random.default_rng(0)
    init = {"w": (rng.standard_normal((C, 3, 4, 1)) / 3).astype(np.float32),
            "w2": (rng.standard_normal((C, 7)) / 4).astype(np.float32),
            "zero": np.array([0], np.int64), "two": np.array([2], np.int64), "m1": np.array([-1], np.int64)}
    nodes = [("Conv", ["x", "w"], ["f"]), ("Relu", ["f"], ["r"]),
             ("Shape", ["r"], ["s"]), ("Slice", ["s", "zero", "two"], ["n"]),
             ("Concat", ["n", "m1"], ["shape"], {"axis": 0}),
             ("Reshape", ["r", "shape"], ["seq"]), ("Transpose", ["seq"], ["t"], {"perm": [0, 2, 1]}),
             ("MatMul", ["t", "w2"], ["logits"]), ("Softmax", ["logits"], ["y"], {"axis": 2})]
    return onnx_graph(nodes, {"x": (["N", 3, 4, "W"], "float32")}, {"y": (["N", "T", 7], "float32")}, init,
                      path=path, opset=13)


def test_fixed_shapes_keep_an_output_shape_inference_cannot_tell_and_simplify(tmp_path):
    import onnx

    from edgeopt.converters.onnx_tflite import simplify
    model = onnx_io.fix_shapes(_svtr_like(), {"x": [1, 3, 4, W]})
    out = model.graph.output[0].type.tensor_type
    assert out.HasField("shape") and [d.dim_param or d.dim_value for d in out.shape.dim] == ["N", "T", 7]
    onnx.save(model, str(tmp_path / "static.onnx"))
    simplified = onnx.load(simplify(str(tmp_path / "static.onnx"), "static.onnx"))
    # onnxsim ran: the shape arithmetic is folded into a constant Reshape target (before: left as it was)
    assert "Shape" not in [n.op_type for n in simplified.graph.node]


def test_shape_computed_reshape_converts_for_rpi(tmp_path):
    """Before: "onnx2tf's float graph of this model does not run" (tf.linalg.matmul), as on PP-OCRv4 rec."""
    _svtr_like(tmp_path / "svtr_like.onnx")
    x = np.random.default_rng(1).standard_normal((48, 3, 4, W)).astype(np.float32)
    files = save_arrays(tmp_path, calib=x[:32], val=x[32:])
    m = edgeopt.convert(str(tmp_path / "svtr_like.onnx"), target="rpi", calib=files["calib"], val=files["val"],
                        out=str(tmp_path / "o"), input_shapes={"x": [1, 3, 4, W]})
    assert "graph_check" not in m["artifacts"][0]
    assert m["accuracy"]["outputs"]["y"]["cosine"] > 0.99
