"""deploy's cache under concurrency and toolchain changes; inventory mistakes end as usage errors (exit 2)."""
import json
import threading
import time
from importlib import metadata

import pytest

import edgeopt
from edgeopt.devices import deploy, inventory
from edgeopt.errors import UsageError
from edgeopt_testkit import edgeopt_cli


def _fake_convert(calls, delay=0.5):
    """A stand-in for edgeopt.convert that writes a real-looking output dir slowly and counts its calls."""
    def convert(model, target, out, **options):
        calls.append(dict(options, out=out))
        time.sleep(delay)
        import hashlib
        import os
        os.makedirs(out, exist_ok=True)
        data = b"artifact"
        with open(os.path.join(out, "model.int8.tflite"), "wb") as f:
            f.write(data)
        manifest = {"schema": 1, "edgeopt": "x", "toolchain": {}, "options": options,
                    "artifacts": [{"file": "model.int8.tflite", "sha256": hashlib.sha256(data).hexdigest()}]}
        with open(os.path.join(out, "manifest.json"), "w") as f:
            json.dump(manifest, f)
        return manifest
    return convert


@pytest.fixture()
def model(tmp_path):
    p = tmp_path / "m.onnx"
    p.write_bytes(b"model bytes")
    return str(p)


def test_concurrent_deploys_of_one_entry_convert_once(tmp_path, model, monkeypatch):
    calls = []
    monkeypatch.setattr(edgeopt, "convert", _fake_convert(calls))
    results, errors = [], []

    def run():
        try:
            results.append(deploy.convert_cached(model, "rpi5", cache_root=str(tmp_path / "cache"), calib="random"))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(calls) == 1, f"converted {len(calls)} times concurrently"
    assert sorted(r[2] for r in results) == [False, True, True]
    assert len({r[1] for r in results}) == 1


def test_cache_key_changes_with_the_toolchain(model, monkeypatch):
    before = deploy.cache_key(model, "rpi5", {"calib": "random"})
    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda d: "99.0.0" if d == "tensorflow" else real(d))
    assert deploy.cache_key(model, "rpi5", {"calib": "random"}) != before


def test_cache_key_changes_with_edgeopt_code_of_the_same_version(model, monkeypatch, tmp_path):
    """An artifact converted by older code of the same version (a checkout between releases) is not served."""
    code = tmp_path / "code"
    (code / "sub").mkdir(parents=True)
    (code / "sub" / "m.py").write_text("X = 1\n")
    monkeypatch.setattr(deploy, "_code_roots", lambda: [code])
    before = deploy.cache_key(model, "rpi5", {"calib": "random"})
    (code / "__pycache__").mkdir()
    (code / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"bytecode")   # not code: the key stays
    deploy._CODE.clear()
    assert deploy.cache_key(model, "rpi5", {"calib": "random"}) == before
    (code / "sub" / "m.py").write_text("X = 2\n")
    deploy._CODE.clear()
    assert deploy.cache_key(model, "rpi5", {"calib": "random"}) != before


def test_code_roots_are_edgeopts_three_folders():
    roots = deploy._code_roots()
    assert len(roots) == 3 and all((r / "__init__.py").is_file() for r in roots)
    assert (roots[0] / "devices" / "deploy.py").is_file() and (roots[2] / "onnx_qdq.py").is_file()


def test_deploy_passes_trust_model_code_and_keys_on_it(tmp_path, model, monkeypatch):
    calls = []
    monkeypatch.setattr(edgeopt, "convert", _fake_convert(calls, delay=0))
    root = str(tmp_path / "cache")
    plain = deploy.deploy(model, "rpi5", [], calib="random", cache_root=root)
    trusted = deploy.deploy(model, "rpi5", [], calib="random", cache_root=root, trust_model_code=True)
    assert "trust_model_code" not in calls[0] and calls[1]["trust_model_code"] is True
    assert plain["out"] != trusted["out"] and trusted["converted"]


# ----------------------------------------------------------------------------------------- inventory

BAD = [
    ('proxy_jump = "h:notaport"', "proxy_jump", "notaport"),
    ('proxy_jump = "bob@[::1]:x"', "proxy_jump", "'x'"),
    ('proxy_jump = "bob@:22"', "proxy_jump", "no host"),
    ("identity = [1]", "identity", "[1]"),
    ('identity = ["k", 2]', "identity", "wrong type"),
    ('port = "22"', "port", "wrong type"),
    ("port = 1.5", "port", "wrong type"),
    ("connect_timeout = -1", "connect_timeout", "positive"),
    ("command_timeout = nan", "command_timeout", "positive"),
    ("host = 5", "host", "wrong type"),
    ('target = ["rpi5"]', "target", "wrong type"),
    ("python = true", "python", "wrong type"),
]


@pytest.mark.parametrize("line,key,detail", BAD)
def test_inventory_mistakes_are_usage_errors(tmp_path, line, key, detail):
    inv = tmp_path / "edgeopt.toml"
    host = "" if line.startswith("host") else 'host = "192.0.2.10"\n'
    inv.write_text(f"[devices.pi-07]\n{host}{line}\n")
    with pytest.raises(UsageError) as e:
        inventory.load(inv, ssh_config=str(tmp_path / "no-ssh-config"))
    msg = str(e.value.message)
    assert "pi-07" in msg and key in msg and detail in msg, msg


def test_ssh_config_port_that_is_not_a_number(tmp_path):
    cfg = tmp_path / "ssh_config"
    cfg.write_text("Host pi\n  Port notaport\n")
    inv = tmp_path / "edgeopt.toml"
    inv.write_text('[devices.pi-08]\nhost = "pi"\n')
    with pytest.raises(UsageError, match=r"pi-08.*notaport"):
        inventory.load(inv, ssh_config=str(cfg))


def test_inventory_mistake_on_the_command_line(tmp_path):
    inv = tmp_path / "edgeopt.toml"
    inv.write_text('[devices.pi-09]\nhost = "192.0.2.10"\nproxy_jump = "h:notaport"\n')
    r = edgeopt_cli("devices", "--inventory", inv, "--json")
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines[0].startswith("error:") and "pi-09" in lines[0] and "proxy_jump" in lines[0], r.stderr
    assert "Traceback" not in r.stderr
