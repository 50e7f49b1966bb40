"""Wall time of `cluster-spark run` on a tiny input, JVM start included: what a first-time
user with a small table waits for (issue #14: ≤ 15 s, ≤ 12 Spark jobs), and the same runs
against a warm local Spark Connect server (`cluster-spark serve`, issue #30: ≤ 5 s).

    .venv/bin/python bench/tiny.py [--repeat 3] [--logs DIR] [--no-warm] [--no-write-md]

Writes 6 orgs' exposures and 14 events as Delta under a temporary directory (not timed),
then runs the CLI as a user would (`cluster-spark run -q`) and prints the seconds of each
run and its Spark jobs, counted from the run's Spark event log (`--conf
spark.eventLog.enabled=true`): the first run creates the three output tables, later ones
replace their slice. Warm runs (`--remote`) go to a server started once before them (its
start not timed), their jobs counted from the server's event log. Puts its "Small inputs"
section into BENCHMARKS.md (`make bench` runs it too).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import paths
import yaml
from pyspark.sql import SparkSession

from cluster_spark.session import build_spark

UTC = dt.UTC
T0 = dt.datetime(2026, 3, 2, tzinfo=UTC)


def _at(days: float) -> dt.datetime:
    return T0 + dt.timedelta(days=days)


def write_input(root: Path, spark: SparkSession | None = None) -> Path:
    """The tiny exposures and events as Delta under `root`, and their config file; with
    `spark` (the bench's session) that session writes them and stays up."""
    own = spark is None
    spark = spark or build_spark("tiny input", local_master="local[1]")
    exposures = [
        ("tiny", f"o{i}", "control" if i % 2 else "treatment", _at(i / 10)) for i in range(6)
    ]
    events = [(f"o{i % 6}", f"u{i}", "purchase", float(i), _at(1 + i / 7)) for i in range(14)]
    spark.createDataFrame(
        exposures, "experiment_id string, org_id string, variant string, exposure_ts timestamp"
    ).write.format("delta").save(str(root / "exposures"))
    spark.createDataFrame(
        events, "org_id string, user_id string, event string, value double, ts timestamp"
    ).write.format("delta").save(str(root / "events"))
    if own:
        spark.stop()
    config = {
        "exposures": {"path": "exposures", "timestamp": "exposure_ts", "ids": {"org_id": "org_id"}},
        "sources": {
            "events": {"path": "events", "timestamp": "ts",
                       "ids": {"org_id": "org_id", "user_id": "user_id"}}
        },
        "metrics": {
            "revenue_per_user": {
                "kind": "ratio",
                "numerator": {"source": "events", "agg": "sum", "column": "value"},
                "denominator": {"source": "events", "agg": "count_distinct", "column": "user_id"},
            }
        },
        "experiments": [{"id": "tiny", "assignment_unit": "org_id", "analysis_unit": "user_id",
                         "control": "control", "variants": ["control", "treatment"],
                         "start": "2026-03-02", "metrics": ["revenue_per_user"]}],
        "output": {"staging": "staging", "results": "results", "diagnostics": "diagnostics"},
    }  # fmt: skip
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


#: Issue #14's targets for one tiny run through the CLI.
TARGET_SECONDS = 15.0
TARGET_JOBS = 12


#: Issue #30's target for a tiny run against a warm local server.
TARGET_WARM_SECONDS = 5.0


@dataclass(frozen=True)
class TinyRun:
    run: int  # 1: creates the output tables; later runs replace their slice
    seconds: float  # wall clock of the `cluster-spark run` process, JVM start included
    jobs: int  # Spark jobs in the run's event log
    warm: bool = False  # against a warm `cluster-spark serve` (--remote)


def _jobs(logs: Path) -> int:
    return sum(
        '"Event":"SparkListenerJobStart"' in line
        for log in logs.rglob("*")
        if log.is_file()
        for line in log.read_text().splitlines()
    )


def measure(
    repeat: int,
    logs: Path | None = None,
    spark: SparkSession | None = None,
    warm: bool = False,
) -> list[TinyRun]:
    """`repeat` runs of the CLI on the tiny input, in a new temporary directory; `logs`
    keeps each run's Spark event log; `spark` writes the input (`write_input`); `warm`:
    against a local Connect server started first and warmed by one run on a copy of the
    input (neither timed).
    RuntimeError with the CLI's stderr if a run fails."""
    cli = Path(sys.executable).with_name("cluster-spark")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK_GATEWAY")}
    env.pop("SPARK_REMOTE", None)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = write_input(root, spark)
        server = _server(root) if warm else None
        try:
            if server is not None:  # warmed by one untimed run on its own copy of the input
                warmup = write_input(root / "warmup", spark)
                cmd = [str(cli), "run", "-q", "--config", str(warmup), "--date", "2026-03-09",
                       "--root", str(root / "warmup"), "--remote", server[0]]  # fmt: skip
                done = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if done.returncode != 0:
                    raise RuntimeError(f"warm-up run failed: {done.stderr[-3000:]}")
            for i in range(repeat):
                log_dir = (logs or root) / f"events_{'warm_' if warm else ''}{i}"
                log_dir.mkdir(parents=True)
                cmd = [str(cli), "run", "-q", "--config", str(config), "--date", "2026-03-09",
                       "--root", tmp]  # fmt: skip
                if server is None:
                    cmd += ["--conf", "spark.eventLog.enabled=true",
                            "--conf", f"spark.eventLog.dir={log_dir}",
                            "--conf", "spark.eventLog.compress=false"]  # fmt: skip
                else:
                    cmd += ["--remote", server[0]]
                    before = _jobs(root / "server_events")
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                took = time.perf_counter() - t0
                if proc.returncode != 0:
                    raise RuntimeError(
                        f"tiny run failed ({proc.returncode}): {proc.stderr[-3000:]}"
                    )
                jobs = _jobs(log_dir) if server is None else _jobs(root / "server_events") - before
                runs.append(TinyRun(i + 1, took, jobs, warm))
        finally:
            if server is not None:
                from cluster_spark.serve import stop

                stop(server[1])
    return runs


def _server(root: Path):
    """A local Connect server (`cluster-spark serve`'s) with its event log under `root`:
    (URL, process)."""
    from cluster_spark.serve import free_port, start

    events = root / "server_events"
    events.mkdir()
    port = free_port()
    conf = {
        "spark.eventLog.enabled": "true",
        "spark.eventLog.dir": str(events),
        "spark.eventLog.compress": "false",
    }
    return f"sc://localhost:{port}", start(port, root / "server.log", master="local[2]", conf=conf)


def tiny_table(runs: list[TinyRun]) -> str:
    def row(r: TinyRun) -> str:
        return f"| {r.run} | {r.seconds:.1f} | {r.jobs} |" + (
            f" {'warm server' if r.warm else 'new JVM'} |" if warm else ""
        )

    warm = any(r.warm for r in runs)
    head = "| run | wall s (JVM start included) | Spark jobs |" + (" against |" if warm else "")
    rule = "|---:|---:|---:|" + ("---|" if warm else "")
    return "\n".join([head, rule, *map(row, runs)])


def tiny_markdown(runs: list[TinyRun], stamp: str = "") -> str:
    """The "Small inputs" section of BENCHMARKS.md: each run, and the first run (of each
    kind) against the targets (empty without runs)."""
    cold = [r for r in runs if not r.warm]
    warm = [r for r in runs if r.warm]
    if not runs:
        return ""
    verdict = {True: "PASS", False: "**FAIL**"}
    targets = []
    if cold:
        first = cold[0]
        targets += [
            f"| tiny run, wall clock | {first.seconds:.1f} s | ≤ {TARGET_SECONDS:g} s "
            f"| {verdict[first.seconds <= TARGET_SECONDS]} |",
            f"| tiny run, Spark jobs of stage + reduce | {first.jobs} | ≤ {TARGET_JOBS} "
            f"| {verdict[first.jobs <= TARGET_JOBS]} |",
        ]
    if warm:
        first = warm[0]
        targets.append(
            f"| tiny run against a warm local server (`cluster-spark serve`), wall clock "
            f"| {first.seconds:.1f} s | ≤ {TARGET_WARM_SECONDS:g} s "
            f"| {verdict[first.seconds <= TARGET_WARM_SECONDS]} |"
        )
    warm_text = (
        " Warm runs go to a local Connect server (`cluster-spark serve`) started before"
        " them and warmed by one untimed run on a copy of the input (a user's first run of"
        " the day); their jobs are counted in the server's event log."
        if warm
        else ""
    )
    rows = "\n".join(targets)
    return f"""
## Small inputs

{stamp}`bench/tiny.py`: `cluster-spark run -q` on 6 orgs and 14 events (one experiment, one
ratio metric), each run a new process: wall clock including the JVM's start, and the Spark
jobs of its event log. Run 1 creates the three output tables; later runs replace their
slice. The session gets the CLI's small-input settings (`session.SMALL_INPUT_CONF`); the
docs/benchmarks.md, *Small inputs*, says where the time goes.{warm_text}

{tiny_table(runs)}

| target | measured (run 1) | threshold | result |
|---|---|---|---|
{rows}
"""


def splice(md: str, section: str) -> str:
    """BENCHMARKS.md with its "Small inputs" section replaced by `section` (appended at
    the end when it has none)."""
    start = md.find("\n## Small inputs")
    if start < 0:
        return md.rstrip("\n") + "\n" + section
    end = md.find("\n## ", start + 1)
    return md[:start] + section.rstrip("\n") + "\n" + (md[end:] if end >= 0 else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--logs", type=Path, help="keep each run's Spark event log here")
    parser.add_argument("--md", type=Path, default=paths.ROOT / "BENCHMARKS.md")
    parser.add_argument("--no-write-md", action="store_true")
    parser.add_argument("--no-warm", action="store_true", help="no runs against a warm server")
    args = parser.parse_args(argv)
    if args.logs is not None and args.logs.exists() and any(args.logs.iterdir()):
        parser.error(f"--logs {args.logs}: give a new or empty directory")
    spark = build_spark("tiny input", local_master="local[1]")  # writes the inputs
    try:
        runs = measure(args.repeat, args.logs, spark)
        if not args.no_warm:
            runs += measure(args.repeat, args.logs, spark, warm=True)
    finally:
        spark.stop()
    print(tiny_table(runs))
    if not args.no_write_md:
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        load = os.getloadavg()[0]
        stamp = (
            f"*Measured by `bench/tiny.py --repeat {args.repeat}` on {now} (load {load:.1f}).*\n\n"
        )
        args.md.write_text(splice(args.md.read_text(), tiny_markdown(runs, stamp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
