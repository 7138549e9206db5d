"""A lab of real OpenSSH servers for the tests and benchmarks (no mocks).

Each device is Debian's ``/usr/sbin/sshd`` with its own host key, ``authorized_keys`` and workdir, listening
on 127.0.0.1 at a free port, or inside an ``ip netns`` namespace reached over a veth pair (optionally rate
limited with ``tc ... tbf``), or another root file system's own sshd run chrooted in it (:class:`Chroot`: the
emulated arm64 board of tests/armboard.py). The client has one key; ``known_hosts`` is written for the devices
started with ``known=True``. Everything started is stopped by :meth:`Lab.stop` (the ``lab`` fixture of
edgeopt_testkit/fixtures.py does it).

Needs root (network namespaces, sshd's privilege separation) and openssh-server + iproute2 installed.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD = "/usr/sbin/sshd"
_counter = itertools.count()


def lab_available() -> str | None:
    """None when a lab can run here, else why not (used to skip)."""
    if os.geteuid() != 0:
        return "needs root (sshd privilege separation, network namespaces)"
    if not os.path.exists(SSHD):
        return "needs openssh-server (/usr/sbin/sshd)"
    if not shutil.which("ssh-keygen"):
        return "needs ssh-keygen (openssh-client)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def toml_str(s) -> str:
    return json.dumps(str(s))  # JSON string escapes are valid TOML basic strings


def keygen(path: Path, comment: str = "edgeopt-lab") -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True,
                   stdout=subprocess.DEVNULL)
    return Path(str(path) + ".pub").read_text().strip()


@dataclass
class Netns:
    name: str
    host_if: str
    ns_if: str
    host_ip: str
    ns_ip: str

    def exec(self, argv, **kw):
        return subprocess.run(["ip", "netns", "exec", self.name] + list(argv), **kw)


@dataclass
class Chroot:
    """Another root file system for a device: its own ``/usr/sbin/sshd`` runs chrooted in it.

    ``files`` is the host folder the device sees as ``/`` when the lab writes its sshd files (the upper layer of
    an overlay, say); ``enter`` is the argv that goes before ``/usr/sbin/sshd ...`` and runs it inside (mounts,
    then ``chroot``). ``user`` is the login user the inventory names."""

    files: Path
    enter: list
    user: str = "root"

    def inside(self, path: Path) -> str:
        """A path under ``files`` as the device sees it."""
        return "/" + str(Path(path).relative_to(self.files))


@dataclass
class LabDevice:
    name: str
    host: str
    port: int
    root: Path
    workdir: str
    host_pub: str
    proc: subprocess.Popen
    log: Path
    netns: Netns | None = None
    target: str | None = "rpi5"
    extra: dict = field(default_factory=dict)
    user: str = "root"
    chroot: Chroot | None = None

    @property
    def known_line(self) -> str:
        kind, b64 = self.host_pub.split()[:2]
        return f"[{self.host}]:{self.port} {kind} {b64}"

    def session_pids(self) -> list[int]:
        """Per-connection sshd processes (children of the listener)."""
        try:
            kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            return []
        return [int(k) for k in kids]

    def kill_sessions(self):
        """Drop every open connection to this device, as a cable pull would (SIGKILL the session sshds)."""
        for pid in self.session_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def path(self, path: str) -> Path:
        """Where a path of the device is on this machine: itself, or for a chrooted device (running) the path
        under its root as its sshd sees it (``/proc/PID/root``: its mounts are its own)."""
        if not self.chroot:
            return Path(path)
        return Path(f"/proc/{self.proc.pid}/root") / path.lstrip("/")

    def files(self) -> list[str]:
        """Every path under the workdir (relative), to assert what was written on the device."""
        wd = self.path(self.workdir)
        if not wd.exists():
            return []
        return sorted(str(p.relative_to(wd)) for p in wd.rglob("*"))


class Lab:
    def __init__(self, base: Path, quiet_shell: bool = True):
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        self.client_key = self.base / "client" / "id_ed25519"
        self.client_key.parent.mkdir(exist_ok=True)
        self.client_pub = keygen(self.client_key, "edgeopt-client")
        self.known_hosts = self.base / "client" / "known_hosts"
        self.known_hosts.write_text("")
        self.devices: dict[str, LabDevice] = {}
        self.namespaces: list[Netns] = []
        self._procs: list[subprocess.Popen] = []
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        rc = Path(os.path.expanduser("~/.bashrc"))
        self.quiet_shell = str(rc) if quiet_shell and rc.is_file() and shutil.which("unshare") else None

    # -- network
    def netns(self, rate: str | None = None, burst: str = "256kb", latency: str = "50ms") -> Netns:
        """A namespace joined to this one by a veth pair; ``rate`` (e.g. '50mbit') limits both directions."""
        n = next(_counter)
        tag = f"{os.getpid() % 100000}{n}"
        ns = Netns(name=f"eolab{tag}", host_if=f"eoh{tag}"[:15], ns_if=f"eon{tag}"[:15],
                   host_ip=f"10.{200 + n % 50}.{os.getpid() % 250}.1",
                   ns_ip=f"10.{200 + n % 50}.{os.getpid() % 250}.2")
        run = lambda *a: subprocess.run(list(a), check=True, capture_output=True)  # noqa: E731
        run("ip", "netns", "add", ns.name)
        self.namespaces.append(ns)
        run("ip", "link", "add", ns.host_if, "type", "veth", "peer", "name", ns.ns_if)
        run("ip", "link", "set", ns.ns_if, "netns", ns.name)
        run("ip", "addr", "add", f"{ns.host_ip}/24", "dev", ns.host_if)
        run("ip", "link", "set", ns.host_if, "up")
        run("ip", "netns", "exec", ns.name, "ip", "addr", "add", f"{ns.ns_ip}/24", "dev", ns.ns_if)
        run("ip", "netns", "exec", ns.name, "ip", "link", "set", ns.ns_if, "up")
        run("ip", "netns", "exec", ns.name, "ip", "link", "set", "lo", "up")
        if rate:
            for pre in ([], ["ip", "netns", "exec", ns.name]):
                dev = ns.host_if if not pre else ns.ns_if
                run(*pre, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate, "burst", burst,
                    "latency", latency)
        return ns

    # -- devices
    def start(self, name: str, *, netns: Netns | None = None, listen: str | None = None, workdir: str | None = None,
              target: str | None = "rpi5", known: bool = True, host_key: Path | None = None,
              sftp: str = "internal-sftp", chroot: Chroot | None = None, timeout: float = 10) -> LabDevice:
        """Start a device's sshd and wait (``timeout`` s) until it listens. With ``chroot`` its files (host key,
        config, authorized_keys) go under ``chroot.files`` at /etc/edgeopt-lab and its own sshd runs in it."""
        logs = self.base / "devices" / name
        root = chroot.files / "etc" / "edgeopt-lab" if chroot else logs
        inside = chroot.inside if chroot else str
        for folder in {root, logs}:
            folder.mkdir(parents=True, exist_ok=True)
        hk = root / "ssh_host_ed25519_key"
        if host_key:
            shutil.copy(host_key, hk)
            shutil.copy(str(host_key) + ".pub", str(hk) + ".pub")
            os.chmod(hk, 0o600)
            host_pub = Path(str(hk) + ".pub").read_text().strip()
        elif hk.exists():
            host_pub = Path(str(hk) + ".pub").read_text().strip()
        else:
            host_pub = keygen(hk, f"host-{name}")
        (root / "authorized_keys").write_text(self.client_pub + "\n")
        host = listen or (netns.ns_ip if netns else "127.0.0.1")
        port = free_port()
        cfg = root / "sshd_config"
        cfg.write_text("\n".join([
            f"Port {port}", f"ListenAddress {host}", f"HostKey {inside(hk)}", f"PidFile {inside(root / 'sshd.pid')}",
            f"AuthorizedKeysFile {inside(root / 'authorized_keys')}", "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "UsePAM no", "StrictModes no", "AllowTcpForwarding yes", "PermitTunnel no", "X11Forwarding no",
            "PrintMotd no", "UseDNS no", "MaxStartups 64", "MaxSessions 64", "LogLevel INFO",
            f"Subsystem sftp {sftp}", "",
        ]))
        log = logs / "sshd.log"
        argv = [SSHD, "-D", "-e", "-f", inside(cfg)]
        if chroot:
            argv = list(chroot.enter) + argv
        elif self.quiet_shell:
            # A private mount namespace where this machine's ~/.bashrc is empty: bash sources it for every
            # command over ssh, and a heavy one (pyenv init here) adds 0.2 s per command, which no device has.
            argv = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                    'mount --bind /dev/null "$1" && shift && exec "$@"', "sh", self.quiet_shell] + argv
        if netns:
            argv = ["ip", "netns", "exec", netns.name] + argv
        logf = open(log, "wb")
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()
        self._procs.append(proc)
        deadline = time.time() + timeout
        while b"Server listening" not in log.read_bytes():
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"sshd for {name} did not start: {log.read_text()[-2000:]}")
            time.sleep(0.01)
        wd = workdir or inside(root / "work")
        dev = LabDevice(name=name, host=host, port=port, root=root, workdir=wd, host_pub=host_pub, proc=proc,
                        log=log, netns=netns, target=target, user=chroot.user if chroot else "root", chroot=chroot)
        if known:
            with open(self.known_hosts, "a") as f:
                f.write(dev.known_line + "\n")
        self.devices[name] = dev
        return dev

    def stop_device(self, dev: LabDevice):
        if dev.proc.poll() is None:
            dev.kill_sessions()
            dev.proc.terminate()
            try:
                dev.proc.wait(5)
            except subprocess.TimeoutExpired:
                dev.proc.kill()
                dev.proc.wait()

    def inventory(self, devices=None, path: Path | None = None, python: str | None = None, **extra) -> Path:
        """Write an edgeopt.toml for ``devices`` (default all); ``extra`` adds keys to every device
        (or pass ``{name: {key: value}}`` as ``per_device``)."""
        per_device = extra.pop("per_device", {})
        path = Path(path or self.base / "edgeopt.toml")
        lines = []
        for d in (devices or list(self.devices.values())):
            d = self.devices[d] if isinstance(d, str) else d
            keys = {"host": d.host, "port": d.port, "user": d.user, "identity": str(self.client_key),
                    "known_hosts": str(self.known_hosts), "python": python or sys.executable,
                    "workdir": d.workdir}
            if d.target:
                keys["target"] = d.target
            keys.update(extra)
            keys.update(per_device.get(d.name, {}))
            lines.append(f"[devices.{toml_str(d.name)}]")
            for k, v in keys.items():
                if v is None:
                    continue
                lines.append(f"{k} = {v}" if isinstance(v, (int, float)) and not isinstance(v, bool)
                             else f"{k} = {toml_str(v)}")
            lines.append("")
        path.write_text("\n".join(lines))
        return path

    def stop(self):
        for dev in self.devices.values():
            self.stop_device(dev)
        for p in self._procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for ns in self.namespaces:
            subprocess.run(["ip", "link", "del", ns.host_if], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns.name], capture_output=True)
        self.namespaces.clear()
