"""Content-addressed upload: ``<workdir>/artifacts/<sha256>/<file name>``.

An artifact already at its final path is not sent again (0 bytes) when its size and sha256 on the device
match (a stored file changed behind our back, even at the same size, is sent again). Otherwise it goes to a
hidden temporary name next to the final one, its size and sha256 are checked on the device, and only then
is it renamed into place (``mv`` within one directory: atomic). After any failure nothing sits at a final
path; stale temporaries (untouched for 2 minutes) are cleared by the next push of that artifact. A progress bar shows on a terminal.
"""
from __future__ import annotations

import os
import secrets
import sys
import time
from dataclasses import dataclass

from edgeopt.devices.connection import Connection, q
from edgeopt.errors import DeviceError, UsageError
from edgeopt.hashing import sha256_file

__all__ = ["PushResult", "push", "sha256_file", "remote_path"]

@dataclass
class PushResult:
    path: str          # final path on the device
    sha256: str
    bytes: int         # bytes sent (0 when skipped)
    seconds: float
    skipped: bool

    def transfer(self) -> dict:
        return {"bytes": self.bytes, "seconds": round(self.seconds, 4), "skipped": self.skipped}


def remote_path(workdir: str, sha: str, name: str) -> str:
    return f"{workdir.rstrip('/')}/artifacts/{sha}/{name}"


# Size and hash of a file on the device, with sha256sum or, failing that, the device's Python.
_HASH_PY = ("import hashlib,sys\nh=hashlib.sha256()\nf=open(sys.argv[1],'rb')\n"
            "for b in iter(lambda: f.read(1<<20), b''): h.update(b)\nprint(h.hexdigest())")


def _hash_into_h(path: str, python: str) -> str:
    """Shell that sets ``$h`` to the sha256 of ``path`` on the device."""
    t = q([path])
    # openssl uses the CPU's SHA extensions (3-4x faster than coreutils' sha256sum on x86 and ARMv8)
    return (f"if command -v openssl >/dev/null 2>&1; then h=$(openssl dgst -sha256 -r < {t} | cut -d' ' -f1); "
            f"elif command -v sha256sum >/dev/null 2>&1; then h=$(sha256sum < {t} | cut -d' ' -f1); "
            f"else h=$({q([python])} -c {q([_HASH_PY])} {t}); fi")


def _verify_and_rename(tmp: str, final: str, python: str, size: int, sha: str) -> str:
    """One round trip: hash + size of the temp file; rename into place only when both match."""
    t, f = q([tmp]), q([final])
    return (f"{_hash_into_h(tmp, python)}; s=$(wc -c < {t} | tr -d ' '); "
            f"if [ \"$s\" = {size} ] && [ \"$h\" = {sha} ]; then mv -f {t} {f} && echo ok; "
            f"else rm -f {t}; echo \"bad $s $h\"; fi")


def push(conn: Connection, local: str, workdir: str, name: str | None = None, progress: bool | None = None,
         python: str | None = None) -> PushResult:
    """Upload ``local`` to the device's content-addressed store under ``workdir`` (absolute, see
    ``Connection.expand``). Returns where it is and what was sent."""
    dev = conn.device
    if not os.path.isfile(local):
        raise UsageError(f"{local}: no such file")
    size = os.path.getsize(local)
    sha = sha256_file(local)
    name = name or os.path.basename(local)
    if "/" in name or name in ("", ".", ".."):
        raise ValueError(f"bad artifact name {name!r}")
    final = remote_path(workdir, sha, name)
    folder = os.path.dirname(final)
    t0 = time.perf_counter()
    # Already there? Size, then sha256 (a final path only ever holds a verified file, but storage rots and
    # files get replaced); else make the folder and clear stale temps.
    f_q = q([final])
    res = conn.run(f"if [ -f {f_q} ]; then s=$(wc -c < {f_q} | tr -d ' '); h=-; "
                   f"if [ \"$s\" = {size} ]; then {_hash_into_h(final, python or dev.python)}; fi; "
                   f"echo \"have $s $h\"; else mkdir -p {q([folder])} && "
                   f"find {q([folder])} -maxdepth 1 -name {q(['.' + name + '.part-*'])} -mmin +2 -exec rm -f {{}} + "
                   f"2>/dev/null; echo missing; fi", timeout=600)
    if res.rc != 0:
        raise DeviceError(f"cannot prepare {folder}: {(res.err or res.out).strip()}", device=dev.name)
    out = res.out.split()
    if out[:1] == ["have"]:
        if out[1:] == [str(size), sha]:
            return PushResult(final, sha, 0, time.perf_counter() - t0, True)
        # not what we would send: replace it (the rename below overwrites it only after verification)
        sys.stderr.write(f"warning: {dev.name}: the stored {name} does not match its sha256 {sha[:12]}; "
                         f"sending it again\n")
    tmp = f"{folder}/.{name}.part-{secrets.token_hex(6)}"
    bar = _progress(progress, dev.name, name, size)
    try:
        try:
            conn.put(local, tmp, callback=bar.update if bar else None)
        finally:
            if bar:
                bar.close()
        check = conn.run(_verify_and_rename(tmp, final, python or dev.python, size, sha), timeout=600)
        parts = check.out.split()
        if check.rc != 0 or not parts or parts[0] not in ("ok", "bad"):
            raise DeviceError(f"cannot verify the upload of {name}: {(check.err or check.out).strip()}",
                              device=dev.name)
        if parts[0] == "bad":
            got = f"{parts[1]} bytes sha256 {parts[2][:12]}" if len(parts) == 3 else "an unreadable file"
            raise DeviceError(f"upload of {name} corrupted: the device got {got}, expected {size} bytes "
                              f"sha256 {sha[:12]}", device=dev.name, hint="retry; if it persists, check the device's storage")
    except BaseException:
        try:  # best effort: the connection may be gone (then the next push clears it)
            conn.run(f"rm -f {q([tmp])}", timeout=10)
        except Exception:
            pass
        raise
    return PushResult(final, sha, size, time.perf_counter() - t0, False)


class _Bar:
    def __init__(self, device: str, name: str, size: int):
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)
        from rich.console import Console
        self.p = Progress(TextColumn(f"{device}: {name}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                          TimeRemainingColumn(), console=Console(stderr=True), transient=True)
        self.task = self.p.add_task("push", total=size)
        self.p.start()

    def update(self, done: int, total: int):
        self.p.update(self.task, completed=done)

    def close(self):
        self.p.stop()


def _progress(progress: bool | None, device: str, name: str, size: int):
    if progress is None:
        progress = sys.stderr.isatty() and size > 1 << 20
    return _Bar(device, name, size) if progress else None
