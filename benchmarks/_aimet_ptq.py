"""Qualcomm AIMET's post-training quantization of an ONNX model, in one route's form, as a QDQ ONNX file.

Run by bench_ptq.py (``--aimet PYTHON``) with an interpreter that has aimet-onnx; not with edgeopt's: aimet-onnx
brings torch, onnx2torch, onnxscript, pandas and bokeh, none of which edgeopt or its tests need, so it lives in a
venv of its own (benchmarks/README.md says how to make it)::

    PYTHON benchmarks/_aimet_ptq.py SRC.onnx CALIB.npy OUT.qdq.onnx --form rpi|jetson [--iterations 1000]
        [--samples 32]

AIMET's PTQ recipe (its docs' order): batch-norm folding, cross-layer equalization and high-bias folding
(``equalize_model``; it also turns a ReLU6 between two convolutions into a ReLU, as AIMET does), a
QuantizationSimModel with the TF-enhanced range estimator (AIMET's SQNR-based one, better than min-max on these
models), AdaRound on ``--samples`` calibration crops, then encodings from all of them. Weights: per output
channel, symmetric (AIMET's default config). Activations: one scale per tensor.

Forms. rpi: activations asymmetric (TFLite's int8 with a zero point; written as uint8, the same grid). jetson:
activations symmetric signed int8, zero point 0 (what TensorRT takes), by AIMET's own config (``is_symmetric``),
so its ranges and rounding are chosen for that grid. In both, a Conv/Gemm read only by a
ReLU/ReLU6 has no quantizer of its own on its output: both routes run them fused, and AIMET's default config leaves
depthwise convolutions out of its Conv+Clip supergroup, which would quantize their raw outputs (-1.2 dB on
MobileNetV2). Constant nodes become initializers first: AIMET's pattern matching needs the Clip bounds as
initializers.

Prints one JSON line: seconds, the AIMET version, what was fused and the settings.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time

import numpy as np


def _constants_to_initializers(model):
    import onnx
    graph = model.graph
    for node in [n for n in graph.node if n.op_type == "Constant" and n.attribute[0].name == "value"]:
        tensor = onnx.TensorProto()
        tensor.CopyFrom(node.attribute[0].t)
        tensor.name = node.output[0]
        graph.initializer.append(tensor)
        graph.node.remove(node)


def _config(form, folder):
    """AIMET's default per-channel config; for jetson with symmetric signed activations."""
    from aimet_onnx.common.quantsim_config import quantsim_config
    path = os.path.join(os.path.dirname(quantsim_config.__file__), "default_config_per_channel.json")
    if form == "rpi":
        return path
    with open(path) as f:
        config = json.load(f)
    config["defaults"]["ops"]["is_symmetric"] = "True"
    config["defaults"]["strict_symmetric"] = "False"  # "True" writes zero point -1 (codes -128..126)
    config["defaults"]["unsigned_symmetric"] = "False"  # never uint8: TensorRT takes signed int8 only
    out = os.path.join(folder, "aimet_jetson_config.json")
    with open(out, "w") as f:
        json.dump(config, f)
    return out


def _fuse_activations(model, sim):
    """Disable the output quantizer of every Conv/Gemm read only by a Relu or Clip; returns how many."""
    readers = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node.op_type)
    fused = 0
    for node in model.graph.node:
        after = readers.get(node.output[0]) if node.op_type in ("Conv", "Gemm") else None
        if after and all(op in ("Relu", "Clip") for op in after):
            quantizer = sim.qc_quantize_op_dict.get(node.output[0])
            if quantizer is not None and quantizer.enabled:
                quantizer.enabled = False
                fused += 1
    return fused


def run(python: str, src: str, calib_path: str, out: str, form: str, iterations: int) -> tuple[float, dict]:
    """This script under ``python`` (an interpreter with aimet-onnx): (wall seconds, its JSON line). Raises
    RuntimeError with the last line of its stderr when it fails. Called by bench_ptq and bench_zoo, in edgeopt's
    venv: nothing of AIMET is imported here."""
    import subprocess
    t0 = time.perf_counter()
    done = subprocess.run([python, os.path.abspath(__file__), src, calib_path, out, "--form", form,
                           "--iterations", str(iterations)], capture_output=True, text=True, timeout=3 * 3600)
    if done.returncode:
        raise RuntimeError((done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1])
    return time.perf_counter() - t0, json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("calib", help=".npy of calibration inputs, one sample per row")
    ap.add_argument("out")
    ap.add_argument("--form", choices=("rpi", "jetson"), required=True)
    ap.add_argument("--iterations", type=int, default=1000,
                    help="AdaRound iterations per layer (AIMET's default: 10000, ~10x the time; 0: no AdaRound)")
    ap.add_argument("--samples", type=int, default=32, help="calibration crops AdaRound learns on")
    a = ap.parse_args(argv)

    import aimet_onnx
    import onnx
    from aimet_onnx import QuantizationSimModel, apply_adaround
    from aimet_onnx.cross_layer_equalization import equalize_model

    calib = np.load(a.calib)
    model = onnx.load(a.src)
    name = model.graph.input[0].name
    inputs = [{name: calib[i:i + 1]} for i in range(len(calib))]
    t0 = time.perf_counter()
    _constants_to_initializers(model)
    equalize_model(model)
    with tempfile.TemporaryDirectory() as tmp:
        sim = QuantizationSimModel(copy.deepcopy(model), quant_scheme="tf_enhanced",
                                   config_file=_config(a.form, tmp), path=tmp,
                                   session_options_kwargs={"intra_op_num_threads": os.cpu_count() or 1})
        fused = _fuse_activations(model, sim)
        if a.iterations:
            apply_adaround(sim, inputs[:a.samples], num_iterations=a.iterations)
        sim.compute_encodings(inputs)
        # prequantize_constants: weights stored as INT8 behind a DequantizeLinear (the size a deployment has)
        quantized = sim.to_onnx_qdq(prequantize_constants=True,
                                    force_activation_as="signed" if a.form == "jetson" else "unsigned")
    onnx.save(quantized, a.out)
    print(json.dumps({"seconds": round(time.perf_counter() - t0, 1), "aimet": aimet_onnx.__version__,
                      "form": a.form, "fused_activation_outputs": fused, "adaround_iterations": a.iterations,
                      "adaround_samples": a.samples, "quant_scheme": "tf_enhanced", "equalize_model": True}))


if __name__ == "__main__":
    main()
