"""Clustered quantile metrics (`stats.quantile`, no Spark) against hand values, a cluster
bootstrap over assignment units (numpy) and an A/A simulation; the naive (iid) standard
error on the same data is shown to be too small, so the cluster-robust one is needed."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from cluster_spark.stats.quantile import (
    Z0,
    QuantileStats,
    compare_quantiles,
    outer_probabilities,
)
from cluster_spark.stats.ratio import RatioStats
from cluster_spark.status import Status


def _clusters(rng, n_units: int) -> list[np.ndarray]:
    """Users with 1–40 sessions whose lengths share a user effect (log-normal): values of
    one user are correlated, as session lengths are."""
    sizes = np.minimum(1 + rng.poisson(rng.lognormal(1.5, 0.8, n_units)), 40)
    effects = rng.normal(0.0, 0.6, n_units)
    values = zip(effects, sizes, strict=True)
    return [np.exp(1.0 + u + rng.normal(0.0, 0.5, k)) for u, k in values]


def _staged(units: list[np.ndarray], p: float) -> QuantileStats:
    """What staging computes, in numpy: Q̂ (inverse CDF, as Spark's percentile_approx), the
    per-unit counts at or below it, and the sample quantiles at the iid outer
    probabilities."""
    pooled = np.concatenate(units)
    est = float(np.quantile(pooled, p, method="inverted_cdf"))
    indicator = RatioStats.from_values([np.sum(u <= est) for u in units], [len(u) for u in units])
    lo, hi = outer_probabilities(p, len(pooled))
    low, high = (float(np.quantile(pooled, x, method="inverted_cdf")) for x in (lo, hi))
    return QuantileStats(len(units), p, est, low, high, indicator)


def test_outer_probabilities_by_hand():
    # p = 0.5, N = 100: half-width 1.959964 · sqrt(0.25/100) = 0.0979982
    assert outer_probabilities(0.5, 100) == pytest.approx((0.4020018, 0.5979982), abs=1e-7)
    assert outer_probabilities(0.9, 4) == pytest.approx((0.9 - Z0 * 0.15, 1.0))  # clipped
    assert outer_probabilities(0.5, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        outer_probabilities(1.0, 10)


def test_design_effect_and_stderr_by_hand():
    # units [1, 2, 3] and [4, 5], Q̂(0.5) = 3: I = (3, 0), N = (3, 2), r = 3/5;
    # I − r·N = (1.2, −1.2): sample variance 2.88, over N̄² = 6.25 and n = 2: σ² = 0.2304;
    # iid: r(1 − r)/N = 0.24/5 = 0.048, so Deff = 4.8
    s = QuantileStats(2, 0.5, 3.0, 2.0, 4.0, RatioStats.from_values([3, 0], [3, 2]))
    assert s.design_effect == pytest.approx(4.8, rel=1e-12)
    assert s.stderr == pytest.approx(2 / (2 * 1.959963984540054) * math.sqrt(4.8), rel=1e-12)
    assert s.n_values == 5
    with pytest.raises(TypeError, match="do not merge"):
        s + s


def test_comparison_by_hand():
    z = sps.norm.ppf(0.975)
    none = RatioStats.empty()  # design effect undefined: the iid standard error
    t = QuantileStats(50, 0.9, 12.0, 10.0, 14.0, none)
    c = QuantileStats(50, 0.9, 10.0, 9.0, 11.0, none)
    se_t, se_c = 4 / (2 * z), 2 / (2 * z)
    got = compare_quantiles(t, c)
    se = math.hypot(se_t, se_c)
    assert got.effect_abs == 2.0
    assert got.effect_abs_stderr == pytest.approx(se, rel=1e-12)
    assert got.p_value == pytest.approx(2 * sps.norm.sf(2 / se), rel=1e-12)
    assert (got.effect_abs_ci_low, got.effect_abs_ci_high) == pytest.approx(
        (2 - z * se, 2 + z * se), rel=1e-12
    )
    se_rel = math.sqrt(se_t**2 + 1.2**2 * se_c**2) / 10
    assert got.effect_rel == pytest.approx(0.2) and got.effect_rel_stderr == pytest.approx(se_rel)
    assert got.df is None and got.status == Status.OK
    few = QuantileStats(1, 0.9, 12.0, 12.0, 12.0, none)
    assert compare_quantiles(few, c).status == Status.TOO_FEW_UNITS


@pytest.mark.parametrize("p", [0.5, 0.9])
def test_standard_error_matches_a_cluster_bootstrap_and_the_naive_one_is_too_small(p):
    """Four seeded data sets of 200 users; per data set 2,000 bootstrap resamples of the
    assignment units. One data set's SE estimate varies by about ±10 % (it rests on a few
    dozen order statistics), so the mean ratio over the four is what is asserted."""
    ratios, naive_ratios = [], []
    for seed in range(4):
        rng = np.random.default_rng(seed)
        units = _clusters(rng, 200)
        se = _staged(units, p).stderr
        boot = []
        for _ in range(2000):  # resample assignment units (users) with replacement
            pick = rng.integers(0, len(units), len(units))
            pooled = np.concatenate([units[i] for i in pick])
            boot.append(np.quantile(pooled, p, method="inverted_cdf"))
        se_boot = float(np.std(boot, ddof=1))
        ratios.append(se / se_boot)
        # iid: σ_p² = p(1 − p)/N over all values, as if sessions were independent
        pooled = np.concatenate(units)
        half = sps.norm.ppf(0.975) * math.sqrt(p * (1 - p) / len(pooled))
        low, high = (np.quantile(pooled, x, method="inverted_cdf") for x in (p - half, p + half))
        naive_ratios.append((high - low) / (2 * sps.norm.ppf(0.975)) / se_boot)
    assert np.mean(ratios) == pytest.approx(1.0, abs=0.1), ratios
    assert all(0.75 < r < 1.25 for r in ratios), ratios
    assert max(naive_ratios) < 0.75, naive_ratios  # the iid SE is far too small


def test_a_a_coverage_at_200_clusters():
    """1,000 seeded A/A experiments of 100 users an arm: the 95 % CI of Δ covers 0."""
    rng = np.random.default_rng(2027)
    covered = 0
    for _ in range(1000):
        t, c = (_staged(_clusters(rng, 100), 0.9) for _ in range(2))
        got = compare_quantiles(t, c)
        covered += got.effect_abs_ci_low <= 0 <= got.effect_abs_ci_high
    assert 0.93 <= covered / 1000 <= 0.97, covered
