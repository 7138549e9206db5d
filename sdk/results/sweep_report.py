"""The report of one sweep: a self-contained HTML page (every cell in a table, latency against accuracy as an
SVG scatter plot with the Pareto front) and a Markdown summary, from what :func:`edgeopt.sweep.stored.load`
read back from the history.

Same page as :mod:`edgeopt.results.report` (its CSS, no scripts, no network, the plot an embedded SVG image);
every value is escaped where it is written, in the page and in the plot alike.
"""
from __future__ import annotations

import datetime as _dt
from html import escape

from edgeopt import __version__
from edgeopt.results import svgplot
from edgeopt.results.report import CSS, _badge, _md, _md_code

__all__ = ["html", "markdown", "default_title"]

# the accuracy columns, in order: (key in a cell's accuracy, header, decimals)
_ACCURACY_COLUMNS = (("top1_agreement", "top-1 agreement", 4), ("cosine", "cosine", 4), ("sqnr_db", "SQNR dB", 1),
                     ("top1_accuracy", "top-1 accuracy", 4))


def _num(v, digits: int = 3) -> str:
    """A checked number (or None) as text: fixed decimals, or 3 significant digits past 1e9 (an absurd value
    stays short)."""
    if v is None:
        return "–"
    if isinstance(v, int) and abs(v) < 1e9:
        return str(v)
    return f"{v:.3g}" if abs(v) >= 1e9 else f"{v:.{digits}f}"


def default_title(report: dict) -> str:
    return f"edgeopt sweep {report['sweep']}"


def _kib(n) -> str | None:
    return None if n is None else f"{_num(n / 1024, 1)} KiB"


def _recipe_note(c: dict) -> str:
    """How the artifact was quantized, in a few words (the recipe's name alone does not say)."""
    q = c["quantization"]
    words = [q.get("calibration_method")]
    if q.get("per_channel") is False:
        words.append("per-tensor")
    if q.get("bias_correction") is True:
        words.append("bias corrected")
    return ", ".join(w for w in words if w)


def _columns(report: dict) -> list[tuple[str, str, int]]:
    """The accuracy columns some cell has values for (the ranked metric's always)."""
    cells = report["cells"]
    return [col for col in _ACCURACY_COLUMNS
            if col[0] == report["metric_key"] or any(col[0] in c["accuracy"] for c in cells)]


def _excluded(report: dict) -> dict:
    """Why cells are not ranked: {reason: count}."""
    key, out = report["metric_key"], {}
    for c in report["cells"]:
        if c["status"] != "ok":
            why = "failed"
        elif c["latency_ms"]["p90"] is None:
            why = "no latency (not benchmarked)"
        elif key not in c["accuracy"]:
            why = f"no {report['metric_name']}"
        else:
            continue
        out[why] = out.get(why, 0) + 1
    return out


def _plot(report: dict) -> str:
    cells, key = report["cells"], report["metric_key"]
    ranked = [i for i, c in enumerate(cells) if c["status"] == "ok" and c["latency_ms"]["p90"] is not None
              and key in c["accuracy"]]
    if not ranked:
        return "<p class=muted>No cell has both a p90 latency and a " + escape(report["metric_name"]) + ": no plot.</p>"
    where = {i: n for n, i in enumerate(ranked)}
    svg = svgplot.scatter([(cells[i]["id"], cells[i]["latency_ms"]["p90"], cells[i]["accuracy"][key],
                            cells[i]["model"], cells[i]["target"]) for i in ranked],
                          front=[where[i] for i in report["front"] if i in where],
                          title=f"p90 latency against {report['metric_name']} (Pareto front ringed)",
                          ylabel=report["metric_name"])
    return f'<img class=plot alt="p90 latency against {escape(report["metric_name"])}" src="{svgplot.data_uri(svg)}">'


def _row(c: dict, columns, metric_key: str) -> str:
    lat, art = c["latency_ms"], c["artifact"]
    status = _badge("ok", "ok") if c["status"] == "ok" else (
        _badge("failed", "bad") + (f" <span class=muted>{escape(c['error'])}</span>" if c["error"] else ""))
    note = _recipe_note(c)
    acc = "".join(f"<td class=n>{'<b>' if k == metric_key else ''}{_num(c['accuracy'].get(k), digits)}"
                  f"{'</b>' if k == metric_key else ''}</td>" for k, _, digits in columns)
    artifact = " · ".join(escape(x) for x in (art["precision"], _kib(art["bytes"])) if x) or "–"
    return (f"<tr><td>{_badge('front', 'ok') if c.get('pareto') else ''}</td>"
            f"<td>{escape(c['model'])}</td><td>{escape(c['target'])}</td>"
            f"<td>{escape(c['recipe'])}{'<br><span class=muted>' + escape(note) + '</span>' if note else ''}</td>"
            f"<td>{escape(c['device'] or '–')}</td><td>{status}</td>"
            f"<td class=n>{_num(lat['p50'])}</td><td class=n><b>{_num(lat['p90'])}</b></td>{acc}"
            f"<td class=n>{escape(c['accuracy'].get('output') or '–')}</td>"
            f"<td class=n>{artifact}</td><td class=n>{_num(c['quantization'].get('float_layers'))}</td>"
            f"<td class=n>{'#' + str(c['history_id']) if c['history_id'] is not None else '–'}</td></tr>")


def _table(report: dict, cells: list[dict]) -> str:
    columns = _columns(report)
    head = ("<tr><th></th><th>model</th><th>target</th><th>recipe</th><th>device</th><th>status</th>"
            "<th class=n>p50 ms</th><th class=n>p90 ms</th>"
            + "".join(f"<th class=n>{escape(name)}</th>" for _, name, _ in columns)
            + "<th class=n>output</th><th class=n>artifact</th><th class=n>float layers</th>"
              "<th class=n>result</th></tr>")
    return f"<table>{head}{''.join(_row(c, columns, report['metric_key']) for c in cells)}</table>"


def html(report: dict, title: str | None = None) -> str:
    """The page: a summary line, the plot, the Pareto front (fastest first) and every cell in matrix order."""
    title = title or default_title(report)
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cells = report["cells"]
    failed = sum(c["status"] != "ok" for c in cells)
    excluded = _excluded(report)
    note = ("<p class=muted>Not ranked: " + escape(", ".join(f"{n} {why}" for why, n in excluded.items()))
            + ". They are in the table below.</p>") if excluded else ""
    front = [cells[i] for i in report["front"]]
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            f"<meta name=viewport content='width=device-width,initial-scale=1'><title>{escape(title)}</title>"
            f"<style>{CSS}</style></head><body><main><h1>{escape(title)}</h1>"
            f"<div class=sub>sweep <code>{escape(report['sweep'])}</code> · {len(cells)} cell"
            f"{'s' if len(cells) != 1 else ''} ({failed} failed) · Pareto front of p90 latency (lower is better) "
            f"and {escape(report['metric_name'])} (higher is better): {len(front)} cell"
            f"{'s' if len(front) != 1 else ''} · generated {now} by edgeopt {escape(__version__)}</div>"
            f"<h2>Latency against accuracy</h2><div class=card>{_plot(report)}{note}</div>"
            f"<h2>Pareto front</h2><div class=card>"
            + (_table(report, front) if front else "<p class=muted>No cell is ranked.</p>")
            + f"</div><h2>Every cell</h2><div class=card>{_table(report, cells)}</div></main></body></html>")


def markdown(report: dict, title: str | None = None) -> str:
    """A summary for a pull request: the Pareto front, then every cell (GitHub-flavoured Markdown)."""
    title = title or default_title(report)
    columns = _columns(report)
    head = ("| | model | target | recipe | device | status | p50 ms | p90 ms | "
            + " | ".join(_md(name) for _, name, _ in columns) + " | artifact | float layers |")
    rule = "|---|---|---|---|---|---|---:|---:|" + "---:|" * len(columns) + "---|---:|"

    def row(c):
        art = c["artifact"]
        status = "ok" if c["status"] == "ok" else "**failed**" + (f": {_md(c['error'])}" if c["error"] else "")
        return (f"| {'front' if c.get('pareto') else ''} | {_md(c['model'])} | {_md(c['target'])} | "
                f"{_md(c['recipe'])} | {_md(c['device'] or '–')} | {status} | {_num(c['latency_ms']['p50'])} | "
                f"{_num(c['latency_ms']['p90'])} | "
                + " | ".join(_num(c["accuracy"].get(k), digits) for k, _, digits in columns)
                + f" | {_md_code(' '.join(x for x in (art['precision'], _kib(art['bytes'])) if x) or '-')} | "
                  f"{_num(c['quantization'].get('float_layers'))} |")

    front = [report["cells"][i] for i in report["front"]]
    lines = [f"### {_md(title)}", "",
             f"Sweep {_md_code(report['sweep'])}: {len(report['cells'])} cells; Pareto front of p90 latency and "
             f"{_md(report['metric_name'])}: {len(front)} cells.", "", head, rule]
    lines += [row(c) for c in front]
    others = [c for c in report["cells"] if not c.get("pareto")]
    if others:
        lines += ["", "<details><summary>Every other cell</summary>", "", head, rule]
        lines += [row(c) for c in others]
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"
