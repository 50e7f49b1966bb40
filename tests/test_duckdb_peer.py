"""`bench/duckdb_peer.py` stages what cluster_spark stages on a tiny hand-made input with the
rules the bench config does not exercise: NULLs under every kind of filter, windows with
completed-only and bake rules, the conversion rule with a numerator where the denominator
is 0, distinct counts of a non-id column, lower and upper caps with and without zeros,
duplicate, late and two-variant exposures, and a user under two orgs."""

from __future__ import annotations

import sys

import pytest

from cluster_spark import staging
from cluster_spark.config import parse_config
from tests.helpers import ANALYSIS_DATE, EVENT_DDL, EXPOSURE_DDL, ROOT, at, config_dict, write_delta

sys.path.insert(0, str(ROOT / "bench"))

from crosscheck import crosscheck, duckdb_groups, staged_groups  # bench/ is not a package
from duckdb_peer import staged_statistics

EXPOSURES = [
    ("e1", "o1", "control", at(0, 1)),
    ("e1", "o1", "control", at(1)),  # duplicate
    ("e1", "o2", "control", at(1)),
    ("e1", "o3", "treatment", at(0, 2)),
    ("e1", "o4", "treatment", at(6, 1)),  # its [0, 1] window is not complete at T = at(8)
    ("e1", "o5", "control", at(1)),
    ("e1", "o5", "treatment", at(2)),  # two variants: dropped
    ("e1", "o6", "treatment", at(-1)),  # before the start: not exposed
    ("e1", "o7", "control", at(7, 12)),  # not baked for 24 h
    ("e1", "o8", "treatment", at(3)),  # no events
]
EVENTS = [
    ("o1", "u1", "purchase", 10.0, at(0, 1)),
    ("o1", "u1", "purchase", 5.0, at(2, 1)),
    ("o1", None, "click", 0.0, at(1)),
    ("o1", "u2", None, 3.0, at(1)),
    ("o1", "u1", "purchase", 1.0, at(-0.5)),  # before the start
    ("o2", "u3", "purchase", 7.0, at(1, 1)),
    ("o2", "u3", "add_to_cart", 20.0, at(1, 2)),
    ("o2", "u7", "click", 0.0, at(3)),  # u7 under o2 and o3: dropped
    ("o3", "u7", "click", 0.0, at(3)),
    ("o3", "u4", "purchase", 8.0, at(0, 1)),  # after the start, before exposure
    ("o3", "u4", "purchase", 4.0, at(1)),
    ("o3", "u4", "purchase", 9.0, at(7, 0.01)),
    ("o3", "u8", "click", None, at(2)),
    ("o4", "u5", "purchase", 100.0, at(6, 2)),
    ("o4", "u9", None, 1.0, at(6, 3)),
    ("o5", "u10", "purchase", 50.0, at(2)),
    ("o7", "u6", "purchase", 2.0, at(7, 13)),
    ("o7", "u6", "add_to_cart", 0.0, at(7, 14)),
]


def _ev(agg: str, column: str | None = None, *conditions: tuple, **extra) -> dict:
    comp = {"source": "events", "agg": agg, **extra}
    if column:
        comp["column"] = column
    comp["filter"] = [
        {"column": c, "op": op, **({} if v is None else {"value": v})} for c, op, v in conditions
    ]
    return comp


PURCHASE = ("event", "eq", "purchase")
REVENUE = _ev("sum", "value", PURCHASE)
USERS = _ev("count_distinct", "user_id")
METRICS = {
    "not_clicks": {"kind": "mean", "numerator": _ev("count", None, ("event", "ne", "click"))},
    "other": {"kind": "mean", "numerator": _ev("count", None, ("event", "not_in", ["click"]))},
    "anonymous": {"kind": "mean", "numerator": _ev("count", None, ("user_id", "is_null", None))},
    "mid_value": {
        "kind": "mean",
        "numerator": _ev(
            "sum",
            "value",
            ("event", "in", ["purchase", "add_to_cart"]),
            ("value", "ge", 5),
            ("value", "lt", 100),
            ("user_id", "not_null", None),
        ),
    },
    "revenue_per_user": {"kind": "ratio", "numerator": REVENUE, "denominator": USERS},
    "events_per_purchase": {
        "kind": "ratio",
        "numerator": _ev("count"),
        "denominator": _ev("count", None, PURCHASE),
    },
    "events_per_purchase_raw": {
        "kind": "ratio",
        "conversion_rate": False,
        "numerator": _ev("count"),
        "denominator": _ev("count", None, PURCHASE),
    },
    "event_kinds": {"kind": "mean", "numerator": _ev("count_distinct", "event")},
    "revenue_d01": {
        "kind": "mean",
        "completed_windows_only": True,
        "numerator": {**REVENUE, "window": {"start_day": 0, "end_day": 1}},
    },
    "revenue_d1_baked": {
        "kind": "mean",
        "bake_hours": 24,
        "numerator": {**REVENUE, "window": {"start_day": 1, "end_day": 1}},
    },
    "revenue_winsorized": {
        "kind": "mean",
        "numerator": {**REVENUE, "winsorize": {"lower": 0.2, "upper": 0.8}},
    },
    "events_per_user_winsorized": {
        "kind": "ratio",
        "numerator": {**_ev("count"), "winsorize": {"upper": 0.5, "ignore_zeros": False}},
        "denominator": {**USERS, "winsorize": {"lower": 0.3}},
    },
}


@pytest.fixture()
def config(spark, tmp_path):
    write_delta(spark, EXPOSURES, EXPOSURE_DDL, tmp_path / "exposures")
    write_delta(spark, EVENTS, EVENT_DDL, tmp_path / "events")
    raw = config_dict(tmp_path)
    raw["metrics"] = METRICS
    raw["experiments"][0]["metrics"] = list(METRICS)
    return parse_config(raw)


def test_duckdb_stages_what_cluster_spark_stages(spark, config):
    staged = staging.stage(spark, config, ["e1"], ANALYSIS_DATE, "r")
    try:
        rows = [r.asDict() for r in staged.stats.collect()]
    finally:
        staged.release()
    duck = staged_statistics(config, ANALYSIS_DATE, ["e1"], threads=1)
    check = crosscheck(staged_groups(rows), {"DuckDB": duckdb_groups(duck)})
    assert (check.groups, check.rows) == (len(METRICS) * 2, (len(METRICS) + 2) * 2)
    by_key = {(r["metric"], r["variant"], r["winsorized"]): r for r in rows}
    # the input exercises what it claims: exclusions, zeroed numerators, caps
    assert by_key[("revenue_d01", "treatment", False)]["n_incomplete_window"] == 1
    assert by_key[("revenue_d1_baked", "control", False)]["n_unbaked"] == 1
    assert by_key[("events_per_purchase", "treatment", False)]["n_zero_denominator"] == 1
    capped = by_key[("events_per_user_winsorized", "control", True)]
    assert None not in (capped["num_upper_cap"], capped["den_lower_cap"])
