"""Few clusters (#29 part 2), built: `variance: jackknife | auto | delta` through Spark
staging, Delta and the reducer, against the leave-one-cluster-out jackknife computed here
with numpy from the orgs' own values (R_(−g): the arm's ratio without org g), and the
delta method's variance (sample variance of the linearized values) for the twin run.

One experiment of 40 orgs whose sizes are heavy-tailed (one org holds a fifth of an arm's
users), with CUPED on the same metric's pre-period."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math

import numpy as np
import pytest
from scipy import stats as sps

from cluster_spark import pipeline
from cluster_spark.config import parse_config
from cluster_spark.reducer import merge_groups, variance_methods
from cluster_spark.stats.cuped import CupedStats, compare_cuped
from cluster_spark.status import CupedStatus
from tests.helpers import ANALYSIS_DATE, EVENT_DDL, EXPOSURE_DDL, T0, config_dict, write_delta

ARMS = ("control", "treatment")


@pytest.fixture(scope="module")
def orgs():
    """Per org: arm, users' in-experiment revenue and pre-period revenue."""
    rng = np.random.default_rng(2902)
    sizes = np.array([1, 1, 2, 2, 3, 3, 4, 5, 6, 8, 10, 14, 20, 30, 45, 70] * 2 + [2, 3, 1, 2] * 2)
    arms = np.arange(sizes.size) % 2
    out = []
    for g, (size, arm) in enumerate(zip(sizes, arms, strict=True)):
        level = rng.lognormal(1.0, 0.8)
        pre = level * rng.lognormal(0.0, 0.5, size)
        post = pre * rng.lognormal(0.05 * arm, 0.3, size)
        out.append((f"o{g}", ARMS[arm], pre, post))
    return out


def _plan(org: str) -> str:
    """A slice of 10 orgs per arm: orgs 0, 1, 4, 5, ... are on `team`, the rest `enterprise`."""
    return "team" if int(org[1:]) % 4 < 2 else "enterprise"


@pytest.fixture(scope="module")
def tables(spark, tmp_path_factory, orgs):
    root = tmp_path_factory.mktemp("jackknife")
    exposures = [("e1", org, arm, T0, _plan(org)) for org, arm, _, _ in orgs]
    events = []
    for org, _, pre, post in orgs:
        for i, (x, y) in enumerate(zip(pre, post, strict=True)):
            events.append((org, f"{org}u{i}", "purchase", float(x), T0 - dt.timedelta(days=2)))
            events.append((org, f"{org}u{i}", "purchase", float(y), T0 + dt.timedelta(hours=5)))
    write_delta(spark, exposures, EXPOSURE_DDL + ", plan string", root / "exposures")
    write_delta(spark, events, EVENT_DDL, root / "events")
    return root


def _run(spark, root, variance: str | None, out: str):
    experiment = {
        "id": "e1",
        "assignment_unit": "org_id",
        "analysis_unit": "user_id",
        "control": "control",
        "variants": list(ARMS),
        "start": T0.date().isoformat(),
        "metrics": ["revenue_per_user"],
        "cuped_lookback_days": 7,
        "dimensions": ["plan"],
    }
    if variance is not None:
        experiment["variance"] = variance
    raw = config_dict(root, [experiment])
    raw["exposures"]["dimensions"] = ["plan"]
    raw["output"] = {k: f"{root}/{out}/{k}" for k in ("staging", "results", "diagnostics")}
    rows = pipeline.run(spark, parse_config(raw), ANALYSIS_DATE)
    return {
        (r["variant"] if r["dimension"] is None else (r["slice"], r["variant"])): r
        for r in rows
        if r["metric"] == "revenue_per_user"
    }


def _arm(orgs, arm, plan=None):
    """(m, d, x, y) per org of one arm (and plan): revenue and users, in the experiment and
    before."""
    chosen = [
        (post.sum(), post.size, pre.sum(), pre.size)
        for org, a, pre, post in orgs
        if a == arm and plan in (None, _plan(org))
    ]
    return [np.array(v, dtype=float) for v in zip(*chosen, strict=True)]


def _loo(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """R_(−g) − R for every org g: the arm's ratio without the org, minus the arm's."""
    return (num.sum() - num) / (den.sum() - den) - num.sum() / den.sum()


def _delta_var(num: np.ndarray, den: np.ndarray) -> float:
    """The delta method's Var R: the sample variance of (m − R d)/d̄, over n."""
    ratio = num.sum() / den.sum()
    return np.var((num - ratio * den) / den.mean(), ddof=1) / num.size


def _welch(a: float, b: float, n_a: int, n_b: int) -> float:
    return (a + b) ** 2 / (a * a / (n_a - 1) + b * b / (n_b - 1))


@pytest.fixture(scope="module")
def runs(spark, tables):
    return {v: _run(spark, tables, v, v or "auto") for v in ("jackknife", "delta", None)}


def test_jackknife_variances_equal_the_leave_one_org_out_ratios(runs, orgs):
    rows = runs["jackknife"]
    u = {arm: _loo(*_arm(orgs, arm)[:2]) for arm in ARMS}
    v = {arm: _loo(*_arm(orgs, arm)[2:]) for arm in ARMS}
    for arm in ARMS:
        assert rows[arm]["variance_method"] == "jackknife"
        assert rows[arm]["stderr"] == pytest.approx(math.sqrt((u[arm] ** 2).sum()), rel=1e-9)
    t = rows["treatment"]
    # CUPED: θ is the delta method's (Σ over arms of Cov(r, p)/n ÷ Σ Var(p)/n, r and p the
    # orgs' linearized ratios), and the jackknife of R − θP with θ fixed is Σ(u − θv)²
    cov, var_p = 0.0, 0.0
    for arm in ARMS:
        m, d, x, y = _arm(orgs, arm)
        r = (m - m.sum() / d.sum() * d) / d.mean()
        p = (x - x.sum() / y.sum() * y) / y.mean()
        cov += np.cov(r, p)[0, 1] / m.size
        var_p += np.var(p, ddof=1) / m.size
    theta = cov / var_p
    assert t["cuped_applied"] and t["cuped_theta"] == pytest.approx(theta, rel=1e-9)
    var = {a: ((u[a] - theta * v[a]) ** 2).sum() for a in ARMS}
    se = math.sqrt(var["treatment"] + var["control"])
    assert t["effect_abs_stderr"] == pytest.approx(se, rel=1e-9)
    n = {a: len(u[a]) for a in ARMS}
    df = _welch(var["treatment"], var["control"], n["treatment"], n["control"])
    assert t["df"] == pytest.approx(df, rel=1e-9)
    q = sps.t.ppf(0.975, df)
    assert t["effect_abs_ci_low"] == pytest.approx(t["effect_abs"] - q * se, rel=1e-9)
    assert t["p_value"] == pytest.approx(2 * sps.t.sf(abs(t["effect_abs"]) / se, df), rel=1e-7)
    # the unadjusted relative CI beside it: Fieller's set {ρ: (a − ρb)² ≤ q²(v_a + ρ²v_b)}
    # with a, b the arms' ratios, v their jackknife variances, q of Welch's t on them
    (m_t, d_t), (m_c, d_c) = (_arm(orgs, arm)[:2] for arm in ("treatment", "control"))
    a, b = m_t.sum() / d_t.sum(), m_c.sum() / d_c.sum()
    v_a, v_b = (u["treatment"] ** 2).sum(), (u["control"] ** 2).sum()
    q2 = sps.t.ppf(0.975, _welch(v_a, v_b, n["treatment"], n["control"])) ** 2
    roots = np.roots([b * b - q2 * v_b, -2 * a * b, a * a - q2 * v_a])
    low, high = sorted(roots - 1)
    assert t["effect_rel_unadjusted_ci_low"] == pytest.approx(low, rel=1e-9)
    assert t["effect_rel_unadjusted_ci_high"] == pytest.approx(high, rel=1e-9)
    # the MDE: (z₀.₉₇₅ + z₀.₈)·sqrt(V_C (1/n_T + 1/n_C)), V_C the control's adjusted
    # jackknife variance per unit
    per_unit = var["control"] * n["control"]
    mde = (sps.norm.ppf(0.975) + sps.norm.ppf(0.8)) * math.sqrt(
        per_unit * (1 / n["treatment"] + 1 / n["control"])
    )
    assert t["mde_abs"] == pytest.approx(mde, rel=1e-9)
    unadjusted = sum((u[arm] ** 2).sum() for arm in ARMS)
    assert t["variance_reduction"] == pytest.approx(1 - se * se / unadjusted, rel=1e-9)


def test_slices_get_the_jackknife_of_their_own_orgs(runs, orgs):
    rows = runs["jackknife"]
    for plan in ("team", "enterprise"):
        t = rows[(plan, "treatment")]
        theta = t["cuped_theta"] if t["cuped_applied"] else 0.0
        var = 0.0
        for arm in ARMS:
            u, v = _loo(*_arm(orgs, arm, plan)[:2]), _loo(*_arm(orgs, arm, plan)[2:])
            row = rows[(plan, arm)]
            assert row["n_units"] == 10 and row["variance_method"] == "jackknife"
            assert row["stderr"] == pytest.approx(math.sqrt((u**2).sum()), rel=1e-9)
            var += ((u - theta * v) ** 2).sum()
        assert t["effect_abs_stderr"] == pytest.approx(math.sqrt(var), rel=1e-9)


def test_delta_twin_keeps_the_delta_method_and_the_jackknife_is_wider(runs, orgs):
    jk, delta = runs["jackknife"], runs["delta"]
    for arm in ARMS:
        m, d = _arm(orgs, arm)[:2]
        assert delta[arm]["variance_method"] == "delta"
        assert delta[arm]["stderr"] == pytest.approx(math.sqrt(_delta_var(m, d)), rel=1e-9)
        # the large orgs' leverage: the delta method's SE is too small here
        assert jk[arm]["stderr"] > 1.1 * delta[arm]["stderr"]
    t_jk, t_delta = jk["treatment"], delta["treatment"]
    assert t_jk["effect_abs"] == t_delta["effect_abs"]  # same estimate, other variance
    assert t_jk["effect_abs_stderr"] > t_delta["effect_abs_stderr"]
    assert t_jk["p_value"] > t_delta["p_value"]
    low_jk, high_jk = t_jk["effect_rel_ci_low"], t_jk["effect_rel_ci_high"]
    assert low_jk < t_delta["effect_rel_ci_low"] < t_delta["effect_rel_ci_high"] < high_jk
    # the design effect stays the delta method's (clustered ÷ naive variance)
    assert t_jk["design_effect"] == pytest.approx(t_delta["design_effect"], rel=1e-12)


def test_auto_is_the_jackknife_below_ten_thousand_units(runs):
    auto, jk = runs[None], runs["jackknife"]
    for arm in ARMS:
        assert auto[arm]["variance_method"] == "jackknife"
        assert auto[arm]["stderr"] == jk[arm]["stderr"]
    assert auto["treatment"]["p_value"] == jk["treatment"]["p_value"]


METRIC = "revenue_per_user"


def _staged(n: int, jackknife=(0.04, 0.01, 0.03)) -> dict:
    """A staged row of the treatment with n units and these jackknife sums."""
    row = {"metric": METRIC, "variant": "treatment", "winsorized": False, "n_units": n}
    row |= {c: 1.0 for c in ("mean_m", "mean_d", "mean_x", "mean_y")}
    row |= {c: 2.0 for c in ("css_mm", "css_dd", "css_xx", "css_yy")}
    row |= {c: 0.5 for c in ("css_md", "css_mx", "css_my", "css_dx", "css_dy", "css_xy")}
    return row | dict(zip(("jk_rr", "jk_rp", "jk_pp"), jackknife, strict=True))


def _methods(rows, **settings):
    raw = config_dict("/x")
    raw["experiments"][0] |= settings
    experiment = parse_config(raw).experiments[0]
    groups, methods = variance_methods(merge_groups(rows), experiment)
    return methods[METRIC], groups[(METRIC, "treatment", False)]


def test_variance_method_falls_back_to_the_delta_method_where_the_jackknife_cannot_apply():
    assert _methods([_staged(40)]) == ("jackknife", CupedStats.from_row(_staged(40)))
    # two partial rows of one group: its sums depend on the whole group's ΣD
    method, merged = _methods([_staged(40), _staged(30)])
    assert (method, merged.jackknife) == ("delta", None)
    # auto: 10,000 assignment units or more use the delta method; jackknife always applies
    assert _methods([_staged(10_000)])[0] == "delta"
    assert _methods([_staged(9_999)])[0] == "jackknife"
    assert _methods([_staged(10_000)], variance="jackknife")[0] == "jackknife"
    assert _methods([_staged(40)], variance="delta") == (
        "delta",
        dataclasses.replace(CupedStats.from_row(_staged(40)), jackknife=None),
    )
    # a unit that holds its group's whole pre-period denominator: the jackknife, and CUPED
    # falls back to the unadjusted comparison
    method, s = _methods([_staged(40, (0.04, None, None))], cuped_lookback_days=7)
    assert method == "jackknife"
    assert compare_cuped(s, s).cuped_status == CupedStatus.NO_PRE_DATA
    without = dataclasses.replace(s, jackknife=None)  # the delta method: pre-data usable
    assert compare_cuped(without, without).cuped_status == CupedStatus.NO_GAIN
    assert _methods([_staged(40, (None, None, None))])[0] == "delta"


def test_the_estimate_does_not_depend_on_the_variance():
    """θ and the no-gain fallback are the delta method's: jackknife sums under which CUPED
    would not pay change the standard error, never the estimate."""
    rng = np.random.default_rng(3)
    x = rng.lognormal(size=30)
    m, ones = x + rng.normal(0, 0.1, 30), np.ones(30)
    t, c = CupedStats.from_values(1.1 * m, ones, x, ones), CupedStats.from_values(m, ones, x, ones)
    sums = (0.01, -0.01, 0.05)  # Σu², Σuv, Σv²: Σ(u − θv)² > Σu² for every θ > 0
    delta = compare_cuped(t, c)
    jk = compare_cuped(*(dataclasses.replace(s, jackknife=sums) for s in (t, c)))
    assert delta.adjusted and jk.adjusted and delta.theta > 0
    assert (jk.theta, jk.effect_abs) == (delta.theta, delta.effect_abs)
    per_arm = sums[0] - 2 * jk.theta * sums[1] + jk.theta**2 * sums[2]
    assert jk.effect_abs_stderr == pytest.approx(math.sqrt(2 * per_arm), rel=1e-12)
    assert jk.variance_reduction == pytest.approx(1 - per_arm / sums[0], rel=1e-12)
    assert jk.variance_reduction < 0 < delta.variance_reduction
