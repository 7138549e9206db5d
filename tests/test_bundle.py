"""edgeopt bundle: deterministic archives, --verify, and the runtime working from an unpacked bundle alone."""
from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from edgeopt.firmware import bundle
from edgeopt_testkit import edgeopt_cli, firmware

APP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "firmware", "app.py")
EXPECTED_NAMES = ["SHA256SUMS", "edgeopt", "edgeopt/__init__.py", "edgeopt/runtime.py", "manifest.json", "model.onnx"]


@pytest.fixture()
def out_dir(tmp_path):
    return firmware.fake_out_dir(tmp_path / "fm-jetson")


@pytest.fixture()
def cli():
    """`edgeopt ...` in this process (same entry point as the console script, fast); CompletedProcess."""
    return functools.partial(edgeopt_cli, in_process=True)


def _members(path):
    with tarfile.open(path, "r:gz") as tf:
        return tf.getmembers(), {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()}


def test_two_builds_are_byte_identical(out_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    a = bundle.build(out_dir, str(tmp_path / "a.tar.gz"))
    os.utime(os.path.join(out_dir, "model.onnx"), (1_900_000_000, 1_900_000_000))  # host mtimes do not matter
    os.chmod(os.path.join(out_dir, "model.onnx"), 0o600)                           # nor modes
    b = bundle.build(out_dir, str(tmp_path / "b.tar.gz"))
    assert open(a["file"], "rb").read() == open(b["file"], "rb").read()
    assert a["sha256"] == b["sha256"] == hashlib.sha256(open(a["file"], "rb").read()).hexdigest()
    assert a["mtime"] == bundle.DEFAULT_EPOCH
    # default output: OUT_DIR.tar.gz beside OUT_DIR
    c = bundle.build(out_dir)
    assert c["file"] == out_dir + ".tar.gz" and c["sha256"] == a["sha256"]


def test_archive_is_normalised(out_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    res = bundle.build(out_dir, str(tmp_path / "x.tar.gz"))
    raw = open(res["file"], "rb").read()
    assert raw[:4] == b"\x1f\x8b\x08\x00"            # gzip, FLG 0: no file name, no comment
    assert raw[4:8] == b"\0\0\0\0"                    # gzip header mtime 0
    members, files = _members(res["file"])
    assert [m.name for m in members] == EXPECTED_NAMES  # sorted, no top-level directory
    for m in members:
        assert (m.uid, m.gid, m.uname, m.gname, m.mtime) == (0, 0, "", "", 1700000000)
        assert m.mode == (0o755 if m.isdir() else 0o644)
    tar = gzip.decompress(raw)
    assert str(tmp_path).encode() not in tar and os.path.expanduser("~").encode() + b"/" not in tar
    # the checksum list is sha256sum's format over every other file
    sums = dict(line.split("  ")[::-1] for line in files["SHA256SUMS"].decode().splitlines())
    assert sorted(sums) == [n for n in EXPECTED_NAMES if n not in ("SHA256SUMS", "edgeopt")]
    for name, digest in sums.items():
        assert hashlib.sha256(files[name]).hexdigest() == digest
    # the runtime is sdk/runtime.py itself; the package is a minimal one, not the SDK's
    import edgeopt.runtime
    assert files["edgeopt/runtime.py"] == open(edgeopt.runtime.__file__, "rb").read()
    init = files["edgeopt/__init__.py"].decode()
    assert "import" not in init.replace("import edgeopt.runtime", "") and "convert" not in init
    assert files["manifest.json"] == open(os.path.join(out_dir, "manifest.json"), "rb").read()
    # another epoch: other mtimes, other bytes; the same epoch from the manifest's `created` time
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000001")
    assert bundle.build(out_dir, str(tmp_path / "y.tar.gz"))["sha256"] != res["sha256"]
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    mpath = os.path.join(out_dir, "manifest.json")
    man = json.load(open(mpath))
    man["created"] = "2023-11-14T22:13:20Z"
    json.dump(man, open(mpath, "w"))
    assert bundle.build(out_dir, str(tmp_path / "z.tar.gz"))["mtime"] == 1700000000


def test_verify_catches_a_changed_byte(out_dir, tmp_path, cli):
    arc = str(tmp_path / "b.tar.gz")
    r = edgeopt_cli("bundle", out_dir, "-o", arc)  # the real command once
    assert r.returncode == 0, r.stderr
    assert arc in r.stdout and "6 files" not in r.stdout and "5 files" in r.stdout
    inst = tmp_path / "usr-share-model"
    firmware.unpack(arc, inst)
    r = cli("bundle", "--verify", str(inst))
    assert r.returncode == 0 and r.stdout.strip() == f"ok: {inst}: 4 files match SHA256SUMS", r.stdout + r.stderr
    assert cli("bundle", "--verify", arc).returncode == 0
    assert cli("bundle", out_dir, "--verify", str(inst)).returncode == 0  # and it is OUT_DIR's bundle
    # byte code would run instead of the checked runtime.py: flagged (test_hostile_bundle.py has the details)
    (inst / "edgeopt" / "__pycache__").mkdir()
    (inst / "edgeopt" / "__pycache__" / "runtime.cpython-311.pyc").write_bytes(b"x")
    assert cli("bundle", "--verify", str(inst)).returncode == 1
    shutil.rmtree(inst / "edgeopt" / "__pycache__")
    # one flipped byte in the artifact
    p = inst / "model.onnx"
    original = p.read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    r = edgeopt_cli("bundle", "--verify", str(inst))  # the real command: exit status 1
    assert r.returncode == 1, r.stderr
    lines = r.stderr.splitlines()
    assert lines[0] == f"error: bundle {inst}: 2 problem(s) against its SHA256SUMS:"
    assert lines[1].startswith("  model.onnx: checksum differs (expected ")
    assert lines[2] == "  model.onnx: sha256 differs from manifest.json"
    assert r.stdout == ""
    # --json: the result on stdout, still exit 1
    r = cli("bundle", "--verify", str(inst), "--json")
    res = json.loads(r.stdout)
    assert r.returncode == 1 and res["ok"] is False and res["problems"][0].startswith("model.onnx: checksum differs")
    # a changed runtime and a missing file are caught too
    p.write_bytes(original)
    with open(inst / "edgeopt" / "runtime.py", "a") as f:
        f.write("# patched\n")
    os.remove(inst / "manifest.json")
    res = bundle.verify(str(inst))
    assert not res["ok"] and len(res["problems"]) == 2
    assert res["problems"][0].startswith("edgeopt/runtime.py: checksum differs")
    assert res["problems"][1] == "manifest.json: missing"


def test_bundle_json(out_dir, tmp_path, cli, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    r = cli("bundle", out_dir, "-o", str(tmp_path / "j.tar.gz"), "--json")
    assert r.returncode == 0 and r.stderr == ""
    res = json.loads(r.stdout)
    raw = open(tmp_path / "j.tar.gz", "rb").read()
    assert res["file"] == str(tmp_path / "j.tar.gz") and res["bytes"] == len(raw)
    assert res["sha256"] == hashlib.sha256(raw).hexdigest() and res["mtime"] == 1700000000
    assert res["target"] == "jetson-orin-nano" and res["artifacts"] == ["model.onnx"]
    assert [e["name"] for e in res["entries"]] == [n for n in EXPECTED_NAMES if n != "edgeopt"]


def test_verify_archive_with_a_changed_byte(out_dir, tmp_path, cli):
    arc = tmp_path / "b.tar.gz"
    bundle.build(out_dir, str(arc))
    members, files = _members(arc)
    files["model.onnx"] = files["model.onnx"][:-1] + bytes([files["model.onnx"][-1] ^ 0xFF])
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(bad, "w:gz") as tf:
        for m in members:
            tf.addfile(m, io.BytesIO(files[m.name]) if m.isfile() else None)
    res = bundle.verify(str(bad))
    assert not res["ok"] and res["problems"][0].startswith("model.onnx: checksum differs")
    r = cli("bundle", "--verify", str(bad))
    assert r.returncode == 1 and "model.onnx: checksum differs" in r.stderr


def test_bundle_usage_errors(out_dir, tmp_path, cli):
    r = edgeopt_cli("bundle", str(tmp_path / "nope"))  # the real command: exit status 2
    assert r.returncode == 2 and r.stderr.startswith(f"error: {tmp_path / 'nope'}: not a directory")
    (tmp_path / "empty").mkdir()
    r = cli("bundle", str(tmp_path / "empty"))
    assert r.returncode == 2 and "no manifest.json" in r.stderr and "hint:" in r.stderr
    r = cli("bundle")
    assert r.returncode == 2 and r.stderr.startswith("error: missing OUT_DIR")
    r = cli("bundle", "--verify", str(tmp_path / "empty"))
    assert r.returncode == 2 and "no SHA256SUMS; not an edgeopt bundle" in r.stderr
    r = cli("bundle", "--verify", out_dir, "-o", str(tmp_path / "x.tar.gz"))
    assert r.returncode == 2 and "cannot be combined with -o" in r.stderr
    r = cli("bundle", out_dir, "-o", str(tmp_path / "missing-dir" / "x.tar.gz"))
    assert r.returncode == 2 and "does not exist" in r.stderr
    r = cli("bundle", out_dir, "--artifact", "other.onnx")
    assert r.returncode == 2 and "--artifact other.onnx: not an artifact of" in r.stderr
    with open(os.path.join(out_dir, "model.onnx"), "ab") as f:
        f.write(b"\0")
    r = cli("bundle", out_dir)
    assert r.returncode == 2 and "model.onnx: sha256 differs from manifest.json" in r.stderr
    assert "Traceback" not in r.stderr


def test_unpacked_bundle_imports_its_own_runtime(out_dir, tmp_path):
    """The bundle root on sys.path: `import edgeopt.runtime` is the bundled copy and load() finds the model."""
    arc = bundle.build(out_dir, str(tmp_path / "b.tar.gz"))["file"]
    root = tmp_path / "root"
    firmware.unpack(arc, root)
    x = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code = f"""
import sys, json
sys.path.insert(0, {str(root)!r})
import numpy as np, edgeopt, edgeopt.runtime as rt
m = rt.load()
y = m(np.load({str(tmp_path / 'x.npy')!r}))["features"]
np.save({str(tmp_path / 'y.npy')!r}, y)
print(json.dumps({{"runtime": rt.__file__, "pkg": edgeopt.__file__, "has_convert": hasattr(edgeopt, "convert"),
                  "model": m.path}}))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["runtime"] == str(root / "edgeopt" / "runtime.py") and info["has_convert"] is False
    assert info["model"] == str(root / "model.onnx")
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), firmware.reference_nhwc(x, os.path.join(out_dir,
                                                                                                    "model.onnx")),
                               rtol=1e-5, atol=1e-5)


def test_artifact_subset(tmp_path):
    d = firmware.fake_out_dir(tmp_path / "two")
    mpath = os.path.join(d, "manifest.json")
    man = json.load(open(mpath))
    second = dict(man["artifacts"][0], file="model.copy.onnx")
    open(os.path.join(d, "model.copy.onnx"), "wb").write(open(os.path.join(d, "model.onnx"), "rb").read())
    man["artifacts"].append(second)
    json.dump(man, open(mpath, "w"), indent=2)
    res = bundle.build(d, str(tmp_path / "one.tar.gz"), artifacts=["model.copy.onnx"])
    _, files = _members(res["file"])
    assert "model.onnx" not in files and "model.copy.onnx" in files
    assert [a["file"] for a in json.loads(files["manifest.json"])["artifacts"]] == ["model.copy.onnx"]
    assert bundle.verify(res["file"])["ok"] and bundle.verify(res["file"], against=d)["ok"]


# ---------------------------------------------------------- the real model, in venvs with one runtime only

RUN_IN_BUNDLE = """
import sys, json, importlib.util
root, x_path, y_path = {root!r}, {x!r}, {y!r}
absent = [n for n in {heavy!r} if importlib.util.find_spec(n) is not None]
sys.path.insert(0, root)
import numpy as np
import edgeopt.runtime as rt
model = rt.load(root)
y = model(np.load(x_path))
np.save(y_path, y["logits"])
print(json.dumps({{"importable_before": absent, "runtime": model.runtime, "file": rt.__file__,
                   "modules": sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r} and m != "edgeopt"
                                     and not m.startswith("edgeopt."))}}))
"""


def _bundle_and_run(kind, target, onnx_cnn, work, fmnist, tmp_path):
    out = firmware.fm_converted(target, onnx_cnn, work, fmnist)
    arc = bundle.build(out, str(tmp_path / f"fm-{target}.tar.gz"))
    assert bundle.build(out, str(tmp_path / f"again-{target}.tar.gz"))["sha256"] == arc["sha256"]
    root = tmp_path / "installed"
    firmware.unpack(arc["file"], root)
    assert bundle.verify(str(root))["ok"]
    py = firmware.bare_venv(kind, tmp_path.parent)
    y = tmp_path / "logits.npy"
    code = RUN_IN_BUNDLE.format(root=str(root), x=firmware.fm_files(work, fmnist)["val"], y=str(y),
                                heavy=firmware.HEAVY)
    r = firmware.run_in(py, code, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["importable_before"] == [], info          # no edgeopt, no TensorFlow, no torch, no onnx there
    assert info["modules"] == [] and info["file"] == str(root / "edgeopt" / "runtime.py")
    man = json.load(open(os.path.join(out, "manifest.json")))
    return out, man, np.load(y), info["runtime"]


def _check_accuracy(out, man, logits, onnx_cnn, fmnist):
    """Same accuracy as the artifact had in the converter's check (10,000 test images vs the FP32 model), and
    the same predictions as edgeopt.runtime in this process."""
    _, _, xte, yte = fmnist
    x = xte[:, None]
    assert logits.shape == (10000, 10) and logits.dtype == np.float32
    ref = firmware.fp32_reference(onnx_cnn, x)
    check = man["accuracy"]["outputs"]["logits"]
    assert man["accuracy"]["samples"] == 10000
    agree = float(np.mean(logits.argmax(1) == ref.argmax(1)))
    assert agree == pytest.approx(check["top1_agreement"], abs=1e-6), (agree, check)
    import edgeopt.runtime as rt
    here = rt.load(out)(x)["logits"]
    np.testing.assert_array_equal(logits.argmax(1), here.argmax(1))
    np.testing.assert_allclose(logits, here, rtol=1e-5, atol=1e-5)
    acc = float(np.mean(logits.argmax(1) == yte))
    assert acc == float(np.mean(here.argmax(1) == yte)) and acc > 0.7
    return agree, acc


@pytest.mark.slow
def test_rpi_bundle_in_a_litert_only_venv(onnx_cnn, work, fmnist, tmp_path):
    out, man, logits, runtime = _bundle_and_run("litert", "rpi", onnx_cnn, work, fmnist, tmp_path)
    assert runtime["name"] == "ai_edge_litert" and runtime["version"] == "2.1.0"
    _check_accuracy(out, man, logits, onnx_cnn, fmnist)
    # the example device application, from the same venv and bundle: PGM images in, labels out
    _, _, xte, _ = fmnist
    pgms = []
    for i in range(4):
        p = tmp_path / f"img{i}.pgm"
        p.write_bytes(b"P5\n# test\n28 28\n255\n" + (xte[i] * 255).round().astype(np.uint8).tobytes())
        pgms.append(str(p))
    r = subprocess.run([firmware.bare_venv("litert", tmp_path.parent), APP, "--model", str(tmp_path / "installed"),
                        "--json",
                        *pgms], capture_output=True, text=True, env=firmware.clean_env(TF_CPP_MIN_LOG_LEVEL="3"))
    assert r.returncode == 0, r.stderr
    got = [json.loads(line)["class"] for line in r.stdout.splitlines()]
    assert got == [int(k) for k in logits[:4].argmax(1)]


@pytest.mark.slow
def test_jetson_qdq_bundle_in_an_onnxruntime_only_venv(onnx_cnn, work, fmnist, tmp_path):
    out, man, logits, runtime = _bundle_and_run("ort", "jetson", onnx_cnn, work, fmnist, tmp_path)
    assert man["artifacts"][0]["file"].endswith(".qdq.onnx")
    assert runtime == {"name": "onnxruntime", "version": "1.23.0", "delegate": None, "provider": "CPUExecutionProvider"}
    _check_accuracy(out, man, logits, onnx_cnn, fmnist)
