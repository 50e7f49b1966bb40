"""How a session is configured: the small-input settings of a local session (issue #14,
"small inputs fast") and the size they are chosen by. The numbers under those settings
are checked in test_pipeline, the CLI's choice of tables in test_cli."""

from __future__ import annotations

import os

from cluster_spark.session import DELTA_CONF, LOCAL_CONF, local_bytes, session_conf


def test_local_bytes_adds_up_the_files_under_local_paths(tmp_path):
    table = tmp_path / "my table"  # a space: percent-encoded in its file: URI
    (table / "_delta_log").mkdir(parents=True)
    (table / "part-0.parquet").write_bytes(b"x" * 100)
    (table / "_delta_log" / "00.json").write_bytes(b"y" * 20)
    single = tmp_path / "exposures.csv"
    single.write_bytes(b"z" * 7)
    assert local_bytes([str(table), str(single)]) == 127
    assert local_bytes([table.as_uri(), str(single)]) == 127
    assert local_bytes([]) == 0
    # past the limit it stops counting: the answer only has to exceed it
    assert 50 < local_bytes([str(table), str(single)], limit=50) <= 127
    # unknown size: a catalog table (no path), another file system, a glob, a missing path
    assert local_bytes([str(table), None]) is None
    assert local_bytes([str(table), "s3://bucket/events"]) is None
    assert local_bytes([str(tmp_path / "*.csv")]) is None
    assert local_bytes([str(tmp_path / "missing")]) is None
    # ... unless missing means "not written yet" (output tables)
    assert local_bytes([str(tmp_path / "missing"), str(single)], absent_empty=True) == 7


def test_a_file_that_vanishes_while_listed_makes_the_size_unknown(tmp_path, monkeypatch):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "part-0.parquet").write_bytes(b"x")

    def vacuumed(path, *args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", path)

    monkeypatch.setattr(os, "stat", vacuumed)
    assert local_bytes([str(tmp_path / "t")]) is None


def test_small_input_settings_only_for_a_small_local_session():
    small = session_conf(local=True, input_bytes=4 * 2**20)
    assert {k: small[k] for k in small.keys() - DELTA_CONF.keys() - LOCAL_CONF.keys()} == {
        "spark.sql.adaptive.enabled": "false",
        "spark.sql.autoBroadcastJoinThreshold": "-1",
        "spark.sql.codegen.wholeStage": "false",
        "spark.sql.codegen.factoryMode": "NO_CODEGEN",
    }
    assert small["spark.sql.shuffle.partitions"] == "1"  # LOCAL_CONF says 8
    assert small["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"
    assert session_conf(True, 4 * 2**20 + 1) == {**DELTA_CONF, **LOCAL_CONF}
    assert session_conf(True, None) == {**DELTA_CONF, **LOCAL_CONF}
    assert LOCAL_CONF["spark.sql.shuffle.partitions"] == "8"
    # not a local session the library starts (spark-submit, a cluster master): Delta only
    assert session_conf(False, 10) == DELTA_CONF
    # the user's settings win, key by key
    given = session_conf(True, 10, {"spark.sql.adaptive.enabled": "true"})
    assert given["spark.sql.adaptive.enabled"] == "true"
    assert given["spark.sql.shuffle.partitions"] == "1"
