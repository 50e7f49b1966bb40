"""The units axis: how cluster_spark scales with assignment units rather than events.

- `users`: a user-randomized experiment (assignment unit = analysis unit = user) with
  1M, 4M or 10M units, ~4 events per unit (a hash-chosen unit per event, so Poisson-like
  counts), 3 metrics plus one `count_distinct` of a non-id column (`product_id`);
- `heavy_org`: an org experiment on 1M users in 2,000 orgs whose largest org holds 200k
  users, ~4 events per user: the skew one heavy key puts on the per-unit aggregation and
  on distinct counts within a unit.

Data is generated with Spark built-ins only and kept as Delta under
`<out>/data/units_<kind>_<n>/` (reused when the parameters match). Each size is measured
in the bench's SparkSession: a floor (one `groupBy` per unit over the events, to the
`noop` sink), `pipeline.stage` and `pipeline.reduce`, their Spark jobs, and the driver's
peak memory. `scripts/bounded_driver.py --units` runs the same data under a standalone
cluster with a 512m driver.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

UNIT_SIZES = "1000000,4000000,10000000"
SMOKE_UNITS = "20000"
EVENTS_PER_UNIT = 4
HEAVY_ORG_USERS = 200_000
START = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
ANALYSIS_DATE = dt.date(2026, 2, 1)
DAYS = 32  # events from 2026-01-01 to 2026-02-01
PRODUCTS = 5_000
VERSION = 1


@dataclass(frozen=True)
class UnitsParams:
    """One dataset of the units axis; recorded in params.json for reuse."""

    kind: str  # "users" or "heavy_org"
    units: int  # assignment units: users, or orgs for heavy_org
    users: int
    events: int
    heavy_users: int = 0  # users of org 0 (heavy_org only)
    seed: int = 7
    version: int = VERSION

    @property
    def name(self) -> str:
        return f"units_{self.kind}_{self.units}"


def users_params(units: int) -> UnitsParams:
    return UnitsParams("users", units, units, EVENTS_PER_UNIT * units)


def heavy_org_params(
    users: int = 1_000_000, orgs: int = 2_000, heavy: int = HEAVY_ORG_USERS
) -> UnitsParams:
    return UnitsParams("heavy_org", orgs, users, EVENTS_PER_UNIT * users, heavy_users=heavy)


def _id(prefix: str, col: str | F.Column) -> F.Column:
    return F.concat(F.lit(prefix), F.col(col) if isinstance(col, str) else col)


def _org_of_user(p: UnitsParams, user_idx: F.Column) -> F.Column:
    """Users [0, heavy_users) are org 0; the others spread over orgs 1..units-1."""
    return F.when(user_idx < p.heavy_users, F.lit(0)).otherwise(
        F.lit(1) + F.pmod(user_idx, F.lit(p.units - 1))
    )


def _events(spark: SparkSession, p: UnitsParams) -> DataFrame:
    n_parts = max(2, p.events // 2_000_000)
    user = F.pmod(F.hash("id", F.lit(p.seed)), F.lit(p.users))
    purchase = F.rand(p.seed + 1) < 0.1
    cols = [
        _id("u", user.cast("string")).alias("user_id"),
        F.when(purchase, "purchase").otherwise("page_view").alias("event"),
        F.when(purchase, F.round(F.exp(3 + F.randn(p.seed + 2)), 2)).alias("value"),
        _id("p", F.pmod(F.hash("id", F.lit(p.seed + 3)), F.lit(PRODUCTS)).cast("string")).alias(
            "product_id"
        ),
        (
            F.lit(START - dt.timedelta(days=4))
            + F.make_dt_interval(secs=F.rand(p.seed + 4) * DAYS * 86_400)
        ).alias("ts"),
    ]
    if p.kind == "heavy_org":
        cols.insert(0, _id("o", _org_of_user(p, user).cast("string")).alias("org_id"))
    return spark.range(p.events, numPartitions=n_parts).select(*cols)


def _exposures(spark: SparkSession, p: UnitsParams) -> DataFrame:
    unit = "user_id" if p.kind == "users" else "org_id"
    prefix = "u" if p.kind == "users" else "o"
    return spark.range(p.units, numPartitions=max(1, p.units // 2_000_000)).select(
        F.lit(p.kind).alias("experiment_id"),
        _id(prefix, F.col("id").cast("string")).alias(unit),
        F.when(F.pmod(F.hash("id", F.lit(p.seed + 5)), F.lit(2)) == 0, "control")
        .otherwise("treatment")
        .alias("variant"),
        (F.lit(START) + F.make_dt_interval(secs=F.rand(p.seed + 6) * 7 * 86_400)).alias(
            "exposure_ts"
        ),
    )


def ensure_units_data(spark: SparkSession, out: Path, p: UnitsParams, log: Callable) -> Path:
    """Generate (or reuse) the Delta tables `events` and `exposures` of one dataset."""
    root = out / "data" / p.name
    meta = root / "params.json"
    if meta.exists() and json.loads(meta.read_text()) == asdict(p):
        log(f"  data: reusing {root}")
        return root
    if root.exists():
        shutil.rmtree(root)
    t0 = time.perf_counter()
    _events(spark, p).write.format("delta").save(str(root / "events"))
    _exposures(spark, p).write.format("delta").save(str(root / "exposures"))
    meta.write_text(json.dumps(asdict(p), indent=2))
    log(f"  data: generated {p.name} ({p.events:,} events) in {time.perf_counter() - t0:.0f} s")
    return root


def units_config_dict(p: UnitsParams, data: Path, out: Path) -> dict[str, Any]:
    """The config analysed: 3 metrics plus a count_distinct of `product_id`."""
    purchase = [{"column": "event", "op": "eq", "value": "purchase"}]
    revenue = {"source": "events", "agg": "sum", "column": "value", "filter": purchase}
    products = {"source": "events", "agg": "count_distinct", "column": "product_id"}
    if p.kind == "users":
        ids = {"user_id": "user_id"}
        metrics = {
            "revenue_per_user": {"kind": "mean", "numerator": revenue},
            "purchases_per_user": {
                "kind": "mean",
                "numerator": {"source": "events", "agg": "count", "filter": purchase},
            },
            "events_per_user": {"kind": "mean", "numerator": {"source": "events", "agg": "count"}},
            "products_per_user": {"kind": "mean", "numerator": products},
        }
        unit, analysis = "user_id", None
    else:
        ids = {"org_id": "org_id", "user_id": "user_id"}
        users = {"source": "events", "agg": "count_distinct", "column": "user_id"}
        metrics = {
            "revenue_per_user": {"kind": "ratio", "numerator": revenue, "denominator": users},
            "events_per_user": {
                "kind": "ratio",
                "numerator": {"source": "events", "agg": "count"},
                "denominator": users,
            },
            "purchases_per_org": {
                "kind": "mean",
                "numerator": {"source": "events", "agg": "count", "filter": purchase},
            },
            "products_per_org": {"kind": "mean", "numerator": products},
        }
        unit, analysis = "org_id", "user_id"
    experiment: dict[str, Any] = {
        "id": p.kind,
        "assignment_unit": unit,
        "control": "control",
        "variants": ["control", "treatment"],
        "start": START.date().isoformat(),
        "metrics": sorted(metrics),
    }
    if analysis:
        experiment["analysis_unit"] = analysis
    return {
        "exposures": {
            "path": str(data / "exposures"),
            "timestamp": "exposure_ts",
            "ids": {unit: unit},
        },
        "sources": {"events": {"path": str(data / "events"), "timestamp": "ts", "ids": ids}},
        "metrics": metrics,
        "experiments": [experiment],
        "output": {k: str(out / k) for k in ("staging", "results", "diagnostics")},
    }


@dataclass
class UnitsResult:
    """One dataset's measurements (seconds, Spark jobs, driver memory)."""

    kind: str
    units: int
    users: int
    heavy_users: int
    events: int
    floor_s: float
    stage_s: float
    reduce_s: float
    analysed_units: int
    jobs: dict[str, dict[str, int]]
    memory: dict[str, float]
    load: tuple[float, float, float]

    @property
    def cluster_s(self) -> float:
        return self.stage_s + self.reduce_s


def measure_units(
    spark: SparkSession, args: argparse.Namespace, p: UnitsParams, log: Callable
) -> UnitsResult:
    """Floor, stage and reduce of one dataset, with job counts and driver memory."""
    import os

    from jvm import Memory, job_group

    from cluster_spark import pipeline
    from cluster_spark.config import parse_config

    data = ensure_units_data(spark, args.out, p, log)
    run_dir = args.out / "runs" / p.name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    config = parse_config(units_config_dict(p, data, run_dir))
    unit = config.experiments[0].assignment_unit
    events = spark.read.format("delta").load(str(data / "events"))
    jobs: dict[str, dict[str, int]] = {k: {} for k in ("floor", "stage", "reduce")}
    mem = Memory(spark)
    mem.start()
    with job_group(spark, f"floor-{p.name}", jobs["floor"]):
        t0 = time.perf_counter()
        events.groupBy(unit).agg(
            F.count(F.lit(1)), F.sum("value"), F.max("ts"), F.count("event"),
            F.count_distinct("product_id"),
        ).write.format("noop").mode("overwrite").save()  # fmt: skip
        floor_s = time.perf_counter() - t0
    log(f"  floor        {floor_s:8.1f} s")
    with job_group(spark, f"stage-{p.name}", jobs["stage"]):
        t0 = time.perf_counter()
        run_id = pipeline.stage(spark, config, ANALYSIS_DATE)
        stage_s = time.perf_counter() - t0
    log(f"  stage        {stage_s:8.1f} s")
    with job_group(spark, f"reduce-{p.name}", jobs["reduce"]):
        t0 = time.perf_counter()
        results = pipeline.reduce(spark, config, ANALYSIS_DATE, run_id=run_id)
        reduce_s = time.perf_counter() - t0
    log(f"  reduce       {reduce_s:8.1f} s")
    memory = mem.stop()
    analysed = sum(r["n_units"] for r in results if r["metric"] == config.experiments[0].metrics[0])
    return UnitsResult(
        kind=p.kind,
        units=p.units,
        users=p.users,
        heavy_users=p.heavy_users,
        events=p.events,
        floor_s=floor_s,
        stage_s=stage_s,
        reduce_s=reduce_s,
        analysed_units=analysed,
        jobs=jobs,
        memory=memory,
        load=os.getloadavg(),
    )


UNITS_HEADER = (
    "| experiment | assignment units | users | events | floor s | stage s | reduce s "
    "| cluster_spark s | ÷ floor | jobs (stage + reduce) | py RSS peak MiB "
    "| JVM heap peak MiB | JVM heap after GC MiB |"
)


def units_table(rows: list[UnitsResult]) -> str:
    lines = [UNITS_HEADER, "|---|" + "---:|" * (UNITS_HEADER.count("|") - 2)]
    for r in rows:
        jobs = r.jobs["stage"].get("jobs", 0) + r.jobs["reduce"].get("jobs", 0)
        lines.append(
            f"| {r.kind} | {r.units:,} | {r.users:,} | {r.events:,} | {r.floor_s:.1f} "
            f"| {r.stage_s:.1f} | {r.reduce_s:.1f} | {r.cluster_s:.1f} "
            f"| {r.cluster_s / r.floor_s:.2f} | {jobs} | {r.memory['py_rss_peak_mib']:.0f} "
            f"| {r.memory['jvm_heap_peak_mib']:.0f} | {r.memory['jvm_heap_after_gc_mib']:.0f} |"
        )
    return "\n".join(lines)


def units_markdown(rows: list[UnitsResult]) -> str:
    """The units-axis section of BENCHMARKS.md (empty without rows)."""
    if not rows:
        return ""
    return f"""
## Units axis

A user-randomized experiment (assignment unit = analysis unit = user, ~{EVENTS_PER_UNIT}
events per unit, 3 metrics plus a `count_distinct` of `product_id`) at several numbers of
assignment units, and an org experiment (`heavy_org`) whose largest org holds
{max((r.heavy_users for r in rows), default=0):,} of its users (`bench/units.py`). Same
session as above;
jobs are the Spark jobs of `pipeline.stage` + `pipeline.reduce` (with AQE, each shuffle
stage is its own job). In local mode the driver JVM also runs the tasks, so its heap is
not the driver's own: `scripts/bounded_driver.py --units` measures that
(docs/benchmarks.md, "Bounded driver").

{units_table(rows)}
"""
