"""The multi-unit policy: an analysis unit (user) seen under several assignment units
(orgs) breaks the design (GrowthBook); drop it, keep its first unit, or fail."""

from __future__ import annotations

from functools import reduce

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cluster_spark.errors import DataQualityError
from cluster_spark.staging.plan import SUB, UNIT, Plan, diag


def multi_unit_offenders(
    rows: list[DataFrame], plan: Plan, where: str
) -> tuple[DataFrame, DataFrame]:
    """Analysis units (e.g. users) seen under several assignment units (orgs) within an
    experiment break the design (GrowthBook); `apply_multi_unit_policy` drops them or keeps
    their first unit, per experiment, in every source.

    `rows`: one frame per source keyed by the analysis unit, with one row per (experiment,
    unit, analysis unit) and its first event time `_first_ts`. Returns (the offending
    pairs, `frames.OFFENDERS`; diagnostics). Raises DataQualityError where the policy is 'fail'."""
    pairs = reduce(
        DataFrame.unionByName, [r.select("experiment_id", UNIT, SUB, "_first_ts") for r in rows]
    )
    if len(rows) > 1:
        pairs = pairs.groupBy("experiment_id", UNIT, SUB).agg(F.min("_first_ts").alias("_first_ts"))
    subs = (
        pairs.where(F.col(SUB).isNotNull())
        .groupBy("experiment_id", SUB)
        .agg(F.count(F.lit(1)).alias("n_units"), F.min_by(UNIT, "_first_ts").alias("_first_unit"))
    )
    bad = subs.where(F.col("n_units") > 1)
    # one count per experiment of the plan (0 without offenders) from a global aggregate:
    # no join with a frame of the experiment ids, so no broadcast job
    ids = [e.id for e in plan.experiments]
    of = F.col("experiment_id")
    totals = bad.agg(*[F.count(F.when(of == e, 1)).alias(f"_n{i}") for i, e in enumerate(ids)])
    each = [
        F.struct(F.lit(e).alias("experiment_id"), F.col(f"_n{i}").alias("n"))
        for i, e in enumerate(ids)
    ]
    counts = totals.select(F.explode(F.array(*each)).alias("_c")).select("_c.*")
    found = diag(counts, "analysis_units_in_several_units", F.col("n"))
    failing = [e.id for e in plan.experiments if e.multi_unit_policy == "fail"]
    if failing:
        offenders = bad.where(F.col("experiment_id").isin(failing)).limit(5).collect()
        if offenders:
            shown = ", ".join(f"{r['experiment_id']}:{r[SUB]}" for r in offenders)
            raise DataQualityError(
                f"{where}: analysis units seen under several assignment units ({shown}); "
                f"multi_unit_policy is 'fail'"
            )
    return bad.select("experiment_id", SUB, "_first_unit"), found


def apply_multi_unit_policy(rows: DataFrame, offenders: DataFrame, plan: Plan) -> DataFrame:
    """The rows of one source without the offenders' rows (policy 'drop'), or with only
    those of their first unit (policy 'keep_first')."""
    keep_first = F.col("experiment_id").isin(
        [e.id for e in plan.experiments if e.multi_unit_policy != "drop"]
    )
    flagged = rows.join(offenders, ["experiment_id", SUB], "left")
    return flagged.where(
        F.col("_first_unit").isNull() | (keep_first & (F.col(UNIT) == F.col("_first_unit")))
    ).drop("_first_unit")
