"""The tests' pytest plugin (tests/conftest.py loads it): real data and small real models, built once per
session, the ``lab`` of real sshd devices (tests/sshlab.py), one per test, and ``arm_board``, the emulated
64-bit Raspberry Pi OS board (tests/armboard.py), one per session."""
from __future__ import annotations

from pathlib import Path

import pytest

from . import models
from .build import save_arrays


@pytest.fixture(scope="session")
def fmnist():
    """Debian's Fashion-MNIST: (x_train, y_train, x_test, y_test), images float32 0..1, (N, 28, 28)."""
    return models.fashion_mnist()


@pytest.fixture(scope="session")
def work(tmp_path_factory):
    """The session's folder for models and data files."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def keras_cnn(work):
    """The Keras Fashion-MNIST CNN (.keras, NHWC input 'image')."""
    return models.train_keras_cnn(str(work / "fmnist_cnn.keras"))


@pytest.fixture(scope="session")
def onnx_cnn(work):
    """The PyTorch Fashion-MNIST CNN as ONNX (NCHW input 'image', output 'logits')."""
    return models.train_torch_cnn_onnx(str(work / "fmnist_cnn.onnx"))


@pytest.fixture(scope="session")
def fm_data(work, fmnist):
    """Calibration (400 training images) and validation (1000 test images) files in both layouts:
    {calib_nhwc, val_nhwc, calib_nchw, val_nchw: path}."""
    xtr, _, xte, _ = fmnist
    return save_arrays(work, calib_nhwc=xtr[:400, :, :, None], val_nhwc=xte[:1000, :, :, None],
                       calib_nchw=xtr[:400, None], val_nchw=xte[:1000, None])


@pytest.fixture(scope="session")
def tiny_onnx(work):
    """A tiny ONNX model: input 'x' (N,3,8,8) -> conv -> relu -> 'y'."""
    return models.tiny_conv_onnx(work / "tiny.onnx")


@pytest.fixture(scope="session")
def onnx_model(tmp_path_factory) -> Path:
    """A small real ONNX CNN (Conv-Relu-GAP-Gemm, 1x3x32x32 -> 1x10); its file name has a space."""
    return models.small_cnn_onnx(tmp_path_factory.mktemp("onnx") / "tiny cnn.onnx")


@pytest.fixture(scope="session")
def tflite_model(tmp_path_factory) -> Path:
    """A small real INT8 TFLite CNN built with TensorFlow (random representative data)."""
    return models.make_tflite(tmp_path_factory.mktemp("tflite") / "tiny cnn.int8.tflite")


@pytest.fixture
def lab(tmp_path):
    """A lab of real sshd devices (sshlab.Lab) under tmp_path, stopped after the test; skips where none can run."""
    import sshlab
    why = sshlab.lab_available()
    if why:
        pytest.skip(why)
    lab = sshlab.Lab(tmp_path / "lab")
    try:
        yield lab
    finally:
        lab.stop()


@pytest.fixture(scope="session")
def arm_board(tmp_path_factory):
    """The emulated Raspberry Pi OS bookworm 64-bit board (armboard.Board), started once per session and stopped
    at its end: ``.inventory`` (an edgeopt.toml naming it ``.name``, target rpi5, no python key), ``.device``
    (the sshlab device), ``.ssh(cmd)``, ``.reset()`` (bare again). It is bare when started; a test that needs
    it ready runs ``edgeopt devices --setup`` (a no-op when it already is). Skips where it cannot run; builds
    its root file system on first use (about 6 minutes, once per machine)."""
    import armboard
    why = armboard.available()
    if why:
        pytest.skip(why)
    try:
        lower = armboard.rootfs()
    except armboard.Unavailable as e:
        pytest.skip(str(e))
    import sshlab
    board = armboard.start(sshlab.Lab(tmp_path_factory.mktemp("armboard")), lower)
    try:
        yield board
    finally:
        armboard.stop(board)
