"""native_stderr_captured leaves the host process's logging working (the Python API runs inside it)."""
from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import logging
from edgeopt.conversion.quiet import native_stderr_captured
with native_stderr_captured():
    logging.warning("inside")  # as onnxruntime's quantizer does: makes the root handler on that stderr
logging.warning("after")
"""


def test_logging_after_capture_still_works():
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Logging error" not in r.stderr and "closed file" not in r.stderr
    assert "WARNING:root:inside" in r.stderr and "WARNING:root:after" in r.stderr
