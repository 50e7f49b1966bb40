"""Real-world inputs never lose data silently (#25): Hive-partitioned sources whose
partition column is an id, Parquet files whose columns evolved (and files that conflict),
empty sources, and Parquet written by pandas (nanosecond timestamps) read without a
failed Spark job.

Every expected value is worked out by hand from the rows written here.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster_spark import cli, io, pipeline, session
from cluster_spark.config import Table, parse_config
from cluster_spark.errors import InputError
from cluster_spark.inputs import Inputs
from tests.helpers import ANALYSIS_DATE

CLI = Path(sys.executable).with_name("cluster-spark")
UTC = dt.UTC


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def _exposures(root: Path, arms: dict[str, str], exposed: dict[str, str] | None = None) -> None:
    """exposures.csv: org → arm, exposed at 2026-03-02 00:00Z unless `exposed` says when."""
    exposed = exposed or {}
    lines = ["org_id,variant,exposed_at"]
    lines += [
        f"{org},{arm},{exposed.get(org, '2026-03-02T00:00:00Z')}" for org, arm in arms.items()
    ]
    (root / "exposures.csv").write_text("\n".join(lines) + "\n")


def _config(root: Path, events: dict | None = None, filters: list | None = None) -> dict:
    """One experiment 'e' by org; metric 'value': the sum of the events' `value` per org."""
    numerator = {"source": "events", "agg": "sum", "column": "value"}
    if filters:
        numerator["filter"] = filters
    return {
        "exposures": {"path": str(root / "exposures.csv"), "format": "csv",
                      "experiment_id": {"constant": "e"}, "timestamp": "exposed_at",
                      "ids": {"org_id": "org_id"}},
        "sources": {"events": {"path": str(root / "events"), "format": "parquet",
                               "timestamp": "ts", "ids": {"org_id": "org_id"}} | (events or {})},
        "metrics": {"value": {"kind": "mean", "numerator": numerator}},
        "experiments": [{"id": "e", "assignment_unit": "org_id", "control": "control",
                         "variants": ["control", "treatment"], "start": "2026-03-02",
                         "metrics": ["value"]}],
        "output": {k: str(root / "out" / k) for k in ("staging", "results", "diagnostics")},
    }  # fmt: skip


def _parquet(path: Path, columns: dict[str, pa.Array]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


def _ts(*values: dt.datetime) -> pa.Array:
    return pa.array(values, pa.timestamp("us", tz="UTC"))


def _results(spark, raw: dict) -> dict[str, tuple]:
    rows = pipeline.run(spark, parse_config(raw), ANALYSIS_DATE)
    return {r["variant"]: (r["n_units"], r["numerator_sum"], r["mean"]) for r in rows}


# ---------------------------------------------------------------- 1. partition columns


@pytest.mark.parametrize(
    "orgs",
    [
        ("007", "7", "010"),  # Spark's inference: int 7, 7 and 10
        ("2026-01-05", "2026-01-06", "2026-01-07"),  # inferred as dates
        ("0012", "012", "12"),  # all three inferred as the int 12
    ],
)
def test_ids_that_live_only_in_partition_folders_stay_text(spark, tmp_path, orgs):
    """events/org_id=<id>/part-0.parquet: the id is only in the folder name."""
    a, b, c = orgs
    _exposures(tmp_path, {a: "control", b: "treatment", c: "treatment"},
               {c: "2026-03-03T00:00:00Z"})  # fmt: skip
    events = {
        a: ([1.0, 2.0], [utc(2026, 3, 3), utc(2026, 3, 4)]),
        b: ([10.0], [utc(2026, 3, 5)]),
        c: ([100.0, 1000.0], [utc(2026, 3, 5), utc(2026, 3, 2, 12)]),  # 1000: before exposure
    }
    for org, (values, times) in events.items():
        path = tmp_path / "events" / f"org_id={org}" / "part-0.parquet"
        _parquet(path, {"value": pa.array(values), "ts": _ts(*times)})
    # control: a 1 + 2. treatment: b 10, c 100 (its 1000 is before its exposure).
    assert _results(spark, _config(tmp_path)) == {
        "control": (1, 3.0, 3.0),
        "treatment": (2, 110.0, 55.0),
    }


def test_text_partition_columns_are_text_unless_the_schema_types_them(spark, tmp_path):
    """JSON lines under events/shop=010/ and events/shop=10/: two shops, filtered by the
    text '010' (Spark's inference would make both the int 10)."""
    _exposures(tmp_path, {"o1": "control", "o2": "treatment"})
    for shop, (x, y) in {"010": (1, 4), "10": (2, 8)}.items():
        folder = tmp_path / "events" / f"shop={shop}"
        folder.mkdir(parents=True)
        (folder / "part-0.json").write_text(
            f'{{"org_id": "o1", "value": {x}, "ts": "2026-03-03T00:00:00Z"}}\n'
            f'{{"org_id": "o2", "value": {y}, "ts": "2026-03-03T00:00:00Z"}}\n'
        )
    shop_010 = [{"column": "shop", "op": "eq", "value": "010"}]
    raw = _config(tmp_path, {"format": "json"}, shop_010)
    # shop 010 only: o1 1, o2 4.
    assert _results(spark, raw) == {"control": (1, 1.0, 1.0), "treatment": (1, 4.0, 4.0)}
    # The schema types it: shop 10 (both folders) is o1 1 + 2, o2 4 + 8.
    raw = _config(tmp_path, {"format": "json", "schema": {"shop": "int"}},
                  [{"column": "shop", "op": "eq", "value": 10}])  # fmt: skip
    raw["output"] = {k: str(tmp_path / "out2" / k) for k in raw["output"]}
    assert _results(spark, raw) == {"control": (1, 3.0, 3.0), "treatment": (1, 12.0, 12.0)}


# ---------------------------------------------------------------- 2. schema evolution


def test_parquet_files_whose_columns_evolved_are_read_with_merged_schemas(spark, tmp_path):
    """The older file lacks `channel`: NULL there, which `ne` keeps (README NULL rules)."""
    _exposures(tmp_path, {"o1": "control", "o2": "treatment"})
    day = utc(2026, 3, 3)
    _parquet(tmp_path / "events" / "part-00000-old.parquet", {
        "org_id": pa.array(["o1", "o2"]), "value": pa.array([1.0, 2.0]), "ts": _ts(day, day),
    })  # fmt: skip
    _parquet(tmp_path / "events" / "part-00001-new.parquet", {
        "org_id": pa.array(["o1", "o1", "o2"]), "value": pa.array([10.0, 20.0, 40.0]),
        "ts": _ts(day, day, day), "channel": pa.array(["web", "test", "web"]),
    })  # fmt: skip
    not_test = [{"column": "channel", "op": "ne", "value": "test"}]
    # control: o1 1 (channel NULL) + 10 (web); 20 is 'test'. treatment: o2 2 + 40.
    assert _results(spark, _config(tmp_path, filters=not_test)) == {
        "control": (1, 11.0, 11.0),
        "treatment": (1, 42.0, 42.0),
    }


def test_parquet_files_that_conflict_are_an_input_error_naming_the_column(spark, tmp_path):
    _exposures(tmp_path, {"o1": "control", "o2": "treatment"})
    day = utc(2026, 3, 3)
    _parquet(tmp_path / "events" / "a.parquet", {
        "org_id": pa.array(["o1"]), "value": pa.array([1], pa.int32()), "ts": _ts(day),
    })  # fmt: skip
    _parquet(tmp_path / "events" / "b.parquet", {
        "org_id": pa.array(["o2"]), "value": pa.array(["2"]), "ts": _ts(day),
    })  # fmt: skip
    with pytest.raises(InputError) as err:
        Inputs.checked(spark, parse_config(_config(tmp_path)), ["e"])
    assert str(err.value).splitlines()[1:] == [
        f"  - source 'events': cannot read parquet {tmp_path / 'events'}: column 'value' "
        "is INT in some files and STRING in others: its files disagree on this column's "
        "type (rewrite them with one type)"
    ]


# ---------------------------------------------------------------- 3. empty sources


HEADERLESS = {"header": False, "schema": {"org_id": "string", "ts": "string", "value": "double"}}


@pytest.mark.parametrize(
    ("fmt", "options"), [("parquet", {}), ("csv", {}), ("json", {}), ("csv", HEADERLESS)]
)
def test_an_empty_source_says_what_to_do(spark, tmp_path, monkeypatch, capsys, fmt, options):
    """A headerless CSV infers nothing, so Spark reads an empty folder as no rows: it is
    refused the same way."""
    _exposures(tmp_path, {"o1": "control", "o2": "treatment"})
    (tmp_path / "events").mkdir()
    (tmp_path / "events" / "_SUCCESS").write_text("")
    (tmp_path / "events" / ".part-0.crc").write_text("")
    raw = _config(tmp_path, {"format": fmt, **options})
    want = (
        f"  - source 'events': cannot read {fmt} {tmp_path / 'events'}: no data files (the "
        "folder is empty or holds only files Spark skips: names starting with _ or ., such "
        "as _SUCCESS): check the path"
    )
    with pytest.raises(InputError) as err:
        Inputs.checked(spark, parse_config(raw), ["e"])
    assert str(err.value).splitlines()[1:] == [want]
    monkeypatch.setattr(session, "build_spark", lambda *a, **k: spark)
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps(raw))
    assert cli.main(["run", "-q", "--config", str(conf), "--date", "2026-03-09"]) == 66
    stderr = capsys.readouterr().err
    assert want.strip() in stderr and "Traceback" not in stderr
    assert "Unable to infer schema" not in stderr


# ---------------------------------------------------------------- 4. pandas Parquet


def _pandas_events(root: Path) -> None:
    """Parquet as pandas 2 writes it (TIMESTAMP(NANOS)), partitioned by org_id."""
    pd = pytest.importorskip("pandas")
    events = pd.DataFrame({
        "org_id": ["007", "007", "7", "7"],
        "value": [1, 2, 10, 20],  # int64
        "ts": pd.to_datetime(["2026-03-03T00:00:00Z", "2026-03-09T23:59:59.999999999Z",
                              "2026-03-04T00:00:00Z", "2026-03-01T23:00:00Z"],
                             utc=True, format="ISO8601"),
    })  # fmt: skip
    events.to_parquet(root / "events", partition_cols=["org_id"])


def test_pandas_parquet_is_read_without_a_failed_job(spark, tmp_path):
    """The footers say which columns are nanoseconds: only those are read as epoch
    nanoseconds (`Read.nanos`), and no Spark job fails on the way."""
    _pandas_events(tmp_path)
    sc = spark.sparkContext
    sc.setJobGroup("pandas-parquet", "read_input")
    try:
        read = io.read_input(spark, Table(path=str(tmp_path / "events"), format="parquet"))
        assert read.df.count() == 4
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    assert read.nanos == frozenset({"ts"})  # not `value`, another bigint column
    tracker = sc.statusTracker()
    jobs = [tracker.getJobInfo(j) for j in tracker.getJobIdsForGroup("pandas-parquet")]
    assert jobs and [j.status for j in jobs if j.status != "SUCCEEDED"] == []
    assert spark.conf.get("spark.sql.legacy.parquet.nanosAsLong", None) is None  # put back


@pytest.mark.slow
def test_the_command_reads_pandas_parquet_quietly(spark, tmp_path):
    """`cluster-spark run -q` in its own JVM: pandas Parquet partitioned by org_id gives
    hand-computed results, and nothing on stderr (no failed job's ERROR Executor)."""
    _pandas_events(tmp_path)
    _exposures(tmp_path, {"007": "control", "7": "treatment"})
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps(_config(tmp_path)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK_GATEWAY")}
    proc = subprocess.run(
        [str(CLI), "run", "-q", "--config", str(conf), "--date", "2026-03-09"],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [x for x in proc.stderr.splitlines() if "incubator modules" not in x]
    assert lines == [], proc.stderr
    rows = spark.read.format("delta").load(str(tmp_path / "out" / "results")).collect()
    got = {r.variant: (r.n_units, r.numerator_sum) for r in rows}
    # 007: 1 + 2 (the last nanosecond before the analysis time, truncated to µs). 7: 10;
    # 20 is before its exposure.
    assert got == {"control": (1, 3.0), "treatment": (1, 10.0)}
