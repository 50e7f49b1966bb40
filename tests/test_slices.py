"""Slices: results broken down by a column of the exposure rows and by a unit-attributes
table, staged in the same pass as the overall rows.

Oracles are independent of the pipeline: each slice's units are chosen here from the
rules (first exposure row; latest attribute row at or before the exposure; the largest
`max_slices` slices, the rest pooled), then the delta method is computed with numpy on
that slice's units only, statsmodels OLS with a treatment × slice interaction and CR0
standard errors clustered by org gives the same effects and SEs, SRM is
`scipy.stats.chisquare` and Cochran's Q a hand computation.
"""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from rich.console import Console
from scipy import stats as sps

from cluster_spark import pipeline
from cluster_spark.cli import print_results
from cluster_spark.config import parse_config
from cluster_spark.errors import ConfigError
from cluster_spark.reporting import render_report
from cluster_spark.stats.heterogeneity import cochran_q
from tests.helpers import ANALYSIS_DATE, EVENT_DDL, T0, config_dict, write_delta

PLANS = ["free"] * 40 + ["pro"] * 25 + ["team"] * 15 + ["enterprise"] * 5 + [None] * 5
N_ORGS = len(PLANS)
LIFT = {"free": 0.5, "pro": 4.0, "team": 1.0, "enterprise": 0.0, None: 0.0}


def _exposure(i: int) -> dt.datetime:
    return T0 + dt.timedelta(hours=2, minutes=i)


def _region(i: int) -> str | None:
    """The region the rules give org i (see `_attribute_rows`)."""
    if i % 3 == 0:
        return None  # no attribute row at or before its exposure
    if i == 4:
        return "south"  # a row exactly at the exposure instant counts
    return "north" if i % 3 == 1 else "south"


def _attribute_rows() -> list[tuple]:
    rows = []
    for i in range(N_ORGS):
        org, exposed = f"o{i}", _exposure(i)
        if i % 3 == 0:
            rows.append((org, "north", exposed + dt.timedelta(seconds=1)))  # after: ignored
            continue
        true = "north" if i % 3 == 1 else "south"
        other = "south" if true == "north" else "north"
        rows.append((org, other, T0 - dt.timedelta(days=20)))  # older: superseded
        rows.append((org, true, T0 - dt.timedelta(days=5)))
        if i % 6 == 1:  # changed by the treatment, after exposure: never used
            rows.append((org, other, exposed + dt.timedelta(days=1)))
        if i == 4:
            rows.append((org, "south", exposed))
    rows.append((None, "north", T0 - dt.timedelta(days=1)))  # dropped: NULL id
    rows.append(("o1", "south", None))  # dropped: NULL timestamp
    return rows


@pytest.fixture(scope="module")
def sliced(spark, tmp_path_factory):
    """A 100-org experiment with `plan` on the exposure rows (treatment alternating within
    each plan) and `region` from an org attributes table; run once."""
    root = tmp_path_factory.mktemp("slices")
    rng = np.random.default_rng(16)
    order = rng.permutation(N_ORGS)
    plans = [PLANS[k] for k in order]
    seen: dict[str | None, int] = {}
    treat = []
    for p in plans:  # alternate within each plan: team 8/7, enterprise 3/2, NULL 3/2
        treat.append(seen.get(p, 0) % 2)
        seen[p] = seen.get(p, 0) + 1
    exposures, users = [], []
    for i in range(N_ORGS):
        variant = ["control", "treatment"][treat[i]]
        # plan on the first exposure row; a later row of the same org says "other"
        exposures.append(("e1", f"o{i}", variant, _exposure(i), plans[i]))
        exposures.append(("e1", f"o{i}", variant, _exposure(i) + dt.timedelta(hours=3), "x"))
        effect = rng.normal(0, 3)
        for u in range(1 + rng.poisson(4)):
            y = max(0.0, 10 + effect + LIFT[plans[i]] * treat[i] + rng.normal(0, 2))
            users.append((i, f"o{i}", f"o{i}u{u}", y, plans[i], _region(i), treat[i]))
    write_delta(
        spark,
        exposures,
        "experiment_id string, org_id string, variant string, exposure_ts timestamp, plan string",
        root / "exposures",
    )
    events = [
        (org, user, "purchase" if y > 0 else "page_view", y, _exposure(i) + dt.timedelta(hours=1))
        for i, org, user, y, *_ in users
    ]
    write_delta(spark, events, EVENT_DDL, root / "events")
    write_delta(
        spark, _attribute_rows(), "org string, region string, updated_at timestamp", root / "orgs"
    )
    raw = config_dict(root)
    raw["experiments"][0]["variance"] = "delta"  # the oracle is CR0 (slices' jackknife:
    raw["exposures"]["dimensions"] = ["plan"]  # test_jackknife)
    raw["unit_attributes"] = {
        "orgs": {
            "path": f"{root}/orgs",
            "timestamp": "updated_at",
            "ids": {"org_id": "org"},
            "dimensions": ["region"],
        }
    }
    raw["experiments"][0] |= {
        "dimensions": ["plan", "region"],
        "max_slices": 3,
        "min_slice_units": 5,
        "test": "z",
    }
    outcome = pipeline.run_outcome(spark, parse_config(raw), ANALYSIS_DATE)
    frame = pd.DataFrame(
        users, columns=["i", "org", "user", "y", "plan", "region", "treat"]
    ).astype({"plan": object, "region": object})
    return outcome, frame


def _expected_slices(frame: pd.DataFrame) -> pd.DataFrame:
    """Each user's slice of both dimensions, by the rules written out here."""
    out = frame.copy()
    out["plan"] = out["plan"].fillna("(null)")
    kept = ["free", "pro", "team", "(null)"]  # (null) is always kept, beside 3 others
    out["plan"] = out["plan"].where(out["plan"].isin(kept), "(other)")
    out["region"] = out["region"].fillna("(null)")
    return out


def _rows(outcome, dimension=None):
    return {
        (r["slice"], r["metric"], r["variant"]): r
        for r in outcome.results
        if r["dimension"] == dimension
    }


def test_slice_membership_srm_and_pooling(sliced):
    outcome, frame = sliced
    expected = _expected_slices(frame).drop_duplicates("org")
    diags = [d for d in outcome.diagnostics if d["check"] == "assignment_units"]
    for dimension in ("plan", "region"):
        counts = expected.groupby([dimension, "treat"]).size()
        got = {(d["slice"], d["variant"]): d["value"] for d in diags if d["dimension"] == dimension}
        want = {(s, ["control", "treatment"][t]): n for (s, t), n in counts.items()}
        assert got == want
        rows = _rows(outcome, dimension)
        for name in {s for s, _ in want}:
            observed = [want.get((name, v), 0) for v in ("control", "treatment")]
            chi2, p = sps.chisquare(observed)
            row = rows[(name, "revenue_per_user", "treatment")]
            assert row["srm_chi2"] == pytest.approx(chi2, rel=1e-12)
            assert row["srm_p_value"] == pytest.approx(p, rel=1e-9)
    # plan: free 40, pro 25, team 15 kept (max_slices 3) and NULL 5; enterprise 5 pooled
    assert {s for s, _ in got} == {"north", "south", "(null)"}
    plan_counts = {
        (d["slice"], d["variant"]): d["value"] for d in diags if d["dimension"] == "plan"
    }
    assert plan_counts[("(other)", "control")] + plan_counts[("(other)", "treatment")] == 5
    assert plan_counts[("(null)", "control")] + plan_counts[("(null)", "treatment")] == 5
    assert ("enterprise", "control") not in plan_counts
    # overall rows are unchanged by slicing: NULL dimension, all 100 orgs
    overall = [d for d in diags if d["dimension"] is None]
    assert sum(d["value"] for d in overall) == N_ORGS
    dropped = [d for d in outcome.diagnostics if d["check"] == "unit_attribute_rows_dropped:orgs"]
    assert [d["value"] for d in dropped] == [2]


def _delta(units: pd.DataFrame) -> tuple[float, float, int]:
    """Ratio and delta-method SE (n−1 moments) of per-org (M = Σy, D = users)."""
    m, d = units["m"].to_numpy(), units["d"].to_numpy()
    n = len(m)
    r = m.sum() / d.sum()
    cov = np.cov(m, d, ddof=1)
    var = (cov[0, 0] - 2 * r * cov[0, 1] + r**2 * cov[1, 1]) / (n * d.mean() ** 2)
    return r, math.sqrt(var), n


@pytest.mark.parametrize("dimension", ["plan", "region"])
def test_slice_effects_equal_numpy_delta_and_interacted_cluster_robust_ols(sliced, dimension):
    outcome, frame = sliced
    users = _expected_slices(frame)
    users = users.assign(slice=users[dimension])
    rows = _rows(outcome, dimension)
    small = {"(other)", "(null)"} if dimension == "plan" else set()  # 3 vs 2 orgs: below 5
    fit = smf.ols("y ~ 0 + C(slice) + C(slice):treat", data=users).fit(
        cov_type="cluster", cov_kwds={"groups": users["org"], "use_correction": False}
    )
    effects, stderrs = [], []
    for name, part in users.groupby("slice"):
        t_row = rows[(name, "revenue_per_user", "treatment")]
        c_row = rows[(name, "revenue_per_user", "control")]
        if name in small:
            assert t_row["status"] == c_row["status"] == "too_few_slice_units"
            assert t_row["effect_abs"] is None and t_row["p_value"] is None
            assert c_row["mean"] is None
            assert t_row["n_units"] == part.loc[part["treat"] == 1, "org"].nunique()
            continue
        per_org = part.groupby(["org", "treat"]).agg(m=("y", "sum"), d=("user", "nunique"))
        per_org = per_org.reset_index()
        rt, se_t, nt = _delta(per_org[per_org["treat"] == 1])
        rc, se_c, nc = _delta(per_org[per_org["treat"] == 0])
        assert (t_row["n_units"], c_row["n_units"]) == (nt, nc)
        assert t_row["mean"] == pytest.approx(rt, rel=1e-12)
        assert t_row["stderr"] == pytest.approx(se_t, rel=1e-9)
        assert t_row["effect_abs"] == pytest.approx(rt - rc, rel=1e-9, abs=1e-12)
        assert t_row["effect_abs_stderr"] == pytest.approx(math.hypot(se_t, se_c), rel=1e-9)
        term = f"C(slice)[{name}]:treat"
        assert t_row["effect_abs"] == pytest.approx(fit.params[term], rel=1e-9, abs=1e-12)
        se_1n = math.sqrt(se_t**2 * (nt - 1) / nt + se_c**2 * (nc - 1) / nc)
        assert se_1n == pytest.approx(fit.bse[term], rel=1e-7)
        effects.append(rt - rc)
        stderrs.append(math.hypot(se_t, se_c))
    # Cochran's Q from the numpy effects, by hand
    w = 1 / np.square(stderrs)
    pooled = np.sum(w * effects) / np.sum(w)
    q = float(np.sum(w * (np.asarray(effects) - pooled) ** 2))
    treated = [r for k, r in rows.items() if k[1:] == ("revenue_per_user", "treatment")]
    with_q = [r for r in treated if r["heterogeneity_q"] is not None]
    assert len(with_q) == len(effects)
    assert with_q[0]["heterogeneity_q"] == pytest.approx(q, rel=1e-9)
    assert with_q[0]["heterogeneity_p_value"] == pytest.approx(
        sps.chi2.sf(q, len(effects) - 1), rel=1e-9
    )


def test_slice_p_values_are_adjusted_within_the_dimension_only(sliced):
    outcome, _ = sliced
    treated = [r for r in outcome.results if r["variant"] == "treatment"]
    for dimension in (None, "plan", "region"):
        family = [r for r in treated if r["dimension"] == dimension and r["p_value"] is not None]
        m = len(family)
        smallest = min(family, key=lambda r: r["p_value"])
        # BH of the smallest p-value: min over ranks j of m p_(j) / j, at most m p_(1)
        bh = min(
            m * r["p_value"] / (j + 1)
            for j, r in enumerate(sorted(family, key=lambda r: r["p_value"]))
        )
        assert smallest["p_value_bh"] == pytest.approx(min(1.0, bh), rel=1e-12)
        assert smallest["p_value_holm"] == pytest.approx(min(1.0, m * smallest["p_value"]))


def test_cochran_q_by_hand():
    # w = 1, 1, 1/4; pooled = (1 + 2 + 1) / (9/4) = 16/9; Q = (49 + 4 + 100) / 81 = 17/9
    h = cochran_q([1.0, 2.0, 4.0], [1.0, 1.0, 2.0])
    assert h.q == pytest.approx(17 / 9, rel=1e-14)
    assert h.df == 2
    assert h.p_value == pytest.approx(math.exp(-17 / 18), rel=1e-12)  # χ²₂ tail: e^(−Q/2)
    assert cochran_q([1.0], [1.0]) is None
    with pytest.raises(ValueError, match="positive"):
        cochran_q([1.0, 2.0], [1.0, 0.0])


def test_report_and_show_break_results_down(sliced):
    outcome, _ = sliced
    page = render_report("e1", ANALYSIS_DATE, outcome.results, outcome.diagnostics)
    assert "<h2>By plan</h2>" in page and "<h2>By region</h2>" in page
    assert "adjusted across the slices of this dimension" in page  # the slice legend says so
    assert "Cochran" in page and "too_few_slice_units" in page
    assert page.count('class="forest"') == 1 + 2 * 2  # overall + 2 metrics × 2 dimensions
    console = Console(width=200, record=True)
    print_results(outcome.results, console, dimension="region")
    text = console.export_text()
    assert "(null)" in text and "north" in text and "het. p" in text
    assert "free" not in text
    console = Console(width=200, record=True)
    print_results(outcome.results, console)
    assert "north" not in console.export_text()


def test_dimensions_must_come_from_one_place(tmp_path):
    raw = config_dict(tmp_path)
    raw["experiments"][0]["dimensions"] = ["plan"]
    with pytest.raises(ConfigError, match=r"'plan' must come from exactly one place.*neither"):
        parse_config(raw)
    raw["exposures"]["dimensions"] = ["plan"]
    raw["unit_attributes"] = {
        "orgs": {
            "path": "x",
            "timestamp": "t",
            "ids": {"org_id": "org"},
            "dimensions": ["plan"],
        }
    }
    with pytest.raises(ConfigError, match="both exposures and orgs"):
        parse_config(raw)
    raw["experiments"][0]["dimensions"] = ["plan", "plan"]
    with pytest.raises(ConfigError, match="dimensions are listed twice"):
        parse_config(raw)


def _cuped_data(spark, root, orgs: list[int]) -> None:
    """Orgs `orgs` of a 60-org experiment (plan a/b by parity) with pre-period activity."""
    rng = np.random.default_rng(1616)
    exposures, events = [], []
    for i in range(60):
        effect = rng.normal(0, 3)
        sizes = 1 + rng.poisson(3)
        values = [
            (rng.gamma(2.0, 2.0) * (1 + effect**2 / 9), rng.gamma(2.0, 2.0) * (1 + effect**2 / 9))
            for _ in range(sizes)
        ]
        if i not in orgs:
            continue
        variant = "treatment" if (i // 2) % 2 else "control"
        exposed = _exposure(i) + dt.timedelta(days=2)
        exposures.append(("e1", f"o{i}", variant, exposed, "a" if i % 2 else "b"))
        for u, (pre, post) in enumerate(values):
            user = f"o{i}u{u}"
            events.append((f"o{i}", user, "purchase", pre, exposed - dt.timedelta(days=1)))
            events.append((f"o{i}", user, "purchase", post, exposed + dt.timedelta(hours=5)))
    ddl = "experiment_id string, org_id string, variant string, exposure_ts timestamp, plan string"
    write_delta(spark, exposures, ddl, root / "exposures")
    write_delta(spark, events, EVENT_DDL, root / "events")


def _cuped_config(root, **experiment):
    raw = config_dict(root)
    raw["experiments"][0]["variance"] = "delta"  # the oracle is CR0 (slices' jackknife:
    raw["exposures"]["dimensions"] = ["plan"]  # test_jackknife)
    raw["metrics"]["revenue_per_user"]["numerator"]["winsorize"] = {"upper": 0.8}
    raw["experiments"][0] |= {"cuped_lookback_days": 7, "min_slice_units": 2, **experiment}
    return parse_config(raw)


@pytest.mark.parametrize("caps", ["slice", "experiment"])
def test_a_slice_is_analysed_as_an_experiment_of_its_own_units(spark, tmp_path, caps):
    """CUPED θ within the slice; caps per slice or the experiment's: a slice's rows equal
    the overall rows of the same experiment run on that slice's orgs alone (with the full
    experiment's caps for `slice_caps: experiment`)."""
    _cuped_data(spark, tmp_path / "all", list(range(60)))
    _cuped_data(spark, tmp_path / "a", list(range(1, 60, 2)))
    full = pipeline.run(
        spark, _cuped_config(tmp_path / "all", dimensions=["plan"], slice_caps=caps), ANALYSIS_DATE
    )
    alone = pipeline.run(spark, _cuped_config(tmp_path / "a"), ANALYSIS_DATE)
    slice_rows = {(r["metric"], r["variant"]): r for r in full if r["slice"] == "a"}
    overall = {(r["metric"], r["variant"]): r for r in full if r["dimension"] is None}
    alone = {(r["metric"], r["variant"]): r for r in alone}
    assert len(slice_rows) == len(alone) == 4
    treated = slice_rows[("revenue_per_user", "treatment")]
    assert treated["cuped_applied"] and treated["winsorized"]
    for key, r in alone.items():
        columns = set(r) - _NOT_COMPARED
        if caps == "experiment" and r["winsorized"]:  # other thresholds: raw columns only
            columns &= _UNCAPPED
        for column in columns:
            value, got = r[column], slice_rows[key][column]
            if isinstance(value, float):
                assert got == pytest.approx(value, rel=1e-9, abs=1e-12), column
            else:
                assert got == value, column
    cap = ("revenue_per_user", "control")
    if caps == "experiment":
        assert slice_rows[cap]["num_upper_cap"] == overall[cap]["num_upper_cap"]
        assert slice_rows[cap]["num_upper_cap"] != alone[cap]["num_upper_cap"]
        assert slice_rows[cap]["mean"] != pytest.approx(alone[cap]["mean"])


#: Columns a slice row and the overall row of its units alone differ in by design (the
#: slice's p-values are corrected within its dimension: 2 slices × 2 metrics here).
_NOT_COMPARED = {
    "dimension",
    "slice",
    "run_id",
    "heterogeneity_q",
    "heterogeneity_p_value",
    "p_value_bh",
    "p_value_holm",
    "decision",  # goals decide by the BH p-value, corrected within the dimension
    "health",  # the experiment's verdict: on overall rows only
    "health_reasons",
    "recommendation",  # per treatment, on overall rows only
    "recommendation_reasons",
    "srm_sequential_p_value",  # SRM over time: the experiment's first exposures, overall only
}
#: Columns that do not depend on the winsorization thresholds.
_UNCAPPED = {
    "experiment_id",
    "analysis_date",
    "metric",
    "variant",
    "control_variant",
    "n_units",
    "n_analysis_units",
    "srm_chi2",
    "srm_p_value",
    "srm_flag",
    "mean_uncapped",
    "effect_abs_uncapped",
    "effect_rel_uncapped",
    "effect_rel_uncapped_ci_low",
    "effect_rel_uncapped_ci_high",
    "p_value_uncapped",
    "winsorized",
}
