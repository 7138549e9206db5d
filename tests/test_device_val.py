"""The on-device accuracy check (bench --val, deploy --val): a real converted artifact's outputs on a device (this
machine through --local, a real sshd device) equal the host's for the same samples, checked against numbers computed
here independently; a device whose reply is bad (wrong shape, NaN, too big, not a .npz) is one error line, exit 3;
integer-input models; the same numbers from an unpacked bundle through edgeopt.runtime."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from edgeopt import runtime
from edgeopt.devices import bench as device_bench, inventory, val as device_val
from edgeopt.devices.connection import LocalConnection, Result
from edgeopt.errors import DeviceError
from edgeopt_testkit import assert_one_error, edgeopt_cli, firmware, save_arrays
from edgeopt_testkit.build import onnx_graph

N_VAL = 60


def js(p):
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


@pytest.fixture(scope="module")
def rpi(tmp_path_factory, onnx_model):
    """The small CNN deployed for rpi5 on this machine (--local) with --val (labels included): its JSON, out dir,
    data and environment, for the tests below to reuse."""
    d = tmp_path_factory.mktemp("devval")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((N_VAL, 3, 32, 32)).astype(np.float32)
    labels = rng.integers(0, 10, N_VAL)
    files = save_arrays(d, cal=rng.standard_normal((40, 3, 32, 32)).astype(np.float32))
    np.savez(d / "val.npz", input=x, labels=labels)
    env = {"EDGEOPT_LOCAL_WORKDIR": str(d / "wd"), "EDGEOPT_CACHE": str(d / "cache")}
    out = d / "out"
    res = js(edgeopt_cli("deploy", onnx_model, "--target", "rpi5", "--local", "--calib", files["cal"], "--val",
                         d / "val.npz", "--out", out, "--runs", 5, "--min-seconds", 0, "--json", env=env, cwd=d))
    return {"res": res, "out": out, "x": x, "labels": labels, "val": d / "val.npz", "env": env, "dir": d,
            "model": str(onnx_model)}


def test_local_deploy_val_equals_the_host(rpi):
    (r,) = rpi["res"]["results"]
    acc = r["accuracy"]
    assert acc["samples"] == N_VAL and acc["data"]["source"] == "val.npz"
    assert acc["reference"] == f"fp32 source model (onnxruntime CPU) {os.path.basename(rpi['model'])}"
    assert acc["runtime"] == {k: r["runtime"][k] for k in ("name", "version", "delegate", "provider")}
    assert acc["runtime"]["delegate"] == "xnnpack"
    dev, host = acc["outputs"]["logits"], acc["host"]["outputs"]["logits"]
    assert acc["same_as_host"] is True and acc["vs_host"]["logits"]["max_abs_err"] == 0.0
    assert dev == host  # the same XNNPACK: the same numbers
    # the conversion's own check ran on the same samples against the same reference: the same numbers again
    assert dev == rpi["res"]["manifest"]["accuracy"]["outputs"]["logits"]
    # and computed here, independently: the artifact through edgeopt.runtime, FP32 through onnxruntime
    got = runtime.load(str(rpi["out"])).run(rpi["x"])[0]
    ref = firmware.fp32_reference(rpi["model"], rpi["x"])
    assert dev["top1_agreement"] == pytest.approx(float(np.mean(got.argmax(1) == ref.argmax(1))), abs=1e-6)
    assert dev["top1_accuracy"] == pytest.approx(float(np.mean(got.argmax(1) == rpi["labels"])), abs=1e-6)
    assert dev["fp32_top1_accuracy"] == pytest.approx(float(np.mean(ref.argmax(1) == rpi["labels"])), abs=1e-6)
    assert dev["max_abs_err"] == pytest.approx(float(np.max(np.abs(got - ref))), abs=1e-6)
    assert acc["transfer"]["bytes"] > N_VAL * 3 * 32 * 32 * 4 and acc["transfer"]["skipped"] is False
    # the table: a column and a line with the host's numbers beside the device's
    p = edgeopt_cli("bench", rpi["out"], "--local", "--val", rpi["val"], "--runs", 3, "--min-seconds", 0,
                    env=rpi["env"], cwd=os.path.dirname(rpi["model"]))
    assert p.returncode == 0, p.stderr
    assert "device check" in p.stdout and f"top-1 {dev['top1_agreement']:.3f} = host" in p.stdout
    assert (f"local: on-device check, {N_VAL} samples vs fp32 source model (onnxruntime CPU)" in p.stdout
            and f"top-1 agreement {dev['top1_agreement']:.3f} (host {host['top1_agreement']:.3f})" in p.stdout)


def test_ssh_bench_val_finds_the_source_model_and_equals_the_host(rpi, lab, tmp_path):
    lab.start("pi-01", target="rpi5")
    inv = lab.inventory()
    args = ["bench", rpi["out"], "--device", "pi-01", "--inventory", inv, "--val", rpi["val"], "--runs", 3,
            "--min-seconds", 0, "--json"]
    # the source model is found in the current directory by the name and SHA-256 the manifest records
    r = js(edgeopt_cli(*args, cwd=os.path.dirname(rpi["model"])))
    acc = r["accuracy"]
    assert acc["reference"].startswith("fp32 source model (onnxruntime CPU)")
    assert r["config"]["threads"] == 4 and acc["runtime"]["delegate"] == "xnnpack"  # rpi5's threads on the device
    local = rpi["res"]["results"][0]["accuracy"]["outputs"]
    assert acc["outputs"] == local and acc["same_as_host"] is True
    assert acc["transfer"]["skipped"] is False
    # elsewhere, no source model: the host's run of the artifact is the reference, and the result says so
    r = js(edgeopt_cli(*args, cwd=tmp_path))
    acc = r["accuracy"]
    assert acc["reference"].startswith("the host's run of the artifact (ai_edge_litert")
    assert acc["host"]["outputs"] is None and acc["transfer"]["skipped"] is True  # the samples were sent once
    assert any("no FP32 reference: the source model" in n for n in acc["notes"])
    assert acc["outputs"]["logits"]["max_abs_err"] == 0.0 and acc["outputs"]["logits"]["top1_agreement"] == 1.0
    assert acc["outputs"]["logits"]["top1_accuracy"] == local["logits"]["top1_accuracy"]


_TAMPER = r'''#!/bin/sh
# a device whose runner output is replaced after the run: MODE is read from a file beside this script
"{python}" "$@"; rc=$?
out=""; prev=""
for a in "$@"; do [ "$prev" = "--val-out" ] && out="$a"; prev="$a"; done
[ -n "$out" ] && "{python}" - "$out" "$(cat {mode})" <<'EOF'
import sys, numpy as np
out, mode = sys.argv[1], sys.argv[2]
a = np.load(out)["output_0"]
if mode == "nan":
    a[3, 2] = np.nan
elif mode == "shape":
    a = a[:-1]
elif mode == "big":
    a = np.zeros((a.shape[0] * 50, a.shape[1]), np.float32)
np.savez(open(out, "wb"), output_0=a)
EOF
exit $rc
'''


def test_hostile_reply_over_ssh_is_one_error_line(rpi, lab, tmp_path):
    lab.start("pi-bad", target="rpi5")
    mode = tmp_path / "mode"
    py = tmp_path / "python3"
    py.write_text(_TAMPER.format(python=sys.executable, mode=mode))
    py.chmod(0o755)
    inv = lab.inventory(python=str(py))
    args = ["bench", rpi["out"], "--device", "pi-bad", "--inventory", inv, "--val", rpi["val"], "--runs", 2,
            "--min-seconds", 0]
    for what, needle in (("nan", "output 'logits' holds 1 NaN or infinite values"),
                         ("shape", f"output 'logits' has shape ({N_VAL - 1}, 10), expected ({N_VAL}, 10)"),
                         ("big", "bytes or more, the outputs are 2400")):
        mode.write_text(what)
        err = assert_one_error(edgeopt_cli(*args, "--json"), "error: pi-bad: the device's outputs for the "
                               "validation samples are unusable: ", needle, code=3)
        assert "hint:" in err
    mode.write_text("none")  # the same wrapper, untouched outputs: a good result
    assert js(edgeopt_cli(*args, "--json", cwd=os.path.dirname(rpi["model"])))["accuracy"]["same_as_host"] is True


class _Tampering(LocalConnection):
    """This machine as a device whose reply to the host's read of the outputs (or the runner's JSON) is replaced."""

    def __init__(self, device, blob=None, summary=None):
        super().__init__(device)
        self.blob, self.summary = blob, summary

    def run(self, cmd, input=None, timeout=None, check=False, max_output=None):
        res = super().run(cmd, input=input, timeout=timeout, check=check, max_output=max_output)
        if self.blob is not None and isinstance(cmd, str) and cmd.startswith("head -c "):
            assert max_output and timeout  # bounded in bytes and time
            return Result(0, self.blob[:max_output], b"", 0.0)
        if self.summary is not None and input is not None:  # the runner's JSON line
            lines = res.out.splitlines()
            k = max(i for i, ln in enumerate(lines) if ln.startswith("{"))
            data = json.loads(lines[k])
            data["val"] = self.summary
            lines[k] = json.dumps(data)
            return Result(res.rc, "\n".join(lines).encode(), res.stderr, res.seconds)
        return res


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _pickled() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        b = io.BytesIO()
        np.save(b, np.array([{"x": 1}], dtype=object), allow_pickle=True)
        z.writestr("output_0.npy", b.getvalue())
    return buf.getvalue()


def _bomb() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        b = io.BytesIO()
        np.save(b, np.zeros((N_VAL * 1000, 10), np.float32))
        z.writestr("output_0.npy", b.getvalue())
    return buf.getvalue()


@pytest.fixture(scope="module")
def prepared(rpi):
    """The host's part of the check, prepared once for the fake-connection tests."""
    check = device_val.prepare(str(rpi["out"] / "model.int8.tflite"), str(rpi["val"]), 1000)
    yield check
    check.cleanup()


GOOD = (N_VAL, 10)


@pytest.mark.parametrize("blob, summary, needle", [
    (b"not a zip", None, "not a .npz of arrays (BadZipFile"),
    (_npz(output_0=np.zeros(GOOD, np.float32), extra=np.zeros(1)), None, "members output_0.npy, extra.npy"),
    (_npz(logits=np.zeros(GOOD, np.float32)), None, "members logits.npy, expected output_0.npy"),
    (_pickled(), None, "not a .npz of arrays (ValueError: Object arrays cannot be loaded"),
    (_npz(output_0=np.zeros(GOOD, np.float64)), None, "output 'logits' is float64, expected float32"),
    (_npz(output_0=np.zeros((N_VAL * 2000, 10), np.float32)), None, "bytes or more, the outputs are 2400"),
    (_npz(output_0=np.zeros(GOOD, np.float16)), None, "output 'logits' is float16, expected float32"),
    (_npz(output_0=np.zeros((N_VAL, 11), np.float32)), None, "output 'logits' has shape (60, 11), expected (60, 10)"),
    (_npz(output_0=np.full(GOOD, np.inf, np.float32)), None, "output 'logits' holds 600 NaN or infinite values"),
    (_bomb(), None, "bytes unpacked, the outputs are 2400"),
    (None, {"samples": 3}, f"did not run the {N_VAL} validation samples (it reports 3)"),
    (None, "nonsense", "(no val summary in its reply)"),
], ids=["not-zip", "extra-member", "wrong-name", "pickle", "float64", "oversize", "float16", "shape", "inf", "bomb",
        "count", "no-summary"])
def test_hostile_reply_through_a_fake_connection(rpi, prepared, tmp_path, blob, summary, needle):
    dev = inventory.local_device(target="rpi5", workdir=str(tmp_path / "wd"))
    opts = device_bench.BenchOptions(runs=2, min_seconds=0, warmup=1, val_check=prepared, conditions=False)
    with pytest.raises(DeviceError) as e:
        device_bench.bench_device(dev, str(rpi["out"]), opts, conn=_Tampering(dev, blob, summary))
    assert needle in e.value.message and e.value.exit_code == 3 and e.value.message.count("\n") == 0
    # among other devices: an error entry for this one, never a metric
    (entry,) = device_bench.for_each_device(
        [dev], lambda d: device_bench.bench_device(d, str(rpi["out"]), opts, conn=_Tampering(d, blob, summary)))
    assert set(entry) == {"device", "target", "error", "hint", "exit_code"} and entry["exit_code"] == 3


def test_integer_input_model_val_on_the_local_device(tmp_path):
    """Token ids (int64) -> embedding -> mean -> scores, QDQ for Jetson: the ids reach the device as they are."""
    rng = np.random.default_rng(0)
    model = tmp_path / "ids.onnx"
    onnx_graph([("Gather", ["emb", "ids"], ["e"], {"axis": 0}),
                ("ReduceMean", ["e"], ["m"], {"axes": [1], "keepdims": 0}), ("Gemm", ["m", "fw", "fb"], ["logits"])],
               {"ids": ([1, 8], "int64")}, {"logits": [1, 10]},
               {"emb": rng.standard_normal((20, 4)).astype(np.float32),
                "fw": rng.standard_normal((4, 10)).astype(np.float32), "fb": np.zeros(10, np.float32)}, path=model)
    files = save_arrays(tmp_path, cal=rng.integers(0, 20, (40, 8)))
    ids = rng.integers(0, 20, (30, 8))
    np.savez(tmp_path / "val.npz", ids=ids, labels=rng.integers(0, 10, 30))
    env = {"EDGEOPT_LOCAL_WORKDIR": str(tmp_path / "wd"), "EDGEOPT_CACHE": str(tmp_path / "cache")}
    res = js(edgeopt_cli("deploy", model, "--target", "jetson", "--local", "--calib", files["cal"], "--val",
                         tmp_path / "val.npz", "--out", tmp_path / "out", "--runs", 3, "--min-seconds", 0, "--json",
                         env=env, cwd=tmp_path))
    acc = res["results"][0]["accuracy"]
    assert acc["samples"] == 30 and acc["same_as_host"] is True
    assert res["manifest"]["artifacts"][0]["inputs"][0]["dtype"] == "int64"
    assert acc["outputs"] == res["manifest"]["accuracy"]["outputs"]
    got = runtime.load(str(tmp_path / "out")).run(ids)[0]
    assert acc["outputs"]["logits"]["top1_accuracy"] == pytest.approx(
        float(np.mean(got.argmax(1) == np.load(tmp_path / "val.npz")["labels"])), abs=1e-6)


def test_bare_artifact_and_source_layout_without_a_source_model(tflite_model, tmp_path):
    """A bare artifact: the host's run is the reference. An output dir whose source is not found (here: an NHWC
    artifact taking NCHW data, as onnx2tf makes them): the device takes the source layout through its manifest."""
    env = {"EDGEOPT_LOCAL_WORKDIR": str(tmp_path / "wd")}
    m = runtime.load(str(tflite_model))
    shape = [4] + list(m.inputs[0].source_shape[1:])
    files = save_arrays(tmp_path, x=np.random.default_rng(1).uniform(0, 1, shape).astype(np.float32))
    r = js(edgeopt_cli("bench", tflite_model, "--local", "--val", files["x"], "--runs", 2, "--min-seconds", 0,
                       "--json", env=env, cwd=tmp_path))
    acc = r["accuracy"]
    assert acc["reference"].startswith("the host's run of the artifact (ai_edge_litert") and acc["samples"] == 4
    assert acc["host"]["outputs"] is None and acc["same_as_host"] is True
    assert any("a bare artifact" in n for n in acc["notes"])
    out = firmware.fake_out_dir(tmp_path / "nhwc")
    files = save_arrays(tmp_path, nchw=np.random.default_rng(2).standard_normal((5, 3, 8, 8)).astype(np.float32))
    r = js(edgeopt_cli("bench", out, "--local", "--val", files["nchw"], "--runs", 2, "--min-seconds", 0, "--json",
                       env=env, cwd=tmp_path))
    acc = r["accuracy"]
    assert acc["samples"] == 5 and acc["same_as_host"] is True and acc["outputs"]["features"]["kind"] == "dense"
    assert any("the source model 'tiny.onnx' was not found" in n for n in acc["notes"])


def test_unpacked_bundle_gives_the_devices_top1(rpi, tmp_path):
    """edgeopt.runtime from an unpacked bundle, on the same samples: the top-1 accuracy the device reported."""
    from edgeopt.firmware import bundle
    arc = bundle.build(str(rpi["out"]), str(tmp_path / "b.tar.gz"))["file"]
    root = tmp_path / "root"
    firmware.unpack(arc, root)
    code = f"""
import sys, json
sys.path.insert(0, {str(root)!r})
import numpy as np, edgeopt.runtime as rt
assert rt.__file__ == {str(root / 'edgeopt' / 'runtime.py')!r}
(logits,) = rt.run_samples(rt.load(), {str(rpi['val'])!r}, {str(tmp_path / 'outputs.npz')!r})
print(json.dumps(float(np.mean(logits.argmax(1) == np.load({str(rpi['val'])!r})["labels"]))))
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(tmp_path), timeout=300)
    assert p.returncode == 0, p.stderr
    dev = rpi["res"]["results"][0]["accuracy"]["outputs"]["logits"]
    assert json.loads(p.stdout.strip().splitlines()[-1]) == pytest.approx(dev["top1_accuracy"], abs=1e-6)
    with np.load(tmp_path / "outputs.npz", allow_pickle=False) as z:
        assert z.files == ["output_0"] and z["output_0"].shape == (N_VAL, 10)
    # the runner's own command line in the bundle does the same (the manifest beside the artifact describes it)
    p = subprocess.run([sys.executable, str(root / "edgeopt" / "runtime.py"), "bench", str(root / "model.int8.tflite"),
                        "--runs", "1", "--min-seconds", "0", "--val", str(rpi["val"]), "--val-out",
                        str(tmp_path / "o2.npz")], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.strip().splitlines()[-1])["val"]["samples"] == N_VAL
    with np.load(tmp_path / "outputs.npz") as a, np.load(tmp_path / "o2.npz") as b:
        np.testing.assert_array_equal(a["output_0"], b["output_0"])


def test_samples_file_is_deterministic_and_capped(rpi, monkeypatch):
    """The .npz pushed to devices has the same bytes for the same samples (sent once); the byte cap cuts samples
    with a note."""
    a = device_val.prepare(str(rpi["out"] / "model.int8.tflite"), str(rpi["val"]), 10)
    b = device_val.prepare(str(rpi["out"] / "model.int8.tflite"), str(rpi["val"]), 10)
    try:
        with open(a.samples_file, "rb") as fa, open(b.samples_file, "rb") as fb:
            assert fa.read() == fb.read()
        assert a.count == 10 and a.output_bytes == 10 * 10 * 4
    finally:
        a.cleanup()
        b.cleanup()
    monkeypatch.setattr(device_val, "MAX_DEVICE_VAL_BYTES", 7 * 3 * 32 * 32 * 4)
    c = device_val.prepare(str(rpi["out"] / "model.int8.tflite"), str(rpi["val"]), 1000, source=rpi["model"])
    try:
        assert c.count == 7 and c.data["samples"] == 7 and c.reference.startswith("fp32 source model")
        assert c.notes == [f"the first 7 of 60 validation samples ran on the device ({7 * 3 * 32 * 32 * 4 / 2 ** 20:g} "
                           "MiB, the most sent to a device)"]
    finally:
        c.cleanup()
