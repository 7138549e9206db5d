#!/usr/bin/env python
"""edgeopt.runtime benchmark: per-call overhead over the bare interpreter, and import time.

    .venv/bin/python benchmarks/bench_runtime.py [--threads N] [--rounds 15] [--calls 20] [--imports 15]

1. prepare   EfficientNet-Lite0 with its real ImageNet weights (benchmarks/zoo.py) exported to ONNX and converted
             for rpi (INT8 TFLite, float32 I/O, NHWC inside) with 200 real photos normalised (x-0.5)/0.5;
             cached in benchmarks/out/runtime/.
2. overhead  in a fresh process that imports only numpy, ai_edge_litert and edgeopt.runtime, on the same
             .tflite with the same thread count:
               direct   interpreter.set_tensor(NHWC float32) + invoke() + get_tensor()  (what a hand-written
                        app does when its data is already NHWC)
               direct+T the same plus the NCHW->NHWC transpose such an app needs for source-layout data
               runtime  model(x) with x NCHW float32 (edgeopt.runtime: checks, transpose, quantize if needed,
                        dequantize, dict of outputs)
             interleaved rounds of `--calls` calls each, median per-call time of each variant over the rounds;
             overhead = runtime / direct - 1. Also the runtime's own work alone (everything but invoke()),
             timed without the model run, which is what the overhead is made of.
3. import    `python -c "import edgeopt.runtime"` minus `python -c "import numpy"`, fresh processes, median of
             `--imports` runs each; for the repository's package (edgeopt/__init__ included) and for an unpacked
             `edgeopt bundle` (its minimal edgeopt/__init__.py); plus `python -X importtime` self/cumulative
             microseconds of the edgeopt.runtime module. `import edgeopt` is checked not to load TensorFlow,
             onnx or onnxruntime.

Targets: overhead < 5 % (a MobileNet-class model), import < 150 ms. Results: stdout and
benchmarks/out/runtime.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(ROOT, "benchmarks", "out")
WORK = os.path.join(OUT, "runtime")
PY = sys.executable


def _env():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(TF_CPP_MIN_LOG_LEVEL="3")
    return env


def prepare() -> str:
    """EfficientNet-Lite0 -> ONNX -> edgeopt convert --target rpi (cached). Returns the output directory."""
    out = os.path.join(WORK, "lite0-rpi")
    if os.path.exists(os.path.join(out, "manifest.json")):
        return out
    os.makedirs(WORK, exist_ok=True)
    onnx_path, calib = os.path.join(WORK, "efficientnet_lite0.onnx"), os.path.join(WORK, "calib200.npy")
    # export (torch) and conversion (TensorFlow) in separate processes: onnx2tf misbehaves with torch loaded
    code = f"""
import numpy as np
import zoo  # benchmarks/zoo.py: `python -c` runs in benchmarks/ (cwd below), first on sys.path
zoo.efficientnet_lite0({onnx_path!r})
x = (zoo.sample_photos(200) - 0.5) / 0.5
np.save({calib!r}, x.astype(np.float32))
"""
    t = time.time()
    for cmd in ([PY, "-c", code],
                [os.path.join(os.path.dirname(PY), "edgeopt"), "convert", onnx_path, "--target", "rpi", "--calib",
                 calib, "--out", out, "--json"]):
        r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, cwd=HERE)
        if r.returncode != 0:
            sys.exit(f"preparing EfficientNet-Lite0 failed:\n{r.stderr[-3000:]}")
    print(f"prepared {out} in {time.time() - t:.0f} s", file=sys.stderr)
    return out


OVERHEAD = r"""
import json, statistics, sys, time
import numpy as np
out_dir, threads, rounds, calls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
import edgeopt.runtime as rt
from ai_edge_litert.interpreter import Interpreter
model = rt.load(out_dir, threads=threads)
spec_in, spec_out = model.inputs[0], model.outputs[0]
interp = Interpreter(model_path=model.path, num_threads=threads)
interp.allocate_tensors()
i_idx = interp.get_input_details()[0]["index"]
o_idx = interp.get_output_details()[0]["index"]
rng = np.random.default_rng(0)
x = rng.standard_normal(spec_in.source_shape).astype(np.float32)      # NCHW, the source layout
x_nhwc = np.ascontiguousarray(x.transpose(spec_in.perm))              # what the interpreter takes

def direct():
    interp.set_tensor(i_idx, x_nhwc)
    interp.invoke()
    return interp.get_tensor(o_idx)

def direct_t():
    interp.set_tensor(i_idx, np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
    interp.invoke()
    return interp.get_tensor(o_idx)

def runtime():
    return model(x)

a, b = direct(), runtime()["logits"]
assert np.array_equal(a, b), "runtime and direct outputs differ"
for f in (direct, direct_t, runtime):
    for _ in range(5):
        f()
res = {"direct": [], "direct_transpose": [], "runtime": []}
clock = time.perf_counter
for r in range(rounds):
    order = [("direct", direct), ("direct_transpose", direct_t), ("runtime", runtime)]
    if r % 2:
        order.reverse()
    for name, f in order:
        t = clock()
        for _ in range(calls):
            f()
        res[name].append((clock() - t) / calls * 1e3)

# the runtime's own work alone: everything model(x) does except invoke()
b = model._backend
def own():
    arrays = model._normalize(x)
    b.set_inputs(model._prepare(arrays), model.inputs)
    outs = model._finish(b.get_outputs(model.outputs))
    return {s.name: a for s, a in zip(model.outputs, outs)}
for _ in range(100):
    own()
n = 2000
t = clock()
for _ in range(n):
    own()
own_us = (clock() - t) / n * 1e6
# the same for the direct path without invoke
t = clock()
for _ in range(n):
    interp.set_tensor(i_idx, x_nhwc)
    interp.get_tensor(o_idx)
direct_own_us = (clock() - t) / n * 1e6
print(json.dumps({"ms": res, "runtime_own_us": own_us, "direct_own_us": direct_own_us,
                  "runtime": model.runtime, "threads": model.threads, "artifact": model.path,
                  "input": {"source": spec_in.source_shape, "artifact": spec_in.shape, "dtype": spec_in.dtype}}))
"""


def overhead(out_dir: str, threads: int, rounds: int, calls: int) -> dict:
    r = subprocess.run([PY, "-c", OVERHEAD, out_dir, str(threads), str(rounds), str(calls)], env=_env(),
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"overhead measurement failed:\n{r.stderr[-3000:]}")
    d = json.loads(r.stdout.strip().splitlines()[-1])
    med = {k: statistics.median(v) for k, v in d["ms"].items()}
    d["median_ms"] = med
    d["overhead_pct"] = (med["runtime"] / med["direct"] - 1) * 100
    d["overhead_vs_direct_transpose_pct"] = (med["runtime"] / med["direct_transpose"] - 1) * 100
    d["own_work_pct_of_direct"] = (d["runtime_own_us"] - d["direct_own_us"]) / (med["direct"] * 1e3) * 100
    # paired per-round ratios: robust to the machine's load drifting between rounds
    d["overhead_pct_paired_median"] = statistics.median(
        (r_ / d_ - 1) * 100 for r_, d_ in zip(d["ms"]["runtime"], d["ms"]["direct"]))
    return d


def _time_cmd(args, env, n) -> list[float]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        r = subprocess.run(args, env=env, capture_output=True, text=True)
        times.append((time.perf_counter() - t) * 1e3)
        if r.returncode != 0:
            sys.exit(f"{' '.join(args)} failed: {r.stderr[-2000:]}")
    return times


def _importtime(code, env) -> dict:
    r = subprocess.run([PY, "-X", "importtime", "-c", code], env=env, capture_output=True, text=True)
    rows = {}
    for line in r.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            parts = [p.strip() for p in line[len("import time:"):].split("|")]
            if parts[0].isdigit():
                rows[parts[2].strip()] = {"self_us": int(parts[0]), "cumulative_us": int(parts[1])}
    return rows


def import_times(out_dir: str, n: int) -> dict:
    env = _env()
    res = {}
    # an unpacked bundle: the minimal edgeopt/__init__.py + runtime.py, nothing of the SDK
    bdir = os.path.join(WORK, "bundle-root")
    from edgeopt.firmware import bundle
    arc = bundle.build(out_dir, os.path.join(WORK, "lite0-rpi.tar.gz"))
    if os.path.isdir(bdir):
        import shutil
        shutil.rmtree(bdir)
    with tarfile.open(arc["file"]) as tf:
        tf.extractall(bdir, filter="data")
    benv = dict(env, PYTHONPATH=bdir)
    # a read-only root file system without precompiled bytecode: runtime.py is compiled at every start
    # (the bundle was just unpacked: no __pycache__ yet; this case runs first and writes none)
    nopyc = dict(benv, PYTHONDONTWRITEBYTECODE="1")
    cases = {"python": ([PY, "-c", "pass"], env),
             "numpy": ([PY, "-c", "import numpy"], env),
             "repo": ([PY, "-c", "import edgeopt.runtime"], env),
             "bundle_no_pyc": ([PY, "-c", "import edgeopt.runtime"], nopyc),
             "bundle": ([PY, "-c", "import edgeopt.runtime"], benv),
             "edgeopt": ([PY, "-c", "import edgeopt"], env)}
    times = {k: [] for k in cases}
    for i in range(n):  # interleaved, so that every case sees the same machine load
        for name, (args, e) in cases.items():
            times[name] += _time_cmd(args, e, 1)
    for name in cases:
        res[f"{name}_ms"] = statistics.median(times[name])
    for name in ("repo", "bundle_no_pyc", "bundle"):
        res[f"{name}_minus_numpy_ms"] = statistics.median(a - b for a, b in zip(times[name], times["numpy"]))
    res["edgeopt_minus_python_ms"] = statistics.median(a - b for a, b in zip(times["edgeopt"], times["python"]))
    # load-independent: -X importtime self times of every module imported beyond `import numpy`
    base = _importtime("import numpy", env)
    for name, e in (("repo", env), ("bundle", benv)):
        it = _importtime("import edgeopt.runtime", e)
        extra = {k: v for k, v in it.items() if k not in base}
        res[f"importtime_{name}"] = {"extra_modules": sorted(extra), "extra_self_ms":
                                     sum(v["self_us"] for v in extra.values()) / 1e3,
                                     "edgeopt.runtime": it.get("edgeopt.runtime")}
    chk = subprocess.run([PY, "-c", "import sys, edgeopt; print(sorted(m for m in sys.modules if m.split('.')[0] in "
                          "('tensorflow', 'onnx', 'onnxruntime', 'keras', 'torch', 'ai_edge_litert')))"],
                         env=env, capture_output=True, text=True)
    res["import_edgeopt_heavy_modules"] = json.loads(chk.stdout.strip().replace("'", '"'))
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--imports", type=int, default=15)
    ap.add_argument("--out-dir", default=None, help="an existing `edgeopt convert --target rpi` output of "
                    "EfficientNet-Lite0 to use instead of converting (e.g. benchmarks/out/edgeopt-rpi)")
    args = ap.parse_args(argv)
    out_dir = os.path.abspath(args.out_dir) if args.out_dir else prepare()
    ov = overhead(out_dir, args.threads, args.rounds, args.calls)
    im = import_times(out_dir, args.imports)
    res = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "machine": platform.machine(),
                       "load_avg": os.getloadavg()},
           "model": "EfficientNet-Lite0 INT8 (rpi: float32 I/O, NHWC inside, source NCHW)",
           "overhead": ov, "import": im,
           "targets": {"overhead_pct": 5.0, "import_ms": 150.0}}
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "runtime.json"), "w") as f:
        json.dump(res, f, indent=2)
    m = ov["median_ms"]
    print(f"model: {os.path.basename(ov['artifact'])} {ov['input']} runtime={ov['runtime']['name']} "
          f"{ov['runtime']['version']} threads={ov['threads']}")
    print(f"per call (median of {args.rounds} rounds x {args.calls} calls):")
    print(f"  direct interpreter (NHWC data)     {m['direct']:8.3f} ms")
    print(f"  direct + NCHW->NHWC transpose      {m['direct_transpose']:8.3f} ms")
    print(f"  edgeopt.runtime model(x) (NCHW)    {m['runtime']:8.3f} ms")
    print(f"  overhead vs direct                 {ov['overhead_pct']:+8.2f} %  (paired rounds: "
          f"{ov['overhead_pct_paired_median']:+.2f} %; target < 5 %)")
    print(f"  overhead vs direct + transpose     {ov['overhead_vs_direct_transpose_pct']:+8.2f} %")
    print(f"  runtime's own work (no invoke)     {ov['runtime_own_us']:8.1f} us vs {ov['direct_own_us']:.1f} us "
          f"direct = {ov['own_work_pct_of_direct']:.2f} % of a call")
    print(f"import (median of {args.imports} fresh processes): python {im['python_ms']:.0f} ms, "
          f"numpy {im['numpy_ms']:.0f} ms")
    print(f"  import edgeopt.runtime (repo)      {im['repo_minus_numpy_ms']:8.1f} ms over numpy (target < 150 ms)")
    print(f"  import edgeopt.runtime (bundle)    {im['bundle_minus_numpy_ms']:8.1f} ms over numpy "
          f"({im['bundle_no_pyc_minus_numpy_ms']:.1f} ms without cached bytecode)")
    print(f"  import edgeopt                     {im['edgeopt_minus_python_ms']:8.1f} ms over bare python; heavy "
          f"modules: {im['import_edgeopt_heavy_modules'] or 'none'}")
    for name in ("repo", "bundle"):
        it = im[f"importtime_{name}"]
        print(f"  -X importtime, {name:6s}              {it['extra_self_ms']:8.1f} ms in the modules beyond numpy: "
              f"{', '.join(it['extra_modules'])}")
    print(f"results: {os.path.join(OUT, 'runtime.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
