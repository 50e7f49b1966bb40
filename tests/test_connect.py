"""Spark Connect for real: a local Connect server started from the pip PySpark
distribution with the Delta jars (`cluster-spark serve`), the demo experiment run
through `cluster-spark run --remote`, and the notebook API over Connect writing catalog
tables with `cache: none`; both equal the classic session's results to 1e-12."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from cluster_spark import demo, pipeline
from cluster_spark.config import parse_config
from cluster_spark.serve import free_port, listening
from cluster_spark.session import SMALL_INPUT_CONF

pytestmark = pytest.mark.slow

REPO = Path(__file__).parents[1]
DEMO_CONFIG = REPO / "conf" / "demo.yaml"
DATE = demo.ANALYSIS_DATE
KEY = ("experiment_id", "metric", "variant", "dimension", "slice")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`cluster-spark serve` as a user starts it, on a free port; `kill` (SIGTERM) stops
    it and its server."""
    where = tmp_path_factory.mktemp("connect")
    port = free_port()
    # a tiny input: the settings a local CLI run on it gets (session.SMALL_INPUT_CONF)
    small = {**SMALL_INPUT_CONF, "spark.default.parallelism": "2"}
    command = [sys.executable, "-m", "cluster_spark.cli", "serve", "--port", str(port)]
    command += ["--master", "local[2]", "--warehouse", str(where / "warehouse")]
    command += ["--log", str(where / "server.log")]
    command += [arg for k, v in small.items() for arg in ("--conf", f"{k}={v}")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=_env())
    try:
        first = process.stdout.readline()  # printed once the server accepts connections
        assert first.startswith(f"Spark Connect server with Delta: sc://localhost:{port}"), (
            first + (where / "server.log").read_text()[-3000:]
        )
        yield f"sc://localhost:{port}"
    finally:
        process.send_signal(signal.SIGTERM)  # as `kill` does: the server stops with it
        code = process.wait(timeout=60)
    assert code == 0
    assert not listening(port)


@pytest.fixture(scope="module")
def demo_data(spark, tmp_path_factory):
    """The demo's tables (400 orgs), the demo config without `incremental` and with
    covariates beside them (`full.yaml`), and the classic session's results rows on them."""
    root = tmp_path_factory.mktemp("demo")
    demo.write_demo_data(spark, root, n_orgs=400, seed=7)
    raw = yaml.safe_load(DEMO_CONFIG.read_text())
    raw.pop("incremental", None)  # the reference reads every event
    # several covariates too: a metric's pre-period and a unit attribute (their staging
    # builds maps, arrays and a window of levels)
    raw["experiments"][0]["covariates"] = ["purchases_per_org", {"attribute": "plan"}]
    (root / "full.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    raw["output"] = {k: f"classic/{k}" for k in ("staging", "results", "diagnostics")}
    pipeline.run(spark, parse_config(raw, root=root), DATE)
    classic = spark.read.format("delta").load(str(root / "classic" / "results"))
    return root, [r.asDict() for r in classic.collect()]


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"}
    env.pop("SPARK_REMOTE", None)
    return env


def _assert_same(remote: list[dict], classic: list[dict]) -> None:
    """Every results row of one run equals the other's: strings, flags and counts exactly,
    numbers to 1e-12 (relative, or absolute for fractions near 0 such as a variance
    reduction of 5e-5, a difference of near-equal sums), NaN identical, run id aside."""
    by_key = {tuple(r[k] for k in KEY): r for r in classic}
    assert len(remote) == len(classic) and len(by_key) == len(classic)
    compared = 0
    for row in remote:
        other = by_key[tuple(row[k] for k in KEY)]
        for column, value in row.items():
            if column in ("run_id", "analysis_date"):
                continue
            expected = other[column]
            if isinstance(value, float) and isinstance(expected, float):
                if math.isnan(expected):
                    assert math.isnan(value), column
                else:
                    assert value == pytest.approx(expected, rel=1e-12, abs=1e-12), column
                compared += 1
            else:
                assert value == expected, (column, row, other)
    assert compared > 500  # the comparison is not vacuous


def test_cli_run_through_remote_equals_classic(server, demo_data):
    """The CLI through a Connect server equals the classic full pass (the demo config
    without `incremental`: the notebook test below keeps the state through Connect)."""
    root, classic = demo_data
    config = root / "full.yaml"
    command = [sys.executable, "-m", "cluster_spark.cli", "run", "--config", str(config)]
    command += ["--root", str(root), "--date", DATE.isoformat(), "--remote", server, "-q"]
    done = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "health checkout_redesign: " in done.stdout

    read = f"""
        import json, sys
        from pyspark.sql import SparkSession
        spark = SparkSession.builder.remote({server!r}).getOrCreate()
        rows = spark.read.format("delta").load({str(root / "results")!r}).collect()
        print(json.dumps([r.asDict() for r in rows], default=str))
    """
    remote = _python(read)
    _assert_same(remote, classic)


def test_notebook_api_over_connect_with_catalog_tables(server, demo_data):
    """`cs.analyze` and `cs.report` with the user's own Connect session (not one
    `build_spark` made): outputs are catalog tables (in the server's warehouse), nothing
    is persisted (`cache: none`), and the run keeps the state of `incremental` (state
    tables appended and read back, the commit log's idempotent Delta write, through
    Connect; the daily steps after it are tested in classic sessions)."""
    root, classic = demo_data
    script = f"""
        import json, yaml
        import cluster_spark as cs
        from pyspark.sql import SparkSession

        spark = SparkSession.builder.remote({server!r}).getOrCreate()  # the user's own
        raw = yaml.safe_load(open({str(root / "full.yaml")!r}))
        raw["output"] = {{k: {{"table": f"cs_connect.{{k}}"}} for k in
                         ("staging", "results", "diagnostics")}}
        raw["cache"] = "none"
        raw["incremental"] = {{"state": "connect_state"}}
        config = cs.load_config(raw, root={str(root)!r})
        spark.sql("CREATE SCHEMA IF NOT EXISTS cs_connect")
        results = cs.analyze(spark, config, {DATE.isoformat()!r})  # per-unit state kept
        log = spark.read.format("delta").load({str(root / "connect_state" / "log")!r})
        tables = {{r.table for r in log.collect()}}
        assert {{"units__", "day_rows__events__", "cube_rows__events__"}} <= {{
            t.rstrip("0123456789abcdef") for t in tables}}, tables
        html = cs.report(spark, config, {DATE.isoformat()!r})
        assert "checkout_redesign" in html
        detail = spark.sql("DESCRIBE DETAIL cs_connect.results").first()
        assert detail.partitionColumns == ["experiment_id"], detail
        # Delta's Connect client was imported: conflicts arrive as delta.exceptions
        from pyspark.errors.exceptions.connect import EXCEPTION_CLASS_MAPPING
        assert "io.delta.exceptions.ConcurrentAppendException" in EXCEPTION_CLASS_MAPPING
        print(json.dumps([r.asDict() for r in results.collect()], default=str))
    """
    remote = _python(script)
    _assert_same(remote, classic)


def _python(script: str) -> list[dict]:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
