"""Keep native log spam (TensorFlow/absl C++ logs, onnx2tf banners) off the user's terminal.

Inside ``native_stderr_captured()`` file descriptor 2 points at a temporary file, while Python's
``sys.stderr`` (edgeopt's own warnings, progress and errors) still reaches the real stderr. With
``--debug`` (EDGEOPT_DEBUG=1) nothing is hidden.
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile

__all__ = ["native_stderr_captured"]


def _fd(stream) -> int | None:
    try:
        return stream.fileno()
    except Exception:
        return None


@contextlib.contextmanager
def native_stderr_captured():
    """Yield a file that receives everything written to fd 2 by native code meanwhile."""
    if os.environ.get("EDGEOPT_DEBUG") == "1":
        yield None
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield None
        return
    log = tempfile.TemporaryFile()
    os.dup2(log.fileno(), 2)
    old, swapped = sys.stderr, False
    if _fd(old) == 2:  # Python's stderr writes to fd 2: point it at the real terminal instead
        sys.stderr = io.TextIOWrapper(io.FileIO(os.dup(saved), "w"), write_through=True,
                                      encoding=getattr(old, "encoding", None) or "utf-8", errors="replace")
        swapped = True
    try:
        yield log
    finally:
        try:
            sys.stderr.flush()
        except Exception:
            pass
        os.dup2(saved, 2)
        os.close(saved)
        if swapped:
            wrapper = sys.stderr
            sys.stderr = old
            _rebind_log_handlers(wrapper, old)
            wrapper.close()
        log.close()


def _rebind_log_handlers(wrapper, stream) -> None:
    """Log handlers created meanwhile on ``sys.stderr`` (onnxruntime's quantizer calls ``logging.warning``,
    which makes a root handler on the stderr of that moment, the wrapper) write to ``stream`` from now on,
    not to the wrapper about to be closed: every later log call of the host process would fail."""
    import logging
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is wrapper:
                handler.setStream(stream)
