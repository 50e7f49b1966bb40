"""Driver-side reducer: staged group statistics → delta-method comparisons (no Spark).

Rows of the staging table (a handful per experiment and metric) are merged per
(metric, variant) with Chan et al.'s formulas, and every treatment is compared with the
control by the delta method (Deng, Knoblich & Lu 2018, §3) — see `inference.compare`.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Mapping
from functools import reduce
from typing import Any

from cluster_spark.config import Experiment
from cluster_spark.inference import (
    STATUS_OK,
    STATUS_TOO_FEW_UNITS,
    STATUS_ZERO_DENOMINATOR,
    Comparison,
    compare,
    srm_test,
)
from cluster_spark.stats import RatioStats

#: The public results contract (column, Spark SQL type); README documents each column.
RESULT_COLUMNS: list[tuple[str, str]] = [
    ("experiment_id", "string"),
    ("analysis_date", "date"),
    ("metric", "string"),
    ("variant", "string"),
    ("control_variant", "string"),
    ("n_units", "bigint"),
    ("n_analysis_units", "bigint"),
    ("numerator_sum", "double"),
    ("denominator_sum", "double"),
    ("mean", "double"),
    ("stderr", "double"),
    ("effect_abs", "double"),
    ("effect_abs_stderr", "double"),
    ("effect_abs_ci_low", "double"),
    ("effect_abs_ci_high", "double"),
    ("effect_rel", "double"),
    ("effect_rel_stderr", "double"),
    ("effect_rel_ci_low", "double"),
    ("effect_rel_ci_high", "double"),
    ("p_value", "double"),
    ("p_value_rel", "double"),
    ("df", "double"),
    ("alpha", "double"),
    ("test", "string"),
    ("status", "string"),
    ("winsorized", "boolean"),
    ("num_lower_cap", "double"),
    ("num_upper_cap", "double"),
    ("den_lower_cap", "double"),
    ("den_upper_cap", "double"),
    ("mean_uncapped", "double"),
    ("effect_abs_uncapped", "double"),
    ("effect_rel_uncapped", "double"),
    ("effect_rel_uncapped_ci_low", "double"),
    ("effect_rel_uncapped_ci_high", "double"),
    ("p_value_uncapped", "double"),
    ("srm_chi2", "double"),
    ("srm_p_value", "double"),
    ("srm_flag", "boolean"),
    ("run_id", "string"),
]
RESULT_DDL = ", ".join(f"{name} {kind}" for name, kind in RESULT_COLUMNS)

#: Treatment rows whose control variant has no units.
STATUS_NO_CONTROL = "control_missing"

CAP_COLUMNS = ("num_lower_cap", "num_upper_cap", "den_lower_cap", "den_upper_cap")
_STAT_FIELDS = ("n_units", "mean_m", "mean_d", "css_mm", "css_dd", "css_md")


def stats_of(row: Mapping[str, Any]) -> RatioStats:
    """One staged row as RatioStats."""
    n, mean_m, mean_d, css_mm, css_dd, css_md = (row[f] for f in _STAT_FIELDS)
    return RatioStats(
        int(n), float(mean_m), float(mean_d), float(css_mm), float(css_dd), float(css_md)
    )


def merge_groups(
    rows: Iterable[Mapping[str, Any]],
) -> dict[tuple[str, str, bool], RatioStats]:
    """Merge staged rows (possibly several partial rows per group) per
    (metric, variant, winsorized)."""
    parts: dict[tuple[str, str, bool], list[RatioStats]] = defaultdict(list)
    for row in rows:
        key = (row["metric"], row["variant"], bool(row.get("winsorized", False)))
        parts[key].append(stats_of(row))
    return {key: reduce(RatioStats.__add__, stats) for key, stats in parts.items()}


def _group_status(s: RatioStats) -> str:
    if s.n < 2:
        return STATUS_TOO_FEW_UNITS
    if s.sum_d == 0:
        return STATUS_ZERO_DENOMINATOR
    return STATUS_OK


def _sqrt_or_none(x: float | None) -> float | None:
    return None if x is None or x < 0 else x**0.5


def srm(
    experiment: Experiment, diagnostics: Iterable[Mapping[str, Any]]
) -> tuple[float | None, float | None, bool | None]:
    """Pearson χ² of assignment-unit counts against the configured split (default equal);
    flagged below the experiment's threshold (default p < 0.001)."""
    observed = {
        d["variant"]: int(d["value"]) for d in diagnostics if d["check"] == "assignment_units"
    }
    weights = experiment.variants or dict.fromkeys({experiment.control, *observed}, 1.0)
    observed = {v: observed.get(v, 0) for v in weights} | observed
    if len(observed) < 2 or set(observed) - set(weights):
        return None, None, None
    chi2, p = srm_test(observed, weights)
    return chi2, p, p < experiment.srm_threshold


def reduce_experiment(
    rows: Iterable[Mapping[str, Any]],
    experiment: Experiment,
    analysis_date: dt.date,
    run_id: str,
    diagnostics: Iterable[Mapping[str, Any]] = (),
) -> list[dict[str, Any]]:
    """Result rows (RESULT_COLUMNS) for one experiment: one per metric and variant.

    Control rows carry the group's estimate and null effects; when the control variant has
    no units, treatment rows carry status `control_missing` and null effects. For
    winsorized metrics the main columns are capped and `*_uncapped` columns are raw.
    """
    rows = list(rows)
    diagnostics = list(diagnostics)
    groups = merge_groups(rows)
    caps = {(r["metric"], r["variant"]): r for r in rows if r.get("winsorized")}
    subs = {d["variant"]: d["value"] for d in diagnostics if d["check"] == "analysis_units"}
    srm_chi2, srm_p, srm_flag = srm(experiment, diagnostics)
    control = experiment.control
    keys = sorted({(m, v) for m, v, _ in groups}, key=lambda k: (k[0], k[1] != control, k[1]))
    out = []
    for metric, variant in keys:
        winsorized = (metric, variant, True) in groups
        s = groups[(metric, variant, winsorized)]
        row: dict[str, Any] = {name: None for name, _ in RESULT_COLUMNS}
        row.update(
            experiment_id=experiment.id,
            analysis_date=analysis_date,
            metric=metric,
            variant=variant,
            control_variant=control,
            n_units=s.n,
            n_analysis_units=subs.get(variant),
            numerator_sum=s.sum_m,
            denominator_sum=s.sum_d,
            mean=s.ratio,
            stderr=_sqrt_or_none(s.var_ratio),
            alpha=experiment.alpha,
            test=experiment.test,
            status=_group_status(s),
            winsorized=winsorized,
            srm_chi2=srm_chi2,
            srm_p_value=srm_p,
            srm_flag=srm_flag,
            run_id=run_id,
        )
        if winsorized:
            cap_row = caps[(metric, variant)]
            row.update({k: cap_row[k] for k in CAP_COLUMNS})
            row["mean_uncapped"] = groups[(metric, variant, False)].ratio
        if variant == control:
            out.append(row)
            continue
        ctrl = groups.get((metric, control, winsorized))
        if ctrl is None:
            row["status"] = STATUS_NO_CONTROL
        else:
            cmp = compare(s, ctrl, alpha=experiment.alpha, test=experiment.test)
            row.update(_comparison_columns(cmp))
            if winsorized:
                raw = compare(
                    groups[(metric, variant, False)],
                    groups[(metric, control, False)],
                    alpha=experiment.alpha,
                    test=experiment.test,
                )
                row.update(
                    effect_abs_uncapped=raw.effect_abs,
                    effect_rel_uncapped=raw.effect_rel,
                    effect_rel_uncapped_ci_low=raw.effect_rel_ci_low,
                    effect_rel_uncapped_ci_high=raw.effect_rel_ci_high,
                    p_value_uncapped=raw.p_value,
                )
        out.append(row)
    return out


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
