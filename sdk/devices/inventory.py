"""The device inventory: ``edgeopt.toml`` (or ``--inventory FILE`` or ``$EDGEOPT_INVENTORY``).

    [devices.pi-01]
    host = "192.0.2.10"          # or a Host alias from ~/.ssh/config
    port = 22
    user = "pi"
    identity = "keys/id_ed25519" # optional; ssh-agent and ~/.ssh/config are used too
    known_hosts = "keys/known_hosts"   # optional; default ~/.ssh/known_hosts
    proxy_jump = "bastion"       # optional: an inventory device, a ~/.ssh/config alias or [user@]host[:port]
    target = "rpi5"
    python = "python3"           # interpreter on the device
    workdir = "~/.edgeopt"       # where artifacts and results live on the device

Extensions: ``connect_timeout`` (seconds, default 10), ``command_timeout`` (seconds, default 600),
``trtexec`` (path of trtexec on the device when it is not on PATH or in /usr/src/tensorrt/bin).

Relative paths are relative to the inventory file. ``~/.ssh/config`` aliases are honoured (HostName,
User, Port, IdentityFile, ProxyJump); values written in the inventory win over the ssh config.
Any problem is a :class:`edgeopt.errors.UsageError` (exit code 2) naming the file and the device.
"""
from __future__ import annotations

import difflib
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from edgeopt import targets
from edgeopt.errors import UsageError

__all__ = ["Device", "Inventory", "load", "find", "local_device", "parse_jump", "ssh_config_lookup"]

ENV = "EDGEOPT_INVENTORY"
DEFAULT_NAME = "edgeopt.toml"
DEFAULT_WORKDIR = "~/.edgeopt"

_TYPE_NAMES = {"port": "a whole number (1-65535)", "identity": "a path or a list of paths (strings)",
               "connect_timeout": "a number of seconds", "command_timeout": "a number of seconds"}
_KEYS = {"host": str, "port": int, "user": str, "identity": (str, list), "known_hosts": str,
         "proxy_jump": str, "target": str, "python": str, "workdir": str, "connect_timeout": (int, float),
         "command_timeout": (int, float), "trtexec": str, "description": str}


@dataclass
class Device:
    """One device as the connection layer needs it (ssh config already applied)."""

    name: str
    host: str = "localhost"              # what the inventory says (maybe an alias): used for known_hosts
    hostname: str | None = None          # the address to connect to (ssh config HostName), default host
    port: int = 22
    user: str | None = None
    identities: list[str] = field(default_factory=list)
    known_hosts: str | None = None
    proxy_jump: "list[Device]" = field(default_factory=list)   # hops, first hop first
    target: str | None = None
    python: str = "python3"
    workdir: str = DEFAULT_WORKDIR
    connect_timeout: float = 10.0
    command_timeout: float = 600.0
    trtexec: str | None = None
    local: bool = False

    @property
    def address(self) -> str:
        return self.hostname or self.host

    def describe(self) -> str:
        if self.local:
            return "local (this machine)"
        u = f"{self.user}@" if self.user else ""
        via = f" via {','.join(h.name for h in self.proxy_jump)}" if self.proxy_jump else ""
        return f"{u}{self.address}:{self.port}{via}"


@dataclass
class Inventory:
    path: Path | None
    devices: dict[str, Device]

    def get(self, name: str) -> Device:
        if name not in self.devices:
            close = difflib.get_close_matches(name, list(self.devices), n=3)
            where = f" in {self.path}" if self.path else ""
            hint = f"did you mean {' or '.join(close)}?" if close else (
                f"known devices: {', '.join(self.devices) or 'none'}")
            raise UsageError(f"unknown device {name!r}{where}", hint=hint)
        return self.devices[name]

    def select(self, names=None, all_devices: bool = False, family: str | None = None) -> list[Device]:
        """Devices by name (a list or 'a,b'), all of them, or those whose target is in ``family``."""
        if names:
            if isinstance(names, str):
                names = [names]
            flat = [n.strip() for part in names for n in str(part).split(",") if n.strip()]
            return [self.get(n) for n in dict.fromkeys(flat)]
        if all_devices:
            return list(self.devices.values())
        if family:
            return [d for d in self.devices.values() if d.target and targets.in_family(d.target, family)]
        return []


def find(path: str | os.PathLike | None = None, cwd: str | None = None) -> Path | None:
    """The inventory file to use: ``path``, else ``$EDGEOPT_INVENTORY``, else ``./edgeopt.toml``; None if none."""
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise UsageError(f"inventory {path}: no such file")
        return p
    env = os.environ.get(ENV)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise UsageError(f"inventory {env} (from ${ENV}): no such file")
        return p
    p = Path(cwd or os.getcwd()) / DEFAULT_NAME
    return p if p.is_file() else None


def _toml_load(path: Path) -> dict:
    try:
        import tomllib  # Python >= 3.11
    except ImportError:  # pragma: no cover
        try:
            import tomli as tomllib  # type: ignore
        except ImportError:
            raise UsageError("reading the inventory needs Python >= 3.11 or the 'tomli' package",
                             hint="pip install tomli") from None
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"inventory {path}: not valid TOML: {e}") from None
    except OSError as e:
        raise UsageError(f"inventory {path}: {e.strerror}") from None


def ssh_config_lookup(alias: str, config_path: str | None = None) -> dict:
    """``ssh -G``-like lookup of ``alias`` in ~/.ssh/config (paramiko's parser); {} when there is none."""
    import paramiko

    path = Path(config_path or os.path.expanduser("~/.ssh/config"))
    if not path.is_file():
        return {}
    try:
        cfg = paramiko.SSHConfig.from_path(str(path))
        return dict(cfg.lookup(alias))
    except Exception as e:  # a broken ssh config should not be silent
        raise UsageError(f"{path}: cannot parse ssh config: {e}") from None


def parse_jump(spec: str) -> tuple[str | None, str, int | None]:
    """``[user@]host[:port]`` (or ``ssh://user@host:port``) -> (user, host, port); ValueError if malformed."""
    s = spec.strip()
    if s.startswith("ssh://"):
        s = s[6:]
    user = None
    if "@" in s:
        user, s = s.rsplit("@", 1)
    port = None
    if s.startswith("["):  # [v6]:port
        host, _, rest = s[1:].partition("]")
        if rest.startswith(":"):
            port = _port(rest[1:], spec)
    elif s.count(":") == 1:
        host, p = s.split(":")
        port = _port(p, spec)
    else:
        host = s
    if not host.strip():
        raise ValueError(f"{spec!r}: no host")
    return user, host, port


def _port(text: str, spec: str) -> int:
    """A TCP port from text; ValueError naming ``spec`` otherwise."""
    try:
        port = int(str(text).strip())
    except ValueError:
        raise ValueError(f"{spec!r}: port {text!r} is not a number") from None
    if not 0 < port < 65536:
        raise ValueError(f"{spec!r}: port {port} out of range")
    return port


def _resolve_path(base: Path | None, value: str) -> str:
    p = Path(os.path.expanduser(value))
    if not p.is_absolute() and base is not None:
        p = base / p
    return str(p)


def _apply_ssh_config(dev: Device, cfg: dict, explicit: set, base: Path | None, inv_devices: dict,
                      ssh_config: str | None, depth: int) -> Device:
    if "hostname" in cfg and "hostname" not in explicit:
        dev.hostname = cfg["hostname"]
    if "user" in cfg and "user" not in explicit:
        dev.user = cfg["user"]
    if "port" in cfg and "port" not in explicit:
        try:
            dev.port = _port(cfg["port"], f"Port {cfg['port']}")
        except ValueError as e:
            raise UsageError(f"device {dev.name}: ssh config for {dev.host}: {e}") from None
    if cfg.get("identityfile"):
        extra = [_resolve_path(None, p) for p in cfg["identityfile"]]
        dev.identities += [p for p in extra if p not in dev.identities]
    if cfg.get("userknownhostsfile") and "known_hosts" not in explicit:
        first = str(cfg["userknownhostsfile"]).split()[0]
        if first.lower() != "/dev/null":
            dev.known_hosts = _resolve_path(None, first)
    if cfg.get("proxyjump") and "proxy_jump" not in explicit and cfg["proxyjump"].lower() != "none":
        dev.proxy_jump = _resolve_jumps(cfg["proxyjump"], dev, base, inv_devices, ssh_config, depth)
    return dev


def _resolve_jumps(spec: str, dev: Device, base, inv_devices: dict, ssh_config, depth: int) -> list[Device]:
    if depth > 8:
        raise UsageError(f"device {dev.name}: proxy_jump chain too long (a loop?)")
    hops: list[Device] = []
    for part in [p for p in spec.split(",") if p.strip()]:
        part = part.strip()
        if part in inv_devices:  # another inventory device (its own known_hosts, keys, jumps)
            hop = _build_device(part, inv_devices[part], base, inv_devices, ssh_config, depth + 1)
            hops += hop.proxy_jump
            hops.append(replace(hop, proxy_jump=[]))
            continue
        try:
            user, host, port = parse_jump(part)
        except ValueError as e:
            raise UsageError(f"device {dev.name}: proxy_jump {e}",
                             hint="proxy_jump takes an inventory device, an ~/.ssh/config alias or "
                                  "[user@]host[:port], comma-separated") from None
        hop = Device(name=part, host=host, known_hosts=dev.known_hosts, connect_timeout=dev.connect_timeout)
        explicit = set()
        if user:
            hop.user, _ = user, explicit.add("user")
        if port:
            hop.port, _ = port, explicit.add("port")
        hop = _apply_ssh_config(hop, ssh_config_lookup(host, ssh_config), explicit, base, inv_devices,
                                ssh_config, depth + 1)
        hops += hop.proxy_jump
        hops.append(replace(hop, proxy_jump=[]))
    return hops


def _build_device(name: str, raw, base: Path | None, inv_devices: dict, ssh_config: str | None,
                  depth: int = 0) -> Device:
    if not isinstance(raw, dict):
        raise UsageError(f"[devices.{name}] must be a table")
    for key, value in raw.items():
        if key not in _KEYS:
            close = difflib.get_close_matches(key, list(_KEYS), n=1)
            raise UsageError(f"device {name}: unknown key {key!r}",
                             hint=f"did you mean {close[0]!r}?" if close else f"keys: {', '.join(_KEYS)}")
        typ = _KEYS[key]
        if not isinstance(value, typ) or isinstance(value, bool):
            raise UsageError(f"device {name}: {key} = {value!r} has the wrong type",
                             hint=f"{key} takes {_TYPE_NAMES.get(key, 'a string')}")
        if key == "identity" and isinstance(value, list) and not all(isinstance(v, str) and v for v in value):
            raise UsageError(f"device {name}: identity = {value!r} has the wrong type",
                             hint=_TYPE_NAMES["identity"])
        if isinstance(value, str) and "\0" in value:
            raise UsageError(f"device {name}: {key} holds a NUL character")
        if key in ("connect_timeout", "command_timeout") and not 0 < value < float("inf"):
            raise UsageError(f"device {name}: {key} = {value!r} must be a positive number of seconds")
    if "host" not in raw or not str(raw["host"]).strip():
        raise UsageError(f"device {name}: no host", hint='add host = "192.0.2.10" (or an ~/.ssh/config alias)')
    explicit = set(raw)
    dev = Device(name=name, host=raw["host"].strip())
    if "port" in raw:
        if not 0 < raw["port"] < 65536:
            raise UsageError(f"device {name}: port {raw['port']} out of range")
        dev.port = raw["port"]
    dev.user = raw.get("user")
    ids = raw.get("identity") or []
    dev.identities = [_resolve_path(base, p) for p in ([ids] if isinstance(ids, str) else ids)]
    if "known_hosts" in raw:
        dev.known_hosts = _resolve_path(base, raw["known_hosts"])
    if "target" in raw:
        try:
            dev.target = targets.get(raw["target"]).name
        except KeyError as e:
            raise UsageError(f"device {name}: {e.args[0]}") from None
    dev.python = raw.get("python", "python3")
    dev.workdir = raw.get("workdir", DEFAULT_WORKDIR)
    if not dev.workdir.strip():
        raise UsageError(f"device {name}: empty workdir")
    dev.connect_timeout = float(raw.get("connect_timeout", 10))
    dev.command_timeout = float(raw.get("command_timeout", 600))
    dev.trtexec = raw.get("trtexec")
    _apply_ssh_config(dev, ssh_config_lookup(dev.host, ssh_config), explicit, base, inv_devices, ssh_config,
                      depth)
    if "proxy_jump" in raw and raw["proxy_jump"].strip().lower() != "none":
        dev.proxy_jump = _resolve_jumps(raw["proxy_jump"], dev, base, inv_devices, ssh_config, depth)
    return dev


def load(path: str | os.PathLike | None = None, cwd: str | None = None, ssh_config: str | None = None,
         required: bool = False) -> Inventory:
    """Read the inventory (see :func:`find`); an empty inventory when there is none and not ``required``."""
    p = find(path, cwd)
    if p is None:
        if required:
            raise UsageError(f"no inventory: no {DEFAULT_NAME} here, no --inventory, no ${ENV}",
                             hint="write edgeopt.toml (see `edgeopt devices --help`) or use --local")
        return Inventory(None, {})
    data = _toml_load(p)
    unknown = [k for k in data if k != "devices"]
    if unknown:
        raise UsageError(f"inventory {p}: unknown top-level key(s) {unknown}; expected [devices.NAME] tables")
    raw_devices = data.get("devices", {})
    if not isinstance(raw_devices, dict):
        raise UsageError(f"inventory {p}: 'devices' must be a table of [devices.NAME] tables")
    base = p.resolve().parent
    devices = {}
    for name, raw in raw_devices.items():
        try:
            try:
                devices[name] = _build_device(name, raw, base, raw_devices, ssh_config)
            except (ValueError, TypeError, AttributeError) as e:  # a value no check above foresaw: still exit 2
                raise UsageError(f"device {name}: invalid entry ({e})") from None
        except UsageError as e:
            if str(p) not in e.message:
                e.message = f"inventory {p}: {e.message}"
                e.args = (e.message,)
            raise
    return Inventory(p, devices)


def local_device(target: str | None = None, workdir: str | None = None, python: str | None = None) -> Device:
    """The ``--local`` device: this machine, this Python, a workdir under ~/.cache/edgeopt/local."""
    wd = workdir or os.environ.get("EDGEOPT_LOCAL_WORKDIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "edgeopt", "local")
    return Device(name="local", host="localhost", target=target, python=python or sys.executable, workdir=wd,
                  local=True)
