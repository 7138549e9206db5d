"""Recurrent ONNX models (LSTM, GRU, RNN ops): unrolled over their time steps into ops both INT8 routes
quantize (edgeopt.converters.onnx_unroll), the same function; what cannot be unrolled is refused, not passed
off as INT8; a recurrent model trained on real data converts to INT8 on every route."""
import io
import json

import numpy as np
import pytest

from edgeopt_testkit import assert_one_error, edgeopt_cli, models, onnx_graph, save_arrays

RECURRENT = {"LSTM", "GRU", "RNN"}


def _run(model, feeds):
    import onnxruntime as ort
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def _unrolled(model):
    import onnx

    from edgeopt.converters.onnx_unroll import unroll
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy, unroll(copy)


class _Wrap:
    """A torch module returning every output of a recurrent layer (Y and the last states)."""

    @staticmethod
    def of(rnn):
        import torch

        class Wrap(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.rnn = rnn

            def forward(self, x, *state):
                y, last = self.rnn(x, *state)
                return (y,) + (last if isinstance(last, tuple) else (last,))
        return Wrap().eval()


def _torch_export(module, args):
    import onnx
    import torch
    f = io.BytesIO()
    torch.onnx.export(module, args, f, opset_version=17, dynamo=False)
    return onnx.load_from_string(f.getvalue())


@pytest.mark.parametrize("case", ["lstm_batch_first", "lstm_2_layers_bidirectional", "gru_bidirectional_h0",
                                  "rnn", "lstm_h0_c0"])
def test_unrolled_is_the_same_function(case):
    """PyTorch's exports (batch-first Transpose, stacked and bidirectional layers, initial states as inputs):
    the unrolled graph gives the source's outputs, every recurrent op is gone."""
    import torch
    torch.manual_seed(0)
    make = {"lstm_batch_first": lambda: torch.nn.LSTM(8, 16, batch_first=True),
            "lstm_2_layers_bidirectional": lambda: torch.nn.LSTM(8, 16, num_layers=2, bidirectional=True),
            "gru_bidirectional_h0": lambda: torch.nn.GRU(8, 16, bidirectional=True),
            "rnn": lambda: torch.nn.RNN(8, 16),
            "lstm_h0_c0": lambda: torch.nn.LSTM(8, 16)}[case]
    rnn = make()
    x = torch.randn(3, 7, 8)
    args, feeds = (x,), [x]
    if case.endswith("h0") or case.endswith("c0"):
        h0 = torch.randn(2 if rnn.bidirectional else 1, 7, 16)
        state = (h0, torch.randn_like(h0)) if case.endswith("c0") else (h0,)
        args, feeds = (x, state if len(state) == 2 else h0), [x, *state]
    model = _torch_export(_Wrap.of(rnn), args)
    feeds = {i.name: a.numpy() for i, a in zip(model.graph.input, feeds)}
    unrolled, info = _unrolled(model)
    assert info["pairs"] == info["of"] == sum(n.op_type in RECURRENT for n in model.graph.node) >= 1
    assert info["left"] == [] and info["steps"] == (7 if case.endswith("batch_first") else 3)
    assert not RECURRENT & {n.op_type for n in unrolled.graph.node}
    for want, got in zip(_run(model, feeds), _run(unrolled, feeds)):
        assert want.shape == got.shape
        np.testing.assert_allclose(got, want, atol=2e-6)


def _gru(layout, linear_before_reset, rng, hidden=5, size=4, steps=6, batch=2):
    x_shape = [batch, steps, size] if layout else [steps, batch, size]
    h_shape = [batch, 1, hidden] if layout else [1, batch, hidden]
    weights = {"W": rng.standard_normal((1, 3 * hidden, size)).astype(np.float32),
               "R": rng.standard_normal((1, 3 * hidden, hidden)).astype(np.float32),
               "B": rng.standard_normal((1, 6 * hidden)).astype(np.float32)}
    return onnx_graph([("GRU", ["x", "W", "R", "B", "", "h0"], ["y", "yh"],
                        {"hidden_size": hidden, "linear_before_reset": linear_before_reset, "layout": layout})],
                      {"x": x_shape, "h0": h_shape}, {"y": [None] * 4, "yh": [None] * 3}, weights, opset=14), \
        {"x": rng.standard_normal(x_shape).astype(np.float32), "h0": rng.standard_normal(h_shape).astype(np.float32)}


@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("linear_before_reset", [0, 1])
def test_gru_reset_forms_and_batch_first_layout(layout, linear_before_reset):
    """Both GRU reset forms (PyTorch exports linear_before_reset=1, the ONNX default is 0) and layout=1
    (batch first, which onnxruntime cannot run: checked against the same op in layout 0, inputs and outputs
    transposed)."""
    rng = np.random.default_rng(layout * 2 + linear_before_reset)
    model, feeds = _gru(layout, linear_before_reset, rng)
    unrolled, info = _unrolled(model)
    assert info["pairs"] == 1
    got = _run(unrolled, feeds)
    if layout:
        reference, _ = _gru(0, linear_before_reset, np.random.default_rng(layout * 2 + linear_before_reset))
        y, yh = _run(reference, {"x": feeds["x"].transpose(1, 0, 2), "h0": feeds["h0"].transpose(1, 0, 2)})
        want = [y.transpose(2, 0, 1, 3), yh.transpose(1, 0, 2)]
    else:
        want = _run(model, feeds)
    for w, g in zip(want, got):
        np.testing.assert_allclose(g, w, atol=2e-6)


def _peephole_lstm(path=None, peepholes=True, hidden=6, size=4, steps=5):
    rng = np.random.default_rng(0)
    weights = {"W": rng.standard_normal((1, 4 * hidden, size)).astype(np.float32) * 0.5,
               "R": rng.standard_normal((1, 4 * hidden, hidden)).astype(np.float32) * 0.5,
               "P": (rng.standard_normal((1, 3 * hidden)) if peepholes else np.zeros((1, 3 * hidden))).astype(np.float32),
               "fw": rng.standard_normal((hidden, 3)).astype(np.float32)}
    return onnx_graph([("Transpose", ["x"], ["xt"], {"perm": [1, 0, 2]}),   # batch first, as PyTorch exports it
                       ("LSTM", ["xt", "W", "R", "", "", "", "", "P"], ["y", "yh"], {"hidden_size": hidden}),
                       ("Squeeze", ["yh", "axis0"], ["h"]), ("MatMul", ["h", "fw"], ["logits"])],
                      {"x": [1, steps, size]}, {"logits": [1, 3]},
                      dict(weights, axis0=np.array([0], np.int64)), path=path, opset=14)


def test_what_cannot_be_unrolled_is_left_with_the_reason():
    left = _unrolled(_peephole_lstm())[1]
    assert left["pairs"] == 0 and left["left"] == [{"node": "y", "op": "LSTM", "reason": "it has peepholes"}]
    zero = _peephole_lstm(peepholes=False)
    unrolled, info = _unrolled(zero)
    assert info["pairs"] == 1   # zero peepholes are none
    feeds = {"x": np.random.default_rng(1).standard_normal((1, 5, 4)).astype(np.float32)}
    np.testing.assert_allclose(_run(unrolled, feeds)[0], _run(zero, feeds)[0], atol=2e-6)
    from onnx import helper
    other = _peephole_lstm(peepholes=False)
    lstm = next(n for n in other.graph.node if n.op_type == "LSTM")
    lstm.attribute.extend([helper.make_attribute("activations", ["Sigmoid", "Relu", "Tanh"])])
    assert "activations" in _unrolled(other)[1]["left"][0]["reason"]
    # a crafted sequence length: left as it is at once, not grown into millions of nodes
    import time
    long = _peephole_lstm(peepholes=False, steps=1_000_000)
    start = time.monotonic()
    unrolled, info = _unrolled(long)
    assert info["left"][0]["reason"] == "1000000 time steps (unrolled up to 512)"
    assert len(unrolled.graph.node) == len(long.graph.node) and time.monotonic() - start < 5


def test_recurrent_op_left_float_is_refused_not_called_int8(tmp_path):
    """An LSTM that cannot be unrolled would keep its float weights in an artifact labelled int8 (Jetson), or
    become a TensorFlow loop the INT8 calibrator cannot run (rpi): exit 2 naming it and why; on Jetson
    --allow-float-fallback keeps it float, and the artifact says so."""
    _peephole_lstm(tmp_path / "peep.onnx")
    calib = save_arrays(tmp_path, calib=np.random.default_rng(0).standard_normal((16, 5, 4)).astype(np.float32))
    for target in ("rpi", "jetson"):
        out = tmp_path / f"o-{target}"
        assert_one_error(edgeopt_cli("convert", tmp_path / "peep.onnx", "--target", target, "--calib", calib["calib"],
                                     "--out", out), "peep.onnx", "LSTM", "peepholes")
        assert not out.exists()
    out = tmp_path / "o-float"
    r = edgeopt_cli("convert", tmp_path / "peep.onnx", "--target", "jetson", "--calib", calib["calib"], "--out", out,
                    "--allow-float-fallback", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["artifacts"][0]["float_ops"] == ["LSTM"]
    assert manifest["calibration"]["unrolled"] == {"ops": 0, "of": 1, "steps": 0, "left": [
        {"node": "y", "op": "LSTM", "reason": "it has peepholes"}]}


@pytest.fixture(scope="module")
def fashion_lstm(tmp_path_factory, fmnist):
    """A real recurrent classifier: LSTM(128) over Fashion-MNIST rows, trained here (about 0.84 test accuracy),
    with 200 training images to calibrate and 500 test images (and labels) to check."""
    work = tmp_path_factory.mktemp("rnn")
    src = models.zoo.train_torch_rnn_onnx(str(work / "fashion_lstm.onnx"), "lstm")
    xtr, _, xte, yte = fmnist
    np.savez(work / "val.npz", rows=xte[:500], labels=yte[:500].astype(np.int64))
    return src, save_arrays(work, calib=xtr[-200:])["calib"], str(work / "val.npz")


@pytest.mark.slow
@pytest.mark.parametrize("target", ["rpi", "jetson", "coral"])
def test_real_lstm_converts_to_int8(tmp_path, fashion_lstm, target):
    """Every weight of the trained LSTM in INT8 (no float op, smaller than FP32 though 28 unrolled steps add
    graph structure), its predictions those of FP32 on held-out test images (an all-float LSTM was what the
    Jetson route made before, and rpi refused it). The cell state stays out of INT8: on Jetson its sum has no
    Q/DQ (TensorRT adds it in higher precision): 50.6 dB (33.0 with it INT8); on rpi its arithmetic is a float
    block: 40.9 dB (31.2 all-INT8, as Coral keeps it) (bench_zoo, 100 test images)."""
    import os
    src, calib, val = fashion_lstm
    out = tmp_path / "out"
    r = edgeopt_cli("convert", src, "--target", target, "--calib", calib, "--val", val, "--out", out, "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    art = manifest["artifacts"][0]
    assert art["precision"] == "int8"
    if target == "rpi":   # the cell state's arithmetic in float, every weight and gate INT8
        assert [b["kind"] for b in art["float_blocks"]["blocks"]] == ["product_sum"] and art["float_blocks"]["float"]
        assert set(art["float_ops"]) == {"ADD", "MUL", "TANH"}
    else:
        assert not art.get("float_ops")
    if target == "coral":   # a step's rows are Slices, not Gathers (the Edge TPU maps no GATHER), and so is the
        # model's own head (torch's y[:, -1], a Gather at a constant index): every op on the Edge TPU
        summary = manifest["edgetpu"]["summary"]
        assert summary["cpu_ops"] == 0 and summary["tpu_ops"] == summary["ops"] >= 600, summary
    assert manifest["calibration"]["unrolled"] == {"ops": 1, "of": 1, "steps": 28, "left": []}
    assert art["bytes"] < 0.8 * os.path.getsize(src)
    scores = art["accuracy"]["logits"]
    assert scores["top1_agreement"] >= 0.97 and scores["sqnr_db"] >= (25 if target == "coral" else 35)
    assert scores["top1_accuracy"] >= scores["fp32_top1_accuracy"] - 0.03, scores
    if target == "jetson":
        import onnx
        kinds = {n.op_type for n in onnx.load(str(out / art["file"])).graph.node}
        assert not RECURRENT & kinds and "DequantizeLinear" in kinds


def test_time_major_input_is_named_not_given_a_wrong_hint(tmp_path):
    """A time-major export ([steps, batch, features] read straight by the LSTM) has its steps on the axis edgeopt
    takes for the batch: the error says so, instead of hinting a shape that would cut the sequence to one step."""
    model = _peephole_lstm(peepholes=False)
    graph = model.graph
    graph.node.remove(graph.node[0])            # no batch-first Transpose: the LSTM reads the input itself
    next(n for n in graph.node if n.op_type == "LSTM").input[0] = "x"
    dims = graph.input[0].type.tensor_type.shape.dim
    dims[0].dim_value, dims[1].dim_value = 5, 1
    import onnx
    onnx.save(model, tmp_path / "time_major.onnx")
    err = assert_one_error(edgeopt_cli("convert", tmp_path / "time_major.onnx", "--target", "jetson", "--calib",
                                       "random", "--out", tmp_path / "o"), "time-major", "batch_first=True")
    assert "--input-shape" not in err


def _shared_matmuls():
    """x -> MatMul(W) -> Relu -> MatMul(W) and a third reader of V that is no dense layer (an Add)."""
    rng = np.random.default_rng(0)
    return onnx_graph([("MatMul", ["x", "W"], ["a"]), ("Relu", ["a"], ["r"]), ("MatMul", ["r", "W"], ["b"]),
                       ("MatMul", ["b", "V"], ["c"]), ("Add", ["c", "V"], ["y"])],
                      {"x": [4, 8]}, {"y": [4, 8]},
                      {"W": rng.standard_normal((8, 8)).astype(np.float32),
                       "V": rng.standard_normal((8, 8)).astype(np.float32)})


def test_gptq_rounds_a_shared_weight_once_for_all_its_readers():
    """An unrolled recurrent op reads its recurrent weights once per step. GPTQ rounds such a weight once, on the
    Hessians of all its readers (QDQ: ``shared=True``); per-layer fits (gptq_act, bias correction) leave it,
    and a weight also read by a non-dense op is never rounded as a layer's."""
    from edgeopt.converters import onnx_qdq
    model = _shared_matmuls()
    own = onnx_qdq._rounding_layers(model)
    assert own == []                                   # W has two readers, V an Add among its readers
    shared = onnx_qdq._rounding_layers(model, shared=True)
    assert [(n.output[0], kind) for n, kind, _ in shared] == [("a", "matmul"), ("b", "matmul")]


def test_tflite_gptq_rounds_a_shared_weight_once(tmp_path):
    """The TFLite route: a Dense layer applied to two inputs is one weight tensor read by two FULLY_CONNECTED
    ops. It was taken for two layers, each writing its own GPTQ rounding into the one buffer (the last won);
    now both readers get one rounding, from both inputs' Hessians, on the INT8 grid (max |w| / 127 per row)."""
    import os
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf
    from tensorflow.lite.tools import flatbuffer_utils

    from edgeopt.converters import tf_tflite
    keras.utils.set_random_seed(0)
    a, b = keras.Input((16,), name="a"), keras.Input((16,), name="b")
    dense = keras.layers.Dense(8)
    model = keras.Model([a, b], keras.layers.Concatenate()([dense(a), dense(keras.layers.ReLU()(b))]))
    data = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    fm = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    assert tf_tflite._roundable_layers(fm) == []
    layers = tf_tflite._roundable_layers(fm, shared=True)
    assert len(layers) == 2 and layers[0][2][1] == layers[1][2][1]
    rng = np.random.default_rng(1)
    calib = [[rng.standard_normal((1, 16)).astype(np.float32) for _ in range(2)] for _ in range(32)]
    rounded, originals, info = tf_tflite._rounded_weights(data, calib)
    assert info["layers"] == 2
    (buf0, w0), (buf1, w1) = (rounded[out] for *_, out, _ in layers)
    assert buf0 == buf1 and np.array_equal(w0, w1)
    w = np.frombuffer(w0.tobytes(), np.float32).reshape(8, 16)
    fp32 = np.frombuffer(originals[layers[0][3]][1].tobytes(), np.float32).reshape(8, 16)
    codes = w / (np.abs(fp32).max(axis=1, keepdims=True) / 127)
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)
    assert not np.array_equal(np.round(codes), np.round(fp32 / (np.abs(fp32).max(axis=1, keepdims=True) / 127)))


def test_qdq_leaves_a_sum_of_products_unquantized(tmp_path):
    """An LSTM's cell state, f * c + i * g, is unbounded (+-80 in Silero VAD): one INT8 scale for it cost the
    trained LSTM 17 dB on Jetson. A sum of two elementwise products is no residual: no Q/DQ, as for a bias
    Add; a residual Add of a layer's output still gets them."""
    from edgeopt.converters import onnx_qdq
    rng = np.random.default_rng(0)
    onnx_graph([("MatMul", ["x", "W"], ["a"]), ("Sigmoid", ["a"], ["s"]), ("Mul", ["s", "x"], ["p"]),
                ("Mul", ["a", "a"], ["q"]), ("Add", ["p", "q"], ["cell"], {"name": "cell_sum"}),
                ("Add", ["a", "x"], ["res"], {"name": "residual"}), ("Add", ["res", "b"], ["y"], {"name": "bias"}),
                ("Add", ["cell", "y"], ["z"], {"name": "mixed"})],
               {"x": [1, 8]}, {"z": [1, 8]},
               {"W": rng.standard_normal((8, 8)).astype(np.float32), "b": np.ones(8, np.float32)},
               path=tmp_path / "m.onnx")
    assert sorted(onnx_qdq._unquantized_adds(str(tmp_path / "m.onnx"))) == ["bias", "cell_sum"]
