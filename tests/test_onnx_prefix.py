"""converters/onnx_prefix.Prefix: a tensor's values computed a segment at a time equal a full run, each node
runs once, and a weight changed after a tensor was read is what later segments compute with (the sequential
fitting of gptq_act)."""
import numpy as np

from edgeopt.converters import onnx_prefix


def _model(w1, w2, w3):
    """x -> conv1 -> relu (a) -> conv2 (b) ; a + b (c) -> conv3 (y): a residual block, weights as initializers."""
    import onnx
    from onnx import helper, numpy_helper
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["a"]),
             helper.make_node("Conv", ["a", "w2"], ["b"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["a", "b"], ["c"]),
             helper.make_node("Conv", ["c", "w3"], ["y"])]
    inits = [numpy_helper.from_array(w.astype(np.float32), n) for w, n in ((w1, "w1"), (w2, "w2"), (w3, "w3"))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2, 6, 6])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _full(model, tensor, feed):
    import onnx
    import onnxruntime as ort
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.append(onnx.ValueInfoProto(name=tensor))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run([tensor], feed)[0]


def test_segments_match_full_runs_and_follow_weight_changes():
    from onnx import numpy_helper
    rng = np.random.default_rng(0)
    w1, w2, w3 = rng.normal(size=(3, 2, 3, 3)), rng.normal(size=(3, 3, 3, 3)), rng.normal(size=(2, 3, 1, 1))
    model = _model(w1, w2, w3)
    feeds = [{"x": rng.normal(size=(1, 2, 6, 6)).astype(np.float32)} for _ in range(3)]
    prefix = onnx_prefix.Prefix(model, feeds)
    a = prefix.get("a")
    for got, feed in zip(a, feeds):
        np.testing.assert_allclose(got, _full(model, "a", feed), rtol=1e-6)
    assert prefix.runs == 3 and prefix.done == {0, 1}
    # change conv2's weights after its input was read: the next segment (conv2, add) computes with the new ones
    inits = {i.name: i for i in model.graph.initializer}
    inits["w2"].CopyFrom(numpy_helper.from_array((w2 * -2).astype(np.float32), "w2"))
    c = prefix.get("c")
    for got, feed in zip(c, feeds):
        np.testing.assert_allclose(got, _full(model, "c", feed), rtol=1e-5, atol=1e-5)
    before = _model(w1, w2, w3)
    assert not np.allclose(c[0], _full(before, "c", feeds[0]))
    # each node ran once: conv1 and relu in the first segment, conv2 and add in the second
    assert prefix.runs == 6 and prefix.done == {0, 1, 2, 3}
    assert "x" not in prefix.values and "c1" not in prefix.values   # nothing left reads them


def test_past_its_memory_bound_it_runs_the_whole_model():
    """A Prefix that would keep more than max_kept_bytes of tensors (high-resolution models, 32 samples) keeps
    nothing and runs the whole model per request: the same values, weight changes still followed."""
    from onnx import numpy_helper
    rng = np.random.default_rng(0)
    w1, w2, w3 = rng.normal(size=(3, 2, 3, 3)), rng.normal(size=(3, 3, 3, 3)), rng.normal(size=(2, 3, 1, 1))
    model = _model(w1, w2, w3)
    feeds = [{"x": rng.normal(size=(1, 2, 6, 6)).astype(np.float32)} for _ in range(2)]
    prefix = onnx_prefix.Prefix(model, feeds, max_kept_bytes=100)
    np.testing.assert_allclose(prefix.get("a")[1], _full(model, "a", feeds[1]), rtol=1e-6)
    assert prefix.whole and list(prefix.values) == ["a"]   # "a" (2 x 108 floats) was over the bound
    {i.name: i for i in model.graph.initializer}["w2"].CopyFrom(numpy_helper.from_array((w2 * 3).astype(np.float32), "w2"))
    c = prefix.get("c")
    assert prefix.runs == 4
    for got, feed in zip(c, feeds):
        np.testing.assert_allclose(got, _full(model, "c", feed), rtol=1e-5, atol=1e-5)


def test_model_with_a_subgraph_runs_whole():
    import onnx
    from onnx import helper, numpy_helper
    then = helper.make_graph([helper.make_node("Identity", ["x"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", onnx.TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", onnx.TensorProto.FLOAT, None)])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["cond"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.zeros((), np.float32), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    assert not onnx_prefix.supported(model)
    prefix = onnx_prefix.Prefix(model, [{"x": np.array([1.0, 2.0], np.float32)},
                                        {"x": np.array([-3.0, 1.0], np.float32)}])
    y = prefix.get("y")
    np.testing.assert_array_equal(y[0], [1.0, 2.0])
    np.testing.assert_array_equal(y[1], [3.0, -1.0])
