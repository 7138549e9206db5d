"""Real test data and small real models, built once per session (see conftest.py).

Fashion-MNIST comes from Debian's dataset-fashion-mnist; models are trained here on it, so accuracy
numbers are real."""
from __future__ import annotations

import gzip
import os

import numpy as np

FMNIST_DIR = os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")


def _idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist():
    """(x_train, y_train, x_test, y_test); images float32 in 0..1, shape (N, 28, 28)."""
    p = lambda n: os.path.join(FMNIST_DIR, n)  # noqa: E731
    xtr = _idx(p("train-images-idx3-ubyte.gz")).astype(np.float32) / 255.0
    ytr = _idx(p("train-labels-idx1-ubyte.gz")).astype(np.int64)
    xte = _idx(p("t10k-images-idx3-ubyte.gz")).astype(np.float32) / 255.0
    yte = _idx(p("t10k-labels-idx1-ubyte.gz")).astype(np.int64)
    return xtr, ytr, xte, yte


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


def train_torch_cnn_onnx(path: str, n_train: int = 20000, epochs: int = 2) -> str:
    """A small PyTorch CNN (NCHW input 1x1x28x28, 10 logits) trained on Fashion-MNIST, exported to ONNX."""
    import torch
    from torch import nn
    torch.manual_seed(0)
    xtr, ytr, _, _ = fashion_mnist()
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 5 * 5, 64), nn.ReLU(), nn.Linear(64, 10),
    )
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    x = torch.from_numpy(xtr[:n_train, None])
    y = torch.from_numpy(ytr[:n_train])
    for _ in range(epochs):
        perm = torch.randperm(n_train)
        for i in range(0, n_train, 128):
            idx = perm[i:i + 128]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            loss.backward()
            opt.step()
    net.eval()
    export_onnx(net, torch.zeros(1, 1, 28, 28), path, "image", "logits")
    return path


def export_onnx(net, example, path, in_name="input", out_name="output"):
    import torch
    with torch.no_grad():
        torch.onnx.export(net, example, path, input_names=[in_name], output_names=[out_name],
                          dynamic_axes={in_name: {0: "batch"}, out_name: {0: "batch"}}, opset_version=17,
                          dynamo=False)
    return path
