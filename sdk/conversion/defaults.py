"""Defaults and choices of a conversion, in a module that imports nothing: the CLI reads them at start-up
(the pipeline imports numpy), and the CLI's options, :func:`edgeopt.convert` and the pipeline all take them
from here."""

DEFAULT_MAX_CALIB = 200   # calibration samples used at most
DEFAULT_MAX_VAL = 1000    # validation samples used at most
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")   # the first is the default
IO_DTYPES = ("int8", "uint8", "float32")
