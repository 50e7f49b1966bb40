"""Heterogeneity of an effect across slices: Cochran's Q test (Cochran 1954), the test of
fixed-effect meta-analysis (Higgins & Thompson 2002 use the same Q for I²). No Spark."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats as sps


@dataclass(frozen=True)
class Heterogeneity:
    q: float
    df: int
    p_value: float


def cochran_q(effects: Sequence[float], stderrs: Sequence[float]) -> Heterogeneity | None:
    """Cochran's Q of k independent estimates θᵢ with standard errors sᵢ (> 0):
    wᵢ = 1/sᵢ², θ̄ = Σwᵢθᵢ/Σwᵢ, Q = Σwᵢ(θᵢ − θ̄)², p = P(χ²_{k−1} ≥ Q) under the null
    that every slice has the same effect. None with fewer than 2 estimates.
    Slices of one dimension partition the units, so their estimates are independent."""
    if len(effects) != len(stderrs):
        raise ValueError(f"{len(effects)} effects but {len(stderrs)} standard errors")
    if any(s <= 0 for s in stderrs):
        raise ValueError(f"standard errors must be positive, got {list(stderrs)}")
    k = len(effects)
    if k < 2:
        return None
    weights = [1.0 / s**2 for s in stderrs]
    pooled = sum(w * e for w, e in zip(weights, effects, strict=True)) / sum(weights)
    q = sum(w * (e - pooled) ** 2 for w, e in zip(weights, effects, strict=True))
    return Heterogeneity(q, k - 1, float(sps.chi2.sf(q, k - 1)))
