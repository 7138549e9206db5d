"""``edgeopt explain OUT_DIR``: the per-layer quantization error of a converted model, worst first.

Without ``--val`` the report stored by ``convert --accuracy-target`` (manifest["layers"]) is shown. With
``--val`` (or when none is stored) the primary artifact's conversion is redone from the source model and
the calibration data, in a temporary directory, and measured on the validation data; the source model and
calibration file are found by the names the manifest records (beside OUT_DIR, or in the current
directory) and checked by SHA-256 - the manifest stores no host-specific paths - or given with
``--model`` / ``--calib``.
"""
from __future__ import annotations

import os
import shutil
import tempfile

import edgeopt
from edgeopt.conversion.defaults import DEFAULT_MAX_CALIB
from edgeopt.conversion.reference import find_beside
from edgeopt.errors import UsageError
from edgeopt.json_files import read_json

__all__ = ["explain"]


def _load_manifest(out_dir: str) -> dict:
    path = os.path.join(out_dir, "manifest.json")
    if not os.path.isfile(path):
        raise UsageError(f"{out_dir}: no manifest.json (not an `edgeopt convert` output directory)")
    return read_json(path)


def _find(name: str | None, out_dir: str, sha: str | None, what: str, flag: str) -> str:
    if not name:
        raise UsageError(f"the manifest records no {what} file", hint=f"give it with {flag} PATH")
    path, tried = find_beside(name, out_dir, sha)
    if path is not None:
        return path
    raise UsageError(f"{what} {name!r} not found beside {os.path.abspath(out_dir)} or in the current directory"
                     + (" (a file of that name has different contents)" if tried else ""),
                     hint=f"give it with {flag} PATH")


def explain(out_dir: str, val=None, model: str | None = None, calib=None, top: int = 20,
            trust_model_code: bool = False) -> dict:
    """The per-layer report of ``out_dir`` (see the module doc); ``trust_model_code`` as in :func:`edgeopt.convert`
    (the source model is loaded again)."""
    man = _load_manifest(out_dir)
    src = man.get("source") or {}
    res = {"out_dir": os.path.abspath(out_dir), "source": src.get("file"), "target": man["target"]["name"],
           "artifact": man["artifacts"][0]["file"]}
    rec = man.get("recovery")
    if rec:
        res["recovery"] = rec
        res["float_layers"] = rec.get("chosen", {}).get("float_layers") or []
    if val is None and model is None and man.get("layers"):
        res["layers"] = dict(man["layers"], layers=man["layers"]["layers"][:top])
        res["note"] = "stored by `edgeopt convert` (measured on its validation data)"
        return res
    if src.get("format") == "tflite":
        raise UsageError(f"{out_dir}: made from a .tflite file; the per-layer report needs the float source model")
    if model is None:
        model = _find(src.get("file"), out_dir, src.get("sha256"), "source model", "--model")
    cal = man.get("calibration") or {}
    if calib is None:
        if cal.get("source") == "random":
            calib = "random"
        else:
            calib = _find(cal.get("source"), out_dir, None, "calibration data", "--calib")
    opts = man.get("options") or {}
    recipe = cal.get("recipe") or {}
    kw = {"calibration_method": recipe.get("calibration_method") or cal.get("method") or "minmax"}
    if recipe.get("calibration_method") == "percentile" and recipe.get("percentile"):
        kw["calib_percentile"] = recipe["percentile"]
    if recipe.get("calibration_samples"):
        kw["histogram_samples"] = recipe["calibration_samples"]
    if recipe and not recipe.get("per_channel", True):
        kw["per_channel"] = False
    tmp = tempfile.mkdtemp(prefix="edgeopt-explain-")
    try:
        m = edgeopt.convert(model, target=man["target"]["name"], calib=calib, val=val, out=os.path.join(tmp, "o"),
                            input_shapes=opts.get("input_shapes") or None, mean=cal.get("mean"), std=cal.get("std"),
                            io=opts.get("io"), allow_float_fallback=bool(opts.get("allow_float_fallback")),
                            max_samples=cal.get("max_samples") or DEFAULT_MAX_CALIB, explain=True,
                            trust_model_code=trust_model_code, warn=lambda msg: None, **kw)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lay = m["layers"]
    res["layers"] = dict(lay, layers=lay["layers"][:top])
    plain = [a for a in m["artifacts"] if a["file"] == lay["artifact"]]
    mine = [a for a in man["artifacts"] if a["file"] == lay["artifact"]]
    same = bool(plain and mine and plain[0]["sha256"] == mine[0]["sha256"])
    res["rebuilt_identical"] = same
    res["accuracy"] = m["accuracy"]["outputs"]
    res["note"] = ("measured on " + (m["accuracy"]["data"].get("source") or "the validation data") + "; "
                   + ("the rebuilt artifact is byte-identical to the one in OUT_DIR" if same else
                      "the layers are those of the plain recipe" + (" (OUT_DIR holds a recovered artifact)" if rec
                                                                    else "; the rebuilt artifact differs from OUT_DIR's")))
    return res
