"""The Pythons that devices really have, for the on-device runner's tests (tests/test_runner_old_python.py).

Interpreters come from pyenv ($PYENV_ROOT, default ~/.pyenv: ``versions/3.8.18/bin/python``), else ``python3.8``
on PATH. For a supported one (RUNNER_PYTHONS) a venv holds numpy and the runtimes that have wheels for that
Python; it is cached outside the checkout ($EDGEOPT_TEST_CACHE, default ~/.cache/edgeopt-test), in a folder
named after the interpreter and the package list, so it is built once per machine (and again only when the list
changes). Wheels go through the shared wheel cache (firmware.wheelhouse()): fetched from the package index once.

The tests build them when first needed (about 40 s for both with the wheels at hand); to build them ahead:
``python tests/edgeopt_testkit/oldpython.py``.
"""
from __future__ import annotations

import fcntl
import glob
import hashlib
import os
import shutil
import subprocess
import sys

# The supported Pythons the tests run the runner with, and what their venvs hold: the newest releases with
# wheels for that Python. ai-edge-litert has no wheel for 3.8 (JetPack 5's Python): tflite-runtime stands in,
# as it would on such a device.
RUNNER_PYTHONS = {
    "3.8": ("numpy==1.24.4", "onnxruntime==1.19.2", "tflite-runtime==2.14.0"),
    "3.10": ("numpy==1.26.4", "onnxruntime==1.23.0", "ai-edge-litert==1.4.0"),
}
# Pythons below the floor: the runner refuses them in one line (2.7 only through the host's guard: it cannot
# parse runtime.py at all).
REFUSED_PYTHONS = ("2.7", "3.6", "3.7")
READY = "edgeopt-ready"  # written last: a venv without it was cut short and is built again


class Unavailable(Exception):
    """No such interpreter here, or its venv cannot be built (offline): the tests skip with this reason."""


def _wheelhouse() -> str:
    # the same cache as firmware.wheelhouse(), without importing that module (numpy, pytest) in a CI build step
    return os.environ.get("EDGEOPT_WHEELHOUSE") or os.path.join(os.path.expanduser("~"), ".cache", "edgeopt-wheels")


def _clean_env() -> dict:
    # no PYTHONPATH/PYTHONHOME or VIRTUAL_ENV of the host's reaching the other interpreter
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}


def interpreter(version: str) -> str | None:
    """The newest pyenv python ``version`` (e.g. "3.8"), else ``python3.8`` on PATH; None when there is none."""
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    found = glob.glob(os.path.join(root, "versions", f"{version}.*", "bin", "python"))
    exact = [p for p in found if os.path.basename(os.path.dirname(os.path.dirname(p))).count(".") == 2]

    def patch(path):  # 3.8.18 -> 18; a version folder that is not all digits (3.8.18-debug) sorts first
        tail = os.path.basename(os.path.dirname(os.path.dirname(path))).rsplit(".", 1)[-1]
        return int(tail) if tail.isdigit() else -1

    for path in sorted(exact, key=patch, reverse=True):
        if os.access(path, os.X_OK):
            return path
    return shutil.which(f"python{version}")


def cache_root() -> str:
    """Where the venvs live: $EDGEOPT_TEST_CACHE, default ~/.cache/edgeopt-test (never inside the checkout)."""
    return os.environ.get("EDGEOPT_TEST_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "edgeopt-test")


def venv_dir(version: str, base: str) -> str:
    """The venv's folder for ``version`` built from interpreter ``base``: keyed by both and the package list."""
    key = hashlib.sha256("\n".join((os.path.realpath(base), *RUNNER_PYTHONS[version])).encode()).hexdigest()[:12]
    return os.path.join(cache_root(), f"py{version.replace('.', '')}-venv-{key}")


def _run(argv, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=_clean_env())


def runner_venv(version: str) -> str:
    """The python of the cached venv for ``version`` (a RUNNER_PYTHONS key), built on first use.

    Raises Unavailable when the interpreter is missing or the wheels cannot be had (offline, no wheel)."""
    base = interpreter(version)
    if not base:
        raise Unavailable(f"no Python {version} here (pyenv's {os.environ.get('PYENV_ROOT') or '~/.pyenv'}"
                          f"/versions/{version}.*, or python{version} on PATH)")
    venv = venv_dir(version, base)
    python = os.path.join(venv, "bin", "python")
    if os.path.isfile(os.path.join(venv, READY)):
        return python
    os.makedirs(cache_root(), exist_ok=True)
    # one builder at a time per machine (two test runs, or CI's build step and a test run)
    with open(venv + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isfile(os.path.join(venv, READY)):
            return python
        shutil.rmtree(venv, ignore_errors=True)
        made = _run([base, "-m", "venv", venv])
        if made.returncode != 0:
            raise Unavailable(f"python{version} -m venv failed: {made.stderr.strip()[-300:]}")
        reqs, wheels = RUNNER_PYTHONS[version], _wheelhouse()
        os.makedirs(wheels, exist_ok=True)
        pip = [python, "-m", "pip", "--disable-pip-version-check", "-q"]
        got = _run([*pip, "install", "--no-index", "--find-links", wheels, *reqs])
        if got.returncode != 0:  # not all in the wheel cache yet: fetch them once, then install offline
            fetched = _run([*pip, "download", "--only-binary=:all:", "-d", wheels, *reqs])
            if fetched.returncode != 0:
                shutil.rmtree(venv, ignore_errors=True)
                raise Unavailable(f"cannot fetch wheels {' '.join(reqs)} for Python {version} into {wheels} "
                                  f"(offline?): {fetched.stderr.strip()[-300:]}")
            got = _run([*pip, "install", "--no-index", "--find-links", wheels, *reqs])
        if got.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            raise Unavailable(f"cannot install {' '.join(reqs)} for Python {version}: {got.stderr.strip()[-300:]}")
        with open(os.path.join(venv, READY), "w") as f:
            f.write("\n".join(reqs) + "\n")
    return python


def main() -> int:
    """Build every RUNNER_PYTHONS venv whose interpreter is here (a missing one is reported, not an error)."""
    for version in RUNNER_PYTHONS:
        try:
            print(f"Python {version}: {runner_venv(version)}")
        except Unavailable as e:
            print(f"Python {version}: skipped: {e}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
