"""The cost of slices: `pipeline.stage` of the bench's config as it is, and with its first
experiment broken down by two dimensions of 3 and 12 values (`metrics.SLICE_DIMENSIONS`,
from an org attributes table written beside the data), same session, same files."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dataset import ANALYSIS_DATE, START, DataParams, ensure_data
from jvm import job_group
from measure import _timed
from metrics import SLICE_DIMENSIONS, bench_config
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from cluster_spark import pipeline


@dataclass
class SlicesResult:
    events: int
    without_s: float
    with_s: float
    jobs_without: int
    jobs_with: int
    slice_rows: int

    @property
    def ratio(self) -> float:
        return self.with_s / self.without_s


def org_attributes(spark: SparkSession, data: Path) -> Path:
    """An attribute row per exposed org, a month before the start: `tier` and `region`
    chosen by hash from `SLICE_DIMENSIONS`' numbers of values (written once)."""
    path = data / "org_attributes"
    if not (path / "_delta_log").exists():
        orgs = spark.read.format("delta").load(str(data / "exposures")).select("org_id").distinct()
        columns = [
            F.concat(F.lit(f"{name}_"), F.pmod(F.hash("org_id", F.lit(i)), F.lit(n))).alias(name)
            for i, (name, n) in enumerate(SLICE_DIMENSIONS.items())
        ]
        orgs.select(
            "org_id", *columns, F.lit(START).cast("timestamp").alias("updated_at")
        ).write.format("delta").mode("overwrite").save(str(path))
    return path


def measure_slices(
    spark: SparkSession, args: argparse.Namespace, p: DataParams, log: Callable
) -> SlicesResult:
    data = ensure_data(spark, args.out, p, log)
    org_attributes(spark, data)
    times, jobs = {}, {}
    for sliced in (False, True):
        config = bench_config(data, args.out / "runs" / f"slices_{sliced}", slices=sliced)
        counter: dict[str, int] = {}
        with job_group(spark, f"slices-{sliced}-{p.events}", counter):
            times[sliced], _ = _timed(
                lambda c=config: pipeline.stage(spark, c, ANALYSIS_DATE), args.repeat
            )
        jobs[sliced] = counter["jobs"] // args.repeat  # per run
        log(f"  stage {'with' if sliced else 'without'} slices {times[sliced]:8.1f} s")
    staged = spark.read.format("delta").load(str(args.out / "runs" / "slices_True" / "staging"))
    return SlicesResult(
        events=p.events,
        without_s=times[False],
        with_s=times[True],
        jobs_without=jobs[False],
        jobs_with=jobs[True],
        slice_rows=staged.where(F.col("dimension").isNotNull()).count(),
    )


def slices_markdown(result: SlicesResult | None) -> str:
    """The slices section of BENCHMARKS.md (empty without a result)."""
    if result is None:
        return ""
    dims = " and ".join(f"`{d}` ({n} values)" for d, n in SLICE_DIMENSIONS.items())
    return f"""
## Cost of slices

`pipeline.stage` of the same config at {result.events:,} events, as above and with the first
experiment broken down by {dims} from an org attributes table (`bench/slices.py`):
one pass over the events either way; the per-unit values are grouped by slice too.

| stage | seconds | Spark jobs per run |
| --- | ---: | ---: |
| without slices | {result.without_s:.1f} | {result.jobs_without} |
| with slices | {result.with_s:.1f} | {result.jobs_with} |
| ratio | {result.ratio:.2f}× | |

{result.slice_rows:,} staged slice rows.
"""


def main() -> int:
    """`bench/slices.py [run.py's arguments]`: the cost of slices alone, at the smallest
    size (default 4M events), appended to nothing: prints the section."""
    from run import parse_args, spark_session

    args = parse_args()
    spark = spark_session(args)
    try:
        p = DataParams(args.sizes[0], args.users, args.orgs, args.seed)
        print(slices_markdown(measure_slices(spark, args, p, print)))
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
