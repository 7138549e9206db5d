"""`import edgeopt` and `edgeopt --help` never import TensorFlow, onnx or onnxruntime."""
import subprocess
import sys

HEAVY = ("tensorflow", "onnx", "onnxruntime", "onnx2tf", "keras", "torch")

CODE = """
import sys
import edgeopt, edgeopt.targets, edgeopt.converters, edgeopt.runtime
from edgeopt.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
heavy = sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r})
print('HEAVY=' + ','.join(heavy))
"""


def _heavy(argv):
    r = subprocess.run([sys.executable, "-c", CODE.format(argv=argv, heavy=HEAVY)], capture_output=True, text=True)
    line = [x for x in r.stdout.splitlines() if x.startswith("HEAVY=")]
    assert line, r.stdout + r.stderr
    return line[0][6:], r.stdout


def test_import_and_help_are_light():
    heavy, out = _heavy(["--help"])
    assert heavy == "", heavy
    assert "convert" in out and "targets" in out


def test_convert_help_is_light():
    heavy, out = _heavy(["convert", "--help"])
    assert heavy == "" and "--calib" in out
