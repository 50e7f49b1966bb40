"""The Spark staging job: exposures × metric events → per-unit (M_i, D_i) → per-group
sufficient statistics in centered form, plus data-quality counts.

One pass over each metric source computes the components of every metric of every
experiment, in two aggregation levels: per (unit, analysis unit), with each event joined
once to all its unit's exposures, then per unit; only (experiment, metric, variant) rows
leave Spark. Aggregation uses Spark's
built-ins only: `var_pop`/`covar_pop` are computed with stable online updates and merged
with Chan et al.'s pairwise formulas inside Spark. Metric options follow METHODS.md
(Statsig ratio-metric settings): conversion rate, cohort windows, completed-window and
bake rules, winsorization at percentiles pooled across variants.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property, partial, reduce

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.window import Window

from cluster_spark.config import Component, Condition, Config, Experiment, IdMapping, Metric
from cluster_spark.errors import DataQualityError
from cluster_spark.io import check_columns, describe, literal_frame, read_table, utc_timestamp

UNIT = "_unit"
TS = "_ts"
SUB = "_sub"  # the analysis-unit id (e.g. user_id), where a source has it

#: Relative rank accuracy of `percentile_approx` is 1/PERCENTILE_ACCURACY (exact below
#: that many distinct values per experiment and metric).
PERCENTILE_ACCURACY = 100_000

#: Pre-period (CUPED) moments: null unless the experiment sets cuped_lookback_days.
CUPED_COLUMNS = (
    "mean_x",
    "mean_y",
    "css_xx",
    "css_yy",
    "css_mx",
    "css_my",
    "css_dx",
    "css_dy",
    "css_xy",
)

#: Moments of the analysis-unit values (m_j, d_j), for the design effect: null unless the
#: experiment has an analysis unit and the metric qualifies (`analysis_unit_moments`).
ANALYSIS_UNIT_COLUMNS = tuple(
    f"au_{c}" for c in ("n_units", "mean_m", "mean_d", "css_mm", "css_dd", "css_md")
)

STAGING_SCHEMA = T.StructType(
    [
        T.StructField("experiment_id", T.StringType(), False),
        T.StructField("analysis_date", T.DateType(), False),
        T.StructField("metric", T.StringType(), False),
        T.StructField("variant", T.StringType(), False),
        T.StructField("winsorized", T.BooleanType(), False),
        T.StructField("n_units", T.LongType(), False),
        T.StructField("sum_m", T.DoubleType(), True),
        T.StructField("sum_d", T.DoubleType(), True),
        T.StructField("mean_m", T.DoubleType(), True),
        T.StructField("mean_d", T.DoubleType(), True),
        T.StructField("css_mm", T.DoubleType(), True),
        T.StructField("css_dd", T.DoubleType(), True),
        T.StructField("css_md", T.DoubleType(), True),
        *[T.StructField(c, T.DoubleType(), True) for c in CUPED_COLUMNS],
        T.StructField("n_zero_denominator", T.LongType(), False),
        T.StructField("n_incomplete_window", T.LongType(), False),
        T.StructField("n_unbaked", T.LongType(), False),
        T.StructField("num_lower_cap", T.DoubleType(), True),
        T.StructField("num_upper_cap", T.DoubleType(), True),
        T.StructField("den_lower_cap", T.DoubleType(), True),
        T.StructField("den_upper_cap", T.DoubleType(), True),
        T.StructField("au_n_units", T.LongType(), True),
        *[T.StructField(c, T.DoubleType(), True) for c in ANALYSIS_UNIT_COLUMNS[1:]],
        T.StructField("run_id", T.StringType(), False),
    ]
)
_KEYS = ("experiment_id", "analysis_date", "metric", "variant", "winsorized", "run_id")
_STAT_COLUMNS = [f.name for f in STAGING_SCHEMA.fields if f.name not in _KEYS]


def condition(c: Condition) -> Column:
    """A structured filter condition as a Spark Column (values are literals, never SQL).
    NULLs follow `Condition`'s rule: kept by `ne`/`not_in`, dropped by the others."""
    col = F.col(c.column)
    ops = {
        "eq": lambda: col == F.lit(c.value),
        "ne": lambda: ~col.eqNullSafe(F.lit(c.value)),
        "gt": lambda: col > F.lit(c.value),
        "ge": lambda: col >= F.lit(c.value),
        "lt": lambda: col < F.lit(c.value),
        "le": lambda: col <= F.lit(c.value),
        "in": lambda: col.isin(c.value),
        "not_in": lambda: col.isNull() | ~col.isin(c.value),
        "is_null": lambda: col.isNull(),
        "not_null": lambda: col.isNotNull(),
    }
    return ops[c.op]()


def _hours(h: float) -> Column:
    return F.lit(dt.timedelta(hours=h))


def event_condition(comp: Component, bake_hours: float, slot: str = "") -> Column:
    """Which joined events count for a component: its filter, after the unit's exposure
    and up to the analysis time, inside its cohort window, and mature under the bake delay.
    `slot` suffixes the exposure columns (see `exposure_slots`)."""
    exposure, analysis = F.col(f"exposure_ts{slot}"), F.col(f"analysis_ts{slot}")
    keep = (F.col(TS) >= exposure) & (F.col(TS) <= analysis)
    if comp.window is not None:
        keep &= F.col(TS) >= exposure + F.lit(dt.timedelta(days=comp.window.start_day))
        keep &= F.col(TS) < exposure + F.lit(comp.window.horizon)
    if bake_hours:
        keep &= F.col(TS) <= analysis - _hours(bake_hours)
    for c in comp.filter:
        keep &= condition(c)
    return keep


def pre_condition(comp: Component, slot: str = "") -> Column:
    """Pre-period events for CUPED: the component's filter in `[exposure − lookback,
    exposure)` (Deng et al. 2013)."""
    keep = (F.col(TS) >= F.col(f"pre_start_ts{slot}")) & (F.col(TS) < F.col(f"exposure_ts{slot}"))
    for c in comp.filter:
        keep &= condition(c)
    return keep


@dataclass(frozen=True)
class Plan:
    """The experiments of one assignment-unit type, analysed together in one pass."""

    config: Config
    unit_type: str
    experiments: tuple[Experiment, ...]
    analysis_date: dt.date

    @property
    def metrics(self) -> dict[str, Metric]:
        names = sorted({m for e in self.experiments for m in e.metrics})
        return {n: self.config.metrics[n] for n in names}

    @property
    def sources(self) -> list[str]:
        return sorted({s for m in self.metrics.values() for s in self.config.metric_sources(m)})

    @property
    def cuped(self) -> bool:
        """Whether any experiment of the plan uses CUPED (pre-period values are staged)."""
        return any(e.cuped_lookback_days for e in self.experiments)

    @property
    def analysis_unit(self) -> str | None:
        """The analysis-unit id type the plan's experiments share (`plans` groups by it)."""
        return self.experiments[0].analysis_unit

    @cached_property
    def components(self) -> dict[tuple[str, str], tuple[str, Component, float]]:
        """(metric, role) → (column, component, bake hours) of each event component.
        Components equal but for winsorization (applied per unit later) share one column,
        so every distinct aggregation is computed once."""
        columns: dict[str, str] = {}
        out = {}
        for name, metric in self.metrics.items():
            for role, comp in metric.components.items():
                if comp.agg == "unit_count":
                    continue
                key = json.dumps(
                    [comp.model_dump(mode="json", exclude={"winsorize"}), metric.bake_hours],
                    sort_keys=True,
                )
                column = columns.setdefault(key, f"_c{len(columns)}")
                out[(name, role)] = (column, comp, metric.bake_hours)
        return out


class Cache:
    """The frames one staging run persists, released together: after the run's writes,
    or as soon as staging itself fails."""

    def __init__(self) -> None:
        self.frames: list[DataFrame] = []

    def persist(self, df: DataFrame) -> DataFrame:
        df = df.persist()
        self.frames.append(df)
        return df

    def release(self) -> None:
        for df in self.frames:
            df.unpersist()
        self.frames.clear()


@dataclass
class Staged:
    """Lazy outputs of one staging run; `release()` frees what was persisted."""

    stats: DataFrame
    diagnostics: DataFrame
    cache: Cache = field(default_factory=Cache)

    def release(self) -> None:
        self.cache.release()


def _diag(df: DataFrame, check: str, value: Column, metric=None, variant=None) -> DataFrame:
    return df.select(
        "experiment_id",
        F.lit(metric).cast("string").alias("metric"),
        (variant if variant is not None else F.lit(None)).cast("string").alias("variant"),
        F.lit(check).alias("check"),
        value.cast("bigint").alias("value"),
    )


def _experiment_ids(spark: SparkSession, plan: Plan) -> DataFrame:
    return literal_frame(spark, [(e.id,) for e in plan.experiments], [("experiment_id", "string")])


def exposed_units(spark: SparkSession, plan: Plan, cache: Cache) -> tuple[DataFrame, DataFrame]:
    """First exposure per (experiment, unit) within each experiment's dates; units seen in
    two variants are dropped. Returns (units, diagnostics), both from one per-unit frame
    persisted in `cache`. Units have columns experiment_id, _unit, variant, exposure_ts,
    start_ts, analysis_ts, pre_start_ts (instants, UTC: see `io.utc_timestamp`)."""
    src = plan.config.exposures
    df = read_table(spark, src)
    unit_col = src.ids[plan.unit_type]
    check_columns(
        df,
        {src.experiment_id: "id", unit_col: "id", src.variant: "any", src.timestamp: "timestamp"},
        f"exposures {describe(src)}",
    )
    bounds = literal_frame(
        spark,
        [
            (
                e.id,
                e.start_time,
                e.analysis_time(plan.analysis_date),
                e.cuped_lookback_days or 0,
            )
            for e in plan.experiments
        ],
        [
            ("experiment_id", "string"),
            ("start_ts", "timestamp"),
            ("analysis_ts", "timestamp"),
            ("lookback_days", "int"),
        ],
    )
    rows = df.select(
        F.col(src.experiment_id).cast("string").alias("experiment_id"),
        F.col(unit_col).cast("string").alias(UNIT),
        F.col(src.variant).cast("string").alias("variant"),
        utc_timestamp(src.timestamp, df.schema[src.timestamp].dataType).alias(TS),
    ).join(F.broadcast(bounds), "experiment_id")
    null = F.col(UNIT).isNull() | F.col("variant").isNull() | F.col(TS).isNull()
    valid = ~null & (F.col(TS) >= F.col("start_ts")) & (F.col(TS) < F.col("analysis_ts"))
    per_unit = cache.persist(
        rows.groupBy("experiment_id", UNIT)
        .agg(
            F.min(F.when(valid, F.col(TS))).alias("exposure_ts"),
            F.min(F.when(valid, F.col("variant"))).alias("variant"),
            F.max(F.when(valid, F.col("variant"))).alias("_last_variant"),
            F.count(F.when(valid, 1)).alias("n_rows"),
            F.count(F.when(null, 1)).alias("n_null"),
            F.first("start_ts").alias("start_ts"),
            F.first("analysis_ts").alias("analysis_ts"),
            F.first("lookback_days").alias("lookback_days"),
        )
        .withColumn(
            "pre_start_ts",
            F.col("exposure_ts") - F.make_dt_interval(days=F.col("lookback_days")),
        )
    )
    exposed = F.col("n_rows") > 0
    single = F.col("variant") == F.col("_last_variant")
    units = per_unit.where(exposed & single).select(
        "experiment_id", UNIT, "variant", "exposure_ts", "start_ts", "analysis_ts", "pre_start_ts"
    )
    per_exp = per_unit.groupBy("experiment_id").agg(
        F.coalesce(F.sum(F.when(exposed & single, F.col("n_rows") - 1)), F.lit(0)).alias("dup"),
        F.count(F.when(exposed & ~single, 1)).alias("multi"),
        F.sum("n_null").alias("nulls"),
    )
    counts = units.groupBy("experiment_id", "variant").count()
    diagnostics = reduce(
        DataFrame.unionByName,
        [
            _diag(per_exp, "duplicate_exposures", F.col("dup")),
            _diag(per_exp, "units_in_several_variants", F.col("multi")),
            _diag(per_exp, "exposures_with_null_ids", F.col("nulls")),
            _diag(counts, "assignment_units", F.col("count"), variant=F.col("variant")),
        ],
    )
    return units, diagnostics


def _map_ids(spark: SparkSession, events: DataFrame, mapping: IdMapping) -> DataFrame:
    """Attach the assignment-unit id to events through an id mapping table (left join:
    events whose id is NULL or unmapped keep a NULL unit; `_unmapped` marks the latter)."""
    table = read_table(spark, mapping)
    src_col, dst_col = mapping.columns[mapping.from_id], mapping.columns[mapping.to_id]
    check_columns(table, {src_col: "id", dst_col: "id"}, f"id mapping {describe(mapping)}")
    pairs = (
        table.select(
            F.col(src_col).cast("string").alias("_from"), F.col(dst_col).cast("string").alias(UNIT)
        )
        .where(F.col("_from").isNotNull() & F.col(UNIT).isNotNull())
        .distinct()
    )
    joined = events.join(pairs, "_from", "left")
    return joined.select(
        "*", (F.col("_from").isNotNull() & F.col(UNIT).isNull()).alias("_unmapped")
    ).drop("_from")


def source_events(
    spark: SparkSession, plan: Plan, source: str, columns: set[str], sub_col: str | None
) -> tuple[DataFrame, str]:
    """The source's events with `_unit` (the assignment unit), `_ts` (UTC instants),
    `_sub` (the column `sub_col` of the first aggregation level, null without one), the
    columns the metrics read and, for a source reached through an id mapping,
    `_unmapped`."""
    config = plan.config
    src = config.sources[source]
    df = read_table(spark, src)
    route = config.unit_route(source, plan.unit_type)
    key_col = route if isinstance(route, str) else src.ids[route.from_id]
    required = {key_col: "id", src.timestamp: "timestamp"}
    if sub_col:
        required[sub_col] = "id" if sub_col in src.ids.values() else "any"
    for column in columns:
        required.setdefault(column, "any")
    where = f"source '{source}' ({describe(src)})"
    check_columns(df, required, where)
    events = df.select(
        F.col(key_col).cast("string").alias(UNIT if isinstance(route, str) else "_from"),
        utc_timestamp(src.timestamp, df.schema[src.timestamp].dataType).alias(TS),
        (F.col(sub_col).cast("string") if sub_col else F.lit(None).cast("string")).alias(SUB),
        *[F.col(c) for c in sorted(columns - {key_col, src.timestamp})],
    )
    if isinstance(route, IdMapping):
        events = _map_ids(spark, events, route)
    return events, where


def _numeric_columns(comps: Iterable[Component]) -> dict[str, str]:
    return {c.column: "numeric" for c in comps if c.agg == "sum"}


def multi_unit_offenders(
    rows: list[DataFrame], plan: Plan, where: str
) -> tuple[DataFrame, DataFrame]:
    """Analysis units (e.g. users) seen under several assignment units (orgs) within an
    experiment break the design (GrowthBook); `apply_multi_unit_policy` drops them or keeps
    their first unit, per experiment, in every source.

    `rows`: one frame per source keyed by the analysis unit, with one row per (experiment,
    unit, analysis unit) and its first event time `_first_ts`. Returns (the offending
    (experiment, analysis unit) pairs with `_first_unit`, the unit of their earliest event
    in any source; diagnostics). Raises DataQualityError where the policy is 'fail'."""
    pairs = reduce(
        DataFrame.unionByName, [r.select("experiment_id", UNIT, SUB, "_first_ts") for r in rows]
    )
    if len(rows) > 1:
        pairs = pairs.groupBy("experiment_id", UNIT, SUB).agg(F.min("_first_ts").alias("_first_ts"))
    subs = (
        pairs.where(F.col(SUB).isNotNull())
        .groupBy("experiment_id", SUB)
        .agg(F.count(F.lit(1)).alias("n_units"), F.min_by(UNIT, "_first_ts").alias("_first_unit"))
    )
    bad = subs.where(F.col("n_units") > 1)
    counts = _experiment_ids(rows[0].sparkSession, plan).join(
        bad.groupBy("experiment_id").count(), "experiment_id", "left"
    )
    diag = _diag(counts, "analysis_units_in_several_units", F.coalesce(F.col("count"), F.lit(0)))
    failing = [e.id for e in plan.experiments if e.multi_unit_policy == "fail"]
    if failing:
        found = bad.where(F.col("experiment_id").isin(failing)).limit(5).collect()
        if found:
            shown = ", ".join(f"{r['experiment_id']}:{r[SUB]}" for r in found)
            raise DataQualityError(
                f"{where}: analysis units seen under several assignment units ({shown}); "
                f"multi_unit_policy is 'fail'"
            )
    return bad.select("experiment_id", SUB, "_first_unit"), diag


def apply_multi_unit_policy(rows: DataFrame, offenders: DataFrame, plan: Plan) -> DataFrame:
    """The rows of one source without the offenders' rows (policy 'drop'), or with only
    those of their first unit (policy 'keep_first')."""
    keep_first = F.col("experiment_id").isin(
        [e.id for e in plan.experiments if e.multi_unit_policy != "drop"]
    )
    flagged = rows.join(F.broadcast(offenders), ["experiment_id", SUB], "left")
    return flagged.where(
        F.col("_first_unit").isNull() | (keep_first & (F.col(UNIT) == F.col("_first_unit")))
    ).drop("_first_unit")


def _first_level_key(plan: Plan, source: str, comps: Iterable[Component]) -> str | None:
    """The column of the first aggregation level: the analysis unit when the source has
    it, else the one column whose distinct values some metric counts, else none."""
    src = plan.config.sources[source]
    if plan.analysis_unit and plan.analysis_unit in src.ids:
        return src.ids[plan.analysis_unit]
    distinct = {c.column for c in comps if c.agg == "count_distinct"}
    return distinct.pop() if len(distinct) == 1 else None


def _first_level(comp: Component, keep: Column, key_col: str | None) -> Column:
    """A component aggregated per (unit, first-level key) over the events that pass `keep`.
    A distinct count of the key becomes a flag (1 or null) per key; distinct counts of
    other columns keep the set of values."""
    if comp.agg == "sum":
        return F.sum(F.when(keep, F.col(comp.column).cast("double")))
    if comp.agg == "count":
        return F.count(F.when(keep, 1))
    if comp.agg == "count_distinct" and comp.column == key_col:
        return F.max(F.when(keep & F.col(SUB).isNotNull(), 1))
    if comp.agg == "count_distinct":
        return F.collect_set(F.when(keep, F.col(comp.column)))
    raise ValueError(f"component {comp.agg} is not aggregated over events")


def _second_level(comp: Component, col: str, key_col: str | None) -> tuple[Column, Column | None]:
    """(The merge of `_first_level` values per unit, the value of one analysis unit if the
    component adds up over analysis units, else None: sets of values do not.)"""
    if comp.agg in ("sum", "count"):
        return F.sum(col), F.col(col)
    if comp.column == key_col:
        return F.count(col), F.when(F.col(col).isNotNull(), F.lit(1))
    return F.size(F.array_distinct(F.flatten(F.collect_list(col)))), None


SLOT_COLUMNS = ("experiment_id", "exposure_ts", "start_ts", "analysis_ts", "pre_start_ts")


def _slot(k: int) -> str:
    return f"__{k}"


def exposure_slots(units: DataFrame) -> tuple[DataFrame, int]:
    """The exposures of each unit side by side: one row per unit, slot k (SLOT_COLUMNS
    suffixed `__k`) holding its k-th experiment by id. Events joined to this frame stay
    one row each however many experiments their unit is in (a per-experiment join would
    copy them). Returns (frame, number of slots = most experiments of one unit, ≥ 1)."""
    ranked = units.withColumn(
        "_k", F.row_number().over(Window.partitionBy(UNIT).orderBy("experiment_id")) - 1
    )
    most = ranked.agg(F.max("_k")).first()[0]
    n_slots = 1 if most is None else most + 1
    slots = ranked.groupBy(UNIT).agg(
        *[
            F.first(F.when(F.col("_k") == k, F.col(c)), ignorenulls=True).alias(c + _slot(k))
            for k in range(n_slots)
            for c in SLOT_COLUMNS
        ]
    )
    return slots, n_slots


@dataclass
class SourceLevel:
    """One metric source's first aggregation level (see `source_level`)."""

    source: str
    where: str
    parts: dict[str, tuple[Component, float]]
    key_col: str | None
    by_analysis_unit: bool
    drop_null_ids: bool
    level1: DataFrame
    diagnostics: DataFrame

    @property
    def rows(self) -> DataFrame:
        """One row per (experiment, unit, first-level key) in an experiment's range;
        without the rows of a NULL analysis unit where the source drops them."""
        rows = self.level1.where(F.col("experiment_id").isNotNull())
        if self.by_analysis_unit and self.drop_null_ids:
            rows = rows.where(F.col(SUB).isNotNull())
        return rows


@dataclass
class SourceAggregates:
    """What one pass over a metric source yields (see `source_unit_aggregates`)."""

    per_unit: DataFrame
    per_analysis_unit: DataFrame | None


def filter_columns(parts: dict[str, tuple[Component, float]]) -> list[str]:
    return sorted({cond.column for comp, _ in parts.values() for cond in comp.filter})


def first_level(
    plan: Plan,
    events: DataFrame,
    units: DataFrame,
    parts: dict[str, tuple[Component, float]],
    key_col: str | None,
    cache: Cache,
) -> DataFrame:
    """The components `parts` per (experiment, unit, first-level key), persisted in `cache`.

    Events are joined to the exposure slots of their unit (`exposure_slots`, broadcast)
    and aggregated once per (unit, key) with one set of aggregates per slot, then turned
    back into one row per (experiment, unit, key) that has events in the experiment's
    range; events without a unit id are kept as rows with a null experiment (counted as a
    data-quality finding). Columns: the component names (suffix `_pre` for CUPED's
    pre-period), `_first_ts`, `_n_pre` (events before exposure), `_active` (1 if any event
    after exposure), and per key (over all its events the join keeps: those in any of its
    unit's experiment ranges) `_n_events`, `_null__i` (events whose i-th filter column,
    `filter_columns(parts)[i]`, is NULL) and, for sources read through an id mapping,
    `_n_unmapped` (events whose id the mapping lacks). Bookkeeping per key rather than per
    slot keeps the aggregation narrow: its cost grows with the number of values.
    """
    slots, n_slots = exposure_slots(units)
    ks = [_slot(k) for k in range(n_slots)]
    in_range = {
        k: (F.col(TS) >= F.least(f"start_ts{k}", f"pre_start_ts{k}"))
        & (F.col(TS) <= F.col(f"analysis_ts{k}"))
        for k in ks
    }
    # Left join: events without a unit id stay; events of units that are not exposed are
    # in no slot's range (null) and go.
    joined = events.join(F.broadcast(slots), UNIT, "left").where(
        F.col(UNIT).isNull() | reduce(Column.__or__, in_range.values())
    )
    aggs, columns = [], []
    for name, (comp, bake) in parts.items():
        terms = [(name, partial(event_condition, comp, bake))]
        if plan.cuped:
            terms.append((f"{name}_pre", partial(pre_condition, comp)))
        for col, keep in terms:
            aggs += [_first_level(comp, keep(slot=k), key_col).alias(col + k) for k in ks]
            columns.append(col)
    nullable = filter_columns(parts)
    for k in ks:
        r, exposure = in_range[k], F.col(f"exposure_ts{k}")
        aggs += [
            F.min(F.when(r, F.col(TS))).alias(f"_first_ts{k}"),
            F.count(
                F.when(r & (F.col(TS) < exposure) & (F.col(TS) >= F.col(f"start_ts{k}")), 1)
            ).alias(f"_n_pre{k}"),
            F.max(F.when(r & (F.col(TS) >= exposure), 1)).alias(f"_active{k}"),
        ]
    columns += ["_first_ts", "_n_pre", "_active"]
    totals = [F.count(F.lit(1)).alias("_n_events")]
    totals += [
        F.count(F.when(F.col(c).isNull(), 1)).alias(f"_null__{i}") for i, c in enumerate(nullable)
    ]
    if "_unmapped" in events.columns:
        totals.append(F.count(F.when(F.col("_unmapped"), 1)).alias("_n_unmapped"))
    per_key = joined.groupBy(UNIT, SUB).agg(*aggs, *totals)
    slot_rows = [
        F.struct(
            F.lit(i).alias("_slot"),
            F.col(f"experiment_id{k}").alias("experiment_id"),
            *[F.col(c + k).alias(c) for c in columns],
        )
        for i, k in enumerate(ks)
    ]
    ids = slots.select(UNIT, *[f"experiment_id{k}" for k in ks])
    total_names = [c for c in per_key.columns if c in ("_n_events", "_n_unmapped")]
    total_names += [f"_null__{i}" for i in range(len(nullable))]
    return cache.persist(
        per_key.join(F.broadcast(ids), UNIT, "left")
        .select(UNIT, SUB, *total_names, F.explode(F.array(*slot_rows)).alias("r"))
        .select(UNIT, SUB, *total_names, "r.*")
        .where(
            (F.col("experiment_id").isNotNull() & F.col("_first_ts").isNotNull())
            | (F.col(UNIT).isNull() & (F.col("_slot") == 0))
        )
        .drop("_slot")
    )


def source_parts(
    plan: Plan, source: str
) -> tuple[dict[str, tuple[Component, float]], set[str], str | None]:
    """What one pass over `source` computes: (component column → (component, bake
    hours), the event columns the components read, the first-level key column)."""
    parts = {
        name: (comp, bake) for name, comp, bake in plan.components.values() if comp.source == source
    }
    columns = {c.column for c, _ in parts.values() if c.column}
    columns |= {cond.column for c, _ in parts.values() for cond in c.filter}
    return parts, columns, _first_level_key(plan, source, [c for c, _ in parts.values()])


def source_level(
    spark: SparkSession, plan: Plan, source: str, units: DataFrame, cache: Cache
) -> SourceLevel:
    """The first level of one pass over one metric source, for every component that reads
    it: the events aggregated once per (experiment, unit, first-level key), persisted.
    Distinct counts of analysis units become flags there, so no `count(DISTINCT)` (Spark's
    Expand: one copy of every event per distinct term) is planned.

    Diagnostics (per experiment): `events_with_null_ids:<source>:<id type>` for the id
    that reaches the assignment unit (events of the whole source: they belong to no unit)
    and, where the source has it, for the analysis unit; `unmapped_ids:<source>` (events
    whose id the id mapping lacks); and `null_values:<source>:<column>` for every filter
    column (NULL values: kept by `ne`/`not_in`/`is_null`, dropped by the others). The last
    two count the events of the experiment's units that the run reads: from the earliest
    start (or pre-period) to the latest analysis time of the unit's experiments."""
    config = plan.config
    src = config.sources[source]
    parts, columns, key_col = source_parts(plan, source)
    events, where = source_events(spark, plan, source, columns, key_col)
    check_columns(events, _numeric_columns(c for c, _ in parts.values()), where)
    route = config.unit_route(source, plan.unit_type)
    key_type = route.from_id if isinstance(route, IdMapping) else plan.unit_type
    by_analysis_unit = plan.analysis_unit in src.ids
    level1 = first_level(plan, events, units, parts, key_col, cache)
    total = partial(_sum_or_zero, level1.columns)
    no_unit = level1.where(F.col(UNIT).isNull()).agg(
        (total("_n_events") - total("_n_unmapped")).alias("null_key"),
        total("_n_unmapped").alias("unmapped"),
    )
    checks = [(f"events_with_null_ids:{source}:{key_type}", "null_key")]
    if isinstance(route, IdMapping):
        checks.append((f"unmapped_ids:{source}", "unmapped"))
    per_source = no_unit.crossJoin(_experiment_ids(spark, plan))
    diags = [_diag(per_source, check, F.col(col)) for check, col in checks]
    nullable = filter_columns(parts)
    in_exp = [(f"null_values:{source}:{c}", total(f"_null__{i}")) for i, c in enumerate(nullable)]
    if by_analysis_unit and plan.analysis_unit != key_type:  # else a NULL one has no unit
        null_sub = F.when(F.col(SUB).isNull(), F.col("_n_events"))
        in_exp.append((f"events_with_null_ids:{source}:{plan.analysis_unit}", total(null_sub)))
    if in_exp:
        per_exp = _experiment_ids(spark, plan).join(
            level1.where(F.col("experiment_id").isNotNull() & F.col(UNIT).isNotNull())
            .groupBy("experiment_id")
            .agg(*[value.alias(f"_d{i}") for i, (_, value) in enumerate(in_exp)]),
            "experiment_id",
            "left",
        )
        diags += [
            _diag(per_exp, check, F.coalesce(F.col(f"_d{i}"), F.lit(0)))
            for i, (check, _) in enumerate(in_exp)
        ]
    return SourceLevel(
        source,
        where,
        parts,
        key_col,
        by_analysis_unit,
        src.drop_null_ids,
        level1,
        reduce(DataFrame.unionByName, diags),
    )


def _sum_or_zero(columns: list[str], value: str | Column) -> Column:
    """Σ value over the rows, 0 when there are none or the column does not exist."""
    if isinstance(value, str):
        if value not in columns:
            return F.lit(0).cast("bigint")
        value = F.col(value)
    return F.coalesce(F.sum(value), F.lit(0)).cast("bigint")


def source_unit_aggregates(plan: Plan, level: SourceLevel, rows: DataFrame) -> SourceAggregates:
    """The second level: the first-level `rows` (after the multi-unit policy) merged per
    (experiment, unit), and, where they are keyed by the analysis unit, the per-analysis-
    unit values for the design effect."""
    source, key_col = level.source, level.key_col
    second, values = [], []
    for name, (comp, _) in level.parts.items():
        for col in [name, f"{name}_pre"] if plan.cuped else [name]:
            merge, value = _second_level(comp, col, key_col)
            second.append(merge.alias(col))
            if value is not None:
                values.append(F.coalesce(value.cast("double"), F.lit(0.0)).alias(col))
    # Active analysis units per unit, where the first level is keyed by them.
    subs = F.count(F.when(F.col(SUB).isNotNull(), F.col("_active")))
    per_unit = rows.groupBy("experiment_id", UNIT).agg(
        *second,
        F.sum("_n_pre").alias(f"_pre__{source}"),
        *([subs.alias(f"_subs__{source}")] if level.by_analysis_unit else []),
    )
    per_analysis_unit = None
    if level.by_analysis_unit:
        per_analysis_unit = rows.where(F.col(SUB).isNotNull()).select(
            "experiment_id", UNIT, SUB, "_active", *values
        )
    return SourceAggregates(per_unit, per_analysis_unit)


def _included(metric: Metric) -> tuple[Column, Column]:
    """(completed-window rule holds, bake rule holds) for a unit, per METHODS.md."""
    exposure, analysis = F.col("exposure_ts"), F.col("analysis_ts")
    complete, baked = F.lit(True), F.lit(True)
    for comp in metric.components.values():
        horizon = comp.window.horizon if comp.window else dt.timedelta(0)
        if metric.completed_windows_only and comp.window:
            complete &= exposure + F.lit(horizon) <= analysis
        if metric.bake_hours:
            baked &= exposure + F.lit(horizon) + _hours(metric.bake_hours) <= analysis
    return complete, baked


def _conversion(metric: Metric, m: Column, d: Column) -> Column:
    """The numerator under the conversion-rate rule: 0 where the denominator is 0."""
    if metric.kind == "ratio" and metric.conversion_rate:
        return F.when(d == 0, F.lit(0.0)).otherwise(m)
    return m


def _moments(prefix: str, m: Column, d: Column, keep: Column) -> list[Column]:
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
    """Per (experiment, metric, variant): n, means and centered co-moments of the values
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
    subs = subs.join(
        F.broadcast(units.select("experiment_id", UNIT, "variant", "exposure_ts", "analysis_ts")),
        ["experiment_id", UNIT],
    )
    entries = []
    for name, metric in plan.metrics.items():
        cols = [plan.components.get((name, role), (None,))[0] for role in ("num", "den")]
        if metric.kind != "ratio" or any(c not in value_cols for c in cols):
            continue
        m, d = (F.coalesce(F.col(c), F.lit(0.0)) for c in cols)
        complete, baked = _included(metric)
        m = _conversion(metric, m, d)
        keep = complete & baked & ((m != 0) | (d != 0))
        entries.append(
            F.struct(F.lit(name).alias("metric"), m.alias("m"), d.alias("d"), keep.alias("keep"))
        )
    if not entries:
        return None
    # Long rows, not one wide aggregation: a few hundred moment aggregates in one operator
    # exceed Spark's code-generation limits and run interpreted.
    return (
        subs.select("experiment_id", "variant", F.explode(F.array(*entries)).alias("a"))
        .select("experiment_id", "variant", "a.*")
        .groupBy("experiment_id", "metric", "variant")
        .agg(*_moments("au_", F.col("m"), F.col("d"), F.col("keep")))
    )


@dataclass
class UnitValues:
    """Long per-unit values of one plan and what goes with them."""

    values: DataFrame
    diagnostics: DataFrame
    analysis_unit_moments: DataFrame | None


def unit_values(spark: SparkSession, plan: Plan, cache: Cache) -> UnitValues:
    """Long per-unit values: experiment_id, variant, _unit, metric, m, d, x, y, complete,
    baked; zeros for units without events; plus diagnostics and analysis-unit moments.
    What it persists is in `cache`."""
    units, diags = exposed_units(spark, plan, cache)
    levels = [source_level(spark, plan, source, units, cache) for source in plan.sources]
    keyed = [level for level in levels if level.by_analysis_unit]
    if keyed:  # one policy over every source keyed by the analysis unit
        where = "; ".join(level.where for level in keyed)
        offenders, multi = multi_unit_offenders([level.rows for level in keyed], plan, where)
        diags = diags.unionByName(multi)
    wide = units
    sub_cols, per_analysis_unit = [], []
    for level in levels:
        diags = diags.unionByName(level.diagnostics)
        rows = level.rows
        if level.by_analysis_unit:
            # read for per-unit values and per-analysis-unit values
            rows = cache.persist(apply_multi_unit_policy(rows, offenders, plan))
        agg = source_unit_aggregates(plan, level, rows)
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
        diags = diags.unionByName(_diag(pre, f"events_before_exposure:{source}", F.col("n")))

    def value(name: str, role: str, comp: Component, suffix: str = "") -> Column:
        if comp.agg == "unit_count":
            return F.lit(1.0)
        if suffix and not plan.cuped:
            return F.lit(0.0)
        column = plan.components[(name, role)][0] + suffix
        return F.coalesce(F.col(column).cast("double"), F.lit(0.0))

    entries = []
    for name, metric in plan.metrics.items():
        complete, baked = _included(metric)
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
    wanted = F.create_map(
        *[x for e in plan.experiments for x in (F.lit(e.id), F.array(*map(F.lit, e.metrics)))]
    )
    analysis_units = sub_cols[0] if sub_cols else F.lit(0)
    values = (
        wide.select(
            "experiment_id",
            "variant",
            UNIT,
            analysis_units.alias("_n_subs"),
            F.explode(F.array(*entries)).alias("v"),
        )
        .select("experiment_id", "variant", UNIT, "_n_subs", "v.*")
        .where(F.array_contains(F.element_at(wanted, F.col("experiment_id")), F.col("metric")))
    )
    if sub_cols:  # a source has the analysis unit: count the active ones
        first_metric = {e.id: e.metrics[0] for e in plan.experiments}
        one_row = F.col("metric") == F.element_at(
            F.create_map(*[F.lit(x) for kv in first_metric.items() for x in kv]),
            F.col("experiment_id"),
        )
        counts = (
            values.where(one_row)
            .groupBy("experiment_id", "variant")
            .agg(F.sum("_n_subs").alias("n"))
        )
        diags = diags.unionByName(
            _diag(counts, "analysis_units", F.col("n"), variant=F.col("variant"))
        )
    return UnitValues(
        values.drop("_n_subs"), diags, analysis_unit_moments(plan, per_analysis_unit, units)
    )


def _caps(values: DataFrame, plan: Plan) -> DataFrame | None:
    """Winsorization thresholds per (experiment, metric), from the unit values of included
    units pooled across variants (never per variant), over non-zero values by default."""
    aggs = []
    for name, metric in plan.metrics.items():
        for role, col in (("num", "m"), ("den", "d")):
            w = metric.components[role].winsorize
            if w is None:
                continue
            keep = (F.col("metric") == name) & F.col("complete") & F.col("baked")
            if w.ignore_zeros:
                keep &= F.col(col) != 0
            for side, q in (("lower", w.lower), ("upper", w.upper)):
                if q is not None:
                    pct = F.percentile_approx(F.when(keep, F.col(col)), q, PERCENTILE_ACCURACY)
                    aggs.append(pct.alias(f"{name}|{role}_{side}_cap"))
    if not aggs:
        return None
    wide = values.groupBy("experiment_id").agg(*aggs)
    caps = [
        F.struct(
            F.lit(name).alias("metric"),
            *[
                (F.col(f"`{name}|{k}`") if f"{name}|{k}" in wide.columns else F.lit(None))
                .cast("double")
                .alias(k)
                for k in ("num_lower_cap", "num_upper_cap", "den_lower_cap", "den_upper_cap")
            ],
        )
        for name, metric in plan.metrics.items()
        if metric.winsorized
    ]
    return wide.select("experiment_id", F.explode(F.array(*caps)).alias("c")).select(
        "experiment_id", "c.*"
    )


def _clamp(col: str, low: str, high: str, ignore_zeros: Column) -> Column:
    x = F.col(col)
    clamped = F.least(F.greatest(x, F.coalesce(F.col(low), x)), F.coalesce(F.col(high), x))
    return F.when(ignore_zeros & (x == 0), x).otherwise(clamped)


def winsorize(values: DataFrame, plan: Plan) -> DataFrame:
    """Add `winsorized` rows (clamped values) beside the raw rows of winsorized metrics.
    Returns the values with a `winsorized` flag and the cap columns.

    CUPED's pre-period values are clamped with the same caps as the component they
    precede (X at the numerator's, Y at the denominator's thresholds, computed from the
    analysis-period values), so a pre-period outlier cannot drive θ."""
    cap_cols = ["num_lower_cap", "num_upper_cap", "den_lower_cap", "den_upper_cap"]
    names = [n for n, m in plan.metrics.items() if m.winsorized]
    if not names:
        return values.select(
            "*",
            F.lit(False).alias("winsorized"),
            *[F.lit(None).cast("double").alias(c) for c in cap_cols],
        )
    # A few rows per experiment, collected once: a lazy broadcast would compute the
    # percentiles once per branch below.
    caps = literal_frame(
        values.sparkSession,
        _caps(values, plan).collect(),
        [("experiment_id", "string"), ("metric", "string"), *[(c, "double") for c in cap_cols]],
    )
    with_caps = values.join(F.broadcast(caps), ["experiment_id", "metric"], "left")

    def ignores_zeros(role: str) -> Column:
        flags = {n: plan.metrics[n].components[role].winsorize for n in names}
        pairs = [F.lit(x) for n, w in flags.items() for x in (n, bool(w and w.ignore_zeros))]
        return F.coalesce(F.element_at(F.create_map(*pairs), F.col("metric")), F.lit(False))

    ignore_num, ignore_den = ignores_zeros("num"), ignores_zeros("den")
    capped = with_caps.where(F.col("metric").isin(names)).select(
        "experiment_id",
        "variant",
        UNIT,
        "metric",
        _clamp("m", "num_lower_cap", "num_upper_cap", ignore_num).alias("m"),
        _clamp("d", "den_lower_cap", "den_upper_cap", ignore_den).alias("d"),
        _clamp("x", "num_lower_cap", "num_upper_cap", ignore_num).alias("x"),
        _clamp("y", "den_lower_cap", "den_upper_cap", ignore_den).alias("y"),
        "complete",
        "baked",
        F.lit(True).alias("winsorized"),
        *cap_cols,
    )
    raw = with_caps.select(
        "experiment_id",
        "variant",
        UNIT,
        "metric",
        "m",
        "d",
        "x",
        "y",
        "complete",
        "baked",
        F.lit(False).alias("winsorized"),
        *cap_cols,
    )
    return raw.unionByName(capped)


def group_statistics(values: DataFrame, plan: Plan) -> DataFrame:
    """Per (experiment, metric, variant, winsorized): n, sums, means and centered
    co-moments of the included units, and counts of the excluded ones."""
    conversion = [n for n, m in plan.metrics.items() if m.kind == "ratio" and m.conversion_rate]
    m = F.when(F.col("metric").isin(conversion) & (F.col("d") == 0), F.lit(0.0)).otherwise(
        F.col("m")
    )
    x = F.when(F.col("metric").isin(conversion) & (F.col("y") == 0), F.lit(0.0)).otherwise(
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
    return values.groupBy("experiment_id", "metric", "variant", "winsorized").agg(
        *_moments("", m, F.col("d"), inc),
        F.sum(mi).alias("sum_m"),
        F.sum(di).alias("sum_d"),
        *cuped,
        F.count(F.when(inc & (F.col("d") == 0), 1)).alias("n_zero_denominator"),
        F.count(F.when(~F.col("complete"), 1)).alias("n_incomplete_window"),
        F.count(F.when(F.col("complete") & ~F.col("baked"), 1)).alias("n_unbaked"),
        *[
            F.first(c, ignorenulls=True).alias(c)
            for c in ("num_lower_cap", "num_upper_cap", "den_lower_cap", "den_upper_cap")
        ],
    )


def plans(config: Config, experiment_ids: list[str], analysis_date: dt.date) -> list[Plan]:
    """Group the chosen experiments by (assignment unit, analysis unit): one pass per group,
    so an experiment's analysis-unit rules never apply to another's."""
    chosen = [config.experiment(e) for e in experiment_ids]
    groups: dict[tuple[str, str], list[Experiment]] = {}
    for e in chosen:
        groups.setdefault((e.assignment_unit, e.analysis_unit or ""), []).append(e)
    return [
        Plan(config, unit_type, tuple(exps), analysis_date)
        for (unit_type, _), exps in sorted(groups.items())
    ]


def stage(
    spark: SparkSession,
    config: Config,
    experiment_ids: list[str],
    analysis_date: dt.date,
    run_id: str,
) -> Staged:
    """The staged statistics (STAGING_SCHEMA) and diagnostics of these experiments, lazy.
    The caller releases the result (`Staged.release`); if staging itself fails, what it
    persisted so far is released before the error propagates."""
    cache = Cache()
    try:
        return _stage(spark, config, experiment_ids, analysis_date, run_id, cache)
    except BaseException:
        cache.release()
        raise


def _stage(
    spark: SparkSession,
    config: Config,
    experiment_ids: list[str],
    analysis_date: dt.date,
    run_id: str,
    cache: Cache,
) -> Staged:
    stats, diags = [], []
    for plan in plans(config, experiment_ids, analysis_date):
        unit = unit_values(spark, plan, cache)
        values = winsorize(unit.values, plan)
        group = group_statistics(values, plan)
        moments = unit.analysis_unit_moments
        if moments is None:
            group = group.select("*", *[F.lit(None).alias(c) for c in ANALYSIS_UNIT_COLUMNS])
        else:
            keys = ["experiment_id", "metric", "variant"]
            group = group.join(F.broadcast(moments), keys, "left").select(
                *[c for c in group.columns],
                *[F.when(~F.col("winsorized"), F.col(c)).alias(c) for c in ANALYSIS_UNIT_COLUMNS],
            )
        stats.append(group)
        diags.append(unit.diagnostics)
    meta = [F.lit(analysis_date).alias("analysis_date")]
    return Staged(
        stats=reduce(DataFrame.unionByName, stats).select(
            "experiment_id",
            *meta,
            "metric",
            "variant",
            "winsorized",
            *[F.col(c).cast(STAGING_SCHEMA[c].dataType) for c in _STAT_COLUMNS],
            F.lit(run_id).alias("run_id"),
        ),
        diagnostics=reduce(DataFrame.unionByName, diags).select(
            "experiment_id",
            *meta,
            "metric",
            "variant",
            "check",
            "value",
            F.lit(run_id).alias("run_id"),
        ),
        cache=cache,
    )
