"""Calibration and validation data: .npy, .npz, image directories, arrays, or an explicit "random".

Data is always returned in the *source model's* layout as a dict ``input name -> array (N, ...)``, checked
against the model's inputs. Bad data is a UsageError (exit 2) naming the expected and the found shapes.
"""
from __future__ import annotations

import hashlib
import os

import numpy as np

from edgeopt.errors import UsageError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".webp")


def _fmt(shape) -> str:
    return "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"


def channels_first(shape: list) -> bool:
    """Whether an image input is NCHW (ONNX/PyTorch style) rather than NHWC (Keras style)."""
    return len(shape) == 4 and shape[1] in (1, 3, 4) and shape[-1] not in (1, 3, 4)


def _load_images(path: str, spec: dict, mean, std) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:
        raise UsageError("image folders need Pillow", hint="pip install 'edgeopt[convert]'") from None
    files = sorted(f for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTS))
    if not files:
        raise UsageError(f"{path}: no images (jpg/png) in this directory")
    shape = spec["shape"]
    if len(shape) != 4:
        raise UsageError(f"{path}: an image folder needs a 4D image input, input {spec['name']!r} is {_fmt(shape)}")
    cf = channels_first(shape)
    c, h, w = (shape[1], shape[2], shape[3]) if cf else (shape[3], shape[1], shape[2])
    if h is None or w is None:
        raise UsageError(f"input {spec['name']!r} has dynamic height/width {_fmt(shape)}",
                         hint="fix it with --input-shape NAME=1,3,224,224")
    out = []
    for f in files:
        try:
            with Image.open(os.path.join(path, f)) as im:
                im = im.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
                a = np.asarray(im, dtype=np.float32) / 255.0
        except Exception as e:
            raise UsageError(f"{os.path.join(path, f)}: not a readable image ({e})") from None
        if a.ndim == 2:
            a = a[:, :, None]
        out.append(a)
    x = np.stack(out)  # N, H, W, C
    if mean is not None:
        x = x - np.asarray(mean, dtype=np.float32).reshape(1, 1, 1, -1)
    if std is not None:
        x = x / np.asarray(std, dtype=np.float32).reshape(1, 1, 1, -1)
    return np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)) if cf else x)


def load(src, inputs: list[dict], what: str = "calibration", mean=None, std=None, seed: int = 0,
         random_samples: int = 32) -> tuple[dict, dict]:
    """Load ``src`` for the model ``inputs`` ([{name, shape, dtype}], source layout).

    Returns (data, info): data maps input name -> float array (N, ...); info describes the source
    (kind, file name, sha256 of the data) for the manifest.
    """
    names = [i["name"] for i in inputs]
    if isinstance(src, np.ndarray):
        arrays, info = {names[0]: src}, {"source": "array"}
    elif isinstance(src, dict):
        arrays, info = dict(src), {"source": "arrays"}
    elif isinstance(src, str) and src == "random":
        rng = np.random.default_rng(seed)
        arrays = {}
        for i in inputs:
            shape = [1 if d is None else d for d in i["shape"]]
            arrays[i["name"]] = rng.standard_normal([random_samples] + shape[1:]).astype(np.float32)
        info = {"source": "random", "warning": f"{what} used random data: quantization ranges do not reflect "
                                                "real inputs; accuracy numbers are not meaningful"}
    else:
        path = os.fspath(src)
        base = os.path.basename(path.rstrip("/"))
        if not os.path.exists(path):
            raise UsageError(f"{what} data {path}: no such file or directory")
        if os.path.isdir(path):
            if len(inputs) != 1:
                raise UsageError(f"{path}: an image folder fits single-input models only; this model has "
                                 f"{len(inputs)} inputs {names}", hint="use a .npz file with one array per input")
            arrays = {names[0]: _load_images(path, inputs[0], mean, std)}
            info = {"source": base + "/", "kind": "images"}
        elif path.endswith(".npz"):
            try:
                with np.load(path, allow_pickle=False) as z:
                    arrays = {k: z[k] for k in z.files}
            except Exception as e:
                raise UsageError(f"{path}: not a readable .npz file ({e})") from None
            if len(inputs) == 1 and len(arrays) == 1 and names[0] not in arrays:
                arrays = {names[0]: next(iter(arrays.values()))}
            missing = [n for n in names if n not in arrays]
            if missing:
                raise UsageError(f"{path}: no array for input(s) {missing}; it has {sorted(arrays)}",
                                 hint="name each array of the .npz after a model input")
            info = {"source": base, "kind": "npz"}
        elif path.endswith(".npy"):
            try:
                a = np.load(path, allow_pickle=False)
            except Exception as e:
                raise UsageError(f"{path}: not a readable .npy file ({e})") from None
            if len(inputs) != 1:
                raise UsageError(f"{path}: a .npy file fits single-input models only; this model has inputs {names}",
                                 hint="use a .npz file with one array per input")
            arrays, info = {names[0]: a}, {"source": base, "kind": "npy"}
        else:
            raise UsageError(f"{path}: unsupported {what} data (use .npy, .npz, an image directory or 'random')")
    data = {}
    n = None
    for spec in inputs:
        a = np.asarray(arrays[spec["name"]])
        if a.dtype.kind not in "fiub":
            raise UsageError(f"{what} data for input {spec['name']!r}: dtype {a.dtype} is not numeric")
        exp = spec["shape"]
        if a.ndim == len(exp) - 1:  # one sample without batch dim
            a = a[None]
        if a.ndim != len(exp) or any(e is not None and e != f for e, f in zip(exp[1:], a.shape[1:])):
            hint = None
            if a.ndim == len(exp) and len(exp) == 4 and sorted(a.shape[1:]) == sorted(d for d in exp[1:] if d):
                hint = "the data looks transposed: give it in the source model's layout " + _fmt(exp)
            raise UsageError(f"{what} data does not fit input {spec['name']!r}: expected {_fmt(exp)}, "
                             f"found {tuple(a.shape)}", hint=hint)
        if n is not None and a.shape[0] != n:
            raise UsageError(f"{what} data: inputs have different sample counts ({n} vs {a.shape[0]})")
        n = a.shape[0]
        if n == 0:
            raise UsageError(f"{what} data for input {spec['name']!r} is empty")
        if not np.all(np.isfinite(a)) if a.dtype.kind == "f" else False:
            raise UsageError(f"{what} data for input {spec['name']!r} holds NaN or infinite values")
        data[spec["name"]] = np.ascontiguousarray(a.astype(np.float32, copy=False) if spec["dtype"].startswith("float") else a)
    info["samples"] = int(n)
    info["sha256"] = digest(data)
    return data, info


def digest(data: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(data):
        a = np.ascontiguousarray(data[k])
        h.update(k.encode() + str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def take(data: dict, idx) -> dict:
    return {k: v[idx] for k, v in data.items()}


def count(data: dict) -> int:
    return int(next(iter(data.values())).shape[0])
