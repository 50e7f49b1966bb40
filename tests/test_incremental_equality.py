"""Incremental refresh (#28) against full recomputes on the seeded experiment of
`bench/incremental.py` (its whole 28 days: `python bench/incremental.py`), its first three
dates here: organizations first exposed every day, exposure rows and events arriving up to
30 h late (inside the 48 h lookback), repeat exposures, a window metric, a winsorized
revenue per user with a distinct-count denominator, CUPED and slices. Each date's
incremental run equals a run of the same config without `incremental` on the same
snapshot, every results column (1e-9 relative, counts exact) and every diagnostic."""

from __future__ import annotations

import datetime as dt

import pytest

from bench.incremental import START, Scenario, compare_day, configs, state_diagnostics

LATE = "late_events_outside_lookback:events"


def test_daily_incremental_runs_equal_full_recomputes(spark, tmp_path, monkeypatch):
    """Day 0 builds the state (a full refresh: no state yet). On day 1 an earlier exposure
    row of an organization analysed on day 0 arrives: the run finds it and becomes a full
    refresh (`exposure_changed`). Day 2 is incremental: a run dies after writing state rows
    but before its commit; its rerun equals the full recompute. An event of day -3 (before
    the lookback) that arrives on day 2 is counted in `late_events_outside_lookback` (it is
    of an organization never exposed, so the results agree; `bench/incremental.py` shows
    one that changes them, and the full refresh that restores them)."""
    from cluster_spark import checks
    from cluster_spark.config import parse_config
    from cluster_spark.state import StateRun

    scenario = Scenario(days=3, orgs_per_day=6, earlier_exposure_day=1)
    plain, incremental = (parse_config(c) for c in configs(tmp_path))
    late = [("never_exposed", "u", "purchase", 5.0, START - dt.timedelta(days=3))]

    scenario.write(spark, tmp_path, 0)
    wrong, got = compare_day(spark, plain, incremental, 0)
    assert wrong == []
    assert state_diagnostics(got) == {LATE: 0, "state_full_refresh:no_state": 1}

    scenario.write(spark, tmp_path, 1)
    wrong, got = compare_day(spark, plain, incremental, 1)
    assert wrong == []
    assert state_diagnostics(got) == {LATE: 0, "state_full_refresh:exposure_changed": 1}
    assert checks.late_warnings(got.diagnostics) == []  # nothing late: no warning

    scenario.write(spark, tmp_path, 2, late)
    with monkeypatch.context() as m:  # a run dies before its state commit
        m.setattr(StateRun, "commit", lambda *a, **k: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            compare_day(spark, plain, incremental, 2)
    wrong, got = compare_day(spark, plain, incremental, 2)
    assert wrong == []
    assert state_diagnostics(got) == {LATE: 1}  # incremental: no full-refresh reason
    (warning,) = checks.late_warnings(got.diagnostics)  # the CLI and the report say so
    assert "'e1', source 'events': 1 event arrived" in warning and "--full-refresh" in warning
    # the data did have what the test is about
    late_rows = [r for r, arrived in scenario.events if arrived - r[4] > dt.timedelta(hours=2)]
    assert late_rows and len({r[1] for r, _ in scenario.exposures}) == 18
    overall = [r for r in got.results if r["metric"] == "revenue_per_user" and not r["dimension"]]
    assert sum(r["n_units"] for r in overall) >= 17  # units of all three days


def test_unit_changes_name_what_forces_a_full_refresh(spark):
    """`refresh._unit_changes` on hand-made units: the state's units against today's (the
    reason, and how many units are new)."""
    from cluster_spark.staging.refresh import _unit_changes

    ddl = "experiment_id string, _unit string, variant string, exposure_ts timestamp"
    t = dt.datetime(2026, 3, 5, tzinfo=dt.UTC)
    since = t - dt.timedelta(days=1)
    stored = [("e1", "a", "control", t - dt.timedelta(days=3)), ("e1", "b", "treatment", t)]
    cases = {
        (None, 1): [*stored, ("e1", "c", "control", t)],  # c: new, after since
        (None, 0): stored,
        ("exposure_changed", 0): [stored[0], ("e1", "b", "treatment", t - dt.timedelta(hours=1))],
        ("late_exposure", 1): [*stored, ("e1", "c", "control", since - dt.timedelta(hours=1))],
        ("joined_experiment", 1): [*stored, ("e2", "a", "control", t)],
    }
    before = spark.createDataFrame(stored, ddl)
    got = {
        want: _unit_changes(spark.createDataFrame(rows, ddl), before, since)
        for want, rows in cases.items()
    }
    assert got == {want: want for want in cases}
    dropped = spark.createDataFrame(stored[:1], ddl)  # b left the analysis (a second variant)
    assert _unit_changes(dropped, before, since) == ("exposure_changed", 0)
