"""One way to run the ``edgeopt`` command in the tests."""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys

EDGEOPT = os.path.join(os.path.dirname(sys.executable), "edgeopt")


def edgeopt_cli(*args, cwd=None, env=None, prefix=(), timeout=900, in_process=False):
    """Run ``edgeopt ARGS``; returns a CompletedProcess (text) with returncode, stdout and stderr.

    By default the real console script of this venv in a subprocess, with this process's environment plus
    ``env`` and COLUMNS=200 (so that no message is wrapped), ``prefix`` before it (e.g. ``unshare -n``).
    ``in_process=True`` calls the same entry point (``edgeopt.cli.main``) in this process instead, with
    stdout/stderr captured: much faster, for the many error cases of one command (no cwd/env/prefix there).
    """
    argv = [str(a) for a in args]
    if in_process:
        if cwd is not None or env or prefix:
            raise ValueError("in_process runs in this process: no cwd, env or prefix")
        return _in_process(argv)
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run([*map(str, prefix), EDGEOPT, *argv], capture_output=True, text=True, cwd=cwd,
                          env=full_env, timeout=timeout)


def _in_process(argv):
    from edgeopt.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
            code = 0
        except SystemExit as e:  # how the entry point reports its exit status
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return subprocess.CompletedProcess(["edgeopt", *argv], code, out.getvalue(), err.getvalue())


def assert_one_error(result, *needles, code: int = 2) -> str:
    """A clear failure: exit ``code``, exactly one ``error:`` line (the first), no traceback, each of
    ``needles`` in stderr. Returns stderr."""
    assert result.returncode == code, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert lines and lines[0].startswith("error:"), result.stderr
    assert sum(ln.startswith("error:") for ln in lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)
    return result.stderr
