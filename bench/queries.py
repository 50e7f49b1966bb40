"""The queries the bench runs besides cluster_spark's own: the floor (one aggregation per
unit, the least any per-unit job can do) and the per-metric queries (one query per metric
over all experiments, as warehouse tools run them)."""

from __future__ import annotations

import paths  # noqa: F401  (src/ on sys.path before cluster_spark)
from dataset import ANALYSIS_DATE
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from cluster_spark.config import Config, Metric
from cluster_spark.staging.filters import event_condition
from cluster_spark.staging.options import PERCENTILE_ACCURACY
from cluster_spark.staging.plan import TS


def floor_query(events: DataFrame) -> None:
    """One aggregation per (org, user) that reads every event column the metrics read."""
    (
        events.groupBy("org_id", "user_id")
        .agg(
            F.count(F.lit(1)).alias("n"),
            F.sum("value").alias("value"),
            F.max("ts").alias("ts"),
            F.count("event").alias("event"),
        )
        .write.format("noop")
        .mode("overwrite")
        .save()
    )


def first_exposures(spark: SparkSession, config: Config, exposures: DataFrame) -> DataFrame:
    """The warehouse CTE: first exposure per (experiment, org) within each experiment's
    dates, units seen in two variants dropped."""
    # A literal table built in the JVM (spark.createDataFrame from a list would start
    # Python workers for every query).
    rows = [
        F.struct(
            F.lit(e.id).alias("experiment_id"),
            F.lit(e.start_time).alias("start_ts"),
            F.lit(e.analysis_time(ANALYSIS_DATE)).alias("analysis_ts"),
        )
        for e in config.experiments
    ]
    bounds = spark.range(1).select(F.inline(F.array(*rows)))
    return (
        exposures.join(F.broadcast(bounds), "experiment_id")
        .where(
            (F.col("exposure_ts") >= F.col("start_ts"))
            & (F.col("exposure_ts") < F.col("analysis_ts"))
        )
        .groupBy("experiment_id", "org_id")
        .agg(
            F.min("exposure_ts").alias("exposure_ts"),
            F.min("variant").alias("variant"),
            F.count_distinct("variant").alias("n_variants"),
            F.first("analysis_ts").alias("analysis_ts"),
        )
        .where(F.col("n_variants") == 1)
        .drop("n_variants")
    )


def component_agg(comp, keep: Column) -> Column:
    """Per-unit aggregation of one component over the joined events that pass `keep`."""
    if comp.agg == "sum":
        return F.sum(F.when(keep, F.col(comp.column).cast("double")))
    if comp.agg == "count":
        return F.count(F.when(keep, F.lit(1)))
    return F.count_distinct(F.when(keep, F.col(comp.column)))


def per_metric_query(
    spark: SparkSession, config: Config, metric: Metric, events: DataFrame, exposures: DataFrame
) -> list:
    """One metric, all experiments, as a warehouse tool's query: first exposures ⋈ events
    → per-unit (M, D) → winsorization caps (pooled per experiment) → per-group sums.
    Reuses staging.filters.event_condition so the metric means the same thing.

    Returns one row per (experiment, variant): n, sum_m, sum_d, sum_mm, sum_dd, sum_md
    (raw sums of the unit values) and, for a winsorized metric, the same sums of the
    clamped values (suffix `_w`) and the caps (`tables.CAP_COLUMNS` it has)."""
    units = first_exposures(spark, config, exposures)
    joined = (
        events.withColumnRenamed("ts", TS)
        .join(F.broadcast(units), "org_id")
        .where((F.col(TS) >= F.col("exposure_ts")) & (F.col(TS) <= F.col("analysis_ts")))
    )
    aggs = []
    for role, comp in metric.components.items():
        if comp.agg != "unit_count":
            aggs.append(
                component_agg(comp, event_condition(comp, metric.bake_hours))
                .cast("double")
                .alias(role)
            )
    per_unit = joined.groupBy("experiment_id", "org_id").agg(*aggs)

    def value(role: str) -> Column:
        if metric.components[role].agg == "unit_count":
            return F.lit(1.0)
        return F.coalesce(F.col(role), F.lit(0.0))

    d = value("den")
    m = value("num")
    if metric.kind == "ratio" and metric.conversion_rate:
        m = F.when(d == 0, F.lit(0.0)).otherwise(m)
    values = units.join(per_unit, ["experiment_id", "org_id"], "left").select(
        "experiment_id", "variant", m.alias("m"), d.alias("d")
    )
    sums = [
        F.count(F.lit(1)).alias("n"),
        F.sum("m").alias("sum_m"),
        F.sum("d").alias("sum_d"),
        F.sum(F.col("m") * F.col("m")).alias("sum_mm"),
        F.sum(F.col("d") * F.col("d")).alias("sum_dd"),
        F.sum(F.col("m") * F.col("d")).alias("sum_md"),
    ]
    if metric.winsorized:
        caps = []
        for role, col in (("num", "m"), ("den", "d")):
            w = metric.components[role].winsorize
            if w is None:
                continue
            keep = F.col(col) != 0 if w.ignore_zeros else F.lit(True)
            for side, q in (("lower", w.lower), ("upper", w.upper)):
                if q is not None:
                    pct = F.percentile_approx(F.when(keep, F.col(col)), q, PERCENTILE_ACCURACY)
                    caps.append(pct.alias(f"{role}_{side}_cap"))
        cap_df = values.groupBy("experiment_id").agg(*caps)
        values = values.join(F.broadcast(cap_df), "experiment_id")
        for role, col in (("num", "m"), ("den", "d")):
            x = F.col(col)
            if f"{role}_lower_cap" in cap_df.columns:
                x = F.when(x == 0, x).otherwise(F.greatest(x, F.col(f"{role}_lower_cap")))
            if f"{role}_upper_cap" in cap_df.columns:
                x = F.when(x == 0, x).otherwise(F.least(x, F.col(f"{role}_upper_cap")))
            values = values.withColumn(f"{col}_w", x)
        sums += [
            F.sum("m_w").alias("sum_m_w"),
            F.sum(F.col("m_w") * F.col("m_w")).alias("sum_mm_w"),
            F.sum(F.col("m_w") * F.col("d_w")).alias("sum_md_w"),
            F.sum("d_w").alias("sum_d_w"),
            F.sum(F.col("d_w") * F.col("d_w")).alias("sum_dd_w"),
            *[F.first(c).alias(c) for c in cap_df.columns if c != "experiment_id"],
        ]
    return values.groupBy("experiment_id", "variant").agg(*sums).collect()
