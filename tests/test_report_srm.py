"""The report's first-exposures-per-day section (issue #26): hand-made rows of a 40/30/30
experiment whose t2 keeps 36 of its 90 first exposures on the second day."""

from __future__ import annotations

from cluster_spark.reporting import render_report
from tests.test_report import DATE, DIAGNOSTICS, RESULTS, Page

SHARES = {"control": 0.4, "t1": 0.3, "t2": 0.3}
REASON = "srm_over_time:2026-03-03:t2"
DAILY = {
    "2026-03-02": {"control": 120, "t1": 90, "t2": 90},
    "2026-03-03": {"control": 120, "t1": 90, "t2": 36},
}
PER_DAY = [
    {
        "experiment_id": "exp-1",
        "metric": None,
        "variant": v,
        "dimension": None,
        "check": f"first_exposures:{day}",
        "value": n,
    }
    for day, counts in DAILY.items()
    for v, n in counts.items()
]


def _results(**values):
    return [
        {
            **r,
            "srm_flag": False,
            "srm_p_value": 0.19,
            "srm_expected_share": SHARES[r["variant"]],
            **values,
        }
        for r in RESULTS
    ]


def test_first_exposures_per_day_chart_and_table():
    results = _results(health="unhealthy", health_reasons=[REASON])
    text = render_report("exp-1", DATE, results, DIAGNOSTICS + PER_DAY)
    page = Page(text)
    assert page.stack == []
    shown = "".join(page.text)
    assert "First exposures per day" in shown
    for expected in [
        "control (split 40.0%)",
        "t2 (split 30.0%)",
        "120 (40.0%)",  # day 1: 120 / 300
        "90 (30.0%)",
        "120 (48.8%)",  # day 2: 120 / 246
        "90 (36.6%)",  # 90 / 246
        "36 (14.6%)",  # 36 / 246
        "1.0000",  # day 1: χ² 0, p = 1
        "<0.0001",  # day 2: χ² 27.7, p ≈ 1e-6
        # the chart's points name their counts and shares
        "t2 on 2026-03-03: 36 units, 14.6% (split 30.0%)",
    ]:
        assert expected in shown, expected
    # the flagged day is highlighted, and the SRM box is not green though χ² overall is fine
    assert '<td class="l warn">2026-03-03</td>' in text
    assert "SRM DETECTED on 2026-03-03" in shown
    assert REASON in shown
    # one chart more than the forest plot; per-day rows stay out of the diagnostics table
    assert len(page.find("svg")) == 2
    assert len(page.find("polyline")) == 3
    assert "first_exposures:" not in shown


def test_no_section_without_per_day_rows_and_a_green_box_when_healthy():
    text = render_report("exp-1", DATE, _results(health="healthy", health_reasons=[]), DIAGNOSTICS)
    assert "First exposures per day" not in text
    assert "No sample-ratio mismatch" in text
    healthy = render_report(
        "exp-1", DATE, _results(health="healthy", health_reasons=[]), DIAGNOSTICS + PER_DAY
    )
    assert "First exposures per day" in healthy
    assert "No sample-ratio mismatch" in healthy
    assert "warn" not in healthy.split("First exposures per day")[1].split("<h2>")[0]
