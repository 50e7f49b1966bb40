"""Why cluster_spark exists: on clustered data the per-user SE is far too small.

The whole pipeline (Spark staging + reducer) is checked against an independent oracle:
statsmodels OLS of user revenue on a treatment dummy with CR0 standard errors clustered by
org equals the delta-method SE computed with 1/n moments (Deng, Lu & Qin 2021), with
`variance: delta` (120 orgs would get the cluster jackknife by default: `test_jackknife`).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf

from cluster_spark import pipeline
from cluster_spark.config import parse_config
from tests.helpers import ANALYSIS_DATE, T0, config_dict


@pytest.fixture(scope="module")
def clustered(tmp_path_factory):
    rng = np.random.default_rng(2018)
    n_orgs = 120
    sizes = np.clip(np.round(rng.lognormal(1.5, 0.9, n_orgs)), 1, 80).astype(int)
    treat = rng.permutation(np.arange(n_orgs) % 2)
    org_effect = rng.normal(0, 4.0, n_orgs)
    org = np.repeat(np.arange(n_orgs), sizes)
    y = np.maximum(0, 10 + org_effect[org] + 1.0 * treat[org] + rng.normal(0, 2, len(org)))
    users = pd.DataFrame({"org": org, "user": np.arange(len(org)), "y": y, "treat": treat[org]})
    return users, treat


def test_pipeline_se_equals_cluster_robust_ols_and_naive_se_is_too_small(
    spark, tmp_path, clustered
):
    users, treat = clustered
    names = ["control", "treatment"]
    exposures = [("e1", f"o{i}", names[t], T0) for i, t in enumerate(treat)]
    ts = T0 + dt.timedelta(hours=1)
    events = [
        (f"o{r.org}", f"u{r.user}", "purchase" if r.y > 0 else "page_view", float(r.y), ts)
        for r in users.itertuples()
    ]
    spark.createDataFrame(
        exposures, "experiment_id string, org_id string, variant string, exposure_ts timestamp"
    ).write.format("delta").save(str(tmp_path / "exposures"))
    spark.createDataFrame(
        events, "org_id string, user_id string, event string, value double, ts timestamp"
    ).write.format("delta").save(str(tmp_path / "events"))
    raw = config_dict(tmp_path)
    raw["experiments"][0]["variance"] = "delta"  # the oracle is CR0: the delta method's
    raw_rows = pipeline.run(spark, parse_config(raw), ANALYSIS_DATE)
    rows = {(r["metric"], r["variant"]): r for r in raw_rows}
    t, c = rows[("revenue_per_user", "treatment")], rows[("revenue_per_user", "control")]

    fit = smf.ols("y ~ treat", data=users).fit(
        cov_type="cluster", cov_kwds={"groups": users["org"], "use_correction": False}
    )
    assert t["effect_abs"] == pytest.approx(fit.params["treat"], rel=1e-9)
    # Our group SEs use n−1 moments; rescale them to 1/n to compare with CR0.
    se_1n = np.sqrt(
        t["stderr"] ** 2 * (t["n_units"] - 1) / t["n_units"]
        + c["stderr"] ** 2 * (c["n_units"] - 1) / c["n_units"]
    )
    assert se_1n == pytest.approx(fit.bse["treat"], rel=1e-7)
    assert t["effect_abs_stderr"] == pytest.approx(np.hypot(t["stderr"], c["stderr"]))

    # Design effect: the delta-method variance ÷ the variance if users were independent,
    # s²_y / N over the group's users (Kish 1965), computed here from the raw user values.
    for row, arm in ((t, 1), (c, 0)):
        y = users.loc[users["treat"] == arm, "y"].to_numpy()
        assert row["design_effect"] == pytest.approx(
            row["stderr"] ** 2 / (y.var(ddof=1) / len(y)), rel=1e-9
        )
        assert row["design_effect"] > 3  # org effect sd 4 vs user sd 2
    assert rows[("purchases_per_org", "treatment")]["design_effect"] is None  # per org

    naive = smf.ols("y ~ treat", data=users).fit()  # i.i.d. users: the wrong analysis
    assert naive.bse["treat"] < 0.5 * t["effect_abs_stderr"]
    assert naive.pvalues["treat"] < t["p_value"]
