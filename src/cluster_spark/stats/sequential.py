"""Always-valid inference: asymptotic confidence sequences and their p-values
(Waudby-Smith et al. 2024), tuned for a planned sample size N*. No Spark. Invalid
arguments raise ValueError; unusable estimates give None."""

from __future__ import annotations

import math

from scipy import special as spsp

from cluster_spark.stats.inference import check_alpha


def _check_n_star(n_star: float) -> None:
    if not n_star > 0:
        raise ValueError(f"n_star must be > 0, got {n_star!r}")


def optimal_rho2(n_star: float, alpha: float) -> float:
    """ρ² making the two-sided normal-mixture boundary narrowest at n = N*.

    The margin below depends on n only through u = nρ² + 1; minimizing
    u(log u − 2 log α)/(u − 1) over u > 1 gives u − log u = 1 − 2 log α, solved by
    u = −W₋₁(−α²/e) (W₋₁ the lower branch of Lambert's W), so ρ² = (−W₋₁(−α²/e) − 1)/N*.
    The common approximation W₋₁(z) ≈ log(−z) − log(−log(−z)) gives Howard, Ramdas, McAuliffe
    & Sekhon's ρ² ≈ (−2 log α + log(1 − 2 log α))/N* ("Time-uniform, nonparametric,
    nonasymptotic confidence sequences", Ann. Statist. 49(2), 2021); the exact form is the one
    used in Waudby-Smith et al.'s reference code.
    """
    check_alpha(alpha)
    _check_n_star(n_star)
    u = -float(spsp.lambertw(-alpha * alpha / math.e, k=-1).real)
    return (u - 1.0) / n_star


def _cs_multiplier(n: float, alpha: float, n_star: float) -> float:
    """Margin / stderr: sqrt(2(nρ²+1)/(nρ²) · log(sqrt(nρ²+1)/α)) with ρ² = optimal_rho2."""
    nr = n * optimal_rho2(n_star, alpha)
    return math.sqrt(2.0 * (nr + 1.0) / nr * (0.5 * math.log1p(nr) - math.log(alpha)))


def _usable(estimate: float | None, stderr: float | None, n: float) -> tuple[float, float] | None:
    """(estimate, stderr) when both are finite, stderr > 0 and n > 0; else None."""
    if estimate is None or stderr is None or not n > 0:
        return None
    if not (math.isfinite(estimate) and math.isfinite(stderr) and stderr > 0):
        return None
    return estimate, stderr


def confidence_sequence(
    estimate: float | None,
    stderr: float | None,
    n: float,
    alpha: float,
    n_star: float,
) -> tuple[float, float] | None:
    """Two-sided asymptotic 1 − alpha confidence sequence at sample size n.

    Waudby-Smith, Arbour, Sinha, Kennedy & Ramdas, "Time-uniform central limit theory and
    asymptotic confidence sequences" (Ann. Statist. 2024; arXiv:2103.06476): for a sample
    mean with unit-level standard deviation σ̂_n,
    ``μ̂_n ± σ̂_n · sqrt(2(nρ² + 1)/(n²ρ²) · log(sqrt(nρ² + 1)/α))``
    (Robbins' normal-mixture boundary with the CLT's plug-in variance). An effect estimated
    from n units with standard error ``stderr`` = σ̂_n/√n therefore gets
    ``estimate ± stderr · sqrt(2(nρ² + 1)/(nρ²) · log(sqrt(nρ² + 1)/α))``, with
    ρ² = `optimal_rho2`(N*, α): the sequence is narrowest at n = N*.

    ``n`` and ``n_star`` must count the same thing (e.g. assignment units in both groups of
    the comparison); only n/N* matters. The coverage is time-uniform — P(∃n: effect ∉ CS_n)
    ≤ α asymptotically — so the result may be checked after every batch; intersecting the
    intervals seen so far keeps that guarantee. The quantile is normal (no Welch df).
    Returns None when the estimate or standard error is missing, not finite or 0, or n ≤ 0.
    """
    check_alpha(alpha)
    _check_n_star(n_star)
    usable = _usable(estimate, stderr, n)
    if usable is None:
        return None
    est, se = usable
    margin = se * _cs_multiplier(n, alpha, n_star)
    return est - margin, est + margin


def sequential_p_value(
    estimate: float | None,
    stderr: float | None,
    n: float,
    alpha: float,
    n_star: float,
) -> float | None:
    """Always-valid p-value of effect = 0, dual to `confidence_sequence`.

    0 lies outside the confidence sequence at level α' (same ρ) exactly when
    α' > sqrt(1 + nρ²) · exp(−z² nρ² / (2(1 + nρ²))), z = estimate/stderr, so
    ``p = min(1, sqrt(1 + nρ²) · exp(−z² nρ² / (2(1 + nρ²))))``. ``alpha`` only tunes ρ
    (`optimal_rho2`(N*, alpha)): fix it in advance; then p ≤ alpha iff 0 is outside
    ``confidence_sequence(estimate, stderr, n, alpha, n_star)``. The running minimum of p over
    looks is the always-valid p-value (Waudby-Smith et al. 2024; Howard et al. 2021).
    Returns None in the cases where `confidence_sequence` does.
    """
    check_alpha(alpha)
    _check_n_star(n_star)
    usable = _usable(estimate, stderr, n)
    if usable is None:
        return None
    nr = n * optimal_rho2(n_star, alpha)
    z = usable[0] / usable[1]
    log_p = 0.5 * math.log1p(nr) - z * z * nr / (2.0 * (1.0 + nr))
    return math.exp(min(log_p, 0.0))
