"""One session-scoped, Delta-enabled SparkSession in local mode, tuned for tiny data."""

from __future__ import annotations

import pytest
from hypothesis import settings

# No per-example deadline: a property test must not fail because the machine is busy
# (a Spark suite or the bench on the same two cores); speed is measured by `make bench`.
settings.register_profile("cluster_spark", deadline=None)
settings.load_profile("cluster_spark")

TEST_CONF = {
    "spark.sql.shuffle.partitions": "2",
    "spark.default.parallelism": "2",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.adaptive.enabled": "false",
    "spark.databricks.delta.snapshotPartitions": "2",
    "spark.sql.sources.parallelPartitionDiscovery.parallelism": "2",
    # 3g: at 2g the heap of one JVM through ~250 tests once ran out while building a
    # broadcast (a flaky OutOfMemoryError in a late module); the machine has 24 GiB
    "spark.driver.memory": "3g",
}


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from cluster_spark.session import build_spark

    # Catalog tables (tests/test_catalog_tables.py) go to Spark's local catalog in a
    # warehouse directory of this test session, not into the working directory.
    warehouse = {"spark.sql.warehouse.dir": str(tmp_path_factory.mktemp("warehouse"))}
    conf = {**TEST_CONF, **warehouse}
    session = build_spark("cluster_spark tests", local_master="local[2]", extra_conf=conf)
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
