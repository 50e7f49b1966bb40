"""Metric kinds, declared once: how each kind is staged and how the reducer reads it.

A kind has one module on each side of the Spark/driver seam (tea-tasting's two steps:
declare the aggregates, then analyse them; gbstats' frozen statistics):

- `mean` and `ratio` (with the conversion rule and CUPED) are the **moments** kinds: the
  staging pass turns each exposed unit into (M, D[, X, Y]) (`staging.units`) and stages
  mergeable centered moments (`staging.moments`); the reducer merges them with Chan et
  al.'s formulas and compares them by the delta method (`stats.ratio`, `stats.cuped`).
- `quantile` stages its own rows (`staging.quantile`, two aggregations over the values)
  that do not merge; the reducer reads them with `stats.quantile`.

Adding a kind: its config keys (`config.Metric`), a staging module with `stage(spark,
plan, units, offenders, cache)`, a statistics module with `from_row`, `compare` and
`fieller`, and its entry here (its staged columns join the staging table's contract
from here). No pyspark is imported here: the reducer and `tables` import this.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Kind:
    """`stats`: the module of its statistics, whose group type has `from_row` (a staged
    row → the group's statistic) and, for a non-mergeable kind, whose `compare` and
    `fieller` the reducer calls. `mergeable`: its statistic merges with `+` across partial
    rows (partitions, days); a non-mergeable kind has one staged row per group. `stage`:
    the module of its own Spark stage (`module.stage(spark, plan, units, offenders,
    cache)`), None for the moments kinds, which the moments pass stages. `columns`: the
    staged double columns only its rows fill (in `tables.STAGING_COLUMNS`, NULL on other
    rows); the first is non-null exactly on its rows."""

    name: str
    stats: str
    mergeable: bool
    stage: str | None = None
    columns: tuple[str, ...] = ()

    def stage_function(self) -> Callable[..., Any] | None:
        return None if self.stage is None else importlib.import_module(self.stage).stage

    def stats_module(self) -> Any:
        return importlib.import_module(self.stats)


KINDS: dict[str, Kind] = {
    "mean": Kind("mean", stats="cluster_spark.stats.cuped", mergeable=True),
    "ratio": Kind("ratio", stats="cluster_spark.stats.cuped", mergeable=True),
    "quantile": Kind(
        "quantile",
        stats="cluster_spark.stats.quantile",
        mergeable=False,
        stage="cluster_spark.staging.quantile",
        # p, the sample quantile Q̂(p) and the sample quantiles at the outer probabilities
        columns=("quantile_p", "quantile_estimate", "quantile_lower", "quantile_upper"),
    ),
}


def kind_of_row(row: Mapping[str, Any]) -> Kind | None:
    """The kind with its own staged columns that a staged row belongs to, or None (a row of
    the moments kinds, whose statistics are the same)."""
    for kind in KINDS.values():
        if kind.columns and row.get(kind.columns[0]) is not None:
            return kind
    return None
