"""What a config option costs: `pipeline.stage` of the bench's config at the smallest size,
as it is and with the option, same session, same files, best of `--repeat`.

- slices: the first experiment broken down by two dimensions of 3 and 12 values
  (`metrics.SLICE_DIMENSIONS`, from an org attributes table written beside the data);
- `cache: none`: staging persists nothing (what Spark Connect platforms that forbid
  `persist` need), so the frames it reads twice are computed twice;
- a quantile metric (`metrics.P90_PURCHASE`, p90 of purchase values) added to every
  experiment: its own read of the events and two aggregations over its values.
"""

from __future__ import annotations

import argparse
import shutil
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
class OptionCost:
    option: str  # "slices", "cache" or "quantile"
    events: int
    without_s: float
    with_s: float
    jobs_without: int
    jobs_with: int
    slice_rows: int = 0

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


def measure_option(
    spark: SparkSession, args: argparse.Namespace, p: DataParams, option: str, log: Callable
) -> OptionCost:
    """Stage time and Spark jobs per run without and with `option` ("slices" or "cache")."""
    data = ensure_data(spark, args.out, p, log)
    if option == "slices":
        org_attributes(spark, data)
    times, jobs = {}, {}
    for on in (False, True):
        out = args.out / "runs" / f"{option}_{on}"
        shutil.rmtree(out, ignore_errors=True)  # every measurement starts without tables
        if option == "slices":
            config = bench_config(data, out, slices=on)
        elif option == "quantile":
            config = bench_config(data, out, quantile=on)
        else:
            config = bench_config(data, out, cache="none" if on else "memory")
        counter: dict[str, int] = {}
        with job_group(spark, f"{option}-{on}-{p.events}", counter):
            times[on], _ = _timed(
                lambda c=config: pipeline.stage(spark, c, ANALYSIS_DATE), args.repeat
            )
        jobs[on] = counter["jobs"] // args.repeat  # per run
        if option == "cache":
            label = f"with cache: {'none' if on else 'memory'}"
        else:
            label = f"{'with' if on else 'without'} {option}"
        log(f"  stage {label} {times[on]:8.1f} s")
    rows = 0
    if option == "slices":
        staged = spark.read.format("delta").load(str(args.out / "runs" / "slices_True" / "staging"))
        rows = staged.where(F.col("dimension").isNotNull()).count()
    return OptionCost(option, p.events, times[False], times[True], jobs[False], jobs[True], rows)


def costs_markdown(costs: list[OptionCost]) -> str:
    """The "cost of an option" sections of BENCHMARKS.md (one per measured option)."""
    return "".join(_SECTIONS[c.option](c) for c in costs)


def _slices(c: OptionCost) -> str:
    dims = " and ".join(f"`{d}` ({n} values)" for d, n in SLICE_DIMENSIONS.items())
    return f"""
## Cost of slices

`pipeline.stage` of the same config at {c.events:,} events, as above and with the first
experiment broken down by {dims} from an org attributes table (`bench/costs.py`):
one pass over the events either way; the per-unit values are grouped by slice too.

| stage | seconds | Spark jobs per run |
| --- | ---: | ---: |
| without slices | {c.without_s:.1f} | {c.jobs_without} |
| with slices | {c.with_s:.1f} | {c.jobs_with} |
| ratio | {c.ratio:.2f}× | |

{c.slice_rows:,} staged slice rows.
"""


def _cache(c: OptionCost) -> str:
    return f"""
## Cost of `cache: none`

`pipeline.stage` of the same config at {c.events:,} events with `cache: memory` (the
default: the first aggregation level of the events and the per-unit frame are persisted,
each read twice) and `cache: none` (nothing persisted, as Databricks serverless and other
Spark Connect platforms that forbid `persist` need; `bench/costs.py`):

| stage | seconds | Spark jobs per run |
| --- | ---: | ---: |
| `cache: memory` | {c.without_s:.1f} | {c.jobs_without} |
| `cache: none` | {c.with_s:.1f} | {c.jobs_with} |
| ratio | {c.ratio:.2f}× | |
"""


def _quantile(c: OptionCost) -> str:
    return f"""
## Cost of a quantile metric

`pipeline.stage` of the same config at {c.events:,} events, as above and with one more
metric in every experiment, the p90 of purchase values (`kind: quantile`; `bench/costs.py`):
its own read of the events, `percentile_approx` per group (one job), then the per-unit
counts at or below it and the outer quantiles.

| stage | seconds | Spark jobs per run |
| --- | ---: | ---: |
| without the quantile metric | {c.without_s:.1f} | {c.jobs_without} |
| with it | {c.with_s:.1f} | {c.jobs_with} |
| ratio | {c.ratio:.2f}× | |
"""


_SECTIONS = {"slices": _slices, "cache": _cache, "quantile": _quantile}


def splice(md: str, sections: str, stamp: str) -> str:
    """BENCHMARKS.md with its "Cost of" sections replaced by `sections` (placed before
    "Units axis", as `make bench` writes them), headed by `stamp` (when and how)."""
    start = md.find("\n## Cost of ")
    end = md.find("\n## Units axis")
    end = len(md) if end < 0 else end
    start = end if start < 0 else start
    first, _, rest = sections.lstrip("\n").partition("\n")
    return md[:start] + f"\n{first}\n\n{stamp}\n" + rest + md[end:]


def main() -> int:
    """`bench/costs.py [run.py's arguments]`: the cost of slices and of `cache: none`
    alone, at the smallest size (default 4M events): prints the sections and, unless
    `--no-write-md`, puts them into BENCHMARKS.md in place of the full run's."""
    import datetime as dt
    import os
    import sys

    from run import parse_args, spark_session

    args = parse_args()
    load = os.getloadavg()[0]  # before our own JVM starts
    spark = spark_session(args)
    try:
        p = DataParams(args.sizes[0], args.users, args.orgs, args.seed)
        sections = costs_markdown([measure_option(spark, args, p, o, print) for o in _SECTIONS])
    finally:
        spark.stop()
    print(sections)
    if not args.no_write_md:
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        stamp = (
            f"*Measured by `bench/costs.py {' '.join(sys.argv[1:])}` on {now}, best of "
            f"{args.repeat}, `local[{args.cores}]`, load average {load:.1f} at the start.*"
        )
        args.md.write_text(splice(args.md.read_text(), sections, stamp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
