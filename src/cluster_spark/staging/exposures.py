"""Exposures: the first exposure per (experiment, assignment unit) within the experiment's
dates, units seen in two variants dropped (with their diagnostics), and the exposures of
each unit laid side by side in slots, so each event is joined once however many
experiments its unit is in."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from cluster_spark.checks import FIRST_EXPOSURES
from cluster_spark.config import Experiment, normalized_label
from cluster_spark.inputs import plan_inputs
from cluster_spark.staging.filters import shift
from cluster_spark.staging.plan import TS, UNIT, Cache, Plan, diag
from cluster_spark.status import OTHER_SLICE


def dimension_column(i: int) -> str:
    """The units' column of the i-th of `Plan.exposure_dimensions`."""
    return f"_dim{i}"


def first_exposure_value(valid: Column, column: str) -> Column:
    """`column` on the unit's first valid exposure row (ties at one instant: the smallest
    value, NULL first), as the aggregate `min` of (timestamp, value) structs."""
    first = F.min(F.when(valid, F.struct(F.col(TS).alias("t"), F.col(column).alias("v"))))
    return first["v"].alias(column)


def _per_experiment(plan: Plan, value: Callable[[Experiment], Any], kind: str) -> Column:
    """Each row's experiment's `value`, as literals chosen by experiment id (rows are of
    the plan's experiments only): no join, so no broadcast and no Spark job of its own."""
    first, *rest = plan.experiments
    out = F.lit(value(first)).cast(kind)
    for e in rest:
        chosen = F.col("experiment_id") == F.lit(e.id)
        out = F.when(chosen, F.lit(value(e)).cast(kind)).otherwise(out)
    return out


#: Unknown variant labels kept by name per experiment (by units); the rest are pooled.
MAX_UNKNOWN_LABELS = 20


def _labels(plan: Plan, label: Column) -> tuple[Column, Column]:
    """(each row's variant label, whether it is a configured variant of its experiment).
    With `normalize_variant_labels` a label that equals a configured variant ignoring case
    and surrounding spaces becomes that variant."""
    known = F.lit(False)
    for e in plan.experiments:
        this = F.col("experiment_id") == F.lit(e.id)
        if e.normalize_variant_labels:
            folded = F.lower(F.trim(label))
            matches = [F.when(folded == F.lit(normalized_label(v)), F.lit(v)) for v in e.variants]
            label = F.when(this, F.coalesce(*matches, label)).otherwise(label)
        known = F.when(this, label.isin(list(e.variants))).otherwise(known)
    return label, known


def _unknown_labels(per_unit: DataFrame) -> DataFrame:
    """Assignment units per (experiment, unknown label) among the exposure rows in the
    experiment's dates, from each unit's set of unknown labels (`_unknown`): the
    `MAX_UNKNOWN_LABELS` labels with most units by name, the rest pooled as `(other)` (a
    unit is counted once per label it has)."""
    per_label = (
        per_unit.select("experiment_id", F.explode("_unknown").alias("variant"))
        .groupBy("experiment_id", "variant")
        .agg(F.count(F.lit(1)).alias("units"))
    )
    rank = F.row_number().over(
        Window.partitionBy("experiment_id").orderBy(F.desc("units"), "variant")
    )
    named = F.when(rank <= MAX_UNKNOWN_LABELS, F.col("variant")).otherwise(F.lit(OTHER_SLICE))
    return (
        per_label.select("experiment_id", named.alias("variant"), "units")
        .groupBy("experiment_id", "variant")
        .agg(F.sum("units").alias("units"))
    )


def exposed_units(spark: SparkSession, plan: Plan, cache: Cache) -> tuple[DataFrame, DataFrame]:
    """First exposure per (experiment, unit) within each experiment's dates; units seen in
    two variants are dropped. Returns (units, diagnostics), both from one per-unit frame
    persisted in `cache`. Units: `frames.EXPOSED_UNITS` (instants UTC: see
    `io.time_instants`), with the value of each of `Plan.exposure_dimensions`
    (`dimension_column`). A table without an experiment-id column holds the exposures of
    its constant experiment. Rows whose variant label is not a configured variant (after
    `normalize_variant_labels`) are left out; the units that have them are counted per
    label (`unknown_variants`). The units are also counted per arm and UTC day of first
    exposure (`FIRST_EXPOSURES`)."""
    per_unit = cache.persist(_per_unit(plan, _exposure_rows(spark, plan)))
    exposed = F.col("n_rows") > 0
    single = F.col("variant") == F.col("_last_variant")
    units = per_unit.where(exposed & single).select(
        "experiment_id",
        UNIT,
        "variant",
        "exposure_ts",
        "start_ts",
        "analysis_ts",
        "pre_start_ts",
        *[dimension_column(i) for i in range(len(plan.exposure_dimensions))],
    )
    return units, _exposure_diagnostics(per_unit, exposed, single)


def _exposure_rows(spark: SparkSession, plan: Plan) -> DataFrame:
    """The exposure rows of the plan's experiments: experiment_id, _unit, _ts, the
    dimension columns, start_ts, analysis_ts, lookback_days, variant (normalized) and
    `_known` (a configured variant of its experiment)."""
    src = plan.config.exposures
    table = plan_inputs(spark, plan).table("exposures")
    unit_col = src.ids[plan.unit_type]
    constant = src.constant_experiment
    experiment = F.col(src.experiment_id).cast("string") if constant is None else F.lit(constant)
    dims = plan.exposure_dimensions
    start = _per_experiment(plan, lambda e: e.start_time, "timestamp")
    end = _per_experiment(plan, lambda e: e.analysis_time(plan.analysis_date), "timestamp")
    lookback = _per_experiment(plan, lambda e: e.cuped_lookback_days or 0, "int")
    rows = (
        table.df.select(
            experiment.alias("experiment_id"),
            F.col(unit_col).cast("string").alias(UNIT),
            F.col(src.variant).cast("string").alias("_label"),
            table.instants.alias(TS),
            *[F.col(d).cast("string").alias(dimension_column(i)) for i, d in enumerate(dims)],
        )
        # the plan's experiments only (a NULL experiment id is none of them); a filter of
        # literals, so the scan can skip other experiments' files
        .where(F.col("experiment_id").isin([e.id for e in plan.experiments]))
        .select(
            "*",
            start.alias("start_ts"),
            end.alias("analysis_ts"),
            lookback.alias("lookback_days"),
        )
    )
    label, known = _labels(plan, F.col("_label"))
    return rows.withColumn("variant", label).withColumn("_known", known).drop("_label")


def _per_unit(plan: Plan, rows: DataFrame) -> DataFrame:
    """Per (experiment, unit) of the exposure rows: its first valid exposure (`exposure_ts`,
    first and last `variant`, the dimension values of that row), counts of valid and NULL
    rows, its unknown labels in the dates (`_unknown`) and its experiment's instants."""
    null = F.col(UNIT).isNull() | F.col("variant").isNull() | F.col(TS).isNull()
    dated = ~null & (F.col(TS) >= F.col("start_ts")) & (F.col(TS) < F.col("analysis_ts"))
    valid = dated & F.col("_known")
    dims = plan.exposure_dimensions
    return (
        rows.groupBy("experiment_id", UNIT)
        .agg(
            F.min(F.when(valid, F.col(TS))).alias("exposure_ts"),
            F.min(F.when(valid, F.col("variant"))).alias("variant"),
            F.max(F.when(valid, F.col("variant"))).alias("_last_variant"),
            F.count(F.when(valid, 1)).alias("n_rows"),
            F.count(F.when(null, 1)).alias("n_null"),
            F.collect_set(F.when(dated & ~F.col("_known"), F.col("variant"))).alias("_unknown"),
            F.first("start_ts").alias("start_ts"),
            F.first("analysis_ts").alias("analysis_ts"),
            F.first("lookback_days").alias("lookback_days"),
            *[first_exposure_value(valid, dimension_column(i)) for i in range(len(dims))],
        )
        .withColumn(
            "pre_start_ts",
            shift(F.col("exposure_ts"), F.col("lookback_days").cast("bigint") * -86_400_000_000),
        )
    )


def _exposure_diagnostics(per_unit: DataFrame, exposed: Column, single: Column) -> DataFrame:
    """Duplicate exposures, units in several variants, NULL ids, assignment units per
    variant, first exposures per UTC day and unknown variant labels. The first five come
    from one aggregation of `per_unit` over three grouping sets (experiment; experiment
    and variant; experiment, variant and day), so one shuffle for the five; the
    assignment units are its rows that are `exposed & single`."""
    # first exposures per arm and UTC exposure day (unix days: independent of the session
    # time zone), for SRM over time (`stats.srm`)
    day = F.date_from_unix_date(F.floor(F.unix_seconds(F.col("exposure_ts")) / 86_400).cast("int"))
    keys = ["experiment_id", "variant", "_day"]
    sets = (
        per_unit.select("*", day.alias("_day"))
        .groupingSets([keys[:1], keys[:2], keys], *keys)
        .agg(
            # bits of the keys left out, last key lowest: 3 experiment, 1 variant, 0 day
            F.grouping_id().alias("_set"),
            F.coalesce(F.sum(F.when(exposed & single, F.col("n_rows") - 1)), F.lit(0)).alias("dup"),
            F.count(F.when(exposed & ~single, 1)).alias("multi"),
            F.sum("n_null").alias("nulls"),
            F.count(F.when(exposed & single, 1)).alias("units"),
        )
    )
    # Every row comes out of the one aggregate by one explode: a filter on `_set` per kind
    # of row would be pushed below the aggregation, making it three again.
    null = F.lit(None).cast("string")

    def rows(*entries: tuple[Column, Column, Column]) -> Column:
        """(check, value, variant) entries as an array of structs."""
        return F.array(
            *[
                F.struct(
                    check.alias("check"), col.cast("bigint").alias("value"), v.alias("variant")
                )
                for check, col, v in entries
            ]
        )

    units, variant = F.col("units"), F.col("variant")
    first_exposures = F.concat(F.lit(f"{FIRST_EXPOSURES}:"), F.col("_day").cast("string"))
    found = (
        F.when(
            F.col("_set") == 3,
            rows(
                (F.lit("duplicate_exposures"), F.col("dup"), null),
                (F.lit("units_in_several_variants"), F.col("multi"), null),
                (F.lit("exposures_with_null_ids"), F.col("nulls"), null),
            ),
        )
        # groups of assignment units only: a variant or day of other rows alone is no group
        .when((F.col("_set") == 1) & (units > 0), rows((F.lit("assignment_units"), units, variant)))
        .when((F.col("_set") == 0) & (units > 0), rows((first_exposures, units, variant)))
    )
    per_kind = sets.select("experiment_id", F.explode(found).alias("_d"))  # no row for NULL
    return diag(
        per_kind, F.col("_d.check"), F.col("_d.value"), variant=F.col("_d.variant")
    ).unionByName(
        diag(_unknown_labels(per_unit), "unknown_variants", F.col("units"), variant=variant)
    )


SLOT_COLUMNS = ("experiment_id", "exposure_ts", "start_ts", "analysis_ts", "pre_start_ts")


def slot(k: int) -> str:
    return f"__{k}"


def exposure_slots(
    units: DataFrame, n_experiments: int, extra: Sequence[str] = ()
) -> tuple[DataFrame, int]:
    """The exposures of each unit side by side: one row per unit, slot k (SLOT_COLUMNS
    suffixed `__k`) holding its k-th experiment by id. Events joined to this frame stay
    one row each however many experiments their unit is in (a per-experiment join would
    copy them). Returns (frame, number of slots = most experiments of one unit, ≥ 1).
    With one experiment in the pass that is 1, known without a Spark job. `extra`: more
    columns of `units` to carry per slot."""
    ranked = units.withColumn(
        "_k", F.row_number().over(Window.partitionBy(UNIT).orderBy("experiment_id")) - 1
    )
    most = 0 if n_experiments == 1 else ranked.agg(F.max("_k")).first()[0]
    n_slots = 1 if most is None else most + 1
    slots = ranked.groupBy(UNIT).agg(
        *[
            F.first(F.when(F.col("_k") == k, F.col(c)), ignorenulls=True).alias(c + slot(k))
            for k in range(n_slots)
            for c in (*SLOT_COLUMNS, *extra)
        ]
    )
    return slots, n_slots
