"""Defaults and choices of a conversion, in a module that imports nothing: the CLI reads them at start-up
(the pipeline imports numpy), and the CLI's options, :func:`edgeopt.convert` and the pipeline all take them
from here."""

DEFAULT_MAX_CALIB = 200   # calibration samples used at most
DEFAULT_MAX_VAL = 1000    # validation samples used at most
# Activation range methods (edgeopt.conversion.ranges; entropy: onnxruntime's, QDQ only); the first is the
# default. "auto" builds the primary artifact with each of AUTO_METHODS and keeps the one whose outputs are
# closest to FP32 (SQNR) on the calibration samples: no single estimator won on every model. Measured (100
# calibration / 200 held-out photo crops, bias correction on): mse beat min-max on EfficientNet-Lite0 (22.3 vs
# 18.2 dB on TFLite, 21.2 vs 18.0 on QDQ) and mean_minmax by ~0.7 dB there, but mean_minmax beat mse by ~4 dB
# on MobileNetV2 (20.8 vs 16.9 on TFLite, 16.8 vs 13.3 on QDQ) and lost 15 dB on the Fashion-MNIST CNN (it
# clipped the last activations).
CALIBRATION_METHODS = ("auto", "mse", "minmax", "mean_minmax", "percentile", "entropy")
TFLITE_METHODS = ("auto", "mse", "minmax", "mean_minmax", "percentile")   # those the TFLite route takes
AUTO_METHODS = ("mse", "mean_minmax")   # what "auto" chooses from
AUTO_SAMPLES = 32                       # calibration samples "auto" compares the candidates on
# On a TFLite target that runs float ops beside INT8 ones (rpi), a transformer's normalization blocks (LayerNorm's
# arithmetic, Softmax, GELU) and the activations on a fixed INT8 grid that make a model output (LOGISTIC, TANH)
# stay in float when that raises the worst output's SQNR against FP32 by at least this
# much on the first AUTO_SAMPLES calibration samples (or when they hold ops without INT8 kernels): below it, INT8
# is as good and the all-INT8 artifact is kept.
FLOAT_BLOCKS_MIN_GAIN_DB = 0.5
DEFAULT_BIAS_CORRECTION = True   # bias correction in the plain recipe (E[x]-weighted INT8 weight error)
# INT8 weight rounding (edgeopt.conversion.rounding): "gptq" rounds each layer's weights against its inputs'
# Hessian (the layer's output error, not each weight's); "nearest" is the converters' own. "gptq_act" (the
# default, every route) fits each layer, one after the other, to map its input in the INT8 model to its FP32
# output, then rounds it by GPTQ (rounding.compensated). Measured (bench_ptq, 200 held-out crops, output SQNR):
# nearest -> gptq -> gptq_act: EfficientNet-Lite0 rpi 22.5 -> 24.3 -> 26.2 dB, jetson 21.8 -> 22.3 -> 24.3;
# MobileNetV2 rpi 20.8 -> 21.6 -> 22.1, jetson 16.8 -> 17.0 -> 19.0; benchmarks/README.md has the rest. With
# calibration "auto", gptq_act is kept only where its outputs are at least as close to FP32 as plain GPTQ's on
# calibration samples it was not fitted to (pipeline._rounding_check); about 2x plain GPTQ's conversion time.
WEIGHT_ROUNDINGS = ("gptq_act", "gptq", "nearest")   # the first is the default
MIN_CHECK_SAMPLES = 16   # calibration samples beyond ROUNDING_SAMPLES that _rounding_check needs to judge on them
ROUNDING_SAMPLES = 32                    # calibration samples whose inputs make GPTQ's Hessians
# the most bytes of tensors gptq_act keeps for its fitting samples (FP32 layer inputs on TFLite, live segment tensors
# on QDQ; a high-resolution model on 32 samples reaches gigabytes: PP-OCRv4's detector at 480x480); past it, it runs
# the models again (TFLite: once per window of layers that fits; QDQ: the whole model per layer)
GPTQ_ACT_MAX_KEPT_BYTES = 1 << 30
# Depthwise inputs equalized from the calibration data before quantizing (every ONNX source, every route:
# edgeopt.converters.onnx_equalize.equalize_depthwise_inputs; Keras and SavedModel sources on the TFLite route:
# edgeopt.converters.tf_tflite.equalize_depthwise): through Clip(0, hi) each channel's calibration
# maximum times MARGIN is moved onto hi (the Clip then cuts a channel at MARGIN x its calibration maximum at the
# latest), no channel scaled by less than FLOOR. Measured (bench_ptq, 200 held-out crops, output SQNR): MobileNetV2
# jetson 18.92 -> 20.41 dB (margin 1.25: 20.47), EfficientNet-Lite0 jetson 24.34 -> 24.21 (margin 1.25: 23.88; its
# ReLU6 channels mostly reach 6 already)
DEPTHWISE_EQUALIZATION_MARGIN = 2.0
DEPTHWISE_EQUALIZATION_FLOOR = 1 / 16
# The sanity floor: an artifact whose output has a cosine against FP32 under this is broken, not imprecise
# (a good INT8 classifier keeps > 0.99; Magika's QDQ with a quantized LayerNorm gave 0.72), and the conversion
# fails (exit 1) instead of reporting it as a success.
DEFAULT_MIN_COSINE = 0.9
# ... unless the output is computed on a coarse integer grid that alone brings it near the floor: TFLite's INT8
# LOGISTIC has a fixed step of 1/256, and a detector's score map on crops with nothing to find is mostly under
# 0.01 (the PP layout detector: the FP32 scores rounded onto that grid alone give cosine 0.916, the artifact 0.8995).
# Such an output is not failed when its SQNR is within this many dB of the grid's own (half its noise power or
# more is the grid's: imprecise, not broken).
OUTPUT_GRID_MARGIN_DB = 3.0
# An output concatenated from parts whose FP32 magnitudes differ this many times or more is judged part by part
# (its worst part's cosine and SQNR): YOLOv8's output0 joins box coordinates (0-320 pixels) and class scores
# (0-1); as one tensor its SQNR (36 dB) and cosine (0.9999) were the boxes', while the INT8 TFLite artifact's
# class scores had 2 dB and lost two thirds of the detections.
OUTPUT_PARTS_RANGE_RATIO = 8.0
IO_DTYPES = ("int8", "uint8", "float32")
DEFAULT_PERCENTILE = 99.99      # percentile calibration's percentile (edgeopt.conversion.ranges)
