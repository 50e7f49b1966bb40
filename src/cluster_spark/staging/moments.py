"""Group statistics: per (experiment, metric, variant, winsorized) n, sums, means and
centered co-moments of the included units (Spark's stable `var_pop`/`covar_pop`, merged
with Chan et al.'s pairwise formulas), and the analysis-unit moments for the design
effect."""

from __future__ import annotations

from functools import reduce

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from cluster_spark.staging.options import conversion, included
from cluster_spark.staging.plan import SUB, UNIT, Plan
from cluster_spark.staging.slices import segments
from cluster_spark.tables import CAP_COLUMNS, CUPED_COLUMNS, PRE_CAP_COLUMNS


def moments(prefix: str, m: Column, d: Column, keep: Column) -> list[Column]:
    """n, means and centered co-moments (var_pop/covar_pop × n) of (m, d) where `keep`."""
    mi, di = F.when(keep, m), F.when(keep, d)
    n = F.count(F.when(keep, 1))
    return [
        n.alias(f"{prefix}n_units"),
        F.avg(mi).alias(f"{prefix}mean_m"),
        F.avg(di).alias(f"{prefix}mean_d"),
        (F.var_pop(mi) * n).alias(f"{prefix}css_mm"),
        (F.var_pop(di) * n).alias(f"{prefix}css_dd"),
        (F.covar_pop(mi, di) * n).alias(f"{prefix}css_md"),
    ]


def analysis_unit_moments(
    plan: Plan, per_analysis_unit: list[DataFrame], units: DataFrame
) -> DataFrame | None:
    """Per (experiment, metric, variant, dimension, slice): n, means and centered
    co-moments of the values
    (m_j, d_j) of the analysis units with activity in the metric, treated as independent
    units — the naive variance in the design effect (Kish 1965; Deng et al. 2018, §3).
    Only ratio metrics whose components add up over analysis units (sums, counts, distinct
    analysis units) qualify; inclusion rules are those of the unit."""
    if not per_analysis_unit:
        return None
    subs = reduce(lambda a, b: a.unionByName(b, allowMissingColumns=True), per_analysis_unit)
    value_cols = [c for c in subs.columns if c not in ("experiment_id", UNIT, SUB, "_active")]
    if len(per_analysis_unit) > 1:
        subs = subs.groupBy("experiment_id", UNIT, SUB).agg(
            *[F.sum(c).alias(c) for c in value_cols]
        )
    sliced = "_slices" in units.columns
    subs = subs.join(
        units.select(
            "experiment_id",
            UNIT,
            "variant",
            "exposure_ts",
            "analysis_ts",
            segments(F.col("_slices") if sliced else None).alias("_segments"),
        ),
        ["experiment_id", UNIT],
    )
    entries = []
    for name, metric in plan.metrics.items():
        cols = [plan.components.get((name, role), (None,))[0] for role in ("num", "den")]
        if metric.kind != "ratio" or any(c not in value_cols for c in cols):
            continue
        m, d = (F.coalesce(F.col(c), F.lit(0.0)) for c in cols)
        complete, baked = included(metric, plan.daily_sources)
        m = conversion(metric, m, d)
        keep = complete & baked & ((m != 0) | (d != 0))
        entries.append(
            F.struct(F.lit(name).alias("metric"), m.alias("m"), d.alias("d"), keep.alias("keep"))
        )
    if not entries:
        return None
    # Long rows, not one wide aggregation: a few hundred moment aggregates in one operator
    # exceed Spark's code-generation limits and run interpreted.
    return (
        subs.select(
            "experiment_id", "variant", "_segments", F.explode(F.array(*entries)).alias("a")
        )
        .select("experiment_id", "variant", "a.*", F.explode("_segments").alias("s"))
        .select("experiment_id", "variant", "s.*", "m", "d", "keep", "metric")
        .groupBy("experiment_id", "metric", "variant", "dimension", "slice")
        .agg(*moments("au_", F.col("m"), F.col("d"), F.col("keep")))
    )


def group_statistics(values: DataFrame, plan: Plan) -> DataFrame:
    """Per (experiment, metric, variant, dimension, slice, winsorized): n, sums, means and
    centered
    co-moments of the included units, and counts of the excluded ones."""
    converting = [n for n, m in plan.metrics.items() if m.kind == "ratio" and m.conversion_rate]
    m = F.when(F.col("metric").isin(converting) & (F.col("d") == 0), F.lit(0.0)).otherwise(
        F.col("m")
    )
    x = F.when(F.col("metric").isin(converting) & (F.col("y") == 0), F.lit(0.0)).otherwise(
        F.col("x")
    )
    inc = F.col("complete") & F.col("baked")
    mi, di, xi, yi = (
        F.when(inc, m),
        F.when(inc, F.col("d")),
        F.when(inc, x),
        F.when(inc, F.col("y")),
    )
    n = F.count(F.when(inc, 1))
    cuped = (
        [F.avg(xi).alias("mean_x"), F.avg(yi).alias("mean_y")]
        + [
            (F.covar_pop(a, b) * n).alias(f"css_{na}{nb}")
            for (na, a), (nb, b) in [
                (("x", xi), ("x", xi)),
                (("y", yi), ("y", yi)),
                (("m", mi), ("x", xi)),
                (("m", mi), ("y", yi)),
                (("d", di), ("x", xi)),
                (("d", di), ("y", yi)),
                (("x", xi), ("y", yi)),
            ]
        ]
        if plan.cuped
        else [F.lit(None).alias(c) for c in CUPED_COLUMNS]
    )
    return values.groupBy(
        "experiment_id", "metric", "variant", "dimension", "slice", "winsorized"
    ).agg(
        *moments("", m, F.col("d"), inc),
        F.sum(mi).alias("sum_m"),
        F.sum(di).alias("sum_d"),
        *cuped,
        F.count(F.when(inc & (F.col("d") == 0), 1)).alias("n_zero_denominator"),
        F.count(F.when(~F.col("complete"), 1)).alias("n_incomplete_window"),
        F.count(F.when(F.col("complete") & ~F.col("baked"), 1)).alias("n_unbaked"),
        *[F.first(c, ignorenulls=True).alias(c) for c in CAP_COLUMNS + PRE_CAP_COLUMNS],
    )
