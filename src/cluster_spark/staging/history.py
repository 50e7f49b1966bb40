"""Newly exposed units' history (#28): the day partials of the days before a run's read
window, for the units first exposed in the run, from the unit-day cube.

A unit first exposed in a run has events before the run's read window that a full pass
counts: its CUPED pre-period `[E − L, E)`, `_n_pre` (after the start, before E), its first
event time and the bookkeeping counts of its keys. The day partials of those days were
computed before the unit was exposed, so they lack it. The **unit-day cube**
(`unit_day_cube`) keeps, per unit × key × UTC day for every unit with events, each
component's aggregate under its filter only (no exposure condition), the event count, the
first event time and the bookkeeping counts. On a whole day before its exposure, a unit's
day partial follows from the cube: window components are empty (they start at E); a
pre-period component is the cube's on a day wholly inside `[E − L, E)`, empty on a day
wholly outside; `_n_pre` is the cube's count on a day wholly inside `[start, E)`;
`_first_ts` the cube's on a day wholly inside the range `[min(start, E − L), analysis]`;
the bookkeeping counts are the cube's on a day inside some range of the unit's. A day that
such an instant cuts (`E − L`, with CUPED) is a **boundary day**: computed from its raw
events instead (`history_partials`). Starts and analysis times are midnights; exposures of
daily sources are moved to midnight.
"""

from __future__ import annotations

import datetime as dt
from functools import reduce

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from cluster_spark.config import Component
from cluster_spark.staging.events import (
    component_aggregate,
    counts_values,
    distinct_values,
    key_totals,
)
from cluster_spark.staging.exposures import exposure_slots, slot
from cluster_spark.staging.filters import condition, utc_day
from cluster_spark.staging.increments import (
    DAY,
    DayPartials,
    day_partials,
    event_day,
    union_all,
)
from cluster_spark.staging.plan import SUB, TS, UNIT, Plan


def _filtered(comp: Component) -> Column:
    keep = F.lit(True)
    for c in comp.filter:
        keep &= condition(c)
    return keep


def unit_day_cube(
    plan: Plan,
    events: DataFrame,
    parts: dict[str, tuple[Component, float]],
    key_col: str | None,
    daily: bool = False,
) -> tuple[DataFrame, DataFrame | None]:
    """(Per (unit, key, `_day`) of the events with a unit and a time: each component column
    of `parts` aggregated under its filter only, `_n` (events), `_min_ts` (the first) and
    the bookkeeping counts of `events.key_totals`; per (unit, key, `_day`, `_component`,
    `_value`) the distinct values of distinct counts of other columns, or None.)"""
    if daily:
        events = events.withColumn(TS, utc_day(F.col(TS)))
    rows = (
        events.where(F.col(UNIT).isNotNull() & F.col(TS).isNotNull())
        .withColumn("_no_ts", F.lit(False))
        .withColumn(DAY, event_day(F.col(TS)))
    )
    aggs, pairs = [], []
    for name, (comp, _) in parts.items():
        keep = _filtered(comp)
        if counts_values(comp, key_col):
            value = F.col(comp.column)
            found = F.struct(F.lit(name).alias("_component"), value.cast("string").alias("_value"))
            pairs.append(F.when(keep & value.isNotNull(), found))
        else:
            aggs.append(component_aggregate(comp, keep).alias(name))
    totals = key_totals(parts, "_unmapped" in events.columns, daily)
    cube = rows.groupBy(UNIT, SUB, DAY).agg(
        *aggs,
        F.count(F.lit(1)).alias("_n"),
        F.min(TS).alias("_min_ts"),
        *[value.alias(n) for n, value in totals],
    )
    return cube, distinct_values(rows, pairs, [DAY]) if pairs else None


def _empty(comp: Component) -> Column:
    """A component's first-level value over no events (`events.component_aggregate`)."""
    if comp.agg == "sum":
        return F.lit(None).cast("double")
    if comp.agg == "count":
        return F.lit(0).cast("bigint")
    return F.lit(None).cast("int")


def _day_bounds() -> tuple[Column, Column]:
    start = F.timestamp_seconds(F.col(DAY).cast("bigint") * 86_400)
    return start, F.timestamp_seconds((F.col(DAY).cast("bigint") + 1) * 86_400)


def _cuts(instant: Column, start: Column, end: Column) -> Column:
    return (instant > start) & (instant < end)


def history_partials(
    plan: Plan,
    cube: DataFrame,
    cube_values: DataFrame | None,
    events: DataFrame,
    new_units: DataFrame,
    before: dt.datetime,
    parts: dict[str, tuple[Component, float]],
    key_col: str | None,
    daily: bool = False,
) -> DayPartials:
    """Day partials (`increments.DayPartials`) of `new_units` (exposed units, every one
    exposed at or after `before`, a midnight) on the days before `before`: from `cube`
    (`unit_day_cube` over those days) on whole days, from `events` on each unit's boundary
    days (collected: a few days)."""
    slots, n_slots = exposure_slots(new_units, len(plan.experiments))
    ks = [slot(k) for k in range(n_slots)]
    start, end = _day_bounds()
    before_day = event_day(F.lit(before))
    joined = cube.where(F.col(DAY) < before_day).join(slots, UNIT)
    lo = {k: F.least(F.col(f"start_ts{k}"), F.col(f"pre_start_ts{k}")) for k in ks}
    boundary = F.lit(False)
    for k in ks:  # an empty slot (NULL instants) cuts nothing
        cut = _cuts(lo[k], start, end) | _cuts(F.col(f"pre_start_ts{k}"), start, end)
        boundary |= F.col(f"experiment_id{k}").isNotNull() & cut
    whole = joined.where(~boundary)
    cuped_cols = _synthesized(plan, parts, key_col, ks, lo, start, end)
    rows = _slot_rows(whole, ks, cuped_cols)
    in_any = F.lit(False)
    for k in ks:
        in_any |= F.col(f"experiment_id{k}").isNotNull() & _whole_day(k, lo, start, end)[0]
    names = [c for c in cube.columns if c not in (UNIT, SUB, DAY, "_n", "_min_ts", *parts)]
    ids = F.filter(F.array(*[F.col(f"experiment_id{k}") for k in ks]), lambda x: x.isNotNull())
    totals = whole.where(in_any).select(
        F.explode(ids).alias("experiment_id"), UNIT, SUB, DAY, *names
    )
    values = _history_values(plan, cube_values, slots, ks, lo, boundary, before_day)
    synthesized = DayPartials(rows, totals, values)
    edges = [
        r[DAY] for r in joined.where(boundary).select(DAY).distinct().collect()
    ]  # a few UTC days
    if not edges:
        return synthesized
    raw = day_partials(plan, events.where(_on_days(edges)), new_units, parts, key_col, daily)
    pairs = joined.where(boundary).select(UNIT, DAY).distinct()
    on_edges = [
        None if df is None else df.join(pairs, [UNIT, DAY], "left_semi")
        for df in (raw.rows, raw.totals, raw.values)
    ]
    return DayPartials(
        rows.unionByName(on_edges[0]),
        totals.unionByName(on_edges[1]),
        union_all([values, on_edges[2]]),
    )


def _on_days(days: list[int]) -> Column:
    """Events on these UTC days, as ranges of the timestamp (so a scan can skip the files
    of other days by their statistics, which `event_day(...).isin` would not let it)."""
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    ranges = [
        (F.col(TS) >= F.lit(epoch + dt.timedelta(days=d)))
        & (F.col(TS) < F.lit(epoch + dt.timedelta(days=d + 1)))
        for d in sorted(days)
    ]
    return reduce(Column.__or__, ranges)


def _whole_day(k: str, lo: dict[str, Column], start: Column, end: Column) -> tuple[Column, Column]:
    """(The day [start, end) lies wholly in slot k's range, and wholly in its pre-period.)"""
    in_range = (start >= lo[k]) & (end <= F.col(f"analysis_ts{k}"))
    exposure = F.col(f"exposure_ts{k}")
    return in_range, in_range & (start >= F.col(f"pre_start_ts{k}")) & (end <= exposure)


def _synthesized(
    plan: Plan,
    parts: dict[str, tuple[Component, float]],
    key_col: str | None,
    ks: list[str],
    lo: dict[str, Column],
    start: Column,
    end: Column,
) -> dict[str, list[tuple[str, Column]]]:
    """Per slot k the slot columns of a whole day before the exposure (see the module)."""
    out: dict[str, list[tuple[str, Column]]] = {}
    for k in ks:
        in_range, in_pre = _whole_day(k, lo, start, end)
        exposure = F.col(f"exposure_ts{k}")
        in_npre = in_range & (start >= F.col(f"start_ts{k}")) & (end <= exposure)
        cols: list[tuple[str, Column]] = []
        for name, (comp, _) in parts.items():
            if counts_values(comp, key_col):
                continue
            cols.append((name, _empty(comp)))
            if plan.cuped:
                cols.append((f"{name}_pre", F.when(in_pre, F.col(name)).otherwise(_empty(comp))))
        cols += [
            ("_first_ts", F.when(in_range, F.col("_min_ts"))),
            ("_n_pre", F.when(in_npre, F.col("_n")).otherwise(F.lit(0).cast("bigint"))),
            ("_active", F.lit(None).cast("int")),
        ]
        out[k] = cols
    return out


def _slot_rows(
    whole: DataFrame, ks: list[str], cols: dict[str, list[tuple[str, Column]]]
) -> DataFrame:
    """One row per (experiment, unit, key, day) with events in the experiment's range."""
    entries = [
        F.struct(
            F.col(f"experiment_id{k}").alias("experiment_id"),
            *[value.alias(name) for name, value in cols[k]],
        )
        for k in ks
    ]
    return (
        whole.select(UNIT, SUB, DAY, F.explode(F.array(*entries)).alias("r"))
        .select(UNIT, SUB, DAY, "r.*")
        .where(F.col("experiment_id").isNotNull() & F.col("_first_ts").isNotNull())
    )


def _history_values(
    plan: Plan,
    cube_values: DataFrame | None,
    slots: DataFrame,
    ks: list[str],
    lo: dict[str, Column],
    boundary: Column,
    before_day: Column,
) -> DataFrame | None:
    """The distinct values of pre-period distinct counts on whole days (CUPED only: the
    window's start at the exposure)."""
    if cube_values is None or not plan.cuped:
        return None
    start, end = _day_bounds()
    joined = cube_values.where(F.col(DAY) < before_day).join(slots, UNIT).where(~boundary)
    entries = []
    for k in ks:
        _, in_pre = _whole_day(k, lo, start, end)
        entries.append(
            F.when(
                in_pre,
                F.struct(
                    F.col(f"experiment_id{k}").alias("experiment_id"),
                    F.concat(F.col("_component"), F.lit("_pre")).alias("_component"),
                    F.col("_value"),
                ),
            )
        )
    return (
        joined.select(UNIT, SUB, DAY, F.explode(F.array(*entries)).alias("_v"))
        .where(F.col("_v").isNotNull())
        .select(UNIT, SUB, DAY, "_v.*")
        .distinct()
    )
