"""History: every bench/deploy result in SQLite; `edgeopt results` lists and shows them."""
import json
import os
import sqlite3

import pytest

from edgeopt.results import history
from edgeopt_testkit import edgeopt_cli


def fake(device="pi-01", p50=1.0, samples=(1.0, 1.1, 0.9)):
    return {"device": device, "target": "rpi5", "artifact": {"file": "m.tflite", "sha256": "ab" * 32},
            "runtime": {"name": "ai_edge_litert", "version": "2.1.0", "delegate": "xnnpack", "provider": None},
            "config": {"warmup": 10, "runs": 3, "min_seconds": 0.0, "threads": 1},
            "latency_ms": {"p50": p50, "p90": 1.1, "p99": 1.1, "mean": 1.0, "cv": 0.08}, "runs": 3,
            "clean": True, "unstable": False, "samples_ms": list(samples), "timestamps_s": [0.0, 0.001, 0.0021]}


def test_store_get_list_roundtrip(tmp_path):
    path = tmp_path / "sub" / "h.sqlite"
    manifest = {"schema": 1, "artifacts": [{"file": "m.tflite"}]}
    with history.open_db(str(path)) as db:
        a = db.add(fake(), manifest=manifest, command="bench")
        b = db.add(fake("pi-02", p50=2.0), command="deploy", label="candidate")
        assert (a, b) == (1, 2) and db.count() == 2
        r = db.get(a)
        assert r["samples_ms"] == [1.0, 1.1, 0.9] and r["timestamps_s"] == [0.0, 0.001, 0.0021]
        assert r["manifest"] == manifest and r["command"] == "bench" and r["id"] == 1
        assert r["latency_ms"]["p50"] == 1.0 and r["artifact"]["sha256"] == "ab" * 32
        rows = db.list()
        assert [x["id"] for x in rows] == [2, 1] and rows[0]["label"] == "candidate" and rows[0]["p50"] == 2.0
        assert [x["id"] for x in db.list(device="pi-01")] == [1]
        assert [x["id"] for x in db.list(sha256="abab")] == [2, 1] and db.list(sha256="ff") == []
        with pytest.raises(Exception, match="no result 9"):
            db.get(9)
    # a plain SQLite file anyone can query
    con = sqlite3.connect(path)
    assert con.execute("SELECT device, p50 FROM results ORDER BY id").fetchall() == [("pi-01", 1.0), ("pi-02", 2.0)]


def test_path_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEOPT_HISTORY", str(tmp_path / "x.sqlite"))
    assert history.default_path() == str(tmp_path / "x.sqlite")
    monkeypatch.setenv("EDGEOPT_HISTORY", "off")
    assert history.default_path() is None and history.open_db() is None
    monkeypatch.delenv("EDGEOPT_HISTORY")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert history.default_path() == str(tmp_path / "data" / "edgeopt" / "results.sqlite")


def test_manifest_for(tmp_path):
    m = {"schema": 1, "artifacts": [{"file": "model.int8.tflite"}]}
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    (tmp_path / "model.int8.tflite").write_bytes(b"x")
    (tmp_path / "other.tflite").write_bytes(b"x")
    assert history.manifest_for(str(tmp_path)) == m
    assert history.manifest_for(str(tmp_path / "model.int8.tflite")) == m
    assert history.manifest_for(str(tmp_path / "other.tflite")) is None


def test_load_results_forms(tmp_path):
    one, two = fake(), fake("pi-02")
    (tmp_path / "one.json").write_text(json.dumps(one))
    (tmp_path / "list.json").write_text(json.dumps([one, {"device": "x", "error": "down"}, two]))
    (tmp_path / "deploy.json").write_text(json.dumps({"manifest": {"schema": 1}, "results": [one]}))
    assert len(history.load_results(str(tmp_path / "one.json"))) == 1
    assert [r["device"] for r in history.load_results(str(tmp_path / "list.json"))] == ["pi-01", "pi-02"]
    assert history.load_results(str(tmp_path / "deploy.json"))[0]["manifest"] == {"schema": 1}
    with pytest.raises(Exception, match="neither a result id nor a JSON file"):
        history.load_results(str(tmp_path / "nope.json"))


def test_results_cli_without_devices(tmp_path):
    db = tmp_path / "h.sqlite"
    with history.open_db(str(db)) as h:
        h.add(fake(), command="bench")
    p = edgeopt_cli("results", "--history", db)
    assert p.returncode == 0 and "pi-01" in p.stdout and "m.tflite" in p.stdout
    p = edgeopt_cli("results", "1", "--json", "--no-samples", "--history", db)
    assert p.returncode == 0 and "samples_ms" not in json.loads(p.stdout)
    p = edgeopt_cli("results", "7", "--history", db)
    assert p.returncode == 2 and p.stderr.startswith("error: no result 7")
    p = edgeopt_cli("results", "--history", tmp_path / "empty.sqlite")
    assert p.returncode == 0 and "no results" in p.stdout


@pytest.mark.ssh
def test_bench_and_deploy_store_their_results(lab, tflite_model, tmp_path):
    lab.start("pi-ns", netns=lab.netns(), target="rpi5")
    inv = lab.inventory()
    env = {"EDGEOPT_HISTORY": str(tmp_path / "h.sqlite")}
    p = edgeopt_cli("bench", tflite_model, "--device", "pi-ns", "--inventory", inv, "--runs", 50, "--min-seconds", 0.2,
                    "--threads", 1, "--json", env=env)
    assert p.returncode == 0, p.stderr
    bench = json.loads(p.stdout)
    assert bench["id"] == 1
    p = edgeopt_cli("deploy", tflite_model, "--target", "rpi", "--inventory", inv, "--out", tmp_path / "out", "--runs",
                    50,
                    "--min-seconds", 0.2, "--threads", 1, "--json", env=env)
    assert p.returncode == 0, p.stderr
    dep = json.loads(p.stdout)
    assert [r["id"] for r in dep["results"]] == [2] and "samples_ms" not in dep["results"][0]

    rows = json.loads(edgeopt_cli("results", "--json", env=env).stdout)
    assert [(r["id"], r["command"], r["device"]) for r in rows] == [(2, "deploy", "pi-ns"), (1, "bench", "pi-ns")]
    assert rows[1]["artifact_sha256"] == bench["artifact"]["sha256"] and rows[1]["p50"] == bench["latency_ms"]["p50"]
    shown = json.loads(edgeopt_cli("results", "1", "--json", env=env).stdout)
    assert shown["samples_ms"] == bench["samples_ms"] and shown["timestamps_s"] == bench["timestamps_s"]
    assert shown["device_facts"]["ncpu"] == os.cpu_count() and shown["runtime"] == bench["runtime"]
    assert shown["config"] == bench["config"] and shown["conditions"]["before"]["loadavg"] is not None
    d = json.loads(edgeopt_cli("results", "2", "--json", env=env).stdout)
    assert d["manifest"] == dep["manifest"] and len(d["samples_ms"]) == d["runs"]  # samples kept even if not printed
    text = edgeopt_cli("results", "2", env=env).stdout
    assert "result #2" in text and "manifest" in text
    # a p90 budget that fails: exit 1, JUnit says which device, and the result is stored all the same
    p = edgeopt_cli("deploy", tflite_model, "--target", "rpi", "--inventory", inv, "--out", tmp_path / "out", "--runs",
                    20,
                    "--min-seconds", 0, "--threads", 1, "--max-p90-ms", 0.0001, "--junit", tmp_path / "d.xml", env=env)
    assert p.returncode == 1 and "latency budget exceeded: pi-ns p90" in p.stderr
    import xml.etree.ElementTree as ET
    root = ET.parse(tmp_path / "d.xml").getroot()
    case = root.find("testsuite/testcase")
    assert root.get("failures") == "1" and case.get("name") == "pi-ns" and case.get("classname") == "edgeopt.deploy"
    assert "> budget 0.0001 ms" in case.find("failure").text and "history id 3" in case.find("system-out").text
    # EDGEOPT_HISTORY=off stores nothing
    p = edgeopt_cli("bench", tflite_model, "--device", "pi-ns", "--inventory", inv, "--runs", 5, "--min-seconds", 0,
                    "--json", env={"EDGEOPT_HISTORY": "off"})
    assert p.returncode == 0 and "id" not in json.loads(p.stdout)
    assert len(json.loads(edgeopt_cli("results", "--json", env=env).stdout)) == 3


def test_device_check_columns_and_an_older_database(tmp_path):
    """A database from before the on-device check opens (its columns are added), its rows list with nulls; a result
    with an ``accuracy`` stores its lowest top-1 agreement and SQNR, shown by `edgeopt results`."""
    path = tmp_path / "old.sqlite"
    con = sqlite3.connect(path)  # the schema of the first release plus the sweep columns, one result in it
    con.executescript(history.SCHEMA.replace("    timestamps BLOB\n", "    timestamps BLOB, sweep_id TEXT, sweep_cell TEXT\n"))
    con.execute("INSERT INTO results (created, device, p50, result_json) VALUES ('2025-01-01T00:00:00+00:00', "
                "'pi-old', 1.5, ?)", (json.dumps(fake("pi-old")),))
    con.commit()
    con.close()
    checked = dict(fake("pi-new"), accuracy={"samples": 10, "reference": "fp32 source model (onnxruntime CPU) m.onnx",
                                             "outputs": {"a": {"kind": "scores", "sqnr_db": 30.5, "top1_agreement": 0.9},
                                                         "b": {"kind": "dense", "sqnr_db": 12.25}},
                                             "host": {"outputs": {"a": {"top1_agreement": 0.9}}},
                                             "same_as_host": True})
    with history.open_db(str(path)) as db:
        rid = db.add(checked, command="bench")
        rows = {r["device"]: r for r in db.list()}
        assert (rows["pi-old"]["val_top1"], rows["pi-old"]["val_sqnr_db"]) == (None, None)
        assert (rows["pi-new"]["val_top1"], rows["pi-new"]["val_sqnr_db"]) == (0.9, 12.25)
        assert db.get(rid)["accuracy"]["outputs"]["b"]["sqnr_db"] == 12.25
    p = edgeopt_cli("results", "--history", path)
    assert p.returncode == 0 and "top-1" in p.stdout and "0.900" in p.stdout and "12.2" in p.stdout
    listed = json.loads(edgeopt_cli("results", "--history", path, "--json").stdout)
    assert [(r["device"], r["val_top1"], r["val_sqnr_db"]) for r in listed] == [("pi-new", 0.9, 12.25),
                                                                                 ("pi-old", None, None)]
    p = edgeopt_cli("results", str(rid), "--history", path)
    assert p.returncode == 0 and "accuracy  pi-new: on-device check, 10 samples" in p.stdout
    assert "top-1 agreement 0.900 (host 0.900)" in p.stdout
