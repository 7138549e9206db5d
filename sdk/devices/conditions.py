"""Device conditions around a benchmark: one shell command, pure parsers, and a verdict.

Before and after each run the host runs :func:`command` on the device. It prints sections (``@@name``
lines): kernel and board facts, every CPU's cpufreq governor and clocks, every thermal zone, the load
average, the ``cpu`` line of ``/proc/stat``, and, where the tools exist, ``vcgencmd measure_temp`` /
``get_throttled`` (Raspberry Pi), ``nvpmodel -q``, ``jetson_clocks --show`` and one ``tegrastats`` line
(Jetson). It writes nothing and needs no root (``jetson_clocks --show`` is tried with ``sudo -n``).

:func:`parse` turns the output into a dict; :func:`assess` decides whether the measurement is *clean*: a
throttled, hot or loaded device gives ``clean: false`` and the reasons. Parsers are tested on recorded real
outputs (tests/data/conditions/).
"""
from __future__ import annotations

import re
import time

from edgeopt.devices.probes import parse_sections  # the same @@section output format

__all__ = ["command", "parse", "snapshot", "assess", "Thresholds", "parse_cpufreq", "parse_thermal",
           "parse_loadavg", "parse_stat", "parse_vcgencmd_temp", "parse_throttled", "parse_nvpmodel",
           "parse_jetson_clocks", "parse_tegrastats", "THROTTLED_BITS"]

# vcgencmd get_throttled bits (Raspberry Pi documentation, "get_throttled")
THROTTLED_BITS = {
    0: "under-voltage detected",
    1: "ARM frequency capped",
    2: "currently throttled",
    3: "soft temperature limit active",
    16: "under-voltage has occurred",
    17: "ARM frequency capping has occurred",
    18: "throttling has occurred",
    19: "soft temperature limit has occurred",
}


class Thresholds:
    """When a device counts as loaded or hot (all overridable from the CLI / BenchOptions)."""

    def __init__(self, max_load_per_core: float = 0.5, max_other_busy: float = 0.25, max_temp_c: float = 80.0):
        self.max_load_per_core = max_load_per_core   # 1-minute load average / CPUs, before the run
        self.max_other_busy = max_other_busy         # share of all CPUs used by other processes during the run
        self.max_temp_c = max_temp_c                 # hottest thermal zone (Pi 4/5 soft limit: 80 C)

    def to_dict(self) -> dict:
        return dict(vars(self))


def command() -> str:
    """The conditions probe as one POSIX shell command line (reads only)."""
    return "; ".join([
        "echo @@facts", "uname -srm", "{ nproc 2>/dev/null || getconf _NPROCESSORS_ONLN; }",
        "{ tr -d '\\000' < /proc/device-tree/model; } 2>/dev/null", "echo",
        "echo @@cpufreq",
        "for d in /sys/devices/system/cpu/cpu[0-9]*; do f=$d/cpufreq; [ -d \"$f\" ] || continue; "
        "echo \"${d##*/} $(cat $f/scaling_governor 2>/dev/null || echo -) $(cat $f/scaling_cur_freq 2>/dev/null || echo -) "
        "$(cat $f/scaling_min_freq 2>/dev/null || echo -) $(cat $f/scaling_max_freq 2>/dev/null || echo -) "
        "$(cat $f/cpuinfo_max_freq 2>/dev/null || echo -)\"; done",
        "echo @@thermal",
        "for z in /sys/class/thermal/thermal_zone*; do [ -r \"$z/temp\" ] || continue; "
        "echo \"${z##*/} $(cat $z/temp 2>/dev/null || echo -) $(cat $z/type 2>/dev/null || echo -)\"; done",
        "echo @@loadavg", "cat /proc/loadavg 2>/dev/null",
        "echo @@stat", "grep -E '^(cpu |procs_running)' /proc/stat 2>/dev/null",
        "echo @@vcgencmd",
        "if command -v vcgencmd >/dev/null 2>&1; then vcgencmd measure_temp 2>&1; vcgencmd get_throttled 2>&1; fi",
        "echo @@nvpmodel", "if command -v nvpmodel >/dev/null 2>&1; then nvpmodel -q 2>/dev/null; fi",
        "echo @@jetson_clocks",
        "if command -v jetson_clocks >/dev/null 2>&1; then jetson_clocks --show 2>/dev/null || "
        "sudo -n jetson_clocks --show 2>/dev/null; fi",
        "echo @@tegrastats",
        "if command -v tegrastats >/dev/null 2>&1; then timeout 3 tegrastats --interval 500 2>/dev/null | head -n 1; fi",
        "echo @@end",
    ])


# --------------------------------------------------------------------------------------------- parsers



def _num(s):
    try:
        return int(s)
    except (TypeError, ValueError):
        try:
            return float(s)
        except (TypeError, ValueError):
            return None


def parse_facts(text: str) -> dict:
    """``uname -srm``, ``nproc``, device-tree model -> {'kernel', 'arch', 'ncpu', 'model'}."""
    lines = [ln.strip().replace("\x00", "") for ln in (text or "").splitlines()]
    lines = [ln for ln in lines if ln]
    out = {"kernel": None, "arch": None, "ncpu": None, "model": None}
    if lines:
        parts = lines[0].split()
        if len(parts) >= 3:
            out["kernel"] = f"{parts[0]} {parts[1]}"
            out["arch"] = {"arm64": "aarch64", "amd64": "x86_64"}.get(parts[-1], parts[-1])
    if len(lines) > 1 and lines[1].isdigit():
        out["ncpu"] = int(lines[1])
    if len(lines) > 2:
        out["model"] = lines[2]
    return out


def parse_cpufreq(text: str) -> dict:
    """Lines ``cpuN governor cur min max hwmax`` (kHz, ``-`` when unreadable) -> per-CPU clocks in MHz."""
    cpus = []
    for line in (text or "").splitlines():
        p = line.split()
        if len(p) < 6 or not p[0].startswith("cpu"):
            continue
        khz = [_num(x) for x in p[2:6]]
        cpus.append({"cpu": p[0], "governor": None if p[1] == "-" else p[1],
                     "cur_mhz": khz[0] / 1000 if khz[0] else None, "min_mhz": khz[1] / 1000 if khz[1] else None,
                     "max_mhz": khz[2] / 1000 if khz[2] else None, "hw_max_mhz": khz[3] / 1000 if khz[3] else None})
    govs = sorted({c["governor"] for c in cpus if c["governor"]})
    cur = [c["cur_mhz"] for c in cpus if c["cur_mhz"]]
    capped = [c["cpu"] for c in cpus if c["max_mhz"] and c["hw_max_mhz"] and c["max_mhz"] < c["hw_max_mhz"]]
    return {"cpus": cpus, "governors": govs, "cur_mhz_min": min(cur) if cur else None,
            "cur_mhz_max": max(cur) if cur else None, "capped": capped}


def parse_thermal(text: str) -> dict:
    """Lines ``thermal_zoneN millidegrees type`` -> {'zones': [{'zone', 'type', 'temp_c'}], 'max_c', 'hottest'}."""
    zones = []
    for line in (text or "").splitlines():
        p = line.split(None, 2)
        if len(p) < 2 or not p[0].startswith("thermal_zone"):
            continue
        v = _num(p[1])
        if v is None:
            continue
        # the kernel reports millidegrees; a few drivers report degrees
        t = v / 1000.0 if abs(v) >= 200 else float(v)
        if t <= -273 or t > 200:   # -274000 and the like: a sensor that is not there
            continue
        zones.append({"zone": p[0], "type": p[2].strip() if len(p) > 2 else None, "temp_c": round(t, 3)})
    hot = max(zones, key=lambda z: z["temp_c"]) if zones else None
    return {"zones": zones, "max_c": hot["temp_c"] if hot else None, "hottest": hot["type"] if hot else None}


def parse_loadavg(text: str) -> dict | None:
    """``/proc/loadavg``: '0.52 0.58 0.59 2/467 12345' -> {'1m', '5m', '15m', 'running', 'threads'}."""
    p = (text or "").split()
    if len(p) < 3:
        return None
    try:
        out = {"1m": float(p[0]), "5m": float(p[1]), "15m": float(p[2])}
    except ValueError:
        return None
    if len(p) > 3 and "/" in p[3]:
        r, t = p[3].split("/", 1)
        out["running"], out["threads"] = _num(r), _num(t)
    return out


def parse_stat(text: str) -> dict | None:
    """The ``cpu`` line (and ``procs_running``) of /proc/stat -> {'busy', 'total'} jiffies, 'procs_running'."""
    out = None
    for line in (text or "").splitlines():
        p = line.split()
        if p and p[0] == "cpu":
            try:
                v = [int(x) for x in p[1:]]
            except ValueError:
                continue
            idle = v[3] + (v[4] if len(v) > 4 else 0)
            total = sum(v[:8])
            out = dict(out or {}, busy=total - idle, total=total)
        elif len(p) == 2 and p[0] == "procs_running":
            out = dict(out or {}, procs_running=_num(p[1]))
    return out


def parse_vcgencmd_temp(text: str) -> float | None:
    """``temp=48.3'C`` -> 48.3."""
    m = re.search(r"temp=(-?[\d.]+)\s*'?C", text or "")
    return float(m.group(1)) if m else None


def parse_throttled(text: str) -> dict | None:
    """``throttled=0x50005`` -> {'raw', 'value', 'now': [...], 'since_boot': [...]} (bits decoded)."""
    m = re.search(r"throttled=(0x[0-9a-fA-F]+|\d+)", text or "")
    if not m:
        return None
    raw = m.group(1)
    v = int(raw, 16) if raw.lower().startswith("0x") else int(raw)
    now = [THROTTLED_BITS[b] for b in (0, 1, 2, 3) if v & (1 << b)]
    since = [THROTTLED_BITS[b] for b in (16, 17, 18, 19) if v & (1 << b)]
    return {"raw": raw, "value": v, "now": now, "since_boot": since}


def parse_nvpmodel(text: str) -> dict | None:
    """``nvpmodel -q``: 'NV Power Mode: 15W\\n0' -> {'mode': '15W', 'id': 0}."""
    m = re.search(r"NV Power Mode:\s*(\S+)", text or "")
    if not m:
        return None
    out = {"mode": m.group(1), "id": None}
    rest = (text or "")[m.end():].split()
    if rest and rest[0].isdigit():
        out["id"] = int(rest[0])
    return out


def parse_jetson_clocks(text: str) -> dict | None:
    """``jetson_clocks --show`` -> {'soc', 'machine', 'cpus': [...], 'gpu', 'emc', 'fan', 'power_mode',
    'max_clocks'} (max_clocks: every online CPU and the GPU pinned at MinFreq == MaxFreq)."""
    text = text or ""
    if "cpu0" not in text and "SOC family" not in text:
        return None
    out = {"soc": None, "machine": None, "cpus": [], "gpu": None, "emc": None, "fan": None, "power_mode": None}
    m = re.search(r"SOC family:\s*(\S+)\s+Machine:\s*(.+)", text)
    if m:
        out["soc"], out["machine"] = m.group(1), m.group(2).strip()
    offline = set()
    m = re.search(r"Offline CPUs:\s*([\d,\- ]*)$", text, re.M)
    if m:
        for part in m.group(1).replace(" ", "").split(","):
            if "-" in part:
                a, b = part.split("-")
                offline.update(range(int(a), int(b) + 1))
            elif part.isdigit():
                offline.add(int(part))

    def kv(s):
        return dict(re.findall(r"(\w+)=(\S+)", s))

    for line in text.splitlines():
        line = line.strip()
        m = re.match(r"cpu(\d+):\s*(.*)", line)
        if m:
            d = kv(m.group(2))
            n = int(m.group(1))
            out["cpus"].append({"cpu": f"cpu{n}", "online": d.get("Online", "0" if n in offline else "1") == "1",
                                "governor": d.get("Governor"), "min_khz": _num(d.get("MinFreq")),
                                "max_khz": _num(d.get("MaxFreq")), "cur_khz": _num(d.get("CurrentFreq"))})
        elif line.startswith("GPU ") and "Freq" in line:
            d = kv(line)
            out["gpu"] = {"min_hz": _num(d.get("MinFreq")), "max_hz": _num(d.get("MaxFreq")),
                          "cur_hz": _num(d.get("CurrentFreq"))}
        elif line.startswith("EMC "):
            d = kv(line)
            out["emc"] = {"min_hz": _num(d.get("MinFreq")), "max_hz": _num(d.get("MaxFreq")),
                          "cur_hz": _num(d.get("CurrentFreq"))}
        elif line.startswith("FAN "):
            out["fan"] = line[4:].strip()
        elif line.startswith("NV Power Mode:"):
            out["power_mode"] = line.split(":", 1)[1].strip()
    on = [c for c in out["cpus"] if c["online"]]
    pinned = bool(on) and all(c["min_khz"] and c["min_khz"] == c["max_khz"] for c in on)
    if out["gpu"] and out["gpu"]["min_hz"]:
        pinned = pinned and out["gpu"]["min_hz"] == out["gpu"]["max_hz"]
    out["max_clocks"] = pinned
    return out


def parse_tegrastats(line: str) -> dict | None:
    """One tegrastats line -> {'ram_used_mb', 'ram_total_mb', 'cpu': [{'load', 'mhz'} | None(off)],
    'gpu_load', 'temps': {'cpu': 47.5, ...}, 'power_mw': {'VDD_IN': [cur, avg], ...}}."""
    line = (line or "").strip()
    if not line or "RAM " not in line:
        return None
    out = {"ram_used_mb": None, "ram_total_mb": None, "cpu": [], "gpu_load": None, "temps": {}, "power_mw": {}}
    m = re.search(r"RAM (\d+)/(\d+)MB", line)
    if m:
        out["ram_used_mb"], out["ram_total_mb"] = int(m.group(1)), int(m.group(2))
    m = re.search(r"CPU \[([^\]]*)\]", line)
    if m:
        for c in m.group(1).split(","):
            c = c.strip()
            cm = re.fullmatch(r"(\d+)%@(\d+)", c)
            out["cpu"].append({"load": int(cm.group(1)), "mhz": int(cm.group(2))} if cm else None)
    m = re.search(r"GR3D_FREQ (\d+)%", line)
    if m:
        out["gpu_load"] = int(m.group(1))
    for name, t in re.findall(r"\b([A-Za-z][\w]*)@(-?[\d.]+)C\b", line):
        out["temps"][name.lower()] = float(t)
    for name, cur, avg in re.findall(r"\b([A-Z][A-Z0-9_]+) (\d+)mW/(\d+)mW", line):
        out["power_mw"][name] = [int(cur), int(avg)]
    return out


def parse(text: str) -> dict:
    """The whole probe output -> one dict of conditions (absent tools give None)."""
    sec = parse_sections(text)
    vc = sec.get("vcgencmd", "")
    jc = sec.get("jetson_clocks", "")
    tg = next((ln for ln in sec.get("tegrastats", "").splitlines() if "RAM " in ln), "")
    out = {
        "facts": parse_facts(sec.get("facts", "")),
        "cpufreq": parse_cpufreq(sec.get("cpufreq", "")),
        "thermal": parse_thermal(sec.get("thermal", "")),
        "loadavg": parse_loadavg(sec.get("loadavg", "")),
        "stat": parse_stat(sec.get("stat", "")),
        "pi": None, "jetson": None,
    }
    if "temp=" in vc or "throttled=" in vc:
        out["pi"] = {"temp_c": parse_vcgencmd_temp(vc), "throttled": parse_throttled(vc)}
    nv = parse_nvpmodel(sec.get("nvpmodel", ""))
    jcs = parse_jetson_clocks(jc)
    ts = parse_tegrastats(tg)
    if nv or jcs or ts:
        out["jetson"] = {"nvpmodel": nv, "clocks": jcs, "tegrastats": ts}
    return out


def snapshot(conn, timeout: float = 30) -> dict:
    """Run the probe on a connection -> :func:`parse` plus 't' (host clock); never raises on a missing tool."""
    res = conn.run(command(), timeout=timeout)
    out = parse(res.out)
    out["t"] = time.time()
    return out


# ---------------------------------------------------------------------------------------------- verdict

def _max_temp(s: dict) -> tuple[float | None, str | None]:
    best, where = None, None
    th = (s or {}).get("thermal") or {}
    if th.get("max_c") is not None:
        best, where = th["max_c"], th.get("hottest") or "thermal zone"
    pi = (s or {}).get("pi") or {}
    if pi.get("temp_c") is not None and (best is None or pi["temp_c"] > best):
        best, where = pi["temp_c"], "vcgencmd"
    ts = (((s or {}).get("jetson") or {}).get("tegrastats") or {}).get("temps") or {}
    for k, v in ts.items():
        if best is None or v > best:
            best, where = v, f"tegrastats {k}"
    return best, where


def _ncpu(s: dict) -> int | None:
    f = (s or {}).get("facts") or {}
    if f.get("ncpu"):
        return f["ncpu"]
    n = len(((s or {}).get("cpufreq") or {}).get("cpus") or [])
    return n or None


def assess(before: dict | None, after: dict | None, cpu_during: dict | None = None,
           thresholds: Thresholds | None = None) -> dict:
    """{'clean': bool, 'reasons': [...why not clean], 'warnings': [...worth knowing]} for one measurement."""
    th = thresholds or Thresholds()
    reasons, warnings = [], []
    for label, s in (("before", before), ("after", after)):
        if not s:
            continue
        thr = ((s.get("pi") or {}).get("throttled")) or None
        if thr and thr["now"]:
            reasons.append(f"{label} the run: Raspberry Pi {', '.join(thr['now'])} (throttled={thr['raw']})")
        t, where = _max_temp(s)
        if t is not None and t >= th.max_temp_c:
            reasons.append(f"{label} the run: {t:.1f} C ({where}) >= {th.max_temp_c:g} C")
    b_thr = ((before or {}).get("pi") or {}).get("throttled")
    a_thr = ((after or {}).get("pi") or {}).get("throttled")
    if a_thr:
        new = [x for x in a_thr["since_boot"] if not b_thr or x not in b_thr["since_boot"]]
        if new:
            reasons.append(f"during the run: {', '.join(new)} (throttled {b_thr['raw'] if b_thr else '?'} -> "
                           f"{a_thr['raw']})")
        elif a_thr["since_boot"]:
            warnings.append(f"since boot: {', '.join(a_thr['since_boot'])} (throttled={a_thr['raw']}), "
                            f"not during this run")
    la = (before or {}).get("loadavg")
    n = _ncpu(before) or _ncpu(after)
    if la and n:
        per = la["1m"] / n
        if per > th.max_load_per_core:
            reasons.append(f"loaded before the run: 1-minute load average {la['1m']:.2f} on {n} CPUs "
                           f"({per:.2f} per CPU > {th.max_load_per_core:g})")
    if cpu_during and cpu_during.get("other_busy") is not None:
        if cpu_during["other_busy"] > th.max_other_busy:
            reasons.append(f"loaded during the run: other processes used {cpu_during['other_busy'] * 100:.0f}% of "
                           f"the {cpu_during.get('ncpu', '?')} CPUs (> {th.max_other_busy * 100:.0f}%)")
    for label, s in (("before", before), ("after", after)):
        cf = (s or {}).get("cpufreq") or {}
        if cf.get("capped") and label == "after":
            warnings.append(f"CPU max clock capped below the hardware maximum on {', '.join(cf['capped'])}")
    cf = (before or {}).get("cpufreq") or {}
    if cf.get("governors") and cf["governors"] != ["performance"]:
        warnings.append(f"CPU governor {'/'.join(cf['governors'])}: clocks scale with load "
                        f"(set 'performance' for steadier numbers)")
    cb, ca = cf.get("cur_mhz_max"), ((after or {}).get("cpufreq") or {}).get("cur_mhz_max")
    if cb and ca and ca < 0.9 * cb:
        warnings.append(f"CPU clock dropped during the run: {cb:.0f} -> {ca:.0f} MHz")
    jc = (((before or {}).get("jetson") or {}).get("clocks")) or None
    if jc is not None and not jc.get("max_clocks"):
        warnings.append("jetson_clocks is not applied: clocks scale with load (sudo jetson_clocks)")
    return {"clean": not reasons, "reasons": reasons, "warnings": warnings}
