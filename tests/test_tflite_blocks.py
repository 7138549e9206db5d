"""tflite_blocks: the float-block searches on hand-made op graphs, with no TensorFlow and no model file."""
from __future__ import annotations

import subprocess
import sys
import threading

from edgeopt.converters.tflite_blocks import (OpGraph, attention_matmuls, float_block_candidates, norm_blocks,
                                              output_activations, product_sums, quantizable_layers)


def _graph(ops, n_tensors, outputs, const=(), calibrated=()):
    """An OpGraph from [(kind, [inputs], [outputs])]; tensor i is named t<i>."""
    return OpGraph(kinds=[k for k, _, _ in ops], ins=[list(i) for _, i, _ in ops], outs=[list(o) for _, _, o in ops],
                   names=[f"t{i}" for i in range(n_tensors)], const=set(const), calibrated=set(calibrated),
                   graph_outputs=set(outputs))


def test_importing_it_does_not_import_tensorflow():
    code = ("import sys, edgeopt.converters.tflite_blocks; "
            "print(any(m == 'tensorflow' or m.startswith('tensorflow.') for m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr


def test_layernorm_block_with_its_gamma_and_beta():
    # x(0) -> MEAN(1) ; SUB x-mean (2) ; MUL sq (3) ; MEAN var (4) ; ADD eps (5) ; RSQRT (6) ; MUL (7) ; MUL gamma (8)
    # ; ADD beta (9) -> FULLY_CONNECTED (10); constants: 11 eps, 12 gamma, 13 beta, 14 weights
    ops = [("MEAN", [0], [1]), ("SUB", [0, 1], [2]), ("MUL", [2, 2], [3]), ("MEAN", [3], [4]),
           ("ADD", [4, 11], [5]), ("RSQRT", [5], [6]), ("MUL", [2, 6], [7]), ("MUL", [7, 12], [8]),
           ("ADD", [8, 13], [9]), ("FULLY_CONNECTED", [9, 14], [10])]
    g = _graph(ops, 15, outputs=[10], const=[11, 12, 13, 14], calibrated=range(11))
    blocks = norm_blocks(g)
    assert [b["kind"] for b in blocks] == ["layernorm"]
    assert blocks[0]["ops"] == ["MEAN", "SUB", "MUL", "MEAN", "ADD", "RSQRT", "MUL", "MUL", "ADD"]
    assert blocks[0]["output"] == "t9"
    assert quantizable_layers(g) == 10


def test_output_activation_through_moves_and_not_when_computed_on():
    ops = [("CONV_2D", [0, 5], [1]), ("LOGISTIC", [1], [2]), ("RESHAPE", [2], [3]), ("TANH", [1], [4])]
    g = _graph(ops, 7, outputs=[3, 4], const=[5])
    assert [b["ops"] for b in output_activations(g)] == [["LOGISTIC", "RESHAPE"], ["TANH"]]
    assert [b["kind"] for b in float_block_candidates(g)] == ["output", "output"]
    computed = _graph(ops + [("ADD", [3, 3], [6])], 7, outputs=[6, 4], const=[5])
    assert [b["ops"] for b in output_activations(computed)] == [["TANH"]]


def test_a_move_that_reads_its_own_output_ends_the_walk():
    ops = [("LOGISTIC", [0], [1]), ("RESHAPE", [1], [1])]   # crafted: the RESHAPE writes what it reads
    got = []
    walk = threading.Thread(target=lambda: got.append(output_activations(_graph(ops, 2, outputs=[0]))), daemon=True)
    walk.start()
    walk.join(30)
    assert not walk.is_alive() and got == [[]]


def test_attention_products_are_the_matmuls_of_two_activations():
    ops = [("BATCH_MATMUL", [0, 1], [2]), ("BATCH_MATMUL", [2, 3], [4])]   # tensor 3 is a constant weight
    assert [b["output"] for b in attention_matmuls(_graph(ops, 5, outputs=[4], const=[3]))] == ["t2"]


def _lstm_steps(steps):
    """An unrolled LSTM's ops: per step the gates' FULLY_CONNECTEDs (weights: tensor 0), LOGISTIC/TANH, then
    c = f * c_prev + i * g (the first step: c = i * g), h = o * tanh(c) read by the next step's gates."""
    ops, t, h, c = [], 2, 1, None

    def new():
        nonlocal t
        t += 1
        return t - 1

    for step in range(steps):
        gate = {}
        for name, act in (("i", "LOGISTIC"), ("o", "LOGISTIC"), ("f", "LOGISTIC"), ("g", "TANH")):
            pre, out = new(), new()
            ops += [("FULLY_CONNECTED", [h, 0], [pre]), (act, [pre], [out])]
            gate[name] = out
        ig = new()
        ops.append(("MUL", [gate["i"], gate["g"]], [ig]))
        if c is None:
            c = ig
        else:
            fc, s = new(), new()
            ops += [("MUL", [gate["f"], c], [fc]), ("ADD", [fc, ig], [s])]
            c = s
        th, h = new(), new()
        ops += [("TANH", [c], [th]), ("MUL", [gate["o"], th], [h])]
    return ops, t, h


def test_lstm_cell_state_is_one_product_sum_block_per_chain_of_steps():
    """Each step's c = f * c_prev + i * g (an ADD of two MULs), its products and tanh(c), joined over the steps
    into one block: one float layer for the whole state, whose INT8 scale would span every step's range."""
    ops, n, h = _lstm_steps(3)
    g = _graph(ops, n, outputs=[h], const=[0])
    blocks = product_sums(g)
    assert [b["kind"] for b in blocks] == ["product_sum"]
    assert blocks[0]["ops"].count("ADD") == 2 and blocks[0]["ops"].count("TANH") == 2
    assert "FULLY_CONNECTED" not in blocks[0]["ops"] and "LOGISTIC" not in blocks[0]["ops"]
    assert blocks[0] in float_block_candidates(g)
    # two independent LSTMs (two directions): two blocks; a sum of a product and a constant is none
    second = [(k, [i + n if i else 0 for i in ins], [o + n for o in outs]) for k, ins, outs in ops]
    both = _graph(ops + second + [("MUL", [h, 0], [2 * n]), ("ADD", [2 * n, 0], [2 * n + 1])], 2 * n + 2,
                  outputs=[h, h + n, 2 * n + 1], const=[0])
    assert len(product_sums(both)) == 2


def test_a_layernorm_ending_in_a_sum_of_products_is_one_layernorm_block():
    """Keras' LayerNorm ends in x * scale + (-mean) * scale: a sum of two products inside the normalization block,
    not a block of its own (a sixth block pushed a transformer over its float budget)."""
    ops = [("MEAN", [0], [1]), ("NEG", [1], [2]), ("SQUARED_DIFFERENCE", [0, 1], [3]), ("MEAN", [3], [4]),
           ("ADD", [4, 12], [5]), ("RSQRT", [5], [6]), ("MUL", [6, 13], [7]), ("MUL", [0, 7], [8]),
           ("MUL", [2, 7], [9]), ("ADD", [8, 9], [10]), ("FULLY_CONNECTED", [10, 14], [11])]
    g = _graph(ops, 15, outputs=[11], const=[12, 13, 14])
    assert [b["kind"] for b in product_sums(g)] == ["product_sum"]
    assert [b["kind"] for b in float_block_candidates(g)] == ["layernorm"]
