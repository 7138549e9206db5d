"""Compare two benchmark results (A = baseline, B = candidate): change in p50/p90 and a significance test.

    from edgeopt.results import compare, history
    rep = compare.compare(history.load_results("12"), history.load_results("new.json"), max_regression=5.0)
    rep["regressed"]   # True: B is slower than A by more than 5 % on p50 and the U test says it is not noise

B regresses when, for a device, ``metric`` (p50 by default) grew by more than ``max_regression`` percent
AND a one-sided Mann-Whitney U test on the raw samples says B is slower (p < alpha). Without raw samples
(e.g. ``deploy --json`` without ``--samples``) there is no test: the change alone decides, and the verdict
says so.
"""
from __future__ import annotations

from edgeopt.results import stats
from edgeopt.errors import UsageError

__all__ = ["compare", "pair", "DEFAULT_MAX_REGRESSION", "DEFAULT_ALPHA"]

DEFAULT_MAX_REGRESSION = 5.0   # percent
DEFAULT_ALPHA = 0.01


def _p(p: float) -> str:
    return "<1e-16" if p < 1e-16 else f"={p:.2g}"


def _label(r: dict) -> str:
    if r.get("id"):
        return f"#{r['id']}"
    return str(r.get("source") or r.get("device") or "?")


def pair(a: list[dict], b: list[dict]) -> list[tuple[dict, dict]]:
    """Pairs of results to compare: by device name, or the single result of each side."""
    if len(a) == 1 and len(b) == 1:
        return [(a[0], b[0])]
    bd = {r.get("device"): r for r in b}
    pairs = [(r, bd[r.get("device")]) for r in a if r.get("device") in bd]
    if not pairs:
        raise UsageError("nothing to compare: no device is in both A and B "
                         f"(A: {', '.join(str(r.get('device')) for r in a)}; "
                         f"B: {', '.join(str(r.get('device')) for r in b)})")
    return pairs


def compare_one(ra: dict, rb: dict, max_regression: float = DEFAULT_MAX_REGRESSION, metric: str = "p50",
                alpha: float = DEFAULT_ALPHA) -> dict:
    sa, sb = ra.get("samples_ms"), rb.get("samples_ms")
    out = {"device": rb.get("device") if rb.get("device") == ra.get("device") else
           f"{ra.get('device')} vs {rb.get('device')}",
           "a": {"ref": _label(ra), "device": ra.get("device"), "artifact": (ra.get("artifact") or {}).get("file"),
                 "sha256": (ra.get("artifact") or {}).get("sha256"), "clean": ra.get("clean")},
           "b": {"ref": _label(rb), "device": rb.get("device"), "artifact": (rb.get("artifact") or {}).get("file"),
                 "sha256": (rb.get("artifact") or {}).get("sha256"), "clean": rb.get("clean")},
           "metric": metric, "max_regression_pct": max_regression}
    if sa and sb:
        c = stats.compare_samples(sa, sb, alpha=alpha)
        out.update({"latency_a": c["a"], "latency_b": c["b"], "n_a": c["n_a"], "n_b": c["n_b"],
                    "change_pct": {k: (v * 100 if v is not None else None) for k, v in c["change"].items()},
                    "ci95_p50_change_pct": [v * 100 for v in c["ci95_p50_change"]], "test": c["test"]})
        slower_sig, faster_sig = c["slower"], c["faster"]
    else:
        la, lb = ra.get("latency_ms") or {}, rb.get("latency_ms") or {}
        out.update({"latency_a": {k: la.get(k) for k in ("p50", "p90", "p99", "mean", "cv")},
                    "latency_b": {k: lb.get(k) for k in ("p50", "p90", "p99", "mean", "cv")},
                    "change_pct": {k: ((lb[k] / la[k] - 1) * 100 if la.get(k) and lb.get(k) is not None else None)
                                   for k in ("p50", "p90", "p99", "mean")},
                    "test": None})
        slower_sig = faster_sig = None
    ch = out["change_pct"].get(metric)
    if ch is None:
        raise UsageError(f"cannot compare {metric}: missing in {out['a']['ref']} or {out['b']['ref']}")
    over = ch > max_regression
    regressed = over and (slower_sig is not False)
    if regressed and slower_sig is None:
        why = f"{metric} {ch:+.1f}% > {max_regression:g}% (no raw samples: no significance test)"
    elif regressed:
        why = f"{metric} {ch:+.1f}% > {max_regression:g}%, significant (p{_p(out['test']['p_slower'])})"
    elif over:
        why = f"{metric} {ch:+.1f}% but not significant (p{_p(out['test']['p_slower'])} >= {alpha:g})"
    elif slower_sig:
        why = f"{metric} {ch:+.1f}%: slower, significant, within {max_regression:g}%"
    elif faster_sig:
        why = f"{metric} {ch:+.1f}%: faster, significant"
    else:
        why = f"{metric} {ch:+.1f}%: no significant change" if slower_sig is not None else f"{metric} {ch:+.1f}%"
    out["verdict"] = ("regression" if regressed else "faster" if faster_sig and ch < 0 else
                      "slower" if slower_sig else "same")
    out["regressed"] = regressed
    out["summary"] = why
    notes = []
    for side, r in (("A", ra), ("B", rb)):
        if r.get("clean") is False:
            notes.append(f"{side} was measured on a device that was not clean: "
                         + "; ".join((r.get("conditions") or {}).get("reasons") or []))
    sha_a, sha_b = out["a"]["sha256"], out["b"]["sha256"]
    if ra.get("device") != rb.get("device"):
        notes.append("A and B ran on different devices")
    if sha_a and sha_a == sha_b:
        notes.append("A and B are the same artifact")
    out["notes"] = notes
    return out


def compare(a: list[dict], b: list[dict], max_regression: float = DEFAULT_MAX_REGRESSION, metric: str = "p50",
            alpha: float = DEFAULT_ALPHA) -> dict:
    if metric not in ("p50", "p90", "p99", "mean"):
        raise UsageError(f"--metric {metric}: choose p50, p90, p99 or mean")
    pairs = [compare_one(x, y, max_regression, metric, alpha) for x, y in pair(a, b)]
    return {"pairs": pairs, "regressed": any(p["regressed"] for p in pairs), "metric": metric,
            "max_regression_pct": max_regression, "alpha": alpha}
