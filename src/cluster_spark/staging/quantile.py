"""The quantile kind's Spark side: the values of each quantile metric (one per source row
that passes its filter and window, of included exposed units), then two aggregations per
(experiment, metric, variant, dimension, slice) — `stats.quantile` for the method:

1. Q̂ = `percentile_approx(value, p)` and N; these group-level rows reach the driver,
   which derives the outer probabilities p ∓ 1.96·sqrt(p(1 − p)/N).
2. Per assignment unit I_i (values ≤ Q̂) and N_i (zero for a unit without values), their
   moments per group (`moments`), and the sample quantiles at the outer probabilities.

`percentile_approx` has rank error at most N/PERCENTILE_ACCURACY and is exact below
PERCENTILE_ACCURACY/2 values per group; it returns a value of the data (the inverse CDF:
the smallest value whose rank reaches p·N), as numpy's `inverted_cdf`. Only group-level
rows reach the driver; the values are persisted (`Cache`) because both passes read them.
"""

from __future__ import annotations

from functools import reduce

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from cluster_spark.config import Metric
from cluster_spark.io import literal_frame
from cluster_spark.staging.events import daily_slots, source_events
from cluster_spark.staging.exposures import exposure_slots, slot
from cluster_spark.staging.filters import event_condition
from cluster_spark.staging.moments import moments
from cluster_spark.staging.options import PERCENTILE_ACCURACY, included
from cluster_spark.staging.plan import SUB, TS, UNIT, Cache, Plan
from cluster_spark.staging.policy import apply_multi_unit_policy
from cluster_spark.staging.slices import segments
from cluster_spark.stats.quantile import outer_probabilities

GROUP = ["experiment_id", "metric", "variant", "dimension", "slice"]


def quantile_metrics(plan: Plan) -> dict[str, Metric]:
    return {name: m for name, m in plan.metrics.items() if m.kind == "quantile"}


def stage(
    spark: SparkSession,
    plan: Plan,
    units: DataFrame,
    offenders: DataFrame | None,
    cache: Cache,
) -> DataFrame | None:
    """Staged rows (the `STAGING_COLUMNS` statistics and the kind's `columns`) of the plan's
    quantile metrics, or None without any. `units`: the exposed units with their slices
    (`_slices`); `offenders`: the multi-unit policy's (experiment, analysis unit) pairs.
    Runs one Spark job (pass 1's group-level rows); pass 2 stays lazy."""
    metrics = quantile_metrics(plan)
    if not metrics:
        return None
    names = sorted(metrics)
    flags = []
    for i, name in enumerate(names):
        complete, baked = included(metrics[name], plan.daily_sources)
        flags += [complete.alias(f"_cmp{i}"), (complete & baked).alias(f"_inc{i}")]
    sliced = "_slices" in units.columns
    base = units.select(
        "*", *flags, segments(F.col("_slices") if sliced else None).alias("_segments")
    )
    unit_rows = _unit_rows(plan, base, names)
    values = cache.persist(
        reduce(
            DataFrame.unionByName,
            [
                _values(spark, plan, source, metrics, names, base, offenders)
                for source in _sources(metrics)
            ],
        )
    )
    keys, probs = _estimates(spark, values, metrics)
    group = _indicator_moments(values, keys, unit_rows)
    outer = values.groupBy(*GROUP).agg(
        F.percentile_approx("value", F.array(*map(F.lit, probs)), PERCENTILE_ACCURACY).alias(
            "_outer"
        )
    )
    picked = _join(outer, keys).select(
        *GROUP,
        "quantile_p",
        "quantile_estimate",
        F.element_at("_outer", F.col("_lo")).alias("quantile_lower"),
        F.element_at("_outer", F.col("_hi")).alias("quantile_upper"),
    )
    return _join(group, picked, "left").withColumn("winsorized", F.lit(False))


def _estimates(
    spark: SparkSession, values: DataFrame, metrics: dict[str, Metric]
) -> tuple[DataFrame, list[float]]:
    """Pass 1, collected (group-level rows): per group Q̂ and N, as a literal frame of
    (GROUP, quantile_p, quantile_estimate, `_lo`, `_hi`: the 1-based positions of the
    group's outer probabilities in the returned sorted list of every group's)."""
    ps = _ps(metrics)
    first = (
        values.groupBy(*GROUP)
        .agg(
            F.count(F.lit(1)).alias("n"),
            F.percentile_approx("value", F.array(*map(F.lit, ps)), PERCENTILE_ACCURACY).alias("_q"),
        )
        .collect()
    )
    found = []
    for r in first:
        p = metrics[r["metric"]].quantile
        found.append((r, p, r["_q"][ps.index(p)], *outer_probabilities(p, r["n"])))
    probs = sorted({x for *_, lo, hi in found for x in (lo, hi)}) or [0.5]
    keys = literal_frame(
        spark,
        [
            (*[r[k] for k in GROUP], p, est, probs.index(lo) + 1, probs.index(hi) + 1)
            for r, p, est, lo, hi in found
        ],
        [
            *[(k, "string") for k in GROUP],
            ("quantile_p", "double"),
            ("quantile_estimate", "double"),
            ("_lo", "int"),
            ("_hi", "int"),
        ],
    )
    return keys, probs


def _indicator_moments(values: DataFrame, keys: DataFrame, unit_rows: DataFrame) -> DataFrame:
    """Pass 2: per unit I_i (values ≤ Q̂) and N_i (0 without values), and their moments,
    sums and inclusion counts per group (the `STAGING_COLUMNS` statistics)."""
    per_unit = (
        _join(values, keys)
        .groupBy(*GROUP, UNIT)
        .agg(
            F.count(F.when(F.col("value") <= F.col("quantile_estimate"), 1)).alias("_i"),
            F.count(F.lit(1)).alias("_n"),
        )
    )
    counted = _join(unit_rows, per_unit, "left", [*GROUP, UNIT]).select(
        *GROUP,
        F.coalesce(F.col("_i"), F.lit(0)).cast("double").alias("m"),
        F.coalesce(F.col("_n"), F.lit(0)).cast("double").alias("d"),
        "complete",
        "baked",
    )
    inc = F.col("complete") & F.col("baked")
    return counted.groupBy(*GROUP).agg(
        *moments("", F.col("m"), F.col("d"), inc),
        F.sum(F.when(inc, F.col("m"))).alias("sum_m"),
        F.sum(F.when(inc, F.col("d"))).alias("sum_d"),
        F.count(F.when(inc & (F.col("d") == 0), 1)).alias("n_zero_denominator"),
        F.count(F.when(~F.col("complete"), 1)).alias("n_incomplete_window"),
        F.count(F.when(F.col("complete") & ~F.col("baked"), 1)).alias("n_unbaked"),
    )


def _ps(metrics: dict[str, Metric]) -> list[float]:
    return sorted({m.quantile for m in metrics.values()})


def _sources(metrics: dict[str, Metric]) -> list[str]:
    return sorted({m.value.source for m in metrics.values()})


def _unit_rows(plan: Plan, base: DataFrame, names: list[str]) -> DataFrame:
    """One row per (experiment, quantile metric of it, unit, segment): the unit's variant
    and inclusion (completed-window and bake rules as for other kinds)."""
    wanted = F.create_map(
        *[x for e in plan.experiments for x in (F.lit(e.id), F.array(*map(F.lit, e.metrics)))]
    )
    entries = [
        F.struct(
            F.lit(n).alias("metric"),
            F.col(f"_cmp{i}").alias("complete"),
            F.col(f"_inc{i}").alias("baked"),
        )
        for i, n in enumerate(names)
    ]
    return (
        base.select(
            "experiment_id", "variant", UNIT, "_segments", F.explode(F.array(*entries)).alias("e")
        )
        .where(F.array_contains(F.element_at(wanted, F.col("experiment_id")), F.col("e.metric")))
        .select("experiment_id", "variant", UNIT, "e.*", F.explode("_segments").alias("s"))
        .select("experiment_id", "variant", UNIT, "metric", "s.*", "complete", "baked")
        .select(*GROUP, UNIT, "complete", "baked")
    )


def _values(
    spark: SparkSession,
    plan: Plan,
    source: str,
    metrics: dict[str, Metric],
    names: list[str],
    base: DataFrame,
    offenders: DataFrame | None,
) -> DataFrame:
    """`frames.QUANTILE_VALUES`: every value of the metrics that read `source`: rows that
    pass the metric's filter, window and bake delay (`event_condition`), of units the
    metric includes; NULL, NaN and ±Inf values are missing (as sums skip them;
    `non_finite_values` counts them), and with `ignore_zeros` zeros are dropped. Values
    of an experiment's metrics only."""
    reading = [(i, n) for i, n in enumerate(names) if metrics[n].value.source == source]
    columns = {metrics[n].value.column for _, n in reading}
    columns |= {c.column for _, n in reading for c in metrics[n].value.filter}
    src = plan.config.sources[source]
    sub_col = src.ids.get(plan.analysis_unit) if plan.analysis_unit else None
    events, _ = source_events(spark, plan, source, columns, sub_col)
    extra = ["variant", "_segments", *[f"_inc{i}" for i, _ in reading]]
    slots, n_slots = exposure_slots(base, len(plan.experiments), extra)
    ks = [slot(k) for k in range(n_slots)]
    if src.timestamp_as_date:
        slots, events = daily_slots(slots, events, ks)
    joined = events.where(F.col(UNIT).isNotNull() & F.col(TS).isNotNull()).join(slots, UNIT)
    entries = _value_entries(plan, metrics, reading, ks)
    rows = (
        joined.select(UNIT, SUB, F.explode(F.array(*entries)).alias("v"))
        .where(F.col("v").isNotNull())
        .select(UNIT, SUB, "v.*")
    )
    if offenders is not None and sub_col:
        rows = apply_multi_unit_policy(rows, offenders, plan)
    return rows.select(
        "experiment_id", "metric", "variant", UNIT, "value", F.explode("_segments").alias("s")
    ).select("experiment_id", "metric", "variant", "s.*", UNIT, "value")


def _value_entries(
    plan: Plan, metrics: dict[str, Metric], reading: list[tuple[int, str]], ks: list[str]
) -> list[Column]:
    """Per slot k and metric of `reading` ((index, name)): the event's (experiment,
    variant, metric, value, `_segments`) when it counts (see `_values`), else NULL."""
    members = {e.id: set(e.metrics) for e in plan.experiments}
    entries = []
    for k in ks:
        for i, name in reading:
            metric = metrics[name]
            value = F.col(metric.value.column).cast("double")
            keep = event_condition(metric.value.component(), metric.bake_hours, slot=k)
            keep &= value.isNotNull() & ~F.isnan(value) & (F.abs(value) != F.lit(float("inf")))
            keep &= F.col(f"_inc{i}{k}")
            keep &= F.col(f"experiment_id{k}").isin([e for e, m in members.items() if name in m])
            if metric.ignore_zeros:
                keep &= value != 0
            entries.append(
                F.when(
                    keep,
                    F.struct(
                        F.col(f"experiment_id{k}").alias("experiment_id"),
                        F.col(f"variant{k}").alias("variant"),
                        F.lit(name).alias("metric"),
                        value.alias("value"),
                        F.col(f"_segments{k}").alias("_segments"),
                    ),
                )
            )
    return entries


def _join(
    left: DataFrame, right: DataFrame, how: str = "inner", keys: list[str] = GROUP
) -> DataFrame:
    """`left` joined to `right` on `keys`, NULL-safe (the overall rows have NULL dimension
    and slice)."""
    renamed = right.withColumnsRenamed({k: f"_k_{k}" for k in keys})
    on = [F.col(k).eqNullSafe(F.col(f"_k_{k}")) for k in keys]
    return left.join(renamed, on, how).drop(*[f"_k_{k}" for k in keys])
