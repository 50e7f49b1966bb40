"""Clustered quantile metrics (p50, p90 of session length, latency, …), no Spark.

A quantile metric is the p-quantile Q̂ of every analysis-unit value (sessions, requests) of a
variant's assignment units. Its values are correlated within an assignment unit, so its
variance must be cluster-robust, as for ratio metrics. Method: Deng, Knoblich & Lu, "Applying
the Delta Method in Metric Analytics" (KDD 2018), §4:

1. F̂(Q̂) = ΣI_i / ΣN_i, with I_i the unit's values ≤ Q̂ and N_i all its values, is a ratio
   metric over assignment units: its delta-method variance σ²_p = `RatioStats.var_ratio` of
   (I_i, N_i) is cluster-robust (`probability_interval`).
2. The "outer" interval of Q: [Q̂(p − z·σ_p), Q̂(p + z·σ_p)], the sample quantiles at the ends
   of the probability's interval (§4.2). It needs no density estimate.
3. For comparisons, the standard error of Q̂ is the outer interval's half-width over z:
   SE = (U − L)/(2z) (`QuantileStats.stderr`); a difference of two independent variants then
   has Var = SE_T² + SE_C², with the normal distribution (`compare_quantiles`).

gbstats (`QuantileClusteredStatistic`) uses the same outer interval, at z of 1 − α/2 with α
= 0.05; we take z at the experiment's alpha and do not rescale. The alternative, dividing
σ_p by a kernel density estimate f̂(Q̂) (Var = σ²_p/f̂²), needs a bandwidth choice and is
unstable for discrete values (latency in whole milliseconds): not used. CUPED does not apply
to quantiles (a `quantile` metric's `cuped_status` says so).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats as sps

from cluster_spark.stats.inference import (
    Alternative,
    Comparison,
    absolute_columns,
    check_alpha,
    check_alternative,
    comparison_status,
    control_mean_significant,
    quantile,
    relative_columns,
)
from cluster_spark.stats.ratio import RatioStats
from cluster_spark.status import Status


def check_quantile(p: float) -> None:
    if not 0 < p < 1:
        raise ValueError(f"quantile must be in (0, 1), got {p!r}")


def probability_interval(
    indicator: RatioStats, p: float, alpha: float = 0.05
) -> tuple[float, float] | None:
    """(p − z·σ_p, p + z·σ_p), clipped to [0, 1], with σ²_p the delta-method variance of
    ΣI/ΣN over assignment units (`indicator`: I_i values ≤ Q̂, N_i all values of unit i) and
    z the normal 1 − alpha/2 quantile: the probabilities whose sample quantiles bound the
    outer interval. None with fewer than 2 units or ΣN = 0. Raises for invalid p or alpha."""
    check_quantile(p)
    check_alpha(alpha)
    var = indicator.var_ratio
    if var is None or indicator.n < 2:
        return None
    half = float(sps.norm.ppf(1 - alpha / 2)) * math.sqrt(max(var, 0.0))
    return max(p - half, 0.0), min(p + half, 1.0)


@dataclass(frozen=True)
class QuantileStats:
    """One variant's quantile metric: ``n`` assignment units, the sample quantile
    ``estimate`` = Q̂(p), and the sample quantiles ``lower`` = Q̂(p − z·σ_p) and ``upper`` =
    Q̂(p + z·σ_p) at the ends of `probability_interval` at level ``alpha``."""

    n: int
    p: float
    estimate: float | None
    lower: float | None
    upper: float | None
    alpha: float = 0.05

    @property
    def stderr(self) -> float | None:
        """(U − L)/(2z): the outer interval's half-width over z (Deng et al. 2018, §4.2)."""
        if self.n < 2 or None in (self.estimate, self.lower, self.upper):
            return None
        return (self.upper - self.lower) / (2 * float(sps.norm.ppf(1 - self.alpha / 2)))


def compare_quantiles(
    treatment: QuantileStats,
    control: QuantileStats,
    alpha: float = 0.05,
    alternative: Alternative = "two-sided",
) -> Comparison:
    """Treatment vs control quantile: Δ = Q̂_T − Q̂_C with Var = SE_T² + SE_C² (independent
    variants), the relative lift Δ/|Q̂_C| by the delta method, Var ≈ (SE_T² + (Q̂_T/Q̂_C)²
    SE_C²)/Q̂_C², and z tests (no Welch ν: the SE is not a sample variance). Statuses as
    `inference.compare`: too few units, zero variance, zero control quantile, relative CI
    unbounded. Raises only for invalid alpha or alternative."""
    check_alpha(alpha)
    check_alternative(alternative)
    se_t, se_c = treatment.stderr, control.stderr
    if se_t is None or se_c is None:
        return Comparison(status=Status.TOO_FEW_UNITS)
    dist = sps.norm()
    q = quantile(dist, alpha, alternative)
    q_t, q_c = treatment.estimate, control.estimate
    effect = q_t - q_c
    se = math.sqrt(se_t * se_t + se_c * se_c)
    out = absolute_columns(effect, se, q, dist.sf, None, alternative)
    zero_se = se == 0
    informative = control_mean_significant(q_c, se_c * se_c, q)
    if q_c != 0:
        se_rel = math.sqrt(se_t * se_t + (q_t / q_c) ** 2 * se_c * se_c) / abs(q_c)
        out |= relative_columns(effect / abs(q_c), se_rel, informative, q, dist.sf, alternative)
        zero_se = zero_se or se_rel == 0
    return Comparison(**out, status=comparison_status(out, zero_se, informative))
