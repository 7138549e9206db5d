"""Session fixtures: real data (Debian's Fashion-MNIST) and small real models trained on it, built once."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# bench/deploy store every result in a history database: keep the tests' results out of the user's one
os.environ.setdefault("EDGEOPT_HISTORY", os.path.join(tempfile.mkdtemp(prefix="edgeopt-test-history-"),
                                                      "results.sqlite"))

import models  # noqa: E402

BIN = os.path.dirname(sys.executable)


def edgeopt_cli(*args, cwd=None, env=None, prefix=(), timeout=900):
    """Run the real `edgeopt` command; returns CompletedProcess (text)."""
    exe = os.path.join(BIN, "edgeopt")
    cmd = list(prefix) + [exe, *map(str, args)]
    e = dict(os.environ, **(env or {}))
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=e, timeout=timeout)


@pytest.fixture(scope="session")
def fmnist():
    return models.fashion_mnist()


@pytest.fixture(scope="session")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def keras_cnn(work):
    return models.train_keras_cnn(str(work / "fmnist_cnn.keras"))


@pytest.fixture(scope="session")
def onnx_cnn(work):
    return models.train_torch_cnn_onnx(str(work / "fmnist_cnn.onnx"))


@pytest.fixture(scope="session")
def fm_data(work, fmnist):
    """Calibration (training images) and validation (test images) files in both layouts."""
    xtr, _, xte, _ = fmnist
    paths = {}
    for layout, cal, val in (("nhwc", xtr[:400, :, :, None], xte[:1000, :, :, None]),
                             ("nchw", xtr[:400, None], xte[:1000, None])):
        paths[f"calib_{layout}"] = str(work / f"calib_{layout}.npy")
        paths[f"val_{layout}"] = str(work / f"val_{layout}.npy")
        np.save(paths[f"calib_{layout}"], cal)
        np.save(paths[f"val_{layout}"], val)
    return paths


@pytest.fixture(scope="session")
def tiny_onnx(work):
    """A tiny ONNX model built with onnx.helper: input 'x' (N,3,8,8) -> conv -> relu -> 'y'."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["y"])],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])], [w, b])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path = str(work / "tiny.onnx")
    onnx.save(m, path)
    return path
