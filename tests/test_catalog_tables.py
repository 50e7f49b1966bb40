"""Output tables in a catalog (`output.X: {table: NAME}`), in Spark's local catalog (a
warehouse directory): created partitioned by experiment_id, one slice replaced per run,
a rerun gives the same rows, a failed run leaves the previous rows."""

from __future__ import annotations

import datetime as dt

import pytest

from cluster_spark import api, pipeline
from cluster_spark.config import Location, Output, parse_config
from cluster_spark.errors import ConfigError, InputError
from tests.helpers import ANALYSIS_DATE, EVENT_DDL, EXPOSURE_DDL, config_dict, write_delta
from tests.test_staging import EVENTS, EXPOSURES

TABLES = {
    "staging": "cs_test.staging",
    "results": "cs_test.results",
    "diagnostics": "cs_test.diagnostics",
}


@pytest.fixture()
def catalog_config(spark, tmp_path):
    write_delta(spark, EXPOSURES, EXPOSURE_DDL, tmp_path / "exposures")
    write_delta(spark, EVENTS, EVENT_DDL, tmp_path / "events")
    spark.sql("DROP SCHEMA IF EXISTS cs_test CASCADE")
    spark.sql("CREATE SCHEMA cs_test")
    raw = config_dict(tmp_path)
    raw["output"] = {key: {"table": name} for key, name in TABLES.items()}
    yield parse_config(raw)
    spark.sql("DROP SCHEMA IF EXISTS cs_test CASCADE")


def _rows(spark, name, without=None):
    df = spark.read.table(name)
    if without:
        df = df.drop(without)
    return sorted(map(tuple, df.collect()), key=repr)


def test_output_locations_parse():
    """A plain string is a path; `{path:}` and `{table:}` are explicit; names are checked."""
    assert Location.model_validate("/tmp/x") == Location(path="/tmp/x")
    assert Location.model_validate({"table": "main.exp.results"}).table == "main.exp.results"
    assert str(Location(table="exp.results")) == "table exp.results"

    raw = config_dict("/tmp/root")
    raw["output"]["results"] = {"path": "/tmp/root/staging"}
    with pytest.raises(ConfigError, match=r"output = .*'results' and 'staging' are both"):
        parse_config(raw)
    for bad, rule in [
        ({"table": "a.b.c.d"}, "should match pattern"),
        ({"table": "exp.results; DROP TABLE x"}, "should match pattern"),
        ({"table": "exp.results", "path": "/tmp/r"}, "exactly one of 'path' or 'table'"),
        ({}, "exactly one of 'path' or 'table'"),
    ]:
        raw = config_dict("/tmp/root")
        raw["output"]["results"] = bad
        with pytest.raises(ConfigError, match=rf"output\.results.*{rule}"):
            parse_config(raw)


def test_run_into_catalog_tables(spark, catalog_config):
    config = catalog_config
    returned = api.analyze(spark, config, ANALYSIS_DATE)  # the notebook API
    results = {(r.metric, r.variant): r for r in spark.read.table(TABLES["results"]).collect()}
    assert {(r.metric, r.variant) for r in returned.collect()} == set(results)
    # The same hand-computed numbers as the path tables' test (test_pipeline): control
    # 17/3, treatment 21/4.
    assert results[("revenue_per_user", "control")].mean == pytest.approx(17 / 3)
    assert results[("revenue_per_user", "treatment")].mean == pytest.approx(21 / 4)
    for name in TABLES.values():
        detail = spark.sql(f"DESCRIBE DETAIL {name}").first()
        assert detail.format == "delta" and detail.partitionColumns == ["experiment_id"], name

    # A rerun replaces the slice (same rows, new run id); another date is a new slice.
    before = {name: _rows(spark, name, without="run_id") for name in TABLES.values()}
    pipeline.run(spark, config, ANALYSIS_DATE)
    assert {name: _rows(spark, name, without="run_id") for name in TABLES.values()} == before
    pipeline.run(spark, config, ANALYSIS_DATE + dt.timedelta(days=1))
    dates = {r.analysis_date for r in spark.read.table(TABLES["results"]).collect()}
    assert dates == {ANALYSIS_DATE, ANALYSIS_DATE + dt.timedelta(days=1)}


def test_failed_run_keeps_catalog_tables_as_they_were(spark, catalog_config, monkeypatch):
    config = catalog_config
    pipeline.run(spark, config, ANALYSIS_DATE)
    before = {name: _rows(spark, name) for name in TABLES.values()}

    def crash(*args, **kwargs):
        raise RuntimeError("driver died while reducing")

    monkeypatch.setattr(pipeline.reducer, "reduce_experiment", crash)
    with pytest.raises(RuntimeError, match="driver died"):
        pipeline.run(spark, config, ANALYSIS_DATE)
    for name, rows in before.items():
        assert _rows(spark, name) == rows, name


def test_a_table_spark_cannot_write_is_an_input_error_naming_it(spark, catalog_config):
    """A table in a schema that does not exist: InputError naming the table, and the
    tables written before it get their slices back (here: none existed)."""
    tables = {k: Location(table=v) for k, v in TABLES.items()}
    output = Output(**{**tables, "results": Location(table="no_such_schema.results")})
    config = catalog_config.model_copy(update={"output": output})
    with pytest.raises(InputError, match=r"cannot write Delta table no_such_schema\.results: "):
        pipeline.run(spark, config, ANALYSIS_DATE)
    assert _rows(spark, TABLES["staging"]) == []
