"""Clustered quantile metrics (p50, p90 of session length, latency, …), no Spark.

A quantile metric is the p-quantile Q̂ of every value (a source row: a session, a request)
of a variant's assignment units. Values of one assignment unit are correlated, so the
variance of Q̂ must be cluster-robust, as for ratio metrics. Two forms of Deng, Knoblich &
Lu, "Applying the Delta Method in Metric Analytics" (KDD 2018), §4, both built on the
indicator ratio F̂(Q̂) = ΣI_i/ΣN_i (I_i: the unit's values ≤ Q̂, N_i: all its values), a
ratio metric over assignment units whose delta-method variance σ²_p is cluster-robust:

- **Outer interval** (Deng et al. §4.2): [Q̂(p − z·σ_p), Q̂(p + z·σ_p)], the sample
  quantiles at the ends of the probability's cluster-robust interval. The probabilities
  are known only after σ_p, which needs Q̂: three passes over the values.
- **What we use** (as gbstats' `QuantileClusteredStatistic`): the outer interval at the
  *iid* probabilities p ∓ z₀·sqrt(p(1−p)/N) (`outer_probabilities`), known once N is, so
  the same pass that counts I_i also takes those quantiles: two passes. Its half-width
  over z₀ is Q̂'s iid standard error; times the square root of the indicator's design
  effect, Deff = σ²_p / (r(1 − r)/N) with r = F̂(Q̂), it is cluster-robust
  (`QuantileStats.stderr`). Both forms estimate σ_p/f(Q) and agree asymptotically.

z₀ is fixed at 1.96 (95 %) so that staged numbers do not depend on an experiment's alpha;
the half-width over z₀ is a standard error whatever alpha later applies. The
density-based form σ_p/f̂(Q̂) needs a kernel bandwidth and is unstable for discrete
values (latency in whole milliseconds): not used. Quantiles do not merge across
partitions or days (`QuantileStats.__add__` refuses), and CUPED does not apply to them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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
from cluster_spark.stats.intervals import FiellerRatio
from cluster_spark.stats.ratio import RatioStats
from cluster_spark.status import Status

#: z of the staged outer interval (95 %): its half-width over Z0 is the standard error.
Z0 = float(sps.norm.ppf(0.975))


def check_quantile(p: float) -> None:
    if not 0 < p < 1:
        raise ValueError(f"quantile must be in (0, 1), got {p!r}")


def outer_probabilities(p: float, n_values: int) -> tuple[float, float]:
    """(p − z₀·sqrt(p(1 − p)/N), p + z₀·sqrt(p(1 − p)/N)), clipped to [0, 1]: the
    probabilities whose sample quantiles bound the staged (iid) outer interval of a group
    of N values. Raises for invalid p; N < 1 gives (0, 1)."""
    check_quantile(p)
    if n_values < 1:
        return 0.0, 1.0
    half = Z0 * math.sqrt(p * (1 - p) / n_values)
    return max(p - half, 0.0), min(p + half, 1.0)


@dataclass(frozen=True)
class QuantileStats:
    """One variant's quantile metric: ``n`` assignment units, the sample quantile
    ``estimate`` = Q̂(p) of their values, ``lower`` and ``upper`` the sample quantiles at
    `outer_probabilities(p, N)`, and ``indicator``: the moments of (I_i, N_i) over the
    ``n`` units (values at or below Q̂, all values), N = ΣN_i."""

    n: int
    p: float | None
    estimate: float | None
    lower: float | None
    upper: float | None
    indicator: RatioStats

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> QuantileStats:
        """A staged row of a quantile metric (`kinds.KINDS['quantile'].columns`; the indicator's
        moments in the ratio columns)."""
        cols = ("mean_m", "mean_d", "css_mm", "css_dd", "css_md")
        n = int(row.get("n_units") or 0)
        return cls(
            n=n,
            p=row.get("quantile_p"),
            estimate=row.get("quantile_estimate"),
            lower=row.get("quantile_lower"),
            upper=row.get("quantile_upper"),
            indicator=RatioStats(n, *[row.get(c) or 0.0 for c in cols]),
        )

    def __add__(self, other: object) -> QuantileStats:
        raise TypeError(
            "quantile statistics do not merge: a quantile of the union is not a function of "
            "the parts' quantiles (stage the group in one pass)"
        )

    @property
    def n_values(self) -> int:
        """N: the values of the group."""
        return round(self.indicator.sum_d)

    @property
    def design_effect(self) -> float | None:
        """σ²_p / (r(1 − r)/N): the indicator ratio's cluster-robust variance over its iid
        one, at r = ΣI/ΣN; None when undefined (fewer than 2 units, r ∈ {0, 1})."""
        r, var = self.indicator.ratio, self.indicator.var_ratio
        if r is None or var is None or self.n < 2 or not 0 < r < 1:
            return None
        return var / (r * (1 - r) / self.indicator.sum_d)

    @property
    def stderr(self) -> float | None:
        """(U − L)/(2z₀) · sqrt(Deff): the iid outer interval's standard error, made
        cluster-robust by the indicator's design effect (1 where it is undefined: then
        the interval is degenerate or the values all tie). None with fewer than 2 units."""
        if self.n < 2 or None in (self.estimate, self.lower, self.upper):
            return None
        deff = self.design_effect
        return (self.upper - self.lower) / (2 * Z0) * math.sqrt(1.0 if deff is None else deff)


def fieller(treatment: QuantileStats, control: QuantileStats) -> FiellerRatio | None:
    """Q̂_T/Q̂_C with Var = SE², independent variants: Fieller's relative interval."""
    se_t, se_c = treatment.stderr, control.stderr
    if se_t is None or se_c is None:
        return None
    return FiellerRatio(treatment.estimate, control.estimate, se_t * se_t, se_c * se_c)


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


#: The reducer's entry points of this kind (`kinds`).
from_row = QuantileStats.from_row
compare = compare_quantiles
