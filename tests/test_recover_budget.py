"""--accuracy-target stays INT8 and reports honest numbers: the float-layer budget (--max-float-layers, the size
cap of the default budget), the selection / confirmation split of the validation samples, and the refusal of a
top-1 target the confirmation samples cannot resolve. Fast tests on tiny named ONNX models (Jetson QDQ route);
one slow one on the Fashion-MNIST CNN."""
import json

import numpy as np
import pytest

import edgeopt
import edgeopt.runtime
from edgeopt.conversion import recover
from edgeopt.errors import GateError, UsageError
from edgeopt_testkit import edgeopt_cli, onnx_graph, save_arrays


# ----------------------------------------------------------------------------------------------- units

def test_parse_max_float_layers_and_budget():
    assert recover.parse_max_float_layers(None) is None
    assert recover.parse_max_float_layers("3") == {"layers": 3} == recover.parse_max_float_layers(3)
    assert recover.parse_max_float_layers("0") == {"layers": 0}
    assert recover.parse_max_float_layers("25%") == {"percent": 25.0}
    for bad in ("-1", "2.5", "abc", "150%", "x%", True, "inf", "nan", "1e400"):
        with pytest.raises(UsageError, match="--max-float-layers"):
            recover.parse_max_float_layers(bad)
    # default: 10% of the quantizable layers, rounded down, at least 1
    assert recover.float_budget(None, 69)[0] == 6 and recover.float_budget(None, 60)[0] == 6
    assert recover.float_budget(None, 9)[0] == 1 and recover.float_budget(None, 4)[0] == 1
    assert "default" in recover.float_budget(None, 4)[1]
    assert recover.float_budget({"percent": 50.0}, 9)[0] == 4
    assert recover.float_budget({"percent": 0.0}, 9)[0] == 0
    assert recover.float_budget({"layers": 5}, 3) == (3, "--max-float-layers 5")


def test_split_and_resolution_rule():
    # the target must allow >= 2 disagreements among the confirmation samples: n >= 2 / (1 - top1)
    assert recover.confirmation_needed(0.98) == 100 and recover.confirmation_needed(0.99) == 200
    assert recover.confirmation_needed(0.9) == 20 and recover.confirmation_needed(1.0) is None
    s = recover.split_samples(200, {"top1": 0.98})
    sel, conf = s["selection"], s["confirmation"]
    assert len(sel) == len(conf) == 100 and not set(sel) & set(conf) and sorted([*sel, *conf]) == list(range(200))
    assert list(sel[:3]) == [0, 2, 4] and list(conf[:3]) == [1, 3, 5]  # interleaved, deterministic
    with pytest.raises(UsageError, match="200 validation samples are needed") as e:
        recover.split_samples(199, {"top1": 0.98})
    assert "(99)" in str(e.value) and "top1=0.979" in e.value.hint  # what the given samples would resolve
    with pytest.raises(UsageError, match="4000 validation samples are needed") as e:
        recover.split_samples(1000, {"top1": 0.999}, max_val_samples=1000)
    assert "--max-val-samples" in str(e.value)
    with pytest.raises(UsageError, match="no number of samples"):
        recover.split_samples(5000, {"top1": 1.0})
    with pytest.raises(UsageError, match="at least 2"):
        recover.split_samples(1, {"sqnr": 30.0})
    assert len(recover.split_samples(3, {"sqnr": 30.0})["confirmation"]) == 1  # SQNR needs no count


# ------------------------------------------------------------------------------------- tiny models

@pytest.fixture(scope="module")
def three_layers(tmp_path_factory):
    """conv1 -> relu -> conv2 -> relu -> GAP -> fc, named: four float candidates (conv1, conv2, gap, fc), logits
    (1, 10); calibration (40) and validation (60) samples."""
    d = tmp_path_factory.mktemp("budget")
    rng = np.random.default_rng(7)
    w = {"w1": rng.standard_normal((16, 3, 3, 3)).astype(np.float32) * 0.3,
         "w2": rng.standard_normal((32, 16, 3, 3)).astype(np.float32) * 0.1,
         "fw": rng.standard_normal((32, 10)).astype(np.float32) * 0.3}
    path = str(d / "three.onnx")
    onnx_graph([("Conv", ["x", "w1"], ["c1"], {"pads": [1, 1, 1, 1], "name": "conv1"}),
                ("Relu", ["c1"], ["r1"], {"name": "relu1"}),
                ("Conv", ["r1", "w2"], ["c2"], {"pads": [1, 1, 1, 1], "name": "conv2"}),
                ("Relu", ["c2"], ["r2"], {"name": "relu2"}),
                ("GlobalAveragePool", ["r2"], ["g"], {"name": "gap"}),
                ("Flatten", ["g"], ["f"], {"name": "flat"}),
                ("Gemm", ["f", "fw"], ["logits"], {"name": "fc"})],
               {"x": [1, 3, 8, 8]}, {"logits": [1, 10]}, w, path=path, name="three")
    files = save_arrays(d, calib=rng.standard_normal((40, 3, 8, 8)).astype(np.float32),
                        val=rng.standard_normal((60, 3, 8, 8)).astype(np.float32))
    return d, path, files


def _convert(three_layers, out, **kw):
    d, path, files = three_layers
    try:
        return edgeopt.convert(path, "jetson", calib=files["calib"], val=files["val"], out=str(d / out), **kw), None
    except GateError as e:
        return e.result, e


def _float_nodes(out_dir) -> set:
    """Compute nodes of the written QDQ model whose weights are float (no DequantizeLinear feeds them)."""
    import onnx
    q = onnx.load(str(out_dir / "model.int8.qdq.onnx"))
    made_by = {o: n.op_type for n in q.graph.node for o in n.output}
    return {n.name for n in q.graph.node if n.op_type in ("Conv", "Gemm")
            and made_by.get(n.input[1]) != "DequantizeLinear"}


def test_tie_band_ranks_close_top1_by_sqnr():
    """Two all-INT8 candidates a sample or two apart in top-1 agreement on the selection samples are a tie,
    decided by output SQNR: one binomial standard error of the lower agreement (MobileNetV2 jetson: gptq_act
    0.85 / 19.1 dB against GPTQ's 0.86 / 18.3 on 100 crops was dropped, and was 0.93 / 19.0 against 0.85 / 17.0
    on 200 held-out crops). An SQNR target, or no sample count, ties exact scores only."""
    acc = {"logits": {"top1_agreement": 0.86, "sqnr_db": 18.3}}
    band = recover.tie_band(acc, {"top1": 0.98}, 100)
    assert band == pytest.approx((0.86 * 0.14 / 100) ** 0.5) and 0.03 < band < 0.04
    assert recover.tie_band(acc, {"top1": 0.98}, 400) == pytest.approx(band / 2)
    assert recover.tie_band(acc, {"sqnr": 30.0}, 100) == 0.0 and recover.tie_band(acc, {"top1": 0.98}, None) == 0.0
    two = {"a": {"top1_agreement": 0.99}, "b": {"top1_agreement": 0.5}}   # the lowest output's agreement
    assert recover.tie_band(two, {"top1": 0.9}, 100) == pytest.approx(0.05)


def test_search_takes_no_float_layer_that_meets_top1_by_noise():
    """A float layer whose candidate meets top1=0.98 on the selection samples with a lower output SQNR than the
    all-INT8 one met it by which near-ties flipped (Lite0 rpi: 0.99 on 100 selection crops at -0.15 dB, 0.96 on
    200 held-out ones, below the all-INT8 0.97): not taken; the layers that gain SQNR are, fewest first."""
    def acc(top1, sqnr):
        return {"logits": {"top1_agreement": top1, "sqnr_db": sqnr, "cosine": 0.999}}
    from edgeopt.conversion.options import Recipe
    recipe = Recipe()
    effect = {"noisy": acc(0.99, 25.8), "a": acc(0.97, 26.5), "b": acc(0.97, 26.4), "c": acc(0.96, 26.1)}
    built = []

    def build(floats):
        built.append(tuple(floats))
        if len(floats) == 1:
            return {"art": {"data": b"x"}, "acc": effect[floats[0]], "float": list(floats), "recipe": recipe}
        gain = sum(effect[f]["logits"]["sqnr_db"] - 26.0 for f in floats if f != "noisy")
        return {"art": {"data": b"x"}, "acc": acc(0.98 if gain >= 0.8 else 0.97, 26.0 + gain), "float": list(floats),
                "recipe": recipe}

    best = {"art": {"data": b"x"}, "acc": acc(0.97, 26.0), "float": []}
    report, steps = {}, []
    found = recover._search(build, best, ["noisy", "a", "b", "c"], {"top1": 0.98}, lambda m: None, steps, report,
                            budget=3)
    assert found["float"] == ["a", "b"] and found["acc"]["logits"]["sqnr_db"] > 26.0
    assert [r["layer"] for r in report["sensitivity"]["layers"]] == ["a", "b", "c", "noisy"]
    assert ("noisy",) in built   # measured, and meets top1 alone, but is not what is returned
    assert recover._fits(found, {"top1": 0.98}, None, 26.0)
    # no candidate that gains meets the target: the best one tried is reported, and may not be returned
    effect["a"], effect["b"], effect["c"] = acc(0.97, 26.1), acc(0.97, 26.05), acc(0.96, 25.9)
    found = recover._search(build, best, ["noisy", "a", "b", "c"], {"top1": 0.98}, lambda m: None, [], {}, budget=3)
    assert found["float"] == ["noisy"] and not recover._fits(found, {"top1": 0.98}, None, 26.0)
    note = recover._budget_note({"max_float_layers": 3, "rule": "--max-float-layers 3"}, found, {"top1": 0.98}, 26.0)
    assert "met top1=0.98 on the selection samples with an output SQNR of 25.8 dB, not above the all-INT8" in note
    assert "near-ties" in note and "raise --max-float-layers" not in note


def test_budget_respected_best_int8_kept(three_layers):
    """sqnr=100 is reached only with all four candidates in float: a budget of 1 (the default) or 3 ends in a
    GateError naming the budget, with the best all-INT8 artifact written; a budget of 100% meets it."""
    d = three_layers[0]
    m, err = _convert(three_layers, "default", accuracy_target="sqnr=100")
    assert err is not None and err.exit_code == 1
    rec = m["recovery"]
    assert rec["budget"]["max_float_layers"] == 1 and rec["budget"]["float_candidates"] == 4
    assert "the budget allowed 1 float layer (the default, --max-float-layers 10% of the 4" in str(err)
    assert "raise --max-float-layers" in str(err) and "best all-INT8 artifact was kept" in str(err)
    assert not rec["met"] and rec["chosen"]["float_layers"] == [] and rec["chosen"]["recipe"]["float_layers"] == 0
    assert max(len(s.get("float_layers") or []) for s in rec["steps"]) == 1  # nothing over the budget was tried
    assert len(rec["best_float"]["float_layers"]) == 1 and not rec["best_float"]["met"]
    assert _float_nodes(d / "default") == set()  # the artifact written is all INT8
    assert m["calibration"]["recipe"]["float_layers"] == 0

    m, err = _convert(three_layers, "three", accuracy_target="sqnr=100", max_float_layers=3)
    assert err is not None and "the budget allowed 3 float layers (--max-float-layers 3)" in str(err)
    assert max(len(s.get("float_layers") or []) for s in m["recovery"]["steps"]) == 3
    assert m["recovery"]["chosen"]["float_layers"] == [] and _float_nodes(d / "three") == set()
    assert m["options"]["max_float_layers"] == {"layers": 3}

    m, err = _convert(three_layers, "all", accuracy_target="sqnr=100", max_float_layers="100%")
    assert err is None, str(err)
    rec = m["recovery"]
    assert rec["met"] and sorted(rec["chosen"]["float_layers"]) == ["conv1", "conv2", "fc", "gap"]
    assert _float_nodes(d / "all") == {"conv1", "conv2", "fc"}
    assert m["accuracy"]["outputs"]["logits"]["sqnr_db"] >= 100


def test_unmet_target_says_what_int8_weights_alone_reach(tmp_path):
    """A conv whose input holds one outlier per sample: one activation scale per tensor spends its codes on it
    (all-INT8 ~21 dB), while its INT8 weights alone keep ~44 dB. sqnr=30 is unmet within the default budget, and
    the report and the error say that the activations' INT8 is what misses it, not the weights."""
    rng = np.random.default_rng(3)
    path = str(tmp_path / "one.onnx")
    onnx_graph([("Conv", ["x", "w"], ["y"], {"pads": [1, 1, 1, 1], "name": "big"})], {"x": [1, 16, 8, 8]},
               {"y": [1, 64, 8, 8]}, {"w": rng.standard_normal((64, 16, 3, 3)).astype(np.float32) * 0.1},
               path=path, name="one")

    def data(n):
        x = rng.standard_normal((n, 16, 8, 8)).astype(np.float32)
        x[:, 0, 0, 0] = 300.0
        return x
    files = save_arrays(tmp_path, calib=data(20), val=data(40))
    with pytest.raises(GateError) as e:
        edgeopt.convert(path, "jetson", calib=files["calib"], val=files["val"], out=str(tmp_path / "a"),
                        accuracy_target="sqnr=30")
    rec = e.value.result["recovery"]
    weights_only = rec["weights_only"]["accuracy"]["y"]["sqnr_db"]
    int8 = max(s["accuracy"]["y"]["sqnr_db"] for s in rec["steps"] if "accuracy" in s and not s["float_layers"])
    assert rec["weights_only"]["met"] and weights_only > 40 and int8 < 25, (weights_only, int8)
    assert "with only its weights in INT8 (activations in float) the model reaches y: sqnr_db" in str(e.value)
    assert "what misses the target is the activations' INT8" in str(e.value)
    assert rec["chosen"]["float_layers"] == [] and sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "manifest.json", "model.fp16.onnx", "model.int8.qdq.onnx"]   # the reference is not written out


def test_default_budget_never_returns_a_float_model(tmp_path):
    """One large layer: keeping it in float meets any SQNR target but makes the artifact ~1x the FP32 size.
    The default budget (1 layer) refuses that (over 0.4x) and keeps the INT8 one; an explicit budget takes it."""
    rng = np.random.default_rng(3)
    path = str(tmp_path / "one.onnx")
    onnx_graph([("Conv", ["x", "w"], ["y"], {"pads": [1, 1, 1, 1], "name": "big"})], {"x": [1, 16, 8, 8]},
               {"y": [1, 64, 8, 8]}, {"w": rng.standard_normal((64, 16, 3, 3)).astype(np.float32) * 0.1},
               path=path, name="one")
    files = save_arrays(tmp_path, calib=rng.standard_normal((20, 16, 8, 8)).astype(np.float32),
                        val=rng.standard_normal((20, 16, 8, 8)).astype(np.float32))
    with pytest.raises(GateError) as e:
        edgeopt.convert(path, "jetson", calib=files["calib"], val=files["val"], out=str(tmp_path / "a"),
                        accuracy_target="sqnr=80")
    rec = e.value.result["recovery"]
    assert rec["best_float"]["float_layers"] == ["big"] and not rec["best_float"]["met"]
    assert rec["best_float"]["bytes"] > rec["budget"]["max_bytes"] == int(0.4 * rec["budget"]["fp32_bytes"])
    assert "over the 0.4x" in str(e.value) and "--max-float-layers 1" in str(e.value)
    # INT8 weights alone (~44 dB) miss sqnr=80 too: only float weights could meet it, and the message says so
    assert not rec["weights_only"]["met"] and 35 < rec["weights_only"]["accuracy"]["y"]["sqnr_db"] < 80
    assert "short of the target too: only layers with float weights can meet it" in str(e.value)
    assert rec["chosen"]["float_layers"] == [] and e.value.result["artifacts"][0]["bytes"] < rec["budget"]["max_bytes"]
    m = edgeopt.convert(path, "jetson", calib=files["calib"], val=files["val"], out=str(tmp_path / "b"),
                        accuracy_target="sqnr=80", max_float_layers=1)
    assert m["recovery"]["met"] and m["recovery"]["chosen"]["float_layers"] == ["big"]
    assert "max_bytes" not in m["recovery"]["budget"]  # the user raised the budget: no size cap


def test_claim_is_the_confirmations(three_layers):
    """The selection and confirmation counts add up; the manifest's accuracy and recovery.chosen are what the
    artifact scores on the odd-indexed (confirmation) samples, the selection numbers on the even ones."""
    import onnxruntime as ort

    d, path, files = three_layers
    m, err = _convert(three_layers, "split", accuracy_target="top1=0.9")
    rec, acc = m["recovery"], m["accuracy"]
    split = rec["split"]
    assert split["selection_samples"] + split["confirmation_samples"] == m["accuracy"]["data"]["samples"] == 60
    assert split["confirmation_samples"] == rec["chosen"]["confirmation_samples"] == acc["samples"] == 30
    assert acc["split"]["selection_samples"] == rec["chosen"]["selection"]["samples"] == 30

    x = np.load(files["val"])
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    ref = np.concatenate([session.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))])
    (got,) = edgeopt.runtime.load(str(d / "split")).run(x)

    def top1(idx):
        return float(np.mean(ref[idx].argmax(1) == got[idx].argmax(1)))
    conf, sel = np.arange(1, 60, 2), np.arange(0, 60, 2)
    claim = rec["chosen"]["accuracy"]["logits"]["top1_agreement"]
    assert claim == pytest.approx(top1(conf)) == acc["outputs"]["logits"]["top1_agreement"]
    assert rec["chosen"]["selection"]["accuracy"]["logits"]["top1_agreement"] == pytest.approx(top1(sel))
    assert acc["split"]["selection_outputs"] == rec["chosen"]["selection"]["accuracy"]
    assert rec["chosen"]["top1_ci95"]["logits"] == acc["top1_ci95"]["logits"] == recover.wilson(claim, 30)
    assert rec["met"] == (claim >= 0.9) and (err is None) == rec["met"]
    assert "confirmation" in rec["note"]


def test_cli_unresolvable_target_and_bad_budget_exit_2(three_layers, tmp_path):
    d, path, files = three_layers
    base = ["convert", path, "--target", "jetson", "--calib", files["calib"], "--val", files["val"]]
    # 60 validation samples: 30 confirm; top1=0.95 needs 2 / 0.05 = 40 of them, 80 validation samples
    r = edgeopt_cli(*base, "--accuracy-target", "top1=0.95", "--out", tmp_path / "o")
    assert r.returncode == 2 and r.stderr.startswith("error: --accuracy-target top1=0.95")
    assert "80 validation samples are needed" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()  # refused before converting
    r = edgeopt_cli(*base, "--accuracy-target", "sqnr=30", "--max-float-layers", "lots", "--out", tmp_path / "o")
    assert r.returncode == 2 and r.stderr.startswith("error: --max-float-layers 'lots'")
    r = edgeopt_cli(*base, "--max-float-layers", "2", "--out", tmp_path / "o")
    assert r.returncode == 2 and "give --accuracy-target too" in r.stderr
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------- Fashion-MNIST, slow

@pytest.mark.slow
def test_fmnist_jetson_budget(onnx_cnn, fm_data, tmp_path):
    """sqnr=51.5 on the Fashion-MNIST CNN (4 quantizable layers; plain ~44.6 dB, the last Gemm alone in float
    ~50.3 dB, both Gemms ~52.5 dB) needs 2 layers in float: the default budget (1) exits 1 with the all-INT8 artifact and says what 1
    float layer reached; --max-float-layers 2 meets it, confirmed on the 500 samples no choice saw."""
    args = ["convert", onnx_cnn, "--target", "jetson", "--calib", fm_data["calib_nchw"], "--val",
            fm_data["val_nchw"], "--accuracy-target", "sqnr=51.5", "--json"]
    r = edgeopt_cli(*args, "--out", tmp_path / "a")
    assert r.returncode == 1, r.stderr[-3000:]
    m = json.loads(r.stdout)
    rec = m["recovery"]
    assert rec["budget"]["max_float_layers"] == 1 and rec["budget"]["float_candidates"] == 4
    assert "the budget allowed 1 float layer" in r.stderr and "raise --max-float-layers" in r.stderr
    best = rec["best_float"]
    assert len(best["float_layers"]) == 1 and 48 < best["accuracy"]["logits"]["sqnr_db"] < 51.5
    assert f"sqnr_db {best['accuracy']['logits']['sqnr_db']:g}" in r.stderr  # what that candidate reached
    # the best all-INT8 artifact is kept: gptq_act's (~45.3 dB; gptq's plain ~44.6), far from 51.5
    assert rec["chosen"]["float_layers"] == [] and m["accuracy"]["outputs"]["logits"]["sqnr_db"] < 47
    assert m["calibration"]["recipe"]["weight_rounding"] in ("gptq", "gptq_act")
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["recovery"]["chosen"]["float_layers"] == []

    r = edgeopt_cli(*args, "--out", tmp_path / "b", "--max-float-layers", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads(r.stdout)
    rec = m["recovery"]
    assert rec["met"] and len(rec["chosen"]["float_layers"]) == 2
    assert rec["chosen"]["float_layers"][0] == best["float_layers"][0]  # the most sensitive one first
    assert rec["split"] == {"method": rec["split"]["method"], "selection_samples": 500, "confirmation_samples": 500,
                            "validation_samples": 1000}
    assert m["accuracy"]["samples"] == 500 and m["accuracy"]["outputs"]["logits"]["sqnr_db"] >= 51.5
    assert rec["chosen"]["selection"]["accuracy"]["logits"]["sqnr_db"] >= 51.5
    # the two Gemms hold most of this CNN's weights: a budget the user raised lifts the 0.4x size cap too
    assert rec["cost"]["size_ratio_fp32"] > 0.4


def test_float_layers_not_borne_out_give_the_all_int8_artifact(three_layers, tmp_path):
    """Float layers chosen on the selection half that miss the target on the confirmation half are not returned:
    exit 1 with the best all-INT8 artifact written, the float candidate's numbers on both halves recorded. The
    odd-indexed (confirmation) samples are 4x the calibration range, so what three float layers gain on the
    even-indexed ones (~53 dB against ~45 dB all-INT8) does not hold there (~8 dB)."""
    d, path, files = three_layers
    val = np.random.default_rng(0).standard_normal((60, 3, 8, 8)).astype(np.float32)
    val[1::2] *= 4
    own = save_arrays(tmp_path, calib=np.random.default_rng(1).standard_normal((40, 3, 8, 8)).astype(np.float32),
                      val=val)
    with pytest.raises(GateError) as e:
        edgeopt.convert(path, "jetson", calib=own["calib"], val=own["val"], out=str(tmp_path / "o"),
                        accuracy_target="sqnr=50", max_float_layers=3)
    assert e.value.exit_code == 1
    m = e.value.result
    rec = m["recovery"]
    best = rec["best_float"]
    assert len(best["float_layers"]) >= 2 and not best["met"]
    assert best["accuracy"]["logits"]["sqnr_db"] >= 50 > best["confirmation_accuracy"]["logits"]["sqnr_db"]
    # what is returned and written is the best all-INT8 candidate, claimed on the confirmation half
    assert rec["chosen"]["float_layers"] == [] and m["calibration"]["recipe"]["float_layers"] == 0
    assert _float_nodes(tmp_path / "o") == set()
    assert not rec["met"] and not rec["chosen"]["selection"]["met"] and "cost" not in rec
    assert m["accuracy"]["outputs"] == m["accuracy"]["by_artifact"][m["artifacts"][0]["file"]]
    assert m["accuracy"]["outputs"]["logits"]["sqnr_db"] == rec["chosen"]["accuracy"]["logits"]["sqnr_db"] < 50
    written = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert written["recovery"]["chosen"]["float_layers"] == [] and written["recovery"]["best_float"] == best
    msg = str(e.value)
    assert f"the {len(best['float_layers'])} float layers chosen on the 30 selection samples met sqnr=50" in msg
    assert "not on the 30 confirmation samples" in msg and "the best all-INT8 artifact was kept" in msg
