"""Writing a result file (HTML report, Markdown summary, JUnit XML): whole or not at all, readable by its owner.

Reports name the lab's hosts, users and devices. They are written to a temporary file in the same folder
(created 0600 by :func:`tempfile.mkstemp`, whatever the umask) and renamed over the target, so a reader never
sees half a file and a crash leaves the old one in place.
"""
from __future__ import annotations

import os
import tempfile

__all__ = ["write_private"]


def write_private(path: str, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` atomically with mode 0600."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
