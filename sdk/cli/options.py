"""Every option of the edgeopt commands, declared once (name, flags, default, help), and the groups the commands
are composed of: convert = conversion; bench = device selection + benchmark; deploy = conversion + device
selection + benchmark + its own.

A declaration is an :class:`inspect.Parameter` whose default is the ``typer.Option``; :func:`command` registers
a command with a list of them as its signature (typer reads the signature) and calls the body with one
namespace of the values. A command that means something else by a shared option (deploy's ``--out`` is a
cache) takes a :func:`variant`: the same name and flags with its own help or default.

The defaults come from where they are used: the runner's table in :mod:`edgeopt.runtime` (which imports
numpy only on first use) and :mod:`edgeopt.conversion.defaults`; both are light, so ``edgeopt --help`` stays fast.
"""
from __future__ import annotations

import copy
import inspect
from types import SimpleNamespace
from typing import List, Optional

import typer

from edgeopt.cli import app
from edgeopt.conversion.defaults import CALIBRATION_METHODS, DEFAULT_MAX_CALIB, DEFAULT_MAX_VAL, DEFAULT_MIN_COSINE
from edgeopt.conversion.options import ConversionOptions
from edgeopt.runtime import RUNNER_DEFAULTS

_UNSET = object()


def option(name: str, annotation, default, *flags: str, help: str) -> inspect.Parameter:
    """One option: ``name`` is its attribute in the body's namespace, ``flags`` its spellings on the command line."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                             default=typer.Option(default, *flags, help=help))


def argument(name: str, annotation, default, help: str) -> inspect.Parameter:
    """One positional argument (``...``: required); its name is its metavar in the help."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                             default=typer.Argument(default, help=help))


def variant(param: inspect.Parameter, *, help: str | None = None, default=_UNSET,
            annotation=_UNSET) -> inspect.Parameter:
    """The same option (name and flags) with another help text, default or type, for one command."""
    info = copy.copy(param.default)
    if help is not None:
        info.help = help
    if default is not _UNSET:
        info.default = default
    return param.replace(default=info, annotation=param.annotation if annotation is _UNSET else annotation)


def swap(group: list, *variants: inspect.Parameter) -> list:
    """``group`` with each variant in place of the declaration of the same name."""
    by_name = {v.name: v for v in variants}
    unknown = set(by_name) - {p.name for p in group}
    if unknown:
        raise ValueError(f"not in the group: {', '.join(sorted(unknown))}")
    return [by_name.get(p.name, p) for p in group]


def command(name: str, *params, cls: type | None = None):
    """Register the decorated body as ``edgeopt NAME`` with these parameters (declarations or lists of them, in
    the order of the help); the body is called with one namespace holding every parameter's value. ``cls``: the
    typer command class, where parsing needs more than click does (:mod:`edgeopt.cli.optional_value`)."""
    flat = [p for item in params for p in (item if isinstance(item, (list, tuple)) else [item])]
    signature = inspect.Signature(flat)  # a name given twice is a ValueError here, at import

    def register(body):
        def run(**values):
            return body(SimpleNamespace(**values))
        run.__signature__ = signature
        run.__name__, run.__qualname__, run.__doc__ = body.__name__, body.__qualname__, body.__doc__
        run.__module__ = body.__module__
        app.command(name, cls=cls)(run)
        return body
    return register


def default_of(param: inspect.Parameter):
    """The default value a declaration gives its option."""
    return param.default.default


# ---------------------------------------------------------------------------------------------- shared

JSON = option("json_out", bool, False, "--json", help="Machine output on stdout, nothing else.")
DEBUG = option("debug", bool, False, "--debug", help="Show tracebacks.")
ACCEPT_NEW = option("accept_new", bool, False, "--accept-new", help="Trust unknown host keys on first use (recorded).")
JUNIT = option("junit", Optional[str], None, "--junit", help="Write JUnit XML here (one testcase per device).")
HISTORY = option("history", Optional[str], None, "--history",
                 help="Store results in this SQLite file (default $EDGEOPT_HISTORY or "
                      "~/.local/share/edgeopt/results.sqlite; EDGEOPT_HISTORY=off: do not store).")
HISTORY_READ = variant(HISTORY, help="History database (default $EDGEOPT_HISTORY or "
                                     "~/.local/share/edgeopt/results.sqlite).")
SAMPLES = option("samples", bool, True, "--samples/--no-samples", help="Include every latency sample in the JSON.")

# ------------------------------------------------------------------------------------------ conversion

MODEL = argument("model", str, ..., help="An .onnx, .keras/.h5 or .tflite file, or a SavedModel directory.")
TARGET = option("target", str, ..., "--target", "-t", help="Target profile or family (rpi, jetson, coral, ...).")
CALIB = option("calib", Optional[str], None, "--calib", help="Calibration data: .npy, .npz, image dir, or 'random'.")
VAL = option("val", Optional[str], None, "--val", help="Validation data for the accuracy check (same forms).")
OUT = option("out", Optional[str], None, "--out", "-o", help="Output directory.")
MAX_VAL_SAMPLES = option("max_val_samples", int, DEFAULT_MAX_VAL, "--max-val-samples",
                         help="At most this many validation samples.")
TRUST_MODEL_CODE = option("trust_model_code", bool, False, "--trust-model-code",
                          help="Allow loading model files that can run code (Keras Lambda layers, legacy .h5 via "
                               "tf_keras). Off by default: such models are refused.")

# The options of edgeopt.convert, each named as its keyword there (conversion_options passes them on by name).
CONVERSION = [
    CALIB,
    VAL,
    OUT,
    option("input_shapes", List[str], [], "--input-shape", help="NAME=1,3,224,224 to fix dynamic dims."),
    option("mean", Optional[str], None, "--mean",
           help="Per-channel mean for image folders, e.g. 0.485,0.456,0.406"),
    option("std", Optional[str], None, "--std", help="Per-channel std for image folders."),
    option("io", Optional[str], None, "--io", help="I/O dtype of the artifact: int8, uint8 or float32."),
    option("min_sqnr", Optional[float], None, "--min-sqnr", help="Gate: fail (exit 1) below this SQNR (dB)."),
    option("min_top1", Optional[float], None, "--min-top1", help="Gate: fail (exit 1) below this top-1 agreement."),
    option("output_kinds", List[str], [], "--output-kind",
           help="NAME=scores|embedding|dense: what an output is, for the check's metrics (guessed from shape and "
                "name otherwise)."),
    option("min_cosine", float, DEFAULT_MIN_COSINE, "--min-cosine",
           help="Sanity floor: fail (exit 1) when any output of any artifact has a cosine against FP32 below this "
                "(a broken artifact); 0 turns it off."),
    option("allow_float_fallback", bool, False, "--allow-float-fallback",
           help="Keep ops that cannot be INT8 in float (not for Coral)."),
    option("accuracy_target", Optional[str], None, "--accuracy-target",
           help="Recover accuracy until met: top1=0.99 and/or sqnr=30 (calibration recipes, then the worst layers "
                "in float); exit 1 with the best result kept if it cannot be met."),
    option("allow_cpu_ops", bool, False, "--allow-cpu-ops",
           help="Coral: let --accuracy-target keep layers in float, on the CPU."),
    option("max_float_layers", Optional[str], None, "--max-float-layers",
           help="--accuracy-target keeps at most N layers (or P% of the quantizable layers) in float; default "
                "10%, at least 1, and no artifact over 0.4x the FP32 size. 0: all-INT8 recipes only."),
    option("explain", bool, False, "--explain", help="Store the per-layer error report in the manifest."),
    option("calibration_method", Optional[str], None, "--calibration",
           help="Activation ranges: auto (default: the better of mse and mean_minmax on the calibration "
                "samples), mse (least INT8 error per tensor), minmax, mean_minmax, percentile, or entropy (ONNX "
                "QDQ only)."),
    option("weight_rounding", Optional[str], None, "--weight-rounding",
           help="INT8 weight rounding: gptq_act (default: each layer fitted, one after the other, to its input "
                "in the INT8 model; with --calibration auto kept only where it beats gptq on calibration samples "
                "it was not fitted to), gptq (each layer's weights rounded against its FP32 calibration inputs) "
                "or nearest (the converter's own)."),
    option("max_samples", int, DEFAULT_MAX_CALIB, "--max-samples", help="At most this many calibration samples."),
    MAX_VAL_SAMPLES,
    TRUST_MODEL_CODE,
]


def conversion_options(values) -> dict:
    """The CONVERSION values as :func:`edgeopt.convert` keywords, those left at their default omitted: the
    pipeline applies the same defaults, and a default deploy keeps the cache key it always had. Those of
    :class:`edgeopt.conversion.options.ConversionOptions` go through it (checked here, before any work)."""
    chosen = {}
    for param in CONVERSION:
        value = getattr(values, param.name)
        if value != default_of(param) and value not in (None, [], ()):
            chosen[param.name] = value
    method = chosen.get("calibration_method")
    if method is not None and method not in CALIBRATION_METHODS:
        from edgeopt.errors import UsageError
        raise UsageError(f"--calibration {method!r}: expected {', '.join(CALIBRATION_METHODS[:-1])} or "
                         f"{CALIBRATION_METHODS[-1]}")
    options = ConversionOptions.from_keywords(**{name: chosen.pop(name) for name in list(chosen)
                                                 if name in ConversionOptions.KEYWORDS})
    return dict(chosen, **options.keywords())


# ------------------------------------------------------------------------------------ device selection

DEVICES = option("device", Optional[List[str]], None, "--device", "-d",
                 help="Device name(s) from the inventory: NAME[,NAME...].")
LOCAL = option("local", bool, False, "--local", help="This machine, through the same code path, without SSH.")
INVENTORY = option("inventory", Optional[str], None, "--inventory", "-i",
                   help="Inventory file (default ./edgeopt.toml or $EDGEOPT_INVENTORY).")

# edgeopt devices --setup (edgeopt.devices.provision)
SETUP = option("setup", bool, False, "--setup",
               help="Make each device ready offline: wheels of its target's runtime downloaded here for its CPU, "
                    "glibc and Python, pushed, installed into <workdir>/venv (--system-site-packages).")
DRY_RUN = option("dry_run", bool, False, "--dry-run", help="With --setup: say what it would do; change nothing.")

# read by edgeopt.cli.device_selection.select_devices
DEVICE_SELECTION = [
    DEVICES,
    option("all_devices", bool, False, "--all", help="Every device in the inventory."),
    LOCAL,
    INVENTORY,
]

# ------------------------------------------------------------------------------------------- benchmark

# Those named as a BenchOptions field go there by name (bench_options); the rest are gates and outputs.
BENCHMARK = [
    option("warmup", int, RUNNER_DEFAULTS["warmup"], "--warmup", help="Untimed runs first."),
    option("runs", int, RUNNER_DEFAULTS["runs"], "--runs", help="At least this many timed runs."),
    option("min_seconds", float, RUNNER_DEFAULTS["min_seconds"], "--min-seconds", help="And at least this long."),
    option("threads", Optional[int], None, "--threads", help="CPU threads (default: the target's)."),
    option("seed", int, RUNNER_DEFAULTS["seed"], "--seed", help="Seed of the generated inputs."),
    option("input", Optional[str], None, "--input",
           help=".npy/.npz inputs in the source layout instead of random ones."),
    option("lock_timeout", float, RUNNER_DEFAULTS["lock_timeout"], "--lock-timeout",
           help="Seconds to wait for another benchmark on a device."),
    option("max_p90_ms", Optional[float], None, "--max-p90-ms",
           help="Gate: exit 1 when a device's p90 is over this."),
    SAMPLES,
    option("warmup_seconds", float, RUNNER_DEFAULTS["warmup_seconds"], "--warmup-seconds",
           help="Warm up for at least this long too."),
    option("sustained", float, RUNNER_DEFAULTS["sustained"], "--sustained",
           help="Measure for at least SECONDS, latency and temperature over time (thermal behaviour)."),
    option("cv_threshold", Optional[float], None, "--max-cv",
           help="Flag a run unstable above this coefficient of variation (default 0.10)."),
    option("require_clean", bool, False, "--require-clean",
           help="Gate: exit 1 when a device was throttled, hot or loaded."),
    JUNIT,
    HISTORY,
    ACCEPT_NEW,
]


# bench's on-device accuracy check (deploy has both options among its conversion options, with the same meaning
# extended: its --val samples run on the devices too)
DEVICE_VAL = [
    variant(VAL, help="Validation data (.npy, .npz, image dir): run on each device too, and its outputs compared "
                      "with FP32 on this host (and with this host's run of the artifact)."),
    MAX_VAL_SAMPLES,
]


def bench_options(values):
    """The BENCHMARK (and, where the command has them, DEVICE_VAL) values as
    :class:`edgeopt.devices.bench.BenchOptions` (every sample kept: ``--no-samples`` only thins the JSON output)."""
    import dataclasses

    from edgeopt.devices.bench import BenchOptions

    fields = {f.name for f in dataclasses.fields(BenchOptions)}
    return BenchOptions(keep_samples=True, **{p.name: getattr(values, p.name) for p in BENCHMARK + DEVICE_VAL
                                              if p.name in fields and hasattr(values, p.name)})

# ----------------------------------------------------------------------------------------------- sweep

SWEEP = [
    argument("sweep_file", str, ..., help="The sweep file (TOML: models, targets, recipes, devices; docs/sweep.md)."),
    option("out", str, "edgeopt-sweep", "--out", "-o",
           help="Where the sweep keeps its state (OUT/<sweep id>/cells): a rerun resumes from it."),
    variant(INVENTORY, help="Inventory file for the sweep's devices (default: the sweep file's `inventory`, else "
                            "./edgeopt.toml or $EDGEOPT_INVENTORY)."),
    option("jobs", Optional[int], None, "--jobs", "-j",
           help="Conversions at a time in the local process pool (default: the CPU count)."),
    option("ray", Optional[str], None, "--ray",
           help="Run on a Ray cluster at ADDRESS; --ray alone (or 'auto'): the one this machine is part of. "
                "Conversions as tasks, one actor per device (needs edgeopt[cluster])."),
    option("num_cpus", float, 1.0, "--num-cpus", help="With --ray: CPUs each conversion task reserves."),
    option("fresh", bool, False, "--fresh",
           help="Redo every cell's benchmarks (conversions still come from the cache)."),
    HISTORY,
    ACCEPT_NEW,
]
