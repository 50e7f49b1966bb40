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
plan, units, offenders, cache)`, a statistics module with `Group.from_row`, `compare`
and `fieller`, and a line here. No pyspark is imported here: the reducer imports this.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Kind:
    """`moments`: staged by the moments pass (per-unit M, D). `stage`: the module of its
    own Spark stage (`module.stage`), or None. `stats`: the module of its statistics, whose
    `from_row`, `compare` and `fieller` the reducer calls (non-moments kinds). `marker`: a
    staged column that is non-null exactly on this kind's rows."""

    name: str
    moments: bool
    stage: str | None = None
    stats: str | None = None
    marker: str | None = None

    def stage_function(self) -> Callable[..., Any] | None:
        return None if self.stage is None else importlib.import_module(self.stage).stage

    def stats_module(self) -> Any:
        return importlib.import_module(self.stats)


KINDS: dict[str, Kind] = {
    "mean": Kind("mean", moments=True),
    "ratio": Kind("ratio", moments=True),
    "quantile": Kind(
        "quantile",
        moments=False,
        stage="cluster_spark.staging.quantile",
        stats="cluster_spark.stats.quantile",
        marker="quantile_p",
    ),
}


def kind_of_row(row: Mapping[str, Any]) -> Kind | None:
    """The non-moments kind a staged row belongs to, or None (a moments row)."""
    for kind in KINDS.values():
        if kind.marker is not None and row.get(kind.marker) is not None:
            return kind
    return None
