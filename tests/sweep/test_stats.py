"""The sweep statistics on synthetic results with known answers."""

import math

import numpy as np
import pytest

from t5x_lite.sweep import stats


def test_summary_is_mean_and_sample_std():
    s = stats.summarize([0.60, 0.62, 0.64, 0.66])
    assert s.n == 4
    assert s.mean == pytest.approx(0.63)
    # sum of squares 0.0009 + 0.0001 + 0.0001 + 0.0009 = 0.002, / (n - 1) = 3
    assert s.std == pytest.approx(math.sqrt(0.002 / 3))
    assert s.format() == "63.0 ± 2.6 (n=4)"
    assert stats.summarize([0.5]).format() == "50.0 (n=1)"
    assert math.isnan(stats.summarize([0.5]).std)
    assert stats.summarize([]).format() == "-"


def test_expanded_alpha_matches_hesterberg():
    # n = 5: sqrt(5/4) * t(0.975, 4) = 1.1180 * 2.7764 = 3.1041 -> alpha' = 2 * sf(3.1041)
    assert stats.expanded_alpha(5) == pytest.approx(0.001909, rel=1e-3)
    # Large n: the correction vanishes.
    assert stats.expanded_alpha(10_000) == pytest.approx(0.05, rel=1e-2)


def test_sign_flip_p_value_exact():
    # All 5 differences positive: only the all-plus and all-minus patterns are as
    # extreme as observed, 2 of 32.
    assert stats.sign_flip_p_value([1, 2, 3, 4, 5]) == pytest.approx(2 / 32)
    # [1, 1, -1]: |sum| = 1; patterns with |sum| >= 1 are all 8 (every sum is odd).
    assert stats.sign_flip_p_value([1, 1, -1]) == 1.0
    # 6 positive: 2 / 64.
    assert stats.sign_flip_p_value([0.1, 0.2, 0.1, 0.3, 0.2, 0.1]) == pytest.approx(2 / 64)
    # [0.1, 0.2, 0.3]: sums +-0.6 are as extreme as observed; +-0.4, +-0.2, 0, 0 are not.
    assert stats.sign_flip_p_value([0.1, 0.2, 0.3]) == pytest.approx(2 / 8)
    assert stats.sign_flip_p_value([0.7, 0.1, 0.2, 0.4]) == pytest.approx(2 / 16)
    # A tie (the same accuracy on one seed) flips to itself: patterns tying the observed
    # sum count as extreme, 4 of 16.
    assert stats.sign_flip_p_value([0.1, 0.2, 0.3, 0.0]) == pytest.approx(4 / 16)


@pytest.mark.parametrize(
    "n, kind, low, high",
    # The coverage measured when this was written (stats.py's docstring): 91.9% and
    # 94.2% (normal), 91.4% and 93.8% (t, 3 df); the bounds allow 1,000 trials' noise
    # (a standard error of ~0.8 points).
    [(5, "normal", 0.895, 0.97), (5, "t3", 0.89, 0.97), (10, "normal", 0.92, 0.975),
     (10, "t3", 0.915, 0.975)],
)  # fmt: skip
def test_interval_coverage_is_near_nominal(n, kind, low, high):
    """Paired differences with mean 0: the share of 1,000 synthetic studies whose 95%
    interval holds 0."""
    rng = np.random.default_rng(0)
    hits = 0
    for trial in range(1000):
        diffs = rng.normal(size=n) if kind == "normal" else rng.standard_t(3, size=n)
        lo, hi = stats.bootstrap_interval(diffs, seed=trial, resamples=4000)
        hits += lo <= 0 <= hi
    assert low <= hits / 1000 <= high


def test_a_known_difference_is_detected():
    """+5 points with a 1.5-point paired spread over 8 seeds: resolved, and the interval
    holds the true difference."""
    rng = np.random.default_rng(1)
    baseline = 0.70 + rng.normal(0, 0.02, size=8)
    row = baseline + 0.05 + rng.normal(0, 0.015, size=8)
    c = stats.compare(row, baseline)
    assert c.n == 8 and c.resolved and c.verdict == "resolved: higher"
    assert c.low < 0.05 < c.high
    assert c.p_value == pytest.approx(2 / 256)  # every difference positive


def test_a_null_difference_is_not_detected():
    """No true difference: across 400 synthetic 8-seed studies, at most 5% resolve (the
    permutation test's guarantee) plus sampling slack."""
    rng = np.random.default_rng(2)
    resolved = 0
    for trial in range(400):
        baseline = 0.70 + rng.normal(0, 0.03, size=8)
        row = 0.70 + rng.normal(0, 0.03, size=8)
        resolved += stats.compare(row, baseline, seed=trial).resolved
    assert resolved <= 28  # 7%


def test_pairs_need_both_replicates_and_few_pairs_resolve_nothing():
    c = stats.compare([0.9, None, 0.8, 0.7], [0.5, 0.6, None, 0.4])
    assert c.n == 2 and c.diff == pytest.approx(0.35)
    assert not c.resolved and c.verdict.startswith("too few seeds")
    # 5 large, consistent differences are still not a claim: the smallest p that 5 pairs
    # can give is 2/32 = 0.0625.
    c = stats.compare([0.9, 0.91, 0.92, 0.93, 0.94], [0.5] * 5)
    assert c.low > 0 and c.p_value == pytest.approx(0.0625) and not c.resolved
    assert stats.MIN_PAIRS == 6
    assert stats.compare([0.9, 0.91, 0.92, 0.93, 0.94, 0.95], [0.5] * 6).resolved
    assert stats.compare([], []).n == 0
    assert stats.compare([0.9], [0.5]).format() == "+40.0 (n=1)"
