"""What a device is and what it can run: one shell command, then pure parsers of its output.

The command prints sections (``@@name`` lines) holding ``uname -m``, ``/proc/device-tree/model``,
``/etc/nv_tegra_release``, a Python probe (version, runtimes and their versions, onnxruntime providers),
where ``trtexec`` and ``libedgetpu`` are, and ``df -Pk`` of the workdir (or its nearest existing parent:
probing writes nothing). :func:`parse` turns that into a dict; :func:`assess` says where the device does
not fit its declared target. The parsers are tested on recorded real outputs (tests/data/probes/).
"""
from __future__ import annotations

import json
import re

from edgeopt import targets
from edgeopt.results import sanitize
from edgeopt.devices.connection import q
from edgeopt.runtime import PYTHON_FLOOR

__all__ = ["command", "parse", "parse_sections", "parse_uname", "parse_dt_model", "parse_tegra_release",
           "parse_python", "parse_df", "parse_lines", "assess", "probe", "setup_command", "parse_glibc",
           "parse_setup", "parse_marker", "VENV", "MARKER"]

TRTEXEC_PATHS = ("/usr/src/tensorrt/bin/trtexec", "/usr/local/tensorrt/bin/trtexec")

_PY_PROBE = r"""
import json, platform, sys
from importlib import util
try:
    from importlib import metadata
except ImportError:
    metadata = None
def ver(*dists):
    for d in dists:
        try:
            return metadata.version(d)
        except Exception:
            pass
r = {"python": platform.python_version(), "executable": sys.executable, "machine": platform.machine(), "modules": {}}
for mod, dists in (("numpy", ("numpy",)), ("ai_edge_litert", ("ai-edge-litert", "ai-edge-litert-nightly")),
                   ("tflite_runtime", ("tflite-runtime",)), ("tensorrt", ("tensorrt",)),
                   ("pycoral", ("pycoral",))):
    try:
        found = util.find_spec(mod) is not None
    except Exception:
        found = False
    if found:
        r["modules"][mod] = {"version": ver(*dists)}
try:
    import onnxruntime
    r["modules"]["onnxruntime"] = {"version": onnxruntime.__version__,
                                   "providers": list(onnxruntime.get_available_providers())}
except Exception:
    pass
print(json.dumps(r))
"""


def command(python: str = "python3", workdir: str = "~/.edgeopt", trtexec: str | None = None) -> str:
    """The probe as one shell command line (every user-given word quoted)."""
    wd = _shell_path(workdir)
    trt_candidates = " ".join(q([p]) for p in ([trtexec] if trtexec else []) + list(TRTEXEC_PATHS))
    return "; ".join([
        "echo @@uname", "uname -m",
        "echo @@model", "{ tr -d '\\000' < /proc/device-tree/model; } 2>/dev/null", "echo",
        "echo @@tegra", "cat /etc/nv_tegra_release 2>/dev/null",
        "echo @@python", f"{q([python])} -c {q([_PY_PROBE])} 2>&1 || echo \"@@python-failed $?\"",
        "echo @@trtexec",
        f"for t in $(command -v trtexec 2>/dev/null) {trt_candidates}; do if [ -x \"$t\" ]; then echo \"$t\"; break; fi; done",
        "echo @@edgetpu",
        "{ ldconfig -p 2>/dev/null | grep -o '/[^ ]*libedgetpu[^ ]*'; ls /usr/lib/*/libedgetpu.so.1* "
        "/usr/lib/libedgetpu.so.1* /usr/local/lib/libedgetpu* 2>/dev/null; } | sort -u",
        "echo @@df", f"d={wd}; while [ ! -e \"$d\" ]; do d=$(dirname \"$d\"); done; df -Pk \"$d\" | tail -n 1",
        "echo @@end",
    ])


# ------------------------------------------------------------------------------------ setup (--setup)

VENV = "venv"                        # the device's venv, under its workdir
MARKER = "edgeopt-setup.json"        # in the venv, written last by `devices --setup`: what it holds
MARKER_CAP = 65536                   # bytes of the marker read back (the device's words are bounded)

# What `devices --setup` needs to know of the base interpreter. Runs on any Python 3 (no f-strings, no walrus):
# an old one must still say what it is, so the error can name it.
_SETUP_PY = r"""
import json, os, platform, sys, sysconfig
from importlib import util
try:
    from importlib import metadata
except ImportError:
    metadata = None
def have(mod):
    try:
        return util.find_spec(mod) is not None
    except Exception:
        return False
def ver(dist):
    try:
        return metadata.version(dist)
    except Exception:
        return None
stdlib = sysconfig.get_paths().get("stdlib") or ""
print(json.dumps({"python": platform.python_version(), "executable": sys.executable, "machine": platform.machine(),
                  "implementation": platform.python_implementation(), "venv": have("venv"),
                  "ensurepip": have("ensurepip"), "numpy": ver("numpy"),
                  "externally_managed": os.path.isfile(os.path.join(stdlib, "EXTERNALLY-MANAGED")),
                  "in_venv": sys.prefix != getattr(sys, "base_prefix", sys.prefix)}))
"""


def setup_command(python: str, workdir: str, modules=()) -> str:
    """The probe of ``devices --setup`` as one shell command: CPU, glibc, the base Python (version, venv and
    ensurepip, numpy, PEP 668), the marker of an earlier setup and whether ``modules`` import from its venv.
    ``workdir`` is absolute (``Connection.expand``)."""
    venv = f"{workdir.rstrip('/')}/{VENV}"
    vpy, marker = q([f"{venv}/bin/python"]), q([f"{venv}/{MARKER}"])
    imports = "import " + ", ".join(modules) if modules else "pass"
    return "; ".join([
        "echo @@uname", "uname -m",
        "echo @@glibc", "getconf GNU_LIBC_VERSION 2>/dev/null",
        "echo @@python", f"{q([python])} -c {q([_SETUP_PY])} 2>&1 || echo \"@@python-failed $?\"",
        "echo @@edgetpu",
        "{ ldconfig -p 2>/dev/null | grep -o '/[^ ]*libedgetpu[^ ]*'; ls /usr/lib/*/libedgetpu.so.1* "
        "/usr/lib/libedgetpu.so.1* /usr/local/lib/libedgetpu* 2>/dev/null; } | sort -u | head -n 5",
        "echo @@marker", f"head -c {MARKER_CAP} {marker} 2>/dev/null", "echo",
        "echo @@venv",
        f"if [ -x {vpy} ]; then if {vpy} -c {q([imports])} >/dev/null 2>&1; then echo importable; "
        f"else echo broken; fi; else echo absent; fi",
        "echo @@end",
    ])


def parse_glibc(text: str) -> tuple[int, int] | None:
    """``getconf GNU_LIBC_VERSION`` (``glibc 2.36``) -> (2, 36); None on musl or anything else."""
    m = re.search(r"glibc\s+(\d+)\.(\d+)", text or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def parse_marker(text: str) -> dict | None:
    """The setup marker's JSON object, or None (absent, cut short, not ours)."""
    try:
        data = json.loads((text or "").strip() or "null")
    except ValueError:
        return None
    return data if isinstance(data, dict) and isinstance(data.get("hash"), str) else None


def parse_setup(text: str) -> dict:
    """The output of :func:`setup_command` -> {'arch', 'glibc', 'python', 'libedgetpu', 'marker', 'venv'}:
    ``python`` as :func:`parse_python` gives it, ``venv`` one of 'absent', 'broken', 'importable'."""
    sec = parse_sections(text)
    venv = (parse_lines(sec.get("venv", "")) or ["absent"])[0]
    tpu = parse_lines(sec.get("edgetpu", ""))
    return {"arch": parse_uname(sec.get("uname", "")), "glibc": parse_glibc(sec.get("glibc", "")),
            "python": parse_python(sec.get("python", "")), "libedgetpu": tpu[0] if tpu else None,
            "marker": parse_marker(sec.get("marker", "")),
            "venv": venv if venv in ("absent", "broken", "importable") else "broken"}


def _shell_path(path: str) -> str:
    """A quoted path for the shell, with a leading ~ expanded by the remote shell."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + q([path[2:]])
    return q([path])


# --------------------------------------------------------------------------------------------- parsers

def parse_sections(text: str) -> dict[str, str]:
    """Split '@@name' marked output of a probe command into {name: text} (shared with edgeopt.devices.conditions)."""
    out, cur, buf = {}, None, []
    for line in (text or "").splitlines():
        m = re.fullmatch(r"@@([a-z_]+)", line.strip())
        if m:
            if cur:
                out[cur] = "\n".join(buf).strip("\n")
            cur, buf = m.group(1), []
        elif cur:
            buf.append(line)
    if cur and cur != "end":
        out[cur] = "\n".join(buf).strip("\n")
    return out


def parse_uname(text: str) -> str | None:
    """``uname -m`` -> machine, normalised (arm64 -> aarch64)."""
    s = (text or "").strip().splitlines()
    if not s:
        return None
    m = s[0].strip()
    return {"arm64": "aarch64", "amd64": "x86_64"}.get(m, m) or None


def parse_dt_model(text) -> str | None:
    """``/proc/device-tree/model`` (NUL-terminated) -> 'Raspberry Pi 5 Model B Rev 1.0'."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    s = (text or "").replace("\x00", "").strip()
    return s or None


# L4T release -> JetPack, from NVIDIA's JetPack archive (developer.nvidia.com/embedded/jetpack-archive).
_JETPACK = {"36.4.3": "6.2", "36.4.0": "6.1", "36.3.0": "6.0", "35.6.0": "5.1.4", "35.5.0": "5.1.3",
            "35.4.1": "5.1.2", "35.3.1": "5.1.1", "35.2.1": "5.1", "35.1.0": "5.0.2", "32.7.4": "4.6.4",
            "32.7.3": "4.6.3", "32.7.2": "4.6.2", "32.7.1": "4.6.1", "32.6.1": "4.6"}


def parse_tegra_release(text: str) -> dict | None:
    """``# R36 (release), REVISION: 3.0, GCID: ..., BOARD: generic, EABI: aarch64, DATE: ...`` -> fields."""
    for line in (text or "").splitlines():
        m = re.match(r"#\s*R(\d+)\s*\((\w+)\)\s*,\s*REVISION:\s*([\d.]+)(.*)", line.strip())
        if not m:
            continue
        major, kind, rev, rest = m.groups()
        fields = dict((k.strip().lower(), v.strip()) for k, v in re.findall(r"([A-Z]+):\s*([^,]+)", rest))
        parts = rev.split(".")
        l4t = ".".join([major] + parts + ["0"] * (2 - len(parts)))
        return {"l4t": l4t, "release": f"R{major}", "kind": kind, "revision": rev, "board": fields.get("board"),
                "eabi": fields.get("eabi"), "gcid": fields.get("gcid"), "date": fields.get("date"),
                "jetpack": _JETPACK.get(l4t)}
    return None


def parse_python(text: str) -> dict:
    """The Python probe's JSON line; ``{"error": ...}`` when the interpreter is missing or broken."""
    text = (text or "").strip()
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                break
    m = re.search(r"@@python-failed (\d+)", text)
    rc = int(m.group(1)) if m else None
    first = next((ln for ln in text.splitlines() if ln and not ln.startswith("@@")), "")
    if rc == 127:
        return {"error": f"interpreter not found ({first.strip() or 'exit 127'})"}
    return {"error": first.strip() or f"python probe failed (exit {rc})"}


def parse_df(text: str) -> dict | None:
    """Last line of ``df -Pk PATH`` -> {'free_bytes', 'total_bytes', 'mount'}."""
    lines = [ln for ln in (text or "").splitlines() if ln.strip()]
    if not lines:
        return None
    parts = lines[-1].split()
    if len(parts) < 6 or not parts[3].isdigit():
        return None
    return {"total_bytes": int(parts[1]) * 1024, "free_bytes": int(parts[3]) * 1024, "mount": parts[5]}


def parse_lines(text: str) -> list[str]:
    return [ln.strip() for ln in (text or "").splitlines() if ln.strip()]


def parse(text: str) -> dict:
    """The whole probe output -> {'arch', 'model', 'tegra', 'python', 'runtimes', 'trtexec', 'libedgetpu', 'disk'}."""
    sec = parse_sections(text)
    py = parse_python(sec.get("python", ""))
    mods = py.get("modules", {}) if "error" not in py else {}
    runtimes = {}
    for name in ("ai_edge_litert", "tflite_runtime", "onnxruntime", "tensorrt"):
        if name in mods:
            runtimes[name] = mods[name]
    trt = parse_lines(sec.get("trtexec", ""))
    tpu = parse_lines(sec.get("edgetpu", ""))
    if trt:
        runtimes["trtexec"] = {"path": trt[0]}
    if tpu:
        runtimes["libedgetpu"] = {"path": tpu[0]}
    return {
        "arch": parse_uname(sec.get("uname", "")),
        "model": parse_dt_model(sec.get("model", "")),
        "tegra": parse_tegra_release(sec.get("tegra", "")),
        "python": {k: v for k, v in py.items() if k != "modules"},
        "numpy": mods.get("numpy", {}).get("version") if "numpy" in mods else None,
        "runtimes": runtimes,
        "disk": parse_df(sec.get("df", "")),
    }


# ---------------------------------------------------------------------------------------------- assess

def _older_than_floor(version) -> bool:
    """Whether a probed ``platform.python_version()`` (``"3.6.9"``) is below the runner's floor."""
    try:
        return tuple(int(part) for part in str(version).split(".")[:2]) < PYTHON_FLOOR
    except ValueError:  # "3.13.0rc1" splits fine; anything else is not ours to judge
        return False


def assess(info: dict, target: str | None) -> list[str]:
    """Warnings where the probed device does not fit its declared target (empty list: it fits)."""
    warnings = []
    py = info.get("python") or {}
    if py.get("error"):
        warnings.append(f"python: {py['error']}")
    elif _older_than_floor(py.get("python")):
        warnings.append(f"python {py['python']} ({py.get('executable') or 'python'}): the runner needs Python "
                        f"{'.'.join(map(str, PYTHON_FLOOR))} or newer; set python = \"/path/to/python3\" for the "
                        f"device in the inventory")
    elif info.get("numpy") is None:
        warnings.append("numpy is missing on the device (the runner needs it): edgeopt devices --setup "
                        "installs it with the runtime")
    if not target:
        return warnings
    try:
        t = targets.get(target)
    except KeyError:
        return warnings + [f"unknown target {target!r}"]
    arch, model, rts = info.get("arch"), info.get("model"), info.get("runtimes") or {}
    # what is checked comes from the profile's fields (board_probe, board_models, runtime), not its family
    if arch and t.cpu_arch and arch != t.cpu_arch and not t.any_host_arch:
        warnings.append(f"declared {t.name} ({t.cpu_arch}) but the device is {arch}")
    if t.board_probe == "raspberrypi":
        if model and "Raspberry Pi" not in model:
            warnings.append(f"declared {t.name} but the board is {model!r}")
        elif model and t.board_models and not any(w in model for w in t.board_models):
            warnings.append(f"declared {t.name} but the board is {model!r}")
        elif not model and arch == t.cpu_arch:
            warnings.append(f"declared {t.name} but no device-tree model says so")
    if t.board_probe == "tegra":
        if info.get("tegra") is None and not (model and "Jetson" in model):
            warnings.append(f"declared {t.name} but this is not a Jetson (no /etc/nv_tegra_release)")
        elif model and "Jetson" in model and t.board_models and not any(w in model for w in t.board_models):
            warnings.append(f"declared {t.name} but the board is {model!r}")
    if t.runtime == "tensorrt":
        if "trtexec" not in rts:
            warnings.append("no TensorRT (trtexec): ONNX artifacts will run on onnxruntime instead")
        if "onnxruntime" not in rts and "trtexec" not in rts:
            warnings.append("no ONNX runtime at all: install JetPack's TensorRT or onnxruntime-gpu")
    if t.formats and t.formats[0].startswith("tflite"):
        if not ({"ai_edge_litert", "tflite_runtime"} & set(rts)):
            warnings.append("no TFLite runtime (ai_edge_litert or tflite_runtime): edgeopt devices --setup "
                            "installs one into the device's venv")
    if t.delegate == "edgetpu" and "libedgetpu" not in rts:
        warnings.append("no libedgetpu: install libedgetpu1-std from the Coral apt repository")
    disk = info.get("disk")
    if disk and disk["free_bytes"] < 200 * 1024 * 1024:
        warnings.append(f"only {disk['free_bytes'] // (1024 * 1024)} MiB free in the workdir's file system")
    return warnings


def probe(conn, python: str | None = None, workdir: str | None = None, target: str | None = None) -> dict:
    """Run the probe on a connection; returns the parsed info plus ``warnings``."""
    dev = conn.device
    res = conn.run(command(python or dev.python, workdir or dev.workdir, dev.trtexec), timeout=60)
    info = sanitize.result(parse(res.out))  # the device's words are data: no control characters
    info["warnings"] = assess(info, target if target is not None else dev.target)
    return info
