"""Reading a JSON file someone may have crafted (a manifest, a result file): bounded, and one clear error.

Shared by conversion (the ``--out`` check, ``explain``), devices (``bench`` of an output directory) and results
(``compare``/``report`` inputs). ``edgeopt.runtime`` keeps its own few lines: it must stay self-contained.
"""
from __future__ import annotations

import json
import os
import stat

from edgeopt.errors import UsageError

__all__ = ["MAX_JSON_BYTES", "read_json"]

# A manifest is a few kB; a result file with every latency sample of a long run is tens of MB.
MAX_JSON_BYTES = 256 << 20


def read_json(path: str, limit: int = MAX_JSON_BYTES):
    """The parsed contents of ``path``; :class:`UsageError` (exit 2) when it is unreadable, larger than
    ``limit`` bytes or not JSON. At most ``limit`` + 1 bytes are read, whatever the file claims."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer (checked below, then refused)
        with os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):  # a FIFO or /dev/zero would be read without end
                raise UsageError(f"{path}: not a regular file")
            data = f.read(limit + 1) if st.st_size <= limit else b""
    except OSError as e:
        raise UsageError(f"{path}: cannot read ({e.strerror or e})") from None
    if st.st_size > limit or len(data) > limit:
        raise UsageError(f"{path}: larger than {limit >> 20} MiB, not a file edgeopt wrote")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:
        raise UsageError(f"{path}: not valid JSON ({str(e)[:200]})") from None
