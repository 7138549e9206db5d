"""edgeopt bench ARTIFACT (--device NAME[,NAME...] | --all | --local) [--inventory FILE] [--warmup N] ..."""
from __future__ import annotations

from typing import List, Optional

import typer

from edgeopt.cli import app


@app.command("bench")
def bench(
    artifact: str = typer.Argument(..., help="A .tflite/.onnx artifact, or an edgeopt output dir (its primary artifact)."),
    device: Optional[List[str]] = typer.Option(None, "--device", "-d", help="Device name(s) from the inventory: NAME[,NAME...]."),
    all_devices: bool = typer.Option(False, "--all", help="Every device in the inventory."),
    local: bool = typer.Option(False, "--local", help="This machine, through the same code path, without SSH."),
    inventory: Optional[str] = typer.Option(None, "--inventory", "-i", help="Inventory file (default ./edgeopt.toml or $EDGEOPT_INVENTORY)."),
    warmup: int = typer.Option(10, "--warmup", help="Untimed runs first."),
    runs: int = typer.Option(100, "--runs", help="At least this many timed runs."),
    min_seconds: float = typer.Option(1.0, "--min-seconds", help="And at least this long."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (default: the target's)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the generated inputs."),
    input: Optional[str] = typer.Option(None, "--input", help=".npy/.npz inputs in the source layout instead of random ones."),
    lock_timeout: float = typer.Option(600.0, "--lock-timeout", help="Seconds to wait for another benchmark on a device."),
    max_p90_ms: Optional[float] = typer.Option(None, "--max-p90-ms", help="Gate: exit 1 when a device's p90 is over this."),
    samples: bool = typer.Option(True, "--samples/--no-samples", help="Include every latency sample in the JSON."),
    warmup_seconds: float = typer.Option(0.0, "--warmup-seconds", help="Warm up for at least this long too."),
    sustained: float = typer.Option(0.0, "--sustained", help="Measure for at least SECONDS, latency and temperature over time (thermal behaviour)."),
    max_cv: Optional[float] = typer.Option(None, "--max-cv", help="Flag a run unstable above this coefficient of variation (default 0.10)."),
    require_clean: bool = typer.Option(False, "--require-clean", help="Gate: exit 1 when a device was throttled, hot or loaded."),
    junit: Optional[str] = typer.Option(None, "--junit", help="Write JUnit XML here (one testcase per device)."),
    history: Optional[str] = typer.Option(None, "--history", help="Store results in this SQLite file (default $EDGEOPT_HISTORY or ~/.local/share/edgeopt/results.sqlite; EDGEOPT_HISTORY=off: do not store)."),
    accept_new: bool = typer.Option(False, "--accept-new", help="Trust unknown host keys on first use (recorded)."),
    json_out: bool = typer.Option(False, "--json", help="Machine output on stdout, nothing else."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
):
    """Benchmark an artifact on devices (in parallel), pushing it first when it is not there yet."""
    from edgeopt.devices.bench import BenchOptions, bench_devices
    from edgeopt.cli._devices import (check_clean, check_p90, echo_json, print_bench_table, public, raise_for_failures,
                                      select_devices, store_history, write_junit)

    devices, single = select_devices(inventory, device, all_devices, local, local_target=_manifest_target(artifact))
    opts = BenchOptions(warmup=warmup, runs=runs, min_seconds=min_seconds, threads=threads, seed=seed, input=input,
                        lock_timeout=lock_timeout, keep_samples=True, warmup_seconds=warmup_seconds,
                        sustained=sustained, cv_threshold=max_cv)
    results = bench_devices(devices, artifact, opts, accept_new=accept_new)
    store_history(results, history, "bench", artifact=artifact)
    write_junit(junit, results, "bench", max_p90_ms, require_clean)
    if json_out:
        out = [public(r, samples) for r in results]
        echo_json(out[0] if single and len(out) == 1 else out)
    else:
        print_bench_table(results)
    raise_for_failures(results)
    check_p90(results, max_p90_ms)
    check_clean(results, require_clean)


def _manifest_target(artifact: str) -> str | None:
    """The target an edgeopt output dir (or an artifact beside its manifest) was converted for, if any."""
    import json
    import os
    d = artifact if os.path.isdir(artifact) else os.path.dirname(os.path.abspath(artifact))
    try:
        with open(os.path.join(d, "manifest.json")) as f:
            return (json.load(f).get("target") or {}).get("name")
    except (OSError, ValueError, AttributeError):
        return None
