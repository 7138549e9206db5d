"""One small interface to a device: ``run``, ``put``, ``get``, ``close``.

:class:`SSHConnection` talks to a lab device with paramiko: host keys verified against ``known_hosts``
(unknown refused unless ``accept_new``, then recorded; a changed key always refused, before anything is
sent to the device), keys from the inventory, ``~/.ssh/config`` and ssh-agent, ``proxy_jump`` through
direct-tcpip channels, connect and command timeouts. ``known_hosts`` is read line by line (a bad line is
skipped with a warning; a key of another type for a known host counts as changed; ``@revoked`` refused) and a
new key is recorded under a lock by an atomic rename. Keepalives, an SFTP stall deadline
(``EDGEOPT_STALL_TIMEOUT``) and a cap on what ``run`` keeps (:data:`MAX_OUTPUT`) keep a hostile or broken
device from hanging or flooding the host. :class:`LocalConnection` is its twin for ``--local``: the same
calls, run on this machine, each command in its own process group (killed on timeout or interrupt). Every
failure is a :class:`DeviceError` (exit 3) naming the device.

Remote commands are shell strings; build them from :func:`q` (``shlex.quote`` of every word), never by
pasting user input.
"""
from __future__ import annotations

import base64
import binascii
import getpass
import hashlib
import hmac
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass

from edgeopt.errors import DeviceError
from edgeopt.devices.inventory import Device

__all__ = ["Connection", "SSHConnection", "LocalConnection", "Result", "connect", "q", "fingerprint",
           "WINDOW_SIZE", "MAX_PACKET_SIZE", "MAX_OUTPUT", "stall_timeout", "abort_all", "KnownHosts",
           "record_host_key"]

# SSH channel window: how much the peer may send before we acknowledge. 2 MiB (paramiko's default) caps a
# download at 2 MiB per round trip; 64 MiB keeps a long fat link busy. Packets stay at the 32 KiB the
# OpenSSH server accepts.
WINDOW_SIZE = 64 * 1024 * 1024
MAX_PACKET_SIZE = 32768
_IDLE_FIRST, _IDLE_MAX = 0.0005, 0.01   # run's polling interval while a command prints nothing (s)
_EOF_GRACE = 2.0   # s run waits for EOF, with nothing arriving, after the command's exit status
SFTP_REQUEST_SIZE = 32768
# What ``run`` keeps of a command's stdout (and, separately, stderr). The runner's JSON is a few MB at most
# (it caps its samples); past this a device is misbehaving, and keeping it all could exhaust the host's memory.
MAX_OUTPUT = 64 * 1024 * 1024
# A transfer or SFTP request that makes no progress for this long fails (a device whose SFTP server never
# answers would otherwise hang bench/deploy forever). EDGEOPT_STALL_TIMEOUT overrides it (seconds).
STALL_TIMEOUT = 120.0
# Keepalives: an idle link through a NAT or firewall stays open, and a dead peer is noticed by TCP.
KEEPALIVE_S = 15


def stall_timeout() -> float:
    """Seconds without progress after which an SFTP transfer fails (``EDGEOPT_STALL_TIMEOUT`` or 120)."""
    try:
        value = float(os.environ.get("EDGEOPT_STALL_TIMEOUT", ""))
    except ValueError:
        return STALL_TIMEOUT
    return value if value > 0 else STALL_TIMEOUT


# Every open connection, so that an interrupt can end the commands of all devices at once (the worker
# threads of a multi-device bench would otherwise run to the end after Ctrl-C).
_LIVE: "weakref.WeakSet[Connection]" = weakref.WeakSet()
_LIVE_LOCK = threading.Lock()


def abort_all() -> None:
    """Close every open connection and kill every running local command (on interrupt): the devices' runners
    see their controller go and stop, releasing the device lock."""
    with _LIVE_LOCK:
        conns = list(_LIVE)
    for conn in conns:
        try:
            conn.abort()
        except Exception:
            pass


def q(argv) -> str:
    """A shell command line from a list of words, each quoted."""
    return " ".join(shlex.quote(str(a)) for a in argv)


def fingerprint(key) -> str:
    """OpenSSH-style SHA256 fingerprint of a paramiko key (or of a key's wire bytes)."""
    blob = key if isinstance(key, bytes) else key.asbytes()
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


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

    def run(self, cmd, input: bytes | None = None, timeout: float | None = None, check: bool = False,
            max_output: int | None = None) -> Result:
        """Run a shell command; stdout and stderr are each kept up to ``max_output`` bytes (default
        :data:`MAX_OUTPUT`): past that the command is stopped and a :class:`DeviceError` raised."""
        raise NotImplementedError

    def put(self, local: str, remote: str, callback=None) -> None:
        raise NotImplementedError

    def get(self, remote: str, local: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def abort(self) -> None:
        """Stop whatever runs now, from any thread (interrupt): the connection is unusable afterwards."""
        self.close()

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

    def _too_much(self, limit: int) -> DeviceError:
        return DeviceError(f"the remote command printed more than {limit / 2 ** 20:g} MiB; stopped it",
                           device=self.device.name, hint="a runner caps its samples; is the device's Python ours?")

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
        self._running: set = set()   # process groups of the commands running now
        with _LIVE_LOCK:
            _LIVE.add(self)

    def _home(self) -> str:
        return os.path.expanduser("~")

    @staticmethod
    def _kill_group(proc) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def run(self, cmd, input=None, timeout=None, check=False, max_output=None) -> Result:
        t0 = time.perf_counter()
        timeout = timeout or self.device.command_timeout
        limit = max_output or MAX_OUTPUT
        try:
            # its own process group (and session): an interrupt or timeout kills the shell *and* what it
            # started (the runner), not just the shell, and the terminal's Ctrl-C reaches us only
            p = subprocess.Popen(["/bin/sh", "-c", _as_cmd(cmd)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, start_new_session=True)
        except OSError as e:
            raise DeviceError(f"cannot run command: {e}", device=self.device.name) from None
        self._running.add(p)
        bufs = {"out": [], "err": []}
        over = threading.Event()

        def drain(stream, key):
            kept = 0
            for block in iter(lambda: stream.read1(1 << 16), b""):
                if kept + len(block) > limit:
                    over.set()
                    self._kill_group(p)
                    break
                bufs[key].append(block)
                kept += len(block)

        def feed():
            try:
                if input:
                    p.stdin.write(input)
                p.stdin.close()
            except OSError:
                pass
        threads = [threading.Thread(target=drain, args=(p.stdout, "out"), daemon=True),
                   threading.Thread(target=drain, args=(p.stderr, "err"), daemon=True),
                   threading.Thread(target=feed, daemon=True)]
        try:
            for t in threads:
                t.start()
            deadline = t0 + timeout
            try:
                rc = p.wait(timeout=timeout)
                for t in threads[:2]:  # what the shell started may hold its output open longer
                    t.join(max(0.0, deadline - time.perf_counter()))
                    if t.is_alive():
                        raise subprocess.TimeoutExpired(cmd, timeout)
            except subprocess.TimeoutExpired:
                raise DeviceError(f"command timed out after {timeout:g} s", device=self.device.name) from None
        except BaseException:
            self._kill_group(p)
            p.wait()
            raise
        finally:
            self._running.discard(p)
            for stream in (p.stdin, p.stdout, p.stderr):
                try:
                    stream.close()
                except OSError:
                    pass
        if over.is_set():
            raise self._too_much(limit)
        res = Result(rc, b"".join(bufs["out"]), b"".join(bufs["err"]), time.perf_counter() - t0)
        return self._checked(cmd, res, check)

    def abort(self) -> None:
        for proc in list(self._running):
            self._kill_group(proc)

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


# ------------------------------------------------------------------------------------------ known_hosts

_WARNED: set = set()


def _warn(msg: str) -> None:
    """One ``warning:`` line on stderr, once per process for the same message."""
    with _LIVE_LOCK:
        if msg in _WARNED:
            return
        _WARNED.add(msg)
    sys.stderr.write(f"warning: {msg}\n")
    sys.stderr.flush()


def _glob(pattern: str, name: str) -> bool:
    """OpenSSH host pattern: ``*`` and ``?`` only, case-insensitive (``[`` is literal: ``[host]:port``)."""
    import re
    rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern.lower())
    return re.fullmatch(rx, name.lower()) is not None


@dataclass
class _HostLine:
    lineno: int
    marker: str | None      # "@revoked", "@cert-authority" or None (a plain key)
    hosts: str              # the host patterns field: "a,b,!c", "[a]:2222" or a hashed "|1|salt|hash"
    kind: str               # key type, e.g. ssh-ed25519
    blob: bytes             # the key's wire bytes (what a paramiko key's asbytes() gives)

    def matches(self, host: str) -> bool:
        if self.hosts.startswith("|1|"):
            try:
                _, _, salt, digest = self.hosts.split("|")
                want = base64.b64decode(digest, validate=True)
                mac = hmac.new(base64.b64decode(salt, validate=True), host.lower().encode(), hashlib.sha1).digest()
            except (ValueError, binascii.Error):
                return False
            return hmac.compare_digest(mac, want)
        hit = False
        for pat in self.hosts.split(","):
            if pat.startswith("!"):
                if _glob(pat[1:], host):
                    return False  # a negated pattern that matches excludes the host from this line
            elif pat and _glob(pat, host):
                hit = True
        return hit


class KnownHosts:
    """An OpenSSH ``known_hosts`` file read line by line.

    A malformed line is skipped with a warning on stderr and does not hide the lines after it (paramiko's
    loader stops at the first bad key, so a changed key behind it read as unknown and ``--accept-new`` trusted
    it). Hashed (``|1|``) names, ``[host]:port``, wildcards and negations match as in OpenSSH; ``@revoked``
    keys are refused and ``@cert-authority`` lines are never taken as trust in a plain host key.
    """

    def __init__(self, path: str, lines: list[_HostLine] | None = None, bad: list[int] | None = None):
        self.path = path
        self.lines = lines or []
        self.bad = bad or []

    @classmethod
    def parse(cls, path: str, text: str) -> "KnownHosts":
        """Parse ``text`` (the content of ``path``); bad line numbers end up in ``.bad``."""
        lines, bad = [], []
        for lineno, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            try:
                lines.append(cls._parse_line(lineno, line))
            except ValueError:
                bad.append(lineno)
        return cls(path, lines, bad)

    @staticmethod
    def _parse_line(lineno: int, line: str) -> _HostLine:
        fields = line.split()
        marker = None
        if fields[0].startswith("@"):
            marker = fields.pop(0)
        if len(fields) < 3:
            raise ValueError("too few fields")
        hosts, kind, b64 = fields[:3]
        try:
            blob = base64.b64decode(b64, validate=True)
        except (ValueError, binascii.Error):
            raise ValueError("bad base64") from None
        # the key's own type (the first string of its wire form) must be the one the line names
        if len(blob) < 4 or blob[4:4 + int.from_bytes(blob[:4], "big")] != kind.encode():
            raise ValueError("key type mismatch")
        return _HostLine(lineno, marker, hosts, kind, blob)

    @classmethod
    def load(cls, path: str) -> "KnownHosts":
        """Read ``path`` (missing: empty); warns once per bad line on stderr."""
        try:
            with open(path, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return cls(path)
        except OSError as e:
            _warn(f"{path}: cannot read known hosts: {e.strerror or e}")
            return cls(path)
        kh = cls.parse(path, text)
        for lineno in kh.bad:
            _warn(f"{path}:{lineno}: malformed known_hosts line skipped")
        return kh

    def keys_for(self, host: str) -> list[_HostLine]:
        """The plain (unmarked) keys recorded for ``host``."""
        return [e for e in self.lines if e.marker is None and e.matches(host)]

    def revoked(self, host: str, blob: bytes) -> bool:
        """Whether this key is listed ``@revoked`` for ``host``."""
        return any(e.marker == "@revoked" and e.blob == blob and e.matches(host) for e in self.lines)

    def has(self, host: str, blob: bytes) -> bool:
        return any(e.blob == blob for e in self.keys_for(host))


def record_host_key(path: str, host: str, kind: str, b64: str) -> bool:
    """Append ``host kind b64`` to the known_hosts file ``path`` safely; False when it was already there.

    Under an flock (on the file's folder: the file itself is replaced), the current content is read again,
    a missing final newline is added (else the key would glue onto the last line), and the result is written
    to a temporary file and renamed over the old one (a crash never leaves half a file). A folder created here
    is 0700 (like ~/.ssh); a new file is 0600, an existing one keeps its mode (less group/other write).
    """
    import fcntl

    real = os.path.realpath(path)   # a symlinked known_hosts stays a symlink: write its target
    parent = os.path.dirname(real)
    if not os.path.isdir(parent):
        os.makedirs(parent, mode=0o700, exist_ok=True)
        os.chmod(parent, 0o700)   # makedirs' mode is filtered by the umask
    dir_fd = os.open(parent, os.O_RDONLY)
    tmp = None
    try:
        fcntl.flock(dir_fd, fcntl.LOCK_EX)
        try:
            with open(real, "rb") as f:
                old = f.read()
            st = os.stat(real)
            mode = st.st_mode & 0o777 & ~0o022
        except FileNotFoundError:
            old, st, mode = b"", None, 0o600
        blob = base64.b64decode(b64)
        if KnownHosts.parse(real, old.decode("utf-8", "replace")).has(host, blob):
            return False  # another edgeopt recorded it meanwhile
        if old and not old.endswith(b"\n"):
            old += b"\n"
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=".known_hosts.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(old + f"{host} {kind} {b64}\n".encode())
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if st is not None and (st.st_uid, st.st_gid) != (os.getuid(), os.getgid()):
            try:
                os.chown(tmp, st.st_uid, st.st_gid)
            except OSError:
                pass
        os.replace(tmp, real)
        tmp = None
        try:
            os.fsync(dir_fd)
        except OSError:
            pass
        return True
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        os.close(dir_fd)   # releases the lock


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
        with _LIVE_LOCK:
            _LIVE.add(self)

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
                _tcp_keepalive(sock)
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
        entry = known.keys_for(name)
        if entry:  # negotiate a key type we already know, like OpenSSH does
            opts = t.get_security_options()
            kinds = {e.kind for e in entry}
            if "ssh-rsa" in kinds:  # an RSA key is offered with SHA-2 signatures too
                kinds |= {"rsa-sha2-256", "rsa-sha2-512"}
            have = [k for k in opts.key_types if k in kinds]
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
            self._verify_host_key(server_key, known_path, known, name, label)
            self._authenticate(t, dev, label)
            t.set_keepalive(KEEPALIVE_S)
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
        path = dev.known_hosts or os.path.expanduser("~/.ssh/known_hosts")
        return path, KnownHosts.load(path)

    def _verify_host_key(self, key, path: str, known: KnownHosts, name: str, label: str):
        kind, blob = key.get_name(), key.asbytes()
        if known.revoked(name, blob):
            raise self._err(f"{label}host key REVOKED for {name}: {path} marks {kind} {fingerprint(blob)} "
                            f"@revoked; refusing to connect")
        entry = known.keys_for(name)
        if any(e.blob == blob for e in entry):
            return
        if entry:  # a key for this host, but not this one (of this type or another): changed, never new
            same = [e for e in entry if e.kind == kind]
            had = (f"{fingerprint(same[0].blob)}" if same else
                   "a " + " / ".join(dict.fromkeys(e.kind for e in entry)) + " key")
            raise self._err(
                f"{label}HOST KEY CHANGED for {name}: {path} has {had}, the device offers "
                f"{fingerprint(blob)} ({kind}); refusing to connect (someone may be intercepting the connection)",
                hint=f"if the device was reinstalled, remove the old key: ssh-keygen -R {shlex.quote(name)} "
                     f"-f {shlex.quote(path)}, then rerun with --accept-new")
        if not self.accept_new:
            raise self._err(
                f"{label}host key unknown for {name} ({kind} {fingerprint(key)}), not in {path}; refusing to connect",
                hint="check the fingerprint on the device (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub) and rerun "
                     "with --accept-new to trust it")
        try:
            record_host_key(path, name, kind, key.get_base64())
        except OSError as e:
            raise self._err(f"{label}cannot record the host key of {name} in {path}: {e.strerror or e}") from None

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

    def run(self, cmd, input=None, timeout=None, check=False, max_output=None) -> Result:
        self._alive()
        cmd_s = _as_cmd(cmd)
        timeout = timeout or self.device.command_timeout
        limit = max_output or MAX_OUTPUT
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
        kept = [0, 0]
        deadline = t0 + timeout
        idle, quiet_since = _IDLE_FIRST, None
        try:
            while True:
                got = kept[0] + kept[1]
                while chan.recv_ready():
                    out.append(chan.recv(1 << 16))
                    kept[0] += len(out[-1])
                while chan.recv_stderr_ready():
                    err.append(chan.recv_stderr(1 << 16))
                    kept[1] += len(err[-1])
                if max(kept) > limit:  # closing the channel (finally) ends the remote command
                    raise self._too_much(limit)
                drained = not chan.recv_ready() and not chan.recv_stderr_ready()
                if chan.exit_status_ready() and drained:
                    # sshd sends the exit status as soon as the command exits, while output it has
                    # not sent yet may still follow: done at EOF. A background child that keeps the
                    # output open would hold it forever (ssh waits); stop after a quiet grace instead.
                    now = time.perf_counter()
                    if kept[0] + kept[1] > got or quiet_since is None:
                        quiet_since = now
                    if chan.eof_received or chan.closed or now - quiet_since > _EOF_GRACE:
                        break
                if not self.transport.is_active():
                    raise self._err("connection lost while running a command")
                if time.perf_counter() > deadline:
                    raise self._err(f"remote command timed out after {timeout:g} s")
                # Never select() on the channel: its fileno() is a pipe that paramiko's transport thread
                # writes to as data arrives, and closing the channel closes that pipe without a lock; a
                # write racing the close fails with EBADF and kills the whole transport (or hits whatever
                # file reused the number). Poll instead, backing off while nothing arrives; the exit
                # status event wakes the wait at once.
                idle = _IDLE_FIRST if kept[0] + kept[1] > got else min(idle * 2, _IDLE_MAX)
                if chan.status_event.is_set():
                    time.sleep(idle)
                else:
                    chan.status_event.wait(idle)
            rc = chan.recv_exit_status()
        finally:
            chan.close()
        if writer:
            writer.join(1)
        return self._checked(cmd_s, Result(rc, b"".join(out), b"".join(err), time.perf_counter() - t0), check)

    def sftp(self):
        """The SFTP session (opened once). Its channel has a timeout: an SFTP server that stops answering
        (or never answers) fails the request after :func:`stall_timeout` seconds instead of hanging."""
        self._alive()
        with self._lock:
            if self._sftp is None:
                import paramiko
                stall = stall_timeout()
                chan = None
                try:
                    chan = self.transport.open_session(window_size=WINDOW_SIZE, max_packet_size=MAX_PACKET_SIZE,
                                                       timeout=self.device.connect_timeout)
                    chan.settimeout(stall)
                    chan.invoke_subsystem("sftp")
                    self._sftp = paramiko.SFTPClient(chan)   # waits (at most ``stall``) for the server's version
                except socket.timeout:
                    if chan is not None:
                        chan.close()
                    raise self._err(f"the device's SFTP server did not answer within {stall:g} s",
                                    hint="check the Subsystem sftp line of the device's sshd_config") from None
                except Exception as e:
                    if chan is not None:
                        chan.close()
                    raise self._err(f"cannot open SFTP: {e or type(e).__name__}") from None
            return self._sftp

    def _transfer_failed(self, what: str, e: Exception) -> DeviceError:
        # a timed-out SFTP session may still deliver late answers: start a fresh one next time
        with self._lock:
            sftp, self._sftp = self._sftp, None
        if sftp is not None:
            try:
                sftp.close()
            except Exception:
                pass
        if isinstance(e, socket.timeout):
            return self._err(f"{what} stalled: no progress for {stall_timeout():g} s",
                             hint="is the device or its link overloaded? EDGEOPT_STALL_TIMEOUT sets the limit")
        return self._err(f"{what} failed: {e or type(e).__name__}")

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
            raise self._transfer_failed(f"upload to {remote}", e) from None

    def get(self, remote, local) -> None:
        try:
            self.sftp().get(remote, local)
        except DeviceError:
            raise
        except Exception as e:
            raise self._transfer_failed(f"download of {remote}", e) from None

    def close(self) -> None:
        for obj in [self._sftp, self.transport] + list(reversed(self._hops)):
            try:
                if obj is not None:
                    obj.close()
            except Exception:
                pass
        self._sftp = None


def _tcp_keepalive(sock) -> None:
    """TCP keepalives (15 s idle, then every 15 s, 4 misses): a vanished peer breaks the socket instead of
    leaving a read waiting forever."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for opt, value in (("TCP_KEEPIDLE", KEEPALIVE_S), ("TCP_KEEPINTVL", KEEPALIVE_S), ("TCP_KEEPCNT", 4)):
            if hasattr(socket, opt):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)
    except OSError:
        pass


def connect(device: Device, accept_new: bool = False) -> Connection:
    """A connection to ``device``: local for the ``--local`` device, SSH otherwise."""
    if device.local:
        return LocalConnection(device)
    return SSHConnection(device, accept_new=accept_new)
