"""Transformer normalization blocks on the TFLite route (issue 13): on a target that runs float ops beside INT8
ones (rpi), LayerNorm's arithmetic, Softmax and GELU stay in float where INT8 does not fit them, within the float
budget, while MatMuls stay INT8; an integer-only target (Coral) refuses naming the ops; a CNN is unchanged."""
from __future__ import annotations

import json

import numpy as np
import pytest

import edgeopt
from edgeopt_testkit import assert_one_error, edgeopt_cli, onnx_graph, save_arrays

T, D, H = 16, 32, 64
WEIGHTED = {"FULLY_CONNECTED", "BATCH_MATMUL", "CONV_2D", "DEPTHWISE_CONV_2D"}


def _block_onnx(path, gelu="tanh"):
    """A pre-norm transformer encoder block (LayerNorm, single-head attention with Softmax, LayerNorm, MLP with
    GELU, residuals) with seeded random weights; tokens with two outlier channels, as transformer activations
    have. gelu: "tanh" (every op has an INT8 kernel) or "erf" (onnx2tf's pseudo-Erf: DIV has none)."""
    rng = np.random.default_rng(0)

    def w(*s):
        return (rng.standard_normal(s) / np.sqrt(s[0])).astype(np.float32)

    init = {"wq": w(D, D), "wk": w(D, D), "wv": w(D, D), "wo": w(D, D), "w1": w(D, H), "w2": w(H, D),
            "b1": (rng.standard_normal(H) * 0.1).astype(np.float32), "scale": np.array(D ** -0.5, np.float32),
            "half": np.array(0.5, np.float32), "one": np.array(1.0, np.float32),
            "c": np.array(0.044715, np.float32), "k": np.array(np.sqrt(2 / np.pi), np.float32),
            "sq2": np.array(np.sqrt(2), np.float32)}
    for i in (1, 2):
        init[f"g{i}"] = (1 + 0.2 * rng.standard_normal(D)).astype(np.float32)
        init[f"be{i}"] = (0.1 * rng.standard_normal(D)).astype(np.float32)
    nodes = [("LayerNormalization", ["x", "g1", "be1"], ["a"], {"axis": -1, "epsilon": 1e-5}),
             ("MatMul", ["a", "wq"], ["q"]), ("MatMul", ["a", "wk"], ["kk"]), ("MatMul", ["a", "wv"], ["v"]),
             ("Transpose", ["kk"], ["kt"], {"perm": [0, 2, 1]}), ("MatMul", ["q", "kt"], ["s0"]),
             ("Mul", ["s0", "scale"], ["s"]), ("Softmax", ["s"], ["p"], {"axis": -1}),
             ("MatMul", ["p", "v"], ["o"]), ("MatMul", ["o", "wo"], ["o2"]), ("Add", ["x", "o2"], ["r1"]),
             ("LayerNormalization", ["r1", "g2", "be2"], ["c2"], {"axis": -1, "epsilon": 1e-5}),
             ("MatMul", ["c2", "w1"], ["h0"]), ("Add", ["h0", "b1"], ["h"])]
    if gelu == "tanh":
        nodes += [("Mul", ["h", "h"], ["h2"]), ("Mul", ["h2", "h"], ["h3"]), ("Mul", ["h3", "c"], ["h3c"]),
                  ("Add", ["h", "h3c"], ["u"]), ("Mul", ["u", "k"], ["uk"]), ("Tanh", ["uk"], ["t"]),
                  ("Add", ["t", "one"], ["t1"]), ("Mul", ["h", "t1"], ["ht"]), ("Mul", ["ht", "half"], ["g"])]
    else:
        nodes += [("Div", ["h", "sq2"], ["hd"]), ("Erf", ["hd"], ["e"]), ("Add", ["e", "one"], ["e1"]),
                  ("Mul", ["h", "e1"], ["hm"]), ("Mul", ["hm", "half"], ["g"])]
    nodes += [("MatMul", ["g", "w2"], ["f"]), ("Add", ["r1", "f"], ["y"])]
    onnx_graph(nodes, {"x": [1, T, D]}, {"y": [1, T, D]}, init, path=path)
    x = rng.standard_normal((160, T, D)).astype(np.float32)
    x[:, :, [3, 17]] *= 12
    return save_arrays(path.parent, calib=x[:96], val=x[96:])


def _ops(path):
    """(op kind, computes in float) of each op of a .tflite file, QUANTIZE/DEQUANTIZE left out."""
    from edgeopt.converters import edgetpu
    return [(o["op"], o["float"]) for o in edgetpu.read_ops(str(path)) if o["op"] not in ("QUANTIZE", "DEQUANTIZE")]


@pytest.mark.slow
def test_transformer_block_on_rpi_keeps_normalization_float_and_matmuls_int8(tmp_path):
    files = _block_onnx(tmp_path / "block.onnx")
    m = edgeopt.convert(str(tmp_path / "block.onnx"), target="rpi", calib=files["calib"], val=files["val"],
                        out=str(tmp_path / "rpi"))
    art = m["artifacts"][0]
    fb = art["float_blocks"]
    assert fb["float"] is True, fb
    assert sorted(b["kind"] for b in fb["blocks"]) == ["gelu", "layernorm", "layernorm", "softmax"]
    assert fb["sqnr_db"]["float_blocks"] >= fb["sqnr_db"]["all_int8"] + 0.5
    assert fb["budget"]["max_float_layers"] >= 4 and "tensors" not in fb
    ops = _ops(tmp_path / "rpi" / art["file"])
    floats = {k for k, f in ops if f}
    assert {"MEAN", "SOFTMAX", "TANH"} <= floats and set(art["float_ops"]) == floats
    weighted = [(k, f) for k, f in ops if k in WEIGHTED]
    assert len(weighted) >= 6 and not any(f for _, f in weighted)  # the MatMuls: INT8
    # all-INT8 (what Coral gets: no float blocks there), judged on the same samples with float I/O
    c = edgeopt.convert(str(tmp_path / "block.onnx"), target="coral", calib=files["calib"], val=files["val"],
                        out=str(tmp_path / "coral"), io="float32")
    assert "float_blocks" not in c["artifacts"][-1] and not any(f for _, f in _ops(tmp_path / "coral" / "model.int8.tflite"))
    cos, all_int8 = (x["accuracy"]["outputs"]["y"]["cosine"] for x in (m, c))
    assert cos >= all_int8 and cos > 0.99, (cos, all_int8)


@pytest.mark.slow
def test_layernorm_and_gelu_without_int8_kernels_float_on_rpi_refused_on_coral(tmp_path):
    """Erf GELU (onnx2tf's pseudo-Erf has DIV, no INT8 kernel): rpi keeps the GELU block float without
    --allow-float-fallback; Coral refuses in one line naming the op."""
    files = _block_onnx(tmp_path / "block.onnx", gelu="erf")
    r = edgeopt_cli("convert", tmp_path / "block.onnx", "--target", "rpi", "--calib", files["calib"], "--val",
                    files["val"], "--out", tmp_path / "rpi", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads(r.stdout)
    fb = m["artifacts"][0]["float_blocks"]
    assert fb["float"] is True and "without an INT8 kernel" in fb["why"] and "DIV" in fb["why"]
    assert "DIV" in m["artifacts"][0]["float_ops"] and m["options"]["allow_float_fallback"] is False
    assert m["accuracy"]["outputs"]["y"]["cosine"] > 0.99
    r = edgeopt_cli("convert", tmp_path / "block.onnx", "--target", "coral", "--calib", files["calib"],
                    "--out", tmp_path / "coral")
    assert_one_error(r, "ops that cannot be quantized to INT8", "DIV", "runs INT8 ops only")


# ------------------------------------------------------------ quick: Keras graphs, the quantizer directly

def _keras_block():
    import keras
    keras.utils.set_random_seed(0)
    x = keras.Input((T, D), name="tokens")
    a = keras.layers.LayerNormalization(epsilon=1e-5)(x)
    q, k, v = (keras.layers.Dense(D)(a) for _ in range(3))
    s = keras.layers.Dot(axes=(2, 2))([q, k])
    p = keras.layers.Softmax()(s)
    o = keras.layers.Dense(D)(keras.layers.Dot(axes=(2, 1))([p, v]))
    r = keras.layers.Add()([x, o])
    h = keras.layers.Dense(H, activation="gelu")(keras.layers.LayerNormalization(epsilon=1e-5)(r))
    y = keras.layers.Add(name="y")([r, keras.layers.Dense(D)(h)])
    return keras.Model(x, y)


def _keras_cnn():
    import keras
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((16, 16, 3), name="image"), keras.layers.Conv2D(8, 3, activation="relu"),
                             keras.layers.DepthwiseConv2D(3, activation="relu"), keras.layers.GlobalAveragePooling2D(),
                             keras.layers.Dense(10, name="logits")])


def _calib(shape, n=48, outliers=()):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, 1) + shape).astype(np.float32)
    for c in outliers:
        x[..., c] *= 12
    return [[s] for s in x]


RECIPES = [{}, {"method": "mse", "bias_correction": True, "weight_rounding": "gptq"}]


@pytest.mark.parametrize("recipe", RECIPES, ids=["minmax", "mse-gptq-bc"])
def test_a_cnn_is_converted_exactly_as_before(recipe):
    from edgeopt.converters import tf_tflite, tflite_blocks
    graph, calib = tf_tflite.from_keras_model(_keras_cnn()), _calib((16, 16, 3))
    before, info = tf_tflite.quantize(graph, calib, "float32", **recipe)
    after, info2 = tf_tflite.quantize(graph, calib, "float32", float_blocks=True, **recipe)
    assert after == before and "float_blocks" not in info2 and not tflite_blocks.norm_blocks(tf_tflite.op_graph(after))


def test_keras_transformer_blocks_kept_float_within_the_budget():
    """Keras' LayerNormalization has a NEG without an INT8 kernel: its blocks stay float (no
    --allow-float-fallback) when the budget holds them; with fewer float layers allowed than blocks, the
    refusal of before, saying why the blocks did not resolve it. MatMuls stay INT8 either way."""
    from edgeopt.converters import tf_tflite
    from edgeopt.errors import UsageError
    graph, calib = tf_tflite.from_keras_model(_keras_block()), _calib((T, D), outliers=(3, 17))
    data, info = tf_tflite.quantize(graph, calib, "float32", float_blocks=True, max_float_layers={"layers": 4})
    fb = info["float_blocks"]
    assert sorted(b["kind"] for b in fb["blocks"]) == ["gelu", "layernorm", "layernorm", "softmax"], fb
    assert fb["float"] is True and fb["why"] == "ops without an INT8 kernel inside the blocks: NEG"
    floats = tf_tflite._float_computing(data)
    assert {k for k, _ in floats} == {"MEAN", "NEG", "SQUARED_DIFFERENCE", "ADD", "RSQRT", "MUL", "SOFTMAX", "GELU"}
    assert {n for _, n in floats} == set(fb["tensors"]) and not WEIGHTED & set(info["float_ops"])
    with pytest.raises(UsageError, match="NEG .*4 normalization blocks were not kept in float: 4 blocks are more "
                                         "than the float budget allows \\(3\\)"):
        tf_tflite.quantize(graph, calib, "float32", float_blocks=True, max_float_layers={"layers": 3})
    with pytest.raises(UsageError, match="cannot be quantized to INT8: NEG"):  # Coral: no float blocks
        tf_tflite.quantize(graph, calib, "float32")


def test_blocks_kept_float_only_when_int8_costs_accuracy(monkeypatch):
    """With --allow-float-fallback every op converts, so the choice is measured: the blocks stay float because
    the all-INT8 artifact is worse on the calibration samples; when the gain is under the threshold, the
    all-INT8 artifact is kept, byte for byte."""
    from edgeopt.conversion import defaults
    from edgeopt.converters import tf_tflite
    graph, calib = tf_tflite.from_keras_model(_keras_block()), _calib((T, D), outliers=(3, 17))
    plain, _ = tf_tflite.quantize(graph, calib, "float32", allow_float_fallback=True)
    kw = {"allow_float_fallback": True, "float_blocks": True, "max_float_layers": {"layers": 4}}
    data, info = tf_tflite.quantize(graph, calib, "float32", **kw)
    fb = info["float_blocks"]
    assert fb["float"] is True and fb["sqnr_db"]["float_blocks"] >= fb["sqnr_db"]["all_int8"] + 0.5, fb
    assert fb["samples"] == defaults.AUTO_SAMPLES and data != plain
    monkeypatch.setattr(defaults, "FLOAT_BLOCKS_MIN_GAIN_DB", 100.0)
    data, info = tf_tflite.quantize(graph, calib, "float32", **kw)
    assert data == plain and info["float_blocks"]["float"] is False and "as good" in info["float_blocks"]["why"]
    assert info["float_ops"] == ["NEG"]  # the fallback's own float op only


def _keras_sum_layernorm():
    """A LayerNorm written as JAX writes it (Magika's): mean and E[x^2] as SUMs times 1/n, variance
    E[x^2] - mean^2, then x - mean times 1/sqrt(variance + eps)."""
    import keras
    from keras import ops
    keras.utils.set_random_seed(0)
    x = keras.Input((T, D), name="tokens")
    h = keras.layers.Dense(D)(x)
    mean = ops.sum(h, axis=-1, keepdims=True) * (1.0 / D)
    var = ops.maximum(ops.sum(h * h, axis=-1, keepdims=True) * (1.0 / D) - mean * mean, 0.0)
    n = (h - mean) * (1.0 / ops.sqrt(var + 1e-5))
    return keras.Model(x, keras.layers.Dense(D, name="y")(n * 1.3 + 0.1))


def test_a_layernorm_with_sum_reductions_is_a_block():
    """JAX's LayerNorm (no MEAN op; Magika's form) is found from the tensor it normalizes, and chosen by the
    same rule as any block; the Dense layers around it stay INT8."""
    from edgeopt.conversion import defaults
    from edgeopt.converters import tf_tflite
    graph, calib = tf_tflite.from_keras_model(_keras_sum_layernorm()), _calib((T, D), outliers=(3,))
    data, info = tf_tflite.quantize(graph, calib, "float32", float_blocks=True, max_float_layers={"layers": 1})
    fb = info["float_blocks"]
    assert [b["kind"] for b in fb["blocks"]] == ["layernorm"], fb
    ops = fb["blocks"][0]["ops"]
    assert ops.count("SUM") == 2 and {"SQRT", "RSQRT"} & set(ops) and "FULLY_CONNECTED" not in ops, ops
    gain = fb["sqnr_db"]["float_blocks"] - fb["sqnr_db"]["all_int8"]
    assert fb["float"] is (gain >= defaults.FLOAT_BLOCKS_MIN_GAIN_DB) and not WEIGHTED & set(info.get("float_ops", []))
    assert ("SUM" in {k for k, _ in tf_tflite._float_computing(data)}) is fb["float"]


def test_attention_products_float_only_when_they_gain(monkeypatch):
    """Attention's BATCH_MATMULs of two activations (Q K^T, P V; not the Dense layers) join the float blocks only
    when that gains the threshold again over the blocks alone (PP-OCRv4 rec: +6.2 dB, cosine 0.907 -> 0.970);
    otherwise the blocks' artifact is kept and every matmul stays INT8."""
    from edgeopt.conversion import defaults
    from edgeopt.converters import tf_tflite, tflite_blocks
    graph, calib = tf_tflite.from_keras_model(_keras_block()), _calib((T, D), outliers=(3, 17))
    kw = {"allow_float_fallback": True, "float_blocks": True, "max_float_layers": {"layers": 6}}
    monkeypatch.setattr(defaults, "FLOAT_BLOCKS_MIN_GAIN_DB", -100.0)   # any gain is enough: both steps taken
    data, info = tf_tflite.quantize(graph, calib, "float32", **kw)
    fb = info["float_blocks"]
    assert [b["kind"] for b in fb["blocks"]].count("attention") == 2 and "with_attention" in fb["sqnr_db"], fb
    floats = {k for k, _ in tf_tflite._float_computing(data)}
    assert "BATCH_MATMUL" in floats and "FULLY_CONNECTED" not in floats and "attention products" in fb["why"]
    assert len(tflite_blocks.attention_matmuls(tf_tflite.op_graph(data))) == 2
    monkeypatch.setattr(defaults, "FLOAT_BLOCKS_MIN_GAIN_DB", 100.0)
    data, info = tf_tflite.quantize(graph, calib, "float32", **kw)
    assert "attention" not in [b["kind"] for b in info["float_blocks"]["blocks"]]
    assert "BATCH_MATMUL" not in {k for k, _ in tf_tflite._float_computing(data)}
    kw["max_float_layers"] = {"layers": 5}   # 4 blocks + 2 products: over the budget, not tried
    monkeypatch.setattr(defaults, "FLOAT_BLOCKS_MIN_GAIN_DB", -100.0)
    _, info = tf_tflite.quantize(graph, calib, "float32", **kw)
    assert "with_attention" not in info["float_blocks"]["sqnr_db"]


def test_weights_are_fitted_in_the_form_the_artifact_keeps(monkeypatch):
    """gptq_act and bias correction fit weights to the INT8 model's activations: that model has the blocks the
    artifact keeps in float. Fitted to the all-INT8 form, whose INT8 LayerNorm is broken, gptq_act left Magika's
    rpi artifact at 11.7 dB output SQNR where plain GPTQ gives 30.5 (tests/test_integer_input.py checks Magika)."""
    from edgeopt.conversion import defaults
    from edgeopt.converters import tf_tflite
    monkeypatch.setattr(defaults, "FLOAT_BLOCKS_MIN_GAIN_DB", -100.0)   # the block stays float
    graph, calib = tf_tflite.from_keras_model(_keras_sum_layernorm()), _calib((T, D), outliers=(3,))
    fitted, corrected = [], []
    int8_float_io, bias_shifts = tf_tflite._int8_float_io, tf_tflite._bias_shifts

    def spy_fit(cal, per_channel, floats=(), io_type=None):
        if io_type is None:   # gptq_act's fitting model (the artifact and the bias correction name their I/O type)
            fitted.append(tuple(floats))
        return int8_float_io(cal, per_channel, floats, io_type)

    def spy_bias(cal, quantized, samples):
        corrected.append({name for _, name in tf_tflite._float_computing(quantized)})
        return bias_shifts(cal, quantized, samples)

    monkeypatch.setattr(tf_tflite, "_int8_float_io", spy_fit)
    monkeypatch.setattr(tf_tflite, "_bias_shifts", spy_bias)
    data, info = tf_tflite.quantize(graph, calib, "float32", float_blocks=True, max_float_layers={"layers": 1},
                                    method="mse", bias_correction=True, weight_rounding="gptq_act")
    fb = info["float_blocks"]
    assert fb["float"] is True and fb["tensors"], fb
    assert fitted and set(fitted) == {tuple(fb["tensors"])}
    assert corrected == [set(fb["tensors"])]


def test_sums_of_products_go_first_when_the_blocks_are_over_the_budget(monkeypatch):
    """Over the float budget, the sums of products are left INT8 first and the other blocks are judged as they
    were before such blocks existed (a LayerNorm here); without them over the budget, nothing is dropped."""
    import numpy as np
    import tensorflow as tf

    from edgeopt.converters import tf_tflite
    from edgeopt.converters.tflite_blocks import OpGraph, float_block_candidates
    ops = [("MEAN", [0], [1]), ("SUB", [0, 1], [2]), ("MUL", [2, 2], [3]), ("MEAN", [3], [4]),
           ("ADD", [4, 11], [5]), ("RSQRT", [5], [6]), ("MUL", [2, 6], [7]), ("MUL", [7, 12], [8]),
           ("ADD", [8, 13], [9]), ("FULLY_CONNECTED", [9, 14], [10]),
           ("MUL", [10, 10], [15]), ("MUL", [10, 9], [16]), ("ADD", [15, 16], [17])]
    g = OpGraph(kinds=[k for k, _, _ in ops], ins=[i for _, i, _ in ops], outs=[o for _, _, o in ops],
                names=[f"t{i}" for i in range(18)], const={11, 12, 13, 14}, calibrated=set(range(18)),
                graph_outputs={17})
    assert [b["kind"] for b in float_block_candidates(g)] == ["layernorm", "product_sum"]
    monkeypatch.setattr(tf_tflite, "op_graph", lambda data: g)
    model = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(4)])
    data = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    calib = [[np.full((1, 4), k, np.float32)] for k in range(4)]
    for budget, kinds, dropped in ((1, ["layernorm"], True), (2, ["layernorm", "product_sum"], False)):
        _, report = tf_tflite._choose_float_blocks(data, data, lambda tensors: data, calib, True,
                                                    {"layers": budget}, [])
        assert [b["kind"] for b in report["blocks"]] == kinds
        assert ("left_int8" in report["budget"]) is dropped and report["float"] is False
