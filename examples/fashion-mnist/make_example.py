"""Rebuild this example: a small CNN trained on Fashion-MNIST (Debian's dataset-fashion-mnist), exported to
ONNX (NCHW, input 'image' 1x1x28x28 in 0..1, output 'logits' 10), with 100 calibration images (PNG) and
500 validation samples (val.npz) from the test set.

    apt-get install dataset-fashion-mnist && pip install ".[dev]" && python examples/fashion-mnist/make_example.py

Self-contained (numpy, Pillow, PyTorch): the benchmarks and tests train their Fashion-MNIST CNN with the
functions below, so the example's model and theirs come from the same recipe.
"""
import gzip
import os

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
FMNIST_DIR = os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")


def _idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist():
    """(x_train, y_train, x_test, y_test); images float32 in 0..1, shape (N, 28, 28)."""
    def read(name):
        return _idx(os.path.join(FMNIST_DIR, name))
    xtr = read("train-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    ytr = read("train-labels-idx1-ubyte.gz").astype(np.int64)
    xte = read("t10k-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    yte = read("t10k-labels-idx1-ubyte.gz").astype(np.int64)
    return xtr, ytr, xte, yte


def export_onnx(net, example, path, in_name="input", out_name="output"):
    """A PyTorch module exported to ONNX (opset 17, dynamic batch axis); returns ``path``."""
    import torch
    with torch.no_grad():
        torch.onnx.export(net, example, path, input_names=[in_name], output_names=[out_name],
                          dynamic_axes={in_name: {0: "batch"}, out_name: {0: "batch"}}, opset_version=17,
                          dynamo=False)
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
    return export_onnx(net, torch.zeros(1, 1, 28, 28), path, "image", "logits")


def main():
    train_torch_cnn_onnx(os.path.join(HERE, "model.onnx"), n_train=60000, epochs=3)
    xtr, _, xte, yte = fashion_mnist()
    calib = os.path.join(HERE, "calib")
    os.makedirs(calib, exist_ok=True)
    for i in range(100):  # training images: calibration never sees the test set
        Image.fromarray((xtr[i] * 255).round().astype(np.uint8)).save(os.path.join(calib, f"{i:03d}.png"))
    np.savez_compressed(os.path.join(HERE, "val.npz"), image=xte[:500, None], labels=yte[:500])


if __name__ == "__main__":
    main()
