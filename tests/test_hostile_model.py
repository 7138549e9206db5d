"""Hostile model files: a Keras model whose file holds code (a Lambda layer) must never run it on load.

The attack (reproduced on the old code): Keras 3 refuses an .h5 with a Lambda layer in safe mode, and the
converter then fell back to tf_keras.models.load_model, which has no safe mode: the Lambda's code ran.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from edgeopt_testkit import assert_one_error, edgeopt_cli

# Builds the models in a child process (TensorFlow stays out of the test process). The Lambda writes the
# canary file whenever it is called: building the model calls it once, so the canary is removed after.
_BUILD = textwrap.dedent('''
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    kind, path, canary = sys.argv[1:4]

    def touch(x, canary=canary):
        open(canary, "w").write("the Lambda layer's code ran")
        return x * 2.0

    if kind == "h5-lambda":
        import tf_keras as k
        inp = k.Input((4,))
        k.Model(inp, k.layers.Dense(3)(k.layers.Lambda(touch)(inp))).save(path)
    elif kind == "keras-lambda":  # Keras 3 marshals a lambda's code (a named function is saved by name only)
        import keras as k
        fn = eval(f"lambda x: (open({canary!r}, 'w').write('the Lambda layer ran'), x * 2.0)[1]")
        inp = k.Input((4,))
        k.Model(inp, k.layers.Dense(3)(k.layers.Lambda(fn)(inp))).save(path)
    elif kind == "h5-plain":
        import tf_keras as k
        inp = k.Input((8, 8, 1))
        y = k.layers.Conv2D(4, 3, activation="relu")(inp)
        y = k.layers.Dense(3)(k.layers.Flatten()(y))
        k.Model(inp, y).save(path)
    if os.path.exists(canary):
        os.remove(canary)
''')


def _build(kind, path, canary):
    r = subprocess.run([sys.executable, "-c", _BUILD, kind, str(path), str(canary)], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert os.path.exists(path) and not os.path.exists(canary)




@pytest.fixture()
def calib4(tmp_path):
    p = tmp_path / "calib4.npy"
    np.save(p, np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32))
    return p


def test_h5_lambda_refused_and_its_code_never_runs(tmp_path, calib4):
    model, canary = tmp_path / "lambda.h5", tmp_path / "canary"
    _build("h5-lambda", model, canary)
    r = edgeopt_cli("convert", model, "--target", "rpi", "--calib", calib4, "--out", tmp_path / "o")
    err = assert_one_error(r, "lambda.h5", "Lambda layer", "--trust-model-code")
    assert not canary.exists(), "the Lambda layer's code ran while loading the model"
    assert not (tmp_path / "o").exists()
    assert "re-export" in err


def test_keras_lambda_refused_with_the_same_error(tmp_path, calib4):
    model, canary = tmp_path / "lambda.keras", tmp_path / "canary"
    _build("keras-lambda", model, canary)
    r = edgeopt_cli("convert", model, "--target", "rpi", "--calib", calib4, "--out", tmp_path / "o")
    assert_one_error(r, "lambda.keras", "Lambda layer", "--trust-model-code")
    assert not canary.exists()


@pytest.mark.slow
@pytest.mark.parametrize("kind,name", [("h5-lambda", "lambda.h5"), ("keras-lambda", "lambda.keras")])
def test_lambda_loads_with_trust_model_code(tmp_path, calib4, kind, name):
    model, canary = tmp_path / name, tmp_path / "canary"
    _build(kind, model, canary)
    code = ("import sys, json, edgeopt; m = edgeopt.convert(sys.argv[1], target='rpi', calib=sys.argv[2], "
            "out=sys.argv[3], trust_model_code=True); print(json.dumps(m['options']))")
    r = subprocess.run([sys.executable, "-c", code, str(model), str(calib4), str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert canary.exists(), "with trust_model_code the Lambda layer runs (it is part of the model)"
    assert json.loads(r.stdout.strip().splitlines()[-1])["trust_model_code"] is True
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["options"]["trust_model_code"] is True


@pytest.mark.slow
def test_plain_legacy_h5_still_converts(tmp_path):
    model, canary = tmp_path / "plain.h5", tmp_path / "canary"
    _build("h5-plain", model, canary)
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(0).random((12, 8, 8, 1)).astype(np.float32))
    r = edgeopt_cli("convert", model, "--target", "rpi", "--calib", calib, "--out", tmp_path / "o", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads(r.stdout)
    assert m["source"]["format"] == "keras" and m["artifacts"][0]["file"] == "model.int8.tflite"
    assert "trust_model_code" not in m["options"]


# ---------------------------------------------------------------- the inspection itself (no TensorFlow)

def test_code_risks_finds_nested_lambda_and_foreign_modules():
    from edgeopt.converters.keras_tflite import code_risks
    inner = {"class_name": "Sequential", "config": {"layers": [
        {"class_name": "TimeDistributed", "config": {"layer": {"class_name": "Lambda", "config": {"name": "sneaky"}}}}]}}
    cfg = {"class_name": "Functional", "config": {"layers": [
        {"class_name": "Dense", "module": "keras.layers", "config": {"name": "d"}},
        inner,
        {"class_name": "system", "module": "os", "config": {}},
        {"class_name": "MyLayer", "module": None, "registered_name": "mypkg>MyLayer", "config": {}}]}}
    risks = code_risks(cfg)
    assert sorted(risks) == ["Lambda layer 'sneaky'", "custom object mypkg>MyLayer", "custom object os.system"]
    assert code_risks({"class_name": "Functional", "config": {"layers": [
        {"class_name": "Conv2D", "module": "keras.layers", "config": {
            "kernel_initializer": {"module": "keras.initializers", "class_name": "GlorotUniform"}}}]}}) == []


def test_code_risks_survives_deep_nesting():
    from edgeopt.converters.keras_tflite import code_risks
    node = {"class_name": "Lambda", "config": {"name": "deep"}}
    for _ in range(5000):  # deeper than Python's recursion limit
        node = {"class_name": "Sequential", "config": {"layers": [node]}}
    assert code_risks(node) == ["Lambda layer 'deep'"]


def test_h5_without_model_config_is_a_usage_error(tmp_path):
    h5py = pytest.importorskip("h5py")
    from edgeopt.converters.keras_tflite import keras_config
    p = tmp_path / "weights.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("w", data=np.zeros(3))
    with pytest.raises(ValueError, match="no model_config"):
        keras_config(str(p))


@pytest.mark.parametrize("target", ["rpi", "jetson"])
def test_weights_that_overflow_float32_are_refused_before_converting(tmp_path, target):
    """A crafted model whose weights overflow float32 on real inputs (a 3e38 filter: its output is inf, the next
    layer's NaN) has no INT8 range and nothing to check against. It used to reach the runtime as an internal error
    (XNNPACK refused the scales, exit 1, with numpy overflow warnings); it is bad input: exit 2, one line naming the
    output, nothing written."""
    from edgeopt_testkit import onnx_graph, save_arrays
    rng = np.random.default_rng(0)
    w1 = np.abs(rng.standard_normal((8, 3, 1, 1))).astype(np.float32)
    w1[0] = 3e38
    path = str(tmp_path / "overflow.onnx")
    onnx_graph([("Conv", ["x", "w1"], ["h"], {}), ("Relu", ["h"], ["r"], {}), ("Conv", ["r", "w2"], ["y"], {})],
               {"x": [1, 3, 8, 8]}, {"y": [1, 4, 8, 8]},
               {"w1": w1, "w2": rng.standard_normal((4, 8, 1, 1)).astype(np.float32)}, path=path, name="overflow")
    files = save_arrays(tmp_path, calib=np.abs(rng.standard_normal((16, 3, 8, 8))).astype(np.float32))
    r = edgeopt_cli("convert", path, "--target", target, "--calib", files["calib"], "--out", tmp_path / "out")
    assert_one_error(r, "overflow.onnx: the FP32 model's output 'y' is not finite (inf or NaN) on 13 of the first 13 "
                        "calibration samples", "float32 overflow")
    assert "RuntimeWarning" not in r.stderr and not (tmp_path / "out").exists()
