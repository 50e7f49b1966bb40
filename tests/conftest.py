"""One session-scoped, Delta-enabled SparkSession in local mode, tuned for tiny data."""

from __future__ import annotations

import pytest

TEST_CONF = {
    "spark.sql.shuffle.partitions": "2",
    "spark.default.parallelism": "2",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.adaptive.enabled": "false",
    "spark.databricks.delta.snapshotPartitions": "2",
    "spark.sql.sources.parallelPartitionDiscovery.parallelism": "2",
    "spark.driver.memory": "2g",
}


@pytest.fixture(scope="session")
def spark():
    from cluster_spark.session import build_spark

    session = build_spark("cluster_spark tests", local_master="local[2]", extra_conf=TEST_CONF)
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
