"""Issue #17: metric roles and decisions, the non-inferiority test of guardrails, the
pre-exposure bias check and the health verdict, on staged rows built with numpy (no Spark).

Expected values are written by hand or computed here with numpy/scipy from unit values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from cluster_spark import health
from cluster_spark.config import ConfigError, MetricRole, parse_config
from cluster_spark.reducer import reduce_experiment
from cluster_spark.stats.decisions import (
    Decision,
    NonInferiority,
    effect_decision,
    guardrail_decision,
    noninferiority_delta,
    noninferiority_fieller,
)
from cluster_spark.stats.intervals import FiellerRatio, fieller_interval
from cluster_spark.stats.ratio import RatioStats
from tests.helpers import config_dict
from tests.test_reducer import DATE, experiment, staged_row

Z95 = 1.6448536269514722  # one-sided 95 % normal quantile
SF2 = 0.022750131948179195  # P(Z ≥ 2)


def test_noninferiority_bound_and_p_value_by_hand():
    # relative effect −1 % ± 0.5 %, margin 2 %: bound −1 % − 1.645 × 0.5 %, p = P(Z ≥ 2)
    ni = noninferiority_delta(-0.01, 0.005, 0.02, "increase", 0.05)
    assert ni.bound == pytest.approx(-0.01 - Z95 * 0.005, rel=1e-12)
    assert ni.p_value == pytest.approx(SF2, rel=1e-12)
    assert ni.shown(0.05) and not ni.shown(0.02)
    # the same harm for a lower-is-better metric is +1 %: the mirror image
    mirror = noninferiority_delta(0.01, 0.005, 0.02, "decrease", 0.05)
    assert mirror.bound == pytest.approx(-ni.bound, rel=1e-12)
    assert mirror.p_value == pytest.approx(ni.p_value, rel=1e-12)
    # Welch t with 10 df: p = P(T₁₀ ≥ 2) = 0.036694017385370196
    assert noninferiority_delta(-0.01, 0.005, 0.02, "increase", 0.05, df=10).p_value == (
        pytest.approx(0.036694017385370196, rel=1e-9)
    )
    assert noninferiority_delta(-0.01, None, 0.02, "increase", 0.05) == NonInferiority(None, None)


def test_fieller_noninferiority_p_value_is_where_fiellers_interval_meets_the_margin():
    """Fieller's one-sided test at level p has its bound exactly at the margin: the end of
    Fieller's 1 − 2p two-sided interval (computed by `fieller_interval`) is −margin."""
    t = RatioStats.from_values([9.0, 11.5, 10.2, 8.7, 10.9, 9.8], [1, 1.2, 1, 0.9, 1.1, 1])
    c = RatioStats.from_values([10.1, 10.8, 9.9, 10.4, 11.2, 9.5], [1, 1.1, 1, 1, 1.1, 0.9])
    for direction, margin in (("increase", 0.08), ("decrease", 0.05)):
        ni = noninferiority_fieller(FiellerRatio.of_groups(t, c), margin, direction, 0.05)
        low, high = fieller_interval(t, c, 2 * ni.p_value, "z")
        end = low if direction == "increase" else high
        assert end == pytest.approx(-margin if direction == "increase" else margin, abs=1e-9)
        assert ni.bound == pytest.approx(
            fieller_interval(t, c, 0.1, "z")[0 if direction == "increase" else 1]
        )


def test_a_decrease_metric_decision_mirrors_an_increase_one():
    assert effect_decision(0.01, 2.0, "increase", 0.05) == Decision.WIN
    assert effect_decision(0.01, -2.0, "decrease", 0.05) == Decision.WIN
    assert effect_decision(0.01, 2.0, "decrease", 0.05) == Decision.LOSS
    assert effect_decision(0.2, 2.0, "increase", 0.05) == Decision.INCONCLUSIVE
    assert effect_decision(None, 2.0, "increase", 0.05) == Decision.INCONCLUSIVE
    shown, not_shown = NonInferiority(-0.01, 0.01), NonInferiority(-0.03, 0.3)
    assert guardrail_decision(shown, -0.02, 0.01, "increase", 0.05) == Decision.GUARDRAIL_OK
    harm_up, harm_down = (-0.05, -0.01), (0.01, 0.05)
    assert guardrail_decision(not_shown, *harm_up, "increase", 0.05) == (
        Decision.GUARDRAIL_VIOLATED
    )
    assert guardrail_decision(not_shown, *harm_down, "decrease", 0.05) == (
        Decision.GUARDRAIL_VIOLATED
    )
    assert guardrail_decision(not_shown, *harm_down, "increase", 0.05) == (
        Decision.GUARDRAIL_INCONCLUSIVE
    )


def _groups(rng, n=300, lift=0.0, pre_shift=0.0, metric="m1"):
    """Control and treatment staged rows of unit values with a pre-period."""
    rows = []
    for variant, shift, pre in (("control", 0.0, 0.0), ("treatment", lift, pre_shift)):
        d = rng.integers(1, 6, n).astype(float)
        x = d * rng.gamma(4.0, 2.5, n) * (1 + pre)
        m = 0.6 * x + d * rng.gamma(4.0, 1.0, n) * (1 + shift)
        rows.append(staged_row(metric, variant, m, d, x, d))
    return rows


def test_roles_corrections_and_decisions_in_results():
    rng = np.random.default_rng(17)
    rows = (
        _groups(rng, lift=0.6, metric="revenue")
        + _groups(rng, lift=0.0, metric="clicks")
        + _groups(rng, lift=-0.6, metric="latency")
        + _groups(rng, n=3000, lift=-0.002, metric="errors")
    )
    roles = {
        "clicks": MetricRole(role="secondary"),
        "latency": MetricRole(direction="decrease"),
        "errors": MetricRole(role="guardrail", margin=0.05),
    }
    # the delta method's guardrail test, checked against its formula below (Fieller's, the
    # default since #26, is checked in test_fieller_noninferiority_p_value_is_where_...)
    exp = experiment(
        metrics=["revenue", "clicks", "latency", "errors"],
        metric_roles=roles,
        relative_ci="delta",
    )
    out = {
        r["metric"]: r for r in reduce_experiment(rows, exp, DATE, "r") if r["variant"] != "control"
    }
    # BH across goal metrics × treatments only, m = 2: p_(2) stays, p_(1) → min(2 p_(1), p_(2))
    low, high = sorted((out["revenue"], out["latency"]), key=lambda r: r["p_value"])
    assert high["p_value_bh"] == pytest.approx(high["p_value"], rel=1e-12)
    assert low["p_value_bh"] == pytest.approx(min(2 * low["p_value"], high["p_value"]), rel=1e-12)
    assert out["clicks"]["p_value_bh"] is None and out["errors"]["p_value_bh"] is None
    assert out["revenue"]["decision"] == "win"  # higher is better
    assert out["latency"]["decision"] == "win"  # lower is better
    assert (out["latency"]["role"], out["latency"]["direction"]) == ("goal", "decrease")
    errors = out["errors"]
    hand = noninferiority_delta(
        errors["effect_rel"], errors["effect_rel_stderr"], 0.05, "increase", 0.05, errors["df"]
    )
    assert errors["p_value_noninferiority"] == pytest.approx(hand.p_value, rel=1e-12)
    assert errors["noninferiority_bound"] == pytest.approx(hand.bound, rel=1e-12)
    assert errors["decision"] == "guardrail_ok"  # about −0.1 % ± 1 %, margin 5 %
    controls = [r for r in reduce_experiment(rows, exp, DATE, "r") if r["variant"] == "control"]
    assert {r["metric"]: r["role"] for r in controls} == {
        "clicks": "secondary",
        "errors": "guardrail",
        "latency": "goal",
        "revenue": "goal",
    }
    assert all(r["decision"] is None for r in controls)


def _pre_period_z_p_value(x_t, y_t, x_c, y_c) -> float:
    """Delta-method z test of ΣX/ΣY between groups, from unit values (numpy/scipy)."""

    def ratio_var(x, y):
        r = x.sum() / y.sum()
        cov = np.cov(x, y, ddof=1)
        v = (cov[0, 0] - 2 * r * cov[0, 1] + r * r * cov[1, 1]) / y.mean() ** 2
        return r, v / len(x)

    (r_t, v_t), (r_c, v_c) = ratio_var(x_t, y_t), ratio_var(x_c, y_c)
    return float(2 * sps.norm.sf(abs(r_t - r_c) / math.sqrt(v_t + v_c)))


def test_bias_p_value_equals_a_z_test_on_the_pre_period_values():
    rng = np.random.default_rng(5)
    n = 250
    values = {}
    for v in ("control", "treatment"):
        y = rng.integers(1, 4, n).astype(float)
        x = y * rng.gamma(3.0, 2.0, n)
        values[v] = (x, y)
    rows = [staged_row("m1", v, x * 1.1 + 1, y, x, y) for v, (x, y) in values.items()]
    out = reduce_experiment(rows, experiment(cuped_lookback_days=7, test="z"), DATE, "r")
    t = next(r for r in out if r["variant"] == "treatment")
    expected = _pre_period_z_p_value(*values["treatment"], *values["control"])
    assert t["bias_p_value"] == pytest.approx(expected, rel=1e-9)
    assert t["bias_flag"] is (expected < 0.001)
    without = reduce_experiment(rows, experiment(), DATE, "r")
    assert next(r for r in without if r["variant"] == "treatment")["bias_p_value"] is None


def test_an_imbalanced_pre_period_is_flagged_and_a_balanced_one_is_not():
    rng = np.random.default_rng(11)
    exp = experiment(cuped_lookback_days=7)
    imbalanced = reduce_experiment(_groups(rng, pre_shift=0.3), exp, DATE, "r")
    balanced = reduce_experiment(_groups(rng, pre_shift=0.0), exp, DATE, "r")
    assert next(r for r in imbalanced if r["variant"] == "treatment")["bias_flag"] is True
    assert next(r for r in balanced if r["variant"] == "treatment")["bias_flag"] is False
    assert "bias:m1" in imbalanced[0]["health_reasons"]
    assert imbalanced[0]["health"] == "warning"


def test_the_bias_flag_fires_at_its_nominal_rate_in_aa_tests():
    """200 seeded A/A experiments at bias_threshold 0.05: the number flagged is
    Binomial(200, 0.05) (mean 10); 2..21 holds with probability > 0.999."""
    exp = experiment(cuped_lookback_days=7, bias_threshold=0.05)
    flagged = 0
    for seed in range(200):
        rng = np.random.default_rng(10_000 + seed)
        out = reduce_experiment(_groups(rng, n=120), exp, DATE, "r")
        flagged += bool(next(r for r in out if r["variant"] == "treatment")["bias_flag"])
    assert sps.binom.cdf(1, 200, 0.05) + sps.binom.sf(21, 200, 0.05) < 1e-3
    assert 2 <= flagged <= 21


def _result(metric="m1", variant="treatment", **kw):
    row = {
        "metric": metric,
        "variant": variant,
        "srm_flag": False,
        "bias_flag": None,
        "cuped_status": None,
        "decision": "inconclusive",
        "role": "goal",
        "mde_rel": 0.04,
    }
    return row | kw


def _diag(check, value, variant=None):
    return {"check": check, "value": value, "variant": variant}


UNITS = [_diag("assignment_units", 500, "control"), _diag("assignment_units", 500, "treatment")]
DAY_1 = [
    _diag("first_exposures:2026-03-02", 250, "control"),
    _diag("first_exposures:2026-03-02", 250, "treatment"),
]


@pytest.mark.parametrize(
    ("results", "diagnostics", "staged", "planned_mde", "code"),
    [
        ([_result(srm_flag=True)], UNITS, [], None, "srm"),
        ([_result(decision="guardrail_violated")], UNITS, [], None, "guardrail_violated:m1"),
        ([_result(bias_flag=True)], UNITS, [], None, "bias:m1"),
        ([_result()], [*UNITS, _diag("units_in_several_variants", 11)], [], None,
         "units_in_several_variants"),
        ([_result()], [*UNITS, _diag("analysis_units", 990), _diag(
            "analysis_units_in_several_units", 11)], [], None, "analysis_units_in_several_units"),
        ([_result()], UNITS, [{"metric": "m1", "n_units": 10, "n_zero_denominator": 10}], None,
         "zero_denominator:m1"),
        ([_result(cuped_status="fallback_no_pre_data")], UNITS, [], None, "cuped_no_pre_data:m1"),
        ([_result(mde_rel=0.051)], UNITS, [], 0.05, "underpowered:m1"),
        ([_result()], [*UNITS, _diag("unknown_variants", 11, "Treatment")], [], None,
         "unknown_variants"),
        ([_result()], [*UNITS, _diag("non_finite_values:events:value", 1)], [], None,
         "non_finite_values:events:value"),
        ([_result()], [*UNITS, _diag("events_in_period:events", 4)], [], None,
         "no_events_reach_units:events"),
        ([_result()], [*UNITS, _diag("date_timestamps:daily", 1)], [], None,
         "daily_source_as_instants:daily"),
        ([_result()], [*UNITS, _diag("events_of_units:e", 20), _diag("events_at_midnight:e", 20)],
         [], None, "daily_source_as_instants:e"),
        # day 2: 250 vs 100 first exposures, χ² = 2·75²/175 = 64.3, p ≈ 1e-14 < 0.001/2;
        # two arms cannot be told apart, both are named
        ([_result()], [*UNITS, *DAY_1, _diag("first_exposures:2026-03-03", 250, "control"),
          _diag("first_exposures:2026-03-03", 100, "treatment")], [], None,
         "srm_over_time:2026-03-03:control,treatment"),
    ],
)  # fmt: skip
def test_each_health_reason_from_a_hand_made_input(results, diagnostics, staged, planned_mde, code):
    exp = experiment(planned_mde=planned_mde)
    assert health.reasons(results, diagnostics, staged, exp) == [code]
    unhealthy = ("srm", "srm_over_time", "guardrail_violated", "no_events_reach_units")
    expected = "unhealthy" if code.split(":")[0] in unhealthy else "warning"
    assert health.verdict([code]) == expected


def test_an_experiment_without_units_is_not_blamed_on_its_sources():
    diagnostics = [_diag("assignment_units", 0, "control"), _diag("events_in_period:events", 3)]
    assert health.reasons([_result()], diagnostics, [], experiment()) == []


def test_input_problems_are_listed_before_the_checks_they_break():
    diagnostics = [*UNITS, _diag("events_in_period:events", 3)]
    results = [_result(srm_flag=True, decision="guardrail_violated")]
    assert health.reasons(results, diagnostics, [], experiment()) == [
        "no_events_reach_units:events",
        "srm",
        "guardrail_violated:m1",
    ]


def test_srm_over_time_names_the_first_off_day_and_its_arm():
    """40/30/30; days 2 and 3 in exact proportion, day 4 loses 60 % of treatment_b (hand
    counts of tests/test_srm_time.py: χ² 27.7, p ≈ 1e-6 < 0.001/3); day 5 off too. The
    first flagged day is named, with the arm without which the others fit 40:30."""
    exp = experiment(variants={"control": 40, "treatment_a": 30, "treatment_b": 30})
    rows = []
    for day, b in (("2026-03-02", 90), ("2026-03-03", 90), ("2026-03-04", 36), ("2026-03-05", 30)):
        for arm, n in (("control", 120), ("treatment_a", 90), ("treatment_b", b)):
            rows.append(_diag(f"first_exposures:{day}", n, arm) | {"dimension": None})
    assert health.reasons([_result()], rows, [], exp) == ["srm_over_time:2026-03-04:treatment_b"]
    # a sliced copy of the rows is not read (per-day rows are overall rows only)
    sliced = [r | {"dimension": "country"} for r in rows]
    assert health.reasons([_result()], sliced, [], exp) == []


def test_srm_over_time_is_quiet_on_a_balanced_experiment():
    """14 days of 250 vs 250 and one of 251 vs 249: no day is off, and exact proportions
    give BF < 1 at every look, so the sequential p-value stays 1."""
    rows = [
        _diag(f"first_exposures:2026-03-{d:02d}", n, arm)
        for d in range(2, 16)
        for arm, n in (("control", 250 + (d == 9)), ("treatment", 250 - (d == 9)))
    ]
    exp = experiment()
    assert health.reasons([_result()], rows, [], exp) == []
    assert health.srm_over_time(rows, exp).p_sequential == 1.0


def test_just_below_every_threshold_is_healthy():
    results = [_result(mde_rel=0.05)]
    diagnostics = [
        *UNITS,
        _diag("units_in_several_variants", 10),  # 10 / 1010 < 1 %
        _diag("duplicate_exposures", 5000),  # repeat rows: what every app logs, no reason
        _diag("analysis_units", 990),
        _diag("analysis_units_in_several_units", 10),
        _diag("unknown_variants", 10, "Treatment"),  # 10 / 1010 < 1 %
        _diag("non_finite_values:events:value", 0),
        _diag("events_in_period:events", 0),  # a source without events in the period
        _diag("events_of_units:e", 20),
        _diag("events_at_midnight:e", 19),  # one event not at midnight
        _diag("events_of_units:f", 19),
        _diag("events_at_midnight:f", 19),  # too few events to tell
    ]
    staged = [{"metric": "m1", "n_units": 10, "n_zero_denominator": 9}]
    exp = experiment(planned_mde=0.05)
    assert health.reasons(results, diagnostics, staged, exp) == []
    assert health.verdict([]) == "healthy"


def test_role_config_errors_name_the_key_and_rule(tmp_path):
    raw = config_dict(tmp_path)
    raw["experiments"][0]["metric_roles"] = {"revenue_per_user": {"role": "guardrail"}}
    with pytest.raises(ConfigError, match="a guardrail needs a margin"):
        parse_config(raw)
    raw["experiments"][0]["metric_roles"] = {"revenue_per_user": {"margin": 0.1}}
    with pytest.raises(ConfigError, match="margin applies to guardrails only"):
        parse_config(raw)
    raw["experiments"][0]["metric_roles"] = {"latency": {"direction": "decrease"}}
    with pytest.raises(ConfigError, match=r"metric_roles names metrics .*\['latency'\]"):
        parse_config(raw)


def test_one_sided_tests_everywhere_a_p_value_or_ci_is_made():
    """`alternative: one-sided` follows each metric's direction: greater where higher is
    better, less where lower is; p-values are the one-sided tails of the same z statistic,
    CIs have one infinite end at the one-sided quantile, the MDE uses z₁₋α."""
    rng = np.random.default_rng(23)
    rows = _groups(rng, lift=0.1, metric="up") + _groups(rng, lift=0.1, metric="down")
    base = {"metrics": ["up", "down"], "test": "z", "cuped_lookback_days": 7}
    roles = {"down": MetricRole(direction="decrease")}
    two = {
        r["metric"]: r
        for r in reduce_experiment(rows, experiment(**base, metric_roles=roles), DATE, "r")
        if r["variant"] == "treatment"
    }
    one = {
        r["metric"]: r
        for r in reduce_experiment(
            rows, experiment(**base, metric_roles=roles, alternative="one-sided"), DATE, "r"
        )
        if r["variant"] == "treatment"
    }
    for metric, sign in (("up", 1.0), ("down", -1.0)):
        t, o = two[metric], one[metric]
        assert o["cuped_applied"] and o["effect_abs"] == pytest.approx(t["effect_abs"], rel=1e-12)
        z = t["effect_abs"] / t["effect_abs_stderr"]
        assert o["p_value"] == pytest.approx(sps.norm.sf(sign * z), rel=1e-9)
        se, est = t["effect_abs_stderr"], t["effect_abs"]
        if sign > 0:
            assert (o["effect_abs_ci_low"], o["effect_abs_ci_high"]) == (
                pytest.approx(est - Z95 * se, rel=1e-9),
                math.inf,
            )
        else:
            assert (o["effect_abs_ci_low"], o["effect_abs_ci_high"]) == (
                -math.inf,
                pytest.approx(est + Z95 * se, rel=1e-9),
            )
        ratio = (Z95 + sps.norm.ppf(0.8)) / (sps.norm.ppf(0.975) + sps.norm.ppf(0.8))
        assert o["mde_abs"] == pytest.approx(t["mde_abs"] * ratio, rel=1e-9)
        assert o["bias_p_value"] == pytest.approx(t["bias_p_value"], rel=1e-12)  # two-sided
    assert one["up"]["decision"] == "win"  # +10 %, higher is better
    assert one["down"]["decision"] == "inconclusive"  # +10 % is the bad direction: p ≈ 1


def test_one_sided_fieller_is_the_end_of_the_two_sided_interval_at_twice_alpha():
    t = RatioStats.from_values([9.0, 11.5, 10.2, 8.7, 10.9, 9.8], [1, 1.2, 1, 0.9, 1.1, 1])
    c = RatioStats.from_values([10.1, 10.8, 9.9, 10.4, 11.2, 9.5], [1, 1.1, 1, 1, 1.1, 0.9])
    low, high = fieller_interval(t, c, 0.1, "z")
    assert fieller_interval(t, c, 0.05, "z", "greater") == (low, math.inf)
    assert fieller_interval(t, c, 0.05, "z", "less") == (-math.inf, high)


def test_one_sided_intervals_in_the_report():
    from cluster_spark.reporting.format import fmt_ci, fmt_pct

    assert fmt_ci(0.1, math.inf, fmt_pct) == "[+10.00%, +∞]"
    assert fmt_ci(-math.inf, -0.05, fmt_pct) == "[−∞, -5.00%]"
    assert fmt_ci(-math.inf, math.inf) == "n/a" and fmt_ci(None, 1.0) == "n/a"


def test_harm_to_a_guardrail_is_judged_two_sided_under_one_sided_tests():
    """A guardrail that fell by ~25 % against a 2 % margin is violated whatever the
    alternative: the two-sided relative CI lies below 0 (the one-sided CI is open there)."""
    rng = np.random.default_rng(29)
    rows = _groups(rng, n=2000, lift=-0.6, metric="m1")
    roles = {"m1": MetricRole(role="guardrail", margin=0.02)}
    for alternative in ("two-sided", "one-sided", "greater"):
        exp = experiment(metric_roles=roles, alternative=alternative)
        out = reduce_experiment(rows, exp, DATE, "r")
        t = next(r for r in out if r["variant"] == "treatment")
        assert t["effect_rel"] < -0.1 and t["decision"] == "guardrail_violated", alternative
        assert t["health"] == "unhealthy" and t["health_reasons"] == ["guardrail_violated:m1"]


def test_analysis_unit_balance_is_welchs_t_on_analysis_units_per_assignment_unit():
    """Per-org user counts (pseudo-metric rows, m = users, d = 1) against scipy's Welch
    test; a 20 % shortfall of users in the treatment's orgs is flagged, balance is not."""
    from cluster_spark.tables import ANALYSIS_UNITS_METRIC

    rng = np.random.default_rng(31)
    for shortfall, flagged in ((0.0, False), (0.2, True)):
        users = {
            "control": rng.poisson(20, 600).astype(float),
            "treatment": rng.poisson(20 * (1 - shortfall), 600).astype(float),
        }
        rows = [staged_row(ANALYSIS_UNITS_METRIC, v, u, np.ones_like(u)) for v, u in users.items()]
        rows += _groups(rng, n=50)
        out = reduce_experiment(rows, experiment(), DATE, "r")
        assert {r["metric"] for r in out} == {"m1"}  # the pseudo-metric is no results row
        t = next(r for r in out if r["variant"] == "treatment")
        welch = sps.ttest_ind(users["treatment"], users["control"], equal_var=False)
        assert t["srm_analysis_p_value"] == pytest.approx(welch.pvalue, rel=1e-9)
        assert t["srm_analysis_flag"] is flagged
        assert ("srm_analysis_units" in t["health_reasons"]) is flagged
