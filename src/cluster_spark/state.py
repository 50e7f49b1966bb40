"""State tables of the incremental refresh (#28): unit-level rows kept per experiment and
UTC event day, written by one run and made current by a small log, so a failed run leaves
the previous state in force and two runs of one experiment cannot both commit.

Layout under `root` (a directory of Delta tables, each partitioned by experiment):
- one table per kind of state (e.g. `first_level`, `key_totals`: `staging.increments`):
  its own columns plus `experiment_id`, `_day` (UTC days since 1970-01-01, NULL for rows
  of no day) and `_run` (the run that wrote the row), partitioned by experiment and run
  (a read opens only the current runs' files). Rows are appended, never updated in
  place: a run adds the days it recomputed.
- `log`: per (experiment, table, day) the run whose rows are current, with the
  experiment's commit sequence number, analysis date and config fingerprint. A run can
  also `forget` days: they have no current rows once it commits.

A run reads the current rows (`StateRun.read`), appends its days (`append`, naming the
days it replaces: nothing is read back), then
`commit`s: one Delta commit per experiment replaces that experiment's log rows. It is an
idempotent Delta write (`txnAppId` per experiment, `txnVersion` = the sequence number the
run started from + 1): when another run has committed that number first, Delta skips the
write (or refuses it as a concurrent transaction) and `commit` raises `StateConflict`, so
exactly one of two concurrent runs commits and the other's rows stay invisible. Rows no
log row points at (a failed run's, a losing run's, superseded days) are never read.

Unit-level rows are never collected: only the log (experiments × tables × days) reaches
the driver. Paths only for now; catalog tables are not supported here yet.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from cluster_spark.config import Location
from cluster_spark.errors import ClusterSparkError
from cluster_spark.io import CONFLICTS, existing_table, experiment_predicate, literal_frame

DAY = "_day"
RUN = "_run"

LOG_COLUMNS = [
    ("experiment_id", "string"),
    ("table", "string"),
    (DAY, "int"),
    (RUN, "string"),
    ("seq", "bigint"),
    ("analysis_date", "date"),
    ("fingerprint", "string"),
    ("committed_by", "string"),
]


class StateConflict(ClusterSparkError):
    """Another run committed the state of an experiment after this run read it."""


@dataclass(frozen=True)
class Current:
    """An experiment's committed state: its sequence number (0 before the first commit),
    analysis date and config fingerprint, and per table the runs whose rows of each day
    are current (one, or several for a table appended to with `add`)."""

    seq: int = 0
    analysis_date: dt.date | None = None
    fingerprint: str | None = None
    days: Mapping[str, Mapping[int | None, tuple[str, ...]]] | None = None
    committed_by: str | None = None

    def runs(self, table: str) -> Mapping[int | None, tuple[str, ...]]:
        return (self.days or {}).get(table, {})


class StateRun:
    """One run's view of the state under `root` for some experiments: what was current when
    it started, and what it appended. Not safe to share between threads."""

    def __init__(
        self, spark: SparkSession, root: str, experiment_ids: Iterable[str], run_id: str
    ) -> None:
        self.spark, self.root, self.run_id = spark, root.rstrip("/"), run_id
        self.ids = sorted(set(experiment_ids))
        self.current = self._read_log()
        self.appended: dict[str, dict[str, set[int | None]]] = {e: {} for e in self.ids}
        self.adding: set[str] = set()  # tables whose days this run adds to, not replaces
        self.forgotten: dict[str, dict[str, set[int | None]]] = {e: {} for e in self.ids}

    def _path(self, table: str) -> str:
        return os.path.join(self.root, table)

    def _read_log(self) -> dict[str, Current]:
        log = existing_table(self.spark, Location(path=self._path("log")))
        out = {e: Current() for e in self.ids}
        if log is None:
            return out
        rows = log.where(F.col("experiment_id").isin(self.ids)).collect()
        for e in self.ids:
            mine = [r for r in rows if r["experiment_id"] == e]
            if not mine:
                continue
            days: dict[str, dict[int | None, tuple[str, ...]]] = {}
            for r in mine:
                if r["table"] is not None:
                    by_day = days.setdefault(r["table"], {})
                    by_day[r[DAY]] = (*by_day.get(r[DAY], ()), r[RUN])
            first = mine[0]
            out[e] = Current(
                first["seq"],
                first["analysis_date"],
                first["fingerprint"],
                days,
                first["committed_by"],
            )
        return out

    def read(self, table: str, pending: bool = False) -> DataFrame | None:
        """The current rows of `table` for the run's experiments (lazy; without `_run`),
        or None when there are none; `pending`: as they will be once this run commits (its
        appended days in place of the committed ones)."""
        keys = []
        for e in self.ids:
            runs = self.days(e, table) if pending else self.current[e].runs(table)
            keys += [(e, day, run) for day, rs in runs.items() for run in rs]
        if not keys:
            return None
        df = existing_table(self.spark, Location(path=self._path(table)))
        if df is None:
            return None
        runs = sorted({run for _, _, run in keys})  # partition pruning: only their files
        df = df.where(F.col("experiment_id").isin(self.ids) & F.col(RUN).isin(runs))
        current = literal_frame(
            self.spark, keys, [("experiment_id", "string"), ("_k_day", "int"), (RUN, "string")]
        )  # a few rows per experiment and day: the join broadcasts them
        on = [
            df["experiment_id"] == current["experiment_id"],
            df[RUN] == current[RUN],
            df[DAY].eqNullSafe(current["_k_day"]),
        ]
        return df.join(current, on, "left_semi").drop(RUN)

    def append(
        self,
        table: str,
        rows: DataFrame,
        days: Mapping[str, Iterable[int | None]],
        add: bool = False,
    ) -> None:
        """Append `rows` (with `experiment_id` and `_day`, of the run's experiments) as this
        run's rows of `table`. Once committed they replace, per experiment, the `days` given:
        every day the rows have must be among them (rows of other days stay invisible), and
        a day without rows any more is replaced by nothing. With `add`, they join the rows
        other runs committed for those days instead (a run appends a table one way only).
        Invisible until `commit`."""
        if add:
            self.adding.add(table)
        rows.withColumn(RUN, F.lit(self.run_id)).write.format("delta").mode("append").option(
            "mergeSchema", "true"
        ).partitionBy("experiment_id", RUN).save(self._path(table))
        for e in self.ids:
            self.appended[e].setdefault(table, set()).update(days.get(e, ()))

    def forget(self, table: str, days: Mapping[str, Iterable[int | None]]) -> None:
        """Once committed, `table` has no current rows of these days (per experiment)."""
        for e in self.ids:
            self.forgotten[e].setdefault(table, set()).update(days.get(e, ()))

    def days(self, experiment_id: str, table: str) -> dict[int | None, tuple[str, ...]]:
        """Day → runs of `table` of an experiment once this run commits."""
        days = dict(self.current[experiment_id].runs(table))
        for day in self.appended[experiment_id].get(table, ()):
            kept = days.get(day, ()) if table in self.adding else ()
            days[day] = (*[r for r in kept if r != self.run_id], self.run_id)
        for day in self.forgotten[experiment_id].get(table, ()):
            days.pop(day, None)
        return days

    def commit(self, analysis_date: dt.date, fingerprints: Mapping[str, str]) -> None:
        """Make the appended days current, one Delta commit per experiment; raises
        StateConflict naming the experiment when another run committed it first."""
        for e in self.ids:
            before = self.current[e]
            days = {t: self.days(e, t) for t in {*(before.days or {}), *self.appended[e]}}
            seq = before.seq + 1
            meta = (seq, analysis_date, fingerprints[e], self.run_id)
            rows = [
                (e, t, day, run, *meta)
                for t, by_day in sorted(days.items())
                for day, runs in by_day.items()
                for run in runs
            ] or [(e, None, None, None, *meta)]
            self._write_log(e, rows, seq)
            now = self._read_log_of(e)
            if (now.seq, now.committed_by) != (seq, self.run_id):
                raise StateConflict(
                    f"state of experiment {e!r}: another run committed sequence {seq} first "
                    f"(this run {self.run_id!r} started from {before.seq}); nothing of this "
                    "run is current, rerun it"
                )
            self.current[e] = now

    def _write_log(self, experiment_id: str, rows: list[tuple], seq: int) -> None:
        df = literal_frame(self.spark, rows, LOG_COLUMNS).coalesce(1)
        writer = (
            df.write.format("delta")
            .mode("overwrite")
            .option("replaceWhere", experiment_predicate([experiment_id]))
            .option("txnAppId", f"cluster_spark.state.{experiment_id}")
            .option("txnVersion", str(seq))
            .partitionBy("experiment_id")
        )
        try:
            writer.save(self._path("log"))
        except CONFLICTS as err:
            raise StateConflict(
                f"state of experiment {experiment_id!r}: another run committed at the same "
                f"time ({type(err).__name__}); nothing of this run {self.run_id!r} is "
                "current, rerun it"
            ) from None

    def _read_log_of(self, experiment_id: str) -> Current:
        return StateRun(self.spark, self.root, [experiment_id], self.run_id).current[experiment_id]
