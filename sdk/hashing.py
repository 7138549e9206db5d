"""SHA-256 of files and directory trees, shared by conversion (manifests), deploy (cache keys) and push.

(``edgeopt.runtime`` keeps its own few lines: it must stay self-contained for devices.)"""
from __future__ import annotations

import hashlib
import os

__all__ = ["sha256_file", "sha256_tree"]

_CACHE: dict[tuple, str] = {}


def sha256_file(path: str) -> str:
    """Hex SHA-256 of a file's bytes; cached by (path, size, mtime) since artifacts are hashed repeatedly."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _CACHE[key] = h.hexdigest()
    return _CACHE[key]


def sha256_tree(path: str) -> str:
    """Hash of a directory (SavedModel): relative paths and contents, in sorted order."""
    h = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for f in sorted(files):
            p = os.path.join(root, f)
            h.update(os.path.relpath(p, path).encode() + b"\0")
            h.update(bytes.fromhex(sha256_file(p)))
    return h.hexdigest()
