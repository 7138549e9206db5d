"""edgeopt deploy MODEL --target T [--device NAME[,NAME...] | --all | --local] [convert options] [bench options]"""
from __future__ import annotations

from typing import List, Optional

import typer

from edgeopt.cli import app


@app.command("deploy")
def deploy(
    model: str = typer.Argument(..., help="An .onnx, .keras/.h5 or .tflite file, or a SavedModel directory."),
    target: str = typer.Option(..., "--target", "-t", help="Target profile or family (rpi, jetson, coral, ...)."),
    device: Optional[List[str]] = typer.Option(None, "--device", "-d", help="Device name(s): NAME[,NAME...] (default: every inventory device of T's family)."),
    all_devices: bool = typer.Option(False, "--all", help="Every device in the inventory."),
    local: bool = typer.Option(False, "--local", help="This machine, through the same code path, without SSH."),
    inventory: Optional[str] = typer.Option(None, "--inventory", "-i", help="Inventory file."),
    calib: Optional[str] = typer.Option(None, "--calib", help="Calibration data: .npy, .npz, image dir, or 'random'."),
    val: Optional[str] = typer.Option(None, "--val", help="Validation data for the accuracy check."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Output directory (default: a cache under ~/.cache/edgeopt/deploy)."),
    input_shape: List[str] = typer.Option([], "--input-shape", help="NAME=1,3,224,224 to fix dynamic dims."),
    mean: Optional[str] = typer.Option(None, "--mean", help="Per-channel mean for image folders, e.g. 0.485,0.456,0.406"),
    std: Optional[str] = typer.Option(None, "--std", help="Per-channel std for image folders."),
    io: Optional[str] = typer.Option(None, "--io", help="I/O dtype of the artifact: int8, uint8 or float32."),
    min_sqnr: Optional[float] = typer.Option(None, "--min-sqnr", help="Gate: fail (exit 1) below this SQNR (dB)."),
    min_top1: Optional[float] = typer.Option(None, "--min-top1", help="Gate: fail (exit 1) below this top-1 agreement."),
    accuracy_target: Optional[str] = typer.Option(None, "--accuracy-target", help="Recover accuracy until met: top1=0.99 and/or sqnr=30 (calibration recipes, then the worst layers in float); exit 1 with the best result kept if it cannot be met."),
    allow_cpu_ops: bool = typer.Option(False, "--allow-cpu-ops", help="Coral: let --accuracy-target keep layers in float, on the CPU."),
    allow_float_fallback: bool = typer.Option(False, "--allow-float-fallback", help="Keep ops that cannot be INT8 in float (not for Coral)."),
    explain: bool = typer.Option(False, "--explain", help="Store the per-layer error report in the manifest."),
    calibration: Optional[str] = typer.Option(None, "--calibration", help="Calibration method: minmax (default), percentile or entropy (ONNX QDQ only; TFLite calibrates with min-max)."),
    max_samples: int = typer.Option(200, "--max-samples", help="At most this many calibration samples."),
    max_val_samples: int = typer.Option(1000, "--max-val-samples", help="At most this many validation samples."),
    warmup: int = typer.Option(10, "--warmup", help="Untimed runs first."),
    runs: int = typer.Option(100, "--runs", help="At least this many timed runs."),
    min_seconds: float = typer.Option(1.0, "--min-seconds", help="And at least this long."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (default: the target's)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the generated inputs."),
    input: Optional[str] = typer.Option(None, "--input", help=".npy/.npz inputs in the source layout instead of random ones."),
    lock_timeout: float = typer.Option(600.0, "--lock-timeout", help="Seconds to wait for another benchmark on a device."),
    no_bench: bool = typer.Option(False, "--no-bench", help="Convert and push only."),
    max_p90_ms: Optional[float] = typer.Option(None, "--max-p90-ms", help="Gate: exit 1 when a device's p90 is over this."),
    samples: bool = typer.Option(False, "--samples/--no-samples", help="Include every latency sample in the JSON."),
    warmup_seconds: float = typer.Option(0.0, "--warmup-seconds", help="Warm up for at least this long too."),
    sustained: float = typer.Option(0.0, "--sustained", help="Measure for at least SECONDS, latency and temperature over time (thermal behaviour)."),
    max_cv: Optional[float] = typer.Option(None, "--max-cv", help="Flag a run unstable above this coefficient of variation (default 0.10)."),
    require_clean: bool = typer.Option(False, "--require-clean", help="Gate: exit 1 when a device was throttled, hot or loaded."),
    junit: Optional[str] = typer.Option(None, "--junit", help="Write JUnit XML here (one testcase per device)."),
    history: Optional[str] = typer.Option(None, "--history", help="Store results in this SQLite file (default $EDGEOPT_HISTORY or ~/.local/share/edgeopt/results.sqlite; EDGEOPT_HISTORY=off: do not store)."),
    accept_new: bool = typer.Option(False, "--accept-new", help="Trust unknown host keys on first use (recorded)."),
    json_out: bool = typer.Option(False, "--json", help="Print {manifest, results} as JSON on stdout, nothing else."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
):
    """Convert MODEL for T (cached), push it to the devices and benchmark it there, in parallel."""
    from edgeopt import targets as T
    from edgeopt.devices.bench import BenchOptions
    from edgeopt.cli._devices import (check_clean, check_p90, echo_json, print_bench_table, public, raise_for_failures,
                                      select_devices, store_history, write_junit)
    from edgeopt.cli.convert_cmd import calibration_method
    from edgeopt.devices.deploy import deploy as run
    from edgeopt.errors import UsageError

    try:
        t = T.get(target)
    except KeyError as e:
        raise UsageError(e.args[0]) from None
    family = target.strip().lower() if target.strip().lower() in T.FAMILIES else t.name
    devices, _ = select_devices(inventory, device, all_devices, local, family=family, local_target=t.name,
                                command="deploy")
    opts = BenchOptions(warmup=warmup, runs=runs, min_seconds=min_seconds, threads=threads, seed=seed, input=input,
                        lock_timeout=lock_timeout, keep_samples=True, warmup_seconds=warmup_seconds,
                        sustained=sustained, cv_threshold=max_cv)
    res = run(model, t.name, devices, out=out, calib=calib, val=val, input_shapes=input_shape or None, mean=mean,
              std=std, io=io, bench=opts, no_bench=no_bench, accept_new=accept_new,
              convert_options={k: v for k, v in (("min_sqnr", min_sqnr), ("min_top1", min_top1),
                                                 ("accuracy_target", accuracy_target),
                                                 ("allow_cpu_ops", allow_cpu_ops or None),
                                                 ("allow_float_fallback", allow_float_fallback or None),
                                                 ("explain", explain or None),
                                                 ("calibration_method", calibration_method(calibration)),
                                                 ("max_samples", max_samples if max_samples != 200 else None),
                                                 ("max_val_samples", max_val_samples if max_val_samples != 1000
                                                  else None)) if v is not None})
    if not no_bench:
        store_history(res["results"], history, "deploy", manifest=res["manifest"])
        write_junit(junit, res["results"], "deploy", max_p90_ms, require_clean)
    if json_out:
        echo_json({"manifest": res["manifest"], "results": [public(r, samples) for r in res["results"]]})
    else:
        from edgeopt.cli import console
        m = res["manifest"]
        a = m["artifacts"][0]
        console().print(f"{m['source']['file']} -> {a['file']} ({a['precision']}, {a['bytes'] / 1024:.1f} KiB) "
                        f"{'converted' if res['converted'] else 'from cache'}: {res['out']}")
        acc = m.get("accuracy") or {}
        for name, o in (acc.get("outputs") or {}).items():
            parts = [f"cosine {o['cosine']:.4f}", f"SQNR {o['sqnr_db']:.1f} dB"]
            if "top1_agreement" in o:
                parts.append(f"top-1 agreement {o['top1_agreement']:.3f}")
            if "top1_accuracy" in o:
                parts.append(f"top-1 accuracy {o['top1_accuracy']:.3f} (FP32 {o['fp32_top1_accuracy']:.3f})")
            console().print(f"accuracy vs FP32 on {acc.get('samples')} samples, {name}: " + ", ".join(parts))
        from edgeopt.cli.convert_cmd import print_recovery
        print_recovery(console(), dict(m, _out=res["out"]))
        if no_bench:
            for r in res["results"]:
                if "error" not in r:
                    tr = r["transfer"]
                    sent = "already there" if tr["skipped"] else f"{tr['bytes']} bytes sent"
                    console().print(f"{r['device']}: {r['artifact']['path']} ({sent})")
        else:
            print_bench_table(res["results"], title=f"edgeopt deploy --target {t.name}")
    raise_for_failures(res["results"])
    check_p90(res["results"], max_p90_ms)
    check_clean(res["results"], require_clean)
