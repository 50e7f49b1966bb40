"""The HTML report: hand-made result and diagnostics rows, checked with html.parser."""

from __future__ import annotations

import datetime as dt
from html.parser import HTMLParser

import pytest

from cluster_spark.reporting import render_report, write_report
from cluster_spark.reporting.format import fmt_num, fmt_p, fmt_pct
from cluster_spark.tables import RESULT_COLUMNS

DATE = dt.date(2026, 3, 9)
XSS = "<script>alert(1)</script>"
VOID = {"meta", "br", "hr", "img", "input", "link", "wbr"}


def result(metric: str, variant: str, **values) -> dict:
    row = dict.fromkeys(name for name, _ in RESULT_COLUMNS)
    row.update(
        experiment_id="exp-1",
        analysis_date=DATE,
        metric=metric,
        variant=variant,
        control_variant="control",
        n_units=1200,
        mean=0.25,
        alpha=0.05,
        test="welch",
        status="ok",
        winsorized=False,
        srm_chi2=15.2,
        srm_p_value=0.0005,
        srm_flag=True,
        run_id="run-42",
    )
    row.update(values)
    return row


def treated(metric: str, variant: str, rel, low, high, **values) -> dict:
    return result(
        metric,
        variant,
        effect_abs=0.01,
        effect_abs_ci_low=-0.002,
        effect_abs_ci_high=0.022,
        effect_rel=rel,
        effect_rel_ci_low=low,
        effect_rel_ci_high=high,
        p_value=0.0312,
        p_value_bh=0.0624,
        **values,
    )


CAPS = dict(
    winsorized=True,
    num_lower_cap=0.0,
    num_upper_cap=987.5,
    den_lower_cap=None,
    pre_num_upper_cap=1975.0,  # CUPED's own pre-period cap
)
RESULTS = [
    result("revenue_per_user", "control", mean=12.5, **CAPS),
    treated(
        "revenue_per_user",
        "t1",
        0.042,
        0.011,
        0.073,
        effect_rel_uncapped=0.0571,
        effect_rel_uncapped_ci_low=0.021,
        effect_rel_uncapped_ci_high=0.0932,
        **CAPS,
    ),
    treated("revenue_per_user", "t2", -0.013, -0.051, 0.025, effect_rel_uncapped=-0.02, **CAPS),
    result(XSS, "control"),
    treated(XSS, "t1", -0.08, -0.12, -0.04, variance_reduction=0.31, cuped_applied=True),
    treated(XSS, "t2", 0.015, None, None, status="zero_variance"),
]
DIAGNOSTICS = [
    {"experiment_id": "exp-1", "metric": None, "variant": v, "check": c, "value": n}
    for c, counts in [
        ("assignment_units", {"control": 1000, "t1": 1100, "t2": 950}),
        ("analysis_units", {"control": 5400, "t1": 5901, "t2": 5012}),
    ]
    for v, n in counts.items()
] + [
    {"experiment_id": "exp-1", "metric": None, "variant": None, "check": c, "value": n}
    for c, n in [("duplicate_exposures", 3), ("events_with_null_ids:events", 0)]
]


class Page(HTMLParser):
    """Collects start tags with attributes and text; checks that tags are balanced."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.stack: list[str] = []
        self.text: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        assert self.stack and self.stack.pop() == tag, f"unbalanced </{tag}>"

    def handle_data(self, data):
        self.text.append(data)

    def find(self, tag: str, cls: str | None = None) -> list[dict]:
        return [
            a
            for t, a in self.tags
            if t == tag and (cls is None or cls in a.get("class", "").split())
        ]


@pytest.fixture(scope="module")
def html_text() -> str:
    return render_report("exp-1", DATE, RESULTS, DIAGNOSTICS)


@pytest.fixture(scope="module")
def page(html_text) -> Page:
    return Page(html_text)


def test_parses_balanced(page):
    assert page.stack == []
    assert len(page.find("svg")) == 1
    assert "".join(page.text).count("Experiment exp-1") >= 1


def test_forest_intervals_and_points(page):
    non_null_ci = [r for r in RESULTS if r["effect_rel_ci_low"] is not None]
    assert len(page.find("line", "ci")) == len(non_null_ci) == 3
    points = page.find("circle", "point")
    assert len(points) == 4  # every treatment row has an effect
    assert [p["class"].split()[1] for p in points] == ["pos", "ns", "neg", "na"]
    assert "n/a" in "".join(page.text)


def test_zero_line_inside_axis(page):
    (axis,) = page.find("line", "axis")
    (zero,) = page.find("line", "zero")
    lo, hi = float(axis["x1"]), float(axis["x2"])
    assert lo < float(zero["x1"]) == float(zero["x2"]) < hi
    # ticks are labelled in %, and the CI endpoints map inside the axis
    assert "0%" in page.text and "-10%" in page.text
    for line in page.find("line", "ci"):
        assert lo <= float(line["x1"]) < float(line["x2"]) <= hi


def test_numbers_formatted(page):
    text = "".join(page.text)
    for expected in [
        "+4.20%",  # effect_rel
        "[+1.10%, +7.30%]",  # its CI
        "+5.71%",  # uncapped relative effect of the winsorized metric
        "[+2.10%, +9.32%]",  # and its CI
        "95% CI",  # the forest plot's CI level, from alpha
        "987.5",  # a cap
        "CUPED pre-period — numerator capped to [—, 1975]",  # the pre-period's own caps
        "31.00%",  # CUPED variance reduction
        "0.0312",  # p-value
        "0.0624",  # BH-adjusted p-value
        "1,200",  # units
        "5,901",  # analysis units
        "run-42",
        "welch",
        "duplicate_exposures",
    ]:
        assert expected in text, expected


def test_escaped(html_text, page):
    assert "<script" not in html_text.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html_text
    assert XSS in "".join(page.text)  # shown verbatim as text
    assert not page.find("script")


def test_srm_flag(html_text):
    assert "SRM DETECTED" in html_text
    assert 'class="srm flagged"' in html_text
    ok = [{**r, "srm_flag": False, "srm_p_value": 0.41} for r in RESULTS]
    assert "SRM DETECTED" not in render_report("exp-1", DATE, ok, DIAGNOSTICS)


def test_self_contained(html_text):
    assert "http://" not in html_text and "https://" not in html_text
    assert "<link" not in html_text and " src=" not in html_text


def test_other_experiments_and_empty_input():
    other = [{**r, "experiment_id": "exp-2", "metric": "other_metric"} for r in RESULTS]
    assert "other_metric" not in render_report("exp-1", DATE, RESULTS + other, DIAGNOSTICS)
    empty = Page(render_report("exp-1", DATE, [], []))
    assert empty.stack == [] and not empty.find("svg")


def test_formatters():
    assert fmt_num(None) == "—" and fmt_num(1234567) == "1,234,567"
    assert fmt_num(0.000012) == "1.20e-05" and fmt_num(float("nan")) == "nan"
    assert fmt_pct(-0.0123) == "-1.23%" and fmt_pct(None) == "n/a"
    assert fmt_p(1e-9) == "<0.0001" and fmt_p(0.5) == "0.5000"


def test_write_report(tmp_path):
    path = write_report(tmp_path / "a" / "b" / "r.html", "exp-1", DATE, RESULTS, DIAGNOSTICS)
    assert path.read_text("utf-8").startswith("<!DOCTYPE html>")


def test_cli_and_report_say_when_cuped_fell_back():
    from cluster_spark.cli import _cuped_cell

    applied = {"cuped_applied": True, "variance_reduction": 0.29, "cuped_status": "applied"}
    fell_back = {
        "cuped_applied": False,
        "variance_reduction": -0.01,
        "cuped_status": "fallback_no_gain",
    }
    assert _cuped_cell(applied) == "29%"
    assert _cuped_cell(fell_back) == "no_gain"
    assert _cuped_cell({"cuped_applied": None, "cuped_status": None}) == ""


def test_health_lines_come_from_the_reason_registry():
    """#27: a reason's level, threshold and report line are declared once (`health.REASONS`)."""
    from cluster_spark import health

    assert all(r.text for r in health.REASONS.values())
    share = health.MAX_ZERO_DENOMINATOR_SHARE
    assert f"more than {100 * share:g} %" in health.REASONS["zero_denominator"].text
    rows = [{**r, "health": "warning", "health_reasons": ["zero_denominator:m1"]} for r in RESULTS]
    page = render_report("exp-1", DATE, rows, DIAGNOSTICS)
    assert f"<code>zero_denominator:m1</code>: {health.REASONS['zero_denominator'].text}" in page


def test_bayesian_rows_show_chance_to_beat_control_and_risk():
    """`engine: bayesian` rows: the table gains the chance to beat control and the risk of
    shipping (relative: a percentage); a frequentist experiment's table has neither."""
    rows = [
        result("revenue", "control", engine="bayesian"),
        treated(
            "revenue",
            "treatment",
            0.04,
            0.01,
            0.07,
            engine="bayesian",
            posterior_effect="relative",
            chance_to_win=0.9871,
            risk_treatment=0.000321,
            decision="win",
        ),
    ]
    html = render_report("exp-1", DATE, rows, DIAGNOSTICS)
    assert "chance to beat control</th>" in html and "98.71%" in html and "0.03%" in html
    assert "chance to beat control</th>" not in render_report("exp-1", DATE, RESULTS, DIAGNOSTICS)
