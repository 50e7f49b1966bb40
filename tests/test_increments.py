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

# o8 is first exposed at 06:00 on day 1 (e1) and 08:00 (e2), after the first run: its
# CUPED pre-periods start on day -6 (a boundary day, read raw), its other days before the
# run's window come from the unit-day cube.
NEW_EXPOSURES = [
    *EXPOSURES,
    ("e1", "o8", "treatment", at(1, 6)),
    ("e2", "o8", "control", at(1, 8)),  # new in two experiments, o4 in one: two slots
]
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


def _results(outcome) -> dict[tuple, dict]:
    keys = ("experiment_id", "metric", "variant", "dimension", "slice")
    out = {}
    for row in outcome.results:
        out[tuple(row[k] for k in keys)] = {
            k: v for k, v in row.items() if k not in ("run_id", "computed_at")
        }
    return out


STATE_CHECKS = ("late_events_outside_lookback", "state_full_refresh")


def _diagnostics(outcome, state: bool = False) -> dict[tuple, int]:
    """The diagnostics of a run; `state`: only those of the incremental state, else the
    others."""
    keys = ("experiment_id", "metric", "variant", "dimension", "slice", "check")
    return {
        tuple(d[k] for k in keys): d["value"]
        for d in outcome.diagnostics
        if d["check"].startswith(STATE_CHECKS) == state
    }


def test_incremental_run_of_two_experiments_equals_a_full_run(spark, tiny, tmp_path):
    """`incremental` in the config, through `pipeline.run_outcome`: day 0 builds the state
    from every event; on day 3, read from day 1 on with no lookback, every results column
    and every diagnostic equals a run of the same config without `incremental` (units
    first exposed after day 0 included, o8 in both experiments: the cube gives their
    earlier days). A failed run and the daily equality: `test_incremental_equality`."""
    from cluster_spark import pipeline
    from cluster_spark.config import parse_config
    from cluster_spark.staging.plan import plans
    from cluster_spark.staging.refresh import pass_layout, plan_refresh
    from cluster_spark.state import StateRun
    from tests.helpers import T0

    raw = rich_config(spark, tiny, tmp_path, NEW_EXPOSURES)
    raw["experiments"].append({**raw["experiments"][0], "id": "e2"})
    # one source (half the state writes of the test's time): distinct values stay
    raw["metrics"]["kinds_per_view"]["denominator"]["source"] = "events"
    del raw["sources"]["views"]
    plain = parse_config(raw)
    raw["incremental"] = {"state": str(tmp_path / "state"), "lookback_hours": 0}
    for key in ("staging", "results", "diagnostics"):
        raw["output"][key] = str(tmp_path / f"inc_{key}")
    incremental = parse_config(raw)
    first = pipeline.run_outcome(spark, incremental, T0.date())  # the state from every event
    assert set(_diagnostics(first, state=True).items()) == {
        ((e, None, None, None, None, "state_full_refresh:no_state"), 1) for e in ("e1", "e2")
    } | {
        ((e, None, None, None, None, "late_events_outside_lookback:events"), 0)
        for e in ("e1", "e2")
    }
    date = T0.date() + dt.timedelta(days=3)
    want = pipeline.run_outcome(spark, plain, date)
    got = pipeline.run_outcome(spark, incremental, date)
    w, g = _results(want), _results(got)
    assert set(g) == set(w)
    wrong = [(k, c, w[k][c], g[k][c]) for k in w for c in w[k] if not _same(w[k][c], g[k][c])]
    assert wrong == []
    assert _diagnostics(got) == _diagnostics(want)
    late = {
        ((e, None, None, None, None, "late_events_outside_lookback:events"), 0)
        for e in ("e1", "e2")
    }
    assert set(_diagnostics(got, state=True).items()) == late  # incremental: no reason
    # o4, o6 and o8 were first exposed after day 0: their earlier days came from the cube
    overall = [(k, r) for k, r in g.items() if k[:2] == ("e1", "revenue_per_user") and not k[3]]
    units = {k[2]: r["n_units"] for k, r in overall}
    assert units == {"control": 2, "treatment": 4}  # o1, o2 | o3, o4, o6, o8
    state = StateRun(spark, str(tmp_path / "state"), ["e1", "e2"], "reader").current["e1"]
    assert state.analysis_date == T0.date() + dt.timedelta(days=3)
    (plan,) = plans(incremental, ["e1", "e2"], date)
    assert state.fingerprint == pass_layout(incremental, plan)
    # another pass layout (e1 alone, as a DAG task per experiment runs it) is a full refresh
    (alone,) = plans(incremental, ["e1"], date)
    refresh = plan_refresh(spark, incremental, alone, "probe")
    assert (refresh.since, refresh.layout) == (None, pass_layout(incremental, alone))
