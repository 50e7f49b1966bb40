"""Fieller's interval for the relative lift, the default relative CI (`relative_ci:
fieller`; the delta method's is the option). No Spark."""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats as sps

from cluster_spark.stats.inference import (
    Alternative,
    Test,
    check_alpha,
    check_alternative,
    compare,
)
from cluster_spark.stats.ratio import RatioStats
from cluster_spark.status import Status


@dataclass(frozen=True)
class FiellerRatio:
    """The inputs of Fieller's theorem for ρ = a/b: the estimates a (treatment side) and
    b = R_C, their variances and covariance. The relative lift is ρ − 1 for b > 0 and
    1 − ρ for b < 0, so a − b is the absolute effect whose test the interval agrees with.

    Unadjusted (`of_groups`): a = R_T, b = R_C, independent groups, cov = 0. CUPED-adjusted
    (`cuped.CupedComparison.fieller`): a = R_C + Δ_adj, b = R_C, where the control's
    θ·P_C in a makes cov ≠ 0 (see `docs/methods.md`, "Relative intervals")."""

    a: float
    b: float
    var_a: float
    var_b: float
    cov: float = 0.0

    @classmethod
    def of_groups(cls, treatment: RatioStats, control: RatioStats) -> FiellerRatio | None:
        """R_T/R_C with the delta-method variances Var(R) = V/n; None when undefined."""
        a, b = treatment.ratio, control.ratio
        v_a, v_b = treatment.var_ratio, control.var_ratio
        if a is None or b is None or v_a is None or v_b is None:
            return None
        return cls(a, b, v_a, v_b)

    def var_difference(self, c0: float = 1.0) -> float:
        """Var(a − c₀b) = Var a − 2c₀ Cov + c₀² Var b."""
        return self.var_a - 2.0 * c0 * self.cov + c0 * c0 * self.var_b


def fieller_relative_ci(
    ratio: FiellerRatio,
    alpha: float,
    df: float | None,
    alternative: Alternative = "two-sided",
) -> tuple[float, float] | None:
    """Fieller's (1954) 1 − alpha interval for the relative lift of `ratio`: the set
    {ρ : (a − ρb)² ≤ q²(v_a − 2ρc + ρ²v_b)}, i.e. the quadratic
    (b² − q²v_b) ρ² − 2(ab − q²c) ρ + (a² − q²v_a) ≤ 0, with roots
    ρ = [B ± sqrt(B² − AC)]/A, A = b² − q²v_b, B = ab − q²c, C = a² − q²v_a
    (Fieller, "Some problems in interval estimation", JRSS B 16, 1954), mapped to the lift
    (ρ − 1 for b > 0, 1 − ρ for b < 0). q is the quantile of Welch's t with `df`, or the
    normal when `df` is None. The interval excludes 0 exactly when |a − b| > q·SE(a − b):
    it agrees with the absolute test.

    None when it is not a bounded interval (b² ≤ q²v_b: R_C not significantly different
    from 0, the set is the whole line or the complement of an interval) or when Var(a − b)
    is 0. A one-sided `alternative` gives the matching end of the two-sided 1 − 2·alpha
    interval and ±inf at the other (None when alpha ≥ 0.5)."""
    check_alternative(alternative)
    if alternative != "two-sided":
        if not alpha < 0.5:  # no two-sided interval at level 1 − 2·alpha ≤ 0
            return None
        both = fieller_relative_ci(ratio, 2 * alpha, df)
        if both is None:
            return None
        return (both[0], math.inf) if alternative == "greater" else (-math.inf, both[1])
    check_alpha(alpha)
    a, b, v_a, v_b, c = ratio.a, ratio.b, ratio.var_a, ratio.var_b, ratio.cov
    if not ratio.var_difference() > 0:
        return None
    dist = sps.norm() if df is None else sps.t(df)
    q2 = float(dist.ppf(1 - alpha / 2)) ** 2
    lead = b * b - q2 * v_b
    if not lead > 0:
        return None
    mid = a * b - q2 * c
    # mid² − lead·(a² − q²v_a) = q²(a²v_b − 2abc + b²v_a − q²(v_a v_b − c²)) ≥ 0
    disc = q2 * (a * a * v_b - 2 * a * b * c + b * b * v_a - q2 * (v_a * v_b - c * c))
    half = math.sqrt(max(disc, 0.0))
    lo, hi = (mid - half) / lead, (mid + half) / lead
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    return (lo - 1.0, hi - 1.0) if b > 0 else (1.0 - hi, 1.0 - lo)


def fieller_interval(
    treatment: RatioStats,
    control: RatioStats,
    alpha: float = 0.05,
    test: Test = "welch",
    alternative: Alternative = "two-sided",
) -> tuple[float, float] | None:
    """Fieller's 1 − alpha interval for the unadjusted relative lift (R_T − R_C)/|R_C| of
    two independent groups (`fieller_relative_ci` with a = R_T, b = R_C, v = V/n), with
    `inference.compare`'s quantile (Welch t with ν of the absolute effect, or z).

    None when the interval is unbounded (see `fieller_relative_ci`) or undefined: too few
    units, ΣD = 0 or both variances 0 (as `compare` gives no CI for a zero SE). Raises only
    for invalid ``alpha``, ``test`` or ``alternative``."""
    check_alpha(alpha)
    check_alternative(alternative)
    comparison = compare(treatment, control, test=test)  # ν does not depend on alpha
    if comparison.status in (Status.TOO_FEW_UNITS, Status.ZERO_DENOMINATOR):
        return None
    ratio = FiellerRatio.of_groups(treatment, control)
    if ratio is None:
        return None
    return fieller_relative_ci(ratio, alpha, comparison.df, alternative)
