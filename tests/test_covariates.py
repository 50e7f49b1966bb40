"""Regression adjustment with several covariates (#29 part 1) through Spark staging, Delta
and the reducer, against statsmodels on the per-org frame built here with numpy: WLS of the
orgs' linearized revenue on their linearized pre-period covariates (θ, the adjusted
effect), and HC2 / CR0 standard errors of the residualized outcome.

One experiment of 120 orgs (1 to 25 users) with two metrics: revenue per user and sessions
per user; `covariates: [sessions_per_user]`, so revenue per user is adjusted by its own
pre-period and by sessions per user before exposure, which predicts it better."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math

import numpy as np
import pytest
import statsmodels.api as sm
from scipy import stats as sps

from cluster_spark import pipeline
from cluster_spark.config import parse_config
from cluster_spark.errors import ConfigError
from cluster_spark.reducer import merge_groups
from cluster_spark.stats.comoments import CovariateMoments
from cluster_spark.stats.cuped import CupedStats, _staged_covariates, compare_cuped
from cluster_spark.stats.regression import compare_regression
from cluster_spark.status import CupedStatus
from tests.helpers import ANALYSIS_DATE, EVENT_DDL, EXPOSURE_DDL, T0, config_dict, write_delta

ARMS = ("control", "treatment")
PRE, POST = T0 - dt.timedelta(days=3), T0 + dt.timedelta(hours=6)


@pytest.fixture(scope="module")
def orgs():
    """Per org: arm and per user (sessions before, revenue before, sessions after, revenue
    after). Revenue follows the org's engagement (sessions), which persists over time."""
    rng = np.random.default_rng(2901)
    out = []
    for g in range(120):
        arm = g % 2
        size = int(rng.integers(1, 26))
        engagement = rng.lognormal(1.0, 0.6)
        s_pre = 1 + rng.poisson(engagement, size)
        s_post = 1 + rng.poisson(engagement * rng.lognormal(0.0, 0.2), size)
        r_pre = 3.0 * s_pre * rng.lognormal(0.0, 0.5, size)
        r_post = 3.0 * s_post * rng.lognormal(0.04 * arm, 0.5, size)
        out.append((f"o{g}", ARMS[arm], s_pre, r_pre, s_post, r_post))
    return out


@pytest.fixture(scope="module")
def tables(spark, tmp_path_factory, orgs):
    root = tmp_path_factory.mktemp("covariates")
    exposures = [("e1", org, arm, T0, _plan(org)) for org, arm, *_ in orgs]
    attributes = []
    for org, *_ in orgs:
        g = int(org[1:])
        if g % 7:  # every 7th org has no row: its seats are missing
            text = NOT_A_NUMBER.get(g, str(_seats(org)))
            attributes.append((org, T0 - dt.timedelta(days=30), text))
        attributes.append((org, T0 + dt.timedelta(days=1), "9999"))  # after exposure: ignored
    write_delta(spark, attributes, "org string, updated_at timestamp, seats string", root / "orgs")
    events = []
    for org, _, s_pre, r_pre, s_post, r_post in orgs:
        for i in range(s_pre.size):
            user = f"{org}u{i}"
            for at, sessions, revenue in ((PRE, s_pre[i], r_pre[i]), (POST, s_post[i], r_post[i])):
                events += [(org, user, "session", 1.0, at)] * int(sessions)
                events.append((org, user, "purchase", float(revenue), at))
    write_delta(spark, exposures, EXPOSURE_DDL + ", plan string", root / "exposures")
    write_delta(spark, events, EVENT_DDL, root / "events")
    return root


def _plan(org: str) -> str | None:
    """4 plans by org number (one of them NULL), so `max_levels: 2` pools one into (other)."""
    return ("team", "team", "business", "enterprise", None, "team", "business")[int(org[1:]) % 7]


def _seats(org: str) -> int:
    return 5 + (int(org[1:]) * 37) % 90


#: Seats that are not a number: missing, as NULL is.
NOT_A_NUMBER = {3: "NaN", 10: "Infinity", 17: "lots"}


def _seats_missing(org: str) -> bool:
    return int(org[1:]) % 7 == 0 or int(org[1:]) in NOT_A_NUMBER


ATTRIBUTES = [
    "sessions_per_user",
    {"attribute": "plan", "max_levels": 2},
    {"attribute": "seats", "type": "numeric"},
]


def _config(root, out: str, covariates: list | None, **extra):
    experiment = {
        "id": "e1",
        "assignment_unit": "org_id",
        "analysis_unit": "user_id",
        "control": "control",
        "variants": list(ARMS),
        "start": T0.date().isoformat(),
        "metrics": ["revenue_per_user", "sessions_per_user"],
        "cuped_lookback_days": 7,
        **extra,
    }
    if covariates is not None:
        experiment["covariates"] = covariates
    raw = config_dict(root, [experiment])
    raw["exposures"]["dimensions"] = ["plan"]
    raw["unit_attributes"] = {
        "orgs": {
            "path": f"{root}/orgs",
            "timestamp": "updated_at",
            "ids": {"org_id": "org"},
            "dimensions": ["seats"],
        }
    }
    raw["metrics"]["sessions_per_user"] = {
        "kind": "ratio",
        "numerator": {
            "source": "events",
            "agg": "count",
            "filter": [{"column": "event", "op": "eq", "value": "session"}],
        },
        "denominator": {"source": "events", "agg": "count_distinct", "column": "user_id"},
    }
    raw["output"] = {k: f"{root}/{out}/{k}" for k in ("staging", "results", "diagnostics")}
    return raw


@pytest.fixture(scope="module")
def runs(spark, tables):
    out = {}
    for name, covariates in (
        ("covariates", ["sessions_per_user"]),
        ("cuped", None),
        ("attributes", ATTRIBUTES),
    ):
        rows = pipeline.run(spark, parse_config(_config(tables, name, covariates)), ANALYSIS_DATE)
        out[name] = {(r["metric"], r["variant"]): r for r in rows if r["dimension"] is None}
    return out


def _per_org(orgs):
    """Per arm: per-org columns (m, d, x, y, xs, ys): revenue and users after exposure,
    revenue and users before, sessions and users before."""
    out = {}
    for arm in ARMS:
        chosen = [
            (r_post.sum(), r_post.size, r_pre.sum(), r_pre.size, s_pre.sum(), s_pre.size)
            for _, a, s_pre, r_pre, _, r_post in orgs
            if a == arm
        ]
        out[arm] = np.array(chosen, dtype=float).T
    return out


def _linearized(num, den):
    """The influence values of the ratio ΣM/ΣD at each org: R + (m − R d)/d̄ (mean R)."""
    ratio = num.sum() / den.sum()
    return ratio + (num - ratio * den) / den.mean()


def _attribute_columns(orgs, arm):
    """Per org of the arm: indicators of plan business, (other) (= enterprise) and (null)
    (team, the largest, is the reference), seats (0 when missing) and a missing indicator."""
    chosen = [org for org, a, *_ in orgs if a == arm]
    plan = [_plan(org) for org in chosen]
    seats = [0.0 if _seats_missing(org) else float(_seats(org)) for org in chosen]
    return np.column_stack(
        [
            [p == "business" for p in plan],
            [p == "enterprise" for p in plan],
            [p is None for p in plan],
            seats,
            [_seats_missing(org) for org in chosen],
        ]
    ).astype(float)


def _oracle(orgs, attributes: bool = False):
    """(θ, effect, HC2 SE, CR0 SE, per-arm residual variances, n) by statsmodels on the
    per-org frame; `attributes`: plan and seats too."""
    cols = _per_org(orgs)
    ell, cov, arm, weight = [], [], [], []
    for i, a in enumerate(ARMS):
        m, d, x, y, xs, ys = cols[a]
        n = m.size
        ell.append(_linearized(m, d))
        extra = [_attribute_columns(orgs, a)] if attributes else []
        cov.append(np.column_stack([_linearized(x, y), _linearized(xs, ys), *extra]))
        arm.append(np.full(n, float(i)))
        weight.append(np.full(n, 1.0 / (n * (n - 1))))  # Σ_g V/n_g: the 1/n-pooled θ
    ell, cov, arm, weight = map(np.concatenate, (ell, cov, arm, weight))
    design = np.column_stack([np.ones_like(arm), arm, cov])
    wls = sm.WLS(ell, design, weights=weight).fit()
    theta, effect = wls.params[2:], wls.params[1]
    resid = ell - cov @ theta  # the adjusted outcome, θ fixed
    two = sm.add_constant(arm)
    hc2 = sm.OLS(resid, two).fit(cov_type="HC2").bse[1]
    cr0 = (
        sm.OLS(resid, two)
        .fit(cov_type="cluster", cov_kwds={"groups": np.arange(arm.size), "use_correction": False})
        .bse[1]
    )
    parts = [(np.var(resid[arm == i], ddof=1), int((arm == i).sum())) for i in (0, 1)]
    return theta, effect, hc2, cr0, parts, cols


def test_two_covariates_equal_weighted_least_squares_with_hc2_errors(runs, orgs):
    theta, effect, hc2, cr0, parts, cols = _oracle(orgs)
    row = runs["covariates"][("revenue_per_user", "treatment")]
    assert row["cuped_applied"] and row["cuped_status"] == CupedStatus.APPLIED
    assert row["variance_method"] == "delta"  # several covariates: no jackknife
    assert row["cuped_theta"] == pytest.approx(theta[0], rel=1e-9)
    assert row["effect_abs"] == pytest.approx(effect, rel=1e-9)
    # HC2 of a difference in means is the Neyman (Welch) variance: Σ s²/n per arm
    assert row["effect_abs_stderr"] == pytest.approx(hc2, rel=1e-9)
    # CR0 (each org its own cluster, no small-sample factor) divides by n, not n − 1
    (v_c, n_c), (v_t, n_t) = parts
    cr0_here = math.sqrt(v_c * (n_c - 1) / n_c / n_c + v_t * (n_t - 1) / n_t / n_t)
    assert cr0 == pytest.approx(cr0_here, rel=1e-12)
    a, b = v_t / n_t, v_c / n_c
    df = (a + b) ** 2 / (a * a / (n_t - 1) + b * b / (n_c - 1))
    assert row["df"] == pytest.approx(df, rel=1e-9)
    assert row["p_value"] == pytest.approx(2 * sps.t.sf(abs(effect) / hc2, df), rel=1e-7)
    # variance reduction against the unadjusted delta method: Σ Var(ℓ)/n per arm
    unadjusted = sum(
        np.var(_linearized(*cols[arm][:2]), ddof=1) / n
        for arm, n in (("treatment", n_t), ("control", n_c))
    )
    assert row["variance_reduction"] == pytest.approx(1 - hc2**2 / unadjusted, rel=1e-9)
    # relative: Δ_adj/|R_C| with the delta method over both arms, θ fixed
    m, d = cols["control"][:2]
    r_c = m.sum() / d.sum()
    assert row["effect_rel"] == pytest.approx(effect / r_c, rel=1e-9)
    assert row["mean_adjusted"] == pytest.approx(r_c + effect, rel=1e-12)


def test_unit_attributes_as_covariates_equal_weighted_least_squares(spark, tables, runs, orgs):
    """Plan (categorical, at exposure; 2 levels kept, one pooled into (other), NULL its own
    level) and seats (numeric, from the latest attribute row before exposure: the rows after
    it are ignored; missing for every 7th org and where it is NaN, Infinity or text) beside
    two pre-period metrics."""
    theta, effect, hc2, *_ = _oracle(orgs, attributes=True)
    assert theta.size == 7 and abs(theta[5]) > 0  # seats
    row = runs["attributes"][("revenue_per_user", "treatment")]
    assert row["cuped_applied"] and row["variance_method"] == "delta"
    assert row["cuped_theta"] == pytest.approx(theta[0], rel=1e-9)
    assert row["effect_abs"] == pytest.approx(effect, rel=1e-9)
    assert row["effect_abs_stderr"] == pytest.approx(hc2, rel=1e-9)
    # sessions per user is adjusted by its own pre-period and the attributes
    sessions = runs["attributes"][("sessions_per_user", "treatment")]
    plain = runs["cuped"][("sessions_per_user", "treatment")]
    assert sessions["cuped_applied"] and sessions["variance_method"] == "delta"
    assert sessions["effect_abs"] != pytest.approx(plain["effect_abs"], rel=1e-9)
    # the units whose seats are not a number are counted, not silently zero
    diagnostics = spark.read.format("delta").load(f"{tables}/attributes/diagnostics")
    (missing,) = diagnostics.where("check = 'covariate_missing:seats'").collect()
    # 18 orgs (0, 7, …, 119) with no row before exposure, and NaN, Infinity, "lots"
    assert missing.value == sum(_seats_missing(org) for org, *_ in orgs) == 18 + 3


def test_a_second_covariate_shrinks_the_interval_where_it_predicts(runs):
    """Sessions before exposure predict revenue beyond revenue's own pre-period here: the
    adjusted SE is smaller than CUPED's, and the estimates differ."""
    several = runs["covariates"][("revenue_per_user", "treatment")]
    cuped = runs["cuped"][("revenue_per_user", "treatment")]
    assert cuped["cuped_applied"] and cuped["variance_method"] == "jackknife"  # 120 orgs
    assert several["variance_reduction"] > cuped["variance_reduction"] + 0.05
    assert several["effect_abs"] != pytest.approx(cuped["effect_abs"], rel=1e-6)
    # a metric whose only covariate is itself is plain CUPED, numbers and variance alike
    for arm in ARMS:
        mine, plain = (runs[k][("sessions_per_user", arm)] for k in ("covariates", "cuped"))
        for col in ("effect_abs", "effect_abs_stderr", "cuped_theta", "stderr", "mean"):
            assert mine[col] == plain[col], (arm, col)


def test_one_covariate_is_cuped_exactly(spark, runs, tables):
    """compare_regression on the staged moments of revenue's own pre-period alone equals
    compare_cuped: the same estimator with K = 1."""
    staged = [
        r.asDict()
        for r in spark.read.format("delta").load(f"{tables}/covariates/staging").collect()
        if r["metric"] == "revenue_per_user" and r["dimension"] is None and not r["winsorized"]
    ]
    groups = merge_groups(staged)
    t, c = (groups[("revenue_per_user", arm, False)] for arm in ("treatment", "control"))
    assert len(t.covariates.means) == 6  # (m, d, x, y) and sessions' (x, y)

    def own(s: CupedStats) -> CupedStats:
        mom = s.covariates
        keep = [v for (i, j), v in zip(_pairs(6), mom.css, strict=True) if j < 4]
        return dataclasses.replace(
            s, jackknife=None, covariates=CovariateMoments(mom.n, mom.means[:4], tuple(keep))
        )

    one = compare_regression(own(t), own(c))
    cuped = compare_cuped(
        dataclasses.replace(t, jackknife=None), dataclasses.replace(c, jackknife=None)
    )
    assert one.cuped_status == cuped.cuped_status == CupedStatus.APPLIED
    for col in (
        "effect_abs",
        "effect_abs_stderr",
        "effect_rel",
        "effect_rel_stderr",
        "theta",
        "df",
    ):
        assert getattr(one, col) == pytest.approx(getattr(cuped, col), rel=1e-12), col
    assert one.fieller.var_a == pytest.approx(cuped.fieller.var_a, rel=1e-12)
    assert one.fieller.cov == pytest.approx(cuped.fieller.cov, rel=1e-12)


def _pairs(q: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(q) for j in range(i, q)]


def test_staged_covariates_merge_and_read_padded_rows():
    rng = np.random.default_rng(7)
    data = rng.lognormal(0, 1, (6, 50))
    whole = CovariateMoments.from_values(data)
    merged = CovariateMoments.from_values(data[:, :17]) + CovariateMoments.from_values(data[:, 17:])
    assert merged.n == 50
    np.testing.assert_allclose(merged.means, whole.means, rtol=1e-13)
    np.testing.assert_allclose(merged.css, whole.css, rtol=1e-11)
    # a metric with 1 covariate in a pass staged for 2: 4 of 6 means, the 4 × 4 block
    means = [1.0, 2.0, 3.0, 4.0, None, None]
    css = [float(10 * i + j) if j < 4 else None for i, j in _pairs(6)]
    got = _staged_covariates(9, means, css)
    assert got.means == (1.0, 2.0, 3.0, 4.0)
    assert got.css == (0.0, 1.0, 2.0, 3.0, 11.0, 12.0, 13.0, 22.0, 23.0, 33.0)
    assert _staged_covariates(0, [None] * 6, [None] * 21) is None


def test_a_covariate_undefined_in_a_group_is_left_out():
    """A covariate with no pre-period denominator in one arm (ΣY_k = 0), or constant there,
    gets θ_k = 0 and the rest adjusts: CUPED on whichever pre-period is left."""
    rng = np.random.default_rng(3)

    def group(zero_sessions: bool = False, zero_own: bool = False):
        m, d = rng.lognormal(0, 1, (2, 40))
        x, y = m * rng.lognormal(0, 0.3, 40), d.copy()
        xs, ys = m * rng.lognormal(0, 0.5, 40), d * rng.lognormal(0, 0.1, 40)
        if zero_sessions:
            xs, ys = np.zeros(40), np.zeros(40)
        if zero_own:
            x, y = np.full(40, 2.0), np.ones(40)  # constant: no variance
        own = CupedStats.from_values(m, d, x, y)
        data = [m, d, x, y, xs, ys]
        return own, CupedStats.from_values(m, d, xs, ys), CovariateMoments.from_values(data)

    def with_covariates(g):
        return dataclasses.replace(g[0], covariates=g[2])

    t, c = group(), group(zero_sessions=True)
    out = compare_regression(with_covariates(t), with_covariates(c), pairs=1)
    cuped = compare_cuped(t[0], c[0])
    assert out.cuped_status == cuped.cuped_status == CupedStatus.APPLIED
    assert out.thetas[1] == 0.0
    for col in ("effect_abs", "effect_abs_stderr", "effect_rel_stderr", "theta"):
        assert getattr(out, col) == pytest.approx(getattr(cuped, col), rel=1e-12), col
    # the own pre-period constant in one arm: sessions alone adjust, as CUPED on them would
    t, c = group(zero_own=True), group()
    out = compare_regression(with_covariates(t), with_covariates(c), pairs=1)
    by_sessions = compare_cuped(t[1], c[1])
    assert out.thetas[0] == 0.0 and out.adjusted and by_sessions.adjusted
    for col in ("effect_abs", "effect_abs_stderr", "df"):
        assert getattr(out, col) == pytest.approx(getattr(by_sessions, col), rel=1e-12), col
    assert out.thetas[1] == pytest.approx(by_sessions.theta, rel=1e-12)
    # nothing left: not adjusted
    lost = compare_regression(
        with_covariates(group(zero_sessions=True, zero_own=True)), with_covariates(group()), pairs=1
    )
    assert lost.cuped_status == CupedStatus.NO_PRE_DATA and not lost.adjusted


@pytest.mark.parametrize(
    ("covariates", "lookback", "message"),
    [
        (["sessions_per_user"], None, "need cuped_lookback_days"),
        (["sessions"], 7, "not metrics of the experiment"),
        (["sessions_per_user", "sessions_per_user"], 7, r"lists \['sessions_per_user'\] twice"),
        ([{"attribute": "plan", "max_levels": 60}], 7, "at most 40"),
    ],
)
def test_covariate_config_errors_name_the_rule(tmp_path, covariates, lookback, message):
    raw = _config(tmp_path, "x", covariates)
    raw["experiments"][0]["cuped_lookback_days"] = lookback
    if lookback is None:
        del raw["experiments"][0]["cuped_lookback_days"]
    with pytest.raises(ConfigError, match=message) as err:
        parse_config(raw)
    assert "covariates" in str(err.value)


def test_an_unknown_attribute_covariate_names_where_it_was_looked_for(tmp_path):
    raw = _config(tmp_path, "x", [{"attribute": "region"}])
    with pytest.raises(ConfigError, match=r"covariates: 'region' must come from exactly one"):
        parse_config(raw)
    raw = _config(tmp_path, "x", [{"attribute": "plan", "type": "ordinal"}])
    with pytest.raises(ConfigError, match="categorical"):
        parse_config(raw)
    raw = _config(tmp_path, "x", [{"attribute": "seats", "type": "numeric", "max_levels": 3}])
    with pytest.raises(ConfigError, match="max_levels applies to type: categorical") as err:
        parse_config(raw)
    assert "valid string" not in str(err.value)  # not also judged as a metric's name


def test_a_quantile_covariate_is_a_config_error(tmp_path):
    raw = _config(tmp_path, "x", ["p90"])
    raw["metrics"]["p90"] = {
        "kind": "quantile",
        "quantile": 0.9,
        "value": {"source": "events", "column": "value"},
    }
    raw["experiments"][0]["metrics"].append("p90")
    with pytest.raises(ConfigError, match=r"covariates: 'p90' is a quantile metric"):
        parse_config(raw)


def test_covariates_do_not_change_the_incremental_state_fingerprint(tmp_path):
    """The state holds first-level event aggregates; covariates are chosen after them."""
    before = parse_config(_config(tmp_path, "x", None)).fingerprint()
    assert parse_config(_config(tmp_path, "x", ["sessions_per_user"])).fingerprint() == before
    longer = _config(tmp_path, "x", ["sessions_per_user"], cuped_lookback_days=14)
    assert parse_config(longer).fingerprint() != before


def test_post_stratification_on_one_categorical_by_hand(spark, tmp_path):
    """No pre-period: purchases per org adjusted by the org's plan alone (indicator of B;
    A and B tie at 3 orgs, so A, first by name, is the reference). By hand:
    control m = (1, 3, 10), z = (0, 0, 1); treatment m = (2, 11, 13), z = (0, 1, 1).
    Var m: 201/9 and 103/3; Cov(m, z): 8/3 and 10/3; Var z: 1/3 in both (n − 1).
    θ = (10/3 + 8/3)/3 ÷ (2/3)/3 = 9; Δ = (26/3 − 14/3) − 9·(2/3 − 1/3) = 1;
    a = (103/3 − 2·9·10/3 + 81/3)/3 = 4/9, b = (201/9 − 2·9·8/3 + 81/3)/3 = 4/9;
    SE = √(8/9); ν = (8/9)²/((4/9)²/2 · 2) = 4; reduction 1 − (8/9)/(103/9 + 201/27) = 81/85.
    (The classic post-stratified estimate Σ_k w_k(ȳ_T,k − ȳ_C,k) is also 1 here: strata A
    0 and B 2, weighted 1/2 each.)"""
    orgs = {
        "c1": ("control", "A", 1),
        "c2": ("control", "A", 3),
        "c3": ("control", "B", 10),
        "t1": ("treatment", "A", 2),
        "t2": ("treatment", "B", 11),
        "t3": ("treatment", "B", 13),
    }
    exposures = [("e1", org, arm, T0, plan) for org, (arm, plan, _) in orgs.items()]
    events = [
        (org, f"{org}u", "purchase", 1.0, T0 + dt.timedelta(hours=1 + i))
        for org, (_, _, count) in orgs.items()
        for i in range(count)
    ]
    write_delta(spark, exposures, EXPOSURE_DDL + ", plan string", tmp_path / "exposures")
    write_delta(spark, events, EVENT_DDL, tmp_path / "events")
    raw = config_dict(tmp_path)
    raw["exposures"]["dimensions"] = ["plan"]
    raw["experiments"][0] |= {
        "metrics": ["purchases_per_org"],
        "covariates": [{"attribute": "plan"}],
    }
    rows = pipeline.run(spark, parse_config(raw), ANALYSIS_DATE)
    (t,) = [r for r in rows if r["variant"] == "treatment" and r["dimension"] is None]
    assert t["cuped_applied"] and t["cuped_status"] == CupedStatus.APPLIED
    assert t["cuped_theta"] is None  # no own pre-period
    assert t["effect_abs"] == pytest.approx(1.0, rel=1e-12)
    assert t["effect_abs_stderr"] == pytest.approx(math.sqrt(8 / 9), rel=1e-12)
    assert t["df"] == pytest.approx(4.0, rel=1e-12)
    assert t["variance_reduction"] == pytest.approx(81 / 85, rel=1e-12)
    assert t["effect_rel"] == pytest.approx(1 / (14 / 3), rel=1e-12)
    assert t["bias_p_value"] is None  # the pre-exposure check needs a pre-period
