"""Device conditions: parsers on recorded outputs of the real tools, the clean/not-clean verdict, and a real
namespace device put under CPU load by the test (busy loops, stopped after)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeopt.devices import conditions
from edgeopt_testkit import edgeopt_cli

DATA = Path(__file__).parent / "data" / "conditions"


def read(name):
    return (DATA / name).read_text()


def test_pi5_idle():
    s = conditions.parse(read("pi5-idle.txt"))
    assert s["facts"] == {"kernel": "Linux 6.6.51+rpt-rpi-2712", "arch": "aarch64", "ncpu": 4,
                          "model": "Raspberry Pi 5 Model B Rev 1.0"}
    assert s["cpufreq"]["governors"] == ["ondemand"] and len(s["cpufreq"]["cpus"]) == 4
    assert s["cpufreq"]["cpus"][0] == {"cpu": "cpu0", "governor": "ondemand", "cur_mhz": 1500.0, "min_mhz": 1500.0,
                                       "max_mhz": 2400.0, "hw_max_mhz": 2400.0}
    assert s["thermal"] == {"zones": [{"zone": "thermal_zone0", "type": "cpu-thermal", "temp_c": 48.3}],
                            "max_c": 48.3, "hottest": "cpu-thermal"}
    assert s["loadavg"] == {"1m": 0.08, "5m": 0.12, "15m": 0.09, "running": 1, "threads": 233}
    assert s["pi"] == {"temp_c": 48.3, "throttled": {"raw": "0x0", "value": 0, "now": [], "since_boot": []}}
    assert s["jetson"] is None
    v = conditions.assess(s, s, {"other_busy": 0.01, "ncpu": 4})
    assert v["clean"] is True and v["reasons"] == []
    assert any("governor ondemand" in w for w in v["warnings"])


def test_throttled_bits():
    t = conditions.parse_throttled("throttled=0x50005")
    assert t["value"] == 0x50005
    assert t["now"] == ["under-voltage detected", "currently throttled"]
    assert t["since_boot"] == ["under-voltage has occurred", "throttling has occurred"]
    assert conditions.parse_throttled("throttled=0x0")["now"] == []
    t = conditions.parse_throttled(read("pi5-throttled-after.vcgencmd.txt"))
    assert t["now"] == ["soft temperature limit active"] and t["since_boot"] == ["soft temperature limit has occurred"]
    assert conditions.parse_throttled("VCHI initialization failed") is None
    assert conditions.parse_vcgencmd_temp("temp=48.3'C") == 48.3
    assert conditions.parse_vcgencmd_temp("temp=-1.5'C") == -1.5


def test_pi4_throttled_and_hot_is_not_clean():
    s = conditions.parse(read("pi4-throttled.txt"))
    assert s["pi"]["temp_c"] == 83.2 and s["thermal"]["max_c"] == 83.224
    v = conditions.assess(s, s)
    assert v["clean"] is False
    assert any("under-voltage detected, currently throttled" in r and "0x50005" in r for r in v["reasons"])
    assert any("83.2 C" in r and ">= 80 C" in r for r in v["reasons"])


def test_throttling_that_starts_during_the_run():
    before = conditions.parse(read("pi5-idle.txt"))
    after = conditions.parse(read("pi5-idle.txt").replace("throttled=0x0",
                                                          read("pi5-throttled-after.vcgencmd.txt").strip()))
    v = conditions.assess(before, after)
    assert v["clean"] is False
    assert any(r.startswith("after the run: Raspberry Pi soft temperature limit active") for r in v["reasons"])
    assert any(r.startswith("during the run: soft temperature limit has occurred") and "0x0 -> 0x80008" in r
               for r in v["reasons"])
    # sticky bits from before the run are only a warning
    old = conditions.parse(read("pi5-idle.txt").replace("throttled=0x0", "throttled=0x50000"))
    v = conditions.assess(old, old)
    assert v["clean"] is True and any("since boot: under-voltage has occurred" in w for w in v["warnings"])


def test_orin_nano():
    s = conditions.parse(read("orin-nano.txt"))
    assert s["facts"]["ncpu"] == 6 and s["facts"]["model"].startswith("NVIDIA Jetson Orin Nano")
    assert s["cpufreq"]["capped"] == [f"cpu{i}" for i in range(6)]  # 15W mode: 1497.6 of 1728 MHz
    assert s["thermal"]["max_c"] == 47.5 and len(s["thermal"]["zones"]) == 9
    j = s["jetson"]
    assert j["nvpmodel"] == {"mode": "15W", "id": 0}
    clk = j["clocks"]
    assert clk["soc"] == "tegra234" and clk["machine"].startswith("NVIDIA Jetson Orin Nano")
    assert len(clk["cpus"]) == 6 and clk["cpus"][0] == {"cpu": "cpu0", "online": True, "governor": "schedutil",
                                                        "min_khz": 729600, "max_khz": 1497600, "cur_khz": 1497600}
    assert clk["gpu"] == {"min_hz": 306000000, "max_hz": 612000000, "cur_hz": 306000000}
    assert clk["emc"]["max_hz"] == 2133000000 and clk["power_mode"] == "15W" and clk["max_clocks"] is False
    ts = j["tegrastats"]
    assert ts["ram_used_mb"] == 2449 and ts["ram_total_mb"] == 7620
    assert ts["cpu"][:2] == [{"load": 2, "mhz": 1510}, {"load": 0, "mhz": 1510}] and ts["cpu"][4:] == [None, None]
    assert ts["gpu_load"] == 0 and ts["temps"]["cpu"] == 47.5 and ts["temps"]["tj"] == 47.5
    assert ts["power_mw"]["VDD_IN"] == [4761, 4778]
    v = conditions.assess(s, s, {"other_busy": 0.02, "ncpu": 6})
    assert v["clean"] is True
    assert any("jetson_clocks is not applied" in w for w in v["warnings"])


def test_jetson_clocks_pinned_and_other_tools():
    clk = conditions.parse_jetson_clocks(read("jetson_clocks-orin-nano-maxn.txt"))
    assert clk["max_clocks"] is True and all(c["online"] for c in clk["cpus"]) and len(clk["cpus"]) == 6
    assert clk["power_mode"] == "MAXN_SUPER"
    assert conditions.parse_nvpmodel(read("nvpmodel-q-maxn-super.txt")) == {"mode": "MAXN_SUPER", "id": 2}
    x = conditions.parse_tegrastats(read("tegrastats-xavier.txt"))
    assert x["cpu"] == [{"load": 2, "mhz": 1420}, {"load": 1, "mhz": 1420}] and x["gpu_load"] == 23
    assert x["temps"] == {"ao": 40.0, "gpu": 45.5, "pmic": 50.0}
    assert conditions.parse_jetson_clocks("") is None and conditions.parse_tegrastats("") is None
    assert conditions.parse_nvpmodel("") is None


def test_this_vm_recorded():
    s = conditions.parse(read("x86_64-lab.txt"))
    assert s["facts"]["arch"] == "x86_64" and s["facts"]["ncpu"] == 2 and s["facts"]["model"] is None
    assert s["cpufreq"]["cpus"] == [] and s["thermal"]["max_c"] is None
    assert s["stat"]["total"] > s["stat"]["busy"] > 0 and s["stat"]["procs_running"] == 6
    v = conditions.assess(s, s)  # load average 6.08 on 2 CPUs
    assert v["clean"] is False and "1-minute load average 6.08 on 2 CPUs (3.04 per CPU > 0.5)" in v["reasons"][0]
    assert conditions.assess(s, s, thresholds=conditions.Thresholds(max_load_per_core=4))["clean"] is True


def test_thermal_parser_edge_cases():
    t = conditions.parse_thermal("thermal_zone0 -274000 bogus\nthermal_zone1 45 acpitz\nthermal_zone2 - x\n"
                                 "thermal_zone3 51250 soc thermal")
    assert t["zones"] == [{"zone": "thermal_zone1", "type": "acpitz", "temp_c": 45.0},
                          {"zone": "thermal_zone3", "type": "soc thermal", "temp_c": 51.25}]


def test_the_command_runs_here_and_writes_nothing(tmp_path):
    p = subprocess.run(["/bin/sh", "-c", conditions.command()], capture_output=True, text=True, cwd=tmp_path,
                       timeout=30)
    s = conditions.parse(p.stdout)
    assert s["facts"]["ncpu"] == os.cpu_count() and s["loadavg"]["1m"] >= 0 and s["stat"]["total"] > 0
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ a real device under load

def busy_loops(n):
    """n CPU-bound processes (own session each, so they can be killed by pid)."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True) for _ in range(n)]


def bench(inv, tflite, history):
    p = edgeopt_cli("bench", tflite, "--device", "pi-ns", "--inventory", inv, "--runs", 100, "--min-seconds", 1.5,
                    "--threads", 1, "--json", "--no-samples", "--history", history, timeout=300)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


@pytest.mark.ssh
def test_device_under_injected_cpu_load_is_flagged(lab, tflite_model, tmp_path):
    lab.start("pi-ns", netns=lab.netns())
    inv = lab.inventory()
    hist = tmp_path / "h.sqlite"
    quiet = bench(inv, tflite_model, hist)
    loops = busy_loops(2 * (os.cpu_count() or 1))
    try:
        time.sleep(1.0)
        loaded = bench(inv, tflite_model, hist)
        # the same device, the same artifact: with the busy loops the gate must fail
        p = edgeopt_cli("bench", tflite_model, "--device", "pi-ns", "--inventory", inv, "--runs", 50, "--min-seconds",
                        0.5, "--threads", 1, "--require-clean", "--history", hist, "--junit", tmp_path / "j.xml",
                        timeout=300)
    finally:
        for pr in loops:
            os.killpg(pr.pid, signal.SIGKILL)
            pr.wait()
    c = loaded["conditions"]
    assert loaded["clean"] is False and c["clean"] is False
    assert any(r.startswith("loaded during the run: other processes used") for r in c["reasons"]), c["reasons"]
    assert c["cpu_during"]["other_busy"] > 0.4          # the loops took well over 40% of all CPUs
    assert c["cpu_during"]["other_busy"] > quiet["conditions"]["cpu_during"]["other_busy"]
    assert c["cpu_during"]["ncpu"] == os.cpu_count()
    assert c["before"]["facts"]["ncpu"] == os.cpu_count() and c["after"]["loadavg"]["1m"] >= 0
    assert p.returncode == 1 and "device conditions not clean" in p.stderr
    import xml.etree.ElementTree as ET
    case = ET.parse(tmp_path / "j.xml").getroot().find("testsuite/testcase")
    assert case.get("name") == "pi-ns" and "not clean" in case.find("failure").text
    # the stored results keep the verdict
    res = edgeopt_cli("results", "--json", "--history", hist)
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert [r["clean"] for r in rows][:2] == [False, False]
