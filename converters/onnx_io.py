"""ONNX models: read inputs/outputs, fix dynamic dims, run the FP32 reference with onnxruntime."""
from __future__ import annotations

import numpy as np

from edgeopt.errors import UsageError

__all__ = ["load", "io_specs", "fix_shapes", "inferred", "output_concats", "tensor_session", "Reference",
           "versions"]

_DT = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 10: "float16", 11: "float64", 9: "bool"}


def load(path: str):
    import onnx
    try:
        model = onnx.load(path)
        onnx.checker.check_model(model)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UsageError(f"{path}: not a valid ONNX model ({first[:200]})") from None
    if not model.graph.output:
        raise UsageError(f"{path}: ONNX model has no outputs")
    return model


def io_specs(model) -> tuple[list[dict], list[dict]]:
    """[{name, shape (None for dynamic), dtype}] for the graph's real inputs (initializers excluded) and outputs."""
    inits = {i.name for i in model.graph.initializer}

    def spec(v):
        t = v.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim]
        return {"name": v.name, "shape": shape, "dtype": _DT.get(t.elem_type, "float32")}

    return [spec(v) for v in model.graph.input if v.name not in inits], [spec(v) for v in model.graph.output]


def inferred(model, data_prop: bool = False) -> dict:
    """{tensor name: ([dim or None], ONNX element type)} of the graph's inputs, outputs and inferred values from
    ONNX shape inference (``data_prop``: also through Shape/Gather/Reshape arithmetic); {} when it fails."""
    import onnx
    try:
        graph = onnx.shape_inference.infer_shapes(model, data_prop=data_prop).graph
    except Exception:   # a model inference cannot read: callers fall back to what needs no shapes
        return {}
    return {v.name: ([d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim],
                     v.type.tensor_type.elem_type)
            for v in list(graph.value_info) + list(graph.input) + list(graph.output)
            if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape")}


def output_concats(model) -> dict:
    """{output name: (axis, [end of each input along it])} for the graph outputs a Concat makes, where shape
    inference tells every input's extent on that axis (a static model): YOLOv8's output0 joins box coordinates
    and class scores, which are judged apart (edgeopt.conversion.accuracy.uneven_parts)."""
    from edgeopt.converters.onnx_fold import attribute

    graph = model.graph
    # data_prop: YOLOv8's shapes pass through Shape/Gather/Reshape, which plain inference leaves unknown; no
    # shapes: outputs are judged whole, as before
    dims = {name: shape for name, (shape, _) in inferred(model, data_prop=True).items()}
    dims.update({i.name: list(i.dims) for i in graph.initializer})
    outputs = {o.name for o in graph.output}
    # an output a Transpose makes of a Concat's result (an export that puts the boxes last: [1, 2100, 22]) has the
    # same parts on the permuted axis
    moved = {}
    for node in graph.node:
        perm = attribute(node, "perm")
        if node.op_type == "Transpose" and node.output[0] in outputs and perm:
            moved[node.input[0]] = (node.output[0], perm)
    res = {}
    for node in graph.node:
        if node.op_type != "Concat" or len(node.input) < 2 or (node.output[0] not in outputs
                                                               and node.output[0] not in moved):
            continue
        axis = attribute(node, "axis")
        shapes = [dims.get(i) for i in node.input]
        if axis is None or any(not s for s in shapes) or len({len(s) for s in shapes}) != 1:
            continue
        axis = axis + len(shapes[0]) if axis < 0 else axis
        extents = [s[axis] if 0 <= axis < len(s) else None for s in shapes]
        if any(not e for e in extents):
            continue
        ends = [int(e) for e in np.cumsum(extents)]
        if node.output[0] in outputs:
            res[node.output[0]] = (axis, ends)
        if node.output[0] in moved:
            name, perm = moved[node.output[0]]
            if sorted(perm) == list(range(len(shapes[0]))):
                res[name] = (perm.index(axis), ends)
    return res


def fix_shapes(model, shapes: dict[str, list[int]]):
    """Set every input to its static shape (in place) and re-infer the outputs' shapes.

    Pure onnx on purpose: onnxruntime.tools imports torch whenever torch is installed (seconds of start-up).
    """
    import onnx
    for inp in model.graph.input:
        if inp.name in shapes:
            shape = inp.type.tensor_type.shape
            shape.ClearField("dim")
            for v in shapes[inp.name]:
                shape.dim.add().dim_value = int(v)
    dynamic = [o for o in model.graph.output
               if any(not d.HasField("dim_value") for d in o.type.tensor_type.shape.dim)]
    declared = {}
    for o in dynamic:
        declared[o.name] = onnx.TensorShapeProto()
        declared[o.name].CopyFrom(o.type.tensor_type.shape)
        o.type.tensor_type.ClearField("shape")
    del model.graph.value_info[:]  # stale symbolic shapes of intermediate tensors
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
        by_name = {o.name: o for o in inferred.graph.output}
    except Exception:
        by_name = {}
    for o in dynamic:
        got = by_name.get(o.name)
        if got is not None and got.type.tensor_type.HasField("shape"):
            o.type.tensor_type.shape.CopyFrom(got.type.tensor_type.shape)
        else:
            # inference cannot tell (Paddle exports compute shapes with Shape/Reshape chains): the declared,
            # symbolic shape stays. An output without any shape is not valid ONNX to onnxsim's checker, which
            # then left PP-OCRv4's recognizer unsimplified, a graph onnx2tf converts wrongly
            o.type.tensor_type.shape.CopyFrom(declared[o.name])
    return model


class Reference:
    """The FP32 source model in onnxruntime (CPU): list of arrays in -> list of outputs out."""

    def __init__(self, model_or_path, outputs: list[str]):
        import onnxruntime as ort
        data = model_or_path if isinstance(model_or_path, str) else model_or_path.SerializeToString()
        so = ort.SessionOptions()
        so.log_severity_level = 3
        self.sess = ort.InferenceSession(data, sess_options=so, providers=["CPUExecutionProvider"])
        self.in_names = [i.name for i in self.sess.get_inputs()]
        self.outputs = outputs

    def __call__(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        return self.sess.run(self.outputs, dict(zip(self.in_names, arrays)))


def with_outputs(model, tensors):
    """A copy of ``model`` in which each of ``tensors`` is also a graph output (in the order given)."""
    import onnx
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for name in dict.fromkeys(tensors):
        if name not in have:
            m.graph.output.append(onnx.ValueInfoProto(name=name))
    return m


def tensor_session(model, tensors, optimize: bool = False, **session_args):
    """An onnxruntime CPU session of a copy of ``model`` in which each of ``tensors`` is also a graph output,
    so one run returns the intermediate values too. ``optimize``: onnxruntime's basic graph optimizations (as
    edgeopt.runtime runs a QDQ model), else none (the graph's own arithmetic, node by node); ``session_args``
    go to InferenceSession (e.g. ``disabled_optimizers``)."""
    import onnxruntime as ort
    m = with_outputs(model, tensors)
    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_BASIC if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    return ort.InferenceSession(m.SerializeToString(), sess_options=so, providers=["CPUExecutionProvider"],
                                **session_args)


def versions() -> dict:
    import onnx
    import onnxruntime
    return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
