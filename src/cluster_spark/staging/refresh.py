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
from cluster_spark.io import literal_frame
from cluster_spark.staging.events import FirstLevel, source_parts
from cluster_spark.staging.history import history_partials, unit_day_cube
from cluster_spark.staging.increments import (
    DAY,
    DayPartials,
    day_number,
    day_partials,
    event_day,
    merged_first_level,
)
from cluster_spark.staging.plan import TS, UNIT, Cache, Plan, diag
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
    layout: str,
    daily: bool = False,
    new_units: DataFrame | None = None,
) -> FirstLevel:
    """The first level of `source` (as `events.first_level` computes it from every event)
    from the state of `run` and the events at or after `since` (a UTC midnight).

    Day partials and the unit-day cube of those events (and of the events without a
    timestamp) are appended to `run` as its days, from `since`'s day to the latest analysis
    time's, the NULL day and any day they have; the other days come from the state. The
    `new_units` (those of `units` not in the state's units table: new in this run, all
    exposed at or after `since`, as `Refresh.check_units` ensures) get their days before
    `since` from the cube (`history.history_partials`). `since` None: every event,
    replacing every day (a full refresh). The caller commits `run` after its writes."""
    parts, _, key_col = source_parts(plan, source)
    recent = events
    if since is not None:
        recent = events.where(F.col(TS).isNull() | (F.col(TS) >= F.lit(since)))
    fresh = day_partials(plan, recent, units, parts, key_col, daily)
    cube, cube_values = unit_day_cube(plan, recent, parts, key_col, daily)
    replaced = _replaced_days(run, plan, since)
    day = zip(PARTS, (fresh.rows, fresh.totals, fresh.values), strict=True)
    writes = [("day", part, df) for part, df in day]
    writes += [("cube", "rows", cube), ("cube", "values", cube_values)]
    for kind, part, df in writes:
        if df is not None:
            df = _copies(plan, df) if kind == "cube" else df
            run.append(state_table(source, kind, part, layout), df, replaced)
    if since is None:  # a full refresh: no history kept
        for part in PARTS:
            table = state_table(source, "history", part, layout)
            if any(run.current[e.id].runs(table) for e in plan.experiments):
                none = fresh.rows.where(F.lit(False)).select("experiment_id", "_day")
                run.append(table, none, replaced)
    elif new_units is not None:
        history = _history(run, plan, source, events, new_units, since, layout, daily)
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


def _copies(plan: Plan, df: DataFrame) -> DataFrame:
    """`df` once per experiment of the pass (state tables are partitioned by experiment)."""
    ids = [F.lit(e.id) for e in plan.experiments]
    return df.select(F.explode(F.array(*ids)).alias("experiment_id"), "*")


def late_events(
    run: StateRun,
    plan: Plan,
    source: str,
    events: DataFrame,
    since: dt.datetime | None,
    layout: str,
) -> DataFrame:
    """Diagnostics rows `late_events_outside_lookback:<source>`, one per experiment: how
    many of the source's rows (as the run reads them: after the id mapping) dated before
    `since`'s day are not in the state, counted as |rows now − rows when the day was last
    read| per UTC day from the earliest start (less the CUPED pre-period) on: rows that
    arrived, or went, after their day left the lookback, which the results lack until a
    full refresh. Keeps the rows per day of this run's days (`counts` state table). Costs
    one aggregation of the timestamps of the source's events; a row per day reaches the
    driver. 0 on a full refresh."""
    table = state_table(source, "counts", "rows", layout)
    earliest = min(
        e.start_time - dt.timedelta(days=e.cuped_lookback_days or 0) for e in plan.experiments
    )
    per_day = (
        events.where(F.col(TS) >= F.lit(earliest))
        .groupBy(event_day(F.col(TS)).alias(DAY))
        .agg(F.count(F.lit(1)).alias("n"))
        .collect()
    )
    counts = {r[DAY]: r["n"] for r in per_day}
    first = None if since is None else day_number(since)
    stored = run.read(table)
    fresh = [(e.id, d, n) for e in plan.experiments for d, n in counts.items()]
    if first is not None:
        fresh = [row for row in fresh if row[1] >= first]
    columns = [("experiment_id", "string"), (DAY, "int"), ("n", "bigint")]
    run.append(table, literal_frame(run.spark, fresh, columns), _replaced_days(run, plan, since))
    late = 0
    if first is not None and stored is not None:
        one = min(e.id for e in plan.experiments)
        old = stored.where((F.col("experiment_id") == one) & (F.col(DAY) < first)).collect()
        was = {r[DAY]: r["n"] for r in old}  # a row per day
        now = {d: n for d, n in counts.items() if d < first}
        late = sum(abs(now.get(d, 0) - was.get(d, 0)) for d in now.keys() | was.keys())
    return _per_experiment(plan, run.spark, f"late_events_outside_lookback:{source}", late)


def _per_experiment(plan: Plan, spark: SparkSession, check: str, value: int) -> DataFrame:
    """Diagnostics rows of `check` with `value` for every experiment of the pass."""
    rows = [(e.id, value) for e in plan.experiments]
    columns = [("experiment_id", "string"), ("value", "bigint")]
    return diag(literal_frame(spark, rows, columns), check, F.col("value"))


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
    new_units: DataFrame,
    since: dt.datetime,
    layout: str,
    daily: bool,
) -> DayPartials | None:
    """The days before `since` of `new_units`; None without a cube."""
    parts, _, key_col = source_parts(plan, source)
    first = min(e.id for e in plan.experiments)

    def cube(part: str) -> DataFrame | None:
        df = run.read(state_table(source, "cube", part, layout), pending=True)
        if df is None:
            return None
        return df.where(F.col("experiment_id") == first).drop("experiment_id")

    cube_rows = cube("rows")
    if cube_rows is None:
        return None
    return history_partials(
        plan, cube_rows, cube("values"), events, new_units, since, parts, key_col, daily
    )


def units_table(layout: str) -> str:
    """The state table of the pass's exposed units: (experiment, unit, variant, first
    exposure) as of the last committed run, day NULL."""
    return f"units__{layout}"


#: `Refresh.check_units`: why units already in the state force a full refresh.
UNIT_CHANGES = {
    "exposure_changed": "a unit of the state has another first exposure or variant, or "
    "left the analysis (an earlier late exposure row, or a second variant)",
    "late_exposure": "a unit first seen in this run was exposed before the lookback",
    "joined_experiment": "a unit of the state was exposed in one more experiment of the pass",
}


@dataclass
class Refresh:
    """One pass's incremental step (`plan_refresh`): the state run, `since` (None: a full
    refresh) and why a full refresh (`reason`: a `plan_refresh` reason or a key of
    `UNIT_CHANGES`)."""

    run: StateRun
    since: dt.datetime | None
    #: `pass_layout`: names the state tables; kept in the log as the state's fingerprint
    layout: str
    reason: str | None = None
    #: the exposed units not in the state (`check_units`), on an incremental run
    new_units: DataFrame | None = None

    def check_units(self, plan: Plan, units: DataFrame) -> None:
        """Compare the exposed units with the state's (one aggregation: a few counts reach
        the driver). Units already analysed whose exposure changed (`UNIT_CHANGES`) make
        this run a full refresh; the new units (`new_units`) are appended to the units
        table, and get their history in `refreshed_first_level`."""
        table = units_table(self.layout)
        keys = ["experiment_id", UNIT]
        columns = [*keys, "variant", "exposure_ts", F.lit(None).cast("int").alias(DAY)]
        stored = self.run.read(table)
        if self.since is not None:
            now = units.select(*columns)
            changes = "no_state" if stored is None else _unit_changes(now, stored, self.since)
            if changes:
                self.since, self.reason = None, changes
        if self.since is None:  # every unit, in place of the state's
            self.run.append(table, units.select(*columns), {e.id: {None} for e in plan.experiments})
        else:  # the new ones, beside the state's
            self.new_units = units.join(stored.select(*keys), keys, "left_anti")
            self.run.append(table, self.new_units.select(*columns), add=True)

    def diagnostics(self, plan: Plan, spark: SparkSession) -> DataFrame | None:
        """`state_full_refresh:<reason>` (value 1) per experiment on a full refresh."""
        if self.reason is None:
            return None
        return _per_experiment(plan, spark, f"state_full_refresh:{self.reason}", 1)

    def first_level(
        self,
        plan: Plan,
        source: str,
        events: DataFrame,
        units: DataFrame,
        cache: Cache,
        daily: bool,
    ) -> tuple[FirstLevel, DataFrame]:
        """`refreshed_first_level`, its rows persisted in `cache` as `first_level`'s, and
        the source's `late_events` diagnostics."""
        args = (self.run, plan, source, events, units, self.since, self.layout, daily)
        first = refreshed_first_level(*args, self.new_units)
        late = late_events(self.run, plan, source, events, self.since, self.layout)
        return FirstLevel(cache.persist(first.rows), first.values), late

    def commit(self, analysis_date: dt.date) -> None:
        """Make the run's days current (after the run's writes)."""
        self.run.commit(analysis_date, {e: self.layout for e in self.run.ids})


def _unit_changes(now: DataFrame, stored: DataFrame, since: dt.datetime) -> str | None:
    """The first `UNIT_CHANGES` reason the exposed units `now` show against `stored`."""
    was = stored.select(
        "experiment_id",
        UNIT,
        F.col("variant").alias("_was_variant"),
        F.col("exposure_ts").alias("_was_ts"),
        F.lit(True).alias("_was"),
    )
    joined = now.withColumn("_now", F.lit(True)).join(was, ["experiment_id", UNIT], "full")
    is_now, is_was = F.col("_now").isNotNull(), F.col("_was").isNotNull()
    same = F.col("variant").eqNullSafe(F.col("_was_variant")) & F.col("exposure_ts").eqNullSafe(
        F.col("_was_ts")
    )
    new = is_now & ~is_was

    def anywhere(flag) -> F.Column:
        return F.max(flag.cast("int"))

    per_unit = joined.groupBy(UNIT).agg(
        anywhere(is_was & ~(is_now & same)).alias("exposure_changed"),
        anywhere(new & (F.col("exposure_ts") < F.lit(since))).alias("late_exposure"),
        (anywhere(new) * anywhere(is_was)).alias("joined_experiment"),
    )
    counts = per_unit.agg(*[F.sum(c).alias(c) for c in UNIT_CHANGES]).first()
    return next((c for c in UNIT_CHANGES if counts[c]), None)


def plan_refresh(
    spark: SparkSession, config: Config, plan: Plan, run_id: str, full_refresh: bool = False
) -> Refresh | None:
    """The incremental step of one pass, or None: without `incremental` in the config, and
    for a date before the state's (a backfill: a full pass that leaves the state as it
    is). A full refresh (`Refresh.reason`) when asked (`asked`), without state
    (`no_state`), when the experiments' states differ in date (`dates_differ`), or when the
    state was computed under another layout (`layout_changed`): another config
    (`Config.fingerprint`), lookback or set of experiments in the pass (`pass_layout`);
    `Refresh.check_units` may make it one later."""
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
    reasons = {
        "asked": full_refresh,
        "no_state": None in dates,
        "dates_differ": len(dates) != 1,
        "layout_changed": any(s.fingerprint != layout for s in states),
    }
    reason = next((r for r, hit in reasons.items() if hit), None)
    if reason is not None:
        return Refresh(run, None, layout, reason)
    (date,) = dates
    times = [e.analysis_time(date) for e in plan.experiments]
    return Refresh(run, min(times) - dt.timedelta(hours=incremental.lookback_hours), layout)
