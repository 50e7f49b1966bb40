"""The physical plans of the two queries `pipeline.stage` writes (staging statistics and
diagnostics), planned without AQE: their operator counts for the report, and the plans
themselves for `--explain`."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paths  # noqa: F401  (src/ on sys.path before cluster_spark)
from dataset import ANALYSIS_DATE, DataParams, ensure_data
from jvm import executed_plan
from metrics import bench_config
from pyspark.sql import DataFrame, SparkSession

from cluster_spark import staging
from cluster_spark.config import Config

#: Operators worth counting in the staging plan, by Spark's node name.
PLAN_OPERATORS = (
    "Expand",
    "Exchange",
    "BroadcastExchange",
    "ReusedExchange",
    "BroadcastHashJoin",
    "SortMergeJoin",
    "BroadcastNestedLoopJoin",
    "HashAggregate",
    "ObjectHashAggregate",
    "SortAggregate",
    "Sort",
    "Generate",
    "Union",
    "InMemoryTableScan",
    "Scan ExistingRDD",
)


def _seq(scala_seq: Any) -> list:
    """A Scala Seq, reached through py4j, as a list."""
    return [scala_seq.apply(i) for i in range(scala_seq.size())]


def plan_operators(df: DataFrame) -> dict[str, int]:
    """Operator counts of a DataFrame's physical plan (the initial plan under AQE), each
    cached relation's plan counted once, file scans named by table directory. Counts
    only: the plan text is what `--explain` prints."""
    counts: dict[str, int] = {}
    cached: set[int] = set()
    stack = [executed_plan(df)]
    while stack:
        node = stack.pop()
        name = node.nodeName()
        if name == "AdaptiveSparkPlan":
            stack.append(node.executedPlan())
            continue
        if name.startswith("WholeStageCodegen") or name == "InputAdapter":
            stack.extend(_seq(node.children()))
            continue
        if name.startswith("Scan ") and name != "Scan ExistingRDD":
            try:
                roots = _seq(node.relation().location().rootPaths())
                name = "Scan " + ", ".join(Path(r.toString()).name for r in roots)
            except Exception:
                name = "Scan (other)"
        counts[name] = counts.get(name, 0) + 1
        if name == "InMemoryTableScan":
            plan = node.relation().cachedPlan()
            key = plan.hashCode()
            if key not in cached:
                cached.add(key)
                stack.append(plan)
        stack.extend(_seq(node.children()))
    ordered = {op: counts.pop(op, 0) for op in PLAN_OPERATORS}
    scans = {k: counts.pop(k) for k in sorted(counts) if k.startswith("Scan ")}
    return {**ordered, **scans}


def physical_plan(df: DataFrame) -> str:
    return executed_plan(df).toString()


@contextmanager
def static_plans(spark: SparkSession) -> Iterator[None]:
    """Plan without AQE: its initial plan repeats every exchange that it would reuse at run
    time, while the static plan shows them as ReusedExchange (and its codegen stages)."""
    key = "spark.sql.adaptive.enabled"
    before = spark.conf.get(key)
    spark.conf.set(key, "false")
    try:
        yield
    finally:
        spark.conf.set(key, before)


@contextmanager
def staging_queries(spark: SparkSession, config: Config) -> Iterator[dict[str, DataFrame]]:
    """The two queries pipeline.stage writes, by name, planned without AQE; their cached
    frames are released on exit."""
    ids = [e.id for e in config.experiments]
    with static_plans(spark):
        staged = staging.stage(spark, config, ids, ANALYSIS_DATE, "explain")
        try:
            yield {"staging statistics": staged.stats, "diagnostics": staged.diagnostics}
        finally:
            staged.release()


def staging_plans(spark: SparkSession, config: Config) -> dict[str, dict[str, int]]:
    """Operator counts of the two queries pipeline.stage writes."""
    with staging_queries(spark, config) as queries:
        return {name: plan_operators(df) for name, df in queries.items()}


def explain(spark: SparkSession, args: argparse.Namespace, p: DataParams, log: Callable) -> None:
    """Print the two queries' physical plans and operator counts (`--explain`)."""
    data = ensure_data(spark, args.out, p, log)
    config = bench_config(data, args.out / "runs" / "explain")
    with staging_queries(spark, config) as queries:
        for name, df in queries.items():
            print(f"\n===== physical plan: {name} (written by pipeline.stage; AQE off) =====")
            print(physical_plan(df))
            print(f"----- operators ({name}; cached plans counted once) -----")
            for op, n in plan_operators(df).items():
                print(f"  {op:30s} {n}")
