"""Test helpers: write small hand-made tables as Delta and build configs in code."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from cluster_spark.config import Config, parse_config

T0 = dt.datetime(2026, 3, 2)  # experiment start; analysis date 2026-03-09 unless stated
ANALYSIS_DATE = dt.date(2026, 3, 9)

EXPOSURE_DDL = "experiment_id string, org_id string, variant string, exposure_ts timestamp"
EVENT_DDL = "org_id string, user_id string, event string, value double, ts timestamp"


ROOT = Path(__file__).resolve().parents[1]


def run_script(relative_path: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a repository script with this Python, as a user would: from the repository root,
    without BENCH_ARGS or the test session's Spark gateway in the environment."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("BENCH_ARGS", "PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET")
    }
    return subprocess.run(
        [sys.executable, str(ROOT / relative_path), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def at(days: float = 0, hours: float = 0) -> dt.datetime:
    return T0 + dt.timedelta(days=days, hours=hours)


def write_delta(spark, rows: list[tuple], ddl: str, path) -> str:
    spark.createDataFrame(rows, ddl).write.format("delta").mode("overwrite").save(str(path))
    return str(path)


def config_dict(root, experiments: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The seeds' cluster experiment: org-level assignment, per-user metrics."""
    purchase = [{"column": "event", "op": "eq", "value": "purchase"}]
    return {
        "exposures": {
            "path": f"{root}/exposures",
            "timestamp": "exposure_ts",
            "ids": {"org_id": "org_id"},
        },
        "sources": {
            "events": {
                "path": f"{root}/events",
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
            "purchases_per_org": {
                "kind": "mean",
                "numerator": {"source": "events", "agg": "count", "filter": purchase},
            },
        },
        "experiments": experiments
        or [
            {
                "id": "e1",
                "assignment_unit": "org_id",
                "analysis_unit": "user_id",
                "control": "control",
                "variants": ["control", "treatment"],
                "start": T0.date().isoformat(),
                "metrics": ["revenue_per_user", "purchases_per_org"],
            }
        ],
        "output": {
            "staging": f"{root}/staging",
            "results": f"{root}/results",
            "diagnostics": f"{root}/diagnostics",
        },
    }


def make_config(root, **kw) -> Config:
    return parse_config(config_dict(root, **kw))
