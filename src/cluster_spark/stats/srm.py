"""Sample-ratio mismatch over time (no Spark): the anytime-valid sequential SRM test of
Lindon & Malek (2020), "Anytime-valid inference for multinomial count data" (NeurIPS; the
test of Optimizely's and Eppo's SRM checks), and the per-day Pearson χ² of first exposures.

Sequential test. Under H0 each exposed unit falls in arm i with the configured share θ0_i.
The alternative mixes over θ ~ Dirichlet(a) with a = c·θ0 (prior centred on the split;
concentration c = `PRIOR_CONCENTRATION`). The Bayes factor of the first N units, whose
arm counts are n (k arms), is the Dirichlet-multinomial marginal likelihood over the
null likelihood (the multinomial coefficient cancels):

    BF(n) = [B(a + n) / B(a)] / Π θ0_i^n_i,   B(x) = Π Γ(x_i) / Γ(Σ x_i),

a nonnegative martingale under H0, so by Ville's inequality P(sup_N BF ≥ 1/α) ≤ α. It
depends on the cumulative counts only: daily batches need no per-unit data, and looking
once a day is a subset of the looks the guarantee covers. The anytime-valid p-value is
p_t = min(p_{t−1}, 1/BF_t), p_0 = 1 (Lindon & Malek, section 3).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

from scipy import stats as sps
from scipy.special import gammaln

#: Dirichlet prior a = c·θ0 (Lindon & Malek's prior centred on the null split; c = 100
#: gives each share a prior sd ≈ sqrt(θ(1−θ)/101), about 5 points at θ = 0.5).
PRIOR_CONCENTRATION = 100.0

#: A day's χ² is computed only when every arm expects at least this many units that day
#: (Cochran's rule: below it the χ² approximation is anticonservative); the sequential
#: test, exact at any count, still covers such days.
MIN_EXPECTED_PER_ARM = 5.0


def _log_beta(x: Sequence[float]) -> float:
    return float(sum(gammaln(v) for v in x) - gammaln(sum(x)))


def log_bayes_factor(
    counts: Sequence[int], theta0: Sequence[float], concentration: float = PRIOR_CONCENTRATION
) -> float:
    """log BF of cumulative arm counts n against the split θ0 (normalized):
    log B(a + n) − log B(a) − Σ n_i log θ0_i with a = concentration·θ0."""
    if len(counts) != len(theta0) or len(counts) < 2:
        raise ValueError("need one count per arm and >= 2 arms")
    total = float(sum(theta0))
    theta = [t / total for t in theta0]
    if any(not t > 0 for t in theta) or any(n < 0 for n in counts):
        raise ValueError(f"need positive shares and non-negative counts: {theta0}, {counts}")
    a = [concentration * t for t in theta]
    return (
        _log_beta([ai + ni for ai, ni in zip(a, counts, strict=True)])
        - _log_beta(a)
        - sum(n * math.log(t) for n, t in zip(counts, theta, strict=True))
    )


def sequential_p_values(
    batches: Sequence[Sequence[int]],
    theta0: Sequence[float],
    concentration: float = PRIOR_CONCENTRATION,
) -> list[float]:
    """The anytime-valid p-value after each batch of arm counts (e.g. each day's first
    exposures): p_t = min(p_{t−1}, 1/BF(counts of batches 1..t)), p_0 = 1."""
    cumulative = [0] * len(theta0)
    p, out = 1.0, []
    for batch in batches:
        cumulative = [c + n for c, n in zip(cumulative, batch, strict=True)]
        log_bf = log_bayes_factor(cumulative, theta0, concentration)
        p = min(p, math.exp(-min(max(log_bf, -700.0), 700.0)))
        out.append(p)
    return out


@dataclass(frozen=True)
class Day:
    """One exposure day: first exposures per arm, their χ² against the split (None when
    an arm expects fewer than `MIN_EXPECTED_PER_ARM`) and the sequential p through it."""

    day: str
    counts: dict[str, int]
    chi2: float | None
    p_value: float | None
    p_sequential: float


@dataclass(frozen=True)
class OverTime:
    """`srm_over_time`'s answer: the days, the sequential p-value at the last one, and
    the first flagged day with the arms whose share is off (None, () if none is)."""

    days: list[Day]
    p_sequential: float | None
    flagged_day: str | None
    arms: tuple[str, ...]


def off_arms(
    counts: Mapping[str, int], weights: Mapping[str, float], threshold: float
) -> tuple[str, ...]:
    """The arms whose count is off the split, sorted: the smallest set of arms without
    which the other arms (at least 2) fit their own relative split (Pearson χ² p ≥
    `threshold`; of equal-size sets, the best fit). When one arm loses units, every other
    arm's share rises, so shares alone would name them all. All arms when no such set
    exists (two arms cannot be told apart)."""
    arms = list(weights)
    for size in range(1, len(arms) - 1):
        best = None
        for out in combinations(arms, size):
            rest = [v for v in arms if v not in out]
            n = sum(counts.get(v, 0) for v in rest)
            wsum = sum(weights[v] for v in rest)
            p = 1.0
            if n:
                observed = [counts.get(v, 0) for v in rest]
                p = float(sps.chisquare(observed, [n * weights[v] / wsum for v in rest]).pvalue)
            if p >= threshold and (best is None or p > best[0]):
                best = (p, out)
        if best is not None:
            return tuple(sorted(best[1]))
    return tuple(sorted(arms))


def srm_over_time(
    daily: Mapping[str, Mapping[str, int]],
    weights: Mapping[str, float],
    threshold: float,
    concentration: float = PRIOR_CONCENTRATION,
) -> OverTime:
    """First exposures per day (day → arm → units; days sorted as ISO strings) against the
    configured split `weights`. A day is flagged when its own χ² has p < threshold / D (D =
    the days with a χ²: Bonferroni over days, so one look at all days together keeps the
    family-wise rate ≤ threshold) or the sequential p-value through it is < threshold.
    Arms outside `weights` are ignored (they are the cumulative SRM's concern)."""
    arms = list(weights)
    wsum = sum(weights.values())
    days = sorted(daily)
    batches = [[int(daily[d].get(v, 0)) for v in arms] for d in days]
    seq = sequential_p_values(batches, [weights[v] / wsum for v in arms], concentration)
    out = []
    for day, batch, p_seq in zip(days, batches, seq, strict=True):
        total = sum(batch)
        chi2 = p = None
        if total and min(total * weights[v] / wsum for v in arms) >= MIN_EXPECTED_PER_ARM:
            res = sps.chisquare(batch, [total * weights[v] / wsum for v in arms])
            chi2, p = float(res.statistic), float(res.pvalue)
        out.append(Day(day, dict(zip(arms, batch, strict=True)), chi2, p, p_seq))
    tested = sum(d.p_value is not None for d in out)
    for d in out:
        if d.p_value is not None and d.p_value < threshold / tested:
            return OverTime(out, seq[-1], d.day, off_arms(d.counts, weights, threshold))
        if d.p_sequential < threshold:
            upto = {v: sum(x.counts[v] for x in out if x.day <= d.day) for v in arms}
            return OverTime(out, seq[-1], d.day, off_arms(upto, weights, threshold))
    return OverTime(out, seq[-1] if seq else None, None, ())
