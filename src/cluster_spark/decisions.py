"""Decision aids on top of the delta-method comparison (no Spark).

- `fieller_interval`: Fieller's interval for the relative lift (option to the delta method).
- `confidence_sequence`, `sequential_p_value`: always-valid inference by asymptotic
  confidence sequences (Waudby-Smith et al.), tuned for a planned sample size N*.
- `benjamini_hochberg`, `holm`: adjusted p-values across metrics × variants.
- `design_effect`, `mde`: clustering cost and power / MDE.

See METHODS.md, "Comparisons" and "Variance reduction and decisions". Data problems give
``None``, never an exception or NaN; invalid arguments (alpha outside (0, 1), …) raise
ValueError.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import special as spsp
from scipy import stats as sps

from cluster_spark.inference import Test, compare
from cluster_spark.stats import RatioStats
from cluster_spark.status import Status


def _check_alpha(alpha: float, name: str = "alpha") -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"{name} must be in (0, 1), got {alpha!r}")


def _check_n_star(n_star: float) -> None:
    if not n_star > 0:
        raise ValueError(f"n_star must be > 0, got {n_star!r}")


# ---------------------------------------------------------------- Fieller


def fieller_interval(
    treatment: RatioStats,
    control: RatioStats,
    alpha: float = 0.05,
    test: Test = "welch",
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
    ΣD = 0 or both variances 0 (as `compare` gives no CI for a zero SE). Raises only for
    invalid ``alpha`` or ``test``.
    """
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


# ---------------------------------------------------------------- sequential testing


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
    _check_alpha(alpha)
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
    _check_alpha(alpha)
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
    _check_alpha(alpha)
    _check_n_star(n_star)
    usable = _usable(estimate, stderr, n)
    if usable is None:
        return None
    nr = n * optimal_rho2(n_star, alpha)
    z = usable[0] / usable[1]
    log_p = 0.5 * math.log1p(nr) - z * z * nr / (2.0 * (1.0 + nr))
    return math.exp(min(log_p, 0.0))


# ---------------------------------------------------------------- multiple testing


def _ranked(pvalues: Sequence[float | None]) -> list[tuple[int, float]]:
    """(index, p) of the non-None p-values, ascending by p (stable); raises for invalid ones."""
    present: list[tuple[int, float]] = []
    for i, p in enumerate(pvalues):
        if p is None:
            continue
        if not 0 <= p <= 1:
            raise ValueError(f"p-values must be in [0, 1] or None, got {p!r}")
        present.append((i, float(p)))
    return sorted(present, key=lambda ip: ip[1])


def benjamini_hochberg(pvalues: Sequence[float | None]) -> list[float | None]:
    """Benjamini–Hochberg (1995) adjusted p-values (FDR), None passing through.

    With the m non-None p-values sorted, p_(1) ≤ … ≤ p_(m):
    ``adj_(i) = min(1, min_{j ≥ i} m p_(j) / j)``; a hypothesis is rejected at FDR level q
    when its adjusted p-value is ≤ q. None entries are not counted in m.
    """
    order = _ranked(pvalues)
    m = len(order)
    out: list[float | None] = [None] * len(pvalues)
    running = 1.0
    for rank in range(m, 0, -1):
        i, p = order[rank - 1]
        running = min(running, p * m / rank)
        out[i] = running
    return out


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm (1979) step-down adjusted p-values (FWER), None passing through.

    ``adj_(i) = max_{j ≤ i} min(1, (m − j + 1) p_(j))`` over the m non-None p-values sorted
    ascending. None entries are not counted in m.
    """
    order = _ranked(pvalues)
    m = len(order)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (i, p) in enumerate(order, start=1):
        running = max(running, min(1.0, (m - rank + 1) * p))
        out[i] = running
    return out


# ---------------------------------------------------------------- power and design


def design_effect(
    stats: RatioStats,
    naive_unit_variance: float | None,
    n_analysis_units: float,
) -> float | None:
    """Design effect Var_delta(R) / (s²_y / N): clustered variance ÷ naive variance.

    ``Var_delta(R) = stats.var_ratio`` is the delta-method variance of R = ΣM/ΣD over the
    group's assignment units (Deng, Knoblich & Lu 2018); ``naive_unit_variance`` is s²_y, the
    sample variance of the analysis-unit values (`RatioStats.unit_variance` of the staged
    analysis-unit moments, which is s²_y when each analysis unit counts once), and
    ``n_analysis_units`` = N their number: s²_y/N is the variance of R if analysis units were
    independent (Kish, "Survey Sampling", 1965). A value above 1 is the factor by which
    clustering inflates the variance (≈ 1 + (k̄ − 1)·ICC for clusters of size k̄). None when
    Var_delta(R) is undefined, s²_y is missing or ≤ 0, or N ≤ 0.
    """
    var = stats.var_ratio
    if var is None or naive_unit_variance is None or not naive_unit_variance > 0:
        return None
    if not n_analysis_units > 0:
        return None
    de = var / (naive_unit_variance / n_analysis_units)
    return de if math.isfinite(de) else None


@dataclass(frozen=True)
class MinimumDetectableEffect:
    """Absolute MDE and, when a nonzero baseline was given, relative MDE (absolute/|baseline|)."""

    absolute: float | None = None
    relative: float | None = None


def mde(
    unit_variance: float | None,
    n_treatment: float,
    alpha: float = 0.05,
    power: float = 0.8,
    baseline: float | None = None,
    n_control: float | None = None,
) -> MinimumDetectableEffect:
    """Minimum detectable effect of a two-sided two-group z test.

    ``MDE = (z_{1−α/2} + z_{power}) · sqrt(V (1/n_T + 1/n_C))``, the normal-approximation
    power formula (as in Kohavi, Tang & Xu, "Trustworthy Online Controlled Experiments",
    2020), ignoring the far rejection tail; ``n_control`` defaults to ``n_treatment``
    (equal groups: sqrt(2V/n)). ``unit_variance`` V is the per-assignment-unit linearized
    variance of the metric (`RatioStats.unit_variance` of a pilot or the control group, or
    a CUPED-adjusted V_R + θ²V_P − 2θC), so n counts *assignment* units and clustering is
    accounted for. The relative MDE is MDE/|baseline|. Fields are None when V is missing
    or negative, a group size ≤ 0, or (relative only) the baseline is missing or 0.
    Raises for alpha or power outside (0, 1).
    """
    _check_alpha(alpha)
    _check_alpha(power, "power")
    n_control = n_treatment if n_control is None else n_control
    if unit_variance is None or not unit_variance >= 0:
        return MinimumDetectableEffect()
    if not (n_treatment > 0 and n_control > 0):
        return MinimumDetectableEffect()
    z = float(sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power))
    absolute = z * math.sqrt(unit_variance * (1.0 / n_treatment + 1.0 / n_control))
    if not math.isfinite(absolute):
        return MinimumDetectableEffect()
    relative = None
    if baseline is not None and baseline != 0:
        relative = absolute / abs(baseline)
    return MinimumDetectableEffect(absolute, relative)
