"""edgeopt: take a trained model to edge hardware and prove how fast it runs there.

    import edgeopt
    manifest = edgeopt.convert("model.onnx", "rpi5", calib="calib.npy", val="val.npy", out="build/model")
    results = edgeopt.bench("build/model", local=True)
    out = edgeopt.deploy("model.onnx", "jetson", calib="calib.npy")       # every Jetson in edgeopt.toml

``import edgeopt`` is light: it never imports TensorFlow, onnx or onnxruntime (nor numpy). Those load only
inside the functions that need them. The keyword defaults here are the CLI's (tests/test_public_api.py checks).
"""
from __future__ import annotations

from edgeopt.conversion.defaults import DEFAULT_MAX_CALIB, DEFAULT_MAX_VAL, DEFAULT_MIN_COSINE
from edgeopt.errors import DeviceError, EdgeoptError, GateError, UsageError
from edgeopt.runtime import RUNNER_DEFAULTS  # the runner's table; numpy loads only when a model runs

__version__ = "0.1.0"

__all__ = ["__version__", "convert", "bench", "deploy", "EdgeoptError", "UsageError", "GateError", "DeviceError"]


def convert(model, target: str, calib=None, val=None, out=None, *, input_shapes=None, mean=None, std=None,
            io: str | None = None, min_sqnr: float | None = None, min_top1: float | None = None,
            min_cosine: float = DEFAULT_MIN_COSINE, output_kinds=None,
            accuracy_target=None, max_float_layers=None, allow_float_fallback: bool = False,
            allow_cpu_ops: bool = False, explain: bool = False, calibration_method: str | None = None,
            max_samples: int = DEFAULT_MAX_CALIB,
            max_val_samples: int = DEFAULT_MAX_VAL, trust_model_code: bool = False, per_channel: bool = True,
            bias_correction: bool | None = None, calib_percentile: float | None = None,
            histogram_samples: int | None = None, weight_rounding: str | None = None, progress=None,
            warn=None) -> dict:
    """Convert ``model`` for ``target`` and return the manifest (a dict, also written to ``out/manifest.json``).

    model:  path to an .onnx file, a Keras .keras/.h5 file, a SavedModel directory or a .tflite file.
    target: a profile name or family alias (``rpi``, ``rpi5``, ``jetson``, ``coral``, ...).
    calib:  calibration data: a .npy/.npz file, an image directory, an array/dict of arrays, or ``"random"``.
    val:    validation data, same forms; without it, held-out calibration samples are used.
    out:    output directory (default ``./edgeopt-out/<model>-<target>``).

    The keyword options are the CLI's flags: ``input_shapes`` (dict name -> shape, or ``["name=1,3,224,224"]``),
    ``mean``/``std`` (per channel, for image folders), ``io`` (int8|uint8|float32; default the target's),
    ``min_sqnr``/``min_top1`` (gates), ``min_cosine`` (the sanity floor: any output of any artifact with a
    cosine against FP32 below it fails the conversion, as a broken artifact; 0 turns it off), ``output_kinds``
    (``{"name": "embedding"}`` or ``["name=embedding"]``: scores, embedding or dense, what the check reports
    for that output; guessed from shape and name otherwise), ``accuracy_target`` (``"top1=0.99"`` and/or ``"sqnr=30"``: recover
    accuracy until met, selecting on half the validation samples and confirming on the other half),
    ``max_float_layers`` (how many layers that recovery may keep in float: an int, or ``"P%"`` of the
    quantizable layers; default None: 10%, at least 1, and no artifact over 0.4x the FP32 size),
    ``allow_float_fallback``, ``allow_cpu_ops`` (Coral: float layers on the CPU),
    ``explain`` (per-layer error report in the manifest), ``calibration_method`` (activation ranges:
    auto (default: the better of mse and mean_minmax on the calibration samples)|mse|minmax|mean_minmax|
    percentile|entropy),
    ``max_samples``/``max_val_samples``, ``trust_model_code`` (load models whose file can run code, such as
    Keras Lambda layers: only for files you trust). Recipe knobs, as recorded in
    ``manifest["calibration"]["recipe"]``: ``per_channel``, ``bias_correction``, ``calib_percentile``,
    ``histogram_samples``, ``weight_rounding`` (gptq (default: each layer's INT8 weights rounded against its
    calibration inputs), nearest, or gptq_act (each layer fitted to its input in the INT8 model)). ``progress(msg)`` is called at each step; ``warn(msg)`` receives warnings
    (default: printed on stderr). An unknown keyword is a TypeError naming it.

    Raises :class:`UsageError` for bad input (exit code 2) and :class:`GateError` when an accuracy gate
    fails (artifacts are kept and ``error.result`` is the manifest; exit code 1).
    """
    from edgeopt.conversion import pipeline

    # the pipeline makes one ConversionOptions of these (edgeopt.conversion.options): None is its default
    recipe = {"explain": explain, "calibration_method": calibration_method, "per_channel": per_channel,
              "bias_correction": bias_correction, "calib_percentile": calib_percentile,
              "histogram_samples": histogram_samples, "weight_rounding": weight_rounding}
    if warn is not None:  # None: the pipeline's (printed on stderr)
        recipe["warn"] = warn
    return pipeline.convert(model, target=target, calib=calib, val=val, out=out, input_shapes=input_shapes, mean=mean,
                            std=std, io=io, min_sqnr=min_sqnr, min_top1=min_top1, min_cosine=min_cosine,
                            output_kinds=output_kinds,
                            accuracy_target=accuracy_target,
                            max_float_layers=max_float_layers,
                            allow_float_fallback=allow_float_fallback, allow_cpu_ops=allow_cpu_ops,
                            max_samples=max_samples, max_val_samples=max_val_samples,
                            trust_model_code=trust_model_code, progress=progress, **recipe)


def bench(artifact, devices=None, *, local: bool = False, inventory=None, warmup: int = RUNNER_DEFAULTS["warmup"],
          runs: int = RUNNER_DEFAULTS["runs"], min_seconds: float = RUNNER_DEFAULTS["min_seconds"],
          threads: int | None = None, seed: int = RUNNER_DEFAULTS["seed"], input: str | None = None,
          lock_timeout: float = RUNNER_DEFAULTS["lock_timeout"],
          warmup_seconds: float = RUNNER_DEFAULTS["warmup_seconds"], sustained: float = RUNNER_DEFAULTS["sustained"],
          cv_threshold: float | None = None, val=None, max_val_samples: int = DEFAULT_MAX_VAL,
          accept_new: bool = False) -> list[dict]:
    """Benchmark an artifact on devices, in parallel, pushing it first where it is not there yet.

    artifact: a .tflite/.onnx file, or an ``edgeopt convert`` output directory (its primary artifact).
    devices:  device names from the inventory (``"pi-01"``, ``"pi-01,pi-02"`` or a list), or
              :class:`edgeopt.devices.inventory.Device` objects; ``local=True`` benchmarks this machine
              through the same code path. With neither, this machine when there is no inventory at all.
    inventory: the inventory file (default ``./edgeopt.toml`` or ``$EDGEOPT_INVENTORY``).

    val:      validation data (as ``--val``): at most ``max_val_samples`` samples also run on every device and are
              compared with FP32 on this host; each result's ``accuracy`` (docs/cli.md, "Bench result JSON").

    The other keywords are ``edgeopt bench``'s flags (``cv_threshold`` is ``--max-cv``). Returns one result
    dict per device (the JSON of ``edgeopt bench --json``); a device that failed is ``{"device", "error",
    "hint", "exit_code"}`` instead.
    Results are not stored in the history database (the CLI does that). Raises :class:`UsageError` for bad
    input (unknown device, no such artifact).
    """
    from edgeopt.devices import bench as device_bench

    target = device_bench.manifest_target(artifact) if local or devices is None else None
    chosen = _select_devices(devices, local, inventory, local_target=target, command="bench")
    opts = device_bench.BenchOptions(warmup=warmup, runs=runs, min_seconds=min_seconds, threads=threads, seed=seed,
                                     input=input, lock_timeout=lock_timeout, keep_samples=True,
                                     warmup_seconds=warmup_seconds, sustained=sustained, cv_threshold=cv_threshold,
                                     val=val, max_val_samples=max_val_samples)
    return device_bench.bench_devices(chosen, artifact, opts, accept_new=accept_new)


def deploy(model, target: str, devices=None, *, local: bool = False, inventory=None, out=None, calib=None, val=None,
           input_shapes=None, mean=None, std=None, io: str | None = None, min_sqnr: float | None = None,
           min_top1: float | None = None, min_cosine: float = DEFAULT_MIN_COSINE, output_kinds=None,
           accuracy_target=None,
           max_float_layers=None, allow_float_fallback: bool = False, allow_cpu_ops: bool = False,
           explain: bool = False,
           calibration_method: str | None = None, weight_rounding: str | None = None,
           max_samples: int = DEFAULT_MAX_CALIB, max_val_samples: int = DEFAULT_MAX_VAL,
           trust_model_code: bool = False, warmup: int = RUNNER_DEFAULTS["warmup"],
           runs: int = RUNNER_DEFAULTS["runs"], min_seconds: float = RUNNER_DEFAULTS["min_seconds"],
           threads: int | None = None, seed: int = RUNNER_DEFAULTS["seed"], input: str | None = None,
           lock_timeout: float = RUNNER_DEFAULTS["lock_timeout"],
           warmup_seconds: float = RUNNER_DEFAULTS["warmup_seconds"], sustained: float = RUNNER_DEFAULTS["sustained"],
           cv_threshold: float | None = None,
           no_bench: bool = False, accept_new: bool = False, cache_root=None) -> dict:
    """Convert ``model`` for ``target`` (cached by content and options), push it to devices and benchmark it.

    devices: names from the inventory or Device objects (as :func:`bench`); default every inventory device
             whose target is in ``target``'s family (this machine when there is no inventory);
             ``local=True``: this machine.
    out:     output directory (default a cache under ``$EDGEOPT_CACHE`` or ``~/.cache/edgeopt/deploy``).

    The conversion keywords are :func:`convert`'s, the benchmark keywords :func:`bench`'s; ``no_bench``
    converts and pushes only. ``val`` is the conversion check's data and runs on every device too (each result's
    ``accuracy``, against the same FP32 reference). Returns ``{"manifest", "results", "out", "converted"}`` (``results`` as
    :func:`bench` returns them). Raises :class:`UsageError` for bad input and :class:`GateError` when an
    accuracy gate fails.
    """
    from edgeopt import targets
    from edgeopt.devices import bench as device_bench
    from edgeopt.devices import deploy as device_deploy

    try:
        profile = targets.get(target)
    except KeyError as e:
        raise UsageError(e.args[0]) from None
    family = target.strip().lower() if target.strip().lower() in targets.FAMILIES else profile.name
    chosen = _select_devices(devices, local, inventory, family=family, local_target=profile.name, command="deploy")
    opts = device_bench.BenchOptions(warmup=warmup, runs=runs, min_seconds=min_seconds, threads=threads, seed=seed,
                                     input=input, lock_timeout=lock_timeout, keep_samples=True,
                                     warmup_seconds=warmup_seconds, sustained=sustained, cv_threshold=cv_threshold)
    # only what differs from the defaults, as the CLI passes it: the same options give the same cache key
    given = {"min_sqnr": min_sqnr, "min_top1": min_top1,
             "min_cosine": None if min_cosine == DEFAULT_MIN_COSINE else min_cosine,
             "output_kinds": output_kinds or None, "accuracy_target": accuracy_target,
             "max_float_layers": max_float_layers,
             "allow_cpu_ops": allow_cpu_ops or None, "allow_float_fallback": allow_float_fallback or None,
             "explain": explain or None, "calibration_method": calibration_method,
             "weight_rounding": weight_rounding,
             "max_samples": None if max_samples == DEFAULT_MAX_CALIB else max_samples,
             "max_val_samples": None if max_val_samples == DEFAULT_MAX_VAL else max_val_samples}
    convert_options = {k: v for k, v in given.items() if v is not None}
    return device_deploy.deploy(model, profile.name, chosen, out=out, calib=calib, val=val,
                                input_shapes=input_shapes or None, mean=mean, std=std, io=io, bench=opts,
                                no_bench=no_bench, accept_new=accept_new, cache_root=cache_root,
                                convert_options=convert_options, trust_model_code=trust_model_code)


def _select_devices(devices, local: bool, inventory, family: str | None = None, local_target: str | None = None,
                    command: str = "bench") -> list:
    """The devices :func:`bench` / :func:`deploy` run on: the command line's rules, in the API's words."""
    from edgeopt.devices import selection

    chosen, _single = selection.select(devices, local=local, inventory_path=inventory, family=family,
                                       local_target=local_target, command=command, wording=selection.API)
    return chosen
