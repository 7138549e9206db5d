"""The TOML inventory: fields, relative paths, ~/.ssh/config aliases, proxy jumps, bad inventories (exit 2)."""

import pytest

from edgeopt.devices import inventory
from edgeopt.errors import UsageError
from edgeopt_testkit import edgeopt_cli


def write(p, text):
    p.write_text(text)
    return p


def test_fields_and_relative_paths(tmp_path):
    (tmp_path / "lab").mkdir()
    f = write(tmp_path / "lab" / "edgeopt.toml", """
[devices.pi-01]
host = "192.0.2.10"
port = 2222
user = "pi"
identity = "keys/id_ed25519"
known_hosts = "keys/known_hosts"
target = "rpi"
python = "/usr/bin/python3"
workdir = "/srv/edgeopt"

[devices.jet]
host = "192.0.2.20"
target = "jetson"
proxy_jump = "pi-01"
""")
    inv = inventory.load(f)
    pi = inv.get("pi-01")
    assert (pi.address, pi.port, pi.user, pi.target, pi.python, pi.workdir) == (
        "192.0.2.10", 2222, "pi", "rpi5", "/usr/bin/python3", "/srv/edgeopt")
    assert pi.identities == [str(tmp_path / "lab" / "keys" / "id_ed25519")]
    assert pi.known_hosts == str(tmp_path / "lab" / "keys" / "known_hosts")
    jet = inv.get("jet")
    assert jet.target == "jetson-orin-nano" and jet.workdir == "~/.edgeopt" and jet.port == 22
    assert [h.name for h in jet.proxy_jump] == ["pi-01"] and jet.proxy_jump[0].port == 2222
    assert [d.name for d in inv.select(family="jetson")] == ["jet"]
    assert [d.name for d in inv.select(["pi-01,jet"])] == ["pi-01", "jet"]


def test_env_and_cwd(tmp_path, monkeypatch):
    write(tmp_path / "edgeopt.toml", '[devices.a]\nhost = "h"\n')
    monkeypatch.delenv("EDGEOPT_INVENTORY", raising=False)
    assert list(inventory.load(cwd=str(tmp_path)).devices) == ["a"]
    other = write(tmp_path / "other.toml", '[devices.b]\nhost = "h"\n')
    monkeypatch.setenv("EDGEOPT_INVENTORY", str(other))
    assert list(inventory.load(cwd=str(tmp_path)).devices) == ["b"]
    monkeypatch.delenv("EDGEOPT_INVENTORY")
    inv = inventory.load(cwd=str(tmp_path / "nowhere"))
    assert inv.path is None and inv.devices == {}


def test_ssh_config_alias(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(
        "Host bastion\n  HostName 198.51.100.1\n  User jump\n  Port 2200\n"
        "Host pi5\n  HostName 192.0.2.55\n  User pi\n  Port 2022\n  IdentityFile ~/.ssh/pi_key\n  ProxyJump bastion\n")
    monkeypatch.setenv("HOME", str(home))
    f = write(tmp_path / "edgeopt.toml", '[devices.p]\nhost = "pi5"\ntarget = "rpi5"\n'
                                         '[devices.q]\nhost = "pi5"\nuser = "root"\nport = 22\nproxy_jump = "none"\n')
    inv = inventory.load(f)
    p = inv.get("p")
    assert (p.host, p.address, p.user, p.port) == ("pi5", "192.0.2.55", "pi", 2022)
    assert p.identities == [str(home / ".ssh" / "pi_key")]
    assert [(h.address, h.user, h.port) for h in p.proxy_jump] == [("198.51.100.1", "jump", 2200)]
    q = inv.get("q")  # inventory values win over the ssh config
    assert (q.user, q.port, q.proxy_jump) == ("root", 22, [])


def test_jump_spec():
    assert inventory.parse_jump("alice@bastion:2200") == ("alice", "bastion", 2200)
    assert inventory.parse_jump("bastion") == (None, "bastion", None)
    assert inventory.parse_jump("[2001:db8::1]:22") == (None, "2001:db8::1", 22)


@pytest.mark.parametrize("text, words", [
    ('[devices.a]\nport = 22\n', "no host"),
    ('[devices.a]\nhost = "h"\ntarget = "rpi6"\n', "unknown target 'rpi6'"),
    ('[devices.a]\nhost = "h"\nprot = 22\n', "unknown key 'prot'"),
    ('[devices.a]\nhost = "h"\nport = "22"\n', "wrong type"),
    ('[devices.a]\nhost = "h"\nport = 70000\n', "out of range"),
    ('[devices.a\nhost = "h"\n', "not valid TOML"),
    ('[hosts.a]\nhost = "h"\n', "unknown top-level"),
])
def test_bad_inventory_is_usage_error(tmp_path, text, words):
    f = write(tmp_path / "edgeopt.toml", text)
    with pytest.raises(UsageError) as e:
        inventory.load(f)
    assert words in str(e.value) and str(f) in str(e.value)
    assert e.value.exit_code == 2


def test_missing_inventory_and_unknown_device(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        inventory.load(tmp_path / "nope.toml")
    inv = inventory.load(write(tmp_path / "edgeopt.toml", '[devices.pi-01]\nhost = "h"\n'))
    with pytest.raises(UsageError) as e:
        inv.get("pi-1")
    assert "did you mean pi-01" in e.value.hint


def test_cli_bad_inventory_exit_2(tmp_path):
    f = write(tmp_path / "edgeopt.toml", '[devices.a]\nhost = "h"\ntarget = "jetsn"\n')
    p = edgeopt_cli("devices", "--inventory", f)
    assert p.returncode == 2
    assert p.stderr.startswith("error: inventory ") and "did you mean" in p.stderr and "Traceback" not in p.stderr
