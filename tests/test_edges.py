"""Correctness at the edges: time zones, NULLs in filters and ids, experiment ids that are
not SQL-safe, unreadable inputs, exit codes, and staging that fails half-way.

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
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pyspark.errors import PySparkException

from cluster_spark import cli, io, pipeline, staging
from cluster_spark.config import parse_config
from cluster_spark.errors import ConfigError, DataQualityError, InputError
from tests.helpers import ANALYSIS_DATE, EXPOSURE_DDL, config_dict, write_delta

UTC = dt.UTC


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def _by(rows, *keys):
    return {tuple(r[k] for k in keys): r for r in rows}


def _diagnostics(spark, config) -> dict[tuple[str, str | None], int]:
    rows = spark.read.format("delta").load(config.output.diagnostics.path).collect()
    return {(d.check, d.variant): d.value for d in rows if d.metric is None}


# ---------------------------------------------------------------- time zones

TZ_EXPOSURES = [
    ("tz", "o1", "control", utc(2026, 3, 2, 2)),  # 18:00 on 03-01 in Los Angeles
    ("tz", "o2", "treatment", utc(2026, 3, 2, 3)),
    ("tz", "o3", "control", utc(2026, 3, 5)),
    ("tz", "o4", "treatment", utc(2026, 3, 5, 12)),
    ("tz", "o5", "control", utc(2026, 3, 10, 3)),  # after the analysis time: not in
    ("tz", "o6", "treatment", utc(2026, 3, 1, 23, 30)),  # before the start: not in
]
# Events as TIMESTAMP_NTZ: wall-clock times, read as UTC whatever the session's zone.
TZ_EVENTS = [
    ("o1", "purchase", 10.0, dt.datetime(2026, 3, 2, 2)),  # exactly at exposure: counted
    ("o1", "purchase", 5.0, dt.datetime(2026, 3, 9, 23, 59, 59)),  # counted
    ("o2", "purchase", 7.0, dt.datetime(2026, 3, 10)),  # exactly at the analysis time
    ("o2", "purchase", 100.0, dt.datetime(2026, 3, 10, 7, 59)),  # after it
    ("o3", "purchase", 3.0, dt.datetime(2026, 3, 4, 23)),  # before o3's exposure
    ("o3", "purchase", 4.0, dt.datetime(2026, 3, 6)),
    ("o4", "page_view", 0.0, dt.datetime(2026, 3, 6)),
    ("o4", "purchase", 8.0, dt.datetime(2026, 3, 8, 2, 30)),  # in LA's DST gap
    # DST starts in Los Angeles at 2026-03-08T10:00Z: a day there is then 23 hours.
    ("o4", "purchase", 6.0, dt.datetime(2026, 3, 8, 11, 30)),  # in o4's 3-day window (to 12:00Z)
    ("o3", "purchase", 2.0, dt.datetime(2026, 3, 8, 0, 30)),  # after analysis − 48 h (00:00Z)
    ("o5", "purchase", 50.0, dt.datetime(2026, 3, 10, 4)),
]
# control o1, o3: revenue 15, 6; purchases 2, 2. treatment o2, o4: revenue 7, 14; purchases 1, 2.
# revenue_3d (days 0-2 after each exposure): o1 10, o3 4 | o2 0, o4 8 + 6.
# revenue_baked (48 h: events up to 03-08T00:00Z): o1 10, o3 4 | o2 0, o4 0.
# Org attributes with TIMESTAMP_NTZ times, read as UTC: the value at or before exposure.
TZ_ATTRIBUTES = [
    ("o1", "pre", dt.datetime(2026, 3, 2, 1)),  # o1 exposed 02:00Z: before (in LA: after)
    ("o1", "post", dt.datetime(2026, 3, 2, 3)),
    ("o2", "pre", dt.datetime(2026, 3, 2, 3)),  # exactly at o2's exposure
    ("o3", "post", dt.datetime(2026, 3, 5, 0, 0, 1)),  # after: o3 is in (null)
    ("o4", "pre", dt.datetime(2026, 3, 4, 20)),
]
TZ_SLICE_UNITS = {("pre", "control"): 1, ("pre", "treatment"): 2, ("(null)", "control"): 1}
TZ_EXPECTED = {
    ("revenue", "control"): (2, 21.0),
    ("revenue", "treatment"): (2, 21.0),
    ("purchases", "control"): (2, 4.0),
    ("purchases", "treatment"): (2, 3.0),
    ("revenue_3d", "control"): (2, 14.0),
    ("revenue_3d", "treatment"): (2, 14.0),
    ("revenue_baked", "control"): (2, 14.0),
    ("revenue_baked", "treatment"): (2, 0.0),
}

_CHILD = """
import datetime as dt, json, sys
from cluster_spark import pipeline
from cluster_spark.config import parse_config
from cluster_spark.session import build_spark

config, zone = json.loads(sys.argv[1]), sys.argv[2]
conf = {"spark.sql.session.timeZone": zone, "spark.ui.enabled": "false",
        "spark.sql.shuffle.partitions": "2", "spark.ui.showConsoleProgress": "false"}
spark = build_spark("tz child", local_master="local[1]", extra_conf=conf)
rows = pipeline.run(spark, parse_config(config), dt.date(2026, 3, 9))
print("ROWS " + json.dumps(rows, default=str))
"""


def _tz_config(root: Path, out: str) -> dict:
    purchase = [{"column": "event", "op": "eq", "value": "purchase"}]
    return {
        "exposures": {"path": str(root / "exposures"), "timestamp": "exposure_ts",
                      "ids": {"org_id": "org_id"}},
        "sources": {"events": {"path": str(root / "events"), "timestamp": "ts",
                               "ids": {"org_id": "org_id"}}},
        "metrics": {
            "revenue": {"kind": "mean", "numerator": {"source": "events", "agg": "sum",
                                                      "column": "value", "filter": purchase}},
            "purchases": {"kind": "mean", "numerator": {"source": "events", "agg": "count",
                                                        "filter": purchase}},
            "revenue_3d": {"kind": "mean", "numerator": {
                "source": "events", "agg": "sum", "column": "value", "filter": purchase,
                "window": {"start_day": 0, "end_day": 2}}},
            "revenue_baked": {"kind": "mean", "bake_hours": 48, "numerator": {
                "source": "events", "agg": "sum", "column": "value", "filter": purchase}},
        },
        "experiments": [{"id": "tz", "assignment_unit": "org_id", "control": "control",
                         "variants": ["control", "treatment"], "start": "2026-03-02",
                         "metrics": ["revenue", "purchases", "revenue_3d", "revenue_baked"],
                         "dimensions": ["stage"], "min_slice_units": 1}],
        "unit_attributes": {"orgs": {"path": str(root / "orgs"), "timestamp": "updated_at",
                                     "ids": {"org_id": "org_id"}, "dimensions": ["stage"]}},
        "output": {k: str(root / out / k) for k in ("staging", "results", "diagnostics")},
    }  # fmt: skip


@pytest.mark.slow
def test_results_do_not_depend_on_the_machine_or_session_time_zone(spark, tmp_path):
    write_delta(spark, TZ_EXPOSURES, EXPOSURE_DDL, tmp_path / "exposures")
    write_delta(
        spark, TZ_EVENTS, "org_id string, event string, value double, ts timestamp_ntz",
        tmp_path / "events",
    )  # fmt: skip
    write_delta(
        spark, TZ_ATTRIBUTES, "org_id string, stage string, updated_at timestamp_ntz",
        tmp_path / "orgs",
    )  # fmt: skip
    here = pipeline.run(spark, parse_config(_tz_config(tmp_path, "utc")), ANALYSIS_DATE)
    overall = [r for r in here if r["dimension"] is None]
    got = {(r["metric"], r["variant"]): (r["n_units"], r["numerator_sum"]) for r in overall}
    assert got == TZ_EXPECTED
    sliced = {
        (r["slice"], r["variant"]): r["n_units"]
        for r in here
        if r["metric"] == "revenue" and r["dimension"] == "stage"
    }
    assert {k: v for k, v in sliced.items() if v} == TZ_SLICE_UNITS
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK_GATEWAY")}
    for zone in ("America/Los_Angeles", "Asia/Tokyo"):  # west and east of UTC
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, json.dumps(_tz_config(tmp_path, zone)), zone],
            env=env | {"TZ": zone},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        line = next(x for x in proc.stdout.splitlines() if x.startswith("ROWS "))
        there = json.loads(line.removeprefix("ROWS "))
        numbers = ("n_units", "numerator_sum", "mean", "effect_abs", "p_value", "srm_chi2")
        assert len(there) == len(here), zone
        key = _by(there, "metric", "variant", "dimension", "slice")
        for a in here:
            b = key[(a["metric"], a["variant"], a["dimension"], a["slice"])]
            for k in numbers:
                assert b[k] == (None if a[k] is None else pytest.approx(a[k], rel=1e-12)), zone


# ---------------------------------------------------------------- NULLs in filters

REFUND_EXPOSURES = [
    ("r", "o1", "control", utc(2026, 3, 2)),
    ("r", "o2", "control", utc(2026, 3, 2)),
    ("r", "o3", "treatment", utc(2026, 3, 2)),
    ("r", "o4", "treatment", utc(2026, 3, 2)),
]
REFUNDS = [
    ("o1", 10.0, None, utc(2026, 3, 3)),  # no reason: "not test", kept
    ("o1", 99.0, "test", utc(2026, 3, 3)),
    ("o2", 5.0, "customer", utc(2026, 3, 3)),
    ("o3", 2.0, None, utc(2026, 3, 4)),
    ("o3", 7.0, "fraud_check", utc(2026, 3, 4)),
    ("o4", 1.0, "customer", utc(2026, 3, 4)),
]


def _refund_config(root: Path, op: str, value) -> dict:
    cond = {"column": "reason", "op": op, "value": value}
    return {
        "exposures": {"path": str(root / "exposures"), "timestamp": "exposure_ts",
                      "ids": {"org_id": "org_id"}},
        "sources": {"refunds": {"path": str(root / "refunds"), "timestamp": "ts",
                                "ids": {"org_id": "org_id"}}},
        "metrics": {"refunds_per_org": {"kind": "mean", "numerator": {
            "source": "refunds", "agg": "sum", "column": "amount", "filter": [cond]}}},
        "experiments": [{"id": "r", "assignment_unit": "org_id", "control": "control",
                         "variants": ["control", "treatment"], "start": "2026-03-02",
                         "metrics": ["refunds_per_org"]}],
        "output": {k: str(root / op / k) for k in ("staging", "results", "diagnostics")},
    }  # fmt: skip


@pytest.mark.parametrize(
    ("op", "value", "control_mean", "treatment_mean"),
    [
        # not_in [test, fraud_check]: control (10 + 5)/2, treatment (2 + 1)/2
        ("not_in", ["test", "fraud_check"], 7.5, 1.5),
        # ne test: control (10 + 5)/2, treatment (2 + 7 + 1)/2
        ("ne", "test", 7.5, 5.0),
        # is_null: control 10/2, treatment 2/2
        ("is_null", None, 5.0, 1.0),
        # in [customer]: NULL is not "customer": control 5/2, treatment 1/2
        ("in", ["customer"], 2.5, 0.5),
    ],
)
def test_ne_and_not_in_keep_rows_whose_column_is_null(
    spark, tmp_path, op, value, control_mean, treatment_mean
):
    write_delta(spark, REFUND_EXPOSURES, EXPOSURE_DDL, tmp_path / "exposures")
    ddl = "org_id string, amount double, reason string, ts timestamp"
    write_delta(spark, REFUNDS, ddl, tmp_path / "refunds")
    config = parse_config(_refund_config(tmp_path, op, value))
    rows = _by(pipeline.run(spark, config, ANALYSIS_DATE), "variant")
    assert (rows[("control",)]["mean"], rows[("treatment",)]["mean"]) == (
        control_mean,
        treatment_mean,
    )
    # the two NULL reasons among the experiment's events are counted
    assert _diagnostics(spark, config)[("null_values:refunds:reason", None)] == 2


# ---------------------------------------------------------------- experiment ids


@pytest.mark.parametrize("exp_id", ["back\\slash", "it's", "' OR 1=1 --", "日本/語 %2F"])
def test_any_experiment_id_runs_and_reruns(spark, tmp_path, exp_id):
    from tests.test_staging import EVENTS, EXPOSURES

    exposures = [(exp_id if e == "e1" else e, *rest) for e, *rest in EXPOSURES]
    write_delta(spark, exposures, EXPOSURE_DDL, tmp_path / "exposures")
    ddl = "org_id string, user_id string, event string, value double, ts timestamp"
    write_delta(spark, EVENTS, ddl, tmp_path / "events")
    raw = config_dict(tmp_path)
    raw["experiments"][0]["id"] = exp_id
    config = parse_config(raw)
    first = pipeline.run(spark, config, ANALYSIS_DATE)
    second = pipeline.run(spark, config, ANALYSIS_DATE)  # a rerun replaces its slice
    results = spark.read.format("delta").load(config.output.results.path)
    assert results.count() == len(first) == len(second) == 4  # 2 metrics × 2 variants
    assert {r.experiment_id for r in results.collect()} == {exp_id}
    assert [r["n_units"] for r in second] == [2, 3, 2, 3]  # control o1, o2; treatment o3, o4, o6


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ids=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=4, unique=True))
@example(ids=["a\\'b", "'", "\\", "x') OR ('1'='1", "\u00e9\U0001f600"])
def test_slice_writes_replace_exactly_their_ids(spark, tmp_path_factory, ids):
    """Property: for arbitrary unicode ids, writing a slice and reading it back by the same
    ids returns exactly the written rows, and another id's rows are untouched."""
    ids = [i for i in ids if i.isprintable() and i != "__HIVE_DEFAULT_PARTITION__"]
    if not ids:
        return
    path = str(tmp_path_factory.mktemp("slice") / "t")
    day = dt.date(2026, 3, 9)
    ddl = "experiment_id string, analysis_date date, v int"
    keep = spark.createDataFrame([("other", day, 0)], ddl)
    io.write_slice(keep, path, ["other"], day)
    rows = spark.createDataFrame([(e, day, k) for k, e in enumerate(ids)], ddl)
    io.write_slice(rows, path, ids, day)
    io.write_slice(rows, path, ids, day)  # idempotent
    back = io.read_slice(spark, path, ids, day).collect()
    assert sorted((r.experiment_id, r.v) for r in back) == sorted((e, k) for k, e in enumerate(ids))
    assert io.read_slice(spark, path, ["other"], day).count() == 1


@pytest.mark.parametrize(
    ("exp_id", "rule"),
    [
        ("a\nb", "control characters"),
        ("__HIVE_DEFAULT_PARTITION__", "read back as NULL"),
        ("日" * 81, "at most 241 bytes as written there, this one has 243"),  # 3 bytes each
        ("/" * 81, "this one has 243"),  # escaped as %2F
    ],
)
def test_unsupported_experiment_ids_are_config_errors(tmp_path, exp_id, rule):
    raw = config_dict(tmp_path)
    raw["experiments"][0]["id"] = exp_id
    with pytest.raises(ConfigError, match=rule):
        parse_config(raw)


def test_replace_where_predicate_holds_no_id_text():
    text = io.slice_predicate(["it's", "a\\b"], dt.date(2026, 3, 9))
    assert "'" + "it" not in text and "\\" not in text
    assert text.count("decode(unhex('") == 2


# ---------------------------------------------------------------- NULL ids

NULL_ID_EXPOSURES = [
    ("n", "o1", "control", utc(2026, 3, 2)),
    ("n", "o2", "control", utc(2026, 3, 2)),
    ("n", "o3", "treatment", utc(2026, 3, 2)),
    ("n", "o4", "treatment", utc(2026, 3, 2)),
]
NULL_ID_EVENTS = [
    ("o1", "u1", "purchase", 10.0, utc(2026, 3, 3)),
    ("o1", None, "purchase", 6.0, utc(2026, 3, 3)),  # org known, user NULL
    ("o2", "u2", "purchase", 4.0, utc(2026, 3, 3)),
    ("o3", "u3", "purchase", 8.0, utc(2026, 3, 3)),
    ("o3", None, "page_view", 0.0, utc(2026, 3, 3)),  # org known, user NULL
    ("o4", "u4", "purchase", 2.0, utc(2026, 3, 3)),
    ("o4", "u5", "page_view", 0.0, utc(2026, 3, 3)),
    (None, "u6", "purchase", 9.0, utc(2026, 3, 3)),  # org NULL: belongs to no unit
    (None, None, "purchase", 9.0, utc(2026, 3, 3)),
]


@pytest.mark.parametrize("drop", [False, True])
def test_null_analysis_unit_ids_are_counted_and_can_be_dropped(spark, tmp_path, drop):
    write_delta(spark, NULL_ID_EXPOSURES, EXPOSURE_DDL, tmp_path / "exposures")
    ddl = "org_id string, user_id string, event string, value double, ts timestamp"
    write_delta(spark, NULL_ID_EVENTS, ddl, tmp_path / "events")
    raw = config_dict(tmp_path)
    raw["experiments"][0]["id"] = "n"
    raw["sources"]["events"]["drop_null_ids"] = drop
    config = parse_config(raw)
    rows = _by(pipeline.run(spark, config, ANALYSIS_DATE), "metric", "variant")
    # revenue per user, control: kept, o1 = 16 over 1 user, o2 = 4 over 1; dropped: 10 and 4
    # purchases per org, control: kept (2 + 1)/2; dropped (1 + 1)/2
    rpu, ppo = rows[("revenue_per_user", "control")], rows[("purchases_per_org", "control")]
    assert (rpu["numerator_sum"], rpu["denominator_sum"]) == ((14.0, 2.0) if drop else (20.0, 2.0))
    assert ppo["mean"] == (1.0 if drop else 1.5)
    # treatment users: u3; u4, u5 (the NULL user of o3 is no user either way)
    assert rows[("revenue_per_user", "treatment")]["denominator_sum"] == 3.0
    diags = _diagnostics(spark, config)
    assert diags[("events_with_null_ids:events:org_id", None)] == 2
    assert diags[("events_with_null_ids:events:user_id", None)] == 2
    assert rows[("revenue_per_user", "treatment")]["n_analysis_units"] == 3


def test_analysis_units_are_counted_across_sources_and_unmapped_ids(spark, tmp_path):
    """Users active in two sources count once; a source reached through an id mapping
    reports the events whose id has no mapping."""
    write_delta(spark, NULL_ID_EXPOSURES, EXPOSURE_DDL, tmp_path / "exposures")
    ddl = "org_id string, user_id string, event string, value double, ts timestamp"
    write_delta(spark, NULL_ID_EVENTS[:7], ddl, tmp_path / "events")
    sessions = [  # keyed by user only; u9 is not in the mapping, one user id is NULL
        ("u1", utc(2026, 3, 4)),  # also in events
        ("u7", utc(2026, 3, 4)),  # o1's second user, only here
        ("u9", utc(2026, 3, 4)),
        ("u9", utc(2026, 3, 5)),
        (None, utc(2026, 3, 5)),
    ]
    write_delta(spark, sessions, "uid string, ts timestamp", tmp_path / "sessions")
    users = [("u1", "o1"), ("u7", "o1"), ("u2", "o2"), ("u3", "o3")]
    write_delta(spark, users, "user_id string, org_id string", tmp_path / "users")
    raw = config_dict(tmp_path)
    raw["experiments"][0]["id"] = "n"
    raw["sources"]["sessions"] = {
        "path": str(tmp_path / "sessions"), "timestamp": "ts", "ids": {"user_id": "uid"}
    }  # fmt: skip
    raw["id_mappings"] = [{"path": str(tmp_path / "users"), "from_id": "user_id",
                           "to_id": "org_id", "columns": {"user_id": "user_id",
                                                          "org_id": "org_id"}}]  # fmt: skip
    raw["metrics"]["sessions_per_org"] = {
        "kind": "mean", "numerator": {"source": "sessions", "agg": "count"}
    }  # fmt: skip
    raw["experiments"][0]["metrics"].append("sessions_per_org")
    config = parse_config(raw)
    rows = _by(pipeline.run(spark, config, ANALYSIS_DATE), "metric", "variant")
    # control users: u1 (events and sessions, once), u7 (sessions), u2 (events) = 3
    assert rows[("sessions_per_org", "control")]["n_analysis_units"] == 3
    assert rows[("sessions_per_org", "control")]["numerator_sum"] == 2.0  # u1, u7 of o1
    diags = _diagnostics(spark, config)
    assert diags[("unmapped_ids:sessions", None)] == 2  # u9's two sessions
    assert diags[("events_with_null_ids:sessions:user_id", None)] == 1


# ---------------------------------------------------------------- errors and exit codes


def _mixed_parquet(spark, root: Path) -> None:
    """Events as Parquet whose files disagree on the type of `value`."""
    spark.createDataFrame(
        [("o1", "u1", "purchase", 1.5, utc(2026, 3, 3))],
        "org_id string, user_id string, event string, value double, ts timestamp",
    ).write.parquet(str(root / "events" / "part=1"))
    spark.createDataFrame(
        [("o3", "u3", "purchase", "oops", utc(2026, 3, 3))],
        "org_id string, user_id string, event string, value string, ts timestamp",
    ).write.parquet(str(root / "events" / "part=2"))


def test_parquet_files_that_disagree_on_a_type_are_an_input_error(spark, tmp_path, capsys):
    write_delta(spark, NULL_ID_EXPOSURES, EXPOSURE_DDL, tmp_path / "exposures")
    _mixed_parquet(spark, tmp_path)
    raw = config_dict(tmp_path)
    raw["experiments"][0]["id"] = "n"
    raw["sources"]["events"]["format"] = "parquet"
    config = parse_config(raw)
    with pytest.raises(InputError, match=r"source 'events'.*column 'value'.*disagree"):
        pipeline.run(spark, config, ANALYSIS_DATE)
    assert not Path(config.output.results.path).exists()  # nothing was written
    path = tmp_path / "conf.yaml"
    path.write_text(json.dumps(raw))  # JSON is YAML
    code = cli.main(["run", "--config", str(path), "--date", "2026-03-09"])
    assert code == 66
    err = capsys.readouterr().err
    assert "source 'events'" in err and "Traceback" not in err


def test_exit_codes_tell_usage_config_and_data_quality_apart(spark, tmp_path, capsys):
    with pytest.raises(SystemExit) as usage:
        cli.main(["run", "--config", "x.yaml", "--date", "09/03/2026"])
    assert usage.value.code == 64
    bad = tmp_path / "bad.yaml"
    bad.write_text("exposures: {}\n")
    assert cli.main(["run", "--config", str(bad), "--date", "2026-03-09"]) == 78
    from tests.test_staging import EVENTS, EXPOSURES

    write_delta(spark, EXPOSURES, EXPOSURE_DDL, tmp_path / "exposures")
    events = [*EVENTS, ("o2", "u1", "page_view", 0.0, EVENTS[0][4])]  # u1 in o1 and o2
    ddl = "org_id string, user_id string, event string, value double, ts timestamp"
    write_delta(spark, events, ddl, tmp_path / "events")
    raw = config_dict(tmp_path)
    raw["experiments"][0]["multi_unit_policy"] = "fail"
    conf = tmp_path / "fail.yaml"
    conf.write_text(json.dumps(raw))
    assert cli.main(["run", "--config", str(conf), "--date", "2026-03-09"]) == 65
    assert "several assignment units" in capsys.readouterr().err


def test_variants_are_required(tmp_path):
    raw = config_dict(tmp_path)
    del raw["experiments"][0]["variants"]
    with pytest.raises(ConfigError, match=r"experiments.0.variants .*Field required"):
        parse_config(raw)


def test_staging_that_fails_releases_what_it_persisted(spark, tmp_path):
    from tests.test_staging import EVENTS, EXPOSURES

    write_delta(spark, EXPOSURES, EXPOSURE_DDL, tmp_path / "exposures")
    events = [*EVENTS, ("o2", "u1", "page_view", 0.0, EVENTS[0][4])]
    ddl = "org_id string, user_id string, event string, value double, ts timestamp"
    write_delta(spark, events, ddl, tmp_path / "events")
    raw = config_dict(tmp_path)
    raw["experiments"][0]["multi_unit_policy"] = "fail"
    spark.catalog.clearCache()  # other tests' staged frames
    cache = spark._jsparkSession.sharedState().cacheManager()  # test-only JVM access
    assert cache.isEmpty()
    with pytest.raises(DataQualityError):
        staging.stage(spark, parse_config(raw), ["e1"], ANALYSIS_DATE, "r")
    assert cache.isEmpty()


def test_winsorized_cuped_clamps_the_pre_period_too(spark, tmp_path):
    """Upper caps at the 0.5 percentile of the pooled non-zero values, each period its own:
    M (10, 20, 30, 40) → 20, so M clamps to (10, 20 | 20, 20); X (5, 25, 1000; o3 has no
    pre-period) → 25, so X (1000, 5 | 0, 25) clamps to (25, 5 | 0, 25) and o1's
    pre-period outlier cannot drive θ."""
    exposures = [
        ("w", "o1", "control", utc(2026, 3, 5)),
        ("w", "o2", "control", utc(2026, 3, 5)),
        ("w", "o3", "treatment", utc(2026, 3, 5)),
        ("w", "o4", "treatment", utc(2026, 3, 5)),
    ]
    events = [
        *[(o, "u" + o, "purchase", v, utc(2026, 3, 6)) for o, v in (("o1", 10.0), ("o2", 20.0))],
        *[(o, "u" + o, "purchase", v, utc(2026, 3, 6)) for o, v in (("o3", 30.0), ("o4", 40.0))],
        ("o1", "uo1", "purchase", 1000.0, utc(2026, 3, 3)),  # pre-period outlier
        ("o2", "uo2", "purchase", 5.0, utc(2026, 3, 3)),
        ("o4", "uo4", "purchase", 25.0, utc(2026, 3, 4)),
    ]
    write_delta(spark, exposures, EXPOSURE_DDL, tmp_path / "exposures")
    ddl = "org_id string, user_id string, event string, value double, ts timestamp"
    write_delta(spark, events, ddl, tmp_path / "events")
    raw = config_dict(tmp_path)
    raw["metrics"] = {
        "revenue_per_org": {
            "kind": "mean",
            "numerator": {
                "source": "events",
                "agg": "sum",
                "column": "value",
                "winsorize": {"upper": 0.5},
            },
        }
    }
    raw["experiments"][0] |= {"id": "w", "metrics": ["revenue_per_org"],
                              "cuped_lookback_days": 3}  # fmt: skip
    rows = staging.stage(spark, parse_config(raw), ["w"], ANALYSIS_DATE, "r").stats.collect()
    got = {(r.variant, r.winsorized): r for r in rows}
    control = got[("control", True)]
    assert (control.num_upper_cap, control.pre_num_upper_cap) == (20.0, 25.0)
    assert (got[("control", True)].mean_m, got[("treatment", True)].mean_m) == (15.0, 20.0)
    assert (got[("control", True)].mean_x, got[("treatment", True)].mean_x) == (15.0, 12.5)
    assert (got[("control", True)].css_xx, got[("treatment", True)].css_xx) == (200.0, 312.5)
    assert got[("control", False)].mean_x == 502.5  # unclamped beside


def test_read_failures_name_the_table_by_the_longest_location():
    tables = {"source 'events'": "/data/events", "source 'v2'": "/data/events_v2"}
    denied = PySparkException(
        message="An error occurred while calling o1.save.\n: org.apache.spark.SparkException: Job "
        "aborted.\nCaused by: java.nio.file.AccessDeniedException: /data/events_v2/p-1.parquet"
    )
    err = io.read_failure(denied, tables)
    assert isinstance(err, InputError)
    assert str(err).startswith("cannot read source 'v2' (/data/events_v2): ")
    assert "AccessDeniedException: /data/events_v2/p-1.parquet" in str(err)
    assert io.read_failure(PySparkException(message="[DIVIDE_BY_ZERO] …"), tables) is None
    # a Python OSError (e.g. writing the HTML report) is not a Spark read failure
    assert io.read_failure(PermissionError(13, "Permission denied", "/data/events"), tables) is None


def test_ids_up_to_the_partition_name_limit_are_accepted(tmp_path):
    raw = config_dict(tmp_path)
    raw["experiments"][0]["id"] = "日" * 80  # 240 bytes
    assert parse_config(raw).experiments[0].id == "日" * 80
