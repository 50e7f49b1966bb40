"""Fieller's interval for the relative lift, the option to the delta method
(`relative_ci: fieller`). No Spark."""

from __future__ import annotations

import math

from scipy import stats as sps

from cluster_spark.stats.inference import Alternative, Test, check_alternative, compare
from cluster_spark.stats.ratio import RatioStats
from cluster_spark.status import Status


def fieller_interval(
    treatment: RatioStats,
    control: RatioStats,
    alpha: float = 0.05,
    test: Test = "welch",
    alternative: Alternative = "two-sided",
) -> tuple[float, float] | None:
    """Fieller's (1954) 1 − alpha interval for the relative lift (R_T − R_C)/|R_C|.

    With a = R_T, b = R_C, independent groups and the delta-method variances
    v_T = V_T/n_T, v_C = V_C/n_C, the interval for ρ = R_T/R_C is the set
    {ρ : (a − ρb)² ≤ q²(v_T + ρ² v_C)}, i.e. the quadratic
    (b² − q²v_C) ρ² − 2ab ρ + (a² − q²v_T) ≤ 0, with roots
    ρ = [ab ± q·sqrt(a²v_C + b²v_T − q²v_T v_C)] / (b² − q²v_C)
    (Fieller, "Some problems in interval estimation", JRSS B 16, 1954). q is the quantile of
    `inference.compare` (Welch t with ν of the absolute effect, or z). The lift is ρ − 1 for
    R_C > 0 and 1 − ρ for R_C < 0, matching `compare`'s Δ/|R_C|.

    Returns None when the interval is not a bounded interval — b² ≤ q²v_C, i.e. R_C is not
    significantly different from 0 at level alpha (including R_C = 0): the set is then the
    whole line or the complement of an interval — and when it is undefined: too few units,
    ΣD = 0 or both variances 0 (as `compare` gives no CI for a zero SE). A one-sided
    `alternative` gives the matching end of the two-sided 1 − 2·alpha interval and ±inf at
    the other. Raises only for invalid ``alpha``, ``test`` or ``alternative``.
    """
    check_alternative(alternative)
    if alternative != "two-sided":
        if not alpha < 0.5:  # no two-sided interval at level 1 − 2·alpha ≤ 0
            return None
        both = fieller_interval(treatment, control, 2 * alpha, test)
        if both is None:
            return None
        return (both[0], math.inf) if alternative == "greater" else (-math.inf, both[1])
    comparison = compare(treatment, control, alpha=alpha, test=test)
    if comparison.status in (Status.TOO_FEW_UNITS, Status.ZERO_DENOMINATOR):
        return None
    a, b = treatment.ratio, control.ratio
    v_t, v_c = treatment.var_ratio, control.var_ratio
    if a is None or b is None or v_t is None or v_c is None or v_t + v_c == 0:
        return None
    dist = sps.norm() if comparison.df is None else sps.t(comparison.df)
    q = float(dist.ppf(1 - alpha / 2))
    lead = b * b - q * q * v_c
    if not lead > 0:
        return None
    disc = a * a * v_c + v_t * lead  # = a²v_C + b²v_T − q²v_T v_C ≥ 0
    half = q * math.sqrt(max(disc, 0.0))
    lo, hi = (a * b - half) / lead, (a * b + half) / lead
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    return (lo - 1.0, hi - 1.0) if b > 0 else (1.0 - hi, 1.0 - lo)
