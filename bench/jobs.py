"""What triggers each Spark job of one `cluster-spark run` pass (issue #30, item 1)?

    .venv/bin/python bench/jobs.py [--events 200000] [--out out/bench] [--cache memory|none]
                                   [--save rows.json]

Runs `pipeline.run` on bench/run.py's config and data of one size with Spark's event log on,
then lists every job from the log: its id, the call site (the first frame of cluster_spark
or bench code that triggered it, from the job's `callSite.long` property), its stages and
tasks, and its wall time; then the jobs per call site. Job counts barely depend on size.
`--save` writes the pass's results and diagnostics rows (sorted, without the run id) to
compare a change's numbers bit for bit with `cmp`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dataset
import metrics
from jvm import set_log_level

from cluster_spark import pipeline
from cluster_spark.session import build_spark

REPO = Path(__file__).resolve().parents[1]


def _site(props: dict) -> str:
    """The innermost frame of this repository in the job's call site, else its short site."""
    long = props.get("callSite.long") or props.get("callSite.short") or ""
    ours = [ln.strip() for ln in long.splitlines() if str(REPO) in ln]
    if ours:
        return ours[0].replace(str(REPO) + "/", "")
    # Delta's own jobs (snapshot state, commits) name themselves in their description
    described = props.get("spark.job.description") or props.get("callSite.short") or "?"
    return described.splitlines()[0][:100]


def jobs_of(log_dir: Path) -> list[dict]:
    """Every job of the event logs under `log_dir`: id, site, stages, tasks, seconds."""
    jobs: dict[int, dict] = {}
    stage_tasks: dict[int, int] = {}
    files = [p for p in sorted(log_dir.rglob("*")) if p.is_file() and "appstatus" not in p.name]
    for path in files:  # Spark 4 rolls a log into files under eventlog_v2_<app>/
        for line in path.read_text().splitlines():
            event = json.loads(line)
            kind = event.get("Event")
            if kind == "SparkListenerJobStart":
                props = event.get("Properties") or {}
                jobs[event["Job ID"]] = {
                    "id": event["Job ID"],
                    "site": _site(props),
                    "stages": event.get("Stage IDs", []),
                    "start": event["Submission Time"],
                }
            elif kind == "SparkListenerStageCompleted":
                info = event["Stage Info"]
                stage_tasks[info["Stage ID"]] = info["Number of Tasks"]
            elif kind == "SparkListenerJobEnd" and event["Job ID"] in jobs:
                job = jobs[event["Job ID"]]
                job["seconds"] = (event["Completion Time"] - job["start"]) / 1000
    for job in jobs.values():
        job["tasks"] = sum(stage_tasks.get(s, 0) for s in job["stages"])
    return [jobs[k] for k in sorted(jobs)]


def _rows_json(outcome: pipeline.Outcome) -> str:
    """Results and diagnostics rows as sorted JSON lines, without what differs per run."""
    out = []
    for table, rows in (("results", outcome.results), ("diagnostics", outcome.diagnostics)):
        for row in rows:
            kept = {k: v for k, v in row.items() if k not in ("run_id", "created_at")}
            out.append(json.dumps({"table": table, **kept}, sort_keys=True, default=str))
    return "\n".join(sorted(out)) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--out", type=Path, default=REPO / "out" / "bench")
    parser.add_argument("--cache", choices=("memory", "none"), default="memory")
    parser.add_argument("--save", type=Path, help="write the results and diagnostics rows here")
    parser.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE",
                        help="a Spark setting, e.g. spark.sql.adaptive.enabled=false")  # fmt: skip
    args = parser.parse_args(argv)
    logs = Path(tempfile.mkdtemp(prefix="cs-eventlog-"))
    conf = {
        "spark.eventLog.enabled": "true",
        "spark.eventLog.dir": str(logs),
        "spark.eventLog.compress": "false",
        "spark.sql.shuffle.partitions": "2",
        "spark.default.parallelism": "2",
        "spark.ui.enabled": "false",
        "spark.databricks.delta.snapshotPartitions": "2",
    }
    conf.update(item.split("=", 1) for item in args.conf)
    spark = build_spark("cluster_spark jobs", local_master="local[2]", extra_conf=conf)
    set_log_level(spark, "ERROR")
    try:
        params = dataset.DataParams(args.events, 200_000, 20_000, 2026)
        data = dataset.ensure_data(spark, args.out, params, print)
        config = metrics.bench_config(
            data, Path(tempfile.mkdtemp(prefix="cs-jobs-")), cache=args.cache
        )
        first = spark.sparkContext.statusTracker().getJobIdsForGroup(None)
        skip = max(first, default=-1)
        spark.sparkContext.setJobGroup("pass", "one pass")
        t0 = time.perf_counter()
        outcome = pipeline.run_outcome(spark, config, metrics.ANALYSIS_DATE)
        took = time.perf_counter() - t0
    finally:
        spark.stop()
    if args.save:
        args.save.write_text(_rows_json(outcome))
    jobs = [j for j in jobs_of(logs) if j["id"] > skip]
    print(f"{len(jobs)} jobs in one pass ({args.events:,} events, cache: {args.cache}, "
          f"{took:.1f} s)")  # fmt: skip
    for j in jobs:
        print(f"{j['id']:4d} {j.get('seconds', 0):6.2f}s {len(j['stages']):2d} stages "
              f"{j['tasks']:4d} tasks  {j['site']}")  # fmt: skip
    print("\njobs per call site:")
    for site, n in Counter(j["site"] for j in jobs).most_common():
        print(f"{n:4d}  {site}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
