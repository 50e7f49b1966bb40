"""Show the driver's memory is bounded: analyse data far larger than a 512m driver.

Generates N events with Spark built-ins (no Python rows), starts a standalone cluster on
127.0.0.1 (two workers, 1 core and 1g each; the harness of tests/test_submit_cluster.py) and
spark-submits the analysis with `--driver-memory 512m`:

    .venv/bin/python scripts/bounded_driver.py --events 30000000 --out out/driver_check
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import yaml

from cluster_spark.session import build_spark

ROOT = Path(__file__).resolve().parents[1]


def generate(out: Path, n_events: int, n_users: int = 200_000, n_orgs: int = 20_000) -> None:
    from pyspark.sql import functions as F

    spark = build_spark("bounded-driver data", local_master="local[2]")
    start = F.lit("2026-01-05 00:00:00").cast("timestamp")
    users = (F.col("id") * 7919) % n_users
    purchase = F.rand(1) < 0.1
    (
        spark.range(n_events)
        .select(
            (users % n_orgs).cast("string").alias("org_id"),
            users.cast("string").alias("user_id"),
            F.when(purchase, "purchase").otherwise("page_view").alias("event"),
            F.when(purchase, F.exp(F.randn(2)) * 20).otherwise(0.0).alias("value"),
            (start + F.make_dt_interval(secs=(F.rand(3) * 35 - 7) * 86400)).alias("ts"),
        )
        .write.format("delta")
        .mode("overwrite")
        .save(str(out / "events"))
    )
    (
        spark.range(n_orgs)
        .select(
            F.lit("big").alias("experiment_id"),
            F.col("id").cast("string").alias("org_id"),
            F.when(F.col("id") % 2 == 0, "control").otherwise("treatment").alias("variant"),
            (start + F.make_dt_interval(secs=F.rand(4) * 7 * 86400)).alias("exposure_ts"),
        )
        .write.format("delta")
        .mode("overwrite")
        .save(str(out / "exposures"))
    )
    spark.stop()


def config(out: Path) -> Path:
    purchase = [{"column": "event", "op": "eq", "value": "purchase"}]
    raw = {
        "exposures": {
            "path": str(out / "exposures"),
            "timestamp": "exposure_ts",
            "ids": {"org_id": "org_id"},
        },
        "sources": {
            "events": {
                "path": str(out / "events"),
                "timestamp": "ts",
                "ids": {"org_id": "org_id", "user_id": "user_id"},
            }
        },
        "metrics": {
            "revenue_per_user": {
                "kind": "ratio",
                "numerator": {
                    "source": "events",
                    "agg": "sum",
                    "column": "value",
                    "filter": purchase,
                },
                "denominator": {"source": "events", "agg": "count_distinct", "column": "user_id"},
            },
            "events_per_org": {"kind": "mean", "numerator": {"source": "events", "agg": "count"}},
        },
        "experiments": [
            {
                "id": "big",
                "assignment_unit": "org_id",
                "analysis_unit": "user_id",
                "control": "control",
                "start": "2026-01-05",
                "metrics": ["revenue_per_user", "events_per_org"],
            }
        ],
        "output": {k: str(out / k) for k in ("staging", "results", "diagnostics")},
    }
    path = out / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def main() -> int:
    from tests.test_submit_cluster import Cluster

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=30_000_000)
    parser.add_argument("--out", type=Path, default=Path("out/driver_check"))
    parser.add_argument("--driver-memory", default="512m")
    args = parser.parse_args()
    out = args.out.resolve()
    if not (out / "events" / "_delta_log").exists():
        generate(out, args.events)
    size = sum(f.stat().st_size for f in (out / "events").rglob("*.parquet"))
    cluster = Cluster(out / "cluster")
    cluster.start(n_workers=2)
    try:
        cluster.wait_workers(2)
        t0 = time.perf_counter()
        proc = subprocess.run(
            [
                str(ROOT / "scripts" / "submit.sh"),
                "--master",
                cluster.url,
                "--driver-memory",
                args.driver_memory,
                "--conf",
                "spark.sql.shuffle.partitions=16",
                "--",
                "run",
                "--config",
                str(config(out)),
                "--date",
                "2026-02-01",
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        elapsed = time.perf_counter() - t0
    finally:
        cluster.stop()
    (out / "run.log").write_text(proc.stdout + proc.stderr)
    print(proc.stdout[-3000:])
    print(
        f"events: {args.events:,} ({size / 2**20:,.0f} MiB of Parquet on disk); "
        f"driver heap {args.driver_memory}; exit {proc.returncode}; {elapsed:.0f}s"
    )
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
