"""Treatment-vs-control comparisons of ratio metrics and the SRM check (no Spark).

Absolute and relative effects use the delta method (Deng, Knoblich & Lu 2018, §3) with a Welch
t test and Welch–Satterthwaite degrees of freedom (default) or a z test; see docs/methods.md,
"Comparisons". Data problems never raise: they give null estimates and a status code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from scipy import stats as sps

from cluster_spark.stats.ratio import RatioStats
from cluster_spark.status import Status

#: Keys of the per-group mappings taken by `compare_raw_sums`.
RAW_SUM_KEYS = ("n", "sum_m", "sum_d", "sum_mm", "sum_dd", "sum_md")

Test = Literal["welch", "z"]
#: The alternative hypothesis of a test: Δ ≠ 0, Δ > 0 or Δ < 0. One-sided tests give
#: one-sided p-values and CIs with one infinite end (±inf).
Alternative = Literal["two-sided", "greater", "less"]
ALTERNATIVES = ("two-sided", "greater", "less")


@dataclass(frozen=True)
class Comparison:
    """Treatment vs control: absolute (R_T − R_C) and relative ((R_T − R_C)/|R_C|) effects.

    p-values and CIs follow the comparison's alternative (two-sided by default; a one-sided
    CI has one infinite end); ``df`` is the Welch–Satterthwaite ν (None for the z test).
    """

    effect_abs: float | None = None
    effect_abs_ci_low: float | None = None
    effect_abs_ci_high: float | None = None
    effect_abs_stderr: float | None = None
    effect_rel: float | None = None
    effect_rel_ci_low: float | None = None
    effect_rel_ci_high: float | None = None
    effect_rel_stderr: float | None = None
    p_value: float | None = None
    p_value_rel: float | None = None
    df: float | None = None
    status: str = Status.OK


def check_alpha(alpha: float, name: str = "alpha") -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"{name} must be in (0, 1), got {alpha!r}")


def welch_df(a: float, b: float, n_t: int, n_c: int) -> float | None:
    """Welch–Satterthwaite ν = (a+b)²/(a²/(n_T−1) + b²/(n_C−1)) for variance terms a, b of
    the two groups, in scale-free form (no under/overflow); None when a + b = 0."""
    if not a + b > 0:
        return None
    wa, wb = a / (a + b), b / (a + b)
    return 1.0 / (wa * wa / (n_t - 1) + wb * wb / (n_c - 1))


def control_mean_significant(r_c: float, var_c: float, q: float) -> bool:
    """Whether R_C differs from 0 at the CI's level: |R_C| > q·SE(R_C) (or SE(R_C) = 0).

    Exactly when Fieller's interval for R_T/R_C is bounded (Fieller 1954); when it is not,
    a relative interval carries no information and the delta method's can collapse (to
    about −100 % when R_T ≈ 0): `Status.RELATIVE_CI_UNBOUNDED`."""
    return var_c == 0 or r_c * r_c > q * q * var_c


def check_alternative(alternative: str) -> None:
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")


def quantile(dist: Any, alpha: float, alternative: Alternative = "two-sided") -> float:
    """The CI's quantile: 1 − alpha/2 for a two-sided interval, 1 − alpha for a one-sided."""
    return float(dist.ppf(1 - alpha / 2 if alternative == "two-sided" else 1 - alpha))


def interval(
    est: float,
    se: float,
    q: float,
    sf: Callable[[float], float],
    alternative: Alternative = "two-sided",
) -> tuple[float | None, float | None, float | None]:
    """(CI low, CI high, p) of est with standard error SE, sf the survival function and q
    from `quantile`: est ± q·SE and p = 2·sf(|est|/SE) two-sided; [est − q·SE, +inf) and
    sf(est/SE) for `greater`; (−inf, est + q·SE] and sf(−est/SE) for `less`. None if SE = 0."""
    if se == 0:
        return None, None, None
    z = est / se
    if alternative == "greater":
        return est - q * se, math.inf, float(sf(z))
    if alternative == "less":
        return -math.inf, est + q * se, float(sf(-z))
    return est - q * se, est + q * se, float(2.0 * sf(abs(z)))


def compare(
    treatment: RatioStats,
    control: RatioStats,
    alpha: float = 0.05,
    test: Test = "welch",
    alternative: Alternative = "two-sided",
) -> Comparison:
    """Delta-method comparison of a treatment group with the control group.

    Absolute: Δ = R_T − R_C, Var = a + b with a = V_T/n_T, b = V_C/n_C (or the groups'
    cluster-jackknife variances, `RatioStats.jackknife`, when staged).
    Relative: Δ% = Δ/|R_C|, Var ≈ a/R_C² + R_T² b/R_C⁴ (Deng, Knoblich & Lu 2018, §3).
    Welch: t with ν = (a+b)² / (a²/(n_T−1) + b²/(n_C−1)) for both effects; z: normal.
    CI = est ± q·SE with q the 1 − alpha/2 quantile (one-sided `alternative`: the 1 − alpha
    quantile, one end infinite, p one-sided; see `interval`). When R_C is not significantly
    different from 0 (`control_mean_significant`) the relative CI, stderr and p-value are
    null and the status is `relative_ci_unbounded`. Raises only for invalid ``alpha`` or
    ``test``; data problems give a status code (`status.Status`).
    """
    check_alpha(alpha)
    check_alternative(alternative)
    if test not in ("welch", "z"):
        raise ValueError(f"test must be 'welch' or 'z', got {test!r}")
    if treatment.n < 2 or control.n < 2:
        return Comparison(status=Status.TOO_FEW_UNITS)
    r_t, r_c = treatment.ratio, control.ratio
    v_t, v_c = treatment.unit_variance, control.unit_variance
    if r_t is None or r_c is None or v_t is None or v_c is None:
        return Comparison(status=Status.ZERO_DENOMINATOR)

    a, b = treatment.var_ratio, control.var_ratio  # the jackknife's when staged
    df, dist, q = reference_distribution(a, b, treatment.n, control.n, alpha, test, alternative)
    effect_abs = r_t - r_c
    se_abs = math.sqrt(a + b)
    out = absolute_columns(effect_abs, se_abs, q, dist.sf, df, alternative)
    zero_se = se_abs == 0
    informative = control_mean_significant(r_c, b, q)
    if r_c != 0:
        k = r_t / r_c
        se_rel = math.sqrt(a + k * k * b) / abs(r_c)
        out |= relative_columns(effect_abs / abs(r_c), se_rel, informative, q, dist.sf, alternative)
        zero_se = zero_se or se_rel == 0
    return Comparison(**out, status=comparison_status(out, zero_se, informative))


def reference_distribution(
    a: float,
    b: float,
    n_t: int,
    n_c: int,
    alpha: float,
    test: Test,
    alternative: Alternative = "two-sided",
) -> tuple[float | None, Any, float]:
    """(ν, distribution, q): Welch's t with ν from the groups' variance terms a and b, or the
    normal for ``test="z"`` (ν None); q its `quantile` for the alternative. With a = b = 0
    no interval is computed, so the normal then stands in."""
    df = welch_df(a, b, n_t, n_c) if test == "welch" else None
    dist = sps.norm() if df is None else sps.t(df)
    return df, dist, quantile(dist, alpha, alternative)


def absolute_columns(
    effect_abs: float,
    se_abs: float,
    q: float,
    sf: Callable[[float], float],
    df: float | None,
    alternative: Alternative = "two-sided",
) -> dict[str, float | None]:
    """The absolute-effect columns of a comparison: estimate, CI, stderr, p-value and ν."""
    low, high, p = interval(effect_abs, se_abs, q, sf, alternative)
    return {
        "effect_abs": effect_abs,
        "effect_abs_ci_low": low,
        "effect_abs_ci_high": high,
        "effect_abs_stderr": se_abs,
        "p_value": p,
        "df": df,
    }


def relative_columns(
    effect_rel: float,
    se_rel: float,
    informative: bool,
    q: float,
    sf: Callable[[float], float],
    alternative: Alternative = "two-sided",
) -> dict[str, float | None]:
    """The relative-effect columns of a comparison: the estimate, and its CI, stderr and
    p-value when the interval is informative (`control_mean_significant`)."""
    out: dict[str, float | None] = {"effect_rel": effect_rel}
    if informative:
        low, high, p = interval(effect_rel, se_rel, q, sf, alternative)
        out |= {
            "effect_rel_ci_low": low,
            "effect_rel_ci_high": high,
            "effect_rel_stderr": se_rel,
            "p_value_rel": p,
        }
    return out


def comparison_status(
    columns: Mapping[str, float | None], zero_se: bool, informative: bool
) -> Status:
    """The status of a comparison's columns, in `Status`'s order of precedence (no
    relative effect means R_C = 0, or 1/|R_C| overflowed: a denormal R_C)."""
    if zero_se:
        return Status.ZERO_VARIANCE
    if columns.get("effect_rel") is None:
        return Status.ZERO_CONTROL_MEAN
    if not informative:
        return Status.RELATIVE_CI_UNBOUNDED
    return Status.OK


def compare_raw_sums(
    treatment: Mapping[str, float],
    control: Mapping[str, float],
    alpha: float = 0.05,
    test: Test = "welch",
) -> Comparison:
    """`compare` from per-group raw sums, without Spark.

    Each mapping holds the keys ``RAW_SUM_KEYS`` — n, ΣM, ΣD, ΣM², ΣD², ΣMD over the group's
    units — as warehouse SQL produces them. Raw sums lose precision when means are large
    relative to the spread (see `RatioStats.from_raw_sums`).
    """
    return compare(
        RatioStats.from_raw_sums(*(treatment[k] for k in RAW_SUM_KEYS)),
        RatioStats.from_raw_sums(*(control[k] for k in RAW_SUM_KEYS)),
        alpha=alpha,
        test=test,
    )


def srm_test(
    observed: Mapping[str, int],
    expected_weights: Mapping[str, float] | None = None,
) -> tuple[float, float]:
    """Sample-ratio-mismatch check: Pearson χ² statistic and p-value of assignment-unit counts.

    ``expected_weights`` (any positive scale; normalized) defaults to an equal split over the
    observed variants; a weighted variant missing from ``observed`` counts 0 units. With no
    units at all the result is (0.0, 1.0). Raises ValueError for fewer than 2 variants, a
    non-positive weight or an observed variant without a weight.
    """
    weights = dict.fromkeys(observed, 1.0) if expected_weights is None else expected_weights
    unknown = set(observed) - set(weights)
    if unknown:
        raise ValueError(f"observed variants without an expected weight: {sorted(unknown)}")
    if len(weights) < 2 or any(not w > 0 for w in weights.values()):
        raise ValueError(f"need >= 2 variants with positive weights, got {dict(weights)}")
    counts = [observed.get(k, 0) for k in weights]
    total, wsum = sum(counts), sum(weights.values())
    if total == 0:
        return 0.0, 1.0
    expected = [total * w / wsum for w in weights.values()]
    res = sps.chisquare(counts, expected)
    return float(res.statistic), float(res.pvalue)
