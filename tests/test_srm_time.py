"""Issue #26 item 1: the anytime-valid sequential SRM test (Lindon & Malek 2020) against
hand values and an independent unit-by-unit implementation, its false-alarm rate over 14
daily looks by an A/A simulation, and the per-day rule `srm_over_time` on hand counts."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from cluster_spark.stats.srm import (
    log_bayes_factor,
    off_arms,
    sequential_p_values,
    srm_over_time,
)


def _polya_log_bf(sequence: list[int], theta: list[float], concentration: float) -> list[float]:
    """Independent reference: the mixture likelihood ratio built one unit at a time, each
    unit's Dirichlet-multinomial predictive (a_k + n_k)/(A + t) (Pólya urn) over its null
    probability θ_k. Returns log BF after each unit."""
    a = [concentration * t for t in theta]
    seen = [0] * len(theta)
    log_bf, out = 0.0, []
    for t, k in enumerate(sequence):
        log_bf += math.log((a[k] + seen[k]) / (sum(a) + t)) - math.log(theta[k])
        seen[k] += 1
        out.append(log_bf)
    return out


@pytest.mark.parametrize(
    ("counts", "theta", "concentration", "bf"),
    [
        # a = (1, 1), uniform prior on the share: BF = B(1 + n1, 1 + n2) · 2^N
        ((1, 0), (0.5, 0.5), 2, Fraction(1)),  # B(2,1) = 1/2, × 2
        ((2, 0), (0.5, 0.5), 2, Fraction(4, 3)),  # B(3,1) = 1/3, × 4
        ((1, 1), (0.5, 0.5), 2, Fraction(2, 3)),  # B(2,2) = 1/6, × 4
        ((3, 0), (0.5, 0.5), 2, Fraction(2)),  # B(4,1) = 1/4, × 8
        ((3, 3), (0.5, 0.5), 2, Fraction(64, 140)),  # B(4,4) = 36/5040, × 64
        # a = (4, 3, 3): one unit's predictive is θ0 itself, so BF = 1
        ((1, 0, 0), (0.4, 0.3, 0.3), 10, Fraction(1)),
        ((0, 0, 1), (0.4, 0.3, 0.3), 10, Fraction(1)),
        ((2, 0, 0), (0.4, 0.3, 0.3), 10, Fraction(25, 22)),  # (4·5)/(10·11) / 0.4²
        ((1, 1, 0), (0.4, 0.3, 0.3), 10, Fraction(10, 11)),  # (4·3)/(10·11) / (0.4·0.3)
    ],
)
def test_bayes_factor_hand_values(counts, theta, concentration, bf):
    got = math.exp(log_bayes_factor(counts, theta, concentration))
    assert got == pytest.approx(float(bf), rel=1e-12)


def test_batch_closed_form_equals_unit_by_unit_updates():
    rng = np.random.default_rng(26)
    theta = [0.5, 0.2, 0.3]
    sequence = rng.choice(3, size=60, p=[0.6, 0.1, 0.3]).tolist()
    for concentration in (1.0, 10.0, 100.0):
        reference = _polya_log_bf(sequence, theta, concentration)
        for t in range(1, len(sequence) + 1):
            counts = [sequence[:t].count(k) for k in range(3)]
            got = log_bayes_factor(counts, theta, concentration)
            assert got == pytest.approx(reference[t - 1], rel=1e-10, abs=1e-10)


def test_sequential_p_value_is_the_running_minimum_of_one_over_bf():
    # a = (1, 1): BF after (2,0) is 4/3, after (3,0) is 2, after (3,3) is 64/140 < 1
    p = sequential_p_values([(2, 0), (1, 0), (0, 3)], (0.5, 0.5), concentration=2)
    assert p == pytest.approx([3 / 4, 1 / 2, 1 / 2], rel=1e-12)
    # shares are normalized: weights 40/30/30 are the split 0.4/0.3/0.3
    assert sequential_p_values([(2, 0, 0)], (40, 30, 30), 10) == pytest.approx([22 / 25])


def test_false_alarm_rate_over_14_daily_looks_stays_below_alpha():
    """A/A: 2,000 experiments, 14 days of ~300 first exposures each drawn from the
    configured split 40/30/30; a false alarm is the sequential p-value below α at any of
    the 14 looks. Ville's inequality bounds the rate by α (a χ² looked at daily would
    exceed it several times)."""
    rng = np.random.default_rng(20260306)
    theta, alpha, reps = (0.4, 0.3, 0.3), 0.05, 2000
    alarms = 0
    naive = 0
    for _ in range(reps):
        days = rng.multinomial(rng.poisson(300, size=14), theta)
        alarms += min(sequential_p_values(days.tolist(), theta)) < alpha
        cumulative = days.cumsum(axis=0)
        naive += any(_chi2_p(c, theta) < alpha for c in cumulative)  # peeking χ², for contrast
    assert alarms / reps <= alpha
    assert naive / reps > alpha  # the simulation can see an inflated rate


def _chi2_p(counts, theta):
    from scipy import stats

    n = sum(counts)
    return stats.chisquare(counts, [n * t for t in theta]).pvalue


def test_the_daily_rule_has_power_against_a_last_day_drop_and_stays_quiet_on_aa():
    """The health rule at the default threshold 0.001, looked at once after 14 days of
    ~1,000 first exposures a day: a 60 % loss of one arm's first exposures on the last day
    is flagged on that day, naming that arm, in most experiments; A/A experiments are
    flagged in at most 2·threshold of them (sequential part ≤ threshold, Bonferroni per-day
    χ² ≤ threshold)."""
    rng = np.random.default_rng(7)
    weights = {"control": 40.0, "b": 30.0, "c": 30.0}
    theta = [0.4, 0.3, 0.3]
    hits, false = 0, 0
    reps = 1000
    for _ in range(reps):
        days = rng.multinomial(rng.poisson(1000, size=14), theta)
        daily = {
            f"2026-03-{i + 1:02d}": dict(zip(weights, c.tolist(), strict=True))
            for i, c in enumerate(days)
        }
        false += srm_over_time(daily, weights, 0.001).flagged_day is not None
        last = daily["2026-03-14"]
        last["b"] = int(rng.binomial(last["b"], 0.4))
        got = srm_over_time(daily, weights, 0.001)
        hits += got.flagged_day == "2026-03-14" and got.arms == ("b",)
    assert false / reps <= 2 * 0.001
    assert hits / reps >= 0.95


# The planted scenario of tests/test_srm_pipeline.py, by hand: 40/30/30, 300 units a day
# assigned in exact proportion (120/90/90) for 7 days; on the last day arm b keeps 36 of 90.
WEIGHTS = {"control": 40.0, "treatment_a": 30.0, "treatment_b": 30.0}
DAYS = [f"2026-03-0{d}" for d in range(2, 9)]


def _daily(last_b: int) -> dict:
    out = {d: {"control": 120, "treatment_a": 90, "treatment_b": 90} for d in DAYS}
    out[DAYS[-1]] = {"control": 120, "treatment_a": 90, "treatment_b": last_b}
    return out


def test_a_last_day_drop_is_flagged_on_that_day_naming_the_arm():
    got = srm_over_time(_daily(36), WEIGHTS, 0.001)
    assert got.flagged_day == "2026-03-08"
    assert got.arms == ("treatment_b",)
    last = got.days[-1]
    # N = 246, expected 98.4 / 73.8 / 73.8: χ² = 21.6²/98.4 + 16.2²/73.8 + 37.8²/73.8
    assert last.chi2 == pytest.approx(466.56 / 98.4 + 262.44 / 73.8 + 1428.84 / 73.8)
    assert last.p_value == pytest.approx(math.exp(-last.chi2 / 2))  # χ²(2) survival
    assert last.p_value < 0.001 / 7
    assert [d.chi2 for d in got.days[:-1]] == [0.0] * 6


def test_the_twin_without_the_drop_is_not_flagged():
    got = srm_over_time(_daily(90), WEIGHTS, 0.001)
    assert got.flagged_day is None and got.arms == ()
    # exact proportions: BF < 1 at every look (the mixture pays for its spread), so p = 1
    assert got.p_sequential == 1.0


def test_off_arms_is_the_arm_without_which_the_rest_fit():
    # day 8: without treatment_b, 120 vs 90 is exactly 40:30 (χ² 0); without control,
    # 90 vs 36 is far from 1:1; without treatment_a, 120 vs 36 is far from 4:3
    day = {"control": 120, "treatment_a": 90, "treatment_b": 36}
    assert off_arms(day, WEIGHTS, 0.001) == ("treatment_b",)
    # an arm with extra units is named the same way
    assert off_arms({"control": 300, "treatment_a": 90, "treatment_b": 90}, WEIGHTS, 0.001) == (
        "control",
    )
    # two arms cannot be told apart: both are named
    assert off_arms({"control": 100, "treatment": 40}, {"control": 1, "treatment": 1}, 0.001) == (
        "control",
        "treatment",
    )


def test_small_days_get_no_chi2_but_count_in_the_sequential_test():
    daily = {"2026-03-02": {"control": 2, "treatment_a": 1, "treatment_b": 0}}
    (day,) = srm_over_time(daily, WEIGHTS, 0.001).days
    assert day.chi2 is None and day.p_value is None
    # a = (40, 30, 30), n = (2, 1, 0): BF = (40·41·30)/(100·101·102) / (0.4²·0.3)
    bf = (40 * 41 * 30) / (100 * 101 * 102) / (0.4**2 * 0.3)
    assert day.p_sequential == pytest.approx(min(1.0, 1 / bf))
