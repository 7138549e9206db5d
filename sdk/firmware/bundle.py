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

Only numpy-free standard library here: ``import edgeopt.firmware.bundle`` is light.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import tempfile

from edgeopt import __version__
from edgeopt.errors import GateError, UsageError

MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"
PKG = "edgeopt"
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
        import datetime
        try:
            dt = datetime.datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
            return int(dt.timestamp())
        except ValueError:
            pass
    return DEFAULT_EPOCH


def _plain_name(name, where: str) -> str:
    if not isinstance(name, str) or not name or name != os.path.basename(name) or name in (".", "..") \
            or name in (MANIFEST, SUMS, PKG) or "\\" in name:
        raise UsageError(f"{where}: artifact file name {name!r} cannot go into a bundle (expected a plain file name)")
    if len(name.encode()) > 100:
        raise UsageError(f"{where}: artifact file name {name!r} is longer than 100 bytes (ustar limit)")
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


def build(out_dir: str, output: str | None = None, artifacts=None) -> dict:
    """Write the bundle of ``out_dir`` to ``output`` (default ``OUT_DIR.tar.gz`` beside it); returns a summary."""
    manifest, files = collect(out_dir, artifacts)
    mtime = _epoch(manifest)
    blob = _gzip_bytes(_tar_bytes(files, mtime))
    output = os.path.abspath(output or default_output(out_dir))
    parent = os.path.dirname(output)
    if not os.path.isdir(parent):
        raise UsageError(f"-o {output}: directory {parent} does not exist")
    if os.path.isdir(output):
        raise UsageError(f"-o {output}: is a directory; give the archive's file name (e.g. model.tar.gz)")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".bundle-", dir=parent)
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.chmod(tmp, 0o644)
        os.replace(tmp, output)
    except OSError as e:
        raise UsageError(f"-o {output}: cannot write there ({e.strerror or e})") from None
    return {"file": output, "sha256": _sha(blob), "bytes": len(blob), "mtime": mtime,
            "target": (manifest.get("target") or {}).get("name"),
            "artifacts": [a["file"] for a in manifest["artifacts"]],
            "entries": [{"name": n, "sha256": _sha(files[n]), "bytes": len(files[n])} for n in sorted(files)]}


# ------------------------------------------------------------------------------------------------ verify

def _parse_sums(text: bytes, where: str) -> dict[str, str]:
    sums = {}
    for i, line in enumerate(text.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(None, 1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise UsageError(f"{where}: line {i} is not '<sha256>  <file>'")
        sums[parts[1].lstrip("*").strip()] = parts[0].lower()
    return sums


def _archive_files(path: str) -> tuple[dict[str, bytes], list[str]]:
    """Regular files of an archive, and problems with unsafe or odd members."""
    files, problems = {}, []
    try:
        with tarfile.open(path, "r:*") as tf:
            for m in tf.getmembers():
                name = m.name[2:] if m.name.startswith("./") else m.name
                if name.startswith("/") or ".." in name.split("/"):
                    problems.append(f"{m.name}: unsafe path in the archive")
                elif m.isdir():
                    continue
                elif not m.isfile():
                    problems.append(f"{m.name}: not a regular file (links and devices are not allowed)")
                else:
                    files[name] = tf.extractfile(m).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UsageError(f"{path}: not a readable bundle archive ({e})") from None
    return files, problems


def _dir_reader(root: str):
    def read(name: str) -> bytes | None:
        p = os.path.join(root, *name.split("/"))
        return _read(p) if os.path.isfile(p) else None
    return read


def verify(path: str, against: str | None = None) -> dict:
    """Check an unpacked/installed bundle directory or a bundle archive against its SHA256SUMS.

    Also checks that every artifact of the bundled manifest is listed and matches the manifest's sha256, and
    with ``against`` (an edgeopt output directory) that the bundle holds that directory's artifacts.
    Returns {"path", "ok", "files", "problems": ["<file>: <what>", ...], "extra": [...]}; raises UsageError
    when ``path`` is not a bundle at all.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise UsageError(f"--verify {path}: no such file or directory")
    problems, extra = [], []
    if os.path.isdir(path):
        read = _dir_reader(path)
        listing = None
    else:
        files, problems = _archive_files(path)
        read = files.get
        listing = set(files)
    sums_bytes = read(SUMS)
    if sums_bytes is None:
        raise UsageError(f"--verify {path}: no {SUMS}; not an edgeopt bundle",
                         hint="make one with `edgeopt bundle OUT_DIR`")
    sums = _parse_sums(sums_bytes, f"{path}/{SUMS}")
    for name in sorted(sums):
        if name.startswith("/") or ".." in name.split("/"):
            problems.append(f"{name}: unsafe path in {SUMS}")
            continue
        data = read(name)
        if data is None:
            problems.append(f"{name}: missing")
        elif _sha(data) != sums[name]:
            problems.append(f"{name}: checksum differs (expected {sums[name][:16]}…, found {_sha(data)[:16]}…)")
    if listing is not None:
        extra = sorted(listing - set(sums) - {SUMS})
        problems += [f"{n}: in the archive but not in {SUMS}" for n in extra]
    elif os.path.isdir(path):
        for root, dirs, fnames in os.walk(path):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for f in sorted(fnames):
                rel = os.path.relpath(os.path.join(root, f), path).replace(os.sep, "/")
                if rel not in sums and rel != SUMS:
                    extra.append(rel)  # an installed directory may hold other files: reported, not a failure
    mbytes = read(MANIFEST)
    manifest = None
    if mbytes is None:
        if MANIFEST not in sums:
            problems.append(f"{MANIFEST}: missing")
    else:
        try:
            manifest = json.loads(mbytes)
        except ValueError:
            problems.append(f"{MANIFEST}: not valid JSON")
    for a in (manifest or {}).get("artifacts") or []:
        name = a.get("file")
        if name not in sums:
            problems.append(f"{name}: an artifact of {MANIFEST} but not listed in {SUMS}")
            continue
        data = read(name)
        if data is not None and a.get("sha256") and _sha(data) != a["sha256"]:
            problems.append(f"{name}: sha256 differs from {MANIFEST}")
    for name in (f"{PKG}/__init__.py", f"{PKG}/runtime.py"):
        if name not in sums:
            problems.append(f"{name}: not listed in {SUMS}")
    if against is not None:
        problems += _compare_out_dir(manifest or {}, read, against)
    # one line per file, in a stable order, without repeats
    seen, uniq = set(), []
    for p in problems:
        if p not in seen:
            seen.add(p)
            uniq.append(p)
    return {"path": os.path.abspath(path), "ok": not uniq, "files": len(sums), "problems": uniq, "extra": extra}


def _compare_out_dir(manifest: dict, read, out_dir: str) -> list[str]:
    ref, ref_files = collect(out_dir)
    problems = []
    ref_arts = {a["file"]: a for a in ref["artifacts"]}
    for a in manifest.get("artifacts") or []:
        name = a.get("file")
        if name not in ref_arts:
            problems.append(f"{name}: not an artifact of {out_dir}")
            continue
        data = read(name)
        if data is not None and _sha(data) != _sha(ref_files[name]):
            problems.append(f"{name}: differs from {os.path.join(out_dir, name)}")
    if manifest and (manifest.get("source") or {}).get("sha256") != (ref.get("source") or {}).get("sha256"):
        problems.append(f"{MANIFEST}: built from another source model than {out_dir}")
    return problems


def check(path: str, against: str | None = None) -> dict:
    """verify(), raising GateError (exit 1) listing the files that differ."""
    res = verify(path, against)
    if not res["ok"]:
        raise GateError(f"bundle {path}: {len(res['problems'])} problem(s) against its {SUMS}:\n"
                        + "\n".join(res["problems"]),
                        hint="rebuild the bundle with `edgeopt bundle OUT_DIR` and install it again", result=res)
    return res
