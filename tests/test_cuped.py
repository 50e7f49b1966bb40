"""CupedStats / compare_cuped against numpy, numerical gradients and statsmodels (no Spark).

Oracles, each computed here independently of cluster_spark.stats.cuped:
- unit-level influence values r_i = (M_i − R D_i)/d̄ and p_i = (X_i − P Y_i)/ȳ (numpy):
  V_R = var(r), V_P = var(p), C = cov(r, p), Var(Δ_adj) = Σ_g var(r − θp)_g / n_g;
- the relative lift's variance from a central-difference gradient of the lift as a function of
  both groups' means (m̄, d̄, x̄, ȳ) and numpy's covariance matrices;
- statsmodels OLS: for a mean metric with equal group sizes, y ~ treat + x_centered gives the
  same θ and effect exactly and the same SE up to O(1/n) (HC0); for a clustered ratio metric
  with Y = D, the CR0 cluster-robust SE of (y − θx) ~ treat equals the 1/n-moment SE exactly
  (Deng, Lu & Qin 2021, applied to the adjusted outcome).
"""

from __future__ import annotations

import dataclasses
import math
from functools import reduce

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats as sps

from cluster_spark.stats.cuped import (
    CSS_FIELDS,
    CupedComparison,
    CupedStats,
    compare_cuped,
)
from cluster_spark.stats.inference import Comparison, compare
from cluster_spark.stats.ratio import RatioStats
from cluster_spark.status import CupedStatus, Status

EFFECT_FIELDS = [f.name for f in dataclasses.fields(Comparison) if f.name != "status"]


def _assert_no_nan(c: CupedComparison) -> None:
    for f in dataclasses.fields(c):
        v = getattr(c, f.name)
        if isinstance(v, float):
            assert math.isfinite(v), f.name


def _orgs(seed: int, n_orgs: int, lift: float = 1.0, noise: float = 1.0) -> dict[str, np.ndarray]:
    """Organisations with 1..15 users; pre-period values strongly predict post-period values."""
    rng = np.random.default_rng(seed)
    d = rng.integers(1, 16, size=n_orgs).astype(float)
    y = np.maximum(d + rng.integers(-2, 3, size=n_orgs), 1.0)  # pre-period users differ a bit
    level = rng.gamma(2.0, 5.0, size=n_orgs)  # org's per-user value
    x = level * y + rng.normal(0, 2.0, size=n_orgs) * np.sqrt(y)
    m = lift * level * d + noise * rng.normal(0, 3.0, size=n_orgs) * np.sqrt(d)
    return {"m": m, "d": d, "x": x, "y": y}


def _stats(g: dict[str, np.ndarray]) -> CupedStats:
    return CupedStats.from_values(g["m"], g["d"], g["x"], g["y"])


# ---------------------------------------------------------------- CupedStats


def test_fields_match_numpy():
    g = _orgs(1, 60)
    s = _stats(g)
    data = np.vstack([g["m"], g["d"], g["x"], g["y"]])
    cov = np.cov(data, ddof=1)
    assert s.n == 60
    assert (s.mean_m, s.mean_d, s.mean_x, s.mean_y) == pytest.approx(data.mean(axis=1), rel=1e-13)
    assert np.allclose(np.array(s.covariance), cov, rtol=1e-12, atol=0)
    idx = {"m": 0, "d": 1, "x": 2, "y": 3}
    for name, value in zip(CSS_FIELDS, s.css, strict=True):
        i, j = idx[name[4]], idx[name[5]]
        assert value == pytest.approx(cov[i, j] * 59, rel=1e-12), name
    assert s.ratio == pytest.approx(g["m"].sum() / g["d"].sum(), rel=1e-14)
    assert s.pre_ratio == pytest.approx(g["x"].sum() / g["y"].sum(), rel=1e-14)
    ref = RatioStats.from_values(g["m"], g["d"])
    assert s.ratio_stats.unit_variance == pytest.approx(ref.unit_variance, rel=1e-12)
    assert s.pre_stats.ratio == pytest.approx(s.pre_ratio, rel=1e-14)


def test_hand_example():
    # M = (1, 2, 3), D = (1, 1, 2), X = (2, 2, 5), Y = (1, 2, 3); n = 3
    # means 2, 4/3, 3, 2; R = 6/4 = 1.5, P = 9/6 = 1.5
    # deviations: M (−1, 0, 1), D (−1/3, −1/3, 2/3), X (−1, −1, 2), Y (−1, 0, 1)
    # css_xx = 1 + 1 + 4 = 6, css_yy = 2, css_mx = 1 + 0 + 2 = 3, css_my = 2,
    # css_dx = 1/3 + 1/3 + 4/3 = 2, css_dy = 1/3 + 0 + 2/3 = 1, css_xy = 1 + 0 + 2 = 3
    s = CupedStats.from_values([1, 2, 3], [1, 1, 2], [2, 2, 5], [1, 2, 3])
    hand = {"css_mm": 2, "css_dd": 2 / 3, "css_xx": 6, "css_yy": 2, "css_md": 1}
    hand |= {"css_mx": 3, "css_my": 2, "css_dx": 2, "css_dy": 1, "css_xy": 3}
    assert {k: getattr(s, k) for k in hand} == pytest.approx(hand, rel=1e-14)
    assert (s.ratio, s.pre_ratio) == pytest.approx((1.5, 1.5), rel=1e-15)
    # V_P = (s_xx − 2P s_xy + P² s_yy)/ȳ² = (3 − 4.5 + 2.25)/4 = 0.1875
    # linearized p = (X − 1.5 Y)/2 = (0.25, −0.5, 0.25): sample variance 0.375/2 = 0.1875
    assert s.quadratic_form(s.gradient_p()) == pytest.approx(0.1875, rel=1e-14)
    # C = (s_mx − P s_my − R s_dx + RP s_dy)/(d̄ȳ) = (1.5 − 1.5 − 1.5 + 1.125)/(8/3) = −0.140625
    # check: r = (M − 1.5 D)·3/4 = (−0.375, 0.375, 0); cov(r, p) = (−0.09375 − 0.1875)/2
    assert s.quadratic_form(s.gradient_r(), s.gradient_p()) == pytest.approx(-0.140625, rel=1e-14)


def test_undefined_cases():
    e = CupedStats.empty()
    assert CupedStats.from_values([], [], [], []) == e
    assert (e.ratio, e.pre_ratio, e.covariance, e.gradient_r(), e.gradient_p()) == (None,) * 5
    one = CupedStats.from_values([1.0], [1.0], [1.0], [1.0])
    assert one.covariance is None
    assert one.quadratic_form((1.0, 0.0, 0.0, 0.0)) is None
    with pytest.raises(ValueError):
        CupedStats.from_values([1.0, 2.0], [1.0, 1.0], [1.0], [1.0, 1.0])


values = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
quads = st.lists(st.tuples(values, values, values, values), max_size=20)


def _of(rows: list[tuple[float, float, float, float]]) -> CupedStats:
    return CupedStats.from_values(*([r[k] for r in rows] for k in range(4)))


def _assert_matches_numpy(s: CupedStats, rows: list[tuple[float, float, float, float]]):
    """Independent numpy reference; rtol 1e-9 with an absolute floor at the data's scale."""
    assert s.n == len(rows)
    if not rows:
        assert s == CupedStats.empty()
        return
    data = np.array(rows, dtype=float).T
    scale = 1.0 + float((data**2).sum())
    means = data.mean(axis=1)
    dev = data - means[:, None]
    idx = {"m": 0, "d": 1, "x": 2, "y": 3}
    for v, mean in zip("mdxy", means, strict=True):
        assert getattr(s, f"mean_{v}") == pytest.approx(mean, rel=1e-9, abs=1e-9 * scale**0.5)
    for name in CSS_FIELDS:
        ref = float((dev[idx[name[4]]] * dev[idx[name[5]]]).sum())
        assert getattr(s, name) == pytest.approx(ref, rel=1e-9, abs=1e-12 * scale), name


@given(quads, quads)
def test_merge_equals_union(a, b):
    _assert_matches_numpy(_of(a) + _of(b), a + b)


@given(st.lists(quads, max_size=5))
def test_merge_of_many_parts(parts):
    merged = reduce(CupedStats.__add__, map(_of, parts), CupedStats.empty())
    _assert_matches_numpy(merged, [row for part in parts for row in part])


@given(quads)
def test_empty_is_identity(a):
    s = _of(a)
    assert s + CupedStats.empty() == s
    assert CupedStats.empty() + s == s


def test_merge_keeps_precision_with_large_means():
    rng = np.random.default_rng(5)
    cols = [1e8 + rng.normal(0, 1, 400) for _ in range(4)]
    parts = [CupedStats.from_values(*(c[i : i + 50] for c in cols)) for i in range(0, 400, 50)]
    merged = reduce(CupedStats.__add__, parts)
    direct = CupedStats.from_values(*cols)
    for name in CSS_FIELDS:
        assert getattr(merged, name) == pytest.approx(getattr(direct, name), rel=1e-6), name


# ---------------------------------------------------------------- compare_cuped: oracles


def _influence(g: dict[str, np.ndarray]) -> tuple[float, float, np.ndarray, np.ndarray]:
    """(R, P, r_i, p_i) with r_i = (M_i − R D_i)/d̄ and p_i = (X_i − P Y_i)/ȳ."""
    r_hat, p_hat = g["m"].sum() / g["d"].sum(), g["x"].sum() / g["y"].sum()
    r = (g["m"] - r_hat * g["d"]) / g["d"].mean()
    p = (g["x"] - p_hat * g["y"]) / g["y"].mean()
    return r_hat, p_hat, r, p


def _lift(mu_t: np.ndarray, mu_c: np.ndarray, theta: float) -> float:
    """Relative lift as a function of both groups' means (m̄, d̄, x̄, ȳ), θ fixed."""
    adj_t = mu_t[0] / mu_t[1] - theta * mu_t[2] / mu_t[3]
    adj_c = mu_c[0] / mu_c[1] - theta * mu_c[2] / mu_c[3]
    return (adj_t - adj_c) / abs(mu_c[0] / mu_c[1])


def _numeric_gradient(f, mu: np.ndarray) -> np.ndarray:
    grad = np.empty(4)
    for i in range(4):
        h = 1e-5 * abs(mu[i])
        up, down = mu.copy(), mu.copy()
        up[i] += h
        down[i] -= h
        grad[i] = (f(up) - f(down)) / (2 * h)
    return grad


@pytest.mark.parametrize(("seed", "alpha", "test"), [(1, 0.05, "welch"), (2, 0.1, "z")])
def test_matches_influence_function_oracle(seed, alpha, test):
    gt, gc = _orgs(seed, 150, lift=1.04), _orgs(seed + 100, 190)
    res = compare_cuped(_stats(gt), _stats(gc), alpha=alpha, test=test)
    assert res.status == Status.OK
    assert res.adjusted

    (r_t, p_t, rt, pt), (r_c, p_c, rc, pc) = _influence(gt), _influence(gc)
    n_t, n_c = len(rt), len(rc)
    cov_t, cov_c = np.cov(rt, pt, ddof=1), np.cov(rc, pc, ddof=1)
    # θ minimizing Var(Δ_adj) = Σ_g Var(r_g − θ p_g)/n_g: the per-group moments weighted by 1/n
    theta = (cov_t[0, 1] / n_t + cov_c[0, 1] / n_c) / (cov_t[1, 1] / n_t + cov_c[1, 1] / n_c)
    a = np.var(rt - theta * pt, ddof=1) / n_t
    b = np.var(rc - theta * pc, ddof=1) / n_c
    var_unadj = np.var(rt, ddof=1) / n_t + np.var(rc, ddof=1) / n_c
    effect = (r_t - theta * p_t) - (r_c - theta * p_c)
    se = math.sqrt(a + b)

    assert res.theta == pytest.approx(theta, rel=1e-10)
    assert res.effect_abs == pytest.approx(effect, rel=1e-10)
    assert res.effect_abs_stderr == pytest.approx(se, rel=1e-10)
    assert res.variance_reduction == pytest.approx(1 - (a + b) / var_unadj, rel=1e-10)
    assert res.variance_reduction > 0.5  # strong pre-period predictor

    if test == "welch":
        df = (a + b) ** 2 / (a**2 / (n_t - 1) + b**2 / (n_c - 1))
        assert res.df == pytest.approx(df, rel=1e-10)
        dist = sps.t(df)
    else:
        assert res.df is None
        dist = sps.norm()
    q = dist.ppf(1 - alpha / 2)
    assert (res.effect_abs_ci_low, res.effect_abs_ci_high) == pytest.approx(
        (effect - q * se, effect + q * se), rel=1e-10
    )
    assert res.p_value == pytest.approx(2 * dist.sf(abs(effect) / se), rel=1e-8)

    # relative lift: delta method with a numerical gradient over both groups' means
    mu_t = np.array([gt[k].mean() for k in "mdxy"])
    mu_c = np.array([gc[k].mean() for k in "mdxy"])
    grad_t = _numeric_gradient(lambda mu: _lift(mu, mu_c, theta), mu_t)
    grad_c = _numeric_gradient(lambda mu: _lift(mu_t, mu, theta), mu_c)
    lam_t = np.cov(np.vstack([gt[k] for k in "mdxy"]), ddof=1)
    lam_c = np.cov(np.vstack([gc[k] for k in "mdxy"]), ddof=1)
    var_rel = grad_t @ lam_t @ grad_t / n_t + grad_c @ lam_c @ grad_c / n_c
    rel = effect / abs(r_c)
    se_rel = math.sqrt(var_rel)
    assert res.effect_rel == pytest.approx(rel, rel=1e-10)
    assert res.effect_rel_stderr == pytest.approx(se_rel, rel=1e-6)
    assert (res.effect_rel_ci_low, res.effect_rel_ci_high) == pytest.approx(
        (rel - q * se_rel, rel + q * se_rel), rel=1e-6
    )
    assert res.p_value_rel == pytest.approx(2 * dist.sf(abs(rel) / se_rel), rel=1e-5)

    # the unadjusted comparison rides along, equal to inference.compare on (M, D)
    ref = compare(
        RatioStats.from_values(gt["m"], gt["d"]),
        RatioStats.from_values(gc["m"], gc["d"]),
        alpha=alpha,
        test=test,
    )
    assert res.unadjusted.status == ref.status
    for name in EFFECT_FIELDS:
        expected = getattr(ref, name)
        got = getattr(res.unadjusted, name)
        assert got is expected is None or got == pytest.approx(expected, rel=1e-12), name
    _assert_no_nan(res)


def test_negative_control_mean_relative_gradient():
    # all values negated: the lift flips sign (divided by |R_C|), SEs are unchanged
    gt, gc = _orgs(3, 120, lift=1.1), _orgs(4, 130)
    neg = {k: (-v if k in "mx" else v) for k, v in gt.items()}
    neg_c = {k: (-v if k in "mx" else v) for k, v in gc.items()}
    pos, res = compare_cuped(_stats(gt), _stats(gc)), compare_cuped(_stats(neg), _stats(neg_c))
    assert res.theta == pytest.approx(pos.theta, rel=1e-10)
    assert res.effect_abs == pytest.approx(-pos.effect_abs, rel=1e-10)
    assert res.effect_rel == pytest.approx(-pos.effect_rel, rel=1e-10)
    assert res.effect_rel_stderr == pytest.approx(pos.effect_rel_stderr, rel=1e-10)
    # and the relative SE matches the numerical gradient for R_C < 0 too
    theta = res.theta
    mu_t = np.array([neg[k].mean() for k in "mdxy"])
    mu_c = np.array([neg_c[k].mean() for k in "mdxy"])
    grad_c = _numeric_gradient(lambda mu: _lift(mu_t, mu, theta), mu_c)
    grad_t = _numeric_gradient(lambda mu: _lift(mu, mu_c, theta), mu_t)
    lam_t = np.cov(np.vstack([neg[k] for k in "mdxy"]), ddof=1)
    lam_c = np.cov(np.vstack([neg_c[k] for k in "mdxy"]), ddof=1)
    var_rel = grad_t @ lam_t @ grad_t / 120 + grad_c @ lam_c @ grad_c / 130
    assert res.effect_rel_stderr == pytest.approx(math.sqrt(var_rel), rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_mean_metric_equals_ols_with_centered_covariate(seed):
    """D = Y = 1, equal group sizes: θ is OLS's within-group slope of y on x, the effect is
    OLS's treat coefficient exactly, and the SE matches HC0 up to O(1/n) (the HC0 sandwich also
    counts the estimation of the slope, which the CUPED variance treats as fixed). With unequal
    group sizes the two θ differ (METHODS pools per-group covariances, OLS pooled sums)."""
    rng = np.random.default_rng(seed)
    n = 3000
    x = rng.gamma(3.0, 2.0, size=2 * n)
    treat = np.repeat([1, 0], n)
    y = 5 + 0.8 * x + 0.3 * treat + rng.normal(0, 2.0, size=2 * n)
    data = pd.DataFrame({"y": y, "treat": treat, "xc": x - x.mean()})
    fit = smf.ols("y ~ treat + xc", data=data).fit(cov_type="HC0")

    ones = np.ones(n)
    t = CupedStats.from_values(y[:n], ones, x[:n], ones)
    c = CupedStats.from_values(y[n:], ones, x[n:], ones)
    res = compare_cuped(t, c)
    assert res.status == Status.OK
    assert res.theta == pytest.approx(fit.params["xc"], rel=1e-10)
    assert res.effect_abs == pytest.approx(fit.params["treat"], rel=1e-10)
    se_1n = res.effect_abs_stderr * math.sqrt((n - 1) / n)  # HC0 uses 1/n moments
    assert se_1n == pytest.approx(fit.bse["treat"], rel=2e-3)
    # CUPED: the variance falls by about corr(x, y)² within groups
    rho = np.corrcoef(x[:n], y[:n])[0, 1]
    assert res.variance_reduction == pytest.approx(rho**2, abs=0.03)


@pytest.mark.parametrize("seed", [3, 4])
def test_clustered_ratio_metric_cr0_oracle(seed):
    """Y = D (users per org): with θ fixed, Δ_adj is the OLS treat coefficient of the user-level
    outcome y − θx, and the adjusted SE with 1/n moments is its CR0 SE clustered by org."""
    rng = np.random.default_rng(seed)
    n_orgs = 120
    treat_of = rng.permutation(np.repeat([1, 0], n_orgs // 2))
    frames = []
    for org in range(n_orgs):
        k = int(rng.integers(1, 21))
        effect = rng.normal(0, 3.0)
        pre = 20 + effect + rng.gamma(2.0, 3.0, size=k)
        post = 0.9 * pre + 1.5 * treat_of[org] + rng.normal(0, 2.0, size=k)
        frames.append(pd.DataFrame({"org": org, "treat": treat_of[org], "y": post, "x": pre}))
    users = pd.concat(frames, ignore_index=True)
    orgs = users.groupby("org").agg(
        treat=("treat", "first"), m=("y", "sum"), x=("x", "sum"), d=("y", "size")
    )
    groups = {
        g: CupedStats.from_values(o["m"], o["d"], o["x"], o["d"]) for g, o in orgs.groupby("treat")
    }
    res = compare_cuped(groups[1], groups[0])
    assert res.status == Status.OK
    assert res.variance_reduction > 0.3

    users["adj"] = users["y"] - res.theta * users["x"]
    fit = smf.ols("adj ~ treat", data=users).fit(
        cov_type="cluster", cov_kwds={"groups": users["org"], "use_correction": False}
    )
    half = n_orgs // 2  # equal group sizes: the 1/n factor is common to both groups
    assert res.effect_abs == pytest.approx(fit.params["treat"], rel=1e-10)
    assert res.effect_abs_stderr * math.sqrt((half - 1) / half) == pytest.approx(
        fit.bse["treat"], rel=1e-8
    )


def test_variance_reduction_grows_with_correlation():
    reductions = []
    for noise in (8.0, 2.0, 0.5):
        res = compare_cuped(_stats(_orgs(7, 400, noise=noise)), _stats(_orgs(8, 400, noise=noise)))
        assert res.adjusted
        assert res.status == Status.OK
        assert res.effect_abs_stderr < res.unadjusted.effect_abs_stderr
        reductions.append(res.variance_reduction)
    assert 0 < reductions[0] < reductions[1] < reductions[2] < 1


# ---------------------------------------------------------------- fallbacks and statuses


def _assert_is_unadjusted(res: CupedComparison, t: CupedStats, c: CupedStats, status: str):
    ref = compare(t.ratio_stats, c.ratio_stats)
    assert res.cuped_status == status
    assert res.status == ref.status  # the status of the numbers reported: the unadjusted ones
    assert res.control_unit_variance is None
    assert not res.adjusted
    assert res.unadjusted == ref
    for name in EFFECT_FIELDS:
        assert getattr(res, name) == getattr(ref, name), name
    _assert_no_nan(res)


def test_fallback_when_pre_period_denominator_is_zero():
    gt, gc = _orgs(1, 50), _orgs(2, 50)
    gc = gc | {"x": np.zeros(50), "y": np.zeros(50)}  # control has no pre-period data
    t, c = _stats(gt), _stats(gc)
    res = compare_cuped(t, c)
    _assert_is_unadjusted(res, t, c, CupedStatus.NO_PRE_DATA)
    assert (res.theta, res.variance_reduction) == (None, None)
    res = compare_cuped(c, t)  # either group
    assert res.cuped_status == CupedStatus.NO_PRE_DATA


def test_fallback_when_pre_period_has_no_variance():
    gt, gc = _orgs(1, 50), _orgs(2, 50)
    ones = np.ones(50)
    gt = gt | {"x": 3 * ones, "y": ones}  # X = P·Y exactly: V_P = 0
    t, c = _stats(gt), _stats(gc)
    _assert_is_unadjusted(compare_cuped(t, c), t, c, CupedStatus.NO_PRE_DATA)
    gt = gt | {"x": np.zeros(50)}  # pre-period numerator missing: P = 0, V_P = 0
    _assert_is_unadjusted(compare_cuped(_stats(gt), c), _stats(gt), c, CupedStatus.NO_PRE_DATA)


def test_theta_minimizes_variance_with_unequal_arms():
    # Mean metric. Treatment (10 units): X = −M, so C_T = −s²_T < 0 and V_P,T = s²_T.
    # Control (1000 units): X = 3M, C_C = 3 s²_C, V_P,C = 9 s²_C. gbstats' pooled
    # θ_gb = (C_T + C_C)/(V_P,T + V_P,C) > 0 while C_T/n_T + C_C/n_C < 0: with θ_gb the
    # adjustment adds variance. Var(θ) = s²_T(1 + θ)²/n_T + s²_C(1 − 3θ)²/n_C is minimized
    # at θ* = (−s²_T/n_T + 3 s²_C/n_C)/(s²_T/n_T + 9 s²_C/n_C) (set dVar/dθ = 0 by hand).
    rng = np.random.default_rng(0)
    mt, mc = 5 + rng.normal(0, 1, 10), 5 + rng.normal(0, 1, 1000)
    t = CupedStats.from_values(mt, np.ones(10), -mt, np.ones(10))
    c = CupedStats.from_values(mc, np.ones(1000), 3 * mc, np.ones(1000))
    st_, sc = np.var(mt, ddof=1), np.var(mc, ddof=1)

    def var(theta: float) -> float:
        return st_ * (1 + theta) ** 2 / 10 + sc * (1 - 3 * theta) ** 2 / 1000

    theta_gb = (-st_ + 3 * sc) / (st_ + 9 * sc)
    theta_star = (-st_ / 10 + 3 * sc / 1000) / (st_ / 10 + 9 * sc / 1000)
    assert var(theta_gb) > var(0.0) > var(theta_star)  # gbstats' θ would hurt here
    res = compare_cuped(t, c)
    assert res.adjusted and res.cuped_status == CupedStatus.APPLIED
    assert res.theta == pytest.approx(theta_star, rel=1e-10)
    assert res.effect_abs_stderr == pytest.approx(math.sqrt(var(theta_star)), rel=1e-10)
    assert res.variance_reduction == pytest.approx(1 - var(theta_star) / var(0.0), rel=1e-10)
    for step in (-1e-3, 1e-3):  # a minimum: any other θ gives more variance
        assert var(theta_star + step) > var(theta_star)
    # the control's adjusted per-unit variance (for the MDE): s²_C (1 − 3θ)²
    assert res.control_unit_variance == pytest.approx(sc * (1 - 3 * theta_star) ** 2, rel=1e-10)


def test_no_gain_when_pre_period_is_uncorrelated():
    # X ⟂ M exactly in both groups (centered cross-products 0): θ = 0, Var_adj = Var_unadj
    m = np.array([1.0, 3.0, 1.0, 3.0])
    x = np.array([1.0, 1.0, 3.0, 3.0])  # Σ(m − m̄)(x − x̄) = 0
    t = CupedStats.from_values(m + 1, np.ones(4), x, np.ones(4))
    c = CupedStats.from_values(m, np.ones(4), x, np.ones(4))
    res = compare_cuped(t, c)
    _assert_is_unadjusted(res, t, c, CupedStatus.NO_GAIN)
    assert res.theta == 0.0 and res.variance_reduction == 0.0


def test_no_gain_when_unadjusted_variance_is_zero():
    ones = np.ones(5)
    t = CupedStats.from_values(2 * ones, ones, np.arange(5.0), ones)
    c = CupedStats.from_values(ones, ones, np.arange(5.0) ** 2, ones)
    res = compare_cuped(t, c)
    _assert_is_unadjusted(res, t, c, CupedStatus.NO_GAIN)
    assert res.unadjusted.status == Status.ZERO_VARIANCE
    assert res.variance_reduction is None


def test_fallback_keeps_zero_control_mean_in_unadjusted_status():
    g = _orgs(1, 30)
    t = _stats(g)
    c = CupedStats.from_values(np.zeros(30), g["d"], np.zeros(30), g["y"])  # R_C = 0, X missing
    res = compare_cuped(t, c)
    assert res.cuped_status == CupedStatus.NO_PRE_DATA
    assert res.status == res.unadjusted.status == Status.ZERO_CONTROL_MEAN
    assert res.effect_rel is None
    assert res.effect_abs == pytest.approx(t.ratio, rel=1e-12)


def test_zero_control_mean_after_adjustment():
    rng = np.random.default_rng(2)
    gt, gc = _orgs(1, 40), _orgs(2, 40)
    m_c = rng.integers(-5, 6, size=40).astype(float)
    m_c[0] -= m_c.sum()  # integers: ΣM_C = 0 exactly, with variance
    gc = gc | {"m": m_c, "x": 2 * m_c + rng.normal(0, 0.1, 40) + 5 * gc["y"]}
    res = compare_cuped(_stats(gt), _stats(gc))
    assert res.adjusted
    assert res.status == Status.ZERO_CONTROL_MEAN
    assert res.unadjusted.status == Status.ZERO_CONTROL_MEAN
    assert res.effect_abs is not None
    assert res.effect_abs_ci_low is not None
    assert (res.effect_rel, res.effect_rel_stderr, res.p_value_rel) == (None, None, None)
    _assert_no_nan(res)


def test_perfect_predictor_gives_zero_variance():
    # X = M and Y = D in both groups of equal size: C = V_R = V_P, θ = 1, Var_adj = 0
    gt, gc = _orgs(1, 30, lift=1.2), _orgs(2, 30)
    t = CupedStats.from_values(gt["m"], gt["d"], gt["m"], gt["d"])
    c = CupedStats.from_values(gc["m"], gc["d"], gc["m"], gc["d"])
    res = compare_cuped(t, c)
    assert res.adjusted
    assert res.status == Status.ZERO_VARIANCE
    assert res.theta == pytest.approx(1.0, rel=1e-12)
    assert res.effect_abs == pytest.approx(0.0, abs=1e-9)  # R − P = 0 in each group
    assert res.effect_abs_stderr == pytest.approx(0.0, abs=1e-9)
    assert res.variance_reduction == pytest.approx(1.0, rel=1e-9)
    _assert_no_nan(res)


def test_too_few_units_and_zero_denominator():
    g = _orgs(1, 20)
    t = _stats(g)
    one = CupedStats.from_values([1.0], [1.0], [1.0], [1.0])
    for a, b in ((t, one), (one, t), (t, CupedStats.empty())):
        res = compare_cuped(a, b)
        assert res.status == Status.TOO_FEW_UNITS
        assert res.cuped_status == CupedStatus.NOT_COMPARED
        assert all(getattr(res, name) is None for name in EFFECT_FIELDS)
        assert (res.theta, res.variance_reduction, res.adjusted) == (None, None, False)
    zero_d = CupedStats.from_values(g["m"], np.zeros(20), g["x"], g["y"])
    res = compare_cuped(t, zero_d)
    assert res.status == Status.ZERO_DENOMINATOR
    assert all(getattr(res, name) is None for name in EFFECT_FIELDS)


def test_invalid_arguments_raise():
    t, c = _stats(_orgs(1, 20)), _stats(_orgs(2, 20))
    with pytest.raises(ValueError):
        compare_cuped(t, c, alpha=1.5)
    with pytest.raises(ValueError):
        compare_cuped(t, c, test="bayes")  # type: ignore[arg-type]


def test_adjusted_relative_interval_is_null_when_the_control_mean_could_be_zero():
    """A noisy control centred near 0: |R_C| = 0.1 < 1.96 · SE(R_C) ≈ 0.6 (by hand from the
    values below), so the CUPED-adjusted relative CI carries no information."""
    rng = np.random.default_rng(4)
    n = 100
    m_c = rng.normal(0, 3, n)
    m_c += 0.1 - m_c.mean()  # R_C = 0.1 exactly (D = 1)
    m_t = rng.normal(1, 3, n)
    x_c, x_t = m_c + rng.normal(0, 1, n), m_t + rng.normal(0, 1, n)
    ones = np.ones(n)
    se_c = np.std(m_c, ddof=1) / np.sqrt(n)
    assert abs(m_c.mean()) < 1.96 * se_c
    res = compare_cuped(
        CupedStats.from_values(m_t, ones, x_t, ones),
        CupedStats.from_values(m_c, ones, x_c, ones),
        test="z",
    )
    assert res.adjusted and res.cuped_status == CupedStatus.APPLIED
    assert res.status == Status.RELATIVE_CI_UNBOUNDED
    assert res.effect_rel == pytest.approx(res.effect_abs / 0.1, rel=1e-9)
    assert (res.effect_rel_ci_low, res.effect_rel_ci_high, res.p_value_rel) == (None, None, None)
    assert res.effect_abs_ci_low is not None  # the absolute effect is unaffected


# ---------------------------------------------------------------- one lift, stated once


@pytest.mark.parametrize("relative_ci", ["delta", "fieller"])
def test_the_unadjusted_comparison_is_shown_beside_the_adjusted_one(relative_ci):
    """#26 item 5: beside a CUPED-adjusted effect, the unadjusted one (Welch's t of the
    plain means, scipy) and adjusted means whose ratio − 1 is exactly the adjusted Δ rel."""
    from cluster_spark.comparisons import compare_groups
    from tests.test_reducer import experiment

    g_t, g_c = _orgs(5, 300, lift=1.1), _orgs(6, 300)
    ones = np.ones(300)
    t = CupedStats.from_values(g_t["m"], ones, g_t["x"], ones)  # a mean metric: D = Y = 1
    c = CupedStats.from_values(g_c["m"], ones, g_c["x"], ones)
    exp = experiment(cuped_lookback_days=14, relative_ci=relative_ci)
    cols = compare_groups(t, c, exp, "treatment", "m1")
    assert cols["cuped_applied"]
    mt, mc = g_t["m"].mean(), g_c["m"].mean()
    assert cols["effect_abs_unadjusted"] == pytest.approx(mt - mc, rel=1e-12)
    assert cols["effect_rel_unadjusted"] == pytest.approx(mt / mc - 1, rel=1e-12)
    welch = sps.ttest_ind(g_t["m"], g_c["m"], equal_var=False)
    assert cols["p_value_unadjusted"] == pytest.approx(welch.pvalue, rel=1e-9)
    assert cols["effect_abs"] != pytest.approx(cols["effect_abs_unadjusted"])  # adjusted
    assert cols["control_mean_adjusted"] == pytest.approx(mc, rel=1e-12)
    ratio = cols["mean_adjusted"] / cols["control_mean_adjusted"] - 1
    assert ratio == pytest.approx(cols["effect_rel"], rel=1e-12)
    low, high = cols["effect_rel_unadjusted_ci_low"], cols["effect_rel_unadjusted_ci_high"]
    assert low < cols["effect_rel_unadjusted"] < high


@pytest.mark.parametrize(("seed", "lift"), [(11, 1.04), (12, 1.0), (13, 0.97)])
def test_the_adjusted_fieller_interval_is_the_set_of_lifts_the_adjusted_test_keeps(seed, lift):
    """#26 item 6: with CUPED, Fieller's relative interval (the default) is the set of lifts
    L not rejected by the adjusted test of a − (1 + L)·R_C = 0, a = R_T − θP_T + θP_C: found
    here by inverting that test on a grid, with each group's variance of the numpy influence
    values (θ fixed). So it excludes 0 exactly when the adjusted absolute test rejects."""
    from cluster_spark.comparisons import compare_groups
    from tests.test_reducer import experiment

    gt, gc = _orgs(seed, 150, lift=lift), _orgs(seed + 100, 190)
    exp = experiment(cuped_lookback_days=14)
    assert exp.relative_ci == "fieller"  # the default
    cols = compare_groups(_stats(gt), _stats(gc), exp, "treatment", "m1")
    assert cols["cuped_applied"] and cols["relative_ci_method"] == "fieller"

    (r_t, p_t, rt, pt), (r_c, p_c, rc, pc) = _influence(gt), _influence(gc)
    theta = cols["cuped_theta"]
    q = sps.t(cols["df"]).ppf(0.975)
    a = r_t - theta * p_t + theta * p_c
    rho = 1 + np.linspace(-0.5, 0.5, 200_001)  # r_c > 0: lift L = ρ − 1
    var_t = np.var(rt - theta * pt, ddof=1) / len(rt)
    cov_c = np.cov(np.vstack([rc, pc]), ddof=1)  # Var(θp − ρr) = θ²V_P − 2θρC + ρ²V_R
    var_c = (theta**2 * cov_c[1, 1] - 2 * theta * rho * cov_c[0, 1] + rho**2 * cov_c[0, 0]) / len(
        rc
    )
    kept = rho[(a - rho * r_c) ** 2 <= q * q * (var_t + var_c)] - 1
    step = 1e-5
    assert cols["effect_rel_ci_low"] == pytest.approx(kept.min(), abs=step)
    assert cols["effect_rel_ci_high"] == pytest.approx(kept.max(), abs=step)
    excludes_zero = not cols["effect_rel_ci_low"] <= 0 <= cols["effect_rel_ci_high"]
    assert excludes_zero == (cols["p_value"] < 0.05)
    assert cols["p_value_rel"] == cols["p_value"]  # Fieller's test of L = 0 is the absolute one
