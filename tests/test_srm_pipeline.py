"""Issue #26 item 1, planted failure through the whole pipeline: an experiment whose
exposure logging loses 60 % of one arm's first exposures on its last day is unhealthy with
a reason naming that day and arm; its twin without the loss is healthy with no reason and
no warning. Expected days, counts and arms are worked out by hand from the rows below."""

from __future__ import annotations

import datetime as dt

import pytest

from cluster_spark import pipeline
from cluster_spark.config import parse_config
from cluster_spark.reporting import render_report
from tests.helpers import EVENT_DDL, EXPOSURE_DDL, config_dict, write_delta

UTC = dt.UTC
START = dt.date(2026, 3, 2)
LAST = dt.date(2026, 3, 8)  # the analysis date: 7 days, 2026-03-02 … 2026-03-08
ARMS = {"control": 40, "treatment_a": 30, "treatment_b": 30}


def _arm(j: int) -> str:
    """Unit j of a day (0..299): j % 10 in 0-3 control, 4-6 treatment_a, 7-9 treatment_b:
    120 / 90 / 90 a day, exactly the 40/30/30 split."""
    return "control" if j % 10 < 4 else "treatment_a" if j % 10 < 7 else "treatment_b"


def _rows(drop: bool) -> tuple[list[tuple], list[tuple]]:
    """300 orgs first exposed each day at half-hour steps (00:00 … 23:30 UTC), one user
    each who buys 10 minutes later; every 10th org logs a repeat exposure the next day
    (repeat rows are normal logging: the first exposure counts). With `drop`, on the last
    day treatment_b keeps 36 of its 90 orgs' exposure rows (those with (j // 10) % 5 ≥ 3)."""
    exposures, events = [], []
    for d in range(7):
        day = dt.datetime.combine(START + dt.timedelta(days=d), dt.time(), UTC)
        for j in range(300):
            org, arm = f"o{d}_{j}", _arm(j)
            ts = day + dt.timedelta(minutes=30 * (j % 48))
            events.append(
                (org, f"u{d}_{j}", "purchase", float(j % 7 + 1), ts + dt.timedelta(minutes=10))
            )
            if drop and d == 6 and arm == "treatment_b" and (j // 10) % 5 < 3:
                continue
            exposures.append(("e1", org, arm, ts))
            if j % 10 == 0 and d < 6:
                exposures.append(("e1", org, arm, ts + dt.timedelta(days=1)))
    return exposures, events


def _run(spark, root, drop: bool):
    exposures, events = _rows(drop)
    write_delta(spark, exposures, EXPOSURE_DDL, root / "exposures")
    write_delta(spark, events, EVENT_DDL, root / "events")
    raw = config_dict(root)
    raw["experiments"][0].update(variants=ARMS, start=START.isoformat())
    config = parse_config(raw)
    # a session time zone far from UTC: exposure days must still be UTC days
    previous = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", "America/Los_Angeles")
    try:
        outcome = pipeline.run_outcome(spark, config, LAST)
    finally:
        spark.conf.set("spark.sql.session.timeZone", previous)
    overall = [r for r in outcome.results if r["dimension"] is None]
    per_day = {
        (d["check"], d["variant"]): d["value"]
        for d in outcome.diagnostics
        if d["check"].startswith("first_exposures:")
    }
    return outcome, config, overall, per_day


def _expected_days(last_b: int) -> dict:
    out = {}
    for d in range(7):
        day = (START + dt.timedelta(days=d)).isoformat()
        b = last_b if d == 6 else 90
        out |= {
            (f"first_exposures:{day}", "control"): 120,
            (f"first_exposures:{day}", "treatment_a"): 90,
            (f"first_exposures:{day}", "treatment_b"): b,
        }
    return out


@pytest.mark.parametrize("drop", [True, False], ids=["last_day_drop", "twin"])
def test_a_last_day_exposure_loss_is_unhealthy_naming_the_day_and_its_twin_is_healthy(
    spark, tmp_path, drop
):
    outcome, config, overall, per_day = _run(spark, tmp_path, drop)
    # per UTC day: 120 / 90 / 90 (the 23:30 exposures stay on their UTC day; repeat rows
    # the next day are not first exposures); the last day 36 for treatment_b with the drop
    assert per_day == _expected_days(36 if drop else 90)
    units = {r["variant"]: r["n_units"] for r in overall if r["metric"] == "purchases_per_org"}
    assert units == {"control": 840, "treatment_a": 630, "treatment_b": 576 if drop else 630}
    assert outcome.warnings(config) == []
    if drop:
        # cumulative χ² of 840/630/576 vs 40/30/30: 3.33, p ≈ 0.19, not flagged; the
        # last day alone: χ² 27.7, p ≈ 1e-6 < 0.001/7
        assert not any(r["srm_flag"] for r in overall)
        assert {r["health"] for r in overall} == {"unhealthy"}
        assert {tuple(r["health_reasons"]) for r in overall} == {
            ("srm_over_time:2026-03-08:treatment_b",)
        }
    else:
        assert {r["health"] for r in overall} == {"healthy"}
        assert {tuple(r["health_reasons"]) for r in overall} == {()}
        # exact proportions every day: BF < 1 at every look, the sequential p-value is 1
        assert {r["srm_sequential_p_value"] for r in overall} == {1.0}
    assert all(r["srm_sequential_p_value"] is None for r in outcome.results if r["dimension"])
    # the report: the SRM box and the last day's row of the first-exposures table
    page = render_report("e1", LAST, outcome.results, outcome.diagnostics)
    assert "First exposures per day" in page
    if drop:
        assert "SRM DETECTED on 2026-03-08" in page
        assert "120 (48.8%)" in page and "36 (14.6%)" in page  # of 246 that day
    else:
        assert "No sample-ratio mismatch" in page and "SRM DETECTED" not in page
        assert "36 (14.6%)" not in page
