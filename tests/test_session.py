"""How a session is configured: the small-input settings of a local session (issue #14,
"small inputs fast") and the input size they are chosen by. The numbers under those
settings are checked in test_pipeline."""

from __future__ import annotations

from cluster_spark import session
from cluster_spark.session import (
    DELTA_CONF,
    LOCAL_CONF,
    SMALL_INPUT_BYTES,
    SMALL_INPUT_CONF,
    local_bytes,
    session_conf,
)


def test_local_bytes_adds_up_the_files_under_local_paths(tmp_path):
    table = tmp_path / "events"
    (table / "_delta_log").mkdir(parents=True)
    (table / "part-0.parquet").write_bytes(b"x" * 100)
    (table / "_delta_log" / "00.json").write_bytes(b"y" * 20)
    single = tmp_path / "exposures.csv"
    single.write_bytes(b"z" * 7)
    assert local_bytes([str(table), str(single)]) == 127
    assert local_bytes([table.as_uri(), str(single)]) == 127  # file: URI
    assert local_bytes([]) == 0
    # unknown size: a catalog table (no path), another file system, a missing path
    assert local_bytes([str(table), None]) is None
    assert local_bytes([str(table), "s3://bucket/events"]) is None
    assert local_bytes([str(tmp_path / "missing")]) is None


def test_small_input_settings_only_for_a_small_local_session():
    small = session_conf(local=True, input_bytes=SMALL_INPUT_BYTES)
    assert small == {**DELTA_CONF, **LOCAL_CONF, **SMALL_INPUT_CONF}
    assert small["spark.sql.adaptive.enabled"] == "false"
    assert small["spark.sql.shuffle.partitions"] == "1"
    assert small["spark.sql.autoBroadcastJoinThreshold"] == "-1"
    assert small["spark.sql.codegen.factoryMode"] == "NO_CODEGEN"
    assert session_conf(True, SMALL_INPUT_BYTES + 1) == {**DELTA_CONF, **LOCAL_CONF}
    assert session_conf(True, None) == {**DELTA_CONF, **LOCAL_CONF}
    # not a local session the library starts (spark-submit, a cluster master): Delta only
    assert session_conf(False, 10) == DELTA_CONF
    # the user's settings win
    given = {"spark.sql.adaptive.enabled": "true"}
    assert session_conf(True, 10, given)["spark.sql.adaptive.enabled"] == "true"
    assert SMALL_INPUT_BYTES == 4 * 2**20 and session.LOCAL_CONF is LOCAL_CONF
