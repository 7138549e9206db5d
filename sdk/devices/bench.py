"""Benchmark an artifact on devices: push it (content-addressed), pipe the runner over the connection, collect
the result JSON (docs/cli.md, "Bench result JSON"). Devices run in parallel (one thread each); on a device,
one benchmark at a time (an flock in the device's workdir, taken by the runner: a second edgeopt waits, then
fails clearly).

    import edgeopt.devices.bench, edgeopt.devices.inventory
    inv = edgeopt.devices.inventory.load()
    results = edgeopt.devices.bench.bench_devices(inv.select(["pi-01", "pi-02"]), "build/model/model.int8.tflite")
"""
from __future__ import annotations

import importlib.util
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from edgeopt import targets
from edgeopt.conversion.defaults import DEFAULT_MAX_VAL
from edgeopt.devices import conditions, val as device_val
from edgeopt.devices.connection import Connection, abort_all, connect, q
from edgeopt.errors import DeviceError, EdgeoptError, UsageError
from edgeopt.json_files import read_json
from edgeopt.devices.inventory import Device
from edgeopt.devices.provision import with_interpreter
from edgeopt.devices.push import push
from edgeopt.runtime import PROBE_MARKS, PYTHON_GUARD, RUNNER_DEFAULTS, runner_argv
from edgeopt.results import sanitize

__all__ = ["BenchOptions", "bench_device", "bench_devices", "resolve_artifact", "manifest_target", "runner_source",
           "install_hint", "for_each_device"]

SPEC_KEYS = ("min", "p50", "p90", "p99", "mean", "std", "max")


@dataclass
class BenchOptions:
    warmup: int = RUNNER_DEFAULTS["warmup"]
    runs: int = RUNNER_DEFAULTS["runs"]
    min_seconds: float = RUNNER_DEFAULTS["min_seconds"]
    threads: int | None = None
    seed: int = RUNNER_DEFAULTS["seed"]
    input: str | None = None          # .npy/.npz with inputs in the source layout
    lock_timeout: float = RUNNER_DEFAULTS["lock_timeout"]  # how long to wait for another benchmark on the device
    keep_samples: bool = True
    progress: bool | None = None      # push progress bar (None: on a terminal)
    extra: dict = field(default_factory=dict)
    warmup_seconds: float = RUNNER_DEFAULTS["warmup_seconds"]  # and warm up at least this long
    sustained: float = RUNNER_DEFAULTS["sustained"]  # measure at least this long, temperature sampled every second
    conditions: bool = True           # probe device conditions before and after (clean / reasons)
    cv_threshold: float | None = None  # CV above which a run is flagged unstable (default stats.CV_THRESHOLD)
    thresholds: object = None         # conditions.Thresholds (default: its defaults)
    val: str | None = None            # validation data run on each device too (edgeopt.devices.val)
    max_val_samples: int = DEFAULT_MAX_VAL
    val_check: object = None          # that check, prepared once on the host (bench_devices and deploy do it)


def runner_source() -> bytes:
    """What the host pipes to ``python3 -`` on a device: the on-device runner, edgeopt/runtime.py itself (stdlib +
    numpy + one runtime), behind its Python version guard.

    The guard (edgeopt.runtime.PYTHON_GUARD) comes first as a few lines any Python parses, 2.7 included, and the
    runner follows as a string compiled only once the guard has passed: Python compiles all of stdin before it
    runs any of it, so an interpreter too old to parse the runner would otherwise stop at a SyntaxError instead
    of saying which Python the runner needs (one line on stderr, exit 3).
    """
    spec = importlib.util.find_spec("edgeopt.runtime")
    with open(spec.origin, "rb") as f:
        source = f.read()
    # '<stdin>' and the file's own line numbers: a traceback reads as it did when the file itself was piped
    return (PYTHON_GUARD + f"exec(compile({source!r}, '<stdin>', 'exec'))\n").encode()


def resolve_artifact(path: str) -> tuple[str, dict | None]:
    """An artifact file, or an edgeopt output dir (its primary artifact) -> (file, manifest entry or None)."""
    p = os.fspath(path)
    if os.path.isdir(p):
        mpath = os.path.join(p, "manifest.json")
        if not os.path.isfile(mpath):
            raise UsageError(f"{p}: a directory without manifest.json",
                             hint="pass an artifact file or an edgeopt convert output directory")
        manifest = read_json(mpath)
        try:
            entry = manifest["artifacts"][0]
            name = entry["file"]
        except (KeyError, IndexError, TypeError) as e:
            raise UsageError(f"{mpath}: not an edgeopt manifest ({e})") from None
        from edgeopt.runtime import check_artifact_name
        try:  # the manifest may come from anywhere: never push a file outside its directory
            check_artifact_name(name)
        except ValueError as e:
            raise UsageError(f"{mpath}: {e}") from None
        return os.path.join(p, name), entry
    if not os.path.isfile(p):
        raise UsageError(f"{p}: no such file")
    if not (p.endswith(".tflite") or p.endswith(".onnx")):
        raise UsageError(f"{p}: not an artifact (expected .tflite or .onnx, or an edgeopt output directory)")
    return p, None


def _manifest_file(file: str) -> str | None:
    """The manifest.json beside an artifact file when it describes that file (edgeopt convert's output), else None."""
    mpath = os.path.join(os.path.dirname(os.path.abspath(file)), "manifest.json")
    try:
        arts = read_json(mpath).get("artifacts") or []
    except (UsageError, AttributeError):
        return None
    name = os.path.basename(file)
    return mpath if any(isinstance(a, dict) and a.get("file") == name for a in arts) else None


def manifest_target(artifact: str) -> str | None:
    """The target an edgeopt output dir (or an artifact beside its manifest) was converted for, if any."""
    d = artifact if os.path.isdir(artifact) else os.path.dirname(os.path.abspath(artifact))
    try:
        return (read_json(os.path.join(d, "manifest.json")).get("target") or {}).get("name")
    except (UsageError, AttributeError):
        return None


def install_hint(target: str | None, artifact: str, device: Device | None = None) -> str:
    """How to install the missing runtime on this device: a command that works there.

    ``edgeopt devices --setup`` first (offline, into the device's venv, for the board's Python); then the same
    by hand on a device with internet: a venv with ``--system-site-packages`` (Raspberry Pi OS refuses ``pip``
    into the system Python, PEP 668) named as the device's ``python`` in the inventory."""
    tgt = None  # the profile's runtime, delegate and packages say what to install, not its family
    if target:
        try:
            tgt = targets.get(target)
        except KeyError:
            pass
    name = device.name if device else None
    workdir = (device.workdir if device else None) or "~/.edgeopt"
    base = (device.python if device else None) or "python3"
    venv = f"{workdir.rstrip('/')}/venv"
    setup = f"edgeopt devices --setup --device {name}" if name else "edgeopt devices --setup --device NAME"
    onnx = artifact.endswith(".onnx")
    if onnx and getattr(tgt, "runtime", None) == "tensorrt":
        return (f"on the Jetson, JetPack's TensorRT gives /usr/src/tensorrt/bin/trtexec: sudo apt install "
                f"nvidia-jetpack; or run {setup} (onnxruntime in {venv}, where a wheel fits its Python)")
    package = "onnxruntime" if onnx else ((tgt.setup_packages[0] if tgt and tgt.setup_packages else None)
                                          or "ai-edge-litert")
    hint = (f"run {setup} (downloads {package} here, installs it offline into {venv} on the device); or, with "
            f"internet on the device: {base} -m venv --system-site-packages {venv} && {venv}/bin/python -m pip "
            f"install {package}, then set python = \"{venv}/bin/python\" for the device in the inventory")
    system = getattr(tgt, "system_install", None)
    if system and (artifact.endswith("_edgetpu.tflite") or getattr(tgt, "delegate", None) == "edgetpu"):
        hint += f"; the Edge TPU also needs libedgetpu: {system}"
    elif artifact.endswith("_edgetpu.tflite"):
        hint += "; the Edge TPU also needs libedgetpu: sudo apt install libedgetpu1-std (Coral apt repository)"
    return hint


def _target_runtime(device: Device) -> str | None:
    if not device.target:
        return None
    try:
        return targets.get(device.target).runtime
    except KeyError:
        return None


def _default_threads(device: Device, opts: BenchOptions) -> int | None:
    if opts.threads:
        return int(opts.threads)
    if device.local or not device.target:
        return None
    try:
        return targets.get(device.target).threads
    except KeyError:
        return None


_TOO_OLD = "error: edgeopt runner needs Python "


def _parse_runner(device: Device, res, artifact: str) -> dict:
    data = None
    for line in reversed(res.out.strip().splitlines()):
        if line.startswith("{"):
            try:
                data = json.loads(line)
                break
            except ValueError:
                pass
    if data is None:
        tail = (res.err or res.out).strip().splitlines()
        why = tail[-1] if tail else f"exit {res.rc}"
        too_old = [ln for ln in (res.err or "").splitlines() if ln.startswith(_TOO_OLD)]
        if res.rc == 3 and too_old:  # the runner's Python version guard (edgeopt.runtime.PYTHON_GUARD)
            raise DeviceError(sanitize.text(too_old[-1].removeprefix("error: ")), device=device.name,
                              hint="set python = \"/path/to/python3\" (3.8 or newer, with numpy and a runtime) "
                                   "for the device in the inventory")
        if res.rc == 127:
            raise DeviceError(f"the device's Python ({device.python}) was not found: {why}", device=device.name,
                              hint="set python = \"/path/to/python3\" for the device in the inventory")
        if "No module named 'numpy'" in (res.err or ""):
            raise DeviceError("numpy is missing on the device (the runner needs it)", device=device.name,
                              hint=install_hint(device.target, artifact, device))
        raise DeviceError(f"remote run failed (exit {res.rc}): {why}", device=device.name)
    if "error" in data:
        kind = data.get("kind")
        if kind == "runtime_missing":
            raise DeviceError(f"runtime missing: {data['error']}", device=device.name,
                              hint=install_hint(device.target, artifact, device))
        if kind == "busy":
            raise DeviceError(data["error"], device=device.name,
                              hint="wait for the other benchmark, or raise --lock-timeout")
        raise DeviceError(f"remote run failed: {sanitize.text(data['error'])}", device=device.name)
    return sanitize.runner_output(data)


def bench_device(device: Device, artifact: str, opts: BenchOptions | None = None, accept_new: bool = False,
                 conn: Connection | None = None) -> dict:
    """Push ``artifact`` to ``device`` and benchmark it there; returns the bench result JSON."""
    opts = opts or BenchOptions()
    t_start = time.perf_counter()
    file, _entry = resolve_artifact(artifact)
    check = opts.val_check
    if opts.val is not None and check is None:  # a caller of bench_device alone: prepared here, for this device
        check = device_val.prepare(file, opts.val, opts.max_val_samples,
                                   out_dir=artifact if os.path.isdir(artifact) else None)
        try:
            return bench_device(device, artifact, replace(opts, val_check=check), accept_new, conn)
        finally:
            check.cleanup()
    own = conn is None
    conn = conn or connect(device, accept_new=accept_new)
    try:
        device = with_interpreter(conn, device)  # the venv `devices --setup` made, when there is one
        t_conn = time.perf_counter()
        workdir = conn.expand(device.workdir)
        pushed = push(conn, file, workdir, progress=opts.progress, python=device.python)
        threads = _default_threads(device, opts)
        tensorrt = file.endswith(".onnx") and _target_runtime(device) == "tensorrt"
        runner = {"warmup": opts.warmup, "runs": opts.runs, "min_seconds": opts.min_seconds, "seed": opts.seed,
                  "lock": f"{workdir}/bench.lock", "lock_timeout": opts.lock_timeout,
                  "warmup_seconds": opts.warmup_seconds, "sustained": opts.sustained, "threads": threads,
                  "prefer_tensorrt": tensorrt, "engine_cache": f"{workdir}/engines" if tensorrt else None,
                  "trtexec": device.trtexec if tensorrt else None}
        if opts.input:
            if not os.path.isfile(opts.input):
                raise UsageError(f"--input {opts.input}: no such file")
            runner["input"] = push(conn, opts.input, workdir, progress=False, python=device.python).path
        mfile = _manifest_file(file) if (opts.input or check is not None) else None
        if mfile:  # data in the source layout: the runner takes the artifact's I/O from its manifest
            runner["manifest"] = push(conn, mfile, workdir, progress=False, python=device.python).path
        timeout = device.command_timeout + opts.lock_timeout + float(opts.sustained or 0)
        if check is not None:  # the validation samples, pushed like an artifact (sent once), run after timing
            val_pushed = push(conn, check.samples_file, workdir, progress=False, python=device.python)
            runner.update(device_val.runner_values(val_pushed.path))
            timeout += device_val.time_allowance(check)
        # the runner ends itself at our timeout too (a host that vanished cannot stop it); it probes the
        # device's conditions inside the device lock (another benchmark's load is not this one's "before")
        runner["time_limit"] = timeout
        if opts.conditions:
            runner["probe"] = f"{{ {conditions.command()}; }} </dev/null 2>/dev/null"
        argv = [device.python, "-", *runner_argv(pushed.path, **runner)]
        t_run, epoch_run = time.perf_counter(), time.time()
        res = conn.run(q(argv), input=runner_source(), timeout=timeout)
        t_done = time.perf_counter()
        before = after = None
        if opts.conditions:
            before, res, after = _split_conditions(res)
        data = _parse_runner(device, res, file)
        got = (data.get("artifact") or {}).get("sha256")
        if got != pushed.sha256:  # what ran is not what we pushed (replaced or rotted on the device)
            try:  # the next push sends it again; the outputs of samples it ran are not read
                conn.run(q(["rm", "-f", pushed.path] + ([runner["val_out"]] if check is not None else [])), timeout=30)
            except Exception:
                pass
            raise DeviceError(f"the artifact the device ran is not the one pushed: sha256 {str(got)[:12]}, "
                              f"expected {pushed.sha256[:12]} ({pushed.path}); removed it", device=device.name,
                              hint="rerun to send it again; if it persists, check the device's storage")
        accuracy = None
        if check is not None:
            accuracy = _device_accuracy(conn, device, check, data, runner["val_out"], val_pushed)
    finally:
        if own:
            conn.close()
    lat = data.get("latency_ms") or {}
    out = {
        "device": device.name,
        "target": device.target,
        "artifact": {"file": os.path.basename(file), "sha256": pushed.sha256},
        "runtime": {k: data["runtime"].get(k) for k in ("name", "version", "delegate", "provider")},
        "config": {"warmup": int(opts.warmup), "runs": int(opts.runs), "min_seconds": float(opts.min_seconds),
                   "threads": threads},
        "latency_ms": {**{k: lat.get(k) for k in SPEC_KEYS}, **{k: v for k, v in lat.items() if k not in SPEC_KEYS}},
        "runs": data.get("runs"),
        "init_ms": data.get("init_ms"),
        "transfer": pushed.transfer(),
    }
    for key in ("peak_rss_mb", "notes", "fallback", "engine", "trtexec"):
        if data.get(key) is not None:
            out[key] = data[key]
    if accuracy is not None:
        out["accuracy"] = accuracy
    measured_s = data.get("measured_s")  # of all samples (the runner may report a thinned list)
    if measured_s is None and data.get("samples_ms"):
        measured_s = sum(data["samples_ms"]) / 1e3
    out["timing"] = {"wall_s": round(time.perf_counter() - t_start, 4), "connect_s": round(t_conn - t_start, 4),
                     "push_s": round(t_run - t_conn, 4), "remote_s": round(t_done - t_run, 4),
                     "measured_s": round(measured_s, 4) if measured_s is not None else None,
                     # wall-clock window of the remote run, to see which devices ran at the same time
                     "run_window": [round(epoch_run, 3), round(epoch_run + (t_done - t_run), 3)]}
    out["host"] = device.describe()
    _add_protocol(out, data, opts)
    if opts.conditions:
        verdict = conditions.assess(before, after, data.get("cpu_during"), opts.thresholds)
        out["conditions"] = {"before": before, "after": after, "cpu_during": data.get("cpu_during"),
                             "thresholds": (opts.thresholds or conditions.Thresholds()).to_dict(), **verdict}
        out["clean"] = verdict["clean"]
        facts = dict((before or {}).get("facts") or {})
        if facts:
            out["device_facts"] = facts
    if opts.keep_samples and data.get("samples_ms") is not None:
        out["samples_ms"] = data["samples_ms"]
        if data.get("timestamps_s") is not None:
            out["timestamps_s"] = data["timestamps_s"]
    return sanitize.result(out)  # device strings (facts, conditions, runtime) are data: no control characters


def _device_accuracy(conn: Connection, device: Device, check, data: dict, val_out: str, pushed) -> dict:
    """The result's ``accuracy`` from the runner's ``val`` summary and the outputs it left at ``val_out``."""
    summary = data.get("val")
    if not isinstance(summary, dict) or summary.get("samples") != check.count:
        got = summary.get("samples") if isinstance(summary, dict) else None
        raise DeviceError(f"the device's runner did not run the {check.count} validation samples"
                          + (f" (it reports {got})" if got is not None else " (no val summary in its reply)"),
                          device=device.name, hint="is the device's Python running edgeopt's runner?")
    outputs = device_val.read_outputs(conn, check, val_out, timeout=60.0 + check.output_bytes / 1e6)
    acc = device_val.device_accuracy(check, outputs, summary, pushed.transfer())
    ran, timed = acc["runtime"], data.get("runtime") or {}
    if ran.get("name") != timed.get("name"):  # TensorRT timed through trtexec: the samples ran with onnxruntime
        acc.setdefault("notes", []).append(f"the samples ran with {ran.get('name')} ({ran.get('provider')}); the "
                                           f"benchmark timed {timed.get('name')}")
    return acc


_RUN_MARK, _AFTER_MARK = PROBE_MARKS


def _split_conditions(res):
    """(before, runner result, after) from the output of a runner given ``--probe`` (it prints the probe's
    output, the RUN mark, its JSON, the AFTER mark and the second probe's output)."""
    out = res.out
    before = after = None
    if _RUN_MARK in out:
        head, out = out.split(_RUN_MARK, 1)
        before = conditions.parse(head)
        before["t"] = time.time() - res.seconds
    if _AFTER_MARK in out:
        out, tail = out.rsplit(_AFTER_MARK, 1)
        after = conditions.parse(tail)
        after["t"] = time.time()
    return before, replace(res, stdout=out.encode("utf-8")), after


def _add_protocol(out: dict, data: dict, opts: BenchOptions) -> None:
    """Host-side statistics from the raw samples: percentiles, CV, bootstrap CIs, unstable, drift."""
    from edgeopt.results import stats  # imports numpy: loaded in the background by _prefetch_stats
    cv_thr = stats.CV_THRESHOLD if opts.cv_threshold is None else float(opts.cv_threshold)
    out["protocol"] = {"warmup_seconds": float(opts.warmup_seconds), "sustained": float(opts.sustained or 0),
                       "cv_threshold": cv_thr, "bootstrap": {"n": stats.N_BOOT, "seed": stats.SEED}}
    if data.get("warmup_done"):
        out["protocol"]["warmup_done"] = data["warmup_done"]
    samples = data.get("samples_ms")
    if samples:
        s = stats.summarize(samples, data.get("timestamps_s"), cv_threshold=cv_thr)
        lat = s["latency_ms"]
        if data.get("trtexec"):  # trtexec's own summary stays authoritative; the samples add what it lacks
            lat = {**lat, **{k: v for k, v in (out.get("latency_ms") or {}).items() if v is not None}}
            out["latency_source"] = "trtexec summary; cv, ci95 from its exported times"
        elif data.get("samples_total"):  # a thinned list: the runner's percentiles are of all samples
            lat = {**lat, **{k: v for k, v in (out.get("latency_ms") or {}).items() if v is not None}}
            out["samples_total"] = data["samples_total"]
        out["latency_ms"] = {**{k: lat.get(k) for k in SPEC_KEYS}, **{k: v for k, v in lat.items()
                                                                    if k not in SPEC_KEYS}}
        out["ci95"] = {"p50": s["ci95"]["p50"], "mean": s["ci95"]["mean"]}
        out["unstable"] = s["unstable"]
        if "drift" in s:
            out["drift"] = s["drift"]
    else:
        cv = (out.get("latency_ms") or {}).get("cv")
        out["unstable"] = bool(cv is not None and cv > cv_thr)
    if data.get("temperature_trace") is not None:
        out["temperature_trace"] = data["temperature_trace"]


def _prefetch_stats():
    """Import numpy (for the host-side statistics) while the devices connect and measure."""

    def imp():
        try:
            from edgeopt.results import stats  # noqa: F401
        except Exception:
            pass
    threading.Thread(target=imp, daemon=True).start()


def for_each_device(devices: list[Device], fn) -> list:
    """Run ``fn(device)`` on every device in parallel; a device's EdgeoptError becomes an error entry."""
    def one(dev):
        try:
            return fn(dev)
        except EdgeoptError as e:
            return {"device": dev.name, "target": dev.target, "error": e.message, "hint": e.hint,
                    "exit_code": e.exit_code}
        except Exception as e:  # never lose the other devices' results to one device's surprise
            return {"device": dev.name, "target": dev.target, "error": f"{type(e).__name__}: {e}", "hint": None,
                    "exit_code": 3}
    if len(devices) == 1:
        return [one(devices[0])]
    pool = ThreadPoolExecutor(max_workers=min(32, len(devices)))
    try:
        return list(pool.map(one, devices))
    except BaseException:
        # Ctrl-C: end every device's command now (their runners stop and free the device locks) instead of
        # waiting for all the benchmarks to finish
        abort_all()
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def bench_devices(devices: list[Device], artifact: str, opts: BenchOptions | None = None,
                  accept_new: bool = False) -> list[dict]:
    """:func:`bench_device` on every device in parallel; failures come back as ``{"device", "error", ...}``."""
    file, _entry = resolve_artifact(artifact)  # bad input fails once, before any device
    _prefetch_stats()
    opts = opts or BenchOptions()
    check = None
    if opts.val is not None and opts.val_check is None:  # the host's part of the check, once for every device
        check = device_val.prepare(file, opts.val, opts.max_val_samples,
                                   out_dir=artifact if os.path.isdir(artifact) else None)
        opts = replace(opts, val_check=check)
    try:
        return for_each_device(devices, lambda d: bench_device(d, artifact, opts, accept_new=accept_new))
    finally:
        if check is not None:
            check.cleanup()
