"""CUPED / regression adjustment of ratio metrics by linearization (no Spark).

A group is summarised by its size, the means of the unit-level quadruples (M_i, D_i, X_i, Y_i) —
in-experiment numerator and denominator, pre-period numerator and denominator of the same
metric — and the 10 distinct centered sums of their 4×4 co-moment matrix. As for `RatioStats`,
centered sums stay accurate for large means and merge exactly with the pairwise formulas of
Chan, Golub & LeVeque (1979).

The adjustment follows docs/methods.md, "CUPED for ratio metrics": CUPED (Deng, Xu, Kohavi &
Walker, "Improving the sensitivity of online controlled experiments by utilizing pre-experiment
data", WSDM 2013) applied to the delta-method linearizations of R = ΣM/ΣD and P = ΣX/ΣY
(Deng, Knoblich & Lu, "Applying the Delta Method in Metric Analytics", KDD 2018, §3 and §4).

Undefined quantities are ``None``; data problems never raise and never give NaN: they give a
status code and, where the adjustment cannot be made or does not help, the unadjusted numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from cluster_spark.stats.comoments import CovariateMoments
from cluster_spark.stats.inference import (
    Alternative,
    Comparison,
    Test,
    absolute_columns,
    compare,
    comparison_status,
    control_mean_significant,
    reference_distribution,
    relative_columns,
)
from cluster_spark.stats.intervals import FiellerRatio
from cluster_spark.stats.ratio import GroupMeans, RatioStats
from cluster_spark.status import CupedStatus, Status
from cluster_spark.tables import JACKKNIFE_COLUMNS, MOMENT_COLUMNS

_VARS = ("m", "d", "x", "y")
#: The 10 upper-triangle pairs of (M, D, X, Y), in the order of `CupedStats.css`.
_PAIRS = (
    ("m", "m"),
    ("d", "d"),
    ("x", "x"),
    ("y", "y"),
    ("m", "d"),
    ("m", "x"),
    ("m", "y"),
    ("d", "x"),
    ("d", "y"),
    ("x", "y"),
)
#: Names of the centered-sum fields, in the order of `CupedStats.css`.
CSS_FIELDS = tuple(f"css_{a}{b}" for a, b in _PAIRS)


def _css_name(a: str, b: str) -> str:
    i, j = sorted((_VARS.index(a), _VARS.index(b)))
    return f"css_{_VARS[i]}{_VARS[j]}"


@dataclass(frozen=True)
class CupedStats(GroupMeans):
    """Sufficient statistics of quadruples (M_i, D_i, X_i, Y_i), i = 1..n, in centered form.

    ``mean_v`` is the mean of V and ``css_ab = Σ(A − Ā)(B − B̄)`` for the 10 pairs of
    `CSS_FIELDS` (the upper triangle of the 4×4 co-moment matrix over (M, D, X, Y)).
    ``jackknife``: the group's leave-one-cluster-out sums (Σ u², Σ uv, Σ v²) with
    u_g = R_(−g) − R and v_g = P_(−g) − P (`tables.JACKKNIFE_COLUMNS`; the last two None
    without CUPED), or None: then the delta method's variances apply. Not kept by ``+``.
    """

    n: int
    mean_m: float
    mean_d: float
    mean_x: float
    mean_y: float
    css_mm: float
    css_dd: float
    css_xx: float
    css_yy: float
    css_md: float
    css_mx: float
    css_my: float
    css_dx: float
    css_dy: float
    css_xy: float
    jackknife: tuple[float, float | None, float | None] | None = None
    #: With the experiment's `covariates`: the moments of (M, D, X, Y, X_2, Y_2, …), the
    #: metric's own pre-period first (`comoments.CovariateMoments`); kept by ``+``.
    covariates: CovariateMoments | None = None

    @classmethod
    def empty(cls) -> CupedStats:
        """Statistics of no units: the identity of ``+``."""
        return cls(0, *([0.0] * 14))

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> CupedStats:
        """A staged row of a moments kind (`tables.MOMENT_COLUMNS`; the pre-period moments
        are NULL without CUPED and read as 0) with its jackknife sums when staged."""
        values = {c: row.get(c) for c in MOMENT_COLUMNS}
        n = int(values.pop("n_units") or 0)
        rr, rp, pp = (row.get(c) for c in JACKKNIFE_COLUMNS)
        jackknife = None if rr is None else (rr, rp, pp)
        moments = {k: 0.0 if v is None else v for k, v in values.items()}
        covariates = _staged_covariates(n, row.get("cov_mean"), row.get("cov_css"))
        return cls(n, **moments, jackknife=jackknife, covariates=covariates)

    @classmethod
    def from_values(
        cls,
        m: Iterable[float],
        d: Iterable[float],
        x: Iterable[float],
        y: Iterable[float],
    ) -> CupedStats:
        """Two-pass centered statistics of unit-level values (lists, tuples or numpy arrays).

        Raises ValueError when the four sequences differ in length (a programming error).
        """
        cols = {v: [float(t) for t in vals] for v, vals in zip(_VARS, (m, d, x, y), strict=True)}
        lengths = {len(c) for c in cols.values()}
        if len(lengths) != 1:
            raise ValueError(f"m, d, x, y differ in length: {[len(c) for c in cols.values()]}")
        n = lengths.pop()
        if n == 0:
            return cls.empty()
        means = {v: math.fsum(c) / n for v, c in cols.items()}
        dev = {v: [t - means[v] for t in c] for v, c in cols.items()}
        css = {
            f"css_{a}{b}": math.fsum(p * q for p, q in zip(dev[a], dev[b], strict=True))
            for a, b in _PAIRS
        }
        return cls(n=n, **{f"mean_{v}": means[v] for v in _VARS}, **css)

    def __add__(self, other: CupedStats) -> CupedStats:
        """Statistics of the union of two disjoint sets of units.

        The pairwise update of Chan, Golub & LeVeque (1979) applied to every entry of the
        co-moment matrix: with δ_v = mean_v,B − mean_v,A and w = n_A n_B / n,
        ``css_ab = css_ab,A + css_ab,B + δ_a δ_b w`` and ``mean_v = mean_v,A + δ_v n_B / n``.
        The empty statistics are the identity.
        """
        if not isinstance(other, CupedStats):
            return NotImplemented
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        w = self.n * other.n / n
        delta = {v: getattr(other, f"mean_{v}") - getattr(self, f"mean_{v}") for v in _VARS}
        means = {f"mean_{v}": getattr(self, f"mean_{v}") + delta[v] * other.n / n for v in _VARS}
        css = {
            name: getattr(self, name) + getattr(other, name) + delta[a] * delta[b] * w
            for name, (a, b) in zip(CSS_FIELDS, _PAIRS, strict=True)
        }
        both = self.covariates is not None and other.covariates is not None
        covariates = self.covariates + other.covariates if both else None
        return CupedStats(n=n, **means, **css, covariates=covariates)

    @property
    def css(self) -> tuple[float, ...]:
        """The 10 centered sums in the order of `CSS_FIELDS`."""
        return tuple(getattr(self, name) for name in CSS_FIELDS)

    @property
    def sum_x(self) -> float:
        """ΣX."""
        return self.n * self.mean_x

    @property
    def sum_y(self) -> float:
        """ΣY."""
        return self.n * self.mean_y

    @property
    def pre_ratio(self) -> float | None:
        """P = ΣX/ΣY, the same metric in the pre-period; None when ΣY = 0."""
        return None if self.sum_y == 0 else self.sum_x / self.sum_y

    @property
    def covariance(self) -> tuple[tuple[float, ...], ...] | None:
        """Λ, the 4×4 sample covariance matrix (n−1) of (M, D, X, Y); None when n < 2."""
        if self.n < 2:
            return None
        return tuple(
            tuple(getattr(self, _css_name(a, b)) / (self.n - 1) for b in _VARS) for a in _VARS
        )

    @property
    def ratio_stats(self) -> RatioStats:
        """The (M, D) part as `RatioStats` (what `inference.compare` takes)."""
        jk = None if self.jackknife is None else self.jackknife[0]
        args = (self.n, self.mean_m, self.mean_d, self.css_mm, self.css_dd, self.css_md)
        return RatioStats(*args, jackknife=jk)

    @property
    def pre_stats(self) -> RatioStats:
        """The (X, Y) part as `RatioStats`."""
        jk = None if self.jackknife is None else self.jackknife[2]
        args = (self.n, self.mean_x, self.mean_y, self.css_xx, self.css_yy, self.css_xy)
        return RatioStats(*args, jackknife=jk)

    def gradient_r(self) -> tuple[float, float, float, float] | None:
        """g_R = (1/d̄, −m̄/d̄², 0, 0), the gradient of R = m̄/d̄ over (M, D, X, Y) means."""
        if self.sum_d == 0:
            return None
        return (1.0 / self.mean_d, -self.mean_m / self.mean_d**2, 0.0, 0.0)

    def gradient_p(self) -> tuple[float, float, float, float] | None:
        """g_P = (0, 0, 1/ȳ, −x̄/ȳ²), the gradient of P = x̄/ȳ over (M, D, X, Y) means."""
        if self.sum_y == 0:
            return None
        return (0.0, 0.0, 1.0 / self.mean_y, -self.mean_x / self.mean_y**2)

    def quadratic_form(
        self, g1: tuple[float, ...], g2: tuple[float, ...] | None = None
    ) -> float | None:
        """g1ᵀ Λ g2 (g2 defaults to g1) from the centered sums; None when n < 2 or not finite."""
        if self.n < 2:
            return None
        g2 = g1 if g2 is None else g2
        total = math.fsum(
            g1[i] * g2[j] * getattr(self, _css_name(a, b))
            for i, a in enumerate(_VARS)
            for j, b in enumerate(_VARS)
            if g1[i] != 0 and g2[j] != 0
        )
        v = total / (self.n - 1)
        return v if math.isfinite(v) else None


def _staged_covariates(
    n: int, means: Sequence[float | None] | None, css: Sequence[float | None] | None
) -> CovariateMoments | None:
    """The staged `cov_mean`/`cov_css` of a group, padded with NULLs beyond the metric's
    own variables (a pass stages as many as its widest experiment needs): its leading
    q means and the q × q block of the cross-products; None without them or units."""
    if not n or not means or css is None or means[0] is None:
        return None
    size = len(means)
    q = next((i for i, v in enumerate(means) if v is None), size)
    rows = [(a, b) for a in range(size) for b in range(a, size)]
    kept = [v for (a, b), v in zip(rows, css, strict=True) if b < q]
    if None in kept:
        return None
    return CovariateMoments(n, tuple(means[:q]), tuple(kept))


@dataclass(frozen=True)
class CupedComparison(Comparison):
    """Treatment vs control after CUPED adjustment, with the unadjusted comparison beside it.

    Effect fields mean what they mean in `inference.Comparison`, for the adjusted effect
    Δ_adj = R_adj,T − R_adj,C and the relative lift Δ_adj/|R_C| when ``adjusted`` is true,
    and they are copies of ``unadjusted`` when it is false (a fallback). ``theta`` and
    ``variance_reduction`` = 1 − Var_adj/Var_unadj (of the absolute effect) are given whenever
    they could be computed — also for the no-gain fallback, where the reduction is ≤ 0 and the
    adjustment was *not* applied. ``status`` is the status of the reported numbers (the
    unadjusted one in a fallback) and ``cuped_status`` says what CUPED did
    (`status.CupedStatus`); ``control_unit_variance`` is the control's adjusted per-unit
    variance (V_R + θ²V_P − 2θC)_C when adjusted (for the MDE), else None. ``fieller`` is
    the input of Fieller's relative interval for the reported effect (`intervals`): when
    adjusted, a = R_C + Δ_adj, b = R_C, Var a = a_T + θ²V_P,C/n_C, Var b = V_R,C/n_C,
    Cov(a, b) = θC_C/n_C, so Var(a − b) = Var(Δ_adj); else R_T over R_C.
    """

    theta: float | None = None
    #: every covariate's coefficient (`regression.compare_regression`), else None
    thetas: tuple[float, ...] | None = None
    variance_reduction: float | None = None
    adjusted: bool = False
    cuped_status: str = CupedStatus.NOT_COMPARED
    control_unit_variance: float | None = None
    unadjusted: Comparison = field(default_factory=Comparison)
    fieller: FiellerRatio | None = None


def unadjusted_comparison(
    treatment: CupedStats,
    control: CupedStats,
    alpha: float,
    test: Test,
    alternative: Alternative,
) -> tuple[Comparison, FiellerRatio | None]:
    """The delta-method comparison of the (M, D) parts and Fieller's inputs for it: what
    an adjustment reports when it falls back."""
    t, c = treatment.ratio_stats, control.ratio_stats
    unadjusted = compare(t, c, alpha=alpha, test=test, alternative=alternative)
    return unadjusted, FiellerRatio.of_groups(t, c)


def _from_unadjusted(
    unadjusted: Comparison,
    cuped_status: CupedStatus,
    fieller: FiellerRatio | None,
    **extra: float | None,
) -> CupedComparison:
    values = {f.name: getattr(unadjusted, f.name) for f in fields(Comparison)}
    return CupedComparison(
        **values, **extra, cuped_status=cuped_status, unadjusted=unadjusted, fieller=fieller
    )


@dataclass(frozen=True)
class _GroupTerms:
    """R, P and the variance terms V_R, V_P, C of a group (the jackknife's, scaled by n,
    when staged); `delta_*`: the delta method's, which give θ and decide the fallback."""

    n: int
    r: float
    p: float
    v_r: float
    v_p: float
    c: float
    delta_v_r: float
    delta_v_p: float
    delta_c: float


def _group_terms(s: CupedStats) -> _GroupTerms | None:
    """R, P, V_R = g_RᵀΛg_R, V_P = g_PᵀΛg_P and C = g_RᵀΛg_P; None if P or V_P is unusable
    (or, with jackknife sums, the pre-period's are undefined: a unit holds the whole ΣY).
    With the group's jackknife sums (Σu², Σuv, Σv²) the variance terms are n·Σu², n·Σv²
    and n·Σuv: the jackknife of R − θP with θ fixed is Σ(u − θv)², the same quadratic in
    θ, so Var and Fieller's inputs take them unchanged. θ and the no-gain fallback stay
    the delta method's, so the estimate does not depend on `variance`."""
    g_r, g_p = s.gradient_r(), s.gradient_p()
    r, p = s.ratio, s.pre_ratio
    if g_r is None or g_p is None or r is None or p is None:
        return None
    v_r, v_p, c = s.quadratic_form(g_r), s.quadratic_form(g_p), s.quadratic_form(g_r, g_p)
    if v_r is None or v_p is None or c is None or not v_p > 0:
        return None
    delta = (max(v_r, 0.0), v_p, c)
    if s.jackknife is None:
        return _GroupTerms(s.n, r, p, *delta, *delta)
    rr, rp, pp = s.jackknife
    if rp is None or pp is None:
        return None
    return _GroupTerms(s.n, r, p, s.n * rr, s.n * pp, s.n * rp, *delta)


def compare_cuped(
    treatment: CupedStats,
    control: CupedStats,
    alpha: float = 0.05,
    test: Test = "welch",
    alternative: Alternative = "two-sided",
) -> CupedComparison:
    """CUPED-adjusted delta-method comparison of a treatment group with the control group.

    Per group g (docs/methods.md, "CUPED for ratio metrics"; Deng et al. 2013 for CUPED,
    Deng, Knoblich & Lu 2018 for the linearization), with Λ the sample covariance (n−1) of
    (M, D, X, Y), g_R = (1/d̄, −m̄/d̄², 0, 0) and g_P = (0, 0, 1/ȳ, −x̄/ȳ²):
    V_R = g_RᵀΛg_R, V_P = g_PᵀΛg_P, C = g_RᵀΛg_P. Then

    - θ = (C_T/n_T + C_C/n_C)/(V_P,T/n_T + V_P,C/n_C), R_adj = R − θP,
      Δ_adj = R_adj,T − R_adj,C;
    - Var(Δ_adj) = a + b, a = (V_R + θ²V_P − 2θC)_T/n_T, b likewise for control (θ treated
      as fixed, as in CUPED). This θ minimizes a + b, so the adjustment never increases
      the variance for the estimated moments. With the groups' jackknife sums
      (`variance: jackknife`) V_R, V_P and C in a and b are the jackknife's (n·Σu², n·Σv²,
      n·Σuv) while θ and the no-gain fallback below stay the delta method's, so the
      estimate is the same under either variance (`_group_terms`); `variance_reduction` is
      then the jackknife's and can be ≤ 0 where the delta method's is not. gbstats pools
      the unweighted sums, (C_T + C_C)/(V_P,T + V_P,C), which is the same θ only when
      n_T = n_C; with unequal arms (a 90/10 split) it can be far from the minimum, so we
      deliberately differ;
    - Welch–Satterthwaite ν from a and b with `inference.compare`'s formula (used for both
      effects), or the normal distribution for ``test="z"``; CI = est ± q·SE (one-sided
      `alternative`: as in `inference.interval`).

    Relative lift L = Δ_adj/|R_C| (R_C unadjusted) by the delta method over both groups'
    means (m̄, d̄, x̄, ȳ)_T and (m̄, d̄, x̄, ȳ)_C, θ fixed. Its gradient is
    ∇_T L = (g_R,T − θ g_P,T)/|R_C| and ∇_C L = −(k g_R,C − θ g_P,C)/|R_C| with
    k = 1 + Δ_adj/R_C (from ∂|R_C|⁻¹/∂R_C = −sign(R_C)/R_C²), so
    Var(L) = [a + (k²V_R − 2kθC + θ²V_P)_C/n_C] / R_C². With θ = 0 this is
    `inference.compare`'s (a + (R_T/R_C)² b)/R_C².

    The relative CI is null with status ``relative_ci_unbounded`` when the unadjusted R_C
    is not significantly different from 0 (`inference.control_mean_significant`).

    Fallbacks (the numbers and status of ``inference.compare`` on the (M, D) part):
    ``cuped_status`` ``fallback_no_pre_data`` when ΣY = 0 or V_P = 0 in a group,
    ``fallback_no_gain`` when Var_adj ≥ Var_unadj by the delta method (including
    Var_unadj = 0); too few units
    or ΣD = 0 give ``not_compared`` and null estimates. Raises only for invalid ``alpha``
    or ``test``.
    """
    unadjusted, raw_ratio = unadjusted_comparison(treatment, control, alpha, test, alternative)
    if unadjusted.status in (Status.TOO_FEW_UNITS, Status.ZERO_DENOMINATOR):
        return _from_unadjusted(unadjusted, CupedStatus.NOT_COMPARED, raw_ratio)
    t, c = _group_terms(treatment), _group_terms(control)
    if t is None or c is None:
        return _from_unadjusted(unadjusted, CupedStatus.NO_PRE_DATA, raw_ratio)

    theta = (t.delta_c / t.n + c.delta_c / c.n) / (t.delta_v_p / t.n + c.delta_v_p / c.n)

    def adjusted(g: _GroupTerms, v_r: float, v_p: float, cov: float) -> float:
        return max(v_r + theta * theta * v_p - 2.0 * theta * cov, 0.0) / g.n

    var_unadj = t.v_r / t.n + c.v_r / c.n
    a, b = adjusted(t, t.v_r, t.v_p, t.c), adjusted(c, c.v_r, c.v_p, c.c)
    var_adj = a + b
    delta_adj = sum(adjusted(g, g.delta_v_r, g.delta_v_p, g.delta_c) for g in (t, c))
    delta_unadj = t.delta_v_r / t.n + c.delta_v_r / c.n
    if not all(map(math.isfinite, (theta, var_adj, var_unadj, delta_adj, delta_unadj))):
        return _from_unadjusted(unadjusted, CupedStatus.NO_PRE_DATA, raw_ratio)
    reduction = 1.0 - var_adj / var_unadj if var_unadj > 0 else None
    if not delta_adj < delta_unadj:
        return _from_unadjusted(
            unadjusted, CupedStatus.NO_GAIN, raw_ratio, theta=theta, variance_reduction=reduction
        )

    df, dist, q = reference_distribution(a, b, t.n, c.n, alpha, test, alternative)
    effect_abs = (t.r - theta * t.p) - (c.r - theta * c.p)
    se_abs = math.sqrt(var_adj)
    out = absolute_columns(effect_abs, se_abs, q, dist.sf, df, alternative)
    zero_se = se_abs == 0
    informative = control_mean_significant(c.r, c.v_r / c.n, q)
    if c.r != 0:
        effect_rel = effect_abs / abs(c.r)
        k = 1.0 + effect_abs / c.r
        b_rel = max(k * k * c.v_r - 2.0 * k * theta * c.c + theta * theta * c.v_p, 0.0) / c.n
        se_rel = math.sqrt(a + b_rel) / abs(c.r)
        if math.isfinite(se_rel):
            out |= relative_columns(effect_rel, se_rel, informative, q, dist.sf, alternative)
            zero_se = zero_se or se_rel == 0
    status = comparison_status(out, zero_se, informative)
    return CupedComparison(
        **out,
        theta=theta,
        variance_reduction=reduction,
        adjusted=True,
        status=status,
        cuped_status=CupedStatus.APPLIED,
        control_unit_variance=b * c.n,
        unadjusted=unadjusted,
        fieller=FiellerRatio(
            a=c.r + effect_abs,
            b=c.r,
            var_a=a + theta * theta * c.v_p / c.n,
            var_b=c.v_r / c.n,
            cov=theta * c.c / c.n,
        ),
    )
