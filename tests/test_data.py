"""Calibration/validation data loading: layouts, image folders, mean/std, clear errors."""
import numpy as np
import pytest
from PIL import Image

from edgeopt.conversion.data import digest, load
from edgeopt.errors import UsageError

NCHW = [{"name": "image", "shape": [None, 3, 8, 10], "dtype": "float32"}]
NHWC = [{"name": "image", "shape": [None, 8, 10, 3], "dtype": "float32"}]


@pytest.fixture()
def images(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "imgs"
    d.mkdir()
    arrs = []
    for i in range(3):
        a = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)
        Image.fromarray(a).save(d / f"{i}.png")
        arrs.append(a)
    (d / "notes.txt").write_text("not an image")
    return d, arrs


def test_image_folder_nchw_with_mean_std(images):
    d, arrs = images
    data, info = load(str(d), NCHW, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    x = data["image"]
    assert x.shape == (3, 3, 8, 10) and x.dtype == np.float32
    ref = np.asarray(Image.fromarray(arrs[0]).resize((10, 8), Image.BILINEAR), np.float32) / 255.0
    np.testing.assert_allclose(x[0], np.transpose((ref - 0.5) / 0.25, (2, 0, 1)), rtol=1e-5, atol=1e-5)
    assert info["kind"] == "images" and info["samples"] == 3 and len(info["sha256"]) == 64


def test_image_folder_nhwc(images):
    d, _ = images
    data, _ = load(str(d), NHWC)
    assert data["image"].shape == (3, 8, 10, 3) and 0 <= data["image"].min() and data["image"].max() <= 1


def test_npz_by_name_and_shape_errors(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, image=np.zeros((5, 3, 8, 10), np.float32), labels=np.arange(5))
    data, info = load(str(p), NCHW)
    assert data["image"].shape == (5, 3, 8, 10) and info["kind"] == "npz"
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((5, 8, 10, 3), np.float32))
    with pytest.raises(UsageError) as e:
        load(str(bad), NCHW)
    assert "expected (N, 3, 8, 10)" in str(e.value) and "found (5, 8, 10, 3)" in str(e.value)
    assert "transposed" in e.value.hint


def test_single_sample_gets_batch_dim_and_nan_refused(tmp_path):
    p = tmp_path / "one.npy"
    np.save(p, np.ones((3, 8, 10), np.float32))
    data, _ = load(str(p), NCHW)
    assert data["image"].shape == (1, 3, 8, 10)
    np.save(p, np.full((2, 3, 8, 10), np.nan, np.float32))
    with pytest.raises(UsageError, match="NaN"):
        load(str(p), NCHW)


def test_random_is_recorded():
    data, info = load("random", NCHW)
    assert info["source"] == "random" and "warning" in info and data["image"].shape[1:] == (3, 8, 10)
    again, _ = load("random", NCHW)
    assert np.array_equal(data["image"], again["image"])  # seeded: reproducible


def test_digest_changes_with_content():
    a = {"x": np.zeros((2, 2), np.float32)}
    b = {"x": np.ones((2, 2), np.float32)}
    assert digest(a) != digest(b) and digest(a) == digest({"x": np.zeros((2, 2), np.float32)})
