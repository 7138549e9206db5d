"""Control flow that depends on the data (edgeopt.converters.onnx_control): openWakeWord's wake-word models run
a verifier network in an If when the first score passes 0.5. onnx2tf failed on it with a KeyError; the Jetson
artifact labelled INT8 kept the verifier's weights in FP32. Now refused by name, or kept float on Jetson with
--allow-float-fallback."""
from __future__ import annotations

import json

import numpy as np

from edgeopt.converters import onnx_control
from edgeopt_testkit import assert_one_error, edgeopt_cli, onnx_graph, save_arrays


def _verifier_model(path=None, condition_from_shape=False):
    """x [1, 32] -> Gemm -> Sigmoid = p; if p >= 0.5 (or, with ``condition_from_shape``, if x has 32 columns):
    a second Gemm -> Sigmoid on x (the verifier, weights outside its branch as PyTorch exports them), else p."""
    from onnx import TensorProto, helper
    rng = np.random.default_rng(0)
    init = {"w": (rng.standard_normal((32, 1)) / 4).astype(np.float32), "b": np.zeros(1, np.float32),
            "v": (rng.standard_normal((32, 1)) / 4).astype(np.float32), "half": np.array(0.5, np.float32),
            "i1": np.array(1, np.int64), "n32": np.array(32, np.int64)}
    out = helper.make_tensor_value_info("o", TensorProto.FLOAT, [1, 1])
    then = helper.make_graph([helper.make_node("MatMul", ["x", "v"], ["t"]),
                              helper.make_node("Sigmoid", ["t"], ["o"])], "then", [], [out])
    other = helper.make_graph([helper.make_node("Identity", ["p"], ["o"])], "else", [], [out])
    nodes = [("Gemm", ["x", "w", "b"], ["g"]), ("Sigmoid", ["g"], ["p"])]
    if condition_from_shape:
        nodes += [("Shape", ["x"], ["s"]), ("Gather", ["s", "i1"], ["cols"]), ("Equal", ["cols", "n32"], ["cond"])]
    else:
        nodes += [("ReduceMax", ["p"], ["pm"], {"keepdims": 0}), ("GreaterOrEqual", ["pm", "half"], ["cond"])]
    nodes.append(helper.make_node("If", ["cond"], ["y"], name="verify", then_branch=then, else_branch=other))
    return onnx_graph(nodes, {"x": [1, 32]}, {"y": [1, 1]}, init, path=path, opset=13)


def test_an_if_on_the_data_is_found_and_one_on_shapes_is_not():
    assert onnx_control.data_dependent(_verifier_model()) == [
        {"node": "verify", "op": "If", "reason": "its branch is chosen by the model's data"}]
    assert onnx_control.data_dependent(_verifier_model(condition_from_shape=True)) == []


def test_an_if_on_the_data_is_refused_by_name_or_kept_float_on_jetson(tmp_path):
    src = tmp_path / "verifier.onnx"
    _verifier_model(src)
    rng = np.random.default_rng(1)
    files = save_arrays(tmp_path, calib=rng.standard_normal((32, 32)).astype(np.float32),
                        val=rng.standard_normal((16, 32)).astype(np.float32))
    for target in ("rpi", "jetson"):   # onnx2tf failed with a KeyError; the QDQ artifact kept the branch FP32
        out = tmp_path / f"o-{target}"
        assert_one_error(edgeopt_cli("convert", src, "--target", target, "--calib", files["calib"], "--val",
                                     files["val"], "--out", out), "verifier.onnx", "If 'verify'", "chosen by the model's data")
        assert not out.exists()
    out = tmp_path / "o-float"
    r = edgeopt_cli("convert", src, "--target", "jetson", "--calib", files["calib"], "--val", files["val"],
                    "--out", out, "--allow-float-fallback", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    art = json.loads((out / "manifest.json").read_text())["artifacts"][0]
    assert art["precision"] == "int8" and art["float_ops"] == ["If"]
