"""Protocol statistics: host-side numbers from the raw samples (checked against numpy / scipy), and a real run
on a namespace sshd device: warm-up by time, timestamps, sustained mode."""
import json

import numpy as np
import pytest

from edgeopt.results import stats
from edgeopt_testkit import edgeopt_cli


def lognormal(n, seed=1, scale=1.0, sigma=0.2):
    return np.random.default_rng(seed).lognormal(np.log(scale), sigma, n)


def test_percentiles_match_numpy():
    a = lognormal(997)
    s = stats.percentiles(a)
    for k, q in (("p50", 50), ("p90", 90), ("p95", 95), ("p99", 99)):
        assert s[k] == pytest.approx(float(np.percentile(a, q)), rel=0, abs=0)
    assert s["mean"] == pytest.approx(float(a.mean()), rel=1e-15)
    assert s["std"] == pytest.approx(float(a.std(ddof=1)), rel=1e-12)
    assert s["cv"] == pytest.approx(float(a.std(ddof=1) / a.mean()), rel=1e-12)
    assert s["min"] == a.min() and s["max"] == a.max()


def test_bootstrap_ci_is_deterministic_and_covers_the_estimate():
    a = lognormal(500)
    ci1, ci2 = stats.bootstrap_ci(a), stats.bootstrap_ci(a)
    assert ci1 == ci2                                   # fixed seed
    assert ci1["p50"][0] < np.median(a) < ci1["p50"][1]
    assert ci1["mean"][0] < a.mean() < ci1["mean"][1]
    # the same computation by hand: numpy resampling with the same generator
    rng = np.random.default_rng(stats.SEED)
    idx = rng.integers(0, a.size, size=(stats.N_BOOT, a.size))
    meds = np.median(a[idx], axis=1)
    assert ci1["p50"] == pytest.approx(list(np.percentile(meds, [2.5, 97.5])), rel=1e-12)
    # more samples: a narrower interval (~ 1/sqrt(n))
    big = lognormal(8000, seed=2)
    w_small = ci1["p50"][1] - ci1["p50"][0]
    ci_big = stats.bootstrap_ci(big)
    assert ci_big["p50"][1] - ci_big["p50"][0] < w_small / 2


def test_coverage_of_the_median_ci_is_about_95_percent():
    true_median = 1.0  # lognormal(0, s): median exactly 1
    hits = 0
    for seed in range(200):
        a = lognormal(200, seed=seed + 100)
        lo, hi = stats.bootstrap_ci(a, n_boot=400, seed=seed)["p50"]
        hits += lo <= true_median <= hi
    assert 0.88 <= hits / 200 <= 0.99


def test_unstable_flag_and_drift():
    steady = lognormal(1000, sigma=0.03)
    noisy = np.concatenate([lognormal(900, sigma=0.03), lognormal(100, scale=3.0, sigma=0.03)])
    assert stats.summarize(steady)["unstable"] is False
    s = stats.summarize(noisy)
    assert s["unstable"] is True and s["latency_ms"]["cv"] > stats.CV_THRESHOLD
    assert stats.summarize(noisy, cv_threshold=5.0)["unstable"] is False
    warming = np.concatenate([np.full(500, 1.0), np.full(500, 1.3)])  # a device slowing down (thermal)
    d = stats.summarize(warming)["drift"]
    assert d["first_p50"] == 1.0 and d["last_p50"] == 1.3 and d["change"] == pytest.approx(0.3)


def test_over_time_buckets():
    t = np.linspace(0, 10, 1000)
    y = np.where(t < 5, 1.0, 2.0)
    b = stats.over_time(y, t, buckets=10)
    assert len(b) == 10 and b[0]["p50"] == 1.0 and b[-1]["p50"] == 2.0 and sum(x["n"] for x in b) == 1000


@pytest.mark.parametrize("alt", ["two-sided", "greater", "less"])
@pytest.mark.parametrize("case", ["shifted", "same", "ties", "small"])
def test_mann_whitney_matches_scipy(alt, case):
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(7)
    if case == "shifted":
        a, b = rng.normal(1.0, 0.1, 300), rng.normal(1.03, 0.1, 250)
    elif case == "same":
        a, b = rng.normal(1.0, 0.1, 300), rng.normal(1.0, 0.1, 300)
    elif case == "ties":  # latencies rounded to a timer tick: many ties
        a, b = np.round(rng.normal(1.0, 0.1, 400), 1), np.round(rng.normal(1.02, 0.1, 380), 1)
    else:
        a, b = np.array([1.1, 1.3, 0.9, 1.2, 1.0]), np.array([1.4, 1.5, 1.2, 1.6])
    ours = stats.mann_whitney(a, b, alt)
    ref = scipy_stats.mannwhitneyu(a, b, alternative=alt, method="asymptotic", use_continuity=True)
    assert ours["u"] == pytest.approx(float(ref.statistic))
    assert ours["p"] == pytest.approx(float(ref.pvalue), rel=1e-9, abs=1e-300)


def test_mann_whitney_by_hand():
    # a = [1, 2], b = [3, 4]: every a below every b -> U(a) = 0
    r = stats.mann_whitney([1, 2], [3, 4], "less")
    assert r["u"] == 0 and r["effect"] == 0
    r = stats.mann_whitney([3, 4], [1, 2], "greater")
    assert r["u"] == 4 and r["effect"] == 1


def test_compare_samples_detects_a_5_percent_slowdown_and_not_noise():
    a = lognormal(400, seed=3, sigma=0.05)
    b = lognormal(400, seed=4, scale=1.05, sigma=0.05)
    c = stats.compare_samples(a, b)
    assert c["slower"] and not c["faster"] and 3 < c["change"]["p50"] * 100 < 7
    lo, hi = c["ci95_p50_change"]
    assert lo < c["change"]["p50"] < hi and lo > 0
    same = stats.compare_samples(a, lognormal(400, seed=5, sigma=0.05))
    assert not same["slower"] and not same["faster"]


# ---------------------------------------------------------------------------------------- real runs over SSH

@pytest.mark.ssh
def test_stats_from_a_real_run_match_numpy_on_the_runner_samples(lab, tflite_model, tmp_path):
    lab.start("pi-ns", netns=lab.netns())
    inv = lab.inventory()
    p = edgeopt_cli("bench", tflite_model, "--device", "pi-ns", "--inventory", inv, "--runs", 300, "--min-seconds", 0.1,
                    "--warmup-seconds", 0.3, "--threads", 1, "--json",
                    env={"EDGEOPT_HISTORY": str(tmp_path / "h.sqlite")})
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    a = np.asarray(r["samples_ms"])
    # every run's sample (a tiny model runs ~0.01 ms: 0.1 s stays under the 20000-sample cap, thinning is tested below)
    assert a.size == r["runs"] >= 300
    lat = r["latency_ms"]
    for k, q in (("p50", 50), ("p90", 90), ("p95", 95), ("p99", 99)):
        assert lat[k] == float(np.percentile(a, q))
    assert lat["mean"] == pytest.approx(a.mean(), rel=1e-12)
    assert lat["std"] == pytest.approx(a.std(ddof=1), rel=1e-12)
    assert lat["cv"] == pytest.approx(a.std(ddof=1) / a.mean(), rel=1e-12)
    assert lat["min"] == a.min() and lat["max"] == a.max()
    ci = stats.bootstrap_ci(a)
    assert r["ci95"] == {"p50": ci["p50"], "mean": ci["mean"]}
    assert r["ci95"]["p50"][0] <= lat["p50"] <= r["ci95"]["p50"][1]
    assert r["unstable"] == (lat["cv"] > 0.10)
    # warm-up by time, then at least N runs and S seconds
    assert r["protocol"]["warmup_seconds"] == 0.3 and r["protocol"]["warmup_done"]["seconds"] >= 0.3
    t = np.asarray(r["timestamps_s"])
    # the stamps are rounded to 1 us: the last run ends at 0.1 s or later within that (CI once had 0.09999997 s)
    assert t.size == a.size and np.all(np.diff(t) > 0) and t[-1] + a[-1] / 1e3 >= 0.1 - 1e-6
    # every sample fits in its slot: sample i ends before sample i+1 starts
    assert np.all(t[:-1] + a[:-1] / 1e3 <= t[1:] + 1e-6)
    assert r["id"] == 1 and isinstance(r["clean"], bool) and "conditions" in r


@pytest.mark.ssh
def test_sustained_records_latency_over_time(lab, tflite_model, tmp_path):
    lab.start("pi-ns", netns=lab.netns())
    inv = lab.inventory()
    p = edgeopt_cli("bench", tflite_model, "--device", "pi-ns", "--inventory", inv, "--runs", 10, "--min-seconds", 0,
                    "--sustained", 2.5, "--threads", 1, "--json", env={"EDGEOPT_HISTORY": "off"})
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    t = np.asarray(r["timestamps_s"])
    assert t[-1] >= 2.4 and r["runs"] > 10
    assert r["protocol"]["sustained"] == 2.5
    trace = r["temperature_trace"]   # one reading a second (None here: the VM has no thermal zones)
    assert [round(x[0]) for x in trace] == [0, 1, 2]
    assert "drift" in r and r["drift"]["first_p50"] > 0
    b = stats.over_time(r["samples_ms"], r["timestamps_s"], buckets=5)
    assert len(b) == 5 and sum(x["n"] for x in b) == len(r["samples_ms"])
    # a fast model gives more runs than the runner reports: evenly thinned, the true count kept
    assert len(r["samples_ms"]) == min(r["runs"], 20000) and r.get("samples_total", r["runs"]) == r["runs"]
