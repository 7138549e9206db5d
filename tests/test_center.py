"""Centering of rectified activations for symmetric INT8 (edgeopt.converters.onnx_center): the float function
is unchanged, the tensor a convolution reads is moved onto [-c, c] (half its symmetric INT8 step), a padded
convolution's padding moves into a Pad that fills with -c, and what it must not touch is left alone."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

helper, numpy_helper = onnx.helper, onnx.numpy_helper

from edgeopt.converters import onnx_center  # noqa: E402
from edgeopt_testkit import onnx_graph  # noqa: E402


def _block(rng, rect="clip", second_pads=(0, 0, 0, 0), lo=0.0, bias=True, residual=False, kernel=1, group=1,
           stride=1, auto_pad=None, exporter_pad=None):
    """conv 3->8 (pads 1) -> Clip(lo, 6) (or Relu) "a1" [-> zero Pad ``exporter_pad`` (top, left, bottom, right)]
    -> conv 8->``8 if group > 1 else 4`` (``kernel``, ``second_pads`` or ``auto_pad``, ``group``, ``stride``) "y";
    with ``residual``, a1 is also added to itself (a second reader)."""
    out = 8 if group > 1 else 4
    inits = {"w1": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
             "w2": rng.standard_normal((out, 8 // group, kernel, kernel)).astype(np.float32),
             "lo": np.array(lo, np.float32), "hi": np.array(6.0, np.float32)}
    if bias:
        inits.update(b1=rng.standard_normal(8).astype(np.float32), b2=rng.standard_normal(out).astype(np.float32))
    act = (helper.make_node("Clip", ["c1", "lo", "hi"], ["a1"], name="clip") if rect == "clip"
           else helper.make_node("Relu", ["c1"], ["a1"], name="relu"))
    nodes = [helper.make_node("Conv", ["x", "w1"] + (["b1"] if bias else []), ["c1"], pads=[1, 1, 1, 1], name="A"), act]
    if exporter_pad:
        top, left, bottom, right = exporter_pad
        inits.update(pads=np.array([0, 0, top, left, 0, 0, bottom, right], np.int64), zero=np.array(0, np.float32))
        nodes.append(helper.make_node("Pad", ["a1", "pads", "zero"], ["p1"], name="P"))
    nodes += [helper.make_node("Conv", ["p1" if exporter_pad else "a1", "w2"] + (["b2"] if bias else []), ["y"],
                               name="B", group=group,
                              strides=[stride, stride],
                              **({"auto_pad": auto_pad} if auto_pad else {"pads": list(second_pads)}))]
    outputs = {"y": [None, out, None, None]}
    if residual:
        nodes.append(helper.make_node("Add", ["a1", "a1"], ["r"]))
        outputs["r"] = [None, 8, 8, 8]
    return onnx_graph(nodes, {"x": [None, 3, 8, 8]}, outputs, inits)


def _run(model, x, names=("y", "a1")):
    from edgeopt.converters import onnx_io
    return onnx_io.tensor_session(model, ["a1"]).run(list(names), {"x": x})


def _copy(model):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


CASES = {"1x1": {}, "no-bias": {"bias": False}, "3x3-valid": {"kernel": 3}, "relu": {"rect": "relu"},
         "3x3-padded": {"kernel": 3, "second_pads": (1, 1, 1, 1)},
         "depthwise-stride2-uneven-pads": {"kernel": 3, "group": 8, "stride": 2, "second_pads": (0, 1, 1, 2)},
         "exporter-pad": {"kernel": 3, "group": 8, "stride": 2, "exporter_pad": (0, 0, 1, 1)}}


@pytest.mark.parametrize("case", list(CASES))
def test_centered_tensor_is_symmetric_and_the_function_the_same(case):
    """y is unchanged on the calibration data and on other data; the tensor B reads is a1 - c with c at most
    half its calibration maximum (its zeros at -c): its symmetric INT8 step (TensorRT's) on [-c, c] is at most
    half, and so is its error. A Relu becomes Clip(-c). A padded B gets its padding from a Pad filling -c (the
    border then reads a1 - c = -c where it read 0) and pads of its own 0: without that, the border would differ."""
    kw = CASES[case]
    rng = np.random.default_rng(1)
    model = _block(rng, **kw)
    x = (rng.standard_normal((6, 3, 8, 8)) * 2).astype(np.float32)
    y0, a0 = _run(model, x)
    m = _copy(model)
    info = onnx_center.center_rectified_inputs(m, [{"x": x[i:i + 1]} for i in range(4)])
    padded = int(any(kw.get("second_pads", ())) or bool(kw.get("exporter_pad")))
    assert info == {"pairs": 1, "of": 1, "padded": padded}
    y1, a1 = _run(m, x)
    np.testing.assert_allclose(y1, y0, rtol=1e-4, atol=1e-4 * np.abs(y0).max())
    c = -float(a1[:4].min())
    np.testing.assert_allclose(a1, a0 - c, atol=1e-5)
    assert 0.3 * a0[:4].max() < c <= a0[:4].max() / 2 + 1e-6
    if kw.get("rect") == "relu":
        assert [n.op_type for n in m.graph.node] == ["Conv", "Clip", "Conv"] and len(m.graph.node[1].input) == 2
    if padded:
        assert [n.op_type for n in m.graph.node] == ["Conv", "Clip", "Pad", "Conv"]
        pad, conv = m.graph.node[2], m.graph.node[3]
        inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
        assert float(inits["zero"] if "zero" in inits else 0) == 0   # a shared zero is not changed
        top, left, bottom, right = kw.get("second_pads") or kw["exporter_pad"]
        assert list(inits[pad.input[1]]) == [0, 0, top, left, 0, 0, bottom, right]
        assert float(inits[pad.input[2]]) == pytest.approx(-c)
        assert conv.input[0] == pad.output[0] and not any(helper.get_attribute_value(
            next(a for a in conv.attribute if a.name == "pads")))
    other = (rng.standard_normal((3, 3, 8, 8)) * 5).astype(np.float32)   # beyond the calibration range
    np.testing.assert_allclose(_run(m, other)[0], _run(model, other)[0], rtol=1e-4,
                               atol=1e-4 * np.abs(_run(model, other)[0]).max())

    def int8_error(a, r):   # symmetric INT8 of the whole tensor, zero point 0, range r
        step = r / 127
        return float(np.sqrt(np.mean((np.clip(np.round(a / step), -127, 127) * step - a) ** 2)))
    assert int8_error(a1[:4], c) < 0.55 * min(int8_error(a0[:4], r) for r in np.linspace(0.1, 1, 19) * a0[:4].max())


@pytest.mark.parametrize("case", ["same-padding", "lower-bound", "second-reader"])
def test_left_alone(case):
    """A convolution with auto_pad SAME pads by the input's size (no fixed Pad can take it over); a Clip whose
    lower bound is not 0 is not a rectifier; a tensor something else reads too (a residual Add) would change for
    it: none is touched."""
    rng = np.random.default_rng(2)
    kw = {"same-padding": {"auto_pad": "SAME_UPPER", "kernel": 3}, "lower-bound": {"lo": -1.0},
          "second-reader": {"residual": True}}[case]
    model = _block(rng, **kw)
    before = model.SerializeToString()
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    assert onnx_center.center_rectified_inputs(model, [{"x": x}]) == {"pairs": 0, "of": 0, "padded": 0}
    assert model.SerializeToString() == before


def test_dead_tensor_left_alone():
    """A rectified tensor that is 0 on every calibration sample has nothing to centre: left as it is. (A
    non-finite one cannot reach here: the Clip bounds inf, and onnxruntime's Clip maps NaN to a bound.)"""
    rng = np.random.default_rng(3)
    model = _block(rng)
    b1 = next(i for i in model.graph.initializer if i.name == "b1")
    b1.CopyFrom(numpy_helper.from_array(np.full(8, -1e6, np.float32), "b1"))
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    assert not _run(model, x)[1].any()
    before = model.SerializeToString()
    assert onnx_center.center_rectified_inputs(model, [{"x": x}]) == {"pairs": 0, "of": 1, "padded": 0}
    assert model.SerializeToString() == before


def test_no_data_no_change():
    model = _block(np.random.default_rng(4))
    before = model.SerializeToString()
    assert onnx_center.center_rectified_inputs(model, []) == {"pairs": 0, "of": 1, "padded": 0}
    assert model.SerializeToString() == before


def _jetson_centred(tmp_path, model, seed, padded=0):
    """``model`` converted for jetson on random calibration inputs: (manifest, files, path, the Clip's
    (lo, hi) in the artifact); the centring found and did one pair, and the artifact agrees with FP32."""
    import edgeopt
    from edgeopt_testkit import save_arrays
    path = str(tmp_path / "block.onnx")
    onnx.save(model, path)
    rng = np.random.default_rng(seed)
    files = save_arrays(tmp_path, calib=(rng.standard_normal((24, 3, 8, 8)) * 2).astype(np.float32))
    m = edgeopt.convert(path, "jetson", calib=files["calib"], out=str(tmp_path / "j"))
    assert m["calibration"]["centering"] == {"pairs": 1, "of": 1, "padded": padded}
    assert m["accuracy"]["outputs"]["y"]["cosine"] > 0.99
    art = onnx.load(str(tmp_path / "j" / "model.int8.qdq.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in art.graph.initializer}
    (clip,) = [n for n in art.graph.node if n.op_type == "Clip"]
    return m, files, path, (float(inits[clip.input[1]]), float(inits[clip.input[2]]))


def test_jetson_route_centres_and_tflite_route_does_not(tmp_path):
    """The QDQ route (symmetric INT8, TensorRT) quantizes the centred model: the manifest says so, the Clip in the
    artifact reads (-c, 6 - c) and the artifact still agrees with FP32; the TFLite route (asymmetric INT8 already
    uses the whole range) is not centred."""
    import edgeopt
    _, files, path, (lo, hi) = _jetson_centred(tmp_path, _block(np.random.default_rng(5)), 5)
    assert lo < 0 and hi - lo == pytest.approx(6.0, rel=1e-6)
    r = edgeopt.convert(path, "rpi", calib=files["calib"], out=str(tmp_path / "r"))
    assert "centering" not in r["calibration"]


def test_weights_in_constant_nodes_are_centred(tmp_path):
    """Paddle exports keep every weight in a Constant node (ocr_det): the rewrites change initializers, so the
    QDQ route turns such nodes into initializers before centring (it found no pair there before)."""
    model = _block(np.random.default_rng(6))
    consts = [helper.make_node("Constant", [], [t.name], value=t, name=f"const_{t.name}")
              for t in model.graph.initializer]
    del model.graph.initializer[:]
    nodes = consts + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.checker.check_model(model)
    _, _, _, (lo, hi) = _jetson_centred(tmp_path, model, 6)
    assert lo < 0 and hi - lo == pytest.approx(6.0, rel=1e-6)


def test_jetson_padded_depthwise_reads_int8_after_the_pad(tmp_path):
    """A depthwise conv with padding (MobileNet's): in the QDQ artifact its padding is a Pad filling -c, the Pad
    reads the Clip's float output, and the conv reads its data straight from a DequantizeLinear of the Pad's
    output (TensorRT runs a convolution in INT8 only so), on the centred grid: zero point 0, a step of c / 127, so
    -c is code -127. The artifact still agrees with FP32."""
    model = _block(np.random.default_rng(7), kernel=3, group=8, second_pads=(1, 1, 1, 1))
    m, _, _, (lo, hi) = _jetson_centred(tmp_path, model, 7, padded=1)
    art = onnx.load(str(tmp_path / "j" / "model.int8.qdq.onnx"))
    producer = {o: n for n in art.graph.node for o in n.output}
    inits = {i.name: numpy_helper.to_array(i) for i in art.graph.initializer}
    conv = next(n for n in art.graph.node if n.op_type == "Conv" and n.name.startswith("B"))
    dq = producer[conv.input[0]]
    q = producer[dq.input[0]]
    pad = producer[q.input[0]]
    assert (dq.op_type, q.op_type, pad.op_type) == ("DequantizeLinear", "QuantizeLinear", "Pad")
    assert producer[pad.input[0]].op_type == "Clip"
    assert float(inits[pad.input[2]]) == pytest.approx(lo)
    step, zero = float(inits[q.input[1]]), inits[q.input[2]]
    assert zero.dtype == np.int8 and int(zero) == 0 and lo / step == pytest.approx(-127, abs=0.5)
