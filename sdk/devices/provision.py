"""``edgeopt devices --setup``: make a device ready to run its target's artifacts, with no network on the device.

Boards as they are: Raspberry Pi OS refuses ``pip install`` into the system Python (PEP 668), JetPack's
TensorRT lives in the system Python, and lab networks often have no internet. So the host downloads the wheels
that fit the device (its CPU, glibc and Python, as probed), keeps them in a cache
(``$EDGEOPT_CACHE/wheels/linux_<arch>``), pushes them over SFTP (content-addressed, see
:mod:`edgeopt.devices.push`), and the device installs them offline into ``<workdir>/venv``, made with
``--system-site-packages`` from the device's own Python so Debian's numpy and JetPack's TensorRT stay visible.
What to install is the target profile's ``setup_packages`` / ``setup_optional``.

The venv's marker (``<workdir>/venv/edgeopt-setup.json``, written last) records the base interpreter and a
hash of the wheel set; :func:`interpreter` makes bench, deploy and the probe use the venv's Python when it was
made from the interpreter the inventory names (``python``, default ``python3``): the inventory is never
rewritten. A second setup with the same wheels and an importable runtime does nothing and sends nothing.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace

from edgeopt import targets
from edgeopt.devices import probes
from edgeopt.devices.connection import Connection, q
from edgeopt.devices.inventory import Device
from edgeopt.devices.push import push
from edgeopt.errors import DeviceError, UsageError
from edgeopt.hashing import sha256_file
from edgeopt.results import sanitize

__all__ = ["Plan", "wheel_cache", "platform_tags", "resolve_wheels", "setup_device", "interpreter",
           "with_interpreter", "venv_paths", "MODULES"]

# The import name of each package a profile may name (a fact about the package, not the board).
MODULES = {"ai-edge-litert": "ai_edge_litert", "tflite-runtime": "tflite_runtime", "onnxruntime": "onnxruntime",
           "onnxruntime-gpu": "onnxruntime", "numpy": "numpy"}
_PIP_TIMEOUT = 900  # a slow mirror and tens of MB of wheels
MARKER_VERSION = 1


def venv_paths(workdir: str) -> tuple[str, str, str]:
    """(venv, its python, its marker) under an absolute ``workdir``."""
    venv = f"{workdir.rstrip('/')}/{probes.VENV}"
    return venv, f"{venv}/bin/python", f"{venv}/{probes.MARKER}"


# ------------------------------------------------------------------------------------- which interpreter

def interpreter(conn: Connection, device: Device | None = None) -> str:
    """The Python edgeopt runs on the device: the venv ``devices --setup`` made from the device's configured
    interpreter when it is there and complete (its marker), else the configured interpreter itself."""
    device = device or conn.device
    if device.local:
        return device.python
    _venv, vpy, marker = venv_paths(conn.expand(device.workdir))
    res = conn.run(f"[ -x {q([vpy])} ] && head -c {probes.MARKER_CAP} {q([marker])}", timeout=30)
    data = probes.parse_marker(res.out) if res.rc == 0 else None
    if data and data.get("base") == device.python and data.get("python") == vpy:
        return vpy
    return device.python


def with_interpreter(conn: Connection, device: Device | None = None) -> Device:
    """``device`` with ``python`` set to :func:`interpreter`'s answer."""
    device = device or conn.device
    python = interpreter(conn, device)
    return device if python == device.python else replace(device, python=python)


# -------------------------------------------------------------------------------------------- host wheels

def wheel_cache(arch: str) -> str:
    """The host's wheel cache for one CPU architecture: ``$EDGEOPT_CACHE/wheels/linux_<arch>`` (default
    ``~/.cache/edgeopt``), kept between runs so a lab is set up from it without the index."""
    base = os.environ.get("EDGEOPT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "edgeopt")
    return os.path.join(base, "wheels", f"linux_{arch}")


def platform_tags(arch: str, glibc: tuple[int, int]) -> list[str]:
    """The manylinux tags a glibc ``(2, 36)`` system on ``arch`` runs, newest first (PEP 600; manylinux2014 is
    glibc 2.17, the oldest any current wheel targets)."""
    major, minor = glibc
    tags = [f"manylinux_{major}_{m}_{arch}" for m in range(minor, 16, -1)]
    return tags + [f"manylinux2014_{arch}"] if minor >= 17 else tags


def _dist_of(filename: str) -> tuple[str, str]:
    """(normalised distribution name, version) of a wheel file name."""
    name, version = filename.split("-")[:2]
    return re.sub(r"[-_.]+", "-", name).lower(), version


def _pip_download(reqs: list[str], tags: list[str], pyver: str, cache: str, offline: bool) -> tuple[list, str]:
    """Resolve ``reqs`` for the device with the host's pip: (wheel paths in the cache, '') or ([], why not)."""
    os.makedirs(cache, exist_ok=True)
    # a fresh folder per resolution: what pip puts there is exactly this wheel set
    tmp = tempfile.mkdtemp(prefix=".download-", dir=cache)
    try:
        argv = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-input", "-q",
                "--only-binary=:all:", "--python-version", pyver, "--implementation", "cp",
                *[a for t in tags for a in ("--platform", t)], "--find-links", cache, "-d", tmp, *reqs]
        if offline:
            argv.insert(4, "--no-index")
        try:
            got = subprocess.run(argv, capture_output=True, text=True, timeout=_PIP_TIMEOUT)
        except subprocess.TimeoutExpired:
            return [], f"pip download took over {_PIP_TIMEOUT} s"
        except OSError as e:
            return [], f"cannot run pip on this host: {e}"
        if got.returncode != 0:
            lines = [ln for ln in got.stderr.splitlines() if ln.strip() and not ln.startswith("WARNING")]
            return [], (lines[-1].strip() if lines else f"pip download exited {got.returncode}")[:300]
        paths = []
        for name in sorted(os.listdir(tmp)):
            if not name.endswith(".whl"):
                continue
            dest = os.path.join(cache, name)
            if not os.path.isfile(dest) or os.path.getsize(dest) != os.path.getsize(os.path.join(tmp, name)):
                os.replace(os.path.join(tmp, name), dest)
            paths.append(dest)
        return paths, ""
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_wheels(packages, optional, arch: str, glibc: tuple[int, int], pyver: str, have: dict,
                   offline_only: bool = False) -> tuple[list[str], list[str], list[str], str | None]:
    """The wheels for ``packages`` (all needed) plus each of ``optional`` that has a wheel, for Python ``pyver``
    ("3.11") on ``arch`` with ``glibc``: (wheel paths, optional packages left out, notes, why ``packages``
    have no wheel or None).

    ``have`` ({dist: version}) is what the device's Python already has (Debian's numpy): pinned, so that the
    set agrees with it and its wheel need not be sent; when nothing fits the pin, the venv gets its own. The
    cache is tried first without the index (an offline host; the same answer as last time), then the index.
    ``offline_only``: the cache alone (``--dry-run``)."""
    cache, tags = wheel_cache(arch), platform_tags(arch, glibc)
    pins = [f"{dist}=={version}" for dist, version in sorted(have.items()) if version]
    notes, why = [], [None]

    def attempt(reqs):
        # the device's own numpy first, from the cache, then from the index; only then without it
        for pinned in ((True, False) if pins else (False,)):
            for offline in ((True,) if offline_only else (True, False)):
                paths, why[0] = _pip_download(reqs + (pins if pinned else []), tags, pyver, cache, offline)
                if paths:
                    if pins and not pinned:
                        notes.append(f"the device's {', '.join(pins)} does not fit: the venv gets its own")
                    return paths
        return []

    if not packages and not optional:
        return [], [], notes, None
    paths = attempt(list(packages) + list(optional))
    if paths:
        return paths, [], notes, None
    if not optional or offline_only:
        return [], [], notes, why[0]
    # one of the optional packages has no wheel here: the needed ones alone, then each optional one that fits
    wanted, left_out = list(packages), []
    paths = attempt(wanted) if wanted else []
    if wanted and not paths:
        return [], [], notes, why[0]
    for extra in optional:
        more = attempt(wanted + [extra])
        if more:
            wanted.append(extra)
            paths = more
        else:
            left_out.append(extra)
    return paths, left_out, notes, None


# ------------------------------------------------------------------------------------------------ setup

@dataclass
class Plan:
    """What setup found on a device and what it did (or, with ``dry_run``, would do)."""

    device: str
    target: str | None
    found: dict = field(default_factory=dict)
    python: str | None = None           # the venv's interpreter
    packages: list = field(default_factory=list)
    wheels: list = field(default_factory=list)   # [{"file", "bytes", "sent"}]
    actions: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    changed: bool = False
    bytes_sent: int = 0
    seconds: float = 0.0
    dry_run: bool = False

    def to_dict(self) -> dict:
        """The plan as the ``devices --setup --json`` entry of one device."""
        return sanitize.result({"device": self.device, "target": self.target, "setup": True, "found": self.found,
                                "python": self.python, "packages": self.packages, "wheels": self.wheels,
                                "actions": self.actions, "notes": self.notes, "changed": self.changed,
                                "bytes_sent": self.bytes_sent, "seconds": round(self.seconds, 3),
                                "dry_run": self.dry_run})


def _profile(device: Device):
    if not device.target:
        raise UsageError(f"device {device.name}: no target in the inventory, so nothing says what to install",
                         hint='add target = "rpi5" (or another profile: edgeopt targets) for the device')
    try:
        return targets.get(device.target)
    except KeyError as e:
        raise UsageError(f"device {device.name}: {e.args[0]}") from None


def _set_hash(base: str, pyver: str, packages: list, wheels: list[tuple[str, str]]) -> str:
    """The identity of a setup: base interpreter, its Python version, the requirements and each wheel's hash."""
    text = json.dumps({"base": base, "python": pyver, "packages": sorted(packages), "wheels": sorted(wheels)})
    return hashlib.sha256(text.encode()).hexdigest()


def setup_device(conn: Connection, dry_run: bool = False) -> Plan:
    """Make the device behind ``conn`` ready for its target (see the module's docstring); returns the plan."""
    t0 = time.perf_counter()
    dev = conn.device
    tgt = _profile(dev)
    plan = Plan(dev.name, dev.target, dry_run=dry_run)
    workdir = conn.expand(dev.workdir)
    venv, vpy, marker_path = venv_paths(workdir)
    plan.python = vpy
    modules = [MODULES.get(p, p.replace("-", "_")) for p in tgt.setup_packages]
    found = probes.parse_setup(conn.run(probes.setup_command(dev.python, workdir, modules), timeout=120).out)
    py = found["python"]
    if py.get("error"):
        raise DeviceError(f"the device's Python ({dev.python}): {sanitize.text(py['error'])}", device=dev.name,
                          hint='set python = "/path/to/python3" (3.8 or newer) for the device in the inventory')
    pyver = ".".join(str(py.get("python", "")).split(".")[:2])
    plan.found = {"arch": found["arch"], "glibc": ".".join(map(str, found["glibc"])) if found["glibc"] else None,
                  "python": py.get("python"), "executable": py.get("executable"), "numpy": py.get("numpy"),
                  "externally_managed": bool(py.get("externally_managed")), "venv": found["venv"]}
    if py.get("in_venv"):
        plan.notes.append(f"{dev.python} is itself a venv; the setup venv is made from it")
    if not found["arch"] or not found["glibc"]:
        raise DeviceError(f"cannot tell which wheels fit: CPU {found['arch'] or 'unknown'}, "
                          f"{'glibc ' + plan.found['glibc'] if found['glibc'] else 'no glibc (musl?)'}",
                          device=dev.name, hint="setup needs a glibc Linux (manylinux wheels)")
    if probes._older_than_floor(py.get("python")):
        raise DeviceError(f"Python {py.get('python')} ({dev.python}) is older than the runner's 3.8",
                          device=dev.name, hint='set python = "/path/to/python3" (3.8 or newer) in the inventory')
    if tgt.system_runtime and not found.get(tgt.system_runtime):
        plan.notes.append(f"no {tgt.system_runtime} on the device (not a wheel): {tgt.system_install}")

    can_venv = bool(py.get("venv") and py.get("ensurepip"))
    if not can_venv and found["venv"] != "importable":  # before any download: it could not be used
        if not dry_run:
            raise _no_venv(dev, "no ensurepip" if py.get("venv") else "no venv module")
        plan.notes.append(f"{dev.python} cannot create a venv: on the device run sudo apt install python3-venv")

    have = {"numpy": py["numpy"]} if py.get("numpy") else {}
    paths, left_out, notes, missing = resolve_wheels(tgt.setup_packages, tgt.setup_optional, found["arch"],
                                                     found["glibc"], pyver, have, offline_only=dry_run)
    plan.notes += notes
    if missing and not dry_run:
        raise DeviceError(f"no wheel of {' '.join(tgt.setup_packages or tgt.setup_optional)} for Python {pyver} "
                          f"on {found['arch']} (glibc {plan.found['glibc']}): {missing}", device=dev.name,
                          hint="a 64-bit OS and Python 3.9-3.12 have wheels; or set python = \"/path/to/python3\" "
                               "for the device in the inventory")
    for extra in left_out:
        plan.notes.append(f"no {extra} wheel fits Python {pyver} on {found['arch']}: left out")
    plan.packages = [p for p in list(tgt.setup_packages) + list(tgt.setup_optional) if p not in left_out]
    # what the device already has at the pinned version is not sent: pip sees it through the system site
    skip = {(d, v) for d, v in have.items()}
    send = [p for p in paths if _dist_of(os.path.basename(p)) not in skip]
    digest = _set_hash(dev.python, pyver, plan.packages, [(os.path.basename(p), sha256_file(p)) for p in send])
    plan.wheels = [{"file": os.path.basename(p), "bytes": os.path.getsize(p), "sent": 0} for p in send]

    marker = found["marker"]
    if marker and marker.get("hash") == digest and marker.get("base") == dev.python and found["venv"] == "importable":
        plan.actions.append("ready: nothing to do")
        plan.seconds = time.perf_counter() - t0
        return plan
    if dry_run:
        if missing:
            plan.actions.append(f"download wheels of {' '.join(plan.packages)} for Python {pyver} on "
                                f"{found['arch']} (glibc {plan.found['glibc']}) into {wheel_cache(found['arch'])}")
        size = sum(w["bytes"] for w in plan.wheels) / 2**20
        plan.actions += [f"push {len(send)} wheels ({size:.1f} MiB, those not there yet)" if paths
                         else "push the wheels",
                         f"create {venv} ({dev.python} -m venv --system-site-packages)",
                         f"install {' '.join(plan.packages) or 'nothing'} offline (pip --no-index --find-links)",
                         f"write {marker_path}"]
        plan.seconds = time.perf_counter() - t0
        return plan

    if not can_venv:
        raise _no_venv(dev, "no ensurepip" if py.get("venv") else "no venv module")
    # build from scratch: the marker goes last, so a venv cut short is never taken for a ready one
    plan.changed = True
    made = conn.run(f"rm -rf {q([venv])} && mkdir -p {q([workdir])} && "
                    f"{q([dev.python, '-m', 'venv', '--system-site-packages', venv])} 2>&1 | tail -n 5",
                    timeout=dev.command_timeout)
    ok = conn.run(f"[ -x {q([vpy])} ] && {q([vpy, '-m', 'pip', '--version'])} >/dev/null 2>&1 && echo ok",
                  timeout=120)
    if ok.out.strip() != "ok":
        conn.run(f"rm -rf {q([venv])}", timeout=60)
        raise _no_venv(dev, sanitize.text(made.out.strip().splitlines()[-1] if made.out.strip() else "no pip"))
    plan.actions.append(f"created {venv} (--system-site-packages)")
    dirs = []
    for wheel, entry in zip(send, plan.wheels):
        pushed = push(conn, wheel, workdir, progress=None, python=dev.python)
        entry["sent"] = pushed.bytes
        plan.bytes_sent += pushed.bytes
        dirs.append(os.path.dirname(pushed.path))
    plan.actions.append(f"pushed {sum(1 for w in plan.wheels if w['sent'])} of {len(send)} wheels")
    if plan.packages:
        links = [a for d in dirs for a in ("--find-links", d)]
        # the device's pip.conf (an index it cannot reach) must not matter: no config, no index
        argv = [vpy, "-m", "pip", "install", "--no-index", "--no-input", "--disable-pip-version-check", "-q",
                *links, *plan.packages]
        log = q([venv + "/pip.log"])
        res = conn.run(f"PIP_CONFIG_FILE=/dev/null {q(argv)} > {log} 2>&1; rc=$?; tail -n 5 {log}; exit $rc",
                       timeout=dev.command_timeout)
        if res.rc != 0:
            why = [ln for ln in res.out.splitlines() if ln.strip()]
            raise DeviceError(f"offline install into {venv} failed: {sanitize.text(why[-1] if why else 'exit %d' % res.rc)}",
                              device=dev.name, hint=f"see {venv}/pip.log on the device")
        plan.actions.append(f"installed {' '.join(plan.packages)} offline")
    check = conn.run(f"{q([vpy, '-c', 'import ' + ', '.join(modules) if modules else 'pass'])} 2>&1 | tail -n 1",
                     timeout=120)
    if check.rc != 0 or check.out.strip():
        raise DeviceError(f"{', '.join(modules)} does not import in {venv}: {sanitize.text(check.out.strip())}",
                          device=dev.name, hint=f"see {venv}/pip.log on the device")
    data = {"version": MARKER_VERSION, "hash": digest, "base": dev.python, "python": vpy, "python_version": pyver,
            "packages": plan.packages, "wheels": [w["file"] for w in plan.wheels]}
    wrote = conn.run(f"printf '%s\\n' {q([json.dumps(data)])} > {q([marker_path])}", timeout=30)
    if wrote.rc != 0:
        raise DeviceError(f"cannot write {marker_path}: {sanitize.text(wrote.err.strip())}", device=dev.name)
    plan.actions.append(f"recorded {vpy} for {dev.python}")
    plan.seconds = time.perf_counter() - t0
    return plan


def _no_venv(dev: Device, why: str) -> DeviceError:
    # Debian and Raspberry Pi OS ship venv without ensurepip (python3-venv): the one thing to do is clear
    return DeviceError(f"{dev.python} cannot create a venv ({why}): on the device run sudo apt install "
                       f"python3-venv", device=dev.name, hint="then rerun edgeopt devices --setup")
