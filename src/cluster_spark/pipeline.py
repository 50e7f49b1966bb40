"""Stage → reduce → write, for a set of experiments and one analysis date."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cluster_spark import checks, io, reducer, staging, tables
from cluster_spark.config import Config
from cluster_spark.errors import ConfigError, InputError
from cluster_spark.staging.events import events_in_period
from cluster_spark.staging.refresh import Refresh


def new_run_id() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:8]


@dataclass(frozen=True)
class Outcome:
    """What one `stage_outcome` or `run_outcome` call produced, already collected: group-level
    rows only (a few per metric and variant), as plain dicts."""

    run_id: str
    #: Rows of the results table (`tables.RESULT_COLUMNS`); empty when only staged.
    results: list[dict[str, Any]]
    #: Rows of the diagnostics table (`tables.DIAGNOSTICS_COLUMNS`).
    diagnostics: list[dict[str, Any]]

    def warnings(self, config: Config) -> list[str]:
        """The warnings of the diagnostics rows (`checks.warnings`)."""
        return checks.warnings(config, self.diagnostics)


def _chosen(config: Config, experiment_ids: list[str] | None, analysis_date: dt.date) -> list[str]:
    """The experiment ids to work on (all of the config's by default). Raises ConfigError
    for an unknown or repeated id, UsageError for a date before an experiment's start."""
    ids = experiment_ids or [e.id for e in config.experiments]
    for e in ids:
        config.experiment(e)  # raises ConfigError naming the unknown id
    if len(set(ids)) != len(ids):
        raise ConfigError(f"experiment ids given twice: {ids}")
    checks.date_notes(config, ids, analysis_date)
    return ids


def _frame(
    spark: SparkSession, rows: list[dict[str, Any]], columns: list[tuple[str, str]]
) -> DataFrame:
    """Collected group-level rows (hundreds at most) as a frame to write. Not
    `io.literal_frame`: a literal per cell makes plans of thousands of expressions that
    take Spark tens of seconds to optimize."""
    schema = ", ".join(f"`{name}` {kind}" for name, kind in columns)
    return spark.createDataFrame([tuple(r[c] for c, _ in columns) for r in rows], schema)


def _collect_together(
    stats: DataFrame, diagnostics: DataFrame
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows of both frames, from one Spark action (`cache: none`): a union of their
    rows as two struct columns. Without persisted frames, two `collect`s would compute
    their common upstream (the events' first aggregation level, the per-unit frame) twice;
    in one query, identical shuffles are reused. `bench/costs.py` at 4M events: staging
    with `cache: none` took 92.1 s with two collects and 76.2 s with one (`cache: memory`:
    32.0 s); with `cache: memory` the union was not faster and added Spark jobs, so it is
    used for `none` only."""
    s_type = T.StructType(stats.schema.fields)
    d_type = T.StructType(diagnostics.schema.fields)
    both = stats.select(
        F.struct(*stats.columns).alias("s"), F.lit(None).cast(d_type).alias("d")
    ).unionByName(
        diagnostics.select(
            F.lit(None).cast(s_type).alias("s"), F.struct(*diagnostics.columns).alias("d")
        )
    )
    rows = both.collect()
    return (
        [r.s.asDict() for r in rows if r.s is not None],
        [r.d.asDict() for r in rows if r.d is not None],
    )


def _stage(
    spark: SparkSession,
    config: Config,
    analysis_date: dt.date,
    ids: list[str],
    run_id: str,
    writes: io.SliceWrites | None,
    full_refresh: bool = False,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[Refresh]]:
    """Staged rows and diagnostics rows, collected once (they are group-level: a few per
    metric and variant) and written from the driver, so `run` reduces them without reading
    the tables back and the persisted per-unit frames are released before any write."""
    with io.input_errors(config.tables()):
        staged = staging.stage(spark, config, ids, analysis_date, run_id, full_refresh)
        try:
            if config.cache == "none":
                stats, diags = _collect_together(staged.stats, staged.diagnostics)
            else:  # both read the persisted frames: two small queries are cheaper
                stats = [r.asDict() for r in staged.stats.collect()]
                diags = [r.asDict() for r in staged.diagnostics.collect()]
        finally:
            staged.release()
        diags += _events_in_period(spark, config, analysis_date, diags)
        with writes or io.SliceWrites(spark, ids, analysis_date) as w:
            out = config.output
            w.write(_frame(spark, stats, tables.STAGING_COLUMNS), out.staging)
            w.write(_frame(spark, diags, tables.DIAGNOSTICS_COLUMNS), out.diagnostics)
    return stats, diags, staged.refreshes


def _events_in_period(
    spark: SparkSession, config: Config, analysis_date: dt.date, diags: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """`events_in_period:<source>` diagnostics rows for each experiment and source none of
    whose events reached an exposed unit (`events_of_units:<source>` 0): how many events
    the source has in the experiment's period (`staging.events.events_in_period`; a query
    only in that rare case). More than 0 means its ids do not join the exposures."""
    prefix = f"{checks.EVENTS_OF_UNITS}:"
    out = []
    for d in diags:
        if d["check"].startswith(prefix) and d["dimension"] is None and d["value"] == 0:
            source = d["check"][len(prefix) :]
            experiment = config.experiment(d["experiment_id"])
            n = events_in_period(spark, config, experiment, source, analysis_date)
            out.append(d | {"check": f"{checks.EVENTS_IN_PERIOD}:{source}", "value": n})
    return out


def stage_outcome(
    spark: SparkSession,
    config: Config,
    analysis_date: dt.date,
    experiment_ids: list[str] | None = None,
    run_id: str | None = None,
    writes: io.SliceWrites | None = None,
    full_refresh: bool = False,
) -> Outcome:
    """Compute and write the staged statistics and diagnostics; returns the run id and the
    diagnostics rows. `writes`: the run's `io.SliceWrites` when this is one step of a run;
    `full_refresh`: with `incremental`, read every event and rebuild the state."""
    ids = _chosen(config, experiment_ids, analysis_date)
    run_id = run_id or new_run_id()
    with writes or io.SliceWrites(spark, ids, analysis_date) as w:
        _, diags, refreshes = _stage(spark, config, analysis_date, ids, run_id, w, full_refresh)
        _commit(refreshes, analysis_date)  # the state last: a failure undoes the slices
    return Outcome(run_id, [], diags)


def stage(
    spark: SparkSession,
    config: Config,
    analysis_date: dt.date,
    experiment_ids: list[str] | None = None,
    run_id: str | None = None,
    writes: io.SliceWrites | None = None,
    full_refresh: bool = False,
) -> str:
    """Compute and write the staged statistics and diagnostics; returns the run id.
    `writes`: the run's `io.SliceWrites` when this is one step of a run (`run`)."""
    args = (run_id, writes, full_refresh)
    return stage_outcome(spark, config, analysis_date, experiment_ids, *args).run_id


def _reduce(
    spark: SparkSession,
    config: Config,
    analysis_date: dt.date,
    ids: list[str],
    staged: list[dict[str, Any]],
    diags: list[dict[str, Any]],
    run_id: str | None,
    writes: io.SliceWrites | None,
) -> list[dict[str, Any]]:
    results = []
    for exp_id in ids:
        rows = [r for r in staged if r["experiment_id"] == exp_id]
        exp_diags = [d for d in diags if d["experiment_id"] == exp_id]
        if not rows and not exp_diags:
            # Not staged at all (staging always writes diagnostics): replacing the results
            # slice with nothing would lose it.
            raise InputError(
                f"nothing staged for experiment '{exp_id}' on {analysis_date} in "
                f"{config.output.staging}: run `stage` for that date first"
            )
        results += reducer.reduce_experiment(
            rows,
            config.experiment(exp_id),
            analysis_date=analysis_date,
            run_id=run_id or (rows[0]["run_id"] if rows else new_run_id()),
            diagnostics=exp_diags,
        )
    df = _frame(spark, results, tables.RESULT_COLUMNS)
    with io.input_errors(config.tables()), writes or io.SliceWrites(spark, ids, analysis_date) as w:
        w.write(df, config.output.results)
    return results


def reduce(
    spark: SparkSession,
    config: Config,
    analysis_date: dt.date,
    experiment_ids: list[str] | None = None,
    run_id: str | None = None,
    writes: io.SliceWrites | None = None,
) -> list[dict[str, Any]]:
    """Read the staged slice, compute comparisons on the driver, write the results slice."""
    ids = _chosen(config, experiment_ids, analysis_date)
    with io.input_errors(config.tables()):
        staged = io.read_slice(spark, config.output.staging, ids, analysis_date).collect()
        diags = io.read_slice(spark, config.output.diagnostics, ids, analysis_date).collect()
    return _reduce(
        spark,
        config,
        analysis_date,
        ids,
        [r.asDict() for r in staged],
        [d.asDict() for d in diags],
        run_id,
        writes,
    )


def run_outcome(
    spark: SparkSession,
    config: Config,
    analysis_date: dt.date,
    experiment_ids: list[str] | None = None,
    full_refresh: bool = False,
) -> Outcome:
    """Stage and reduce in one go (same run id in every table): the staged rows are reduced
    as collected, not read back. If any step fails, the slices already written are put
    back as they were (`io.SliceWrites`). Returns the results and diagnostics rows.
    `full_refresh`: with `incremental`, read every event and rebuild the state."""
    ids = _chosen(config, experiment_ids, analysis_date)
    with io.SliceWrites(spark, ids, analysis_date) as writes:
        run_id = new_run_id()
        args = (run_id, writes, full_refresh)
        staged, diags, refreshes = _stage(spark, config, analysis_date, ids, *args)
        results = _reduce(spark, config, analysis_date, ids, staged, diags, run_id, writes)
        _commit(refreshes, analysis_date)  # the state last: a failure undoes the slices
    return Outcome(run_id, results, diags)


def _commit(refreshes: list[Refresh], analysis_date: dt.date) -> None:
    """Commit each pass's incremental state (`staging.refresh`), after the run's writes.
    A pass is one commit per experiment: they are not atomic together, but a state left
    at another date than its pass's other experiments' is refreshed fully by the next run."""
    for refresh in refreshes:
        refresh.commit(analysis_date)


def run(
    spark: SparkSession,
    config: Config,
    analysis_date: dt.date,
    experiment_ids: list[str] | None = None,
    full_refresh: bool = False,
) -> list[dict[str, Any]]:
    """`run_outcome`'s results rows (`tables.RESULT_COLUMNS` as dicts)."""
    return run_outcome(spark, config, analysis_date, experiment_ids, full_refresh).results
