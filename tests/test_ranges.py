"""Activation range estimators (edgeopt.conversion.ranges): numpy only, quick."""
import numpy as np
import pytest

from edgeopt.conversion import ranges


def _fake_quant(v, lo, hi, symmetric):
    """v on the INT8 grid of (lo, hi): symmetric -127..127, else 255 steps with 0 on the grid."""
    if symmetric:
        step = hi / 127.0
        return np.clip(np.round(v / step), -127, 127) * step
    step = (hi - lo) / 255.0
    zp = np.round(-lo / step)
    return (np.clip(np.round(v / step + zp), 0, 255) - zp) * step


def test_minmax_and_mean_minmax():
    mins, maxs = [-1.0, -3.0, -2.0], [4.0, 10.0, 7.0]
    assert ranges.estimate("minmax", mins, maxs) == (-3.0, 10.0)
    assert ranges.estimate("mean_minmax", mins, maxs) == (-2.0, 7.0)
    # symmetric: (-t, t) with t the largest magnitude of the pair
    assert ranges.estimate("mean_minmax", mins, maxs, symmetric=True) == (-7.0, 7.0)
    # asymmetric ranges always include 0 (the TFLite quantizer needs it)
    assert ranges.estimate("mean_minmax", [1.0, 3.0], [5.0, 7.0]) == (0.0, 6.0)
    with pytest.raises(ValueError):
        ranges.estimate("kl", mins, maxs)


def test_collector_per_sample_statistics():
    c = ranges.Collector()
    c.add("a", np.array([[-1.0, 2.0]], np.float32))
    c.add("a", np.array([0.5, 6.0, np.nan], np.float32))  # non-finite values are ignored
    c.add("i", np.array([1, 2], np.int64))                 # integer tensors are not activations
    assert c.names() == ["a"]
    assert c.ranges("minmax", symmetric=False) == {"a": (-1.0, 6.0)}
    assert c.ranges("mean_minmax", symmetric=False) == {"a": (-0.25, 4.0)}
    with pytest.raises(ValueError):
        c.ranges("mse", symmetric=False)  # values were not kept


def test_percentile_clips_the_outlier():
    rng = np.random.default_rng(0)
    v = rng.uniform(0, 1, 100000)
    v[7] = 50.0  # one outlier
    lo, hi = ranges.estimate("percentile", [v.min()], [v.max()], v, symmetric=False, percentile=99.9)
    assert lo == 0.0 and 0.99 < hi < 1.0
    lo, hi = ranges.estimate("percentile", [-v.max()], [v.max()], -v, symmetric=True, percentile=99.9)
    assert -1.0 < lo < -0.99 and hi == -lo


@pytest.mark.parametrize("symmetric", [False, True])
def test_mse_range_minimises_quantization_error(symmetric):
    """On heavy-tailed values the MSE range is narrower than min-max and its real INT8 error (rounding on the
    grid, clipping) is smaller than min-max's and than that of ranges much narrower or a bit wider."""
    rng = np.random.default_rng(1)
    v = rng.laplace(0, 1, 200000)
    v[:2] = 40.0  # two outliers stretch min-max
    if not symmetric:
        v = np.maximum(v, 0) * 3  # ReLU-like: exact zeros, one-sided tail
    lo, hi = ranges.estimate("mse", [v.min()], [v.max()], v, symmetric=symmetric)
    full = (-np.abs(v).max(), np.abs(v).max()) if symmetric else (0.0, v.max())
    if symmetric:
        assert lo == -hi
    else:
        assert lo == 0.0
    assert 0 < hi < (0.8 if symmetric else 0.97) * full[1]

    def err(a, b):
        return float(np.mean((_fake_quant(v, a, b, symmetric) - v) ** 2))
    best = err(lo, hi)
    assert best < (0.7 if symmetric else 0.95) * err(*full)
    assert best < err(lo * 0.5, hi * 0.5) and best < err(lo * 1.3, hi * 1.3)


def test_mse_asymmetric_searches_both_sides():
    rng = np.random.default_rng(2)
    v = np.concatenate([rng.normal(0, 0.1, 50000), [-0.2], rng.exponential(1.0, 50000)])
    lo, hi = ranges.mse_range(v, symmetric=False)
    assert lo < 0 < hi
    assert hi < v.max() and lo >= v.min()
    assert ranges.mse_range(np.zeros(10)) == (0.0, 0.0)
    assert ranges.mse_range(np.zeros(10), symmetric=True) == (0.0, 0.0)


def test_collector_is_deterministic_and_subsamples_without_aliasing():
    """Values kept per sample are a fixed pseudo-random subset: the same data gives the same ranges, and a
    channel-interleaved tensor (NHWC) is not read as one channel."""
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (4, 32, 32, 16)).astype(np.float32)
    x[..., 0] *= 20  # one channel with a far wider range
    got = []
    for _ in range(2):
        c = ranges.Collector(keep_values=True, keep=1024)
        for s in x:
            c.add("t", s)
        assert sum(len(a) for a in c.values["t"]) == 4 * 1024
        got.append(c.ranges("percentile", symmetric=True, percentile=99.0))
    assert got[0] == got[1]
    lo, hi = got[0]["t"]
    assert hi > 5  # the wide channel is in the subset (a stride of 16 would have missed or only seen it)


@pytest.mark.slow
@pytest.mark.parametrize("calibration", ["minmax", "mse"])
def test_tflite_per_channel_false_is_per_tensor(onnx_model, tmp_path, calibration):
    """per_channel=False (the recovery recipe explain rebuilds) gives one weight scale per tensor on the TFLite
    route too: before, the one-step and the stepwise paths both quantized per channel whatever the recipe said."""
    import edgeopt
    from ai_edge_litert.interpreter import Interpreter

    def conv_scales(out):
        it = Interpreter(model_path=str(out / "model.int8.tflite"))
        return [len(t["quantization_parameters"]["scales"]) for t in it.get_tensor_details()
                if t["dtype"] == np.int8 and len(t["shape"]) == 4 and t["shape"][0] == 16]

    calib = np.random.default_rng(0).standard_normal((16, 1, 3, 32, 32)).astype(np.float32).reshape(16, 3, 32, 32)
    per = {}
    for per_channel in (True, False):
        out = tmp_path / f"pc{per_channel}"
        edgeopt.convert(str(onnx_model), target="rpi5", calib=calib, out=str(out), per_channel=per_channel,
                        calibration_method=calibration, bias_correction=False)
        per[per_channel] = conv_scales(out)
    assert per[True] == [16] and per[False] == [1]
