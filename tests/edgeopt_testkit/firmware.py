"""Helpers for the firmware tests (edgeopt.runtime, edgeopt bundle), cached once per test session.

- tiny ONNX models built with onnx.helper and fake edgeopt output directories around them (fast tests);
- the Fashion-MNIST CNN converted for rpi and jetson with the 10,000 test images as validation data;
- fresh virtual environments holding only numpy and one runtime, installed offline from a wheel cache
  ($EDGEOPT_WHEELHOUSE, default ~/.cache/edgeopt-wheels; filled once with `pip download` when empty).

The caches are module globals: this module is imported once, so test_runtime.py and test_bundle.py share them.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from .build import onnx_graph, save_arrays

VENV_REQS = {
    "litert": ["numpy==1.26.4", "ai-edge-litert==2.1.0"],
    "ort": ["numpy==1.26.4", "onnxruntime==1.23.0"],
}
HEAVY = ("edgeopt", "tensorflow", "keras", "torch", "onnx", "tflite_runtime")

_cache: dict = {}


def wheelhouse() -> str:
    return os.environ.get("EDGEOPT_WHEELHOUSE") or os.path.join(os.path.expanduser("~"), ".cache", "edgeopt-wheels")


def clean_env(**extra) -> dict:
    """The environment without PYTHON* variables (no PYTHONPATH leaking the repository into a venv)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}
    env.update(extra)
    return env


def _pip(python: str, *args, timeout=900):
    return subprocess.run([python, "-m", "pip", "--disable-pip-version-check", "-q", *args], capture_output=True,
                          text=True, timeout=timeout, env=clean_env())


def bare_venv(kind: str, base) -> str:
    """A fresh venv (python -m venv, no system site-packages) with only VENV_REQS[kind]; returns its python."""
    if kind in _cache.setdefault("venvs", {}):
        return _cache["venvs"][kind]
    reqs = VENV_REQS[kind]
    wh = wheelhouse()
    os.makedirs(wh, exist_ok=True)
    venv = os.path.join(str(base), f"venv-{kind}")
    r = subprocess.run([sys.executable, "-m", "venv", "--clear", venv], capture_output=True, text=True,
                       env=clean_env())
    assert r.returncode == 0, r.stderr
    py = os.path.join(venv, "bin", "python")
    r = _pip(py, "install", "--no-index", "--find-links", wh, *reqs)
    if r.returncode != 0:  # wheel cache empty or incomplete: fetch once (PyPI), then install offline
        d = _pip(py, "download", "-d", wh, *reqs)
        if d.returncode != 0:
            pytest.skip(f"cannot fetch wheels {reqs} into {wh} (offline?): {d.stderr.strip()[-300:]}")
        r = _pip(py, "install", "--no-index", "--find-links", wh, *reqs)
    assert r.returncode == 0, r.stderr
    _cache["venvs"][kind] = py
    return py


def unpack(archive, dest) -> None:
    """Unpack a bundle archive into ``dest`` as on a device: with tarfile's ``data`` filter (nothing outside
    ``dest``, no links out, no device files) where this Python has it (3.12, 3.11.4 and later), else with tar(1),
    as the docs do (Debian bookworm's Python 3.11.2 has no filter; GNU tar keeps members inside ``dest`` too)."""
    import tarfile
    os.makedirs(dest, exist_ok=True)
    if hasattr(tarfile, "data_filter"):
        with tarfile.open(archive) as tf:
            tf.extractall(dest, filter="data")
    else:
        subprocess.run(["tar", "-xzf", str(archive), "-C", str(dest)], check=True, capture_output=True)


def run_in(python: str, code: str, cwd, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=str(cwd), timeout=timeout,
                          env=clean_env(TF_CPP_MIN_LOG_LEVEL="3"))


# --------------------------------------------------------------------------------------- tiny models

def onnx_conv_nhwc(path: str) -> str:
    """A tiny float ONNX model whose input is NHWC (1,8,8,3): as if a converter had turned NCHW into NHWC.

    x (1,8,8,3) -> Transpose to NCHW -> Conv 3->4 (3x3, pad 1) -> Relu -> y (1,4,8,8)."""
    rng = np.random.default_rng(0)
    onnx_graph([("Transpose", ["x"], ["xt"], {"perm": [0, 3, 1, 2]}),
                ("Conv", ["xt", "w", "b"], ["c"], {"pads": [1, 1, 1, 1]}), ("Relu", ["c"], ["y"])],
               {"x": [1, 8, 8, 3]}, {"y": [1, 4, 8, 8]},
               {"w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
                "b": rng.standard_normal(4).astype(np.float32)}, path=path, name="nhwc")
    return path


def onnx_int8_io(path: str) -> str:
    """A tiny ONNX model with int8 input and output: xq -> Dequantize(0.5, 3) -> Relu -> Quantize(0.25, -2) -> yq."""
    onnx_graph([("DequantizeLinear", ["xq", "s_in", "z_in"], ["x"]), ("Relu", ["x"], ["r"]),
                ("QuantizeLinear", ["r", "s_out", "z_out"], ["yq"])],
               {"xq": ([1, 6], "int8")}, {"yq": ([1, 6], "int8")},
               {"s_in": np.array(0.5, np.float32), "z_in": np.array(3, np.int8),
                "s_out": np.array(0.25, np.float32), "z_out": np.array(-2, np.int8)}, path=path, name="q")
    return path


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def fake_out_dir(d, target="jetson-orin-nano", family="jetson") -> str:
    """An edgeopt output directory around the NHWC tiny model: manifest.json as `edgeopt convert` writes it
    (source layout NCHW (1,3,8,8), artifact NHWC, perm [0,2,3,1])."""
    os.makedirs(d, exist_ok=True)
    art = onnx_conv_nhwc(os.path.join(str(d), "model.onnx"))
    manifest = {
        "schema": 1, "edgeopt": "0.1.0",
        "source": {"file": "tiny.onnx", "format": "onnx", "sha256": "0" * 64,
                   "inputs": [{"name": "image", "shape": [1, 3, 8, 8], "dtype": "float32"}],
                   "outputs": [{"name": "features", "shape": [None, 4, 8, 8]}]},
        "target": {"name": target, "family": family, "runtime": "onnxruntime", "delegate": None,
                   "io_dtype": "float32", "threads": 1, "cpu_arch": "aarch64"},
        "artifacts": [{"file": "model.onnx", "format": "onnx", "precision": "fp32", "kind": "onnx-fp32",
                       "sha256": _sha(art), "bytes": os.path.getsize(art),
                       "inputs": [{"name": "image", "shape": [1, 8, 8, 3], "dtype": "float32", "scale": None,
                                   "zero_point": None, "perm": [0, 2, 3, 1], "source_shape": [1, 3, 8, 8]}],
                       "outputs": [{"name": "features", "shape": [1, 4, 8, 8], "dtype": "float32", "scale": None,
                                    "zero_point": None, "perm": None, "source_shape": [1, 4, 8, 8]}]}],
        "calibration": {"source": "calib.npy", "samples": 8}, "accuracy": None, "toolchain": {},
    }
    with open(os.path.join(str(d), "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    return str(d)


def reference_nhwc(x_nchw: np.ndarray, model_path: str) -> np.ndarray:
    """The tiny NHWC model run directly with onnxruntime on the transposed input (what the runtime must match)."""
    import onnxruntime as ort
    s = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    return np.concatenate([s.run(None, {"x": np.ascontiguousarray(x_nchw[i:i + 1].transpose(0, 2, 3, 1))})[0]
                           for i in range(x_nchw.shape[0])])


# ------------------------------------------------------------------------ Fashion-MNIST, converted

def fm_files(work, fmnist) -> dict:
    """calibration (200 training images) and validation (all 10,000 test images) .npy files, NCHW."""
    if "fm_files" not in _cache:
        xtr, _, xte, _ = fmnist
        paths = save_arrays(work, fw_calib_nchw=xtr[:200, None], fw_val10k_nchw=xte[:, None])
        _cache["fm_files"] = {"calib": paths["fw_calib_nchw"], "val": paths["fw_val10k_nchw"]}
    return _cache["fm_files"]


def fm_converted(target: str, onnx_path: str, work, fmnist) -> str:
    """The Fashion-MNIST ONNX CNN converted for ``target``, checked on the 10,000 test images."""
    key = ("fm", target)
    if key not in _cache:
        import edgeopt
        f = fm_files(work, fmnist)
        out = os.path.join(str(work), f"fw-fm-{target}")
        edgeopt.convert(onnx_path, target=target, calib=f["calib"], val=f["val"], out=out, max_val_samples=10000)
        _cache[key] = out
    return _cache[key]


def fp32_reference(onnx_path: str, x: np.ndarray) -> np.ndarray:
    """FP32 logits of the source model, one sample at a time like the converter's own check."""
    if ("fp32", onnx_path) not in _cache:
        import onnxruntime as ort
        s = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        name = s.get_inputs()[0].name
        _cache[("fp32", onnx_path)] = np.concatenate([s.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])
    return _cache[("fp32", onnx_path)]
