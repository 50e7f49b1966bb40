"""stats.intervals, sequential, multiplicity and power: Fieller, confidence sequences,
BH/Holm, design effect and MDE (no Spark).

Oracles are computed here independently: Fieller by brute-force inversion of the test
statistic over a grid of lifts (refined with brentq), the optimal ρ by a root finder and a
numerical minimization, multiple testing by statsmodels' ``multipletests``, power by
statsmodels' ``NormalIndPower``, design effects by one-way ANOVA mean squares, and coverage by
seeded simulations.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import optimize as spo
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower

from cluster_spark.stats.inference import compare
from cluster_spark.stats.intervals import fieller_interval
from cluster_spark.stats.multiplicity import benjamini_hochberg, holm
from cluster_spark.stats.power import MinimumDetectableEffect, design_effect, mde
from cluster_spark.stats.ratio import RatioStats
from cluster_spark.stats.sequential import confidence_sequence, optimal_rho2, sequential_p_value
from cluster_spark.status import Status

# ---------------------------------------------------------------- Fieller


def _ratio_group(rng, n: int, rate: float, spread: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    d = rng.integers(1, 12, size=n).astype(float)
    m = rate * d + spread * rng.normal(0, 2.0, size=n) * np.sqrt(d)
    return m, d


def _by_hand(m: np.ndarray, d: np.ndarray) -> tuple[float, float]:
    """(R, Var(R)) by the linearization, with numpy."""
    r = m.sum() / d.sum()
    return r, np.var((m - r * d) / d.mean(), ddof=1) / len(m)


def _welch_q(v_t: float, v_c: float, n_t: int, n_c: int, alpha: float) -> float:
    df = (v_t + v_c) ** 2 / (v_t**2 / (n_t - 1) + v_c**2 / (n_c - 1))
    return sps.t.ppf(1 - alpha / 2, df)


def _brute_force_fieller(a, b, v_t, v_c, q, grid):
    """Lifts L = (R_T − R_C)/|R_C| not rejected by the Fieller statistic, endpoints refined.

    Under lift L the treatment mean is b + L|b|, so the statistic is
    (a − b − L|b|)² / (v_T + (b + L|b|)²/b² · v_C) ≤ q²; solved here over a grid of L, not via
    the quadratic in ρ.
    """

    def excess(lift):
        rho = 1 + np.sign(b) * lift
        return (a - b - lift * abs(b)) ** 2 - q * q * (v_t + rho * rho * v_c)

    accepted = grid[excess(grid) <= 0]
    lo, hi = accepted.min(), accepted.max()
    step = grid[1] - grid[0]
    return (
        spo.brentq(excess, lo - step, lo, xtol=1e-14),
        spo.brentq(excess, hi, hi + step, xtol=1e-14),
        excess,
    )


@pytest.mark.parametrize(
    ("seed", "alpha", "sign"), [(1, 0.05, 1.0), (2, 0.1, 1.0), (3, 0.05, -1.0)]
)
def test_fieller_matches_brute_force_inversion(seed, alpha, sign):
    rng = np.random.default_rng(seed)
    m_t, d_t = _ratio_group(rng, 25, 1.3, spread=2.0)
    m_c, d_c = _ratio_group(rng, 30, 1.0, spread=2.0)
    m_t, m_c = sign * m_t, sign * m_c  # sign −1: negative control mean, lift = Δ/|R_C|
    (a, v_t), (b, v_c) = _by_hand(m_t, d_t), _by_hand(m_c, d_c)
    q = _welch_q(v_t, v_c, 25, 30, alpha)
    assert b * b > q * q * v_c  # control mean significant: a bounded interval

    grid = np.linspace(-12.0, 12.0, 480_001)
    lo, hi, excess = _brute_force_fieller(a, b, v_t, v_c, q, grid)
    assert excess(grid[0]) > 0 and excess(grid[-1]) > 0  # the grid brackets the interval

    got = fieller_interval(
        RatioStats.from_values(m_t, d_t), RatioStats.from_values(m_c, d_c), alpha=alpha
    )
    assert got is not None
    assert got == pytest.approx((lo, hi), rel=1e-9, abs=1e-12)
    # Fieller is asymmetric around the point estimate, unlike the delta-method interval
    est = (a - b) / abs(b)
    assert lo < est < hi
    assert abs((hi - est) - (est - lo)) > 1e-3


def test_fieller_z_quantile():
    rng = np.random.default_rng(4)
    (m_t, d_t), (m_c, d_c) = _ratio_group(rng, 40, 1.2), _ratio_group(rng, 40, 1.0)
    (a, v_t), (b, v_c) = _by_hand(m_t, d_t), _by_hand(m_c, d_c)
    q = sps.norm.ppf(0.975)
    lo, hi, _ = _brute_force_fieller(a, b, v_t, v_c, q, np.linspace(-2, 3, 100_001))
    got = fieller_interval(
        RatioStats.from_values(m_t, d_t), RatioStats.from_values(m_c, d_c), test="z"
    )
    assert got == pytest.approx((lo, hi), rel=1e-9)


def test_fieller_unbounded_when_control_mean_not_significant():
    rng = np.random.default_rng(5)
    m_t, d_t = _ratio_group(rng, 20, 1.0)
    m_c, d_c = _ratio_group(rng, 20, 0.05, spread=3.0)  # R_C ≈ 0 relative to its noise
    (a, v_t), (b, v_c) = _by_hand(m_t, d_t), _by_hand(m_c, d_c)
    q = _welch_q(v_t, v_c, 20, 20, 0.05)
    assert b * b < q * q * v_c
    t, c = RatioStats.from_values(m_t, d_t), RatioStats.from_values(m_c, d_c)
    assert fieller_interval(t, c) is None
    # the non-rejected set is indeed unbounded: huge lifts of either sign are not rejected
    for lift in (-1e6, 1e6):
        rho = 1 + np.sign(b) * lift
        assert (a - b - lift * abs(b)) ** 2 <= q * q * (v_t + rho * rho * v_c)
    # and R_C = 0 exactly
    zero = RatioStats.from_values([1.0, -1.0, 2.0, -2.0], [1.0, 1.0, 1.0, 1.0])
    assert fieller_interval(t, zero) is None


def test_fieller_close_to_delta_method_for_large_n():
    rng = np.random.default_rng(6)
    (m_t, d_t), (m_c, d_c) = _ratio_group(rng, 20_000, 1.02), _ratio_group(rng, 20_000, 1.0)
    t, c = RatioStats.from_values(m_t, d_t), RatioStats.from_values(m_c, d_c)
    delta = compare(t, c)
    lo, hi = fieller_interval(t, c)
    width = delta.effect_rel_ci_high - delta.effect_rel_ci_low
    assert lo == pytest.approx(delta.effect_rel_ci_low, abs=0.01 * width)
    assert hi == pytest.approx(delta.effect_rel_ci_high, abs=0.01 * width)


def test_fieller_undefined_cases():
    ok = RatioStats.from_values([1.0, 2.0, 3.0], [1.0, 1.0, 1.0])
    assert fieller_interval(ok, RatioStats.from_values([1.0], [1.0])) is None
    assert fieller_interval(ok, RatioStats.from_values([1.0, 2.0], [0.0, 0.0])) is None
    const = RatioStats.from_values([2.0, 2.0, 2.0], [1.0, 1.0, 1.0])
    assert fieller_interval(const, const) is None  # zero variance: no interval, like compare
    with pytest.raises(ValueError):
        fieller_interval(ok, ok, alpha=0.0)


# ---------------------------------------------------------------- confidence sequences


def _u_star(alpha: float) -> float:
    """Root u > 1 of u − log u = 1 − 2 log α (the width-optimal nρ² + 1), by brentq."""
    return spo.brentq(lambda u: u - math.log(u) - 1 + 2 * math.log(alpha), 1 + 1e-12, 1e4)


def _paper_margin(sigma: float, t: float, rho2: float, alpha: float) -> float:
    """σ̂ · sqrt(2(tρ² + 1)/(t²ρ²) · log(sqrt(tρ² + 1)/α)), Waudby-Smith et al."""
    return sigma * math.sqrt(
        2 * (t * rho2 + 1) / (t * t * rho2) * math.log(math.sqrt(t * rho2 + 1) / alpha)
    )


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.2])
def test_optimal_rho2(alpha):
    n_star = 5000
    rho2 = optimal_rho2(n_star, alpha)
    assert rho2 == pytest.approx((_u_star(alpha) - 1) / n_star, rel=1e-10)
    # it minimizes the width at n = n_star (numerically, over log ρ²)
    res = spo.minimize_scalar(
        lambda lr: _paper_margin(1.0, n_star, math.exp(lr), alpha),
        bounds=(math.log(rho2) - 5, math.log(rho2) + 5),
        method="bounded",
        options={"xatol": 1e-10},
    )
    assert math.exp(res.x) == pytest.approx(rho2, rel=1e-3)
    # Howard et al.'s closed-form approximation is close
    approx = (-2 * math.log(alpha) + math.log(1 - 2 * math.log(alpha))) / n_star
    assert approx == pytest.approx(rho2, rel=0.1)
    with pytest.raises(ValueError):
        optimal_rho2(0, alpha)


def test_confidence_sequence_by_hand():
    est, se, n, n_star, alpha = 0.3, 0.1, 500, 2000, 0.05
    rho2 = (_u_star(alpha) - 1) / n_star
    margin = _paper_margin(se * math.sqrt(n), n, rho2, alpha)  # σ̂ = SE·√n
    assert confidence_sequence(est, se, n, alpha, n_star) == pytest.approx(
        (est - margin, est + margin), rel=1e-10
    )
    # only n/N* matters
    assert confidence_sequence(est, se, 5, alpha, 20) == pytest.approx(
        (est - margin, est + margin), rel=1e-10
    )


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.1, 0.3])
def test_confidence_sequence_wider_than_fixed_interval(alpha):
    z = sps.norm.ppf(1 - alpha / 2)
    for n_star in (100, 10_000):
        for n in (1, 10, 100, 1000, 10_000, 1_000_000):
            lo, hi = confidence_sequence(1.0, 0.2, n, alpha, n_star)
            assert hi - 1.0 == pytest.approx(1.0 - lo, rel=1e-12)
            assert hi - 1.0 > z * 0.2


def test_sequential_p_value_dual_to_confidence_sequence():
    alpha, n, n_star, se = 0.05, 800, 2000, 0.5
    _, margin = confidence_sequence(0.0, se, n, alpha, n_star)
    # at the boundary p = α exactly; inside p > α, outside p < α
    assert sequential_p_value(margin, se, n, alpha, n_star) == pytest.approx(alpha, rel=1e-10)
    assert sequential_p_value(-margin, se, n, alpha, n_star) == pytest.approx(alpha, rel=1e-10)
    for est in np.linspace(-3 * margin, 3 * margin, 61):
        p = sequential_p_value(est, se, n, alpha, n_star)
        cs_lo, cs_hi = confidence_sequence(est, se, n, alpha, n_star)
        assert 0 <= p <= 1
        if abs(abs(est) - margin) > 1e-9:
            assert (p <= alpha) == (not cs_lo <= 0 <= cs_hi)
    # by hand: p = min(1, sqrt(1 + nρ²) exp(−z² nρ² / (2(1 + nρ²))))
    nr = n * (_u_star(alpha) - 1) / n_star
    z = 1.3 / se
    hand = min(1.0, math.sqrt(1 + nr) * math.exp(-z * z * nr / (2 * (1 + nr))))
    assert sequential_p_value(1.3, se, n, alpha, n_star) == pytest.approx(hand, rel=1e-12)
    assert sequential_p_value(0.0, se, n, alpha, n_star) == 1.0
    # always more conservative than the fixed-n z test
    assert hand > 2 * sps.norm.sf(z)


def test_sequential_undefined_and_invalid():
    for args in ((None, 0.1), (0.1, None), (0.1, 0.0), (float("nan"), 0.1)):
        assert confidence_sequence(*args, 100, 0.05, 100) is None
        assert sequential_p_value(*args, 100, 0.05, 100) is None
    assert confidence_sequence(0.1, 0.1, 0, 0.05, 100) is None
    with pytest.raises(ValueError):
        confidence_sequence(0.1, 0.1, 10, 1.0, 100)
    with pytest.raises(ValueError):
        sequential_p_value(0.1, 0.1, 10, 0.05, -1)
    with pytest.raises(ValueError):
        confidence_sequence(None, None, 10, 0.05, 0)  # invalid design even without data


def test_time_uniform_coverage_simulation():
    """A/A data peeked at 20 times: the CS rarely ever excludes 0, the fixed CI often does."""
    rng = np.random.default_rng(2023)
    sims, n_max, alpha = 400, 1000, 0.05
    x_t = rng.exponential(1.0, size=(sims, n_max))  # skewed, equal means: true effect 0
    x_c = rng.exponential(1.0, size=(sims, n_max))
    z = sps.norm.ppf(1 - alpha / 2)
    ever_cs = np.zeros(sims, dtype=bool)
    ever_ci = np.zeros(sims, dtype=bool)
    ever_p = np.zeros(sims, dtype=bool)
    for n in range(50, n_max + 1, 50):
        est = x_t[:, :n].mean(axis=1) - x_c[:, :n].mean(axis=1)
        se = np.sqrt((x_t[:, :n].var(axis=1, ddof=1) + x_c[:, :n].var(axis=1, ddof=1)) / n)
        ever_ci |= np.abs(est) > z * se
        for i in range(sims):
            lo, hi = confidence_sequence(est[i], se[i], 2 * n, alpha, 2 * n_max)
            assert hi - lo > 2 * z * se[i]
            ever_cs[i] |= not lo <= 0 <= hi
            ever_p[i] |= sequential_p_value(est[i], se[i], 2 * n, alpha, 2 * n_max) <= alpha
    assert np.array_equal(ever_cs, ever_p)  # running-min p ≤ α iff the CS ever excluded 0
    # time-uniform coverage ≥ 1 − α (binomial sd of the rate ≈ 0.011 at 400 runs)
    assert ever_cs.mean() <= alpha + 0.02
    # the test can fail: peeking at fixed-n intervals breaks coverage
    assert ever_ci.mean() > 0.12


# ---------------------------------------------------------------- multiple testing


@pytest.mark.parametrize("seed", range(5))
def test_bh_and_holm_match_statsmodels(seed):
    rng = np.random.default_rng(seed)
    p = np.concatenate([rng.uniform(0, 1, 12), rng.uniform(0, 0.01, 5), [0.0, 1.0, 0.02, 0.02]])
    rng.shuffle(p)
    assert benjamini_hochberg(list(p)) == pytest.approx(
        list(multipletests(p, method="fdr_bh")[1]), rel=1e-12
    )
    assert holm(list(p)) == pytest.approx(list(multipletests(p, method="holm")[1]), rel=1e-12)


def test_none_passes_through_and_is_not_counted():
    p = [0.01, None, 0.04, 0.03, None, 0.5]
    present = np.array([0.01, 0.04, 0.03, 0.5])
    bh_ref = iter(multipletests(present, method="fdr_bh")[1])
    holm_ref = iter(multipletests(present, method="holm")[1])
    for got, orig in zip(benjamini_hochberg(p), p, strict=True):
        assert got is None if orig is None else got == pytest.approx(next(bh_ref), rel=1e-12)
    for got, orig in zip(holm(p), p, strict=True):
        assert got is None if orig is None else got == pytest.approx(next(holm_ref), rel=1e-12)
    # by hand: BH on (0.01, 0.03, 0.04, 0.5), m = 4: 0.04, 0.04·4/3 → min(0.04, 0.0533) = 0.04
    assert benjamini_hochberg(p)[0] == pytest.approx(0.04)
    assert holm([None, None]) == [None, None]
    assert benjamini_hochberg([]) == []
    with pytest.raises(ValueError):
        holm([0.1, 1.2])
    with pytest.raises(ValueError):
        benjamini_hochberg([float("nan")])


# ---------------------------------------------------------------- design effect and MDE


def _users_in_orgs(seed: int, n_orgs: int, sizes, org_sd: float) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    k = sizes(rng, n_orgs)
    org = np.repeat(np.arange(n_orgs), k)
    y = 10 + rng.normal(0, org_sd, n_orgs)[org] + rng.normal(0, 2.0, len(org))
    return pd.DataFrame({"org": org, "y": y})


def _group_stats(users: pd.DataFrame) -> tuple[RatioStats, float, int]:
    orgs = users.groupby("org")["y"].agg(["sum", "size"])
    stats = RatioStats.from_values(orgs["sum"], orgs["size"])
    return stats, float(users["y"].var(ddof=1)), len(users)


def test_design_effect_equal_clusters_is_anova_ratio():
    """Clusters of k users: Var_delta(R) = s²(cluster means)/n, so DE = MSB / s²_y exactly."""
    k = 8
    users = _users_in_orgs(1, 300, lambda rng, n: np.full(n, k), org_sd=1.5)
    stats, s2, n_users = _group_stats(users)
    cluster_means = users.groupby("org")["y"].mean()
    grand = users["y"].mean()
    msb = k * ((cluster_means - grand) ** 2).sum() / (300 - 1)
    msw = ((users["y"] - users["org"].map(cluster_means)) ** 2).sum() / (n_users - 300)
    de = design_effect(stats, s2, n_users)
    assert de == pytest.approx(msb / s2, rel=1e-10)
    # ≈ Kish's 1 + (k − 1)·ICC with the ANOVA estimator of the ICC
    icc = (msb - msw) / (msb + (k - 1) * msw)
    assert de == pytest.approx(1 + (k - 1) * icc, rel=0.02)
    assert de > 2  # org effect sd 1.5 vs user sd 2 with 8 users per org


def test_design_effect_near_one_without_clustering():
    users = _users_in_orgs(2, 3000, lambda rng, n: rng.integers(1, 10, n), org_sd=0.0)
    stats, s2, n_users = _group_stats(users)
    assert design_effect(stats, s2, n_users) == pytest.approx(1.0, abs=0.1)


def test_design_effect_of_a_mean_metric_is_one():
    rng = np.random.default_rng(3)
    m = rng.gamma(2.0, 3.0, 200)
    stats = RatioStats.from_values(m, np.ones(200))
    assert design_effect(stats, float(np.var(m, ddof=1)), 200) == pytest.approx(1.0, rel=1e-12)


def test_design_effect_undefined():
    ok = RatioStats.from_values([1.0, 2.0, 4.0], [1.0, 1.0, 2.0])
    assert design_effect(ok, None, 4) is None
    assert design_effect(ok, 0.0, 4) is None
    assert design_effect(ok, 1.0, 0) is None
    assert design_effect(RatioStats.from_values([1.0], [1.0]), 1.0, 1) is None


@pytest.mark.parametrize(("alpha", "power", "n"), [(0.05, 0.8, 1000), (0.01, 0.9, 250)])
def test_mde_matches_statsmodels_power(alpha, power, n):
    v = 7.3
    got = mde(v, n, alpha=alpha, power=power, baseline=-2.5)
    es = NormalIndPower().solve_power(
        effect_size=None, nobs1=n, alpha=alpha, power=power, ratio=1.0, alternative="two-sided"
    )
    assert got.absolute == pytest.approx(es * math.sqrt(v), rel=1e-4)  # far tail ignored
    hand = (sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power)) * math.sqrt(2 * v / n)
    assert got.absolute == pytest.approx(hand, rel=1e-12)
    assert got.relative == pytest.approx(hand / 2.5, rel=1e-12)


def test_mde_undefined_and_invalid():
    assert mde(4.0, 100) == MinimumDetectableEffect(mde(4.0, 100).absolute, None)
    assert mde(4.0, 100, baseline=0.0).relative is None
    assert mde(None, 100) == MinimumDetectableEffect()
    assert mde(-1.0, 100) == MinimumDetectableEffect()
    assert mde(4.0, 0) == MinimumDetectableEffect()
    assert mde(0.0, 10).absolute == 0.0
    with pytest.raises(ValueError):
        mde(4.0, 100, power=1.0)
    with pytest.raises(ValueError):
        mde(4.0, 100, alpha=-0.1)


# ---------------------------------------------------------------- A/A simulation


def test_aa_simulation_coverage_of_clustered_ratio_metric():
    """400 A/A experiments of orgs with 1..20 users: the 95% delta-method CIs of the absolute
    and relative effects cover 0 about 95% of the time (binomial sd ≈ 0.011), and the
    sequential intervals are always wider than the fixed ones."""
    rng = np.random.default_rng(20240601)
    sims, n_orgs, alpha = 400, 120, 0.05
    covered_abs = covered_rel = 0
    for _ in range(sims):
        groups = []
        for _g in range(2):
            d = rng.integers(1, 21, n_orgs).astype(float)
            rate = rng.gamma(4.0, 0.5, n_orgs)  # org-level random effect on the per-user rate
            m = rng.poisson(rate * d).astype(float)
            groups.append(RatioStats.from_values(m, d))
        c = compare(groups[0], groups[1], alpha=alpha)
        assert c.status == Status.OK
        covered_abs += c.effect_abs_ci_low <= 0 <= c.effect_abs_ci_high
        covered_rel += c.effect_rel_ci_low <= 0 <= c.effect_rel_ci_high
        lo, hi = confidence_sequence(
            c.effect_abs, c.effect_abs_stderr, 2 * n_orgs, alpha, n_star=4 * n_orgs
        )
        assert lo < c.effect_abs_ci_low and hi > c.effect_abs_ci_high
    assert 0.92 <= covered_abs / sims <= 0.98
    assert 0.92 <= covered_rel / sims <= 0.98
