"""Calibration and validation data: .npy, .npz, image directories, arrays, or an explicit "random".

Data is always returned in the *source model's* layout as a dict ``input name -> array (N, ...)``, checked
against the model's inputs. Bad data is a UsageError (exit 2) naming the expected and the found shapes.

Files are read bounded: ``.npy``/``.npz`` headers (shape, dtype) are checked before any data is read,
object arrays (pickle) are never loaded, and with ``limit`` only the first rows (images: the first files
by name) are read, so a small file that decompresses to gigabytes costs no more than the samples used.
"""
from __future__ import annotations

import hashlib
import os
import warnings
import zipfile

import numpy as np

from edgeopt.errors import UsageError

__all__ = ["IMAGE_EXTS", "shape_str", "channels_first", "load", "read_npz_array", "read_labels", "digest", "take",
           "count"]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".webp")
# Data files are read bounded: an image is refused above these sizes before it is decoded (a small PNG
# can claim gigapixels), and an array member whose layout forbids reading only its first rows
# (Fortran order) is read whole only below MAX_WHOLE_ARRAY_BYTES.
MAX_IMAGE_PIXELS = 50_000_000      # 50 MP, ~150 MB decoded as RGB
MAX_IMAGE_BYTES = 64 << 20
MAX_WHOLE_ARRAY_BYTES = 1 << 30
_CHUNK = 16 << 20                  # bytes read from a stream at a time


def shape_str(shape) -> str:
    """A shape for messages: (N, 3, 224, 224), N for a dynamic dimension."""
    return "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"


def channels_first(shape: list) -> bool:
    """Whether an image input is NCHW (ONNX/PyTorch style) rather than NHWC (Keras style)."""
    return len(shape) == 4 and shape[1] in (1, 3, 4) and shape[-1] not in (1, 3, 4)


def _load_images(path: str, spec: dict, mean, std, limit: int | None = None) -> tuple[np.ndarray, int]:
    """(images as an (N, ...) array in the input's layout, how many images the folder has).

    Names are listed and sorted first; only the first ``limit`` files are opened, and each is checked for
    its size in bytes and pixels (read from its header) before it is decoded.
    """
    try:
        from PIL import Image
    except ImportError:
        raise UsageError("image folders need Pillow", hint="pip install 'edgeopt[convert]'") from None
    files = sorted(f for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTS))
    if not files:
        raise UsageError(f"{path}: no images (jpg/png) in this directory")
    shape = spec["shape"]
    if len(shape) != 4:
        raise UsageError(f"{path}: an image folder needs a 4D image input, input {spec['name']!r} is {shape_str(shape)}")
    cf = channels_first(shape)
    c, h, w = (shape[1], shape[2], shape[3]) if cf else (shape[3], shape[1], shape[2])
    if h is None or w is None:
        raise UsageError(f"input {spec['name']!r} has dynamic height/width {shape_str(shape)}",
                         hint="fix it with --input-shape NAME=1,3,224,224")
    total = len(files)
    if limit is not None:
        files = files[:limit]
    out = []
    for f in files:
        full = os.path.join(path, f)
        try:
            size = os.path.getsize(full)
        except OSError as e:
            raise UsageError(f"{full}: not readable ({e.strerror or e})") from None
        if size > MAX_IMAGE_BYTES:
            raise UsageError(f"{full}: {size} bytes, more than an image edgeopt reads ({MAX_IMAGE_BYTES >> 20} MiB)",
                             hint="resize the calibration images to about the model's input size")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(full) as im:
                    if im.width * im.height > MAX_IMAGE_PIXELS:  # from the header: nothing decoded yet
                        raise UsageError(f"{full}: {im.width}x{im.height} pixels, more than an image edgeopt "
                                         f"decodes ({MAX_IMAGE_PIXELS // 1_000_000} MP; a decompression bomb?)",
                                         hint="resize the calibration images to about the model's input size")
                    im = im.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
                    a = np.asarray(im, dtype=np.float32) / 255.0
        except UsageError:
            raise
        except Exception as e:
            raise UsageError(f"{full}: not a readable image ({e})") from None
        if a.ndim == 2:
            a = a[:, :, None]
        out.append(a)
    x = np.stack(out)  # N, H, W, C
    if mean is not None:
        x = x - np.asarray(mean, dtype=np.float32).reshape(1, 1, 1, -1)
    if std is not None:
        x = x / np.asarray(std, dtype=np.float32).reshape(1, 1, 1, -1)
    return np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)) if cf else x), total


MAX_LOAD_BYTES = 8 << 30            # one input's samples, after --max-samples


def _fit_shape(shape: tuple, spec: dict, what: str) -> tuple:
    """``shape`` (from a file header) with its batch dimension, or the UsageError a misfit gets."""
    exp = spec["shape"]
    if len(shape) == len(exp) - 1:  # one sample without batch dim
        shape = (1,) + tuple(shape)
    if len(shape) != len(exp) or any(e is not None and e != f for e, f in zip(exp[1:], shape[1:])):
        hint = None
        if len(shape) == len(exp) == 4 and sorted(shape[1:]) == sorted(d for d in exp[1:] if d):
            hint = "the data looks transposed: give it in the source model's layout " + shape_str(exp)
        raise UsageError(f"{what} data does not fit input {spec['name']!r}: expected {shape_str(exp)}, "
                         f"found {tuple(shape)}", hint=hint)
    return tuple(shape)


def _read_npy(fp, size: int, where: str, limit: int | None, fit=None) -> tuple[np.ndarray, int]:
    """(the first ``limit`` rows, the number of rows) of the ``.npy`` stream ``fp`` of ``size`` bytes.

    The header is read and checked first (never object dtype: that is pickle, which runs code; the shape
    through ``fit``), so a file that claims a huge array costs nothing: only the rows kept are read.
    """
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
    else:
        raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
    if dtype.hasobject:
        raise UsageError(f"{where}: holds Python objects (object dtype, stored with pickle, which runs code on "
                         "load); edgeopt never loads those", hint="save plain numeric arrays with np.save / np.savez")
    if dtype.kind not in "fiub" or dtype.fields is not None or dtype.subdtype is not None:
        raise UsageError(f"{where}: dtype {dtype} is not numeric")
    shape = tuple(int(d) for d in shape)
    if not shape:
        shape = (1,)
    if fit is not None:
        shape = fit(shape)
    n = shape[0]
    row_bytes = dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))
    data_bytes = n * row_bytes
    if size - fp.tell() != data_bytes:
        raise ValueError(f"truncated or corrupt: the header promises {tuple(shape)} {dtype} "
                         f"({data_bytes} bytes), the file holds {size - fp.tell()}")
    take = n if limit is None else min(n, limit)
    if take * row_bytes > MAX_LOAD_BYTES:
        raise UsageError(f"{where}: {take} samples of {tuple(shape[1:])} {dtype} are {take * row_bytes >> 20} MiB, "
                         f"more than edgeopt loads ({MAX_LOAD_BYTES >> 30} GiB)", hint="lower --max-samples")
    if fortran and len(shape) > 1:  # column-major: the first rows are not a prefix of the data
        if take < n and data_bytes > MAX_WHOLE_ARRAY_BYTES:
            raise UsageError(f"{where}: a Fortran-order array of {data_bytes >> 20} MiB; edgeopt reads only the "
                             "samples it uses, which needs C order", hint="save np.ascontiguousarray(x)")
        whole = _read_exact(fp, np.empty(shape[::-1], dtype))  # F order of shape = C order of the reverse
        return np.ascontiguousarray(whole.T[:take]), n
    return _read_exact(fp, np.empty((take,) + shape[1:], dtype)), n


def _read_exact(fp, out: np.ndarray) -> np.ndarray:
    """Fill ``out`` from the stream, in chunks (no second copy of the data)."""
    buf = memoryview(out.reshape(-1).view(np.uint8))
    got = 0
    while got < len(buf):
        k = fp.readinto(buf[got:got + _CHUNK])
        if not k:
            raise ValueError("truncated: the data ends before its header says")
        got += k
    return out


def _member_names(z: zipfile.ZipFile) -> dict:
    """Array name -> zip member, as np.load names them (``x.npy`` holds ``x``)."""
    return {(n[:-4] if n.endswith(".npy") else n): n for n in z.namelist()}


def read_npz_array(path: str, key: str, limit: int | None = None) -> np.ndarray | None:
    """The first ``limit`` rows of array ``key`` of an ``.npz`` file (None if it has no such array).

    Read like calibration data: header first, object dtype refused, only the rows kept decompressed.
    """
    try:
        with zipfile.ZipFile(path) as z:
            member = _member_names(z).get(key)
            if member is None:
                return None
            info = z.getinfo(member)
            with z.open(info) as fp:
                return _read_npy(fp, info.file_size, f"{path}: array {key!r}", limit)[0]
    except UsageError:
        raise
    except Exception as e:  # zipfile, zlib, header and truncation errors: all "not readable"
        raise UsageError(f"{path}: not a readable .npz file ({e})") from None



def read_labels(src, n: int) -> np.ndarray | None:
    """The integer class labels a validation .npz stores beside the inputs (array ``labels``) for its first ``n``
    samples, or None (no such array, not integers, or fewer than ``n``)."""
    if not isinstance(src, (str, os.PathLike)) or not os.fspath(src).endswith(".npz"):
        return None
    lab = read_npz_array(os.fspath(src), "labels", limit=n)  # bounded, header checked, never pickle
    if lab is None:
        return None
    lab = np.asarray(lab).reshape(-1)[:n]
    return lab.astype(np.int64) if lab.shape[0] == n and lab.dtype.kind in "iu" else None

def load(src, inputs: list[dict], what: str = "calibration", mean=None, std=None, seed: int = 0,
         random_samples: int = 32, limit: int | None = None) -> tuple[dict, dict]:
    """Load ``src`` for the model ``inputs`` ([{name, shape, dtype}], source layout).

    Returns (data, info): data maps input name -> float array (N, ...); info describes the source
    (kind, file name, sha256 of the data) for the manifest.
    """
    names = [i["name"] for i in inputs]
    if limit is not None and limit < 1:
        raise UsageError(f"{what} data: at most {limit} samples requested; at least 1 is needed")
    totals: dict = {}
    if isinstance(src, np.ndarray):
        arrays, info = {names[0]: src}, {"source": "array"}
    elif isinstance(src, dict):
        arrays, info = dict(src), {"source": "arrays"}
    elif isinstance(src, str) and src == "random":
        rng = np.random.default_rng(seed)
        arrays = {}
        for i in inputs:
            shape = [1 if d is None else d for d in i["shape"]]
            kind = _dtype(i).kind
            if kind in "iu":  # token ids, byte values, indices: which values are valid is the model's to know
                raise UsageError(f"{what} data 'random': input {i['name']!r} takes {i['dtype']} values (ids, byte "
                                 "values or indices) that random data cannot stand for",
                                 hint="give real samples in a .npy/.npz file (one array per input, named after it)")
            if kind == "b":
                arrays[i["name"]] = rng.integers(0, 2, [random_samples] + shape[1:]).astype(bool)
                continue
            arrays[i["name"]] = rng.standard_normal([random_samples] + shape[1:]).astype(np.float32)
        info = {"source": "random", "warning": f"{what} used random data: quantization ranges do not reflect "
                                                "real inputs; accuracy numbers are not meaningful"}
    else:
        path = os.fspath(src)
        base = os.path.basename(path.rstrip("/"))
        if not os.path.exists(path):
            raise UsageError(f"{what} data {path}: no such file or directory")
        if os.path.isdir(path):
            if len(inputs) != 1:
                raise UsageError(f"{path}: an image folder fits single-input models only; this model has "
                                 f"{len(inputs)} inputs {names}", hint="use a .npz file with one array per input")
            images, total = _load_images(path, inputs[0], mean, std, limit)
            arrays, totals = {names[0]: images}, {names[0]: total}
            info = {"source": base + "/", "kind": "images"}
        elif path.endswith(".npz"):
            arrays, totals = _load_npz(path, inputs, what, limit)
            if len(set(totals.values())) > 1:  # the rows read may agree while the files do not
                counts = sorted(set(totals.values()))
                raise UsageError(f"{what} data: inputs have different sample counts ({counts[0]} vs {counts[-1]})")
            info = {"source": base, "kind": "npz"}
        elif path.endswith(".npy"):
            if len(inputs) != 1:
                raise UsageError(f"{path}: a .npy file fits single-input models only; this model has inputs {names}",
                                 hint="use a .npz file with one array per input")
            try:
                with open(path, "rb") as fp:
                    a, total = _read_npy(fp, os.fstat(fp.fileno()).st_size, path, limit,
                                         lambda shape: _fit_shape(shape, inputs[0], what))
            except UsageError:
                raise
            except Exception as e:
                raise UsageError(f"{path}: not a readable .npy file ({e})") from None
            arrays, totals, info = {names[0]: a}, {names[0]: total}, {"source": base, "kind": "npy"}
        else:
            raise UsageError(f"{path}: unsupported {what} data (use .npy, .npz, an image directory or 'random')")
    data = {}
    n = None
    for spec in inputs:
        a = np.asarray(arrays[spec["name"]])
        if a.dtype.kind not in "fiub":
            raise UsageError(f"{what} data for input {spec['name']!r}: dtype {a.dtype} is not numeric")
        exp = spec["shape"]
        if a.ndim == len(exp) - 1:  # one sample without batch dim
            a = a[None]
        if a.ndim != len(exp) or any(e is not None and e != f for e, f in zip(exp[1:], a.shape[1:])):
            hint = None
            if a.ndim == len(exp) and len(exp) == 4 and sorted(a.shape[1:]) == sorted(d for d in exp[1:] if d):
                hint = "the data looks transposed: give it in the source model's layout " + shape_str(exp)
            raise UsageError(f"{what} data does not fit input {spec['name']!r}: expected {shape_str(exp)}, "
                             f"found {tuple(a.shape)}", hint=hint)
        if n is not None and a.shape[0] != n:
            raise UsageError(f"{what} data: inputs have different sample counts ({n} vs {a.shape[0]})")
        n = a.shape[0]
        if n == 0:
            raise UsageError(f"{what} data for input {spec['name']!r} is empty")
        if not np.all(np.isfinite(a)) if a.dtype.kind == "f" else False:
            raise UsageError(f"{what} data for input {spec['name']!r} holds NaN or infinite values")
        data[spec["name"]] = np.ascontiguousarray(_as_input_dtype(a, spec, what))
    info["samples"] = int(n)
    available = max(totals.values()) if totals else n
    if available > n:  # capped while reading: the manifest says how many there were
        info["available"] = int(available)
    info["sha256"] = digest(data)
    return data, info


def _dtype(spec: dict) -> np.dtype:
    """The numpy dtype of an input spec's ``dtype`` name (float32 when it names none numpy knows)."""
    try:
        return np.dtype(spec.get("dtype") or "float32")
    except TypeError:
        return np.dtype(np.float32)


def _as_input_dtype(a: np.ndarray, spec: dict, what: str) -> np.ndarray:
    """``a`` in the input's own dtype: float inputs take float32; integer and bool inputs (token ids, masks,
    byte values) take their own type, unchanged in value: fractional or out-of-range data is refused, never
    rounded or wrapped into other ids."""
    want = _dtype(spec)
    if want.kind == "f":
        return a.astype(np.float32, copy=False)
    if a.dtype == want:
        return a
    if want.kind == "b":
        if a.dtype.kind != "b" and not np.all((a == 0) | (a == 1)):
            raise UsageError(f"{what} data for input {spec['name']!r}: it takes bool; the data holds values other "
                             "than 0 and 1")
        return a.astype(bool)
    if a.dtype.kind == "f" and not np.all(np.floor(a) == a):
        raise UsageError(f"{what} data for input {spec['name']!r}: it takes {want} values; the data holds "
                         "fractional ones", hint=f"save the samples as integers ({want})")
    info = np.iinfo(want)
    if a.size and (a.min() < info.min or a.max() > info.max):
        raise UsageError(f"{what} data for input {spec['name']!r}: values {a.min():g}..{a.max():g} do not fit "
                         f"{want} ({info.min}..{info.max})")
    return a.astype(want)


def _load_npz(path: str, inputs: list[dict], what: str, limit: int | None) -> tuple[dict, dict]:
    """({input name: first ``limit`` rows}, {input name: rows in the file}) of a .npz, arrays matched by name."""
    names = [i["name"] for i in inputs]
    try:
        with zipfile.ZipFile(path) as z:
            members = _member_names(z)
            if len(inputs) == 1 and len(members) == 1 and names[0] not in members:
                members = {names[0]: next(iter(members.values()))}
            missing = [n for n in names if n not in members]
            if missing:
                raise UsageError(f"{path}: no array for input(s) {missing}; it has {sorted(members)}",
                                 hint="name each array of the .npz after a model input")
            arrays, totals = {}, {}
            for spec in inputs:  # only the arrays the model takes are read; others are never decompressed
                info = z.getinfo(members[spec["name"]])
                with z.open(info) as fp:
                    arrays[spec["name"]], totals[spec["name"]] = _read_npy(
                        fp, info.file_size, f"{path}: array {spec['name']!r}", limit,
                        lambda shape, spec=spec: _fit_shape(shape, spec, what))
    except UsageError:
        raise
    except Exception as e:  # zipfile, zlib, header and truncation errors: all "not readable"
        raise UsageError(f"{path}: not a readable .npz file ({e})") from None
    return arrays, totals


def digest(data: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(data):
        a = np.ascontiguousarray(data[k])
        h.update(k.encode() + str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def take(data: dict, idx) -> dict:
    return {k: v[idx] for k, v in data.items()}


def count(data: dict) -> int:
    return int(next(iter(data.values())).shape[0])
