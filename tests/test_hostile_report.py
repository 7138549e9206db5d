"""Result files and device output are data: a crafted one must not put markup into a report, a table or a file
someone else can read.

Found on the old code: the HTML and Markdown reports pasted result fields (id, runs, config, device and runtime
strings, ...) as they were, so a result JSON or a device's output could carry a <script> into the page (stored XSS).
"""
from __future__ import annotations

import json
from html.parser import HTMLParser
import os
import re
import stat
import subprocess
import sys

import pytest

from edgeopt.errors import UsageError
from edgeopt.json_files import read_json
from edgeopt.results import history, report, sanitize

EDGEOPT = os.path.join(os.path.dirname(sys.executable), "edgeopt")
PAYLOAD = '<script>alert(1)</script>"><img src=x onerror=alert(2)>[x](javascript:alert(3))|`'


class _Tags(HTMLParser):
    """Every tag and attribute the browser would see."""

    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def assert_page_safe(page: str):
    parser = _Tags()
    parser.feed(page)
    assert [t for t, _ in parser.tags if t in ("script", "iframe", "object", "embed", "a", "link", "base")] == []
    assert [(t, a) for t, attrs in parser.tags for a in attrs if a.startswith("on")] == []
    assert all(attrs.get("src", "").startswith("data:image/svg+xml;base64,") for t, attrs in parser.tags if t == "img")
    assert len([t for t, _ in parser.tags if t == "img"]) <= 3  # the plots, nothing from the payload


def outside_code_spans(md: str) -> str:
    """The text outside code spans, read as GitHub does: a backslash escapes the next character (an escaped
    backtick opens nothing), and inside a span nothing is escaped (the next backtick closes it)."""
    out, i = [], 0
    while i < len(md):
        if md[i] == "\\":
            out.append(md[i:i + 2])
            i += 2
        elif md[i] == "`":
            end = md.find("`", i + 1)
            if end < 0:
                out.append(md[i:])
                break
            i = end + 1
        else:
            out.append(md[i])
            i += 1
    return "".join(out)


def assert_markdown_safe(md: str):
    """Outside code spans: no raw HTML, no link syntax; a code span cannot be closed early (no backtick in it)."""
    outside = outside_code_spans(md).replace("<details>", "").replace("</details>", "")
    outside = outside.replace("<summary>", "").replace("</summary>", "")
    assert "<" not in outside, outside
    assert not re.search(r"(?<!\\)\]\(", outside), outside


def _poison(value, key=None):
    """Every leaf of a real-shaped result replaced by the payload (numbers too: a file can say anything)."""
    if isinstance(value, dict):
        return {k: _poison(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_poison(v) for v in value[:3]] + ([PAYLOAD] if key == "samples_ms" else [])
    return PAYLOAD


def _result():
    """A stored-result shape with every field the report shows."""
    snap = {"facts": {"model": "Raspberry Pi 5", "kernel": "6.6", "arch": "aarch64", "ncpu": 4},
            "cpufreq": {"governors": ["ondemand"], "cur_mhz_min": 1500.0, "cur_mhz_max": 2400.0},
            "thermal": {"max_c": 51.2, "hottest": "cpu"}, "loadavg": {"1m": 0.1, "5m": 0.2, "15m": 0.3},
            "pi": {"temp_c": 50.0, "throttled": {"raw": "0x0", "now": ["x"], "since_boot": []}},
            "jetson": {"nvpmodel": {"mode": "MAXN"}, "clocks": {"max_clocks": True},
                       "tegrastats": {"temps": {"cpu": 40.0}, "ram_used_mb": 100, "ram_total_mb": 800}}}
    return {"id": 7, "created": "2026-11-30T00:00:00", "device": "pi-01", "host": "pi@10.0.0.2", "target": "rpi5",
            "artifact": {"file": "model.int8.tflite", "sha256": "ab" * 32},
            "runtime": {"name": "ai_edge_litert", "version": "2.1.0", "delegate": "xnnpack", "provider": None},
            "config": {"warmup": 10, "runs": 100, "min_seconds": 1.0, "threads": 4},
            "protocol": {"warmup_seconds": 1.0, "sustained": 5.0},
            "latency_ms": {"p50": 1.0, "p90": 1.2, "p95": 1.3, "p99": 1.5, "mean": 1.1, "std": 0.1, "cv": 0.09},
            "ci95": {"p50": [0.9, 1.1], "mean": [1.0, 1.2]}, "drift": {"change": 0.01}, "runs": 100,
            "samples_ms": [1.0, 1.1, 0.9], "timestamps_s": [0.001, 0.002, 0.003], "clean": False, "unstable": True,
            "temperature_trace": [[0.0, 50.0], [1.0, 51.0]],
            "conditions": {"before": snap, "after": snap, "cpu_during": {"other_busy": 0.1, "ncpu": 4,
                                                                         "self_cores": 1.0},
                           "reasons": ["hot"], "warnings": ["w"], "clean": False},
            "device_facts": snap["facts"],
            "manifest": {"source": {"file": "m.onnx", "format": "onnx", "sha256": "cd" * 32},
                         "target": {"name": "rpi5", "family": "rpi"},
                         "artifacts": [{"file": "model.int8.tflite", "precision": "int8", "bytes": 1000}],
                         "calibration": {"source": "c.npy", "samples": 200}, "toolchain": {"tf": "2.19"},
                         "accuracy": {"outputs": {"logits": {"cosine": 0.99, "sqnr_db": 30.0, "max_abs_err": 0.1,
                                                             "top1_agreement": 0.98}}, "note": "x"}}}


@pytest.mark.parametrize("poison_numbers", [False, True])
def test_report_of_a_crafted_result_file_has_no_markup(tmp_path, poison_numbers):
    r = _poison(_result())
    if not poison_numbers:  # strings crafted, numbers real: the page must still show the numbers
        real = _result()
        r["latency_ms"], r["runs"], r["samples_ms"], r["id"] = (real["latency_ms"], real["runs"],
                                                               real["samples_ms"], real["id"])
    base = _result()
    base["device"] = PAYLOAD
    for name, obj in (("a.json", r), ("b.json", base)):
        (tmp_path / name).write_text(json.dumps(obj))
    p = subprocess.run([EDGEOPT, "report", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--title", PAYLOAD,
                        "--out", str(tmp_path / "r.html"), "--markdown", str(tmp_path / "s.md")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    for written in ("r.html", "s.md"):  # reports name the lab's hosts: the owner's only, whatever the umask
        assert stat.S_IMODE(os.stat(tmp_path / written).st_mode) == 0o600
    page = (tmp_path / "r.html").read_text()
    md = (tmp_path / "s.md").read_text()
    assert_page_safe(page)
    assert_markdown_safe(md)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # shown as text, not dropped
    if not poison_numbers:
        assert "1.000" in page and "| 1.000 |" in md
    # a Markdown table row stays one row of 11 cells whatever the device name says
    rows = [line for line in md.splitlines() if line.startswith("| #")]
    assert rows and all(len(re.split(r"(?<!\\)\|", row)) == 13 for row in rows), rows


def test_numbers_from_outside_are_numbers():
    r = sanitize.result({"runs": "<b>", "id": "1; DROP", "latency_ms": {"p50": "9", "p90": float("nan"),
                                                                      "p99": 2.5}, "samples_ms": [1, "x", 2.0],
                         "device": "pi\x1b[2J\x1b]0;pwned\x07-01\r", "notes": ["a\x9bb"]})
    assert r["runs"] is None and r["id"] is None
    assert r["latency_ms"] == {"p50": None, "p90": None, "p99": 2.5}
    assert r["samples_ms"] == [1.0, 2.0]
    assert r["device"] == "pi[2J]0;pwned-01" and r["notes"] == ["ab"]


def test_history_database_is_private(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "h" / "results.sqlite"
        with history.History(str(path)) as db:
            db.add(_result())
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700


def test_report_functions_escape_without_the_cli():
    r = _poison(_result())
    page = report.html([r, _result()], title=PAYLOAD)
    assert_page_safe(page)
    assert_markdown_safe(report.markdown([r], title=PAYLOAD))


DEVICE_TEXT = "pi[/x] [bold]\x1b[2J\x1b]0;owned\x07\r-01"


def test_device_text_prints_as_text_in_tables(tmp_path):
    """An unmatched `[/x]` in a device string crashed the table after the result was stored (rich markup), and
    escape sequences reached the terminal."""
    from edgeopt_testkit import edgeopt_cli
    db = tmp_path / "h.sqlite"
    r = _result()
    r["device"], r["runtime"]["version"], r["conditions"]["reasons"] = DEVICE_TEXT, DEVICE_TEXT, [DEVICE_TEXT]
    with history.History(str(db)) as h:
        rid = h.add(r)
    for args in (["results"], ["results", str(rid)]):
        p = edgeopt_cli(*args, "--history", db)
        assert p.returncode == 0, p.stderr
        assert "pi[/x]" in p.stdout and "[bold]" in p.stdout, p.stdout
        assert "\x1b" not in p.stdout and "\x07" not in p.stdout and "\r" not in p.stdout


def test_bench_table_and_errors_print_device_text_as_text(capsys):
    from edgeopt.cli import error_exit
    from edgeopt.cli.bench_output import print_bench_table
    from edgeopt.errors import DeviceError
    r = sanitize.result(dict(_result(), device=DEVICE_TEXT, notes=[DEVICE_TEXT]))
    print_bench_table([r, {"device": DEVICE_TEXT, "error": "x"}])
    out = capsys.readouterr().out
    assert out.count("pi[/x] [bold]") == 3 and "\x1b" not in out
    with pytest.raises(SystemExit) as e:
        error_exit(DeviceError(f"remote run failed: {DEVICE_TEXT}", device="d"))
    err = capsys.readouterr().err
    assert e.value.code == 3 and err.startswith("error: ") and "pi[/x]" in err and "\x1b" not in err


def test_result_and_manifest_reads_are_bounded(tmp_path):
    """A result file or manifest is read whole only when it is of a sane size and a regular file."""
    from edgeopt_testkit import assert_one_error, edgeopt_cli
    huge = tmp_path / "huge.json"
    with open(huge, "wb") as f:  # sparse: 2 GiB that cost nothing on disk
        f.write(b'{"latency_ms": {}, "x": "')
        f.truncate(2 << 30)
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    for bad, needle in ((huge, "larger than"), (fifo, "neither a result id nor a JSON file")):
        p = edgeopt_cli("report", bad, "--out", tmp_path / "r.html", timeout=60)
        assert_one_error(p, needle)
    with pytest.raises(UsageError, match="not a regular file"):  # and opening it does not wait for a writer
        read_json(str(fifo))
    out = tmp_path / "o"
    out.mkdir()
    os.link(huge, out / "manifest.json")
    assert_one_error(edgeopt_cli("bench", out, "--local", timeout=60), "larger than")


def _svgs(page: str) -> list[str]:
    import base64
    return [base64.b64decode(m).decode() for m in re.findall(r'src="data:image/svg\+xml;base64,([^"]+)"', page)]


def test_sweep_report_of_a_crafted_history_has_no_markup(tmp_path):
    """A history database is a file anyone can hand over: names with markup, numbers that are not numbers (or
    absurd ones), rows that are not JSON, in the records and in the older benchmark rows alike."""
    import sqlite3
    import xml.etree.ElementTree as ET

    from edgeopt_testkit import edgeopt_cli

    db_path = tmp_path / "h.sqlite"
    sid = "s-" + PAYLOAD

    def rec(i, p90, top1, **extra):
        r = {"id": f"{PAYLOAD}.{i}@{PAYLOAD}", "cell": PAYLOAD, "model": PAYLOAD + str(i), "target": PAYLOAD,
             "recipe": PAYLOAD, "device": PAYLOAD, "status": "ok", "error": PAYLOAD,
             "artifact": {"file": PAYLOAD, "bytes": PAYLOAD, "precision": PAYLOAD},
             "accuracy": {"output": PAYLOAD, "top1_agreement": top1, "cosine": PAYLOAD, "sqnr_db": [1, 2]},
             "quantization": {"calibration_method": PAYLOAD, "float_layers": PAYLOAD, "per_channel": PAYLOAD},
             "latency_ms": {"p50": PAYLOAD, "p90": p90}, "history_id": PAYLOAD}
        r.update(extra)
        return r
    records = [rec(0, 1.0, 0.9), rec(1, 2.0, 0.95), rec(2, float("nan"), 0.99), rec(3, float("inf"), 0.99),
               rec(4, 1e308, 1.0), rec(5, -1e308, float("-inf")), rec(6, 0.5, 0.5), rec(7, "1.0", "0.9"),
               rec(8, 3.0, 0.8, status=PAYLOAD), rec(9, 3.0, 0.8, latency_ms=PAYLOAD, accuracy=[PAYLOAD]),
               rec(10, 0.2, -1e300)]
    with history.History(str(db_path)) as db:
        for i, r in enumerate(records):
            db.put_sweep_record(sid, i, r)
        # a benchmark row of the same sweep without a record (an older history), crafted as well
        db.add({"device": PAYLOAD, "target": PAYLOAD, "latency_ms": {"p90": 0.1}}, manifest=_poison(_result()["manifest"]),
               sweep=(sid, f"{PAYLOAD}@{PAYLOAD}"))
    con = sqlite3.connect(db_path)
    con.execute("INSERT INTO sweep_records VALUES (?, 'x', 99, 'now', 'ok', NULL, ?)", (sid, "{not json"))
    con.execute("INSERT INTO sweep_records VALUES (?, 'y', 98, 'now', 'ok', NULL, ?)", (sid, "[" * 100000))
    con.execute("INSERT INTO results (created, result_json, manifest_json, sweep_id, sweep_cell, p90) VALUES "
                "('now', ?, ?, ?, 'z.rpi5.r@d', 'x')", (PAYLOAD, "{", sid))
    con.commit()
    con.close()
    out, md = tmp_path / "r.html", tmp_path / "s.md"
    p = edgeopt_cli("report", "--sweep", sid, "--history", db_path, "--out", out, "--markdown", md, "--json",
                    "--title", PAYLOAD)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    res = json.loads(p.stdout)
    # the 11 records, and the 2 benchmark rows without one; the rows that are not JSON objects are skipped
    assert len(res["cells"]) == 13
    assert [c["id"] for c in res["cells"][-2:]] == [f"{PAYLOAD}@{PAYLOAD}", "z.rpi5.r@d"]
    # ranked: ok cells with a finite p90 and top-1 only; 1e308 and -1e300 are numbers, on the front, not drawn
    assert res["front"] == [f"{PAYLOAD}.{i}@{PAYLOAD}" for i in (10, 6, 0, 1, 4)]
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    page = out.read_text()
    assert_page_safe(page)
    assert_markdown_safe(md.read_text())
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # shown as text, not dropped
    (svg,) = _svgs(page)
    root = ET.fromstring(svg)  # well-formed: every label escaped
    assert [e.tag for e in root.iter() if e.tag.endswith(("script", "a", "foreignObject", "image"))] == []
    assert not [a for e in root.iter() for a in e.attrib if a.startswith("on")]
    assert "<script>" not in svg and "&lt;script&gt;alert(1)" in svg
    texts = [t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert any(t.startswith("<script>alert(1)") for t in texts)  # a front label, as text
    assert "2 not drawn (a value that is not a finite number within ±1e12)" in texts
