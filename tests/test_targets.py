import json

import pytest

from conftest import edgeopt_cli
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
