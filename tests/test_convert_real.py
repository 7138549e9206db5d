"""Real models through the real converters and runtimes (Fashion-MNIST CNNs, EfficientNet-Lite0)."""
import filecmp
import json
import os
import shutil

import numpy as np
import pytest

import edgeopt
import edgeopt.runtime
from edgeopt_testkit import edgeopt_cli, models, save_arrays
from edgeopt.errors import GateError, UsageError

pytestmark = pytest.mark.slow


def _fp32_keras(path, x):
    import keras
    return np.asarray(keras.models.load_model(path, compile=False).predict(x, batch_size=500, verbose=0))


def _fp32_onnx(path, x):
    import onnxruntime as ort
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


CASES = [("keras", "rpi"), ("keras", "coral"), ("onnx", "rpi"), ("onnx", "coral"), ("onnx", "jetson")]


@pytest.fixture(scope="module")
def converted(tmp_path_factory, keras_cnn, onnx_cnn, fm_data):
    out = {}
    root = tmp_path_factory.mktemp("conv")
    for src, tgt in CASES:
        model = keras_cnn if src == "keras" else onnx_cnn
        layout = "nhwc" if src == "keras" else "nchw"
        out[(src, tgt)] = edgeopt.convert(model, target=tgt, calib=fm_data[f"calib_{layout}"],
                                          val=fm_data[f"val_{layout}"], out=str(root / f"{src}-{tgt}"))
    return out


@pytest.mark.parametrize("src,tgt", CASES)
def test_fmnist_int8_accuracy_within_one_point(converted, fmnist, keras_cnn, onnx_cnn, src, tgt):
    """Artifacts load and run in ai_edge_litert / onnxruntime; INT8 test accuracy within 1 point of FP32."""
    _, _, xte, yte = fmnist
    m = converted[(src, tgt)]
    out = m["_out"]
    x = xte[:, :, :, None] if src == "keras" else xte[:, None]
    fp32 = _fp32_keras(keras_cnn, x) if src == "keras" else _fp32_onnx(onnx_cnn, x)
    acc32 = float(np.mean(np.argmax(fp32, 1) == yte))
    assert acc32 > 0.75, acc32  # the models are really trained
    for a in m["artifacts"]:
        model = edgeopt.runtime.load(out, artifact=a["file"])
        assert model.runtime["name"] == ("onnxruntime" if a["format"] == "onnx" else "ai_edge_litert")
        (logits,) = model.predict(x, batch_size=1000)
        acc = float(np.mean(np.argmax(logits, 1) == yte))
        print(f"{src}->{tgt} {a['file']}: fp32 {acc32:.4f} artifact {acc:.4f}")
        assert abs(acc - acc32) <= 0.01, (a["file"], acc32, acc)
        assert a["accuracy"]["logits"]["top1_agreement"] >= 0.97
        assert a["accuracy"]["logits"]["sqnr_db"] > 15
    assert m["accuracy"]["samples"] == 1000 and m["accuracy"]["data"]["held_out"] is False


def test_manifest_fields_per_target(converted):
    rpi = converted[("onnx", "rpi")]
    a = rpi["artifacts"][0]
    assert rpi["schema"] == 1 and rpi["source"]["format"] == "onnx" and len(rpi["source"]["sha256"]) == 64
    assert a["file"] == "model.int8.tflite" and a["precision"] == "int8"
    assert a["inputs"][0]["dtype"] == "float32"  # rpi: float I/O by default
    assert a["inputs"][0]["perm"] == [0, 2, 3, 1] and a["inputs"][0]["shape"] == [1, 28, 28, 1]
    assert a["inputs"][0]["source_shape"] == [1, 1, 28, 28]
    assert rpi["calibration"]["samples"] == 200 and rpi["calibration"]["source"] == "calib_nchw.npy"
    assert {"tensorflow", "onnx2tf", "onnx", "onnxruntime"} <= set(rpi["toolchain"])
    on_disk = json.load(open(os.path.join(rpi["_out"], "manifest.json")))
    assert on_disk["artifacts"][0]["sha256"] == a["sha256"] and "_out" not in on_disk

    coral = converted[("keras", "coral")]
    ci = coral["artifacts"][0]["inputs"][0]
    assert ci["dtype"] == "uint8" and ci["shape"] == [1, 28, 28, 1] and ci["perm"] is None
    tpu = coral["edgetpu"]
    assert tpu["summary"]["ops"] == len(tpu["ops"]) > 3
    assert tpu["summary"]["cpu_ops"] == 0, tpu["ops"]  # a plain CNN maps entirely
    assert tpu["compiler"]["available"] is False and "edgetpu_compiler" in tpu["compiler"]["note"]

    jet = converted[("onnx", "jetson")]
    assert [a["precision"] for a in jet["artifacts"]] == ["int8", "fp16"]
    assert [a["format"] for a in jet["artifacts"]] == ["onnx", "onnx"]


def test_qdq_is_symmetric_zero_point(converted):
    import onnx
    from onnx import numpy_helper
    jet = converted[("onnx", "jetson")]
    m = onnx.load(os.path.join(jet["_out"], "model.int8.qdq.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    qnodes = [n for n in m.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(qnodes) >= 10
    zps = [inits[n.input[2]] for n in qnodes if len(n.input) > 2]
    assert zps and all(not np.any(z) for z in zps)  # symmetric: every zero point is 0
    assert {z.dtype for z in zps} <= {np.dtype(np.int8), np.dtype(np.int32)}  # int8 tensors, int32 biases
    assert any(z.dtype == np.int8 for z in zps)
    per_channel = [n for n in qnodes if len(inits.get(n.input[1], np.zeros(1)).shape) == 1
                   and inits[n.input[1]].size > 1]
    assert per_channel, "weights are quantized per channel"


def test_reproducible_byte_identical(tmp_path, onnx_cnn, fm_data):
    a = edgeopt.convert(onnx_cnn, target="rpi", calib=fm_data["calib_nchw"], out=str(tmp_path / "a"))
    b = edgeopt.convert(onnx_cnn, target="rpi", calib=fm_data["calib_nchw"], out=str(tmp_path / "b"))
    for f in ("model.int8.tflite", "manifest.json"):
        assert filecmp.cmp(tmp_path / "a" / f, tmp_path / "b" / f, shallow=False), f
    assert a["artifacts"][0]["sha256"] == b["artifacts"][0]["sha256"]
    assert "created" not in a


def test_source_date_epoch(tmp_path, keras_cnn, fm_data, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    m = edgeopt.convert(keras_cnn, target="rpi", calib=fm_data["calib_nhwc"], out=str(tmp_path / "k"))
    assert m["created"] == "2023-11-14T22:13:20Z"
    assert int(os.path.getmtime(tmp_path / "k" / "model.int8.tflite")) == 1700000000


def test_gate_fails_with_artifacts_kept(tmp_path, onnx_cnn, fm_data):
    r = edgeopt_cli("convert", onnx_cnn, "--target", "rpi", "--calib", fm_data["calib_nchw"], "--min-top1", "1.01",
                    "--out", tmp_path / "g", "--json")
    assert r.returncode == 1, r.stderr
    assert "error: accuracy gate failed" in r.stderr and "top-1 agreement" in r.stderr
    m = json.loads(r.stdout)  # --json: the manifest still comes out on stdout
    assert m["accuracy"]["gate"]["passed"] is False
    assert (tmp_path / "g" / "model.int8.tflite").exists() and (tmp_path / "g" / "manifest.json").exists()
    with pytest.raises(GateError):
        edgeopt.convert(onnx_cnn, target="rpi", calib=fm_data["calib_nchw"], out=str(tmp_path / "g2"), min_sqnr=200)
    ok = edgeopt.convert(onnx_cnn, target="rpi", calib=fm_data["calib_nchw"], out=str(tmp_path / "g3"), min_sqnr=10)
    assert ok["accuracy"]["gate"]["passed"] is True


def test_random_calibration_is_loud(tmp_path, onnx_cnn):
    r = edgeopt_cli("convert", onnx_cnn, "--target", "rpi", "--calib", "random", "--out", tmp_path / "r", "--json")
    assert r.returncode == 0, r.stderr
    assert "warning: calibration used random data" in r.stderr
    m = json.loads(r.stdout)
    assert m["calibration"]["source"] == "random" and "warning" in m["calibration"]


def test_saved_model_and_tflite_passthrough(tmp_path, keras_cnn, fm_data, converted):
    import keras
    sm = str(tmp_path / "sm")
    keras.models.load_model(keras_cnn, compile=False).export(sm)
    m = edgeopt.convert(sm, target="rpi5", calib=fm_data["calib_nhwc"], out=str(tmp_path / "smo"))
    assert m["source"]["format"] == "saved_model"
    assert next(iter(m["accuracy"]["outputs"].values()))["top1_agreement"] >= 0.95

    # an INT8 .tflite passes through for Coral and is described
    int8 = os.path.join(converted[("keras", "coral")]["_out"], "model.int8.tflite")
    p = edgeopt.convert(int8, target="coral", out=str(tmp_path / "pt"))
    assert p["source"]["format"] == "tflite" and p["artifacts"][0]["precision"] == "int8"
    assert p["artifacts"][0]["sha256"] == converted[("keras", "coral")]["artifacts"][0]["sha256"]
    assert p["edgetpu"]["summary"]["cpu_ops"] == 0

    # a float .tflite is refused for Coral with a hint
    import tensorflow as tf
    flt = tmp_path / "float.tflite"
    flt.write_bytes(tf.lite.TFLiteConverter.from_keras_model(keras.models.load_model(keras_cnn)).convert())
    r = edgeopt_cli("convert", flt, "--target", "coral", "--out", tmp_path / "f")
    assert r.returncode == 2 and "cannot run on the Edge TPU" in r.stderr and "hint:" in r.stderr


def test_image_folder_calibration(tmp_path, onnx_cnn, fmnist):
    from PIL import Image
    _, _, xte, _ = fmnist
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(30):
        Image.fromarray((xte[i] * 255).astype(np.uint8)).resize((56, 56)).save(d / f"{i:03d}.png")
    m = edgeopt.convert(onnx_cnn, target="rpi", calib=str(d), out=str(tmp_path / "o"))
    assert m["calibration"]["kind"] == "images" and m["calibration"]["samples"] == 24  # 6 held out
    assert m["accuracy"]["data"]["held_out"] is True
    assert m["accuracy"]["outputs"]["logits"]["top1_agreement"] >= 0.8


# ----------------------------------------------------------------------------- EfficientNet-Lite0

@pytest.fixture(scope="module")
def lite0(tmp_path_factory):
    d = tmp_path_factory.mktemp("lite0")
    onnx_path = models.efficientnet_lite0(str(d / "efficientnet_lite0.onnx"))
    photos = (models.sample_photos(48) - 0.5) / 0.5
    save_arrays(d, calib=photos[:40].astype(np.float32), val=photos[40:].astype(np.float32))
    return d, onnx_path


def test_efficientnet_lite0_offline_all_families(lite0):
    """A real pretrained model converts for all three families, with the network cut off (unshare -n)."""
    d, onnx_path = lite0
    if not shutil.which("unshare"):
        pytest.skip("unshare not available")
    for tgt in ("rpi", "coral", "jetson"):
        r = edgeopt_cli("convert", onnx_path, "--target", tgt, "--calib", d / "calib.npy", "--val", d / "val.npy",
                        "--out", d / tgt, "--json", prefix=("unshare", "-n"))
        assert r.returncode == 0, r.stderr[-3000:]
        m = json.loads(r.stdout)
        logits = m["accuracy"]["outputs"]["logits"]
        print(tgt, logits)
        assert logits["cosine"] > 0.9, logits
        model = edgeopt.runtime.load(str(d / tgt))
        x = np.load(d / "val.npy")
        (out,) = model.run(x[:2])
        assert out.shape == (2, 1000) and np.all(np.isfinite(out))
    assert not any(f.startswith("calibration_image_sample_data") for f in os.listdir(d))


def test_unquantizable_op_named_then_float_fallback(tmp_path):
    """An op without an int8 kernel (CUMSUM) is named; --allow-float-fallback keeps it in float, recorded."""
    import tensorflow as tf

    class M(tf.Module):
        def __init__(self):
            self.w = tf.Variable(np.random.default_rng(0).standard_normal((16, 16)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, 16], tf.float32, name="x")])
        def serve(self, x):
            return {"y": tf.matmul(tf.math.cumsum(tf.matmul(x, self.w), axis=1), self.w)}

    m = M()
    sm = str(tmp_path / "sm")
    tf.saved_model.save(m, sm, signatures={"serving_default": m.serve})
    calib = tmp_path / "c.npy"
    np.save(calib, np.random.default_rng(1).standard_normal((50, 16)).astype(np.float32))
    r = edgeopt_cli("convert", sm, "--target", "rpi", "--calib", calib, "--out", tmp_path / "o")
    assert r.returncode == 2 and "cannot be quantized to INT8: CUMSUM" in r.stderr and "--allow-float-fallback" in r.stderr
    assert not (tmp_path / "o").exists()
    man = edgeopt.convert(sm, target="rpi", calib=str(calib), out=str(tmp_path / "o"), allow_float_fallback=True)
    assert man["artifacts"][0]["float_ops"] == ["CUMSUM"] and man["options"]["allow_float_fallback"] is True
    with pytest.raises(UsageError, match="not possible for Coral"):
        edgeopt.convert(sm, target="coral", calib=str(calib), out=str(tmp_path / "c"), allow_float_fallback=True)


def test_io_override(tmp_path, onnx_cnn, fm_data, fmnist):
    """--io int8 on rpi gives int8 I/O tensors; edgeopt.runtime still takes and returns floats."""
    m = edgeopt.convert(onnx_cnn, target="rpi", calib=fm_data["calib_nchw"], out=str(tmp_path / "o"), io="int8")
    a = m["artifacts"][0]
    assert a["inputs"][0]["dtype"] == "int8" and a["outputs"][0]["dtype"] == "int8"
    assert a["inputs"][0]["scale"] > 0 and m["target"]["io_dtype"] == "int8"
    _, _, xte, yte = fmnist
    (logits,) = edgeopt.runtime.load(m["_out"]).predict(xte[:500, None])
    assert logits.dtype == np.float32 and np.mean(np.argmax(logits, 1) == yte[:500]) > 0.7
