"""Results from outside are data, not markup: coerce what a device or a result file says into plain values.

A benchmark result reaches edgeopt from a device's runner (its stdout) or from a JSON file someone hands to
``compare``/``report``. Either can be crafted. Everything read is passed through :func:`result` (stored and
loaded results) or :func:`runner_output` (the runner's JSON line) before it is kept, printed or rendered:

- numbers where numbers belong (latencies, counts, ids): finite ``int``/``float`` or ``None``, never a string
  that a report would paste as it is;
- every string without control characters (terminal escape sequences, carriage returns that rewrite a line)
  and at most :data:`MAX_TEXT` characters;
- nesting and list lengths bounded, so a crafted file cannot make a renderer walk forever.

Rendering still escapes every value (HTML, Markdown, rich markup); this module makes the values themselves
sane, so a number is formatted as a number and a device string cannot move the cursor.
"""
from __future__ import annotations

import math
import re

__all__ = ["MAX_TEXT", "MAX_ITEMS", "MAX_SAMPLES", "text", "number", "integer", "result", "runner_output"]

MAX_TEXT = 2000        # characters of one string (a device's error line, a file name, a runtime version)
MAX_ITEMS = 1000       # entries of one list or dict that is not a sample list
MAX_SAMPLES = 1_000_000  # latency samples kept from one result (a --sustained run on a fast model is ~1e6)
MAX_DEPTH = 12

# C0 and C1 control characters and DEL, except tab and newline (kept in multi-line notes, printed as text)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")

# Fields that are numbers wherever they appear in a result; anything else there becomes None.
_NUMERIC = {"p50", "p90", "p95", "p99", "mean", "std", "cv", "min", "max", "runs", "init_ms", "peak_rss_mb",
            "warmup", "min_seconds", "threads", "id", "wall_s", "connect_s", "push_s", "remote_s", "measured_s",
            "warmup_seconds", "sustained", "bytes", "seconds", "change", "ncpu", "temp_c", "max_c"}
_INTEGER = {"runs", "id", "warmup", "threads", "bytes", "ncpu"}
_SAMPLES = {"samples_ms", "timestamps_s"}


def text(value, limit: int = MAX_TEXT) -> str:
    """``value`` as a string without control characters, cut to ``limit`` characters."""
    s = value if isinstance(value, str) else str(value)
    s = _CONTROL.sub("", s)
    return s if len(s) <= limit else s[:limit] + "…"


def number(value) -> float | int | None:
    """A finite int/float, or None (strings, booleans, NaN and infinities are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def integer(value) -> int | None:
    n = number(value)
    if n is None:
        return None
    return int(n) if float(n).is_integer() else None


def _samples(values) -> list[float] | None:
    if not isinstance(values, list):
        return None
    out = [float(v) for v in values[:MAX_SAMPLES] if number(v) is not None]
    return out


def _trace(values) -> list[list] | None:
    """[[seconds, °C or None], ...]: pairs of numbers, anything else dropped."""
    if not isinstance(values, list):
        return None
    return [[number(p[0]), number(p[1])] for p in values[:MAX_SAMPLES]
            if isinstance(p, list) and len(p) == 2 and number(p[0]) is not None]


def _clean(value, key: str | None = None, depth: int = 0):
    if key in _SAMPLES:
        return _samples(value)
    if key == "temperature_trace":
        return _trace(value)
    if key in _NUMERIC and isinstance(value, list):  # an interval: [low, high]
        return [number(v) for v in value[:MAX_ITEMS]]
    if key in _INTEGER and not isinstance(value, (dict, list)):
        return integer(value)
    if key in _NUMERIC and not isinstance(value, (dict, list)):
        return number(value)
    if depth > MAX_DEPTH:
        return None
    if isinstance(value, dict):
        return {text(k, 200): _clean(v, text(k, 200), depth + 1) for k, v in list(value.items())[:MAX_ITEMS]}
    if isinstance(value, list):
        return [_clean(v, None, depth + 1) for v in value[:MAX_ITEMS]]
    if isinstance(value, str):
        return text(value)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return number(value)
    return text(value)


def result(r: dict) -> dict:
    """A benchmark result (from a device, the history or a JSON file) with every value coerced (see module doc)."""
    if not isinstance(r, dict):
        raise TypeError("a result is a JSON object")
    return _clean(r)


def runner_output(data: dict) -> dict:
    """The runner's JSON line, coerced the same way (it comes from the device)."""
    return result(data)
