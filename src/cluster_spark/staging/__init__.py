"""The Spark staging job: exposures × metric events → per-unit values → per-group
sufficient statistics in centered form, plus data-quality counts.

The pipeline, one module a step:

- `plan`: experiments grouped into passes; the cache of persisted frames.
- `exposures`: first exposure per (experiment, unit); exposure slots.
- `slices`: each unit's slice of every dimension (exposure columns, unit attributes).
- `events`: one pass per metric source, the first aggregation level (unit × key).
- `policy`: the multi-unit policy (an analysis unit under several assignment units).
- `covariates`: the regression adjustment's covariates as per-unit columns.
- `units`: the per-unit contract (`tables.UNIT_VALUES_COLUMNS`).
- `options`: completed windows, bake, conversion rule, winsorization.
- `moments`: per-group moments and the analysis-unit moments (design effect).
- then each kind with its own stage (`kinds`, e.g. `quantile`).

`stage_plan` runs them in this order for one pass; each step is a function of the frames
before it (see `frames` for the columns of each).

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
from cluster_spark.staging.covariates import attribute_levels, missing_numbers
from cluster_spark.staging.events import SourceLevel, source_level
from cluster_spark.staging.exposures import exposed_units
from cluster_spark.staging.moments import analysis_unit_moments, group_statistics
from cluster_spark.staging.options import winsorize
from cluster_spark.staging.plan import UNIT, Cache, Plan, per_experiment_diags, plans
from cluster_spark.staging.policy import multi_unit_offenders
from cluster_spark.staging.refresh import Refresh, plan_refresh
from cluster_spark.staging.slices import unit_slices
from cluster_spark.staging.units import (
    PerUnit,
    analysis_unit_counts,
    events_before_exposure,
    per_unit_frame,
    unit_value_rows,
)
from cluster_spark.tables import ANALYSIS_UNIT_COLUMNS, STAGING_COLUMNS, STAGING_STAT_COLUMNS

STAGING_TYPES = dict(STAGING_COLUMNS)


@dataclass
class Staged:
    """Lazy outputs of one staging run; `release()` frees what was persisted. `refreshes`:
    the passes' incremental steps, committed by the caller after its writes."""

    stats: DataFrame
    diagnostics: DataFrame
    cache: Cache = field(default_factory=Cache)
    refreshes: list[Refresh] = field(default_factory=list)

    def release(self) -> None:
        self.cache.release()


def stage(
    spark: SparkSession,
    config: Config,
    experiment_ids: list[str],
    analysis_date: dt.date,
    run_id: str,
    full_refresh: bool = False,
) -> Staged:
    """The staged statistics (STAGING_COLUMNS) and diagnostics of these experiments, lazy.
    The caller releases the result (`Staged.release`); if staging itself fails, what it
    persisted so far is released before the error propagates. With `incremental` in the
    config, each pass reads the events of its window only and appends state
    (`refresh.plan_refresh`; `full_refresh` reads every event); the caller commits
    `Staged.refreshes` after writing."""
    cache = Cache(config.cache)
    try:
        return _stage(spark, config, experiment_ids, analysis_date, run_id, cache, full_refresh)
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
    full_refresh: bool,
) -> Staged:
    stats, diags, refreshes = [], [], []
    # Every input table, column, type and timestamp checked first, every problem at once.
    inputs = Inputs.checked(spark, config, experiment_ids)
    for plan in plans(config, experiment_ids, analysis_date, inputs):
        refresh = plan_refresh(spark, config, plan, run_id, full_refresh)
        one = stage_plan(spark, plan, cache, refresh)
        stats += one.stats
        diags.append(one.diagnostics)
        refreshes += [refresh] if refresh is not None else []
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
        refreshes=refreshes,
    )


@dataclass
class Pass:
    """The frames of one staging pass, lazy, one attribute a step (their columns:
    `staging.frames`). `stats`: the staged frames, the moments kinds' first, then one per
    kind with its own stage and rows; `diagnostics`: every step's findings."""

    units: DataFrame
    slices: DataFrame | None
    levels: list[SourceLevel]
    offenders: DataFrame | None
    per_unit: PerUnit
    values: DataFrame
    winsorized: DataFrame
    stats: list[DataFrame]
    diagnostics: DataFrame


def stage_plan(
    spark: SparkSession, plan: Plan, cache: Cache, refresh: Refresh | None = None
) -> Pass:
    """One pass, its steps in the order of this module's list. Lazy but for the few
    group-level rows some steps collect (slots, winsorization caps, a quantile's first
    pass); what it persists is in `cache`. `refresh`: the incremental step that gives the
    sources' first levels (it writes state rows as it goes)."""
    units, exposure_diags = exposed_units(spark, plan, cache)
    if refresh is not None:  # units whose exposure changed make it a full refresh
        refresh.check_units(plan, units)
    slices, slice_diags = unit_slices(spark, plan, units, cache)
    levels = [source_level(spark, plan, s, units, cache, refresh) for s in plan.sources]
    offenders, multi = _multi_unit_policy(plan, levels)
    sliced = units if slices is None else units.join(slices, ["experiment_id", UNIT], "left")
    per_unit = per_unit_frame(plan, sliced, levels, offenders, cache)
    covariates = attribute_levels(plan, per_unit.wide)
    values = unit_value_rows(plan, per_unit, slices is not None, covariates)
    diags = [exposure_diags, slice_diags, multi, *[level.diagnostics for level in levels]]
    diags.append(refresh and refresh.diagnostics(plan, spark))
    # per-experiment counts over the per-unit frame, one aggregation for all of them
    checks = [*events_before_exposure(plan), *missing_numbers(plan)]
    diags.append(per_experiment_diags(per_unit.wide, checks))
    if per_unit.keyed:  # a source has the analysis unit: count the active ones
        diags.append(analysis_unit_counts(plan, values))
    winsorized = winsorize(values.drop("_n_subs"), plan)
    moments = analysis_unit_moments(plan, per_unit.per_analysis_unit, sliced)
    group = group_statistics(winsorized, plan, covariates.width)
    stats = [_with_analysis_unit_moments(group, moments)]
    for kind in sorted({KINDS[m.kind] for m in plan.metrics.values()}, key=lambda k: k.name):
        own = kind.stage_function()
        staged = own and own(spark, plan, sliced, offenders, cache)
        if staged is not None:
            stats.append(staged)
    diagnostics = reduce(DataFrame.unionByName, [d for d in diags if d is not None])
    return Pass(sliced, slices, levels, offenders, per_unit, values, winsorized, stats, diagnostics)


def _multi_unit_policy(
    plan: Plan, levels: list[SourceLevel]
) -> tuple[DataFrame | None, DataFrame | None]:
    """(Offending (experiment, analysis unit) pairs, diagnostics) of the multi-unit policy
    over every source keyed by the analysis unit; (None, None) without one."""
    keyed = [level for level in levels if level.by_analysis_unit]
    if not keyed:
        return None, None
    where = "; ".join(level.where for level in keyed)
    return multi_unit_offenders([level.rows for level in keyed], plan, where)


def _with_analysis_unit_moments(group: DataFrame, moments: DataFrame | None) -> DataFrame:
    """The group rows with the analysis-unit moments (`ANALYSIS_UNIT_COLUMNS`) of their
    segment, NULL on winsorized rows and without moments."""
    if moments is None:
        return group.select("*", *[F.lit(None).alias(c) for c in ANALYSIS_UNIT_COLUMNS])
    # NULL-safe: the overall rows have NULL dimension and slice.
    keys = ["experiment_id", "metric", "variant", "dimension", "slice"]
    moments = moments.select(*[F.col(k).alias(f"_k_{k}") for k in keys], *ANALYSIS_UNIT_COLUMNS)
    on = [F.col(k).eqNullSafe(F.col(f"_k_{k}")) for k in keys]
    # group-level rows on both sides: the planner broadcasts them or not
    return group.join(moments, on, "left").select(
        *[c for c in group.columns],
        *[F.when(~F.col("winsorized"), F.col(c)).alias(c) for c in ANALYSIS_UNIT_COLUMNS],
    )
