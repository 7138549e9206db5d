"""One small interface to a device: ``run``, ``put``, ``get``, ``close``.

:class:`SSHConnection` talks to a lab device with paramiko: host keys verified against ``known_hosts``
(unknown refused unless ``accept_new``, then recorded; a changed key always refused, before anything is
sent to the device), keys from the inventory, ``~/.ssh/config`` and ssh-agent, ``proxy_jump`` through
direct-tcpip channels, connect and command timeouts. :class:`LocalConnection` is its twin for
``--local``: the same calls, run on this machine. Every failure is a :class:`DeviceError` (exit 3)
naming the device.

Remote commands are shell strings; build them from :func:`q` (``shlex.quote`` of every word), never by
pasting user input.
"""
from __future__ import annotations

import base64
import getpass
import hashlib
import os
import select
import shlex
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass

from edgeopt.errors import DeviceError
from edgeopt.devices.inventory import Device

__all__ = ["Connection", "SSHConnection", "LocalConnection", "Result", "connect", "q", "fingerprint",
           "WINDOW_SIZE", "MAX_PACKET_SIZE"]

# SSH channel window: how much the peer may send before we acknowledge. 2 MiB (paramiko's default) caps a
# download at 2 MiB per round trip; 64 MiB keeps a long fat link busy. Packets stay at the 32 KiB the
# OpenSSH server accepts.
WINDOW_SIZE = 64 * 1024 * 1024
MAX_PACKET_SIZE = 32768
SFTP_REQUEST_SIZE = 32768


def q(argv) -> str:
    """A shell command line from a list of words, each quoted."""
    return " ".join(shlex.quote(str(a)) for a in argv)


def fingerprint(key) -> str:
    """OpenSSH-style SHA256 fingerprint of a paramiko key."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def _copy(src, dst, size: int, callback=None) -> None:
    """Copy in 1 MiB blocks, reporting (bytes done, total) to ``callback``: the same loop for both twins."""
    done = 0
    while True:
        block = src.read(1 << 20)
        if not block:
            break
        dst.write(block)
        done += len(block)
        if callback:
            callback(done, size)


@dataclass
class Result:
    rc: int
    stdout: bytes
    stderr: bytes
    seconds: float

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    @property
    def err(self) -> str:
        return self.stderr.decode("utf-8", "replace")


class Connection:
    """The device interface. Paths given to ``put``/``get`` are absolute (see :meth:`expand`)."""

    device: Device

    def run(self, cmd, input: bytes | None = None, timeout: float | None = None, check: bool = False) -> Result:
        raise NotImplementedError

    def put(self, local: str, remote: str, callback=None) -> None:
        raise NotImplementedError

    def get(self, remote: str, local: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    # -- helpers shared by both
    def _home(self) -> str:
        raise NotImplementedError

    @property
    def home(self) -> str:
        if getattr(self, "_home_cache", None) is None:
            self._home_cache = self._home()
        return self._home_cache

    def expand(self, path: str) -> str:
        """``~`` and relative paths -> absolute paths on the device."""
        if path == "~":
            return self.home
        if path.startswith("~/"):
            return self.home.rstrip("/") + "/" + path[2:]
        if not path.startswith("/"):
            return self.home.rstrip("/") + "/" + path
        return path

    def _checked(self, cmd, res: Result, check: bool) -> Result:
        if check and res.rc != 0:
            msg = (res.err or res.out).strip().splitlines()
            raise DeviceError(f"remote command failed (exit {res.rc}): {msg[-1] if msg else cmd}",
                              device=self.device.name)
        return res

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _as_cmd(cmd) -> str:
    return cmd if isinstance(cmd, str) else q(cmd)


# ------------------------------------------------------------------------------------------------ local

class LocalConnection(Connection):
    """This machine as a device: commands through ``/bin/sh -c``, files copied."""

    def __init__(self, device: Device):
        self.device = device

    def _home(self) -> str:
        return os.path.expanduser("~")

    def run(self, cmd, input=None, timeout=None, check=False) -> Result:
        t0 = time.perf_counter()
        timeout = timeout or self.device.command_timeout
        try:
            p = subprocess.run(["/bin/sh", "-c", _as_cmd(cmd)], input=input if input is not None else b"",
                               capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DeviceError(f"command timed out after {timeout:g} s", device=self.device.name) from None
        except OSError as e:
            raise DeviceError(f"cannot run command: {e}", device=self.device.name) from None
        return self._checked(cmd, Result(p.returncode, p.stdout, p.stderr, time.perf_counter() - t0), check)

    def put(self, local, remote, callback=None) -> None:
        try:
            with open(local, "rb") as src, open(remote, "wb") as dst:
                _copy(src, dst, os.path.getsize(local), callback)
        except OSError as e:
            raise DeviceError(f"cannot write {remote}: {e.strerror or e}", device=self.device.name) from None

    def get(self, remote, local) -> None:
        try:
            shutil.copyfile(remote, local)
        except OSError as e:
            raise DeviceError(f"cannot read {remote}: {e.strerror or e}", device=self.device.name) from None


# -------------------------------------------------------------------------------------------------- ssh

_DEFAULT_KEYS = ("id_ed25519", "id_ecdsa", "id_rsa")


class SSHConnection(Connection):
    """A paramiko transport to a device (through its jump hosts), host key verified before any use."""

    def __init__(self, device: Device, accept_new: bool = False):
        self.device = device
        self.accept_new = accept_new
        self._hops = []        # transports of the jump hosts, closed with us
        self._sftp = None
        self._lock = threading.Lock()
        self.transport = None
        sock = None
        for hop in device.proxy_jump:
            t = self._open(hop, sock, via=device)
            self._hops.append(t)
            sock = self._channel_through(t, self._next_after(hop), device)
        self.transport = self._open(device, sock, via=device)

    def _next_after(self, hop: Device) -> Device:
        hops = self.device.proxy_jump
        i = hops.index(hop)
        return hops[i + 1] if i + 1 < len(hops) else self.device

    def _err(self, msg: str, hint: str | None = None) -> DeviceError:
        return DeviceError(msg, hint=hint, device=self.device.name)

    def _channel_through(self, t, dest: Device, device: Device):
        try:
            return t.open_channel("direct-tcpip", (dest.address, dest.port), ("127.0.0.1", 0),
                                  window_size=WINDOW_SIZE, max_packet_size=MAX_PACKET_SIZE,
                                  timeout=device.connect_timeout)
        except Exception as e:
            self.close()
            raise self._err(f"jump host could not reach {dest.address}:{dest.port}: {e or type(e).__name__}") from None

    def _open(self, dev: Device, sock, via: Device):
        import paramiko

        label = "" if dev is via else f"jump host {dev.name}: "
        timeout = via.connect_timeout
        try:
            if sock is None:
                sock = socket.create_connection((dev.address, dev.port), timeout=timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except socket.timeout:
            self.close()
            raise self._err(f"{label}connection to {dev.address}:{dev.port} timed out after {timeout:g} s",
                            hint="is the device on and on the network?") from None
        except socket.gaierror as e:
            self.close()
            raise self._err(f"{label}cannot resolve host {dev.address!r}: {e.strerror}") from None
        except OSError as e:
            self.close()
            raise self._err(f"{label}cannot connect to {dev.address}:{dev.port}: {e.strerror or e}",
                            hint="is sshd running there and the port right?") from None
        t = paramiko.Transport(sock, default_window_size=WINDOW_SIZE, default_max_packet_size=MAX_PACKET_SIZE)
        t.banner_timeout = timeout
        t.handshake_timeout = timeout
        t.auth_timeout = timeout
        known_path, known = self._known_hosts(dev)
        name = self._host_id(dev)
        entry = known.lookup(name)
        if entry:  # negotiate a key type we already know, like OpenSSH does
            opts = t.get_security_options()
            have = [k for k in opts.key_types if k in entry.keys()]
            opts.key_types = have + [k for k in opts.key_types if k not in have]
        try:
            t.start_client(timeout=timeout)
        except Exception as e:
            t.close()
            self.close()
            raise self._err(f"{label}SSH handshake with {dev.address}:{dev.port} failed: {e or type(e).__name__}") from None
        try:
            try:
                server_key = t.get_remote_server_key()
            except Exception as e:
                raise self._err(f"{label}SSH handshake with {dev.address}:{dev.port} failed: "
                                f"{e or type(e).__name__}") from None
            self._verify_host_key(dev, server_key, known_path, entry, name, label)
            self._authenticate(t, dev, label)
        except DeviceError:
            t.close()
            self.close()
            raise
        except Exception as e:
            t.close()
            self.close()
            raise self._err(f"{label}connection to {dev.address}:{dev.port} failed: {e or type(e).__name__}") from None
        return t

    # -- host keys
    @staticmethod
    def _host_id(dev: Device) -> str:
        return dev.address if dev.port == 22 else f"[{dev.address}]:{dev.port}"

    @staticmethod
    def _known_hosts(dev: Device):
        import paramiko

        path = dev.known_hosts or os.path.expanduser("~/.ssh/known_hosts")
        keys = paramiko.HostKeys()
        if os.path.isfile(path):
            try:
                keys.load(path)
            except Exception:
                pass  # unreadable lines are skipped; an unknown key is then refused
        return path, keys

    def _verify_host_key(self, dev, key, path, entry, name, label):
        kind = key.get_name()
        if entry and kind in entry.keys():
            if entry[kind] == key:
                return
            raise self._err(
                f"{label}HOST KEY CHANGED for {name}: {path} has {fingerprint(entry[kind])}, the device offers "
                f"{fingerprint(key)} ({kind}); refusing to connect (someone may be intercepting the connection)",
                hint=f"if the device was reinstalled, remove the old key: ssh-keygen -R {shlex.quote(name)} "
                     f"-f {shlex.quote(path)}, then rerun with --accept-new")
        if not self.accept_new:
            raise self._err(
                f"{label}host key unknown for {name} ({kind} {fingerprint(key)}), not in {path}; refusing to connect",
                hint="check the fingerprint on the device (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub) and rerun "
                     "with --accept-new to trust it")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "a") as f:
            f.write(f"{name} {kind} {key.get_base64()}\n")

    # -- authentication
    def _candidate_keys(self, dev: Device):
        """(label, key) pairs: inventory/ssh-config identities, then ssh-agent, then the default key files."""
        import paramiko

        seen = set()
        for path in dev.identities:
            if os.path.isfile(path):
                try:
                    yield path, paramiko.PKey.from_path(path)
                except paramiko.PasswordRequiredException:
                    continue  # encrypted: the agent may hold it
                except Exception:
                    continue
            seen.add(os.path.abspath(path))
        if os.environ.get("SSH_AUTH_SOCK"):
            try:
                agent = paramiko.Agent()
                for k in agent.get_keys():
                    yield "ssh-agent", k
            except Exception:
                pass
        if not dev.identities:
            for n in _DEFAULT_KEYS:
                p = os.path.expanduser(f"~/.ssh/{n}")
                if os.path.abspath(p) in seen or not os.path.isfile(p):
                    continue
                try:
                    yield p, paramiko.PKey.from_path(p)
                except Exception:
                    continue

    def _authenticate(self, t, dev: Device, label: str):
        import paramiko

        user = dev.user or getpass.getuser()
        tried = []
        for src, key in self._candidate_keys(dev):
            tried.append(src)
            try:
                t.auth_publickey(user, key)
            except paramiko.AuthenticationException:
                continue
            except paramiko.SSHException as e:
                raise self._err(f"{label}authentication as {user!r} failed: {e}") from None
            if t.is_authenticated():
                return
        what = ", ".join(dict.fromkeys(tried)) or "no key found"
        raise self._err(f"{label}authentication as {user!r} at {dev.address}:{dev.port} failed (tried: {what})",
                        hint="set identity = \"path/to/key\" for the device, or load the key into ssh-agent")

    # -- the interface
    def _home(self) -> str:
        res = self.run('printf %s "$HOME"', timeout=30, check=True)
        return res.out.strip() or "/"

    def _alive(self):
        if self.transport is None or not self.transport.is_active():
            raise self._err("connection lost")

    def run(self, cmd, input=None, timeout=None, check=False) -> Result:
        self._alive()
        cmd_s = _as_cmd(cmd)
        timeout = timeout or self.device.command_timeout
        t0 = time.perf_counter()
        try:
            chan = self.transport.open_session(timeout=self.device.connect_timeout)
            chan.exec_command(cmd_s)
        except Exception as e:
            raise self._err(f"cannot start a remote command: {e or type(e).__name__}") from None
        writer = None
        if input is not None:
            def _feed():
                try:
                    chan.sendall(input)
                    chan.shutdown_write()
                except Exception:
                    pass
            writer = threading.Thread(target=_feed, daemon=True)
            writer.start()
        else:
            chan.shutdown_write()
        out, err = [], []
        deadline = t0 + timeout
        try:
            while True:
                while chan.recv_ready():
                    out.append(chan.recv(1 << 16))
                while chan.recv_stderr_ready():
                    err.append(chan.recv_stderr(1 << 16))
                if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
                if not self.transport.is_active():
                    raise self._err("connection lost while running a command")
                if time.perf_counter() > deadline:
                    raise self._err(f"remote command timed out after {timeout:g} s")
                select.select([chan], [], [], 0.01)
            rc = chan.recv_exit_status()
        finally:
            chan.close()
        if writer:
            writer.join(1)
        return self._checked(cmd_s, Result(rc, b"".join(out), b"".join(err), time.perf_counter() - t0), check)

    def sftp(self):
        self._alive()
        with self._lock:
            if self._sftp is None:
                import paramiko
                try:
                    self._sftp = paramiko.SFTPClient.from_transport(self.transport, window_size=WINDOW_SIZE,
                                                                    max_packet_size=MAX_PACKET_SIZE)
                except Exception as e:
                    raise self._err(f"cannot open SFTP: {e or type(e).__name__}") from None
            return self._sftp

    def put(self, local, remote, callback=None) -> None:
        sftp = self.sftp()
        try:
            with open(local, "rb") as src, sftp.open(remote, "wb") as dst:
                dst.set_pipelined(True)   # do not wait for each write's ack
                dst.MAX_REQUEST_SIZE = SFTP_REQUEST_SIZE
                _copy(src, dst, os.path.getsize(local), callback)
        except DeviceError:
            raise
        except Exception as e:
            raise self._err(f"upload to {remote} failed: {e or type(e).__name__}") from None

    def get(self, remote, local) -> None:
        try:
            self.sftp().get(remote, local)
        except DeviceError:
            raise
        except Exception as e:
            raise self._err(f"download of {remote} failed: {e or type(e).__name__}") from None

    def close(self) -> None:
        for obj in [self._sftp, self.transport] + list(reversed(self._hops)):
            try:
                if obj is not None:
                    obj.close()
            except Exception:
                pass
        self._sftp = None


def connect(device: Device, accept_new: bool = False) -> Connection:
    """A connection to ``device``: local for the ``--local`` device, SSH otherwise."""
    if device.local:
        return LocalConnection(device)
    return SSHConnection(device, accept_new=accept_new)
