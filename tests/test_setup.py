"""edgeopt devices --setup: a bare device made ready offline, through the real CLI against real sshd devices.

The devices live in a network namespace with no route out (as lab boards often are): everything they install
comes from the host. Their Pythons are the ones at hand: Debian's /usr/bin/python3 (3.11, PEP 668
EXTERNALLY-MANAGED, no numpy: what Raspberry Pi OS bookworm has) and pyenv's 3.10, so the wheels chosen differ
by Python version. Wheels are cached on the host ($EDGEOPT_CACHE/wheels): downloaded once per machine.
"""
import json
import os
import sys
import time

import pytest

from edgeopt_testkit import edgeopt_cli

from edgeopt.devices import probes, provision

DEBIAN_PY = "/usr/bin/python3"
PY310 = "/root/.pyenv/versions/3.10.13/bin/python3"
PY311_NUMPY = "/root/.pyenv/versions/3.11.7/bin/python3"  # a Python with its own numpy, as Debian's python3-numpy

# Captured from a Raspberry Pi 5 (Raspberry Pi OS bookworm, 64-bit) by probes.setup_command, before any setup.
RPI5_SETUP = """@@uname
aarch64
@@glibc
glibc 2.36
@@python
{"python": "3.11.2", "executable": "/usr/bin/python3", "machine": "aarch64", "implementation": "CPython", \
"venv": true, "ensurepip": true, "numpy": "1.24.2", "externally_managed": true, "in_venv": false}
@@edgetpu
@@marker

@@venv
absent
@@end
"""


def js(p):
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


# ------------------------------------------------------------------------------------------- pure parsers

def test_parse_setup_on_captured_output():
    got = probes.parse_setup(RPI5_SETUP)
    assert got["arch"] == "aarch64" and got["glibc"] == (2, 36) and got["venv"] == "absent"
    assert got["marker"] is None and got["libedgetpu"] is None
    assert got["python"]["python"] == "3.11.2" and got["python"]["numpy"] == "1.24.2"
    assert got["python"]["externally_managed"] is True

    ready = RPI5_SETUP.replace("@@marker\n", '@@marker\n{"hash": "ab", "base": "python3"}') \
        .replace("absent", "importable")
    got = probes.parse_setup(ready)
    assert got["marker"] == {"hash": "ab", "base": "python3"} and got["venv"] == "importable"


def test_parse_setup_odd_devices():
    # musl (Alpine): no getconf answer; a marker cut short; a Python that is not there; a venv word not ours
    text = ("@@uname\narm64\n@@glibc\n@@python\nsh: 1: python3: not found\n@@python-failed 127\n"
            "@@marker\n{\"hash\": \"ab\n@@venv\nwhatever\n@@end\n")
    got = probes.parse_setup(text)
    assert got["arch"] == "aarch64" and got["glibc"] is None and got["marker"] is None
    assert got["python"]["error"].startswith("interpreter not found") and got["venv"] == "broken"
    assert probes.parse_glibc("glibc 2.31\n") == (2, 31) and probes.parse_glibc("") is None
    assert probes.parse_marker('["not", "ours"]') is None


def test_platform_tags_follow_glibc():
    tags = provision.platform_tags("aarch64", (2, 36))
    assert tags[0] == "manylinux_2_36_aarch64" and "manylinux_2_17_aarch64" in tags
    assert tags[-1] == "manylinux2014_aarch64" and "manylinux_2_16_aarch64" not in tags
    assert provision.platform_tags("x86_64", (2, 31))[0] == "manylinux_2_31_x86_64"


def test_hint_names_setup_and_a_command_that_works_on_the_pi():
    from edgeopt.devices.bench import install_hint
    from edgeopt.devices.inventory import Device

    dev = Device(name="pi-01", target="rpi5", workdir="~/.edgeopt")
    hint = install_hint("rpi5", "m.int8.tflite", dev)
    assert "edgeopt devices --setup --device pi-01" in hint
    # PEP 668: a venv, never pip into the system Python
    assert ("python3 -m venv --system-site-packages ~/.edgeopt/venv && ~/.edgeopt/venv/bin/python -m pip install "
            "ai-edge-litert") in hint and 'python = "~/.edgeopt/venv/bin/python"' in hint
    assert "sudo apt install libedgetpu1-std" in install_hint("coral-usb", "m_edgetpu.tflite", dev)
    assert "nvidia-jetpack" in install_hint("jetson-orin-nano", "m.int8.qdq.onnx", dev)


# ------------------------------------------------------------------------------------------- end to end

def _wheel_version(result: dict, dist: str) -> str:
    return next(w["file"].split("-")[1] for w in result["wheels"] if w["file"].startswith(dist + "-"))


@pytest.mark.ssh
def test_setup_makes_a_bare_device_ready_offline(lab, tflite_model):
    if not os.access(PY310, os.X_OK) or not os.access(DEBIAN_PY, os.X_OK):
        pytest.skip(f"needs {DEBIAN_PY} and {PY310}")
    ns = lab.netns()  # no route beyond the host: the devices have no internet
    bare, py310 = lab.start("pi-bare", netns=ns, target="rpi5"), lab.start("pi-310", netns=ns, target="rpi5")
    with_numpy = lab.start("pi-numpy", netns=ns, target="rpi5") if os.access(PY311_NUMPY, os.X_OK) else None
    # pi-bare: no python key (python3 on its PATH: Debian's, PEP 668); pi-310: pyenv's 3.10; pi-numpy: a
    # Python whose numpy the venv keeps (its wheel is not sent)
    inv = lab.inventory(per_device={"pi-bare": {"python": None}, "pi-310": {"python": PY310},
                                    "pi-numpy": {"python": PY311_NUMPY}})
    run = ["--runs", 1, "--min-seconds", 0, "--warmup", 0, "--warmup-seconds", 0, "--inventory", inv]

    # bare: the runtime is missing, and the hint says what works there
    p = edgeopt_cli("bench", tflite_model, "--device", "pi-bare", *run)
    assert p.returncode == 3 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.startswith("error: pi-bare: ") and "edgeopt devices --setup --device pi-bare" in p.stderr
    assert "-m venv --system-site-packages" in p.stderr

    before = {d.name: d.files() for d in (bare, py310)}
    p = edgeopt_cli("devices", "--setup", "--dry-run", "--inventory", inv, "--json")
    dry = {r["device"]: r for r in js(p)["devices"]}
    assert {d.name: d.files() for d in (bare, py310)} == before  # nothing changed on the devices
    assert dry["pi-bare"]["dry_run"] and not dry["pi-bare"]["changed"] and dry["pi-bare"]["bytes_sent"] == 0
    assert any("-m venv --system-site-packages" in a for a in dry["pi-bare"]["actions"])
    assert dry["pi-bare"]["found"]["externally_managed"] and dry["pi-bare"]["found"]["python"].startswith("3.11")

    t0 = time.perf_counter()
    p = edgeopt_cli("devices", "--setup", "--inventory", inv, "--json")
    first_s = time.perf_counter() - t0
    done = {r["device"]: r for r in js(p)["devices"]}
    for name, tag in (("pi-bare", "cp311"), ("pi-310", "cp310")):
        r = done[name]
        assert r["changed"] and r["bytes_sent"] > 1e6 and r["packages"] == ["ai-edge-litert"]
        assert r["python"] == f"{lab.devices[name].workdir}/venv/bin/python"
        litert = next(w["file"] for w in r["wheels"] if w["file"].startswith("ai_edge_litert-"))
        assert f"-{tag}-" in litert  # the wheel for that device's Python
    if with_numpy:
        r = done["pi-numpy"]
        assert r["found"]["numpy"] and not any(w["file"].startswith("numpy-") for w in r["wheels"]), r
        assert not os.path.exists(f"{with_numpy.workdir}/venv/lib/python3.11/site-packages/numpy")
    print(f"\nsetup of {len(done)} bare devices in parallel: {first_s:.1f} s, "
          f"{sum(r['bytes_sent'] for r in done.values()) / 2**20:.1f} MiB sent")

    # idempotent: nothing sent, nothing changed on the devices
    files = {d.name: d.files() for d in (bare, py310)}
    marker = os.stat(f"{bare.workdir}/venv/{probes.MARKER}").st_mtime_ns
    t0 = time.perf_counter()
    again = {r["device"]: r for r in js(edgeopt_cli("devices", "--setup", "--inventory", inv, "--json"))["devices"]}
    print(f"second setup: {time.perf_counter() - t0:.1f} s")
    assert all(not r["changed"] and r["bytes_sent"] == 0 for r in again.values()), again
    assert {d.name: d.files() for d in (bare, py310)} == files
    assert os.stat(f"{bare.workdir}/venv/{probes.MARKER}").st_mtime_ns == marker

    # bench now runs through the venv's ai_edge_litert, with no python key in the inventory
    for name in ("pi-bare", "pi-310") + (("pi-numpy",) if with_numpy else ()):
        r = js(edgeopt_cli("bench", tflite_model, "--device", name, *run, "--json"))
        assert r["runtime"]["name"] == "ai_edge_litert"
        assert r["runtime"]["version"] == _wheel_version(done[name], "ai_edge_litert")
    probe = js(edgeopt_cli("devices", "--device", "pi-bare", "--inventory", inv, "--json"))["devices"][0]
    assert probe["python"]["executable"] == f"{bare.workdir}/venv/bin/python"
    assert "ai_edge_litert" in probe["runtimes"] and not any("TFLite" in w for w in probe["warnings"])
    # another interpreter named in the inventory: the venv made from python3 is no longer used
    other = lab.inventory(path=lab.base / "other.toml", per_device={"pi-bare": {"python": PY310}})
    p = edgeopt_cli("bench", tflite_model, "--device", "pi-bare", *run[:-1], other)
    assert p.returncode == 3 and "edgeopt devices --setup --device pi-bare" in p.stderr, p.stderr  # no numpy there
    # the system Python was never touched
    check = "import importlib.util as u, sys; sys.exit(u.find_spec('ai_edge_litert') is not None)"
    assert os.spawnv(os.P_WAIT, DEBIAN_PY, [DEBIAN_PY, "-c", check]) == 0


@pytest.mark.ssh
def test_setup_without_venv_says_apt_install(lab, tmp_path):
    """Debian without python3-venv: one error line naming the package, exit 3, nothing left behind."""
    dev = lab.start("pi-novenv", target="rpi5")
    py = tmp_path / "python3"
    py.write_text('#!/bin/sh\nif [ "$1" = -m ] && [ "$2" = venv ]; then\n'
                  '  echo "The virtual environment was not created successfully because ensurepip is not\n'
                  'available.  On Debian/Ubuntu systems, you need to install the python3-venv package" >&2\n'
                  f'  exit 1\nfi\nexec {sys.executable} "$@"\n')
    py.chmod(0o755)
    inv = lab.inventory(python=str(py))
    p = edgeopt_cli("devices", "--setup", "--inventory", inv)
    assert p.returncode == 3 and "Traceback" not in p.stderr
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "sudo apt install python3-venv" in errors[0], p.stderr
    assert not os.path.exists(f"{dev.workdir}/venv")


def test_setup_usage_errors(tmp_path):
    p = edgeopt_cli("devices", "--dry-run", "--local")
    assert p.returncode == 2 and p.stderr.startswith("error: --dry-run goes with --setup")
    p = edgeopt_cli("devices", "--setup", "--local")
    assert p.returncode == 2 and "error: --setup is for inventory devices" in p.stderr
