"""Rebuild this example: a small CNN trained on Fashion-MNIST (Debian's dataset-fashion-mnist), exported to
ONNX (NCHW, input 'image' 1x1x28x28 in 0..1, output 'logits' 10), with 100 calibration images (PNG) and
500 validation samples (val.npz) from the test set.

    apt-get install dataset-fashion-mnist && pip install ".[dev]" && python examples/fashion-mnist/make_example.py
"""
import os
import sys

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests"))
import models  # noqa: E402


def main():
    models.train_torch_cnn_onnx(os.path.join(HERE, "model.onnx"), n_train=60000, epochs=3)
    xtr, _, xte, yte = models.fashion_mnist()
    calib = os.path.join(HERE, "calib")
    os.makedirs(calib, exist_ok=True)
    for i in range(100):  # training images: calibration never sees the test set
        Image.fromarray((xtr[i] * 255).round().astype(np.uint8)).save(os.path.join(calib, f"{i:03d}.png"))
    np.savez_compressed(os.path.join(HERE, "val.npz"), image=xte[:500, None], labels=yte[:500])


if __name__ == "__main__":
    main()
