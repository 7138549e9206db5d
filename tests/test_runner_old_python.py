"""The on-device runner on the Pythons devices really have: 3.8 (JetPack 5) and 3.10 run it, with the numpy and
runtime wheels made for them; older ones get one line and exit 3, which the host reports as the device's error.

The interpreters are pyenv's (edgeopt_testkit.oldpython): a test skips, saying which, where one is missing. The
venvs for 3.8 and 3.10 are cached outside the checkout and built on first use (a minute or two, once per machine).
"""
from __future__ import annotations

import ast
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import edgeopt.runtime
from edgeopt.devices.bench import BenchOptions, bench_device, runner_source
from edgeopt.devices.inventory import local_device
from edgeopt.errors import DeviceError
from edgeopt.firmware.bundle import INIT_PY
from edgeopt_testkit import oldpython

RUNTIME_PY = Path(edgeopt.runtime.__file__)
FLOOR = (3, 8)

# stdlib and builtins newer than Python 3.8 (what ast.parse(feature_version=...) cannot see: it checks syntax)
NEWER_ATTRIBUTES = {
    "removeprefix": "3.9", "removesuffix": "3.9", "is_relative_to": "3.9", "with_stem": "3.9", "randbytes": "3.9",
    "waitstatus_to_exitcode": "3.9", "BooleanOptionalAction": "3.9", "to_thread": "3.9", "bit_count": "3.10",
    "pairwise": "3.10", "batched": "3.12", "cache": "3.9 (functools.cache)", "UTC": "3.11 (datetime.UTC)",
}
NEWER_MODULES = {"zoneinfo": "3.9", "graphlib": "3.9", "tomllib": "3.11"}
BUILTIN_GENERICS = {"list", "dict", "tuple", "set", "frozenset", "type"}


def _expected_refusal(python: str) -> str:
    out = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True,
                         text=True, check=True, env=oldpython._clean_env()).stdout.strip()
    return f"error: edgeopt runner needs Python 3.8 or newer (this is Python {out} at {python})"


def _interpreter(version: str) -> str:
    python = oldpython.interpreter(version)
    if not python:
        pytest.skip(f"no Python {version} here (pyenv's ~/.pyenv/versions/{version}.*, or python{version} on PATH)")
    return python


def _bundle_dir(tmp_path: Path) -> Path:
    """An unpacked firmware bundle's package: edgeopt/__init__.py (the bundle's own) + edgeopt/runtime.py."""
    package = tmp_path / "bundle" / "edgeopt"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(INIT_PY)
    shutil.copyfile(RUNTIME_PY, package / "runtime.py")
    return package.parent


def _run(argv, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, timeout=300, env=oldpython._clean_env(), **kwargs)


# ------------------------------------------------------------------------------------ the source itself

def _annotations(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            for arg in (*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg):
                if arg is not None and arg.annotation is not None:
                    yield arg.annotation
            if node.returns is not None:
                yield node.returns
        elif isinstance(node, ast.AnnAssign):
            yield node.annotation


def test_runtime_source_is_python_3_8():
    """Syntax (ast with feature_version 3.8), annotations evaluated at definition time (no future import: they
    must be plain names or strings), and the stdlib/builtins that 3.8 lacks."""
    source = RUNTIME_PY.read_text()
    tree = ast.parse(source, feature_version=FLOOR)
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            problems.append(f"line {node.lineno}: from __future__ import: a SyntaxError on Python 3.6 before the "
                            f"version guard can run")
        if isinstance(node, ast.Attribute) and node.attr in NEWER_ATTRIBUTES:
            problems.append(f"line {node.lineno}: .{node.attr} is Python {NEWER_ATTRIBUTES[node.attr]}")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            problems += [f"line {node.lineno}: module {n} is Python {NEWER_MODULES[n.split('.')[0]]}"
                         for n in names if n.split(".")[0] in NEWER_MODULES]
        if isinstance(node, ast.Call) and any(k.arg == "strict" for k in node.keywords) \
                and getattr(node.func, "id", None) == "zip":
            problems.append(f"line {node.lineno}: zip(strict=) is Python 3.10")
        if isinstance(node, ast.Subscript) and getattr(node.value, "id", None) in BUILTIN_GENERICS:
            problems.append(f"line {node.lineno}: {node.value.id}[...] at run time is Python 3.9")
    for ann in _annotations(tree):
        if not (isinstance(ann, ast.Constant) or (isinstance(ann, ast.Name))):
            problems.append(f"line {ann.lineno}: annotation {ast.unparse(ann)} is evaluated on import: quote it")
    assert not problems, "\n".join(problems)


def test_guard_is_the_floor():
    assert edgeopt.runtime.PYTHON_FLOOR == FLOOR
    compile(edgeopt.runtime.PYTHON_GUARD, "guard", "exec")
    # the host's bootstrap is the guard, then the runner compiled from a string: nothing else before it
    assert runner_source().decode().startswith(edgeopt.runtime.PYTHON_GUARD + "exec(compile(b")


# ------------------------------------------------------------------------- older Pythons: one line, exit 3

@pytest.mark.parametrize("version", oldpython.REFUSED_PYTHONS)
def test_old_python_refused_over_ssh_stdin(version, tmp_path):
    """``python - bench ...`` with what the host pipes: even Python 2.7, which cannot parse runtime.py."""
    python = _interpreter(version)
    p = _run([python, "-", "bench", str(tmp_path / "m.onnx")], input=runner_source())
    assert (p.returncode, p.stdout, p.stderr.decode()) == (3, b"", _expected_refusal(python) + "\n")


@pytest.mark.parametrize("version", [v for v in oldpython.REFUSED_PYTHONS if v != "2.7"])
def test_old_python_refused_as_script_and_on_import(version, tmp_path):
    """runtime.py itself parses on 3.6 and 3.7 and refuses them: run as a script, and on import from a bundle."""
    python = _interpreter(version)
    expected = (3, b"", _expected_refusal(python) + "\n")
    p = _run([python, str(RUNTIME_PY), "bench", str(tmp_path / "m.onnx")])
    assert (p.returncode, p.stdout, p.stderr.decode()) == expected
    p = _run([python, "-c", "import edgeopt.runtime; print('imported')"], cwd=_bundle_dir(tmp_path))
    assert (p.returncode, p.stdout, p.stderr.decode()) == expected


def test_host_reports_old_python_as_device_error(onnx_model, tmp_path):
    """The host's bench on a device whose Python is 3.6: the device's error, exit 3, the runner's line."""
    python = _interpreter("3.6")
    device = local_device(python=python, workdir=str(tmp_path / "wd"))
    with pytest.raises(DeviceError) as caught:
        bench_device(device, str(onnx_model), BenchOptions(runs=1, min_seconds=0, warmup=0, conditions=False))
    err = caught.value
    assert err.exit_code == 3 and err.device == "local"
    assert str(err).splitlines()[0] == "local: " + _expected_refusal(python).removeprefix("error: ")
    assert "python = " in (err.hint or "")


def test_probe_warns_of_old_python(tmp_path):
    from edgeopt.devices import probes
    python = _interpreter("3.6")
    out = _run(["/bin/sh", "-c", probes.command(python, str(tmp_path))], text=True).stdout
    warnings = probes.assess(probes.parse(out), None)
    assert any(w.startswith("python 3.6.") and "needs Python 3.8 or newer" in w for w in warnings), warnings


# ----------------------------------------------------------------------- 3.8 and 3.10: the runner works

@pytest.fixture(scope="module", params=sorted(oldpython.RUNNER_PYTHONS))
def runner_python(request) -> str:
    """The cached venv's python for 3.8 / 3.10 (numpy + onnxruntime + a TFLite runtime)."""
    try:
        return oldpython.runner_venv(request.param)
    except oldpython.Unavailable as e:
        pytest.skip(str(e))


def _versions(python: str) -> dict:
    code = ("import json, sys, numpy, onnxruntime\n"
            "try:\n    import ai_edge_litert as tfl\nexcept ImportError:\n    import tflite_runtime as tfl\n"
            "print(json.dumps({'python': '%d.%d' % sys.version_info[:2], 'onnxruntime': onnxruntime.__version__,"
            " 'tflite': [tfl.__name__, getattr(tfl, '__version__', None)]}))")
    p = _run([python, "-c", code], text=True)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


@pytest.mark.parametrize("model", ["onnx_model", "tflite_model"])
def test_bench_as_the_host_runs_it(runner_python, model, request, tmp_path):
    """bench_device on a device whose python is the old interpreter: push, ``python - bench`` with the host's
    bootstrap, the result parsed; it ran the artifact pushed, on that Python's runtime."""
    artifact = str(request.getfixturevalue(model))
    versions = _versions(runner_python)
    device = local_device(python=runner_python, workdir=str(tmp_path / "wd"))
    res = bench_device(device, artifact, BenchOptions(runs=5, min_seconds=0, warmup=1, conditions=False))
    assert res["runs"] >= 5 and res["latency_ms"]["p50"] > 0
    if model == "onnx_model":
        assert (res["runtime"]["name"], res["runtime"]["version"]) == ("onnxruntime", versions["onnxruntime"])
    else:
        assert res["runtime"]["name"] == versions["tflite"][0]


@pytest.mark.parametrize("model", ["onnx_model", "tflite_model"])
def test_load_and_run_equals_the_host(runner_python, model, request, tmp_path):
    """``edgeopt.runtime.load(path).run(x)`` in the old interpreter (from a bundle's package) gives the host's
    outputs: the same values, not only the same shapes."""
    artifact = str(request.getfixturevalue(model))
    host = edgeopt.runtime.load(artifact)
    shape = [1 if d is None or isinstance(d, str) else d for d in host.inputs[0].shape]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code = ("import sys, numpy, edgeopt.runtime\n"
            "outs = edgeopt.runtime.load(sys.argv[1]).run(numpy.load(sys.argv[2]))\n"
            "numpy.savez(sys.argv[3], *outs)\n")
    p = _run([runner_python, "-c", code, artifact, str(tmp_path / "x.npy"), str(tmp_path / "y.npz")],
             cwd=_bundle_dir(tmp_path))
    assert p.returncode == 0, p.stderr.decode()[-2000:]
    with np.load(tmp_path / "y.npz") as got:
        theirs = [got[f"arr_{i}"] for i in range(len(got.files))]
    ours = host.run(x)
    assert len(theirs) == len(ours)
    for a, b in zip(theirs, ours):
        assert a.dtype == b.dtype and a.shape == b.shape
        # float32 kernels of other runtime releases may round differently in the last bits; INT8 ones may not
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)



@pytest.mark.parametrize("model", ["onnx_model", "tflite_model"])
def test_val_samples_on_the_old_pythons(runner_python, model, request, tmp_path):
    """The runner's --val on Python 3.8 (numpy 1.24) and 3.10: the samples run, the .npz comes back and reads as
    the host's own run does (an older runtime release may round float kernels in the last bits)."""
    artifact = str(request.getfixturevalue(model))
    host = edgeopt.runtime.load(artifact)
    x = np.random.default_rng(5).standard_normal([6] + list(host.inputs[0].source_shape[1:])).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    device = local_device(python=runner_python, workdir=str(tmp_path / "wd"))
    res = bench_device(device, artifact, BenchOptions(runs=2, min_seconds=0, warmup=1, conditions=False,
                                                      val=str(tmp_path / "x.npy")))
    acc = res["accuracy"]
    assert acc["samples"] == 6 and acc["runtime"]["name"] == res["runtime"]["name"]
    for m in acc["vs_host"].values():
        assert m["max_abs_err"] <= 1e-5 and m.get("top1_agreement", 1.0) == 1.0

# ------------------------------------------------------------------------------- over real SSH, via the CLI

@pytest.mark.ssh
def test_cli_bench_over_ssh_old_and_supported_python(lab, onnx_model, runner_python):
    """``edgeopt bench`` over a real sshd: a device whose python is 3.6 is that device's error (exit 3, the
    runner's line, a hint); one whose python is 3.8/3.10 gives a result from that Python's onnxruntime."""
    from edgeopt_testkit.cli import edgeopt_cli
    old = _interpreter("3.6")
    lab.start("jp4")
    p = edgeopt_cli("bench", onnx_model, "--device", "jp4", "--inventory", lab.inventory(python=old), "--runs", 1,
                    "--min-seconds", 0)
    assert p.returncode == 3 and p.stdout == "" and "Traceback" not in p.stderr
    lines = p.stderr.splitlines()
    assert lines[0] == "error: jp4: " + _expected_refusal(old).removeprefix("error: ")
    assert lines[1].startswith("hint: set python = ")
    p = edgeopt_cli("bench", onnx_model, "--device", "jp4", "--inventory", lab.inventory(python=runner_python),
                    "--runs", 3, "--min-seconds", 0, "--json")
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)  # one device: its result itself
    assert res["runtime"]["name"] == "onnxruntime"
    assert res["runtime"]["version"] == _versions(runner_python)["onnxruntime"]
