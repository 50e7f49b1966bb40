"""Where does `pipeline.stage` spend its time? Breaks the staging of bench/run.py's config
down by query and by feature, on the benchmark data of one size.

    .venv/bin/python bench/profile_stage.py --size 1000000 [--out out/bench]

Prints, in one SparkSession: the floor; `pipeline.stage` as shipped; the staging
statistics and the diagnostics each written to the `noop` sink (pipeline.stage writes both,
each one its own Spark query); the same config without `analysis_unit` (no multi-unit check
and no analysis-unit counts), without winsorized metrics, and without `count_distinct`
components; and the time spent planning the statistics query.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench
from pyspark.sql import DataFrame

from cluster_spark import pipeline, staging
from cluster_spark.config import Config


def _noop(df: DataFrame) -> None:
    df.write.format("noop").mode("overwrite").save()


def _variant(config: Config, **change: Any) -> Config:
    """A copy of the config with experiments/metrics changed (validated again)."""
    raw = config.model_dump(mode="json", exclude_none=True)
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
    return bench.parse_config(raw)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=bench.ROOT / "out" / "bench")
    parser.add_argument("--only", nargs="*", help="run only these steps (by name)")
    ns = parser.parse_args(argv)
    args = bench.parse_args(["--out", str(ns.out), "--sizes", str(ns.size)])
    spark = bench.spark_session(args)
    p = bench.DataParams(ns.size, args.users, args.orgs, args.seed)
    data = bench.ensure_data(spark, args.out, p, print)
    run_dir = args.out / "runs" / f"profile_{ns.size}"
    config = bench.bench_config(data, run_dir)
    ids = [e.id for e in config.experiments]
    events = spark.read.format("delta").load(str(data / "events"))
    bench.floor_query(events)  # warm-up

    def staged_noop(cfg: Config, part: str) -> Callable[[], None]:
        def go() -> None:
            staged = staging.stage(spark, cfg, ids, bench.ANALYSIS_DATE, "profile")
            try:
                if part in ("stats", "both"):
                    _noop(staged.stats)
                if part in ("diagnostics", "both"):
                    _noop(staged.diagnostics)
            finally:
                staged.release()

        return go

    def planning() -> None:
        staged = staging.stage(spark, config, ids, bench.ANALYSIS_DATE, "profile")
        staged.stats._jdf.queryExecution().executedPlan()
        staged.release()

    steps: dict[str, Callable[[], Any]] = {
        "floor": lambda: bench.floor_query(events),
        "pipeline.stage": lambda: pipeline.stage(
            spark, config, bench.ANALYSIS_DATE, ids, run_id="profile"
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
    }
    sc = spark.sparkContext
    try:
        for name, fn in steps.items():
            if ns.only and name not in ns.only:
                continue
            counter: dict[str, int] = {}
            with bench.job_group(spark, f"profile-{name}", counter):
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
