"""``edgeopt bundle``: a reproducible archive of a conversion's output, ready to embed in a firmware image.

Layout of the archive (no top-level directory; unpack it into the directory that will hold the model)::

    SHA256SUMS            sha256sum-format list of every other file (``sha256sum -c SHA256SUMS`` works)
    edgeopt/__init__.py   a minimal package: only the runtime, not the SDK or CLI
    edgeopt/runtime.py    edgeopt.runtime (standard library + numpy + one runtime)
    manifest.json         the conversion's manifest, next to the artifacts it describes
    model.int8.tflite     the artifacts (all of the manifest's, or those picked with ``artifacts=``)

Put the unpacked directory on ``sys.path`` and ``import edgeopt.runtime`` works with only numpy and one
runtime installed; ``edgeopt.runtime.load(DIR)`` (or ``load()`` from inside the bundle) runs the model.

The archive is deterministic: entries sorted by name, mtime ``SOURCE_DATE_EPOCH`` (else the manifest's
``created`` time, else 1980-01-01), owner 0:0 without user or group names, fixed modes, no host paths, and a
gzip header with mtime 0 and no file name. The same inputs give a byte-identical archive (with the same
Python zlib; ``gzip -dc`` output is identical everywhere).

``verify`` checks an archive or an unpacked directory against what ``build`` writes (see the comment above
``verify``); ``build(..., sign_key=KEY)`` also signs it with ``ssh-keygen -Y sign`` (see
:mod:`edgeopt.firmware.signing` for what is signed: the archive, and SHA256SUMS for unpacked directories).

Only numpy-free standard library here: ``import edgeopt.firmware.bundle`` is light.
"""
from __future__ import annotations

import datetime
import gzip
import hashlib
import io
import json
import os
import tarfile
import tempfile
import zlib

from edgeopt import __version__
from edgeopt.errors import GateError, UsageError

MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"
SUMS_SIG = "SHA256SUMS.sig"   # in an unpacked bundle: the signature of SHA256SUMS (not listed in it)
PKG = "edgeopt"
ARTIFACT_SUFFIXES = (".tflite", ".onnx")
DEFAULT_EPOCH = 315532800  # 1980-01-01T00:00:00Z: the earliest time every archive/zip tool can store

INIT_PY = f'''"""edgeopt runtime bundle, made by `edgeopt bundle` (edgeopt {__version__}).

Only edgeopt.runtime is here (standard library + numpy + one runtime); the SDK and CLI are not.

    import edgeopt.runtime
    model = edgeopt.runtime.load()        # the manifest.json and artifacts of this bundle
    outputs = model(x)                    # float arrays in the source model's layout
"""
__version__ = "{__version__}"
'''


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _runtime_source() -> bytes:
    """The runtime module as shipped with this edgeopt (works for editable and regular installs)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # edgeopt/, above edgeopt/firmware/
    return _read(os.path.join(package, "runtime.py"))


def _epoch(manifest: dict) -> int:
    env = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if env:
        if not env.isdigit():
            raise UsageError(f"SOURCE_DATE_EPOCH={env!r}: expected a whole number of seconds since 1970")
        return int(env)
    created = manifest.get("created")
    if isinstance(created, str):
        try:
            dt = datetime.datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
            return int(dt.timestamp())
        except ValueError:
            pass
    return DEFAULT_EPOCH


def artifact_name_problem(name) -> str | None:
    """Why ``name`` cannot be an artifact's file name in a bundle, or None when it can.

    Artifact names are plain file names ending in .tflite or .onnx: no directory part (``../x``, ``/etc/x``),
    no control characters (a newline would forge a SHA256SUMS line), and never a Python module (``numpy.py``
    at the bundle root would shadow numpy for whoever puts the bundle on sys.path)."""
    from edgeopt.runtime import check_artifact_name  # the path rules every manifest reader shares
    try:
        check_artifact_name(name)
        plain = True
    except ValueError:
        plain = False
    if not plain or name in (MANIFEST, SUMS, SUMS_SIG, PKG) or name.startswith(".") \
            or not name.endswith(ARTIFACT_SUFFIXES):
        return f"artifact file name {name!r} cannot be in a bundle (expected a plain .tflite or .onnx file name)"
    if len(name.encode()) > 100:
        return f"artifact file name {name!r} is longer than 100 bytes (ustar limit)"
    return None


def _plain_name(name, where: str) -> str:
    problem = artifact_name_problem(name)
    if problem:
        raise UsageError(f"{where}: {problem}")
    return name


def collect(out_dir: str, artifacts=None) -> tuple[dict, dict[str, bytes]]:
    """(manifest, {archive name: bytes}) for ``out_dir``, checked against its manifest.

    artifacts: file names to keep (default: all of the manifest's). With a subset the bundled manifest lists
    only those, in the manifest's order (its first one becomes the primary artifact).
    """
    out_dir = os.fspath(out_dir)
    if not os.path.isdir(out_dir):
        raise UsageError(f"{out_dir}: not a directory", hint="pass the output directory of `edgeopt convert`")
    mpath = os.path.join(out_dir, MANIFEST)
    if not os.path.isfile(mpath):
        raise UsageError(f"{out_dir}: no {MANIFEST}; not an edgeopt output directory",
                         hint="pass the --out directory of `edgeopt convert`")
    mbytes = _read(mpath)
    try:
        manifest = json.loads(mbytes)
    except ValueError as e:
        raise UsageError(f"{mpath}: not valid JSON ({e})") from None
    arts = manifest.get("artifacts") if isinstance(manifest, dict) else None
    if not arts or not isinstance(arts, list):
        raise UsageError(f"{mpath}: lists no artifacts")
    names = [_plain_name(a.get("file") if isinstance(a, dict) else None, mpath) for a in arts]
    if artifacts:
        wanted = [os.path.basename(str(a)) for a in artifacts]
        unknown = [w for w in wanted if w not in names]
        if unknown:
            raise UsageError(f"--artifact {unknown[0]}: not an artifact of {mpath} (it has {', '.join(names)})")
        keep = [a for a, n in zip(arts, names) if n in wanted]
        manifest = dict(manifest, artifacts=keep)
        mbytes = (json.dumps(manifest, indent=2) + "\n").encode()
        arts, names = keep, [a["file"] for a in keep]
    files = {MANIFEST: mbytes, f"{PKG}/__init__.py": INIT_PY.encode(), f"{PKG}/runtime.py": _runtime_source()}
    for a, name in zip(arts, names):
        p = os.path.join(out_dir, name)
        if not os.path.isfile(p):
            raise UsageError(f"{p}: missing; {MANIFEST} lists it", hint="re-run `edgeopt convert`")
        data = _read(p)
        if a.get("sha256") and a["sha256"] != _sha(data):
            raise UsageError(f"{p}: sha256 differs from {MANIFEST} (changed after conversion)",
                             hint="re-run `edgeopt convert` to rebuild the artifacts and manifest together")
        files[name] = data
    files[SUMS] = "".join(f"{_sha(files[n])}  {n}\n" for n in sorted(files)).encode()
    return manifest, files


def _tar_bytes(files: dict[str, bytes], mtime: int) -> bytes:
    buf = io.BytesIO()
    dirs = sorted({n.rsplit("/", 1)[0] for n in files if "/" in n})
    entries = sorted([(d, None) for d in dirs] + list(files.items()), key=lambda e: e[0].encode())
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in entries:
            ti = tarfile.TarInfo(name)
            ti.mtime = int(mtime)
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = ""
            if data is None:
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(ti)
            else:
                ti.type, ti.mode, ti.size = tarfile.REGTYPE, 0o644, len(data)
                tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def _gzip_bytes(data: bytes) -> bytes:
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, compresslevel=9, mtime=0) as gz:
        gz.write(data)
    return out.getvalue()


def default_output(out_dir: str) -> str:
    return os.path.abspath(os.fspath(out_dir)).rstrip(os.sep) + ".tar.gz"


def _write_atomic(path: str, data: bytes, what: str) -> None:
    parent = os.path.dirname(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".bundle-", dir=parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as e:
        raise UsageError(f"{what} {path}: cannot write there ({e.strerror or e})") from None


def build(out_dir: str, output: str | None = None, artifacts=None, sign_key: str | None = None) -> dict:
    """Write the bundle of ``out_dir`` to ``output`` (default ``OUT_DIR.tar.gz`` beside it); returns a summary.

    sign_key: an SSH private key (or its .pub with the key in ssh-agent): also writes ``OUTPUT.sig`` (the
    archive, namespace ``edgeopt-bundle``) and ``OUTPUT.SHA256SUMS.sig`` (its SHA256SUMS member, namespace
    ``edgeopt-bundle-sums``: install it as ``DIR/SHA256SUMS.sig`` to check an unpacked bundle's signer).
    The archive's bytes do not depend on the key. Nothing is written when signing fails."""
    manifest, files = collect(out_dir, artifacts)
    mtime = _epoch(manifest)
    blob = _gzip_bytes(_tar_bytes(files, mtime))
    output = os.path.abspath(output or default_output(out_dir))
    parent = os.path.dirname(output)
    if not os.path.isdir(parent):
        raise UsageError(f"-o {output}: directory {parent} does not exist")
    if os.path.isdir(output):
        raise UsageError(f"-o {output}: is a directory; give the archive's file name (e.g. model.tar.gz)")
    sigs = {}
    if sign_key is not None:
        from edgeopt.firmware import signing
        sigs = {output + ".sig": signing.sign(sign_key, blob, signing.NAMESPACE),
                output + "." + SUMS_SIG: signing.sign(sign_key, files[SUMS], signing.SUMS_NAMESPACE)}
    _write_atomic(output, blob, "-o")
    for path, sig in sigs.items():
        _write_atomic(path, sig, "--sign: signature")
    res = {"file": output, "sha256": _sha(blob), "bytes": len(blob), "mtime": mtime,
           "target": (manifest.get("target") or {}).get("name"),
           "artifacts": [a["file"] for a in manifest["artifacts"]],
           "entries": [{"name": n, "sha256": _sha(files[n]), "bytes": len(files[n])} for n in sorted(files)]}
    if sigs:
        res["signatures"] = list(sigs)
    return res


# ------------------------------------------------------------------------------------------------ verify
#
# verify() checks a bundle against what `edgeopt bundle` writes, not only against its own SHA256SUMS (whoever
# changes a file can rewrite SHA256SUMS too):
# - the files are exactly SHA256SUMS, manifest.json, edgeopt/__init__.py, edgeopt/runtime.py and the manifest's
#   artifacts, and SHA256SUMS lists each of them once with its hash;
# - edgeopt/__init__.py and edgeopt/runtime.py are this edgeopt's own (they run on the device);
# - manifest.json is one that edgeopt writes: a known target with that target's delegate (the delegate decides
#   which shared library the runtime loads), plain artifact names, each with its sha256;
# - archives: regular files and the edgeopt/ directory only, each name once, modes 0644/0755, owner 0:0;
#   directories: regular files with one name each and the edgeopt/ directory only, nothing writable by group
#   or others, no setuid/setgid, no __pycache__ (byte code runs instead of the checked source).
# Files are hashed in blocks; only manifest.json and SHA256SUMS are held in memory (at most MAX_TEXT each). An
# archive is read once as a stream, with caps on its uncompressed size and member count; nothing is extracted.

MAX_BYTES = 4 << 30     # default cap on the uncompressed bytes read (an archive's tar stream, a directory's files)
MAX_MEMBERS = 10_000    # default cap on the members of an archive / the entries of a directory
MAX_TEXT = 16 << 20     # manifest.json and SHA256SUMS are parsed in memory: at most this each
BLOCK = 1 << 20
_PKG_FILES = (f"{PKG}/__init__.py", f"{PKG}/runtime.py")
_CODE_SUFFIXES = (".py", ".pyc", ".pyo", ".pyd", ".so", ".pth")
_TAR_KINDS = {b"1": "a hard link", b"2": "a symbolic link", b"3": "a device", b"4": "a device", b"6": "a FIFO",
              b"x": "a pax extended header (edgeopt bundle writes plain ustar)",
              b"g": "a pax global header (edgeopt bundle writes plain ustar)",
              b"L": "a GNU long-name header (edgeopt bundle writes plain ustar)",
              b"K": "a GNU long-link header (edgeopt bundle writes plain ustar)"}
_TAR_NO_DATA = (b"1", b"2", b"3", b"4", b"5", b"6")  # types whose size field is not followed by data (as tarfile)


class _Limit(Exception):
    """A cap on what is read was reached; the message is the problem line."""


class _Scan:
    """What was found in a bundle: regular files (name -> sha256), manifest/SHA256SUMS bytes, problems."""

    def __init__(self, kind: str, max_bytes: int, max_members: int):
        self.kind = kind                  # "archive" or "directory"
        self.max_bytes, self.max_members = int(max_bytes), int(max_members)
        self.files: dict[str, str] = {}   # name -> sha256 (the first member of that name)
        self.counts: dict[str, int] = {}  # name -> members of that name
        self.other: set[str] = set()      # names present but not as a regular file (already reported)
        self.text: dict[str, bytes] = {}  # MANIFEST / SUMS / SUMS_SIG contents
        self.problems: list[str] = []
        self.members = 0
        self.bytes = 0

    def member(self):
        self.members += 1
        if self.members > self.max_members:
            raise _Limit(f"{self.kind}: more than {self.max_members} members (the limit); not read further")

    def reserve(self, n: int):
        if self.bytes + n > self.max_bytes:
            raise _Limit(f"{self.kind}: more than {self.max_bytes >> 20} MiB uncompressed (the limit); "
                         "not read further")
        self.bytes += n


def _unsafe(name: str) -> bool:
    parts = name.split("/")
    return (not name or name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in parts)
            or any(ord(c) < 32 or ord(c) == 127 for c in name))


def _hash_stream(read, size: int, keep: bool) -> tuple[str, bytes | None]:
    """sha256 of the next ``size`` bytes of read(n), in blocks; the bytes too when ``keep`` (small files)."""
    h, kept, left = hashlib.sha256(), [] if keep else None, size
    while left:
        chunk = read(min(BLOCK, left))
        if not chunk:
            raise EOFError(f"unexpected end of data ({left} bytes short)")
        h.update(chunk)
        if kept is not None:
            kept.append(chunk)
        left -= len(chunk)
    return h.hexdigest(), (b"".join(kept) if kept is not None else None)


def _octal(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 (sizes over 8 GiB)
        if field[0] & 0x40:
            raise ValueError("negative number")
        return int.from_bytes(bytes([field[0] & 0x3F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip(b" ")
    return int(text, 8) if text else 0


def _decompressed(f):
    """A stream of the tar bytes of an archive file: gzip (what edgeopt writes), bzip2, xz or plain tar."""
    head = f.read(6)
    f.seek(0)
    if head[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=f, mode="rb")
    if head[:3] == b"BZh":
        import bz2
        return bz2.BZ2File(f)
    if head == b"\xfd7zXZ\0":
        import lzma
        return lzma.LZMAFile(f)
    return f


def _scan_archive(f, scan: _Scan) -> None:
    """Read the tar stream of open file ``f`` header by header (our own ustar reader: tarfile reads pax and
    GNU long-name headers whole into memory, and we never need anything but plain ustar), hashing members."""
    stream = _decompressed(f)
    while True:
        block = stream.read(512)
        if len(block) < 512:
            raise EOFError("the archive ends without its end-of-archive blocks")
        if block == bytes(512):
            return  # end of archive; what follows is not part of the tar stream
        scan.member()
        scan.reserve(512)
        try:
            if _octal(block[148:156]) != sum(block[:148]) + 256 + sum(block[156:]):
                raise ValueError("header checksum")
            mode, uid, gid = _octal(block[100:108]), _octal(block[108:116]), _octal(block[116:124])
            size = _octal(block[124:136])
        except ValueError as e:
            raise tarfile.HeaderError(f"member {scan.members}: bad header ({e})") from None
        kind = block[156:157]
        raw = block[:100].split(b"\0", 1)[0]
        if block[257:263] == b"ustar\0" and block[345:500].strip(b"\0"):  # POSIX ustar name prefix
            raw = block[345:500].split(b"\0", 1)[0] + b"/" + raw
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            name = repr(raw)[2:-1] + " (not UTF-8)"
        while name.startswith("./"):
            name = name[2:]
        if kind == b"5":
            name = name.rstrip("/")
        data_size = 0 if kind in _TAR_NO_DATA else size
        scan.reserve(data_size + (-data_size % 512))
        if _unsafe(name) or name.endswith(" (not UTF-8)"):
            scan.problems.append(f"{name}: unsafe path in the archive")
            scan.other.add(name)
        elif kind == b"5":
            if name != PKG:
                scan.problems.append(f"{name}/: a directory that is not part of an edgeopt bundle")
            _check_owner_mode(scan, name + "/", mode, uid, gid)
        elif kind in (b"0", b"\0", b"7"):
            scan.counts[name] = scan.counts.get(name, 0) + 1
            keep = name in (MANIFEST, SUMS) and data_size <= MAX_TEXT
            digest, data = _hash_stream(stream.read, data_size, keep)
            stream.read(-data_size % 512)
            scan.files.setdefault(name, digest)
            if keep and name not in scan.text:
                scan.text[name] = data
            _check_owner_mode(scan, name, mode, uid, gid)
            continue
        else:
            what = _TAR_KINDS.get(kind, f"a member of type {kind!r}")
            scan.problems.append(f"{name}: {what} (a bundle holds regular files only)")
            scan.other.add(name)
        left = data_size + (-data_size % 512)
        while left:  # skipped in blocks, never held
            chunk = stream.read(min(BLOCK, left))
            if not chunk:
                raise EOFError("unexpected end of data")
            left -= len(chunk)


def _check_owner_mode(scan: _Scan, name: str, mode: int, uid: int, gid: int) -> None:
    if mode & 0o7777 not in (0o644, 0o755):
        scan.problems.append(f"{name}: mode {mode & 0o7777:04o} (a bundle has 0644 and 0755 only)")
    if uid or gid:
        scan.problems.append(f"{name}: owner {uid}:{gid} (a bundle's files belong to 0:0)")


def _scan_dir(root: str, scan: _Scan, rel: str = "") -> None:
    """Walk an unpacked bundle without following links, hashing regular files in blocks."""
    import stat
    try:
        entries = sorted(os.scandir(os.path.join(root, rel) if rel else root), key=lambda e: e.name)
    except OSError as e:
        raise UsageError(f"--verify {os.path.join(root, rel)}: cannot read it ({e.strerror or e})") from None
    for entry in entries:
        name = rel + entry.name
        scan.member()
        path = os.path.join(root, name)
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            scan.problems.append(f"{name}: a symbolic link (a bundle holds regular files only)")
            scan.other.add(name)
        elif stat.S_ISDIR(st.st_mode):
            if entry.name == "__pycache__":
                scan.problems.append(f"{name}/: byte code that {SUMS} cannot vouch for (delete it; "
                                     "precompile only after --verify)")
            elif name != PKG:
                scan.problems.append(f"{name}/: a directory that is not part of an edgeopt bundle")
            else:
                _check_local_mode(scan, name + "/", st)
                _scan_dir(root, scan, name + "/")
        elif not stat.S_ISREG(st.st_mode):
            what = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device"
            scan.problems.append(f"{name}: {what} (a bundle holds regular files only)")
            scan.other.add(name)
        elif st.st_nlink > 1:  # the same file under another name elsewhere: changed through that name
            scan.problems.append(f"{name}: a hard link ({st.st_nlink} names; a bundle holds regular files only)")
            scan.other.add(name)
        else:
            _check_local_mode(scan, name, st)
            scan.reserve(st.st_size)
            keep = name in (MANIFEST, SUMS, SUMS_SIG) and st.st_size <= MAX_TEXT
            try:  # no following a link swapped in after lstat; no blocking on a FIFO swapped in
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
            except OSError as e:
                scan.problems.append(f"{name}: cannot read it ({e.strerror or e})")
                scan.other.add(name)
                continue
            with os.fdopen(fd, "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    scan.problems.append(f"{name}: not a regular file")
                    scan.other.add(name)
                    continue
                digest, data = _hash_stream(f.read, st.st_size, keep)
                if f.read(1):  # grew after lstat: what was hashed is not what is there
                    scan.problems.append(f"{name}: changed while it was read")
                    scan.other.add(name)
                    continue
            if name == SUMS_SIG:
                scan.text[SUMS_SIG] = data or b""
                continue
            scan.files[name] = digest
            scan.counts[name] = 1
            if keep:
                scan.text[name] = data


def _check_local_mode(scan: _Scan, name: str, st) -> None:
    """What can be checked of an installed file: its owner and umask vary, but nobody else may change it."""
    mode = st.st_mode & 0o7777
    if mode & 0o7000:
        scan.problems.append(f"{name}: mode {mode:04o} (setuid, setgid or sticky)")
    elif mode & 0o022:
        scan.problems.append(f"{name}: mode {mode:04o} (writable by group or others)")
    if st.st_uid not in (0, os.geteuid()):
        scan.problems.append(f"{name}: owner {st.st_uid} (neither root nor the user verifying it)")


def _parse_sums(text: bytes) -> tuple[dict[str, str], list[str]]:
    """SHA256SUMS as {name: sha256} and its problems (malformed or repeated lines, unsafe names)."""
    import re
    sums, counts, problems = {}, {}, []
    try:
        lines = text.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        return {}, [f"{SUMS}: not UTF-8 text"]
    if lines and lines[-1] == "":
        lines.pop()
    for i, line in enumerate(lines, 1):
        m = re.fullmatch(r"([0-9a-fA-F]{64}) [ *](.+)", line)
        if not m:
            problems.append(f"{SUMS}: line {i} is not '<sha256>  <file>'")
            continue
        name = m.group(2)
        if _unsafe(name):
            problems.append(f"{name}: unsafe path in {SUMS}")
            continue
        counts[name] = counts.get(name, 0) + 1
        sums.setdefault(name, m.group(1).lower())
    problems += [f"{SUMS}: {n} listed {c} times" for n, c in sorted(counts.items()) if c > 1]
    if not problems and text != "".join(f"{sums[n]}  {n}\n" for n in sorted(sums)).encode():
        problems.append(f"{SUMS}: not as `edgeopt bundle` writes it (sorted, one '<sha256>  <file>' per line)")
    return sums, problems


def _manifest_problems(manifest) -> tuple[list[str], dict[str, str] | None]:
    """Problems of a manifest that `edgeopt convert` would not write, and its artifacts {file: sha256}."""
    from edgeopt import targets
    if not isinstance(manifest, dict):
        return [f"{MANIFEST}: not a JSON object"], None
    problems = []
    if manifest.get("schema") != 1:
        problems.append(f"{MANIFEST}: schema {manifest.get('schema')!r} is not 1")
    target = manifest.get("target")
    if not isinstance(target, dict):
        problems.append(f"{MANIFEST}: no target")
    else:
        profile = targets.TARGETS.get(target.get("name")) if isinstance(target.get("name"), str) else None
        if profile is None:
            problems.append(f"{MANIFEST}: target.name {target.get('name')!r} is not a known target")
        elif target.get("delegate") != profile.delegate:
            # the runtime passes a delegate that is not a known name to load_delegate(): a library path
            problems.append(f"{MANIFEST}: target.delegate {target.get('delegate')!r} is not the delegate of "
                            f"{profile.name} ({profile.delegate})")
        threads = target.get("threads")
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool)
                                    or not 1 <= threads <= 4096):
            problems.append(f"{MANIFEST}: target.threads {threads!r} is not a whole number")
    arts = manifest.get("artifacts")
    if not isinstance(arts, list) or not arts:
        return problems + [f"{MANIFEST}: lists no artifacts"], None
    names = {}
    for a in arts:
        name = a.get("file") if isinstance(a, dict) else None
        bad = artifact_name_problem(name)
        if bad:
            problems.append(f"{MANIFEST}: {bad}")
        elif name in names:
            problems.append(f"{MANIFEST}: artifact {name} listed twice")
        elif not (isinstance(a.get("sha256"), str) and len(a["sha256"]) == 64
                  and all(c in "0123456789abcdef" for c in a["sha256"])):
            problems.append(f"{MANIFEST}: artifact {name} has no sha256")
            names[name] = None
        else:
            names[name] = a["sha256"]
    return problems, names


def _signature_problem(allowed_signers, sig_path: str, data, namespace: str) -> tuple[str | None, str | None]:
    from edgeopt.firmware import signing
    try:
        return signing.verify(allowed_signers, sig_path, data, namespace), None
    except signing.SignatureError as e:
        return None, f"signature: {e}"


def verify(path: str, against: str | None = None, allowed_signers: str | None = None,
           max_bytes: int = MAX_BYTES, max_members: int = MAX_MEMBERS) -> dict:
    """Check a bundle archive or an unpacked/installed bundle directory against what `edgeopt bundle` writes.

    Every file is checked against SHA256SUMS, which must list exactly the files there (each once); the runtime
    and package against this edgeopt's; the manifest against what `edgeopt convert` writes (known target and
    its delegate, plain artifact names, each artifact's sha256); members for links, devices, byte code, modes
    and owners (see the comment above). With ``against`` (an edgeopt output directory): also that the bundle
    holds that directory's artifacts. With ``allowed_signers`` (an ssh-keygen allowed-signers file): first
    the signature, ``PATH.sig`` over an archive or ``DIR/SHA256SUMS.sig`` over an unpacked SHA256SUMS; when it
    is missing or does not verify, the result's only problem says so.

    Archives are read once as a stream, members hashed in blocks, stopping at ``max_bytes`` uncompressed
    bytes or ``max_members`` members (defaults 4 GiB, 10,000: both far above any model's bundle).
    Returns {"path", "ok", "files", "problems": ["<file>: <what>", ...], "extra": [...]} (and "signer" with
    ``allowed_signers``); raises UsageError when ``path`` is not a bundle at all.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise UsageError(f"--verify {path}: no such file or directory")
    is_dir = os.path.isdir(path)
    scan = _Scan("directory" if is_dir else "archive", max_bytes, max_members)
    res = {"path": os.path.abspath(path)}
    try:
        if is_dir:
            _scan_dir(path, scan)
        else:
            with open(path, "rb") as f:
                if allowed_signers is not None:
                    # the signature first, over the very bytes scanned next (one open file, read twice)
                    from edgeopt.firmware import signing
                    res["signer"], problem = _signature_problem(allowed_signers, path + ".sig", f, signing.NAMESPACE)
                    if problem:
                        return dict(res, ok=False, files=0, problems=[problem], extra=[])
                    f.seek(0)
                _scan_archive(f, scan)
    except _Limit as e:
        return dict(res, ok=False, files=0, problems=scan.problems + [str(e)], extra=[])
    except (tarfile.TarError, OSError, EOFError, zlib.error, ValueError) as e:
        raise UsageError(f"{path}: not a readable bundle archive ({e})") from None
    if SUMS not in scan.files and SUMS not in scan.other:
        raise UsageError(f"--verify {path}: no {SUMS}; not an edgeopt bundle",
                         hint="make one with `edgeopt bundle OUT_DIR`")
    if is_dir and allowed_signers is not None:
        from edgeopt.firmware import signing
        sig = os.path.join(path, SUMS_SIG)
        res["signer"], problem = _signature_problem(allowed_signers, sig, scan.text.get(SUMS, b""),
                                                    signing.SUMS_NAMESPACE)
        if problem:
            return dict(res, ok=False, files=0, problems=[problem], extra=[])
    problems = scan.problems
    if SUMS in scan.files and SUMS not in scan.text:
        problems.append(f"{SUMS}: larger than {MAX_TEXT >> 20} MiB")
    sums, sum_problems = _parse_sums(scan.text.get(SUMS, b""))
    problems += sum_problems
    problems += [f"{n}: {c} members of that name in the archive" for n, c in sorted(scan.counts.items()) if c > 1]
    for name in sorted(sums):
        if name in scan.other:
            continue  # a link, device or unsafe member: reported above
        if name not in scan.files:
            problems.append(f"{name}: missing")
        elif scan.files[name] != sums[name]:
            problems.append(f"{name}: checksum differs (expected {sums[name][:16]}…, found {scan.files[name][:16]}…)")
    extra = sorted(set(scan.files) - set(sums) - {SUMS})
    problems += [f"{n}: in the {scan.kind} but not in {SUMS}" for n in extra]
    for name, expected in zip(_PKG_FILES, (INIT_PY.encode(), _runtime_source())):
        if name not in sums:
            problems.append(f"{name}: not listed in {SUMS}")
        elif scan.files.get(name) == sums[name] and sums[name] != _sha(expected):
            what = "runtime" if name.endswith("runtime.py") else "package"
            problems.append(f"{name}: not the {what} this edgeopt ({__version__}) ships")
    manifest, artifacts = None, None
    if MANIFEST in scan.text:
        try:
            manifest = json.loads(scan.text[MANIFEST])
        except ValueError:
            problems.append(f"{MANIFEST}: not valid JSON")
        else:
            more, artifacts = _manifest_problems(manifest)
            problems += more
    elif MANIFEST in scan.files:
        problems.append(f"{MANIFEST}: larger than {MAX_TEXT >> 20} MiB")
    elif MANIFEST not in sums and MANIFEST not in scan.other:
        problems.append(f"{MANIFEST}: missing")
    for name, digest in (artifacts or {}).items():
        if name not in sums:
            problems.append(f"{name}: an artifact of {MANIFEST} but not listed in {SUMS}")
        elif digest and name in scan.files and scan.files[name] != digest:
            problems.append(f"{name}: sha256 differs from {MANIFEST}")
    if artifacts is not None:
        allowed = {MANIFEST, *_PKG_FILES, *artifacts}
        for name in sorted(set(sums) - allowed):
            why = "code Python could import" if name.endswith(_CODE_SUFFIXES) else f"not an artifact of {MANIFEST}"
            problems.append(f"{name}: not part of an edgeopt bundle ({why})")
    if against is not None:
        problems += _compare_out_dir(manifest if isinstance(manifest, dict) else {}, scan.files, against)
    seen, uniq = set(), []  # one line per problem, in a stable order
    for p in problems:
        if p not in seen:
            seen.add(p)
            uniq.append(p)
    return dict(res, ok=not uniq, files=len(sums), problems=uniq, extra=extra)


def _compare_out_dir(manifest: dict, files: dict[str, str], out_dir: str) -> list[str]:
    ref, ref_files = collect(out_dir)
    problems = []
    ref_arts = {a["file"]: a for a in ref["artifacts"]}
    for a in manifest.get("artifacts") or []:
        name = a.get("file") if isinstance(a, dict) else None
        if name not in ref_arts:
            problems.append(f"{name}: not an artifact of {out_dir}")
            continue
        if name in files and files[name] != _sha(ref_files[name]):
            problems.append(f"{name}: differs from {os.path.join(out_dir, name)}")
    if manifest and (manifest.get("source") or {}).get("sha256") != (ref.get("source") or {}).get("sha256"):
        problems.append(f"{MANIFEST}: built from another source model than {out_dir}")
    return problems


def check(path: str, against: str | None = None, allowed_signers: str | None = None) -> dict:
    """verify(), raising GateError (exit 1) listing the files that differ (or the signature's problem)."""
    res = verify(path, against, allowed_signers)
    if not res["ok"]:
        if allowed_signers is not None and res.get("signer") is None:
            raise GateError(f"bundle {path}: {res['problems'][0]}", result=res,
                            hint="check --allowed-signers, or sign the bundle again with `edgeopt bundle --sign`")
        raise GateError(f"bundle {path}: {len(res['problems'])} problem(s) against its {SUMS}:\n"
                        + "\n".join(res["problems"]),
                        hint="rebuild the bundle with `edgeopt bundle OUT_DIR` and install it again", result=res)
    return res
