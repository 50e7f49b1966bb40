"""Driver-side reducer: staged group statistics → delta-method comparisons (no Spark).

Rows of the staging table (a handful per experiment and metric) are merged per
(metric, variant) with Chan et al.'s formulas, and every treatment is compared with the
control by the delta method (Deng, Knoblich & Lu 2018, §3) — see `stats.inference.compare`.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from functools import reduce
from typing import Any

from cluster_spark import health
from cluster_spark.config import Experiment
from cluster_spark.kinds import Kind, kind_of_row
from cluster_spark.stats import (
    decisions,
    heterogeneity,
    intervals,
    multiplicity,
    power,
    recommend,
    sequential,
)
from cluster_spark.stats.cuped import CupedStats, compare_cuped
from cluster_spark.stats.inference import Comparison, compare, srm_test
from cluster_spark.stats.intervals import FiellerRatio
from cluster_spark.stats.ratio import RatioStats
from cluster_spark.status import POOLED_SLICES, CupedStatus, Status
from cluster_spark.tables import (
    ANALYSIS_UNITS_METRIC,
    CAP_COLUMNS,
    PRE_CAP_COLUMNS,
    result_row,
)


def merge_groups(
    rows: Iterable[Mapping[str, Any]],
) -> dict[tuple[str, str, bool], CupedStats]:
    """Merge staged rows (possibly several partial rows per group) per
    (metric, variant, winsorized) with Chan et al.'s pairwise formulas."""
    parts: dict[tuple[str, str, bool], list[CupedStats]] = defaultdict(list)
    for row in rows:
        key = (row["metric"], row["variant"], bool(row.get("winsorized", False)))
        parts[key].append(CupedStats.from_row(row))
    return {key: reduce(CupedStats.__add__, stats) for key, stats in parts.items()}


def analysis_unit_groups(rows: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], RatioStats]:
    """The staged moments of analysis-unit values (m_j, d_j) per (metric, variant), merged."""
    parts: dict[tuple[str, str], list[RatioStats]] = defaultdict(list)
    for row in rows:
        if row.get("au_n_units") is None or row.get("winsorized"):
            continue
        values = [row[f"au_{c}"] for c in ("mean_m", "mean_d", "css_mm", "css_dd", "css_md")]
        if int(row["au_n_units"]) > 0 and None not in values:
            parts[(row["metric"], row["variant"])].append(
                RatioStats(int(row["au_n_units"]), *values)
            )
    return {key: reduce(RatioStats.__add__, stats) for key, stats in parts.items()}


def _group_status(s: CupedStats) -> str:
    if s.n < 2:
        return Status.TOO_FEW_UNITS
    if s.sum_d == 0:
        return Status.ZERO_DENOMINATOR
    return Status.OK


def _sqrt_or_none(x: float | None) -> float | None:
    return None if x is None or x < 0 else x**0.5


def srm(
    experiment: Experiment, diagnostics: Iterable[Mapping[str, Any]]
) -> tuple[float | None, float | None, bool | None]:
    """Pearson χ² of assignment-unit counts against the configured split `variants`;
    flagged below the experiment's threshold (default p < 0.001), and flagged without a
    test when units are exposed to a variant the configured split does not have."""
    observed = {
        d["variant"]: int(d["value"]) for d in diagnostics if d["check"] == "assignment_units"
    }
    weights = experiment.variants
    observed = {v: observed.get(v, 0) for v in weights} | observed
    if set(observed) - set(weights):
        return None, None, True
    chi2, p = srm_test(observed, weights)
    return chi2, p, p < experiment.srm_threshold


#: The columns a slice below `min_slice_units` keeps; every other one is null.
_SLICE_KEPT = frozenset(
    {
        "experiment_id",
        "analysis_date",
        "metric",
        "variant",
        "dimension",
        "slice",
        "control_variant",
        "n_units",
        "n_analysis_units",
        "alpha",
        "test",
        "status",
        "winsorized",
        "relative_ci_method",
        "role",
        "direction",
        "margin",
        "alternative",
        "srm_chi2",
        "srm_p_value",
        "srm_flag",
        "srm_expected_share",
        "srm_analysis_p_value",
        "srm_analysis_flag",
        "run_id",
    }
)


def reduce_experiment(
    rows: Iterable[Mapping[str, Any]],
    experiment: Experiment,
    analysis_date: dt.date,
    run_id: str,
    diagnostics: Iterable[Mapping[str, Any]] = (),
) -> list[dict[str, Any]]:
    """Result rows (RESULT_COLUMNS) for one experiment: one per metric and variant, every
    configured variant included (one without units has n_units 0 and `too_few_units`),
    then the same per slice of each of the experiment's dimensions.

    Control rows carry the group's estimate and null effects; when the control variant has
    no units, treatment rows carry status `control_missing` and null effects. For
    winsorized metrics the main columns are capped and `*_uncapped` columns are raw.

    Slices (rows and diagnostics with a `dimension`): each slice is analysed on its own
    units as the experiment is (SRM within the slice, CUPED θ within the slice); a slice
    with fewer than `min_slice_units` assignment units in a configured variant has status
    `too_few_slice_units` and null estimates. BH/Holm p-values of slice rows are adjusted
    within each dimension (slices × metrics × treatments), apart from the topline's; each
    treatment row carries Cochran's Q of its effect across the dimension's slices.
    """
    rows_of: dict[tuple[Any, Any], list[Mapping[str, Any]]] = defaultdict(list)
    diags_of: dict[tuple[Any, Any], list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        rows_of[(r.get("dimension"), r.get("slice"))].append(r)
    for d in diagnostics:
        diags_of[(d.get("dimension"), d.get("slice"))].append(d)
    control = experiment.control
    args = (experiment, analysis_date, run_id)
    out = _segment(rows_of[(None, None)], diags_of[(None, None)], *args)
    _adjust_p_values(out, experiment)
    _decide(out, experiment)
    health.assess(out, diags_of[(None, None)], rows_of[(None, None)], experiment)
    recommend.assign(out, control, experiment.planned_mde)
    found = {k for k in (*rows_of, *diags_of) if k[0] is not None}
    dimensions = list(experiment.dimensions) + sorted(
        {d for d, _ in found} - set(experiment.dimensions)
    )
    for dimension in dimensions:
        names = sorted(
            (s for d, s in found if d == dimension), key=lambda s: (s in POOLED_SLICES, s)
        )
        per_dimension = []
        for name in names:
            key = (dimension, name)
            segment = _segment(rows_of[key], diags_of[key], *args, segment=key)
            _small_slice(segment, diags_of[key], experiment)
            per_dimension += segment
        _adjust_p_values(per_dimension, experiment)
        _decide(per_dimension, experiment)
        _heterogeneity(per_dimension, control)
        out += per_dimension
    return [result_row(**row) for row in out]  # a misspelt column fails here


def _segment(
    rows: list[Mapping[str, Any]],
    diagnostics: list[Mapping[str, Any]],
    experiment: Experiment,
    analysis_date: dt.date,
    run_id: str,
    segment: tuple[str | None, str | None] = (None, None),
) -> list[dict[str, Any]]:
    """The result rows of one segment (the experiment overall, or one slice) from its
    staged rows and diagnostics, before multiple-testing corrections."""
    balance = analysis_unit_balance(
        merge_groups(r for r in rows if r["metric"] == ANALYSIS_UNITS_METRIC), experiment
    )
    rows = [r for r in rows if r["metric"] != ANALYSIS_UNITS_METRIC]
    own = {  # kinds whose rows do not merge: one staged row per group
        (r["metric"], r["variant"]): r
        for r in rows
        if (kind := kind_of_row(r)) is not None and not kind.mergeable
    }
    rows = [r for r in rows if (r["metric"], r["variant"]) not in own]
    groups = merge_groups(rows)
    naive = analysis_unit_groups(rows)
    caps = {(r["metric"], r["variant"]): r for r in rows if r.get("winsorized")}
    subs = {d["variant"]: d["value"] for d in diagnostics if d["check"] == "analysis_units"}
    srm_chi2, srm_p, srm_flag = srm(experiment, diagnostics)
    over_time = health.srm_over_time(diagnostics, experiment) if segment[0] is None else None
    seq_p = None if over_time is None else over_time.p_sequential
    shares = {v: w / sum(experiment.variants.values()) for v, w in experiment.variants.items()}
    control = experiment.control
    metrics = set(experiment.metrics) | {m for m, _, _ in groups} | {m for m, _ in own}
    keys = {(m, v) for m, v, _ in groups} | {(m, v) for m in metrics for v in experiment.variants}
    keys |= set(own)
    kinds = {m: kind_of_row(r) for (m, _), r in own.items()}
    out = []
    for metric, variant in sorted(keys, key=lambda k: (k[0], k[1] != control, k[1])):
        winsorized = (metric, control, True) in groups or (metric, variant, True) in groups
        s = groups.get((metric, variant, winsorized), CupedStats.empty())
        r = s.ratio_stats
        ctrl = groups.get((metric, control, winsorized))
        ctrl = ctrl if ctrl is not None and ctrl.n > 0 else None
        row = result_row(
            experiment_id=experiment.id,
            analysis_date=analysis_date,
            metric=metric,
            variant=variant,
            dimension=segment[0],
            slice=segment[1],
            control_variant=control,
            n_units=s.n,
            n_analysis_units=subs.get(variant),
            numerator_sum=s.sum_m,
            denominator_sum=s.sum_d,
            mean=s.ratio,
            stderr=_sqrt_or_none(r.var_ratio),
            alpha=experiment.alpha,
            test=experiment.test,
            status=_group_status(s),
            winsorized=winsorized,
            relative_ci_method=experiment.relative_ci,
            role=experiment.role(metric).role,
            direction=experiment.role(metric).direction,
            margin=experiment.role(metric).margin,
            alternative=experiment.alternative_for(metric),
            srm_chi2=srm_chi2,
            srm_p_value=srm_p,
            srm_flag=srm_flag,
            srm_expected_share=shares.get(variant),
            srm_sequential_p_value=seq_p,
            run_id=run_id,
        )
        if variant in balance:
            row["srm_analysis_p_value"], row["srm_analysis_flag"] = balance[variant]
        if metric in kinds:
            row.update(winsorized=False, n_analysis_units=subs.get(variant))
            row.update(_kind_columns(kinds[metric], own, experiment, metric, variant))
            out.append(_plain_strings(row))
            continue
        if (metric, variant) in naive:
            au = naive[(metric, variant)]
            raw = groups[(metric, variant, False)].ratio_stats
            row["design_effect"] = power.design_effect(raw, au.unit_variance, au.n)
        if winsorized and (metric, variant) in caps:
            cap_row = caps[(metric, variant)]
            row.update({k: cap_row[k] for k in CAP_COLUMNS})
            row.update({k: cap_row.get(k) for k in PRE_CAP_COLUMNS})  # null without CUPED
            row["mean_uncapped"] = groups[(metric, variant, False)].ratio
        if variant != control:
            if ctrl is None:
                row["status"] = Status.CONTROL_MISSING
            else:
                row.update(compare_groups(s, ctrl, experiment, variant, metric))
                if winsorized and s.n > 0:
                    raw_t = groups[(metric, variant, False)].ratio_stats
                    raw_c = groups[(metric, control, False)].ratio_stats
                    side = experiment.alternative_for(metric)
                    row.update(_plain(raw_t, raw_c, experiment, side, "uncapped"))
        out.append(_plain_strings(row))
    return out


def _plain_strings(row: dict[str, Any]) -> dict[str, Any]:
    """Status codes as plain strings, as the table stores them."""
    for key in ("status", "cuped_status"):
        row[key] = None if row[key] is None else str(row[key])
    return row


def _kind_columns(
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
    if experiment.cuped_lookback_days:
        cols.update(cuped_applied=False, cuped_status=CupedStatus.NOT_APPLICABLE)

    def two_sided() -> dict[str, Any]:
        both = _comparison_columns(stats.compare(t, c, alpha=alpha))
        if experiment.relative_ci == "fieller":
            _use_fieller(both, stats.fieller(t, c), alpha, "two-sided")
        return both

    variance = None if c.stderr is None else c.stderr**2 * c.n  # per-unit, for the MDE
    args = (experiment, variant, metric, (t.n, c.n), variance, c.estimate)
    return _finish_comparison(cols, stats.fieller(t, c), two_sided, *args)


def analysis_unit_balance(
    groups: Mapping[tuple[str, str, bool], CupedStats], experiment: Experiment
) -> dict[str, tuple[float | None, bool | None]]:
    """Treatment → (p-value, flag) of the analysis-unit balance check: Welch's t (or z) of
    the mean number of active analysis units per assignment unit, treatment vs control,
    from the staged `ANALYSIS_UNITS_METRIC` groups; flagged below `srm_threshold`. A χ² on
    analysis-unit counts would be wrong here: they are sums over clusters, far more
    variable than multinomial counts. The count is of analysis units with a post-exposure
    event, so a treatment that changes activity moves it too: a flag means broken
    assignment or logging, or a real effect on activity."""
    control = groups.get((ANALYSIS_UNITS_METRIC, experiment.control, False))
    out: dict[str, tuple[float | None, bool | None]] = {}
    if control is None:
        return out
    for (_, variant, _), s in groups.items():
        if variant == experiment.control:
            continue
        p = compare(
            s.ratio_stats, control.ratio_stats, alpha=experiment.alpha, test=experiment.test
        ).p_value
        out[variant] = (p, None if p is None else p < experiment.srm_threshold)
    return out


def _small_slice(
    rows: list[dict[str, Any]], diagnostics: list[Mapping[str, Any]], experiment: Experiment
) -> None:
    """A slice with fewer than `min_slice_units` assignment units in some configured
    variant: status `too_few_slice_units`, every estimate null (counts and SRM kept)."""
    units = {d["variant"]: d["value"] for d in diagnostics if d["check"] == "assignment_units"}
    if min(int(units.get(v) or 0) for v in experiment.variants) >= experiment.min_slice_units:
        return
    for row in rows:
        for key in row:
            if key not in _SLICE_KEPT:
                row[key] = None
        row["status"] = str(Status.TOO_FEW_SLICE_UNITS)


def _heterogeneity(rows: list[dict[str, Any]], control: str) -> None:
    """Cochran's Q of each (metric, treatment)'s absolute effect (CUPED-adjusted where
    applied: the estimand of `p_value`) across the slices of one dimension that have an
    effect and a positive standard error; set on those treatment rows."""
    effects: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        se = row["effect_abs_stderr"]
        if row["variant"] != control and row["effect_abs"] is not None and se and se > 0:
            effects[(row["metric"], row["variant"])].append(row)
    for group in effects.values():
        h = heterogeneity.cochran_q(
            [r["effect_abs"] for r in group], [r["effect_abs_stderr"] for r in group]
        )
        if h is not None:
            for r in group:
                r["heterogeneity_q"], r["heterogeneity_p_value"] = h.q, h.p_value


def compare_groups(
    t: CupedStats, c: CupedStats, experiment: Experiment, variant: str, metric: str
) -> dict[str, Any]:
    """Every comparison column of treatment `variant` vs the control, per the experiment's
    settings and the metric's alternative (`Experiment.alternative_for`): CUPED (Deng et
    al. 2013), Fieller or delta-method relative CIs, always-valid confidence sequences
    (Waudby-Smith et al. 2024, two-sided), the pre-exposure bias check (two-sided), the
    non-inferiority test and decision of guardrails, and the MDE of this comparison,
    `(z₁₋α/₂ + z_power)·sqrt(V_C (1/n_T + 1/n_C))` with the control's CUPED-adjusted
    per-unit variance when the adjustment is applied."""
    alpha, test = experiment.alpha, experiment.test
    side = experiment.alternative_for(metric)
    control_variance = c.ratio_stats.unit_variance
    if experiment.cuped_lookback_days:
        cc = compare_cuped(t, c, alpha=alpha, test=test, alternative=side)
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
            cols.update(_plain(t.ratio_stats, c.ratio_stats, experiment, side, "unadjusted"))
            if cc.effect_abs is not None:  # R_C and R_C + Δ_adj: their ratio − 1 is Δ rel
                cols.update(mean_adjusted=c.ratio + cc.effect_abs, control_mean_adjusted=c.ratio)
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
        lambda: compare_groups_two_sided(t, c, experiment),
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


def compare_groups_two_sided(
    t: CupedStats, c: CupedStats, experiment: Experiment
) -> dict[str, Any]:
    """The CI columns of the two-sided comparison (for guardrails under one-sided tests:
    harm is always judged two-sided)."""
    alpha, test = experiment.alpha, experiment.test
    if experiment.cuped_lookback_days:
        cc = compare_cuped(t, c, alpha=alpha, test=test)
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


def _plain(
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


def _decide(rows: list[dict[str, Any]], experiment: Experiment) -> None:
    """`decision` of each treatment row, by its metric's role (`stats.decisions`): goals
    from the BH-adjusted p-value, secondary metrics from the unadjusted one; with
    `sequential`, the always-valid (two-sided) p-value must be below alpha too. Guardrails
    are decided with their comparison (`compare_groups`); one without a comparison is
    `guardrail_inconclusive`."""
    alpha = experiment.alpha
    for row in rows:
        if row["variant"] == experiment.control or row["status"] == Status.TOO_FEW_SLICE_UNITS:
            continue
        role = experiment.role(row["metric"])
        if role.role == "guardrail":
            row["decision"] = row["decision"] or str(decisions.Decision.GUARDRAIL_INCONCLUSIVE)
            continue
        p = row["p_value_bh"] if role.role == "goal" else row["p_value"]
        if experiment.sequential and p is not None:
            seq = row["p_value_sequential"]
            p = None if seq is None else max(p, seq)
        row["decision"] = str(
            decisions.effect_decision(p, row["effect_abs"], role.direction, alpha)
        )


def _adjust_p_values(rows: list[dict[str, Any]], experiment: Experiment) -> None:
    """Benjamini–Hochberg and Holm adjusted p-values across the rows' goal metrics ×
    treatments (one family: the topline, or one dimension's slices), as GrowthBook and
    Statsig correct; secondary metrics and guardrails are not corrected (null)."""
    treated = [
        r
        for r in rows
        if r["variant"] != experiment.control and experiment.role(r["metric"]).role == "goal"
    ]
    pvalues = [r["p_value"] for r in treated]
    for r, bh, holm in zip(
        treated, multiplicity.benjamini_hochberg(pvalues), multiplicity.holm(pvalues), strict=True
    ):
        r["p_value_bh"], r["p_value_holm"] = bh, holm


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


def plan_experiment(
    rows: Iterable[Mapping[str, Any]], experiment: Experiment, planned_units: Iterable[int]
) -> list[dict[str, Any]]:
    """Minimum detectable effects from staged statistics: stage a period with no treatment
    (before the experiment, or an A/A test), since a treatment effect would inflate V.

    All variants are pooled per metric (Chan merge), giving the per-assignment-unit
    linearized variance V; the MDE for n units per group is
    `(z_{1−α/2} + z_power)·sqrt(2V/n)` (`power.mde`); the first column is for the
    staged units split evenly over the variants.
    """
    groups = merge_groups(
        r
        for r in rows
        if r.get("dimension") is None and r["metric"] != ANALYSIS_UNITS_METRIC  # overall
    )
    pooled: dict[str, CupedStats] = {}
    for (metric, variant, winsorized), s in groups.items():
        if winsorized or (metric, variant, True) not in groups:
            pooled[metric] = pooled[metric] + s if metric in pooled else s
    out = []
    for metric, s in sorted(pooled.items()):
        r = s.ratio_stats
        row = {"metric": metric, "units": s.n, "mean": s.ratio, "unit_variance": r.unit_variance}
        n_variants = len({v for m, v, _ in groups if m == metric})
        for n in (s.n // n_variants, *planned_units):
            planned = power.mde(r.unit_variance, n, experiment.alpha, experiment.power, s.ratio)
            row[f"mde_rel@{n}"] = planned.relative
        out.append(row)
    return out
