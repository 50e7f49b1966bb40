"""The benchmark's data: seeded events and exposures generated with Spark built-ins only
(`spark.range` + `rand`/`randn`/`exp`/`pow` expressions), written as Delta under
`<out>/data/events_<n>/` and reused when a run with the same parameters finds them there;
the dates and the three experiments they cover."""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

#: Bump when the generator changes: data written by another version is regenerated.
GENERATOR_VERSION = 1
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


@dataclass(frozen=True)
class DataParams:
    """One size's data; recorded in params.json, so that a later run with the same
    parameters (and generator version) reuses the tables."""

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


def data_root(out: Path, events: int) -> Path:
    """Where the data of one size lives: `<out>/data/events_<n>/`."""
    return out / "data" / f"events_{events}"


def ensure_data(spark: SparkSession, out: Path, p: DataParams, log: Callable) -> Path:
    """Generate (or reuse) the Delta tables `events` and `exposures` for these parameters."""
    root = data_root(out, p.events)
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
    """What ensure_data recorded about the generated data (users, exposure rows, org sizes)."""
    return json.loads((root / "params.json").read_text())["stats"]
