"""Covariates of the regression adjustment (`Experiment.covariates`; `stats.regression`) as
per-unit columns: the array `w` of pairs (X_k, Y_k) whose ratio ΣX_k/ΣY_k is the group's
covariate — a metric's pre-period numerator and denominator, or (z, 1) for a unit
attribute: an indicator of a categorical level, a numeric value, or a missing-value
indicator. `w` is NULL-padded to the pass's `width` (its widest experiment and metric).

The levels of categorical attributes are the few group-level rows this module collects
(`attribute_levels`): they name the indicator columns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from cluster_spark.staging.plan import Plan
from cluster_spark.status import NULL_SLICE, OTHER_SLICE


@dataclass(frozen=True)
class Covariates:
    """`levels`: per (experiment, categorical attribute) its levels, the reference (the
    largest) first; `width`: the length of `w` in the pass, two entries a covariate
    (0: no covariates)."""

    levels: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    width: int = 0


def attribute_levels(plan: Plan, per_unit_slices: DataFrame | None) -> Covariates:
    """The categorical attributes' levels, from the units' `_attrs` (`slices.unit_slices`):
    per (experiment, attribute) the `max_levels` values with the most units (ties: by
    name), then `(other)` if more values exist, then `(null)` if some unit has none. One
    small collect; nothing when no experiment has a categorical attribute covariate."""
    wanted = {
        (e.id, a.attribute): a.max_levels
        for e in plan.experiments
        for a in e.attribute_covariates
        if a.type == "categorical"
    }
    levels: dict[tuple[str, str], list[str]] = {}
    if wanted and per_unit_slices is not None:
        counts = (
            per_unit_slices.where(F.col("_attrs").isNotNull())
            .select("experiment_id", F.explode("_attrs").alias("attribute", "value"))
            .groupBy("experiment_id", "attribute", "value")
            .count()
        )
        window = Window.partitionBy("experiment_id", "attribute", F.col("value").isNull())
        rows = (
            counts.withColumn(
                "_rank", F.row_number().over(window.orderBy(F.desc("count"), "value"))
            )
            .withColumn("_values", F.count(F.lit(1)).over(window))
            .where((F.col("_rank") <= max(wanted.values())) | F.col("value").isNull())
            .collect()
        )
        for key, cap in wanted.items():
            mine = sorted(
                (r for r in rows if (r["experiment_id"], r["attribute"]) == key),
                key=lambda r: r["_rank"],
            )
            named = [r for r in mine if r["value"] is not None]
            out = [r["value"] for r in named[:cap]]
            if named and named[0]["_values"] > cap:
                out.append(OTHER_SLICE)
            if any(r["value"] is None for r in mine):
                out.append(NULL_SLICE)
            levels[key] = out
    return Covariates(levels, _width(plan, levels))


def _width(plan: Plan, levels: dict[tuple[str, str], list[str]]) -> int:
    """The length of `w`: two entries a pair, for the pass's widest experiment and metric."""
    pairs = [len(_layout(e, m, levels)) for e in plan.experiments for m in e.metrics]
    return 2 * max(pairs, default=0)


def _layout(experiment, metric: str, levels) -> list[tuple[str, str, str | None]]:
    """The covariate pairs of `metric` in `experiment`, in order: (kind, name, level) with
    kind `metric` (its pre-period X, Y), `level` (an indicator), `numeric` or `missing`."""
    out: list[tuple[str, str, str | None]] = [
        ("metric", k, None) for k in experiment.covariates_of(metric)
    ]
    for a in experiment.attribute_covariates:
        if a.type == "numeric":
            out += [("numeric", a.attribute, None), ("missing", a.attribute, None)]
        else:  # every level but the reference
            out += [
                ("level", a.attribute, v) for v in levels.get((experiment.id, a.attribute), [])[1:]
            ]
    return out


def covariate_column(
    plan: Plan,
    metric: str,
    covariates: Covariates,
    pre_values: Callable[[str], list[Column]],
) -> Column:
    """`w` of `metric`'s per-unit rows, per experiment (`pre_values(k)`: metric k's
    pre-period X and Y columns of the per-unit frame)."""
    if not covariates.width:
        return F.lit(None).cast("array<double>")
    one, pad = F.lit(1.0), F.lit(None).cast("double")
    arrays = {}
    for e in plan.experiments:
        pairs: list[Column] = []
        kept = {}
        for kind, name, level in _layout(e, metric, covariates.levels):
            value = F.element_at(F.col("_attrs"), F.lit(name)) if kind != "metric" else None
            if kind == "metric":
                pairs += pre_values(name)
            elif kind == "numeric":
                pairs += [F.coalesce(value.try_cast("double"), F.lit(0.0)), one]
            elif kind == "missing":
                pairs += [F.when(value.try_cast("double").isNull(), 1.0).otherwise(0.0), one]
            else:
                if name not in kept:
                    named = covariates.levels[(e.id, name)]
                    kept[name] = [v for v in named if v not in (OTHER_SLICE, NULL_SLICE)]
                if level == NULL_SLICE:
                    hit = value.isNull()
                elif level == OTHER_SLICE:
                    hit = value.isNotNull() & ~value.isin(kept[name])
                else:
                    hit = value == level
                pairs += [F.when(hit, 1.0).otherwise(0.0), one]
        arrays[e.id] = F.array(*pairs, *[pad] * (covariates.width - len(pairs)))
    entries = [x for e, a in arrays.items() for x in (F.lit(e), a)]
    return F.element_at(F.create_map(*entries), F.col("experiment_id"))
