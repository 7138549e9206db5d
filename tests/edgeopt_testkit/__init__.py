"""The tests' own toolkit, loaded by tests/conftest.py as a pytest plugin (``edgeopt_testkit.fixtures``).

- :func:`edgeopt_cli`: runs ``edgeopt ...`` (the real console script, or its entry point in this process);
- :func:`assert_one_error`: the check of a clear failure (one ``error:`` line, the exit code, no traceback);
- :func:`onnx_graph`: builds a small ONNX model from a list of nodes;
- :func:`save_arrays`: writes calibration / validation arrays as ``.npy`` files;
- :mod:`.models`: real models (Fashion-MNIST CNNs, EfficientNet-Lite0, a tiny INT8 TFLite CNN);
- :mod:`.firmware`: helpers of the firmware tests (runtime, bundle): fake output directories, bare venvs;
- :mod:`.fixtures`: the session fixtures (data, models) and the ``lab`` fixture (real sshd devices).
"""
from .build import onnx_graph, save_arrays
from .cli import EDGEOPT, assert_one_error, edgeopt_cli

__all__ = ["EDGEOPT", "assert_one_error", "edgeopt_cli", "onnx_graph", "save_arrays"]
