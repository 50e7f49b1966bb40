"""Load dags/ into an Airflow DagBag and, with --test DATE, run the DAG once with dag.test().

Run it with the Airflow venv's python (make airflow-check):

    .venv-airflow/bin/python scripts/airflow_dag_check.py [--test 2026-02-01]

Without AIRFLOW_HOME a throwaway one (sqlite) is used; dags_folder defaults to this repo's
dags/. Prints one JSON object (import errors, tasks, task states) as the last line of stdout
and exits 1 on import errors or a failed task.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DAG_ID = "cluster_spark_daily"


def _configure() -> None:
    """Airflow reads its settings at import: set them first."""
    if "AIRFLOW_HOME" not in os.environ:
        os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="airflow-home-")
    home = Path(os.environ["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(ROOT / "dags"))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{home}/airflow.db")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test", type=dt.date.fromisoformat, metavar="DATE",
                        help="also run dag.test() for this logical date")  # fmt: skip
    args = parser.parse_args()
    _configure()
    report: dict = {"airflow_home": os.environ["AIRFLOW_HOME"], "timings_s": {}}
    t0 = time.perf_counter()
    if args.test:
        # dag.test() needs the metadata database.
        airflow = Path(sys.executable).with_name("airflow")
        subprocess.run([str(airflow), "db", "migrate"], check=True, stdout=subprocess.DEVNULL)
        report["timings_s"]["db_migrate"] = round(time.perf_counter() - t0, 1)

    t1 = time.perf_counter()
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    report["timings_s"]["dagbag"] = round(time.perf_counter() - t1, 1)
    report["import_errors"] = {str(k): str(v) for k, v in bag.import_errors.items()}
    report["dag_ids"] = sorted(bag.dag_ids)
    dag = bag.dags.get(DAG_ID)
    if dag is not None:
        report["tasks"] = {
            t.task_id: {
                "retries": t.retries,
                "operator": type(t).__name__,
                "experiment": (t.env or {}).get("EXPERIMENT"),
            }
            for t in dag.tasks
        }
        report["schedule"] = str(dag.timetable)
    ok = not report["import_errors"] and dag is not None

    if ok and args.test:
        t2 = time.perf_counter()
        logical = dt.datetime.combine(args.test, dt.time(), tzinfo=dt.UTC)
        run = dag.test(logical_date=logical)
        report["timings_s"]["dag_test"] = round(time.perf_counter() - t2, 1)
        report["run"] = {
            "state": str(run.state),
            "tasks": {ti.task_id: str(ti.state) for ti in run.get_task_instances()},
            "tries": {ti.task_id: ti.try_number for ti in run.get_task_instances()},
        }
        ok = report["run"]["state"] == "success"
    print(json.dumps(report))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
