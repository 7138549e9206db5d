"""Control flow that depends on a model's data (If on a computed value, Loop, Scan): found before the INT8
routes, which cannot quantize it.

onnx2tf fails on such a graph (openWakeWord's wake-word models run a verifier network in an If when the first
score passes 0.5; onnx2tf stopped at a KeyError on the verifier's weight), and onnxruntime's QDQ quantizer leaves
the nodes inside it float: the Jetson artifact labelled INT8 kept the verifier's 103 K weights in FP32 (a third
of the model). Such a node is refused with its name and why, or on Jetson kept in float with
``--allow-float-fallback`` (listed in ``float_ops``). An If whose condition is computed from input shapes only
(a static model folds it) is no such node.
"""
from __future__ import annotations

from edgeopt.errors import UsageError

__all__ = ["CONTROL_OPS", "data_dependent", "refuse_or_keep"]

CONTROL_OPS = ("If", "Loop", "Scan")


def data_dependent(model) -> list[dict]:
    """[{"node", "op", "reason"}] of the model's top-level If, Loop and Scan nodes whose behaviour depends on its
    data: an If whose condition is computed from a graph input's values (not only from its Shape), every Loop
    and Scan (their bodies run once per iteration: nothing here unrolls them)."""
    graph = model.graph
    made = {o: n for n in graph.node for o in n.output}
    inputs = {i.name for i in graph.input} - {i.name for i in graph.initializer}
    memo: dict = {}

    def reads_data(tensor: str) -> bool:
        """Whether ``tensor``'s value depends on a graph input's values (a walk back that stops at Shape)."""
        stack, seen = [tensor], set()
        while stack:
            t = stack.pop()
            if t in seen or not t:
                continue
            seen.add(t)
            if memo.get(t) or t in inputs:
                memo[tensor] = True
                return True
            node = made.get(t)
            if node is None or node.op_type in ("Shape", "Size"):
                continue
            stack.extend(node.input)
        memo[tensor] = False
        return False

    found = []
    for node in graph.node:
        if node.op_type == "If" and node.input and reads_data(node.input[0]):
            found.append({"node": node.name or node.output[0], "op": "If",
                          "reason": "its branch is chosen by the model's data"})
        elif node.op_type in ("Loop", "Scan"):
            found.append({"node": node.name or node.output[0], "op": node.op_type,
                          "reason": "its body runs once per iteration"})
    return found


def refuse_or_keep(found: list[dict], source: str, float_ok: bool,
                   what: str = "control-flow op(s) depend on the model's data and cannot be made INT8",
                   hint: str = "export the model without it (e.g. the branch you deploy, or the loop unrolled), or "
                               "keep it in float with --allow-float-fallback (Jetson only)") -> list[str]:
    """The op types of ``found`` ([{"node", "op", "reason"}]: :func:`data_dependent`'s, or the recurrent ops
    edgeopt.converters.onnx_unroll could not unroll), which would compute in float with float weights on a route
    that keeps them; a UsageError ("{count} {what} ({op} {node}: {reason})", ``hint``) naming the first, unless
    ``float_ok`` (the route runs them in float and the user allowed float ops)."""
    if found and not float_ok:
        first = found[0]
        raise UsageError(f"{source}: {len(found)} {what} ({first['op']} {first['node']!r}: {first['reason']})",
                         hint=hint)
    return sorted({x["op"] for x in found})
