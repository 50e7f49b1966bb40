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
   whole process) and the JVM's peak heap used (heap pools' peak usage, reset per size);
5. DuckDB (the single-node peer, `duckdb_peer.py`): the same staged statistics as SQL
   generated from the same config, over the same Delta files read through `deltalake`,
   in a child process after the memory window (its memory is not the driver's);
6. cross-engine check (`crosscheck.py`): cluster_spark's staged moments (read back from
   its staging table) against the per-metric queries' and DuckDB's answers, for every
   (experiment, metric, variant), raw and winsorized, to 1e-9 relative; a disagreement
   stops the run (exit status 1) with the values of all three;
7. small inputs (`tiny.py`): `cluster-spark run -q` on 6 orgs and 14 events, each run a
   new process (JVM start included), its wall clock and Spark jobs.

This file parses the arguments, starts the SparkSession and runs the sizes; the rest of
the bench is split by what it owns: `dataset.py` (the generated data), `metrics.py` (the
config of 20 metrics × 3 experiments), `queries.py` (floor and per-metric queries),
`duckdb_peer.py` (the DuckDB peer), `crosscheck.py` (the cross-engine check),
`measure.py` (one size's measurements), `plans.py` (the staging plan, `--explain`),
`costs.py` (stage time with and without slices, and with `cache: none`, smallest size),
`units.py` (the units axis), `tiny.py` (a tiny input through the CLI, new processes),
`report.py` (tables, bench.json, BENCHMARKS.md) and `jvm.py` (the only module that reaches
into the JVM: memory, job counts, plans). `paths.py` puts `src/` on `sys.path`.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from dataclasses import asdict
from pathlib import Path

import tiny
from costs import costs_markdown, measure_option
from crosscheck import CrossCheckError
from dataset import DataParams, data_root
from jvm import set_log_level
from measure import DEFAULT_SIZES, SMOKE_SIZES, WARMUP_EVENTS, measure_size
from metrics import bench_config
from paths import ROOT
from plans import explain, staging_plans
from pyspark.sql import SparkSession
from report import (
    bench_json,
    crosscheck_table,
    machine_info,
    markdown,
    results_table,
    targets_table,
)
from units import (
    SMOKE_UNITS,
    UNIT_SIZES,
    heavy_org_params,
    measure_units,
    units_markdown,
    units_table,
    users_params,
)

from cluster_spark.session import build_spark


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
    parser.add_argument(
        "--units",
        type=_sizes,
        help=f"assignment units of the user-randomized experiment (default {UNIT_SIZES})",
    )
    parser.add_argument(
        "--no-units", action="store_true", help="skip the units axis (users, heavy org)"
    )
    parser.add_argument(
        "--no-costs",
        action="store_true",
        help="skip the costs of slices, `cache: none` and a quantile metric (bench/costs.py)",
    )
    parser.add_argument(
        "--no-tiny",
        action="store_true",
        help="skip the tiny-input runs through the CLI (bench/tiny.py; one with --smoke)",
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
    if args.units is None:
        args.units = _sizes(SMOKE_UNITS if args.smoke else UNIT_SIZES)
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
    set_log_level(spark, "ERROR")
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
        costs = []
        for option in () if args.no_costs else ("slices", "cache", "quantile"):
            log(f"cost of {option}: {params[0].events:,} events, stage without and with it")
            costs.append(measure_option(spark, args, params[0], option, log))
        units_rows = []
        if not args.no_units:
            heavy = (
                heavy_org_params(users=20_000, orgs=50, heavy=4_000)
                if args.smoke
                else heavy_org_params()
            )
            for up in [users_params(n) for n in args.units] + [heavy]:
                log(f"units axis: {up.kind}, {up.units:,} assignment units, {up.events:,} events")
                units_rows.append(measure_units(spark, args, up, log))
        tiny_runs = [] if args.no_tiny else tiny.measure(1 if args.smoke else 3, spark=spark)
        if tiny_runs and not args.smoke:  # and against a warm local Connect server
            tiny_runs += tiny.measure(3, spark=spark, warm=True)
        data = data_root(args.out, params[0].events)
        plans = staging_plans(spark, bench_config(data, args.out / "runs" / "explain"))
        print()
        print(results_table(rows))
        print()
        print(crosscheck_table(rows))
        print()
        print(targets_table(rows))
        if units_rows:
            print()
            print(units_table(units_rows))
        if tiny_runs:
            print()
            print(tiny.tiny_table(tiny_runs))
        report = json.loads(bench_json(rows, machine, args, plans))
        report["units_axis"] = [asdict(r) for r in units_rows]
        report["option_costs"] = [asdict(c) for c in costs]
        report["tiny_runs"] = [asdict(r) for r in tiny_runs]
        (args.out / "bench.json").write_text(json.dumps(report, indent=2))
        if not args.no_write_md:
            args.md.write_text(
                markdown(rows, machine, args, plans)
                + costs_markdown(costs)
                + units_markdown(units_rows)
                + tiny.tiny_markdown(tiny_runs)
            )
            log(f"\nwrote {args.md}")
        return 0
    except CrossCheckError as e:
        print(e, file=sys.stderr)
        return 1
    finally:
        spark.stop()


if __name__ == "__main__":
    sys.exit(main())
