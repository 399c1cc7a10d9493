"""The A/B statistics of triton_marlin.bench, checked against scipy on known samples."""
import math

import numpy as np
import pytest

from triton_marlin.bench import ab_compare, ab_from_samples, stats as st

scipy_stats = pytest.importorskip("scipy.stats")

SIZES = [(2, 2), (3, 5), (8, 8), (8, 40), (9, 9), (30, 45), (200, 150)]


def _pair(seed, n1, n2, shift=0.3, scale_b=2.0):
    rng = np.random.default_rng(seed)
    return rng.normal(10.0, 1.0, n1), rng.normal(10.0 + shift, scale_b, n2)


@pytest.mark.parametrize("n1,n2", SIZES)
def test_welch_matches_scipy(n1, n2):
    a, b = _pair(n1 * 100 + n2, n1, n2)
    ours = st.welch_t_test(a, b)
    ref = scipy_stats.ttest_ind(a, b, equal_var=False)
    assert ours.statistic == pytest.approx(ref.statistic, rel=1e-10)
    assert ours.df == pytest.approx(ref.df, rel=1e-10)
    assert ours.pvalue == pytest.approx(ref.pvalue, rel=1e-8, abs=1e-14)


@pytest.mark.parametrize("t", [-40.0, -3.1, -0.2, 0.0, 0.7, 2.0, 8.5])
@pytest.mark.parametrize("df", [0.6, 1.0, 2.5, 7.0, 31.3, 400.0])
def test_student_t_tail_matches_scipy(t, df):
    assert st.student_t_sf(t, df) == pytest.approx(scipy_stats.t.sf(t, df), rel=1e-9, abs=1e-300)


def test_incomplete_beta_matches_scipy():
    special = pytest.importorskip("scipy.special")
    for a, b, x in [(0.5, 0.5, 0.3), (2.0, 3.0, 0.9), (15.0, 0.5, 0.99), (100.0, 80.0, 0.55), (1.0, 1.0, 0.25)]:
        assert st.regularized_incomplete_beta(a, b, x) == pytest.approx(special.betainc(a, b, x), rel=1e-10)


@pytest.mark.parametrize("n1,n2", SIZES)
@pytest.mark.parametrize("ties", [False, True])
def test_mann_whitney_matches_scipy(n1, n2, ties):
    a, b = _pair(n1 * 7 + n2, n1, n2, shift=1.0)
    if ties:  # coarse rounding creates tie groups (and switches scipy's auto method to asymptotic)
        a, b = np.round(a), np.round(b)
    ours = st.mann_whitney_u(a, b)
    ref = scipy_stats.mannwhitneyu(a, b, alternative="two-sided")
    assert ours.statistic == ref.statistic
    assert ours.pvalue == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("method", ["exact", "asymptotic"])
def test_mann_whitney_forced_method_matches_scipy(method):
    a, b = _pair(5, 12, 15, shift=0.8)
    ours = st.mann_whitney_u(a, b, method=method)
    ref = scipy_stats.mannwhitneyu(a, b, method=method)
    assert ours.method == method
    assert ours.pvalue == pytest.approx(ref.pvalue, rel=1e-9)


def test_mann_whitney_no_continuity_matches_scipy():
    a, b = _pair(11, 20, 25)
    ours = st.mann_whitney_u(a, b, method="asymptotic", continuity=False)
    ref = scipy_stats.mannwhitneyu(a, b, method="asymptotic", use_continuity=False)
    assert ours.pvalue == pytest.approx(ref.pvalue, rel=1e-9)


def test_effect_sizes():
    a, b = _pair(3, 25, 31, shift=1.5, scale_b=1.3)
    pooled = ((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1)) / (a.size + b.size - 2)
    assert st.cohens_d(a, b) == pytest.approx((a.mean() - b.mean()) / math.sqrt(pooled), rel=1e-12)
    # Cliff's delta equals 2 U / (n1 n2) - 1 with scipy's U (pairs a > b, ties counted half)
    a_t, b_t = np.round(a), np.round(b)
    u = scipy_stats.mannwhitneyu(a_t, b_t).statistic
    assert st.cliffs_delta(a_t, b_t) == pytest.approx(2 * u / (a.size * b.size) - 1, abs=1e-12)
    assert st.cliffs_delta([5, 6, 7], [1, 2]) == 1.0
    assert st.cliffs_delta([1, 2], [5, 6, 7]) == -1.0


def test_bootstrap_ratio_ci_against_scipy():
    rng = np.random.default_rng(0)
    a = rng.lognormal(np.log(100.0), 0.1, 80)
    b = rng.lognormal(np.log(125.0), 0.1, 90)
    ratio, lo, hi = st.bootstrap_ratio_ci(a, b, n_boot=4000, seed=1)
    assert ratio == pytest.approx(np.median(a) / np.median(b), rel=1e-12)
    assert lo < ratio < hi
    ref = scipy_stats.bootstrap((a, b), lambda x, y, axis: np.median(x, axis=axis) / np.median(y, axis=axis),
                                method="percentile", n_resamples=4000, rng=np.random.default_rng(2),
                                vectorized=True)
    width = hi - lo
    # Different resampling streams: the percentile end points agree to a fraction of the interval width.
    assert lo == pytest.approx(ref.confidence_interval.low, abs=0.25 * width)
    assert hi == pytest.approx(ref.confidence_interval.high, abs=0.25 * width)
    assert 0.7 < lo and hi < 0.9


def test_verdict_only_when_significant():
    rng = np.random.default_rng(4)
    fast = rng.normal(100.0, 2.0, 40)
    slow = rng.normal(110.0, 2.0, 40)
    res = ab_from_samples(fast, slow, "new", "old")
    assert res.significant and res.verdict == "new faster"
    assert res.ratio < 1 and res.ratio_ci_high < 1
    assert res.speedup_of_a == pytest.approx(np.median(slow) / np.median(fast))
    res = ab_from_samples(slow, fast, "new", "old")
    assert res.significant and res.verdict == "old faster"
    same = ab_from_samples(rng.normal(100, 5, 30), rng.normal(100, 5, 30), "x", "y")
    assert same.ratio_ci_low < 1 < same.ratio_ci_high
    assert not same.significant and same.verdict == "no significant difference"
    assert "no significant difference" in same.summary()
    assert set(same.to_dict()["a"]) >= {"median_us", "p10_us", "p90_us", "n"}


def test_ab_compare_interleaved_detects_a_real_difference():
    import time

    order = []

    def short():  # sleeps never return early, and 1 ms vs 20 ms stays apart even on an overloaded machine
        order.append("a")
        time.sleep(0.001)

    def long():
        order.append("b")
        time.sleep(0.020)

    res = ab_compare(short, long, device="cpu", warmup=1, repeats=12, names=("short", "long"))
    assert order == ["a", "b"] * 13  # warmup pair, then A B A B ...
    assert res.a.n == res.b.n == 12
    assert res.verdict == "short faster" and res.ratio_ci_high < 1
    assert res.cliffs_delta < -0.5


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="a: expected finite"):
        st.welch_t_test([1.0, float("nan")], [1.0, 2.0])
    with pytest.raises(ValueError, match="at least 2"):
        st.welch_t_test([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="method"):
        st.mann_whitney_u([1, 2], [3, 4], method="fast")
    with pytest.raises(ValueError, match="confidence"):
        st.bootstrap_ratio_ci([1, 2], [3, 4], confidence=1.5)
    with pytest.raises(ValueError, match="alpha"):
        ab_from_samples([1, 2, 3], [3, 4, 5], alpha=0)
    with pytest.raises(TypeError, match="fn_b"):
        ab_compare(lambda: None, 3, device="cpu")
