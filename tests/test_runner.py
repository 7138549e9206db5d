"""The on-device runner (edgeopt/runtime.py piped to ``python3 - bench``): output, the device lock, TensorRT via
trtexec (parser on a recorded log; a stand-in trtexec replays it), the onnxruntime fallback, missing runtimes."""
import fcntl
import json
import os
import subprocess
import sys
import time

import pytest

from edgeopt import runtime
from edgeopt.devices.bench import runner_source
from edgeopt_testkit.build import TRTEXEC_LOG, fake_trtexec, no_tflite_runtime



def run_runner(*args, python=sys.executable, env=None):
    p = subprocess.run([python, "-", "bench", *map(str, args)], input=runner_source(), capture_output=True,
                       env=env, timeout=120)
    return p.returncode, json.loads(p.stdout.decode().strip().splitlines()[-1]), p.stderr.decode()


def test_trtexec_summary_parser():
    text = TRTEXEC_LOG.read_text()
    assert runtime.parse_trtexec_version(text) == "10.3.0"
    assert runtime.parse_trtexec_version("&&&& RUNNING TensorRT.trtexec [TensorRT v8602] # trtexec") == "8.6.2"
    s = runtime.parse_trtexec_summary(text)
    assert s["latency_ms"] == {"min": 0.689453, "max": 1.92871, "mean": 0.716843, "p50": 0.707031, "p90": 0.731445,
                               "p95": 0.749023, "p99": 0.873047}
    assert s["gpu_compute_ms"]["p50"] == 0.636719
    assert s["throughput_qps"] == 1388.97 and s["walltime_s"] == 1.00218
    with pytest.raises(ValueError):
        runtime.parse_trtexec_summary("&&&& FAILED TensorRT.trtexec")


def test_runner_json_tflite(tflite_model):
    rc, res, _ = run_runner(tflite_model, "--runs", 30, "--min-seconds", 0, "--warmup", 2)
    assert rc == 0
    assert res["runtime"]["name"] == "ai_edge_litert" and res["runtime"]["delegate"] == "xnnpack"
    assert res["runs"] == 30 and len(res["samples_ms"]) == 30
    assert res["latency_ms"]["min"] <= res["latency_ms"]["p50"] <= res["latency_ms"]["p90"] <= res["latency_ms"]["max"]
    assert res["artifact"]["sha256"] == runtime._sha256(str(tflite_model)) and res["peak_rss_mb"] > 10


def test_fallback_to_onnxruntime_says_so(onnx_model):
    rc, res, _ = run_runner(onnx_model, "--runs", 5, "--min-seconds", 0, "--prefer-tensorrt",
                            "--trtexec", "/nonexistent/trtexec")
    assert rc == 0
    assert res["runtime"]["name"] == "onnxruntime" and res["runtime"]["provider"] == "CPUExecutionProvider"
    assert res["fallback"] == {"wanted": "tensorrt", "used": "onnxruntime"}
    assert res["notes"] == ["TensorRT (trtexec) not found on this device: fell back to onnxruntime with "
                            "CPUExecutionProvider"]


def test_tensorrt_path_builds_and_caches_engine(tmp_path, onnx_model):
    exe = fake_trtexec(tmp_path)
    cache = tmp_path / "engines"
    rc, res, _ = run_runner(onnx_model, "--prefer-tensorrt", "--trtexec", exe, "--engine-cache", cache,
                            "--runs", 100, "--min-seconds", 1)
    assert rc == 0, res
    assert res["runtime"] == {"name": "tensorrt", "version": "10.3.0", "delegate": None, "provider": "trtexec"}
    assert res["latency_ms"]["p50"] == 0.707031 and res["latency_ms"]["p99"] == 0.873047
    assert res["runs"] == 200 and len(res["samples_ms"]) == 200
    assert res["init_ms"] == pytest.approx(193.416)
    sha = runtime._sha256(str(onnx_model))
    assert (cache / f"{sha}.trt10.3.0.engine").exists() and res["engine"]["cached"] is False
    assert any("engine built on the device" in n for n in res["notes"])
    rc, res2, _ = run_runner(onnx_model, "--prefer-tensorrt", "--trtexec", exe, "--engine-cache", cache)
    assert res2["engine"]["cached"] is True
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert sum("--saveEngine" in c for c in calls) == 1  # built once, then cached
    assert any("--iterations=100" in c and "--duration=1" in c for c in calls)


def test_missing_runtime_is_exit_3(tmp_path, tflite_model):
    block = no_tflite_runtime(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(block))
    rc, res, _ = run_runner(tflite_model, "--runs", 1, env=env)
    assert rc == 3 and res["kind"] == "runtime_missing" and "pip install ai-edge-litert" in res["error"]


def test_lock_waits_then_fails_clearly(tmp_path, tflite_model):
    lock = tmp_path / "bench.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, b"pid 4242")
    try:
        t0 = time.monotonic()
        rc, res, err = run_runner(tflite_model, "--lock", lock, "--lock-timeout", 0.5, "--runs", 1)
        assert rc == 3 and res["kind"] == "busy" and "pid 4242" in res["error"]
        assert time.monotonic() - t0 >= 0.5 and "waiting for the benchmark lock" in err
        # released while a second runner waits (once it says so, however slow its start): it goes on
        p = subprocess.Popen([sys.executable, "-", "bench", str(tflite_model), "--lock", str(lock),
                              "--lock-timeout", "60", "--runs", "1", "--min-seconds", "0"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        p.stdin.write(runner_source())
        p.stdin.close()
        err = b""
        while b"waiting" not in err:
            line = p.stderr.readline()
            assert line, "runner ended without waiting for the lock"
            err += line
        fcntl.flock(fd, fcntl.LOCK_UN)
        out = p.stdout.read().decode()
        err += p.stderr.read()
        assert p.wait(timeout=120) == 0, err
        res = json.loads(out.strip().splitlines()[-1])
        assert res["runs"] == 1 and b"waiting" in err
    finally:
        os.close(fd)


def test_runner_argv_and_parser_come_from_one_table():
    """The host's argv parses back to the same values with the runner's parser; defaults are left out; an option
    the table does not have is refused on the host, before anything is sent."""
    examples = {int: 7, float: 2.5, str: "/w/x y", bool: True}  # none of them a default of the table
    values = {name: examples[kind] for name, kind, _default, _help in runtime.RUNNER_OPTIONS}
    assert "warmup" in values and "lock_timeout" in values and "prefer_tensorrt" in values
    argv = runtime.runner_argv("m.onnx", **values)
    parsed = vars(runtime.runner_parser().parse_args(argv))
    assert parsed == {"cmd": "bench", "artifact": "m.onnx", **values}
    assert runtime.runner_argv("m.tflite", warmup=10, runs=100, threads=None, prefer_tensorrt=False) == \
        ["bench", "m.tflite"]
    assert vars(runtime.runner_parser().parse_args(["bench", "m.tflite"])) == \
        {"cmd": "bench", "artifact": "m.tflite", **runtime.RUNNER_DEFAULTS}
    with pytest.raises(TypeError, match="keep_samples"):
        runtime.runner_argv("m.tflite", keep_samples=False)


def test_runtime_import_does_not_load_numpy():
    """The CLI reads the runner's defaults at start-up: importing edgeopt.runtime must not import numpy."""
    code = "import sys, edgeopt.runtime as r; assert r.RUNNER_DEFAULTS['runs'] == 100; print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_runner_val_runs_the_samples_on_the_timed_model(tflite_model, tmp_path):
    """--val/--val-out: every sample through the model that was timed; the outputs (output_0, ...) are what
    edgeopt.runtime gives in this process, and the summary names the runtime that ran them."""
    import numpy as np
    m = runtime.load(str(tflite_model))
    x = np.random.default_rng(3).uniform(-1, 1, [7] + list(m.inputs[0].source_shape[1:])).astype(np.float32)
    np.savez(tmp_path / "val.npz", **{m.inputs[0].name: x}, labels=np.arange(7))  # labels: not an input, left out
    out = tmp_path / "out.npz"
    rc, res, _ = run_runner(tflite_model, "--runs", 2, "--min-seconds", 0, "--threads", 2, "--val",
                            tmp_path / "val.npz", "--val-out", out)
    assert rc == 0, res
    assert res["val"]["samples"] == 7 and res["val"]["runtime"] == res["runtime"] and res["val"]["threads"] == 2
    assert res["val"]["outputs"] == [s.name for s in m.outputs]
    with np.load(out, allow_pickle=False) as z:
        assert z.files == ["output_0"] and z["output_0"].dtype == np.float32
        np.testing.assert_array_equal(z["output_0"], runtime.run_samples(m, {m.inputs[0].name: x})[0])
    assert [p.name for p in tmp_path.iterdir() if ".part-" in p.name] == []  # written by a rename
    rc, res, _ = run_runner(tflite_model, "--runs", 1, "--min-seconds", 0, "--val", tmp_path / "val.npz")
    assert rc == 4 and res["kind"] == "run_failed" and "--val needs --val-out" in res["error"]
    (tmp_path / "manifest.json").write_text(json.dumps({"artifacts": [{"file": "other.tflite"}]}))
    rc, res, _ = run_runner(tflite_model, "--runs", 1, "--min-seconds", 0, "--manifest", tmp_path / "manifest.json")
    assert rc == 4 and "does not describe tiny cnn.int8.tflite" in res["error"]
