"""Your own data (#15): CSV and JSON exports, a constant experiment id, ISO-8601 and other
timestamp text, Parquet with nanosecond timestamps (pandas 2), and every input problem in
one error.

Every expected value is worked out by hand from the rows written here.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from cluster_spark import cli, io, pipeline
from cluster_spark.config import parse_config
from cluster_spark.errors import ConfigError, InputError
from cluster_spark.inputs import Inputs
from tests.helpers import ANALYSIS_DATE

UTC = dt.UTC


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def micros(value: dt.datetime) -> int:
    return (value - utc(1970, 1, 1)) // dt.timedelta(microseconds=1)


def write(path: Path, text: str) -> str:
    path.write_text(text.lstrip("\n"))
    return str(path)


# ---------------------------------------------------------------- two CSV exports

EXPOSURES_CSV = """
org_id,variant,exposed_at
o1,control,2026-03-02T10:00:00Z
o2,control,2026-03-02 12:00:00+01:00
o3,treatment,2026-03-03
o4,treatment,2026-03-03T08:30:00.5-05:00
o5,treatment,
007,control,2026-03-04T00:00:00Z
7,treatment,2026-03-04T00:00:00Z
"""
# o2 is exposed at 11:00Z, o3 at 03-03 00:00Z, o4 at 13:30:00.5Z; o5 has no time (dropped,
# counted); 007 and 7 are two orgs (ids are text: a number type would merge them).
EVENTS_CSV = """
org_id,user_id,event,value,ts
o1,u1,purchase,10,2026-03-03T00:00:00Z
o1,u2,purchase,5.5,2026-03-04 10:00
o2,u3,purchase,7,2026-03-02T10:59:59Z
o2,u3,purchase,8,2026-03-02T12:00:00+01:00
o3,u4,purchase,20,2026-03-05T00:00:00+00:00
o4,u5,purchase,30,2026-03-03T13:30:00Z
o4,u5,page_view,0,
007,u6,purchase,1,2026-03-05T00:00:00Z
7,u7,purchase,100,2026-03-05T00:00:00Z
"""
# control: o1 10 + 5.5 (naive = UTC) over u1, u2; o2 8 over u3 (7 is a second before its
# exposure); 007 1 over u6. treatment: o3 20 over u4; o4 nothing (30 is half a second
# before its exposure, the page view has no time); 7 100 over u7.
README_EXPECTED = {"control": (3, 24.5, 4.0, 6.125), "treatment": (3, 120.0, 2.0, 60.0)}


def readme_config() -> str:
    """The config of the README's section "Your own data", as a user copies it."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index("## Your own data") :]
    block = section[section.index("```yaml\n") + len("```yaml\n") :]
    return block[: block.index("```\n")]


def test_two_csv_exports_one_config_one_command(spark, tmp_path, capsys):
    """The README's "Your own data": its config, two CSV exports, `run` and `report`."""
    (tmp_path / "exports").mkdir()
    (tmp_path / "conf").mkdir()
    write(tmp_path / "exports" / "exposures.csv", EXPOSURES_CSV)
    write(tmp_path / "exports" / "events.csv", EVENTS_CSV)
    write(tmp_path / "conf" / "pricing_page.yaml", readme_config())
    args = ["--config", str(tmp_path / "conf" / "pricing_page.yaml"), "--date", "2026-03-09"]
    code = cli.main(["run", *args, "--root", str(tmp_path)])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "pricing_page" in out.out
    out_dir = tmp_path / "out" / "pricing_page"
    rows = spark.read.format("delta").load(str(out_dir / "results")).collect()
    got = {r.variant: (r.n_units, r.numerator_sum, r.denominator_sum, r.mean) for r in rows}
    assert got == README_EXPECTED
    diags = spark.read.format("delta").load(str(out_dir / "diagnostics")).collect()
    checks = {(d.check, d.variant): d.value for d in diags if d.metric is None}
    assert checks[("exposures_with_null_ids", None)] == 1  # o5: no exposure time
    assert checks[("events_with_null_timestamps:events", None)] == 1  # o4's page view
    assert checks[("assignment_units", "control")] == 3
    assert checks[("assignment_units", "treatment")] == 3
    assert checks[("analysis_units", "control")] == 4
    assert checks[("analysis_units", "treatment")] == 2
    reports = tmp_path / "reports"
    code = cli.main(["report", *args, "--root", str(tmp_path), "--out", str(reports)])
    assert code == 0
    assert "revenue_per_user" in (reports / "pricing_page_2026-03-09.html").read_text()


# ---------------------------------------------------------------- JSON, no header, options

EXPOSURES_NO_HEADER = """
o1;control;2026-03-02T10:00:00Z
o2;control;2026-03-02T11:00:00Z
o3;treatment;2026-03-03T00:00:00Z
o4;treatment;2026-03-03T00:00:00Z
"""
# One JSON array (multiline): org ids as numbers and text; amounts as numbers.
EVENTS_JSON = [
    {"org": "o1", "kind": "purchase", "amount": 2.5, "at": "2026-03-03T01:00:00+01:00"},
    {"org": "o1", "kind": "refund", "amount": 9, "at": "2026-03-03T02:00:00Z"},
    {"org": "o3", "kind": "purchase", "amount": 4, "at": "2026-03-04"},
    {"org": "o4", "kind": "purchase", "amount": 6, "at": "2026-03-02T23:59:59Z"},
]
# control: o1 2.5 (00:00Z, after its exposure), o2 0. treatment: o3 4, o4 0 (before its
# exposure). Means 1.25 and 2.


def _options_config(root: Path) -> dict:
    return {
        "exposures": {
            "path": str(root / "exposures.txt"), "format": "csv", "header": False,
            "delimiter": ";", "schema": {"org": "string", "arm": "string", "at": "string"},
            "experiment_id": {"constant": "json_test"}, "variant": "arm", "timestamp": "at",
            "ids": {"org_id": "org"},
        },
        "sources": {"events": {
            "path": str(root / "events.json"), "format": "json", "multiline": True,
            "schema": {"amount": "double"}, "timestamp": "at", "ids": {"org_id": "org"},
        }},
        "metrics": {"amount": {"kind": "mean", "numerator": {
            "source": "events", "agg": "sum", "column": "amount",
            "filter": [{"column": "kind", "op": "eq", "value": "purchase"}]}}},
        "experiments": [{"id": "json_test", "assignment_unit": "org_id",
                         "control": "control", "variants": ["control", "treatment"],
                         "start": "2026-03-02", "metrics": ["amount"]}],
        "output": {k: str(root / "out" / k) for k in ("staging", "results", "diagnostics")},
    }  # fmt: skip


def test_json_array_and_a_csv_without_header(spark, tmp_path):
    write(tmp_path / "exposures.txt", EXPOSURES_NO_HEADER)
    (tmp_path / "events.json").write_text(json.dumps(EVENTS_JSON, indent=1))
    rows = pipeline.run(spark, parse_config(_options_config(tmp_path)), ANALYSIS_DATE)
    got = {r["variant"]: (r["n_units"], r["numerator_sum"], r["mean"]) for r in rows}
    assert got == {"control": (2, 2.5, 1.25), "treatment": (2, 4.0, 2.0)}


# ---------------------------------------------------------------- timestamp text rules

ISO_CASES = [
    ("2026-03-02T10:00:00Z", utc(2026, 3, 2, 10)),
    ("2026-03-02T10:00:00+02:00", utc(2026, 3, 2, 8)),
    ("2026-03-02 10:00:00+0200", utc(2026, 3, 2, 8)),
    ("2026-03-02 10:00:00 -05", utc(2026, 3, 2, 15)),
    ("2026-03-02 10:00:00 UTC", utc(2026, 3, 2, 10)),
    ("2026-03-02T10:00", utc(2026, 3, 2, 10)),  # no offset: UTC
    ("2026-03-02", utc(2026, 3, 2)),
    ("2026-03-02T10:00:00.123456789", utc(2026, 3, 2, 10, 0, 0, 123456)),  # truncated
    ("2026-03-02t10:00:00,5z", utc(2026, 3, 2, 10, 0, 0, 500000)),
    ("  2026-03-08T02:30:00  ", utc(2026, 3, 8, 2, 30)),  # in Los Angeles' DST gap
    ("2026-02-30T10:00:00Z", None),  # no such day
    ("2026-03-02T25:00:00Z", None),
    ("2026-03-02T10:00:00+19:00", None),  # no such offset
    ("2026-03-02T10:00:00 Europe/Paris", None),
    ("10:00:00", None),  # a time without a date is not today
    ("2026", None),
    ("03/02/2026", None),
    ("", None),
]


def _micros_of(spark, values: list[str], instants) -> list[int | None]:
    df = spark.createDataFrame([(i, v) for i, v in enumerate(values)], "i int, s string")
    rows = df.select("i", F.unix_micros(instants(F.col("s"))).alias("us")).collect()
    return [r.us for r in sorted(rows, key=lambda r: r.i)]


def test_iso_8601_text_is_parsed_without_the_session_zone(spark):
    want = [None if v is None else micros(v) for _, v in ISO_CASES]
    previous = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", "America/Los_Angeles")
    try:
        got = _micros_of(spark, [s for s, _ in ISO_CASES], io.iso_instants)
    finally:
        spark.conf.set("spark.sql.session.timeZone", previous)
    assert dict(zip([s for s, _ in ISO_CASES], got, strict=True)) == dict(
        zip([s for s, _ in ISO_CASES], want, strict=True)
    )


def test_patterns_and_epoch_numbers(spark):
    previous = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", "Asia/Tokyo")
    try:
        plain = _micros_of(
            spark,
            ["02/03/2026 10:00", "31/02/2026 10:00", "2026-03-02 10:00"],
            lambda c: io.pattern_instants(c, "dd/MM/yyyy HH:mm"),
        )
        zoned = _micros_of(
            spark,
            ["02/03/2026 10:00 +0100"],
            lambda c: io.pattern_instants(c, "dd/MM/yyyy HH:mm xx"),
        )
        seconds = _micros_of(
            spark, ["1772445600", "1772445600.25", "5", "1772445600000"],
            lambda c: io.epoch_instants(c, "s"),
        )  # fmt: skip
        nanos = _micros_of(spark, ["1772445600123456789"], lambda c: io.epoch_instants(c, "ns"))
    finally:
        spark.conf.set("spark.sql.session.timeZone", previous)
    assert plain == [micros(utc(2026, 3, 2, 10)), None, None]
    assert zoned == [micros(utc(2026, 3, 2, 9))]
    # 1772445600 s is 2026-03-02T10:00:00Z; 5 s is 1970 and 1772445600000 s is after
    # 2200: not seconds (the wrong unit), so NULL and counted by the input check.
    ten = micros(utc(2026, 3, 2, 10))
    assert seconds == [ten, ten + 250_000, None, None]
    assert nanos == [ten + 123_456]


_CHILD = """
import datetime as dt, json, sys
from cluster_spark import pipeline
from cluster_spark.config import parse_config
from cluster_spark.session import build_spark

conf = {"spark.sql.session.timeZone": "Asia/Tokyo", "spark.ui.enabled": "false",
        "spark.sql.shuffle.partitions": "2", "spark.ui.showConsoleProgress": "false"}
spark = build_spark("tz child", local_master="local[1]", extra_conf=conf)
rows = pipeline.run(spark, parse_config(json.loads(sys.argv[1])), dt.date(2026, 3, 9))
print("ROWS " + json.dumps({r["variant"]: [r["n_units"], r["numerator_sum"]] for r in rows}))
"""

TZ_EXPOSURES = """
org_id,variant,exposed_at
o1,control,2026-03-01 20:00:00-08:00
o2,control,2026-03-09 22:00:00
o3,treatment,2026-03-02 00:30
o4,treatment,2026-03-01T23:30:00
o5,treatment,2026-03-05T00:00:00Z
"""
# o1 04:00Z on 03-02; o2 22:00Z on 03-09 (naive: UTC; read in Los Angeles it would be
# after the analysis time); o3 00:30Z on 03-02 (read in Tokyo: before the start); o4
# before the start (23:30Z on 03-01; read in Los Angeles: 07:30Z on 03-02, inside).
TZ_EVENTS = """
org_id,value,ts
o1,1,2026-03-09 23:30:00
o2,2,2026-03-09T23:59:59Z
o3,4,2026-03-08 02:30:00
o3,8,2026-03-10 00:00:00+00:00
o3,16,2026-03-10 00:00:01
o4,32,2026-03-05 00:00:00
o5,64,2026-03-06 00:00:00
"""
# control: o1 1 (23:30Z ≤ analysis time; in Los Angeles 07:30Z on 03-10, too late), o2 2.
# treatment: o3 4 (in Los Angeles' DST gap) + 8 (exactly at the analysis time; 16 is a
# second after it), o5 64; o4 is not exposed within the experiment.
TZ_EXPECTED = {"control": [2, 3.0], "treatment": [2, 76.0]}


def _tz_config(root: Path) -> dict:
    return {
        "exposures": {"path": str(root / "exposures.csv"), "format": "csv",
                      "experiment_id": {"constant": "tz"}, "timestamp": "exposed_at",
                      "ids": {"org_id": "org_id"}},
        "sources": {"events": {"path": str(root / "events.csv"), "format": "csv",
                               "timestamp": "ts", "ids": {"org_id": "org_id"}}},
        "metrics": {"value": {"kind": "mean", "numerator": {
            "source": "events", "agg": "sum", "column": "value"}}},
        "experiments": [{"id": "tz", "assignment_unit": "org_id", "control": "control",
                         "variants": ["control", "treatment"], "start": "2026-03-02",
                         "metrics": ["value"]}],
        "output": {k: str(root / "out" / k) for k in ("staging", "results", "diagnostics")},
    }  # fmt: skip


@pytest.mark.slow
def test_text_timestamps_do_not_depend_on_the_machine_or_session_zone(tmp_path):
    write(tmp_path / "exposures.csv", TZ_EXPOSURES)
    write(tmp_path / "events.csv", TZ_EVENTS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK_GATEWAY")}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(_tz_config(tmp_path))],
        env=env | {"TZ": "America/Los_Angeles"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("ROWS "))
    assert json.loads(line.removeprefix("ROWS ")) == TZ_EXPECTED


# ---------------------------------------------------------------- Parquet from pandas 2


def _pandas_parquet(root: Path) -> None:
    pd = pytest.importorskip("pandas")
    exposures = pd.DataFrame(
        {
            "org_id": ["o1", "o2", "o3", "o4"],
            "variant": ["control", "control", "treatment", "treatment"],
            "exposed_at": pd.to_datetime(
                ["2026-03-02T10:00:00.000000900Z", "2026-03-02T11:00:00Z",
                 "2026-03-03T00:00:00Z", "2026-03-03T00:00:00Z"],
                utc=True, format="ISO8601",
            ),
        }
    )  # fmt: skip
    events = pd.DataFrame(
        {
            "org_id": ["o1", "o1", "o2", "o3", "o4"],
            "value": [3, 4, 5, 7, 11],  # int64
            "ts": pd.to_datetime(  # naive: UTC
                ["2026-03-02T10:00:00", "2026-03-05T00:00:00", "2026-03-02T10:59:59.999999999",
                 "2026-03-04T00:00:00", "2026-03-09T23:59:59.999999999"], format="ISO8601"
            ),
        }
    )  # fmt: skip
    exposures.to_parquet(root / "exposures.parquet")  # TIMESTAMP(NANOS,true)
    events.to_parquet(root / "events.parquet")  # TIMESTAMP(NANOS,false)


def test_parquet_with_nanosecond_timestamps_from_pandas(spark, tmp_path):
    _pandas_parquet(tmp_path)
    raw = _tz_config(tmp_path)
    raw["exposures"] |= {"path": str(tmp_path / "exposures.parquet"), "format": "parquet"}
    raw["sources"]["events"] |= {"path": str(tmp_path / "events.parquet"), "format": "parquet"}
    rows = pipeline.run(spark, parse_config(raw), ANALYSIS_DATE)
    got = {r["variant"]: (r["n_units"], r["numerator_sum"]) for r in rows}
    # o1 is exposed at 10:00:00.0000009 (truncated to 10:00:00.000000): its event at
    # 10:00:00 counts, and 4; o2's event is before its exposure. o3 7, o4 11 (the last
    # instant before the analysis time).
    assert got == {"control": (2, 7.0), "treatment": (2, 18.0)}
    assert spark.conf.get("spark.sql.legacy.parquet.nanosAsLong", None) is None  # put back


# ---------------------------------------------------------------- every problem at once

BAD_EVENTS_CSV = """
org_id,user_id,event,value,ts
o1,u1,purchase,10,03/03/2026 10:00
o1,u2,purchase,ten,2026-03-04 10:00
o2,u3,purchase,7,2026-02-30T10:59:59Z
"""


def _broken_config(root: Path) -> dict:
    raw = _tz_config(root)
    raw["exposures"]["experiment_id"] = "experiment"
    raw["sources"]["events"] |= {
        "path": str(root / "events.csv"),
        "ids": {"org_id": "org_id", "user_id": "user_id"},
    }
    raw["sources"]["sessions"] = {
        "path": str(root / "sessions"),
        "format": "parquet",
        "timestamp": "ts",
        "ids": {"org_id": "org_id"},
    }
    raw["metrics"]["value"]["numerator"]["filter"] = [{"column": "event", "op": "eq", "value": 3}]
    raw["metrics"]["sessions"] = {
        "kind": "mean",
        "numerator": {"source": "sessions", "agg": "count"},
    }
    raw["experiments"][0]["metrics"].append("sessions")
    return raw  # fmt: skip


def test_every_input_problem_is_reported_in_one_error(spark, tmp_path, capsys):
    write(tmp_path / "exposures.csv", TZ_EXPOSURES)
    write(tmp_path / "events.csv", BAD_EVENTS_CSV)
    config = parse_config(_broken_config(tmp_path))
    with pytest.raises(InputError) as err:
        pipeline.run(spark, config, ANALYSIS_DATE)
    lines = str(err.value).splitlines()
    exposures, events = tmp_path / "exposures.csv", tmp_path / "events.csv"
    assert lines[0] == "5 problems with the input tables (found before any staging work):"
    assert lines[1] == (
        f"  - exposures ({exposures}): missing column 'experiment' (has: exposed_at, "
        "org_id, variant); a table of one experiment's exposures can name it instead: "
        "experiment_id: {constant: <experiment id>}"
    )
    assert lines[2] == (
        f"  - source 'events' ({events}): column 'value' has type string, expected numeric"
    )
    assert lines[3] == (
        f"  - source 'events' ({events}): metrics.value.numerator.filter[0] compares column "
        "'event' (string) with number 3: quote it in the YAML ('3', not 3)"
    )
    assert lines[4] == (
        f"  - source 'events' ({events}), column 'ts': 2 of 3 values are not ISO-8601 "
        "timestamps such as '2026-03-02T10:15:00Z' or '2026-03-02 10:15:00+01:00' (e.g. "
        "'03/03/2026 10:00', '2026-02-30T10:59:59Z'); give their pattern: timestamp: "
        "{column: ts, format: 'dd/MM/yyyy HH:mm'} (a Spark datetime pattern)"
    )
    assert lines[5].startswith(
        f"  - source 'sessions': cannot read parquet {tmp_path / 'sessions'}: [PATH_NOT_FOUND]"
    )
    assert len(lines) == 6
    assert not (tmp_path / "out").exists()  # nothing was written
    path = tmp_path / "conf.json"
    path.write_text(json.dumps(_broken_config(tmp_path)))
    assert cli.main(["run", "--config", str(path), "--date", "2026-03-09"]) == 66
    stderr = capsys.readouterr().err
    assert "5 problems with the input tables" in stderr and "Traceback" not in stderr


def _check(spark, raw: dict) -> list[str]:
    with pytest.raises(InputError) as err:
        Inputs.checked(spark, parse_config(raw), ["tz"])
    return str(err.value).splitlines()[1:]


def test_malformed_records_patterns_and_epoch_units(spark, tmp_path):
    write(tmp_path / "exposures.csv", "org_id,variant,at\no1,control,02/03/2026 10:00\n"
          "o2,control,2026-03-02\n")  # fmt: skip
    write(tmp_path / "events.csv", "org_id,value,ts\no1,1.5,1772445600000\no1,ten,1772445601\n")
    raw = _tz_config(tmp_path)
    raw["exposures"]["timestamp"] = {"column": "at", "format": "dd/MM/yyyy HH:mm"}
    raw["sources"]["events"] |= {"schema": {"value": "double", "amount": "double"},
                                 "timestamp": {"column": "ts", "epoch": "s"}}  # fmt: skip
    exposures, events = tmp_path / "exposures.csv", tmp_path / "events.csv"
    assert _check(spark, raw) == [
        f"  - exposures ({exposures}), column 'at': 1 of 2 values do not match the format "
        "'dd/MM/yyyy HH:mm' (e.g. '2026-03-02'); correct the format (a Spark datetime "
        "pattern) or the values",
        f"  - source 'events' ({events}): 'schema' names column 'amount', which the header "
        "does not have (has: org_id, value, ts)",
        f"  - source 'events' ({events}), column 'ts': 1 of 2 values are not numbers of 's' "
        "since 1970-01-01 UTC between 1971 and 2199 (e.g. '1772445600000'); check the "
        "unit: timestamp: {column: ts, epoch: s|ms|us|ns}",
        f"  - source 'events' ({events}): 1 of 2 records have values that do not fit their "
        "column types (e.g. 'o1,ten,1772445601'); correct the data or the types in 'schema'",
    ]
    spark.createDataFrame([("o1", 1.5, 1772445600)], "org_id string, value double, ts bigint") \
        .write.format("delta").save(str(tmp_path / "events"))  # fmt: skip
    raw["exposures"]["timestamp"] = {"column": "at", "format": "yyyy-MM-dd qq"}
    raw["sources"]["events"] = {"path": str(tmp_path / "events"), "timestamp": "ts",
                                "ids": {"org_id": "org_id"}}  # fmt: skip
    problems = _check(spark, raw)
    assert problems[0].startswith(
        f"  - exposures ({exposures}), column 'at': [INVALID_DATETIME_PATTERN"
    )
    assert "pattern: yyyy-MM-dd qq." in problems[0]  # as configured
    assert problems[1] == (
        f"  - source 'events' ({tmp_path / 'events'}): column 'ts' has type bigint, expected "
        "timestamp; if it holds numbers since 1970-01-01 UTC, give their unit: timestamp: "
        "{column: ts, epoch: s|ms|us|ns}"
    )
    assert len(problems) == 2


def test_csv_files_with_different_headers_are_named(spark, tmp_path):
    write(tmp_path / "exposures.csv", TZ_EXPOSURES)
    (tmp_path / "events").mkdir()
    write(tmp_path / "events" / "a.csv", "org_id,value,ts\no1,1,2026-03-03\n")
    write(tmp_path / "events" / "b.csv", "value,org_id,ts\n2,o2,2026-03-03\n")
    raw = _tz_config(tmp_path)
    raw["sources"]["events"] |= {"path": str(tmp_path / "events"), "schema": {"value": "int"}}
    (problem,) = _check(spark, raw)
    assert problem.startswith(
        f"  - cannot read source 'events' ({tmp_path / 'events'}): [FAILED_READ_FILE"
    )
    assert problem.endswith(
        "(its files' header lines differ: give every file the same columns in order)"
    )


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"header": False}, "exposures = {...}: 'header' applies to format csv, not delta"),
        ({"format": "csv", "header": False},
         "a CSV file without a header needs 'schema': every column, in file order"),
        ({"format": "csv", "schema": {"org_id": "varchar"}},
         "exposures.schema.org_id = 'varchar': Input should be 'string', 'int', 'bigint'"),
        ({"format": "json", "path": None, "table": "db.exposures"},
         "a json table is read by 'path', not by 'table' name"),
        ({"experiment_id": {"constant": "other"}},
         "experiments[0]: 'tz' has no exposures: exposures.experiment_id is "
         "{constant: other}, so every exposure row is 'other'"),
        ({"experiment_id": {"value": "tz"}},
         "exposures.experiment_id.constant.constant = {...}: Field required"),
        ({"timestamp": {"column": "at", "format": "yyyy", "epoch": "s"}},
         "exposures.timestamp = {...}: give 'format' (text) or 'epoch' (numbers), not both"),
        ({"timestamp": {"column": "at", "epoch": "minutes"}},
         "exposures.timestamp.epoch = 'minutes': Input should be 's', 'ms', 'us' or 'ns'"),
    ],
)  # fmt: skip
def test_text_options_are_checked_with_the_config(tmp_path, change, message):
    raw = _tz_config(tmp_path)
    raw["exposures"] = {k: v for k, v in raw["exposures"].items() if k != "format"} | change
    raw["exposures"] = {k: v for k, v in raw["exposures"].items() if v is not None}
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    assert message in str(err.value)
