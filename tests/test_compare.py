"""compare: change in p50/p90 with a Mann-Whitney U test, the regression gate (exit 1), JUnit XML; and a real
FP32-vs-INT8 pair of the same model benched on a namespace device."""
import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from edgeopt.results import compare
from edgeopt_testkit import edgeopt_cli


@pytest.fixture(autouse=True)
def no_history(monkeypatch):
    """No history unless a test gives one: result ids mean nothing here."""
    monkeypatch.setenv("EDGEOPT_HISTORY", "off")


def result(samples, device="pi-01", file="m.tflite", sha="aa"):
    a = np.asarray(samples)
    return {"device": device, "target": "rpi5", "artifact": {"file": file, "sha256": sha * 32},
            "latency_ms": {k: float(np.percentile(a, q)) for k, q in (("p50", 50), ("p90", 90), ("p99", 99))}
            | {"mean": float(a.mean()), "cv": float(a.std(ddof=1) / a.mean())},
            "runs": int(a.size), "samples_ms": a.tolist(), "clean": True}


def lognormal(n, scale, seed):
    return np.random.default_rng(seed).lognormal(np.log(scale), 0.05, n)


def write(path, obj):
    path.write_text(json.dumps(obj))
    return path


def test_gate_on_json_files(tmp_path):
    base = write(tmp_path / "a.json", result(lognormal(300, 10.0, 1)))
    slow = write(tmp_path / "b.json", result(lognormal(300, 11.0, 2), sha="bb"))   # +10 %
    same = write(tmp_path / "c.json", result(lognormal(300, 10.0, 3), sha="cc"))

    p = edgeopt_cli("compare", base, slow, "--max-regression", 5, "--json", "--junit", tmp_path / "j.xml")
    assert p.returncode == 1, p.stderr
    rep = json.loads(p.stdout)
    pair = rep["pairs"][0]
    assert rep["regressed"] and pair["verdict"] == "regression"
    assert 8 < pair["change_pct"]["p50"] < 12 and pair["test"]["p_slower"] < 1e-10
    lo, hi = pair["ci95_p50_change_pct"]
    assert lo < pair["change_pct"]["p50"] < hi
    assert p.stderr.startswith("error: regression: pi-01 p50 +")
    root = ET.parse(tmp_path / "j.xml").getroot()
    cases = root.findall("testsuite/testcase")
    assert root.get("failures") == "1" and len(cases) == 1
    assert cases[0].get("name") == "pi-01 p50 regression <= 5%" and cases[0].find("failure") is not None

    # beyond 15 %: no regression; the other way round: faster
    assert edgeopt_cli("compare", base, slow, "--max-regression", 15).returncode == 0
    p = edgeopt_cli("compare", slow, base, "--json", "--junit", tmp_path / "k.xml")
    assert p.returncode == 0 and json.loads(p.stdout)["pairs"][0]["verdict"] == "faster"
    assert ET.parse(tmp_path / "k.xml").getroot().get("failures") == "0"
    # noise is not a regression, even with a tiny budget
    p = edgeopt_cli("compare", base, same, "--max-regression", 0.0, "--json")
    pair = json.loads(p.stdout)["pairs"][0]
    assert abs(pair["change_pct"]["p50"]) < 2 and (p.returncode == 0) == (not pair["regressed"])
    assert pair["test"]["p_slower"] > 0.01 or pair["change_pct"]["p50"] > 0
    # the table
    p = edgeopt_cli("compare", base, slow)
    assert p.returncode == 1 and "regression" in p.stdout and "+" in p.stdout


def test_without_samples_the_change_decides_and_says_so(tmp_path):
    a, b = result(lognormal(100, 10.0, 1)), result(lognormal(100, 12.0, 2))
    del a["samples_ms"], b["samples_ms"]
    rep = compare.compare([a], [b], max_regression=5)
    assert rep["regressed"] and "no significance test" in rep["pairs"][0]["summary"]


def test_pairs_by_device(tmp_path):
    a = [result(lognormal(200, 10, 1), "pi-01"), result(lognormal(200, 20, 2), "pi-02")]
    b = [result(lognormal(200, 20.2, 3), "pi-02"), result(lognormal(200, 13, 4), "pi-01")]
    rep = compare.compare(a, b, max_regression=5)
    by = {p["device"]: p for p in rep["pairs"]}
    assert by["pi-01"]["regressed"] and not by["pi-02"]["regressed"] and rep["regressed"]
    with pytest.raises(Exception, match="no device is in both"):
        compare.compare(a, [result([1.0, 2.0], "jet-01"), result([1.0, 2.0], "jet-02")])


def test_bad_references():
    p = edgeopt_cli("compare", "nope.json", "also-nope.json")
    assert p.returncode == 2 and "neither a result id nor a JSON file" in p.stderr
    p = edgeopt_cli("compare", "1", "2", "--history", "/nonexistent-dir-xyz/sub/h.sqlite")
    assert p.returncode == 2


# ----------------------------------------------------------------- a real FP32 vs INT8 pair on a device

BUILD = r"""
import os, sys, json
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np, tensorflow as tf
out = sys.argv[1]
tf.keras.utils.set_random_seed(0)
# Convolutions alone gain little from INT8 on an x86 CPU without VNNI (XNNPACK: ~1.2x here); a large
# fully-connected layer is memory-bound, where INT8 weights (4x smaller) make it clearly faster (~2x).
L = tf.keras.layers
m = tf.keras.Sequential([tf.keras.Input((64, 64, 16)),
    L.Conv2D(32, 3, padding="same", activation="relu"), L.MaxPooling2D(),
    L.Conv2D(32, 3, padding="same", activation="relu"), L.MaxPooling2D(),
    L.Flatten(), L.Dense(1024, activation="relu"), L.Dense(10)])
m.save(f"{out}/cnn.keras")
open(f"{out}/cnn.fp32.tflite", "wb").write(tf.lite.TFLiteConverter.from_keras_model(m).convert())
np.save(f"{out}/calib.npy", np.random.default_rng(0).standard_normal((64, 64, 64, 16)).astype(np.float32))
import edgeopt
man = edgeopt.convert(f"{out}/cnn.keras", target="rpi", calib=f"{out}/calib.npy", out=f"{out}/int8")
print(json.dumps(man["artifacts"][0]))
"""


@pytest.mark.slow
@pytest.mark.ssh
def test_fp32_vs_int8_on_a_device(lab, tmp_path):
    p = subprocess.run([sys.executable, "-c", BUILD, str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    art = json.loads(p.stdout.strip().splitlines()[-1])
    assert art["precision"] == "int8"
    fp32, int8 = tmp_path / "cnn.fp32.tflite", tmp_path / "int8" / art["file"]
    lab.start("pi-ns", netns=lab.netns())
    inv = lab.inventory()
    env = {"EDGEOPT_HISTORY": str(tmp_path / "h.sqlite")}
    out = {}
    for name, path in (("fp32", fp32), ("int8", int8)):
        r = edgeopt_cli("bench", path, "--device", "pi-ns", "--inventory", inv, "--runs", 100, "--min-seconds", 2,
                        "--warmup-seconds", 0.5, "--threads", 1, "--json", env=env)
        assert r.returncode == 0, r.stderr
        out[name] = write(tmp_path / f"{name}.json", json.loads(r.stdout))
    res = {k: json.loads(v.read_text()) for k, v in out.items()}
    speedup = res["fp32"]["latency_ms"]["p50"] / res["int8"]["latency_ms"]["p50"]
    assert speedup > 1.4, f"INT8 only {speedup:.2f}x faster"
    assert res["int8"]["id"] == 2 and res["fp32"]["id"] == 1

    # slow direction: baseline INT8, candidate FP32 -> regression, exit 1 (files and history ids alike)
    p = edgeopt_cli("compare", out["int8"], out["fp32"], "--max-regression", 5, "--json", "--junit",
                    tmp_path / "slow.xml",
                    env=env)
    assert p.returncode == 1, p.stderr
    pair = json.loads(p.stdout)["pairs"][0]
    assert pair["regressed"] and pair["change_pct"]["p50"] > 30 and pair["test"]["p_slower"] < 1e-6
    case = ET.parse(tmp_path / "slow.xml").getroot().find("testsuite/testcase")
    assert case.find("failure") is not None and "regression" in case.find("failure").get("message")
    assert edgeopt_cli("compare", "2", "1", env=env).returncode == 1
    # fast direction: baseline FP32, candidate INT8 -> exit 0
    p = edgeopt_cli("compare", out["fp32"], out["int8"], "--max-regression", 5, "--json", "--junit",
                    tmp_path / "fast.xml",
                    env=env)
    assert p.returncode == 0, p.stderr
    pair = json.loads(p.stdout)["pairs"][0]
    assert pair["verdict"] == "faster" and pair["change_pct"]["p50"] < -20 and pair["test"]["p_faster"] < 1e-6
    assert ET.parse(tmp_path / "fast.xml").getroot().find("testsuite").get("failures") == "0"
    assert edgeopt_cli("compare", "1", "2", env=env).returncode == 0
    # the same pair as a report (kept for a look: tests/out is not needed, tmp_path is enough)
    p = edgeopt_cli("report", "1", "2", "--out", tmp_path / "r.html", "--markdown", tmp_path / "r.md", env=env)
    assert p.returncode == 0 and "faster" in (tmp_path / "r.md").read_text()
