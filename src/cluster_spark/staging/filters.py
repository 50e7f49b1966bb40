"""Event-level rules as Columns: a component's structured filter (NULL rule included),
its window after the unit's exposure, the analysis-time and bake cut-offs, and CUPED's
pre-period (METHODS.md, "Metric options"). Values are literals, never SQL."""

from __future__ import annotations

import datetime as dt

from pyspark.sql import Column
from pyspark.sql import functions as F

from cluster_spark.config import Component, Condition
from cluster_spark.staging.plan import TS


def condition(c: Condition) -> Column:
    """A structured filter condition as a Spark Column (values are literals, never SQL).
    NULLs follow `Condition`'s rule: kept by `ne`/`not_in`, dropped by the others."""
    col = F.col(c.column)
    ops = {
        "eq": lambda: col == F.lit(c.value),
        "ne": lambda: ~col.eqNullSafe(F.lit(c.value)),
        "gt": lambda: col > F.lit(c.value),
        "ge": lambda: col >= F.lit(c.value),
        "lt": lambda: col < F.lit(c.value),
        "le": lambda: col <= F.lit(c.value),
        "in": lambda: col.isin(c.value),
        "not_in": lambda: col.isNull() | ~col.isin(c.value),
        "is_null": lambda: col.isNull(),
        "not_null": lambda: col.isNotNull(),
    }
    return ops[c.op]()


def hours(h: float) -> Column:
    return F.lit(dt.timedelta(hours=h))


def event_condition(comp: Component, bake_hours: float, slot: str = "") -> Column:
    """Which joined events count for a component: its filter, after the unit's exposure
    and up to the analysis time, inside its cohort window, and mature under the bake delay.
    `slot` suffixes the exposure columns (see `exposure_slots`)."""
    exposure, analysis = F.col(f"exposure_ts{slot}"), F.col(f"analysis_ts{slot}")
    keep = (F.col(TS) >= exposure) & (F.col(TS) <= analysis)
    if comp.window is not None:
        keep &= F.col(TS) >= exposure + F.lit(dt.timedelta(days=comp.window.start_day))
        keep &= F.col(TS) < exposure + F.lit(comp.window.horizon)
    if bake_hours:
        keep &= F.col(TS) <= analysis - hours(bake_hours)
    for c in comp.filter:
        keep &= condition(c)
    return keep


def pre_condition(comp: Component, slot: str = "") -> Column:
    """Pre-period events for CUPED: the component's filter in `[exposure − lookback,
    exposure)` (Deng et al. 2013)."""
    keep = (F.col(TS) >= F.col(f"pre_start_ts{slot}")) & (F.col(TS) < F.col(f"exposure_ts{slot}"))
    for c in comp.filter:
        keep &= condition(c)
    return keep
