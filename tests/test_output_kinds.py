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
