"""edgeopt deploy MODEL --target T [--device NAME[,NAME...] | --all | --local] [convert options] [bench options]"""
from __future__ import annotations

import inspect

from edgeopt.cli import console, echo_json
from edgeopt.cli.options import (BENCHMARK, CONVERSION, DEBUG, DEVICE_SELECTION, DEVICES, INVENTORY, JSON, MODEL,
                                 OUT, SAMPLES, TARGET, VAL, bench_options, command, conversion_options, option,
                                 swap, variant)

NO_BENCH = option("no_bench", bool, False, "--no-bench", help="Convert and push only.")


@command("deploy", MODEL, TARGET,
         swap(DEVICE_SELECTION,
              variant(DEVICES, help="Device name(s): NAME[,NAME...] (default: every inventory device of T's family)."),
              variant(INVENTORY, help="Inventory file.")),
         swap(CONVERSION,
              variant(VAL, help="Validation data for the accuracy check."),
              variant(OUT, help="Output directory (default: a cache under ~/.cache/edgeopt/deploy).")),
         swap(BENCHMARK, variant(SAMPLES, default=False)),
         NO_BENCH,
         variant(JSON, help="Print {manifest, results} as JSON on stdout, nothing else."),
         DEBUG)
def deploy(o):
    """Convert MODEL for T (cached), push it to the devices and benchmark it there, in parallel."""
    from edgeopt import targets
    from edgeopt.cli.bench_output import (check_clean, check_p90, print_bench_table, public, raise_for_failures,
                                          store_history, write_junit)
    from edgeopt.cli.device_selection import select_devices
    from edgeopt.devices.deploy import deploy as run
    from edgeopt.errors import UsageError

    try:
        t = targets.get(o.target)
    except KeyError as e:
        raise UsageError(e.args[0]) from None
    family = o.target.strip().lower() if o.target.strip().lower() in targets.FAMILIES else t.name
    devices, _ = select_devices(o, family=family, local_target=t.name, command="deploy")
    conversion = conversion_options(o)
    # deploy() takes the data and output options as keywords of its own, the rest as convert_options
    own = inspect.signature(run).parameters
    direct = {name: conversion.pop(name) for name in list(conversion) if name in own}
    res = run(o.model, t.name, devices, bench=bench_options(o), no_bench=o.no_bench, accept_new=o.accept_new,
              convert_options=conversion, **direct)
    if not o.no_bench:
        store_history(res["results"], o.history, "deploy", manifest=res["manifest"])
        write_junit(o.junit, res["results"], "deploy", o.max_p90_ms, o.require_clean)
    if o.json_out:
        echo_json({"manifest": res["manifest"], "results": [public(r, o.samples) for r in res["results"]]})
    else:
        m = res["manifest"]
        a = m["artifacts"][0]
        console().print(f"{m['source']['file']} -> {a['file']} ({a['precision']}, {a['bytes'] / 1024:.1f} KiB) "
                        f"{'converted' if res['converted'] else 'from cache'}: {res['out']}")
        acc = m.get("accuracy") or {}
        for name, metrics in (acc.get("outputs") or {}).items():
            parts = [f"cosine {metrics['cosine']:.4f}", f"SQNR {metrics['sqnr_db']:.1f} dB"]
            if "top1_agreement" in metrics:
                parts.append(f"top-1 agreement {metrics['top1_agreement']:.3f}")
            if "top1_accuracy" in metrics:
                parts.append(f"top-1 accuracy {metrics['top1_accuracy']:.3f} "
                             f"(FP32 {metrics['fp32_top1_accuracy']:.3f})")
            console().print(f"accuracy vs FP32 on {acc.get('samples')} samples, {name}: " + ", ".join(parts))
        from edgeopt.cli.convert_cmd import print_recovery
        print_recovery(console(), dict(m, _out=res["out"]))
        if o.no_bench:
            for r in res["results"]:
                if "error" not in r:
                    tr = r["transfer"]
                    sent = "already there" if tr["skipped"] else f"{tr['bytes']} bytes sent"
                    console().print(f"{r['device']}: {r['artifact']['path']} ({sent})")
        else:
            print_bench_table(res["results"], title=f"edgeopt deploy --target {t.name}")
    raise_for_failures(res["results"])
    check_p90(res["results"], o.max_p90_ms)
    check_clean(res["results"], o.require_clean)
