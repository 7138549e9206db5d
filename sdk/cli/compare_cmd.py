"""edgeopt compare A B [--max-regression PCT] [--metric p50] [--junit FILE] [--json]"""
from __future__ import annotations

from edgeopt.cli import console, echo_json, styled
from edgeopt.cli.options import DEBUG, HISTORY_READ, JSON, JUNIT, argument, command, option


@command("compare",
         argument("a", str, ..., help="Baseline: a result id or a JSON file (bench/deploy --json)."),
         argument("b", str, ..., help="Candidate: a result id or a JSON file."),
         option("max_regression", float, 5.0, "--max-regression",
                help="Gate: exit 1 when B is slower than A by more than PCT percent and the difference is "
                     "significant."),
         option("metric", str, "p50", "--metric", help="p50, p90, p99 or mean."),
         option("alpha", float, 0.01, "--alpha", help="Significance level of the Mann-Whitney U test."),
         HISTORY_READ, JUNIT, JSON, DEBUG)
def compare(o):
    """Compare two results: change in p50/p90 with a significance test; exit 1 on a regression."""
    from edgeopt.errors import GateError
    from edgeopt.results import history
    from edgeopt.results.compare import compare as run

    a, b, metric, max_regression = o.a, o.b, o.metric, o.max_regression
    rep = run(history.load_results(a, o.history), history.load_results(b, o.history), max_regression=max_regression,
              metric=metric, alpha=o.alpha)
    if o.junit:
        from edgeopt.results import junit
        cases = []
        for p in rep["pairs"]:
            out = (f"A {p['a']['ref']} ({p['a']['artifact']}): {metric} {p['latency_a'][metric]:.3f} ms\n"
                   f"B {p['b']['ref']} ({p['b']['artifact']}): {metric} {p['latency_b'][metric]:.3f} ms\n"
                   + p["summary"] + "".join(f"\nnote: {n}" for n in p["notes"]))
            cases.append(junit.Case(f"{p['device']} {metric} regression <= {max_regression:g}%", "edgeopt.compare",
                                    failure=f"regression: {p['summary']}" if p["regressed"] else None, out=out))
        junit.write(o.junit, "edgeopt compare", cases)
    if o.json_out:
        echo_json(rep)
    else:
        from rich.table import Table
        c = console()
        t = Table(title=f"edgeopt compare  A={a}  B={b}")
        for col in ("device", "A p50", "B p50", "Δ p50", "A p90", "B p90", "Δ p90", "p (B slower)", "verdict"):
            t.add_column(col, justify="left" if col in ("device", "verdict") else "right")
        for p in rep["pairs"]:
            ch = p["change_pct"]
            pv = p["test"]["p_slower"] if p.get("test") else None
            color = {"regression": "red", "slower": "yellow", "faster": "green", "same": "white"}[p["verdict"]]
            t.add_row(str(p["device"]), f"{p['latency_a']['p50']:.3f}", f"{p['latency_b']['p50']:.3f}",
                      f"{ch['p50']:+.1f}%", f"{p['latency_a']['p90']:.3f}", f"{p['latency_b']['p90']:.3f}",
                      f"{ch['p90']:+.1f}%", "-" if pv is None else f"{pv:.2g}", styled((p["verdict"], color)))
        c.print(t)
        for p in rep["pairs"]:
            c.print(f"{p['device']}: {p['summary']}")
            for n in p["notes"]:
                c.print(f"  note: {n}")
    if rep["regressed"]:
        bad = [p for p in rep["pairs"] if p["regressed"]]
        raise GateError("regression: " + "; ".join(f"{p['device']} {p['summary']}" for p in bad))
