"""What the benchmark results of device commands (bench, deploy; devices for failures) become: the failures
raised, the gates (--max-p90-ms, --require-clean) checked, the table, the JSON, the history and JUnit XML."""
from __future__ import annotations

import sys

from edgeopt.cli import console, styled


def failures(results: list[dict]) -> list[dict]:
    """The entries of devices that failed (``{"device", "error", "hint", "exit_code"}``)."""
    return [r for r in results if "error" in r]


def raise_for_failures(results: list[dict]):
    """Raise the failure of the one device that failed (its exit code), or a DeviceError naming all of them."""
    from edgeopt.errors import DeviceError, EdgeoptError

    bad = failures(results)
    if not bad:
        return
    if len(bad) == 1:
        e = EdgeoptError(bad[0]["error"], hint=bad[0].get("hint"))
        e.exit_code = bad[0].get("exit_code", 3)
        raise e
    msg = f"{len(bad)} of {len(results)} devices failed:\n" + "\n".join(f"{r['error']}" for r in bad)
    raise DeviceError(msg, hint=bad[0].get("hint"))


def check_p90(results: list[dict], max_p90_ms: float | None):
    """--max-p90-ms: a GateError naming every device whose p90 is over the budget."""
    if max_p90_ms is None:
        return
    from edgeopt.errors import GateError

    over = [r for r in results if "error" not in r and (r.get("latency_ms") or {}).get("p90") is not None
            and r["latency_ms"]["p90"] > max_p90_ms]
    if over:
        raise GateError("latency budget exceeded: " + ", ".join(
            f"{r['device']} p90 {r['latency_ms']['p90']:.3f} ms > {max_p90_ms:g} ms" for r in over))


def public(result: dict, samples: bool = True) -> dict:
    """A result as the JSON output shows it: without the raw samples under --no-samples."""
    return {k: v for k, v in result.items() if samples or k not in ("samples_ms", "timestamps_s")}


def store_history(results: list[dict], path: str | None, command: str, manifest: dict | None = None,
                  artifact: str | None = None) -> None:
    """Store the successful results in the history DB at ``path`` (--history; None: the default one) and set
    result['id']; a problem with the default DB is a warning only."""
    from edgeopt.errors import EdgeoptError
    from edgeopt.results import history
    if manifest is None and artifact:
        manifest = history.manifest_for(artifact)
    try:
        history.store(results, path, manifest=manifest, command=command)
    except EdgeoptError as e:
        if path:  # asked for explicitly: an error
            raise
        sys.stderr.write(f"warning: results not stored: {e.message}\n")


def write_junit(path: str | None, results: list[dict], command: str, max_p90_ms: float | None,
                require_clean: bool = False) -> None:
    """--junit: one testcase per device, failed by an error or a gate."""
    if not path:
        return
    from edgeopt.results import junit
    junit.write(path, f"edgeopt {command}", junit.bench_cases(results, command, max_p90_ms, require_clean))


def check_clean(results: list[dict], require_clean: bool):
    """--require-clean: a GateError naming every device that was throttled, hot or loaded."""
    if not require_clean:
        return
    from edgeopt.errors import GateError
    bad = [r for r in results if "error" not in r and r.get("clean") is False]
    if bad:
        raise GateError("device conditions not clean: " + "; ".join(
            f"{r['device']}: {', '.join((r.get('conditions') or {}).get('reasons') or [])}" for r in bad),
            hint="let the device cool down / go idle and run again")


def print_bench_table(results: list[dict], title: str = "edgeopt bench"):
    """A rich table of results (nothing when every device failed: the errors go to stderr)."""
    if not any("error" not in r for r in results):
        return
    from rich.table import Table

    c = console()
    t = Table(title=title)
    checked = any(r.get("accuracy") for r in results)  # a column for the on-device check only when there is one
    cols = ("device", "target", "runtime", "p50 ms", "p90 ms", "p99 ms", "mean ms", "CV", "runs", "init ms",
            "transfer") + (("device check",) if checked else ()) + ("status",)
    for col in cols:
        t.add_column(col, justify="right" if col.endswith("ms") or col == "runs" else "left",
                     no_wrap=col == "device check")
    notes, checks = [], []
    for r in results:
        if "error" in r:
            t.add_row(r["device"], r.get("target") or "-", styled(("failed (see below)", "red")),
                      *["-"] * (len(cols) - 3))
            continue
        rt = r.get("runtime") or {}
        how = rt.get("name") or "?"
        if rt.get("version"):
            how += f" {rt['version']}"
        extra = rt.get("delegate") or rt.get("provider")
        if extra:
            how += f" ({extra})"
        lat = r.get("latency_ms") or {}
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        tr = r.get("transfer")
        if tr is None:
            trs = "-"
        elif tr.get("skipped"):
            trs = "cached"
        else:
            mb = tr["bytes"] / 1e6
            trs = f"{mb:.2f} MB in {tr['seconds']:.2f} s"
        st = [{True: "clean", False: ("not clean", "red"), None: "-"}[r.get("clean")]]
        if r.get("unstable"):
            st += [" ", ("unstable", "yellow")]
        if r.get("id"):
            st.append(f" #{r['id']}")
        acc = r.get("accuracy")
        check = (_check_cell(acc),) if checked else ()
        t.add_row(r["device"], r.get("target") or "-", how, fmt(lat.get("p50")), fmt(lat.get("p90")),
                  fmt(lat.get("p99")), fmt(lat.get("mean")), "-" if lat.get("cv") is None else f"{lat['cv']:.3f}",
                  str(r.get("runs", "-")), fmt(r.get("init_ms")), trs, *check, styled(*st))
        if acc:
            from edgeopt.devices.val import summary_line
            checks.append(summary_line(r["device"], acc))
            notes += [f"{r['device']}: {n}" for n in acc.get("notes") or []]
        for n in r.get("notes") or []:
            notes.append(f"{r['device']}: {n}")
        for n in (r.get("conditions") or {}).get("reasons") or []:
            notes.append(f"{r['device']}: not clean: {n}")
    c.print(t)
    for line in checks:  # device data: printed as text, one line (no markup, no wrapping)
        c.print(line, markup=False, highlight=False, soft_wrap=True)
    for n in notes:
        c.print(n)


def _check_cell(acc: dict | None) -> str:
    """The on-device check in a few characters: the worst top-1 agreement (else SQNR) and whether the device's
    outputs are the host's."""
    if not acc:
        return "-"
    outs = list((acc.get("outputs") or {}).values())
    top1 = [m["top1_agreement"] for m in outs if m.get("top1_agreement") is not None]
    sqnr = [m["sqnr_db"] for m in outs if m.get("sqnr_db") is not None]
    text = f"top-1 {min(top1):.3f}" if top1 else (f"{min(sqnr):.1f} dB" if sqnr else "?")
    return text + (" = host" if acc.get("same_as_host") else " ≠ host")
