"""Daily delta-method analysis of every experiment in the cluster_spark config.

One task per experiment, built from the YAML config when the DAG is parsed. Each task runs
`scripts/submit.sh` (spark-submit `jobs/analyze.py run --experiment <id>` with the Delta jars
and the zipped package; the driver uses the project's `.venv`), so this file needs only
Airflow and PyYAML: the Airflow venv has no pyspark and none of cluster_spark's deps.

Dates: the run with logical date D (`ds`) analyses D, i.e. events up to midnight after D.
It is scheduled at 02:00 UTC on D+1, once D is complete. An experiment whose `start`..`end`
does not cover D is skipped (exit code 99), not failed. A rerun or a retry replaces the same
(experiment, date) slice of the Delta tables atomically, so retries are safe. With
`incremental` in the config (the demo config has it), each task reads the events of the
last days only and keeps per-experiment state (README, "Incremental refresh"); the state
commits after the slices, so a failed try leaves it as it was.

Settings:
  when the DAG is parsed (they shape it), environment only:
    CLUSTER_SPARK_HOME      the project checkout (default: the parent of this dags/ folder)
    CLUSTER_SPARK_CONFIG    the YAML config (default: $CLUSTER_SPARK_HOME/conf/demo.yaml)
    CLUSTER_SPARK_RETRIES   task retries (default 2)
    CLUSTER_SPARK_RETRY_DELAY_S
                            seconds before a task's first retry (default 600; doubles after)
  when a task runs: Airflow Variable, else the environment variable, else the default:
    cluster_spark_root             CLUSTER_SPARK_ROOT      base of relative table paths
                                                           (default $CLUSTER_SPARK_HOME/out/demo)
    cluster_spark_master           SPARK_MASTER            spark-submit --master (local[*])
    cluster_spark_submit_options   CLUSTER_SPARK_SUBMIT_OPTIONS
                                   more spark-submit options, split at whitespace, e.g.
                                   "--conf spark.executor.memory=4g --conf spark.cores.max=8"
  (a Variable can also come from the environment as AIRFLOW_VAR_CLUSTER_SPARK_ROOT etc.)
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from pathlib import Path

import yaml
from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, CronDataIntervalTimetable

DAG_ID = "cluster_spark_daily"
HOME = Path(os.environ.get("CLUSTER_SPARK_HOME") or Path(__file__).resolve().parents[1])
CONFIG = Path(os.environ.get("CLUSTER_SPARK_CONFIG") or HOME / "conf" / "demo.yaml")
RETRIES = int(os.environ.get("CLUSTER_SPARK_RETRIES", "2"))
RETRY_DELAY = dt.timedelta(seconds=float(os.environ.get("CLUSTER_SPARK_RETRY_DELAY_S", "600")))

COMMAND = r"""
set -euo pipefail
if [[ "$ANALYSIS_DATE" < "$EXPERIMENT_START" ]] ||
   [[ -n "$EXPERIMENT_END" && "$ANALYSIS_DATE" > "$EXPERIMENT_END" ]]; then
  echo "experiment $EXPERIMENT runs ${EXPERIMENT_START}..${EXPERIMENT_END:-open}:" \
       "nothing to analyse on $ANALYSIS_DATE"
  exit 99
fi
# shellcheck disable=SC2086  # the options are split at whitespace on purpose
exec "$CLUSTER_SPARK_HOME/scripts/submit.sh" --master "$SPARK_MASTER" \
  $CLUSTER_SPARK_SUBMIT_OPTIONS -- \
  run --config "$CLUSTER_SPARK_CONFIG" --date "$ANALYSIS_DATE" \
  --root "$CLUSTER_SPARK_ROOT" --experiment "$EXPERIMENT"
"""


def _variable(name: str, env: str, default: str) -> str:
    """Jinja that reads Airflow Variable `name` at run time; default from the environment."""
    fallback = os.environ.get(env, default)
    return "{{ var.value.get(" + json.dumps(name) + ", " + json.dumps(fallback) + ") }}"


def load_experiments(path: Path) -> list[dict[str, str]]:
    """Experiment ids and dates from the config, read with PyYAML only (cluster_spark
    validates the whole config again when the task runs)."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise RuntimeError(f"{DAG_ID}: cannot read config {path}: {err}") from err
    experiments = raw.get("experiments") if isinstance(raw, dict) else None
    if not isinstance(experiments, list) or not experiments:
        raise RuntimeError(f"{DAG_ID}: {path} has no list of experiments")
    out = []
    for i, exp in enumerate(experiments):
        if not isinstance(exp, dict) or not exp.get("id") or not exp.get("start"):
            raise RuntimeError(f"{DAG_ID}: {path}: experiments[{i}] needs an id and a start")
        end = exp.get("end")
        out.append(
            {
                "id": str(exp["id"]),
                "start": dt.date.fromisoformat(str(exp["start"])).isoformat(),
                "end": dt.date.fromisoformat(str(end)).isoformat() if end else "",
            }
        )
    return out


def task_id(experiment_id: str) -> str:
    return "analyze__" + re.sub(r"[^A-Za-z0-9_.-]", "_", experiment_id)


with DAG(
    dag_id=DAG_ID,
    description="delta-method analysis of each configured cluster experiment, daily",
    doc_md=__doc__,
    schedule=CronDataIntervalTimetable("0 2 * * *", timezone="UTC"),
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    tags=["cluster_spark", "spark-submit"],
    default_args={
        "owner": "cluster_spark",
        "retries": RETRIES,
        "retry_delay": RETRY_DELAY,
        "retry_exponential_backoff": True,
        "execution_timeout": dt.timedelta(hours=3),
    },
) as dag:
    runtime_env = {
        "CLUSTER_SPARK_HOME": str(HOME),
        "CLUSTER_SPARK_CONFIG": str(CONFIG),
        "CLUSTER_SPARK_ROOT": _variable(
            "cluster_spark_root", "CLUSTER_SPARK_ROOT", str(HOME / "out" / "demo")
        ),
        "SPARK_MASTER": _variable("cluster_spark_master", "SPARK_MASTER", "local[*]"),
        "CLUSTER_SPARK_SUBMIT_OPTIONS": _variable(
            "cluster_spark_submit_options", "CLUSTER_SPARK_SUBMIT_OPTIONS", ""
        ),
        "ANALYSIS_DATE": "{{ ds }}",
    }
    seen: set[str] = set()
    for experiment in load_experiments(CONFIG):
        tid = task_id(experiment["id"])
        if tid in seen:
            raise RuntimeError(f"{DAG_ID}: two experiments map to task id {tid}")
        seen.add(tid)
        BashOperator(
            task_id=tid,
            bash_command=COMMAND,
            env={
                **runtime_env,
                "EXPERIMENT": experiment["id"],
                "EXPERIMENT_START": experiment["start"],
                "EXPERIMENT_END": experiment["end"],
            },
            append_env=True,  # PATH, JAVA_HOME, ... of the worker
            do_xcom_push=False,
            doc_md=f"`cluster-spark run --experiment {experiment['id']}` via spark-submit",
        )
