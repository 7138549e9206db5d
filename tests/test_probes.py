"""Probe parsers on recorded real outputs (tests/data/probes/), and the fit-to-target warnings."""
from pathlib import Path

from edgeopt.devices import probes

DATA = Path(__file__).parent / "data" / "probes"


def read(name):
    return (DATA / name).read_bytes().decode()


def test_device_tree_models_keep_no_nul():
    assert probes.parse_dt_model((DATA / "rpi5.device-tree-model").read_bytes()) == "Raspberry Pi 5 Model B Rev 1.0"
    assert probes.parse_dt_model(read("rpi4.device-tree-model")) == "Raspberry Pi 4 Model B Rev 1.4"
    assert probes.parse_dt_model("\x00\n") is None


def test_tegra_release_jetpack6():
    t = probes.parse_tegra_release(read("jp6.0.nv_tegra_release"))
    assert t["l4t"] == "36.3.0" and t["release"] == "R36" and t["revision"] == "3.0"
    assert t["board"] == "generic" and t["eabi"] == "aarch64" and t["gcid"] == "36191598"
    assert t["jetpack"] == "6.0"


def test_tegra_release_older():
    t = probes.parse_tegra_release(read("jp5.1.2.nv_tegra_release"))
    assert (t["l4t"], t["board"], t["jetpack"]) == ("35.4.1", "t186ref", "5.1.2")
    t = probes.parse_tegra_release(read("jp4.6.1.nv_tegra_release"))
    assert (t["l4t"], t["board"], t["jetpack"]) == ("32.7.1", "t210ref", "4.6.1")
    assert probes.parse_tegra_release("") is None


def test_uname_and_df():
    assert probes.parse_uname("arm64\n") == "aarch64"
    assert probes.parse_uname("x86_64\n") == "x86_64"
    d = probes.parse_df(read("rpi5.df"))
    assert d == {"total_bytes": 61202244 * 1024, "free_bytes": 52224656 * 1024, "mount": "/"}


def test_whole_probe_rpi5_fits():
    info = probes.parse(read("rpi5.probe.txt"))
    assert info["arch"] == "aarch64" and info["model"] == "Raspberry Pi 5 Model B Rev 1.0"
    assert info["python"]["python"] == "3.11.2" and info["numpy"] == "1.26.4"
    assert info["runtimes"] == {"ai_edge_litert": {"version": "1.2.0"}}
    assert probes.assess(info, "rpi5") == []
    # the same board declared as something else
    assert any("rpi4" in w and "Raspberry Pi 5" in w for w in probes.assess(info, "rpi4"))
    assert any("not a Jetson" in w for w in probes.assess(info, "jetson-orin-nano"))


def test_jetson_without_tensorrt_warns():
    info = probes.parse(read("orin-nano-no-trt.probe.txt"))
    assert info["tegra"]["jetpack"] == "6.0"
    assert info["runtimes"]["onnxruntime"]["providers"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert "trtexec" not in info["runtimes"]
    w = probes.assess(info, "jetson-orin-nano")
    assert w == ["no TensorRT (trtexec): ONNX artifacts will run on onnxruntime instead"]
    assert any("Orin NX" not in x and "jetson-agx-orin" in x for x in probes.assess(info, "jetson-agx-orin"))


def test_x86_declared_rpi5_and_missing_python():
    info = probes.parse(read("x86-no-python.probe.txt"))
    assert info["arch"] == "x86_64" and info["model"] is None
    assert "not found" in info["python"]["error"]
    w = probes.assess(info, "rpi5")
    assert any(x.startswith("python:") for x in w)
    assert any("declared rpi5 (aarch64) but the device is x86_64" == x for x in w)


def test_this_machine_capture():
    info = probes.parse(read("x86_64-local.probe.txt"))
    assert info["arch"] == "x86_64"
    assert "ai_edge_litert" in info["runtimes"] and "onnxruntime" in info["runtimes"]
    assert "CPUExecutionProvider" in info["runtimes"]["onnxruntime"]["providers"]
    assert info["disk"]["free_bytes"] > 0


def test_probe_command_quotes_user_input():
    cmd = probes.command("/opt/my python/bin/python3", "~/wd 'x'; touch /tmp/pwned", None)
    assert "'/opt/my python/bin/python3'" in cmd
    assert "touch /tmp/pwned'" in cmd  # inside quotes, not a command
    import subprocess
    out = subprocess.run(["/bin/sh", "-c", probes.command("python3", "/nonexistent/a b; echo INJECTED")],
                         capture_output=True, text=True).stdout
    assert "INJECTED" not in out.replace("@@", "")
