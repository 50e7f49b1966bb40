"""Covariates of the regression adjustment (`Experiment.covariates`; `stats.regression`) as
per-unit columns: the array `w`, per metric, first the pairs (X_k, Y_k) of its metric
covariates (`Experiment.covariates_of`: each one's pre-period numerator and denominator,
whose ratio ΣX_k/ΣY_k is the group's covariate), then one value z per attribute column (the
group's covariate is its mean): an indicator of a categorical level, a numeric value, or a
missing-value indicator. `w` is NULL-padded to the pass's `width` (its widest experiment
and moments metric).

The levels of categorical attributes are the few group-level rows this module collects
(`attribute_levels`): they name the indicator columns."""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import reduce

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from cluster_spark.config import Experiment
from cluster_spark.kinds import KINDS
from cluster_spark.staging.plan import Check, Plan
from cluster_spark.status import NULL_SLICE, OTHER_SLICE


@dataclass(frozen=True)
class Covariates:
    """`levels`: per (experiment, categorical attribute) its levels, the reference (the
    largest named value) first; `width`: the length of `w` in the pass (0: none)."""

    levels: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    width: int = 0


def attribute_levels(plan: Plan, per_unit: DataFrame) -> Covariates:
    """The categorical attributes' levels, from the units' `_attrs` (`slices.unit_slices`,
    on the persisted per-unit frame): per (experiment, attribute) the `max_levels` values
    with the most units (ties: by name), then `(other)` if more values exist, then `(null)`
    if some unit has none. One small collect (at most `max_levels` + 1 rows per attribute);
    nothing when no experiment has a categorical attribute covariate."""
    wanted = {
        (e.id, a.attribute): a.max_levels
        for e in plan.experiments
        for a in e.attribute_covariates
        if a.type == "categorical"
    }
    levels: dict[tuple[str, str], list[str]] = {}
    if wanted:
        pairs = [(F.col("experiment_id") == e) & (F.col("attribute") == a) for e, a in wanted]
        counts = (
            per_unit.select("experiment_id", F.explode("_attrs").alias("attribute", "value"))
            .where(reduce(operator.or_, pairs))
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
    moments = [n for n, m in plan.metrics.items() if KINDS[m.kind].stage is None]
    width = max(
        (_width(e, n, levels) for e in plan.experiments for n in moments if n in e.metrics),
        default=0,
    )
    return Covariates(levels, width)


def _attribute_columns(experiment: Experiment, levels) -> list[tuple[str, str, str | None]]:
    """The attribute columns of `w`, in order: (kind, attribute, level) with kind `level`
    (an indicator; every level but the reference), `numeric` or `missing`."""
    out: list[tuple[str, str, str | None]] = []
    for a in experiment.attribute_covariates:
        if a.type == "numeric":
            out += [("numeric", a.attribute, None), ("missing", a.attribute, None)]
        else:
            named = levels.get((experiment.id, a.attribute), [])
            out += [("level", a.attribute, v) for v in named[1:]]
    return out


def _width(experiment: Experiment, metric: str, levels) -> int:
    return 2 * len(experiment.covariates_of(metric)) + len(_attribute_columns(experiment, levels))


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
    arrays = {}
    for e in plan.experiments:
        values = [c for k in e.covariates_of(metric) for c in pre_values(k)]
        if metric in e.metrics:
            values += [
                _attribute(e, c, covariates.levels)
                for c in _attribute_columns(e, covariates.levels)
            ]
        pad = [F.lit(None).cast("double")] * (covariates.width - len(values))
        arrays[e.id] = F.array(*values, *pad)
    entries = [x for e, a in arrays.items() for x in (F.lit(e), a)]
    return F.element_at(F.create_map(*entries), F.col("experiment_id"))


def _attribute(experiment: Experiment, column: tuple[str, str, str | None], levels) -> Column:
    """One attribute column of `w`: 0/1 or the numeric value (0 when missing: NULL, not a
    number, NaN or infinite)."""
    kind, name, level = column
    value = F.element_at(F.col("_attrs"), F.lit(name))
    if kind in ("numeric", "missing"):
        number, usable = _number(name)
        if kind == "numeric":
            return F.when(usable, number).otherwise(F.lit(0.0))
        return F.when(usable, F.lit(0.0)).otherwise(F.lit(1.0))
    if level == NULL_SLICE:
        hit = value.isNull()
    elif level == OTHER_SLICE:
        named = levels[(experiment.id, name)]
        hit = value.isNotNull() & ~value.isin(
            [v for v in named if v not in (OTHER_SLICE, NULL_SLICE)]
        )
    else:
        hit = value == level
    return F.when(hit, F.lit(1.0)).otherwise(F.lit(0.0))


def _number(name: str) -> tuple[Column, Column]:
    """(The unit's value of attribute `name` as a double, whether it is a usable number:
    not NULL, text, NaN or infinite)."""
    number = F.element_at(F.col("_attrs"), F.lit(name)).try_cast("double")
    return number, number.isNotNull() & ~F.isnan(number) & (F.abs(number) != float("inf"))


def missing_numbers(plan: Plan) -> list[Check]:
    """Checks `covariate_missing:<attribute>` of each experiment with a numeric attribute
    covariate, over the per-unit frame: its units whose value is not a usable number (taken
    as 0, with the missing indicator 1). All of them missing means the attribute adjusts
    nothing: text in a column meant as numbers, say."""
    return [
        (f"covariate_missing:{a.attribute}", F.count(F.when(~_number(a.attribute)[1], 1)), e.id)
        for e in plan.experiments
        for a in e.attribute_covariates
        if a.type == "numeric"
    ]
