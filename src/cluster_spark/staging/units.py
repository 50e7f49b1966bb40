"""The per-unit contract: one row per experiment × assignment unit × metric with
`m, d, x, y, complete, baked` (`tables.UNIT_VALUES_COLUMNS`), in three steps: each source's
second level joined to the exposed units (`per_unit_frame`), then the long rows
(`unit_value_rows`) and their diagnostics. Everything before it is event plumbing
(exposures, sources, the multi-unit policy); everything after it is metric semantics and
statistics (options, moments)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from cluster_spark.config import Component
from cluster_spark.kinds import KINDS
from cluster_spark.staging.covariates import Covariates, covariate_column
from cluster_spark.staging.events import SourceLevel, counts_values
from cluster_spark.staging.options import conversion, included
from cluster_spark.staging.plan import SUB, UNIT, Cache, Check, Plan, diag
from cluster_spark.staging.policy import apply_multi_unit_policy
from cluster_spark.staging.slices import segments
from cluster_spark.tables import ANALYSIS_UNITS_METRIC


def _second_level(comp: Component, col: str) -> tuple[Column, Column]:
    """(The merge of `component_aggregate` values per unit, the value of one analysis unit.)"""
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
class PerUnit:
    """The per-unit frame of a pass (`per_unit_frame`): `wide` has the exposed units with
    their slices (`_slices`) and, per source, its components' columns (`Plan.components`,
    `_pre` suffixed with CUPED), `_pre__<source>` (events before exposure) and, for a
    source keyed by the analysis unit, `_subs__<source>` (active analysis units) and, with
    several such sources, `_n_active`. Persisted: the values and the diagnostics read it."""

    wide: DataFrame
    #: active analysis units per unit (`F.lit(0)` without a source keyed by them)
    analysis_units: Column
    #: whether some source is keyed by the analysis unit
    keyed: bool
    #: per source keyed by the analysis unit: (experiment, unit, _sub, _active, values)
    per_analysis_unit: list[DataFrame]


def per_unit_frame(
    plan: Plan,
    sliced: DataFrame,
    levels: list[SourceLevel],
    offenders: DataFrame | None,
    cache: Cache,
) -> PerUnit:
    """Every source's second level (`source_unit_aggregates`, after the multi-unit policy
    `offenders`) joined to the exposed units `sliced`, one row per (experiment, unit)."""
    wide = sliced
    sub_cols, per_analysis_unit = [], []
    for level in levels:
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
        wide = wide.join(_active_in_any(per_analysis_unit), ["experiment_id", UNIT], "left")
        sub_cols = [F.coalesce(F.col("_n_active"), F.lit(0))]
    # Values and diagnostics (two Spark queries) both read the per-unit frame: persist it.
    wide = cache.persist(wide)
    analysis_units = sub_cols[0] if sub_cols else F.lit(0)
    return PerUnit(wide, analysis_units, bool(sub_cols), per_analysis_unit)


def _active_in_any(per_analysis_unit: list[DataFrame]) -> DataFrame:
    """Per (experiment, unit): `_n_active`, its analysis units active in any source."""
    active = reduce(
        DataFrame.unionByName,
        [f.select("experiment_id", UNIT, SUB, "_active") for f in per_analysis_unit],
    )
    return (
        active.groupBy("experiment_id", UNIT, SUB)
        .agg(F.max("_active").alias("_active"))
        .groupBy("experiment_id", UNIT)
        .agg(F.count("_active").alias("_n_active"))
    )


def events_before_exposure(plan: Plan) -> list[Check]:
    """Checks `events_before_exposure:<source>` per experiment, over the per-unit frame."""
    return [
        (f"events_before_exposure:{source}", F.sum(f"_pre__{source}"), None)
        for source in plan.sources
    ]


def _value_entries(
    plan: Plan, per_unit: PerUnit, covariates: Covariates
) -> tuple[list[Column], list[str]]:
    """(A struct per moments-kind metric with its (metric, m, d, x, y, w, complete, baked),
    and `ANALYSIS_UNITS_METRIC`'s when some source is keyed by the analysis unit; the
    extra metric names.)"""

    def value(name: str, role: str, comp: Component, suffix: str = "") -> Column:
        if comp.agg == "unit_count":
            return F.lit(1.0)
        if suffix and not plan.cuped:
            return F.lit(0.0)
        column = plan.components[(name, role)][0] + suffix
        return F.coalesce(F.col(column).cast("double"), F.lit(0.0))

    def pre_values(name: str) -> list[Column]:
        """(X, Y) of metric `name` over the pre-period, under the conversion-rate rule."""
        metric = plan.metrics[name]
        y = value(name, "den", metric.denominator_or_unit, "_pre")
        return [conversion(metric, value(name, "num", metric.numerator, "_pre"), y), y]

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
                covariate_column(plan, name, covariates, pre_values).alias("w"),
                complete.alias("complete"),
                baked.alias("baked"),
            )
        )
    if not per_unit.keyed:
        return entries, []
    # analysis units per assignment unit: the analysis-unit balance check
    entries.append(
        F.struct(
            F.lit(ANALYSIS_UNITS_METRIC).alias("metric"),
            per_unit.analysis_units.cast("double").alias("m"),
            F.lit(1.0).alias("d"),
            F.lit(0.0).alias("x"),
            F.lit(0.0).alias("y"),
            F.lit(None).cast("array<double>").alias("w"),
            F.lit(True).alias("complete"),
            F.lit(True).alias("baked"),
        )
    )
    return entries, [ANALYSIS_UNITS_METRIC]


def unit_value_rows(
    plan: Plan, per_unit: PerUnit, sliced: bool, covariates: Covariates | None = None
) -> DataFrame:
    """The per-unit contract (`tables.UNIT_VALUES_COLUMNS`) and `_n_subs` (the unit's
    active analysis units): an overall row per unit and metric of its experiment, and one
    per dimension of its experiment (`slices`); zeros for units without events. `sliced`:
    the units have `_slices`; `covariates`: the layout of `w` (`staging.covariates`)."""
    entries, extra = _value_entries(plan, per_unit, covariates or Covariates())
    wanted = F.create_map(
        *[
            x
            for e in plan.experiments
            for x in (F.lit(e.id), F.array(*map(F.lit, [*e.metrics, *extra])))
        ]
    )
    return (
        per_unit.wide.select(
            "experiment_id",
            "variant",
            UNIT,
            per_unit.analysis_units.alias("_n_subs"),
            segments(F.col("_slices") if sliced else None).alias("_segments"),
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


def analysis_unit_counts(plan: Plan, values: DataFrame) -> DataFrame:
    """Diagnostics `analysis_units` per (experiment, variant, segment): Σ `_n_subs` over
    one metric's rows (each unit once per segment)."""
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
    return diag(counts, "analysis_units", F.col("n"), variant=F.col("variant"), segment=True)
