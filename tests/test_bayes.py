"""Issue #29 part 3: Bayesian results (`engine: bayesian`), no Spark.

Oracles: GrowthBook's gbstats 0.8.0 (`EffectBayesianABTest`, run in a venv of its own: it
pins pandas < 2 and numpy 1.x, so it is not in the test lock) on the hand-written org sums
below, and closed forms written by hand. The script that printed the gbstats numbers:

    from gbstats.models.statistics import RatioStatistic, SampleMeanStatistic
    from gbstats.bayesian.tests import EffectBayesianABTest, EffectBayesianConfig, GaussianPrior
    def stat(m, d):
        n = len(m)
        return RatioStatistic(n=n,
            m_statistic=SampleMeanStatistic(n=n, sum=sum(m), sum_squares=sum(x*x for x in m)),
            d_statistic=SampleMeanStatistic(n=n, sum=sum(d), sum_squares=sum(x*x for x in d)),
            m_d_sum_of_products=sum(a*b for a, b in zip(m, d)))
    for cfg in (EffectBayesianConfig(difference_type="relative"),
                EffectBayesianConfig(difference_type="relative",
                    prior_effect=GaussianPrior(mean=0, variance=0.1**2, proper=True)),
                EffectBayesianConfig(difference_type="absolute", inverse=True)):
        r = EffectBayesianABTest(stat(M_C, D_C), stat(M_T, D_T), cfg).compute_result()
        print(r.expected, r.uplift.stddev, r.chance_to_win, r.ci, r.risk)

(gbstats' `risk` is [control's, treatment's].)
"""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from cluster_spark.reducer import reduce_experiment
from cluster_spark.stats import bayes
from cluster_spark.stats.decisions import Decision
from tests.test_reducer import DATE, experiment, staged_row

# revenue and active users of 12 orgs per arm
M_C = [12.0, 30.5, 7.25, 18.0, 40.0, 9.5, 22.0, 15.75, 3.0, 27.5, 11.0, 19.25]
D_C = [4, 9, 3, 6, 12, 3, 7, 5, 1, 8, 4, 6]
M_T = [16.5, 33.0, 9.0, 21.75, 45.5, 14.0, 25.0, 17.5, 6.25, 30.0, 13.5, 24.0]
D_T = [4, 10, 3, 6, 12, 4, 7, 5, 2, 8, 4, 7]

GBSTATS = {  # (mean, sd, chance to win, credible interval, risk control, risk treatment)
    "relative_flat": (
        0.12063859920175092,
        0.03476585694384353,
        0.9997398007911834,
        (0.05249877170014583, 0.18877842670335598),
        0.12064088882995687,
        2.28962820595373e-06,
    ),
    "relative_prior": (
        0.10762976791353046,
        0.03283794701724597,
        0.9994765381714783,
        (0.043268574433493856, 0.17199096139356707),
        0.10763431725511444,
        4.54934158397579e-06,
    ),
    "absolute_inverse_flat": (
        0.3827614379084965,
        0.10420801088889665,
        0.00011983536578741294,
        (0.17851748966570122, 0.5870053861512917),
        3.0205455570737568e-06,
        0.38276445845405355,
    ),
}

PHI2 = 0.9772498680518208  # Φ(2)
PDF2 = 0.05399096651318806  # φ(2)


def _treatment_row(**settings):
    rows = [staged_row("m1", "control", M_C, D_C), staged_row("m1", "treatment", M_T, D_T)]
    exp = experiment(**settings)
    out = reduce_experiment(rows, exp, DATE, "r")
    return next(r for r in out if r["variant"] == "treatment"), out


@pytest.mark.parametrize(
    ("case", "settings"),
    [
        ("relative_flat", {}),
        ("relative_prior", {"bayesian": {"prior_sd": 0.1}}),
        (
            "absolute_inverse_flat",
            {
                "bayesian": {"effect": "absolute", "risk_threshold": 0.01},
                "metric_roles": {"m1": {"direction": "decrease"}},
            },
        ),
    ],
)
def test_posterior_equals_gbstats_on_the_same_org_sums(case, settings):
    row, _ = _treatment_row(engine="bayesian", **settings)
    mean, sd, ctw, (low, high), risk_c, risk_t = GBSTATS[case]
    got = [row[k] for k in ("posterior_mean", "posterior_stderr", "chance_to_win")]
    assert got == pytest.approx([mean, sd, ctw], rel=1e-9)
    assert (row["credible_low"], row["credible_high"]) == pytest.approx((low, high), rel=1e-9)
    # gbstats' truncnorm means lose digits in the far tail: 1e-6 relative there
    assert row["risk_control"] == pytest.approx(risk_c, rel=1e-6)
    assert row["risk_treatment"] == pytest.approx(risk_t, rel=1e-6)
    assert row["engine"] == "bayesian"
    assert all(type(row[k]) is float for k in ("credible_low", "risk_control", "chance_to_win"))
    assert row["posterior_effect"] == ("absolute" if "absolute" in case else "relative")


def test_flat_prior_closed_form_by_hand():
    post = bayes.posterior(0.02, 0.01, "increase", 0.05)
    assert post.chance_to_win == pytest.approx(PHI2, rel=1e-12)
    # E[max(−Δ, 0)] = σφ(μ/σ) − μΦ(−μ/σ); E[max(Δ, 0)] = σφ(μ/σ) + μΦ(μ/σ)
    assert post.risk_treatment == pytest.approx(0.01 * PDF2 - 0.02 * (1 - PHI2), rel=1e-9)
    assert post.risk_control == pytest.approx(0.01 * PDF2 + 0.02 * PHI2, rel=1e-12)
    assert post.risk_control - post.risk_treatment == pytest.approx(0.02, rel=1e-12)  # E[Δ]
    z975 = 1.959963984540054
    assert (post.credible_low, post.credible_high) == pytest.approx(
        (0.02 - z975 * 0.01, 0.02 + z975 * 0.01), rel=1e-12
    )
    # lower is better: the same posterior seen from the other side
    mirror = bayes.posterior(0.02, 0.01, "decrease", 0.05)
    assert mirror.chance_to_win == pytest.approx(1 - PHI2, rel=1e-12)
    assert (mirror.risk_treatment, mirror.risk_control) == (post.risk_control, post.risk_treatment)
    assert bayes.posterior(None, 0.01, "increase", 0.05) is None
    assert bayes.posterior(0.02, 0.0, "increase", 0.05) is None


def test_proper_prior_shrinks_by_hand():
    # s = τ = 0.01: precision 2/0.01², σ = 0.01/√2, μ = 0.02/2 (+ 0.004/2 from m₀ = 0.004)
    post = bayes.posterior(0.02, 0.01, "increase", 0.05, prior_mean=0.004, prior_sd=0.01)
    assert post.stderr == pytest.approx(0.01 / np.sqrt(2), rel=1e-12)
    assert post.mean == pytest.approx(0.012, rel=1e-12)


def test_decisions_by_hand():
    win = bayes.posterior(0.02, 0.01, "increase", 0.05)  # P = 97.7 %, risk 8.5e-5
    assert bayes.effect_decision(win, 0.95, 0.0025) == Decision.WIN
    assert bayes.effect_decision(win, 0.99, 0.0025) == Decision.INCONCLUSIVE  # not sure enough
    assert bayes.effect_decision(win, 0.95, 5e-5) == Decision.INCONCLUSIVE  # too risky
    loss = bayes.posterior(-0.02, 0.01, "increase", 0.05)
    assert bayes.effect_decision(loss, 0.95, 0.0025) == Decision.LOSS
    assert bayes.effect_decision(None, 0.95, 0.0025) == Decision.INCONCLUSIVE
    # guardrail, margin 2 %: P(Δ > −2 %) = Φ(2) at Δ̂ = 0 → ok; Φ(1.5) = 93 % at −0.5 %,
    # harm Φ(0.5) → inconclusive; harm Φ(3) at −3 % → violated
    post = {e: bayes.posterior(e, 0.01, "increase", 0.05) for e in (0.0, -0.005, -0.03)}
    assert bayes.guardrail_decision(post[0.0], 0.02, "increase", 0.95) == Decision.GUARDRAIL_OK
    assert bayes.guardrail_decision(post[-0.005], 0.02, "increase", 0.95) == (
        Decision.GUARDRAIL_INCONCLUSIVE
    )
    assert bayes.guardrail_decision(post[-0.03], 0.02, "increase", 0.95) == (
        Decision.GUARDRAIL_VIOLATED
    )
    up = bayes.posterior(0.03, 0.01, "decrease", 0.05)  # latency +3 %: harm for decrease
    assert bayes.guardrail_decision(up, 0.02, "decrease", 0.95) == Decision.GUARDRAIL_VIOLATED


def _experiment_rows(seed: int, goal_lift: float, guardrail_lift: float):
    """A realistic B2B experiment: 300 orgs per arm with lognormal sizes, revenue per user
    (goal) and sessions per user (guardrail, margin 2 %)."""
    rng = np.random.default_rng(seed)
    rows = []
    for variant, lift_g, lift_s in (("control", 0, 0), ("treatment", goal_lift, guardrail_lift)):
        users = np.ceil(rng.lognormal(2.5, 1.0, 300))
        revenue = rng.gamma(2.0, 5.0 * (1 + lift_g), 300) * users
        sessions = rng.poisson(8.0 * (1 + lift_s) * users)
        rows += [
            staged_row("revenue_per_user", variant, revenue, users),
            staged_row("sessions_per_user", variant, sessions, users),
        ]
    return rows


def _decisions(rows):
    exp = experiment(
        metrics=["revenue_per_user", "sessions_per_user"],
        engine="bayesian",
        metric_roles={"sessions_per_user": {"role": "guardrail", "margin": 0.02}},
    )
    out = reduce_experiment(rows, exp, DATE, "r")
    return {r["metric"]: r for r in out if r["variant"] == "treatment"}


def test_a_broken_guardrail_is_caught_and_its_healthy_twin_is_not():
    """Twin experiments, same seed: revenue +25 % in both; in one, sessions per user fall
    10 % (a broken logging or a real harm). Only that one violates the guardrail."""
    healthy = _decisions(_experiment_rows(11, 0.25, 0.0))
    broken = _decisions(_experiment_rows(11, 0.25, -0.10))
    assert healthy["revenue_per_user"]["decision"] == "win"
    assert healthy["revenue_per_user"]["chance_to_win"] > 0.95
    assert healthy["sessions_per_user"]["decision"] == "guardrail_ok"
    assert broken["revenue_per_user"]["decision"] == "win"
    assert broken["sessions_per_user"]["decision"] == "guardrail_violated"
    assert broken["sessions_per_user"]["chance_to_win"] < 0.05
    assert broken["revenue_per_user"]["recommendation"] == "do not ship"
    # the reason quotes the posterior the decision came from, not the frequentist test
    reason = broken["revenue_per_user"]["recommendation_reasons"][0]
    assert reason.startswith("guardrail sessions_per_user violated: harm is likely (Δ rel ")
    assert "[credible " in reason and "chance to beat control 0.00%" in reason
    assert healthy["revenue_per_user"]["recommendation"] == "ship"


def test_an_aa_experiment_wins_nothing():
    """No effect anywhere: over 40 seeded A/A experiments the goal's chance to beat control
    spreads over (0, 1) and a win (≥ 95 % and risk ≤ 0.25 %) is rare."""
    wins = 0
    chances = []
    for seed in range(40):
        row = _decisions(_experiment_rows(100 + seed, 0.0, 0.0))["revenue_per_user"]
        chances.append(row["chance_to_win"])
        wins += row["decision"] == "win"
    assert wins <= 3
    assert 0.3 < float(np.mean(chances)) < 0.7


def test_frequentist_rows_have_no_posterior():
    row, out = _treatment_row()
    assert row["engine"] == "frequentist" and row["chance_to_win"] is None
    assert all(r["posterior_mean"] is None for r in out)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"engine": "bayesian", "sequential": True, "sequential_n_star": 100}, "sequential"),
        ({"bayesian": {"prior_sd": 0.1}}, "engine: bayesian"),
        ({"engine": "bayesian", "bayesian": {"prior_mean": 0.01}}, "needs prior_sd"),
        ({"engine": "bayesian", "bayesian": {"effect": "absolute"}}, "risk_threshold"),
        ({"engine": "bayesian", "bayesian": {"chance_to_win": 0.4}}, "chance_to_win"),
    ],
)
def test_bayesian_settings_are_validated(settings, message):
    with pytest.raises(ValidationError, match=message):
        experiment(**settings)


def _guardrail_row(shift: float, direction: str, effect: str) -> dict:
    """Control mean exactly 10 over 1,600 units (sd 1), the treatment the same values
    shifted by `shift`; a guardrail with margin 2 %."""
    ones = np.ones(1600)
    control = np.random.default_rng(5).normal(0, 1.0, 1600)
    control += 10.0 - control.mean()
    rows = [
        staged_row("m1", "control", control, ones),
        staged_row("m1", "treatment", control + shift, ones),
    ]
    exp = experiment(
        engine="bayesian",
        bayesian={"effect": effect, "risk_threshold": 0.01},
        metric_roles={"m1": {"role": "guardrail", "direction": direction, "margin": 0.02}},
    )
    out = reduce_experiment(rows, exp, DATE, "r")
    return next(r for r in out if r["variant"] == "treatment")


def test_an_absolute_guardrail_scales_its_margin_by_the_control_mean():
    """Δ = −0.1 (−1 %) with SE ≈ 0.035: within the 2 % margin, i.e. 0.2 in metric units
    (P(Δ > −0.2) ≈ 0.998), so `guardrail_ok`; a margin read as 0.02 metric units would
    have been violated (P(Δ < 0) ≈ 0.998)."""
    from scipy.stats import norm

    row = _guardrail_row(-0.1, "increase", "absolute")
    se = row["posterior_stderr"]
    assert row["posterior_mean"] == pytest.approx(-0.1, rel=1e-9)
    assert norm.sf((-0.2 + 0.1) / se) > 0.99 and norm.cdf(0.1 / se) > 0.99
    assert row["decision"] == "guardrail_ok"
    assert _guardrail_row(-0.1, "increase", "relative")["decision"] == "guardrail_ok"


def test_a_lower_is_better_guardrail_is_harmed_by_an_increase():
    for effect in ("relative", "absolute"):
        harm = _guardrail_row(0.5, "decrease", effect)  # +5 % of a lower-is-better metric
        assert harm["decision"] == "guardrail_violated" and harm["chance_to_win"] < 0.01
        fine = _guardrail_row(-0.5, "decrease", effect)
        assert fine["decision"] == "guardrail_ok" and fine["chance_to_win"] > 0.99


def test_the_engine_does_not_change_the_incremental_state_fingerprint():
    """`engine` and `bayesian` are the reducer's alone: switching them keeps the state."""
    from cluster_spark.config import parse_config
    from tests.helpers import config_dict

    raw = config_dict("/d")
    before = parse_config(raw).fingerprint()
    raw["experiments"][0] |= {"engine": "bayesian", "bayesian": {"prior_sd": 0.1}}
    assert parse_config(raw).fingerprint() == before
    raw["experiments"][0]["alpha"] = 0.1  # any other key still counts
    assert parse_config(raw).fingerprint() != before
