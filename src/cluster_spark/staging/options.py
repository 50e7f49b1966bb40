"""Per-unit metric options on the unit values (docs/methods.md, "Per-unit values"; Statsig's
ratio-metric settings): completed-window and bake rules, the conversion-rate rule, and
winsorization at percentiles pooled across variants."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from cluster_spark.config import Metric
from cluster_spark.io import literal_frame
from cluster_spark.staging.filters import shift, utc_day
from cluster_spark.staging.plan import UNIT, Plan
from cluster_spark.tables import CAP_COLUMNS, PRE_CAP_COLUMNS

#: Relative rank accuracy of `percentile_approx` is 1/PERCENTILE_ACCURACY (exact below
#: PERCENTILE_ACCURACY / 2 values per experiment and metric: docs/design.md, "Percentiles").
PERCENTILE_ACCURACY = 100_000


def included(metric: Metric, daily: Collection[str] = ()) -> tuple[Column, Column]:
    """(completed-window rule holds, bake rule holds) for a unit, per docs/methods.md.
    Windows of a component whose source is in `daily` (read by whole days) start at the
    exposure day's midnight (UTC), and without a window its first counted day is the
    exposure day, which has ended one day after that midnight."""
    analysis = F.col("analysis_ts")
    complete, baked = F.lit(True), F.lit(True)
    for comp in metric.components.values():
        exposure, horizon = F.col("exposure_ts"), dt.timedelta(0)
        if comp.source in daily:
            exposure, horizon = utc_day(exposure), dt.timedelta(days=1)
        if comp.window:
            horizon = comp.window.horizon
        if metric.completed_windows_only and comp.window:
            complete &= shift(exposure, horizon) <= analysis
        if metric.bake_hours:
            bake = dt.timedelta(hours=metric.bake_hours)
            baked &= shift(exposure, horizon + bake) <= analysis
    return complete, baked


def conversion(metric: Metric, m: Column, d: Column) -> Column:
    """The numerator under the conversion-rate rule: 0 where the denominator is 0."""
    if metric.kind == "ratio" and metric.conversion_rate:
        return F.when(d == 0, F.lit(0.0)).otherwise(m)
    return m


#: The analysis period's thresholds, then the pre-period's.
_ALL_CAPS = CAP_COLUMNS + PRE_CAP_COLUMNS

#: The cap key of the rows that take the experiment's caps (`_cap_key`).
_WHOLE = ""


def _cap_key(plan: Plan) -> list[Column]:
    """(`_cd`, `_cs`): the segment whose caps a row takes: its own slice's for the
    experiments with `slice_caps: slice`, else the whole experiment's ("", "": no
    dimension is named "")."""
    own = F.col("experiment_id").isin([e.id for e in plan.experiments if e.slice_caps == "slice"])
    own &= F.col("dimension").isNotNull()
    return [
        F.when(own, F.col(c)).otherwise(F.lit(_WHOLE)).alias(k)
        for c, k in (("dimension", "_cd"), ("slice", "_cs"))
    ]


def _caps(values: DataFrame, plan: Plan) -> DataFrame | None:
    """Winsorization thresholds per (experiment, metric, cap key), from the unit values of
    included units pooled across variants (never per variant), over non-zero values by
    default: the experiment's overall rows, or a slice's rows for per-slice caps. With CUPED
    the pre-period values X and Y get the same percentiles of their own (`PRE_CAP_COLUMNS`):
    a pre-period of another length than the window is on another scale."""
    cuped = F.col("experiment_id").isin([e.id for e in plan.experiments if e.cuped_lookback_days])
    roles = [("", "num", "m"), ("", "den", "d")]
    if plan.cuped:
        roles += [("pre_", "num", "x"), ("pre_", "den", "y")]
    aggs = []
    for name, metric in plan.metrics.items():
        for prefix, role, col in roles:
            comp = metric.components.get(role)  # a quantile metric has no `den`
            w = comp.winsorize if comp is not None else None
            if w is None:
                continue
            keep = (F.col("metric") == name) & F.col("complete") & F.col("baked")
            if prefix:
                keep &= cuped
            if w.ignore_zeros:
                keep &= F.col(col) != 0
            for side, q in (("lower", w.lower), ("upper", w.upper)):
                if q is not None:
                    pct = F.percentile_approx(F.when(keep, F.col(col)), q, PERCENTILE_ACCURACY)
                    aggs.append(pct.alias(f"{name}|{prefix}{role}_{side}_cap"))
    if not aggs:
        return None
    keyed = values.select("*", *_cap_key(plan))
    # Overall rows, and the slice rows of experiments with per-slice caps.
    wide = (
        keyed.where(F.col("dimension").isNull() | (F.col("_cd") != _WHOLE))
        .groupBy("experiment_id", "_cd", "_cs")
        .agg(*aggs)
    )
    caps = [
        F.struct(
            F.lit(name).alias("metric"),
            *[
                (F.col(f"`{name}|{k}`") if f"{name}|{k}" in wide.columns else F.lit(None))
                .cast("double")
                .alias(k)
                for k in _ALL_CAPS
            ],
        )
        for name, metric in plan.metrics.items()
        if metric.winsorized
    ]
    return wide.select("experiment_id", "_cd", "_cs", F.explode(F.array(*caps)).alias("c")).select(
        "experiment_id", "_cd", "_cs", "c.*"
    )


def _clamp(col: str, low: str, high: str, ignore_zeros: Column) -> Column:
    x = F.col(col)
    clamped = F.least(F.greatest(x, F.coalesce(F.col(low), x)), F.coalesce(F.col(high), x))
    return F.when(ignore_zeros & (x == 0), x).otherwise(clamped)


def winsorize(values: DataFrame, plan: Plan) -> DataFrame:
    """Add `winsorized` rows (clamped values) beside the raw rows of winsorized metrics.
    Returns `frames.WINSORIZED`: the values with a `winsorized` flag and the cap columns.
    Slice rows take the experiment's caps (one threshold, as GrowthBook), or their slice's own with
    `slice_caps: slice`.

    CUPED's pre-period values are clamped at their own thresholds (X at `pre_num_*`, Y at
    `pre_den_*`: the component's percentiles of the pre-period values, pooled the same way),
    so a pre-period outlier cannot drive θ and a longer pre-period keeps its scale."""
    cap_cols = list(_ALL_CAPS)
    names = [n for n, m in plan.metrics.items() if m.winsorized]
    if not names:
        return values.select(
            "*",
            F.lit(False).alias("winsorized"),
            *[F.lit(None).cast("double").alias(c) for c in cap_cols],
        )
    # A few rows per experiment, collected once: a lazy broadcast would compute the
    # percentiles once per branch below.
    key = [("experiment_id", "string"), ("_cd", "string"), ("_cs", "string")]
    caps = literal_frame(
        values.sparkSession,
        _caps(values, plan).collect(),
        [*key, ("metric", "string"), *[(c, "double") for c in cap_cols]],
    )
    with_caps = (
        values.select("*", *_cap_key(plan))
        .join(F.broadcast(caps), [k for k, _ in key] + ["metric"], "left")
        .drop("_cd", "_cs")
    )
    capped = _clamped(with_caps.where(F.col("metric").isin(names)), plan, names)
    raw = with_caps.select(
        "experiment_id",
        "variant",
        UNIT,
        "dimension",
        "slice",
        "metric",
        "m",
        "d",
        "x",
        "y",
        "w",
        "complete",
        "baked",
        F.lit(False).alias("winsorized"),
        *cap_cols,
    )
    return raw.unionByName(capped)


def _clamped(rows: DataFrame, plan: Plan, names: list[str]) -> DataFrame:
    """The `winsorized` rows of the metrics `names`: m, d, x, y clamped at their caps (a
    zero kept where the component's winsorization ignores zeros)."""

    def ignores_zeros(role: str) -> Column:
        flags = {n: plan.metrics[n].components[role].winsorize for n in names}
        pairs = [F.lit(x) for n, w in flags.items() for x in (n, bool(w and w.ignore_zeros))]
        return F.coalesce(F.element_at(F.create_map(*pairs), F.col("metric")), F.lit(False))

    ignore_num, ignore_den = ignores_zeros("num"), ignores_zeros("den")
    return rows.select(
        "experiment_id",
        "variant",
        UNIT,
        "dimension",
        "slice",
        "metric",
        _clamp("m", "num_lower_cap", "num_upper_cap", ignore_num).alias("m"),
        _clamp("d", "den_lower_cap", "den_upper_cap", ignore_den).alias("d"),
        _clamp("x", "pre_num_lower_cap", "pre_num_upper_cap", ignore_num).alias("x"),
        _clamp("y", "pre_den_lower_cap", "pre_den_upper_cap", ignore_den).alias("y"),
        "w",  # other metrics' pre-period values: not clamped
        "complete",
        "baked",
        F.lit(True).alias("winsorized"),
        *_ALL_CAPS,
    )
