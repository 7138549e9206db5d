"""Silero VAD, a real pretrained recurrent model, streamed chunk by chunk as a board runs it: edgeopt's INT8
artifacts against FP32, next to NNCF and onnxruntime's quantize_static, on recorded speech and music.

    .venv/bin/python benchmarks/bench_vad.py [--seconds 90] [--routes rpi,jetson,coral]

Model: ``silero_vad_16k_sequence.onnx`` of the silero-vad 6.2.3 wheel (MIT), read with zipfile from
benchmarks/out/wheels (``pip download --no-deps silero-vad==6.2.3 -d benchmarks/out/wheels`` once): an STFT
(Conv on the raw 16 kHz waveform, Pow/Add/Sqrt), a Conv encoder, one ONNX LSTM whose state ``h``, ``c``
[1, 1, 128] are inputs and outputs, and a speech probability. Its input is [chunks, 576] (512 new samples and
64 of context); one chunk per call, input fixed to [1, 576], is the streaming form.

Audio (nothing downloaded): Debian's asterisk-core-sounds-en-wav (recorded English prompts, 8 kHz, upsampled to
16 kHz) and asterisk-moh-opsound-wav (music), with silence between clips. Calibration and validation samples are
(chunk, h, c) triples of the FP32 model streamed over audio made from the first 300 prompts and 2 of the 5 music files;
the held-out stream is made from the others.

Judged: each artifact streamed over the held-out audio carrying its own states, against FP32 streamed alike:
agreement of the speech decisions (p > 0.5) per chunk, SQNR of the probabilities, mean |dp|, size over FP32.
QDQ models (edgeopt jetson, NNCF, onnxruntime) run with every graph optimisation off (Q/DQ explicit, as TensorRT
computes); TFLite through edgeopt.runtime (XNNPACK). rpi needs ``allow_float_fallback`` (the STFT magnitude's
SQRT has no INT8 kernel); Coral refuses the model for the same reason.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import time
import wave
import zipfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "benchmarks", "out")
WORK = os.path.join(OUT, "vad-work")
WHEEL = "silero_vad-6.2.3-py3-none-any.whl"
MEMBER = "silero_vad/data/silero_vad_16k_sequence.onnx"
SPEECH = "/usr/share/asterisk/sounds/**/*.wav"
MUSIC = "/usr/share/asterisk/moh/*.wav"
CHUNK, CONTEXT, STATE = 512, 64, (1, 1, 128)


def read_wav(path: str) -> np.ndarray:
    """A 16-bit PCM file as float32 mono at 16 kHz (8 kHz files upsampled by linear interpolation)."""
    with wave.open(path) as w:
        rate, n, channels = w.getframerate(), w.getnframes(), w.getnchannels()
        a = np.frombuffer(w.readframes(n), "<i2").astype(np.float32) / 32768
    if channels > 1:
        a = a.reshape(-1, channels).mean(1)
    if rate == 8000:
        a = np.interp(np.arange(2 * len(a)) / 2, np.arange(len(a)), a).astype(np.float32)
    elif rate != 16000:
        raise SystemExit(f"{path}: {rate} Hz")
    return a


def audio(files: list[str], seconds: float, seed: int) -> np.ndarray:
    """Clips of ``files`` (at most 4 s each, drawn at random) with 0.1-0.75 s of silence after each."""
    rng = np.random.default_rng(seed)
    parts, total = [], 0
    while total < seconds * 16000:
        a = read_wav(files[rng.integers(len(files))])[: 16000 * 4]
        parts += [a, np.zeros(int(rng.integers(2000, 12000)), np.float32)]
        total += len(a)
    return np.concatenate(parts)


def stream(step, sound: np.ndarray) -> tuple[np.ndarray, list]:
    """(speech probability per chunk, [(chunk, h, c) fed]) of ``step(chunk, h, c) -> (p, h, c)`` over ``sound``,
    its states carried from chunk to chunk from zeros."""
    n = len(sound) // CHUNK
    x = np.concatenate([np.zeros(CONTEXT, np.float32), sound[: n * CHUNK]])
    h, c = np.zeros(STATE, np.float32), np.zeros(STATE, np.float32)
    probs, fed = [], []
    for i in range(n):
        chunk = x[i * CHUNK: i * CHUNK + CHUNK + CONTEXT][None]
        fed.append((chunk, h, c))
        p, h, c = step(chunk, h, c)
        probs.append(float(np.ravel(p)[0]))
    return np.array(probs), fed


def ort_step(path: str, explicit: bool = False):
    import onnxruntime as ort
    so = ort.SessionOptions()
    if explicit:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return lambda x, h, c: sess.run(None, {"input": x, "h": h, "c": c})


def prepare(seconds: float) -> tuple[str, dict, np.ndarray]:
    """(the FP32 model fixed to one chunk, {calib, val: .npz path}, the held-out audio)."""
    import onnx
    os.makedirs(WORK, exist_ok=True)
    src = os.path.join(WORK, "silero_vad_1chunk.onnx")
    wheels = os.environ.get("EDGEOPT_ZOO_WHEELS", os.path.join(OUT, "wheels"))
    with zipfile.ZipFile(os.path.join(wheels, WHEEL)) as z:
        m = onnx.load_from_string(z.read(MEMBER))
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(m, src)
    speech, music = sorted(glob.glob(SPEECH, recursive=True)), sorted(glob.glob(MUSIC))
    if len(speech) < 400 or len(music) < 4:
        raise SystemExit("apt-get install asterisk-core-sounds-en-wav asterisk-moh-opsound-wav")
    fp32 = ort_step(src)
    files = {}
    for name, clips, n, seed in (("calib", speech[:300] + music[:2], 200, 0), ("val", speech[:300] + music[:2], 300, 1)):
        _, fed = stream(fp32, audio(clips, seconds, seed))
        pick = np.random.default_rng(seed).choice(len(fed), n, replace=False)
        files[name] = os.path.join(WORK, f"{name}.npz")
        np.savez(files[name], input=np.concatenate([fed[k][0] for k in pick]),
                 h=np.concatenate([fed[k][1] for k in pick]), c=np.concatenate([fed[k][2] for k in pick]))
    return src, files, audio(speech[300:] + music[2:], seconds, 2)


def judge(name: str, step, ref: np.ndarray, sound: np.ndarray, size: float, seconds: float, extra="") -> dict:
    got, _ = stream(step, sound)
    err = got - ref
    row = {"tool": name, "decisions": float(np.mean((got > 0.5) == (ref > 0.5))),
           "sqnr_db": float(10 * np.log10(np.sum(ref ** 2) / max(np.sum(err ** 2), 1e-30))),
           "mean_abs_dp": float(np.abs(err).mean()), "size_x": size, "convert_s": seconds, "note": extra}
    print(f"| {name} | {row['decisions']:.4f} | {row['sqnr_db']:.1f} | {row['mean_abs_dp']:.4f} | {size:.3f} | "
          f"{seconds:.1f} | {extra} |", flush=True)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=90, help="seconds of audio per stream")
    ap.add_argument("--routes", default="rpi,jetson,coral")
    a = ap.parse_args(argv)
    os.environ["NNCF_CI"] = "1"
    import edgeopt
    from edgeopt import runtime
    from edgeopt.errors import UsageError

    src, files, held = prepare(a.seconds)
    fp32_bytes = os.path.getsize(src)
    ref, _ = stream(ort_step(src), held)
    print(f"held-out: {len(ref)} chunks, FP32 says speech in {np.mean(ref > 0.5):.3f}\n")
    print("| tool | decisions = FP32's | prob SQNR dB | mean abs dp | x FP32 | convert s | note |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for route in a.routes.split(","):
        out = os.path.join(WORK, f"edgeopt-{route}")
        t = time.time()
        try:
            man = edgeopt.convert(src, target=route, calib=files["calib"], val=files["val"], out=out, min_cosine=0,
                                  allow_float_fallback=route == "rpi")
        except UsageError as e:
            print(f"| edgeopt {route} | - | - | - | - | - | refused: {str(e).splitlines()[0][:120]} |")
            continue
        art = man["artifacts"][0]
        model = runtime.load(os.path.join(out, art["file"]))
        note = "float ops " + ",".join(art.get("float_ops") or []) if art.get("float_ops") else "all INT8"
        rows.append(judge(f"edgeopt {route}", lambda x, h, c: model.run({"input": x, "h": h, "c": c}), ref, held,
                          art["bytes"] / fp32_bytes, time.time() - t, note))
    import onnx
    cal = np.load(files["calib"])
    samples = [{k: cal[k][i:i + 1] for k in ("input", "h", "c")} for i in range(len(cal["input"]))]
    t = time.time()
    import nncf
    path = os.path.join(WORK, "nncf.onnx")
    onnx.save(nncf.quantize(onnx.load(src), nncf.Dataset(samples)), path)
    rows.append(judge("NNCF", ort_step(path, explicit=True), ref, held, os.path.getsize(path) / fp32_bytes,
                      time.time() - t, "LSTM left float"))
    from onnxruntime.quantization import QuantFormat, quantize_static

    class Reader:
        def __init__(self):
            self.it = iter(samples)

        def get_next(self):
            return next(self.it, None)

    t = time.time()
    path = os.path.join(WORK, "ort.onnx")
    quantize_static(src, path, Reader(), quant_format=QuantFormat.QDQ)
    rows.append(judge("onnxruntime quantize_static", ort_step(path, explicit=True), ref, held,
                      os.path.getsize(path) / fp32_bytes, time.time() - t, "LSTM left float"))
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
