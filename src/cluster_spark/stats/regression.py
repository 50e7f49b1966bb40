"""Regression adjustment of ratio metrics with several covariates (no Spark).

CUPED (`stats.cuped`) adjusts a metric's ratio R = ΣM/ΣD by its own pre-period ratio. Here
R is adjusted by K pre-period ratios at once, W_k = ΣX_k/ΣY_k: the metric's own first, then
the experiment's `covariates` (other metrics before exposure, as Eppo's CUPED++). It is
regression adjustment (Lin 2013, "Agnostic notes on regression adjustments to experimental
data") of the delta-method linearizations (Deng, Knoblich & Lu, KDD 2018) with one
coefficient vector θ pooled over both arms with 1/n weights (the θ of Deng et al. 2013,
CUPED, made a vector), so with K = 1 it is `cuped.compare_cuped` (docs/methods.md,
"Several covariates").

A group is summarised by `comoments.CovariateMoments` (``CupedStats.covariates``), staged
per group (`staging.moments`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cluster_spark.stats.comoments import CovariateMoments
from cluster_spark.stats.cuped import (
    CupedComparison,
    CupedStats,
    _from_unadjusted,
    unadjusted_comparison,
)
from cluster_spark.stats.inference import (
    Alternative,
    Test,
    absolute_columns,
    comparison_status,
    control_mean_significant,
    reference_distribution,
    relative_columns,
)
from cluster_spark.stats.intervals import FiellerRatio
from cluster_spark.status import CupedStatus, Status


@dataclass(frozen=True)
class _Terms:
    """A group's ratio R, covariate ratios W (K; NaN where undefined), and the delta
    method's V_R = g_RᵀΛg_R, C_k = g_RᵀΛg_k and V_W = [g_kᵀΛg_l] (Λ the sample covariance
    of v, n − 1; rows and columns of an undefined W_k are 0)."""

    n: int
    r: float
    w: np.ndarray
    v_r: float
    c: np.ndarray
    v_w: np.ndarray

    @property
    def defined(self) -> np.ndarray:
        return np.isfinite(self.w)


def _terms(s: CovariateMoments, own: bool, pairs: int) -> _Terms | None:
    """None when n < 2 or ΣD = 0. v = (M, D, X, Y, then `pairs` pairs (X_k, Y_k) of other
    metrics, then attribute columns z_j); `own`: X, Y are the metric's own pre-period (with
    `cuped_lookback_days`), else they are skipped. A pair's covariate is ΣX_k/ΣY_k,
    undefined (NaN) where ΣY_k = 0; an attribute column's is its mean z̄_j (gradient 1)."""
    mean = np.asarray(s.means)
    keep = [0, 1, *range(2 if own else 4, len(mean))]
    mean, cov = mean[keep], (s.matrix() / max(s.n - 1, 1))[np.ix_(keep, keep)]
    if s.n < 2 or mean[1] == 0:
        return None
    n_pairs = pairs + (1 if own else 0)
    singles = len(mean) - 2 - 2 * n_pairs
    x, y = mean[2 : 2 + 2 * n_pairs : 2], mean[3 : 2 + 2 * n_pairs : 2]
    defined = y != 0
    safe = np.where(defined, y, 1.0)
    grads = np.zeros((1 + n_pairs + singles, len(mean)))
    grads[0, :2] = (1.0 / mean[1], -mean[0] / mean[1] ** 2)
    for i in np.flatnonzero(defined):
        grads[1 + i, 2 + 2 * i : 4 + 2 * i] = (1.0 / safe[i], -x[i] / safe[i] ** 2)
    for j in range(singles):
        grads[1 + n_pairs + j, 2 + 2 * n_pairs + j] = 1.0
    terms = grads @ cov @ grads.T
    if not np.all(np.isfinite(terms)):
        return None
    r, v_r = float(mean[0] / mean[1]), max(float(terms[0, 0]), 0.0)
    w = np.concatenate([np.where(defined, x / safe, np.nan), mean[2 + 2 * n_pairs :]])
    return _Terms(s.n, r, w, v_r, terms[0, 1:], terms[1:, 1:])


def _pooled_theta(t: _Terms, c: _Terms, usable: np.ndarray) -> np.ndarray:
    """θ = (Σ_g V_W,g/n_g)⁺ (Σ_g C_g/n_g) over the usable covariates (0 for the others),
    solved on the correlation scale so covariates of different units weigh alike; the
    pseudo-inverse gives collinear covariates a shared coefficient and a constant one 0."""
    a = t.v_w / t.n + c.v_w / c.n
    b = t.c / t.n + c.c / c.n
    scale = np.sqrt(np.clip(a.diagonal(), 0.0, None))
    use = usable & (scale > 0)
    theta = np.zeros(len(b))
    if use.any():
        s = scale[use]
        scaled = a[np.ix_(use, use)] / np.outer(s, s)
        theta[use] = np.linalg.pinv(scaled, hermitian=True) @ (b[use] / s) / s
    return theta


def compare_regression(
    treatment: CupedStats,
    control: CupedStats,
    alpha: float = 0.05,
    test: Test = "welch",
    alternative: Alternative = "two-sided",
    own: bool = True,
    pairs: int = 0,
) -> CupedComparison:
    """Treatment vs control adjusted by K covariates (``CupedStats.covariates``: the
    metric's own pre-period first when `own`, then `pairs` other metrics' pre-periods, each
    a ratio ΣX_k/ΣY_k, then attribute columns, each by its mean; `_terms`).

    Per group g, with the terms of `_terms`:

    - θ = (Σ_g V_W,g/n_g)⁺ (Σ_g C_g/n_g), the vector minimizing Var(Δ_adj) below (the
      pseudo-inverse: collinear covariates share their coefficient); Δ_adj = (R_T − R_C)
      − θᵀ(W_T − W_C);
    - Var(Δ_adj) = a + b, a = (V_R − 2θᵀC + θᵀV_Wθ)_T/n_T, b likewise (θ fixed, as CUPED);
    - Welch–Satterthwaite ν from a and b (`inference.compare`), or z; CI = est ± q·SE;
    - relative lift Δ_adj/|R_C| with Var = [a + (k²V_R − 2kθᵀC + θᵀV_Wθ)_C/n_C]/R_C²,
      k = 1 + Δ_adj/R_C; Fieller's inputs a = R_C + Δ_adj, b = R_C, Var a = a_T +
      θᵀV_W,Cθ/n_C, Var b = V_R,C/n_C, Cov = θᵀC_C/n_C (as `cuped.compare_cuped`).

    ``theta`` is θ₁, the own pre-period's coefficient (None without `own`); ``thetas`` of
    the result: all of them. A covariate undefined (ΣY_k = 0) or constant in a group is
    left out (θ_k = 0), the own pre-period too, as CUPED leaves it out. Fallbacks as
    `cuped.compare_cuped`: ``fallback_no_pre_data`` when a group lacks the moments or no
    covariate is left; ``fallback_no_gain`` when the adjusted variance is not smaller.
    Always the delta method's variance: the jackknife of several covariates is not staged.
    Raises ValueError when the two groups' covariates differ in number.
    """
    unadjusted, raw_ratio = unadjusted_comparison(treatment, control, alpha, test, alternative)
    if unadjusted.status in (Status.TOO_FEW_UNITS, Status.ZERO_DENOMINATOR):
        return _from_unadjusted(unadjusted, CupedStatus.NOT_COMPARED, raw_ratio)
    if treatment.covariates is None or control.covariates is None:
        return _from_unadjusted(unadjusted, CupedStatus.NO_PRE_DATA, raw_ratio)
    if len(treatment.covariates.means) != len(control.covariates.means):
        raise ValueError("the groups' covariates differ in number: staged under other levels?")
    t = _terms(treatment.covariates, own, pairs)
    c = _terms(control.covariates, own, pairs)
    if t is None or c is None:
        return _from_unadjusted(unadjusted, CupedStatus.NO_PRE_DATA, raw_ratio)
    # a covariate is used where it is defined and varies in both groups (CUPED's rule)
    usable = t.defined & c.defined & (t.v_w.diagonal() > 0) & (c.v_w.diagonal() > 0)
    if not usable.any():
        return _from_unadjusted(unadjusted, CupedStatus.NO_PRE_DATA, raw_ratio)
    theta = _pooled_theta(t, c, usable)
    t_w, c_w = np.where(usable, t.w, 0.0), np.where(usable, c.w, 0.0)

    def adjusted(g: _Terms) -> float:
        return max(float(g.v_r - 2.0 * theta @ g.c + theta @ g.v_w @ theta), 0.0) / g.n

    a, b = adjusted(t), adjusted(c)
    var_adj, var_unadj = a + b, t.v_r / t.n + c.v_r / c.n
    if not all(map(math.isfinite, (*theta, var_adj, var_unadj))):
        return _from_unadjusted(unadjusted, CupedStatus.NO_PRE_DATA, raw_ratio)
    reduction = 1.0 - var_adj / var_unadj if var_unadj > 0 else None
    first = float(theta[0]) if own else None
    if not var_adj < var_unadj:
        return _from_unadjusted(
            unadjusted,
            CupedStatus.NO_GAIN,
            raw_ratio,
            theta=first,
            variance_reduction=reduction,
        )

    df, dist, q = reference_distribution(a, b, t.n, c.n, alpha, test, alternative)
    effect_abs = float((t.r - theta @ t_w) - (c.r - theta @ c_w))
    se_abs = math.sqrt(var_adj)
    out = absolute_columns(effect_abs, se_abs, q, dist.sf, df, alternative)
    zero_se = se_abs == 0
    informative = control_mean_significant(c.r, c.v_r / c.n, q)
    c_theta, c_quad = float(theta @ c.c), float(theta @ c.v_w @ theta)
    if c.r != 0:
        k = 1.0 + effect_abs / c.r
        b_rel = max(k * k * c.v_r - 2.0 * k * c_theta + c_quad, 0.0) / c.n
        se_rel = math.sqrt(a + b_rel) / abs(c.r)
        if math.isfinite(se_rel):
            rel = relative_columns(
                effect_abs / abs(c.r), se_rel, informative, q, dist.sf, alternative
            )
            out |= rel
            zero_se = zero_se or se_rel == 0
    return CupedComparison(
        **out,
        theta=first,
        thetas=tuple(theta.tolist()),
        variance_reduction=reduction,
        adjusted=True,
        status=comparison_status(out, zero_se, informative),
        cuped_status=CupedStatus.APPLIED,
        control_unit_variance=b * c.n,
        unadjusted=unadjusted,
        fieller=FiellerRatio(
            a=c.r + effect_abs,
            b=c.r,
            var_a=a + c_quad / c.n,
            var_b=c.v_r / c.n,
            cov=c_theta / c.n,
        ),
    )
