"""Treatment vs control: every comparison column of a results row, per metric kind.

The moments kinds (mean, ratio) are compared by the delta method (Deng, Knoblich & Lu
2018, §3; `stats.inference.compare`) or with CUPED (Deng et al. 2013; `stats.cuped`; with
several covariates `stats.regression`),
`compare_groups`; a kind with its own statistics (`kinds.Kind.stats`, e.g. quantiles) by
its module's `compare` and `fieller`, `compare_own_kind`. Both then go through the same
tail, `_finish_comparison`: the MDE, Fieller's relative CI, a guardrail's non-inferiority
test and decision, and the always-valid confidence sequence. No Spark here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from cluster_spark.config import Experiment
from cluster_spark.kinds import Kind
from cluster_spark.stats import decisions, intervals, power, sequential
from cluster_spark.stats.cuped import CupedComparison, CupedStats, compare_cuped
from cluster_spark.stats.inference import Comparison, compare
from cluster_spark.stats.intervals import FiellerRatio
from cluster_spark.stats.ratio import RatioStats
from cluster_spark.stats.regression import compare_regression
from cluster_spark.status import CupedStatus, Status


def compare_own_kind(
    kind: Kind,
    own: Mapping[tuple[str, str], Mapping[str, Any]],
    experiment: Experiment,
    metric: str,
    variant: str,
) -> dict[str, Any]:
    """The columns of a (metric, variant) of a kind with its own statistics (`kinds`):
    one staged row per group (they do not merge); estimate, standard error, status and,
    for a treatment, the comparison with every column other kinds' comparisons have.
    CUPED does not apply (`cuped_status` says so under an experiment with CUPED)."""
    stats = kind.stats_module()
    t = stats.from_row(own.get((metric, variant), {"n_units": 0}))
    cols: dict[str, Any] = {
        "n_units": t.n,
        "numerator_sum": None,
        "denominator_sum": t.indicator.sum_d,  # N: the values
        "mean": t.estimate,
        "stderr": t.stderr,
        "status": Status.TOO_FEW_UNITS if t.stderr is None else Status.OK,
    }
    control = experiment.control
    if variant == control:
        return cols
    if (metric, control) not in own or not own[(metric, control)]["n_units"]:
        return cols | {"status": Status.CONTROL_MISSING}
    c = stats.from_row(own[(metric, control)])
    alpha, side = experiment.alpha, experiment.alternative_for(metric)
    cols |= _comparison_columns(stats.compare(t, c, alpha=alpha, alternative=side))
    if experiment.adjusts:
        cols.update(cuped_applied=False, cuped_status=CupedStatus.NOT_APPLICABLE)

    def two_sided() -> dict[str, Any]:
        both = _comparison_columns(stats.compare(t, c, alpha=alpha))
        if experiment.relative_ci == "fieller":
            _use_fieller(both, stats.fieller(t, c), alpha, "two-sided")
        return both

    variance = None if c.stderr is None else c.stderr**2 * c.n  # per-unit, for the MDE
    args = (experiment, variant, metric, (t.n, c.n), variance, c.estimate)
    return _finish_comparison(cols, stats.fieller(t, c), two_sided, *args)


def compare_groups(
    t: CupedStats, c: CupedStats, experiment: Experiment, variant: str, metric: str
) -> dict[str, Any]:
    """Every comparison column of treatment `variant` vs the control, per the experiment's
    settings and the metric's alternative (`Experiment.alternative_for`): CUPED (Deng et
    al. 2013), Fieller or delta-method relative CIs, always-valid confidence sequences
    (Waudby-Smith et al. 2024, two-sided), the pre-exposure bias check (two-sided), the
    non-inferiority test and decision of guardrails, and the MDE of this comparison,
    `(z₁₋α/₂ + z_power)·sqrt(V_C (1/n_T + 1/n_C))` with the control's per-unit variance
    V_C = n_C·Var(R_C) (the jackknife's when staged), CUPED-adjusted when the adjustment is
    applied."""
    alpha, test = experiment.alpha, experiment.test
    side = experiment.alternative_for(metric)
    r_c = c.ratio_stats  # per unit: V, or n·Var(R) of the jackknife when staged
    control_variance = r_c.unit_variance
    if r_c.jackknife is not None and control_variance is not None:
        control_variance = r_c.jackknife * r_c.n
    if experiment.adjusts:
        cc = _adjusted(t, c, experiment, metric, alpha=alpha, test=test, alternative=side)
        cols = _comparison_columns(cc)
        cols.update(
            cuped_applied=cc.adjusted,
            cuped_theta=cc.theta,
            variance_reduction=cc.variance_reduction,
            cuped_status=cc.cuped_status,
        )
        ratio = cc.fieller
        if cc.adjusted:
            control_variance = cc.control_unit_variance
            cols.update(plain_columns(t.ratio_stats, c.ratio_stats, experiment, side, "unadjusted"))
            if cc.effect_abs is not None:  # R_C and R_C + Δ_adj: their ratio − 1 is Δ rel
                cols.update(mean_adjusted=c.ratio + cc.effect_abs, control_mean_adjusted=c.ratio)
        if experiment.cuped_lookback_days:
            bias = compare(t.pre_stats, c.pre_stats, alpha=alpha, test=test).p_value
            cols["bias_p_value"] = bias
            cols["bias_flag"] = None if bias is None else bias < experiment.bias_threshold
    else:
        raw = compare(t.ratio_stats, c.ratio_stats, alpha=alpha, test=test, alternative=side)
        cols = _comparison_columns(raw)
        ratio = FiellerRatio.of_groups(t.ratio_stats, c.ratio_stats)
    return _finish_comparison(
        cols,
        ratio,
        lambda: compare_groups_two_sided(t, c, experiment, metric),
        experiment,
        variant,
        metric,
        (t.n, c.n),
        control_variance,
        c.ratio,
    )


def _finish_comparison(
    cols: dict[str, Any],
    ratio: FiellerRatio | None,
    two_sided: Callable[[], dict[str, Any]],
    experiment: Experiment,
    variant: str,
    metric: str,
    n: tuple[int, int],
    control_variance: float | None,
    baseline: float | None,
) -> dict[str, Any]:
    """What every kind's comparison adds to its columns `cols`: the MDE, Fieller's relative
    CI (`ratio`: the two estimates and their variances), a guardrail's non-inferiority test
    and decision (harm judged on the two-sided columns `two_sided()` under one-sided
    tests), and the always-valid confidence sequence. `n`: (treatment, control) units;
    `control_variance`: the control's per-unit variance V (MDE = (z + z_power)·
    sqrt(V(1/n_T + 1/n_C)))."""
    alpha = experiment.alpha
    side = experiment.alternative_for(metric)
    planned = power.mde(
        control_variance,
        n[0],
        alpha,
        experiment.power,
        baseline=baseline,
        n_control=n[1],
        one_sided=side != "two-sided",
    )
    cols.update(mde_abs=planned.absolute, mde_rel=planned.relative)
    role = experiment.role(metric)
    fieller = experiment.relative_ci == "fieller"
    cols["relative_ci_method"] = experiment.relative_ci
    if fieller:
        _use_fieller(cols, ratio, alpha, side)
    if role.role == "guardrail" and role.margin is not None:
        args = (role.margin, role.direction, alpha, cols["df"])
        ni = (
            decisions.noninferiority_fieller(ratio, *args)
            if fieller
            else decisions.noninferiority_delta(
                cols["effect_rel"], cols["effect_rel_stderr"], *args
            )
        )
        cols["noninferiority_bound"], cols["p_value_noninferiority"] = ni.bound, ni.p_value
        low, high = _harm_interval(cols) if side == "two-sided" else _harm_interval(two_sided())
        decision = decisions.guardrail_decision(ni, low, high, role.direction, alpha)
        cols["decision"] = str(decision)
    if experiment.sequential:
        units = sum(n)  # the comparison's units, against its share of the planned total
        n_star = experiment.comparison_n_star(variant)
        if n_star is not None:
            est, se = cols["effect_abs"], cols["effect_abs_stderr"]
            cs = sequential.confidence_sequence(est, se, units, alpha, n_star)
            cols["effect_abs_cs_low"], cols["effect_abs_cs_high"] = cs or (None, None)
            p = sequential.sequential_p_value(est, se, units, alpha, n_star)
            cols["p_value_sequential"] = p
    return cols


def _harm_interval(cols: dict[str, Any]) -> tuple[float | None, float | None]:
    """The two-sided CI a guardrail's harm is judged by: relative, else absolute."""
    low, high = cols["effect_rel_ci_low"], cols["effect_rel_ci_high"]
    if low is None or high is None:
        low, high = cols["effect_abs_ci_low"], cols["effect_abs_ci_high"]
    return low, high


def _adjusted(
    t: CupedStats, c: CupedStats, experiment: Experiment, metric: str, **options: Any
) -> CupedComparison:
    """CUPED on the metric's own pre-period (Deng et al. 2013), or regression adjustment
    with the experiment's other covariates as well (`stats.regression`)."""
    if experiment.adjusted_by_covariates(metric):
        own, pairs = bool(experiment.cuped_lookback_days), len(experiment.covariates_of(metric))
        return compare_regression(t, c, own=own, pairs=pairs, **options)
    return compare_cuped(t, c, **options)


def compare_groups_two_sided(
    t: CupedStats, c: CupedStats, experiment: Experiment, metric: str
) -> dict[str, Any]:
    """The CI columns of the two-sided comparison (for guardrails under one-sided tests:
    harm is always judged two-sided)."""
    alpha, test = experiment.alpha, experiment.test
    if experiment.adjusts:
        cc = _adjusted(t, c, experiment, metric, alpha=alpha, test=test)
        cols, ratio = _comparison_columns(cc), cc.fieller
    else:
        cols = _comparison_columns(compare(t.ratio_stats, c.ratio_stats, alpha=alpha, test=test))
        ratio = FiellerRatio.of_groups(t.ratio_stats, c.ratio_stats)
    if experiment.relative_ci == "fieller":
        _use_fieller(cols, ratio, alpha, "two-sided")
    return cols


def _use_fieller(cols: dict[str, Any], ratio: FiellerRatio | None, alpha: float, side: str) -> None:
    """Replace the delta method's relative CI by Fieller's (null when unbounded), and the
    relative p-value by the absolute one: Fieller's test of no relative effect is the test
    of a − b = 0, so the interval excludes 0 exactly when `p_value` < alpha. The relative
    stderr stays the delta method's."""
    interval = None
    if ratio is not None and cols["effect_rel"] is not None:
        interval = intervals.fieller_relative_ci(ratio, alpha, cols["df"], side)
    cols["effect_rel_ci_low"], cols["effect_rel_ci_high"] = interval or (None, None)
    if cols["effect_rel"] is not None and interval is not None:
        cols["p_value_rel"] = cols["p_value"]
    else:
        cols["p_value_rel"] = None


def plain_columns(
    treatment: RatioStats, control: RatioStats, experiment: Experiment, side: str, suffix: str
) -> dict[str, float | None]:
    """An unadjusted comparison shown beside the main one (`*_unadjusted` beside a CUPED-
    adjusted effect, as Statsig and GrowthBook show both; `*_uncapped` beside a winsorized
    one): absolute and relative effect, the relative CI (Fieller's by default, as the main
    columns) and the p-value."""
    raw = compare(
        treatment, control, alpha=experiment.alpha, test=experiment.test, alternative=side
    )
    low, high = raw.effect_rel_ci_low, raw.effect_rel_ci_high
    if experiment.relative_ci == "fieller":
        args = (treatment, control, experiment.alpha, experiment.test, side)
        low, high = intervals.fieller_interval(*args) or (None, None)
    return {
        f"effect_abs_{suffix}": raw.effect_abs,
        f"effect_rel_{suffix}": raw.effect_rel,
        f"effect_rel_{suffix}_ci_low": low,
        f"effect_rel_{suffix}_ci_high": high,
        f"p_value_{suffix}": raw.p_value,
    }


def _comparison_columns(c: Comparison) -> dict[str, Any]:
    return {
        "effect_abs": c.effect_abs,
        "effect_abs_stderr": c.effect_abs_stderr,
        "effect_abs_ci_low": c.effect_abs_ci_low,
        "effect_abs_ci_high": c.effect_abs_ci_high,
        "effect_rel": c.effect_rel,
        "effect_rel_stderr": c.effect_rel_stderr,
        "effect_rel_ci_low": c.effect_rel_ci_low,
        "effect_rel_ci_high": c.effect_rel_ci_high,
        "p_value": c.p_value,
        "p_value_rel": c.p_value_rel,
        "df": c.df,
        "status": c.status,
    }
