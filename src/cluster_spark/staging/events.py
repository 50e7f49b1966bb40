"""One pass over one metric source: its events with the unit id (directly or through an
id mapping), joined to the exposure slots and aggregated once per (unit, first-level key)
for every component that reads the source: the first aggregation level, persisted, with
its NULL-id, unmapped-id, NULL-filter-value and filter-match diagnostics."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial, reduce
from typing import TYPE_CHECKING

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cluster_spark.checks import (
    DATE_TIMESTAMPS,
    EVENTS_AT_MIDNIGHT,
    EVENTS_OF_UNITS,
    filter_values,
    matched_check,
    value_check,
)
from cluster_spark.config import Component, Condition, Config, Experiment, IdMapping
from cluster_spark.inputs import Inputs, mapping_label, plan_inputs, source_label
from cluster_spark.io import describe
from cluster_spark.staging.exposures import exposure_slots, slot
from cluster_spark.staging.filters import (
    condition,
    event_condition,
    pre_condition,
    shift,
    utc_day,
)
from cluster_spark.staging.plan import (
    SUB,
    TS,
    UNIT,
    Cache,
    Plan,
    diag,
    experiment_ids,
    for_each_experiment,
)

if TYPE_CHECKING:
    from cluster_spark.staging.refresh import Refresh


def _map_ids(inputs: Inputs, events: DataFrame, mapping: IdMapping) -> DataFrame:
    """Attach the assignment-unit id to events through an id mapping table (left join:
    events whose id is NULL or unmapped keep a NULL unit; `_unmapped` marks the latter)."""
    table = inputs.table(mapping_label(mapping)).df
    src_col, dst_col = mapping.columns[mapping.from_id], mapping.columns[mapping.to_id]
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
    """The source's events with `_unit` (the assignment unit), `_ts` (UTC instants: see
    `io.time_instants`), `_sub` (the column `sub_col` of the first aggregation level, null
    without one), the columns the metrics read and, for a source reached through an id
    mapping, `_unmapped`. Columns and types are checked by `inputs.Inputs.check`."""
    config = plan.config
    src = config.sources[source]
    inputs = plan_inputs(spark, plan)
    table = inputs.table(source_label(source))
    route = config.unit_route(source, plan.unit_type)
    key_col = route if isinstance(route, str) else src.ids[route.from_id]
    where = f"source '{source}' ({describe(src)})"
    events = table.df.select(
        F.col(key_col).cast("string").alias(UNIT if isinstance(route, str) else "_from"),
        table.instants.alias(TS),
        (F.col(sub_col).cast("string") if sub_col else F.lit(None).cast("string")).alias(SUB),
        *[F.col(c) for c in sorted(columns - {key_col, src.timestamp.column})],
    )
    if isinstance(route, IdMapping):
        events = _map_ids(inputs, events, route)
    return events, where


def _first_level_key(plan: Plan, source: str, comps: Iterable[Component]) -> str | None:
    """The column of the first aggregation level: the analysis unit when the source has
    it, else the one column whose distinct values some metric counts, else none."""
    src = plan.config.sources[source]
    if plan.analysis_unit and plan.analysis_unit in src.ids:
        return src.ids[plan.analysis_unit]
    distinct = {c.column for c in comps if c.agg == "count_distinct"}
    return distinct.pop() if len(distinct) == 1 else None


def counts_values(comp: Component, key_col: str | None) -> bool:
    """Whether a component counts the distinct values of a column other than the key of the
    first level: those are counted from (unit, value) pairs (`FirstLevel.values`)."""
    return comp.agg == "count_distinct" and comp.column != key_col


def _non_finite(column: str) -> Column:
    """Whether a value is NaN, +Inf or -Inf (never for NULL)."""
    value = F.col(column).cast("double")
    return F.isnan(value) | (F.abs(value) == F.lit(float("inf")))


def component_aggregate(comp: Component, keep: Column) -> Column:
    """A component aggregated per (unit, first-level key) over the events that pass `keep`.
    A distinct count of the key becomes a flag (1 or null) per key. A sum skips NaN and
    ±Inf values as it skips NULLs: they are missing values (counted, `non_finite_values`)."""
    if comp.agg == "sum":
        value = F.col(comp.column).cast("double")
        return F.sum(F.when(keep & ~_non_finite(comp.column), value))
    if comp.agg == "count":
        return F.count(F.when(keep, 1))
    if comp.agg == "count_distinct":
        return F.max(F.when(keep & F.col(SUB).isNotNull(), 1))
    raise ValueError(f"component {comp.agg} is not aggregated over events")


@dataclass
class FirstLevel:
    """`rows`: the first aggregation level (`frames.FIRST_LEVEL`), persisted. `values`:
    for distinct counts of columns other than the key, the distinct rows of the events
    that count (`frames.DISTINCT_VALUES`), or None."""

    rows: DataFrame
    values: DataFrame | None


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
    values: DataFrame | None
    diagnostics: DataFrame

    @property
    def rows(self) -> DataFrame:
        """One row per (experiment, unit, first-level key) in an experiment's range;
        without the rows of a NULL analysis unit where the source drops them."""
        return self._kept(self.level1.where(F.col("experiment_id").isNotNull()))

    @property
    def value_rows(self) -> DataFrame | None:
        """`FirstLevel.values`, without a NULL analysis unit's where the source drops them."""
        return None if self.values is None else self._kept(self.values)

    def _kept(self, rows: DataFrame) -> DataFrame:
        if self.by_analysis_unit and self.drop_null_ids:
            return rows.where(F.col(SUB).isNotNull())
        return rows


def filter_columns(parts: dict[str, tuple[Component, float]]) -> list[str]:
    return sorted({cond.column for comp, _ in parts.values() for cond in comp.filter})


def summed_columns(parts: dict[str, tuple[Component, float]]) -> list[str]:
    """The columns some component sums: their NaN and ±Inf values are counted."""
    return sorted({comp.column for comp, _ in parts.values() if comp.agg == "sum"})


def _summed_by(parts: dict[str, tuple[Component, float]], column: str) -> Column:
    """Whether an event passes the filter of some component that sums `column`."""
    filters = [c.filter for c, _ in parts.values() if c.agg == "sum" and c.column == column]
    if any(not f for f in filters):
        return F.lit(True)
    return reduce(Column.__or__, [reduce(Column.__and__, map(condition, f)) for f in filters])


def _readers(plan: Plan, source: str, summed: str | None = None) -> list[str]:
    """The plan's experiments with a metric that reads `source` (and sums its column
    `summed`, when given)."""
    return [
        e.id
        for e in plan.experiments
        if any(
            m in e.metrics
            and c.source == source
            and (summed is None or (c.agg == "sum" and c.column == summed))
            for (m, _), (_, c, _) in plan.components.items()
        )
    ]


def _predicate_key(conditions: Iterable[Condition]) -> str:
    return json.dumps([c.model_dump(mode="json") for c in conditions], sort_keys=True)


def match_predicates(parts: dict[str, tuple[Component, float]]) -> list[tuple[Condition, ...]]:
    """The event predicates whose matches the first level counts per key (`_match__i`):
    every component's filter (all its conditions), and each value of an `eq` or `in`
    condition on its own (`column == value`, as `eq` compares). Equal predicates are
    counted once: a filter of one `eq` condition is also its value's predicate."""
    found: dict[str, tuple[Condition, ...]] = {}
    for comp, _ in parts.values():
        if comp.filter:
            found.setdefault(_predicate_key(comp.filter), tuple(comp.filter))
        for cond in comp.filter:
            for value in filter_values(cond):
                one = (Condition(column=cond.column, op="eq", value=value),)
                found.setdefault(_predicate_key(one), one)
    return list(found.values())


def daily_slots(slots: DataFrame, events: DataFrame, ks: list[str]) -> tuple[DataFrame, DataFrame]:
    """Slots and events of a source read by whole days (`Source.timestamp_as_date`): each
    event at its UTC day's midnight, exposures and pre-periods from their day's midnight,
    and the analysis time one day back (see `first_level`)."""
    days = {f"{c}{k}" for k in ks for c in ("exposure_ts", "pre_start_ts")}
    ends = {f"analysis_ts{k}" for k in ks}
    moved = {c: utc_day(F.col(c)) for c in days}
    moved |= {c: shift(F.col(c), -dt.timedelta(days=1)) for c in ends}
    slots = slots.select(*[moved.get(c, F.col(c)).alias(c) for c in slots.columns])
    return slots, events.withColumn(TS, utc_day(F.col(TS)))


def first_level(
    plan: Plan,
    events: DataFrame,
    units: DataFrame,
    parts: dict[str, tuple[Component, float]],
    key_col: str | None,
    cache: Cache,
    daily: bool = False,
) -> FirstLevel:
    """The components `parts` per (experiment, unit, first-level key), persisted in `cache`.

    Events are joined to the exposure slots of their unit (`exposure_slots`; the plan
    chooses the join by size, nothing unit-level is broadcast by force) and aggregated
    once per (unit, key) with one set of aggregates per slot, then turned back into one row
    per (experiment, unit, key) that has events in the experiment's range; events without
    a unit id are kept as rows with a null experiment (counted as a data-quality finding).
    Columns: `frames.FIRST_LEVEL`; the per-key counts are over all the key's events the
    join keeps (those in any of its unit's experiment ranges). Events without a timestamp
    are in no window: they go with the events without a unit, counted as `_n_null_ts` (and
    not as unmapped). Bookkeeping per key rather than per slot keeps
    the aggregation narrow: its cost grows with the number of values.

    `daily` (`Source.timestamp_as_date`): each event stands for its whole UTC day. Its
    time becomes its day's midnight and every unit's exposure and pre-period start their
    day's; the analysis time moves one day back, so the rules for instants count a day on
    or after the exposure day that has ended by the analysis time (and the bake delay).
    """
    joined, slots, ks, in_range, unmapped = joined_events(plan, events, units, daily)
    aggs, columns, pairs = slot_aggregates(plan, parts, key_col, ks, in_range)
    totals = key_totals(parts, unmapped, daily)
    per_key = joined.groupBy(UNIT, SUB).agg(*aggs, *[value.alias(n) for n, value in totals])
    values = distinct_values(joined, pairs) if pairs else None
    names = [n for n, _ in totals]
    rows = cache.persist(experiment_rows(per_key, slots, ks, columns, names))
    return FirstLevel(rows, values)


def joined_events(
    plan: Plan, events: DataFrame, units: DataFrame, daily: bool
) -> tuple[DataFrame, DataFrame, list[str], dict[str, Column], bool]:
    """(The events joined to their unit's exposure slots and kept when in some slot's
    range or without a unit; the slots; the slot suffixes; each slot's range condition;
    whether the source is read through an id mapping.) See `first_level`."""
    slots, n_slots = exposure_slots(units, len(plan.experiments))
    ks = [slot(k) for k in range(n_slots)]
    if daily:
        slots, events = daily_slots(slots, events, ks)
    in_range = {
        k: (F.col(TS) >= F.least(f"start_ts{k}", f"pre_start_ts{k}"))
        & (F.col(TS) <= F.col(f"analysis_ts{k}"))
        for k in ks
    }
    # Left join: events without a unit id stay; events of units that are not exposed are
    # in no slot's range (null) and go.
    # Events without a unit are only counted: one group per source, whatever their key.
    # An event without a timestamp belongs to no window of any unit: it joins them.
    no_time = F.col(TS).isNull()
    events = events.withColumn("_no_ts", no_time).withColumn(UNIT, F.when(~no_time, F.col(UNIT)))
    joined = (
        events.join(slots, UNIT, "left")
        .where(F.col(UNIT).isNull() | reduce(Column.__or__, in_range.values()))
        .withColumn(SUB, F.when(F.col(UNIT).isNotNull(), F.col(SUB)))
    )
    return joined, slots, ks, in_range, "_unmapped" in events.columns


def distinct_values(joined: DataFrame, pairs: list[Column], extra: Sequence[str] = ()) -> DataFrame:
    """`FirstLevel.values`: distinct values by aggregation, no per-unit arrays (a heavy
    org's hotspot); `extra`: more columns of `joined` to keep (the event day)."""
    return (
        joined.where(F.col(UNIT).isNotNull())
        .select(UNIT, SUB, *extra, F.explode(F.array(*pairs)).alias("_v"))
        .where(F.col("_v").isNotNull())
        .select(UNIT, SUB, *extra, "_v.*")
        .distinct()
    )


def experiment_rows(
    per_key: DataFrame, slots: DataFrame, ks: list[str], columns: list[str], totals: list[str]
) -> DataFrame:
    """The per-key aggregates back to one row per (experiment, unit, key) with events in
    the experiment's range (slot k's `columns`), the key's `totals` on each; the events
    without a unit as one row with a NULL experiment."""
    slot_rows = [
        F.struct(
            F.lit(i).alias("_slot"),
            F.col(f"experiment_id{k}").alias("experiment_id"),
            *[F.col(c + k).alias(c) for c in columns],
        )
        for i, k in enumerate(ks)
    ]
    ids = slots.select(UNIT, *[f"experiment_id{k}" for k in ks])
    names = ordered_totals(totals)
    return (
        per_key.join(ids, UNIT, "left")
        .select(UNIT, SUB, *names, F.explode(F.array(*slot_rows)).alias("r"))
        .select(UNIT, SUB, *names, "r.*")
        .where(
            (F.col("experiment_id").isNotNull() & F.col("_first_ts").isNotNull())
            | (F.col(UNIT).isNull() & (F.col("_slot") == 0))
        )
        .drop("_slot")
    )


def ordered_totals(names: list[str]) -> list[str]:
    """The bookkeeping counts in the first level's column order: the event counts first."""
    kept = ("_n_events", "_n_null_ts", "_n_unmapped", "_n_midnight")
    return [n for n in names if n in kept] + [n for n in names if n not in kept]


def slot_aggregates(
    plan: Plan,
    parts: dict[str, tuple[Component, float]],
    key_col: str | None,
    ks: list[str],
    in_range: dict[str, Column],
) -> tuple[list[Column], list[str], list[Column]]:
    """(The aggregates per slot k: each component (and its `_pre` with CUPED) as
    `<name><k>`, `_first_ts<k>`, `_n_pre<k>`, `_active<k>`; the column names without the
    slot suffix; the (experiment, component, value) pairs of distinct counts of values.)"""
    aggs, columns, pairs = [], [], []
    for name, (comp, bake) in parts.items():
        terms = [(name, partial(event_condition, comp, bake))]
        if plan.cuped:
            terms.append((f"{name}_pre", partial(pre_condition, comp)))
        for col, keep in terms:
            if counts_values(comp, key_col):
                pairs += [_value_pair(comp, col, keep(slot=k), k) for k in ks]
                continue
            aggs += [component_aggregate(comp, keep(slot=k)).alias(col + k) for k in ks]
            columns.append(col)
    for k in ks:
        r, exposure = in_range[k], F.col(f"exposure_ts{k}")
        aggs += [
            F.min(F.when(r, F.col(TS))).alias(f"_first_ts{k}"),
            F.count(
                F.when(r & (F.col(TS) < exposure) & (F.col(TS) >= F.col(f"start_ts{k}")), 1)
            ).alias(f"_n_pre{k}"),
            F.max(F.when(r & (F.col(TS) >= exposure), 1)).alias(f"_active{k}"),
        ]
    return aggs, [*columns, "_first_ts", "_n_pre", "_active"], pairs


def key_totals(
    parts: dict[str, tuple[Component, float]], unmapped: bool, daily: bool
) -> list[tuple[str, Column]]:
    """(Name, aggregate) of the bookkeeping per first-level key, over all its events: the
    data-quality and filter-match counts (see `first_level`)."""
    totals = [("_n_events", F.count(F.lit(1)))]
    totals += [
        (f"_null__{i}", F.count(F.when(F.col(c).isNull(), 1)))
        for i, c in enumerate(filter_columns(parts))
    ]
    totals += [
        (f"_nonfinite__{i}", F.count(F.when(_non_finite(c) & _summed_by(parts, c), 1)))
        for i, c in enumerate(summed_columns(parts))
    ]
    if not daily:  # whole days read as instants: every event at midnight UTC
        midnight = F.pmod(F.unix_seconds(F.col(TS)), F.lit(86_400)) == 0
        totals.append(("_n_midnight", F.count(F.when(midnight, 1))))
    totals += [
        (f"_match__{i}", F.count(F.when(reduce(Column.__and__, map(condition, conds)), 1)))
        for i, conds in enumerate(match_predicates(parts))
    ]
    totals.append(("_n_null_ts", F.count(F.when(F.col("_no_ts"), 1))))
    if unmapped:
        unmapped_col = F.col("_unmapped") & ~F.col("_no_ts")
        totals.append(("_n_unmapped", F.count(F.when(unmapped_col, 1))))
    return totals


def _value_pair(comp: Component, name: str, keep: Column, k: str) -> Column:
    """(experiment, component name, value) of an event that counts, else null."""
    value = F.col(comp.column)
    return F.when(
        keep & value.isNotNull(),
        F.struct(
            F.col(f"experiment_id{k}").alias("experiment_id"),
            F.lit(name).alias("_component"),
            value.cast("string").alias("_value"),
        ),
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
    spark: SparkSession,
    plan: Plan,
    source: str,
    units: DataFrame,
    cache: Cache,
    refresh: Refresh | None = None,
) -> SourceLevel:
    """The first level of one pass over one metric source, for every component that reads
    it: the events aggregated once per (experiment, unit, first-level key), persisted.
    Distinct counts of analysis units become flags there, so no `count(DISTINCT)` (Spark's
    Expand: one copy of every event per distinct term) is planned.

    Diagnostics (per experiment): `events_with_null_ids:<source>:<id type>` for the id
    that reaches the assignment unit (events of the whole source: they belong to no unit)
    and, where the source has it, for the analysis unit; `unmapped_ids:<source>` (events
    whose id the id mapping lacks); `events_with_null_timestamps:<source>` (events of the
    whole source without a timestamp: they are in no window); `null_values:<source>:
    <column>` for every filter column (NULL values: kept by `ne`/`not_in`/`is_null`,
    dropped by the others); `non_finite_values:<source>:<column>` for every summed column
    (NaN and ±Inf values, which sums skip as missing); `events_of_units:<source>` (for the
    experiments whose metrics read the source: its events that reach one of their exposed
    units, 0 when the ids do not join); and, per metric reading the
    source, `matched_events:<role>` and `filter_value_events:<role>:<column>=<value>`
    (`cluster_spark.checks`: a filter that matches nothing). The last five count the
    events of the experiment's units that the run reads: from the earliest start (or
    pre-period) to the latest analysis time of the unit's experiments. With `refresh`, also
    `late_events_outside_lookback:<source>` (`refresh.late_events`)."""
    src = plan.config.sources[source]
    parts, columns, key_col = source_parts(plan, source)
    events, where = source_events(spark, plan, source, columns, key_col)
    daily = src.timestamp_as_date
    diagnostics = []
    if refresh is None:
        first = first_level(plan, events, units, parts, key_col, cache, daily)
    else:  # the same first level, from the state and the window's events
        first, late = refresh.first_level(plan, source, events, units, cache, daily)
        diagnostics.append(late)
    return SourceLevel(
        source,
        where,
        parts,
        key_col,
        plan.analysis_unit in src.ids,
        src.drop_null_ids,
        first.rows,
        first.values,
        reduce(
            DataFrame.unionByName,
            [_source_diagnostics(spark, plan, source, parts, first.rows), *diagnostics],
        ),
    )


def _source_diagnostics(
    spark: SparkSession,
    plan: Plan,
    source: str,
    parts: dict[str, tuple[Component, float]],
    level1: DataFrame,
) -> DataFrame:
    """The diagnostics of one source's first level (see `source_level`)."""
    src = plan.config.sources[source]
    route = plan.config.unit_route(source, plan.unit_type)
    key_type = route.from_id if isinstance(route, IdMapping) else plan.unit_type
    total = partial(_sum_or_zero, level1.columns)
    no_unit = level1.where(F.col(UNIT).isNull()).agg(
        (total("_n_events") - total("_n_unmapped") - total("_n_null_ts")).alias("null_key"),
        total("_n_unmapped").alias("unmapped"),
        total("_n_null_ts").alias("null_ts"),
    )
    checks = [
        (f"events_with_null_ids:{source}:{key_type}", "null_key"),
        (f"events_with_null_timestamps:{source}", "null_ts"),
    ]
    if isinstance(route, IdMapping):
        checks.append((f"unmapped_ids:{source}", "unmapped"))
    per_source = for_each_experiment(no_unit, [e.id for e in plan.experiments])
    diags = [diag(per_source, check, F.col(col)) for check, col in checks]
    in_exp, only = _in_experiment_checks(plan, source, parts, key_type, total)
    per_exp = _per_experiment(spark, plan, level1, in_exp)
    for check, ids in only.items():
        per_exp = per_exp.where((F.col("check") != check) | F.col("experiment_id").isin(ids))
    diags.append(per_exp)
    kind = plan_inputs(spark, plan).read(source_label(source)).df.schema[src.timestamp.column]
    if isinstance(kind.dataType, T.DateType) and not src.timestamp_as_date:
        readers = _readers(plan, source)
        dated = experiment_ids(spark, plan).where(F.col("experiment_id").isin(readers))
        diags.append(diag(dated, f"{DATE_TIMESTAMPS}:{source}", F.lit(1)))
    return reduce(DataFrame.unionByName, diags)


def _in_experiment_checks(
    plan: Plan,
    source: str,
    parts: dict[str, tuple[Component, float]],
    key_type: str,
    total: Callable[[str | Column], Column],
) -> tuple[list[tuple[str | None, str, Column]], dict[str, list[str]]]:
    """((metric or None, check, aggregate over an experiment's first-level rows) of the
    checks counted per experiment; check → the experiment ids it is kept for, where it
    concerns only some)."""
    src = plan.config.sources[source]
    nullable = filter_columns(parts)
    in_exp: list[tuple[str | None, str, Column]] = [
        (None, f"null_values:{source}:{c}", total(f"_null__{i}")) for i, c in enumerate(nullable)
    ]
    only: dict[str, list[str]] = {}
    for i, c in enumerate(summed_columns(parts)):
        check = f"non_finite_values:{source}:{c}"
        in_exp.append((None, check, total(f"_nonfinite__{i}")))
        only[check] = _readers(plan, source, c)
    by_analysis_unit = plan.analysis_unit in src.ids
    if by_analysis_unit and plan.analysis_unit != key_type:  # else a NULL one has no unit
        null_sub = F.when(F.col(SUB).isNull(), F.col("_n_events"))
        check = f"events_with_null_ids:{source}:{plan.analysis_unit}"
        in_exp.append((None, check, total(null_sub)))
    in_exp += [(m, check, total(col)) for m, check, col in _match_checks(plan, source, parts)]
    readers = _readers(plan, source)
    reach = f"{EVENTS_OF_UNITS}:{source}"
    in_exp.append((None, reach, total("_n_events")))
    only[reach] = readers
    if not src.timestamp_as_date:
        midnight = f"{EVENTS_AT_MIDNIGHT}:{source}"
        in_exp.append((None, midnight, total("_n_midnight")))
        only[midnight] = readers
    return in_exp, only


def events_in_period(
    spark: SparkSession, config: Config, experiment: Experiment, source: str, date: dt.date
) -> int:
    """Events of `source` with an id that reaches assignment units (its own column, or the
    id an id mapping starts from) from the experiment's start (less its CUPED pre-period)
    to its analysis time. Asked only when none of them reached an exposed unit
    (`events_of_units` 0): one aggregation over the source, to tell ids that do not join
    (`no_events_reach_units`) from a source without events in the period."""
    src = config.sources[source]
    table = Inputs(spark, config, [experiment.id]).table(source_label(source))
    route = config.unit_route(source, experiment.assignment_unit)
    column = route if isinstance(route, str) else src.ids[route.from_id]
    start = experiment.start_time - dt.timedelta(days=experiment.cuped_lookback_days or 0)
    end = experiment.analysis_time(date)
    ts = utc_day(table.instants) if src.timestamp_as_date else table.instants
    inside = F.col(column).isNotNull() & (ts >= F.lit(start)) & (ts <= F.lit(end))
    return table.df.where(inside).count()


def _match_checks(
    plan: Plan, source: str, parts: dict[str, tuple[Component, float]]
) -> list[tuple[str, str, str]]:
    """(metric, check, first-level column) of the filter-match diagnostics of the metrics
    reading `source` (`checks.matched_check`, `checks.value_check`)."""
    index = {_predicate_key(p): i for i, p in enumerate(match_predicates(parts))}
    out: dict[tuple[str, str], str] = {}
    for (metric, role), (_, comp, _) in plan.components.items():
        if comp.source != source:
            continue
        matched = f"_match__{index[_predicate_key(comp.filter)]}" if comp.filter else "_n_events"
        out[(metric, matched_check(role))] = matched
        for cond in comp.filter:
            for value in filter_values(cond):
                one = [Condition(column=cond.column, op="eq", value=value)]
                column = f"_match__{index[_predicate_key(one)]}"
                out[(metric, value_check(role, cond.column, value))] = column
    return [(metric, check, column) for (metric, check), column in out.items()]


def _per_experiment(
    spark: SparkSession,
    plan: Plan,
    level1: DataFrame,
    checks: list[tuple[str | None, str, Column]],
) -> DataFrame:
    """Diagnostics rows of (metric or None, check, aggregate over the experiment's
    first-level rows), from one aggregation: every experiment of the plan gets each of its
    checks (0 when it has no rows), metric-level ones only for its own metrics."""
    per_exp = experiment_ids(spark, plan).join(
        level1.where(F.col("experiment_id").isNotNull() & F.col(UNIT).isNotNull())
        .groupBy("experiment_id")
        .agg(*[value.alias(f"_d{i}") for i, (_, _, value) in enumerate(checks)]),
        "experiment_id",
        "left",
    )
    entries = [
        F.struct(
            F.lit(metric).cast("string").alias("metric"),
            F.lit(check).alias("check"),
            F.coalesce(F.col(f"_d{i}"), F.lit(0)).cast("bigint").alias("value"),
        )
        for i, (metric, check, _) in enumerate(checks)
    ]
    metrics = F.create_map(
        *[x for e in plan.experiments for x in (F.lit(e.id), F.array(*map(F.lit, e.metrics)))]
    )
    own = F.array_contains(F.element_at(metrics, F.col("experiment_id")), F.col("metric"))
    return (
        per_exp.select("experiment_id", F.explode(F.array(*entries)).alias("d"))
        .select("experiment_id", "d.*")
        .where(F.col("metric").isNull() | own)
        .select(
            "experiment_id",
            "metric",
            *[F.lit(None).cast("string").alias(c) for c in ("variant", "dimension", "slice")],
            "check",
            "value",
        )
    )


def _sum_or_zero(columns: list[str], value: str | Column) -> Column:
    """Σ value over the rows, 0 when there are none or the column does not exist."""
    if isinstance(value, str):
        if value not in columns:
            return F.lit(0).cast("bigint")
        value = F.col(value)
    return F.coalesce(F.sum(value), F.lit(0)).cast("bigint")
