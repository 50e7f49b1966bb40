"""Where does `pipeline.stage` spend its time? Breaks the staging of bench/run.py's config
down by query and by feature, on the benchmark data of one size.

    .venv/bin/python bench/profile_stage.py --size 1000000 [--out out/bench] [--only NAME...]

Prints, in one SparkSession: the floor; `pipeline.stage` as shipped; the staging
statistics and the diagnostics each written to the `noop` sink (pipeline.stage writes both,
each one its own Spark query); the same config without `analysis_unit` (no multi-unit check
and no analysis-unit counts), without winsorized metrics, and without `count_distinct`
components; and the time spent planning the statistics query.

Then the first aggregation level, the one pass over the events, against the benchmark's
floor (4 values per org and user) and the same aggregation carrying as many values as one
experiment slot of the first level, or all of it, carries (components × slots plus
bookkeeping); and the first level with its exposure join and bookkeeping only.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dataset
import jvm
import metrics
import queries
import run as bench
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from cluster_spark import pipeline, staging
from cluster_spark.config import Config, parse_config
from cluster_spark.staging.events import filter_columns, first_level, source_events, source_parts
from cluster_spark.staging.exposures import exposed_units, exposure_slots
from cluster_spark.staging.plan import Cache, plans


def _noop(df: DataFrame) -> None:
    df.write.format("noop").mode("overwrite").save()


def _variant(config: Config, **change: Any) -> Config:
    """A copy of the config with experiments/metrics changed (validated again)."""
    raw = config.model_dump(mode="json", exclude_unset=True, by_alias=True)
    metrics = raw["metrics"]
    if change.get("no_analysis_unit"):
        for e in raw["experiments"]:
            e.pop("analysis_unit", None)
    drop = set()
    if change.get("no_winsorize"):
        drop |= {n for n, m in config.metrics.items() if m.winsorized}
    if change.get("no_count_distinct"):
        drop |= {
            n
            for n, m in config.metrics.items()
            if any(c.agg == "count_distinct" for c in m.components.values())
        }
    for n in drop:
        metrics.pop(n)
    for e in raw["experiments"]:
        e["metrics"] = [m for m in e["metrics"] if m not in drop]
    return parse_config(raw)


def wide_floor(events: DataFrame, n: int) -> None:
    """The floor's scan and grouping, carrying n distinct aggregates (sums, conditional
    counts, maxima) per (org, user) instead of 4."""
    kinds = [
        lambda i: F.sum(F.col("value") + F.lit(i)),
        lambda i: F.count(F.when(F.col("value") > F.lit(i), 1)),
        lambda i: F.max(F.col("ts") + F.make_dt_interval(secs=F.lit(i))),
    ]
    aggs = [kinds[i % len(kinds)](i).alias(f"v{i}") for i in range(n)]
    _noop(events.groupBy("org_id", "user_id").agg(*aggs))


def first_level_steps(spark: SparkSession, config: Config, ids: list[str], events: DataFrame):
    """Steps timing `staging.events.first_level` over the events source, and the wide floor with
    as many values as it aggregates per (org, user)."""
    plan = plans(config, ids, dataset.ANALYSIS_DATE)[0]
    parts, columns, key = source_parts(plan, "events")
    cache = Cache()
    units, _ = exposed_units(spark, plan, cache)
    n_slots = exposure_slots(units, len(plan.experiments))[1]
    cache.release()
    # Per slot: each component (twice with CUPED) and 3 bookkeeping values; per key:
    # _n_events and a NULL count per filter column.
    per_slot = len(parts) * (2 if plan.cuped else 1) + 3
    n_values = n_slots * per_slot + 1 + len(filter_columns(parts))

    def level1(with_parts: bool) -> Callable[[], None]:
        def go() -> None:
            cache = Cache()
            try:
                units, _ = exposed_units(spark, plan, cache)
                source, _ = source_events(spark, plan, "events", columns, key)
                used = parts if with_parts else {}
                frame = first_level(plan, source, units, used, key, cache).rows
                frame.count()  # materializes the persisted frame, every column
            finally:
                cache.release()

        return go

    return {
        f"floor carrying {per_slot} values": lambda: wide_floor(events, per_slot),
        f"floor carrying {n_values} values": lambda: wide_floor(events, n_values),
        "first level, join + bookkeeping only": level1(False),
        f"first level ({len(parts)} components × {n_slots} slots)": level1(True),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=bench.ROOT / "out" / "bench")
    parser.add_argument("--only", nargs="*", help="run only the steps whose names start so")
    parser.add_argument("--smoke", action="store_true", help="bench/run.py's smoke data")
    ns = parser.parse_args(argv)
    smoke = ["--smoke"] if ns.smoke else []
    args = bench.parse_args([*smoke, "--out", str(ns.out), "--sizes", str(ns.size)])
    spark = bench.spark_session(args)
    p = dataset.DataParams(ns.size, args.users, args.orgs, args.seed)
    data = dataset.ensure_data(spark, args.out, p, print)
    run_dir = args.out / "runs" / f"profile_{ns.size}"
    config = metrics.bench_config(data, run_dir)
    ids = [e.id for e in config.experiments]
    events = spark.read.format("delta").load(str(data / "events"))
    queries.floor_query(events)  # warm-up

    def staged_noop(cfg: Config, part: str) -> Callable[[], None]:
        def go() -> None:
            staged = staging.stage(spark, cfg, ids, dataset.ANALYSIS_DATE, "profile")
            try:
                if part in ("stats", "both"):
                    _noop(staged.stats)
                if part in ("diagnostics", "both"):
                    _noop(staged.diagnostics)
            finally:
                staged.release()

        return go

    def planning() -> None:
        staged = staging.stage(spark, config, ids, dataset.ANALYSIS_DATE, "profile")
        staged.stats._jdf.queryExecution().executedPlan()
        staged.release()

    steps: dict[str, Callable[[], Any]] = {
        "floor": lambda: queries.floor_query(events),
        "pipeline.stage": lambda: pipeline.stage(
            spark, config, dataset.ANALYSIS_DATE, ids, run_id="profile"
        ),
        "stats→noop": staged_noop(config, "stats"),
        "diagnostics→noop": staged_noop(config, "diagnostics"),
        "stats+diagnostics→noop": staged_noop(config, "both"),
        "stats→noop, no analysis_unit": staged_noop(
            _variant(config, no_analysis_unit=True), "stats"
        ),
        "stats→noop, no winsorized metrics": staged_noop(
            _variant(config, no_winsorize=True), "stats"
        ),
        "stats→noop, no count_distinct metrics": staged_noop(
            _variant(config, no_count_distinct=True), "stats"
        ),
        "stats→noop, none of the three": staged_noop(
            _variant(config, no_analysis_unit=True, no_winsorize=True, no_count_distinct=True),
            "stats",
        ),
        "planning the stats query": planning,
        **first_level_steps(spark, config, ids, events),
    }
    sc = spark.sparkContext
    try:
        for name, fn in steps.items():
            if ns.only and not name.startswith(tuple(ns.only)):
                continue
            counter: dict[str, int] = {}
            with jvm.job_group(spark, f"profile-{name}", counter):
                t0 = time.perf_counter()
                fn()
                t = time.perf_counter() - t0
            print(
                f"{name:42s} {t:7.1f} s  jobs {counter.get('jobs', 0):3d}  "
                f"stages {counter.get('stages', 0):3d}",
                flush=True,
            )
        sc.setLogLevel("ERROR")
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
