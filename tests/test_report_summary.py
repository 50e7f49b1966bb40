"""Issue #26 items 3 and 4 in the report: the Recommendation box comes first (before
Health), and the summary covers every role, losses in red even when no goal moved.
Hand-made results rows, no Spark."""

from __future__ import annotations

from cluster_spark.reporting import render_report
from cluster_spark.stats.recommend import assign
from tests.test_report import DATE, XSS, Page, result, treated


def _experiment(goal_decision: str, goal_ci: tuple[float, float]) -> list[dict]:
    health = {"health": "healthy", "health_reasons": []}
    rows = [
        result("revenue", "control", role="goal", **health),
        treated("revenue", "t1", 0.03, *goal_ci, role="goal", decision=goal_decision,
                mde_rel=0.04, **health),
        result("crash_rate", "control", role="guardrail", margin=0.02, **health),
        treated("crash_rate", "t1", 0.004, -0.006, 0.014, role="guardrail", margin=0.02,
                direction="decrease", noninferiority_bound=0.031,
                decision="guardrail_inconclusive", **health),
        result(XSS, "control", role="secondary", **health),
        treated(XSS, "t1", -0.05, -0.09, -0.01, role="secondary", decision="loss", **health),
    ]  # fmt: skip
    assign(rows, "control", 0.05)
    return rows


def _items(page: Page, html_text: str) -> list[tuple[str, str]]:
    """(class, text) of each summary line, in order."""
    summary = html_text[html_text.index("<h2>Summary</h2>") :]
    summary = summary[: summary.index("</ul>")]
    sub = Page(summary + "</ul>")
    texts = [t for t in sub.text if t.strip()][1:]  # after the heading
    return [(a.get("class", ""), t) for (_, a), t in zip(sub.tags[2:], texts, strict=True)]


def test_the_recommendation_box_comes_first_and_a_secondary_loss_is_red_when_no_goal_moved():
    rows = _experiment("inconclusive", (-0.01, 0.07))
    html_text = render_report("exp-1", DATE, rows, [])
    page = Page(html_text)
    assert page.stack == []
    rec, health = html_text.index('class="rec '), html_text.index('class="health ')
    assert html_text.index("<h2>Recommendation</h2>") < rec < health
    assert html_text.index("<h2>Summary</h2>") > health
    (box,) = page.find("div", "rec")
    assert box["class"] == "rec do-not-ship"
    assert "t1: DO NOT SHIP" in page.text
    assert page.find("li", "risk")  # the secondary loss, in the box as a risk
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert f"risk: secondary {escaped} loss: Δ rel -5.00% [-9.00%, -1.00%]" in html_text
    assert _items(page, html_text) == [
        ("ns", "goal: t1 raised revenue by +3.00% [-1.00%, +7.00%]: inconclusive"),
        (
            "ns",
            "guardrail: t1 raised crash_rate by +0.40% [-0.60%, +1.40%] (margin 2%, "
            "non-inferiority bound +3.10%): guardrail_inconclusive",
        ),
        ("neg", f"secondary: t1 lowered {XSS} by -5.00% [-9.00%, -1.00%]: loss"),
    ]


def test_a_goal_win_beside_an_inconclusive_guardrail_states_keep_running_first():
    """The issue's second trial: a goal win, an unresolved guardrail, a secondary loss."""
    html_text = render_report("exp-1", DATE, _experiment("win", (0.01, 0.05)), [])
    page = Page(html_text)
    first_box = html_text[html_text.index('class="rec ') : html_text.index('class="health ')]
    assert 'class="rec keep-running"' in first_box and "t1: KEEP RUNNING" in page.text
    assert (
        "guardrail crash_rate inconclusive: a 2% harm (its margin) is not yet excluded "
        "(non-inferiority bound +3.10%)"
    ) in first_box
    assert [c for c, _ in _items(page, html_text)] == ["pos", "ns", "neg"]


def test_no_recommendation_box_for_results_written_before_recommendations():
    rows = [r | {"recommendation": None} for r in _experiment("win", (0.01, 0.05))]
    html_text = render_report("exp-1", DATE, rows, [])
    assert "<h2>Recommendation</h2>" not in html_text and "<h2>Summary</h2>" in html_text
