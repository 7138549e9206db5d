"""What a sweep record says about a cell's conversion, taken from its manifest: the primary artifact, the
accuracy of its first output, and the quantization as applied.

One function for both the records a sweep writes (:mod:`edgeopt.sweep.run`) and the records the sweep report
rebuilds from an older history, which stored the manifest but not the record. The manifest may come from a
crafted database: every level is checked for its type, and what is not there is left out.
"""
from __future__ import annotations

__all__ = ["describe", "ACCURACY_KEYS", "QUANTIZATION_KEYS"]

ACCURACY_KEYS = ("cosine", "sqnr_db", "top1_agreement", "top1_accuracy")
QUANTIZATION_KEYS = ("calibration_method", "per_channel", "bias_correction", "float_layers", "percentile")


def _dict(v) -> dict:
    return v if isinstance(v, dict) else {}


def describe(manifest: dict) -> dict:
    """``{"artifact": {file, sha256, bytes, precision}, "accuracy": {output, cosine, sqnr_db, top1_agreement,
    top1_accuracy}, "quantization": {calibration_method, per_channel, bias_correction, float_layers,
    percentile}}`` of the primary artifact (``artifacts[0]``); keys the manifest lacks are absent (accuracy and
    quantization), or None (artifact)."""
    manifest = _dict(manifest)
    arts = manifest.get("artifacts")
    art = _dict(arts[0]) if isinstance(arts, list) and arts else {}
    accuracy = {}
    for name, m in _dict(_dict(manifest.get("accuracy")).get("outputs")).items():
        if isinstance(m, dict):  # the first output's: what the matrix, the table and the plot show
            accuracy = {"output": name, **{k: m[k] for k in ACCURACY_KEYS if k in m}}
            break
    recipe = _dict(_dict(manifest.get("calibration")).get("recipe"))
    return {"artifact": {k: art.get(k) for k in ("file", "sha256", "bytes", "precision")},
            "accuracy": accuracy,
            "quantization": {k: recipe[k] for k in QUANTIZATION_KEYS if k in recipe}}
