"""edgeopt convert MODEL --target T [--calib SRC] [--val SRC] [--out DIR] ..."""
from __future__ import annotations

import sys

from edgeopt.cli import console, echo_json
from edgeopt.cli.options import CONVERSION, DEBUG, JSON, MODEL, TARGET, command, conversion_options, variant


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


@command("convert", MODEL, TARGET, CONVERSION,
         variant(JSON, help="Print the manifest as JSON on stdout, nothing else."), DEBUG)
def convert(o):
    """Convert a model into INT8 artifacts for a target, checked against the FP32 model."""
    from edgeopt.conversion.pipeline import convert as run
    from edgeopt.errors import GateError

    step, stop = progress_reporter(not o.json_out)
    try:
        manifest = run(o.model, target=o.target, progress=step, **conversion_options(o))
    except GateError as e:
        stop()
        if o.json_out and e.result is not None:
            echo_json(_public(e.result))
        elif e.result is not None and e.result.get("recovery"):
            print_summary(e.result)
        raise
    finally:
        stop()
    if o.json_out:
        echo_json(_public(manifest))
    else:
        print_summary(manifest)


def _public(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if not k.startswith("_")}


def print_summary(manifest: dict):
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
    for a in manifest["artifacts"]:   # an output judged part by part: the table shows its worst part
        for name, m in (a.get("accuracy") or {}).items():
            if m.get("parts") and m.get("whole"):
                worst = min(m["parts"], key=lambda p: p["sqnr_db"])
                c.print(f"{a['file']}: output {name} is judged by its worst part, {worst['range'][0]}:"
                        f"{worst['range'][1]} on axis {m.get('axis')} ({worst['sqnr_db']:.1f} dB; the whole "
                        f"tensor {m['whole']['sqnr_db']:.1f} dB, its largest part's)")
        for o in a.get("outputs") or []:   # parts on scales of their own (converters.onnx_split)
            if o.get("join"):
                c.print(f"{a['file']}: output {o['name']} is {len(o['join']['parts'])} output tensors, each on its "
                        f"own scale; edgeopt.runtime joins them on axis {o['join']['axis']} (manifest: join)")
    cal = manifest.get("calibration") or {}
    if cal.get("source"):
        c.print(f"calibration: {cal['source']} ({cal.get('samples')} samples)")
    acc = manifest.get("accuracy") or {}
    if acc.get("data", {}).get("note"):
        c.print(f"validation: {acc['data']['note']}")
    for a in manifest["artifacts"]:
        fb = a.get("float_blocks") or {}
        if a.get("float_ops") or fb:
            kinds = sorted({b["kind"] for b in fb.get("blocks") or []})
            blocks = (f"{len(fb['blocks'])} float blocks ({', '.join(kinds)}) "
                      + ("kept in float: " if fb.get("float") else "left INT8: ") + fb.get("why", "")) if fb else ""
            c.print(f"{a['file']}: " + "; ".join(x for x in (
                f"float ops {', '.join(a['float_ops'])}" if a.get("float_ops") else "", blocks) if x))
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
        sel = (ch.get("selection") or {}).get("samples")
        c.print(f"  {name}: top-1 agreement {top1:.3f} on {ch['confirmation_samples']} confirmation samples "
                f"(95% interval {lo:.3f}-{hi:.3f}; chosen on {sel} other validation samples)")
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
