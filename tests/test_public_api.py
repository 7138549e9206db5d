"""The Python API is pinned: names, signatures and defaults of edgeopt.convert / bench / deploy and
edgeopt.runtime's public names. A change here is a change of the user contract, made on purpose.
The defaults must be the CLI's (edgeopt.cli.options declares every option once)."""
import inspect
import subprocess
import sys

import pytest

import edgeopt
import edgeopt.runtime

_ = inspect.Parameter.empty

CONVERT = {
    "model": _, "target": _, "calib": None, "val": None, "out": None, "input_shapes": None, "mean": None,
    "std": None, "io": None, "min_sqnr": None, "min_top1": None, "min_cosine": 0.9, "output_kinds": None,
    "accuracy_target": None,
    "max_float_layers": None,
    "allow_float_fallback": False, "allow_cpu_ops": False, "explain": False, "calibration_method": None,
    "max_samples": 200, "max_val_samples": 1000, "trust_model_code": False, "per_channel": True,
    "bias_correction": None, "calib_percentile": None, "histogram_samples": None, "weight_rounding": None, "progress": None,
    "warn": None,
}
BENCH = {
    "artifact": _, "devices": None, "local": False, "inventory": None, "warmup": 10, "runs": 100,
    "min_seconds": 1.0, "threads": None, "seed": 0, "input": None, "lock_timeout": 600.0, "warmup_seconds": 0.0,
    "sustained": 0.0, "cv_threshold": None, "val": None, "max_val_samples": 1000, "accept_new": False,
}
DEPLOY = {
    "model": _, "target": _, "devices": None, "local": False, "inventory": None, "out": None, "calib": None,
    "val": None, "input_shapes": None, "mean": None, "std": None, "io": None, "min_sqnr": None, "min_top1": None,
    "min_cosine": 0.9, "output_kinds": None, "accuracy_target": None, "max_float_layers": None, "allow_float_fallback": False, "allow_cpu_ops": False,
    "explain": False, "calibration_method": None, "weight_rounding": None, "max_samples": 200, "max_val_samples": 1000,
    "trust_model_code": False, "warmup": 10, "runs": 100, "min_seconds": 1.0, "threads": None, "seed": 0, "input": None,
    "lock_timeout": 600.0, "warmup_seconds": 0.0, "sustained": 0.0, "cv_threshold": None, "no_bench": False,
    "accept_new": False, "cache_root": None,
}

# CLI options that are about output, gates or history, not the operation: no keyword in the API.
CLI_ONLY = {"json_out", "debug", "samples", "max_p90_ms", "require_clean", "junit", "history", "all_devices"}
CLI_TO_API = {"device": "devices"}


def _params(fn) -> dict:
    return {name: p.default for name, p in inspect.signature(fn).parameters.items()}


def test_all_is_pinned():
    assert edgeopt.__all__ == ["__version__", "convert", "bench", "deploy", "EdgeoptError", "UsageError",
                               "GateError", "DeviceError"]
    for name in edgeopt.__all__:
        assert getattr(edgeopt, name) is not None
    assert issubclass(edgeopt.UsageError, edgeopt.EdgeoptError) and edgeopt.UsageError.exit_code == 2
    assert edgeopt.GateError.exit_code == 1 and edgeopt.DeviceError.exit_code == 3


@pytest.mark.parametrize("fn, expected", [(edgeopt.convert, CONVERT), (edgeopt.bench, BENCH),
                                          (edgeopt.deploy, DEPLOY)], ids=["convert", "bench", "deploy"])
def test_signatures_are_pinned(fn, expected):
    assert _params(fn) == expected
    assert fn.__doc__ and len(fn.__doc__.splitlines()) > 3
    kinds = {p.kind for p in inspect.signature(fn).parameters.values()}
    assert inspect.Parameter.VAR_KEYWORD not in kinds  # no **options that swallow a misspelt keyword


def test_unknown_option_is_a_type_error_naming_it(tmp_path):
    with pytest.raises(TypeError, match="max_sample"):
        edgeopt.convert(str(tmp_path / "m.onnx"), "rpi", max_sample=10)
    with pytest.raises(TypeError, match="callibration"):
        edgeopt.deploy(str(tmp_path / "m.onnx"), "rpi", callibration="minmax")
    from edgeopt.conversion import pipeline  # the pipeline's recipe options are checked too (the CLI calls it)
    with pytest.raises(TypeError, match="per_chanel"):
        pipeline.convert(str(tmp_path / "m.onnx"), "rpi", per_chanel=False)


def test_convert_defaults_are_the_clis():
    from edgeopt.cli.options import CONVERSION, default_of
    from edgeopt.conversion import pipeline

    api = _params(edgeopt.convert)
    for param in CONVERSION:
        assert param.name in api, f"--{param.name} has no keyword in edgeopt.convert"
        cli = default_of(param)
        assert api[param.name] == (None if cli == [] else cli), param.name
    core = _params(pipeline.convert)
    for name in ("max_samples", "max_val_samples", "allow_float_fallback", "allow_cpu_ops", "trust_model_code"):
        assert core[name] == api[name], name


@pytest.mark.parametrize("command, fn", [("bench", edgeopt.bench), ("deploy", edgeopt.deploy)])
def test_device_command_defaults_are_the_clis(command, fn):
    import importlib

    import edgeopt.cli
    from edgeopt.devices.bench import BenchOptions

    importlib.import_module(f"edgeopt.cli.{command}_cmd")  # registers the command on the app
    info = next(c for c in edgeopt.cli.app.registered_commands if c.name == command)
    api = _params(fn)
    for name, param in inspect.signature(info.callback).parameters.items():
        if name in CLI_ONLY:
            continue
        name = CLI_TO_API.get(name, name)
        assert name in api, f"edgeopt {command}: option {name} has no keyword in edgeopt.{command}"
        cli = param.default.default
        if cli is ...:  # required on the command line: positional in the API
            assert api[name] is _, name
        else:
            assert api[name] == (None if cli == [] else cli), name
    defaults = BenchOptions()
    for name in ("warmup", "runs", "min_seconds", "threads", "seed", "input", "lock_timeout", "warmup_seconds",
                 "sustained", "cv_threshold"):
        assert api[name] == getattr(defaults, name), name


def test_runtime_public_names():
    public = set(edgeopt.runtime.__all__)
    assert {"load", "Model", "IOSpec", "RuntimeMissing", "InputError", "bench", "latency_stats", "run_samples",
            "load_samples", "save_outputs", "output_key"} <= public
    assert list(inspect.signature(edgeopt.runtime.run_samples).parameters) == ["model", "samples", "out"]
    assert all(not n.startswith("_") and hasattr(edgeopt.runtime, n) for n in public)
    assert list(inspect.signature(edgeopt.runtime.load).parameters)[:2] == ["path", "threads"]
    for method in ("__call__", "predict", "batches", "run", "example_inputs"):
        assert callable(getattr(edgeopt.runtime.Model, method)), method


def test_bad_input_is_a_usage_error(tmp_path):
    with pytest.raises(edgeopt.UsageError, match="no such file"):
        edgeopt.bench(str(tmp_path / "missing.tflite"), local=True)
    with pytest.raises(edgeopt.UsageError, match="not both"):
        edgeopt.bench(str(tmp_path / "missing.tflite"), "pi-01", local=True)
    with pytest.raises(edgeopt.UsageError, match="npu-x"):
        edgeopt.deploy(str(tmp_path / "m.onnx"), "npu-x", local=True)


def test_import_edgeopt_stays_light():
    code = ("import sys, edgeopt; heavy = {'numpy', 'tensorflow', 'onnx', 'onnxruntime', 'torch', 'paramiko', "
            "'typer'}; print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
