"""Every bad input gives one `error:` line and exit 2, never a traceback, and leaves nothing half-written."""
import os

import numpy as np
import pytest

from edgeopt_testkit import assert_one_error, edgeopt_cli, save_arrays




@pytest.fixture()
def calib_tiny(tmp_path):
    calib = np.random.default_rng(0).standard_normal((20, 3, 8, 8)).astype(np.float32)
    return save_arrays(tmp_path, calib=calib)["calib"]


def test_missing_model(tmp_path):
    assert_one_error(edgeopt_cli("convert", tmp_path / "nope.onnx", "--target", "rpi", "--calib", "random"), "nope.onnx",
         "no such file")


def test_empty_model(tmp_path):
    p = tmp_path / "empty.onnx"
    p.write_bytes(b"")
    assert_one_error(edgeopt_cli("convert", p, "--target", "rpi", "--calib", "random"), "empty.onnx", "empty")


def test_truncated_onnx(tmp_path, tiny_onnx, calib_tiny):
    data = open(tiny_onnx, "rb").read()
    p = tmp_path / "trunc.onnx"
    p.write_bytes(data[: len(data) // 2])
    assert_one_error(edgeopt_cli("convert", p, "--target", "rpi", "--calib", calib_tiny, "--out", tmp_path / "o"),
         "trunc.onnx", "not a valid ONNX model")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("suffix", [".onnx", ".tflite", ".keras", ".h5"])
def test_random_bytes(tmp_path, suffix):
    p = tmp_path / f"random{suffix}"
    p.write_bytes(np.random.default_rng(1).bytes(4096))
    assert_one_error(edgeopt_cli("convert", p, "--target", "rpi", "--calib", "random", "--out", tmp_path / "o"), p.name)
    assert not (tmp_path / "o").exists()


def test_unknown_target(tiny_onnx):
    err = assert_one_error(edgeopt_cli("convert", tiny_onnx, "--target", "jetsn", "--calib", "random"), "unknown target")
    assert "did you mean 'jetson'" in err


def test_wrong_calib_shape(tmp_path, tiny_onnx):
    p = tmp_path / "c.npy"
    np.save(p, np.zeros((10, 8, 8, 3), np.float32))
    err = assert_one_error(edgeopt_cli("convert", tiny_onnx, "--target", "rpi", "--calib", p, "--out", tmp_path / "o"),
               "'x'", "expected (N, 3, 8, 8)", "found (10, 8, 8, 3)")
    assert "transposed" in err
    assert not (tmp_path / "o").exists() and not [f for f in os.listdir(tmp_path) if ".tmp-" in f]


def test_calib_missing_input_name_npz(tmp_path, tiny_onnx):
    p = tmp_path / "c.npz"
    np.savez(p, a=np.zeros((4, 3, 8, 8), np.float32), b=np.zeros((4, 3, 8, 8), np.float32))
    assert_one_error(edgeopt_cli("convert", tiny_onnx, "--target", "rpi", "--calib", p), "no array for input(s) ['x']")


def test_calib_required(tiny_onnx):
    assert_one_error(edgeopt_cli("convert", tiny_onnx, "--target", "rpi"), "calibration data is required")


def test_unwritable_out(tmp_path, tiny_onnx, calib_tiny):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_error(edgeopt_cli("convert", tiny_onnx, "--target", "rpi", "--calib", calib_tiny, "--out", blocker / "sub"),
         "--out", "cannot write")


def test_bad_io_and_shape_options(tiny_onnx, calib_tiny):
    assert_one_error(edgeopt_cli("convert", tiny_onnx, "--target", "rpi", "--calib", calib_tiny, "--io", "int4"), "--io")
    assert_one_error(edgeopt_cli("convert", tiny_onnx, "--target", "rpi", "--calib", calib_tiny, "--input-shape", "x=1,a"),
         "--input-shape")
    assert_one_error(edgeopt_cli("convert", tiny_onnx, "--target", "rpi", "--calib", calib_tiny, "--input-shape", "z=1,3,8,8"),
         "no input named 'z'")


def test_keras_for_jetson_refused(tmp_path):
    p = tmp_path / "m.keras"
    import zipfile
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("config.json", "{}")
    assert_one_error(edgeopt_cli("convert", p, "--target", "jetson", "--calib", "random"), "not converted for Jetson")


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


def _commands():
    import typer.main

    import edgeopt.cli as cli
    cli.register_commands()
    return typer.main.get_command(cli.app).commands


def test_deploy_is_convert_plus_bench():
    """deploy = convert + push + bench, composed from the same declarations: every option of both with the same
    flags, type and default; only the variants deploy declares differ (help of 5, --samples' default)."""
    cmds = _commands()

    def params(name):
        return {p.name: p for p in cmds[name].params if p.param_type_name == "option"}
    conv, bench, dep = params("convert"), params("bench"), params("deploy")
    shared = {**conv, **bench}
    assert sorted(set(shared) - set(dep)) == []
    assert sorted(set(dep) - set(shared)) == ["no_bench"]
    for name, p in shared.items():
        d = dep[name]
        assert (d.opts, d.secondary_opts, d.type_descriptor.annotation, d.multiple, d.required) == \
            (p.opts, p.secondary_opts, p.type_descriptor.annotation, p.multiple, p.required), name
    assert sorted(n for n, p in shared.items() if dep[n].help != p.help) == ["device", "inventory", "json_out", "out",
                                                                             "val"]
    assert sorted(n for n, p in shared.items() if dep[n].default != p.default) == ["samples"]
    assert (bench["samples"].default, dep["samples"].default) == (True, False)


def test_one_flag_one_option_everywhere():
    """A long flag names the same option in every command (short ones may differ: -o is --out or --output)."""
    owner = {}
    for cmd in _commands().values():
        for p in cmd.params:
            for flag in p.opts + p.secondary_opts:
                if flag.startswith("--"):
                    owner.setdefault(flag, set()).add(p.name)
    assert {f: names for f, names in owner.items() if len(names) > 1} == {}
    assert owner["--trust-model-code"] == {"trust_model_code"} and owner["--max-cv"] == {"cv_threshold"}


def test_cli_defaults_are_the_runner_and_pipeline_defaults():
    """The CLI shows and passes the defaults the runner, BenchOptions and edgeopt.convert use (one home each)."""
    import inspect

    import edgeopt
    from edgeopt.conversion.defaults import DEFAULT_MAX_CALIB, DEFAULT_MAX_VAL
    from edgeopt.devices.bench import BenchOptions
    from edgeopt.runtime import RUNNER_DEFAULTS
    cmds = _commands()
    bench = {p.name: p.default for p in cmds["bench"].params}
    conv = {p.name: p.default for p in cmds["convert"].params}
    assert (bench["warmup"], bench["runs"], bench["min_seconds"], bench["lock_timeout"]) == (10, 100, 1.0, 600.0)
    for name in ("warmup", "runs", "min_seconds", "seed", "lock_timeout", "warmup_seconds", "sustained"):
        assert bench[name] == RUNNER_DEFAULTS[name] == getattr(BenchOptions(), name), name
    api = inspect.signature(edgeopt.convert).parameters
    assert (conv["max_samples"], conv["max_val_samples"]) == (DEFAULT_MAX_CALIB, DEFAULT_MAX_VAL) == (200, 1000)
    assert (api["max_samples"].default, api["max_val_samples"].default) == (200, 1000)


def test_default_conversion_passes_no_options():
    """Options left at their defaults are not passed on, so a default deploy keeps its cache key; a given one is."""
    from types import SimpleNamespace

    from edgeopt.cli.options import CONVERSION, conversion_options, default_of
    defaults = {p.name: default_of(p) for p in CONVERSION}
    assert conversion_options(SimpleNamespace(**defaults)) == {}
    given = dict(defaults, max_samples=50, trust_model_code=True, input_shapes=["x=1,3,8,8"])
    assert conversion_options(SimpleNamespace(**given)) == {"max_samples": 50, "trust_model_code": True,
                                                          "input_shapes": ["x=1,3,8,8"]}


def test_bad_calibration_method(tiny_onnx):
    assert_one_error(edgeopt_cli("convert", tiny_onnx, "--target", "rpi", "--calib", "random", "--calibration", "kl"),
         "--calibration 'kl': expected auto, mse, minmax, mean_minmax, percentile or entropy")


def test_keras_recurrent_loop_refused_not_a_crash(tmp_path):
    """A Keras LSTM over its time steps converts to a loop (a TFLite WHILE op), and TensorFlow's INT8 calibrator
    ended the whole process with a segmentation fault feeding it samples (exit 139, no error line, the output
    directory half-made). Refused before calibration, in a subprocess here so that a regression fails the test
    instead of the test run."""
    import keras
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((10, 8), name="x"), keras.layers.LSTM(16), keras.layers.Dense(4)])
    model.save(tmp_path / "rnn.keras")
    calib = np.random.default_rng(0).standard_normal((16, 10, 8)).astype(np.float32)
    files = save_arrays(tmp_path, calib=calib)
    result = edgeopt_cli("convert", tmp_path / "rnn.keras", "--target", "rpi", "--calib", files["calib"],
                         "--out", tmp_path / "o")
    assert_one_error(result, "rnn.keras", "has a loop", "unroll")
    assert not (tmp_path / "o").exists()
    # what the hint says to do converts: unrolled (set_ranges read every tensor of the float run and failed on a
    # SPLIT output it does not keep: "Tensor data is null", a traceback), all INT8 on rpi and Coral: the gates'
    # SPLIT, which the quantizer leaves float between a DEQUANTIZE and QUANTIZEs of the same grid, is made INT8
    # (tf_tflite.integer_splits; it needed --allow-float-fallback, and Coral refused it)
    import edgeopt
    unrolled = keras.Sequential([keras.Input((10, 8), name="x"), keras.layers.LSTM(16, unroll=True),
                                 keras.layers.Dense(4)])
    unrolled.set_weights(model.get_weights())
    unrolled.save(tmp_path / "unrolled.keras")
    for target in ("rpi", "coral"):
        m = edgeopt.convert(str(tmp_path / "unrolled.keras"), target, calib=files["calib"], val=files["calib"],
                            out=str(tmp_path / f"u-{target}"))
        assert m["calibration"]["recipe"]["calibration_method"] != "minmax"   # set_ranges ran
        (out,) = m["accuracy"]["outputs"].values()
        # rpi may keep the cell state's arithmetic as a float block (product_sum); never the SPLIT
        float_ops = set(m["artifacts"][0].get("float_ops") or [])
        assert out["sqnr_db"] > 20 and float_ops <= ({"ADD", "MUL", "TANH"} if target == "rpi" else set())
        with open(tmp_path / f"u-{target}" / m["artifacts"][0]["file"], "rb") as f:
            from edgeopt.converters import tf_tflite
            assert "SPLIT" in tf_tflite.op_graph(f.read()).kinds   # the gates' SPLIT is there, INT8


def test_convert_on_a_core_install_names_the_extra(tmp_path, tiny_onnx, calib_tiny):
    """`pip install edgeopt` (core: no onnx, TensorFlow or onnxruntime), then `edgeopt convert`: one error line
    naming the missing package and the extra that installs it, exit 2 (it was "internal error: ModuleNotFoundError"),
    nothing written. The core install is made here by blocking onnx's import."""
    import subprocess
    import sys
    code = ("import sys; sys.modules['onnx'] = None; from edgeopt.cli import main; "
            f"main(['convert', {str(tiny_onnx)!r}, '--target', 'rpi', '--calib', {str(calib_tiny)!r}, "
            f"'--out', {str(tmp_path / 'o')!r}])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    err = assert_one_error(r, "needs the Python package 'onnx'", 'pip install "edgeopt[all]"')
    assert "internal error" not in err and not (tmp_path / "o").exists()
