"""Issue #25: inputs a real warehouse hands over (stray variant labels, NaN and ±Inf in a
value column, a source none of whose events reach a unit, daily DATE sources), each as a
whole small experiment with one thing wrong beside its twin in which nothing is.

Every expected value is worked out by hand from the rows written here."""

from __future__ import annotations

import datetime as dt

import pytest

import cluster_spark as cs
from cluster_spark import pipeline
from cluster_spark.config import parse_config
from cluster_spark.errors import ConfigError
from tests.helpers import ANALYSIS_DATE, EVENT_DDL, EXPOSURE_DDL, at, config_dict, write_delta


def _overall(rows):
    return [r for r in rows if r["dimension"] is None]


def _diagnostics(outcome, check_prefix: str | tuple[str, ...]) -> dict:
    return {
        (d["check"], d["variant"]): d["value"]
        for d in outcome.diagnostics
        if d["check"].startswith(check_prefix) and d["dimension"] is None
    }


# ---------------------------------------------------------------- stray variant labels

# 800 orgs, o0..o799: even → control, odd → treatment (400 each); org i buys once, value
# i % 5 + 1. Two more orgs carry only a stray label: 'Treatment' and 'control '.
N = 800
EXPOSURES = [("e1", f"o{i}", "control" if i % 2 == 0 else "treatment", at(0, 1)) for i in range(N)]
EVENTS = [(f"o{i}", f"u{i}", "purchase", float(i % 5 + 1), at(1, 5)) for i in range(N + 2)]
STRAYS = [("e1", f"o{N}", "Treatment", at(0, 2)), ("e1", f"o{N + 1}", "control ", at(0, 2))]


@pytest.fixture(scope="module")
def labelled(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("labels")
    write_delta(spark, EXPOSURES + STRAYS, EXPOSURE_DDL, root / "exposures")
    write_delta(spark, EVENTS, EVENT_DDL, root / "events")
    return root


def _label_config(root, out, normalize=None):
    raw = config_dict(root)
    raw["output"] = {k: f"{out}/{k}" for k in ("staging", "results", "diagnostics")}
    if normalize is not None:
        raw["experiments"][0]["normalize_variant_labels"] = normalize
    return parse_config(raw)


def test_stray_labels_are_left_out_counted_and_do_not_break_srm(spark, labelled, tmp_path):
    outcome = pipeline.run_outcome(spark, _label_config(labelled, tmp_path), ANALYSIS_DATE)
    rows = _overall(outcome.results)
    assert {r["variant"] for r in rows} == {"control", "treatment"}  # no rows for strays
    units = {r["variant"]: r["n_units"] for r in rows}
    assert units == {"control": 400, "treatment": 400}
    # χ² of 400 against 400 is 0: p = 1, not flagged
    assert all(r["srm_p_value"] == pytest.approx(1.0) and not r["srm_flag"] for r in rows)
    assert _diagnostics(outcome, "unknown_variants") == {
        ("unknown_variants", "Treatment"): 1,
        ("unknown_variants", "control "): 1,
    }
    # 2 of 802 units (0.25 %) is under the 1 % threshold: healthy, with a warning line
    assert {r["health"] for r in rows} == {"healthy"}
    (warning,) = [w for w in outcome.warnings(_label_config(labelled, tmp_path)) if "variant" in w]
    assert "'Treatment' (1 unit), 'control ' (1 unit)" in warning
    assert "normalize_variant_labels: true" in warning


def test_normalized_labels_join_their_arm(spark, labelled, tmp_path):
    config = _label_config(labelled, tmp_path, normalize=True)
    outcome = pipeline.run_outcome(spark, config, ANALYSIS_DATE)
    units = {r["variant"]: r["n_units"] for r in _overall(outcome.results)}
    assert units == {"control": 401, "treatment": 401}
    assert _diagnostics(outcome, "unknown_variants") == {}
    assert outcome.warnings(config) == []


def test_many_stray_units_are_a_health_warning(spark, tmp_path):
    strays = [("e1", f"x{i}", "treatment_b", at(0, 3)) for i in range(9)]  # 9 of 809: 1.1 %
    write_delta(spark, EXPOSURES + strays, EXPOSURE_DDL, tmp_path / "exposures")
    write_delta(spark, EVENTS, EVENT_DDL, tmp_path / "events")
    outcome = pipeline.run_outcome(spark, _label_config(tmp_path, tmp_path), ANALYSIS_DATE)
    rows = _overall(outcome.results)
    assert {r["health"] for r in rows} == {"warning"}
    assert rows[0]["health_reasons"] == ["unknown_variants"]
    assert _diagnostics(outcome, "unknown_variants") == {("unknown_variants", "treatment_b"): 9}


def test_normalizing_variants_that_differ_only_in_case_is_a_config_error(tmp_path):
    raw = config_dict(tmp_path)
    raw["experiments"][0].update(variants=["control", "Control"], normalize_variant_labels=True)
    with pytest.raises(ConfigError, match="differ only in case"):
        parse_config(raw)


# ---------------------------------------------------------------- NaN and ±Inf values

NAN_EXPOSURES = [
    ("e1", "o1", "control", at(0, 1)),
    ("e1", "o2", "control", at(0, 1)),
    ("e1", "o3", "treatment", at(0, 1)),
    ("e1", "o4", "treatment", at(0, 1)),
]
CLEAN_EVENTS = [
    ("o1", "u1", "purchase", 10.0, at(1)),
    ("o2", "u2", "purchase", 11.0, at(1)),
    ("o3", "u3", "purchase", 12.0, at(1)),
    ("o4", "u4", "purchase", 13.0, at(1)),
]
BROKEN_EVENTS = [
    ("o1", "u1", "purchase", float("nan"), at(2)),
    ("o3", "u3", "purchase", float("inf"), at(2)),
]


@pytest.mark.parametrize("broken", [False, True])
def test_nan_and_inf_values_are_missing_counted_and_a_health_warning(spark, tmp_path, broken):
    write_delta(spark, NAN_EXPOSURES, EXPOSURE_DDL, tmp_path / "exposures")
    events = CLEAN_EVENTS + (BROKEN_EVENTS if broken else [])
    write_delta(spark, events, EVENT_DDL, tmp_path / "events")
    outcome = pipeline.run_outcome(spark, parse_config(config_dict(tmp_path)), ANALYSIS_DATE)
    by = {(r["metric"], r["variant"]): r for r in _overall(outcome.results)}
    # revenue per user: control (10 + 11) / 2, treatment (12 + 13) / 2, either way
    assert by["revenue_per_user", "control"]["mean"] == pytest.approx(10.5)
    assert by["revenue_per_user", "treatment"]["mean"] == pytest.approx(12.5)
    assert by["revenue_per_user", "treatment"]["status"] == "ok"
    assert by["revenue_per_user", "treatment"]["effect_abs"] == pytest.approx(2.0)
    # the event still counts as a purchase: its value is what is missing
    assert by["purchases_per_org", "control"]["mean"] == pytest.approx(1.5 if broken else 1.0)
    counted = _diagnostics(outcome, "non_finite_values")
    assert counted == {("non_finite_values:events:value", None): 2 if broken else 0}
    health = by["revenue_per_user", "control"]
    if broken:
        assert health["health"] == "warning"
        assert health["health_reasons"] == ["non_finite_values:events:value"]
    else:
        assert (health["health"], health["health_reasons"]) == ("healthy", [])


# ---------------------------------------------------------------- ids that do not join


@pytest.mark.parametrize("case", ["joined", "no events in the period", "ids do not join"])
def test_a_source_whose_ids_do_not_join_is_unhealthy_and_said_first(spark, tmp_path, case):
    """The events' org ids in another format ('ORG-o1' for 'o1'): no event reaches a unit,
    every metric of the source is 0. Its twins, with the right ids or with no events in the
    experiment's period at all (a sparse source: nothing happened yet), are not flagged."""
    write_delta(spark, NAN_EXPOSURES, EXPOSURE_DDL, tmp_path / "exposures")
    events = {
        "joined": CLEAN_EVENTS,
        "no events in the period": [(*e[:4], at(20)) for e in CLEAN_EVENTS],  # after 03-09
        "ids do not join": [(f"ORG-{e[0]}", *e[1:]) for e in CLEAN_EVENTS],
    }[case]
    write_delta(spark, events, EVENT_DDL, tmp_path / "events")
    config = parse_config(config_dict(tmp_path))
    outcome = pipeline.run_outcome(spark, config, ANALYSIS_DATE)
    reached = _diagnostics(outcome, ("events_of_units", "events_in_period"))
    row = _overall(outcome.results)[0]
    if case == "joined":
        assert reached == {("events_of_units:events", None): 4}
        assert (row["health"], row["health_reasons"]) == ("healthy", [])
        return
    if case == "no events in the period":
        assert reached == {
            ("events_of_units:events", None): 0,
            ("events_in_period:events", None): 0,
        }
        # not an id problem; only what is true of the numbers: no unit has a user yet
        assert row["health_reasons"] == ["zero_denominator:revenue_per_user"]
        return
    assert reached == {("events_of_units:events", None): 0, ("events_in_period:events", None): 4}
    assert row["health"] == "unhealthy"
    assert row["health_reasons"][0] == "no_events_reach_units:events"
    assert outcome.warnings(config) == [
        "experiment 'e1': none of the 4 events of source 'events' in its period reaches an "
        "exposed unit: check that column 'org_id' holds the same ids, in the same format, as "
        "the exposures; every metric of the source is 0"
    ]  # and no filter warning for the source's metrics
    html = cs.report(spark, config, ANALYSIS_DATE)
    health = html[html.index("<h2>Health</h2>") :]
    first = health[health.index("<li>") : health.index("</li>")]
    assert "no_events_reach_units:events" in first and "ids do not join" in first


# ---------------------------------------------------------------- daily DATE sources

DAILY_EXPOSURES = [
    ("e1", "o1", "control", at(0, 10)),  # 03-02 10:00
    ("e1", "o2", "control", at(1, 15)),  # 03-03 15:00
    ("e1", "o3", "treatment", at(0)),  # 03-02 00:00
    ("e1", "o4", "treatment", at(2, 23)),  # 03-04 23:00
]
D = dt.date
DAILY = [
    ("o1", D(2026, 3, 1), 100.0),  # the day before the exposure day: not counted
    ("o1", D(2026, 3, 2), 1.0),  # the exposure day: counted as a whole day
    ("o1", D(2026, 3, 3), 2.0),
    ("o1", D(2026, 3, 9), 4.0),  # the analysis date: it has ended at the analysis time
    ("o1", D(2026, 3, 10), 200.0),  # after it
    ("o2", D(2026, 3, 3), 8.0),
    ("o2", D(2026, 3, 4), 16.0),
    ("o2", D(2026, 3, 6), 32.0),
    ("o3", D(2026, 3, 2), 3.0),
    ("o3", D(2026, 3, 5), 5.0),
    ("o4", D(2026, 3, 4), 7.0),
    ("o4", D(2026, 3, 5), 9.0),
    ("o4", D(2026, 3, 6), 11.0),
]
# As whole days: revenue o1 1+2+4 = 7, o2 8+16+32 = 56 | o3 3+5 = 8, o4 7+9+11 = 27;
# days 0-1 of each exposure day: o1 1+2 = 3, o2 8+16 = 24 | o3 3, o4 7+9 = 16.
# Read as midnight UTC instead, o1's, o2's and o4's exposure-day rows are before their
# exposure (10:00, 15:00, 23:00) and drop out, and o1's row of 03-10 (midnight, exactly the
# analysis time) counts: revenue o1 2+4+200 = 206, o2 48 | o3 8, o4 20.
DAILY_EXPECTED = {
    True: {("revenue", "control"): 31.5, ("revenue", "treatment"): 17.5,
           ("revenue_2d", "control"): 13.5, ("revenue_2d", "treatment"): 9.5},
    False: {("revenue", "control"): 127.0, ("revenue", "treatment"): 14.0},
}  # fmt: skip


def _daily_config(root, as_date, **source):
    raw = config_dict(root)
    raw["sources"] = {
        "daily": {
            "path": f"{root}/daily",
            "timestamp": "day",
            "ids": {"org_id": "org_id"},
            **({"timestamp_as_date": True} if as_date else {}),
            **source,
        }
    }
    revenue = {"source": "daily", "agg": "sum", "column": "revenue"}
    raw["metrics"] = {
        "revenue": {"kind": "mean", "numerator": revenue},
        "revenue_2d": {
            "kind": "mean",
            "numerator": {**revenue, "window": {"start_day": 0, "end_day": 1}},
        },
    }
    exp = raw["experiments"][0]
    exp.pop("analysis_unit")
    exp["metrics"] = ["revenue", "revenue_2d"]
    return parse_config(raw)


@pytest.mark.parametrize("as_date", [True, False])
def test_a_daily_source_counts_the_exposure_day_as_a_whole_day(spark, tmp_path, as_date):
    write_delta(spark, DAILY_EXPOSURES, EXPOSURE_DDL, tmp_path / "exposures")
    write_delta(spark, DAILY, "org_id string, day date, revenue double", tmp_path / "daily")
    config = _daily_config(tmp_path, as_date)
    zone = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", "America/Los_Angeles")  # must not matter
    try:
        outcome = pipeline.run_outcome(spark, config, ANALYSIS_DATE)
    finally:
        spark.conf.set("spark.sql.session.timeZone", zone)
    means = {(r["metric"], r["variant"]): r["mean"] for r in _overall(outcome.results)}
    for key, expected in DAILY_EXPECTED[as_date].items():
        assert means[key] == pytest.approx(expected), key
    warned = [w for w in outcome.warnings(config) if "timestamp_as_date" in w]
    reasons = _overall(outcome.results)[0]["health_reasons"]
    if as_date:
        assert (warned, reasons) == ([], [])
    else:
        assert warned == [DAILY_WARNING]
        assert reasons == ["daily_source_as_instants:daily"]


DAILY_WARNING = (
    "source 'daily': its timestamps are days (a DATE column, or every event at midnight UTC), "
    "read as midnight UTC, so a row dated on a unit's exposure day is before the exposure and "
    "not counted; for a table of one row per day set timestamp_as_date: true on the source "
    "(whole days from the exposure day)"
)


@pytest.mark.parametrize("as_date", [True, False])
def test_a_daily_csv_export_is_recognised_by_its_midnights(spark, tmp_path, as_date):
    """A daily table exported as CSV (days as text, no DATE type to see): 20 rows, every
    one at midnight UTC, read as instants is a warning; with the option it is counted by
    whole days. 5 rows a unit on days 03-02 … 03-06, value 1. By whole days from the
    exposure day: o1 5, o2 4 (exposed 03-03) | o3 5, o4 3 (exposed 03-04). Read as
    instants, o1 and o2 (exposed at 10:00 and 15:00) lose their exposure day too: 4, 3 |
    o3 (00:00) keeps 5, o4 (23:00) has 03-05 and 03-06 only: 2."""
    write_delta(spark, DAILY_EXPOSURES, EXPOSURE_DDL, tmp_path / "exposures")
    lines = ["org_id,day,revenue"] + [
        f"{o},2026-03-0{d},1" for o in ("o1", "o2", "o3", "o4") for d in range(2, 7)
    ]
    (tmp_path / "daily").mkdir()
    (tmp_path / "daily" / "part-0.csv").write_text("\n".join(lines) + "\n")
    config = _daily_config(tmp_path, as_date, format="csv")
    outcome = pipeline.run_outcome(spark, config, ANALYSIS_DATE)
    means = {(r["metric"], r["variant"]): r["mean"] for r in _overall(outcome.results)}
    assert means["revenue", "control"] == pytest.approx(4.5 if as_date else 3.5)
    assert means["revenue", "treatment"] == pytest.approx(4.0 if as_date else 3.5)
    warned = [w for w in outcome.warnings(config) if "timestamp_as_date" in w]
    assert warned == ([] if as_date else [DAILY_WARNING])
