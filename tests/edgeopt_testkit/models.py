"""Real test data and small real models (see fixtures.py for the session fixtures built from them).

Fashion-MNIST comes from Debian's dataset-fashion-mnist; models are trained here on it, so accuracy numbers
are real. The real models the benchmarks use too come from benchmarks/zoo.py (one recipe for both); the tiny
models only the tests need are built here.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from .build import onnx_graph

ROOT = Path(__file__).resolve().parents[2]


def _zoo():
    # benchmarks/ is no package: import the file itself, once, with the loader it defines for the example.
    if "edgeopt_zoo" not in sys.modules:
        import importlib.util
        spec = importlib.util.spec_from_file_location("edgeopt_zoo", ROOT / "benchmarks" / "zoo.py")
        sys.modules["edgeopt_zoo"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["edgeopt_zoo"])
    return sys.modules["edgeopt_zoo"]


zoo = _zoo()
fashion_mnist = zoo.fashion_mnist
train_torch_cnn_onnx = zoo.train_torch_cnn_onnx
efficientnet_lite0 = zoo.efficientnet_lite0
sample_photos = zoo.sample_photos
make_tflite = zoo.make_tflite


def train_keras_cnn(path: str, n_train: int = 20000, epochs: int = 2) -> str:
    """A small Keras CNN (NHWC input 28x28x1, 10 logits) trained on Fashion-MNIST, saved as .keras."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    keras.utils.set_random_seed(0)
    xtr, ytr, _, _ = fashion_mnist()
    m = keras.Sequential([
        keras.Input((28, 28, 1), name="image"),
        keras.layers.Conv2D(16, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(10, name="logits"),
    ])
    m.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    m.fit(xtr[:n_train, :, :, None], ytr[:n_train], epochs=epochs, batch_size=128, verbose=0)
    m.save(path)
    return path


def tiny_conv_onnx(path) -> str:
    """A tiny float ONNX model: input 'x' (N,3,8,8) -> conv 3->4 (3x3, pad 1) -> relu -> 'y' (N,4,8,8)."""
    rng = np.random.default_rng(0)
    onnx_graph([("Conv", ["x", "w", "b"], ["c"], {"pads": [1, 1, 1, 1]}), ("Relu", ["c"], ["y"])],
               {"x": ["N", 3, 8, 8]}, {"y": ["N", 4, 8, 8]},
               {"w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
                "b": rng.standard_normal(4).astype(np.float32)}, path=path, name="tiny")
    return str(path)


def small_cnn_onnx(path, size: int = 32, channels: int = 16):
    """A small real ONNX CNN: 'input' (1,3,size,size) -> Conv-Relu-GlobalAveragePool-Flatten-Gemm -> 'logits' (1,10)."""
    rng = np.random.default_rng(0)
    weights = {"w": rng.standard_normal((channels, 3, 3, 3)).astype(np.float32) * 0.2,
               "b": np.zeros(channels, np.float32),
               "fw": rng.standard_normal((channels, 10)).astype(np.float32) * 0.2,
               "fb": np.zeros(10, np.float32)}
    onnx_graph([("Conv", ["input", "w", "b"], ["c"], {"pads": [1, 1, 1, 1]}), ("Relu", ["c"], ["r"]),
                ("GlobalAveragePool", ["r"], ["g"]), ("Flatten", ["g"], ["f"]), ("Gemm", ["f", "fw", "fb"],
                                                                                 ["logits"])],
               {"input": [1, 3, size, size]}, {"logits": [1, 10]}, weights, path=path, name="tiny", ir_version=9)
    return path
