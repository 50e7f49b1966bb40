"""Issue #26 item 3: every row of the recommendation rule table (`stats.recommend`), each
with a twin that must not trigger it; hand-made rows, no Spark."""

from __future__ import annotations

import pytest

from cluster_spark.stats.recommend import assign, recommend


def goal(decision="inconclusive", metric="revenue", **kw):
    row = {
        "metric": metric,
        "role": "goal",
        "decision": decision,
        "effect_rel": 0.05 if decision == "win" else -0.05 if decision == "loss" else 0.01,
        "effect_rel_ci_low": 0.01 if decision == "win" else -0.09 if decision == "loss" else -0.03,
        "effect_rel_ci_high": 0.09 if decision == "win" else -0.01 if decision == "loss" else 0.05,
        "mde_rel": 0.04,
        "status": "ok",
    }
    return row | kw


def guardrail(decision="guardrail_ok", metric="crash_rate", bound=0.012, **kw):
    row = {
        "metric": metric,
        "role": "guardrail",
        "decision": decision,
        "margin": 0.02,
        "noninferiority_bound": bound,
        "effect_rel": 0.004,
        "effect_rel_ci_low": -0.003,
        "effect_rel_ci_high": 0.011,
    }
    return row | kw


def secondary(decision="inconclusive", metric="sessions"):
    return goal(decision, metric) | {"role": "secondary"}


WIN_OK = [goal("win"), guardrail()]


# ------------------------------------------------------------------ rule 1: invalid


def test_rule_1_an_unhealthy_experiment_is_invalid_whatever_its_decisions():
    rec, reasons = recommend(WIN_OK, ["srm", "bias:revenue"], 0.05)
    assert rec == "invalid"
    assert reasons == ["experiment unhealthy: srm", "risk: health warning: bias:revenue"]
    rec, reasons = recommend(WIN_OK, ["no_events_reach_units:events"], 0.05)
    assert (rec, reasons[0]) == ("invalid", "experiment unhealthy: no_events_reach_units:events")


def test_rule_1_twin_a_warning_or_a_guardrail_violation_is_not_invalid():
    # warnings are risks: the goal win with every guardrail ok still ships
    rec, reasons = recommend(WIN_OK, ["unknown_variants"], 0.05)
    assert rec == "ship" and reasons[-1] == "risk: health warning: unknown_variants"
    # another treatment's violated guardrail makes the health unhealthy, not this one invalid
    assert recommend(WIN_OK, ["guardrail_violated:crash_rate"], 0.05)[0] == "ship"


# ------------------------------------------------------------------ rule 2: violated guardrail


def test_rule_2_a_violated_guardrail_is_do_not_ship_even_beside_a_goal_win():
    rows = [goal("win"), guardrail("guardrail_violated", bound=0.05, effect_rel=0.03,
                                   effect_rel_ci_low=0.01, effect_rel_ci_high=0.05)]  # fmt: skip
    rec, reasons = recommend(rows, ["guardrail_violated:crash_rate"], 0.05)
    assert rec == "do not ship"
    assert reasons == [
        "guardrail crash_rate violated: Δ rel +3.00% [+1.00%, +5.00%] is significant harm "
        "(margin 2%)"
    ]


def test_rule_2_twin_an_inconclusive_guardrail_is_not_do_not_ship():
    assert recommend([goal("win"), guardrail("guardrail_inconclusive")], [], 0.05)[0] == (
        "keep running"
    )


# ------------------------------------------------------------------ rule 3: goal loss


def test_rule_3_a_goal_loss_is_do_not_ship_even_beside_another_goal_win():
    rows = [goal("win"), goal("loss", metric="retention"), guardrail()]
    rec, reasons = recommend(rows, [], 0.05)
    assert (rec, reasons) == (
        "do not ship",
        ["goal retention loss: Δ rel -5.00% [-9.00%, -1.00%]"],
    )


def test_rule_3_twin_a_secondary_loss_is_a_risk_not_a_decision():
    rec, reasons = recommend([*WIN_OK, secondary("loss")], [], 0.05)
    assert rec == "ship"
    assert reasons[-1] == "risk: secondary sessions loss: Δ rel -5.00% [-9.00%, -1.00%]"


# ------------------------------------------------------------------ rule 4: ship


def test_rule_4_a_goal_win_with_every_guardrail_ok_ships():
    rec, reasons = recommend([*WIN_OK, goal("inconclusive", metric="retention")], [], 0.05)
    assert (rec, reasons) == (
        "ship",
        [
            "goal revenue win: Δ rel +5.00% [+1.00%, +9.00%]",
            "guardrail crash_rate ok: a 2% harm is excluded (non-inferiority bound +1.20%)",
        ],
    )
    assert recommend([goal("win")], [], None)[0] == "ship"  # no guardrail: nothing to show


def test_rule_4_twin_an_inconclusive_goal_alone_does_not_ship():
    assert recommend([goal("inconclusive"), guardrail()], [], 0.05)[0] == "do not ship"


# ------------------------------------------------------------------ rule 5: unresolved guardrail


def test_rule_5_a_goal_win_with_an_inconclusive_guardrail_keeps_running():
    rows = [goal("win"), guardrail(), guardrail("guardrail_inconclusive", "latency", 0.031)]
    rec, reasons = recommend(rows, [], 0.05)
    assert (rec, reasons) == (
        "keep running",
        [
            "goal revenue win: Δ rel +5.00% [+1.00%, +9.00%]",
            "guardrail latency inconclusive: a 2% harm (its margin) is not yet excluded "
            "(non-inferiority bound +3.10%)",
        ],
    )


def test_rule_5_twin_an_inconclusive_guardrail_without_a_goal_win_is_judged_by_power():
    rows = [goal("inconclusive"), guardrail("guardrail_inconclusive")]
    assert recommend(rows, [], 0.05) == (
        "do not ship",
        ["no goal moved: no clear winner (every goal could detect the planned 5.00%)"],
    )


# ------------------------------------------------------------------ rule 6: underpowered


def test_rule_6_no_goal_moved_and_a_goal_underpowered_keeps_running():
    rows = [goal("inconclusive", mde_rel=0.072), goal("inconclusive", metric="retention")]
    assert recommend(rows, ["underpowered:revenue"], 0.05) == (
        "keep running",
        ["goal revenue underpowered: it can detect 7.20%, planned 5.00%"],
    )
    no_estimate = goal("inconclusive", effect_rel=None, mde_rel=None, status="control_missing")
    assert recommend([no_estimate], [], None) == (
        "keep running",
        ["goal revenue has no estimate yet (control_missing)"],
    )


def test_rule_6_twin_power_at_the_planned_mde_is_not_underpowered():
    rows = [goal("inconclusive", mde_rel=0.05)]  # equal to planned: not above it
    assert recommend(rows, [], 0.05)[0] == "do not ship"


# ------------------------------------------------------------------ rule 7: no clear winner


def test_rule_7_no_goal_moved_is_do_not_ship_and_says_whether_power_was_judged():
    rec, reasons = recommend([goal("inconclusive", mde_rel=0.5)], [], None)
    assert (rec, reasons) == (
        "do not ship",
        [
            "no goal moved: no clear winner (power not judged: set planned_mde to tell too "
            "little data from no effect)"
        ],
    )
    assert recommend([guardrail(), secondary("win")], [], 0.05) == (
        "do not ship",
        ["no goal metric: nothing to ship for"],
    )


def test_rule_7_twin_a_goal_win_is_not_no_clear_winner():
    assert recommend([goal("win", mde_rel=0.5)], [], 0.05)[0] == "ship"


# ------------------------------------------------------------------ risks and assign


@pytest.mark.parametrize("rule_rows", [WIN_OK, [goal("loss")], [goal("inconclusive")]])
def test_a_secondary_loss_is_a_risk_under_every_recommendation(rule_rows):
    without = recommend(rule_rows, [], 0.05)
    rec, reasons = recommend([*rule_rows, secondary("loss"), secondary("win", "clicks")], [], 0.05)
    assert rec == without[0]
    assert reasons == [*without[1], "risk: secondary sessions loss: Δ rel -5.00% [-9.00%, -1.00%]"]


def test_assign_sets_each_treatment_and_leaves_control_null():
    rows = [
        {"variant": "control", "metric": "revenue", "role": "goal", "health_reasons": []},
        {"variant": "a", **goal("win"), "health_reasons": []},
        {"variant": "b", **goal("loss"), "health_reasons": []},
    ]
    assign(rows, "control", None)
    assert [r.get("recommendation") for r in rows] == [None, "ship", "do not ship"]
    assert rows[1]["recommendation_reasons"] == ["goal revenue win: Δ rel +5.00% [+1.00%, +9.00%]"]
