"""bench and deploy end to end through the real CLI against real sshd devices."""
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from edgeopt_testkit import edgeopt_cli, save_arrays
from edgeopt_testkit.build import fake_trtexec, no_tflite_runtime

pytestmark = pytest.mark.ssh
SPEC_KEYS = {"device", "target", "artifact", "runtime", "config", "latency_ms", "runs", "init_ms", "transfer"}


def js(p):
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_deploy_end_to_end_to_the_family(lab, tflite_model, tmp_path):
    lab.start("pi-01", target="rpi5")
    lab.start("pi-02", target="rpi4")
    jet = lab.start("jet-01", target="jetson-orin-nano")
    inv = lab.inventory()
    out = tmp_path / "build"
    args = ["deploy", tflite_model, "--target", "rpi", "--inventory", inv, "--out", out, "--runs", 20,
            "--min-seconds", 0.2, "--threads", 1, "--json"]
    res = js(edgeopt_cli(*args))
    assert res["manifest"]["target"]["name"] == "rpi5"
    art = res["manifest"]["artifacts"][0]
    assert sorted(r["device"] for r in res["results"]) == ["pi-01", "pi-02"]  # the rpi family only
    for r in res["results"]:
        assert SPEC_KEYS <= set(r)
        assert r["artifact"] == {"file": art["file"], "sha256": art["sha256"]}
        assert r["runtime"]["name"] == "ai_edge_litert" and r["runtime"]["delegate"] == "xnnpack"
        assert r["config"] == {"warmup": 10, "runs": 20, "min_seconds": 0.2, "threads": 1}
        assert r["runs"] >= 20 and 0 < r["latency_ms"]["min"] <= r["latency_ms"]["p50"] <= r["latency_ms"]["p99"]
        assert set(r["latency_ms"]) >= {"min", "p50", "p90", "p99", "mean", "std", "max"}
        assert r["transfer"]["bytes"] == art["bytes"] and r["transfer"]["skipped"] is False
        assert r["init_ms"] > 0
    assert jet.files() == []
    # again: the conversion is cached and nothing is sent
    p = edgeopt_cli(*args)
    res2 = js(p)
    assert all(r["transfer"] == {"bytes": 0, "seconds": r["transfer"]["seconds"], "skipped": True}
               for r in res2["results"])
    assert res2["manifest"] == res["manifest"]
    # the table
    p = edgeopt_cli(*args[:-1])
    assert p.returncode == 0 and "pi-01" in p.stdout and "cached" in p.stdout


def test_three_devices_in_parallel(lab, tflite_model):
    for n in ("a", "b", "c"):
        lab.start(f"pi-{n}")
    inv = lab.inventory()
    edgeopt_cli("bench", tflite_model, "--all", "--inventory", inv, "--runs", 1, "--min-seconds", 0,
                "--json")  # push once
    res = js(edgeopt_cli("bench", tflite_model, "--device", "pi-a,pi-b,pi-c", "--inventory", inv, "--runs", 1,
                         "--min-seconds", 3, "--threads", 1, "--json", "--no-samples"))
    assert [r["device"] for r in res] == ["pi-a", "pi-b", "pi-c"]
    assert all(r["transfer"]["skipped"] and r["runs"] > 10 for r in res)
    # in parallel: the three remote runs (each >= 3 s of measuring, longer than a loaded machine's start-up
    # jitter) were under way at the same time
    windows = [r["timing"]["run_window"] for r in res]
    assert all(end - start >= 3 for start, end in windows), windows
    assert max(s for s, _ in windows) < min(e for _, e in windows), f"runs did not overlap: {windows}"


def test_jetson_without_tensorrt_falls_back_and_says_so(lab, onnx_model, tmp_path):
    lab.start("jet-01", target="jetson-orin-nano")
    lab.start("jet-trt", target="jetson-orin-nano")
    exe = fake_trtexec(tmp_path)
    inv = lab.inventory(per_device={"jet-trt": {"trtexec": str(exe)}})
    res = js(edgeopt_cli("bench", onnx_model, "--device", "jet-01,jet-trt", "--inventory", inv, "--runs", 5,
                         "--min-seconds", 0, "--json"))
    fb, trt = res
    assert fb["runtime"]["name"] == "onnxruntime" and fb["runtime"]["provider"] == "CPUExecutionProvider"
    assert fb["fallback"] == {"wanted": "tensorrt", "used": "onnxruntime"}
    assert any("TensorRT (trtexec) not found" in n for n in fb["notes"])
    assert trt["runtime"]["name"] == "tensorrt" and trt["runtime"]["version"] == "10.3.0"
    assert trt["latency_ms"]["p50"] == 0.707031
    p = edgeopt_cli("bench", onnx_model, "--device", "jet-01", "--inventory", inv, "--runs", 5, "--min-seconds", 0)
    assert p.returncode == 0 and "fell back to onnxruntime" in p.stdout


def test_hostile_paths_reach_no_shell(lab, tflite_model, tmp_path):
    weird = "wd it's \"odd\"; touch PWNED; $(touch PWNED2) `touch PWNED3`"
    d = lab.start("pi-01", workdir=str(tmp_path / weird))
    inv = lab.inventory(python=sys.executable)
    model_dir = tmp_path / "models; rm -rf x 'q'"
    model_dir.mkdir()
    model = model_dir / "m $(id) 'x';.tflite"
    shutil.copy(tflite_model, model)
    p = edgeopt_cli("bench", model, "--device", "pi-01", "--inventory", inv, "--runs", 3, "--min-seconds", 0, "--json",
                    cwd=tmp_path)
    r = js(p)
    assert r["artifact"]["file"] == "m $(id) 'x';.tflite" and r["runs"] == 3
    assert (Path(d.workdir) / "artifacts" / r["artifact"]["sha256"] / model.name).is_file()
    assert not list(tmp_path.rglob("PWNED*")) and not list(Path("/root").glob("PWNED*"))
    assert (Path(d.workdir) / "bench.lock").exists()


def test_unknown_host_key_cli_exit_3_nothing_written(lab, tflite_model):
    d = lab.start("pi-new", known=False)
    inv = lab.inventory()
    p = edgeopt_cli("bench", tflite_model, "--device", "pi-new", "--inventory", inv, "--runs", 1)
    assert p.returncode == 3
    assert p.stderr.startswith("error: pi-new: host key unknown") and "Traceback" not in p.stderr
    assert "hint:" in p.stderr and d.files() == [] and p.stdout == ""
    p = edgeopt_cli("bench", tflite_model, "--device", "pi-new", "--inventory", inv, "--runs", 1, "--min-seconds", 0,
                    "--accept-new", "--json")
    assert js(p)["runs"] == 1


def test_missing_runtime_over_ssh_names_device_with_hint(lab, tflite_model, tmp_path):
    lab.start("pi-bare", target="rpi5")
    block = no_tflite_runtime(tmp_path)
    py = tmp_path / "python3"
    py.write_text(f"#!/bin/sh\nPYTHONPATH={block} exec {sys.executable} \"$@\"\n")
    py.chmod(0o755)
    inv = lab.inventory(python=str(py))
    p = edgeopt_cli("bench", tflite_model, "--device", "pi-bare", "--inventory", inv, "--runs", 1)
    assert p.returncode == 3
    assert p.stderr.startswith("error: pi-bare: runtime missing")
    assert "hint: run edgeopt devices --setup --device pi-bare" in p.stderr
    assert f"{py} -m venv --system-site-packages" in p.stderr and "-m pip install ai-edge-litert" in p.stderr
    p = edgeopt_cli("devices", "--inventory", inv, "--json")
    dev = js(p)["devices"][0]
    assert dev["reachable"] and dev["arch"] == os.uname().machine
    assert any("no TFLite runtime" in w for w in dev["warnings"])
    assert any("declared rpi5" in w for w in dev["warnings"]) or os.uname().machine == "aarch64"


def test_devices_reports_unreachable(lab):
    lab.start("pi-01")
    d2 = lab.start("pi-down")
    inv = lab.inventory()
    lab.stop_device(d2)
    p = edgeopt_cli("devices", "--inventory", inv, "--json")
    assert p.returncode == 3
    by = {d["device"]: d for d in json.loads(p.stdout)["devices"]}
    assert by["pi-01"]["reachable"] and by["pi-01"]["python"]["python"] == "%d.%d.%d" % sys.version_info[:3]
    assert not by["pi-down"]["reachable"] and "cannot connect" in by["pi-down"]["error"]
    assert "error: pi-down: cannot connect" in p.stderr


def test_local_deploy_and_bench(tflite_model, tmp_path):
    env = {"EDGEOPT_LOCAL_WORKDIR": str(tmp_path / "local wd"), "EDGEOPT_CACHE": str(tmp_path / "cache")}
    res = js(edgeopt_cli("deploy", tflite_model, "--target", "rpi5", "--local", "--runs", 5, "--min-seconds", 0,
                         "--json",
                         env=env, cwd=tmp_path))
    (r,) = res["results"]
    assert r["device"] == "local" and r["target"] == "rpi5" and r["runs"] == 5
    r = js(edgeopt_cli("bench", tflite_model, "--local", "--runs", 5, "--min-seconds", 0, "--json", env=env,
                       cwd=tmp_path))
    assert r["device"] == "local" and r["transfer"]["skipped"] is True


def test_local_deploy_passes_convert_and_bench_options(onnx_model, tmp_path):
    """deploy's convert options reach the conversion (and its cache key), its --input reaches the benchmark."""
    import numpy as np
    env = {"EDGEOPT_LOCAL_WORKDIR": str(tmp_path / "wd"), "EDGEOPT_CACHE": str(tmp_path / "cache")}
    rng = np.random.default_rng(0)
    files = save_arrays(tmp_path, cal=rng.standard_normal((40, 3, 32, 32)).astype(np.float32),
                        input=rng.standard_normal((3, 3, 32, 32)).astype(np.float32))
    base = ["deploy", onnx_model, "--target", "jetson", "--local", "--calib", files["cal"], "--runs", 5,
            "--min-seconds", 0, "--json"]
    res = js(edgeopt_cli(*base, "--calibration", "percentile", "--max-samples", 24, "--explain",
                         "--input", files["input"], env=env, cwd=tmp_path))
    m = res["manifest"]
    assert m["calibration"]["method"] == "percentile" and m["calibration"]["samples"] == 24
    assert m["layers"]["layers"]  # --explain: the per-layer report is in the manifest
    (r,) = res["results"]
    assert r["runs"] >= 5 and any("holds 3 samples: the first one is timed" in n for n in r["notes"])
    bad = edgeopt_cli(*base, "--calibration", "kl", env=env, cwd=tmp_path)
    assert bad.returncode == 2 and "error: --calibration 'kl'" in bad.stderr
