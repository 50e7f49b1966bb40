"""The per-unit contract: one row per experiment × assignment unit × metric with
`m, d, x, y, complete, baked` (`tables.UNIT_VALUES_COLUMNS`). Everything before it is event
plumbing (exposures, sources, the multi-unit policy); everything after it is metric
semantics and statistics (options, moments)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from cluster_spark.config import Component
from cluster_spark.kinds import KINDS
from cluster_spark.staging.events import SourceLevel, counts_values, source_level
from cluster_spark.staging.exposures import exposed_units
from cluster_spark.staging.moments import analysis_unit_moments
from cluster_spark.staging.options import included
from cluster_spark.staging.plan import SUB, UNIT, Cache, Plan, diag
from cluster_spark.staging.policy import apply_multi_unit_policy, multi_unit_offenders
from cluster_spark.staging.slices import segments, unit_slices
from cluster_spark.tables import ANALYSIS_UNITS_METRIC


def _second_level(comp: Component, col: str) -> tuple[Column, Column]:
    """(The merge of `_first_level` values per unit, the value of one analysis unit.)"""
    if comp.agg in ("sum", "count"):
        return F.sum(col), F.col(col)
    return F.count(col), F.when(F.col(col).isNotNull(), F.lit(1))


def _distinct_counts(values: DataFrame, names: list[str]) -> DataFrame:
    """Per (experiment, unit): the number of distinct values of each component in `names`,
    from `FirstLevel.values` rows: distinct (experiment, unit, component, value) by
    aggregation (partial aggregation applies; no unit's values are held in one array)."""
    pairs = values.select("experiment_id", UNIT, "_component", "_value").distinct()
    return pairs.groupBy("experiment_id", UNIT).agg(
        *[F.count(F.when(F.col("_component") == name, 1)).alias(name) for name in names]
    )


@dataclass
class SourceAggregates:
    """What one pass over a metric source yields (see `source_unit_aggregates`)."""

    per_unit: DataFrame
    per_analysis_unit: DataFrame | None


def source_unit_aggregates(
    plan: Plan, level: SourceLevel, rows: DataFrame, distinct_values: DataFrame | None
) -> SourceAggregates:
    """The second level: the first-level `rows` and `distinct_values` (after the multi-unit
    policy) merged per (experiment, unit), and, where they are keyed by the analysis unit,
    the per-analysis-unit values for the design effect (distinct counts of other columns
    do not add up over analysis units: they have none)."""
    source, key_col = level.source, level.key_col
    second, values, counted = [], [], []
    for name, (comp, _) in level.parts.items():
        for col in [name, f"{name}_pre"] if plan.cuped else [name]:
            if counts_values(comp, key_col):
                counted.append(col)
                continue
            merge, value = _second_level(comp, col)
            second.append(merge.alias(col))
            values.append(F.coalesce(value.cast("double"), F.lit(0.0)).alias(col))
    # Active analysis units per unit, where the first level is keyed by them.
    subs = F.count(F.when(F.col(SUB).isNotNull(), F.col("_active")))
    per_unit = rows.groupBy("experiment_id", UNIT).agg(
        *second,
        F.sum("_n_pre").alias(f"_pre__{source}"),
        *([subs.alias(f"_subs__{source}")] if level.by_analysis_unit else []),
    )
    if counted:
        counts = _distinct_counts(distinct_values, counted)
        per_unit = per_unit.join(counts, ["experiment_id", UNIT], "left")
    per_analysis_unit = None
    if level.by_analysis_unit:
        per_analysis_unit = rows.where(F.col(SUB).isNotNull()).select(
            "experiment_id", UNIT, SUB, "_active", *values
        )
    return SourceAggregates(per_unit, per_analysis_unit)


@dataclass
class UnitValues:
    """Long per-unit values of one plan and what goes with them."""

    values: DataFrame
    diagnostics: DataFrame
    analysis_unit_moments: DataFrame | None
    #: the exposed units with their slices (`_slices`), for kinds with their own stage
    units: DataFrame | None = None
    #: the multi-unit policy's offending (experiment, analysis unit) pairs, or None
    offenders: DataFrame | None = None


def unit_values(spark: SparkSession, plan: Plan, cache: Cache) -> UnitValues:
    """Long per-unit values: experiment_id, variant, _unit, dimension, slice, metric, m, d,
    x, y, complete, baked (an overall row per unit and metric, and one per dimension of its
    experiment: `slices`); zeros for units without events; with an analysis unit, one more
    row per unit for `ANALYSIS_UNITS_METRIC` (m = its active analysis units, d = 1); plus
    diagnostics and analysis-unit moments (per segment too).
    What it persists is in `cache`."""
    units, diags = exposed_units(spark, plan, cache)
    slices, slice_diags = unit_slices(spark, plan, units, cache)
    if slice_diags is not None:
        diags = diags.unionByName(slice_diags)
    levels = [source_level(spark, plan, source, units, cache) for source in plan.sources]
    keyed = [level for level in levels if level.by_analysis_unit]
    offenders = None
    if keyed:  # one policy over every source keyed by the analysis unit
        where = "; ".join(level.where for level in keyed)
        offenders, multi = multi_unit_offenders([level.rows for level in keyed], plan, where)
        diags = diags.unionByName(multi)
    # Units with their slices (`_slices`), the base of the per-unit frame.
    sliced = units if slices is None else units.join(slices, ["experiment_id", UNIT], "left")
    wide = sliced
    sub_cols, per_analysis_unit = [], []
    for level in levels:
        diags = diags.unionByName(level.diagnostics)
        rows, values = level.rows, level.value_rows
        if level.by_analysis_unit:
            # read for per-unit values and per-analysis-unit values
            rows = cache.persist(apply_multi_unit_policy(rows, offenders, plan))
            if values is not None:
                values = apply_multi_unit_policy(values, offenders, plan)
        agg = source_unit_aggregates(plan, level, rows, values)
        wide = wide.join(agg.per_unit, ["experiment_id", UNIT], "left")
        if agg.per_analysis_unit is not None:
            per_analysis_unit.append(agg.per_analysis_unit)
            sub_cols.append(F.coalesce(F.col(f"_subs__{level.source}"), F.lit(0)))
    if len(per_analysis_unit) > 1:  # an analysis unit active in several sources counts once
        active = reduce(
            DataFrame.unionByName,
            [f.select("experiment_id", UNIT, SUB, "_active") for f in per_analysis_unit],
        )
        per_unit = (
            active.groupBy("experiment_id", UNIT, SUB)
            .agg(F.max("_active").alias("_active"))
            .groupBy("experiment_id", UNIT)
            .agg(F.count("_active").alias("_n_active"))
        )
        wide = wide.join(per_unit, ["experiment_id", UNIT], "left")
        sub_cols = [F.coalesce(F.col("_n_active"), F.lit(0))]
    # Values and diagnostics (two Spark queries) both read the per-unit frame: persist it.
    wide = cache.persist(wide)
    for source in plan.sources:
        pre = wide.groupBy("experiment_id").agg(F.sum(f"_pre__{source}").alias("n"))
        diags = diags.unionByName(diag(pre, f"events_before_exposure:{source}", F.col("n")))

    def value(name: str, role: str, comp: Component, suffix: str = "") -> Column:
        if comp.agg == "unit_count":
            return F.lit(1.0)
        if suffix and not plan.cuped:
            return F.lit(0.0)
        column = plan.components[(name, role)][0] + suffix
        return F.coalesce(F.col(column).cast("double"), F.lit(0.0))

    entries = []
    for name, metric in plan.metrics.items():
        if KINDS[metric.kind].stage is not None:
            continue  # staged by its own kind (`kinds`)
        complete, baked = included(metric, plan.daily_sources)
        entries.append(
            F.struct(
                F.lit(name).alias("metric"),
                value(name, "num", metric.numerator).alias("m"),
                value(name, "den", metric.denominator_or_unit).alias("d"),
                value(name, "num", metric.numerator, "_pre").alias("x"),
                value(name, "den", metric.denominator_or_unit, "_pre").alias("y"),
                complete.alias("complete"),
                baked.alias("baked"),
            )
        )
    analysis_units = sub_cols[0] if sub_cols else F.lit(0)
    extra = []
    if sub_cols:  # analysis units per assignment unit: the analysis-unit balance check
        extra = [ANALYSIS_UNITS_METRIC]
        entries.append(
            F.struct(
                F.lit(ANALYSIS_UNITS_METRIC).alias("metric"),
                analysis_units.cast("double").alias("m"),
                F.lit(1.0).alias("d"),
                F.lit(0.0).alias("x"),
                F.lit(0.0).alias("y"),
                F.lit(True).alias("complete"),
                F.lit(True).alias("baked"),
            )
        )
    wanted = F.create_map(
        *[
            x
            for e in plan.experiments
            for x in (F.lit(e.id), F.array(*map(F.lit, [*e.metrics, *extra])))
        ]
    )
    values = (
        wide.select(
            "experiment_id",
            "variant",
            UNIT,
            analysis_units.alias("_n_subs"),
            segments(F.col("_slices") if slices is not None else None).alias("_segments"),
            F.explode(F.array(*entries)).alias("v"),
        )
        .where(F.array_contains(F.element_at(wanted, F.col("experiment_id")), F.col("v.metric")))
        .select(
            "experiment_id",
            "variant",
            UNIT,
            "_n_subs",
            "v",
            F.explode("_segments").alias("s"),
        )
        .select("experiment_id", "variant", UNIT, "_n_subs", "s.*", "v.*")
    )
    if sub_cols:  # a source has the analysis unit: count the active ones
        first_metric = {e.id: e.metrics[0] for e in plan.experiments}
        one_row = F.col("metric") == F.element_at(
            F.create_map(*[F.lit(x) for kv in first_metric.items() for x in kv]),
            F.col("experiment_id"),
        )
        counts = (
            values.where(one_row)
            .groupBy("experiment_id", "variant", "dimension", "slice")
            .agg(F.sum("_n_subs").alias("n"))
        )
        diags = diags.unionByName(
            diag(counts, "analysis_units", F.col("n"), variant=F.col("variant"), segment=True)
        )
    return UnitValues(
        values.drop("_n_subs"),
        diags,
        analysis_unit_moments(plan, per_analysis_unit, sliced),
        sliced,
        offenders,
    )
