"""The Spark staging job: exposures × metric events → per-unit (M_i, D_i) → per-group
sufficient statistics in centered form.

One pass over each metric source computes the components of every metric of every
experiment; only (experiment, metric, variant) rows leave Spark. Aggregation uses Spark's
built-ins only: `var_pop`/`covar_pop` are computed with stable online updates and merged
with Chan et al.'s pairwise formulas inside Spark.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import reduce

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cluster_spark.config import Component, Condition, Config, Experiment, Metric
from cluster_spark.io import check_columns, describe, read_table

UNIT = "_unit"
TS = "_ts"

STAGING_SCHEMA = T.StructType(
    [
        T.StructField("experiment_id", T.StringType(), False),
        T.StructField("analysis_date", T.DateType(), False),
        T.StructField("metric", T.StringType(), False),
        T.StructField("variant", T.StringType(), False),
        T.StructField("n_units", T.LongType(), False),
        T.StructField("sum_m", T.DoubleType(), False),
        T.StructField("sum_d", T.DoubleType(), False),
        T.StructField("mean_m", T.DoubleType(), False),
        T.StructField("mean_d", T.DoubleType(), False),
        T.StructField("css_mm", T.DoubleType(), False),
        T.StructField("css_dd", T.DoubleType(), False),
        T.StructField("css_md", T.DoubleType(), False),
        T.StructField("run_id", T.StringType(), False),
    ]
)


def condition(c: Condition) -> Column:
    """A structured filter condition as a Spark Column (values are literals, never SQL)."""
    col = F.col(c.column)
    ops = {
        "eq": lambda: col == F.lit(c.value),
        "ne": lambda: col != F.lit(c.value),
        "gt": lambda: col > F.lit(c.value),
        "ge": lambda: col >= F.lit(c.value),
        "lt": lambda: col < F.lit(c.value),
        "le": lambda: col <= F.lit(c.value),
        "in": lambda: col.isin(c.value),
        "not_in": lambda: ~col.isin(c.value),
        "is_null": lambda: col.isNull(),
        "not_null": lambda: col.isNotNull(),
    }
    return ops[c.op]()


def component_agg(comp: Component) -> Column:
    """Per-unit aggregation of one component over the joined events (null if no event)."""
    keep = reduce(lambda a, b: a & b, (condition(c) for c in comp.filter), F.lit(True))
    if comp.agg == "sum":
        return F.sum(F.when(keep, F.col(comp.column).cast("double")))
    if comp.agg == "count":
        return F.count(F.when(keep, F.lit(1)))
    if comp.agg == "count_distinct":
        return F.count_distinct(F.when(keep, F.col(comp.column)))
    raise ValueError(f"component {comp.agg} is not aggregated over events")


@dataclass(frozen=True)
class Plan:
    """The experiments of one assignment-unit type, analysed together in one pass."""

    unit_type: str
    experiments: tuple[Experiment, ...]
    analysis_date: dt.date

    def metrics(self, config: Config) -> dict[str, Metric]:
        names = sorted({m for e in self.experiments for m in e.metrics})
        return {n: config.metrics[n] for n in names}


def _col_name(metric: str, role: str) -> str:
    return f"{metric}__{role}"


def exposed_units(spark: SparkSession, config: Config, plan: Plan) -> DataFrame:
    """First exposure per (experiment, unit) within each experiment's dates; units seen in
    two variants are dropped. Columns: experiment_id, _unit, variant, exposure_ts, analysis_ts."""
    src = config.exposures
    df = read_table(spark, src)
    unit_col = src.ids[plan.unit_type]
    check_columns(
        df,
        {src.experiment_id: "id", unit_col: "id", src.variant: "any", src.timestamp: "timestamp"},
        f"exposures {describe(src)}",
    )
    bounds = spark.createDataFrame(
        [
            (e.id, dt.datetime.combine(e.start, dt.time()), e.analysis_time(plan.analysis_date))
            for e in plan.experiments
        ],
        "experiment_id string, start_ts timestamp, analysis_ts timestamp",
    )
    exposures = (
        df.select(
            F.col(src.experiment_id).cast("string").alias("experiment_id"),
            F.col(unit_col).cast("string").alias(UNIT),
            F.col(src.variant).cast("string").alias("variant"),
            F.col(src.timestamp).cast("timestamp").alias(TS),
        )
        .join(F.broadcast(bounds), "experiment_id")
        .where(F.col(UNIT).isNotNull() & F.col("variant").isNotNull() & F.col(TS).isNotNull())
        .where((F.col(TS) >= F.col("start_ts")) & (F.col(TS) < F.col("analysis_ts")))
    )
    return (
        exposures.groupBy("experiment_id", UNIT)
        .agg(
            F.min(TS).alias("exposure_ts"),
            F.min("variant").alias("variant"),
            F.count_distinct("variant").alias("n_variants"),
            F.first("analysis_ts").alias("analysis_ts"),
        )
        .where(F.col("n_variants") == 1)
        .drop("n_variants")
    )


def source_unit_aggregates(
    spark: SparkSession, config: Config, plan: Plan, source: str, units: DataFrame
) -> DataFrame:
    """One pass over one metric source: every component that reads it, per exposed unit."""
    src = config.sources[source]
    df = read_table(spark, src)
    unit_col = src.ids[plan.unit_type]
    comps = {
        _col_name(name, role): comp
        for name, metric in plan.metrics(config).items()
        for role, comp in (("num", metric.numerator), ("den", metric.denominator_or_unit))
        if comp.source == source
    }
    required = {unit_col: "id", src.timestamp: "timestamp"}
    for comp in comps.values():
        if comp.agg == "sum":
            required[comp.column] = "numeric"
        elif comp.column:
            required.setdefault(comp.column, "any")
        for cond in comp.filter:
            required.setdefault(cond.column, "any")
    check_columns(df, required, f"source '{source}' ({describe(src)})")

    events = df.select(
        F.col(unit_col).cast("string").alias(UNIT),
        F.col(src.timestamp).cast("timestamp").alias(TS),
        *[F.col(c) for c in sorted(set(required) - {unit_col, src.timestamp})],
    ).where(F.col(UNIT).isNotNull())
    joined = events.join(
        F.broadcast(units.select("experiment_id", UNIT, "exposure_ts", "analysis_ts")), UNIT
    ).where((F.col(TS) >= F.col("exposure_ts")) & (F.col(TS) <= F.col("analysis_ts")))
    return joined.groupBy("experiment_id", UNIT).agg(
        *[component_agg(c).alias(name) for name, c in comps.items()]
    )


def unit_values(spark: SparkSession, config: Config, plan: Plan) -> DataFrame:
    """Long per-unit values: experiment_id, variant, _unit, metric, m, d (zeros for units
    without events; `m := 0` where `d = 0` for conversion-rate ratio metrics)."""
    units = exposed_units(spark, config, plan)
    metrics = plan.metrics(config)
    wide = units
    for source in sorted({s for m in metrics.values() for s in config.metric_sources(m)}):
        aggs = source_unit_aggregates(spark, config, plan, source, units)
        wide = wide.join(aggs, ["experiment_id", UNIT], "left")

    def value(name: str, role: str, comp: Component) -> Column:
        if comp.agg == "unit_count":
            return F.lit(1.0)
        return F.coalesce(F.col(_col_name(name, role)).cast("double"), F.lit(0.0))

    entries = []
    for name, metric in metrics.items():
        m = value(name, "num", metric.numerator)
        d = value(name, "den", metric.denominator_or_unit)
        if metric.kind == "ratio" and metric.conversion_rate:
            m = F.when(d == 0, F.lit(0.0)).otherwise(m)
        entries.append(F.struct(F.lit(name).alias("metric"), m.alias("m"), d.alias("d")))
    wanted = F.create_map(
        *[x for e in plan.experiments for x in (F.lit(e.id), F.array(*map(F.lit, e.metrics)))]
    )
    return (
        wide.select("experiment_id", "variant", UNIT, F.explode(F.array(*entries)).alias("v"))
        .select("experiment_id", "variant", UNIT, "v.metric", "v.m", "v.d")
        .where(F.array_contains(F.element_at(wanted, F.col("experiment_id")), F.col("metric")))
    )


def group_statistics(values: DataFrame) -> DataFrame:
    """Per (experiment, metric, variant): n, sums, means and centered co-moments."""
    n = F.count(F.lit(1))
    return values.groupBy("experiment_id", "metric", "variant").agg(
        n.alias("n_units"),
        F.sum("m").alias("sum_m"),
        F.sum("d").alias("sum_d"),
        F.avg("m").alias("mean_m"),
        F.avg("d").alias("mean_d"),
        (F.var_pop("m") * n).alias("css_mm"),
        (F.var_pop("d") * n).alias("css_dd"),
        (F.covar_pop("m", "d") * n).alias("css_md"),
    )


def plans(config: Config, experiment_ids: list[str], analysis_date: dt.date) -> list[Plan]:
    """Group the chosen experiments by assignment-unit type: one pass per type."""
    chosen = [config.experiment(e) for e in experiment_ids]
    types = sorted({e.assignment_unit for e in chosen})
    return [
        Plan(t, tuple(e for e in chosen if e.assignment_unit == t), analysis_date) for t in types
    ]


def stage(
    spark: SparkSession,
    config: Config,
    experiment_ids: list[str],
    analysis_date: dt.date,
    run_id: str,
) -> DataFrame:
    """The staged statistics of these experiments (a lazy DataFrame in STAGING_SCHEMA)."""
    frames = [
        group_statistics(unit_values(spark, config, plan))
        for plan in plans(config, experiment_ids, analysis_date)
    ]
    stats = reduce(DataFrame.unionByName, frames)
    return stats.select(
        "experiment_id",
        F.lit(analysis_date).alias("analysis_date"),
        "metric",
        "variant",
        *[F.col(f.name).cast(f.dataType) for f in STAGING_SCHEMA.fields[4:12]],
        F.lit(run_id).alias("run_id"),
    )
