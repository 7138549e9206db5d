"""The SSH connection against real OpenSSH servers: host keys, auth, timeouts, ProxyJump, agent, ssh config."""
import os
import socket
import subprocess
import threading

import pytest

from edgeopt.devices import inventory
from edgeopt.devices.connection import connect, fingerprint, q
from edgeopt.errors import DeviceError
from sshlab import keygen

pytestmark = pytest.mark.ssh


def dev_of(lab, name, **extra):
    return inventory.load(lab.inventory(**extra)).get(name)


def accepted_logins(d):
    return d.log.read_text().count("Accepted publickey")


def test_run_put_get_roundtrip(lab, tmp_path):
    d = lab.start("pi-01")
    with connect(dev_of(lab, "pi-01")) as c:
        assert c.home == "/root"
        r = c.run(["printf", "%s|", "a b", "it's", "x;y", "$HOME"])
        assert r.rc == 0 and r.out == "a b|it's|x;y|$HOME|"
        assert c.run("exit 7").rc == 7
        assert c.run(["cat"], input=b"hello\n" * 1000).stdout == b"hello\n" * 1000
        src = tmp_path / "blob"
        src.write_bytes(os.urandom(300_000))
        c.run(["mkdir", "-p", d.workdir], check=True)
        c.put(str(src), f"{d.workdir}/blob")
        c.get(f"{d.workdir}/blob", str(tmp_path / "back"))
        assert (tmp_path / "back").read_bytes() == src.read_bytes()
        with pytest.raises(DeviceError, match="pi-01: remote command failed"):
            c.run("false", check=True)
        with pytest.raises(DeviceError, match="timed out after 0.3 s"):
            c.run("sleep 5", timeout=0.3)


def test_unknown_host_key_refused_nothing_written(lab):
    d = lab.start("pi-new", known=False)
    dev = dev_of(lab, "pi-new")
    with pytest.raises(DeviceError) as e:
        connect(dev)
    assert e.value.exit_code == 3
    assert str(e.value).startswith("pi-new: host key unknown") and "--accept-new" in e.value.hint
    assert "SHA256:" in str(e.value)
    assert accepted_logins(d) == 0 and d.files() == [] and not os.path.exists(d.workdir)
    assert lab.known_hosts.read_text().count(str(d.port)) == 0
    # trust on first use: recorded, then known without --accept-new
    with connect(dev, accept_new=True) as c:
        assert c.run("true").rc == 0
    assert d.known_line.split()[0] in lab.known_hosts.read_text()
    with connect(dev) as c:
        assert c.run("true").rc == 0


def test_changed_host_key_always_refused(lab, tmp_path):
    d = lab.start("pi-01")
    dev = dev_of(lab, "pi-01")
    lab.stop_device(d)
    other = tmp_path / "other_host_key"
    keygen(other)
    # same address and port, another host key: a reinstalled device or a man in the middle
    d2 = lab.start("pi-01-imposter", host_key=other, known=False)
    dev.port = d2.port
    lab.known_hosts.write_text(d.known_line.replace(f":{d.port} ", f":{d2.port} ") + "\n")
    for accept_new in (False, True):
        with pytest.raises(DeviceError) as e:
            connect(dev, accept_new=accept_new)
        assert "HOST KEY CHANGED" in str(e.value) and str(e.value).startswith("pi-01:")
        assert "ssh-keygen -R" in e.value.hint
    assert accepted_logins(d2) == 0 and d2.files() == []
    assert lab.known_hosts.read_text().count("\n") == 1  # nothing added


def test_auth_failure_and_unreachable(lab, tmp_path):
    lab.start("pi-01")
    wrong = tmp_path / "wrong_key"
    keygen(wrong)
    with pytest.raises(DeviceError, match=r"pi-01: authentication as 'root' .* failed") as e:
        connect(dev_of(lab, "pi-01", identity=str(wrong)))
    assert e.value.exit_code == 3
    dev = dev_of(lab, "pi-01")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dev.port = s.getsockname()[1]  # bound, not listening: refused
        with pytest.raises(DeviceError, match="pi-01: cannot connect to 127.0.0.1"):
            connect(dev)


def test_connect_timeout_on_a_silent_server(lab):
    lab.start("pi-01")
    dev = dev_of(lab, "pi-01", connect_timeout=0.5)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(5)  # accepts TCP, never speaks SSH
    dev.port = srv.getsockname()[1]
    try:
        with pytest.raises(DeviceError, match="pi-01: SSH handshake with .* failed"):
            connect(dev)
    finally:
        srv.close()


def test_proxy_jump_through_a_bastion(lab):
    ns = lab.netns()
    bastion = lab.start("bastion", netns=ns)                 # reachable from here
    inner = lab.start("inner", netns=ns, listen="127.0.0.1")  # the namespace's own loopback: only via the bastion
    inv_path = lab.inventory(per_device={"inner": {"proxy_jump": "bastion"}})
    dev = inventory.load(inv_path).get("inner")
    assert [h.name for h in dev.proxy_jump] == ["bastion"]
    with connect(dev) as c:
        assert c.run(["cat", "/proc/net/dev"]).rc == 0
        c.run(["mkdir", "-p", inner.workdir], check=True)
        assert c.run(["ls", "-d", inner.workdir]).rc == 0
    assert accepted_logins(inner) == 1 and accepted_logins(bastion) == 1
    direct = inventory.load(inv_path).get("inner")
    direct.proxy_jump = []
    with pytest.raises(DeviceError):
        connect(direct)  # 127.0.0.1:port here is not the namespace's loopback


def test_ssh_agent_and_ssh_config_alias(lab, tmp_path, monkeypatch):
    d = lab.start("pi-01")
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(f"Host labpi\n  HostName 127.0.0.1\n  Port {d.port}\n  User root\n")
    monkeypatch.setenv("HOME", str(home))
    agent_sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(agent_sock)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if agent_sock.exists():
                break
            threading.Event().wait(0.01)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(agent_sock))
        subprocess.run(["ssh-add", "-q", str(lab.client_key)], check=True, capture_output=True)
        inv = tmp_path / "edgeopt.toml"
        inv.write_text(f'[devices.alias]\nhost = "labpi"\nknown_hosts = "{lab.known_hosts}"\ntarget = "rpi5"\n')
        dev = inventory.load(inv).get("alias")
        assert (dev.address, dev.port, dev.user, dev.identities) == ("127.0.0.1", d.port, "root", [])
        # known_hosts holds [127.0.0.1]:port (the real address, as OpenSSH records it)
        with connect(dev) as c:
            assert c.run("echo $USER").out.strip() == "root"
    finally:
        agent.terminate()
        agent.wait()


def test_fingerprint_matches_ssh_keygen(lab):
    d = lab.start("pi-01")
    import paramiko
    key = paramiko.PKey.from_path(str(d.root / "ssh_host_ed25519_key"))
    out = subprocess.run(["ssh-keygen", "-lf", str(d.root / "ssh_host_ed25519_key.pub")], capture_output=True,
                         text=True).stdout
    assert fingerprint(key).startswith("SHA256:") and fingerprint(key) in out


def test_q_quotes_every_word():
    assert q(["echo", "a b", "it's", ";rm -rf /"]) == "echo 'a b' 'it'\"'\"'s' ';rm -rf /'"
