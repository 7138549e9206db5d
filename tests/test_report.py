"""report: a self-contained HTML page (SVG plots embedded as images) and a Markdown summary; the page is
rendered by a real headless browser (Debian's chromium) and the screenshot checked."""
import base64
import json
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from edgeopt.results import report
from edgeopt.results import svgplot
from edgeopt_testkit import edgeopt_cli

DATA = Path(__file__).parent / "data" / "conditions"


def fake(device, scale, seed, n=800, file="model.int8.tflite", rid=None, sustained=False):
    from edgeopt.devices import conditions
    from edgeopt.results import stats
    rng = np.random.default_rng(seed)
    s = rng.lognormal(np.log(scale), 0.06, n)
    s[rng.integers(0, n, 8)] *= 3   # a few preempted runs
    t = np.cumsum(s) / 1e3
    summ = stats.summarize(s, t)
    snap = conditions.parse((DATA / "pi5-idle.txt").read_text())
    hot = conditions.parse((DATA / "pi4-throttled.txt").read_text())
    before, after = (snap, snap) if seed % 2 else (snap, hot)
    verdict = conditions.assess(before, after, {"other_busy": 0.02, "ncpu": 4})
    r = {"device": device, "target": "rpi5", "artifact": {"file": file, "sha256": f"{seed:02d}" * 32},
         "runtime": {"name": "ai_edge_litert", "version": "2.1.0", "delegate": "xnnpack", "provider": None},
         "config": {"warmup": 10, "runs": 100, "min_seconds": 1.0, "threads": 4},
         "protocol": {"warmup_seconds": 1.0, "sustained": 30.0 if sustained else 0.0},
         "latency_ms": summ["latency_ms"], "ci95": {k: summ["ci95"][k] for k in ("p50", "mean")},
         "unstable": summ["unstable"], "drift": summ["drift"], "runs": n, "init_ms": 40.0,
         "samples_ms": s.tolist(), "timestamps_s": t.tolist(), "clean": verdict["clean"],
         "conditions": {"before": before, "after": after, "cpu_during": {"other_busy": 0.02, "ncpu": 4,
                                                                          "self_cores": 1.0}, **verdict},
         "device_facts": snap["facts"],
         "manifest": {"schema": 1, "source": {"file": "cnn.keras", "format": "keras", "sha256": "cd" * 32},
                      "target": {"name": "rpi5", "family": "rpi"},
                      "artifacts": [{"file": file, "precision": "int8", "bytes": 123456}],
                      "calibration": {"source": "calib.npy", "samples": 200},
                      "accuracy": {"logits": {"cosine": 0.9991, "sqnr_db": 31.2, "max_abs_err": 0.043,
                                              "top1_agreement": 0.987}},
                      "toolchain": {"tensorflow": "2.19.0"}}}
    if sustained:
        r["temperature_trace"] = [[float(i), 50.0 + i * 0.8] for i in range(30)]
    if rid:
        r["id"] = rid
    return r


def images(page):
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/svg\+xml;base64,([^"]+)"', page)]


def test_html_is_self_contained_with_svg_plots():
    rs = [fake("pi-01", 8.0, 1, rid=11), fake("pi-01", 10.0, 2, file="model.fp32.tflite", rid=12, sustained=True)]
    page = report.html(rs)
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page
    assert not re.search(r'(src|href)="(https?:)?//', page)            # nothing fetched from anywhere
    svgs = images(page)
    assert len(svgs) == 3                                               # histogram, over time, temperature
    for svg in svgs:
        root = ET.fromstring(svg)                                       # well-formed SVG
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
    hist = ET.fromstring(svgs[0])
    bars = hist.findall(".//{http://www.w3.org/2000/svg}rect")
    assert len(bars) > 40                                               # bars of both series
    assert "Latency distribution" in svgs[0].decode() and "Temperature" in svgs[2].decode()
    for text in ("#11", "#12", "pi-01", "model.fp32.tflite", "not clean", "under-voltage detected", "cnn.keras",
                 "top1_agreement", "0.9870", "15W" if False else "ondemand", "Comparison", "regression"):
        assert text in page, text
    # the numbers in the table are the results' numbers
    assert f"{rs[0]['latency_ms']['p50']:.3f}" in page and f"{rs[1]['latency_ms']['p90']:.3f}" in page



def test_html_shows_the_on_device_check_escaped():
    r = fake("pi-01", 8.0, 1, rid=11)
    r["accuracy"] = {"samples": 100, "reference": "fp32 source model (onnxruntime CPU) <b>m.onnx",
                     "runtime": {"name": "ai_edge_litert", "version": "2.1.0"}, "same_as_host": False,
                     "outputs": {"<script>x": {"cosine": 0.99871, "sqnr_db": 24.5, "top1_agreement": 0.97}},
                     "host": {"outputs": {"<script>x": {"cosine": 0.99912, "top1_agreement": 0.98}}},
                     "notes": ["the first 100 of 1000 <i>samples"]}
    page = report.html([r])
    assert "<h3>On-device accuracy</h3>" in page and "differs from the host" in page and "<script" not in page
    assert "&lt;script&gt;x" in page and "&lt;b&gt;m.onnx" in page and "1000 &lt;i&gt;samples" in page
    assert "0.9987" in page and "0.9991" in page and "0.9700" in page and "0.9800" in page
    assert "On-device accuracy" not in report.html([fake("pi-01", 8.0, 1)])

def test_markdown_summary():
    rs = [fake("pi-01", 8.0, 1, rid=11), fake("pi-01", 10.0, 2, rid=12)]
    md = report.markdown(rs)
    lines = md.splitlines()
    assert lines[0] == "### edgeopt benchmark" and lines[2].startswith("| | device |")
    assert lines[4].startswith("| #11 | pi-01 | `model.int8.tflite` |")
    assert "🔴 **regression**" in md and "p50 +" in md
    assert "<details><summary>Device conditions</summary>" in md and "currently throttled" in md


def test_nice_ticks_and_empty_plots():
    assert svgplot.nice_ticks(0, 10, 5) == [0, 2, 4, 6, 8, 10]
    assert svgplot.nice_ticks(0.12, 0.19, 6)[0] >= 0.12
    ET.fromstring(svgplot.histogram([]))
    ET.fromstring(svgplot.timeseries([("x", [0.0], [1.0])]))
    ET.fromstring(svgplot.histogram([("<&>", [1.0, 1.0, 1.0])]))      # escaped, degenerate range


def test_report_cli(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(fake("pi-01", 8.0, 1)))
    b.write_text(json.dumps({"manifest": {"schema": 1}, "results": [fake("pi-02", 9.0, 3)]}))
    p = edgeopt_cli("report", a, b, "--out", tmp_path / "r" / "x.html", "--markdown", tmp_path / "x.md", "--json",
                    env={"EDGEOPT_HISTORY": "off"})
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["results"] == [str(a), str(b)] and Path(out["html"]).is_file()
    assert "pi-02" in Path(out["html"]).read_text() and "pi-02" in (tmp_path / "x.md").read_text()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(not CHROMIUM, reason="needs a headless browser: apt-get install chromium")
def test_rendered_in_headless_chromium(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    rs = [fake("pi-01", 8.0, 1, rid=11), fake("pi-01", 10.0, 2, file="model.fp32.tflite", rid=12, sustained=True)]
    html = tmp_path / "report.html"
    html.write_text(report.html(rs))
    shot = Path(os.environ.get("EDGEOPT_REPORT_SHOT") or tmp_path / "shot.png")
    p = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,2200",
                        f"--screenshot={shot}", html.as_uri()], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and shot.is_file(), p.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape[:2] == (2200, 1200)
    # the plots were drawn: the series colours of the histogram are on the page (blue and red bars)
    blue = np.all(np.abs(img - [0x25, 0x63, 0xEB]) < 90, axis=2) & (img[:, :, 2] > 150) & (img[:, :, 0] < 150)
    red = (img[:, :, 0] > 180) & (img[:, :, 1] < 140) & (img[:, :, 2] < 140)
    assert blue.sum() > 2000 and red.sum() > 2000, (blue.sum(), red.sum())
    # and text: many dark pixels (table text), on a light page
    dark = (img.sum(axis=2) < 200).sum()
    assert dark > 5000 and img.mean() > 180
