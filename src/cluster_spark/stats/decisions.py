"""From a comparison to a decision (no Spark): win / loss / inconclusive for goal and
secondary metrics, and the non-inferiority test of guardrails (docs/methods.md,
"Decisions"; GrowthBook's and Statsig's guardrails, Statsig's and Eppo's non-inferiority
tests).

Directions: `increase` (higher is better) or `decrease` (lower is better). Relative
effects are (R_T − R_C)/|R_C|, so "bad" is negative for `increase` and positive for
`decrease` whatever the sign of R_C.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from scipy import stats as sps

from cluster_spark.stats.intervals import FiellerRatio, fieller_relative_ci


class Decision(StrEnum):
    """The `decision` column of a treatment row (null on control rows)."""

    #: Goal/secondary: significant in the good direction.
    WIN = "win"
    #: Goal/secondary: significant in the bad direction.
    LOSS = "loss"
    #: Goal/secondary: not significant, or no p-value.
    INCONCLUSIVE = "inconclusive"
    #: Guardrail: non-inferiority shown (the one-sided bound lies within the margin).
    GUARDRAIL_OK = "guardrail_ok"
    #: Guardrail: not shown non-inferior, and the two-sided CI shows significant harm.
    GUARDRAIL_VIOLATED = "guardrail_violated"
    #: Guardrail: neither.
    GUARDRAIL_INCONCLUSIVE = "guardrail_inconclusive"


def _dist(df: float | None):
    return sps.norm() if df is None else sps.t(df)


def effect_decision(
    p_value: float | None, effect: float | None, direction: str, alpha: float
) -> Decision:
    """Goal and secondary metrics: `win` or `loss` when `p_value` < alpha (the sign of the
    effect in the metric's direction decides which), else `inconclusive`."""
    if p_value is None or effect is None or not p_value < alpha or effect == 0:
        return Decision.INCONCLUSIVE
    good = effect > 0 if direction == "increase" else effect < 0
    return Decision.WIN if good else Decision.LOSS


@dataclass(frozen=True)
class NonInferiority:
    """The one-sided 1 − alpha bound of the relative effect in the bad direction, and the
    one-sided p-value of H0: the relative effect is at least `margin` in the bad
    direction (small: non-inferiority shown)."""

    bound: float | None
    p_value: float | None

    def shown(self, alpha: float) -> bool:
        return self.p_value is not None and self.p_value < alpha


def noninferiority_delta(
    effect_rel: float | None,
    se_rel: float | None,
    margin: float,
    direction: str,
    alpha: float,
    df: float | None = None,
) -> NonInferiority:
    """Delta-method non-inferiority test of a relative effect L with standard error s:
    for `increase`, bound = L − q·s and p = P(T ≥ (L + margin)/s); for `decrease`,
    bound = L + q·s and p = P(T ≥ (margin − L)/s); q the 1 − alpha quantile of T, Welch's
    t with `df` or the normal. The bound lies within the margin exactly when p < alpha."""
    if effect_rel is None or se_rel is None or not se_rel > 0:
        return NonInferiority(None, None)
    dist = _dist(df)
    q = float(dist.ppf(1 - alpha))
    if direction == "increase":
        return NonInferiority(
            effect_rel - q * se_rel, float(dist.sf((effect_rel + margin) / se_rel))
        )
    return NonInferiority(effect_rel + q * se_rel, float(dist.sf((margin - effect_rel) / se_rel)))


def noninferiority_fieller(
    ratio: FiellerRatio | None,
    margin: float,
    direction: str,
    alpha: float,
    df: float | None = None,
) -> NonInferiority:
    """Fieller's non-inferiority test (the default, `relative_ci: fieller`) of ρ = a/b
    (`intervals.FiellerRatio`: R_T/R_C, or the CUPED-adjusted (R_C + Δ_adj)/R_C). With
    s = sign(b), the relative effect is −margin (`increase`) where a = c₀b, c₀ = 1 − s·margin
    (+margin in the bad direction of `decrease`: c₀ = 1 + s·margin), since |b| = s·b. The
    test of that ratio is z = ±(a − c₀b)/sqrt(Var(a − c₀b)) (Fieller 1954), + for
    `increase`, − for `decrease`: large z is evidence against inferiority; p = P(T ≥ z),
    T Welch's t with `df` or the normal. The bound is the matching end of Fieller's
    two-sided 1 − 2·alpha interval (None when it is unbounded)."""
    if ratio is None or ratio.b == 0:
        return NonInferiority(None, None)
    s = 1.0 if ratio.b > 0 else -1.0
    c0 = 1.0 - s * margin if direction == "increase" else 1.0 + s * margin
    variance = ratio.var_difference(c0)
    if not variance > 0:
        return NonInferiority(None, None)
    # |b| = s·b keeps H0 linear: a − c₀b ≤ 0 (increase) or ≥ 0 (decrease).
    z = (ratio.a - c0 * ratio.b) / math.sqrt(variance) * (1.0 if direction == "increase" else -1.0)
    p = float(_dist(df).sf(z))
    interval = fieller_relative_ci(ratio, 2 * alpha, df) if alpha < 0.5 else None
    bound = None if interval is None else interval[0] if direction == "increase" else interval[1]
    return NonInferiority(bound, p)


def guardrail_decision(
    ni: NonInferiority,
    ci_low: float | None,
    ci_high: float | None,
    direction: str,
    alpha: float,
) -> Decision:
    """`guardrail_ok` when non-inferiority is shown, else `guardrail_violated` when the
    two-sided CI (`ci_low`, `ci_high`) lies wholly in the bad direction, else
    `guardrail_inconclusive`."""
    if ni.shown(alpha):
        return Decision.GUARDRAIL_OK
    harm = (
        ci_high is not None and ci_high < 0
        if direction == "increase"
        else ci_low is not None and ci_low > 0
    )
    return Decision.GUARDRAIL_VIOLATED if harm else Decision.GUARDRAIL_INCONCLUSIVE
