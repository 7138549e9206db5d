"""edgeopt bench ARTIFACT (--device NAME[,NAME...] | --all | --local) [--inventory FILE] [--warmup N] ..."""
from __future__ import annotations

from edgeopt.cli import echo_json
from edgeopt.cli.options import (BENCHMARK, DEBUG, DEVICE_SELECTION, DEVICE_VAL, JSON, argument, bench_options,
                                 command)

ARTIFACT = argument("artifact", str, ...,
                    help="A .tflite/.onnx artifact, or an edgeopt output dir (its primary artifact).")


@command("bench", ARTIFACT, DEVICE_SELECTION, BENCHMARK, DEVICE_VAL, JSON, DEBUG)
def bench(o):
    """Benchmark an artifact on devices (in parallel), pushing it first when it is not there yet."""
    from edgeopt.cli.bench_output import (check_clean, check_p90, print_bench_table, public, raise_for_failures,
                                          store_history, write_junit)
    from edgeopt.cli.device_selection import select_devices
    from edgeopt.devices.bench import bench_devices, manifest_target

    devices, single = select_devices(o, local_target=manifest_target(o.artifact))
    results = bench_devices(devices, o.artifact, bench_options(o), accept_new=o.accept_new)
    store_history(results, o.history, "bench", artifact=o.artifact)
    write_junit(o.junit, results, "bench", o.max_p90_ms, o.require_clean)
    if o.json_out:
        out = [public(r, o.samples) for r in results]
        echo_json(out[0] if single and len(out) == 1 else out)
    else:
        print_bench_table(results)
    raise_for_failures(results)
    check_p90(results, o.max_p90_ms)
    check_clean(results, o.require_clean)

