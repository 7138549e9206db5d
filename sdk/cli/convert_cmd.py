"""edgeopt convert MODEL --target T [--calib SRC] [--val SRC] [--out DIR] ..."""
from __future__ import annotations

import json
import sys
from typing import List, Optional

import typer

from edgeopt.cli import app


def progress_reporter(enabled: bool):
    """A (callback, stop) pair showing a rich spinner with the current step on a terminal; silent otherwise."""
    if not enabled or not sys.stderr.isatty():
        return None, (lambda: None)
    from rich.console import Console
    console = Console(stderr=True)
    status = console.status("starting")
    status.start()

    def step(msg):
        status.update(msg)
        console.log(msg)
    return step, status.stop


@app.command("convert")
def convert(
    model: str = typer.Argument(..., help="An .onnx, .keras/.h5 or .tflite file, or a SavedModel directory."),
    target: str = typer.Option(..., "--target", "-t", help="Target profile or family (rpi, jetson, coral, ...)."),
    calib: Optional[str] = typer.Option(None, "--calib", help="Calibration data: .npy, .npz, image dir, or 'random'."),
    val: Optional[str] = typer.Option(None, "--val", help="Validation data for the accuracy check (same forms)."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Output directory."),
    input_shape: List[str] = typer.Option([], "--input-shape", help="NAME=1,3,224,224 to fix dynamic dims."),
    mean: Optional[str] = typer.Option(None, "--mean", help="Per-channel mean for image folders, e.g. 0.485,0.456,0.406"),
    std: Optional[str] = typer.Option(None, "--std", help="Per-channel std for image folders."),
    io: Optional[str] = typer.Option(None, "--io", help="I/O dtype of the artifact: int8, uint8 or float32."),
    min_sqnr: Optional[float] = typer.Option(None, "--min-sqnr", help="Gate: fail (exit 1) below this SQNR (dB)."),
    min_top1: Optional[float] = typer.Option(None, "--min-top1", help="Gate: fail (exit 1) below this top-1 agreement."),
    allow_float_fallback: bool = typer.Option(False, "--allow-float-fallback",
                                              help="Keep ops that cannot be INT8 in float (not for Coral)."),
    accuracy_target: Optional[str] = typer.Option(None, "--accuracy-target",
                                                  help="Recover accuracy until met: top1=0.99 and/or sqnr=30 "
                                                       "(calibration recipes, then the worst layers in float); "
                                                       "exit 1 with the best result kept if it cannot be met."),
    allow_cpu_ops: bool = typer.Option(False, "--allow-cpu-ops",
                                       help="Coral: let --accuracy-target keep layers in float, on the CPU."),
    explain: bool = typer.Option(False, "--explain", help="Store the per-layer error report in the manifest."),
    calibration: Optional[str] = typer.Option(None, "--calibration",
                                              help="Calibration method: minmax (default), percentile or entropy "
                                                   "(ONNX QDQ only; TFLite calibrates with min-max)."),
    max_samples: int = typer.Option(200, "--max-samples", help="At most this many calibration samples."),
    max_val_samples: int = typer.Option(1000, "--max-val-samples", help="At most this many validation samples."),
    json_out: bool = typer.Option(False, "--json", help="Print the manifest as JSON on stdout, nothing else."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
):
    """Convert a model into INT8 artifacts for a target, checked against the FP32 model."""
    from edgeopt.errors import GateError
    from edgeopt.conversion.pipeline import convert as run

    extra = {}
    if explain:
        extra["explain"] = True
    if calibration:
        extra["calibration_method"] = calibration_method(calibration)
    step, stop = progress_reporter(not json_out)
    try:
        manifest = run(model, target=target, calib=calib, val=val, out=out, input_shapes=input_shape, mean=mean,
                       std=std, io=io, min_sqnr=min_sqnr, min_top1=min_top1,
                       allow_float_fallback=allow_float_fallback, max_samples=max_samples,
                       max_val_samples=max_val_samples, progress=step, accuracy_target=accuracy_target,
                       allow_cpu_ops=allow_cpu_ops, **extra)
    except GateError as e:
        stop()
        if json_out and e.result is not None:
            typer.echo(json.dumps(_public(e.result), indent=2))
        elif e.result is not None and e.result.get("recovery"):
            print_summary(e.result)
        raise
    finally:
        stop()
    if json_out:
        typer.echo(json.dumps(_public(manifest), indent=2))
    else:
        print_summary(manifest)


def calibration_method(name: str | None) -> str | None:
    """--calibration, checked."""
    if name and name not in ("minmax", "percentile", "entropy"):
        from edgeopt.errors import UsageError
        raise UsageError(f"--calibration {name!r}: expected minmax, percentile or entropy")
    return name or None


def _public(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if not k.startswith("_")}


def print_summary(manifest: dict):
    from edgeopt.cli import console
    from rich.table import Table

    c = console()
    t = Table(title=f"{manifest['source']['file']} -> {manifest['target']['name']}  ({manifest.get('_out', '')})")
    for col in ("artifact", "precision", "size", "inputs", "cosine", "SQNR dB", "top-1 agr."):
        t.add_column(col)
    for a in manifest["artifacts"]:
        acc = a.get("accuracy") or {}
        first = next(iter(acc.values()), {}) if acc else {}
        ins = ", ".join(f"{i['name']} {i['dtype']}{i['shape']}" for i in a["inputs"])
        t.add_row(a["file"], a["precision"], f"{a['bytes'] / 1024:.1f} KiB", ins,
                  f"{first.get('cosine', float('nan')):.4f}" if first else "-",
                  f"{first.get('sqnr_db', float('nan')):.1f}" if first else "-",
                  f"{first['top1_agreement']:.4f}" if "top1_agreement" in first else "-")
    c.print(t)
    cal = manifest.get("calibration") or {}
    if cal.get("source"):
        c.print(f"calibration: {cal['source']} ({cal.get('samples')} samples)")
    acc = manifest.get("accuracy") or {}
    if acc.get("data", {}).get("note"):
        c.print(f"validation: {acc['data']['note']}")
    tpu = manifest.get("edgetpu")
    if tpu:
        s = tpu["summary"]
        c.print(f"Edge TPU pre-flight: {s['tpu_ops']}/{s['ops']} ops on the TPU"
                + (f", partition ends at {s['partition_end']}" if s["partition_end"] else ""))
    print_recovery(c, manifest)


def print_recovery(c, manifest: dict):
    """What --accuracy-target did: met or not, recipe, float layers, the top-1 interval, cost."""
    rec = manifest.get("recovery")
    if not rec:
        return
    ch = rec["chosen"]
    n = len(ch.get("float_layers") or [])
    c.print(f"accuracy target {rec.get('target_str')}: {'met' if rec.get('met') else 'NOT met'} with "
            f"{ch['recipe']['calibration_method']} calibration"
            + (" + bias correction" if ch["recipe"].get("bias_correction") else "")
            + (f", {n} layer{'s' if n != 1 else ''} kept in float" if n else ""))
    for name, (lo, hi) in (ch.get("top1_ci95") or {}).items():
        top1 = ch["accuracy"][name]["top1_agreement"]
        c.print(f"  {name}: top-1 agreement {top1:.3f} on {ch['validation_samples']} validation samples "
                f"(95% interval {lo:.3f}-{hi:.3f}; selected on them, not held out)")
    cost = rec.get("cost")
    if cost:
        c.print(f"  cost: size x{cost['size_ratio']} ({cost['bytes_plain']} -> {cost['bytes']} bytes), latency "
                f"x{cost['latency_ratio']} ({cost['latency_ms_plain']} -> {cost['latency_ms']} ms, 1 thread, "
                "this host)")
    if rec.get("needs_cpu_ops"):
        c.print("  " + rec["needs_cpu_ops"]["note"])
    if rec.get("advice"):
        c.print("  " + rec["advice"])
    c.print("  per-layer report: edgeopt explain " + (manifest.get("_out") or "OUT_DIR"))
