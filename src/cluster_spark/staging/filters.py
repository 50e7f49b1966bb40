"""Event-level rules as Columns: a component's structured filter (NULL rule included),
its window after the unit's exposure, the analysis-time and bake cut-offs, and CUPED's
pre-period (docs/methods.md, "Per-unit values"). Values are literals, never SQL."""

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


def shift(ts: Column, delta: dt.timedelta | Column) -> Column:
    """`ts` moved by an exact duration (a timedelta, or a Column of microseconds), whatever
    the session time zone. Spark's `timestamp ± interval` adds whole days as calendar days
    in the session zone: 23 or 25 hours across a daylight-saving change."""
    if isinstance(delta, dt.timedelta):
        delta = F.lit(delta // dt.timedelta(microseconds=1))
    return F.timestamp_micros(F.unix_micros(ts) + delta)


def utc_day(ts: Column) -> Column:
    """Midnight UTC at the start of `ts`'s day, whatever the session time zone."""
    seconds = F.unix_seconds(ts)
    return F.timestamp_seconds(seconds - F.pmod(seconds, F.lit(86_400)))


def event_condition(comp: Component, bake_hours: float, slot: str = "") -> Column:
    """Which joined events count for a component: its filter, after the unit's exposure
    and up to the analysis time, inside its cohort window, and mature under the bake delay.
    `slot` suffixes the exposure columns (see `exposure_slots`)."""
    exposure, analysis = F.col(f"exposure_ts{slot}"), F.col(f"analysis_ts{slot}")
    keep = (F.col(TS) >= exposure) & (F.col(TS) <= analysis)
    if comp.window is not None:
        keep &= F.col(TS) >= shift(exposure, dt.timedelta(days=comp.window.start_day))
        keep &= F.col(TS) < shift(exposure, comp.window.horizon)
    if bake_hours:
        keep &= F.col(TS) <= shift(analysis, -dt.timedelta(hours=bake_hours))
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
