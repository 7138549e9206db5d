import ast
import dataclasses
import json
import os

import pytest

import edgeopt
from edgeopt_testkit import edgeopt_cli
from edgeopt import converters, targets


def test_profiles_and_aliases():
    assert set(targets.TARGETS) == {"rpi4", "rpi5", "jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin",
                                    "coral-usb", "coral-devboard"}
    assert targets.get("rpi").name == "rpi5"
    assert targets.get("jetson").name == "jetson-orin-nano"
    assert targets.get("CORAL").name == "coral-usb"
    for t in targets.TARGETS.values():
        assert t.formats and t.runtime and t.io_dtype in ("float32", "uint8", "int8") and t.threads >= 1
        assert t.source, f"{t.name}: profile facts need a source"
    assert targets.get("coral-devboard").delegate == "edgetpu"
    assert targets.get("coral-usb").host_compiler == "edgetpu_compiler"
    assert targets.get("jetson-agx-orin").formats == ("onnx-qdq-int8", "onnx-fp16")
    assert targets.get("rpi4").io_dtype == "float32" and targets.get("coral-usb").io_dtype == "uint8"


def test_unknown_target_did_you_mean():
    with pytest.raises(KeyError) as e:
        targets.get("rpi6")
    assert "did you mean" in str(e.value) and "rpi5" in str(e.value)


def test_family_membership():
    assert targets.in_family("rpi4", "rpi") and targets.in_family("jetson-orin-nx", "jetson")
    assert not targets.in_family("coral-usb", "rpi")


def test_registry_imports_every_entry():
    for (fmt, kind), spec in converters.ROUTES.items():
        fn = converters.resolve(spec)
        assert callable(fn), spec
    for mod in converters.MODULES:
        assert converters.load(mod).__name__ == mod
    for mods in converters.TOOL_MODULES.values():
        for mod in mods:
            assert hasattr(converters.load(mod), "versions")


def test_every_target_has_routes_for_onnx():
    for t in targets.TARGETS.values():
        for kind in t.formats:
            assert ("onnx", kind) in converters.ROUTES


def test_targets_cli_json():
    r = edgeopt_cli("targets", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    names = {t["name"] for t in data["targets"]}
    assert "coral-devboard" in names and data["aliases"]["rpi"] == "rpi5"
    by_name = {t["name"]: t for t in data["targets"]}
    assert by_name["coral-usb"]["float_fallback"] == "cpu" and by_name["coral-usb"]["edgetpu_preflight"] is True
    assert by_name["coral-usb"]["any_host_arch"] is True and by_name["coral-devboard"]["any_host_arch"] is False
    assert by_name["rpi5"]["float_fallback"] == "allowed" and by_name["rpi5"]["board_probe"] == "raspberrypi"
    assert by_name["rpi5"]["board_models"] == ["Raspberry Pi 5", "Compute Module 5", "Raspberry Pi 500"]
    assert by_name["jetson-orin-nx"]["board_probe"] == "tegra" and by_name["jetson-orin-nx"]["board_models"] == ["Orin NX"]


def test_behaviour_fields_per_profile():
    for t in targets.TARGETS.values():
        coral = t.family == "coral"  # the fields must match what each family did before they existed
        assert t.integer_only is coral and t.edgetpu_preflight is coral
        assert t.float_fallback == ("cpu" if coral else "allowed")
        assert t.board_probe == {"rpi": "raspberrypi", "jetson": "tegra", "coral": None}[t.family]
    assert targets.FAMILIES == ("rpi", "jetson", "coral")
    with pytest.raises(ValueError, match="float_fallback"):
        dataclasses.replace(targets.get("rpi5"), float_fallback="cpu-only")
    with pytest.raises(ValueError, match="board_probe"):
        dataclasses.replace(targets.get("rpi5"), board_probe="pi")


# ------------------------------------------------------------------- behaviour comes from fields, not names

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOARD_NAMES = set(targets.FAMILIES) | set(targets.TARGETS) | set(targets.ALIASES)
FAMILY_REFS = {"family", "fam"}  # attribute or variable names that hold a family


def _strings(node) -> list[str]:
    """String literals in a comparison operand: a constant, or the constants of a tuple/list/set literal."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [s for e in node.elts for s in _strings(e)]
    return []


def _is_family(node) -> bool:
    return ((isinstance(node, ast.Attribute) and node.attr in FAMILY_REFS)
            or (isinstance(node, ast.Name) and node.id in FAMILY_REFS))


def board_name_checks(source: str, filename: str = "<source>") -> list[str]:
    """'file:line: code' for every comparison of a family or target name with a string literal: a board name
    compared to anything (``fam == "rpi"``, ``"coral" in name``, ``name.startswith("jetson")``), or a family
    compared to any string."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        hit = False
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            literals = [s for o in operands for s in _strings(o)]
            hit = bool(BOARD_NAMES & set(literals)) or (bool(literals) and any(map(_is_family, operands)))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("startswith", "endswith")):
            hit = any(name.startswith(s) or name.endswith(s)
                      for a in node.args for s in _strings(a) for name in BOARD_NAMES if s)
            hit = hit and not any(s.startswith(".") or s.startswith("_") for a in node.args for s in _strings(a))
        if hit:
            found.append(f"{filename}:{node.lineno}: {ast.get_source_segment(source, node)}")
    return found


def test_board_name_check_finds_string_comparisons():
    bad = ('if tgt.family == "coral": pass\nif fam != "rpi": pass\nok = "jetson-orin-nx" in names\n'
           'x = name.startswith("coral")\nif t.name not in ("rpi4", "other"): pass\n')
    assert len(board_name_checks(bad)) == 5
    fine = ('if tgt.float_fallback == "cpu": pass\nif fmt == "onnx": pass\nif fam in FAMILIES: pass\n'
            'x = path.endswith("_edgetpu.tflite")\nd = {"rpi": 1}["rpi"]\n')
    assert board_name_checks(fine) == []


def test_no_behaviour_keyed_on_board_names():
    """Per-board behaviour is read from Target fields; no module compares a family or target name to a string."""
    found = []
    for top in ("sdk", "converters"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            for f in sorted(files):
                if f.endswith(".py"):
                    path = os.path.join(dirpath, f)
                    with open(path, encoding="utf-8") as fh:
                        found += board_name_checks(fh.read(), os.path.relpath(path, ROOT))
    assert found == [], "compare Target fields instead:\n" + "\n".join(found)


class _Stop(Exception):
    pass


def _profile(monkeypatch, like: str, name: str, family: str):
    """Register a profile of a family edgeopt has never heard of, with the behaviour fields of `like`."""
    t = dataclasses.replace(targets.get(like), name=name, family=family, description=f"test board like {like}")
    monkeypatch.setitem(targets.TARGETS, name, t)
    return t


def test_new_family_with_coral_fields_gets_coral_behaviour(monkeypatch, tmp_path):
    from edgeopt.conversion import pipeline, recover
    from edgeopt.devices import bench, probes
    from edgeopt.errors import UsageError

    npu = _profile(monkeypatch, "coral-usb", "npu-x", "newtpu")
    cpu = _profile(monkeypatch, "rpi5", "sbc-x", "newsbc")
    assert targets.get("npu-x") is npu and npu.family not in targets.FAMILIES
    model = tmp_path / "m.onnx"
    model.write_bytes(b"never parsed: the decisions come first")

    # float fallback refused, before anything is converted
    with pytest.raises(UsageError, match="--allow-float-fallback is not possible"):
        edgeopt.convert(str(model), target="npu-x", allow_float_fallback=True, out=str(tmp_path / "a"))

    # uint8 I/O and the Edge TPU pre-flight: what convert() hands the conversion (stopped there)
    seen = []

    def stop(model, fmt, tgt, routes, calib, val, staging, workdir, shapes, mean, std, io_dtype, *rest):
        seen.append((tgt.name, io_dtype, tgt.edgetpu_preflight))
        raise _Stop

    monkeypatch.setattr(pipeline, "_convert", stop)
    for name in ("npu-x", "sbc-x"):
        with pytest.raises(_Stop):
            edgeopt.convert(str(model), target=name, out=str(tmp_path / name))
    assert seen == [("npu-x", "uint8", True), ("sbc-x", "float32", False)]

    # accuracy recovery: a float TFLite layer leaves the accelerator, so only with --allow-cpu-ops
    assert recover.float_layer_policy(npu, "tflite", allow_cpu_ops=False) == (False, True)
    assert recover.float_layer_policy(npu, "tflite", allow_cpu_ops=True) == (True, False)
    assert recover.float_layer_policy(cpu, "tflite", allow_cpu_ops=False) == (True, False)
    assert recover.float_layer_policy(dataclasses.replace(npu, float_fallback="refused"), "tflite", True) \
        == (False, False)

    # devices: the host's arch is not the USB accelerator's, libedgetpu is what it needs
    info = {"arch": "x86_64", "model": None, "python": {"version": "3.11"}, "numpy": "1.26.4",
            "runtimes": {"ai_edge_litert": {}}}
    assert probes.assess(info, "npu-x") == ["no libedgetpu: install libedgetpu1-std from the Coral apt repository"]
    assert "libedgetpu" in bench.install_hint("npu-x", "model.int8.tflite")
    hint = bench.install_hint("sbc-x", "model.int8.tflite")
    assert hint.startswith("run edgeopt devices --setup") and "-m venv --system-site-packages" in hint


def test_new_family_with_jetson_fields_gets_jetson_probe(monkeypatch):
    from edgeopt.devices import bench, probes

    _profile(monkeypatch, "jetson-orin-nx", "gpu-x", "newgpu")
    pi = {"arch": "aarch64", "model": "Raspberry Pi 5 Model B Rev 1.0", "tegra": None,
          "python": {"version": "3.11"}, "numpy": "1.26.4", "runtimes": {"onnxruntime": {}}}
    w = probes.assess(pi, "gpu-x")
    assert any("not a Jetson" in x for x in w) and any("no TensorRT" in x for x in w)
    assert probes.assess(dict(pi, model="NVIDIA Jetson Orin NX Developer Kit", tegra={"release": "R36"},
                              runtimes={"trtexec": {}}), "gpu-x") == []
    assert "JetPack" in bench.install_hint("gpu-x", "model.int8.qdq.onnx")
