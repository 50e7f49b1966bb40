"""The daily step of the incremental refresh (#28) for one source's first level: read the
events from `since`, keep their day partials (and the unit-day cube of units not yet
exposed) in the state, add the history of the units first exposed in the run, fold the
days no later run reads again into a base of one row per unit and key, and rebuild the
first level from the base and the days kept (docs/design.md, "Incremental refresh").
`plan_refresh` decides a pass's step from the config and the state; `staging.stage` uses
it when the config has `incremental`."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from cluster_spark.config import Config
from cluster_spark.io import literal_frame
from cluster_spark.staging.events import FirstLevel, source_parts
from cluster_spark.staging.history import history_partials, unit_day_cube
from cluster_spark.staging.increments import (
    BASE_DAY,
    DAY,
    DayPartials,
    day_number,
    day_partials,
    event_day,
    folded,
    merged_first_level,
    union_all,
)
from cluster_spark.staging.plan import TS, UNIT, Cache, Plan, diag
from cluster_spark.state import StateRun

#: The parts of day partials (`increments.DayPartials`).
PARTS = ("rows", "totals", "values")


def state_table(source: str, kind: str, part: str, layout: str) -> str:
    """A state table of one source: `kind` `day` (day partials of the days a later run
    reads again), `base` (the older days folded: one row per experiment, unit and key,
    `_day` = `increments.BASE_DAY`), `cube` (the unit-day cube of units not yet exposed, a
    copy per experiment; parts `rows` and `values`) or `counts` (rows per day). `layout`: the pass's
    (`pass_layout`): its columns (`_c<i>`, `_match__<i>`, …) are named by position in the
    pass, so passes of other experiments or another config keep tables of their own."""
    return f"{kind}_{part}__{source}__{layout}"


#: The state tables' format: a state of another format is refreshed fully.
STATE_VERSION = 3


def pass_layout(config: Config, plan: Plan) -> str:
    """A hash of the state's format (`STATE_VERSION`), the config (`Config.fingerprint`),
    the lookback and the pass's experiments: what the state's columns and days were
    computed under."""
    incremental = config.incremental
    lookback = None if incremental is None else incremental.lookback_hours
    ids = sorted(e.id for e in plan.experiments)
    key = json.dumps([STATE_VERSION, config.fingerprint(), lookback, ids])
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def refreshed_first_level(
    run: StateRun,
    plan: Plan,
    source: str,
    events: DataFrame,
    units: DataFrame,
    window: Window,
    days: Days,
    cache: Cache,
    new_units: DataFrame | None = None,
) -> FirstLevel:
    """The first level of `source` (as `events.first_level` computes it from every event)
    from the state of `run` and the events at or after `window.since` (a UTC midnight).

    The day partials of those events (and of the events without a timestamp) are appended
    to `run` as its `days` (`_replaced_days`: each experiment's days from `since`'s on,
    the NULL day and every day the events have); so is their unit-day cube, for the units
    not exposed (the only ones whose history a later run synthesizes). The `new_units`
    (those of `units` not in the state's units table: new in this run, all exposed at or
    after `since`, as `Refresh.check_units` ensures) get their days before `since` from the
    cube (`history.history_partials`). The days before `window.keep_from` (which the next
    run does not read again) are then folded into the base (`_fold`), and the first level
    is rebuilt from the base and the days kept. `since` None: every event, replacing every
    day (a full refresh). The per-key aggregates are persisted in `cache` (read twice). The
    caller commits `run` after its writes."""
    parts, _, key_col = source_parts(plan, source)
    since, daily = window.since, window.daily
    recent = events
    if since is not None:
        recent = events.where(F.col(TS).isNull() | (F.col(TS) >= F.lit(since)))
    fresh = day_partials(plan, recent, units, parts, key_col, daily, cache)
    unexposed = recent.join(units.select(UNIT).distinct(), UNIT, "left_anti")
    cube, cube_values = unit_day_cube(plan, unexposed, parts, key_col, daily)
    day = zip(PARTS, (fresh.rows, fresh.totals, fresh.values), strict=True)
    writes = [("day", part, df) for part, df in day]
    writes += [("cube", "rows", _copies(plan, cube))]
    if cube_values is not None:
        writes += [("cube", "values", _copies(plan, cube_values))]
    for kind, part, df in writes:
        if df is not None:
            table = state_table(source, kind, part, window.layout)
            run.append(table, df, days(table))
    history = None
    if since is not None and new_units is not None:
        history = _history(run, plan, source, events, new_units, window)
    state = _fold(run, plan, source, window, history)
    merged = merged_first_level(plan, state, parts, key_col)
    exposed = units.select("experiment_id", UNIT)
    kept = merged.rows.join(exposed, ["experiment_id", UNIT], "left_semi").unionByName(
        merged.rows.where(F.col(UNIT).isNull())
    )
    return FirstLevel(kept, merged.values)


@dataclass(frozen=True)
class Window:
    """What a run reads and keeps: the events from `since` (None: every event), the day
    partials from `keep_from`'s day on (the next run's `since`: older days are folded into
    the base), the state tables' `layout` (`pass_layout`) and whether the source is read
    by whole days (`Source.timestamp_as_date`)."""

    since: dt.datetime | None
    keep_from: dt.datetime
    layout: str
    daily: bool = False


#: Per state table, per experiment, the days a run's rows replace (`_replaced_days`).
Days = Callable[[str], dict[str, set[int | None]]]


def _fold(
    run: StateRun, plan: Plan, source: str, window: Window, history: DayPartials | None
) -> DayPartials:
    """The state's day partials once `run` commits, after folding into the base (one row
    per experiment, unit and key: `increments.folded`) the committed base (on an
    incremental run), the day partials of days before `window.keep_from`'s (then
    forgotten: no later run recomputes them) and the `history` of the run's new units
    (all before `since`). Without anything to fold, the base stays as it is."""
    parts, _, key_col = source_parts(plan, source)
    keep = day_number(window.keep_from)
    tables = {part: state_table(source, "day", part, window.layout) for part in PARTS}
    old = {
        e.id: {d for d in run.days(e.id, tables["rows"]) if d is not None and d < keep}
        for e in plan.experiments
    }
    bases = {part: state_table(source, "base", part, window.layout) for part in PARTS}
    if any(old.values()) or history is not None or window.since is None:
        frames = []
        for i, part in enumerate(PARTS):
            days = run.read(tables[part], pending=True)
            base = None if window.since is None else run.read(bases[part])
            found = [
                None if days is None else days.where(F.col(DAY).isNotNull() & (F.col(DAY) < keep)),
                base,
                None if history is None else (history.rows, history.totals, history.values)[i],
            ]
            frames.append(union_all(found))
        base = folded(plan, DayPartials(*frames), parts, key_col)
        for part, df in zip(PARTS, (base.rows, base.totals, base.values), strict=True):
            if df is not None:
                run.append(bases[part], df, {e.id: {BASE_DAY} for e in plan.experiments})
        for part in PARTS:
            run.forget(tables[part], old)
    state = []
    for part in PARTS:
        state.append(union_all([run.read(t, pending=True) for t in (tables[part], bases[part])]))
    return DayPartials(*state)


def _copies(plan: Plan, df: DataFrame) -> DataFrame:
    """`df` once per experiment of the pass (state tables are partitioned by experiment)."""
    ids = [F.lit(e.id) for e in plan.experiments]
    return df.select(F.explode(F.array(*ids)).alias("experiment_id"), "*")


def rows_per_day(events: DataFrame) -> dict[int | None, int]:
    """The source's rows per UTC day (None: without a timestamp), as the run reads them
    (after the id mapping): one aggregation of the timestamps, a row per day to the
    driver."""
    per_day = events.groupBy(event_day(F.col(TS)).alias(DAY)).agg(F.count(F.lit(1)).alias("n"))
    return {r[DAY]: r["n"] for r in per_day.collect()}


def late_events(
    run: StateRun,
    plan: Plan,
    source: str,
    counts: dict[int | None, int],
    window: Window,
    days: Days,
) -> DataFrame:
    """Diagnostics rows `late_events_outside_lookback:<source>`, one per experiment: how
    many of the source's rows (`counts`: `rows_per_day`) dated before `since`'s day are not
    in the state, counted as |rows now − rows when the day was last read| per UTC day from
    the earliest start (less the CUPED pre-period) on:
    rows that arrived, or went, after their day left the lookback, which the results lack
    until a full refresh. Keeps the rows per day of this run's days (`counts` state
    table). 0 on a full refresh."""
    table = state_table(source, "counts", "rows", window.layout)
    first = None if window.since is None else day_number(window.since)
    earliest = min(
        day_number(e.start_time - dt.timedelta(days=e.cuped_lookback_days or 0))
        for e in plan.experiments
    )  # older days are in no experiment's range: a retention job may drop them
    counts = {d: n for d, n in counts.items() if d is not None and d >= earliest}
    stored = run.read(table)
    fresh = [
        (e.id, d, n)
        for e in plan.experiments
        for d, n in counts.items()
        if first is None or d >= first
    ]
    columns = [("experiment_id", "string"), (DAY, "int"), ("n", "bigint")]
    run.append(table, literal_frame(run.spark, fresh, columns), days(table))
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
    run: StateRun, plan: Plan, since: dt.datetime | None, counts: dict[int | None, int]
) -> Days:
    """Per state table, per experiment, the days this run's rows of the events from `since`
    replace: the NULL day, every day from `since`'s to the latest analysis time's, every
    committed day after it and every day the events have from `since`'s on (`counts`); on
    a full refresh (`since` None), every day the events have and every day committed
    (replaced by nothing)."""
    first = None if since is None else day_number(since)
    had = {d for d in counts if d is None or first is None or d >= first}

    def days(table: str) -> dict[str, set[int | None]]:
        out: dict[str, set[int | None]] = {}
        for e in plan.experiments:
            if first is None:
                out[e.id] = {None, *had, *run.current[e.id].runs(table)}
            else:  # and committed days after the analysis time's (future-dated rows)
                last = day_number(e.analysis_time(plan.analysis_date))
                later = {d for d in run.current[e.id].runs(table) if d is not None and d > last}
                out[e.id] = {None, *had, *range(first, last + 1), *later}
        return out

    return days


def _history(
    run: StateRun,
    plan: Plan,
    source: str,
    events: DataFrame,
    new_units: DataFrame,
    window: Window,
) -> DayPartials | None:
    """The days before `since` of `new_units`; None without a cube."""
    parts, _, key_col = source_parts(plan, source)
    first = min(e.id for e in plan.experiments)

    def cube(part: str) -> DataFrame | None:
        df = run.read(state_table(source, "cube", part, window.layout), pending=True)
        if df is None:
            return None
        return df.where(F.col("experiment_id") == first).drop("experiment_id")

    cube_rows = cube("rows")
    if cube_rows is None or window.since is None:
        return None
    return history_partials(
        plan,
        cube_rows,
        cube("values"),
        events,
        new_units,
        window.since,
        parts,
        key_col,
        window.daily,
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
    #: the next run's `since`: the days before it are folded into the base
    keep_from: dt.datetime
    #: `pass_layout`: names the state tables; kept in the log as the state's fingerprint
    layout: str
    reason: str | None = None
    #: the exposed units not in the state (`check_units`) on an incremental run; None
    #: when there are none
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
        null_day = {e.id: {None} for e in plan.experiments}
        n_new = 0
        if self.since is not None:
            now = units.select(*columns)
            if stored is None:
                changes = "no_state"
            else:
                changes, n_new = _unit_changes(now, stored, self.since)
            if changes:
                self.since, self.reason = None, changes
        if self.since is None:  # every unit, in place of the state's
            self.run.append(table, units.select(*columns), null_day)
        elif n_new:  # the new ones, beside the state's
            self.new_units = units.join(stored.select(*keys), keys, "left_anti")
            self.run.append(table, self.new_units.select(*columns), null_day, add=True)

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
        window = Window(self.since, self.keep_from, self.layout, daily)
        counts = rows_per_day(events)
        days = _replaced_days(self.run, plan, self.since, counts)
        args = (self.run, plan, source, events, units, window, days, cache)
        first = refreshed_first_level(*args, self.new_units)
        late = late_events(self.run, plan, source, counts, window, days)
        return FirstLevel(cache.persist(first.rows), first.values), late

    def commit(self, analysis_date: dt.date) -> None:
        """Make the run's days current (after the run's writes)."""
        self.run.commit(analysis_date, {e: self.layout for e in self.run.ids})


def _unit_changes(now: DataFrame, stored: DataFrame, since: dt.datetime) -> tuple[str | None, int]:
    """(The first `UNIT_CHANGES` reason the exposed units `now` show against `stored`, the
    number of units new in `now`.)"""
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
        anywhere(new).alias("_new"),
    )
    counts = per_unit.agg(*[F.sum(c).alias(c) for c in [*UNIT_CHANGES, "_new"]]).first()
    return next((c for c in UNIT_CHANGES if counts[c]), None), counts["_new"] or 0


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
    lookback = dt.timedelta(hours=incremental.lookback_hours)

    def since(date: dt.date) -> dt.datetime:
        return min(e.analysis_time(date) for e in plan.experiments) - lookback

    keep_from = since(plan.analysis_date)  # the next run's since
    if reason is not None:
        return Refresh(run, None, keep_from, layout, reason)
    (date,) = dates
    return Refresh(run, since(date), keep_from, layout)
