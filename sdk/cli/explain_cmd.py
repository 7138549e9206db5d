"""edgeopt explain OUT_DIR [--val SRC] [--model PATH] [--calib SRC] [--top N] [--json]"""
from __future__ import annotations

from typing import Optional

from edgeopt.cli import console, echo_json
from edgeopt.cli.options import CALIB, DEBUG, JSON, TRUST_MODEL_CODE, VAL, argument, command, option, variant


@command("explain",
         argument("out_dir", str, ..., help="An `edgeopt convert` output directory (with manifest.json)."),
         variant(VAL, help="Validation data to measure the per-layer error on (default: the report stored by "
                           "convert, if any)."),
         option("model", Optional[str], None, "--model",
                help="The source model (default: the manifest's source file, looked up beside OUT_DIR and in the "
                     "current directory, checked by SHA-256)."),
         variant(CALIB, help="Calibration data used for the conversion (default: the manifest's calibration file, "
                             "looked up likewise)."),
         option("top", int, 20, "--top", help="Show this many layers."),
         TRUST_MODEL_CODE,
         variant(JSON, help="Print the report as JSON on stdout, nothing else."),
         DEBUG)
def explain(o):
    """Per-layer quantization error of a converted model against FP32, worst first."""
    from edgeopt.conversion.explain import explain as run

    report = run(o.out_dir, val=o.val, model=o.model, calib=o.calib, top=o.top,
                 trust_model_code=o.trust_model_code)
    if o.json_out:
        echo_json(report)
        return
    print_report(report, o.top)


def print_report(report: dict, top: int = 20):
    """The per-layer report as a table, worst first, with the recovery it records."""
    from rich.table import Table

    c = console()
    lay = report["layers"]
    metric = lay["metric"]
    t = Table(title=f"{report['source']} -> {report['target']}: per-layer quantization error "
                    f"({lay['samples']} samples, {lay.get('total', len(lay['layers']))} layers, worst first)")
    t.add_column("#", justify="right")
    t.add_column("op")
    t.add_column("layer", overflow="fold")
    if metric == "rmse_scale":
        for col in ("RMSE/step", "RMSE", "max |err|", "step"):
            t.add_column(col, justify="right")
    else:
        for col in ("dB lost here", "SQNR dB", "in float"):
            t.add_column(col, justify="right")
    floats = set(report.get("float_layers") or [])
    for k, r in enumerate(lay["layers"][:top], 1):
        if metric == "rmse_scale":
            name = r["tensor"]
            t.add_row(str(k), r["op"], _short(name) + (" (float)" if name in floats else ""),
                      f"{r['rmse_scale']:.3f}" if r["rmse_scale"] is not None else "-", f"{r['rmse']:.4g}",
                      f"{r['max_abs_err']:.4g}", f"{r['scale']:.4g}")
        else:
            t.add_row(str(k), r["op"], r["node"] + (" (float)" if r["node"] in floats else ""),
                      f"{r['added_db']:.2f}", f"{r['sqnr_db']:.1f}", "yes" if r["node"] in floats else "")
    c.print(t)
    c.print(f"method: {lay['method']}")
    if report.get("note"):
        c.print(report["note"])
    rec = report.get("recovery")
    if rec:
        ch = rec["chosen"]
        n = len(ch.get("float_layers") or [])
        c.print(f"recovery for {rec.get('target_str')}: {'met' if rec.get('met') else 'NOT met'}; recipe "
                f"{ch['recipe']['calibration_method']}"
                + (" + bias correction" if ch["recipe"].get("bias_correction") else "")
                + f", {n} layer{'' if n == 1 else 's'} in float")
        cost = rec.get("cost")
        if cost:
            c.print(f"cost: size x{cost['size_ratio']}, latency x{cost['latency_ratio']} "
                    f"({cost['latency_ms_plain']} -> {cost['latency_ms']} ms, 1 thread, this host)")
        if rec.get("advice"):
            c.print(rec["advice"])
        if rec.get("needs_cpu_ops"):
            c.print(rec["needs_cpu_ops"]["note"])


def _short(name: str, width: int = 90) -> str:
    first = name.split(";")[0]
    return first if len(first) <= width else "..." + first[-width:]


