"""Graph outputs that a Concat joins from parts of different magnitudes, exported as one output per part where
every output is integer (the Edge TPU's full-integer model: one uint8 scale per output tensor), and joined back
in float by edgeopt.runtime from what the manifest says (an output's ``join``).

YOLOv8's output0 [1, 4 + classes, anchors] joins box coordinates (pixels, up to the image size) and class scores
(0-1). On one uint8 scale (a step of 1.25 for a 320x320 image) the scores were all but rounded away: nudenet's
YOLOv8n kept 12 of FP32's 35 detections on Coral, and edgeopt refused the artifact. Each part on its own scale
keeps them; the user still gets one output0 from edgeopt.runtime.
"""
from __future__ import annotations

__all__ = ["SUFFIX", "split", "expand", "grouped", "part_shapes"]

SUFFIX = "__part"


def split(model, joins: dict) -> dict:
    """Replace each graph output named in ``joins`` ({name: {"axis", "ends", "shape"}}: the axis and the end of
    each part along it, as edgeopt.converters.onnx_io.output_concats finds them, and the whole output's static
    shape) by one output per input of the Concat that makes it (through the Transpose after it, if any), in place
    and at its place among the outputs. Returns {name: {"axis", "ends", "parts" (the parts' output names)}} of the
    outputs split (the artifact's ``output_joins``); an output whose Concat reads a constant or the same tensor
    twice stays whole."""
    from onnx import TensorProto, helper

    from edgeopt.converters.onnx_fold import attribute, fresh_name

    graph = model.graph
    made = {o: n for n in graph.node for o in n.output}
    taken = {t for n in graph.node for t in list(n.input) + list(n.output)} | {v.name for v in graph.input}
    res, outputs, dropped = {}, [], []
    for out in list(graph.output):
        node, perm = made.get(out.name), None
        if out.name in joins and node is not None and node.op_type == "Transpose":
            perm = attribute(node, "perm")
            node = made.get(node.input[0]) if perm else None
        if (out.name not in joins or node is None or node.op_type != "Concat"
                or len(set(node.input)) != len(node.input) or any(i not in made for i in node.input)):
            outputs.append(out)
            continue
        join = joins[out.name]
        # each part's shape, in the output's layout: onnx2tf reads the outputs' shapes
        shapes = part_shapes(join["shape"], join["axis"], join["ends"])
        names = []
        for k, (tensor, shape) in enumerate(zip(node.input, shapes)):
            name = fresh_name(f"{out.name}{SUFFIX}{k}", taken)
            taken.add(name)
            # a Transpose after the Concat moves each part the same way; an Identity gives a part its own name
            graph.node.append(helper.make_node("Transpose", [tensor], [name], perm=perm) if perm
                              else helper.make_node("Identity", [tensor], [name]))
            outputs.append(helper.make_tensor_value_info(name, out.type.tensor_type.elem_type or TensorProto.FLOAT,
                                                         shape))
            names.append(name)
        res[out.name] = {"axis": int(join["axis"]), "ends": [int(e) for e in join["ends"]], "parts": names}
        dropped.append(made[out.name])
        if made[out.name] is not node:
            dropped.append(node)
    del graph.output[:]
    graph.output.extend(outputs)
    for node in dropped:   # the Transpose, then the Concat, once nothing reads them any more
        read = {t for n in graph.node for t in n.input} | {o.name for o in graph.output}
        if not any(o in read for o in node.output):
            graph.node.remove(node)
    return res


def expand(names: list[str], joins: dict) -> list[str]:
    """The output names of the split model: ``names`` with each one of ``joins`` (what :func:`split` returned)
    replaced by its parts' names."""
    return [p for n in names for p in (joins[n]["parts"] if n in joins else [n])]


def grouped(flat: list, names: list[str], joins: dict) -> list:
    """The artifact's output indices, ``flat`` in the split model's output order, grouped per source output (of
    ``names``): a list of its parts' for each output of ``joins`` (what :func:`split` returned)."""
    it = iter(flat)
    return [[next(it) for _ in joins[n]["parts"]] if n in joins else next(it) for n in names]


def part_shapes(shape: list, axis: int, ends: list[int]) -> list[list]:
    """The source-layout shape of each part of an output of ``shape`` joined on ``axis`` at ``ends``."""
    starts = [0] + list(ends[:-1])
    return [list(shape[:axis]) + [e - s] + list(shape[axis + 1:]) for s, e in zip(starts, ends)]


