"""Slices: each exposed unit's value of every dimension its experiment is broken down by,
from its first exposure row or from a unit-attributes table (the latest row at or before
the exposure), with the smallest slices of a dimension pooled into `(other)`.

A slice is a grouping key of the per-unit values, not another scan of the events: each
unit value row is repeated once per dimension (`segments`), and the group statistics are
grouped by (dimension, slice) besides (experiment, metric, variant). The overall rows
carry NULL in both."""

from __future__ import annotations

from functools import reduce

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.window import Window

from cluster_spark.inputs import attributes_label, plan_inputs
from cluster_spark.staging.exposures import dimension_column
from cluster_spark.staging.plan import UNIT, Cache, Plan, diag, for_each_experiment
from cluster_spark.status import NULL_SLICE, OTHER_SLICE

SEGMENT = T.StructType(
    [T.StructField("dimension", T.StringType()), T.StructField("slice", T.StringType())]
)


def segments(slices: Column | None) -> Column:
    """The overall segment (NULL dimension and slice) followed by a unit's slices
    (`_slices`, NULL for a unit whose experiment has no dimensions): explode it to give
    each per-unit row its segments."""
    overall = F.array(F.struct(*[F.lit(None).cast("string").alias(f.name) for f in SEGMENT]))
    if slices is None:
        return overall
    return F.concat(overall, F.coalesce(slices, F.array().cast(T.ArrayType(SEGMENT))))


def _by_experiment(plan: Plan, values: dict[str, Column]) -> Column:
    pairs = [x for e in plan.experiments for x in (F.lit(e.id), values[e.id])]
    return F.element_at(F.create_map(*pairs), F.col("experiment_id"))


def _exposure_values(plan: Plan, units: DataFrame) -> DataFrame | None:
    dims = plan.exposure_dimensions
    if not dims:
        return None
    entries = [
        F.struct(F.lit(d).alias("dimension"), F.col(dimension_column(i)).alias("value"))
        for i, d in enumerate(dims)
    ]
    return units.select(
        "experiment_id", UNIT, "variant", F.explode(F.array(*entries)).alias("e")
    ).select("experiment_id", UNIT, "variant", "e.*")


def _attribute_values(
    spark: SparkSession, plan: Plan, name: str, units: DataFrame
) -> tuple[DataFrame, DataFrame]:
    """(Per-unit values of the table's dimensions at exposure, dropped-rows diagnostics)."""
    table = plan.config.unit_attributes[name]
    dims = sorted(d for d, where in plan.dimensions.items() if where == name)
    users = [e.id for e in plan.experiments if set(e.loaded_dimensions) & set(dims)]
    units = units.where(F.col("experiment_id").isin(users))
    prepared = plan_inputs(spark, plan).table(attributes_label(name))
    rows = prepared.df.select(
        F.col(table.ids[table.unit_type]).cast("string").alias(UNIT),
        prepared.instants.alias("_at"),
        *[F.col(d).cast("string").alias(f"_v{i}") for i, d in enumerate(dims)],
    )
    usable = F.col(UNIT).isNotNull() & F.col("_at").isNotNull()
    dropped = for_each_experiment(rows.agg(F.count(F.when(~usable, 1)).alias("n")), users)
    # The latest row at or before the exposure: max of (time, values) structs; rows at
    # one instant: the largest values (UnitAttributes).
    latest = (
        units.select("experiment_id", UNIT, "exposure_ts")
        .join(rows.where(usable), UNIT)
        .where(F.col("_at") <= F.col("exposure_ts"))
        .groupBy("experiment_id", UNIT)
        .agg(F.max(F.struct("_at", *[f"_v{i}" for i in range(len(dims))])).alias("_l"))
    )
    entries = [
        F.struct(F.lit(d).alias("dimension"), F.col(f"_l._v{i}").alias("value"))
        for i, d in enumerate(dims)
    ]
    values = (
        units.select("experiment_id", UNIT, "variant")
        .join(latest, ["experiment_id", UNIT], "left")
        .select("experiment_id", UNIT, "variant", F.explode(F.array(*entries)).alias("e"))
        .select("experiment_id", UNIT, "variant", "e.*")
    )
    return values, diag(dropped, f"unit_attribute_rows_dropped:{name}", F.col("n"))


def unit_slices(
    spark: SparkSession, plan: Plan, units: DataFrame, cache: Cache
) -> tuple[DataFrame | None, DataFrame | None]:
    """(Per-unit slices, diagnostics); (None, None) when no experiment of the plan has
    dimensions or attribute covariates. Per-unit slices: `frames.UNIT_SLICES` (one
    (dimension, slice) per dimension the unit's experiment lists, and `_attrs`, its raw
    values of the attribute covariates). A NULL value is the slice
    `(null)`, always kept; per (experiment, dimension) the `max_slices` other slices with
    the most units (ties: by name) are kept and the rest pooled into `(other)`. Diagnostics:
    `assignment_units` per (variant, dimension, slice), and the attribute rows dropped
    for a NULL id or timestamp."""
    if not plan.dimensions:
        return None, None
    parts, diags = [], []
    exposure = _exposure_values(plan, units)
    if exposure is not None:
        parts.append(exposure)
    for name in sorted({w for w in plan.dimensions.values() if w != "exposures"}):
        values, dropped = _attribute_values(spark, plan, name, units)
        parts.append(values)
        diags.append(dropped)
    values = reduce(DataFrame.unionByName, parts)
    attrs = _covariate_attributes(plan, values)
    if not any(e.dimensions for e in plan.experiments):  # attribute covariates only
        no_slices = F.lit(None).cast(T.ArrayType(SEGMENT)).alias("_slices")
        return attrs.select("*", no_slices), reduce(DataFrame.unionByName, diags) if diags else None
    wanted = _by_experiment(
        plan, {e.id: F.array(*map(F.lit, e.dimensions or [""])) for e in plan.experiments}
    )
    raw = cache.persist(
        values.where(F.array_contains(wanted, F.col("dimension"))).select(
            "experiment_id",
            UNIT,
            "variant",
            "dimension",
            F.coalesce(F.col("value"), F.lit(NULL_SLICE)).alias("slice"),
        )
    )
    sliced = _pooled(plan, raw)
    counts = sliced.groupBy("experiment_id", "variant", "dimension", "slice").count()
    diags.append(
        diag(counts, "assignment_units", F.col("count"), variant=F.col("variant"), segment=True)
    )
    per_unit = sliced.groupBy("experiment_id", UNIT).agg(
        F.collect_list(F.struct("dimension", "slice")).alias("_slices")
    )
    if attrs is not None:  # units of experiments without slices have none
        per_unit = per_unit.join(attrs, ["experiment_id", UNIT], "full")
    return per_unit, reduce(DataFrame.unionByName, diags)


def _covariate_attributes(plan: Plan, values: DataFrame) -> DataFrame | None:
    """Per (experiment, unit) of an experiment with attribute covariates: `_attrs`, a map
    of each such attribute to the unit's value (a string, NULL kept); None without."""
    names = {e.id: [a.attribute for a in e.attribute_covariates] for e in plan.experiments}
    if not any(names.values()):
        return None
    wanted = _by_experiment(plan, {e: F.array(*map(F.lit, n or [""])) for e, n in names.items()})
    return (
        values.where(F.array_contains(wanted, F.col("dimension")))
        .groupBy("experiment_id", UNIT)
        .agg(F.map_from_entries(F.collect_list(F.struct("dimension", "value"))).alias("_attrs"))
    )


def _pooled(plan: Plan, raw: DataFrame) -> DataFrame:
    """Per-unit (experiment, unit, variant, dimension, slice) rows with the slices beyond
    each dimension's `max_slices` largest pooled into `(other)`; `(null)` always kept."""
    keys = ["experiment_id", "dimension", "slice"]
    rank = F.row_number().over(
        Window.partitionBy("experiment_id", "dimension").orderBy(F.desc("n"), "slice")
    )
    max_slices = _by_experiment(plan, {e.id: F.lit(e.max_slices) for e in plan.experiments})
    # (null) is always its own slice; the others compete for the max_slices places.
    kept = (
        raw.where(F.col("slice") != NULL_SLICE)
        .groupBy(*keys)
        .agg(F.count(F.lit(1)).alias("n"))
        .withColumn("_rank", rank)
        .where(F.col("_rank") <= max_slices)
        .select(*keys, F.lit(True).alias("_kept"))
    )
    own = F.col("_kept") | (F.col("slice") == NULL_SLICE)
    return raw.join(kept, keys, "left").select(
        "experiment_id",
        UNIT,
        "variant",
        "dimension",
        F.when(own, F.col("slice")).otherwise(F.lit(OTHER_SLICE)).alias("slice"),
    )
