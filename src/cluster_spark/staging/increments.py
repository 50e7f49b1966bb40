"""Incremental refresh, its first piece (#28): the first aggregation level kept per UTC
event day and rebuilt from those days.

The first level (`frames.FIRST_LEVEL`, `events.first_level`) is the only moments-kind step
that reads events; every step after it reads the first level. Its aggregates merge
across event days: component sums and counts add, a distinct count of the key is a flag
(max), `_first_ts` is the earliest, `_n_pre` adds, `_active` is the max, and the per-key
bookkeeping counts add. So a day's events can be aggregated once into **day partials**
(`day_partials`) and the first level rebuilt from any set of days (`merged_first_level`)
without reading the events again: the state a daily run keeps, recomputing only the days
of its lookback (docs/design.md, "Incremental refresh").

Two frames, because the bookkeeping counts are per key over all events the exposure join
keeps (those in any of its unit's experiments' ranges), while a (experiment, unit, key)
row exists only on the days that experiment's range has events: kept beside every
experiment of the unit for every day the key has events, the counts rebuild exactly even
when the experiments' rows are on different days.

Day partials are valid while the unit's exposures are: they are computed under its slots
(exposure, start, pre-period, analysis time), so a unit whose exposures change must be
recomputed, and days within the bake delay or after the previous analysis time must be
recomputed by a later run. Sums over days are added in another order than one pass over
the events: equal to ~1e-15 relative, not bit for bit.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from cluster_spark.config import Component
from cluster_spark.staging.events import (
    FirstLevel,
    counts_values,
    distinct_values,
    experiment_rows,
    joined_events,
    key_totals,
    ordered_totals,
    slot_aggregates,
)
from cluster_spark.staging.plan import SUB, TS, UNIT, Cache, Plan

#: The UTC event day of a day partial (days since 1970-01-01; NULL for events without a
#: timestamp, which are in no window).
DAY = "_day"


def event_day(ts: Column) -> Column:
    """Days since 1970-01-01 of a UTC instant (independent of the session time zone)."""
    return F.floor(F.unix_seconds(ts) / 86_400).cast("int")


@dataclass
class DayPartials:
    """Day partials of one source, lazy.

    - `rows`: per (experiment, unit, key, `_day`) the slot aggregates of the first level
      (its component columns, `_first_ts`, `_n_pre`, `_active`);
    - `totals`: per (experiment, unit, key, `_day`) the key's bookkeeping counts
      (`_n_events`, `_null__<i>`, …), beside every experiment of its unit;
    - `values`: the distinct (unit, key, `_day`, experiment, component, value) rows of
      distinct counts of other columns (`frames.DISTINCT_VALUES` and the day), or None.

    Rows of events without a unit are copied to every experiment of the plan, so each row
    can be kept in its experiment's state (`cluster_spark.state`)."""

    rows: DataFrame
    totals: DataFrame
    values: DataFrame | None


def day_partials(
    plan: Plan,
    events: DataFrame,
    units: DataFrame,
    parts: dict[str, tuple[Component, float]],
    key_col: str | None,
    daily: bool = False,
    cache: Cache | None = None,
) -> DayPartials:
    """`events.first_level` of these events, per UTC event day (arguments as there; the
    per-key aggregation, read by `rows` and `totals`, persisted in `cache`)."""
    joined, slots, ks, in_range, unmapped = joined_events(plan, events, units, daily)
    aggs, columns, pairs = slot_aggregates(plan, parts, key_col, ks, in_range)
    totals = key_totals(parts, unmapped, daily)
    names = [n for n, _ in totals]
    joined = joined.withColumn(DAY, event_day(F.col(TS)))
    per_key = joined.groupBy(UNIT, SUB, DAY).agg(*aggs, *[value.alias(n) for n, value in totals])
    if cache is not None:
        per_key = cache.persist(per_key)
    rows = experiment_rows(per_key.drop(*names), slots, ks, columns, [DAY])
    # the key's counts beside each experiment of its unit (its slots)
    ids = slots.select(UNIT, F.array(*[F.col(f"experiment_id{k}") for k in ks]).alias("_ids"))
    totals = per_key.select(UNIT, SUB, DAY, *names).join(ids, UNIT, "left")
    experiments = F.when(F.col(UNIT).isNull(), F.array(F.lit(None).cast("string")))
    totals = totals.select(
        F.explode(experiments.otherwise(F.filter("_ids", lambda x: x.isNotNull()))).alias(
            "experiment_id"
        ),
        UNIT,
        SUB,
        DAY,
        *names,
    )
    values = distinct_values(joined, pairs, [DAY]) if pairs else None
    return DayPartials(_copied(plan, rows), _copied(plan, totals), values)


def _copied(plan: Plan, df: DataFrame) -> DataFrame:
    """Rows of events without a unit (NULL unit, no experiment) copied to every experiment
    of the plan, so every stored row belongs to an experiment (`_one_copy` undoes it)."""
    ids = F.array(*[F.lit(e.id) for e in plan.experiments])
    unitless = df.where(F.col(UNIT).isNull()).drop("experiment_id")
    copies = unitless.select(F.explode(ids).alias("experiment_id"), *unitless.columns)
    return df.where(F.col(UNIT).isNotNull()).unionByName(copies)


def _one_copy(plan: Plan, df: DataFrame) -> DataFrame:
    """The rows of units, and one copy of the rows without a unit (the first experiment's
    by id) with no experiment, as `events.first_level` has them."""
    first = min(e.id for e in plan.experiments)
    has_unit = F.col(UNIT).isNotNull()
    return df.where(has_unit | (F.col("experiment_id") == F.lit(first))).withColumn(
        "experiment_id", F.when(has_unit, F.col("experiment_id"))
    )


def _merges(
    plan: Plan, parts: dict[str, tuple[Component, float]], key_col: str | None
) -> dict[str, Callable[[str], Column]]:
    """Slot column → how its day partials merge (in `slot_aggregates`' order)."""
    out: dict[str, Callable[[str], Column]] = {}
    for name, (comp, _) in parts.items():
        for col in [name, f"{name}_pre"] if plan.cuped else [name]:
            if not counts_values(comp, key_col):
                out[col] = F.max if comp.agg == "count_distinct" else F.sum
    return out | {"_first_ts": F.min, "_n_pre": F.sum, "_active": F.max}


def merged_first_level(
    plan: Plan,
    partials: DayPartials,
    parts: dict[str, tuple[Component, float]],
    key_col: str | None,
) -> FirstLevel:
    """The first level (`frames.FIRST_LEVEL`, as `events.first_level` returns it) rebuilt
    from day partials of any set of days: one row per (experiment, unit, key)."""
    merges = _merges(plan, parts, key_col)
    keys = ["experiment_id", UNIT, SUB]
    rows = (
        _one_copy(plan, partials.rows)
        .groupBy(*keys)
        .agg(*[merge(c).alias(c) for c, merge in merges.items()])
    )
    names = ordered_totals([c for c in partials.totals.columns if c not in (*keys, DAY)])
    totals = (
        _one_copy(plan, partials.totals)
        .groupBy(*keys)
        .agg(*[F.sum(c).alias(c) for c in names])
        .select(*[F.col(k).alias(f"_k{i}") for i, k in enumerate(keys)], *names)
    )
    # NULL-safe: the row of events without a unit has NULL experiment, unit and key
    on = [F.col(k).eqNullSafe(F.col(f"_k{i}")) for i, k in enumerate(keys)]
    first = rows.join(totals, on).select(UNIT, SUB, *names, "experiment_id", *merges)
    values = None if partials.values is None else partials.values.drop(DAY).distinct()
    return FirstLevel(first, values)


#: The `_day` of a base (`folded`): the days before a lookback merged into one row.
BASE_DAY = -(2**31)


def folded(
    plan: Plan,
    partials: DayPartials,
    parts: dict[str, tuple[Component, float]],
    key_col: str | None,
) -> DayPartials:
    """Day partials of any set of days merged into a **base**: one row per (experiment,
    unit, key) of each frame, `_day` = `BASE_DAY`, by the rules `merged_first_level` uses
    (so folding some days first changes nothing but the order of sums). Copies of rows
    without a unit stay one per experiment."""
    merges = _merges(plan, parts, key_col)
    keys = ["experiment_id", UNIT, SUB]
    base = F.lit(BASE_DAY).cast("int").alias(DAY)
    rows = partials.rows.groupBy(*keys).agg(*[merge(c).alias(c) for c, merge in merges.items()])
    names = [c for c in partials.totals.columns if c not in (*keys, DAY)]
    totals = partials.totals.groupBy(*keys).agg(*[F.sum(c).alias(c) for c in names])
    values = partials.values
    if values is not None:
        values = values.drop(DAY).distinct()
    return DayPartials(
        rows.select("*", base),
        totals.select("*", base),
        None if values is None else values.select("*", base),
    )


def union_all(frames: list[DataFrame | None]) -> DataFrame | None:
    """The frames that are not None, unioned by name; None when there are none."""
    found = [f for f in frames if f is not None]
    return reduce(DataFrame.unionByName, found) if found else None


def day_number(instant: dt.datetime) -> int:
    """`event_day` of a UTC-aware instant, in Python."""
    return (instant - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)).days
