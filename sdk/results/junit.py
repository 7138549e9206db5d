"""JUnit XML for CI systems (GitHub Actions, GitLab, Jenkins): one testcase per device / gate.

    from edgeopt.results import junit
    cases = [junit.Case("pi-01", "edgeopt.bench", time=1.2, failure="p90 12.1 ms > 10 ms", out="...")]
    junit.write("report.xml", "edgeopt bench", cases)
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from edgeopt.results.private_file import write_private

__all__ = ["Case", "write", "bench_cases"]


@dataclass
class Case:
    name: str
    classname: str
    time: float = 0.0
    failure: str | None = None     # a gate failed
    error: str | None = None       # the device could not be measured
    skipped: str | None = None
    out: str | None = None         # system-out: the numbers, conditions


def write(path: str, suite: str, cases: list[Case]) -> None:
    root = ET.Element("testsuites", name=suite, tests=str(len(cases)),
                      failures=str(sum(c.failure is not None for c in cases)),
                      errors=str(sum(c.error is not None for c in cases)))
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(cases)),
                       failures=str(sum(c.failure is not None for c in cases)),
                       errors=str(sum(c.error is not None for c in cases)),
                       skipped=str(sum(c.skipped is not None for c in cases)),
                       time=f"{sum(c.time for c in cases):.3f}")
    for c in cases:
        tc = ET.SubElement(ts, "testcase", name=c.name, classname=c.classname, time=f"{c.time:.3f}")
        if c.failure is not None:
            ET.SubElement(tc, "failure", message=c.failure.splitlines()[0][:500], type="gate").text = c.failure
        if c.error is not None:
            ET.SubElement(tc, "error", message=c.error.splitlines()[0][:500], type="device").text = c.error
        if c.skipped is not None:
            ET.SubElement(tc, "skipped", message=c.skipped)
        if c.out:
            ET.SubElement(tc, "system-out").text = c.out
    ET.indent(root)
    write_private(path, ET.tostring(root, encoding="utf-8", xml_declaration=True))


def _numbers(r: dict) -> str:
    lat = r.get("latency_ms") or {}
    f = lambda k: "-" if lat.get(k) is None else f"{lat[k]:.3f}"  # noqa: E731
    lines = [f"device {r.get('device')} ({r.get('target') or '-'}), artifact {(r.get('artifact') or {}).get('file')}",
             f"p50 {f('p50')} ms, p90 {f('p90')} ms, p99 {f('p99')} ms, mean {f('mean')} ms, "
             f"cv {lat.get('cv', 0) or 0:.3f}, runs {r.get('runs')}"]
    ci = (r.get("ci95") or {}).get("p50")
    if ci:
        lines.append(f"p50 95% CI [{ci[0]:.3f}, {ci[1]:.3f}] ms")
    if r.get("unstable"):
        lines.append("unstable: the coefficient of variation is over the threshold")
    cond = r.get("conditions") or {}
    if cond:
        lines.append("clean" if cond.get("clean") else "NOT clean: " + "; ".join(cond.get("reasons") or []))
        for w in cond.get("warnings") or []:
            lines.append(f"warning: {w}")
    if r.get("id"):
        lines.append(f"history id {r['id']}")
    return "\n".join(lines)


def bench_cases(results: list[dict], command: str = "bench", max_p90_ms: float | None = None,
                require_clean: bool = False) -> list[Case]:
    """One testcase per device for a latency measurement (+ its p90 budget and clean gate when asked)."""
    cases = []
    for r in results:
        name = f"{r.get('device')}"
        t = ((r.get("timing") or {}).get("wall_s")) or 0.0
        if "error" in r:
            cases.append(Case(name, f"edgeopt.{command}", t, error=r["error"] + (f"\nhint: {r['hint']}"
                                                                                 if r.get("hint") else "")))
            continue
        fails = []
        p90 = (r.get("latency_ms") or {}).get("p90")
        if max_p90_ms is not None and p90 is not None and p90 > max_p90_ms:
            fails.append(f"p90 {p90:.3f} ms > budget {max_p90_ms:g} ms")
        if require_clean and r.get("clean") is False:
            fails.append("device conditions not clean: " + "; ".join((r.get("conditions") or {}).get("reasons") or []))
        cases.append(Case(name, f"edgeopt.{command}", t, failure="\n".join(fails) if fails else None,
                          out=_numbers(r)))
    return cases
