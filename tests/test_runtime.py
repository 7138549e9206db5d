"""edgeopt.runtime: source-layout float I/O, quantization, batching, threads, delegates, clear errors."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from edgeopt import runtime as rt
from edgeopt_testkit import firmware


@pytest.fixture()
def nhwc_dir(tmp_path):
    return firmware.fake_out_dir(tmp_path / "out")


def test_source_layout_in_and_out(nhwc_dir):
    m = rt.load(nhwc_dir)
    assert [s.name for s in m.inputs] == ["image"] and m.inputs[0].source_shape == [1, 3, 8, 8]
    assert m.runtime["name"] == "onnxruntime" and m.runtime["provider"] == "CPUExecutionProvider"
    assert m.batch_size == 1
    x = np.random.default_rng(1).standard_normal((5, 3, 8, 8)).astype(np.float32)
    out = m(x)
    assert list(out) == ["features"]
    ref = firmware.reference_nhwc(x, os.path.join(nhwc_dir, "model.onnx"))
    assert out["features"].shape == (5, 4, 8, 8) and out["features"].dtype == np.float32
    np.testing.assert_allclose(out["features"], ref, rtol=1e-5, atol=1e-5)
    # one sample without its batch dimension, a dict by name, a list: the same numbers
    np.testing.assert_allclose(m(x[0])["features"], ref[:1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(m({"image": x})["features"], ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(m.run([x])[0], ref, rtol=1e-5, atol=1e-5)
    # float64 is accepted and cast
    np.testing.assert_allclose(m(x.astype(np.float64))["features"], ref, rtol=1e-5, atol=1e-5)


def test_batch_helpers(nhwc_dir):
    m = rt.load(nhwc_dir)
    x = np.random.default_rng(2).standard_normal((11, 3, 8, 8)).astype(np.float32)
    whole = m(x)["features"]
    (pred,) = m.predict(x, batch_size=4)
    np.testing.assert_array_equal(pred, whole)
    starts, parts = [], []
    for start, out in m.batches({"image": x}, batch_size=4):
        starts.append(start)
        parts.append(out["features"])
    assert starts == [0, 4, 8] and [p.shape[0] for p in parts] == [4, 4, 3]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    with pytest.raises(ValueError, match="batch_size"):
        m.predict(x, batch_size=0)


def test_quantize_dequantize_from_manifest(tmp_path):
    path = firmware.onnx_int8_io(str(tmp_path / "q.onnx"))
    entry = {"format": "onnx", "inputs": [{"name": "xq", "shape": [1, 6], "dtype": "int8", "scale": 0.5,
                                           "zero_point": 3}],
             "outputs": [{"name": "yq", "shape": [1, 6], "dtype": "int8", "scale": 0.25, "zero_point": -2}]}
    m = rt.Model(path, None, entry)
    assert m.inputs[0].source_dtype == "float32"
    x = np.array([[-3.0, -0.2, 0.0, 0.74, 1.26, 500.0]], np.float32)
    y = m(x)["yq"]
    # int8 input: round(x / 0.5) + 3 clipped to [-128, 127]; dequantized, relu, requantized with 0.25 / -2
    xq = np.clip(np.round(x / 0.5) + 3, -128, 127)
    expect = np.clip(np.round(np.maximum((xq - 3) * 0.5, 0) / 0.25) - 2, -128, 127)
    np.testing.assert_array_equal(y, ((expect + 2) * 0.25).astype(np.float32))
    assert y.dtype == np.float32 and y[0, -1] == 32.25  # saturated at 127 on both sides, nothing wraps


def test_wrong_shape_names_input_and_expected_shape(nhwc_dir):
    m = rt.load(nhwc_dir)
    with pytest.raises(rt.InputError) as e:
        m(np.zeros((2, 3, 9, 8), np.float32))
    assert str(e.value) == ("input 'image': expected shape [N, 3, 8, 8] (source layout, N = batch), "
                            "got [2, 3, 9, 8]")
    with pytest.raises(rt.InputError) as e:  # the artifact's NHWC layout given by mistake: said so
        m(np.zeros((2, 8, 8, 3), np.float32))
    msg = str(e.value)
    assert msg.startswith("input 'image': expected shape [N, 3, 8, 8]") and "got [2, 8, 8, 3]" in msg
    assert "artifact's layout [N, 8, 8, 3]" in msg
    with pytest.raises(rt.InputError, match=r"input 'image': expected shape \[N, 3, 8, 8\].*got \[8, 8\]"):
        m(np.zeros((8, 8), np.float32))


def test_wrong_dtype_and_names(nhwc_dir):
    m = rt.load(nhwc_dir)
    with pytest.raises(rt.InputError) as e:
        m(np.zeros((1, 3, 8, 8), np.uint8))
    assert str(e.value).startswith("input 'image': expected float32 values of shape [N, 3, 8, 8] (source layout), "
                                   "got dtype uint8")
    assert "astype(np.float32)" in str(e.value)
    with pytest.raises(rt.InputError, match="got dtype <U1"):
        m(np.array([["a"]]))
    with pytest.raises(rt.InputError, match=r"missing input\(s\) \['image'\]; unknown input\(s\) \['img'\]; "
                                            r"the model takes \['image'\]"):
        m({"img": np.zeros((1, 3, 8, 8), np.float32)})
    with pytest.raises(rt.InputError, match=r"takes 1 input\(s\) \['image'\], got 2"):
        m([np.zeros((1, 3, 8, 8), np.float32)] * 2)
    with pytest.raises(rt.InputError, match="empty batch"):
        m(np.zeros((0, 3, 8, 8), np.float32))


def test_threads(nhwc_dir, monkeypatch):
    monkeypatch.delenv("EDGEOPT_THREADS", raising=False)
    assert rt.load(nhwc_dir).threads == 1                      # the manifest's target (threads 1)
    assert rt.load(nhwc_dir, threads=2).threads == 2           # explicit wins
    monkeypatch.setenv("EDGEOPT_THREADS", "3")
    assert rt.load(nhwc_dir).threads == 3
    monkeypatch.setenv("EDGEOPT_THREADS", "many")
    with pytest.raises(ValueError, match="EDGEOPT_THREADS"):
        rt.load(nhwc_dir)
    monkeypatch.delenv("EDGEOPT_THREADS")
    mpath = os.path.join(nhwc_dir, "manifest.json")
    with open(mpath) as f:
        man = json.load(f)
    man["target"]["threads"] = 64
    with open(mpath, "w") as f:
        json.dump(man, f)
    assert rt.load(nhwc_dir).threads == min(64, os.cpu_count())  # never more than this machine has


def test_onnx_provider_choice(nhwc_dir):
    assert rt.load(nhwc_dir, provider="cpu").runtime["provider"] == "CPUExecutionProvider"
    with pytest.raises(rt.RuntimeMissing, match="TensorrtExecutionProvider not available"):
        rt.load(nhwc_dir, provider="tensorrt")
    opts = rt._OnnxBackend._provider_options("TensorrtExecutionProvider", os.path.join(nhwc_dir, "model.onnx"))
    assert opts["trt_fp16_enable"] == "True" and "trt_int8_enable" not in opts  # no QDQ in this model
    assert rt._OnnxBackend._provider_options("CPUExecutionProvider", "x.onnx") == {}


def test_load_errors(tmp_path, nhwc_dir):
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        rt.load(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no such file"):
        rt.load(str(tmp_path / "nope.tflite"))
    with pytest.raises(ValueError, match=r"no artifact 'other.onnx' \(have \['model.onnx'\]\)"):
        rt.load(nhwc_dir, artifact="other.onnx")
    with pytest.raises(FileNotFoundError, match="only in an unpacked `edgeopt bundle`"):
        rt.load()  # the repository's sdk/ has no manifest.json one level up


# ---------------------------------------------------------------------- TFLite delegate choice (fakes)

class _FakeInterp:
    made = []

    def __init__(self, model_path, experimental_delegates=None, num_threads=None):
        _FakeInterp.made.append({"path": model_path, "delegates": experimental_delegates, "threads": num_threads})

    def allocate_tensors(self):
        pass

    def get_input_details(self):
        return [{"name": "x", "index": 0, "shape": np.array([1, 4]), "dtype": np.uint8, "quantization": (0.5, 128)}]

    def get_output_details(self):
        return [{"name": "y", "index": 1, "shape": np.array([1, 2]), "dtype": np.uint8, "quantization": (0.1, 0)}]


@pytest.fixture()
def fake_tflite(monkeypatch):
    loaded = []

    def load_delegate(lib, options=None):
        loaded.append((lib, options))
        if not os.environ.get("FAKE_EDGETPU"):
            raise ValueError(f"Failed to load delegate from {lib}")
        return f"delegate:{lib}"

    _FakeInterp.made = []
    monkeypatch.setattr(rt, "import_tflite_interpreter", lambda: (_FakeInterp, load_delegate, "fake", "0"))
    return loaded


def _coral_dir(tmp_path, files):
    for f in files:
        (tmp_path / f).write_bytes(b"\0\0\0\0TFL3")
    arts = [{"file": f, "format": "tflite", "kind": "tflite-int8-edgetpu" if "edgetpu" in f else "tflite-int8",
             "inputs": [{"name": "x", "shape": [1, 4], "dtype": "uint8", "scale": 0.5, "zero_point": 128,
                         "index": 0}],
             "outputs": [{"name": "y", "shape": [1, 2], "dtype": "uint8", "scale": 0.1, "zero_point": 0, "index": 1}]}
            for f in files]
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"target": {"name": "coral-usb", "family": "coral", "delegate": "edgetpu", "threads": 1}, "artifacts": arts}))
    return str(tmp_path)


def test_edgetpu_delegate_for_compiled_artifact(tmp_path, fake_tflite, monkeypatch):
    d = _coral_dir(tmp_path, ["model.int8_edgetpu.tflite", "model.int8.tflite"])
    monkeypatch.setenv("FAKE_EDGETPU", "1")
    monkeypatch.setenv("EDGEOPT_EDGETPU_DEVICE", "usb:0")
    m = rt.load(d)
    assert m.runtime["delegate"] == "edgetpu" and m.threads == 1
    assert fake_tflite == [("libedgetpu.so.1", {"device": "usb:0"})]
    assert _FakeInterp.made[-1]["delegates"] == ["delegate:libedgetpu.so.1"]
    # the CPU artifact of the same Coral target does not ask for the Edge TPU
    fake_tflite.clear()
    cpu = rt.load(d, artifact="model.int8.tflite")
    assert fake_tflite == [] and cpu.runtime["delegate"] == "xnnpack" and _FakeInterp.made[-1]["delegates"] is None


def test_edgetpu_missing_is_a_clear_runtime_error(tmp_path, fake_tflite, monkeypatch):
    d = _coral_dir(tmp_path, ["model.int8_edgetpu.tflite"])
    monkeypatch.delenv("FAKE_EDGETPU", raising=False)
    monkeypatch.delenv("EDGEOPT_EDGETPU_DEVICE", raising=False)
    with pytest.raises(rt.RuntimeMissing) as e:
        rt.load(d)
    msg = str(e.value)
    assert msg.startswith("model.int8_edgetpu.tflite: the Edge TPU delegate could not be loaded")
    assert "libedgetpu1-std" in msg and "model.int8.tflite" in msg
    assert [lib for lib, _ in fake_tflite] == list(rt.EDGETPU_LIBS)


def test_other_delegate_by_library(tmp_path, fake_tflite, monkeypatch):
    d = _coral_dir(tmp_path, ["model.int8.tflite"])
    monkeypatch.setenv("FAKE_EDGETPU", "1")
    m = rt.load(d, delegate="/opt/armnn/libarmnnDelegate.so")
    assert m.runtime["delegate"] == "libarmnnDelegate.so"
    assert fake_tflite == [("/opt/armnn/libarmnnDelegate.so", None)]


# -------------------------------------------------------------------- the real Fashion-MNIST artifact

@pytest.mark.slow
def test_fmnist_rpi_artifact_in_process(onnx_cnn, work, fmnist):
    """The converted INT8 TFLite (NHWC inside) takes NCHW floats; its check on 10,000 images is reproduced."""
    out = firmware.fm_converted("rpi", onnx_cnn, work, fmnist)
    _, _, xte, yte = fmnist
    x = xte[:, None]
    m = rt.load(out)
    assert m.inputs[0].perm == [0, 2, 3, 1] and m.inputs[0].shape == [1, 28, 28, 1]
    assert m.runtime["name"] == "ai_edge_litert" and m.threads == min(4, os.cpu_count())
    logits = m(x)["logits"]
    assert logits.shape == (10000, 10)
    ref = firmware.fp32_reference(onnx_cnn, x)
    with open(os.path.join(out, "manifest.json")) as f:
        man = json.load(f)
    agree = float(np.mean(logits.argmax(1) == ref.argmax(1)))
    assert man["accuracy"]["samples"] == 10000
    assert agree == pytest.approx(man["accuracy"]["outputs"]["logits"]["top1_agreement"], abs=1e-6)
    acc = float(np.mean(logits.argmax(1) == yte))
    assert acc > 0.7, acc
    # batch helpers and thread counts do not change a single number
    np.testing.assert_array_equal(m.predict(x[:300], batch_size=64)[0], logits[:300])
    np.testing.assert_array_equal(rt.load(out, threads=1)(x[:300])["logits"], logits[:300])
    with pytest.raises(rt.InputError, match=r"input 'image': expected shape \[N, 1, 28, 28\].*got \[3, 28, 28, 1\]; "
                                            r"that is the artifact's layout"):
        m(x[:3].transpose(0, 2, 3, 1))


@pytest.mark.parametrize("shape", [(1, 3, 224, 224), (5, 1, 28, 28), (2, 32, 7, 9)])
def test_fast_transpose_is_exact(shape):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    y = rt._transpose(x, [0, 2, 3, 1])
    assert y.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(y, x.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(rt._transpose(x, [0, 3, 1, 2]), x.transpose(0, 3, 1, 2))


def test_load_and_run_samples(nhwc_dir, tmp_path):
    """Samples from a .npz (by input name; other arrays such as labels left out; one array under any name for a
    single-input model), a .npy or a dict; outputs in manifest order, written as output_0 ... by a rename."""
    m = rt.load(nhwc_dir)
    x = np.random.default_rng(4).standard_normal((3, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "named.npz", image=x, labels=np.arange(3))
    np.savez(tmp_path / "other.npz", pixels=x)
    np.save(tmp_path / "x.npy", x)
    for src in (tmp_path / "named.npz", tmp_path / "other.npz", str(tmp_path / "x.npy"), {"image": x, "labels": 0}):
        got = rt.load_samples(src, m)
        assert list(got) == ["image"]
        np.testing.assert_array_equal(got["image"], x)
    np.savez(tmp_path / "two.npz", a=x, b=x)
    with pytest.raises(rt.InputError, match=r"no array named 'image' \(it has \['a', 'b'\]\)"):
        rt.load_samples(tmp_path / "two.npz", m)
    np.save(tmp_path / "obj.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="Object arrays cannot be loaded"):  # never unpickled
        rt.load_samples(str(tmp_path / "obj.npy"), m)
    outs = rt.run_samples(m, tmp_path / "named.npz", str(tmp_path / "o.npz"))
    np.testing.assert_array_equal(outs[0], m(x)["features"])
    assert outs[0].dtype == np.float32 and rt.output_key(0) == "output_0"
    with np.load(tmp_path / "o.npz", allow_pickle=False) as z:
        assert z.files == ["output_0"]
        np.testing.assert_array_equal(z["output_0"], outs[0])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("o.npz")] == ["o.npz"]  # no .part- left
