"""--accuracy-target: parsing and usage errors (fast), and recovery on the real EfficientNet-Lite0 (slow)."""
import json

import numpy as np
import pytest

import edgeopt
import edgeopt.runtime
from edgeopt_testkit import edgeopt_cli, models, onnx_graph, save_arrays
from edgeopt.errors import UsageError
from edgeopt.conversion.options import Recipe
from edgeopt.conversion.recover import meets, parse_target, score


def test_parse_target():
    assert parse_target("top1=0.99") == {"top1": 0.99}
    assert parse_target("sqnr=30") == {"sqnr": 30.0}
    assert parse_target("top1=0.98,sqnr=25") == {"top1": 0.98, "sqnr": 25.0}
    assert parse_target(None) is None
    for bad in ("top1", "top5=0.9", "top1=1.5", "sqnr=abc"):
        with pytest.raises(UsageError, match="--accuracy-target"):
            parse_target(bad)


def test_meets_and_score():
    out = {"logits": {"top1_agreement": 0.97, "sqnr_db": 31.0}}
    assert meets(out, {"sqnr": 30}) and not meets(out, {"top1": 0.98})
    assert score(out, {"top1": 0.98}) == pytest.approx(-0.01)
    assert score(out, {"top1": 0.95, "sqnr": 30}) == pytest.approx(0.01)
    # Wilson 95% interval (published values: 196/200 -> 0.9497..0.9922; 50/50 -> 0.9287..1)
    from edgeopt.conversion.recover import wilson
    assert wilson(0.98, 200) == pytest.approx([0.9497, 0.9922], abs=1e-4)
    assert wilson(1.0, 50) == pytest.approx([0.9287, 1.0], abs=2e-4)


def test_cli_bad_target_and_method_exit_2(tmp_path, tiny_onnx):
    r = edgeopt_cli("convert", tiny_onnx, "--target", "rpi", "--calib", "random", "--accuracy-target", "top1=2",
                    "--out", tmp_path / "o")
    assert r.returncode == 2 and "error: --accuracy-target" in r.stderr
    r = edgeopt_cli("convert", tiny_onnx, "--target", "rpi", "--calib", "random", "--calibration", "entropy",
                    "--out", tmp_path / "o")
    assert r.returncode == 2 and "TFLite targets take auto, mse, minmax, mean_minmax or percentile" in r.stderr
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------ EfficientNet-Lite0, slow

@pytest.fixture(scope="module")
def lite0_recovered(tmp_path_factory):
    """One rpi conversion with --accuracy-target top1=0.98: 200 calibration and 200 validation photo crops,
    drawn with different seeds (separate samples), plus 200 more (a third seed) held out for a final check."""
    d = tmp_path_factory.mktemp("lite0rec")
    onnx_path = models.efficientnet_lite0(str(d / "efficientnet_lite0.onnx"))
    files = save_arrays(d, **{name: ((models.sample_photos(200, seed=seed) - 0.5) / 0.5).astype(np.float32)
                              for name, seed in (("calib", 1), ("val", 2), ("test", 3))})
    r = edgeopt_cli("convert", onnx_path, "--target", "rpi", "--calib", files["calib"], "--val", files["val"],
                    "--out", d / "rpi", "--accuracy-target", "top1=0.98", "--json")
    return d, onnx_path, r


@pytest.mark.slow
def test_lite0_rpi_default_recipe_and_float_budget(lite0_recovered):
    """The default all-INT8 recipe (MSE activation ranges + bias correction) must not get worse than it is, and
    recovery must stay INT8: never more float layers than the budget (10% of the candidates), never a float
    model in disguise. The target is met within the budget (exit 0) or not (exit 1, all-INT8 artifact kept,
    the budget named); both are honest outcomes on 100 confirmation crops."""
    d, onnx_path, r = lite0_recovered
    assert r.returncode in (0, 1), r.stderr[-3000:]
    m = json.loads(r.stdout)
    rec = m["recovery"]
    plain = rec["steps"][0]
    print(json.dumps({k: v for k, v in rec.items() if k != "steps"}, indent=1))
    assert plain["float_layers"] == []
    assert plain["recipe"]["calibration_method"] == "mse" and plain["recipe"]["bias_correction"] is True
    assert plain["recipe"]["weight_rounding"] == "gptq_act"
    # min-max without bias correction: ~18 dB here; mse + bias correction, nearest rounding: ~22.3; GPTQ: 24.0;
    # gptq_act (the default): ~26
    assert plain["accuracy"]["logits"]["sqnr_db"] > 25
    # the budget: 10% of the float candidates, and no candidate tried beyond it
    budget = rec["budget"]["max_float_layers"]
    total = m["layers"]["total"]
    assert total > 40 and budget == max(1, rec["budget"]["float_candidates"] // 10) <= total // 10
    assert all(len(s.get("float_layers") or []) <= budget for s in rec["steps"])
    floats = rec["chosen"]["float_layers"]
    a = m["artifacts"][0]
    if r.returncode == 1:  # unmet: the best all-INT8 artifact, and the error says why
        assert not rec["met"] and floats == [] and not a.get("float_ops")
        best = rec.get("best_float") or {}
        if best.get("confirmation_accuracy"):
            # float layers met it on the selection half within the budget and missed on the confirmation half
            # (0.97 < 0.98 seen on a fresh CI machine): not returned
            assert len(best["float_layers"]) <= budget and "not on the 100 confirmation samples" in r.stderr
            assert best["confirmation_accuracy"]["logits"]["top1_agreement"] < 0.98
        else:  # the error says what the budget allowed, and what INT8 weights alone reach (~31.5 dB here)
            assert "--max-float-layers" in r.stderr and "budget" in r.stderr
            assert rec["weights_only"]["accuracy"]["logits"]["sqnr_db"] > 28
            assert "with only its weights in INT8 (activations in float)" in r.stderr
    else:
        # the all-INT8 default meets it on its own here (gptq_act: 0.98 on the confirmation half, no float layer)
        assert rec["met"] and len(floats) <= budget and (not floats or "CONV_2D" in a["float_ops"])
        assert m["accuracy"]["outputs"]["logits"]["top1_agreement"] >= 0.98
    assert a["bytes"] <= 0.35 * rec["budget"]["fp32_bytes"]
    # the claim is the confirmation half's, with its interval; selection and confirmation add up
    split = rec["split"]
    assert split["selection_samples"] + split["confirmation_samples"] == 200
    assert m["accuracy"]["samples"] == split["confirmation_samples"] == rec["chosen"]["confirmation_samples"]
    # the artifact in OUT_DIR runs in edgeopt.runtime; on 200 crops used for nothing else it agrees with FP32 as
    # the default recipe (gptq_act) makes it today (0.975, 26.35 dB; plain GPTQ: 0.955, 24.4 dB; nearest
    # rounding: 0.955, 22.3 dB; min-max alone: 0.87, 18.3 dB)
    import onnxruntime as ort
    x = np.load(d / "test.npy")
    ref = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    model = edgeopt.runtime.load(str(d / "rpi"))
    (out,) = model.run(x)
    assert out.shape == (200, 1000)
    held_out = float(np.mean(out.argmax(1) == ref.argmax(1)))
    sqnr = float(10 * np.log10(np.sum(ref ** 2) / np.sum((out - ref) ** 2)))
    print("held-out top-1 agreement", held_out, "SQNR", sqnr)
    assert held_out >= 0.95 and sqnr >= 25.5


@pytest.mark.slow
def test_lite0_jetson_default_recipe_floor(lite0_recovered):
    """The QDQ route's default all-INT8 recipe (auto: symmetric MSE ranges here, zero point 0, bias correction,
    gptq_act weights, centred projection and depthwise inputs) must not get worse than it is on 200 crops used for
    nothing else: 0.965 / 26.6 dB today (0.97 / 25.0 with the projection inputs alone centred)
    (plain GPTQ: 0.95 / 22.3; nearest rounding: 0.925 / 21.4; min-max alone: ~0.89 / 18.0)."""
    import onnx
    import onnxruntime as ort
    d, onnx_path, _ = lite0_recovered
    m = edgeopt.convert(onnx_path, target="jetson", calib=str(d / "calib.npy"), out=str(d / "jetson"))
    a = m["artifacts"][0]
    assert a["file"] == "model.int8.qdq.onnx" and not a.get("float_ops")
    auto = m["calibration"]["auto"]  # the default, --calibration auto: mse wins on Lite0 (22.2 vs 21.3 dB)
    assert auto["chosen"] == "mse" and auto["sqnr_db"]["mse"] > auto["sqnr_db"]["mean_minmax"]
    assert m["calibration"]["recipe"]["calibration_method"] == "mse" and m["calibration"]["recipe"]["bias_correction"]
    # gptq_act kept: closer to FP32 than plain GPTQ on calibration crops it was not fitted to
    check = auto["weight_rounding"]
    assert check["kept"] == m["calibration"]["recipe"]["weight_rounding"] == "gptq_act" and not check["fitted_on_them"]
    # its 16 depthwise inputs (after ReLU6) equalized; most Lite0 channels reach 6 already (median scale 1)
    eq = m["calibration"]["equalization"]
    assert eq["pairs"] == eq["of"] == 16 and eq["margin"] == 2.0, eq
    # its 16 projection convs' and 16 depthwise convs' ReLU6 inputs centred for TensorRT's symmetric INT8 (+0.5 dB
    # for the projections on 200 held-out crops; the depthwise ones, their zero Pads filling -c: +1.7 dB more)
    assert m["calibration"]["centering"] == {"pairs": 32, "of": 32, "padded": 16}
    qdq = onnx.load(str(d / "jetson" / a["file"]))
    # TensorRT's placement: no Q/DQ between a Conv and the activation it fuses (Clip/Relu take the Conv's output)
    producer = {o: n.op_type for n in qdq.graph.node for o in n.output}
    acts = [n for n in qdq.graph.node if n.op_type in ("Clip", "Relu")]
    assert acts and all(producer.get(n.input[0]) == "Conv" for n in acts)
    # every conv reads INT8 straight from a DequantizeLinear; the depthwise ones' Pads sit before the Q/DQ
    convs = [n for n in qdq.graph.node if n.op_type == "Conv"]
    assert all(producer.get(n.input[0]) == "DequantizeLinear" for n in convs)
    pads = [n for n in qdq.graph.node if n.op_type == "Pad"]
    assert len(pads) == 16 and all(producer.get(n.input[0]) == "Clip" for n in pads)
    zero_points = [i for i in qdq.graph.initializer if i.name.endswith("zero_point")]
    assert zero_points and all(not onnx.numpy_helper.to_array(z).any() for z in zero_points)  # TensorRT's form
    x = np.load(d / "test.npy")
    ref = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    out = edgeopt.runtime.load(str(d / "jetson"), artifact=a["file"]).run(x)[0]
    held_out = float(np.mean(out.argmax(1) == ref.argmax(1)))
    sqnr = float(10 * np.log10(np.sum(ref ** 2) / np.sum((out - ref) ** 2)))
    print("jetson held-out top-1 agreement", held_out, "SQNR", sqnr)
    # SQNR is the steady signal; top-1 on 200 crops moves by a few crops with any rounding change (0.925-0.975).
    # 0.965 / 26.6 dB with the depthwise inputs centred too (25.0 with the projection inputs alone, 24.3 before)
    assert held_out >= 0.94 and sqnr >= 26.0


@pytest.mark.slow
def test_lite0_layers_ranked_in_manifest_and_explain(lite0_recovered):
    d, _, r = lite0_recovered
    assert r.returncode in (0, 1), r.stderr[-3000:]
    m = json.loads(r.stdout)
    lay = m["layers"]
    vals = [x["rmse_scale"] for x in lay["layers"]]
    assert vals == sorted(vals, reverse=True) and len(vals) == 20 and lay["total"] > 40
    # the worst layers add far more than rounding error (0.29 steps); most layers are near it
    assert vals[0] > 1.0 and vals[-1] < 0.5
    assert {x["op"] for x in lay["layers"]} <= {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD",
                                               "MEAN", "AVERAGE_POOL_2D", "RESHAPE"}
    e = edgeopt_cli("explain", d / "rpi", "--json", "--top", "5")
    assert e.returncode == 0, e.stderr
    rep = json.loads(e.stdout)
    assert [x["tensor"] for x in rep["layers"]["layers"]] == [x["tensor"] for x in lay["layers"][:5]]
    assert rep["recovery"]["met"] is m["recovery"]["met"]
    t = edgeopt_cli("explain", d / "rpi")
    assert t.returncode == 0 and "RMSE/step" in t.stdout and " in float" in t.stdout


def _tiny_job(tiny_onnx, tmp_path, cache):
    import onnx

    from edgeopt.conversion.pipeline import Job
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((20, 1, 3, 8, 8)) + 0.5).astype(np.float32)
    import tempfile
    w = tempfile.mkdtemp(dir=tmp_path)
    j = Job(tiny_onnx, "onnx", None, [{"name": "x", "shape": [1, 3, 8, 8], "dtype": "float32"}], [{"name": "y"}],
            {"x": x.reshape(20, 3, 8, 8)}, "int8", w, onnx_model=onnx.load(tiny_onnx), options={})
    if cache is not None:
        from edgeopt.converters import onnx_qdq
        onnx_qdq.route_state(j).calibrations = cache
    return j


def test_qdq_calibration_reused_across_candidates_is_exact(tiny_onnx, tmp_path):
    """Recovery calibrates once per recipe; candidates (with float nodes, other recipes) come out byte for byte
    as a fresh quantize_static makes them."""
    from edgeopt import converters
    q = converters.load("edgeopt.converters.onnx_qdq")

    def conv(job, **o):
        return q.convert(job, Recipe(**o))[0]["data"]
    cache = {}
    shared = _tiny_job(tiny_onnx, tmp_path, cache)
    assert conv(_tiny_job(tiny_onnx, tmp_path, None)) == conv(shared) == conv(shared)
    assert ("minmax", None, True, 20) in cache
    assert conv(_tiny_job(tiny_onnx, tmp_path, None), calibration_method="percentile") == \
        conv(shared, calibration_method="percentile")
    bc = conv(shared, bias_correction=True)
    assert bc != conv(shared) and q.bias_correction_info(shared)["layers"] == 1


def test_qdq_float_node_stays_float_in_runtime(tmp_path):
    """A Conv kept in float (nodes_to_exclude) runs with its float weights in edgeopt.runtime and the per-layer
    report: onnxruntime's WeightBiasQuantization would otherwise give it per-tensor INT8 weights (a depthwise
    conv whose channels differ 1000x in scale then loses its small channels)."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from edgeopt.converters import debug_onnx
    rng = np.random.default_rng(3)
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    dw = (rng.standard_normal((8, 1, 3, 3)) * np.logspace(-3, 0, 8)[:, None, None, None]).astype(np.float32)
    src, out = str(tmp_path / "dw.onnx"), str(tmp_path / "dw.int8.qdq.onnx")
    onnx_graph([("Conv", ["x", "w1"], ["c1"], {"pads": [1, 1, 1, 1], "name": "conv1"}),
                ("Relu", ["c1"], ["r1"], {"name": "relu1"}),
                ("Conv", ["r1", "dw"], ["c2"], {"pads": [1, 1, 1, 1], "group": 8, "name": "dwconv"}),
                ("Relu", ["c2"], ["r2"], {"name": "relu2"}),
                ("Conv", ["r2", "w3"], ["y"], {"name": "conv3"})],
               {"x": [1, 3, 8, 8]}, {"y": [1, 8, 8, 8]},
               {"w1": w1, "dw": dw, "w3": np.eye(8, dtype=np.float32)[:, :, None, None]}, path=src, name="dw")
    xs = [rng.standard_normal((1, 3, 8, 8)).astype(np.float32) for _ in range(8)]

    class Reader:
        it = iter([{"x": x} for x in xs])

        def get_next(self):
            return next(self.it, None)
    quantize_static(src, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, nodes_to_exclude=["dwconv"],
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    assert "dw" in {i.name for i in onnx.load(out).graph.initializer}  # the artifact keeps it in float
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the QDQ graph as written
    exact = ort.InferenceSession(out, so, providers=["CPUExecutionProvider"])
    got = edgeopt.runtime.load(out)
    for x in xs[:3]:
        want = exact.run(None, {"x": x})[0]
        (y,) = got.run(x)
        small = want[:, :4]  # the channels per-tensor INT8 weights would round to (almost) zero
        assert np.abs(y[:, :4] - small).max() <= 1e-3 * np.abs(small).max()
    rows = {r["node"]: r for r in debug_onnx.layer_errors(src, out, [{"x": x} for x in xs[:3]])}
    assert not rows["dwconv"]["quantized"] and rows["conv1"]["quantized"] and rows["conv3"]["quantized"]


def test_qdq_layer_errors_measure_every_output_and_blame_no_reshape(tmp_path):
    """The per-layer report (explain, recovery's candidates) on a Split whose second output goes through a
    Reshape: both outputs are measured, so the Reshape (which cannot add error) is not blamed for what came
    before it (it was: 'losing 90 dB' on a real detector, its input unmeasured and taken as exact), and only
    nodes reading a DequantizeLinear count as quantized (a Sigmoid between Convs has no Q/DQ of its own)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from edgeopt.converters import debug_onnx
    rng = np.random.default_rng(7)
    src, out = str(tmp_path / "split.onnx"), str(tmp_path / "split.int8.qdq.onnx")
    onnx_graph([("Conv", ["x", "w1"], ["c1"], {"pads": [1, 1, 1, 1], "name": "conv1"}),
                ("Split", ["c1", "parts"], ["s0", "s1"], {"axis": 1, "name": "split"}),
                ("Reshape", ["s1", "shape"], ["flat"], {"name": "reshape"}),
                ("Sigmoid", ["s0"], ["g"], {"name": "sigmoid"}),
                ("Conv", ["g", "w2"], ["y0"], {"name": "conv2"}),
                ("MatMul", ["flat", "w3"], ["y1"], {"name": "fc"})],
               {"x": [1, 3, 8, 8]}, {"y0": [1, 4, 8, 8], "y1": [4, 8]},
               {"w1": (rng.standard_normal((8, 3, 3, 3)) / 3).astype(np.float32),
                "parts": np.array([4, 4], np.int64), "shape": np.array([4, 64], np.int64),
                "w2": rng.standard_normal((4, 4, 1, 1)).astype(np.float32),
                "w3": rng.standard_normal((64, 8)).astype(np.float32)}, path=src, name="split")
    xs = [rng.standard_normal((1, 3, 8, 8)).astype(np.float32) for _ in range(8)]

    class Reader:
        it = iter([{"x": x} for x in xs])

        def get_next(self):
            return next(self.it, None)
    quantize_static(src, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=["Conv", "MatMul"],
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    rows = {r["node"]: r for r in debug_onnx.layer_errors(src, out, [{"x": x} for x in xs[:4]])}
    assert rows["reshape"]["added_db"] == 0 and rows["sigmoid"]["added_db"] < 3  # measured: 0.0 / 0.0
    assert rows["split"]["tensor"] in ("s0", "s1") and rows["split"]["sqnr_db"] < 60  # INT8 noise from conv1
    quantized = {n for n, r in rows.items() if r["quantized"]}
    assert {"conv1", "conv2", "fc"} <= quantized and not {"reshape", "sigmoid"} & quantized, quantized


# ------------------------------------------------------------- Coral: float layers leave the Edge TPU

@pytest.fixture(scope="module")
def coral_recovery(keras_cnn, fm_data, tmp_path_factory):
    """The Keras Fashion-MNIST CNN for Coral with an SQNR target plain INT8 misses (plain ~39 dB), without and
    with --allow-cpu-ops."""
    d = tmp_path_factory.mktemp("coralrec")
    args = ["convert", keras_cnn, "--target", "coral", "--calib", fm_data["calib_nhwc"], "--val",
            fm_data["val_nhwc"], "--accuracy-target", "sqnr=44", "--json"]
    ask = edgeopt_cli(*args, "--out", d / "ask")
    allow = edgeopt_cli(*args, "--out", d / "allow", "--allow-cpu-ops")
    return d, ask, allow


@pytest.mark.slow
def test_coral_float_layers_only_with_allow_cpu_ops(coral_recovery):
    d, ask, allow = coral_recovery
    # without --allow-cpu-ops: exit 1, the all-INT8 artifact kept, and what it would take said
    assert ask.returncode == 1, ask.stderr[-2000:]
    assert "--allow-cpu-ops" in ask.stderr
    m = json.loads(ask.stdout)
    rec = m["recovery"]
    assert not rec["met"] and rec["chosen"]["float_layers"] == []
    assert m["accuracy"]["outputs"]["logits"]["sqnr_db"] < 44
    assert [s for s in rec["steps"] if "error" in s] == []
    need = rec["needs_cpu_ops"]
    assert need["float_layers"] and need["cpu_ops"] > 0 and need["accuracy"]["logits"]["sqnr_db"] >= 44
    assert not m["artifacts"][0].get("float_ops")
    assert m["edgetpu"]["summary"]["cpu_ops"] == 0
    assert json.loads((d / "ask" / "manifest.json").read_text())["recovery"]["needs_cpu_ops"] == need
    # with it: the same layers kept in float, the target met, and exactly the ops said leave the Edge TPU
    assert allow.returncode == 0, allow.stderr[-2000:]
    m2 = json.loads(allow.stdout)
    rec2 = m2["recovery"]
    assert rec2["met"] and rec2["chosen"]["float_layers"] == need["float_layers"]
    assert m2["accuracy"]["outputs"]["logits"]["sqnr_db"] >= 44
    assert m2["artifacts"][0]["float_ops"]
    assert m2["edgetpu"]["summary"]["cpu_ops"] == need["cpu_ops"] > 0
    assert m2["options"].get("allow_cpu_ops") is True


@pytest.mark.slow
def test_explain_with_val_remeasures(coral_recovery, keras_cnn, fm_data, fmnist):
    """explain --val redoes the plain conversion on other validation data and ranks its layers."""
    d, _, allow = coral_recovery
    xte = fmnist[2]
    other = d / "val-other.npy"
    np.save(other, xte[2000:2300, :, :, None])
    r = edgeopt_cli("explain", d / "allow", "--val", other, "--model", keras_cnn, "--calib", fm_data["calib_nhwc"],
                    "--json", "--top", "4")
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(r.stdout)
    rows = rep["layers"]["layers"]
    vals = [x["rmse_scale"] for x in rows]
    assert len(rows) == 4 and vals == sorted(vals, reverse=True) and vals[0] > 0
    assert rep["rebuilt_identical"] is False and "recovered artifact" in rep["note"]
    assert "val-other.npy" in rep["note"]  # measured on the data given, not convert's
    assert 0.9 < rep["accuracy"]["logits"]["top1_agreement"] <= 1.0
    assert rep["float_layers"] == json.loads(allow.stdout)["recovery"]["chosen"]["float_layers"]
    # a file that is not validation data: one error line, exit 2
    bad = d / "bad.npy"
    np.save(bad, np.zeros((3, 5), np.float32))
    r = edgeopt_cli("explain", d / "allow", "--val", bad, "--model", keras_cnn, "--calib", fm_data["calib_nhwc"])
    assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr


def test_qdq_float_nodes_read_float_activations(tmp_path):
    """A node kept in float reads its input unquantized (the Q/DQ pair before it is bypassed and removed when
    nothing else reads it), and a Clip/Relu whose only reader is that node joins it; quantized readers of the
    same tensors keep their pairs."""
    import onnx

    from edgeopt.converters import onnx_qdq
    from edgeopt.conversion.pipeline import Job
    rng = np.random.default_rng(4)
    weights = {n: rng.standard_normal(s).astype(np.float32)
               for n, s in (("w1", (8, 3, 3, 3)), ("dw", (8, 1, 3, 3)), ("w3", (8, 8, 1, 1)), ("w4", (8, 8, 1, 1)),
                            ("b1", (1, 8, 1, 1)))}
    src = str(tmp_path / "g.onnx")
    # conv1's bias as an Add: relu1 is then no Conv -> Relu -> Conv the QDQ route centres (onnx_center), which
    # would put a Pad between r1 and dwconv
    m = onnx_graph([("Conv", ["x", "w1"], ["c0"], {"pads": [1, 1, 1, 1], "name": "conv1"}),
                    ("Add", ["c0", "b1"], ["c1"], {"name": "bias1"}),
                    ("Relu", ["c1"], ["r1"], {"name": "relu1"}),
                    ("Conv", ["r1", "dw"], ["c2"], {"pads": [1, 1, 1, 1], "group": 8, "name": "dwconv"}),
                    ("Relu", ["c2"], ["r2"], {"name": "relu2"}),
                    ("Conv", ["r2", "w3"], ["c3"], {"name": "conv3"}),
                    ("Conv", ["r2", "w4"], ["c4"], {"name": "conv4"}),
                    ("Add", ["c3", "c4"], ["y"], {"name": "add"})],
                   {"x": [1, 3, 8, 8]}, {"y": [1, 8, 8, 8]}, weights, path=src)
    x = rng.standard_normal((16, 3, 8, 8)).astype(np.float32)
    j = Job(src, "onnx", None, [{"name": "x", "shape": [1, 3, 8, 8], "dtype": "float32"}], [{"name": "y"}],
            {"x": x}, "int8", str(tmp_path), onnx_model=m, options={})

    def build(exclude):
        q = onnx.load_from_string(onnx_qdq.convert(j, Recipe(float_layers=exclude))[0]["data"])
        return {n.name: list(n.input) for n in q.graph.node}, {n.input[0] for n in q.graph.node
                                                               if n.op_type == "QuantizeLinear"}
    ins, quantized = build([])
    assert {"x", "r1", "r2"} <= quantized and "r1" not in ins["dwconv"]  # plain: every activation INT8
    ins, quantized = build(["dwconv", "conv3"])
    assert ins["dwconv"][0] == "r1" and ins["relu1"][0] == "c1"  # relu1 joined dwconv: float from conv1 on
    assert "r1" not in quantized and "c1" not in quantized
    assert ins["conv3"][0] == "r2" and ins["conv4"][0] != "r2"  # conv4 (INT8) keeps its Q/DQ on r2
    assert "r2" in quantized and ins["relu2"][0] == "c2"  # relu2 has an INT8 reader: quantized, not joined
    assert "x" in quantized and ins["conv1"][0] != "x"  # conv1 stays INT8


def test_qdq_recovery_fmnist_jetson(onnx_cnn, fm_data, tmp_path):
    """QDQ (Jetson) recovery end to end on the Fashion-MNIST CNN with an SQNR target plain INT8 misses (plain
    ~41 dB): the recipes are tried, then layers kept in float, which read float activations."""
    import onnx
    r = edgeopt_cli("convert", onnx_cnn, "--target", "jetson", "--calib", fm_data["calib_nchw"], "--val",
                    fm_data["val_nchw"], "--accuracy-target", "sqnr=45", "--out", tmp_path / "o", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads(r.stdout)
    rec = m["recovery"]
    steps = rec["steps"]
    assert not steps[0]["met"] and steps[0]["accuracy"]["logits"]["sqnr_db"] < 45
    assert steps[1]["recipe"]["calibration_method"] == "percentile" and steps[1]["recipe"]["calibration_samples"] == 64
    assert [s for s in steps if "error" in s] == []  # every recipe and candidate was built and measured
    bc = [s for s in steps if s.get("recipe", {}).get("bias_correction") and not s.get("float_layers")
          and "skipped" not in s]  # bias correction is in the default recipe: the plain step has it too
    assert bc and all("error" not in s and s["accuracy"]["logits"]["sqnr_db"] > 30 for s in bc), bc
    # the costlier all-INT8 rounding (QDQ's gptq_act) before any float layer
    act = [i for i, s in enumerate(steps) if s.get("recipe", {}).get("weight_rounding") == "gptq_act"]
    first_float = min(i for i, s in enumerate(steps) if s.get("float_layers"))
    assert act and act[0] < first_float and not steps[act[0]].get("float_layers"), steps
    assert steps[act[0]]["accuracy"]["logits"]["sqnr_db"] > 30
    floats = rec["chosen"]["float_layers"]
    # the default budget: 10% of the 4 quantizable layers (Conv, Conv, Gemm, Gemm), at least 1
    assert rec["budget"]["max_float_layers"] == 1 and rec["budget"]["float_candidates"] == 4
    assert rec["met"] and len(floats) == 1 and m["accuracy"]["outputs"]["logits"]["sqnr_db"] >= 45
    assert m["calibration"]["recipe"]["float_layers"] == len(floats)
    lo, hi = rec["chosen"]["top1_ci95"]["logits"]
    # chosen on the even-indexed half of the 1000 validation samples, claimed on the odd-indexed half
    assert rec["chosen"]["confirmation_samples"] == m["accuracy"]["samples"] == 500
    assert rec["split"]["selection_samples"] + rec["split"]["confirmation_samples"] == 1000
    assert rec["chosen"]["selection"]["accuracy"]["logits"]["sqnr_db"] >= 45
    assert lo < m["accuracy"]["outputs"]["logits"]["top1_agreement"] <= hi and hi - lo < 0.03
    # every candidate the sensitivity pass tried is a compute node, not an activation or data movement
    assert {x["layer"].rsplit("/", 1)[-1] for x in rec["sensitivity"]["layers"]} <= {"Conv", "Gemm"}
    q = onnx.load(str(tmp_path / "o" / "model.int8.qdq.onnx"))
    by_out = {o: n for n in q.graph.node for o in n.output}
    for n in q.graph.node:
        if n.name in floats:  # float weights and float input: TensorRT runs it in FP16
            assert all(by_out[t].op_type != "DequantizeLinear" for t in n.input if t in by_out)
    assert rec["cost"]["size_ratio"] < 1.1
    got = edgeopt.runtime.load(str(tmp_path / "o"))
    xv = np.load(fm_data["val_nchw"])[:200]
    import onnxruntime as ort
    ref = ort.InferenceSession(onnx_cnn, providers=["CPUExecutionProvider"]).run(None, {"image": xv})[0]
    (y,) = got.run(xv)
    assert 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - y) ** 2)) > 44  # what the manifest says, in the runtime
