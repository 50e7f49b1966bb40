"""The notebook API (`import cluster_spark as cs`): load a config, analyse a date, get the
results as a Spark DataFrame and the report as HTML.

    config = cs.load_config("conf/x.yaml")                 # or a dict
    results = cs.analyze(spark, config, "2026-03-09")      # stage + reduce, Delta writes
    results.toPandas()                                     # one row per metric × variant
    displayHTML(cs.report(spark, config, "2026-03-09"))    # Databricks; IPython: HTML(...)

The session is the caller's (Databricks' `spark`, or `session.build_spark()`); nothing here
starts or configures one, and nothing uses the SparkContext, so Spark Connect works too.
Errors are `cluster_spark.errors` classes naming what is wrong (never a Spark traceback
for bad input); warnings that do not stop a run (a filter that matches no event, an
analysis capped at the experiment's end) are issued as `ClusterSparkWarning`.
"""

from __future__ import annotations

import copy
import datetime as dt
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cluster_spark import checks
from cluster_spark import config as _config
from cluster_spark.config import Config
from cluster_spark.errors import ClusterSparkWarning, ConfigError, InputError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

Row = dict[str, Any]


def load_config(
    path_or_dict: str | Path | Mapping[str, Any] | Config, root: str | Path | None = None
) -> Config:
    """A validated config from a YAML file or from a mapping of the same shape.

    `path_or_dict`: the path of a YAML file (README, "Configuration"; `conf/example.yaml`
    uses every option), or a dict as YAML would give (it is not modified). `root`: the base
    of relative table paths (default: the current directory); URIs (`s3://…`) and absolute
    paths are kept.

    Raises `ConfigError` naming the file (or `<dict>`), the key, the value and the rule, e.g.
    `<dict>: invalid configuration\\n  metrics.rpu.kind = 'avg': Input should be 'mean',
    'ratio' or 'quantile'`. No Spark work is done.
    """
    if isinstance(path_or_dict, Config):
        return path_or_dict
    if isinstance(path_or_dict, Mapping):
        root = root if root is not None else Path.cwd()
        return _config.parse_config(copy.deepcopy(dict(path_or_dict)), "<dict>", root)
    if isinstance(path_or_dict, str | Path):
        return _config.load_config(path_or_dict, root=root)
    raise ConfigError(f"load_config takes a YAML path or a dict, not {type(path_or_dict).__name__}")


def as_date(value: dt.date | str) -> dt.date:
    """A `date`, or an ISO date string (`"2026-03-09"`). Anything else (a datetime, whose
    day would depend on a time zone, or a string that is not YYYY-MM-DD) is a
    `ConfigError` naming the value."""
    if isinstance(value, dt.datetime):
        raise ConfigError(
            f"analysis_date {value!r} is a datetime: give a date (its .date()) or an ISO date "
            "string 'YYYY-MM-DD' (the analysis covers that whole day, UTC)"
        )
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise ConfigError(f"analysis_date {value!r} is not a date or an ISO date string (YYYY-MM-DD)")


def _experiment_ids(config: Config, experiments: str | Iterable[str] | None) -> list[str] | None:
    if experiments is None:
        return None
    ids = [experiments] if isinstance(experiments, str) else list(experiments)
    for e in ids:
        config.experiment(e)  # ConfigError naming an unknown id
    return ids or None


def _warn(messages: Iterable[str]) -> None:
    for message in messages:
        warnings.warn(message, ClusterSparkWarning, stacklevel=3)


def _ordered(df: DataFrame) -> DataFrame:
    """Results in the contract's columns, by experiment, the overall rows first, then by
    dimension and slice, metric, control first."""
    from pyspark.sql import functions as F

    from cluster_spark.tables import RESULT_COLUMNS

    return df.select(*[c for c, _ in RESULT_COLUMNS]).orderBy(
        "experiment_id",
        F.col("dimension").asc_nulls_first(),
        F.col("slice").asc_nulls_first(),
        "metric",
        F.col("variant") != F.col("control_variant"),
        "variant",
    )


def analyze(
    spark: SparkSession,
    config: Config | str | Path | Mapping[str, Any],
    analysis_date: dt.date | str,
    experiments: str | Iterable[str] | None = None,
) -> DataFrame:
    """Analyse the experiments on one date and return their results as a Spark DataFrame.

    Runs `pipeline.run`: Spark stages per-unit values and per-group moments (built-in
    aggregates only; only group-level rows reach the driver), the driver computes the
    delta-method comparisons, and the staging, diagnostics and results slices of these
    experiments and date are replaced in the Delta tables of `config.output` (a failed run
    leaves them as they were).

    Arguments: `config` as `load_config` takes it (or a `Config`); `analysis_date` a `date`
    or an ISO string: the analysis covers exposures and events up to the end of that day,
    24:00 UTC (capped at the experiment's `end`); `experiments` one id, several, or None
    for every experiment of the config.

    Returns the results slice read back from `config.output.results`: one row per
    experiment × metric × variant (control first), then the same per slice for
    experiments with `dimensions` (`dimension`, `slice` set; NULL on the overall rows:
    `.where("dimension IS NULL")` for the topline), the 85 columns of
    `tables.RESULT_COLUMNS` (README, "Output tables"): `n_units` assignment units, `mean`
    = ΣM/ΣD in the metric's own units, `effect_abs` in those units, `effect_rel` and its
    CI as fractions (0.05 = +5 %), `p_value`, `status`, `decision`, `recommendation` (on
    each treatment's overall rows: `ship` / `do not ship` / `keep running` / `invalid`,
    with `recommendation_reasons`), … Small: `.toPandas()` is safe.

    Raises (before any Spark work where possible): `ConfigError` (exit 78: a bad config, an
    unknown experiment, a bad date string), `UsageError` (exit 64: a date before an
    experiment's start), `InputError` (exit 66: a table missing or unreadable, a column
    missing or of the wrong type, naming table and column), `DataQualityError` (exit 65:
    `multi_unit_policy: fail`). Warns (`ClusterSparkWarning`) when the date is after an
    experiment's end and when a component's filter matches no event (naming experiment,
    metric, component, column and value; the counts are in the diagnostics table).
    """
    from cluster_spark import io, pipeline

    config = load_config(config)
    date = as_date(analysis_date)
    ids = _experiment_ids(config, experiments)
    notes = checks.date_notes(config, ids or [e.id for e in config.experiments], date)
    outcome = pipeline.run_outcome(spark, config, date, ids)
    _warn([*notes, *outcome.warnings(config)])
    chosen = ids or [e.id for e in config.experiments]
    return _ordered(io.read_slice(spark, config.output.results, chosen, date))


@dataclass(frozen=True)
class Reported:
    """One experiment's rows of the results and diagnostics slices of one date, the
    overall results rows of every date up to it (`history`, for the timeline) and its
    metrics' descriptions."""

    experiment_id: str
    results: list[Row]
    diagnostics: list[Row]
    history: list[Row] = field(default_factory=list)
    descriptions: dict[str, str] = field(default_factory=dict)

    @property
    def report_args(self) -> tuple:
        """(experiment id, results, diagnostics, history, descriptions), as
        `reporting.render_reports` takes them."""
        return (self.experiment_id, self.results, self.diagnostics, self.history, self.descriptions)


#: The results columns the timeline reads from earlier dates.
HISTORY_COLUMNS = (
    "experiment_id",
    "analysis_date",
    "metric",
    "variant",
    "control_variant",
    "mean",
    "effect_rel",
    "effect_rel_ci_low",
    "effect_rel_ci_high",
    "effect_abs_cs_low",
    "effect_abs_cs_high",
    "alpha",
)


def read_history(
    spark: SparkSession, config: Config, date: dt.date, experiment_ids: list[str]
) -> list[Row]:
    """The overall results rows of these experiments on every analysis date up to `date`
    (group-level: metrics × variants × dates), `HISTORY_COLUMNS` only."""
    from pyspark.sql import functions as F

    from cluster_spark import io

    df = io.read_table(spark, config.output.results)
    present = [c for c in HISTORY_COLUMNS if c in df.columns]
    rows = df.where(
        F.col("experiment_id").isin(experiment_ids) & (F.col("analysis_date") <= F.lit(date))
    )
    if "dimension" in df.columns:
        rows = rows.where(F.col("dimension").isNull())
    return [r.asDict() for r in rows.select(*present).collect()]


def read_reported(
    spark: SparkSession,
    config: Config,
    date: dt.date,
    experiment_ids: list[str] | None,
    diagnostics: bool = True,
) -> tuple[list[Reported], list[str]]:
    """The results (and diagnostics) slices of these experiments (all by default) on
    `date`, collected (group-level rows), and the ids without results rows.

    Raises `InputError` when the results table cannot be read, when none of the
    experiments has results on that date, or when an experiment asked for by id has none.
    """
    from cluster_spark import io
    from cluster_spark.reporting import result_order

    chosen = experiment_ids or [e.id for e in config.experiments]
    out = config.output
    with io.input_errors(config.tables()):
        results = [r.asDict() for r in io.read_slice(spark, out.results, chosen, date).collect()]
        diags = (
            [d.asDict() for d in io.read_slice(spark, out.diagnostics, chosen, date).collect()]
            if diagnostics
            else []
        )
    results.sort(key=result_order)
    found = {r["experiment_id"] for r in results}
    missing = [e for e in chosen if e not in found]
    if missing and (experiment_ids or len(missing) == len(chosen)):
        names = ", ".join(f"'{e}'" for e in missing)
        raise InputError(
            f"no results for experiment {names} on {date} in {out.results}: run the analysis "
            "for that date first (cluster-spark run, or cs.analyze)"
        )
    history = []
    if diagnostics:  # a report: the timeline too
        with io.input_errors(config.tables()):
            history = read_history(spark, config, date, [e for e in chosen if e in found])
    reported = [
        Reported(
            e,
            [r for r in results if r["experiment_id"] == e],
            [d for d in diags if d["experiment_id"] == e],
            [h for h in history if h["experiment_id"] == e],
            descriptions(config, e),
        )
        for e in chosen
        if e in found
    ]
    return reported, missing


def descriptions(config: Config, experiment_id: str) -> dict[str, str]:
    """Metric → its `description` from the config, for the experiment's metrics that have one."""
    return {
        m: config.metrics[m].description
        for m in config.experiment(experiment_id).metrics
        if config.metrics[m].description
    }


def report(
    spark: SparkSession,
    config: Config | str | Path | Mapping[str, Any],
    analysis_date: dt.date | str,
    experiments: str | Iterable[str] | None = None,
) -> str:
    """The HTML report of the experiments on one date, as a string: for each, the SRM
    check, a results table per metric, a forest plot of relative lifts and the
    diagnostics (filters that match nothing are marked). Self-contained (inline CSS and
    SVG, no JavaScript): `displayHTML(...)` on Databricks, `IPython.display.HTML(...)`
    elsewhere, or write it to a `.html` file.

    Reads the results and diagnostics slices a previous `analyze` (or `cluster-spark run`)
    wrote to `config.output`; runs nothing. Arguments as `analyze`'s. Without
    `experiments`, experiments without results on that date are left out with a
    `ClusterSparkWarning`. Raises `ConfigError`/`UsageError` as `analyze`, and
    `InputError` when there are no results to report (naming the experiments, date and
    table).
    """
    from cluster_spark.reporting import render_reports

    config = load_config(config)
    date = as_date(analysis_date)
    ids = _experiment_ids(config, experiments)
    checks.date_notes(config, ids or [e.id for e in config.experiments], date)
    reported, missing = read_reported(spark, config, date, ids)
    _warn(f"no results for experiment '{e}' on {date}: left out of the report" for e in missing)
    return render_reports(date, [r.report_args for r in reported])
