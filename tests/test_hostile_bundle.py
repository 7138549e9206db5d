"""Hostile bundles: `edgeopt bundle --verify` checks every member against what `edgeopt bundle` would write,
streams members (tar/gzip bombs), and checks SSH signatures (`--sign` / `--allowed-signers`)."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time

import pytest

from edgeopt.firmware import bundle
from edgeopt_testkit import edgeopt_cli, firmware

RUNTIME = "edgeopt/runtime.py"


@pytest.fixture()
def out_dir(tmp_path):
    return firmware.fake_out_dir(tmp_path / "fm-jetson")


@pytest.fixture()
def cli():
    """`edgeopt ...` in this process: (exit code, stdout, stderr)."""
    def run(*args):
        r = edgeopt_cli(*args, in_process=True)
        return r.returncode, r.stdout, r.stderr
    return run


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _files(arc) -> dict[str, bytes]:
    with tarfile.open(arc, "r:gz") as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()}


def _sums(files: dict[str, bytes]) -> bytes:
    return "".join(f"{_sha(files[n])}  {n}\n" for n in sorted(files) if n != "SHA256SUMS").encode()


def _write(path, entries, fmt=tarfile.USTAR_FORMAT) -> str:
    """A .tar.gz of entries: (name, bytes) for files or (TarInfo, bytes|None), in this order."""
    with tarfile.open(path, "w:gz", format=fmt) as tf:
        for name, data in entries:
            if isinstance(name, tarfile.TarInfo):
                ti = name
            else:
                ti = tarfile.TarInfo(name)
                ti.type, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = tarfile.REGTYPE, 0o644, 0, 0, "", ""
            if data is not None:
                ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return str(path)


def _resealed(tmp_path, out_dir, change, name="evil.tar.gz", extra=()) -> str:
    """The bundle of out_dir with change(files) applied and SHA256SUMS recomputed (what an attacker writes)."""
    files = _files(bundle.build(out_dir, str(tmp_path / "good.tar.gz"))["file"])
    change(files)
    files["SHA256SUMS"] = _sums(files)
    return _write(tmp_path / name, [(n, files[n]) for n in sorted(files)] + list(extra))


def _problems(path, **kw) -> list[str]:
    res = bundle.verify(str(path), **kw)
    assert res["ok"] is (not res["problems"])
    return res["problems"]


# ------------------------------------------------------------------ finding 4: members vs what edgeopt writes

def test_verify_rejects_a_changed_runtime_with_resealed_sums(out_dir, tmp_path, cli):
    def patch(files):
        files[RUNTIME] += b"\nimport os; os.system('id')\n"
    arc = _resealed(tmp_path, out_dir, patch)
    problems = _problems(arc)
    assert problems == [f"{RUNTIME}: not the runtime this edgeopt ({bundle.__version__}) ships"], problems
    code, out, err = cli("bundle", "--verify", arc)
    assert code == 1 and out == "" and err.startswith(f"error: bundle {arc}: 1 problem(s)")
    # the same in an unpacked directory
    d = tmp_path / "inst"
    firmware.unpack(arc, d)
    assert _problems(d) == problems


def test_verify_rejects_a_changed_package_init(out_dir, tmp_path):
    def patch(files):
        files["edgeopt/__init__.py"] = b"import subprocess\n"
    assert _problems(_resealed(tmp_path, out_dir, patch)) == [
        f"edgeopt/__init__.py: not the package this edgeopt ({bundle.__version__}) ships"]


def _manifest_change(**target):
    def change(files):
        man = json.loads(files["manifest.json"])
        man["target"].update(target)
        files["manifest.json"] = json.dumps(man).encode()
    return change


@pytest.mark.parametrize("change, expected", [
    (_manifest_change(delegate="/tmp/libevil.so"),
     "manifest.json: target.delegate '/tmp/libevil.so' is not the delegate of jetson-orin-nano (None)"),
    (_manifest_change(name="no-such-board"), "manifest.json: target.name 'no-such-board' is not a known target"),
    (_manifest_change(threads="4; rm -rf /"), "manifest.json: target.threads '4; rm -rf /' is not a whole number"),
])
def test_verify_rejects_a_manifest_edgeopt_would_not_write(out_dir, tmp_path, change, expected):
    assert _problems(_resealed(tmp_path, out_dir, change)) == [expected]


def test_verify_requires_artifact_hashes_in_the_manifest(out_dir, tmp_path):
    def drop_sha(files):
        man = json.loads(files["manifest.json"])
        del man["artifacts"][0]["sha256"]
        files["manifest.json"] = json.dumps(man).encode()
    assert _problems(_resealed(tmp_path, out_dir, drop_sha)) == ["manifest.json: artifact model.onnx has no sha256"]

    def swap(files):  # another model, its hash in SHA256SUMS but not in the manifest
        files["model.onnx"] = files["model.onnx"] + b"\0"
    assert _problems(_resealed(tmp_path, out_dir, swap)) == ["model.onnx: sha256 differs from manifest.json"]

    def escape(files):  # the manifest points outside the bundle
        man = json.loads(files["manifest.json"])
        man["artifacts"][0]["file"] = "../model.onnx"
        files["manifest.json"] = json.dumps(man).encode()
    problems = _problems(_resealed(tmp_path, out_dir, escape))
    assert problems[0] == ("manifest.json: artifact file name '../model.onnx' cannot be in a bundle "
                           "(expected a plain .tflite or .onnx file name)"), problems


@pytest.mark.parametrize("name", ["numpy.py", "edgeopt/extra.py", "sitecustomize.pyc", "notes.txt"])
def test_verify_rejects_listed_files_that_are_not_part_of_a_bundle(out_dir, tmp_path, name):
    """An extra module at the bundle root shadows numpy for whoever puts the bundle on sys.path."""
    def add(files):
        files[name] = b"print('owned')\n"
    problems = _problems(_resealed(tmp_path, out_dir, add))
    assert len(problems) == 1 and problems[0].startswith(f"{name}: not part of an edgeopt bundle"), problems


def test_verify_rejects_duplicate_members_and_sums_lines(out_dir, tmp_path):
    good = bundle.build(out_dir, str(tmp_path / "good.tar.gz"))["file"]
    files = _files(good)
    # evil model first, the good one last: `tar -x --keep-old-files` and others keep the first
    entries = [(n, files[n]) for n in sorted(files)]
    arc = _write(tmp_path / "dup.tar.gz", [("model.onnx", b"evil")] + entries)
    assert "model.onnx: 2 members of that name in the archive" in _problems(arc)
    # a repeated SHA256SUMS line (sha256sum -c checks it twice; tools reading it into a dict keep one)
    files["SHA256SUMS"] += files["SHA256SUMS"].splitlines(keepends=True)[0]
    arc = _write(tmp_path / "dupsums.tar.gz", [(n, files[n]) for n in sorted(files)])
    problems = _problems(arc)
    assert problems and problems[0].startswith("SHA256SUMS: ") and "listed 2 times" in problems[0], problems


def _member(name, **kw):
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = tarfile.REGTYPE, 0o644, 0, 0, "", ""
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti


@pytest.mark.parametrize("attrs, expected", [
    ({"mode": 0o4755}, "model.onnx: mode 4755 (a bundle has 0644 and 0755 only)"),
    ({"mode": 0o666}, "model.onnx: mode 0666 (a bundle has 0644 and 0755 only)"),
    ({"uid": 1000}, "model.onnx: owner 1000:0 (a bundle's files belong to 0:0)"),
    ({"gid": 27}, "model.onnx: owner 0:27 (a bundle's files belong to 0:0)"),
])
def test_verify_checks_member_modes_and_owners(out_dir, tmp_path, attrs, expected):
    files = _files(bundle.build(out_dir, str(tmp_path / "good.tar.gz"))["file"])
    arc = _write(tmp_path / "m.tar.gz", [(_member(n, **(attrs if n == "model.onnx" else {})), files[n])
                                         for n in sorted(files)])
    assert _problems(arc) == [expected]


@pytest.mark.parametrize("entry, expected", [
    (_member("edgeopt/numpy.py", type=tarfile.SYMTYPE, linkname="/usr/lib/evil.py"),
     "edgeopt/numpy.py: a symbolic link (a bundle holds regular files only)"),
    (_member("model2.onnx", type=tarfile.LNKTYPE, linkname="model.onnx"),
     "model2.onnx: a hard link (a bundle holds regular files only)"),
    (_member("dev", type=tarfile.CHRTYPE, devmajor=1, devminor=3), "dev: a device (a bundle holds regular files only)"),
    (_member("edgeopt/__pycache__", type=tarfile.DIRTYPE, mode=0o755),
     "edgeopt/__pycache__/: a directory that is not part of an edgeopt bundle"),
    (_member("../escape.onnx"), "../escape.onnx: unsafe path in the archive"),
    (_member("/etc/escape.onnx"), "/etc/escape.onnx: unsafe path in the archive"),
])
def test_verify_flags_links_devices_and_unsafe_paths(out_dir, tmp_path, entry, expected):
    files = _files(bundle.build(out_dir, str(tmp_path / "good.tar.gz"))["file"])
    arc = _write(tmp_path / "l.tar.gz", [(n, files[n]) for n in sorted(files)] + [(entry, b"" if entry.isfile() else None)],
                 fmt=tarfile.GNU_FORMAT)
    before = sorted(os.listdir(tmp_path))
    assert _problems(arc) == [expected]
    assert sorted(os.listdir(tmp_path)) == before   # verify never writes a member anywhere


def _installed(out_dir, tmp_path) -> str:
    arc = bundle.build(out_dir, str(tmp_path / "b.tar.gz"))["file"]
    d = tmp_path / "installed"
    firmware.unpack(arc, d)
    assert bundle.verify(str(d))["ok"]
    return str(d)


def test_verify_dir_flags_bytecode_links_and_extra_modules(out_dir, tmp_path):
    d = _installed(out_dir, tmp_path)
    # a .pyc runs instead of runtime.py when its header matches (or always, with unchecked-hash .pyc)
    cache = os.path.join(d, "edgeopt", "__pycache__")
    os.mkdir(cache)
    open(os.path.join(cache, "runtime.cpython-311.pyc"), "wb").write(b"x")
    assert _problems(d) == ["edgeopt/__pycache__/: byte code that SHA256SUMS cannot vouch for (delete it; "
                            "precompile only after --verify)"]
    shutil.rmtree(cache)
    open(os.path.join(d, "numpy.py"), "w").write("print('owned')\n")
    assert _problems(d) == ["numpy.py: in the directory but not in SHA256SUMS"]
    os.remove(os.path.join(d, "numpy.py"))
    # the artifact replaced by a link to another file with the same content
    other = tmp_path / "elsewhere.onnx"
    shutil.copy(os.path.join(d, "model.onnx"), other)
    os.remove(os.path.join(d, "model.onnx"))
    os.symlink(other, os.path.join(d, "model.onnx"))
    assert _problems(d) == ["model.onnx: a symbolic link (a bundle holds regular files only)"]
    os.remove(os.path.join(d, "model.onnx"))
    os.link(other, os.path.join(d, "model.onnx"))
    assert _problems(d) == ["model.onnx: a hard link (2 names; a bundle holds regular files only)"]
    os.remove(other)
    assert bundle.verify(d)["ok"]
    os.chmod(os.path.join(d, "model.onnx"), 0o666)
    assert _problems(d) == ["model.onnx: mode 0666 (writable by group or others)"]


# ------------------------------------------------------------------ finding 9: unbounded reads

def _raw_tar(files: dict[str, bytes], skip=()) -> bytes:
    """ustar members without the end-of-archive blocks (so that more can follow)."""
    out = b""
    for n in sorted(files):
        if n not in skip:
            out += _member(n, size=len(files[n])).tobuf(format=tarfile.USTAR_FORMAT)
            out += files[n] + bytes(-len(files[n]) % 512)
    return out


def _bomb(path, out_dir, tmp_path, size: int, kind: bytes = b"0", name="model.onnx") -> str:
    """A bundle whose member `name` is `size` zero bytes (a few hundred KiB compressed), written in a stream."""
    files = _files(bundle.build(out_dir, str(tmp_path / "good.tar.gz"))["file"])
    head = _member(name if kind == b"0" else "PaxHeader", size=size)
    with gzip.open(path, "wb", compresslevel=1) as gz:
        gz.write(_raw_tar(files, skip=(name,)))
        gz.write(_raw_header(head, kind))
        chunk = bytes(1 << 20)
        for _ in range(size >> 20):
            gz.write(chunk)
        gz.write(bytes(1024))
    return str(path)


def _raw_header(ti, kind: bytes) -> bytes:
    """A ustar header of any type flag (tarfile will not write a pax header with made-up contents)."""
    hdr = bytearray(ti.tobuf(format=tarfile.USTAR_FORMAT))
    hdr[156:157] = kind
    hdr[148:156] = b"        "
    hdr[148:156] = b"%06o\0 " % sum(hdr)
    return bytes(hdr)


MEASURE = """
import json, resource, sys, time
from edgeopt.firmware import bundle
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.monotonic()
try:
    problems = bundle.verify(sys.argv[1])["problems"]
except Exception as e:  # measured all the same
    problems = [f"raised {type(e).__name__}: {e}"]
print(json.dumps({"kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before,
                  "s": time.monotonic() - t, "problems": problems}))
"""


@pytest.mark.parametrize("kind", [b"0", b"x"], ids=["member", "pax-header"])
def test_verify_streams_a_gzip_bomb(out_dir, tmp_path, kind):
    """128 MiB of zeros (about 130 KiB compressed): verify streams it in blocks; peak memory stays low."""
    arc = _bomb(tmp_path / "bomb.tar.gz", out_dir, tmp_path, 128 << 20, kind)
    assert os.path.getsize(arc) < 1 << 20
    r = subprocess.run([sys.executable, "-c", MEASURE, arc], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout)
    assert got["kib"] < 32 * 1024, got          # the old verify held the whole member: +128 MiB
    assert got["problems"] and not got["problems"][0].startswith("raised"), got   # not a valid bundle


def test_verify_caps_uncompressed_size_and_member_count(out_dir, tmp_path, cli):
    assert bundle.MAX_BYTES == 4 << 30 and bundle.MAX_MEMBERS == 10_000
    # a header that claims 5 GiB: refused before reading any of it
    files = _files(bundle.build(out_dir, str(tmp_path / "good.tar.gz"))["file"])
    huge = _member("model.big.onnx", size=5 << 30).tobuf(format=tarfile.USTAR_FORMAT)
    arc = tmp_path / "huge.tar.gz"
    arc.write_bytes(gzip.compress(_raw_tar(files) + huge + bytes(4096)))
    t = time.monotonic()
    code, out, err = cli("bundle", "--verify", arc)
    assert time.monotonic() - t < 10
    assert code == 1 and "archive: more than 4096 MiB uncompressed (the limit); not read further" in err, err
    # a smaller cap, over a real stream of zeros
    bomb = _bomb(tmp_path / "bomb.tar.gz", out_dir, tmp_path, 64 << 20)
    assert _problems(bomb, max_bytes=16 << 20) == ["archive: more than 16 MiB uncompressed (the limit); "
                                                    "not read further"]
    # many members
    many = _write(tmp_path / "many.tar.gz", [(n, files[n]) for n in sorted(files)]
                  + [(f"x{i:03d}.onnx", b"") for i in range(60)])
    assert _problems(many, max_members=50) == ["archive: more than 50 members (the limit); not read further"]


# ------------------------------------------------------------------ finding 7 (bundle part): artifact names

@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "numpy.py", "model.onnx\n" + "0" * 64 +
                                  "  edgeopt/runtime.py", "sub/model.onnx", ".."])
def test_bundle_refuses_artifact_names_outside_its_directory(out_dir, tmp_path, cli, name):
    mpath = os.path.join(out_dir, "manifest.json")
    man = json.load(open(mpath))
    man["artifacts"][0]["file"] = name
    json.dump(man, open(mpath, "w"))
    code, out, err = cli("bundle", out_dir, "-o", tmp_path / "x.tar.gz")
    assert code == 2 and "cannot be in a bundle (expected a plain .tflite or .onnx file name)" in err, err
    assert err.startswith("error: ") and "Traceback" not in err and not (tmp_path / "x.tar.gz").exists()


# ------------------------------------------------------------------ signatures

def _keys(tmp_path):
    if not shutil.which("ssh-keygen"):
        pytest.skip("ssh-keygen (openssh-client) not installed")
    keys = {}
    for who in ("alice", "mallory"):
        k = tmp_path / who
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", who, "-f", str(k)], check=True)
        keys[who] = str(k)
    allowed = tmp_path / "allowed_signers"
    pub = open(keys["alice"] + ".pub").read().split()
    allowed.write_text(f"alice@example.com {pub[0]} {pub[1]}\n")
    return keys, str(allowed)


def test_sign_and_verify_an_archive(out_dir, tmp_path, cli):
    keys, allowed = _keys(tmp_path)
    arc = str(tmp_path / "m.tar.gz")
    code, out, err = cli("bundle", out_dir, "-o", arc, "--sign", keys["alice"], "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["signatures"] == [arc + ".sig", arc + ".SHA256SUMS.sig"]
    assert open(arc + ".sig").read().startswith("-----BEGIN SSH SIGNATURE-----")
    # ssh-keygen by hand, as the README says
    with open(arc, "rb") as f:
        r = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", allowed, "-I", "alice@example.com", "-n",
                            "edgeopt-bundle", "-s", arc + ".sig"], stdin=f, capture_output=True)
    assert r.returncode == 0, r.stderr
    # the archive unchanged by signing (still deterministic)
    assert open(arc, "rb").read() == open(bundle.build(out_dir, str(tmp_path / "u.tar.gz"))["file"], "rb").read()
    code, out, err = cli("bundle", "--verify", arc, "--allowed-signers", allowed)
    assert code == 0 and out.strip() == f"ok: {arc}: 4 files match SHA256SUMS; signed by alice@example.com", out + err
    res = json.loads(cli("bundle", "--verify", arc, "--allowed-signers", allowed, "--json")[1])
    assert res["ok"] and res["signer"] == "alice@example.com"
    # signed by someone else
    code, out, err = cli("bundle", out_dir, "-o", tmp_path / "x.tar.gz", "--sign", keys["mallory"])
    assert code == 0, err
    r = edgeopt_cli("bundle", "--verify", tmp_path / "x.tar.gz", "--allowed-signers", allowed)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.splitlines()[0] == (f"error: bundle {tmp_path / 'x.tar.gz'}: signature: "
                                        f"{tmp_path / 'x.tar.gz'}.sig: signed by a key not in {allowed}")
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("error:")] == [r.stderr.splitlines()[0]]
    # one byte changed after signing: the gzip trailer is not even read by a tar-only check
    data = bytearray(open(arc, "rb").read())
    data[-1] ^= 1
    open(arc, "wb").write(bytes(data))
    code, out, err = cli("bundle", "--verify", arc, "--allowed-signers", allowed)
    assert code == 1 and err.startswith(f"error: bundle {arc}: signature: {arc}.sig: does not match"), err
    assert len([ln for ln in err.splitlines() if ln.startswith("error:")]) == 1
    # no signature
    os.remove(arc + ".sig")
    code, out, err = cli("bundle", "--verify", arc, "--allowed-signers", allowed)
    assert code == 1 and err.splitlines()[0] == f"error: bundle {arc}: signature: no signature {arc}.sig", err


def test_verify_a_signed_unpacked_directory(out_dir, tmp_path, cli):
    keys, allowed = _keys(tmp_path)
    arc = str(tmp_path / "m.tar.gz")
    assert cli("bundle", out_dir, "-o", arc, "--sign", keys["alice"])[0] == 0
    d = tmp_path / "inst"
    firmware.unpack(arc, d)
    code, out, err = cli("bundle", "--verify", d, "--allowed-signers", allowed)
    assert code == 1 and err.splitlines()[0] == f"error: bundle {d}: signature: no signature {d}/SHA256SUMS.sig"
    shutil.copy(arc + ".SHA256SUMS.sig", d / "SHA256SUMS.sig")
    code, out, err = cli("bundle", "--verify", d, "--allowed-signers", allowed)
    assert code == 0 and out.strip() == f"ok: {d}: 4 files match SHA256SUMS; signed by alice@example.com", err
    assert bundle.verify(str(d))["ok"]   # the signature file is the one file SHA256SUMS does not list
    # SHA256SUMS resealed over a patched runtime: the signature no longer matches
    rt = d / "edgeopt" / "runtime.py"
    rt.write_bytes(rt.read_bytes() + b"#\n")
    sums = (d / "SHA256SUMS").read_text().splitlines(keepends=True)
    sums = [f"{_sha(rt.read_bytes())}  {RUNTIME}\n" if ln.endswith(f"  {RUNTIME}\n") else ln for ln in sums]
    (d / "SHA256SUMS").write_text("".join(sums))
    code, out, err = cli("bundle", "--verify", d, "--allowed-signers", allowed)
    assert code == 1 and err.startswith(f"error: bundle {d}: signature: {d}/SHA256SUMS.sig: does not match"), err
    # the archive's signature is not accepted for SHA256SUMS (another namespace)
    shutil.copy(arc + ".sig", d / "SHA256SUMS.sig")
    (d / "SHA256SUMS").write_bytes(_files(arc)["SHA256SUMS"])
    code, out, err = cli("bundle", "--verify", d, "--allowed-signers", allowed)
    assert code == 1 and "signature:" in err


def test_signing_usage_errors(out_dir, tmp_path, cli, monkeypatch):
    keys, allowed = _keys(tmp_path)
    arc = str(tmp_path / "m.tar.gz")
    code, out, err = cli("bundle", out_dir, "-o", arc, "--sign", tmp_path / "no-key")
    assert code == 2 and err.startswith(f"error: --sign {tmp_path / 'no-key'}: no such key file"), err
    assert not os.path.exists(arc)
    code, out, err = cli("bundle", out_dir, "-o", arc, "--sign", allowed)   # not a key
    assert code == 2 and "ssh-keygen could not sign with it" in err and not os.path.exists(arc), err
    assert cli("bundle", out_dir, "-o", arc, "--sign", keys["alice"])[0] == 0
    code, out, err = cli("bundle", out_dir, "--allowed-signers", allowed)
    assert code == 2 and "--allowed-signers goes with --verify" in err
    code, out, err = cli("bundle", "--verify", arc, "--sign", keys["alice"])
    assert code == 2 and "cannot be combined" in err
    code, out, err = cli("bundle", "--verify", arc, "--allowed-signers", tmp_path / "nope")
    assert code == 2 and err.startswith(f"error: --allowed-signers {tmp_path / 'nope'}: no such file")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    code, out, err = cli("bundle", "--verify", arc, "--allowed-signers", allowed)
    assert code == 2 and err.startswith("error: ssh-keygen not found on PATH") and "hint:" in err, err
    code, out, err = cli("bundle", out_dir, "-o", arc, "--sign", keys["alice"])
    assert code == 2 and err.startswith("error: ssh-keygen not found on PATH"), err


def test_ssh_keygen_runs_with_a_timeout(out_dir, tmp_path, cli, monkeypatch):
    """A hanging ssh-keygen is an error (exit 2) after the timeout, not a hung firmware build."""
    from edgeopt.firmware import signing
    fake = tmp_path / "bin" / "ssh-keygen"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\nexec {shutil.which('sleep')} 30\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake.parent))
    monkeypatch.setattr(signing, "SIGN_TIMEOUT_S", 1)
    (tmp_path / "key").write_text("not used\n")
    t = time.monotonic()
    code, out, err = cli("bundle", out_dir, "-o", tmp_path / "m.tar.gz", "--sign", tmp_path / "key")
    assert time.monotonic() - t < 15
    assert code == 2 and err.startswith("error: ssh-keygen -Y sign: no answer within 1 s"), err
    assert not (tmp_path / "m.tar.gz").exists()
