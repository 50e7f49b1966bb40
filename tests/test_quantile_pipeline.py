"""Quantile metrics through Spark: staged rows against hand values and a numpy staging of
seeded clustered data (exact: small inputs are below percentile_approx's exact limit), and
the results rows through the reducer."""

from __future__ import annotations

import numpy as np
import pytest

from cluster_spark import reducer, staging
from cluster_spark.config import parse_config
from cluster_spark.stats.quantile import QuantileStats, compare_quantiles, outer_probabilities
from cluster_spark.stats.ratio import RatioStats
from tests.helpers import (
    ANALYSIS_DATE,
    EVENT_DDL,
    EXPOSURE_DDL,
    at,
    config_dict,
    write_delta,
)
from tests.test_staging import EVENTS, EXPOSURES

PURCHASE = [{"column": "event", "op": "eq", "value": "purchase"}]


def _config(root, p: float = 0.5, **metric):
    raw = config_dict(root)
    raw["metrics"]["median_purchase"] = {
        "kind": "quantile",
        "quantile": p,
        "value": {"source": "events", "column": "value", "filter": PURCHASE},
        **metric,
    }
    raw["experiments"][0]["metrics"] = ["revenue_per_user", "median_purchase"]
    return parse_config(raw)


@pytest.fixture(scope="module")
def tiny(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_quantile")
    write_delta(spark, EXPOSURES, EXPOSURE_DDL, root / "exposures")
    write_delta(spark, EVENTS, EVENT_DDL, root / "events")
    return root


def test_staged_quantile_rows_by_hand(spark, tiny):
    # purchases after exposure and up to the analysis time (tests.test_staging.EVENTS):
    # control o1 [10] (its 5 is before exposure), o2 [7]; treatment o3 [20, 1], o4 [] (its
    # purchase is before exposure), o6 []. Medians (inverse CDF): control 7, treatment 1.
    # Two values a group: the outer probabilities clip to (0, 1), i.e. the min and max.
    rows = staging.stage(spark, _config(tiny), ["e1"], ANALYSIS_DATE, "r1").stats.collect()
    got = {r.variant: r for r in rows if r.metric == "median_purchase"}
    assert set(got) == {"control", "treatment"}
    c, t = got["control"], got["treatment"]
    assert (c.quantile_p, c.quantile_estimate, c.quantile_lower, c.quantile_upper) == (
        0.5,
        7.0,
        7.0,
        10.0,
    )
    assert (t.quantile_estimate, t.quantile_lower, t.quantile_upper) == (1.0, 1.0, 20.0)
    # I_i (values ≤ Q̂), N_i per unit: control (0, 1), (1, 1); treatment (1, 2), (0, 0), (0, 0)
    assert (c.n_units, c.sum_m, c.sum_d, c.n_zero_denominator) == (2, 1.0, 2.0, 0)
    assert (t.n_units, t.sum_m, t.sum_d, t.n_zero_denominator) == (3, 1.0, 2.0, 2)
    m, d = np.array([1.0, 0, 0]), np.array([2.0, 0, 0])
    assert (t.mean_m, t.mean_d) == pytest.approx((1 / 3, 2 / 3))
    assert t.css_mm == pytest.approx(((m - m.mean()) ** 2).sum())
    assert t.css_md == pytest.approx(((m - m.mean()) * (d - d.mean())).sum())
    assert not t.winsorized and t.mean_x is None and t.num_lower_cap is None
    ratio = {r.variant: r for r in rows if r.metric == "revenue_per_user"}
    assert ratio["control"].quantile_p is None  # other kinds' rows: NULL


def _sessions(rng, n_users: int, lift: float):
    """Users (assignment units) with 1–30 sessions whose lengths share a user effect."""
    sizes = np.minimum(1 + rng.poisson(rng.lognormal(1.2, 0.8, n_users)), 30)
    effects = rng.normal(0.0, 0.6, n_users)
    return [
        np.round(np.exp(1.0 + lift + u + rng.normal(0.0, 0.5, k)), 2)
        for u, k in zip(effects, sizes, strict=True)
    ]


@pytest.mark.parametrize("lift", [0.3, 0.0])
def test_quantile_results_match_a_numpy_staging_of_clustered_data(spark, tmp_path, lift):
    """A whole experiment with a p90 guardrail where lower is better (load time, say):
    treatment lengthens every value by e^0.3 (+35 %) and violates it; in the twin without a
    lift it is not violated. The numbers match a numpy staging either way."""
    rng = np.random.default_rng(11)
    arms = {"control": _sessions(rng, 150, 0.0), "treatment": _sessions(rng, 150, lift)}
    exposures, events, i = [], [], 0
    for variant, users in arms.items():
        for lengths in users:
            org = f"u{i:04d}"
            i += 1
            exposures.append(("e1", org, variant, at(0, 1)))
            for j, x in enumerate(lengths):
                events.append((org, org, "session", float(x), at(1, j)))
            events.append((org, org, "session", 0.0, at(2)))  # ignored: ignore_zeros
            events.append((org, org, "purchase", 99.0, at(2)))  # filtered out
    exposures.append(("e1", "idle", "control", at(0)))  # exposed, no sessions: I = N = 0
    write_delta(spark, exposures, EXPOSURE_DDL, tmp_path / "exposures")
    write_delta(spark, events, EVENT_DDL, tmp_path / "events")
    raw = config_dict(tmp_path)
    raw["metrics"] = {
        "p90_session": {
            "kind": "quantile",
            "quantile": 0.9,
            "ignore_zeros": True,
            "value": {
                "source": "events",
                "column": "value",
                "filter": [{"column": "event", "op": "eq", "value": "session"}],
            },
        }
    }
    raw["experiments"][0].update(
        metrics=["p90_session"],
        cuped_lookback_days=7,
        metric_roles={
            "p90_session": {"role": "guardrail", "direction": "decrease", "margin": 0.02}
        },
    )
    config = parse_config(raw)
    staged = staging.stage(spark, config, ["e1"], ANALYSIS_DATE, "r1")
    rows = [r.asDict() for r in staged.stats.collect()]
    staged.release()
    results = reducer.reduce_experiment(rows, config.experiments[0], ANALYSIS_DATE, "r1")
    expected = {}
    for variant, users in arms.items():
        units = [*users, np.array([])] if variant == "control" else users
        pooled = np.concatenate(units)
        est = float(np.quantile(pooled, 0.9, method="inverted_cdf"))
        lo, hi = outer_probabilities(0.9, len(pooled))
        low, high = (float(np.quantile(pooled, x, method="inverted_cdf")) for x in (lo, hi))
        ind = RatioStats.from_values([np.sum(u <= est) for u in units], [len(u) for u in units])
        expected[variant] = QuantileStats(len(units), 0.9, est, low, high, ind)
    got = {r["variant"]: r for r in results if r["dimension"] is None}
    for variant, s in expected.items():
        row = got[variant]
        assert row["n_units"] == s.n and row["denominator_sum"] == s.n_values
        assert row["mean"] == s.estimate
        assert row["stderr"] == pytest.approx(s.stderr, rel=1e-12)
    want = compare_quantiles(expected["treatment"], expected["control"])
    t = got["treatment"]
    assert t["effect_abs"] == pytest.approx(want.effect_abs, rel=1e-12)
    assert t["effect_abs_stderr"] == pytest.approx(want.effect_abs_stderr, rel=1e-12)
    assert t["p_value"] == pytest.approx(want.p_value, rel=1e-9)
    assert t["status"] == "ok" and t["relative_ci_method"] == "fieller"
    assert t["effect_rel_ci_low"] < t["effect_rel"] < t["effect_rel_ci_high"]
    assert t["cuped_status"] == "not_applicable" and not t["cuped_applied"]
    violated = [r for r in t["recommendation_reasons"] if "p90_session" in r]
    if lift:
        assert t["decision"] == "guardrail_violated" and violated, t["recommendation_reasons"]
        assert t["recommendation"] == "do not ship"
    else:
        assert t["decision"] != "guardrail_violated"
        assert not any("violated" in r for r in t["recommendation_reasons"])
