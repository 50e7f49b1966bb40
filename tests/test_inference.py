"""compare / compare_raw_sums / srm_test against hand arithmetic, statsmodels and scipy."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from scipy import stats as sps

from cluster_spark.stats.inference import (
    Comparison,
    compare,
    compare_raw_sums,
    srm_test,
)
from cluster_spark.stats.ratio import RatioStats
from cluster_spark.status import Status

# Treatment M = (1, 2, 3), D = (1, 1, 2): R_T = 6/4 = 1.5, d̄ = 4/3,
#   linearized (M − R_T D)/d̄ = (−0.5, 0.5, 0)·3/4 → V_T = 2·0.375²/2 = 9/64, a = V_T/3 = 3/64
# Control   M = (2, 2, 4), D = (1, 2, 1): R_C = 8/4 = 2,   d̄ = 4/3,
#   linearized (M − R_C D)/d̄ = (0, −2, 2)·3/4 = (0, −1.5, 1.5) → V_C = 2.25, b = 0.75 = 48/64
# Δ = −0.5, Var = 51/64 → SE = √51/8;  Δ% = −0.5/2 = −0.25,
#   Var% = a/R_C² + R_T²·b/R_C⁴ = (3/64)/4 + 2.25·0.75/16 = 3/256 + 27/256 = 30/256
# ν = (51/64)² / ((3/64)²/2 + (48/64)²/2) = 2601 / ((9 + 2304)/2) = 2601/1156.5
T_M, T_D = [1.0, 2.0, 3.0], [1.0, 1.0, 2.0]
C_M, C_D = [2.0, 2.0, 4.0], [1.0, 2.0, 1.0]
HAND_SE, HAND_SE_REL, HAND_DF = math.sqrt(51) / 8, math.sqrt(30 / 256), 2601 / 1156.5


def _assert_no_nan(c: Comparison) -> None:
    for f in dataclasses.fields(c):
        v = getattr(c, f.name)
        assert v is None or isinstance(v, str) or math.isfinite(v), f.name


def _check_hand(c: Comparison, alpha: float = 0.05) -> None:
    # Welch with ν ≈ 2.25: q = 4.0 (alpha 0.05) or 2.8 (0.1) > |R_C|/SE(R_C) = 2/√0.75 = 2.31,
    # so R_C is not significantly different from 0: the relative interval is not informative
    q = sps.t.ppf(1 - alpha / 2, HAND_DF)
    assert q > 2 / math.sqrt(0.75)
    assert c.status == Status.RELATIVE_CI_UNBOUNDED
    assert c.df == pytest.approx(HAND_DF, rel=1e-12)
    assert c.effect_abs == pytest.approx(-0.5, rel=1e-12)
    assert c.effect_abs_stderr == pytest.approx(HAND_SE, rel=1e-12)
    assert (c.effect_abs_ci_low, c.effect_abs_ci_high) == pytest.approx(
        (-0.5 - q * HAND_SE, -0.5 + q * HAND_SE), rel=1e-10
    )
    assert c.p_value == pytest.approx(2 * sps.t.sf(0.5 / HAND_SE, HAND_DF), rel=1e-10)
    assert c.effect_rel == pytest.approx(-0.25, rel=1e-12)
    assert c.effect_rel_stderr is None
    assert c.effect_rel_ci_low is None and c.effect_rel_ci_high is None
    assert c.p_value_rel is None


@pytest.mark.parametrize("alpha", [0.05, 0.1])
def test_hand_example(alpha):
    t, c = RatioStats.from_values(T_M, T_D), RatioStats.from_values(C_M, C_D)
    _check_hand(compare(t, c, alpha=alpha), alpha)


@pytest.mark.parametrize("alpha", [0.05, 0.1])
def test_hand_example_relative_with_z(alpha):
    # z: q = 1.96 (or 1.64) < 2.31, so the relative interval is informative
    q = sps.norm.ppf(1 - alpha / 2)
    c = compare(RatioStats.from_values(T_M, T_D), RatioStats.from_values(C_M, C_D), alpha, "z")
    assert c.status == Status.OK and c.df is None
    assert c.effect_rel == pytest.approx(-0.25, rel=1e-12)
    assert c.effect_rel_stderr == pytest.approx(HAND_SE_REL, rel=1e-12)
    assert (c.effect_rel_ci_low, c.effect_rel_ci_high) == pytest.approx(
        (-0.25 - q * HAND_SE_REL, -0.25 + q * HAND_SE_REL), rel=1e-10
    )
    assert c.p_value_rel == pytest.approx(2 * sps.norm.sf(0.25 / HAND_SE_REL), rel=1e-10)


def test_collapsed_relative_interval_is_not_ok():
    # The review's case: treatment ratio ≈ 0, a noisy control. Treatment M = (0, 0, 0, 1e-9),
    # D = 1: R_T = 2.5e-10, V_T ≈ 0. Control M = (0, 0, 0, 4) → R_C = 1, s²_C = 4, V_C = 4,
    # SE(R_C) = √(4/4) = 1 — |R_C|/SE = 1 < 1.96: the control mean could be 0.
    # The delta method gives Δ% ≈ −100 % with SE ≈ √(a + k²b)/R_C ≈ 0 (k = R_T/R_C ≈ 0):
    # an interval collapsed at −100 % while the absolute test has p ≈ 0.39.
    t = RatioStats.from_values([0.0, 0.0, 0.0, 1e-9], [1.0] * 4)
    c = RatioStats.from_values([0.0, 0.0, 0.0, 4.0], [1.0] * 4)
    got = compare(t, c, test="z")
    assert got.status == Status.RELATIVE_CI_UNBOUNDED
    assert got.effect_rel == pytest.approx(-1.0, abs=1e-9)
    assert got.effect_rel_ci_low is None and got.effect_rel_ci_high is None
    assert got.p_value == pytest.approx(2 * sps.norm.sf(1.0 / 1.0), rel=1e-6)


def test_negative_control_mean_divides_by_its_absolute_value():
    # M negated in both groups: R_T = −1.5, R_C = −2, Δ = 0.5, Δ% = 0.5/|−2| = +0.25;
    # variances are unchanged (V scales with M², and Var% has only even powers of R)
    t = RatioStats.from_values([-x for x in T_M], T_D)
    c = compare(t, RatioStats.from_values([-x for x in C_M], C_D), test="z")
    assert (c.effect_abs, c.effect_rel) == pytest.approx((0.5, 0.25), rel=1e-12)
    assert c.effect_rel_stderr == pytest.approx(HAND_SE_REL, rel=1e-12)
    assert c.effect_abs_stderr == pytest.approx(HAND_SE, rel=1e-12)


def test_hand_example_from_raw_sums():
    # T: ΣM = 6, ΣD = 4, ΣM² = 14, ΣD² = 6, ΣMD = 1 + 2 + 6 = 9
    # C: ΣM = 8, ΣD = 4, ΣM² = 24, ΣD² = 6, ΣMD = 2 + 4 + 4 = 10
    t = {"n": 3, "sum_m": 6, "sum_d": 4, "sum_mm": 14, "sum_dd": 6, "sum_md": 9}
    c = {"n": 3, "sum_m": 8, "sum_d": 4, "sum_mm": 24, "sum_dd": 6, "sum_md": 10}
    _check_hand(compare_raw_sums(t, c))


def _clustered_users(seed: int) -> pd.DataFrame:
    """Users within orgs: org random effect, 1..30 users per org, half the orgs treated."""
    rng = np.random.default_rng(seed)
    frames = []
    for org in range(80):
        treat = int(rng.random() < 0.5)
        k = int(rng.integers(1, 31))
        y = 20 + 1.5 * treat + rng.normal(0, 4) + rng.gamma(2.0, 3.0, size=k)
        frames.append(pd.DataFrame({"org": org, "treat": treat, "y": y}))
    return pd.concat(frames, ignore_index=True)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_cluster_robust_ols_oracle(seed):
    """sqrt(V_T/n_T + V_C/n_C) with 1/n moments is the CR0 SE (Deng, Lu & Qin 2021)."""
    users = _clustered_users(seed)
    orgs = users.groupby("org").agg(treat=("treat", "first"), m=("y", "sum"), d=("y", "size"))
    groups = {
        g: RatioStats.from_values(o["m"].to_numpy(), o["d"].to_numpy())
        for g, o in orgs.groupby("treat")
    }
    c = compare(groups[1], groups[0])
    model = smf.ols("y ~ treat", data=users)
    # statsmodels 0.15: use_correction must be in cov_kwds (as a fit() kwarg it is ignored
    # and the CR1 factor G/(G−1)·(N−1)/(N−K) is applied).
    cr0 = model.fit(cov_type="cluster", cov_kwds={"groups": users["org"], "use_correction": False})
    cr1 = model.fit(cov_type="cluster", cov_kwds={"groups": users["org"]})

    ours_1n = math.sqrt(sum(s.var_ratio * (s.n - 1) / s.n for s in groups.values()))
    assert cr0.params["treat"] == pytest.approx(c.effect_abs, rel=1e-10)
    assert cr0.bse["treat"] == pytest.approx(ours_1n, rel=1e-8)
    assert cr1.bse["treat"] != pytest.approx(ours_1n, rel=1e-4)


def test_mean_metric_is_welch_t_test():
    rng = np.random.default_rng(11)
    x, y = rng.normal(10, 3, size=15), rng.normal(9, 1, size=23)
    t, c = RatioStats.from_values(x, np.ones(15)), RatioStats.from_values(y, np.ones(23))
    c = compare(t, c, alpha=0.1)
    ref = sps.ttest_ind(x, y, equal_var=False)
    ci = ref.confidence_interval(confidence_level=0.9)
    assert c.effect_abs == pytest.approx(x.mean() - y.mean(), rel=1e-12)
    assert c.df == pytest.approx(ref.df, rel=1e-12)
    assert c.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    assert c.effect_abs_stderr == pytest.approx(abs(c.effect_abs / ref.statistic), rel=1e-12)
    assert (c.effect_abs_ci_low, c.effect_abs_ci_high) == pytest.approx((ci.low, ci.high), 1e-10)


def _ratio_groups(seed: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    rng = np.random.default_rng(seed)
    out = []
    for n, lift in ((40, 1.2), (55, 1.0)):
        d = rng.integers(1, 12, size=n).astype(float)
        out.append((rng.poisson(3.0 * lift * d).astype(float), d))
    return tuple(out)


def _hand_delta(m: np.ndarray, d: np.ndarray) -> tuple[float, float]:
    """(R, Var(R)) by the delta method, written out with numpy."""
    r = m.sum() / d.sum()
    return r, np.var((m - r * d) / d.mean(), ddof=1) / len(m)


def test_relative_lift_and_z_option():
    (tm, td), (cm, cd) = _ratio_groups(5)
    (r_t, a), (r_c, b) = _hand_delta(tm, td), _hand_delta(cm, cd)
    se_rel = math.sqrt(a / r_c**2 + r_t**2 * b / r_c**4)
    se_abs = math.sqrt(a + b)
    nu = (a + b) ** 2 / (a**2 / (len(tm) - 1) + b**2 / (len(cm) - 1))
    t, c = RatioStats.from_values(tm, td), RatioStats.from_values(cm, cd)

    w = compare(t, c)
    rel = (r_t - r_c) / abs(r_c)
    assert w.effect_rel == pytest.approx(rel, rel=1e-12)
    assert w.effect_rel_stderr == pytest.approx(se_rel, rel=1e-10)
    assert w.df == pytest.approx(nu, rel=1e-10)
    assert w.p_value_rel == pytest.approx(2 * sps.t.sf(abs(rel) / se_rel, nu), rel=1e-8)
    assert w.effect_rel_ci_high == pytest.approx(rel + sps.t.ppf(0.975, nu) * se_rel, rel=1e-10)

    z = compare(t, c, alpha=0.01, test="z")
    q = sps.norm.ppf(0.995)
    assert z.df is None and z.status == Status.OK
    assert z.effect_abs_stderr == pytest.approx(se_abs, rel=1e-10)
    assert (z.effect_abs_ci_low, z.effect_abs_ci_high) == pytest.approx(
        (r_t - r_c - q * se_abs, r_t - r_c + q * se_abs), rel=1e-10
    )
    assert z.p_value == pytest.approx(2 * sps.norm.sf(abs(r_t - r_c) / se_abs), rel=1e-8)
    assert z.effect_rel_ci_low == pytest.approx(rel - q * se_rel, rel=1e-10)
    assert z.p_value_rel == pytest.approx(2 * sps.norm.sf(abs(rel) / se_rel), rel=1e-8)


def test_invalid_settings_raise():
    t, c = RatioStats.from_values(T_M, T_D), RatioStats.from_values(C_M, C_D)
    with pytest.raises(ValueError):
        compare(t, c, alpha=1.5)
    with pytest.raises(ValueError):
        compare(t, c, test="bayes")  # type: ignore[arg-type]


# ---------------------------------------------------------------- status codes

OK_GROUP = RatioStats.from_values(C_M, C_D)
ALL_NULL = {f.name: None for f in dataclasses.fields(Comparison) if f.name != "status"}


@pytest.mark.parametrize(
    ("treatment", "control", "status"),
    [
        (RatioStats.from_values([4.0], [2.0]), OK_GROUP, Status.TOO_FEW_UNITS),
        (OK_GROUP, RatioStats.empty(), Status.TOO_FEW_UNITS),
        (RatioStats.from_values([1.0, 2.0, 3.0], [0.0] * 3), OK_GROUP, Status.ZERO_DENOMINATOR),
        (OK_GROUP, RatioStats.from_values([0.0, 0.0], [0.0, 0.0]), Status.ZERO_DENOMINATOR),
    ],
)
def test_undefined_groups_give_null_estimates(treatment, control, status):
    c = compare(treatment, control)
    assert c.status == status
    assert dataclasses.asdict(c) == ALL_NULL | {"status": status}


def test_zero_variance():
    # every unit has M = R·D in its group: T R = 2, C R = 1 → Δ = 1, Δ% = 1, both SEs 0
    t = RatioStats.from_values([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
    c = RatioStats.from_values([1.0, 2.0], [1.0, 2.0])
    for test in ("welch", "z"):
        r = compare(t, c, test=test)
        _assert_no_nan(r)
        assert r.status == Status.ZERO_VARIANCE
        assert (r.effect_abs, r.effect_rel) == pytest.approx((1.0, 1.0), rel=1e-12)
        assert (r.effect_abs_stderr, r.effect_rel_stderr) == (0.0, 0.0)
        assert [r.effect_abs_ci_low, r.effect_abs_ci_high, r.p_value, r.df] == [None] * 4
        assert [r.effect_rel_ci_low, r.effect_rel_ci_high, r.p_value_rel] == [None] * 3


def test_zero_relative_variance_only():
    # treatment all zero (R_T = 0, V_T = 0): Var% = 0 + 0·b = 0 while Var = b > 0
    t = RatioStats.from_values([0.0, 0.0, 0.0], [1.0, 2.0, 1.0])
    r = compare(t, OK_GROUP)
    _assert_no_nan(r)
    assert r.status == Status.ZERO_VARIANCE
    assert r.p_value is not None and r.effect_abs_ci_low is not None
    assert r.effect_rel == -1.0
    assert (r.effect_rel_ci_low, r.effect_rel_ci_high, r.p_value_rel) == (None, None, None)
    r = compare(t, OK_GROUP, test="z")  # R_C significant: the zero SE is reported as such
    assert r.status == Status.ZERO_VARIANCE and r.effect_rel_stderr == 0.0


def test_zero_control_mean():
    c = RatioStats.from_values([0.0, 0.0, 0.0], [1.0, 2.0, 1.0])  # R_C = 0, V_C = 0
    r = compare(RatioStats.from_values(T_M, T_D), c)
    _assert_no_nan(r)
    assert r.status == Status.ZERO_CONTROL_MEAN
    # Δ = 1.5, SE = √(V_T/3) = √(3/64), ν = (n_T − 1) = 2 since b = 0
    se = math.sqrt(3 / 64)
    assert r.effect_abs == 1.5 and r.effect_abs_stderr == pytest.approx(se, rel=1e-12)
    assert r.df == pytest.approx(2.0, rel=1e-12)
    assert r.p_value == pytest.approx(2 * sps.t.sf(1.5 / se, 2), rel=1e-10)
    rel = [r.effect_rel, r.effect_rel_ci_low, r.effect_rel_ci_high, r.effect_rel_stderr]
    assert [*rel, r.p_value_rel] == [None] * 5


# ---------------------------------------------------------------- SRM


def test_srm_equal_split_three_variants():
    # expected 100 each: χ² = (0² + 20² + 20²)/100 = 8; χ²(2 df) survival = exp(−8/2)
    stat, p = srm_test({"a": 100, "b": 120, "c": 80})
    assert stat == pytest.approx(8.0, rel=1e-12)
    assert p == pytest.approx(math.exp(-4.0), rel=1e-10)


@pytest.mark.parametrize("weights", [{"a": 0.5, "b": 0.25, "c": 0.25}, {"a": 2, "b": 1, "c": 1}])
def test_srm_unequal_weights_are_normalized(weights):
    # N = 400, expected (200, 100, 100): χ² = (0² + 20² + 20²)/100 = 8
    stat, p = srm_test({"a": 200, "b": 120, "c": 80}, weights)
    assert stat == pytest.approx(8.0, rel=1e-12)
    assert p == pytest.approx(math.exp(-4.0), rel=1e-10)


def test_srm_two_variants_and_missing_variant():
    # expected 50/50 of 100: χ² = (10² + 10²)/50 = 4; χ²(1 df) survival = erfc(√(4/2))
    stat, p = srm_test({"control": 60, "treatment": 40})
    assert (stat, p) == pytest.approx((4.0, math.erfc(math.sqrt(2.0))), rel=1e-10)
    # a configured variant with no units counts 0: expected (5, 5), χ² = (5² + 5²)/5 = 10
    stat, _ = srm_test({"control": 10}, {"control": 1, "treatment": 1})
    assert stat == pytest.approx(10.0, rel=1e-12)
    with pytest.raises(ValueError):
        srm_test({"control": 10, "other": 3}, {"control": 1, "treatment": 1})
