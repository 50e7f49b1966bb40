"""Bayesian results of a comparison (no Spark): a normal model on the effect.

The likelihood of the true effect Δ (relative or absolute) is the delta-method estimate
and its standard error, as in GrowthBook's Bayesian engine (gbstats `EffectBayesianABTest`,
Eppo's Bayesian analysis): Δ̂ ~ N(Δ, s²). The prior is flat (improper; GrowthBook's
default) or N(m₀, τ²) (Eppo's; `prior_sd` τ). The posterior is N(μ, σ²) with
1/σ² = 1/s² + 1/τ² and μ = σ²(Δ̂/s² + m₀/τ²) (μ = Δ̂, σ = s with the flat prior). From it:

- chance to beat control: P(Δ > 0) = Φ(μ/σ) where higher is better, P(Δ < 0) = Φ(−μ/σ)
  where lower is;
- risk (expected loss) of choosing an arm: the posterior mean of what is lost if it is the
  worse one. For higher-is-better, shipping the treatment risks E[max(−Δ, 0)] =
  σφ(μ/σ) − μΦ(−μ/σ) and keeping control E[max(Δ, 0)] = σφ(μ/σ) + μΦ(μ/σ) (closed forms
  of gbstats' truncated-normal means); the two swap where lower is better;
- the equal-tailed credible interval μ ± z₁₋α/₂·σ.

Decisions (GrowthBook's rule; docs/methods.md, "Bayesian results"): a goal or secondary
metric is a `win` when its chance to beat control is at least `chance_to_win` (0.95) and
the treatment's risk is at most `risk_threshold`, a `loss` when the chance is at most
1 − `chance_to_win` and keeping control risks at most `risk_threshold`, else
`inconclusive`. A guardrail is `guardrail_ok` when P(Δ is within the margin) ≥
`chance_to_win`, `guardrail_violated` when P(harm) ≥ `chance_to_win`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats as sps

from cluster_spark.stats.decisions import Decision


@dataclass(frozen=True)
class Posterior:
    """N(mean, stderr²) of the effect, and what a decision reads from it. `risk_*` are in
    the effect's units (a relative effect's risk 0.01 is an expected loss of 1 %)."""

    mean: float
    stderr: float
    chance_to_win: float
    risk_treatment: float
    risk_control: float
    credible_low: float
    credible_high: float


def posterior(
    effect: float | None,
    stderr: float | None,
    direction: str,
    alpha: float,
    prior_mean: float = 0.0,
    prior_sd: float | None = None,
) -> Posterior | None:
    """The posterior of the effect given its estimate and standard error (None when either
    is missing or the standard error is not positive); `prior_sd` None is the flat prior.
    `direction`: `increase` (higher is better) or `decrease`."""
    if effect is None or stderr is None or not stderr > 0:
        return None
    if not (math.isfinite(effect) and math.isfinite(stderr)):
        return None
    mu, sigma = float(effect), float(stderr)
    if prior_sd is not None:  # precision-weighted, in a form without 1/s² overflow
        weight = prior_sd**2 / (prior_sd**2 + sigma**2)  # the data's share of the mean
        mu = weight * mu + (1.0 - weight) * prior_mean
        sigma = sigma * prior_sd / math.sqrt(prior_sd**2 + sigma**2)
    z = mu / sigma
    density = float(sps.norm.pdf(z))
    lose_if_shipped = sigma * density - mu * float(sps.norm.cdf(-z))  # E[max(−Δ, 0)]
    lose_if_kept = sigma * density + mu * float(sps.norm.cdf(z))  # E[max(Δ, 0)]
    better = float(sps.norm.cdf(z))  # P(Δ > 0)
    if direction == "decrease":
        better, lose_if_shipped, lose_if_kept = 1.0 - better, lose_if_kept, lose_if_shipped
    q = float(sps.norm.ppf(1.0 - alpha / 2.0))
    return Posterior(
        mean=mu,
        stderr=sigma,
        chance_to_win=float(better),
        risk_treatment=float(lose_if_shipped),
        risk_control=float(lose_if_kept),
        credible_low=mu - q * sigma,
        credible_high=mu + q * sigma,
    )


def effect_decision(
    post: Posterior | None, chance_to_win: float, risk_threshold: float
) -> Decision:
    """Goal and secondary metrics: `win`, `loss` or `inconclusive` (module docstring)."""
    if post is None:
        return Decision.INCONCLUSIVE
    if post.chance_to_win >= chance_to_win and post.risk_treatment <= risk_threshold:
        return Decision.WIN
    if post.chance_to_win <= 1.0 - chance_to_win and post.risk_control <= risk_threshold:
        return Decision.LOSS
    return Decision.INCONCLUSIVE


def guardrail_decision(
    post: Posterior | None, margin: float, direction: str, chance_to_win: float
) -> Decision:
    """Guardrails: P(the effect lies within `margin` in the bad direction) ≥ `chance_to_win`
    is `guardrail_ok`; P(harm: any change in the bad direction) ≥ `chance_to_win` is
    `guardrail_violated`; else `guardrail_inconclusive`. `margin` is in the effect's units."""
    if post is None:
        return Decision.GUARDRAIL_INCONCLUSIVE
    sign = 1.0 if direction == "increase" else -1.0
    # P(sign·Δ > −margin): the effect is no worse than the margin
    within = float(sps.norm.sf((-margin - sign * post.mean) / post.stderr))
    if within >= chance_to_win:
        return Decision.GUARDRAIL_OK
    if 1.0 - post.chance_to_win >= chance_to_win:
        return Decision.GUARDRAIL_VIOLATED
    return Decision.GUARDRAIL_INCONCLUSIVE
