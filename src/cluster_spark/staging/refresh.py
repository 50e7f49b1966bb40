"""The daily step of the incremental refresh (#28) for one source's first level: read the
events from `since`, keep their day partials and unit-day cube in the state, add the
history of the units first exposed in the run, and rebuild the first level from the state
(docs/design.md, "Incremental refresh"). `plan_refresh` decides a pass's step from the
config and the state; `staging.stage` uses it when the config has `incremental`."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from cluster_spark.config import Config
from cluster_spark.staging.events import FirstLevel, source_parts
from cluster_spark.staging.history import history_partials, unit_day_cube
from cluster_spark.staging.increments import (
    DayPartials,
    day_number,
    day_partials,
    merged_first_level,
)
from cluster_spark.staging.plan import TS, UNIT, Cache, Plan
from cluster_spark.state import StateRun

#: The parts of day partials (`increments.DayPartials`).
PARTS = ("rows", "totals", "values")


def state_table(source: str, kind: str, part: str, layout: str) -> str:
    """A state table of one source: `kind` `day` (day partials), `history` (newly exposed
    units' days before their first run: added to, not replaced) or `cube` (the unit-day
    cube, a copy per experiment; parts `rows` and `values`). `layout`: the pass's
    (`pass_layout`): its columns (`_c<i>`, `_match__<i>`, …) are named by position in the
    pass, so passes of other experiments or another config keep tables of their own."""
    return f"{kind}_{part}__{source}__{layout}"


def pass_layout(config: Config, plan: Plan) -> str:
    """A hash of the config (`Config.fingerprint`), the lookback and the pass's experiments:
    what the state's columns and days were computed under."""
    incremental = config.incremental
    lookback = None if incremental is None else incremental.lookback_hours
    key = json.dumps([config.fingerprint(), lookback, sorted(e.id for e in plan.experiments)])
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def refreshed_first_level(
    run: StateRun,
    plan: Plan,
    source: str,
    events: DataFrame,
    units: DataFrame,
    since: dt.datetime | None,
    previous: dt.datetime | None,
    layout: str,
    daily: bool = False,
) -> FirstLevel:
    """The first level of `source` (as `events.first_level` computes it from every event)
    from the state of `run` and the events at or after `since` (a UTC midnight).

    Day partials and the unit-day cube of those events (and of the events without a
    timestamp) are appended to `run` as its days, from `since`'s day to the latest analysis
    time's, the NULL day and any day they have; the other days come from the state. The
    units first exposed at or after `previous` (the previous run's analysis time, at or
    after `since`) get their days before `since` from the cube (`history.history_partials`).
    `since` None: every event, replacing every day (a full refresh). The caller commits
    `run` after its writes. Exact while the units exposed before `previous` keep the
    exposures their days were computed under (exposure changes are not handled yet)."""
    parts, _, key_col = source_parts(plan, source)
    recent = events
    if since is not None:
        recent = events.where(F.col(TS).isNull() | (F.col(TS) >= F.lit(since)))
    fresh = day_partials(plan, recent, units, parts, key_col, daily)
    cube, cube_values = unit_day_cube(plan, recent, parts, key_col, daily)
    ids = [e.id for e in plan.experiments]
    copies = F.explode(F.array(*[F.lit(e) for e in ids])).alias("experiment_id")
    replaced = _replaced_days(run, plan, since)
    day = zip(PARTS, (fresh.rows, fresh.totals, fresh.values), strict=True)
    writes = [("day", part, df) for part, df in day]
    writes += [("cube", "rows", cube), ("cube", "values", cube_values)]
    for kind, part, df in writes:
        if df is not None:
            df = df.select(copies, "*") if kind == "cube" else df
            run.append(state_table(source, kind, part, layout), df, replaced)
    if since is None:  # a full refresh: no history kept
        for part in PARTS:
            table = state_table(source, "history", part, layout)
            if any(run.current[e].runs(table) for e in ids):
                none = fresh.rows.where(F.lit(False)).select("experiment_id", "_day")
                run.append(table, none, replaced)
    elif previous is not None:
        args = (run, plan, source, events, units, since, previous, layout, daily)
        history = _history(*args)
        if history is not None:
            frames = (history.rows, history.totals, history.values)
            for part, df in zip(PARTS, frames, strict=True):
                if df is not None:
                    table = state_table(source, "history", part, layout)
                    run.append(table, df, add=True)
    state = [_read(run, source, part, layout) for part in PARTS]
    if state[0] is None or state[1] is None:  # nothing in any day
        state = [fresh.rows, fresh.totals, fresh.values]
    merged = merged_first_level(plan, DayPartials(*state), parts, key_col)
    exposed = units.select("experiment_id", UNIT)
    kept = merged.rows.join(exposed, ["experiment_id", UNIT], "left_semi").unionByName(
        merged.rows.where(F.col(UNIT).isNull())
    )
    return FirstLevel(kept, merged.values)


def _replaced_days(
    run: StateRun, plan: Plan, since: dt.datetime | None
) -> dict[str, set[int | None]]:
    """Per experiment the days this run's day partials and cube replace."""
    out: dict[str, set[int | None]] = {}
    for e in plan.experiments:
        if since is None:  # every committed day goes
            state = run.current[e.id]
            out[e.id] = {d for t in state.days or {} for d in state.runs(t)}
        else:
            last = e.analysis_time(plan.analysis_date)
            out[e.id] = {None, *range(day_number(since), day_number(last) + 1)}
    return out


def _read(run: StateRun, source: str, part: str, layout: str) -> DataFrame | None:
    """A part's current rows once the run commits: day partials and history together."""
    tables = [state_table(source, kind, part, layout) for kind in ("day", "history")]
    frames = [df for t in tables if (df := run.read(t, pending=True)) is not None]
    if not frames:
        return None
    return frames[0] if len(frames) == 1 else frames[0].unionByName(frames[1])


def _history(
    run: StateRun,
    plan: Plan,
    source: str,
    events: DataFrame,
    units: DataFrame,
    since: dt.datetime,
    previous: dt.datetime,
    layout: str,
    daily: bool,
) -> DayPartials | None:
    """The days before `since` of the units first exposed at or after `previous`; None
    without a cube."""
    parts, _, key_col = source_parts(plan, source)
    first = min(e.id for e in plan.experiments)

    def cube(part: str) -> DataFrame | None:
        df = run.read(state_table(source, "cube", part, layout), pending=True)
        if df is None:
            return None
        return df.where(F.col("experiment_id") == first).drop("experiment_id")

    new_units = units.where(F.col("exposure_ts") >= F.lit(previous))
    cube_rows = cube("rows")
    if cube_rows is None:
        return None
    return history_partials(
        plan, cube_rows, cube("values"), events, new_units, since, parts, key_col, daily
    )


@dataclass
class Refresh:
    """One pass's incremental step (`plan_refresh`): the state run, `since` (None: a full
    refresh) and `previous` (the previous run's analysis time)."""

    run: StateRun
    since: dt.datetime | None
    previous: dt.datetime | None
    #: `pass_layout`: names the state tables; kept in the log as the state's fingerprint
    layout: str

    def first_level(
        self,
        plan: Plan,
        source: str,
        events: DataFrame,
        units: DataFrame,
        cache: Cache,
        daily: bool,
    ) -> FirstLevel:
        """`refreshed_first_level`, its rows persisted in `cache` as `first_level`'s."""
        args = (self.run, plan, source, events, units, self.since, self.previous, self.layout)
        first = refreshed_first_level(*args, daily)
        return FirstLevel(cache.persist(first.rows), first.values)

    def commit(self, analysis_date: dt.date) -> None:
        """Make the run's days current (after the run's writes)."""
        self.run.commit(analysis_date, {e: self.layout for e in self.run.ids})


def plan_refresh(
    spark: SparkSession, config: Config, plan: Plan, run_id: str, full_refresh: bool = False
) -> Refresh | None:
    """The incremental step of one pass, or None: without `incremental` in the config, and
    for a date before the state's (a backfill: a full pass that leaves the state as it
    is). A full refresh when asked, without state, when the experiments' states differ in
    date, or when the state was computed under another layout: another config
    (`Config.fingerprint`), lookback or set of experiments in the pass (`pass_layout`)."""
    incremental = config.incremental
    if incremental is None or incremental.state.path is None:
        return None
    ids = [e.id for e in plan.experiments]
    run = StateRun(spark, incremental.state.path, ids, run_id)
    states = [run.current[e] for e in ids]
    dates = {s.analysis_date for s in states}
    if any(d is not None and d > plan.analysis_date for d in dates):
        return None
    layout = pass_layout(config, plan)
    stale = any(s.fingerprint != layout for s in states)
    if full_refresh or stale or len(dates) != 1 or None in dates:
        return Refresh(run, None, None, layout)
    (date,) = dates
    times = [e.analysis_time(date) for e in plan.experiments]
    since = min(times) - dt.timedelta(hours=incremental.lookback_hours)
    return Refresh(run, since, max(times), layout)
