"""Shared setup of the benchmark scripts: the sshd lab of the tests (tests/sshlab.py)."""
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from sshlab import Lab, lab_available, make_tflite  # noqa: E402,F401

EDGEOPT = os.path.join(os.path.dirname(sys.executable), "edgeopt")


def new_lab() -> Lab:
    why = lab_available()
    if why:
        sys.exit(f"cannot run: {why}")
    return Lab(Path(tempfile.mkdtemp(prefix="edgeopt-bench-")) / "lab")
