"""Hostile calibration data: reads are bounded by --max-samples, headers are checked before any data is read.

The attack (reproduced on the old code): a 0.5 MB .npz whose array decompresses to 537 MiB was loaded whole
before --max-samples applied (peak RSS +543 MiB).
"""
import json
import os
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

from edgeopt.errors import UsageError

INPUTS = [{"name": "x", "shape": [None, 3, 8, 8], "dtype": "float32"}]
ROW = 3 * 8 * 8 * 4
BOMB_ROWS = 700_000  # 537 MiB of float32 zeros, ~0.5 MiB deflated


def _npy_header(shape, dtype="<f4", fortran=False) -> bytes:
    import io
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": fortran, "shape": tuple(shape)})
    return buf.getvalue()  # magic, version 1.0 and the header dict


def _write_member(path, name, header: bytes, body_chunks):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        with z.open(name, "w", force_zip64=True) as f:
            f.write(header)
            for chunk in body_chunks:
                f.write(chunk)


@pytest.fixture(scope="module")
def npz_bomb(tmp_path_factory):
    """A .npz whose one array (N, 3, 8, 8) float32 of zeros is 537 MiB decompressed and ~0.5 MiB on disk."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.npz"
    zeros = bytes(ROW * 10_000)
    _write_member(path, "x.npy", _npy_header((BOMB_ROWS, 3, 8, 8)), (zeros for _ in range(BOMB_ROWS // 10_000)))
    assert os.path.getsize(path) < 2 << 20
    return path


_MEASURE = textwrap.dedent('''
    import json, resource, sys, inspect
    from edgeopt.conversion import data
    inputs = [{"name": "x", "shape": [None, 3, 8, 8], "dtype": "float32"}]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kw = {"limit": 200} if "limit" in inspect.signature(data.load).parameters else {}
    try:
        arrays, info = data.load(sys.argv[1], inputs, "calibration", **kw)
        res = {"samples": info["samples"], "available": info.get("available")}
    except Exception as e:
        res = {"error": type(e).__name__ + ": " + str(e)}
    res["peak_mib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(json.dumps(res))
''')


def test_npz_bomb_is_read_capped_with_small_peak_memory(npz_bomb):
    r = subprocess.run([sys.executable, "-c", _MEASURE, str(npz_bomb)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["peak_mib"] < 64, res  # the old code: +543 MiB
    assert res.get("samples") == 200 and res.get("available") == BOMB_ROWS, res


def test_npz_header_claiming_a_huge_sample_is_refused_before_reading(tmp_path):
    p = tmp_path / "claims.npz"
    _write_member(p, "x.npy", _npy_header((10, 3, 100_000, 100_000)), [b"\0" * 64])
    with pytest.raises(UsageError, match=r"expected \(N, 3, 8, 8\), found \(10, 3, 100000, 100000\)"):
        _load(p)


def test_npz_header_lying_about_its_length_is_not_readable(tmp_path):
    p = tmp_path / "short.npz"
    _write_member(p, "x.npy", _npy_header((10 ** 12, 3, 8, 8)), [b"\0" * ROW * 3])
    with pytest.raises(UsageError, match="not a readable .npz"):
        _load(p, limit=200)


def test_object_arrays_are_never_unpickled(tmp_path):
    p = tmp_path / "obj.npy"
    np.save(p, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(UsageError, match="object dtype"):
        _load(p)
    q = tmp_path / "obj.npz"
    np.savez(q, x=np.array([[1], None], dtype=object))
    with pytest.raises(UsageError, match="object dtype"):
        _load(q)


def test_npy_and_npz_capped_to_the_first_rows_and_counted(tmp_path):
    x = np.random.default_rng(0).standard_normal((500, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "c.npy", x)
    np.savez(tmp_path / "c.npz", x=x, unused=np.zeros(3))
    np.save(tmp_path / "f.npy", np.asfortranarray(x))
    for name in ("c.npy", "c.npz", "f.npy"):
        arrays, info = _load(tmp_path / name, limit=120)
        np.testing.assert_array_equal(arrays["x"], x[:120])
        assert info["samples"] == 120 and info["available"] == 500, (name, info)
    arrays, info = _load(tmp_path / "c.npy")
    assert info["samples"] == 500 and "available" not in info


def test_image_folder_opens_only_the_first_files(tmp_path):
    from PIL import Image
    folder = tmp_path / "imgs"
    folder.mkdir()
    for k in range(12):
        Image.new("RGB", (8, 8), (k * 20, 0, 0)).save(folder / f"img{k:03d}.png")
    (folder / "zzz_not_an_image.png").write_bytes(b"garbage, never opened when capped at 12")
    spec = [{"name": "x", "shape": [None, 8, 8, 3], "dtype": "float32"}]
    from edgeopt.conversion import data
    arrays, info = data.load(str(folder), spec, "calibration", limit=12)
    assert arrays["x"].shape == (12, 8, 8, 3) and info["available"] == 13
    with pytest.raises(UsageError, match="zzz_not_an_image.png"):
        data.load(str(folder), spec, "calibration", limit=13)


def test_decompression_bomb_image_refused_before_decoding(tmp_path):
    from PIL import Image
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("L", (8000, 7500)).save(folder / "big.png")  # 60 MP, a few hundred KiB as PNG
    assert os.path.getsize(folder / "big.png") < 1 << 20
    from edgeopt.conversion import data
    with pytest.raises(UsageError, match="pixels"):
        data.load(str(folder), [{"name": "x", "shape": [None, 8, 8, 1], "dtype": "float32"}], "calibration", limit=5)


def test_labels_read_bounded(tmp_path):
    from edgeopt.conversion import data
    p = tmp_path / "v.npz"
    np.savez(p, x=np.zeros((4, 3, 8, 8), np.float32), labels=np.arange(1000))
    np.testing.assert_array_equal(data.read_npz_array(str(p), "labels", limit=4), np.arange(4))
    assert data.read_npz_array(str(p), "nope") is None


def _load(path, limit=None):
    from edgeopt.conversion import data
    return data.load(str(path), INPUTS, "calibration", limit=limit)
