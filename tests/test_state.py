"""State tables of the incremental refresh (#28, `cluster_spark.state`) on real Delta: a
run's days become current only when it commits; a run that fails between tables leaves the
previous state in force and its rerun gives the same state; of two runs of one experiment
only one commits; other experiments are not touched. Expected rows are written by hand."""

from __future__ import annotations

import datetime as dt
import threading

import pytest

from cluster_spark.state import StateConflict, StateRun

DATE = dt.date(2026, 1, 8)
ODD = "exp 'o\"dd"  # an id with quotes and a space: a literal, never SQL


def _rows(spark, experiment_id: str, days: dict[int, float]):
    return spark.createDataFrame(
        [(experiment_id, d, v) for d, v in days.items()],
        "experiment_id string, _day int, value double",
    )


def _state(spark, root, experiment_id: str, table: str = "first_level") -> dict[int, float]:
    df = StateRun(spark, str(root), [experiment_id], "reader").read(table)
    return {} if df is None else {r["_day"]: r["value"] for r in df.collect()}


def _run(spark, root, run_id: str, days: dict[int, float], experiment_id: str = "e1") -> None:
    run = StateRun(spark, str(root), [experiment_id], run_id)
    run.append("first_level", _rows(spark, experiment_id, days), {experiment_id: days})
    run.commit(DATE, {experiment_id: "f1"})


def test_a_run_replaces_its_days_and_keeps_the_others(spark, tmp_path):
    _run(spark, tmp_path, "r1", {1: 10.0, 2: 20.0, 3: 30.0})
    _run(spark, tmp_path, "r2", {3: 300.0, 4: 400.0})  # day 3 recomputed (lookback)
    assert _state(spark, tmp_path, "e1") == {1: 10.0, 2: 20.0, 3: 300.0, 4: 400.0}
    current = StateRun(spark, str(tmp_path), ["e1"], "x").current["e1"]
    assert (current.seq, current.analysis_date, current.fingerprint) == (2, DATE, "f1")
    assert current.committed_by == "r2"
    # a recomputed day with no rows any more is replaced by nothing
    run = StateRun(spark, str(tmp_path), ["e1"], "r3")
    run.append("first_level", _rows(spark, "e1", {}), {"e1": [4]})
    run.commit(DATE, {"e1": "f1"})
    assert _state(spark, tmp_path, "e1") == {1: 10.0, 2: 20.0, 3: 300.0}


def test_a_run_that_fails_between_tables_leaves_the_state_and_its_rerun_matches(spark, tmp_path):
    _run(spark, tmp_path, "r1", {1: 10.0, 2: 20.0})
    run = StateRun(spark, str(tmp_path), ["e1"], "crashed")
    run.append("first_level", _rows(spark, "e1", {2: -1.0, 3: -1.0}), {"e1": [2, 3]})
    run.append("key_totals", _rows(spark, "e1", {2: -1.0}), {"e1": [2]})
    # the process dies here, before `commit`: nothing of it is current
    assert _state(spark, tmp_path, "e1") == {1: 10.0, 2: 20.0}
    assert _state(spark, tmp_path, "e1", "key_totals") == {}
    rerun = StateRun(spark, str(tmp_path), ["e1"], "rerun")
    rerun.append("first_level", _rows(spark, "e1", {2: 21.0, 3: 30.0}), {"e1": [2, 3]})
    rerun.append("key_totals", _rows(spark, "e1", {2: 2.0}), {"e1": [2]})
    rerun.commit(DATE, {"e1": "f1"})
    assert _state(spark, tmp_path, "e1") == {1: 10.0, 2: 21.0, 3: 30.0}
    assert _state(spark, tmp_path, "e1", "key_totals") == {2: 2.0}


def test_of_two_runs_of_one_experiment_only_one_commits(spark, tmp_path):
    _run(spark, tmp_path, "r1", {1: 10.0})
    a = StateRun(spark, str(tmp_path), ["e1"], "a")
    b = StateRun(spark, str(tmp_path), ["e1"], "b")  # both start from sequence 1
    a.append("first_level", _rows(spark, "e1", {2: 2.0}), {"e1": [2]})
    b.append("first_level", _rows(spark, "e1", {2: 99.0, 3: 99.0}), {"e1": [2, 3]})
    a.commit(DATE, {"e1": "f1"})
    with pytest.raises(StateConflict, match=r"experiment 'e1'.*another run committed"):
        b.commit(DATE, {"e1": "f1"})
    assert _state(spark, tmp_path, "e1") == {1: 10.0, 2: 2.0}


def test_two_runs_committing_at_once_one_wins(spark, tmp_path):
    _run(spark, tmp_path, "r1", {1: 10.0})
    runs = [StateRun(spark, str(tmp_path), ["e1"], name) for name in ("a", "b")]
    for i, run in enumerate(runs):
        run.append("first_level", _rows(spark, "e1", {2: float(i)}), {"e1": [2]})
    outcome: dict[str, str] = {}

    def commit(run: StateRun) -> None:
        try:
            run.commit(DATE, {"e1": "f1"})
            outcome[run.run_id] = "committed"
        except StateConflict:
            outcome[run.run_id] = "conflict"

    threads = [threading.Thread(target=commit, args=(run,)) for run in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcome.values()) == ["committed", "conflict"], outcome
    winner = next(name for name, o in outcome.items() if o == "committed")
    assert _state(spark, tmp_path, "e1") == {1: 10.0, 2: float(winner == "b")}


def test_experiments_are_independent_and_ids_are_literals(spark, tmp_path):
    _run(spark, tmp_path, "r1", {1: 1.0}, experiment_id=ODD)
    _run(spark, tmp_path, "r2", {1: 5.0, 2: 6.0}, experiment_id="e2")
    _run(spark, tmp_path, "r3", {1: 2.0}, experiment_id=ODD)
    assert _state(spark, tmp_path, ODD) == {1: 2.0}
    assert _state(spark, tmp_path, "e2") == {1: 5.0, 2: 6.0}
    assert _state(spark, tmp_path, "never") == {}


def test_added_rows_join_other_runs_rows_of_their_day_until_a_replace(spark, tmp_path):
    def add(run_id: str, days: dict[int, float], replace: bool = False) -> None:
        run = StateRun(spark, str(tmp_path), ["e1"], run_id)
        named = [1] if replace else list(days)
        run.append("units", _rows(spark, "e1", days), {"e1": named}, add=not replace)
        run.commit(DATE, {"e1": "f1"})

    def state() -> list[tuple[int, float]]:
        df = StateRun(spark, str(tmp_path), ["e1"], "reader").read("units")
        return [] if df is None else sorted((r["_day"], r["value"]) for r in df.collect())

    add("r1", {1: 1.0})
    add("r2", {1: 2.0, 2: 3.0})
    assert state() == [(1, 1.0), (1, 2.0), (2, 3.0)]
    add("r3", {}, replace=True)  # day 1 replaced by nothing: a full refresh
    assert state() == [(2, 3.0)]


def test_forgotten_days_have_no_rows_once_committed_and_unnamed_days_stay_invisible(
    spark, tmp_path
):
    _run(spark, tmp_path, "r1", {1: 1.0, 2: 2.0, 3: 3.0})
    run = StateRun(spark, str(tmp_path), ["e1"], "r2")
    # day 5's row is written but not named: it is not made current
    run.append("first_level", _rows(spark, "e1", {3: 30.0, 5: 50.0}), {"e1": [3]})
    run.forget("first_level", {"e1": [1]})
    pending = run.read("first_level", pending=True)
    assert sorted((r["_day"], r["value"]) for r in pending.collect()) == [(2, 2.0), (3, 30.0)]
    assert _state(spark, tmp_path, "e1") == {1: 1.0, 2: 2.0, 3: 3.0}  # not committed yet
    run.commit(DATE, {"e1": "f1"})
    assert _state(spark, tmp_path, "e1") == {2: 2.0, 3: 30.0}
