"""Reports of benchmark results: one self-contained HTML page, and a Markdown summary for pull requests.

    from edgeopt.results import report, history
    results = history.load_results("12") + history.load_results("13")
    open("report.html", "w").write(report.html(results))
    open("summary.md", "w").write(report.markdown(results))

The page needs nothing but itself: CSS inline, plots as embedded SVG images (drawn by
:mod:`edgeopt.results.svgplot`, no matplotlib), no scripts, no network.
"""
from __future__ import annotations

import datetime as _dt
import re
from html import escape

import numpy as np

from edgeopt import __version__
from edgeopt.results import sanitize, svgplot
from edgeopt.results.compare import compare

__all__ = ["html", "markdown", "label_of"]

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;background:#f3f4f6;
color:#111827;font-size:14px;line-height:1.45}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 10px} h3{font-size:15px;margin:18px 0 8px}
.sub{color:#4b5563;margin-bottom:16px}
.card{background:#fff;border:1px solid #e5e7eb;border-radius:8px;padding:16px;margin-bottom:16px}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{padding:6px 8px;border-bottom:1px solid #e5e7eb;text-align:left;vertical-align:top}
th{background:#f9fafb;font-weight:600;color:#374151}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600}
.ok{background:#d1fae5;color:#065f46} .bad{background:#fee2e2;color:#991b1b} .warn{background:#fef3c7;color:#92400e}
.muted{color:#6b7280} code{font-size:12px;background:#f3f4f6;padding:1px 4px;border-radius:4px}
img.plot{max-width:100%;height:auto;display:block;margin:4px 0}
ul{margin:4px 0 4px 18px;padding:0}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px}
"""


def label_of(r: dict, i: int) -> str:
    ref = f"#{r['id']}" if r.get("id") else (r.get("source") or f"result {i + 1}")
    art = (r.get("artifact") or {}).get("file") or "?"
    return f"{ref} {r.get('device') or '?'} · {art}"


def _f(v, digits=3, unit=""):
    """A value for HTML: floats with ``digits`` decimals, anything else escaped."""
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}{escape(unit)}"
    return escape(f"{v}{unit}")


def _num(v, spec: str) -> str:
    """``format(v, spec)`` for a number, anything else as text (escaped where it is rendered): a crafted field
    cannot stop the page."""
    if sanitize.number(v) is None:
        return str(v)
    return format(v, spec)


_MARKDOWN_SPECIAL = re.compile(r"([\\`*\[\]|])")  # emphasis, code spans, links, table cells


def _md(v) -> str:
    """A value for a Markdown table cell: one line, Markdown punctuation escaped, HTML as text."""
    s = " ".join(sanitize.text(v).split())
    s = escape(s, quote=False)
    return _MARKDOWN_SPECIAL.sub(r"\\\1", s)


def _md_number(v, digits=3) -> str:
    """A number for a Markdown cell; anything else as escaped text."""
    return f"{v:.{digits}f}" if isinstance(v, float) else "–" if v is None else _md(v)


def _md_code(v) -> str:
    """A value as a Markdown code span in a table cell: no backticks to close it, ``|`` escaped (GFM tables)."""
    s = " ".join(sanitize.text(v).split()).replace("`", "'").replace("|", "\\|")
    return f"`{s}`"


def _badge(text, kind):
    return f'<span class="badge {kind}">{escape(text)}</span>'


def _status(r: dict) -> str:
    out = []
    if r.get("clean") is True:
        out.append(_badge("clean", "ok"))
    elif r.get("clean") is False:
        out.append(_badge("not clean", "bad"))
    else:
        out.append(_badge("conditions unknown", "warn"))
    if r.get("unstable"):
        out.append(_badge("unstable", "warn"))
    return " ".join(out)


def _runtime(r: dict) -> str:
    rt = r.get("runtime") or {}
    s = f"{rt.get('name') or '?'} {rt.get('version') or ''}".strip()
    extra = rt.get("delegate") or rt.get("provider")
    return f"{s} ({extra})" if extra else s


def _summary_table(results: list[dict]) -> str:
    head = ("<tr><th></th><th>device</th><th>target</th><th>artifact</th><th>runtime</th><th class=n>p50 ms</th>"
            "<th class=n>p50 95% CI</th><th class=n>p90 ms</th><th class=n>p99 ms</th><th class=n>mean ms</th>"
            "<th class=n>CV</th><th class=n>runs</th><th>status</th></tr>")
    rows = []
    for i, r in enumerate(results):
        lat = r.get("latency_ms") or {}
        ci = (r.get("ci95") or {}).get("p50")
        art = r.get("artifact") or {}
        color = svgplot.PALETTE[i % len(svgplot.PALETTE)]
        ref = escape(f"#{r['id']}" if r.get("id") else str(r.get("source") or i + 1))
        rows.append(
            f"<tr><td><span class=swatch style='background:{color}'></span>{ref}</td>"
            f"<td>{escape(str(r.get('device')))}</td><td>{escape(str(r.get('target') or '–'))}</td>"
            f"<td>{escape(str(art.get('file')))}<br><span class=muted><code>{escape(str(art.get('sha256') or '')[:12])}"
            f"</code></span></td><td>{escape(_runtime(r))}</td>"
            f"<td class=n><b>{_f(lat.get('p50'))}</b></td>"
            f"<td class=n>{'[' + _f(ci[0]) + ', ' + _f(ci[-1]) + ']' if ci else '–'}</td>"
            f"<td class=n>{_f(lat.get('p90'))}</td><td class=n>{_f(lat.get('p99'))}</td>"
            f"<td class=n>{_f(lat.get('mean'))}</td><td class=n>{_f(lat.get('cv'), 3)}</td>"
            f"<td class=n>{_f(r.get('runs'))}</td><td>{_status(r)}</td></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _cond_row(name, b, a):
    return f"<tr><th>{escape(name)}</th><td>{escape(str(b))}</td><td>{escape(str(a))}</td></tr>"


def _describe_snapshot(s: dict | None) -> dict:
    s = s or {}
    if s.get("error"):
        return {"probe": f"failed: {s['error']}"}
    out = {}
    cf = s.get("cpufreq") or {}
    if cf.get("governors"):
        out["CPU governor"] = "/".join(cf["governors"])
    if cf.get("cur_mhz_max"):
        out["CPU clock (MHz)"] = (f"{_num(cf.get('cur_mhz_min'), '.0f')}–{_num(cf['cur_mhz_max'], '.0f')}"
                                  if cf.get("cur_mhz_min") != cf["cur_mhz_max"] else _num(cf["cur_mhz_max"], ".0f"))
    th = s.get("thermal") or {}
    if th.get("max_c") is not None:
        out["hottest zone"] = f"{_num(th['max_c'], '.1f')} °C ({th.get('hottest')})"
    la = s.get("loadavg")
    if la:
        out["load average 1/5/15 min"] = " / ".join(_num(la.get(k), ".2f") for k in ("1m", "5m", "15m"))
    pi = s.get("pi") or {}
    if pi:
        if pi.get("temp_c") is not None:
            out["vcgencmd temp"] = f"{_num(pi['temp_c'], '.1f')} °C"
        thr = pi.get("throttled")
        if thr:
            flags = [str(x) for x in (thr.get("now") or []) + (thr.get("since_boot") or [])]
            out["throttled"] = str(thr.get("raw")) + (f" ({', '.join(flags)})" if flags else "")
    j = s.get("jetson") or {}
    if j:
        if j.get("nvpmodel"):
            out["nvpmodel"] = j["nvpmodel"]["mode"]
        if j.get("clocks"):
            out["jetson_clocks"] = "max clocks" if j["clocks"].get("max_clocks") else "dynamic"
        ts = j.get("tegrastats") or {}
        if ts.get("temps"):
            out["tegrastats temps"] = ", ".join(f"{k} {_num(v, '.1f')}" for k, v in ts["temps"].items())
        if ts.get("ram_used_mb"):
            out["RAM used"] = f"{ts['ram_used_mb']}/{ts['ram_total_mb']} MB"
    return out


def _conditions_html(r: dict) -> str:
    c = r.get("conditions")
    if not c:
        return "<p class=muted>No device conditions recorded.</p>"
    b, a = _describe_snapshot(c.get("before")), _describe_snapshot(c.get("after"))
    rows = [_cond_row(k, b.get(k, "–"), a.get(k, "–")) for k in list(dict.fromkeys(list(b) + list(a)))]
    cd = c.get("cpu_during") or {}
    if cd:
        other = sanitize.number(cd.get("other_busy")) or 0
        rows.append(_cond_row("CPU during the run", "", f"others {other * 100:.0f}% of "
                              f"{cd.get('ncpu')} CPUs, benchmark {_num(cd.get('self_cores', 0), '.2f')} cores"))
    facts = r.get("device_facts") or {}
    fl = ", ".join(str(facts[k]) for k in ("model", "kernel", "arch") if facts.get(k))
    if facts.get("ncpu"):
        fl += f", {facts['ncpu']} CPUs"
    parts = [f"<p>{_status(r)} <span class=muted>{escape(fl)}</span></p>"]
    if c.get("reasons"):
        parts.append("<ul>" + "".join(f"<li><b>{escape(x)}</b></li>" for x in c["reasons"]) + "</ul>")
    if c.get("warnings"):
        parts.append("<ul>" + "".join(f"<li class=muted>{escape(x)}</li>" for x in c["warnings"]) + "</ul>")
    parts.append(f"<table><tr><th></th><th>before</th><th>after</th></tr>{''.join(rows)}</table>")
    return "".join(parts)


def _manifest_html(r: dict) -> str:
    m = r.get("manifest")
    if not m:
        return "<p class=muted>No manifest (the artifact was benchmarked on its own).</p>"
    src = m.get("source") or {}
    tgt = m.get("target") or {}
    arts = m.get("artifacts") or []
    a0 = arts[0] if arts else {}
    cal = m.get("calibration") or {}
    rows = [("source", f"{src.get('file')} ({src.get('format')}, sha256 {str(src.get('sha256'))[:12]})"),
            ("target", f"{tgt.get('name')} ({tgt.get('family')})"),
            ("artifact", f"{a0.get('file')} · {a0.get('precision')} · "
                         f"{(sanitize.number(a0.get('bytes')) or 0) / 1024:.1f} KiB"),
            ("calibration", f"{cal.get('source')} ({cal.get('samples')} samples)" if cal else "–"),
            ("toolchain", ", ".join(f"{k} {v}" for k, v in (m.get("toolchain") or {}).items()) or "–")]
    html_rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in rows)
    acc = m.get("accuracy")
    acc_html = "<p class=muted>No accuracy check recorded.</p>"
    if isinstance(acc, dict) and acc:
        outs = acc.get("outputs") if isinstance(acc.get("outputs"), dict) else {
            k: v for k, v in acc.items() if isinstance(v, dict)}
        if outs:
            keys = ["cosine", "sqnr_db", "max_abs_err", "top1_agreement"]
            acc_html = ("<table><tr><th>output</th>" + "".join(f"<th class=n>{k}</th>" for k in keys) + "</tr>" +
                        "".join(f"<tr><td>{escape(str(o))}</td>" + "".join(
                            f"<td class=n>{_f(v.get(k), 4) if isinstance(v.get(k), float) else escape(str(v.get(k, '–')))}"
                            f"</td>" for k in keys) + "</tr>" for o, v in outs.items()) + "</table>")
        extra = {k: v for k, v in acc.items() if not isinstance(v, dict)}
        if extra:
            acc_html += "<p class=muted>" + escape(", ".join(f"{k}: {v}" for k, v in extra.items())) + "</p>"
    return f"<table>{html_rows}</table><h3>Accuracy (FP32 reference vs artifact)</h3>{acc_html}"



def _device_check_html(r: dict) -> str:
    """The on-device check of a result (bench/deploy --val): per output, the device's numbers against the reference
    and the host's run of the same artifact beside them."""
    acc = r.get("accuracy")
    if not isinstance(acc, dict):
        return ""
    outs = acc.get("outputs") if isinstance(acc.get("outputs"), dict) else {}
    host = acc.get("host") if isinstance(acc.get("host"), dict) else {}
    host_outs = host.get("outputs") if isinstance(host.get("outputs"), dict) else {}
    keys = ["cosine", "sqnr_db", "max_abs_err", "top1_agreement", "top1_accuracy"]
    rows = []
    for name, m in outs.items():
        for who, vals in (("device", m), ("host", host_outs.get(name))):
            if not isinstance(vals, dict):
                continue
            rows.append(f"<tr><td>{escape(str(name))}</td><td>{who}</td>" + "".join(
                f"<td class=n>{_f(vals.get(k), 4) if isinstance(vals.get(k), (int, float)) else '–'}</td>"
                for k in keys) + "</tr>")
    rt = acc.get("runtime") if isinstance(acc.get("runtime"), dict) else {}
    same = {True: _badge("identical to the host's outputs", "ok"),
            False: _badge("differs from the host's outputs", "warn")}.get(acc.get("same_as_host"), "")
    return (f"<h3>On-device accuracy</h3><p>{same} {_f(acc.get('samples'), 0)} samples on "
            f"{escape(str(rt.get('name')))} {escape(str(rt.get('version') or ''))} against "
            f"{escape(str(acc.get('reference')))}</p>"
            "<table><tr><th>output</th><th>run</th>" + "".join(f"<th class=n>{k}</th>" for k in keys) + "</tr>"
            + "".join(rows) + "</table>"
            + "".join(f"<p class=muted>{escape(str(n))}</p>" for n in (acc.get("notes") or [])
                      if isinstance(acc.get("notes"), list)))

def _comparison_html(results: list[dict]) -> str:
    try:
        rep = compare([results[0]], [results[1]])
    except Exception as e:  # a report never fails on the comparison
        return f"<p class=muted>No comparison: {escape(str(e))}</p>"
    p = rep["pairs"][0]
    ch = p["change_pct"]
    t = p.get("test") or {}
    kind = {"regression": "bad", "slower": "warn", "faster": "ok", "same": "ok"}[p["verdict"]]
    ci = p.get("ci95_p50_change_pct")
    return (f"<p>{_badge(p['verdict'], kind)} B = {escape(p['b']['ref'])} against A = {escape(p['a']['ref'])}: "
            f"<b>{escape(p['summary'])}</b></p><table><tr><th></th><th class=n>p50</th><th class=n>p90</th>"
            f"<th class=n>p99</th><th class=n>mean</th></tr>"
            + "".join(f"<tr><th>{lab}</th>" + "".join(f"<td class=n>{_f(d.get(k))}</td>"
                                                      for k in ("p50", "p90", "p99", "mean")) + "</tr>"
                      for lab, d in (("A ms", p["latency_a"]), ("B ms", p["latency_b"])))
            + "<tr><th>change</th>" + "".join(f"<td class=n>{_f(ch.get(k), 1, ' %') if ch.get(k) is not None else '–'}"
                                              f"</td>" for k in ("p50", "p90", "p99", "mean")) + "</tr></table>"
            + (f"<p class=muted>Mann–Whitney U: p(B slower) = {t['p_slower']:.3g}, p(B faster) = {t['p_faster']:.3g}; "
               f"p50 change 95% CI [{ci[0]:.1f} %, {ci[1]:.1f} %]</p>" if t and ci else ""))


def html(results: list[dict], title: str = "edgeopt benchmark report") -> str:
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    results = [sanitize.result(r) for r in results]
    labels = [label_of(r, i) for i, r in enumerate(results)]
    with_samples = [(lab, r) for lab, r in zip(labels, results) if r.get("samples_ms")]
    plots = []
    if with_samples:
        hist = svgplot.histogram([(lab, r["samples_ms"]) for lab, r in with_samples])
        plots.append(f'<img class=plot alt="Latency histogram" src="{svgplot.data_uri(hist)}">')
        ts = svgplot.timeseries([(lab, r.get("timestamps_s") or list(np.cumsum(r["samples_ms"]) / 1e3),
                                  r["samples_ms"]) for lab, r in with_samples])
        plots.append(f'<img class=plot alt="Latency over time" src="{svgplot.data_uri(ts)}">')
    else:
        plots.append("<p class=muted>No raw samples in these results (bench with --samples): no plots.</p>")
    traces = [(lab, [p[0] for p in r["temperature_trace"] if p[1] is not None],
               [p[1] for p in r["temperature_trace"] if p[1] is not None]) for lab, r in zip(labels, results)
              if r.get("temperature_trace") and any(p[1] is not None for p in r["temperature_trace"])]
    if traces:
        tt = svgplot.timeseries(traces, title="Temperature during the sustained run", ylabel="°C", points=False)
        plots.append(f'<img class=plot alt="Temperature over time" src="{svgplot.data_uri(tt)}">')
    per_device = []
    for i, r in enumerate(results):
        proto = r.get("protocol") or {}
        cfg = r.get("config") or {}
        drift = r.get("drift")
        per_device.append(
            f"<div class=card><h2 style='margin-top:0'>{escape(labels[i])}</h2>"
            f"<p class=muted>{escape(str(r.get('created') or ''))} {escape(str(r.get('host') or ''))} · "
            f"warm-up {_f(cfg.get('warmup'))} runs / {_f(proto.get('warmup_seconds', 0))} s, at least "
            f"{_f(cfg.get('runs'))} runs and {_f(cfg.get('min_seconds'))} s, threads {_f(cfg.get('threads'))}"
            + (f", sustained {proto['sustained']:g} s" if proto.get("sustained") else "")
            + (f" · drift first→last tenth {drift['change'] * 100:+.1f} %"
               if isinstance(drift, dict) and drift.get("change") is not None else "") + "</p>"
            f"<h3>Device conditions</h3>{_conditions_html(r)}{_device_check_html(r)}"
            f"<h3>Model</h3>{_manifest_html(r)}</div>")
    comp = ""
    if len(results) == 2:
        comp = f"<h2>Comparison</h2><div class=card>{_comparison_html(results)}</div>"
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            f"<meta name=viewport content='width=device-width,initial-scale=1'><title>{escape(title)}</title>"
            f"<style>{CSS}</style></head><body><main><h1>{escape(title)}</h1>"
            f"<div class=sub>{len(results)} result{'s' if len(results) != 1 else ''} · generated {now} by "
            f"edgeopt {escape(__version__)}</div>"
            f"<div class=card>{_summary_table(results)}</div>{comp}"
            f"<h2>Latency</h2><div class=card>{''.join(plots)}</div>"
            f"<h2>Per device</h2>{''.join(per_device)}</main></body></html>")


def markdown(results: list[dict], title: str = "edgeopt benchmark") -> str:
    """A short summary for a pull request comment (GitHub-flavoured Markdown)."""
    results = [sanitize.result(r) for r in results]
    lines = [f"### {_md(title)}", "",
             "| | device | artifact | runtime | p50 ms | p50 95% CI | p90 ms | p99 ms | CV | runs | status |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for i, r in enumerate(results):
        lat = r.get("latency_ms") or {}
        ci = (r.get("ci95") or {}).get("p50")
        st = "clean" if r.get("clean") else ("**not clean**" if r.get("clean") is False else "?")
        if r.get("unstable"):
            st += ", unstable"
        ref = f"#{r['id']}" if r.get("id") else str(r.get("source") or i + 1)
        lines.append(f"| {_md(ref)} | {_md(r.get('device'))} | {_md_code((r.get('artifact') or {}).get('file'))} | "
                     f"{_md(_runtime(r))} | {_md_number(lat.get('p50'))} | "
                     f"{'[' + _md_number(ci[0]) + ', ' + _md_number(ci[-1]) + ']' if ci else '–'} | "
                     f"{_md_number(lat.get('p90'))} | {_md_number(lat.get('p99'))} | {_md_number(lat.get('cv'))} | "
                     f"{_md_number(r.get('runs'))} | {st} |")
    if len(results) == 2:
        try:
            p = compare([results[0]], [results[1]])["pairs"][0]
            icon = {"regression": "🔴", "slower": "🟡", "faster": "🟢", "same": "⚪"}[p["verdict"]]
            lines += ["", f"{icon} **{_md(p['verdict'])}**: B ({_md(p['b']['ref'])}) vs A ({_md(p['a']['ref'])}): "
                          f"{_md(p['summary'])}"]
        except Exception:
            pass
    reasons = [(f"#{r['id']} {r.get('device')}" if r.get("id") else r.get("device"), x) for r in results
               for x in ((r.get("conditions") or {}).get("reasons") or [])]
    if reasons:
        lines += ["", "<details><summary>Device conditions</summary>", ""]
        lines += [f"- {_md(d)}: {_md(x)}" for d, x in reasons]
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"
