"""Day partials of the first level (#28, `staging.increments`): the first level rebuilt
from event days, computed in two runs over disjoint days, equals the one pass over all
the events, every column of every row, for every source of a pass with every feature
that adds first-level columns and two experiments sharing a unit (two exposure slots)."""

from __future__ import annotations

import datetime as dt
import math

import pytest
from pyspark.sql import functions as F

from tests.helpers import ANALYSIS_DATE, EVENT_DDL, EXPOSURE_DDL, at, write_delta
from tests.test_staging import EVENTS, EXPOSURES, rich_config

# o8 is first exposed at 06:00 on day 1, after the first run: its CUPED pre-period starts
# at 06:00 on day -6 (a boundary day, read raw), its other days before the run's window
# come from the unit-day cube.
NEW_EXPOSURES = [*EXPOSURES, ("e1", "o8", "treatment", at(1, 6))]
NEW_EVENTS = [
    *EVENTS,
    ("o8", "u10", "purchase", 3.0, at(-6, 3)),  # boundary day, before the pre-period
    ("o8", "u10", "page_view", 0.0, at(-6, 9)),  # boundary day, in the pre-period
    ("o8", "u11", "purchase", 4.0, at(-3)),  # a whole day of the pre-period
    ("o8", "u10", "purchase", 5.0, at(0, 12)),  # pre-period and after the start: _n_pre
    ("o8", "u10", "purchase", 6.0, at(1, 3)),  # exposure day, before the exposure
    ("o8", "u11", "purchase", 7.0, at(2)),  # after the exposure
]


@pytest.fixture(scope="module")
def tiny(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_increments")
    write_delta(spark, NEW_EXPOSURES, EXPOSURE_DDL, root / "exposures")
    write_delta(spark, NEW_EVENTS, EVENT_DDL, root / "events")
    return root


def _keyed(df) -> dict[tuple, dict]:
    rows = [r.asDict() for r in df.collect()]
    out = {(r["experiment_id"], r["_unit"], r["_sub"]): r for r in rows}
    assert len(out) == len(rows)  # one row per (experiment, unit, key)
    return out


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)
    return a == b


def _union(a, b):
    values = None if a.values is None else a.values.unionByName(b.values)
    return type(a)(a.rows.unionByName(b.rows), a.totals.unionByName(b.totals), values)


def test_first_level_rebuilt_from_day_partials_of_two_runs_equals_one_pass(spark, tiny, tmp_path):
    from cluster_spark.config import parse_config
    from cluster_spark.staging.events import first_level, source_events, source_parts
    from cluster_spark.staging.exposures import exposed_units
    from cluster_spark.staging.increments import DAY, day_partials, merged_first_level
    from cluster_spark.staging.plan import TS, Cache, plans

    raw = rich_config(spark, tiny, tmp_path, NEW_EXPOSURES)
    e2 = {**raw["experiments"][0], "id": "e2", "metrics": ["revenue_per_user", "kinds_per_view"]}
    raw["experiments"].append(e2)  # o1 is in both: its events join two slots
    (plan,) = plans(parse_config(raw), ["e1", "e2"], ANALYSIS_DATE)
    cut = at(3)  # run 1: events before day 3 (and those without a timestamp); run 2: after
    first_run = F.col(TS).isNull() | (F.col(TS) < F.lit(cut))
    cache = Cache()
    try:
        units, _ = exposed_units(spark, plan, cache)
        for source in plan.sources:
            parts, columns, key_col = source_parts(plan, source)
            events, _ = source_events(spark, plan, source, columns, key_col)
            full = first_level(plan, events, units, parts, key_col, cache)
            runs = [
                day_partials(plan, events.where(keep), units, parts, key_col)
                for keep in (first_run, ~first_run)
            ]
            merged = merged_first_level(plan, _union(*runs), parts, key_col)
            assert merged.rows.columns == full.rows.columns
            want, got = _keyed(full.rows), _keyed(merged.rows)
            assert set(got) == set(want)
            wrong = [
                (key, c, want[key][c], got[key][c])
                for key in want
                for c in want[key]
                if not _same(want[key][c], got[key][c])
            ]
            assert wrong == [], source
            # the day partials do span several days, and o1's key rows both experiments
            days = {r[DAY] for r in runs[0].rows.select(DAY).distinct().collect()}
            assert len(days) >= 2, days
            assert {k[0] for k in want if k[1] == "o1"} == {"e1", "e2"}
            if full.values is not None:
                assert sorted(merged.values.collect()) == sorted(full.values.collect())
    finally:
        cache.release()


def test_a_daily_refresh_equals_the_one_pass_on_every_date(spark, tiny, tmp_path):
    """Runs on three analysis dates (day 2 skipped), each reading only the events from
    (previous analysis time − lookback) and committing its days to the state, then a full
    refresh over that state: on every date the rebuilt first level equals the one pass
    over every event. Units first exposed after the first run (o4 on day 1, with an event
    the day before; o8, whose CUPED pre-period starts on day −6) get their earlier days
    from the unit-day cube, so even no lookback is exact (without the cube's history it
    fails). A lookback only re-reads more days, through the same code."""
    from cluster_spark.config import parse_config
    from cluster_spark.staging.events import first_level, source_events, source_parts
    from cluster_spark.staging.exposures import exposed_units
    from cluster_spark.staging.plan import Cache, plans
    from cluster_spark.staging.refresh import refreshed_first_level
    from cluster_spark.state import StateRun
    from tests.helpers import T0

    raw = rich_config(spark, tiny, tmp_path, NEW_EXPOSURES)
    raw["experiments"].append({**raw["experiments"][0], "id": "e2"})
    config = parse_config(raw)
    state, ids = str(tmp_path / "state"), ["e1", "e2"]
    lookback = dt.timedelta(days=0)  # the hardest case: no day read twice
    previous = None
    for i, day in enumerate([0, 1, 3, 3]):
        date = T0.date() + dt.timedelta(days=day)
        (plan,) = plans(config, ids, date)
        full_refresh = i in (0, 3)
        since = None if full_refresh else previous - lookback
        run = StateRun(spark, state, ids, f"run{i}")
        cache = Cache()
        try:
            units, _ = exposed_units(spark, plan, cache)
            for source in plan.sources:
                parts, columns, key_col = source_parts(plan, source)
                events, _ = source_events(spark, plan, source, columns, key_col)
                want = _keyed(first_level(plan, events, units, parts, key_col, cache).rows)
                got = refreshed_first_level(run, plan, source, events, units, since, previous)
                got = _keyed(got.rows)
                assert set(got) == set(want), (date, source)
                wrong = [
                    (key, c, want[key][c], got[key][c])
                    for key in want
                    for c in want[key]
                    if not _same(want[key][c], got[key][c])
                ]
                assert wrong == [], (date, source)
            run.commit(date, {e: "f" for e in ids})
        finally:
            cache.release()
        previous = plan.experiments[0].analysis_time(date)
    assert {"o4", "o8"} <= {k[1] for k in want}  # exposed after the first run
