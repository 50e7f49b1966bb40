"""Wall time of `cluster-spark run` on a tiny input, JVM start included: what a first-time
user with a small table waits for.

    .venv/bin/python scripts/tiny_run.py [--repeat 3]

Writes 6 orgs' exposures and 14 events as Delta under a temporary directory (not timed),
then runs the CLI as a user would (`cluster-spark run -q`) and prints the seconds of each
run and its Spark jobs, counted from the run's Spark event log (`--conf
spark.eventLog.enabled=true`): the first run creates the three output tables, later ones
replace their slice.
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from cluster_spark.session import build_spark

UTC = dt.UTC
T0 = dt.datetime(2026, 3, 2, tzinfo=UTC)


def _at(days: float) -> dt.datetime:
    return T0 + dt.timedelta(days=days)


def write_input(root: Path) -> Path:
    spark = build_spark("tiny input", local_master="local[1]")
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--logs", type=Path, help="keep each run's Spark event log here")
    args = parser.parse_args(argv)
    cli = Path(sys.executable).with_name("cluster-spark")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = write_input(root)
        print("| run | wall s (JVM start included) | Spark jobs |")
        print("|---:|---:|---:|")
        for i in range(args.repeat):
            logs = (args.logs or root) / f"events_{i}"
            logs.mkdir(parents=True)
            cmd = [
                str(cli), "run", "-q", "--config", str(config), "--date", "2026-03-09",
                "--root", tmp, "--conf", "spark.eventLog.enabled=true",
                "--conf", f"spark.eventLog.dir={logs}",
                "--conf", "spark.eventLog.compress=false",
            ]  # fmt: skip
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            took = time.perf_counter() - t0
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                return proc.returncode
            jobs = sum(
                '"Event":"SparkListenerJobStart"' in line
                for log in logs.rglob("*")
                if log.is_file()
                for line in log.read_text().splitlines()
            )
            print(f"| {i + 1} | {took:.1f} | {jobs} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
