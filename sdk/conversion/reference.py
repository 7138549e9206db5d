"""The FP32 reference: the source model run on the host, the way the conversion's accuracy check runs it
(onnxruntime on the CPU for ONNX, TensorFlow for Keras and SavedModel models, the TFLite interpreter for a float
.tflite model), one sample at a time at the
static batch-1 shapes of the conversion; and where to find a conversion's source model again.

The conversion check (:mod:`edgeopt.conversion.pipeline`), ``explain`` and the on-device check of ``bench --val``
and ``deploy --val`` (:mod:`edgeopt.devices.val`) all take the reference from here, so the same samples give the
same FP32 numbers everywhere.
"""
from __future__ import annotations

import os

from edgeopt.hashing import sha256_file, sha256_tree

__all__ = ["label", "source_reference", "run_batched", "find_beside"]


def label(fmt: str) -> str:
    """How a result names the reference of a source model of format ``fmt``."""
    runs = {"onnx": "onnxruntime CPU", "tflite": "TFLite interpreter"}.get(fmt, "TensorFlow")
    return f"fp32 source model ({runs})"


def source_reference(model: str, fmt: str, inputs: list[dict], outputs: list[str], trust_model_code: bool = False):
    """A callable (list of arrays, source input order, batch 1 -> list of outputs in ``outputs`` order) running the
    source ``model`` of format ``fmt`` (``onnx``, ``keras``, ``saved_model``, ``tflite``) at the static shapes of ``inputs``
    (``[{"name", "shape"}]``, as the manifest's ``source.inputs`` records them). Bad files are UsageError."""
    from edgeopt import converters
    if fmt == "onnx":
        from edgeopt.converters import onnx_io
        m = onnx_io.load(model)
        onnx_io.fix_shapes(m, {i["name"]: i["shape"] for i in inputs})
        return onnx_io.Reference(m, list(outputs))
    if fmt in ("keras", "saved_model", "tflite"):
        graph = converters.load("edgeopt.converters.tf_tflite").load(model, fmt, trust_model_code=trust_model_code)
        return _Named(graph, list(outputs))
    raise ValueError(f"no FP32 reference for a {fmt} source")


class _Named:
    """A TensorFlow graph whose outputs are taken in the order of the manifest's names."""

    def __init__(self, graph, outputs: list[str]):
        self.graph = graph
        self.index = [graph.outputs.index(n) for n in outputs]

    def __call__(self, arrays):
        got = self.graph(arrays)
        return [got[k] for k in self.index]


def run_batched(fn, arrays: list, batch: int = 1) -> list:
    """``fn`` over ``arrays`` (N samples each) ``batch`` samples at a time; the outputs concatenated."""
    import numpy as np
    n = arrays[0].shape[0]
    parts = [fn([a[i:i + batch] for a in arrays]) for i in range(0, n, batch)]
    return [np.concatenate([p[k] for p in parts], axis=0) for k in range(len(parts[0]))]


def find_beside(name: str | None, out_dir: str, sha: str | None) -> tuple[str | None, bool]:
    """(path, False) of the file ``name`` (a plain name, as a manifest records it) beside a conversion's output
    directory: in it, its parent, its grandparent or the current directory, with SHA-256 ``sha`` when given (the
    manifest records no host paths). (None, tried): none found; ``tried`` says a file of that name had other
    contents."""
    if not name or os.path.basename(name) != name or name in (".", ".."):
        return None, False
    out_dir = os.path.abspath(out_dir)
    tried = []
    for d in (out_dir, os.path.dirname(out_dir), os.path.dirname(os.path.dirname(out_dir)), os.getcwd()):
        p = os.path.join(d, name)
        if p in tried or not os.path.exists(p):
            continue
        tried.append(p)
        if sha is None or (sha256_tree(p) if os.path.isdir(p) else sha256_file(p)) == sha:
            return p, False
    return None, bool(tried)
