"""Edge TPU compiler log parsing (recorded real outputs) and pre-flight rules."""
import os

from edgeopt.converters import edgetpu

DATA = os.path.join(os.path.dirname(__file__), "data", "edgetpu")


def _read(name):
    with open(os.path.join(DATA, name)) as f:
        return f.read()


def test_parse_partial_cpu_log():
    r = edgetpu.parse_compiler_log(_read("compiler_partial_cpu.log"))
    assert r["subgraphs"] == 1 and r["total_ops"] == 267
    assert r["tpu_ops"] == 261 and r["cpu_ops"] == 6
    ops = {(o["op"], o["status"]): o for o in r["operators"]}
    assert ops[("DEPTHWISE_CONV_2D", "Mapped to Edge TPU")]["count"] == 80
    assert ops[("DEQUANTIZE", "Operation is working on an unsupported data type")]["edgetpu"] is False
    assert ops[("CONCATENATION", "More than one subgraph is not supported")]["count"] == 1


def test_parse_all_mapped_log():
    r = edgetpu.parse_compiler_log(_read("compiler_all_mapped.log"))
    assert r["version"] == "16.0.384591198" and r["compiled"] is True
    assert r["total_ops"] == 246 and r["on_chip"] == "5.90MiB" and r["off_chip"] == "41.75KiB"
    assert r["output_model"].endswith("best-int8_edgetpu.tflite")
    assert all(o["edgetpu"] for o in r["operators"]) and len(r["operators"]) == 8
    assert r["tpu_ops"] == 246 and r["cpu_ops"] == 0


def _op(name, dtypes=("int8",), shapes=((1, 8, 8, 4),), flt=False, dynamic=False):
    return {"index": 0, "op": name, "dtypes": list(dtypes), "float": flt, "shapes": [list(s) for s in shapes],
            "dynamic": dynamic}


def test_why_not_rules():
    assert edgetpu.why_not(_op("CONV_2D")) is None
    assert "not supported" in edgetpu.why_not(_op("CUMSUM"))
    assert "float" in edgetpu.why_not(_op("ADD", dtypes=("float32",), flt=True))
    assert "int16" in edgetpu.why_not(_op("ADD", dtypes=("int16",)))
    assert "dynamic" in edgetpu.why_not(_op("ADD", dynamic=True))
    assert "more than 3 dimensions" in edgetpu.why_not(_op("ADD", shapes=((2, 8, 8, 4),)))
    assert edgetpu.why_not(_op("ADD", shapes=((1, 1, 8, 8, 4),))) is None  # only leading 1s beyond 3D


def test_compile_skipped_without_compiler(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    r = edgetpu.compile_if_available(str(tmp_path / "m.tflite"), str(tmp_path))
    assert r["compiler"]["available"] is False and "edgetpu_compiler not on PATH" in r["compiler"]["note"]


def test_compile_runs_compiler_on_path(tmp_path, monkeypatch):
    """A stand-in edgetpu_compiler that replays a recorded log and writes the output model."""
    fake = tmp_path / "bin" / "edgetpu_compiler"
    fake.parent.mkdir()
    log = os.path.join(DATA, "compiler_all_mapped.log")
    fake.write_text(f"""#!/bin/sh
out=""; while [ $# -gt 1 ]; do case "$1" in -o) out="$2"; shift;; esac; shift; done
base=$(basename "$1" .tflite); cp "$1" "$out/${{base}}_edgetpu.tflite"; cat {log}
""")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    model = tmp_path / "m.tflite"
    model.write_bytes(b"\0\0\0\0TFL3")
    r = edgetpu.compile_if_available(str(model), str(tmp_path))
    assert r["file"] == "m_edgetpu.tflite" and os.path.exists(r["path"])
    assert r["compiler"]["ok"] is True and r["compiler"]["tpu_ops"] == 246
