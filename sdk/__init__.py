"""edgeopt: take a trained model to edge hardware and prove how fast it runs there.

``import edgeopt`` is light: it never imports TensorFlow, onnx or onnxruntime. Those load only inside
the functions that need them.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "convert", "EdgeoptError"]

from edgeopt.errors import EdgeoptError  # noqa: E402  (no heavy imports)


def convert(model, target: str, calib=None, val=None, out=None, **options):
    """Convert ``model`` for ``target`` and return the manifest (a dict, also written to ``out/manifest.json``).

    model:  path to an .onnx file, a Keras .keras/.h5 file, a SavedModel directory or a .tflite file.
    target: a profile name or family alias (``rpi``, ``rpi5``, ``jetson``, ``coral``, ...).
    calib:  calibration data: a .npy/.npz file, an image directory, an array/dict of arrays, or ``"random"``.
    val:    validation data, same forms; without it, held-out calibration samples are used.
    out:    output directory (default ``./edgeopt-out/<model>-<target>``).
    options: ``input_shapes`` (dict name -> shape), ``mean``, ``std``, ``io`` (int8|uint8|float32),
             ``min_sqnr``, ``min_top1``, ``allow_float_fallback``, ``max_samples``, ``progress``.

    Raises :class:`edgeopt.errors.UsageError` for bad input (exit code 2) and
    :class:`edgeopt.errors.GateError` when an accuracy gate fails (artifacts are kept; exit code 1).
    """
    from edgeopt.conversion.pipeline import convert as _convert

    return _convert(model, target=target, calib=calib, val=val, out=out, **options)
