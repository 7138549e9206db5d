"""Every bad input gives one `error:` line and exit 2, never a traceback, and leaves nothing half-written."""
import os

import numpy as np
import pytest

from conftest import edgeopt_cli


def _bad(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.startswith("error:"), r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    for n in needles:
        assert n in r.stderr, (n, r.stderr)
    return r.stderr


@pytest.fixture()
def calib_tiny(tmp_path):
    p = tmp_path / "calib.npy"
    np.save(p, np.random.default_rng(0).standard_normal((20, 3, 8, 8)).astype(np.float32))
    return str(p)


def test_missing_model(tmp_path):
    _bad(edgeopt_cli("convert", tmp_path / "nope.onnx", "--target", "rpi", "--calib", "random"), "nope.onnx",
         "no such file")


def test_empty_model(tmp_path):
    p = tmp_path / "empty.onnx"
    p.write_bytes(b"")
    _bad(edgeopt_cli("convert", p, "--target", "rpi", "--calib", "random"), "empty.onnx", "empty")


def test_truncated_onnx(tmp_path, tiny_onnx, calib_tiny):
    data = open(tiny_onnx, "rb").read()
    p = tmp_path / "trunc.onnx"
    p.write_bytes(data[: len(data) // 2])
    _bad(edgeopt_cli("convert", p, "--target", "rpi", "--calib", calib_tiny, "--out", tmp_path / "o"),
         "trunc.onnx", "not a valid ONNX model")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("suffix", [".onnx", ".tflite", ".keras", ".h5"])
def test_random_bytes(tmp_path, suffix):
    p = tmp_path / f"random{suffix}"
    p.write_bytes(np.random.default_rng(1).bytes(4096))
    _bad(edgeopt_cli("convert", p, "--target", "rpi", "--calib", "random", "--out", tmp_path / "o"), p.name)
    assert not (tmp_path / "o").exists()


def test_unknown_target(tiny_onnx):
    err = _bad(edgeopt_cli("convert", tiny_onnx, "--target", "jetsn", "--calib", "random"), "unknown target")
    assert "did you mean 'jetson'" in err


def test_wrong_calib_shape(tmp_path, tiny_onnx):
    p = tmp_path / "c.npy"
    np.save(p, np.zeros((10, 8, 8, 3), np.float32))
    err = _bad(edgeopt_cli("convert", tiny_onnx, "--target", "rpi", "--calib", p, "--out", tmp_path / "o"),
               "'x'", "expected (N, 3, 8, 8)", "found (10, 8, 8, 3)")
    assert "transposed" in err
    assert not (tmp_path / "o").exists() and not [f for f in os.listdir(tmp_path) if ".tmp-" in f]


def test_calib_missing_input_name_npz(tmp_path, tiny_onnx):
    p = tmp_path / "c.npz"
    np.savez(p, a=np.zeros((4, 3, 8, 8), np.float32), b=np.zeros((4, 3, 8, 8), np.float32))
    _bad(edgeopt_cli("convert", tiny_onnx, "--target", "rpi", "--calib", p), "no array for input(s) ['x']")


def test_calib_required(tiny_onnx):
    _bad(edgeopt_cli("convert", tiny_onnx, "--target", "rpi"), "calibration data is required")


def test_unwritable_out(tmp_path, tiny_onnx, calib_tiny):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _bad(edgeopt_cli("convert", tiny_onnx, "--target", "rpi", "--calib", calib_tiny, "--out", blocker / "sub"),
         "--out", "cannot write")


def test_bad_io_and_shape_options(tiny_onnx, calib_tiny):
    _bad(edgeopt_cli("convert", tiny_onnx, "--target", "rpi", "--calib", calib_tiny, "--io", "int4"), "--io")
    _bad(edgeopt_cli("convert", tiny_onnx, "--target", "rpi", "--calib", calib_tiny, "--input-shape", "x=1,a"),
         "--input-shape")
    _bad(edgeopt_cli("convert", tiny_onnx, "--target", "rpi", "--calib", calib_tiny, "--input-shape", "z=1,3,8,8"),
         "no input named 'z'")


def test_keras_for_jetson_refused(tmp_path):
    p = tmp_path / "m.keras"
    import zipfile
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("config.json", "{}")
    _bad(edgeopt_cli("convert", p, "--target", "jetson", "--calib", "random"), "not converted for Jetson")


def test_offline_guard_blocks_network():
    import socket

    from edgeopt.conversion.hermetic import NetworkBlocked, offline
    with offline():
        with pytest.raises(NetworkBlocked):
            socket.create_connection(("192.0.2.1", 80), timeout=1)
        with pytest.raises(NetworkBlocked):
            socket.getaddrinfo("example.com", 443)
    # restored afterwards
    assert socket.socket.connect.__name__ == "connect" and "offline" not in repr(socket.socket.connect)


def test_deploy_takes_every_convert_and_bench_option():
    """deploy = convert + push + bench: it takes their options, with the same help text (kept in step)."""
    import typer.main

    import edgeopt.cli as cli
    cli._register()
    cmds = typer.main.get_command(cli.app).commands

    def opts(name):
        return {o: p.help for p in cmds[name].params for o in p.opts if o.startswith("--")}
    conv, bench, dep = opts("convert"), opts("bench"), opts("deploy")
    own = {"--out", "--json", "--val", "--target", "--inventory", "--device", "--input", "--samples"}
    missing = sorted((set(conv) | set(bench)) - set(dep))
    assert missing == [], f"deploy lacks {missing}"
    differ = sorted(o for o in (set(conv) | set(bench)) & set(dep) - own
                    if dep[o] != conv.get(o, bench.get(o)) and dep[o] != bench.get(o, conv.get(o)))
    assert differ == [], f"help differs for {differ}"
