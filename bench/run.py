"""Benchmarks of cluster_spark's staging against a one-aggregation floor and against the
one-query-per-metric shape of warehouse tools; writes BENCHMARKS.md.

    .venv/bin/python bench/run.py                          # sizes 4M,16M,64M events
    .venv/bin/python bench/run.py --sizes 1000000,2000000  # smaller sizes
    .venv/bin/python bench/run.py --smoke --out /tmp/b --no-write-md
    .venv/bin/python bench/run.py --explain                # staging query's physical plan
    BENCH_ARGS="--sizes 1000000,2000000" make bench        # arguments through make

Data is generated with Spark built-ins only (`spark.range` + `rand`/`randn`/`exp`/`pow`
expressions), written as Delta under `--out/data/<events>/` and reused when a run with
the same parameters finds it there. Every measurement of one size uses the same
SparkSession and the same Delta files:

1. floor: one `groupBy(org_id, user_id)` with `count(*)`, `sum(value)`, `max(ts)` and
   `count(event)` over the events (every event column the metrics read),
   written to the `noop` sink (one scan, one shuffle: the least any per-unit job can do);
2. cluster_spark: `pipeline.stage` (Spark → staging + diagnostics Delta tables) and
   `pipeline.reduce` (driver → results Delta table) for all three experiments;
3. per-metric: for each of the 20 metrics one query over all three experiments — first
   exposures, events joined to them, per-unit aggregation, winsorization where configured,
   per-group sums — as warehouse tools run them;
4. driver memory: the Python driver's peak RSS (VmHWM, reset per size; ru_maxrss for the
   whole process) and the JVM's peak heap used (heap pools' peak usage, reset per size).
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import math
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:  # runnable without the editable install too
    sys.path.insert(0, str(ROOT / "src"))

from pyspark.sql import Column, DataFrame, SparkSession  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

from cluster_spark import pipeline, staging  # noqa: E402
from cluster_spark.config import Config, Metric, parse_config  # noqa: E402
from cluster_spark.session import build_spark  # noqa: E402

#: Bump when the generator changes: data written by another version is regenerated.
GENERATOR_VERSION = 1
DEFAULT_SIZES = "4000000,16000000,64000000"
SMOKE_SIZES = "20000"
WARMUP_EVENTS = 20_000
START = dt.datetime(2026, 1, 5)
DATA_START = START - dt.timedelta(days=4)  # events from 2026-01-01 ...
DATA_DAYS = 32  # ... to 2026-02-01 inclusive
ANALYSIS_DATE = dt.date(2026, 2, 1)
EVENT_TYPES = (  # (type, probability)
    ("page_view", 0.50),
    ("click", 0.20),
    ("search", 0.12),
    ("add_to_cart", 0.10),
    ("purchase", 0.06),
    ("signup", 0.02),
)
#: (id, variants, share of orgs exposed, start day offset, seed)
EXPERIMENTS = (
    ("exp_all_orgs", ("control", "treatment_a", "treatment_b"), 1.00, 0, 11),
    ("exp_half_orgs", ("control", "treatment"), 0.50, 3, 23),
    ("exp_third_orgs", ("control", "treatment"), 0.30, 7, 37),
)
TARGETS = {
    "floor_ratio": 1.5,  # cluster_spark ≤ 1.5 × floor (largest size, 20 metrics)
    "per_metric_ratio": 5.0,  # per-metric ÷ cluster_spark ≥ 5
    "doubling": 2.2,  # doubling events ≤ 2.2 × time
    "memory_growth": 1.25,  # driver memory: largest size ≤ 1.25 × smallest size
}
MIB = 1024 * 1024


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class DataParams:
    events: int
    users: int
    orgs: int
    seed: int
    version: int = GENERATOR_VERSION


def _partitions(n_rows: int) -> int:
    """Input partitions (= Delta files): ~1M rows each, at least 2."""
    return max(2, math.ceil(n_rows / 1_000_000))


def _orgs(spark: SparkSession, p: DataParams) -> DataFrame:
    """Orgs with log-normal sizes (σ = 1.2, capped at 5 % of users) scaled to ~p.users users,
    an org effect shared by its users, and the index of each org's first user."""
    sigma = 1.2
    mean_size = p.users / p.orgs
    mu = math.log(mean_size) - sigma**2 / 2
    cap = max(1, p.users // 20)
    orgs = spark.range(p.orgs, numPartitions=1).select(
        F.col("id").alias("org_idx"),
        F.least(
            F.lit(cap),
            F.greatest(F.lit(1), F.round(F.exp(F.lit(mu) + sigma * F.randn(p.seed)))),
        )
        .cast("long")
        .alias("size"),
        F.exp(0.25 * F.randn(p.seed + 1)).alias("org_effect"),
    )
    # Single-partition running sum over 20k rows: cheap, and deterministic.
    from pyspark.sql.window import Window

    w = Window.orderBy("org_idx").rowsBetween(Window.unboundedPreceding, -1)
    return orgs.withColumn("first_user", F.coalesce(F.sum("size").over(w), F.lit(0)))


def _users(orgs: DataFrame) -> DataFrame:
    return (
        orgs.select(
            "org_idx",
            "org_effect",
            "first_user",
            F.explode(F.sequence(F.lit(0), F.col("size") - 1)).alias("k"),
        )
        .withColumn("user_idx", F.col("first_user") + F.col("k"))
        .select(
            "user_idx",
            F.concat(F.lit("o"), F.lpad(F.col("org_idx").cast("string"), 6, "0")).alias("org_id"),
            F.concat(F.lit("u"), F.lpad(F.col("user_idx").cast("string"), 7, "0")).alias("user_id"),
            "org_effect",
        )
    )


def _events(spark: SparkSession, p: DataParams, users: DataFrame, n_users: int) -> DataFrame:
    """Events: a heavy-tailed choice of user (pick ∝ u², scrambled over users so activity
    is not tied to the org order), a type from EVENT_TYPES, a log-normal value for
    purchases and carts scaled by the org effect (users of one org are correlated), and a
    uniform timestamp over DATA_DAYS days."""
    prime = 1_000_003  # > any user count here, so `· prime mod n` is a permutation
    base = int(DATA_START.replace(tzinfo=dt.UTC).timestamp())
    r_type = F.rand(p.seed + 3)
    thresholds = []
    acc = 0.0
    for name, prob in EVENT_TYPES:
        acc += prob
        thresholds.append((name, acc))
    event = F.lit(EVENT_TYPES[-1][0])
    for name, upper in reversed(thresholds[:-1]):
        event = F.when(F.col("_r_type") < upper, F.lit(name)).otherwise(event)
    rows = spark.range(p.events, numPartitions=_partitions(p.events)).select(
        ((F.floor(F.pow(F.rand(p.seed + 2), 2.0) * n_users).cast("long") * prime) % n_users).alias(
            "user_idx"
        ),
        r_type.alias("_r_type"),
        F.randn(p.seed + 4).alias("_z"),
        F.timestamp_seconds(
            F.lit(base) + F.floor(F.rand(p.seed + 5) * DATA_DAYS * 86400).cast("long")
        ).alias("ts"),
    )
    joined = rows.join(F.broadcast(users), "user_idx").withColumn("event", event)
    purchase = F.col("event") == "purchase"
    cart = F.col("event") == "add_to_cart"
    value = (
        F.when(purchase, F.round(F.exp(3.2 + 0.9 * F.col("_z")) * F.col("org_effect"), 2))
        .when(cart, F.round(F.exp(3.0 + 0.8 * F.col("_z")), 2))
        .otherwise(F.lit(0.0))
    )
    return joined.select("org_id", "user_id", "event", value.alias("value"), "ts")


def _exposures(orgs: DataFrame, p: DataParams) -> DataFrame:
    """Exposures of the three experiments: each exposes a hash-chosen share of orgs within
    its first week; 10 % of orgs are exposed twice (3 h later), 0.5 % of the first
    experiment's orgs a second time in another variant."""
    org_id = F.concat(F.lit("o"), F.lpad(F.col("org_idx").cast("string"), 6, "0"))
    frames = []
    for exp_id, variants, share, offset, seed in EXPERIMENTS:
        start = int((START + dt.timedelta(days=offset)).replace(tzinfo=dt.UTC).timestamp())
        chosen = orgs.where(F.pmod(F.hash("org_idx", F.lit(seed)), F.lit(1000)) < share * 1000)
        k = len(variants)
        v_idx = F.pmod(F.hash("org_idx", F.lit(seed + 1)), F.lit(k))
        base = chosen.select(
            F.lit(exp_id).alias("experiment_id"),
            org_id.alias("org_id"),
            v_idx.alias("_v"),
            F.timestamp_seconds(
                F.lit(start) + F.floor(F.rand(p.seed + seed) * 7 * 86400).cast("long")
            ).alias("exposure_ts"),
            F.rand(p.seed + seed + 1).alias("_r"),
        )
        dup = base.where(F.col("_r") < 0.10).withColumn(
            "exposure_ts", F.col("exposure_ts") + F.expr("INTERVAL 3 HOURS")
        )
        switch = base.where(F.col("_r") > 0.995).withColumn("_v", (F.col("_v") + 1) % k)
        for frame in (base, dup, switch) if exp_id == EXPERIMENTS[0][0] else (base, dup):
            frames.append(
                frame.select(
                    "experiment_id",
                    "org_id",
                    F.element_at(F.array(*map(F.lit, variants)), F.col("_v") + 1).alias("variant"),
                    "exposure_ts",
                )
            )
    out = frames[0]
    for f in frames[1:]:
        out = out.unionByName(f)
    return out


def ensure_data(spark: SparkSession, out: Path, p: DataParams, log: Callable) -> Path:
    """Generate (or reuse) the Delta tables `events` and `exposures` for these parameters."""
    root = out / "data" / f"events_{p.events}"
    meta = root / "params.json"
    wanted = asdict(p)
    complete = meta.exists() and (root / "events" / "_delta_log").exists()
    if complete and json.loads(meta.read_text()).get("params") == wanted:
        log(f"  data: reusing {root}")
        return root
    if root.exists():
        shutil.rmtree(root)
    t0 = time.perf_counter()
    orgs = _orgs(spark, p).persist()
    users = _users(orgs).persist()
    n_users = users.count()
    _events(spark, p, users, n_users).write.format("delta").mode("overwrite").save(
        str(root / "events")
    )
    _exposures(orgs, p).coalesce(1).write.format("delta").mode("overwrite").save(
        str(root / "exposures")
    )
    n_exposures = spark.read.format("delta").load(str(root / "exposures")).count()
    sizes = orgs.agg(F.max("size"), F.expr("percentile(size, 0.5)")).first()
    users.unpersist()
    orgs.unpersist()
    stats = {
        "users": n_users,
        "orgs": p.orgs,
        "exposure_rows": n_exposures,
        "max_org_size": int(sizes[0]),
        "median_org_size": float(sizes[1]),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    meta.write_text(json.dumps({"params": wanted, "stats": stats}, indent=2))
    log(f"  data: generated {p.events:,} events in {stats['seconds']} s ({stats})")
    return root


def data_stats(root: Path) -> dict[str, Any]:
    return json.loads((root / "params.json").read_text())["stats"]


# --------------------------------------------------------------------------- config


def _ev(agg: str, column: str | None = None, *filters: dict, **extra: Any) -> dict[str, Any]:
    comp: dict[str, Any] = {"source": "events", "agg": agg, **extra}
    if column:
        comp["column"] = column
    if filters:
        comp["filter"] = list(filters)
    return comp


def _is(event: str) -> dict[str, Any]:
    return {"column": "event", "op": "eq", "value": event}


def metric_definitions() -> dict[str, dict[str, Any]]:
    """20 metrics: sums, counts and distinct counts (several filtered), two with cohort
    windows, two winsorized."""
    users = _ev("count_distinct", "user_id")
    revenue = _ev("sum", "value", _is("purchase"))
    mean, ratio = "mean", "ratio"
    defs = {
        "events_per_org": (mean, _ev("count"), None),
        "revenue_per_org": (mean, revenue, None),
        "revenue_per_user": (ratio, revenue, users),
        "purchasers_per_user": (ratio, _ev("count_distinct", "user_id", _is("purchase")), users),
        "purchases_per_user": (ratio, _ev("count", None, _is("purchase")), users),
        "clicks_per_org": (mean, _ev("count", None, _is("click")), None),
        "page_views_per_org": (mean, _ev("count", None, _is("page_view")), None),
        "carts_per_org": (mean, _ev("count", None, _is("add_to_cart")), None),
        "revenue_per_purchase": (ratio, revenue, _ev("count", None, _is("purchase"))),
        "cart_conversion": (
            ratio,
            _ev("count", None, _is("purchase")),
            _ev("count", None, _is("add_to_cart")),
        ),
        "searches_per_user": (ratio, _ev("count", None, _is("search")), users),
        "active_users_per_org": (mean, users, None),
        "clickers_per_org": (mean, _ev("count_distinct", "user_id", _is("click")), None),
        "value_per_event": (ratio, _ev("sum", "value"), _ev("count")),
        "signups_per_org": (mean, _ev("count", None, _is("signup")), None),
        "big_purchases_per_org": (
            mean,
            _ev("count", None, _is("purchase"), {"column": "value", "op": "gt", "value": 100}),
            None,
        ),
        "revenue_week1_per_org": (
            mean,
            _ev("sum", "value", _is("purchase"), window={"start_day": 0, "end_day": 6}),
            None,
        ),
        "active_users_day0_2": (
            mean,
            _ev("count_distinct", "user_id", window={"start_day": 0, "end_day": 2}),
            None,
        ),
        "revenue_per_org_winsorized": (
            mean,
            {**revenue, "winsorize": {"upper": 0.99}},
            None,
        ),
        "events_per_user_winsorized": (
            ratio,
            _ev("count", winsorize={"upper": 0.99}),
            users,
        ),
    }
    out = {}
    for name, (kind, num, den) in defs.items():
        out[name] = {"kind": kind, "numerator": num}
        if den is not None:
            out[name]["denominator"] = den
    assert len(out) == 20
    return out


def bench_config(data: Path, results: Path) -> Config:
    metrics = metric_definitions()
    experiments = [
        {
            "id": exp_id,
            "assignment_unit": "org_id",
            "analysis_unit": "user_id",
            "control": "control",
            "variants": {v: 1 for v in variants},
            "start": (START + dt.timedelta(days=offset)).date().isoformat(),
            "end": ANALYSIS_DATE.isoformat(),
            "metrics": list(metrics),
        }
        for exp_id, variants, _, offset, _ in EXPERIMENTS
    ]
    raw = {
        "exposures": {
            "path": str(data / "exposures"),
            "timestamp": "exposure_ts",
            "ids": {"org_id": "org_id"},
        },
        "sources": {
            "events": {
                "path": str(data / "events"),
                "timestamp": "ts",
                "ids": {"org_id": "org_id", "user_id": "user_id"},
            }
        },
        "metrics": metrics,
        "experiments": experiments,
        "output": {
            "staging": str(results / "staging"),
            "results": str(results / "results"),
            "diagnostics": str(results / "diagnostics"),
        },
    }
    return parse_config(raw, origin="bench/run.py")


# --------------------------------------------------------------------------- measurements


class Memory:
    """Peak memory of the driver over one size: Python RSS high-water mark (VmHWM, reset
    through /proc/self/clear_refs where the kernel allows it) and the JVM heap pools' peak
    usage (reset through their MXBeans). Sampling also tracks Runtime used memory."""

    def __init__(self, spark: SparkSession, interval: float = 0.2):
        self.jvm = spark.sparkContext._jvm
        self.interval = interval
        self.sampled_peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rss_reset = False

    def _heap_pools(self) -> list:
        mf = self.jvm.java.lang.management.ManagementFactory
        return [p for p in mf.getMemoryPoolMXBeans() if p.getType().toString() == "Heap memory"]

    def _used(self) -> int:
        rt = self.jvm.java.lang.Runtime.getRuntime()
        return rt.totalMemory() - rt.freeMemory()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sampled_peak = max(self.sampled_peak, self._used())
            except Exception:  # py4j shutting down
                return

    def start(self) -> None:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.rss_reset = True
        except OSError:
            self.rss_reset = False
        for pool in self._heap_pools():
            pool.resetPeakUsage()
        self.sampled_peak = self._used()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, float]:
        self._stop.set()
        if self._thread:
            self._thread.join()
        pools = self._heap_pools()
        pool_peak = sum(p.getPeakUsage().getUsed() for p in pools)
        old_peak = sum(
            p.getPeakUsage().getUsed()
            for p in pools
            if "Old" in p.getName() or "Tenured" in p.getName()
        )
        self.jvm.java.lang.System.gc()
        retained = self._used()
        return {
            "py_rss_peak_mib": _vm_hwm() / MIB,
            "py_rss_peak_reset": self.rss_reset,
            "py_ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MIB,
            "jvm_heap_peak_mib": pool_peak / MIB,
            "jvm_old_gen_peak_mib": old_peak / MIB,
            "jvm_heap_sampled_peak_mib": self.sampled_peak / MIB,
            "jvm_heap_after_gc_mib": retained / MIB,
            "jvm_heap_max_mib": self.jvm.java.lang.Runtime.getRuntime().maxMemory() / MIB,
        }


def _vm_hwm() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@contextmanager
def job_group(spark: SparkSession, name: str, counter: dict[str, int]) -> Iterator[None]:
    """Tag the Spark jobs of one measurement to count them (and their stages) afterwards."""
    sc = spark.sparkContext
    sc.setJobGroup(name, name)
    try:
        yield
    finally:
        tracker = sc.statusTracker()
        ids = tracker.getJobIdsForGroup(name)
        counter["jobs"] = len(ids)
        counter["stages"] = sum(
            len(info.stageIds) for info in (tracker.getJobInfo(j) for j in ids) if info
        )
        sc.setLocalProperty("spark.jobGroup.id", None)


def floor_query(events: DataFrame) -> None:
    """One aggregation per (org, user) that reads every event column the metrics read."""
    (
        events.groupBy("org_id", "user_id")
        .agg(
            F.count(F.lit(1)).alias("n"),
            F.sum("value").alias("value"),
            F.max("ts").alias("ts"),
            F.count("event").alias("event"),
        )
        .write.format("noop")
        .mode("overwrite")
        .save()
    )


def first_exposures(spark: SparkSession, config: Config, exposures: DataFrame) -> DataFrame:
    """The warehouse CTE: first exposure per (experiment, org) within each experiment's
    dates, units seen in two variants dropped."""
    # A literal table built in the JVM (spark.createDataFrame from a list would start
    # Python workers for every query).
    rows = [
        F.struct(
            F.lit(e.id).alias("experiment_id"),
            F.lit(dt.datetime.combine(e.start, dt.time())).alias("start_ts"),
            F.lit(e.analysis_time(ANALYSIS_DATE)).alias("analysis_ts"),
        )
        for e in config.experiments
    ]
    bounds = spark.range(1).select(F.inline(F.array(*rows)))
    return (
        exposures.join(F.broadcast(bounds), "experiment_id")
        .where(
            (F.col("exposure_ts") >= F.col("start_ts"))
            & (F.col("exposure_ts") < F.col("analysis_ts"))
        )
        .groupBy("experiment_id", "org_id")
        .agg(
            F.min("exposure_ts").alias("exposure_ts"),
            F.min("variant").alias("variant"),
            F.count_distinct("variant").alias("n_variants"),
            F.first("analysis_ts").alias("analysis_ts"),
        )
        .where(F.col("n_variants") == 1)
        .drop("n_variants")
    )


def component_agg(comp, keep: Column) -> Column:
    """Per-unit aggregation of one component over the joined events that pass `keep`."""
    if comp.agg == "sum":
        return F.sum(F.when(keep, F.col(comp.column).cast("double")))
    if comp.agg == "count":
        return F.count(F.when(keep, F.lit(1)))
    return F.count_distinct(F.when(keep, F.col(comp.column)))


def per_metric_query(
    spark: SparkSession, config: Config, metric: Metric, events: DataFrame, exposures: DataFrame
) -> list:
    """One metric, all experiments, as a warehouse tool's query: first exposures ⋈ events
    → per-unit (M, D) → winsorization caps (pooled per experiment) → per-group sums.
    Reuses staging.event_condition so the metric means the same thing."""
    units = first_exposures(spark, config, exposures)
    joined = (
        events.withColumnRenamed("ts", staging.TS)
        .join(F.broadcast(units), "org_id")
        .where(
            (F.col(staging.TS) >= F.col("exposure_ts"))
            & (F.col(staging.TS) <= F.col("analysis_ts"))
        )
    )
    aggs = []
    for role, comp in metric.components.items():
        if comp.agg != "unit_count":
            aggs.append(
                component_agg(comp, staging.event_condition(comp, metric.bake_hours))
                .cast("double")
                .alias(role)
            )
    per_unit = joined.groupBy("experiment_id", "org_id").agg(*aggs)

    def value(role: str) -> Column:
        if metric.components[role].agg == "unit_count":
            return F.lit(1.0)
        return F.coalesce(F.col(role), F.lit(0.0))

    d = value("den")
    m = value("num")
    if metric.kind == "ratio" and metric.conversion_rate:
        m = F.when(d == 0, F.lit(0.0)).otherwise(m)
    values = units.join(per_unit, ["experiment_id", "org_id"], "left").select(
        "experiment_id", "variant", m.alias("m"), d.alias("d")
    )
    sums = [
        F.count(F.lit(1)).alias("n"),
        F.sum("m").alias("sum_m"),
        F.sum("d").alias("sum_d"),
        F.sum(F.col("m") * F.col("m")).alias("sum_mm"),
        F.sum(F.col("d") * F.col("d")).alias("sum_dd"),
        F.sum(F.col("m") * F.col("d")).alias("sum_md"),
    ]
    if metric.winsorized:
        caps = []
        for role, col in (("num", "m"), ("den", "d")):
            w = metric.components[role].winsorize
            if w is None:
                continue
            keep = F.col(col) != 0 if w.ignore_zeros else F.lit(True)
            for side, q in (("lower", w.lower), ("upper", w.upper)):
                if q is not None:
                    pct = F.percentile_approx(
                        F.when(keep, F.col(col)), q, staging.PERCENTILE_ACCURACY
                    )
                    caps.append(pct.alias(f"{col}_{side}"))
        cap_df = values.groupBy("experiment_id").agg(*caps)
        values = values.join(F.broadcast(cap_df), "experiment_id")
        for col in ("m", "d"):
            x = F.col(col)
            if f"{col}_lower" in cap_df.columns:
                x = F.when(x == 0, x).otherwise(F.greatest(x, F.col(f"{col}_lower")))
            if f"{col}_upper" in cap_df.columns:
                x = F.when(x == 0, x).otherwise(F.least(x, F.col(f"{col}_upper")))
            values = values.withColumn(f"{col}_w", x)
        sums += [
            F.sum("m_w").alias("sum_m_w"),
            F.sum(F.col("m_w") * F.col("m_w")).alias("sum_mm_w"),
            F.sum(F.col("m_w") * F.col("d_w")).alias("sum_md_w"),
            F.sum("d_w").alias("sum_d_w"),
            F.sum(F.col("d_w") * F.col("d_w")).alias("sum_dd_w"),
        ]
    return values.groupBy("experiment_id", "variant").agg(*sums).collect()


@dataclass
class SizeResult:
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
    best, out = math.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def measure_size(
    spark: SparkSession, args: argparse.Namespace, p: DataParams, log: Callable
) -> SizeResult:
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
    with job_group(spark, f"per_metric-{p.events}", jobs["per_metric"]):
        for metric in config.metrics.values():
            t, _ = _timed(
                lambda m=metric: per_metric_query(spark, config, m, events, exposures),
                args.repeat,
            )
            per_metric.append(t)
    per_metric_s = sum(per_metric)
    log(f"  per-metric   {per_metric_s:8.1f} s ({len(per_metric)} queries)")
    memory = mem.stop()
    load_after = os.getloadavg()

    staged = spark.read.format("delta").load(config.output.staging)
    diag = spark.read.format("delta").load(config.output.diagnostics)
    units = diag.where(F.col("check") == "assignment_units").agg(F.sum("value")).first()[0] or 0
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
        staging_rows=staged.count(),
        results_rows=len(results),
        jobs=jobs,
        memory=memory,
        load_before=load_before,
        load_after=load_after,
        extra={"max_org_size": stats["max_org_size"], "median_org_size": stats["median_org_size"]},
    )


# --------------------------------------------------------------------------- explain

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
    return [scala_seq.apply(i) for i in range(scala_seq.size())]


def plan_operators(df: DataFrame) -> dict[str, int]:
    """Operator counts of a DataFrame's physical plan (the initial plan under AQE), each
    cached relation's plan counted once, file scans named by table directory. Counts
    only: the plan text is what `--explain` prints."""
    counts: dict[str, int] = {}
    cached: set[int] = set()
    stack = [df._jdf.queryExecution().executedPlan()]
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
    return df._jdf.queryExecution().executedPlan().toString()


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


def staging_plans(spark: SparkSession, config: Config) -> dict[str, dict[str, int]]:
    """Operator counts of the two queries pipeline.stage writes."""
    ids = [e.id for e in config.experiments]
    with static_plans(spark):
        staged = staging.stage(spark, config, ids, ANALYSIS_DATE, "explain")
        try:
            return {
                "staging statistics": plan_operators(staged.stats),
                "diagnostics": plan_operators(staged.diagnostics),
            }
        finally:
            staged.release()


def explain(spark: SparkSession, args: argparse.Namespace, p: DataParams, log: Callable) -> None:
    data = ensure_data(spark, args.out, p, log)
    config = bench_config(data, args.out / "runs" / "explain")
    ids = [e.id for e in config.experiments]
    with static_plans(spark):
        staged = staging.stage(spark, config, ids, ANALYSIS_DATE, "explain")
        try:
            for name, df in (
                ("staging statistics", staged.stats),
                ("diagnostics", staged.diagnostics),
            ):
                print(f"\n===== physical plan: {name} (written by pipeline.stage; AQE off) =====")
                print(physical_plan(df))
                print(f"----- operators ({name}; cached plans counted once) -----")
                for op, n in plan_operators(df).items():
                    print(f"  {op:30s} {n}")
        finally:
            staged.release()


# --------------------------------------------------------------------------- report


def machine_info(spark: SparkSession) -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    try:
        nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    except OSError:
        nproc = str(len(os.sched_getaffinity(0)))
    jvm = spark.sparkContext._jvm
    from importlib.metadata import PackageNotFoundError, version

    try:
        delta = version("delta-spark")
    except PackageNotFoundError:
        delta = "unknown"
    jars = ", ".join(Path(j).name for j in spark.conf.get("spark.jars", "").split(",") if j)
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": nproc,
        "memory": mem,
        "cpu": cpu,
        "python": platform.python_version(),
        "spark": spark.version,
        "delta": f"{delta} ({jars})" if jars else delta,
        "java": f"{jvm.java.lang.System.getProperty('java.vm.name')} "
        f"{jvm.java.lang.System.getProperty('java.version')}",
        "master": spark.sparkContext.master,
        "driver_memory": spark.conf.get("spark.driver.memory", "default"),
        "shuffle_partitions": spark.conf.get("spark.sql.shuffle.partitions"),
        "adaptive": spark.conf.get("spark.sql.adaptive.enabled"),
    }


def _per_doubling(t1: float, t2: float, n1: int, n2: int) -> float:
    """Time factor per doubling of events between two sizes: (t2/t1)^(1/log2(n2/n1))."""
    if t1 <= 0 or n2 <= n1:
        return math.nan
    return (t2 / t1) ** (1 / math.log2(n2 / n1))


def _ok(passed: bool | None) -> str:
    return "n/a" if passed is None else "PASS" if passed else "FAIL"


HEADER = (
    "| events | users | units | floor s | stage s | reduce s | cluster_spark s | per-metric s "
    "| cs ÷ floor | per-metric ÷ cs | cs ×/doubling | py RSS peak MiB | JVM heap peak MiB |"
)


def results_table(rows: list[SizeResult]) -> str:
    lines = [HEADER, "|" + "|".join("---:" for _ in range(HEADER.count("|") - 1)) + "|"]
    prev = None
    for r in rows:
        growth = (
            f"{_per_doubling(prev.cluster_s, r.cluster_s, prev.events, r.events):.2f}"
            if prev
            else "—"
        )
        lines.append(
            f"| {r.events:,} | {r.users:,} | {r.units:,} | {r.floor_s:.1f} | {r.stage_s:.1f} "
            f"| {r.reduce_s:.1f} | {r.cluster_s:.1f} | {r.per_metric_s:.1f} "
            f"| {r.cluster_s / r.floor_s:.2f} | {r.per_metric_s / r.cluster_s:.2f} | {growth} "
            f"| {r.memory['py_rss_peak_mib']:.0f} | {r.memory['jvm_heap_peak_mib']:.0f} |"
        )
        prev = r
    return "\n".join(lines)


def targets(rows: list[SizeResult]) -> list[tuple[str, str, str, bool | None]]:
    """(target, measured, threshold, passed) per target of the issue."""
    big, small = rows[-1], rows[0]
    out = [
        (
            f"cluster_spark ≤ 1.5 × floor at 20 metrics (largest size, {big.events:,} events)",
            f"{big.cluster_s / big.floor_s:.2f} × ({big.cluster_s:.1f} s vs {big.floor_s:.1f} s)",
            "≤ 1.5",
            big.cluster_s / big.floor_s <= TARGETS["floor_ratio"],
        ),
        (
            f"per-metric ÷ cluster_spark ≥ 5 (largest size, {big.events:,} events)",
            f"{big.per_metric_s / big.cluster_s:.2f} × "
            f"({big.per_metric_s:.1f} s vs {big.cluster_s:.1f} s)",
            "≥ 5",
            big.per_metric_s / big.cluster_s >= TARGETS["per_metric_ratio"],
        ),
    ]
    if len(rows) > 1:
        factors = [
            (a, b, _per_doubling(a.cluster_s, b.cluster_s, a.events, b.events))
            for a, b in itertools.pairwise(rows)
        ]
        worst = max(f for _, _, f in factors)
        shown = ", ".join(f"{a.events:,}→{b.events:,}: {f:.2f}×" for a, b, f in factors)
        if min(f for _, _, f in factors) < 1:
            shown += " (below 1: fixed costs or noise dominate at these sizes, not evidence)"
        out.append(
            (
                "doubling events ≤ 2.2 × time (cluster_spark stage + reduce, per doubling)",
                shown,
                "≤ 2.2",
                worst <= TARGETS["doubling"],
            )
        )
        for key, label in (
            ("py_rss_peak_mib", "Python driver peak RSS"),
            ("jvm_heap_peak_mib", "JVM driver peak heap used (local mode: includes executors)"),
            ("jvm_old_gen_peak_mib", "JVM driver peak old-generation heap (long-lived objects)"),
        ):
            a, b = small.memory[key], big.memory[key]
            out.append(
                (
                    f"driver memory does not grow with events: {label}",
                    f"{a:.0f} MiB at {small.events:,} → {b:.0f} MiB at {big.events:,} "
                    f"({b / a:.2f} ×)",
                    "≤ 1.25 × smallest",
                    b <= TARGETS["memory_growth"] * a,
                )
            )
    else:
        out.append(("doubling events ≤ 2.2 × time", "needs two sizes", "≤ 2.2", None))
        out.append(("driver memory does not grow with events", "needs two sizes", "—", None))
    return out


def targets_table(rows: list[SizeResult]) -> str:
    lines = ["| target | measured | threshold | result |", "|---|---|---|---|"]
    for name, measured, threshold, passed in targets(rows):
        lines.append(f"| {name} | {measured} | {threshold} | **{_ok(passed)}** |")
    return "\n".join(lines)


def detail_table(rows: list[SizeResult]) -> str:
    lines = [
        "| events | staging rows | results rows | Spark jobs (floor / stage / reduce / per-metric)"
        " | slowest per-metric query s | py ru_maxrss MiB | JVM heap sampled peak MiB "
        "| JVM old gen peak MiB | JVM heap after GC MiB | JVM heap max MiB "
        "| load avg before → after |",
        "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        j = r.jobs
        lines.append(
            f"| {r.events:,} | {r.staging_rows} | {r.results_rows} "
            f"| {j['floor'].get('jobs')} / {j['stage'].get('jobs')} / {j['reduce'].get('jobs')} "
            f"/ {j['per_metric'].get('jobs')} | {max(r.per_metric_queries):.1f} "
            f"| {r.memory['py_ru_maxrss_mib']:.0f} "
            f"| {r.memory['jvm_heap_sampled_peak_mib']:.0f} "
            f"| {r.memory['jvm_old_gen_peak_mib']:.0f} "
            f"| {r.memory['jvm_heap_after_gc_mib']:.0f} | {r.memory['jvm_heap_max_mib']:.0f} "
            f"| {r.load_before[0]:.1f} → {r.load_after[0]:.1f} |"
        )
    return "\n".join(lines)


def _experiments_text() -> str:
    return ", ".join(
        f"`{e}`: {int(s * 100)} % of orgs, {len(v)} variants" for e, v, s, _, _ in EXPERIMENTS
    )


def plans_table(plans: dict[str, dict[str, int]]) -> str:
    names = list(plans)
    ops = [op for op in next(iter(plans.values())) if any(p.get(op) for p in plans.values())]
    lines = ["| operator | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for op in ops:
        lines.append(f"| {op} | " + " | ".join(str(plans[n].get(op, 0)) for n in names) + " |")
    return "\n".join(lines)


def markdown(
    rows: list[SizeResult],
    machine: dict[str, str],
    args: argparse.Namespace,
    plans: dict[str, dict[str, int]] | None = None,
) -> str:
    timing_note = f" (best of {args.repeat})" if args.repeat > 1 else ""
    timing_note += ", in one SparkSession"
    if not args.no_warmup:
        timing_note += (
            f" after an untimed warm-up run of every measurement on {WARMUP_EVENTS:,} events"
        )
    plan_section = (
        f"""
## Staging plan

Operators in the physical plans of the two queries `pipeline.stage` runs (the staging
statistics, then the diagnostics — each its own Spark query over the sources), as planned
for this config, planned without AQE so that reused exchanges show as `ReusedExchange`
(`bench/run.py --explain` prints the plans; cached sub-plans are counted once;
`Scan ExistingRDD` is a DataFrame made with `spark.createDataFrame` from a Python list,
which starts Python workers):

{plans_table(plans)}
"""
        if plans
        else ""
    )
    sizes = ", ".join(f"{r.events:,}" for r in rows)
    default = [int(s) for s in DEFAULT_SIZES.split(",")]
    partial = (
        ""
        if [r.events for r in rows] == default
        else (
            f"\n> **Note:** measured at {sizes} events, not the issue's default sizes "
            f'({", ".join(f"{s:,}" for s in default)}). Targets stated for "the largest '
            f'size" are evaluated at {rows[-1].events:,} events here.\n'
        )
    )
    return f"""# Benchmarks

Generated by `make bench` (`.venv/bin/python bench/run.py {" ".join(args.argv)}`)
on {machine["date"]}. Do not edit by hand.
{partial}
## Results

{results_table(rows)}

Seconds are wall-clock{timing_note}.
*units* = analysed (experiment, org) pairs over the three experiments;
*cluster_spark* = `pipeline.stage` + `pipeline.reduce` for all three experiments
(20 metrics each, staging/diagnostics/results written as Delta);
*cs ×/doubling* = cluster_spark time factor per doubling of events from the previous size,
`(t₂/t₁)^(1/log₂(n₂/n₁))`; memory columns are peaks over the size's measurements.

## Targets

{targets_table(rows)}

## Details

{detail_table(rows)}

## What is measured

- **Data** (seeded, Spark built-ins only: `spark.range` + `rand`/`randn`/`exp`/`pow`):
  ~{rows[0].users:,} users in {rows[0].orgs:,} orgs with log-normal sizes (σ = 1.2, median
  {rows[0].extra["median_org_size"]:.0f}, largest {rows[0].extra["max_org_size"]:,} users),
  events of {len(EVENT_TYPES)} types ({", ".join(t for t, _ in EVENT_TYPES)}) with a
  heavy-tailed choice of user, log-normal purchase values correlated within an org, over
  {DATA_DAYS} days; exposures of 3 experiments
  ({_experiments_text()}), 10 % of orgs exposed twice, 0.5 % in two variants. Delta tables under
  `{args.out}/data/`.
- **Config** (built in code with `parse_config`): 20 metrics — sums, counts and distinct
  counts of `user_id`, several filtered by event type (one also by value), two with cohort
  windows (days 0–6, 0–2), two winsorized at the 99th percentile; every experiment uses all
  20 and has `analysis_unit: user_id` (so the multi-unit check runs).
- **floor**: `groupBy(org_id, user_id).agg(count(*), sum(value), max(ts), count(event))` over
  the events (every event column the metrics read), written to the `noop` sink: one scan
  and one shuffle, no join, no conditions.
- **cluster_spark**: `pipeline.stage` (staging + diagnostics Delta tables) and
  `pipeline.reduce` (reads them, driver-side statistics, results Delta table).
- **per-metric**: the warehouse-tool shape, one query per metric covering all three
  experiments (so 20 queries, not 60): first exposures, events joined to them (broadcast),
  per-unit aggregation with `count(DISTINCT)` and the same `staging.event_condition`, units
  without events as zeros, percentile caps where winsorized, per-group sums, collected.
- **memory**: Python driver peak RSS (VmHWM after resetting it through
  `/proc/self/clear_refs` at the start of the size; `ru_maxrss` is the whole-process peak)
  and the JVM's peak heap used (sum of the heap pools' peak usage, reset per size). In
  `local[*]` mode the driver JVM also runs the executors' tasks, so its heap peak includes
  task memory and is bounded by `-Xmx` ({rows[0].memory["jvm_heap_max_mib"]:.0f} MiB);
  "after GC" is what the JVM still holds once the size is done.

{plan_section}
## Machine

| | |
|---|---|
| date | {machine["date"]} |
| nproc | {machine["nproc"]} |
| memory | {machine["memory"]} |
| CPU | {machine["cpu"]} |
| Python | {machine["python"]} |
| Spark | {machine["spark"]} (master `{machine["master"]}`, driver memory \
{machine["driver_memory"]}, shuffle partitions {machine["shuffle_partitions"]}, AQE \
{machine["adaptive"]}) |
| Delta | {machine["delta"]} |
| Java | {machine["java"]} |

The machine is shared: the load average before and after each size is in the details
table; timings under load are noisy and slower than on an idle machine.
"""


# --------------------------------------------------------------------------- main


def _sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(s.replace("_", "")) for s in text.split(",") if s.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes {text!r}: comma-separated integers") from None
    if not sizes or sizes[0] <= 0:
        raise argparse.ArgumentTypeError(f"--sizes {text!r}: give positive event counts")
    return sizes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=_sizes, help=f"event counts (default {DEFAULT_SIZES})")
    parser.add_argument("--smoke", action="store_true", help=f"tiny sizes ({SMOKE_SIZES})")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "bench", help="data dir")
    parser.add_argument("--users", type=int, help="users (default 200k; 2k with --smoke)")
    parser.add_argument("--orgs", type=int, help="orgs (default 20k; 200 with --smoke)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeat", type=int, default=1, help="best of N per measurement")
    parser.add_argument("--cores", type=int, default=2, help="local[N] (default 2)")
    parser.add_argument("--driver-memory", default="6g", help="spark.driver.memory")
    parser.add_argument(
        "--shuffle-partitions",
        type=int,
        help="spark.sql.shuffle.partitions (default 2×cores within 8..16; 2 with --smoke)",
    )
    parser.add_argument("--md", type=Path, default=ROOT / "BENCHMARKS.md", help="report file")
    parser.add_argument("--no-write-md", action="store_true", help="do not write the report")
    parser.add_argument(
        "--explain",
        action="store_true",
        help="print the staging query's physical plan (smallest size) and exit",
    )
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up")
    parser.add_argument(
        "--no-aqe", action="store_true", help="adaptive query execution off (on by default)"
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    # `make bench` runs the script without arguments: BENCH_ARGS passes some, e.g.
    # BENCH_ARGS="--sizes 1000000,2000000" make bench
    argv = shlex.split(os.environ.get("BENCH_ARGS", "")) + argv
    args = parser.parse_args(argv)
    args.argv = argv
    if args.sizes is None:
        args.sizes = _sizes(SMOKE_SIZES if args.smoke else DEFAULT_SIZES)
    if args.shuffle_partitions is None:
        args.shuffle_partitions = 2 if args.smoke else min(16, max(8, 2 * (cores or 2)))
    args.no_warmup = args.no_warmup or args.smoke  # smoke: start-up costs, not timings
    args.no_aqe = args.no_aqe or args.smoke
    args.users = args.users or (2_000 if args.smoke else 200_000)
    args.orgs = args.orgs or (200 if args.smoke else 20_000)
    args.out = args.out.resolve()
    return args


def spark_session(args: argparse.Namespace) -> SparkSession:
    """Built first, so spark.driver.memory reaches the JVM that this starts."""
    conf = {
        "spark.driver.memory": args.driver_memory,
        "spark.sql.shuffle.partitions": str(args.shuffle_partitions),
        "spark.default.parallelism": str(args.shuffle_partitions),
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.adaptive.enabled": str(not args.no_aqe).lower(),
        "spark.databricks.delta.snapshotPartitions": "2",
        "spark.sql.sources.parallelPartitionDiscovery.parallelism": "2",
        "spark.local.dir": str(args.out / "tmp"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    spark = build_spark("cluster_spark bench", local_master=f"local[{args.cores}]", extra_conf=conf)
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def log(msg: str) -> None:
        print(msg, flush=True)

    spark = spark_session(args)
    params = [DataParams(n, args.users, args.orgs, args.seed) for n in args.sizes]
    try:
        if args.explain:
            explain(spark, args, params[0], log)
            return 0
        machine = machine_info(spark)
        log(
            f"cluster_spark bench: sizes {', '.join(f'{n:,}' for n in args.sizes)} events, "
            f"{machine['master']}, driver memory {machine['driver_memory']}, "
            f"load {os.getloadavg()[0]:.1f}"
        )
        if not args.no_warmup:
            # Every measurement once on tiny data, untimed: JIT, Spark's code-generation
            # cache (same plan shapes at every size), Delta and Python-worker start-up.
            warm = DataParams(WARMUP_EVENTS, args.users, args.orgs, args.seed)
            log(f"warm-up on {warm.events:,} events (untimed)")
            measure_size(spark, args, warm, lambda msg: None)
        rows = []
        for p in params:
            log(f"size {p.events:,} events")
            rows.append(measure_size(spark, args, p, log))
        data = args.out / "data" / f"events_{params[0].events}"
        plans = staging_plans(spark, bench_config(data, args.out / "runs" / "explain"))
        table = results_table(rows)
        print()
        print(table)
        print()
        print(targets_table(rows))
        (args.out / "bench.json").write_text(
            json.dumps(
                {
                    "machine": machine,
                    "args": args.argv,
                    "rows": [{**asdict(r), "cluster_s": r.cluster_s} for r in rows],
                    "staging_plan_operators": plans,
                    "targets": [
                        {"target": t, "measured": m, "threshold": th, "passed": ok}
                        for t, m, th, ok in targets(rows)
                    ],
                },
                indent=2,
            )
        )
        if not args.no_write_md:
            args.md.write_text(markdown(rows, machine, args, plans))
            log(f"\nwrote {args.md}")
        return 0
    finally:
        spark.stop()


if __name__ == "__main__":
    sys.exit(main())
