"""Group statistics: per (experiment, metric, variant, winsorized) n, sums, means and
centered co-moments of the included units (Spark's stable `var_pop`/`covar_pop`, merged
with Chan et al.'s pairwise formulas), the cluster jackknife's sums of the groups (for
few assignment units), and the analysis-unit moments for the design effect."""

from __future__ import annotations

from functools import reduce

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from cluster_spark.staging.options import conversion, included
from cluster_spark.staging.plan import SUB, UNIT, Plan
from cluster_spark.staging.slices import segments
from cluster_spark.tables import (
    CAP_COLUMNS,
    COVARIATE_COLUMNS,
    CUPED_COLUMNS,
    JACKKNIFE_COLUMNS,
    PRE_CAP_COLUMNS,
)


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


#: The keys of a group of `group_statistics` (dimension and slice NULL on overall rows).
GROUP_KEYS = ("experiment_id", "metric", "variant", "dimension", "slice", "winsorized")


def _values(plan: Plan) -> tuple[Column, Column, Column]:
    """(m, x, included) of a per-unit row: a conversion-rate metric's numerator is 0
    where its denominator is (so is its pre-period one); included = complete and baked."""
    converting = [n for n, m in plan.metrics.items() if m.kind == "ratio" and m.conversion_rate]
    m = F.when(F.col("metric").isin(converting) & (F.col("d") == 0), F.lit(0.0)).otherwise(
        F.col("m")
    )
    x = F.when(F.col("metric").isin(converting) & (F.col("y") == 0), F.lit(0.0)).otherwise(
        F.col("x")
    )
    return m, x, F.col("complete") & F.col("baked")


def group_statistics(values: DataFrame, plan: Plan, width: int = 0) -> DataFrame:
    """Per (experiment, metric, variant, dimension, slice, winsorized): n, sums, means and
    centered co-moments of the included units, counts of the excluded ones, and the
    cluster jackknife's sums (`jackknife_sums`); `width`: the length of the covariate
    array `w` (`staging.covariates`)."""
    m, x, inc = _values(plan)
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
    # exact pre-period totals for the jackknife (mean × n is not: 100/11·11 ≠ 100)
    pre_sums = [F.sum(xi).alias("_sum_x"), F.sum(yi).alias("_sum_y")] if plan.cuped else []
    group = values.groupBy(*GROUP_KEYS).agg(
        *moments("", m, F.col("d"), inc),
        F.sum(mi).alias("sum_m"),
        F.sum(di).alias("sum_d"),
        *cuped,
        *pre_sums,
        F.count(F.when(inc & (F.col("d") == 0), 1)).alias("n_zero_denominator"),
        F.count(F.when(~F.col("complete"), 1)).alias("n_incomplete_window"),
        F.count(F.when(F.col("complete") & ~F.col("baked"), 1)).alias("n_unbaked"),
        *[F.first(c, ignorenulls=True).alias(c) for c in CAP_COLUMNS + PRE_CAP_COLUMNS],
        *_covariate_moments(width, [m, F.col("d"), x, F.col("y")], inc),
    )
    kept = [c for c in group.columns if c not in ("_sum_x", "_sum_y")]
    if all(e.variance == "delta" for e in plan.experiments):  # no experiment reads them
        return group.select(*kept, *[F.lit(None).alias(c) for c in JACKKNIFE_COLUMNS])
    jackknife = jackknife_sums(values, group, plan)
    # group-level rows on both sides: the planner broadcasts them or not
    return group.join(jackknife, _same_group(), "left").select(*kept, *JACKKNIFE_COLUMNS)


def _covariate_moments(width: int, own: list[Column], inc: Column) -> list[Column]:
    """`tables.COVARIATE_COLUMNS`: the means and centered cross-products (covar_pop × n)
    of v = (m, d, x, y, w₁, …) over the included units; NULL when no experiment of the
    pass has covariates."""
    if not width:
        return [F.lit(None).cast("array<double>").alias(c) for c in COVARIATE_COLUMNS]
    v = [F.when(inc, c) for c in [*own, *[F.col("w")[i] for i in range(width)]]]
    n = F.count(F.when(inc, 1))
    css = [F.covar_pop(v[a], v[b]) * n for a in range(len(v)) for b in range(a, len(v))]
    return [F.array(*map(F.avg, v)).alias("cov_mean"), F.array(*css).alias("cov_css")]


def _same_group() -> list[Column]:
    """The join condition of a group's row with its `_jk_`-prefixed keys (NULL-safe: the
    overall rows have NULL dimension and slice)."""
    return [F.col(k).eqNullSafe(F.col(f"_jk_{k}")) for k in GROUP_KEYS]


def jackknife_sums(values: DataFrame, group: DataFrame, plan: Plan) -> DataFrame:
    """The cluster jackknife's sums (`tables.JACKKNIFE_COLUMNS`) per group, keyed by
    `_jk_`-prefixed `GROUP_KEYS`.

    Leaving unit g out of its group changes the ratio R = M/N (M = Σm, N = Σd over the
    included units) by exactly u_g = R_(−g) − R = −(m_g − R·d_g)/(N − d_g), and the
    pre-period ratio P = X/Y by v_g = −(x_g − P·y_g)/(Y − y_g); the residual form keeps
    the digits that (M − m_g)/(N − d_g) − R would cancel. Σu² is the CR3 variance of R
    (MacKinnon & White 1985; Bell & McCaffrey 2002): Σe²/(1 − h)²/N², h_g = d_g/N the
    unit's leverage. The group's totals are group-level rows, broadcast to its units; one
    more aggregation of the per-unit rows. NULL where some N − d_g or Y − y_g is 0 (a unit
    holding the whole denominator: its leave-one-out ratio is undefined), jk_rp and jk_pp
    without CUPED. `group` carries the exact pre-period totals `_sum_x`, `_sum_y` under
    CUPED."""
    m, x, inc = _values(plan)
    pre = [F.col("_sum_y"), F.col("_sum_x")] if plan.cuped else [F.lit(None)] * 2
    totals = group.select(
        *[F.col(k).alias(f"_jk_{k}") for k in GROUP_KEYS],
        F.col("sum_d").alias("_jk_n"),
        F.when(F.col("sum_d") != 0, F.col("sum_m") / F.col("sum_d")).alias("_jk_r"),
        pre[0].cast("double").alias("_jk_y"),
        F.when(pre[0] != 0, pre[1] / pre[0]).cast("double").alias("_jk_p"),
    )
    # N − d_g is exactly 0 when g is the only unit with a nonzero d (adding zeros is exact)
    rest_d, rest_y = F.col("_jk_n") - F.col("d"), F.col("_jk_y") - F.col("y")
    u = F.when(inc & (rest_d != 0), (F.col("_jk_r") * F.col("d") - m) / rest_d)
    v = F.when(inc & (rest_y != 0), (F.col("_jk_p") * F.col("y") - x) / rest_y)
    keys = [f"_jk_{k}" for k in GROUP_KEYS]
    staged = values.join(F.broadcast(totals), _same_group())  # group-level rows only
    defined_r = F.count(F.when(inc & (rest_d == 0), 1)) == 0
    sums = [F.when(defined_r, F.sum(u * u)).alias("jk_rr")]
    if plan.cuped:
        defined_p = F.count(F.when(inc & (rest_y == 0), 1)) == 0  # all of them when Y = 0
        sums += [
            F.when(defined_r & defined_p, F.sum(u * v)).alias("jk_rp"),
            F.when(defined_p, F.sum(v * v)).alias("jk_pp"),
        ]
    else:
        sums += [F.lit(None).cast("double").alias(c) for c in ("jk_rp", "jk_pp")]
    return staged.groupBy(*keys).agg(*sums)
