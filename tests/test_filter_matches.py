"""Issue #15 item 6: a filter that matches nothing is counted in the first aggregation pass,
recorded in the diagnostics and turned into warnings naming metric, component, column and
value. Expected counts are worked out by hand from tests/test_staging.py's rows."""

from __future__ import annotations

import pytest

from cluster_spark import checks, staging
from cluster_spark.config import parse_config
from tests.helpers import ANALYSIS_DATE, EVENT_DDL, EXPOSURE_DDL, at, config_dict, write_delta
from tests.test_staging import EVENTS, EXPOSURES

# e1's exposed units are o1, o2, o3, o4, o6 (o5 is in two variants, o7 is exposed at the
# analysis time). Their events from the start (03-02) to the analysis time (03-10 00:00):
#   o1: purchase, page_view, purchase (before o1's exposure, after the start)
#   o2: page_view, purchase
#   o3: purchase, page_view, page_view, purchase (exactly at the analysis time)
#   o4: purchase (before o4's exposure), page_view
# → 11 events, 6 purchases, 5 page views. o3's purchase after the analysis time, the
# excluded o5's and the NULL-id event are not read.
# e2 (one unit, o1, exposed at the start): o1's 3 events, 2 purchases.
E2_EXPOSURE = ("e2", "o1", "treatment", at(0))


def _raw(root, revenue_filter, purchases_value):
    raw = config_dict(root)
    metrics = raw["metrics"]
    metrics["revenue_per_user"]["numerator"]["filter"] = [revenue_filter]
    metrics["purchases_per_org"]["numerator"]["filter"] = [
        {"column": "event", "op": "eq", "value": purchases_value}
    ]
    e2 = {**raw["experiments"][0], "id": "e2", "metrics": ["purchases_per_org"]}
    raw["experiments"].append(e2)
    return raw


@pytest.fixture(scope="module")
def tiny(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("matches")
    exposures = [e for e in EXPOSURES if e[0] == "e1"] + [E2_EXPOSURE]
    write_delta(spark, exposures, EXPOSURE_DDL, root / "exposures")
    write_delta(spark, EVENTS, EVENT_DDL, root / "events")
    return root


def _diagnostics(spark, config):
    staged = staging.stage(spark, config, ["e1", "e2"], ANALYSIS_DATE, "r")
    try:
        rows = [r.asDict() for r in staged.diagnostics.collect()]
    finally:
        staged.release()
    return rows


def _matches(rows):
    prefixes = (checks.MATCHED, checks.FILTER_VALUE)
    return {
        (d["experiment_id"], d["metric"], d["check"]): d["value"]
        for d in rows
        if d["check"].startswith(prefixes)
    }


def test_matches_are_counted_per_experiment_metric_and_component(spark, tiny):
    revenue = {"column": "event", "op": "in", "value": ["purchase", "refund"]}
    config = parse_config(_raw(tiny, revenue, "Purchase"))
    rows = _diagnostics(spark, config)
    assert _matches(rows) == {
        ("e1", "revenue_per_user", "matched_events:numerator"): 6,
        ("e1", "revenue_per_user", 'filter_value_events:numerator:event="purchase"'): 6,
        ("e1", "revenue_per_user", 'filter_value_events:numerator:event="refund"'): 0,
        ("e1", "revenue_per_user", "matched_events:denominator"): 11,  # no filter: all
        ("e1", "purchases_per_org", "matched_events:numerator"): 0,
        ("e1", "purchases_per_org", 'filter_value_events:numerator:event="Purchase"'): 0,
        # e2 has only purchases_per_org; its one unit o1 has 3 events, 2 purchases
        ("e2", "purchases_per_org", "matched_events:numerator"): 0,
        ("e2", "purchases_per_org", 'filter_value_events:numerator:event="Purchase"'): 0,
    }
    assert all(d["variant"] is None for d in rows if d["check"].startswith("matched"))

    warnings = checks.filter_warnings(config, rows)
    assert warnings == [
        "experiment 'e1', metric 'revenue_per_user', numerator: in source 'events', column "
        "'event' never holds 'refund' (values are compared exactly: case and spaces count)",
        "experiment 'e1', metric 'purchases_per_org', numerator: none of the events of source "
        "'events' (of the experiment's units, from its start to the analysis time) matches "
        "the filter [event eq 'Purchase']: column 'event' never holds 'Purchase' (values are "
        "compared exactly: case and spaces count); the numerator is 0 for every unit",
        "experiment 'e2', metric 'purchases_per_org', numerator: none of the events of source "
        "'events' (of the experiment's units, from its start to the analysis time) matches "
        "the filter [event eq 'Purchase']: column 'event' never holds 'Purchase' (values are "
        "compared exactly: case and spaces count); the numerator is 0 for every unit",
    ]


def test_filters_that_match_give_counts_and_no_warning(spark, tiny):
    revenue = {"column": "event", "op": "eq", "value": "purchase"}
    config = parse_config(_raw(tiny, revenue, "purchase"))
    rows = _diagnostics(spark, config)
    got = _matches(rows)
    assert got[("e1", "purchases_per_org", "matched_events:numerator")] == 6
    assert got[("e2", "purchases_per_org", "matched_events:numerator")] == 2
    assert got[("e2", "purchases_per_org", 'filter_value_events:numerator:event="purchase"')] == 2
    assert not any(m == "revenue_per_user" for e, m, _ in got if e == "e2")
    assert checks.filter_warnings(config, rows) == []


def test_a_filter_of_several_conditions_is_counted_as_a_whole(spark, tiny):
    """purchase and value ≥ 7: o1's 10, o2's 7, o3's 20 → 3 of the 6 purchases."""
    raw = _raw(tiny, {"column": "event", "op": "eq", "value": "purchase"}, "purchase")
    raw["metrics"]["revenue_per_user"]["numerator"]["filter"].append(
        {"column": "value", "op": "ge", "value": 7}
    )
    got = _matches(_diagnostics(spark, parse_config(raw)))
    assert got[("e1", "revenue_per_user", "matched_events:numerator")] == 3
    assert got[("e1", "revenue_per_user", 'filter_value_events:numerator:event="purchase"')] == 6


def test_a_source_without_events_in_range_is_named(spark, tmp_path):
    """No filter, and every event is after the analysis time."""
    write_delta(spark, [("e1", "o1", "control", at(0))], EXPOSURE_DDL, tmp_path / "exposures")
    write_delta(spark, [("o1", "u1", "purchase", 1.0, at(9))], EVENT_DDL, tmp_path / "events")
    raw = config_dict(tmp_path)
    raw["metrics"]["events_per_org"] = {
        "kind": "mean",
        "numerator": {"source": "events", "agg": "count"},
    }
    raw["experiments"][0]["metrics"] = ["events_per_org"]
    config = parse_config(raw)
    staged = staging.stage(spark, config, ["e1"], ANALYSIS_DATE, "r")
    try:
        rows = [r.asDict() for r in staged.diagnostics.collect()]
    finally:
        staged.release()
    assert _matches(rows) == {("e1", "events_per_org", "matched_events:numerator"): 0}
    assert checks.filter_warnings(config, rows) == [
        "experiment 'e1', metric 'events_per_org', numerator: there are no events of source "
        "'events' (of the experiment's units, from its start to the analysis time); the "
        "numerator is 0 for every unit"
    ]


def test_counts_are_aggregates_of_the_first_level(spark, tiny):
    """The counts are per-key values of the one aggregation over the events (no other
    pass): o1's user u1 has 2 purchases, u2 none; o3's u4 has 2 (the third is after the
    analysis time)."""
    from cluster_spark.staging.events import match_predicates, source_level
    from cluster_spark.staging.exposures import exposed_units
    from cluster_spark.staging.plan import SUB, UNIT, Cache, plans

    revenue = {"column": "event", "op": "eq", "value": "purchase"}
    config = parse_config(_raw(tiny, revenue, "purchase"))
    (plan,) = plans(config, ["e1"], ANALYSIS_DATE)
    cache = Cache()
    try:
        units, _ = exposed_units(spark, plan, cache)
        level = source_level(spark, plan, "events", units, cache)
        (purchase,) = match_predicates(level.parts)  # one predicate: both filters are equal
        assert [(c.column, c.op, c.value) for c in purchase] == [("event", "eq", "purchase")]
        got = {
            (r[UNIT], r[SUB]): r["_match__0"]
            for r in level.rows.select(UNIT, SUB, "_match__0").collect()
        }
    finally:
        cache.release()
    assert got == {
        ("o1", "u1"): 2,
        ("o1", "u2"): 0,
        ("o2", "u3"): 1,
        ("o3", "u4"): 2,
        ("o3", "u5"): 0,
        ("o3", "u6"): 0,
        ("o4", "u7"): 1,
    }


@pytest.mark.parametrize(
    ("check", "value", "warn"),
    [
        ("matched_events:numerator", 0, True),
        ("matched_events:numerator", 3, False),
        ('filter_value_events:numerator:event="x"', 0, True),
        ("null_values:events:event", 0, False),
        ("null_values:events:event", 2, False),  # the documented NULL rule applies
        ("events_with_null_ids:events:org_id", 2, True),
        ("duplicate_exposures", 9, False),
        ("assignment_units", 5, False),
    ],
)
def test_which_diagnostics_are_problems(check, value, warn):
    assert checks.is_warning(check, value) is warn


def test_report_marks_a_filter_that_matches_nothing():
    from cluster_spark.reporting import render_report

    diags = [
        {"experiment_id": "e", "metric": "m", "variant": None, "check": c, "value": v}
        for c, v in (("matched_events:numerator", 0), ("matched_events:denominator", 12))
    ]
    page = render_report("e", ANALYSIS_DATE, [], diags)
    assert '<td class="warn">0</td>' in page
    assert '<td class="warn">12</td>' not in page and "<td>12</td>" in page
