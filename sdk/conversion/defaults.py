"""Defaults and choices of a conversion, in a module that imports nothing: the CLI reads them at start-up
(the pipeline imports numpy), and the CLI's options, :func:`edgeopt.convert` and the pipeline all take them
from here."""

DEFAULT_MAX_CALIB = 200   # calibration samples used at most
DEFAULT_MAX_VAL = 1000    # validation samples used at most
# Activation range methods (edgeopt.conversion.ranges; entropy: onnxruntime's, QDQ only); the first is the
# default. mse + bias correction measured best on EfficientNet-Lite0 (100 calibration / 200 held-out photo crops:
# output SQNR 22.3 dB vs 18.2 for min-max alone on TFLite, 21.2 vs 18.0 on QDQ) and neutral on the
# Fashion-MNIST CNN; mean_minmax lost 15 dB there (clipped the last activations).
CALIBRATION_METHODS = ("mse", "minmax", "mean_minmax", "percentile", "entropy")
TFLITE_METHODS = ("mse", "minmax", "mean_minmax", "percentile")   # those the TFLite route takes
DEFAULT_BIAS_CORRECTION = True   # bias correction in the plain recipe (E[x]-weighted INT8 weight error)
IO_DTYPES = ("int8", "uint8", "float32")
