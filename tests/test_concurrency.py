"""Two processes analysing two experiments at once write into the same Delta tables."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import TEST_CONF
from tests.helpers import ANALYSIS_DATE, EVENT_DDL, EXPOSURE_DDL, at, config_dict, write_delta

pytestmark = pytest.mark.slow
CLI = Path(sys.executable).with_name("cluster-spark")


def _experiment(exp_id: str) -> dict:
    return {
        "id": exp_id,
        "assignment_unit": "org_id",
        "control": "control",
        "variants": ["control", "treatment"],
        "start": "2026-03-02",
        "metrics": ["revenue_per_user", "purchases_per_org"],
    }


def _launch(config: Path, exp_id: str, log: Path) -> subprocess.Popen:
    cmd = [
        str(CLI),
        "run",
        "--config",
        str(config),
        "--date",
        ANALYSIS_DATE.isoformat(),
        "--experiment",
        exp_id,
        "--master",
        "local[1]",
    ]
    conf = " ".join(f"--conf {k}={v}" for k, v in TEST_CONF.items() if k != "spark.driver.memory")
    # C1 JIT only: a short-lived JVM on a busy machine starts faster
    java = "--driver-java-options -XX:TieredStopAtLevel=1"
    args = f"--driver-memory 768m {java} {conf} pyspark-shell"
    env = {**os.environ, "PYSPARK_SUBMIT_ARGS": args}
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


def test_two_writers_of_different_experiments(spark, tmp_path):
    exposures = [
        (e, f"o{i}", ("control", "treatment")[i % 2], at(0)) for e in ("e1", "e2") for i in range(8)
    ]
    events = [(f"o{i}", f"u{i}", "purchase", float(i), at(1)) for i in range(8)]
    write_delta(spark, exposures, EXPOSURE_DDL, tmp_path / "exposures")
    write_delta(spark, events, EVENT_DDL, tmp_path / "events")
    config = tmp_path / "conf.yaml"
    config.write_text(
        yaml.safe_dump(
            config_dict(str(tmp_path), experiments=[_experiment("e1"), _experiment("e2")]),
            default_flow_style=False,
        )
    )
    for round_ in (1, 2):  # round 1 races to create the tables, round 2 writes into them
        procs = {e: _launch(config, e, tmp_path / f"{e}-{round_}.log") for e in ("e1", "e2")}
        for e, proc in procs.items():
            assert proc.wait(timeout=600) == 0, (tmp_path / f"{e}-{round_}.log").read_text()
        for table in ("staging", "results", "diagnostics"):
            rows = spark.read.format("delta").load(str(tmp_path / table)).collect()
            per_exp = {e: [r for r in rows if r.experiment_id == e] for e in ("e1", "e2")}
            assert per_exp["e1"] and len(per_exp["e1"]) == len(per_exp["e2"]), table
        results = spark.read.format("delta").load(str(tmp_path / "results"))
        assert results.count() == 2 * 2 * 2  # experiments × metrics × variants, no duplicates
