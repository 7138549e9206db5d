"""``deploy``: convert when needed (cached by source hash, target and options), push, bench.

    import edgeopt.devices.deploy, edgeopt.devices.inventory
    inv = edgeopt.devices.inventory.load()
    out = edgeopt.devices.deploy.deploy("model.onnx", "jetson", inv.select(family="jetson"), calib="calib.npy")
    out["manifest"], out["results"]
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from edgeopt.devices.bench import BenchOptions, bench_device, for_each_device
from edgeopt.devices.connection import connect
from edgeopt.errors import UsageError
from edgeopt.devices.inventory import Device
from edgeopt.devices.push import push, sha256_file

__all__ = ["convert_cached", "deploy", "cache_key"]

STAMP = ".edgeopt-deploy-key"


def _hash_path(path: str, h) -> None:
    p = Path(path)
    if p.is_dir():
        for f in sorted(x for x in p.rglob("*") if x.is_file()):
            h.update(str(f.relative_to(p)).encode() + b"\0")
            h.update(sha256_file(str(f)).encode())
    elif p.is_file():
        h.update(sha256_file(str(p)).encode())
    else:
        h.update(str(path).encode())  # e.g. "random"


def cache_key(model: str, target: str, options: dict) -> str:
    """sha256 over the model's bytes, the target, the convert options (data files by content) and edgeopt's version."""
    from edgeopt import __version__
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
    h.update(b"\0edgeopt=" + __version__.encode())
    return h.hexdigest()


def _default_cache_root() -> Path:
    base = os.environ.get("EDGEOPT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "edgeopt")
    return Path(base) / "deploy"


def convert_cached(model: str, target: str, out: str | None = None, cache_root: str | None = None,
                   **options) -> tuple[dict, str, bool]:
    """(manifest, output dir, reused) — runs ``edgeopt.convert`` only when the key changed."""
    import edgeopt
    from edgeopt import targets as T

    if not os.path.exists(model):
        raise UsageError(f"{model}: no such file or directory")
    try:
        tname = T.get(target).name
    except KeyError as e:
        raise UsageError(e.args[0]) from None
    options = {k: v for k, v in options.items() if v is not None and v != [] and v != ()}
    key = cache_key(model, tname, options)
    if out is None:
        stem = Path(model.rstrip("/")).name.split(".")[0] or "model"
        out = str(Path(cache_root) if cache_root else _default_cache_root()) + f"/{stem}-{tname}-{key[:12]}"
    stamp = Path(out) / STAMP
    mpath = Path(out) / "manifest.json"
    if stamp.is_file() and mpath.is_file() and stamp.read_text().strip() == key:
        try:
            manifest = json.loads(mpath.read_text())
            art = manifest["artifacts"][0]
            if sha256_file(str(Path(out) / art["file"])) == art["sha256"]:
                return manifest, out, True
        except (ValueError, KeyError, IndexError, OSError):
            pass
    manifest = edgeopt.convert(model, target=tname, out=out, **options)
    try:
        stamp.write_text(key + "\n")
    except OSError:
        pass
    return manifest, out, False


def deploy(model: str, target: str, devices: list[Device], out: str | None = None, calib=None, val=None,
           input_shapes=None, mean=None, std=None, io=None, bench: BenchOptions | None = None,
           no_bench: bool = False, accept_new: bool = False, cache_root: str | None = None,
           convert_options: dict | None = None) -> dict:
    """Convert (or reuse), then push and bench on every device in parallel.

    Returns ``{"manifest": ..., "results": [...], "out": DIR, "converted": bool}``; a device's failure is an
    entry ``{"device", "error", "hint", "exit_code"}`` in ``results``.
    """
    manifest, out_dir, reused = convert_cached(model, target, out=out, cache_root=cache_root, calib=calib, val=val,
                                               input_shapes=input_shapes, mean=mean, std=std, io=io,
                                               **(convert_options or {}))
    primary = os.path.join(out_dir, manifest["artifacts"][0]["file"])
    opts = bench or BenchOptions()

    def one(dev: Device) -> dict:
        if no_bench:
            with connect(dev, accept_new=accept_new) as conn:
                p = push(conn, primary, conn.expand(dev.workdir), progress=opts.progress, python=dev.python)
            return {"device": dev.name, "target": dev.target,
                    "artifact": {"file": os.path.basename(primary), "sha256": p.sha256, "path": p.path},
                    "transfer": p.transfer()}
        return bench_device(dev, primary, opts, accept_new=accept_new)

    results = for_each_device(devices, one) if devices else []
    return {"manifest": {k: v for k, v in manifest.items() if not k.startswith("_")}, "results": results,
            "out": out_dir, "converted": not reused}
