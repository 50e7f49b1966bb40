"""Show the driver's memory is bounded: analyse data far larger than a 512m driver, and
measure the driver JVM's heap at several sizes.

For each size, generates N events with Spark built-ins (no Python rows), starts a
standalone cluster on 127.0.0.1 (two workers, 1 core and 1g each; the harness of
tests/test_submit_cluster.py) and spark-submits the analysis with `--driver-memory 512m`
and the driver's GC log on. In local mode the driver JVM also runs the tasks; here the
executors are separate JVMs, so the log shows the driver's own heap:

    .venv/bin/python scripts/bounded_driver.py --events 4000000,16000000 --out out/driver_check
    .venv/bin/python scripts/bounded_driver.py --units 1000000,10000000  # user-randomized

`--units N,...` analyses the bench's user-randomized experiment (`bench/units.py`:
assignment unit = user, ~4 events per unit, 3 metrics plus a count_distinct of a non-id
column) with N assignment units instead.

Prints per size: exit code, seconds, the heap used at its highest before a collection and
the most still in use after one that evacuates (both in MiB, from the GC log).
"""

from __future__ import annotations

import argparse
import re
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
                "variants": ["control", "treatment"],
                "start": "2026-01-05",
                "metrics": ["revenue_per_user", "events_per_org"],
            }
        ],
        "output": {k: str(out / k) for k in ("staging", "results", "diagnostics")},
    }
    path = out / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


_GC_PAUSE = re.compile(r"(\d+)([KMG])->(\d+)([KMG])\(\d+[KMG]\)")
_MIB = {"K": 1 / 1024, "M": 1, "G": 1024}


def heap_from_gc_log(text: str) -> tuple[float, float]:
    """(Highest heap used before a collection, most in use after an evacuating one), MiB,
    from a JVM unified GC log (`-Xlog:gc`: "... Pause Young (Normal) ... 120M->30M(512M)").
    Remark and cleanup pauses free no objects, so they are not counted as after-GC."""
    before, after = [0.0], [0.0]
    for line in text.splitlines():
        m = _GC_PAUSE.search(line)
        if m is None:
            continue
        a, ua, b, ub = m.groups()
        before.append(int(a) * _MIB[ua])
        if "Pause Young" in line or "Pause Full" in line:
            after.append(int(b) * _MIB[ub])
    return max(before), max(after)


def units_data(out: Path, n_units: int) -> tuple[Path, Path, int]:
    """The bench's user-randomized dataset with `n_units` assignment units (under
    `out.parent/data/`, where `make bench --out out.parent` keeps it too, so it is
    reused), its config in `out`, and its event count."""
    sys.path.insert(0, str(ROOT / "bench"))
    from units import ensure_units_data, units_config_dict, users_params

    p = users_params(n_units)
    spark = build_spark("bounded-driver data", local_master="local[2]")
    try:
        data = ensure_units_data(spark, out.parent, p, print)
    finally:
        spark.stop()
    raw = units_config_dict(p, data, out / "run")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, data / "events", p.events


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", default="30000000", help="comma-separated event counts")
    parser.add_argument("--units", help="comma-separated assignment units (user-randomized)")
    parser.add_argument("--out", type=Path, default=Path("out/driver_check"))
    parser.add_argument("--driver-memory", default="512m")
    args = parser.parse_args()
    out = args.out.resolve()
    if args.units:
        sizes = [int(n) for n in args.units.split(",")]
        rows = [run_size(out / f"units_{n}", n, args.driver_memory, units=True) for n in sizes]
    else:
        sizes = [int(n) for n in args.events.split(",")]
        rows = [run_size(out / str(n), n, args.driver_memory) for n in sizes]
    print(
        "| assignment units | events | Parquet MiB | exit | s | driver heap peak MiB "
        "| driver heap live after GC MiB |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        units = f"{r['units']:,}" if r["units"] else "20,000 orgs"
        print(
            f"| {units} | {r['events']:,} | {r['mib']:,.0f} | {r['exit']} | {r['seconds']:.0f} | "
            f"{r['heap_peak']:.0f} | {r['heap_live']:.0f} |"
        )
    return max(r["exit"] for r in rows)


def run_size(out: Path, n: int, driver_memory: str, units: bool = False) -> dict:
    """One analysis under the standalone cluster: `n` events of the org experiment, or
    `n` assignment units of the user-randomized one (`units`)."""
    from tests.test_submit_cluster import Cluster

    if units:
        config_path, events_dir, n_events = units_data(out, n)
    else:
        n_events = n
        if not (out / "events" / "_delta_log").exists():
            generate(out, n_events)
        config_path, events_dir = config(out), out / "events"
    size = sum(f.stat().st_size for f in events_dir.rglob("*.parquet"))
    gc_log = out / "driver_gc.log"
    gc_log.unlink(missing_ok=True)
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
                driver_memory,
                "--driver-java-options",
                f"-Xlog:gc:file={gc_log}",
                "--conf",
                "spark.sql.shuffle.partitions=16",
                "--",
                "run",
                "--config",
                str(config_path),
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
    peak, live = heap_from_gc_log(gc_log.read_text() if gc_log.exists() else "")
    print(
        f"events: {n_events:,} ({size / 2**20:,.0f} MiB of Parquet on disk); "
        f"driver heap {driver_memory}; exit {proc.returncode}; {elapsed:.0f}s; "
        f"heap peak {peak:.0f} MiB, after GC {live:.0f} MiB",
        flush=True,
    )
    return {
        "units": n if units else None,
        "events": n_events,
        "mib": size / 2**20,
        "exit": proc.returncode,
        "seconds": elapsed,
        "heap_peak": peak,
        "heap_live": live,
    }


if __name__ == "__main__":
    sys.exit(main())
