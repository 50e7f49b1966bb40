"""The measurements of one size, in one SparkSession over the same Delta files: the floor,
cluster_spark (`pipeline.stage` + `pipeline.reduce`), the per-metric queries, each one's
Spark jobs, and the driver's peak memory over all of them; then the DuckDB peer on the
same files and the cross-engine check of the staged statistics; the sizes measured."""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import paths  # noqa: F401  (src/ on sys.path before cluster_spark)
from crosscheck import crosscheck, duckdb_groups, per_metric_groups, staged_groups
from dataset import ANALYSIS_DATE, DataParams, data_stats, ensure_data
from duckdb_peer import EXACT_CAP_VALUES, Caps, staged_statistics
from jvm import Memory, job_group
from metrics import bench_config
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from queries import floor_query, per_metric_query

from cluster_spark import pipeline
from cluster_spark.config import Config
from cluster_spark.tables import CAP_COLUMNS

DEFAULT_SIZES = "4000000,16000000,64000000"
SMOKE_SIZES = "20000"
WARMUP_EVENTS = 20_000


@dataclass
class SizeResult:
    """One size's measurements (seconds, rows, Spark jobs, peak memory); bench.json's rows."""

    events: int
    users: int
    orgs: int
    units: int  # exposed (experiment, org) pairs that are analysed
    exposure_rows: int
    floor_s: float
    stage_s: float
    reduce_s: float
    per_metric_s: float
    per_metric_queries: list[float]
    duckdb_s: float
    crosscheck: dict[str, Any]  # crosscheck.CrossCheck
    staging_rows: int
    results_rows: int
    jobs: dict[str, dict[str, int]]
    memory: dict[str, float]
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cluster_s(self) -> float:
        return self.stage_s + self.reduce_s


def _timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Best wall-clock seconds of `repeat` calls, and the last call's result."""
    best, out = math.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _duckdb(
    config: Config, ids: list[str], threads: int, caps: Caps | None, repeat: int
) -> tuple[float, list[dict[str, Any]]]:
    """The DuckDB peer's best time (s) and its rows; run in a child process."""
    return _timed(lambda: staged_statistics(config, ANALYSIS_DATE, ids, threads, caps), repeat)


def measure_size(
    spark: SparkSession, args: argparse.Namespace, p: DataParams, log: Callable
) -> SizeResult:
    """Every measurement of one size, on its (generated or reused) data."""
    data = ensure_data(spark, args.out, p, log)
    stats = data_stats(data)
    run_dir = args.out / "runs" / f"events_{p.events}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    config = bench_config(data, run_dir)
    ids = [e.id for e in config.experiments]
    events = spark.read.format("delta").load(str(data / "events"))
    exposures = spark.read.format("delta").load(str(data / "exposures"))
    mem = Memory(spark)
    jobs: dict[str, dict[str, int]] = {k: {} for k in ("floor", "stage", "reduce", "per_metric")}
    load_before = os.getloadavg()
    mem.start()

    with job_group(spark, f"floor-{p.events}", jobs["floor"]):
        floor_s, _ = _timed(lambda: floor_query(events), args.repeat)
    log(f"  floor        {floor_s:8.1f} s")

    run_id = f"bench-{p.events}"
    with job_group(spark, f"stage-{p.events}", jobs["stage"]):
        stage_s, _ = _timed(
            lambda: pipeline.stage(spark, config, ANALYSIS_DATE, ids, run_id=run_id),
            args.repeat,
        )
    log(f"  stage        {stage_s:8.1f} s")
    with job_group(spark, f"reduce-{p.events}", jobs["reduce"]):
        reduce_s, results = _timed(
            lambda: pipeline.reduce(spark, config, ANALYSIS_DATE, ids, run_id=run_id),
            args.repeat,
        )
    log(f"  reduce       {reduce_s:8.1f} s")

    per_metric: list[float] = []
    answers: dict[str, list[dict[str, Any]]] = {}
    with job_group(spark, f"per_metric-{p.events}", jobs["per_metric"]):
        for name, metric in config.metrics.items():
            t, rows = _timed(
                lambda m=metric: per_metric_query(spark, config, m, events, exposures),
                args.repeat,
            )
            per_metric.append(t)
            answers[name] = [r.asDict() for r in rows]
    per_metric_s = sum(per_metric)
    log(f"  per-metric   {per_metric_s:8.1f} s ({len(per_metric)} queries)")
    memory = mem.stop()
    load_after = os.getloadavg()

    staged = [
        r.asDict()
        for r in spark.read.format("delta")
        .load(config.output.staging.path)
        .where(F.col("run_id") == run_id)
        .collect()
    ]
    diag = spark.read.format("delta").load(config.output.diagnostics.path)
    per_exp = (
        diag.where(F.col("check") == "assignment_units")
        .groupBy("experiment_id")
        .agg(F.sum("value").alias("units"))
        .collect()
    )
    units = sum(r["units"] for r in per_exp)
    # Caps: exact rank statistics below EXACT_CAP_VALUES values (≤ units of an experiment).
    exact_caps = max((r["units"] for r in per_exp), default=0) < EXACT_CAP_VALUES
    caps = None
    if not exact_caps:
        caps = {(r["experiment_id"], r["metric"]): r for r in staged if r["winsorized"]}
        caps = {k: {c: r[c] for c in CAP_COLUMNS} for k, r in caps.items()}
    # A process of its own, after the memory window, on an idle JVM: its memory stays out
    # of the driver's peaks (this process's RSS does not shrink after a query).
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as child:
        duckdb_s, duck = child.submit(_duckdb, config, ids, args.cores, caps, args.repeat).result()
    log(f"  DuckDB       {duckdb_s:8.1f} s")
    engines = {"per-metric": per_metric_groups(answers, exact_caps), "DuckDB": duckdb_groups(duck)}
    check = crosscheck(staged_groups(staged), engines)
    log(
        f"  cross-check  {check.groups} groups, {check.values} values: cluster_spark = "
        f"per-metric = DuckDB (max relative difference {check.max_rel_diff:.1e})"
    )
    return SizeResult(
        events=p.events,
        users=stats["users"],
        orgs=p.orgs,
        units=int(units),
        exposure_rows=stats["exposure_rows"],
        floor_s=floor_s,
        stage_s=stage_s,
        reduce_s=reduce_s,
        per_metric_s=per_metric_s,
        per_metric_queries=per_metric,
        duckdb_s=duckdb_s,
        crosscheck={**asdict(check), "exact_caps": exact_caps},
        staging_rows=len(staged),
        results_rows=len(results),
        jobs=jobs,
        memory=memory,
        load_before=load_before,
        load_after=load_after,
        extra={"max_org_size": stats["max_org_size"], "median_org_size": stats["median_org_size"]},
    )
