"""Hostile manifests and output directories.

- ``--out`` replaced any directory holding a file named manifest.json (a web app's, a dataset's): now only
  an edgeopt output directory holding nothing but what its manifest lists is replaced.
- a manifest's ``"file": "../../etc/passwd"`` made bench push that file: artifact names are plain file names.
"""
import json
import os

import pytest

from edgeopt.errors import UsageError
from edgeopt_testkit import assert_one_error, edgeopt_cli




def _edgeopt_dir(d, files=("model.int8.tflite",), extra=()):
    d.mkdir(parents=True, exist_ok=True)
    for f in files:
        (d / f).write_bytes(b"artifact")
    for f in extra:
        (d / f).write_text("x")
    (d / "manifest.json").write_text(json.dumps({
        "schema": 1, "edgeopt": "0.1.0", "toolchain": {"edgeopt": "0.1.0"},
        "artifacts": [{"file": f, "sha256": "0" * 64} for f in files]}))
    return d


def test_out_with_a_foreign_manifest_is_refused_and_untouched(tmp_path, tiny_onnx):
    web = tmp_path / "webapp"
    web.mkdir()
    (web / "manifest.json").write_text('{"name": "My PWA", "start_url": "/"}')
    (web / "index.html").write_text("<html>precious</html>")
    r = edgeopt_cli("convert", tiny_onnx, "--target", "rpi", "--calib", "random", "--out", web)
    assert_one_error(r, "not an edgeopt output directory", "refusing to replace")
    assert sorted(os.listdir(web)) == ["index.html", "manifest.json"]
    assert (web / "index.html").read_text() == "<html>precious</html>"
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".webapp")]  # no staging left behind


def test_check_replaceable():
    from edgeopt.conversion.pipeline import check_replaceable
    import tempfile
    from pathlib import Path
    base = Path(tempfile.mkdtemp())
    check_replaceable(str(_edgeopt_dir(base / "ok", extra=(".edgeopt-deploy-key",))))
    (base / "empty").mkdir()
    check_replaceable(str(base / "empty"))
    with pytest.raises(UsageError, match="'notes.txt', which its manifest does not list"):
        check_replaceable(str(_edgeopt_dir(base / "extra", extra=("notes.txt",))))
    sub = _edgeopt_dir(base / "subdir")
    (sub / "data").mkdir()
    with pytest.raises(UsageError, match="'data'"):
        check_replaceable(str(sub))
    lying = _edgeopt_dir(base / "lying")
    m = json.loads((lying / "manifest.json").read_text())
    m["artifacts"] = [{"file": "../precious"}]
    (lying / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UsageError, match="plain file name"):
        check_replaceable(str(lying))
    (base / "file").write_text("x")
    with pytest.raises(UsageError, match="not a directory"):
        check_replaceable(str(base / "file"))


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "..", "sub/model.tflite", "a\\b.tflite",
                                  "", None, 7, "x\0.tflite"])
def test_check_artifact_name_refuses(name):
    from edgeopt.runtime import check_artifact_name
    with pytest.raises(ValueError):
        check_artifact_name(name)


def test_check_artifact_name_accepts_plain_names():
    from edgeopt.runtime import check_artifact_name
    for name in ("model.int8.tflite", "model_edgetpu.tflite", "my model.onnx", "..hidden.onnx"):
        assert check_artifact_name(name) == name


def _hostile_dir(tmp_path, name):
    d = tmp_path / "out"
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps({"schema": 1, "artifacts": [{"file": name, "format": "tflite"}]}))
    return d


@pytest.mark.parametrize("name", ["../../../../../../etc/passwd", "/etc/passwd"])
def test_bench_refuses_a_manifest_naming_a_file_outside(tmp_path, name):
    from edgeopt.devices.bench import resolve_artifact
    d = _hostile_dir(tmp_path, name)
    with pytest.raises(UsageError, match="plain file name"):
        resolve_artifact(str(d))
    r = edgeopt_cli("bench", d, "--local", "--runs", "1")
    assert_one_error(r, "manifest.json", "plain file name")


def test_runtime_load_refuses_a_manifest_naming_a_file_outside(tmp_path):
    import edgeopt.runtime
    outside = tmp_path / "secret.tflite"
    outside.write_bytes(b"not yours")
    d = _hostile_dir(tmp_path, "../secret.tflite")
    with pytest.raises(ValueError, match="plain file name"):
        edgeopt.runtime.load(str(d))


def test_deploy_cache_refuses_a_manifest_naming_a_file_outside(tmp_path):
    from edgeopt.devices import deploy
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model bytes")
    secret = tmp_path / "secret"
    secret.write_bytes(b"secret")
    options = {"calib": "random"}
    key = deploy.cache_key(str(model), "rpi5", options)
    out = tmp_path / "entry"
    out.mkdir()
    (out / deploy.STAMP).write_text(key + "\n")
    from edgeopt.hashing import sha256_file
    (out / "manifest.json").write_text(json.dumps(
        {"schema": 1, "artifacts": [{"file": "../secret", "sha256": sha256_file(str(secret))}]}))
    with pytest.raises(UsageError, match="plain file name"):
        deploy.convert_cached(str(model), "rpi5", out=str(out), **options)
