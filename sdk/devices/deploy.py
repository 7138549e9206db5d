"""``deploy``: convert when needed (cached by source hash, target and options), push, bench.

    import edgeopt.devices.deploy, edgeopt.devices.inventory
    inv = edgeopt.devices.inventory.load()
    out = edgeopt.devices.deploy.deploy("model.onnx", "jetson", inv.select(family="jetson"), calib="calib.npy")
    out["manifest"], out["results"]
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path

import edgeopt
from edgeopt import __version__, targets
from edgeopt.conversion.defaults import DEFAULT_MAX_VAL
from edgeopt.conversion.options import ConversionOptions
from edgeopt.devices import val as device_val
from edgeopt.devices.bench import BenchOptions, bench_device, for_each_device
from edgeopt.devices.connection import connect
from edgeopt.errors import UsageError
from edgeopt.devices.inventory import Device
from edgeopt.devices.push import push, sha256_file
from edgeopt.runtime import check_artifact_name

__all__ = ["convert_cached", "deploy", "cache_key", "code_fingerprint", "cache_entry", "cached_manifest", "install_entry",
           "entry_files", "CacheEntry"]

STAMP = ".edgeopt-deploy-key"
# Distributions whose versions change what a conversion produces: part of the cache key.
TOOLCHAIN = ("tensorflow", "keras", "tf_keras", "onnx", "onnxruntime", "onnx2tf", "numpy")


def _hash_path(path: str, h, skip=lambda f: False) -> None:
    p = Path(path)
    if p.is_dir():
        for f in sorted(x for x in p.rglob("*") if x.is_file() and not skip(x)):
            h.update(str(f.relative_to(p)).encode() + b"\0")
            h.update(sha256_file(str(f)).encode())
    elif p.is_file():
        h.update(sha256_file(str(p)).encode())
    else:
        h.update(str(path).encode())  # e.g. "random"


def cache_key(model: str, target: str, options: dict) -> str:
    """sha256 over the model's bytes, the target, the convert options (data files by content), edgeopt's version
    and code (:func:`code_fingerprint`) and the converter stack's versions."""
    h = hashlib.sha256()
    _hash_path(model, h)
    h.update(b"\0target=" + target.encode())
    for k in sorted(options):
        v = options[k]
        h.update(f"\0{k}=".encode())
        if k in ("calib", "val") and isinstance(v, str):
            _hash_path(v, h)
        else:
            h.update(json.dumps(v, sort_keys=True, default=str).encode())
    h.update(b"\0edgeopt=" + __version__.encode() + b"\0code=" + code_fingerprint().encode())
    h.update(b"\0toolchain=" + json.dumps(toolchain_versions(), sort_keys=True).encode())
    return h.hexdigest()


_CODE: dict[tuple, str] = {}


def _code_roots() -> list[Path]:
    """The directories of edgeopt's own code: the package and the two it maps from other folders."""
    from importlib.util import find_spec
    return [Path(edgeopt.__file__).parent] + [Path(find_spec(name).origin).parent
                                              for name in ("edgeopt.targets", "edgeopt.converters")]


def code_fingerprint() -> str:
    """SHA-256 of edgeopt's own files (sources and package data, not bytecode), once per process.

    The version alone does not say what converted an artifact: between releases (a checkout, an editable
    install) the code changes under the same version, and a cache keyed on the version would serve what older
    code converted."""
    roots = tuple(sorted({str(r) for r in _code_roots()}))
    if roots not in _CODE:
        h = hashlib.sha256()
        for root in roots:
            _hash_path(root, h, skip=lambda f: "__pycache__" in f.parts or f.suffix in (".pyc", ".pyo"))
        _CODE[roots] = h.hexdigest()
    return _CODE[roots]


def toolchain_versions() -> dict:
    """Installed versions of the converter stack (package metadata only: nothing is imported)."""
    res = {}
    for dist in TOOLCHAIN:
        try:
            res[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            res[dist] = None
    return res


@contextlib.contextmanager
def _entry_lock(out: str, cache_root: str | None):
    """Hold an exclusive lock on one cache entry: two deploys of the same model convert it once, in turn.

    The lock file lives in the cache root (never beside a user's --out), named after the entry's path; an
    flock is released by the kernel when a process dies, so a crashed deploy leaves no stale lock.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock (conversions stage and rename, so a race costs time, not files)
        yield
        return
    root = Path(cache_root) if cache_root else _default_cache_root()
    name = hashlib.sha256(os.path.abspath(out).encode()).hexdigest()[:32] + ".lock"
    try:
        (root / ".locks").mkdir(parents=True, exist_ok=True)
        f = open(root / ".locks" / name, "a+")
    except OSError:
        yield
        return
    with f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _reusable(out: str, key: str) -> dict | None:
    """The manifest of a finished cache entry for ``key`` whose primary artifact is intact, else None."""
    stamp, mpath = Path(out) / STAMP, Path(out) / "manifest.json"
    try:
        if not (stamp.is_file() and mpath.is_file() and stamp.read_text().strip() == key):
            return None
        manifest = json.loads(mpath.read_text())
        art = manifest["artifacts"][0]
        name = art["file"]
    except (ValueError, KeyError, IndexError, TypeError, OSError):
        return None
    try:  # a manifest is data: an artifact outside the entry's directory is never read or pushed
        check_artifact_name(name)
    except ValueError as e:
        raise UsageError(f"{mpath}: {e}") from None
    try:
        if sha256_file(str(Path(out) / name)) == art["sha256"]:
            return manifest
    except (KeyError, OSError):
        pass
    return None


def _default_cache_root() -> Path:
    base = os.environ.get("EDGEOPT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "edgeopt")
    return Path(base) / "deploy"


@dataclass(frozen=True)
class CacheEntry:
    """One entry of the conversion cache: its key, its directory, the target profile and the convert keywords."""

    key: str
    out: str
    target: str
    options: dict


def cache_entry(model: str, target: str, out: str | None = None, cache_root: str | None = None,
                **options) -> CacheEntry:
    """The cache entry a conversion of ``model`` for ``target`` with ``options`` has (nothing is converted)."""
    if not os.path.exists(model):
        raise UsageError(f"{model}: no such file or directory")
    try:
        tname = targets.get(target).name
    except KeyError as e:
        raise UsageError(e.args[0]) from None
    options = {k: v for k, v in options.items() if v is not None and v != [] and v != ()}
    # the conversion options as one typed object, back as keywords: the same request spelt differently
    # ("top1=0.99" or {"top1": 0.99}, an explicit default) keys the same entry, and a default run's key is
    # the data's and the target's alone, as it always was
    chosen = ConversionOptions.from_keywords(**{k: options.pop(k) for k in list(options)
                                                if k in ConversionOptions.KEYWORDS})
    options.update(chosen.keywords())
    key = cache_key(model, tname, options)
    if out is None:
        stem = Path(model.rstrip("/")).name.split(".")[0] or "model"
        out = str(Path(cache_root) if cache_root else _default_cache_root()) + f"/{stem}-{tname}-{key[:12]}"
    return CacheEntry(key=key, out=out, target=tname, options=options)


def cached_manifest(entry: CacheEntry) -> dict | None:
    """The manifest of ``entry`` when it is finished and intact, else None."""
    return _reusable(entry.out, entry.key)


def convert_cached(model: str, target: str, out: str | None = None, cache_root: str | None = None,
                   **options) -> tuple[dict, str, bool]:
    """(manifest, output dir, reused) — runs ``edgeopt.convert`` only when the key changed."""
    entry = cache_entry(model, target, out=out, cache_root=cache_root, **options)
    manifest = _reusable(entry.out, entry.key)
    if manifest is not None:
        return manifest, entry.out, True
    with _entry_lock(entry.out, cache_root):
        manifest = _reusable(entry.out, entry.key)  # another deploy may have converted it while this one waited
        if manifest is not None:
            return manifest, entry.out, True
        manifest = edgeopt.convert(model, target=entry.target, out=entry.out, **entry.options)
        try:
            (Path(entry.out) / STAMP).write_text(entry.key + "\n")
        except OSError:
            pass
    return manifest, entry.out, False


def install_entry(entry: CacheEntry, files: dict, cache_root: str | None = None) -> dict:
    """Put a conversion made elsewhere (``files``: relative path -> bytes, as :func:`entry_files` gives) in
    ``entry``'s place and return its manifest. The files are written to a staging directory and renamed into
    place, stamp last: a conversion cut short is never taken for a finished one."""
    with _entry_lock(entry.out, cache_root):
        manifest = _reusable(entry.out, entry.key)
        if manifest is not None:
            return manifest
        final = Path(entry.out)
        stage = final.parent / f".{final.name}.staging-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            for rel, data in files.items():
                if Path(rel).is_absolute() or ".." in Path(rel).parts or rel == STAMP:
                    raise UsageError(f"conversion result: bad file name {rel!r}")
                dest = stage / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(data)
            (stage / STAMP).write_text(entry.key + "\n")
            if final.exists():  # an unfinished or stale entry: replaced whole
                shutil.rmtree(final)
            os.replace(stage, final)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        manifest = _reusable(entry.out, entry.key)
    if manifest is None:
        raise UsageError(f"{entry.out}: the conversion result is incomplete (its artifact does not match the "
                         "manifest)")
    return manifest


def entry_files(out: str, max_bytes: int = 4 << 30) -> dict:
    """Every file of a conversion's output directory (relative path -> bytes), the cache stamp left out."""
    files, total = {}, 0
    root = Path(out)
    for f in sorted(x for x in root.rglob("*") if x.is_file() and not x.is_symlink()):
        rel = str(f.relative_to(root))
        if rel == STAMP:
            continue
        data = f.read_bytes()
        total += len(data)
        if total > max_bytes:
            raise UsageError(f"{out}: the conversion output is over {max_bytes >> 20} MiB")
        files[rel] = data
    return files


def deploy(model: str, target: str, devices: list[Device], out: str | None = None, calib=None, val=None,
           input_shapes=None, mean=None, std=None, io=None, bench: BenchOptions | None = None,
           no_bench: bool = False, accept_new: bool = False, cache_root: str | None = None,
           convert_options: dict | None = None, trust_model_code: bool = False) -> dict:
    """Convert (or reuse), then push and bench on every device in parallel. With ``val``, the validation samples
    (at most ``convert_options["max_val_samples"]``) also run on every device: each result's ``accuracy``.

    ``trust_model_code`` lets the conversion load a model whose file can run code (Keras Lambda layers);
    it is part of the cache key.

    Returns ``{"manifest": ..., "results": [...], "out": DIR, "converted": bool}``; a device's failure is an
    entry ``{"device", "error", "hint", "exit_code"}`` in ``results``.
    """
    manifest, out_dir, reused = convert_cached(model, target, out=out, cache_root=cache_root, calib=calib, val=val,
                                               input_shapes=input_shapes, mean=mean, std=std, io=io,
                                               **_with_trust(convert_options, trust_model_code))
    try:
        primary = os.path.join(out_dir, check_artifact_name(manifest["artifacts"][0]["file"]))
    except ValueError as e:
        raise UsageError(f"{out_dir}/manifest.json: {e}") from None
    opts = bench or BenchOptions()
    check = None
    if val is not None and not no_bench and devices:
        # the same validation samples run on every device, compared with the same FP32 reference the
        # conversion's check used (the source model, run on this host)
        check = device_val.prepare(primary, val, (convert_options or {}).get("max_val_samples", DEFAULT_MAX_VAL),
                                   source=model, trust_model_code=trust_model_code)
        opts = replace(opts, val_check=check)

    def one(dev: Device) -> dict:
        if no_bench:
            with connect(dev, accept_new=accept_new) as conn:
                p = push(conn, primary, conn.expand(dev.workdir), progress=opts.progress, python=dev.python)
            return {"device": dev.name, "target": dev.target,
                    "artifact": {"file": os.path.basename(primary), "sha256": p.sha256, "path": p.path},
                    "transfer": p.transfer()}
        return bench_device(dev, primary, opts, accept_new=accept_new)

    try:
        results = for_each_device(devices, one) if devices else []
    finally:
        if check is not None:
            check.cleanup()
    return {"manifest": {k: v for k, v in manifest.items() if not k.startswith("_")}, "results": results,
            "out": out_dir, "converted": not reused}


def _with_trust(convert_options: dict | None, trust_model_code: bool) -> dict:
    """The convert options with ``trust_model_code`` set only when asked for (the cache key of others is kept)."""
    opts = dict(convert_options or {})
    if trust_model_code:
        opts["trust_model_code"] = True
    return opts
