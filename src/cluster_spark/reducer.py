"""Driver-side reducer: staged group statistics → delta-method comparisons (no Spark).

Rows of the staging table (a handful per experiment and metric) are merged per
(metric, variant) with Chan et al.'s formulas (a kind that does not merge keeps its one
row per group), and every treatment is compared with the control (`comparisons`: the delta
method of Deng, Knoblich & Lu 2018, §3, CUPED, or the kind's own statistics); then the
segment's health, decisions and multiple-testing corrections.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Mapping
from functools import reduce
from typing import Any

from cluster_spark import health
from cluster_spark.comparisons import compare_groups, compare_own_kind, plain_columns
from cluster_spark.config import JACKKNIFE_BELOW_UNITS, Experiment
from cluster_spark.kinds import kind_of_row
from cluster_spark.stats import (
    bayes,
    decisions,
    heterogeneity,
    multiplicity,
    power,
    recommend,
)
from cluster_spark.stats.cuped import CupedStats
from cluster_spark.stats.inference import compare, srm_test
from cluster_spark.stats.ratio import RatioStats
from cluster_spark.status import POOLED_SLICES, Status
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


def variance_methods(
    groups: dict[tuple[str, str, bool], CupedStats], experiment: Experiment
) -> tuple[dict[tuple[str, str, bool], CupedStats], dict[str, str]]:
    """The groups with the jackknife sums kept only for metrics that use them, and each
    metric's variance method (`jackknife` or `delta`, per `Experiment.variance`): the
    jackknife when every group of the metric has its sums and, for `auto`, its variants
    have fewer than `JACKKNIFE_BELOW_UNITS` assignment units in the segment (a slice
    counts its own), and the metric has no covariates besides its own pre-period. Under
    CUPED a group without its pre-period sums (a unit holds the whole ΣY) falls back to the
    unadjusted comparison (`cuped._group_terms`)."""
    staged: dict[str, bool] = {}  # every group of the metric has its sums
    units: dict[str, int] = defaultdict(int)  # over the variants, unwinsorized
    for (metric, _, winsorized), s in groups.items():
        has = s.jackknife is not None and s.jackknife[0] is not None
        staged[metric] = staged.get(metric, True) and has
        units[metric] += 0 if winsorized else s.n
    methods = {}
    for metric, whole in staged.items():
        small = experiment.variance == "jackknife" or units[metric] < JACKKNIFE_BELOW_UNITS
        # several covariates: their jackknife is not staged (`stats.regression`)
        several = experiment.adjusted_by_covariates(metric)
        use = whole and experiment.variance != "delta" and small and not several
        methods[metric] = "jackknife" if use else "delta"
    kept = {
        key: s if methods[key[0]] == "jackknife" else dataclasses.replace(s, jackknife=None)
        for key, s in groups.items()
    }
    return kept, methods


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
    per_unit = merge_groups(r for r in rows if r["metric"] == ANALYSIS_UNITS_METRIC)
    balance = analysis_unit_balance(variance_methods(per_unit, experiment)[0], experiment)
    rows = [r for r in rows if r["metric"] != ANALYSIS_UNITS_METRIC]
    own = {  # kinds whose rows do not merge: one staged row per group
        (r["metric"], r["variant"]): r
        for r in rows
        if (kind := kind_of_row(r)) is not None and not kind.mergeable
    }
    rows = [r for r in rows if (r["metric"], r["variant"]) not in own]
    groups, methods = variance_methods(merge_groups(rows), experiment)
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
            engine=experiment.engine,
            variance_method=methods.get(metric),
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
            row.update(compare_own_kind(kinds[metric], own, experiment, metric, variant))
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
                    row.update(plain_columns(raw_t, raw_c, experiment, side, "uncapped"))
        out.append(_plain_strings(row))
    return out


def _plain_strings(row: dict[str, Any]) -> dict[str, Any]:
    """Status codes as plain strings, as the table stores them."""
    for key in ("status", "cuped_status"):
        row[key] = None if row[key] is None else str(row[key])
    return row


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


def _decide(rows: list[dict[str, Any]], experiment: Experiment) -> None:
    """`decision` of each treatment row, by its metric's role (`stats.decisions`): goals
    from the BH-adjusted p-value, secondary metrics from the unadjusted one; with
    `sequential`, the always-valid (two-sided) p-value must be below alpha too. Guardrails
    are decided with their comparison (`compare_groups`); one without a comparison is
    `guardrail_inconclusive`. With `engine: bayesian`, every decision comes from the
    posterior instead (`_decide_bayesian`)."""
    if experiment.engine == "bayesian":
        _decide_bayesian(rows, experiment)
        return
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


def _decide_bayesian(rows: list[dict[str, Any]], experiment: Experiment) -> None:
    """The posterior columns and `decision` of each treatment row (`stats.bayes`) from its
    (CUPED-adjusted where applied) relative or absolute effect and standard error. No
    multiple-testing correction (as GrowthBook's Bayesian engine). A guardrail's relative
    margin is scaled by |control mean| when the model is on the absolute effect."""
    settings = experiment.bayesian
    relative = settings.effect == "relative"
    control_mean = {
        (r["metric"], r["dimension"], r["slice"]): r["mean"]
        for r in rows
        if r["variant"] == experiment.control
    }
    for row in rows:
        if row["variant"] == experiment.control or row["status"] == Status.TOO_FEW_SLICE_UNITS:
            continue
        role = experiment.role(row["metric"])
        effect, stderr = (
            (row["effect_rel"], row["effect_rel_stderr"])
            if relative
            else (row["effect_abs"], row["effect_abs_stderr"])
        )
        post = bayes.posterior(
            effect,
            stderr,
            role.direction,
            experiment.alpha,
            settings.prior_mean,
            settings.prior_sd,
        )
        if post is not None:
            row.update(
                posterior_effect=settings.effect,
                posterior_mean=post.mean,
                posterior_stderr=post.stderr,
                credible_low=post.credible_low,
                credible_high=post.credible_high,
                chance_to_win=post.chance_to_win,
                risk_treatment=post.risk_treatment,
                risk_control=post.risk_control,
            )
        if role.role == "guardrail":
            base = control_mean.get((row["metric"], row["dimension"], row["slice"]))
            margin = role.margin if relative else None if base is None else role.margin * abs(base)
            decision = (
                bayes.guardrail_decision(post, margin, role.direction, settings.chance_to_win)
                if margin is not None
                else decisions.Decision.GUARDRAIL_INCONCLUSIVE
            )
        else:
            decision = bayes.effect_decision(post, settings.chance_to_win, settings.risk_threshold)
        row["decision"] = str(decision)


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
