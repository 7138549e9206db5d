"""The accuracy check on the devices (``bench --val``, ``deploy --val``): the validation samples run on each device
through the runner, on the model it timed (the same runtime, delegate and threads); their outputs come back and are
compared on the host with the FP32 reference, beside the host's own run of the same artifact on the same samples,
so a board whose numerics differ (Edge TPU, TensorRT, another XNNPACK) shows it.

:func:`prepare` does the host's part once per command: the samples (at most ``max_val_samples``, and at most
:data:`MAX_DEVICE_VAL_BYTES` of them), the reference's and the host's outputs, and the ``.npz`` pushed to every
device (content-addressed: a second run sends nothing). Per device, :func:`runner_values` adds the runner's
``--val``/``--val-out``, :func:`read_outputs` reads the outputs back (bounded in bytes and time; the reply is
data from the device: names, dtype, shapes and values are checked, a bad one is one DeviceError) and
:func:`device_accuracy` gives the result's ``accuracy``.
"""
from __future__ import annotations

import io
import os
import secrets
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass, field

from edgeopt.devices.connection import Connection, q
from edgeopt.errors import DeviceError, UsageError

__all__ = ["MAX_DEVICE_VAL_BYTES", "ValCheck", "prepare", "runner_values", "time_allowance", "read_outputs",
           "device_accuracy", "summary_line"]

# The most bytes of validation samples sent to a device (before --max-val-samples would stop): a board holds
# them in memory while it runs them, and a 1 GB Coral Dev Board or Pi must keep room for the model.
MAX_DEVICE_VAL_BYTES = 128 << 20
# What a .npz adds to its arrays (zip entries, .npy headers): the reply may be this much over the outputs' bytes.
_NPZ_SLACK = 64 << 10
SAMPLES_FILE = "val-samples.npz"


@dataclass
class ValCheck:
    """The host's part of the on-device check, prepared once for every device."""

    samples_file: str            # the .npz pushed to the devices (in ``tmpdir``)
    count: int                   # samples in it
    output_names: list           # manifest order
    shapes: list                 # each output's shape over all samples, as the host's run gave it
    kinds: dict                  # output name -> scores / embedding / dense
    concats: dict                # output name -> (axis, ends): judged part by part as the manifest's check did
    reference: str               # what the device's outputs are compared with
    reference_outputs: list      # its outputs (numpy arrays)
    host_outputs: list           # the host's run of the artifact
    host_runtime: dict
    host_seconds: float
    host_metrics: dict | None    # host vs reference; None when the reference is the host's run itself
    labels: object = None        # integer labels from the .npz, or None
    data: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    tmpdir: str | None = None

    @property
    def output_bytes(self) -> int:
        """The bytes of the float32 outputs a device sends back for every sample."""
        return sum(4 * _prod(s) for s in self.shapes)

    def cleanup(self) -> None:
        """Remove the samples file written on the host."""
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)


def _prod(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def prepare(artifact: str, val, max_val_samples: int, source: str | None = None, trust_model_code: bool = False,
            out_dir: str | None = None) -> ValCheck:
    """The host's part of the check for ``artifact`` (a file; the manifest beside it describes it) on ``val`` (a
    data source as for ``--val``), at most ``max_val_samples`` samples.

    The reference is the FP32 source model as the conversion ran it: ``source`` when given (deploy: the model it
    converted), else the manifest's source file found beside ``out_dir`` or in the current directory with the
    manifest's SHA-256 (bench). Without one (a bare artifact, a ``.tflite`` passed through, a source not found), the
    device is compared with the host's own run of the artifact and the result says so.
    """
    from edgeopt.conversion.quiet import native_stderr_captured
    with native_stderr_captured():  # the runtimes' native banners (XNNPACK's INFO line) stay off the terminal
        return _prepare(artifact, val, max_val_samples, source, trust_model_code, out_dir)


def _prepare(artifact: str, val, max_val_samples: int, source: str | None, trust_model_code: bool,
             out_dir: str | None) -> ValCheck:
    import numpy as np

    from edgeopt import runtime
    from edgeopt.conversion import accuracy, data

    if max_val_samples is None or int(max_val_samples) < 1:
        raise UsageError(f"--max-val-samples {max_val_samples}: at least 1 sample is needed")
    notes = []
    model = _host_model(artifact, notes)
    manifest = model.manifest or {}
    cal = manifest.get("calibration") or {}
    specs = [{"name": s.name, "shape": [None] + list(s.source_shape[1:]), "dtype": s.source_dtype}
             for s in model.inputs]
    samples, info = data.load(val, specs, "validation", cal.get("mean"), cal.get("std"), limit=int(max_val_samples))
    n = data.count(samples)
    row = sum(a[0].nbytes for a in samples.values())
    fit = MAX_DEVICE_VAL_BYTES // max(1, row)
    if fit < 1:
        raise UsageError(f"--val: one sample is {row / 2 ** 20:.1f} MiB, more than the "
                         f"{MAX_DEVICE_VAL_BYTES / 2 ** 20:g} MiB of validation samples sent to a device")
    if n > fit:
        notes.append(f"the first {fit} of {n} validation samples ran on the device ({MAX_DEVICE_VAL_BYTES / 2 ** 20:g} "
                     "MiB, the most sent to a device)")
        samples, n = data.take(samples, slice(0, fit)), fit
        info = dict(info, samples=n, sha256=data.digest(samples))
    names = [s.name for s in model.outputs]
    t0 = time.perf_counter()
    host = runtime.run_samples(model, samples)
    host_seconds = time.perf_counter() - t0
    ref_label, ref_outputs, why = _reference(model, manifest, samples, source, trust_model_code, out_dir)
    if ref_outputs is not None and [r.shape for r in ref_outputs] != [h.shape for h in host]:
        why = (f"the FP32 outputs' shapes {[r.shape for r in ref_outputs]} differ from the artifact's "
               f"{[h.shape for h in host]}")
        ref_outputs = None
    stored = ((manifest.get("accuracy") or {}).get("outputs") or {})
    kinds = {nm: (stored.get(nm) or {}).get("kind") or accuracy.guess_kind(nm, h.shape) for nm, h in zip(names, host)}
    concats = accuracy.stored_concats(stored)
    labels = data.read_labels(val, n)
    rt = model.runtime
    if ref_outputs is None:
        ref_label = (f"the host's run of the artifact ({rt['name']} {rt.get('version') or ''}".rstrip()
                     + (f", {rt['delegate'] or rt['provider']}" if rt.get("delegate") or rt.get("provider") else "")
                     + ")")
        notes.append(f"no FP32 reference: {why}; the device's outputs are compared with the host's run of the "
                     "same artifact")
        ref_outputs, host_metrics = host, None
    else:
        host_metrics = accuracy.add_label_accuracy(accuracy.compare(ref_outputs, host, names, kinds, concats), ref_outputs,
                                                   host, names, labels)
    tmpdir = tempfile.mkdtemp(prefix="edgeopt-val-")
    path = os.path.join(tmpdir, SAMPLES_FILE)
    write_npz(path, {s.name: np.ascontiguousarray(samples[s.name]) for s in model.inputs})
    return ValCheck(samples_file=path, count=n, output_names=names, shapes=[tuple(h.shape) for h in host],
                    kinds=kinds, concats=concats, reference=ref_label, reference_outputs=ref_outputs, host_outputs=host,
                    host_runtime=rt, host_seconds=host_seconds, host_metrics=host_metrics, labels=labels,
                    data={k: info[k] for k in ("source", "kind", "samples", "available", "sha256") if k in info},
                    notes=notes, tmpdir=tmpdir)


def _host_model(artifact: str, notes: list):
    """The artifact loaded on this host, for its own run. An Edge TPU artifact cannot run here: its CPU twin
    (``model.int8.tflite``, the same quantized model before ``edgetpu_compiler``) runs in its place, said in
    ``notes``."""
    from edgeopt import runtime

    try:
        return runtime.load(artifact)
    except runtime.RuntimeMissing as e:
        twin = artifact[:-len("_edgetpu.tflite")] + ".tflite" if artifact.endswith("_edgetpu.tflite") else None
        if twin and os.path.isfile(twin):
            try:
                model = runtime.load(twin)
            except runtime.RuntimeMissing:
                pass
            else:
                notes.append(f"the host ran {os.path.basename(twin)}, the CPU twin of the Edge TPU artifact (no "
                             "Edge TPU here)")
                return model
        raise UsageError(f"--val needs the artifact's runtime on this host too (for its own run): {e}") from None


def _reference(model, manifest: dict, samples: dict, source: str | None, trust_model_code: bool,
               out_dir: str | None):
    """(label, outputs, why not) of the FP32 source model on ``samples``; outputs None when there is none."""
    from edgeopt.conversion import reference

    src = manifest.get("source") or {}
    fmt = src.get("format")
    if not manifest:
        return None, None, "a bare artifact (no manifest.json beside it names its source model)"
    arts = manifest.get("artifacts") if isinstance(manifest.get("artifacts"), list) else []
    passed = any(isinstance(a, dict) and a.get("kind") == "tflite-passthrough" for a in arts)
    if fmt not in ("onnx", "keras", "saved_model", "tflite") or passed:
        return None, None, f"the artifact was not converted by edgeopt from a float model (source format {fmt}" + (
            ", passed through" if passed else "") + ")"
    if source is None:
        where = out_dir or os.path.dirname(os.path.abspath(model.path))
        source, tried = reference.find_beside(src.get("file"), where, src.get("sha256"))
        if source is None:
            return None, None, (f"the source model {src.get('file')!r} was not found beside {where} or in the current "
                                "directory" + (" (a file of that name has other contents)" if tried else ""))
    inputs = src.get("inputs") or []
    outputs = [o.get("name") for o in src.get("outputs") or []]
    if [i.get("name") for i in inputs] != [s.name for s in model.inputs] or outputs != [s.name for s in
                                                                                      model.outputs]:
        return None, None, "the manifest's source inputs and outputs do not match the artifact's"
    try:
        fn = reference.source_reference(source, fmt, inputs, outputs, trust_model_code=trust_model_code)
        outs = reference.run_batched(fn, [samples[i["name"]] for i in inputs])
    except Exception as e:  # e.g. a Keras model with code in it, not trusted: the host's run still compares
        why = e.message if isinstance(e, UsageError) else f"{type(e).__name__}: {str(e).strip()[:200]}"
        return None, None, f"the source model {os.path.basename(source)} could not be run ({why})"
    import numpy as np
    return (reference.label(fmt) + f" {os.path.basename(source)}",
            [np.asarray(o, dtype=np.float32) for o in outs], None)


def write_npz(path: str, arrays: dict) -> None:
    """A .npz whose bytes depend on the arrays only (fixed member times, no compression): pushed
    content-addressed, the same samples are sent once."""
    import numpy as np

    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, a in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(a), allow_pickle=False)
            z.writestr(zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue())


def runner_values(samples_path: str) -> dict:
    """The runner's ``--val``/``--val-out`` for samples pushed to ``samples_path``: the outputs go beside them, under
    a name of this run's own (two hosts checking one device at once do not read each other's)."""
    return {"val": samples_path, "val_out": f"{samples_path}.out-{secrets.token_hex(8)}.npz"}


def time_allowance(check: ValCheck) -> float:
    """Seconds a device is given for the samples, on top of the benchmark's limit: a minute, plus 30 times what the
    host took for them (a board's CPU is slower than a workstation's)."""
    return 60.0 + 30.0 * check.host_seconds


def read_outputs(conn: Connection, check: ValCheck, path: str, timeout: float) -> list:
    """The device's outputs for the samples, from the .npz the runner wrote at ``path`` (removed after). At most
    the expected bytes (plus a .npz's own) are read, within ``timeout`` seconds; names, dtype, shapes and values
    are checked. Anything else is one DeviceError naming what was wrong."""
    name = conn.device.name
    limit = check.output_bytes + _NPZ_SLACK
    p = q([path])
    res = conn.run(f"head -c {limit + 1} -- {p}; rc=$?; rm -f -- {p}; exit $rc", timeout=timeout,
                   max_output=limit + 2)
    if res.rc != 0:
        why = (res.err or "").strip().splitlines()
        raise DeviceError("the device wrote no outputs for the validation samples"
                          + (f" ({why[-1][:200]})" if why else ""), device=name)
    return parse_outputs(res.stdout, check, name)


def _bad(device: str, what: str) -> DeviceError:
    return DeviceError(f"the device's outputs for the validation samples are unusable: {what}", device=device,
                       hint="the device's runtime or runner does not behave as edgeopt's: check its Python "
                            "packages (edgeopt devices), or rerun")


def parse_outputs(blob: bytes, check: ValCheck, device: str) -> list:
    """The outputs in ``blob`` (a .npz the device sent), checked against what the host's run gave: the members
    ``output_0``, ``output_1``, ... and nothing else, float32, the host's shapes, finite values."""
    import numpy as np

    from edgeopt.runtime import output_key

    limit = check.output_bytes + _NPZ_SLACK
    if len(blob) > limit:
        raise _bad(device, f"{len(blob)} bytes or more, the outputs are {check.output_bytes}")
    want = [output_key(k) + ".npy" for k in range(len(check.output_names))]
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as z:
            infos = z.infolist()
            if sorted(i.filename for i in infos) != sorted(want):
                got = ", ".join(i.filename for i in infos[:5]) + (" ..." if len(infos) > 5 else "")
                raise _bad(device, f"members {got or 'none'}, expected {', '.join(want)}")
            if sum(i.file_size for i in infos) > limit:  # declared sizes bound what is decompressed
                raise _bad(device, f"{sum(i.file_size for i in infos)} bytes unpacked, the outputs are "
                                   f"{check.output_bytes}")
            arrays = [np.load(io.BytesIO(z.read(m)), allow_pickle=False) for m in want]
    except DeviceError:
        raise
    except Exception as e:  # not a zip, a bad CRC, a .npy that is not one, object (pickle) arrays
        raise _bad(device, f"not a .npz of arrays ({type(e).__name__}: {str(e)[:200]})") from None
    for nm, a, shape in zip(check.output_names, arrays, check.shapes):
        if a.dtype != np.float32:
            raise _bad(device, f"output {nm!r} is {a.dtype}, expected float32")
        if tuple(a.shape) != tuple(shape):
            raise _bad(device, f"output {nm!r} has shape {tuple(a.shape)}, expected {tuple(shape)} "
                               f"({check.count} samples)")
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        if bad:
            raise _bad(device, f"output {nm!r} holds {bad} NaN or infinite values")
    return arrays


def device_accuracy(check: ValCheck, outputs: list, summary: dict, pushed: dict) -> dict:
    """The result's ``accuracy``: the device's outputs against the reference, the host's run beside them, and the
    device against the host (identical outputs: ``max_abs_err`` 0)."""
    from edgeopt.conversion import accuracy

    names = check.output_names
    acc = accuracy.add_label_accuracy(accuracy.compare(check.reference_outputs, outputs, names, check.kinds,
                                                       check.concats),
                                      check.reference_outputs, outputs, names, check.labels)
    vs_host = accuracy.compare(check.host_outputs, outputs, names, check.kinds, check.concats)
    rt = summary.get("runtime") if isinstance(summary.get("runtime"), dict) else {}
    res = {"samples": check.count, "data": check.data, "reference": check.reference,
           "runtime": {k: rt.get(k) for k in ("name", "version", "delegate", "provider")},
           "outputs": acc,
           "host": {"runtime": check.host_runtime, "outputs": check.host_metrics},
           "vs_host": vs_host,
           "same_as_host": all(m["max_abs_err"] == 0 for m in vs_host.values()),
           "seconds": summary.get("seconds"), "transfer": pushed}
    if check.notes:
        res["notes"] = list(check.notes)
    return res


def summary_line(device: str, acc: dict) -> str:
    """One line for the terminal: the device's numbers against the reference, the host's beside them."""
    parts = []
    host = acc.get("host") if isinstance(acc.get("host"), dict) else {}  # a stored result may be anything
    host = host.get("outputs") if isinstance(host.get("outputs"), dict) else {}
    outputs = acc.get("outputs") if isinstance(acc.get("outputs"), dict) else {}
    for name, m in outputs.items():
        if not isinstance(m, dict):
            continue
        h = host.get(name) if isinstance(host.get(name), dict) else {}
        bits = []
        for key, fmt, label in (("top1_accuracy", "{:.3f}", "top-1 accuracy"),
                                ("top1_agreement", "{:.3f}", "top-1 agreement"), ("sqnr_db", "{:.1f} dB", "SQNR"),
                                ("cosine", "{:.4f}", "cosine")):
            if not isinstance(m.get(key), (int, float)):
                continue
            text = f"{label} {fmt.format(m[key])}"
            if isinstance(h.get(key), (int, float)):
                text += f" (host {fmt.format(h[key])})"
            bits.append(text)
        parts.append(f"{name}: " + ", ".join(bits))
    same = "identical to the host's outputs" if acc.get("same_as_host") else "differs from the host's outputs"
    return (f"{device}: on-device check, {acc.get('samples')} samples vs {acc.get('reference')}: "
            + "; ".join(parts) + f"; {same}")
