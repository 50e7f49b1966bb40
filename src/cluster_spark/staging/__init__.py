"""The Spark staging job: exposures × metric events → per-unit values → per-group
sufficient statistics in centered form, plus data-quality counts.

The pipeline, one module a step:

- `plan`: experiments grouped into passes; the cache of persisted frames.
- `exposures`: first exposure per (experiment, unit); exposure slots.
- `events`: one pass per metric source, the first aggregation level (unit × key).
- `policy`: the multi-unit policy (an analysis unit under several assignment units).
- `slices`: each unit's slice of every dimension (exposure columns, unit attributes).
- `units`: the per-unit contract (`tables.UNIT_VALUES_COLUMNS`).
- `options`: completed windows, bake, conversion rule, winsorization.
- `moments`: per-group moments and the analysis-unit moments (design effect).

Only (experiment, metric, variant, dimension, slice) rows leave Spark; aggregation uses
built-ins only.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from functools import partial, reduce

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from cluster_spark.config import Config
from cluster_spark.inputs import Inputs
from cluster_spark.kinds import KINDS
from cluster_spark.staging.moments import group_statistics
from cluster_spark.staging.options import winsorize
from cluster_spark.staging.plan import Cache, plans
from cluster_spark.staging.units import unit_values
from cluster_spark.tables import ANALYSIS_UNIT_COLUMNS, STAGING_COLUMNS, STAGING_STAT_COLUMNS

STAGING_TYPES = dict(STAGING_COLUMNS)


@dataclass
class Staged:
    """Lazy outputs of one staging run; `release()` frees what was persisted."""

    stats: DataFrame
    diagnostics: DataFrame
    cache: Cache = field(default_factory=Cache)

    def release(self) -> None:
        self.cache.release()


def stage(
    spark: SparkSession,
    config: Config,
    experiment_ids: list[str],
    analysis_date: dt.date,
    run_id: str,
) -> Staged:
    """The staged statistics (STAGING_COLUMNS) and diagnostics of these experiments, lazy.
    The caller releases the result (`Staged.release`); if staging itself fails, what it
    persisted so far is released before the error propagates."""
    cache = Cache(config.cache)
    try:
        return _stage(spark, config, experiment_ids, analysis_date, run_id, cache)
    except BaseException:
        cache.release()
        raise


def _stage(
    spark: SparkSession,
    config: Config,
    experiment_ids: list[str],
    analysis_date: dt.date,
    run_id: str,
    cache: Cache,
) -> Staged:
    stats, diags = [], []
    # Every input table, column, type and timestamp checked first, every problem at once.
    inputs = Inputs.checked(spark, config, experiment_ids)
    for plan in plans(config, experiment_ids, analysis_date, inputs):
        unit = unit_values(spark, plan, cache)
        values = winsorize(unit.values, plan)
        group = group_statistics(values, plan)
        moments = unit.analysis_unit_moments
        if moments is None:
            group = group.select("*", *[F.lit(None).alias(c) for c in ANALYSIS_UNIT_COLUMNS])
        else:
            # NULL-safe: the overall rows have NULL dimension and slice.
            keys = ["experiment_id", "metric", "variant", "dimension", "slice"]
            moments = moments.select(
                *[F.col(k).alias(f"_k_{k}") for k in keys], *ANALYSIS_UNIT_COLUMNS
            )
            on = [F.col(k).eqNullSafe(F.col(f"_k_{k}")) for k in keys]
            # group-level rows on both sides: the planner broadcasts them or not
            group = group.join(moments, on, "left").select(
                *[c for c in group.columns],
                *[F.when(~F.col("winsorized"), F.col(c)).alias(c) for c in ANALYSIS_UNIT_COLUMNS],
            )
        stats.append(group)
        diags.append(unit.diagnostics)
        for kind in sorted({KINDS[m.kind] for m in plan.metrics.values()}, key=lambda k: k.name):
            own = kind.stage_function()
            staged = own and own(spark, plan, unit.units, unit.offenders, cache)
            if staged is not None:
                stats.append(staged)
    meta = [F.lit(analysis_date).alias("analysis_date")]
    staged = reduce(partial(DataFrame.unionByName, allowMissingColumns=True), stats)
    given = set(staged.columns)  # a kind's columns are NULL on other kinds' rows
    return Staged(
        stats=staged.select(
            "experiment_id",
            *meta,
            "metric",
            "variant",
            "dimension",
            "slice",
            "winsorized",
            *[
                (F.col(c) if c in given else F.lit(None)).cast(STAGING_TYPES[c]).alias(c)
                for c in STAGING_STAT_COLUMNS
            ],
            F.lit(run_id).alias("run_id"),
        ),
        diagnostics=reduce(DataFrame.unionByName, diags).select(
            "experiment_id",
            *meta,
            "metric",
            "variant",
            "dimension",
            "slice",
            "check",
            "value",
            F.lit(run_id).alias("run_id"),
        ),
        cache=cache,
    )
