"""An emulated 64-bit Raspberry Pi OS board for the tests: a Debian bookworm arm64 root file system whose own
arm64 ``/usr/sbin/sshd``, Python 3.11 (PEP 668), numpy 1.24 and everything else run on this machine through
qemu-user (binfmt_misc), in a network namespace with no route beyond the host.

The root file system is built once per machine by tests/lab/build-arm64-board.sh (mmdebstrap; cached outside the
checkout, keyed by the script). :func:`start` boots a board from it as a device of an sshlab ``Lab``: a private
mount namespace holding an overlay (the cache is the read-only lower layer, so no test ever changes it; what the
board writes goes to the upper layer under the lab's folder), /proc, /dev and /run, then ``chroot`` and the
board's sshd, in a namespace of the lab's own. The login user is ``pi``; the inventory entry has ``target =
"rpi5"`` and neither ``python`` nor ``workdir`` (python3 and ~/.edgeopt, as for a real board). It starts bare;
:meth:`Board.ready` makes it ready (``devices --setup``), :meth:`Board.reset` bare again. :func:`stop`
ends every process left in the board's mount namespace, which takes its mounts with it.

Needs root, openssh-server/-client, iproute2, util-linux and the Debian packages mmdebstrap, qemu-user-static,
binfmt-support (and arch-test); the first build needs the Debian mirror (about 6 minutes).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import sshlab

SCRIPT = Path(__file__).resolve().parent / "lab" / "build-arm64-board.sh"
USER = "pi"
WORKDIR = "/home/pi/.edgeopt"   # ~/.edgeopt, edgeopt's default workdir, for the user pi
TARGET = "rpi5"
TOOLS = {"mmdebstrap": "mmdebstrap", "update-binfmts": "binfmt-support", "qemu-aarch64-static": "qemu-user-static",
         "arch-test": "arch-test", "unshare": "util-linux", "ip": "iproute2"}

# Runs as: sh -c ENTER sh LOWER UPPER WORK MERGED /usr/sbin/sshd ARGS..., in a private mount namespace: the
# overlay, then what a booted system has mounted that sshd and the probes use, then the board's own sshd chrooted.
ENTER = """set -e
mount -t overlay overlay -o "lowerdir=$1,upperdir=$2,workdir=$3" "$4"
mount -t proc proc "$4/proc"
mount --rbind /dev "$4/dev"
mount -t tmpfs -o mode=0755,size=64m tmpfs "$4/run"
mkdir -m 0755 "$4/run/sshd"
root=$4
shift 4
exec chroot "$root" "$@"
"""


class Unavailable(Exception):
    """The board cannot run here (not root, a package missing, the root file system cannot be built)."""


def available() -> str | None:
    """None when a board can run here, else why not (used to skip)."""
    why = sshlab.lab_available()
    if why:
        return why
    missing = sorted({pkg for tool, pkg in TOOLS.items() if not shutil.which(tool)})
    if missing:
        return f"needs the Debian packages {' '.join(missing)}"
    return None


def rootfs(timeout: float = 1800) -> Path:
    """The board's root file system (built by tests/lab/build-arm64-board.sh if missing; qemu-aarch64 is
    registered with binfmt_misc either way)."""
    try:
        p = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise Unavailable(f"{SCRIPT.name} took over {timeout:.0f} s") from None
    lines = p.stdout.strip().splitlines()
    if p.returncode != 0 or not lines or not Path(lines[-1]).is_dir():
        raise Unavailable(f"{SCRIPT.name} failed (exit {p.returncode}): {p.stderr.strip()[-1500:]}")
    return Path(lines[-1])


@dataclass
class Board:
    """A started board: its lab device, and an inventory (``edgeopt.toml`` in ``inventory.parent``) naming it
    ``name``, target rpi5, no python key."""

    lab: sshlab.Lab
    device: sshlab.LabDevice
    inventory: Path
    rootfs: Path     # the cached root file system (read-only: the overlay's lower layer)
    folder: Path
    mnt_ns: str
    start_seconds: float

    @property
    def name(self) -> str:
        return self.device.name

    def ssh(self, command: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """``command`` run on the board over ssh (OpenSSH's client, the lab's key) as pi."""
        d = self.device
        return subprocess.run(["ssh", "-F", "/dev/null", "-i", str(self.lab.client_key), "-p", str(d.port),
                               "-o", f"UserKnownHostsFile={self.lab.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                               "-o", "BatchMode=yes", "-o", "ConnectTimeout=30", f"{d.user}@{d.host}", command],
                              capture_output=True, text=True, timeout=timeout)

    def put(self, local: Path, remote: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """``local`` copied to ``remote`` on the board with OpenSSH's scp (SFTP, as a user copies a file), as pi."""
        d = self.device
        return subprocess.run(["scp", "-q", "-F", "/dev/null", "-i", str(self.lab.client_key), "-P", str(d.port),
                               "-o", f"UserKnownHostsFile={self.lab.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                               "-o", "BatchMode=yes", "-o", "ConnectTimeout=30", str(local),
                               f"{d.user}@{d.host}:{remote}"], capture_output=True, text=True, timeout=timeout)

    def ready(self) -> dict:
        """Make the board ready to run rpi5 artifacts (``edgeopt devices --setup``; nothing is done or sent when
        it already is): the board's ``--json`` entry."""
        from edgeopt_testkit import edgeopt_cli
        p = edgeopt_cli("devices", "--setup", "--device", self.name, "--inventory", self.inventory, "--json")
        if p.returncode != 0:
            raise AssertionError(f"devices --setup on {self.name} exited {p.returncode}: {p.stderr[-3000:]}")
        (entry,) = json.loads(p.stdout)["devices"]
        return entry

    def reset(self):
        """Back to a bare board: edgeopt's workdir (the setup venv, pushed files) removed."""
        shutil.rmtree(self.device.path(WORKDIR), ignore_errors=True)


def start(lab: sshlab.Lab, lower: Path, name: str = "rpi5-emu") -> Board:
    """Boot a board from the root file system ``lower`` as device ``name`` of ``lab`` (see the module)."""
    t0 = time.perf_counter()
    folder = lab.base / "boards" / name
    upper, work, merged = folder / "upper", folder / "work", folder / "merged"
    for d in (upper, work, merged):
        d.mkdir(parents=True)
    chroot = sshlab.Chroot(files=upper, user=USER,
                           enter=["unshare", "--mount", "--propagation", "private", "sh", "-c", ENTER, "sh",
                                  str(lower), str(upper), str(work), str(merged)])
    # sshd under emulation takes a second or two to listen; more on a loaded machine
    dev = lab.start(name, netns=lab.netns(), workdir=WORKDIR, target=TARGET, chroot=chroot, timeout=120)
    mnt_ns = os.readlink(f"/proc/{dev.proc.pid}/ns/mnt")
    # an SSH handshake with the emulated sshd takes a second or so, several on a loaded machine: more time
    # than the 10 s default to connect, so that a busy CI machine does not make a device error of it
    inventory = lab.inventory([dev], path=lab.base / "edgeopt.toml",
                              per_device={name: {"python": None, "workdir": None, "connect_timeout": 60}})
    return Board(lab=lab, device=dev, inventory=inventory, rootfs=Path(lower), folder=folder, mnt_ns=mnt_ns,
                 start_seconds=time.perf_counter() - t0)


def _in_namespace(mnt_ns: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/mnt") == mnt_ns:
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def stop(board: Board):
    """Stop the board: its sshd, every process still in its mount namespace (its mounts go with the last one),
    its network namespace (the lab's), and its upper layer."""
    board.lab.stop()
    deadline = time.time() + 10
    while (pids := [p for p in _in_namespace(board.mnt_ns) if p != os.getpid()]) and time.time() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    shutil.rmtree(board.folder, ignore_errors=True)
