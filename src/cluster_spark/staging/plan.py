"""What one staging pass works on: the plan (experiments of one assignment unit and
analysis unit, their metrics and distinct components), the cache of persisted frames, the
reserved column names and the diagnostics row helper."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from cluster_spark.config import Component, Config, Experiment, Metric
from cluster_spark.io import literal_frame

if TYPE_CHECKING:
    from cluster_spark.inputs import Inputs

UNIT = "_unit"


TS = "_ts"


SUB = "_sub"  # the analysis-unit id (e.g. user_id), where a source has it


@dataclass(frozen=True)
class Plan:
    """The experiments of one assignment-unit type, analysed together in one pass.
    `inputs`: the run's input tables, read and checked once (`inputs.Inputs`); without
    them, each step reads and checks what it needs (`inputs.plan_inputs`)."""

    config: Config
    unit_type: str
    experiments: tuple[Experiment, ...]
    analysis_date: dt.date
    inputs: Inputs | None = field(default=None, compare=False, repr=False)

    @property
    def metrics(self) -> dict[str, Metric]:
        names = sorted({m for e in self.experiments for m in e.metrics})
        return {n: self.config.metrics[n] for n in names}

    @property
    def sources(self) -> list[str]:
        return sorted({s for m in self.metrics.values() for s in self.config.metric_sources(m)})

    @property
    def daily_sources(self) -> frozenset[str]:
        """The plan's sources read by whole days (`Source.timestamp_as_date`)."""
        return frozenset(s for s in self.sources if self.config.sources[s].timestamp_as_date)

    @property
    def cuped(self) -> bool:
        """Whether any experiment of the plan uses CUPED (pre-period values are staged)."""
        return any(e.cuped_lookback_days for e in self.experiments)

    @property
    def dimensions(self) -> dict[str, str]:
        """Dimension → where its values come from (`exposures` or a `unit_attributes`
        name), over the plan's experiments (one assignment unit: one place each); slice
        dimensions and attribute covariates (`Experiment.loaded_dimensions`)."""
        return {
            dim: self.config.dimension_sources(e, dim)[0]
            for e in self.experiments
            for dim in e.loaded_dimensions
        }

    @property
    def exposure_dimensions(self) -> list[str]:
        """The plan's dimensions that are columns of the exposure rows, sorted."""
        return sorted(d for d, where in self.dimensions.items() if where == "exposures")

    @property
    def analysis_unit(self) -> str | None:
        """The analysis-unit id type the plan's experiments share (`plans` groups by it)."""
        return self.experiments[0].analysis_unit

    @cached_property
    def components(self) -> dict[tuple[str, str], tuple[str, Component, float]]:
        """(metric, role) → (column, component, bake hours) of each event component.
        Components equal but for winsorization (applied per unit later) share one column,
        so every distinct aggregation is computed once."""
        columns: dict[str, str] = {}
        out = {}
        for name, metric in self.metrics.items():
            for role, comp in metric.components.items():
                if comp.agg == "unit_count":
                    continue
                key = json.dumps(
                    [comp.model_dump(mode="json", exclude={"winsorize"}), metric.bake_hours],
                    sort_keys=True,
                )
                column = columns.setdefault(key, f"_c{len(columns)}")
                out[(name, role)] = (column, comp, metric.bake_hours)
        return out


class Cache:
    """The frames one staging run persists, released together: after the run's writes,
    or as soon as staging itself fails.

    `mode` is the config's `cache`: `memory` persists (Spark's MEMORY_AND_DISK), so the
    frames read twice (the first aggregation level, the per-unit frame) are computed once;
    `none` persists nothing and those frames are recomputed by each reader, for platforms
    that forbid `persist` (Databricks serverless). `make bench` measures what it costs."""

    def __init__(self, mode: str = "memory") -> None:
        self.mode = mode
        self.frames: list[DataFrame] = []

    def persist(self, df: DataFrame) -> DataFrame:
        if self.mode == "none":
            return df
        df = df.persist()
        self.frames.append(df)
        return df

    def release(self) -> None:
        for df in self.frames:
            df.unpersist()
        self.frames.clear()


def diag(
    df: DataFrame,
    check: str | Column,
    value: Column,
    metric=None,
    variant=None,
    segment: bool = False,
) -> DataFrame:
    """Diagnostics rows (`tables.DIAGNOSTICS_COLUMNS` but the run's columns) of `df`'s
    experiments; `check` a name or a string column; `segment`: `df` has the `dimension`
    and `slice` columns of slice rows."""
    null = F.lit(None).cast("string")
    return df.select(
        "experiment_id",
        F.lit(metric).cast("string").alias("metric"),
        (variant if variant is not None else F.lit(None)).cast("string").alias("variant"),
        (F.col("dimension") if segment else null).alias("dimension"),
        (F.col("slice") if segment else null).alias("slice"),
        (F.lit(check) if isinstance(check, str) else check).alias("check"),
        value.cast("bigint").alias("value"),
    )


#: A per-experiment check: (check name, aggregate over an experiment's rows, the one
#: experiment it is for or None for each).
Check = tuple[str, Column, str | None]


def per_experiment_diags(df: DataFrame, checks: list[Check]) -> DataFrame | None:
    """Diagnostics rows of several checks over `df` from one aggregation by experiment (one
    shuffle however many checks): a row per check for each experiment that has rows in
    `df`, where a check for one experiment gives that experiment's row only; None without
    checks."""
    if not checks:
        return None
    sums = df.groupBy("experiment_id").agg(
        *[value.alias(f"_c{i}") for i, (_, value, _) in enumerate(checks)]
    )
    entries = F.array(
        *[
            F.struct(
                F.lit(check).alias("check"),
                F.col(f"_c{i}").cast("bigint").alias("value"),
                (F.lit(True) if only is None else F.col("experiment_id") == only).alias("keep"),
            )
            for i, (check, _, only) in enumerate(checks)
        ]
    )
    rows = sums.select("experiment_id", F.explode(entries).alias("_d")).where(F.col("_d.keep"))
    return diag(rows, F.col("_d.check"), F.col("_d.value"))


def for_each_experiment(df: DataFrame, ids: list[str]) -> DataFrame:
    """Each row of `df` once per experiment id, in an `experiment_id` column: a cross join
    with the ids as literals (no join, so no broadcast job)."""
    each = F.explode(F.array(*[F.lit(i) for i in ids]).cast("array<string>"))
    return df.select("*", each.alias("experiment_id"))


def experiment_ids(spark: SparkSession, plan: Plan) -> DataFrame:
    return literal_frame(spark, [(e.id,) for e in plan.experiments], [("experiment_id", "string")])


def plans(
    config: Config, experiment_ids: list[str], analysis_date: dt.date, inputs: Inputs | None = None
) -> list[Plan]:
    """Group the chosen experiments by (assignment unit, analysis unit): one pass per group,
    so an experiment's analysis-unit rules never apply to another's."""
    chosen = [config.experiment(e) for e in experiment_ids]
    groups: dict[tuple[str, str], list[Experiment]] = {}
    for e in chosen:
        groups.setdefault((e.assignment_unit, e.analysis_unit or ""), []).append(e)
    return [
        Plan(config, unit_type, tuple(exps), analysis_date, inputs)
        for (unit_type, _), exps in sorted(groups.items())
    ]
