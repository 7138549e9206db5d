"""Outputs by kind: class scores get top-1 agreement, embeddings and dense maps do not (a "top-1 agreement"
of an embedding means nothing); guessed from shape and name, declared with --output-kind."""
from __future__ import annotations

import json

import numpy as np
import pytest

from edgeopt.conversion import accuracy
from edgeopt.errors import UsageError
from edgeopt_testkit import assert_one_error, edgeopt_cli, save_arrays


@pytest.mark.parametrize("name, shape, kind", [
    ("logits", (8, 1000), "scores"), ("target_label", (8, 214), "scores"), ("y", (8, 1, 1, 10), "scores"),
    ("sentence_embedding", (8, 384), "embedding"), ("pooler_output", (8, 768), "embedding"),
    ("image_features", (8, 512), "embedding"), ("last_hidden_state", (8, 16, 384), "dense"),
    ("boxes", (8, 100, 4), "dense"), ("heatmap", (8, 1, 64, 64), "dense"), ("score", (8, 1), "dense"),
    ("classificators", (8, 896, 1), "dense"), ("y", (8, 1, 10), "scores"),
])
def test_guess_kind(name, shape, kind):
    assert accuracy.guess_kind(name, shape) == kind


def test_metrics_by_kind():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((32, 384))
    got = ref + 0.01 * rng.standard_normal(ref.shape)
    emb = accuracy.compare([ref], [got], ["sentence_embedding"])["sentence_embedding"]
    assert emb["kind"] == "embedding" and "top1_agreement" not in emb and emb["cosine"] > 0.99
    scores = accuracy.compare([ref], [got], ["sentence_embedding"], {"sentence_embedding": "scores"})
    assert scores["sentence_embedding"]["kind"] == "scores" and scores["sentence_embedding"]["top1_agreement"] > 0.8
    dense = accuracy.compare([ref.reshape(32, 4, 96)], [got.reshape(32, 4, 96)], ["seq"])["seq"]
    assert dense["kind"] == "dense" and "top1_agreement" not in dense


def test_parse_output_kinds():
    assert accuracy.parse_output_kinds(["a=embedding", "b=DENSE"], ["a", "b"]) == {"a": "embedding", "b": "dense"}
    assert accuracy.parse_output_kinds({"a": "scores"}, ["a"]) == {"a": "scores"}
    with pytest.raises(UsageError, match="KIND one of scores, embedding, dense"):
        accuracy.parse_output_kinds(["a=logits"], ["a"])
    with pytest.raises(UsageError, match="no output 'c'; its outputs are 'a', 'b'"):
        accuracy.parse_output_kinds(["c=dense"], ["a", "b"])


def test_cli_output_kind(tmp_path, tiny_onnx):
    calib = save_arrays(tmp_path, x=np.random.default_rng(0).standard_normal((16, 3, 8, 8)).astype(np.float32))
    args = ["convert", tiny_onnx, "--target", "jetson", "--calib", calib["x"], "--json"]
    r = edgeopt_cli(*args, "--out", tmp_path / "a", "--output-kind", "y=embedding")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)["accuracy"]["outputs"]["y"]
    assert out["kind"] == "embedding" and "top1_agreement" not in out
    r = edgeopt_cli(*args, "--out", tmp_path / "b")  # (N, C, H, W): a dense map, guessed
    assert json.loads(r.stdout)["accuracy"]["outputs"]["y"]["kind"] == "dense"
    assert_one_error(edgeopt_cli(*args, "--out", tmp_path / "c", "--output-kind", "nope=dense"),
                     "the model has no output 'nope'; its outputs are 'y'")
    assert_one_error(edgeopt_cli(*args, "--out", tmp_path / "d", "--output-kind", "y=logits"), "--output-kind y=logits")
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()


def test_dense_cosine_is_over_all_samples():
    """A detector's map: strong on one sample, near zero on the others. Per sample, the empty maps' cosines
    are noise; over all samples at once the cosine says the artifact is right."""
    rng = np.random.default_rng(0)
    ref = 1e-4 * rng.random((4, 1, 32, 32))  # ~0 where there is nothing, as a sigmoid map is
    ref[0, 0, 8:24, 8:24] = 1.0
    got = ref + 1e-3 * rng.standard_normal(ref.shape)
    dense = accuracy.compare([ref], [got], ["maps"])["maps"]
    assert dense["kind"] == "dense" and dense["cosine"] > 0.99
    per_sample = accuracy.compare([ref], [got], ["maps"], {"maps": "embedding"})["maps"]
    assert per_sample["cosine"] < 0.5  # three of four near-zero maps compared on noise


def _faint_score_map(path):
    """A detector head on 3x16x16 inputs: 1x1 conv -> Sigmoid, its logits around -7 (scores 0.0001-0.04, as a
    detector's map on crops with nothing to find): TFLite's INT8 LOGISTIC writes them on its fixed 1/256 grid."""
    from edgeopt_testkit import onnx_graph
    rng = np.random.default_rng(3)
    inits = {"w": (0.3 * rng.standard_normal((4, 3, 1, 1))).astype(np.float32), "b": np.full(4, -7.0, np.float32)}
    return onnx_graph([("Conv", ["x", "w", "b"], ["z"]), ("Sigmoid", ["z"], ["heatmap"])],
                      {"x": [1, 3, 16, 16]}, {"heatmap": [1, 4, 16, 16]}, inits, path=path)


def _faint_files(tmp_path):
    path = str(tmp_path / "head.onnx")
    _faint_score_map(path)
    rng = np.random.default_rng(4)
    files = save_arrays(tmp_path, calib=rng.standard_normal((32, 3, 16, 16)).astype(np.float32),
                        val=rng.standard_normal((32, 3, 16, 16)).astype(np.float32))
    return path, files


def test_score_map_on_the_logistic_grid_is_not_a_broken_artifact(tmp_path):
    """The sanity floor fails broken artifacts, not ones held near it by their own output grid: the FP32
    scores rounded onto INT8 LOGISTIC's 1/256 grid alone are under the floor; the Coral artifact (integer-only:
    the LOGISTIC stays INT8) comes within 3 dB of that and converts, the manifest saying why (it exited 1 as "a
    broken artifact" before)."""
    import edgeopt
    path, files = _faint_files(tmp_path)
    warnings = []
    m = edgeopt.convert(path, "coral", calib=files["calib"], val=files["val"], out=str(tmp_path / "r"),
                        warn=warnings.append)
    out = m["accuracy"]["outputs"]["heatmap"]
    grid = out["output_grid"]
    assert grid["step"] == pytest.approx(1 / 256) and grid["cosine"] < 0.9
    assert out["cosine"] < 0.9 and out["sqnr_db"] >= grid["sqnr_db"] - 3
    sanity = m["accuracy"]["sanity"]
    assert sanity["passed"] and not sanity["failures"] and len(sanity["grid_limited"]) == 1
    assert "INT8 grid alone (step 0.003906)" in sanity["grid_limited"][0] and sanity["grid_limited"][0] in warnings


def test_rpi_computes_a_score_map_activation_in_float(tmp_path):
    """On rpi (float kernels beside INT8 ones) the same head's LOGISTIC, which makes the model's output, runs in
    float on its INT8 input: the scores leave the 1/256 grid (5.8 dB on Coral) and come within 30 dB of FP32,
    while the convolution stays INT8; the manifest's float_blocks says why, with both numbers."""
    import edgeopt
    from edgeopt.converters import tf_tflite
    path, files = _faint_files(tmp_path)
    warnings = []
    m = edgeopt.convert(path, "rpi", calib=files["calib"], val=files["val"], out=str(tmp_path / "r"),
                        warn=warnings.append)
    out = m["accuracy"]["outputs"]["heatmap"]
    assert out["sqnr_db"] > 30 and "output_grid" not in out and not m["accuracy"]["sanity"].get("grid_limited")
    art = m["artifacts"][0]
    assert art["float_ops"] == ["LOGISTIC"]
    fb = art["float_blocks"]
    assert fb["float"] and [b["kind"] for b in fb["blocks"]] == ["output"] and fb["blocks"][0]["ops"] == ["LOGISTIC"]
    assert fb["sqnr_db"]["float_blocks"] - fb["sqnr_db"]["all_int8"] > 25
    with open(tmp_path / "r" / art["file"], "rb") as f:
        kinds = {kind for kind, _ in tf_tflite._float_computing(f.read())}
    assert kinds == {"LOGISTIC"}  # the CONV_2D is INT8


def test_output_activation_is_found_through_ops_that_move_values():
    """A LOGISTIC that makes an output through a TRANSPOSE and a RESHAPE is one block with them (they must stay
    float too, or the quantizer puts the scores back on an INT8 grid); one whose result is computed on, or that
    feeds a second reader, is none."""
    import tensorflow as tf
    from edgeopt.converters import tf_tflite, tflite_blocks

    @tf.function(input_signature=[tf.TensorSpec([1, 4, 4, 3], tf.float32)])
    def model(x):
        score = tf.reshape(tf.transpose(tf.sigmoid(x), [0, 3, 1, 2]), [1, 48])
        gate = tf.sigmoid(x * 2.0)
        return {"score": score, "gated": gate * x, "both": tf.tanh(x) + tf.reduce_sum(tf.tanh(x))}

    conv = tf.lite.TFLiteConverter.from_concrete_functions([model.get_concrete_function()], model)
    blocks = tflite_blocks.output_activations(tf_tflite.op_graph(conv.convert()))
    assert [b["ops"] for b in blocks] == [["LOGISTIC", "TRANSPOSE", "RESHAPE"]]
    assert blocks[0]["kind"] == "output" and len(blocks[0]["tensors"]) == 3


def test_output_activation_walk_ends_on_a_crafted_loop():
    """A crafted flatbuffer whose RESHAPE after a LOGISTIC writes the tensor it reads (a loop no converter makes):
    the walk towards the output stops there instead of appending the RESHAPE forever."""
    import threading

    import tensorflow as tf
    from tensorflow.lite.tools import flatbuffer_utils

    from edgeopt.converters import tf_tflite, tflite_blocks

    @tf.function(input_signature=[tf.TensorSpec([1, 4, 4, 3], tf.float32)])
    def model(x):
        return {"score": tf.reshape(tf.sigmoid(x), [1, 48]), "other": x + 1.0}

    conv = tf.lite.TFLiteConverter.from_concrete_functions([model.get_concrete_function()], model)
    fm = flatbuffer_utils.convert_bytearray_to_object(bytearray(conv.convert()))
    sg = fm.subgraphs[0]
    codes = [c.builtinCode for c in fm.operatorCodes]
    reshape = next(op for op in sg.operators if codes[op.opcodeIndex] == 22)   # BuiltinOperator.RESHAPE
    score = int(reshape.outputs[0])
    reshape.outputs[0] = reshape.inputs[0]   # it now writes what it reads
    sg.outputs = [int(i) for i in sg.outputs if int(i) != score]
    data = bytes(flatbuffer_utils.convert_object_to_bytearray(fm))
    got = []
    walk = threading.Thread(target=lambda: got.append(tflite_blocks.output_activations(tf_tflite.op_graph(data))), daemon=True)
    walk.start()
    walk.join(60)
    assert not walk.is_alive() and got == [[]]


def test_grid_limit_does_not_excuse_a_broken_output():
    """An output far below what its grid allows is still a failure; one within 3 dB of it is not, whether the grid
    alone is under the floor or just over it."""
    from edgeopt.conversion import pipeline
    rng = np.random.default_rng(5)
    ref = 1 / (1 + np.exp(-(0.8 * rng.standard_normal((8, 2, 16, 16)) - 7)))
    grid = accuracy.grid_limit(ref, (1 / 256, -128, -128, 127), "dense")
    on_grid = (np.clip(np.round(ref * 256) - 128, -128, 127) + 128) / 256
    assert grid == {"step": 1 / 256, **{k: accuracy.metrics(ref, on_grid, "dense")[k] for k in ("cosine", "sqnr_db")}}
    assert grid["cosine"] < 0.9
    limited = dict(accuracy.metrics(ref, on_grid, "dense"), output_grid=grid)
    broken = dict(accuracy.metrics(ref, rng.permutation(on_grid.ravel()).reshape(ref.shape), "dense"), output_grid=grid)
    assert broken["sqnr_db"] < grid["sqnr_db"] - 3
    # the PP layout detector's rpi score map (bench_zoo): the grid alone is just over the floor, the artifact just
    # under it, 0.6 dB from the grid's SQNR
    layout = {"cosine": 0.8995, "sqnr_db": 6.332, "kind": "dense",
              "output_grid": {"step": 1 / 256, "cosine": 0.9155, "sqnr_db": 6.958}}
    s = pipeline._sanity([{"file": "a.tflite", "accuracy": {"ok": limited, "bad": broken, "layout": layout}}], 0.9)
    assert not s["passed"] and len(s["failures"]) == 1 and "'bad'" in s["failures"][0]
    assert len(s["grid_limited"]) == 2 and "'ok'" in s["grid_limited"][0] and "'layout'" in s["grid_limited"][1]
