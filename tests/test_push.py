"""Content-addressed push over real sshd: skip when present, atomic, no partial file after a dropped link."""
import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from edgeopt.devices import inventory
from edgeopt.devices.connection import connect
from edgeopt.errors import DeviceError
from edgeopt.devices.push import push

pytestmark = pytest.mark.ssh


def test_second_push_sends_zero_bytes(lab, tmp_path):
    d = lab.start("pi-01")
    art = tmp_path / "model.int8.tflite"
    art.write_bytes(os.urandom(200_000))
    sha = hashlib.sha256(art.read_bytes()).hexdigest()
    dev = inventory.load(lab.inventory()).get("pi-01")
    with connect(dev) as c:
        r1 = push(c, str(art), c.expand(dev.workdir))
        r2 = push(c, str(art), c.expand(dev.workdir))
    assert r1.path == f"{d.workdir}/artifacts/{sha}/model.int8.tflite" and r1.sha256 == sha
    assert (r1.bytes, r1.skipped) == (200_000, False)
    assert (r2.bytes, r2.skipped) == (0, True) and r2.path == r1.path
    assert Path(r1.path).read_bytes() == art.read_bytes()
    assert d.files() == ["artifacts", f"artifacts/{sha}", f"artifacts/{sha}/model.int8.tflite"]
    # a new connection, even from another process, finds it too
    with connect(dev) as c:
        assert push(c, str(art), c.expand(dev.workdir)).transfer() == {"bytes": 0, "seconds": pytest.approx(0, abs=1),
                                                                       "skipped": True}


def test_link_killed_mid_push_leaves_no_partial_artifact(lab, tmp_path):
    ns = lab.netns(rate="40mbit")  # 8 MB takes ~1.7 s: time to pull the plug halfway
    d = lab.start("pi-slow", netns=ns)
    art = tmp_path / "big model.tflite"
    art.write_bytes(os.urandom(8_000_000))
    sha = hashlib.sha256(art.read_bytes()).hexdigest()
    dev = inventory.load(lab.inventory()).get("pi-slow")
    final = Path(d.workdir) / "artifacts" / sha / "big model.tflite"
    seen = {}

    def cut_when_half_there():
        deadline = time.time() + 20
        while time.time() < deadline:
            parts = list(final.parent.glob(".big model.tflite.part-*")) if final.parent.exists() else []
            if parts and parts[0].stat().st_size > 3_000_000:
                seen["part_size"] = parts[0].stat().st_size
                d.kill_sessions()
                return
            time.sleep(0.005)

    cutter = threading.Thread(target=cut_when_half_there)
    cutter.start()
    with pytest.raises(DeviceError) as e:
        with connect(dev) as c:
            push(c, str(art), c.expand(dev.workdir), progress=False)
    cutter.join()
    assert 3_000_000 < seen["part_size"] < 8_000_000
    assert e.value.exit_code == 3 and str(e.value).startswith("pi-slow: ")
    assert not final.exists()                 # nothing at the final path
    assert all(".part-" in f for f in d.files() if f.startswith(f"artifacts/{sha}/"))
    with connect(dev) as c:                   # the rerun completes
        r = push(c, str(art), c.expand(dev.workdir), progress=False)
    assert r.bytes == 8_000_000 and not r.skipped
    assert hashlib.sha256(final.read_bytes()).hexdigest() == sha


def test_corrupt_temp_is_never_renamed(lab, tmp_path, monkeypatch):
    """A size/hash mismatch on the device: the temp is removed, nothing reaches the final path."""
    d = lab.start("pi-01")
    art = tmp_path / "m.tflite"
    art.write_bytes(b"A" * 50_000)
    dev = inventory.load(lab.inventory()).get("pi-01")
    with connect(dev) as c:
        real_put = c.put

        def bad_put(local, remote, callback=None):
            real_put(local, remote, callback)
            c.run(["sh", "-c", 'printf X | dd of="$1" bs=1 seek=10 conv=notrunc 2>/dev/null', "sh", remote], check=True)
        monkeypatch.setattr(c, "put", bad_put)
        with pytest.raises(DeviceError, match="corrupted"):
            push(c, str(art), c.expand(dev.workdir))
    assert not any(f.endswith("m.tflite") or ".part-" in f for f in d.files())


def test_local_connection_same_path(tmp_path):
    dev = inventory.local_device(workdir=str(tmp_path / "wd it's; here"))
    art = tmp_path / "a b.onnx"
    art.write_bytes(b"onnx" * 1000)
    with connect(dev) as c:
        r1 = push(c, str(art), c.expand(dev.workdir))
        r2 = push(c, str(art), c.expand(dev.workdir))
    assert Path(r1.path).read_bytes() == art.read_bytes() and r1.path.startswith(str(tmp_path / "wd it's; here"))
    assert (r1.bytes, r2.bytes, r2.skipped) == (4000, 0, True)
