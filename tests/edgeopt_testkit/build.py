"""Small test inputs built on the spot: ONNX graphs from a list of nodes, arrays saved as .npy files, a
stand-in trtexec that replays a recorded log, and a Python path with no TFLite runtime."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

TRTEXEC_LOG = Path(__file__).resolve().parent.parent / "data" / "trtexec" / "orin-nano-trt10.3-loadEngine.log"


def _value_info(name, spec):
    from onnx import helper
    shape, dtype = spec if isinstance(spec, tuple) else (spec, "float32")
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), list(shape))


def onnx_graph(nodes, inputs, outputs, initializers=None, path=None, name="g", ir_version=8, opset=17):
    """An ONNX model (ModelProto) of ``nodes``, saved to ``path`` when given.

    nodes: ``(op, inputs, outputs)`` or ``(op, inputs, outputs, attributes)`` (attributes may hold the node's
    ``name``), or ready ``onnx.NodeProto``s; inputs / outputs: ``{name: shape}`` (float32) or ``{name: (shape, dtype)}``, a shape entry may be
    a symbolic name; initializers: ``{name: numpy array}``.
    """
    import onnx
    from onnx import helper, numpy_helper
    graph = helper.make_graph(
        [node if isinstance(node, onnx.NodeProto) else _node(*node) for node in nodes],
        name, [_value_info(k, v) for k, v in inputs.items()], [_value_info(k, v) for k, v in outputs.items()],
        [numpy_helper.from_array(np.asarray(a), k) for k, a in (initializers or {}).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    if path is not None:
        onnx.save(model, str(path))
    return model


def _node(op, ins, outs, attrs=None):
    from onnx import helper
    return helper.make_node(op, list(ins), list(outs), **(attrs or {}))


def save_arrays(directory, **arrays) -> dict:
    """Each array saved as ``directory/<name>.npy`` (calibration, validation, inputs); returns {name: path}."""
    paths = {}
    for name, array in arrays.items():
        paths[name] = os.path.join(str(directory), f"{name}.npy")
        np.save(paths[name], array)
    return paths


def fake_trtexec(tmp_path) -> Path:
    """A stand-in for trtexec: builds a dummy engine, and replays the recorded log when timing one."""
    exe = tmp_path / "bin" / "trtexec"
    exe.parent.mkdir()
    exe.write_text(f"""#!{sys.executable}
import sys, json
args = dict(a.lstrip("-").split("=", 1) if "=" in a else (a.lstrip("-"), "") for a in sys.argv[1:])
open({str(tmp_path / "calls.log")!r}, "a").write(" ".join(sys.argv[1:]) + "\\n")
if "help" in args:
    print("&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec --help")
elif "saveEngine" in args:
    open(args["saveEngine"], "wb").write(b"engine")
elif "loadEngine" in args:
    sys.stdout.write(open({str(TRTEXEC_LOG)!r}).read())
    json.dump([{{"startEnqMs": i, "latencyMs": 0.7 + i * 0.001}} for i in range(200)], open(args["exportTimes"], "w"))
""")
    exe.chmod(0o755)
    return exe


def no_tflite_runtime(tmp_path) -> Path:
    """A folder whose sitecustomize.py makes every TFLite runtime unimportable: put it on PYTHONPATH to play a
    device where none is installed."""
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(
        "import sys\nfor m in ('ai_edge_litert', 'tflite_runtime', 'tensorflow'):\n    sys.modules[m] = None\n")
    return block
