"""edgeopt report --sweep: the Pareto front (a pure function, on hand-made values), the metric it ranks by,
the records a sweep keeps in the history (old histories too), the page, the plot and the command's errors."""
from __future__ import annotations

import base64
import json
import math
import re
import sqlite3
import xml.etree.ElementTree as ET

import pytest

from edgeopt.results import history, svgplot, sweep_report
from edgeopt.results.pareto import pareto_front
from edgeopt.sweep import stored
from edgeopt_testkit import edgeopt_cli
from edgeopt_testkit.cli import assert_one_error

SVG = "{http://www.w3.org/2000/svg}"


# ------------------------------------------------------------------------------------------- the front

def test_front_of_a_plain_trade_off():
    # (p90 ms, accuracy): 0 fast and poor, 2 slow and best, 1 in between; 3 slower and worse than 1
    assert pareto_front([(1.0, 0.90), (2.0, 0.95), (3.0, 0.99), (2.5, 0.94)]) == [0, 1, 2]


def test_front_is_fastest_first_whatever_the_input_order():
    assert pareto_front([(3.0, 0.99), (1.0, 0.90), (2.0, 0.95)]) == [1, 2, 0]


def test_front_ties():
    # same latency: only the more accurate; same accuracy: only the faster
    assert pareto_front([(1.0, 0.90), (1.0, 0.95)]) == [1]
    assert pareto_front([(2.0, 0.95), (1.0, 0.95)]) == [1]
    # one point better on both than all the others: alone on the front
    assert pareto_front([(2.0, 0.9), (1.0, 0.99), (3.0, 0.5), (1.5, 0.98)]) == [1]


def test_front_duplicate_points_are_both_on_it_or_both_off():
    assert pareto_front([(1.0, 0.9), (2.0, 0.99), (1.0, 0.9)]) == [0, 2, 1]
    assert pareto_front([(2.0, 0.8), (1.0, 0.9), (2.0, 0.8)]) == [1]


def test_front_of_one_point_and_of_none():
    assert pareto_front([(5.0, 0.5)]) == [0]
    assert pareto_front([]) == []


def test_points_without_a_latency_or_an_accuracy_are_on_no_front():
    points = [(None, 0.99), (0.5, None), (float("nan"), 1.0), (0.1, float("inf")), (float("-inf"), 0.9),
              ("1", 0.99), (True, 0.99), (2.0, 0.9), (3.0, 0.95)]
    assert pareto_front(points) == [7, 8]
    assert pareto_front(points[:7]) == []


# ------------------------------------------------------------------------------------------ the metric

def _cell(rid="m.rpi5.r@d", p90=1.0, status="ok", **acc):
    return stored.cell({"id": rid, "model": rid.split(".")[0], "target": "rpi5", "recipe": "r", "device": "d",
                        "status": status, "latency_ms": {"p50": p90, "p90": p90}, "accuracy": acc})


def test_metric_is_top1_when_every_ranked_cell_has_it_else_sqnr_else_cosine():
    both = [_cell(top1_agreement=0.9, sqnr_db=20.0, cosine=0.99), _cell(top1_agreement=0.95, sqnr_db=25.0)]
    assert stored.choose_metric(both) == "top1"
    one_without = both + [_cell(sqnr_db=30.0, cosine=0.999)]
    assert stored.choose_metric(one_without) == "sqnr"
    assert stored.choose_metric([_cell(cosine=0.9), _cell(cosine=0.8, sqnr_db=3.0)]) == "cosine"
    # a failed cell, or one without a latency, does not decide (it is not ranked)
    assert stored.choose_metric(both + [_cell(status="failed", sqnr_db=1.0), _cell(p90=None, cosine=0.5)]) == "top1"
    # what the user asks for, whatever the cells have
    assert stored.choose_metric(both, "cosine") == "cosine"


def test_rank_marks_the_front_and_leaves_out_failed_cells():
    cells = [_cell("a.rpi5.r@d", 1.0, top1_agreement=0.9), _cell("b.rpi5.r@d", 2.0, top1_agreement=0.95),
             _cell("c.rpi5.r@d", 0.5, status="failed", top1_agreement=0.99),
             _cell("d.rpi5.r@d", None, top1_agreement=1.0)]
    assert stored.rank(cells, "top1") == [0, 1]
    assert [c["pareto"] for c in cells] == [True, True, False, False]
    assert stored.rank(cells, "cosine") == []  # nobody has a cosine


# --------------------------------------------------------------------------------------- the history

def record(model, target, recipe, device, p90, top1=None, sqnr=None, cosine=None, status="ok", float_layers=0,
           error=None):
    acc = {k: v for k, v in (("top1_agreement", top1), ("sqnr_db", sqnr), ("cosine", cosine)) if v is not None}
    r = {"id": f"{model}.{target}.{recipe}" + (f"@{device}" if device else ""), "cell": f"{model}.{target}.{recipe}",
         "model": model, "target": target, "recipe": recipe, "device": device, "status": status, "final": True,
         "artifact": {"file": "model.int8.tflite", "sha256": "ab" * 32, "bytes": 20480, "precision": "int8"},
         "accuracy": {"output": "logits", **acc},
         "quantization": {"calibration_method": "mse", "per_channel": True, "bias_correction": True,
                          "float_layers": float_layers}}
    if p90 is not None:
        r["latency_ms"] = {"p50": p90 * 0.9, "p90": p90}
    if error:
        r["error"] = error
    return r


SWEEP = [record("cnn", "rpi5", "mse", "pi-01", 2.0, 0.98, 30.1, 0.999),
         record("cnn", "rpi5", "minmax", "pi-01", 1.5, 0.95, 25.0, 0.998),
         record("cnn", "jetson-orin-nano", "mse", "jet-01", 0.8, 0.97, 29.0, 0.999, float_layers=3),
         record("tiny", "rpi5", "mse", "pi-01", 3.0, 0.90, 20.0, 0.99),
         record("tiny", "rpi5", "mse", None, None, 0.91, 21.0, 0.99),
         record("tiny", "jetson-orin-nano", "mse", "jet-01", None, status="failed", error="jet-01: unreachable")]


def make_history(path, records=SWEEP, sid="s-0123456789ab"):
    with history.History(str(path)) as db:
        for i, r in enumerate(records):
            db.put_sweep_record(sid, i, r)
    return sid


def images(page):
    return [base64.b64decode(m).decode() for m in re.findall(r'src="data:image/svg\+xml;base64,([^"]+)"', page)]


def test_sweep_records_are_kept_in_matrix_order_and_replaced(tmp_path):
    db_path = tmp_path / "h.sqlite"
    sid = make_history(db_path)
    with history.History(str(db_path)) as db:
        db.put_sweep_record(sid, 5, dict(SWEEP[5], status="ok", latency_ms={"p50": 1.0, "p90": 1.1}))  # a rerun
        got = [json.loads(t) for t in db.sweep_records(sid)]
        assert [r["id"] for r in got] == [r["id"] for r in SWEEP]
        assert got[5]["status"] == "ok" and got[5]["latency_ms"]["p90"] == 1.1
        assert db.sweep_records("other") == []
        assert db.sweeps() == [{"sweep_id": sid, "results": 0, "records": 6, "last": db.sweeps()[0]["last"]}]


def test_report_of_a_sweep(tmp_path):
    sid = make_history(tmp_path / "h.sqlite")
    out, md = tmp_path / "r" / "sweep.html", tmp_path / "s.md"
    p = edgeopt_cli("report", "--sweep", sid, "--history", tmp_path / "h.sqlite", "--out", out, "--markdown", md,
                    "--json", in_process=True)
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["sweep"] == sid and res["metric"] == "top1" and res["html"] == str(out)
    # the front: the Jetson cell (fastest) and the most accurate cell; the rest are slower and worse
    assert res["front"] == ["cnn.jetson-orin-nano.mse@jet-01", "cnn.rpi5.mse@pi-01"]
    assert [c["pareto"] for c in res["cells"]] == [True, False, True, False, False, False]
    assert [c["status"] for c in res["cells"]] == ["ok"] * 5 + ["failed"]
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page
    assert not re.search(r'(src|href)="(https?:)?//', page)
    for text in ("edgeopt sweep " + sid, "top-1 agreement", "SQNR dB", "cosine", "float layers", "jet-01: unreachable",
                 "20.0 KiB", "mse, bias corrected", "0.9800", "2.000", "Not ranked: 1 no latency (not benchmarked), "
                 "1 failed"):
        assert text in page, text
    assert page.count("badge ok'>front") + page.count('badge ok">front') == 4  # 2 in the front's table, 2 below
    # the plot: one mark per ranked cell (4), the front ringed (2), its staircase, the labels of the front
    (svg,) = images(page)
    root = ET.fromstring(svg)
    marks = [g[1] for g in root.iter(f"{SVG}g")]
    assert len(marks) == 4 and sum(m.get("stroke") == "#111827" for m in marks) == 2
    assert len(root.findall(f"{SVG}polyline")) == 1
    labels = [t.text for t in root.iter(f"{SVG}text")]
    assert "cnn.jetson-orin-nano.mse@jet-01" in labels and "cnn.rpi5.mse@pi-01" in labels
    assert "cnn.rpi5.minmax@pi-01" not in labels  # not on the front: no label (its <title> only)
    assert "p90 latency (ms)" in labels and "top-1 agreement" in labels
    summary = md.read_text()
    assert summary.startswith(f"### edgeopt sweep {sid}\n")
    assert "| front | cnn | jetson-orin-nano | mse | jet-01 | ok | 0.720 | 0.800 | 0.9700 |" in summary


def test_terminal_output_and_the_metric_option(tmp_path):
    sid = make_history(tmp_path / "h.sqlite")
    p = edgeopt_cli("report", "--sweep", sid, "--history", tmp_path / "h.sqlite", "--out", tmp_path / "r.html",
                    "--metric", "sqnr", in_process=True)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == (f"wrote {tmp_path / 'r.html'} (6 cells of sweep {sid}; Pareto front of p90 latency and "
                        "SQNR (dB): 2 cells)")
    assert lines[1:] == ["  cnn.jetson-orin-nano.mse@jet-01  p90 0.800 ms  SQNR (dB) 29",
                         "  cnn.rpi5.mse@pi-01  p90 2.000 ms  SQNR (dB) 30.1"]
    assert "SQNR (dB)" in (tmp_path / "r.html").read_text()


def test_an_older_history_without_records_is_rebuilt_from_its_benchmarks(tmp_path):
    """Sweeps stored before the records were kept: only `results` rows with sweep_id, sweep_cell and the
    manifest. The report rebuilds the cells from them (the newest benchmark of each)."""
    path = tmp_path / "old.sqlite"
    manifest = {"artifacts": [{"file": "model.int8.tflite", "bytes": 4096, "precision": "int8"}],
                "accuracy": {"outputs": {"logits": {"cosine": 0.99, "sqnr_db": 22.0, "top1_agreement": 0.93}}},
                "calibration": {"recipe": {"calibration_method": "minmax", "float_layers": 2}}}
    result = {"device": "pi-01", "target": "rpi5", "artifact": {"file": "model.int8.tflite"}}
    with history.History(str(path)) as db:
        db.add(dict(result, latency_ms={"p50": 9.0, "p90": 9.5}), manifest=manifest, sweep=("old-1", "a.rpi5.x@pi-01"))
        db.add(dict(result, latency_ms={"p50": 4.0, "p90": 4.5}), manifest=manifest, sweep=("old-1", "a.rpi5.x@pi-01"))
        db.add(dict(result, latency_ms={"p50": 1.0, "p90": 1.5}), manifest={}, sweep=("old-1", "b.rpi5.x@pi-01"))
        db.add(dict(result, latency_ms={"p50": 1.0, "p90": 1.5}), manifest=manifest, sweep=("other", "c.rpi5.x@pi-01"))
    con = sqlite3.connect(path)
    con.execute("DROP TABLE sweep_records")  # as the database was before
    con.commit()
    con.close()
    rep = stored.load("old-1", str(path))
    a, b = rep["cells"]
    assert (a["id"], a["model"], a["target"], a["recipe"], a["device"]) == ("a.rpi5.x@pi-01", "a", "rpi5", "x", "pi-01")
    assert a["latency_ms"] == {"p50": 4.0, "p90": 4.5} and a["history_id"] == 2
    assert a["accuracy"] == {"output": "logits", "cosine": 0.99, "sqnr_db": 22.0, "top1_agreement": 0.93}
    assert a["artifact"]["bytes"] == 4096 and a["quantization"] == {"calibration_method": "minmax", "float_layers": 2}
    assert b["accuracy"] == {"output": None} and b["status"] == "ok"
    # b has no accuracy: not ranked; a alone is the front, by the metric a has
    assert rep["metric"] == "top1" and rep["front"] == [0]


def test_the_run_stores_every_record_failed_ones_too(tmp_path):
    from edgeopt.sweep import run

    ok = dict(record("m", "rpi5", "r", "pi-01", 1.0, 0.9), v=1, manifest={"schema": 1},
              result={"device": "pi-01", "latency_ms": {"p50": 0.9, "p90": 1.0}})
    failed = dict(record("m", "rpi5", "s", "pi-01", None, status="failed", error="gate"), v=1)
    unbenched = dict(record("m", "rpi5", "r", None, None, 0.9), v=1)
    path = str(tmp_path / "h.sqlite")
    ids = run._store([ok, failed, unbenched], "sw-1", path, {ok["id"]: 2, failed["id"]: 0, unbenched["id"]: 1})
    assert list(ids) == ["m.rpi5.r@pi-01"]
    with history.History(path) as db:
        recs = [json.loads(t) for t in db.sweep_records("sw-1")]
        assert [r["id"] for r in recs] == ["m.rpi5.s@pi-01", "m.rpi5.r", "m.rpi5.r@pi-01"]
        assert [r["status"] for r in recs] == ["failed", "ok", "ok"]
        assert recs[2]["history_id"] == ids["m.rpi5.r@pi-01"] and recs[0]["history_id"] is None
        assert not {"manifest", "result", "v"} & set(recs[2])  # the record as `sweep --json` shows it
        assert db.get(ids["m.rpi5.r@pi-01"])["manifest"] == {"schema": 1}
        # stored again (a resumed run): the benchmark once, the records replaced
        run._store([ok], "sw-1", path, {ok["id"]: 2})
        assert db.count() == 1 and len(db.sweep_records("sw-1")) == 3


# ----------------------------------------------------------------------------------------------- errors

def test_unknown_sweep_is_one_error_and_writes_nothing(tmp_path):
    sid = make_history(tmp_path / "h.sqlite")
    out = tmp_path / "r.html"
    err = assert_one_error(edgeopt_cli("report", "--sweep", "nope-1", "--history", tmp_path / "h.sqlite", "--out",
                                       out, in_process=True), "--sweep nope-1: no such sweep", code=2)
    assert f"hint: sweeps there, the last run first: {sid}" in err
    assert not out.exists()
    # no database there: not created
    assert_one_error(edgeopt_cli("report", "--sweep", sid, "--history", tmp_path / "none.sqlite", "--out", out,
                                 in_process=True), "no history database")
    assert not (tmp_path / "none.sqlite").exists() and not out.exists()


@pytest.mark.parametrize("args, needle", [
    (["--sweep", "x", "12"], "12: result ids and files, or --sweep, not both"),
    ([], "nothing to report"),
    (["12", "--metric", "top1"], "--metric: only with --sweep"),
    (["--sweep", "x", "--metric", "f1"], "--metric 'f1': expected auto, top1, sqnr, cosine"),
])
def test_report_usage_errors(tmp_path, args, needle):
    make_history(tmp_path / "h.sqlite")
    out = tmp_path / "r.html"
    assert_one_error(edgeopt_cli("report", *args, "--history", tmp_path / "h.sqlite", "--out", out, in_process=True),
                     needle)
    assert not out.exists()


def test_history_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEOPT_HISTORY", "off")
    assert_one_error(edgeopt_cli("report", "--sweep", "x", "--out", tmp_path / "r.html", in_process=True),
                     "the history is turned off")


# ------------------------------------------------------------------------------------------------ plot

def test_scatter_draws_what_it_can_and_says_what_it_cannot():
    svg = svgplot.scatter([("a", 1.0, 0.9, "m", "t"), ("b", 2.0, 0.95, "m", "u"), ("nan", math.nan, 0.9, "m", "t"),
                           ("huge", 1e300, 0.99, "n", "t"), ("neg", -1e13, 0.5, "n", "t")], front=[0, 1, 3])
    root = ET.fromstring(svg)
    assert len([g for g in root.iter(f"{SVG}g")]) == 2
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "3 not drawn (a value that is not a finite number within ±1e12)" in texts
    assert "a" in texts and "b" in texts and "huge" not in texts
    # legends: the colour group drawn (m), the shapes of both targets drawn
    assert "m" in texts and "n" not in texts and {"t", "u"} <= set(texts)
    empty = ET.fromstring(svgplot.scatter([("x", None, 1.0, "m", "t")]))
    assert [t.text for t in empty.iter(f"{SVG}text")] == ["no cell with both a latency and an accuracy"]


def test_scatter_of_equal_and_of_nearly_equal_values():
    for x in (1.0, 1e12, 5e-324):
        root = ET.fromstring(svgplot.scatter([("a", x, 0.5, "m", "t"), ("b", x, 0.5, "m", "t")], front=[0, 1]))
        cx = [float(c.get("cx")) for c in root.iter(f"{SVG}circle") if c.get("fill") != "#6b7280"]  # not the legend
        assert len(cx) == 2 and all(math.isfinite(v) and 0 <= v <= 1000 for v in cx), cx


def test_page_without_any_ranked_cell(tmp_path):
    sid = make_history(tmp_path / "h.sqlite", [record("m", "rpi5", "r", None, None, 0.9),
                                               record("m", "rpi5", "s", "pi", None, status="failed", error="x")])
    page = sweep_report.html(stored.load(sid, str(tmp_path / "h.sqlite")))
    assert images(page) == []
    assert "No cell has both a p90 latency and a top-1 agreement: no plot." in page
    assert "No cell is ranked." in page


def test_front_labels_do_not_cover_each_other():
    # three front points a hair apart: above the first, below the second, no room for the third
    pts = [("first", 1.0, 0.9, "m", "t"), ("second", 1.0001, 0.90001, "m", "t"), ("third", 1.0002, 0.90002, "m", "t"),
           ("far", 50.0, 0.99, "m", "t")]
    root = ET.fromstring(svgplot.scatter(pts, front=[0, 1, 2, 3]))
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert {"first", "second", "far"} <= set(texts) and "third" not in texts
    assert "1 on the front not labelled (no room: see the table)" in texts
