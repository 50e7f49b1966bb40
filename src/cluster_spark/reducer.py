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

from cluster_spark.inference import (
    STATUS_OK,
    STATUS_TOO_FEW_UNITS,
    STATUS_ZERO_DENOMINATOR,
    Comparison,
    compare,
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
    ("run_id", "string"),
]
RESULT_DDL = ", ".join(f"{name} {kind}" for name, kind in RESULT_COLUMNS)

#: Treatment rows whose control variant has no units.
STATUS_NO_CONTROL = "control_missing"

_STAT_FIELDS = ("n_units", "mean_m", "mean_d", "css_mm", "css_dd", "css_md")


def stats_of(row: Mapping[str, Any]) -> RatioStats:
    """One staged row as RatioStats."""
    n, mean_m, mean_d, css_mm, css_dd, css_md = (row[f] for f in _STAT_FIELDS)
    return RatioStats(
        int(n), float(mean_m), float(mean_d), float(css_mm), float(css_dd), float(css_md)
    )


def merge_groups(rows: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], RatioStats]:
    """Merge staged rows (possibly several partial rows per group) per (metric, variant)."""
    parts: dict[tuple[str, str], list[RatioStats]] = defaultdict(list)
    for row in rows:
        parts[(row["metric"], row["variant"])].append(stats_of(row))
    return {key: reduce(RatioStats.__add__, stats) for key, stats in parts.items()}


def _group_status(s: RatioStats) -> str:
    if s.n < 2:
        return STATUS_TOO_FEW_UNITS
    if s.sum_d == 0:
        return STATUS_ZERO_DENOMINATOR
    return STATUS_OK


def _sqrt_or_none(x: float | None) -> float | None:
    return None if x is None or x < 0 else x**0.5


def reduce_experiment(
    rows: Iterable[Mapping[str, Any]],
    experiment_id: str,
    control: str,
    analysis_date: dt.date,
    run_id: str,
    alpha: float = 0.05,
    test: str = "welch",
) -> list[dict[str, Any]]:
    """Result rows (RESULT_COLUMNS) for one experiment: one per metric and variant.

    Control rows carry the group's estimate and null effects; when the control variant has
    no units, treatment rows carry status `control_missing` and null effects.
    """
    groups = merge_groups(rows)
    out = []
    for metric, variant in sorted(groups, key=lambda k: (k[0], k[1] != control, k[1])):
        s = groups[(metric, variant)]
        row: dict[str, Any] = {name: None for name, _ in RESULT_COLUMNS}
        row.update(
            experiment_id=experiment_id,
            analysis_date=analysis_date,
            metric=metric,
            variant=variant,
            control_variant=control,
            n_units=s.n,
            numerator_sum=s.sum_m,
            denominator_sum=s.sum_d,
            mean=s.ratio,
            stderr=_sqrt_or_none(s.var_ratio),
            alpha=alpha,
            test=test,
            status=_group_status(s),
            run_id=run_id,
        )
        if variant != control:
            ctrl = groups.get((metric, control))
            if ctrl is None:
                row["status"] = STATUS_NO_CONTROL
            else:
                row.update(_comparison_columns(compare(s, ctrl, alpha=alpha, test=test)))
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
