"""The reducer's wiring of experiment settings, on staged rows built with numpy (no Spark)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from statsmodels.stats.multitest import multipletests

from cluster_spark.config import Experiment
from cluster_spark.reducer import plan_experiment, reduce_experiment
from cluster_spark.stats.sequential import confidence_sequence

DATE = dt.date(2026, 3, 9)


def staged_row(metric, variant, m, d, x=None, y=None):
    """A staging row computed independently with numpy (centered sums)."""
    cols = {"m": np.asarray(m, float), "d": np.asarray(d, float)}
    if x is not None:
        cols |= {"x": np.asarray(x, float), "y": np.asarray(y, float)}
    c = {k: v - v.mean() for k, v in cols.items()}
    row = {
        "metric": metric,
        "variant": variant,
        "winsorized": False,
        "n_units": len(m),
        "run_id": "r",
    }
    row |= {f"mean_{k}": v.mean() for k, v in cols.items()}
    names = list(cols)
    for i, a in enumerate(names):
        for b in names[i:]:
            row[f"css_{a}{b}"] = float((c[a] * c[b]).sum())
    return row


def test_comparison_n_star_is_the_two_arms_share_of_the_planned_total():
    exp = experiment(
        sequential=True, sequential_n_star=1000, variants={"control": 2, "a": 1, "b": 1}
    )
    assert exp.comparison_n_star("a") == 750  # (2 + 1)/4 of 1000
    assert exp.comparison_n_star("unknown") is None


def experiment(**kw):
    kw.setdefault("variants", ["control", "treatment"])
    kw.setdefault("metrics", ["m1"])
    return Experiment(
        id="e", assignment_unit="org_id", control="control", start=dt.date(2026, 3, 1), **kw
    )


def test_cuped_in_results_matches_ols_with_pre_period_covariate():
    """Mean metric, equal group sizes: CUPED's pooled θ and effect equal OLS y ~ t + x."""
    rng = np.random.default_rng(3)
    n = 400
    x = rng.gamma(2, 5, 2 * n)
    t = np.repeat([0, 1], n)
    y = 3 + 0.8 * x + 0.7 * t + rng.normal(0, 2, 2 * n)
    ones = np.ones(n)
    rows = [
        staged_row("m1", "control", y[:n], ones, x[:n], ones),
        staged_row("m1", "treatment", y[n:], ones, x[n:], ones),
    ]
    out = reduce_experiment(rows, experiment(cuped_lookback_days=14), DATE, "r")
    res = next(r for r in out if r["variant"] == "treatment")
    data = pd.DataFrame({"y": y, "t": t, "xc": x - x.mean()})
    fit = smf.ols("y ~ t + xc", data=data).fit(cov_type="HC0")
    assert res["cuped_applied"] is True
    assert res["effect_abs"] == pytest.approx(fit.params["t"], rel=1e-9)
    assert res["cuped_theta"] == pytest.approx(fit.params["xc"], rel=1e-9)
    assert res["effect_abs_stderr"] == pytest.approx(fit.bse["t"], rel=5e-3)
    naive = y[n:].mean() - y[:n].mean()
    assert res["variance_reduction"] > 0.5 and res["effect_abs"] != pytest.approx(naive)


def test_multiple_testing_sequential_and_fieller_columns():
    rng = np.random.default_rng(5)
    rows = []
    for metric in ("m1", "m2", "m3"):
        for variant, lift in (("control", 0), ("a", 0.3), ("b", 0.05)):
            d = rng.integers(1, 6, 300).astype(float)
            rows.append(staged_row(metric, variant, d * (2 + lift) + rng.normal(0, 2, 300), d))
    exp = experiment(
        sequential=True,
        sequential_n_star=3000,
        relative_ci="fieller",
        variants=["control", "a", "b"],
        metrics=["m1", "m2", "m3"],
    )
    out = [r for r in reduce_experiment(rows, exp, DATE, "r") if r["variant"] != "control"]
    p = [r["p_value"] for r in out]
    assert [r["p_value_bh"] for r in out] == pytest.approx(multipletests(p, method="fdr_bh")[1])
    assert [r["p_value_holm"] for r in out] == pytest.approx(multipletests(p, method="holm")[1])
    for r in out:
        assert r["effect_abs_cs_low"] < r["effect_abs_ci_low"] < r["effect_abs"]
        assert r["effect_abs_cs_high"] > r["effect_abs_ci_high"]
        assert r["p_value_sequential"] >= r["p_value"]
        assert r["relative_ci_method"] == "fieller"
        # Fieller's interval is asymmetric around the point estimate, unlike the delta one.
        low, high = r["effect_rel_ci_low"], r["effect_rel_ci_high"]
        assert low < r["effect_rel"] < high
        assert high - r["effect_rel"] != pytest.approx(r["effect_rel"] - low, rel=1e-6)
        assert r["mde_rel"] > 0
        # N* = 3000 planned over 3 equal arms: each comparison sees 2/3 of it, 2000 units
        cs = confidence_sequence(r["effect_abs"], r["effect_abs_stderr"], 600, 0.05, 2000)
        assert (r["effect_abs_cs_low"], r["effect_abs_cs_high"]) == pytest.approx(cs, rel=1e-12)


def test_plan_pools_variants_and_gives_mde():
    from scipy.stats import norm

    rng = np.random.default_rng(9)
    m, d = rng.gamma(2, 3, 600), rng.integers(1, 5, 600).astype(float)
    rows = [
        staged_row("m1", "control", m[:300], d[:300]),
        staged_row("m1", "treatment", m[300:], d[300:]),
    ]
    (plan,) = plan_experiment(rows, experiment(), [10_000])
    r = m.sum() / d.sum()
    lin = (m - r * d) / d.mean()  # linearized unit values of the pooled sample
    v = lin.var(ddof=1)
    assert plan["unit_variance"] == pytest.approx(v, rel=1e-9)
    z = norm.ppf(0.975) + norm.ppf(0.8)
    assert plan["mde_rel@10000"] == pytest.approx(z * np.sqrt(2 * v / 10_000) / r, rel=1e-9)
    assert plan["mde_rel@300"] == pytest.approx(z * np.sqrt(2 * v / 300) / r, rel=1e-9)


def _two_groups(seed=5, n=200):
    rng = np.random.default_rng(seed)
    m, d = rng.gamma(2, 3, 2 * n), rng.integers(1, 5, 2 * n).astype(float)
    x, y = m * rng.uniform(0.5, 1.5, 2 * n), d
    return [
        staged_row("m1", "control", m[:n], d[:n], x[:n], y[:n]),
        staged_row("m1", "treatment", m[n:], d[n:], x[n:], y[n:]),
    ]


def test_relative_ci_method_says_which_interval_was_computed():
    """Fieller's interval is the default, CUPED-adjusted or not (#26 item 6); the delta
    method's when asked for."""
    rows = _two_groups()
    (_, treated) = reduce_experiment(rows, experiment(cuped_lookback_days=7), DATE, "r")
    assert treated["cuped_applied"] is True
    assert treated["relative_ci_method"] == "fieller"
    (_, treated) = reduce_experiment(rows, experiment(relative_ci="delta"), DATE, "r")
    assert treated["relative_ci_method"] == "delta"


def test_unexpected_variant_flags_srm():
    """Units exposed to a variant outside the configured split are a sample ratio mismatch:
    flagged, with no χ² (there is no expected share for that variant)."""
    counts = {"control": 100, "treatment": 101, "treatmnet": 3}
    diags = [{"check": "assignment_units", "variant": v, "value": n} for v, n in counts.items()]
    exp = experiment(variants={"control": 1, "treatment": 1})
    rows = reduce_experiment(_two_groups(), exp, DATE, "r", diagnostics=diags)
    assert {(r["srm_chi2"], r["srm_p_value"], r["srm_flag"]) for r in rows} == {(None, None, True)}
    diags = diags[:2]
    (row, _) = reduce_experiment(_two_groups(), exp, DATE, "r", diagnostics=diags)
    assert row["srm_flag"] is False and row["srm_p_value"] > 0.9


def test_plan_first_column_splits_the_staged_units_over_all_variants():
    rng = np.random.default_rng(2)
    m, d = rng.gamma(2, 3, 600), np.ones(600)
    rows = [staged_row("m1", v, m[i::3], d[i::3]) for i, v in enumerate(["control", "a", "b"])]
    (plan,) = plan_experiment(rows, experiment(), [])
    assert "mde_rel@200" in plan and plan["units"] == 600


def test_mde_uses_the_comparisons_split_and_cuped_variance():
    """90/10 split: MDE = z·sqrt(V_C (1/n_T + 1/n_C)), not z·sqrt(2 V_C/n_C), which would be
    √5 too optimistic here; with CUPED applied V_C is the control's adjusted variance."""
    rng = np.random.default_rng(11)
    z = 1.959963984540054 + 0.8416212335729143  # z_0.975 + z_0.8, from tables
    x_c, x_t = rng.gamma(2, 3, 900), rng.gamma(2, 3, 100)
    m_c, m_t = x_c + rng.normal(0, 1, 900), x_t + rng.normal(0, 1, 100)
    ones_c, ones_t = np.ones(900), np.ones(100)
    rows = [
        staged_row("m1", "control", m_c, ones_c, x_c, ones_c),
        staged_row("m1", "treatment", m_t, ones_t, x_t, ones_t),
    ]
    v_c = np.var(m_c, ddof=1)  # mean metric: V = s²_M
    (_, t) = reduce_experiment(rows, experiment(variants={"control": 9, "treatment": 1}), DATE, "r")
    assert t["mde_abs"] == pytest.approx(z * np.sqrt(v_c * (1 / 100 + 1 / 900)), rel=1e-9)
    assert t["mde_rel"] == pytest.approx(t["mde_abs"] / m_c.mean(), rel=1e-9)
    assert t["mde_abs"] / (z * np.sqrt(2 * v_c / 900)) == pytest.approx(np.sqrt(5), rel=1e-9)

    exp = experiment(variants={"control": 9, "treatment": 1}, cuped_lookback_days=7)
    (control, t) = reduce_experiment(rows, exp, DATE, "r")
    assert t["cuped_applied"] is True and t["cuped_status"] == "applied"
    # θ = (C_T/n_T + C_C/n_C)/(V_T/n_T + V_C/n_C) with C = cov(M, X), V = var(X) (mean metric)
    c_t, c_c = np.cov(m_t, x_t)[0, 1], np.cov(m_c, x_c)[0, 1]
    theta = (c_t / 100 + c_c / 900) / (np.var(x_t, ddof=1) / 100 + np.var(x_c, ddof=1) / 900)
    v_adj = np.var(m_c - theta * x_c, ddof=1)
    assert t["mde_abs"] == pytest.approx(z * np.sqrt(v_adj * (1 / 100 + 1 / 900)), rel=1e-9)
    assert control["mde_abs"] is None and control["cuped_status"] is None


def test_a_configured_arm_without_units_gets_rows_and_srm():
    """A treatment that logged no exposure: SRM against the configured split sees 0 units,
    and every metric has a row for it (n_units 0, too_few_units)."""
    rows = [r for r in _two_groups() if r["variant"] == "control"]
    diags = [{"check": "assignment_units", "variant": "control", "value": rows[0]["n_units"]}]
    out = reduce_experiment(rows, experiment(), DATE, "r", diagnostics=diags)
    assert [(r["variant"], r["n_units"], r["status"]) for r in out] == [
        ("control", rows[0]["n_units"], "ok"),
        ("treatment", 0, "too_few_units"),
    ]
    n = rows[0]["n_units"]
    # Pearson χ² of (n, 0) against (n/2, n/2): 2·(n/2)²/(n/2) = n
    assert out[1]["srm_chi2"] == pytest.approx(n, rel=1e-12)
    assert out[1]["srm_flag"] is True


def test_the_reducer_imports_without_pyspark():
    """The reducer is pure Python (#27): it and the table contracts import with pyspark
    blocked (a `None` entry in sys.modules makes `import pyspark` raise ImportError)."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['pyspark'] = None\n"
        "import cluster_spark.reducer, cluster_spark.tables, cluster_spark.reporting\n"
        "assert not any(m.startswith('pyspark.') for m in sys.modules), 'pyspark imported'\n"
        "try:\n    import cluster_spark.staging\nexcept ImportError:\n    print('blocked')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "blocked"  # the staging package does need pyspark


def test_results_rows_are_built_through_the_typed_row():
    """`tables.ResultRow` generates the results schema (Spark types from its field types)
    and gates every row the reducer returns: a misspelt column raises, naming it."""
    from cluster_spark.tables import RESULT_COLUMNS, result_row

    types = dict(RESULT_COLUMNS)
    assert (types["analysis_date"], types["n_units"], types["effect_abs"]) == (
        "date",
        "bigint",
        "double",
    )
    assert (types["srm_flag"], types["health_reasons"]) == ("boolean", "array<string>")
    with pytest.raises(TypeError, match="efect_abs"):
        result_row(efect_abs=0.1)
    rng = np.random.default_rng(1)
    rows = [
        staged_row("m1", v, rng.poisson(5, 50), rng.poisson(3, 50) + 1)
        for v in ("control", "treatment")
    ]
    out = reduce_experiment(rows, experiment(), DATE, "r")
    assert [list(r) for r in out] == [[c for c, _ in RESULT_COLUMNS]] * 2


def test_every_kinds_own_columns_are_in_the_staging_contract():
    """A kind's staged columns (`kinds.Kind.columns`) join `STAGING_COLUMNS` from `kinds`,
    and `kind_of_row` tells its rows by the first of them."""
    from cluster_spark.kinds import KINDS, kind_of_row
    from cluster_spark.tables import STAGING_COLUMNS

    staged = dict(STAGING_COLUMNS)
    assert [staged[c] for c in KINDS["quantile"].columns] == ["double"] * 4
    assert kind_of_row({"quantile_p": 0.9}) is KINDS["quantile"]
    assert kind_of_row({"quantile_p": None, "mean_m": 1.0}) is None  # a moments row
