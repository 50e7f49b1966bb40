"""Metric options on tiny hand-made data; expected unit values are worked out by hand."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from cluster_spark import pipeline, staging
from cluster_spark.config import parse_config
from cluster_spark.errors import DataQualityError, InputError
from cluster_spark.staging.options import PERCENTILE_ACCURACY
from tests.helpers import ANALYSIS_DATE, EVENT_DDL, EXPOSURE_DDL, at, config_dict, write_delta

PURCHASE = [{"column": "event", "op": "eq", "value": "purchase"}]
REVENUE = {"source": "events", "agg": "sum", "column": "value", "filter": PURCHASE}

# Analysis time T = 2026-03-10 00:00 = at(8).
UNITS = [
    ("e1", "o1", "control", at(0)),
    ("e1", "o2", "control", at(1)),
    ("e1", "o3", "treatment", at(0)),
    ("e1", "o4", "treatment", at(6)),  # window [0,1] completes exactly at T
    ("e1", "o5", "treatment", at(6, 1)),  # completes 1h after T
    ("e1", "o6", "treatment", at(7, 12)),  # exposed 12h before T
]
WINDOW_EVENTS = [
    ("o1", "u1", "purchase", 10.0, at(0)),  # exactly at exposure: counted
    ("o1", "u1", "purchase", 5.0, at(2)),  # exactly at exposure + 2·24h: outside [0,1]
    ("o1", "u1", "purchase", 3.0, at(1, 23 + 59 / 60)),  # 1 minute before: inside
    ("o2", "u2", "purchase", 7.0, at(1, 1)),
    ("o3", "u3", "purchase", 4.0, at(1)),  # exactly at exposure + 24h: starts day 1
    ("o4", "u4", "purchase", 6.0, at(7)),  # exactly at T − 24h: mature for a 24h bake
    ("o5", "u5", "purchase", 100.0, at(6, 2)),
    ("o3", "u3", "purchase", 9.0, at(7) + dt.timedelta(seconds=1)),  # not mature
    ("o6", "u6", "purchase", 2.0, at(7, 13)),
]


def _stats(spark, raw, experiment="e1"):
    staged = staging.stage(spark, parse_config(raw), [experiment], ANALYSIS_DATE, "r")
    try:
        return {(r.metric, r.variant, r.winsorized): r for r in staged.stats.collect()}
    finally:
        staged.release()


def _assert_units(row, units):
    m = np.asarray(units, dtype=float)
    assert row.n_units == len(m)
    assert row.sum_m == pytest.approx(m.sum())
    assert row.css_mm == pytest.approx(((m - m.mean()) ** 2).sum())


@pytest.fixture()
def window_data(spark, tmp_path):
    write_delta(spark, UNITS, EXPOSURE_DDL, tmp_path / "exposures")
    write_delta(spark, WINDOW_EVENTS, EVENT_DDL, tmp_path / "events")
    raw = config_dict(tmp_path)
    raw["metrics"] = {
        "rev_d01": {
            "kind": "mean",
            "completed_windows_only": True,
            "numerator": {**REVENUE, "window": {"start_day": 0, "end_day": 1}},
        },
        "rev_d1": {
            "kind": "mean",
            "numerator": {**REVENUE, "window": {"start_day": 1, "end_day": 1}},
        },
        "rev_baked": {"kind": "mean", "bake_hours": 24, "numerator": REVENUE},
    }
    raw["experiments"][0]["metrics"] = list(raw["metrics"])
    return raw


def test_cohort_windows_completed_windows_and_bake(spark, window_data):
    got = _stats(spark, window_data)
    # [0,1] window, completed only: o5 and o6 have not completed theirs.
    _assert_units(got[("rev_d01", "control", False)], [13, 7])
    _assert_units(got[("rev_d01", "treatment", False)], [4, 6])
    assert got[("rev_d01", "treatment", False)].n_incomplete_window == 2
    # [1,1] window, every unit: day 1 after each unit's own exposure.
    _assert_units(got[("rev_d1", "control", False)], [3, 0])
    _assert_units(got[("rev_d1", "treatment", False)], [4, 6, 0, 0])
    # 24h bake: events after T − 24h not counted; o6 (exposed after T − 24h) left out.
    _assert_units(got[("rev_baked", "control", False)], [18, 7])
    _assert_units(got[("rev_baked", "treatment", False)], [4, 6, 100])
    assert got[("rev_baked", "treatment", False)].n_unbaked == 1
    assert got[("rev_baked", "control", False)].n_unbaked == 0


WINSOR_UNITS = [
    ("e1", f"o{i}", v, at(0)) for i, v in enumerate(["control"] * 4 + ["treatment"] * 4)
]
WINSOR_VALUES = {"control": [1, 2, 2, 10], "treatment": [2, 3, 50, 0]}


@pytest.fixture()
def winsor_data(spark, tmp_path):
    values = WINSOR_VALUES["control"] + WINSOR_VALUES["treatment"]
    events = [(f"o{i}", f"u{i}", "purchase", float(v), at(1)) for i, v in enumerate(values)]
    write_delta(spark, WINSOR_UNITS, EXPOSURE_DDL, tmp_path / "exposures")
    write_delta(spark, events, EVENT_DDL, tmp_path / "events")
    raw = config_dict(tmp_path)
    raw["metrics"] = {
        "rev_w": {
            "kind": "mean",
            "numerator": {**REVENUE, "winsorize": {"lower": 0.2, "upper": 0.8}},
        },
        "rev_w0": {
            "kind": "mean",
            "numerator": {**REVENUE, "winsorize": {"upper": 0.8, "ignore_zeros": False}},
        },
    }
    raw["experiments"][0]["metrics"] = ["rev_w", "rev_w0"]
    return raw


def test_winsorization_pools_variants_and_handles_ties(spark, winsor_data):
    got = _stats(spark, winsor_data)
    pooled = np.array(WINSOR_VALUES["control"] + WINSOR_VALUES["treatment"], dtype=float)
    nonzero = pooled[pooled != 0]
    low = np.quantile(nonzero, 0.2, method="inverted_cdf")  # 2 (a three-way tie)
    high = np.quantile(nonzero, 0.8, method="inverted_cdf")  # 10
    assert (low, high) == (2, 10)
    for variant, vals in WINSOR_VALUES.items():
        v = np.array(vals, dtype=float)
        capped = np.where(v == 0, 0, np.clip(v, low, high))  # zeros are left alone
        row = got[("rev_w", variant, True)]
        assert (row.num_lower_cap, row.num_upper_cap) == (low, high)
        _assert_units(row, capped)
        _assert_units(got[("rev_w", variant, False)], v)  # uncapped beside capped
    high0 = np.quantile(pooled, 0.8, method="inverted_cdf")  # with zeros: 10
    for variant, vals in WINSOR_VALUES.items():
        _assert_units(got[("rev_w0", variant, True)], np.minimum(vals, high0))
        assert got[("rev_w0", variant, True)].num_lower_cap is None


def test_winsorized_results_report_uncapped(spark, winsor_data):
    rows = pipeline.run(spark, parse_config(winsor_data), ANALYSIS_DATE)
    t = next(r for r in rows if r["metric"] == "rev_w" and r["variant"] == "treatment")
    assert t["winsorized"] is True
    assert t["mean"] == pytest.approx((2 + 3 + 10 + 0) / 4)
    assert t["mean_uncapped"] == pytest.approx((2 + 3 + 50 + 0) / 4)
    assert t["effect_abs_uncapped"] == pytest.approx(55 / 4 - 15 / 4)
    assert t["effect_abs"] == pytest.approx(15 / 4 - 16 / 4)
    assert (t["num_lower_cap"], t["num_upper_cap"]) == (2.0, 10.0)


def test_percentile_approx_is_exact_on_moderate_data(spark):
    """docs/design.md, "Percentiles": exact (inverse-CDF) below PERCENTILE_ACCURACY values."""
    from pyspark.sql import functions as F

    rng = np.random.default_rng(1)
    x = np.round(rng.lognormal(3, 1.5, 20_000), 2)
    df = spark.createDataFrame([(float(v),) for v in x], "x double")
    qs = [0.01, 0.5, 0.99, 0.999]
    got = df.agg(F.percentile_approx("x", qs, PERCENTILE_ACCURACY)).first()[0]
    assert got == [np.quantile(x, q, method="inverted_cdf") for q in qs]


def test_numerator_and_denominator_from_different_sources_and_id_mapping(spark, tmp_path):
    write_delta(spark, UNITS[:3], EXPOSURE_DDL, tmp_path / "exposures")
    write_delta(spark, WINDOW_EVENTS, EVENT_DDL, tmp_path / "events")
    spark.createDataFrame(
        [("u1", at(0, 1)), ("u1", at(0, 2)), ("u2", at(1, 2)), ("u3", at(0, 5)), ("u9", at(1))],
        "uid string, ts timestamp",
    ).write.format("delta").save(str(tmp_path / "sessions"))
    spark.createDataFrame(
        [("u1", "o1"), ("u2", "o2"), ("u3", "o3")], "uid string, org string"
    ).write.format("delta").save(str(tmp_path / "users"))
    raw = config_dict(tmp_path)
    raw["sources"]["sessions"] = {
        "path": f"{tmp_path}/sessions",
        "timestamp": "ts",
        "ids": {"user_id": "uid"},
    }
    raw["id_mappings"] = [
        {
            "path": f"{tmp_path}/users",
            "from_id": "user_id",
            "to_id": "org_id",
            "columns": {"user_id": "uid", "org_id": "org"},
        }
    ]
    raw["metrics"] = {
        "revenue_per_session": {
            "kind": "ratio",
            "numerator": REVENUE,
            "denominator": {"source": "sessions", "agg": "count"},
        }
    }
    raw["experiments"][0]["metrics"] = ["revenue_per_session"]
    got = _stats(spark, raw)
    c, t = (
        got[("revenue_per_session", "control", False)],
        got[("revenue_per_session", "treatment", False)],
    )
    # o1: revenue 10+5+3, 2 sessions; o2: 7, 1 session; o3: 4+9 (no bake), 1 session.
    assert (c.sum_m, c.sum_d, c.n_units) == (25.0, 3.0, 2)
    assert (t.sum_m, t.sum_d, t.n_units) == (13.0, 1.0, 1)


MULTI_EVENTS = [
    ("o1", "u1", "purchase", 10.0, at(1)),
    ("o3", "u1", "purchase", 20.0, at(2)),  # u1 also under o3: breaks the design
    ("o1", "u2", "purchase", 1.0, at(1)),
    ("o3", "u3", "purchase", 2.0, at(1)),
]


@pytest.mark.parametrize(
    ("policy", "control", "treatment"),
    [("drop", ([1.0], [1.0]), ([2.0], [1.0])), ("keep_first", ([11.0], [2.0]), ([2.0], [1.0]))],
)
def test_multi_unit_policy(spark, tmp_path, policy, control, treatment):
    write_delta(spark, UNITS[:3], EXPOSURE_DDL, tmp_path / "exposures")
    write_delta(spark, MULTI_EVENTS, EVENT_DDL, tmp_path / "events")
    raw = config_dict(tmp_path)
    raw["experiments"][0]["metrics"] = ["revenue_per_user"]
    raw["experiments"][0]["multi_unit_policy"] = policy
    got = _stats(spark, raw)
    for variant, (m, d) in (("control", control), ("treatment", treatment)):
        r = got[("revenue_per_user", variant, False)]
        # o2 (control) has no events: (0, 0) joins the hand-computed units.
        ms, ds = ([*m, 0.0], [*d, 0.0]) if variant == "control" else (m, d)
        assert (r.sum_m, r.sum_d, r.n_units) == (sum(ms), sum(ds), len(ms))
    raw["experiments"][0]["multi_unit_policy"] = "fail"
    with pytest.raises(DataQualityError, match="e1:u1"):
        _stats(spark, raw)


@pytest.mark.parametrize(
    ("policy", "control", "treatment"),
    [("drop", (1.0, 1.0), (2.0, 1.0)), ("keep_first", (11.0, 3.0), (2.0, 1.0))],
)
def test_multi_unit_policy_holds_in_every_source(spark, tmp_path, policy, control, treatment):
    """u1 is under o1 and o3 in `events` but only under o1 in `visits`: the policy still
    applies to its visits (METHODS: drop that sub-unit's rows everywhere)."""
    write_delta(spark, UNITS[:3], EXPOSURE_DDL, tmp_path / "exposures")
    write_delta(spark, MULTI_EVENTS, EVENT_DDL, tmp_path / "events")
    visits = [("o1", "u1", "visit", 0.0, at(1)), ("o1", "u1", "visit", 0.0, at(2))]
    visits += [("o1", "u2", "visit", 0.0, at(1)), ("o3", "u3", "visit", 0.0, at(1))]
    write_delta(spark, visits, EVENT_DDL, tmp_path / "visits")
    raw = config_dict(tmp_path)
    raw["sources"]["visits"] = {**raw["sources"]["events"], "path": f"{tmp_path}/visits"}
    raw["metrics"] = {
        "revenue_per_visit": {
            "kind": "ratio",
            "numerator": raw["metrics"]["revenue_per_user"]["numerator"],
            "denominator": {"source": "visits", "agg": "count"},
        }
    }
    raw["experiments"][0] |= {"metrics": ["revenue_per_visit"], "multi_unit_policy": policy}
    got = _stats(spark, raw)
    # drop: o1 keeps u2 (1.0, 1 visit), o3 keeps u3 (2.0, 1 visit). keep_first: u1's first
    # event is under o1, so o1 keeps 10 + 1 over 3 visits. o2 (control) has no events.
    for variant, (m, d) in (("control", control), ("treatment", treatment)):
        r = got[("revenue_per_visit", variant, False)]
        assert (r.sum_m, r.sum_d) == (m, d), variant


def test_analysis_unit_rules_stay_with_their_experiment(spark, tmp_path):
    """e1 declares user_id as its analysis unit (policy drop); e2, on the same orgs, declares
    none. Staged together, u1 (seen under o1 and o3) is dropped from e1 only."""
    exposures = UNITS[:3] + [("e2", *u[1:]) for u in UNITS[:3]]
    write_delta(spark, exposures, EXPOSURE_DDL, tmp_path / "exposures")
    write_delta(spark, MULTI_EVENTS, EVENT_DDL, tmp_path / "events")
    raw = config_dict(tmp_path)
    e2 = {k: v for k, v in raw["experiments"][0].items() if k != "analysis_unit"}
    raw["experiments"].append({**e2, "id": "e2"})
    staged = staging.stage(spark, parse_config(raw), ["e1", "e2"], ANALYSIS_DATE, "r")
    try:
        got = {
            (r.experiment_id, r.variant): (r.sum_m, r.sum_d)
            for r in staged.stats.collect()
            if r.metric == "revenue_per_user"
        }
        checks = {(d.experiment_id, d.check) for d in staged.diagnostics.collect()}
    finally:
        staged.release()
    # e1: u1 dropped. o1: u2 (1.0, 1 user); o3: u3 (2.0, 1 user); o2: no events.
    assert got[("e1", "control")] == (1.0, 1.0) and got[("e1", "treatment")] == (2.0, 1.0)
    # e2: u1 counts under both orgs. o1: 10 + 1 over u1, u2; o3: 20 + 2 over u1, u3.
    assert got[("e2", "control")] == (11.0, 2.0) and got[("e2", "treatment")] == (22.0, 2.0)
    assert ("e1", "analysis_units_in_several_units") in checks
    assert not {c for e, c in checks if e == "e2" and c.startswith("analysis_units")}


def test_diagnostics_table(spark, tmp_path):
    from tests.test_staging import EVENTS, EXPOSURES

    write_delta(spark, EXPOSURES, EXPOSURE_DDL, tmp_path / "exposures")
    write_delta(spark, EVENTS, EVENT_DDL, tmp_path / "events")
    config = parse_config(config_dict(tmp_path))
    rows = pipeline.run(spark, config, ANALYSIS_DATE)
    diag = spark.read.format("delta").load(config.output.diagnostics.path).collect()
    got = {(d.check, d.variant): d.value for d in diag if d.metric is None}
    assert got == {
        ("duplicate_exposures", None): 1,
        ("units_in_several_variants", None): 1,
        ("exposures_with_null_ids", None): 1,
        ("events_with_null_ids:events:org_id", None): 1,  # the u9 row
        ("events_with_null_ids:events:user_id", None): 0,
        ("events_with_null_timestamps:events", None): 0,
        ("null_values:events:event", None): 0,
        ("events_before_exposure:events", None): 2,
        ("analysis_units_in_several_units", None): 0,
        # events of exposed units read (start … analysis time): o1 3, o2 2, o3 4 (not the
        # one after the analysis time), o4 2; o5 is excluded, the NULL id reaches none
        ("events_of_units:events", None): 11,
        ("non_finite_values:events:value", None): 0,
        # of those 11, at midnight UTC exactly: o2's at day 1, o3's at days 2, 3 and 8
        ("events_at_midnight:events", None): 4,
        ("assignment_units", "control"): 2,
        ("assignment_units", "treatment"): 3,
        # by UTC day of first exposure: o1 (its first row), o2, o3 on day 0; o4 day 1; o6 day 2
        ("first_exposures:2026-03-02", "control"): 2,
        ("first_exposures:2026-03-02", "treatment"): 1,
        ("first_exposures:2026-03-03", "treatment"): 1,
        ("first_exposures:2026-03-04", "treatment"): 1,
        ("analysis_units", "control"): 3,
        ("analysis_units", "treatment"): 4,
    }
    t = next(r for r in rows if r["variant"] == "treatment")
    assert t["n_analysis_units"] == 4
    # SRM on 2 vs 3 units, equal split: χ² = (2−2.5)²/2.5·2 = 0.2.
    assert t["srm_chi2"] == pytest.approx(0.2) and t["srm_flag"] is False


HOSTILE = [
    "reflect('java.lang.Runtime', 'getRuntime')",
    "java_method('java.lang.System', 'exit', 1)",
    "event) OR (1=1",
    "(SELECT max(value) FROM events)",
    "`event`; DROP TABLE x; --",
]


@pytest.mark.parametrize("column", HOSTILE)
def test_hostile_filter_columns_are_missing_columns(spark, tmp_path, column):
    write_delta(spark, UNITS[:3], EXPOSURE_DDL, tmp_path / "exposures")
    write_delta(spark, WINDOW_EVENTS, EVENT_DDL, tmp_path / "events")
    raw = config_dict(tmp_path)
    raw["metrics"]["purchases_per_org"]["numerator"]["filter"] = [
        {"column": column, "op": "eq", "value": 1}
    ]
    with pytest.raises(InputError, match="missing column"):
        _stats(spark, raw)


def test_hostile_filter_values_are_plain_literals(spark, tmp_path):
    write_delta(spark, UNITS[:3], EXPOSURE_DDL, tmp_path / "exposures")
    write_delta(spark, WINDOW_EVENTS, EVENT_DDL, tmp_path / "events")
    raw = config_dict(tmp_path)
    raw["metrics"]["purchases_per_org"]["numerator"]["filter"] = [
        {"column": "event", "op": "in", "value": ["x' OR '1'='1", *HOSTILE]}
    ]
    got = _stats(spark, raw)
    assert got[("purchases_per_org", "control", False)].sum_m == 0


def test_cuped_pre_period_values_are_staged(spark, tmp_path):
    units = [
        ("e1", "o1", "control", at(3)),
        ("e1", "o2", "control", at(3)),
        ("e1", "o5", "control", at(1)),
        ("e1", "o3", "treatment", at(3)),
        ("e1", "o4", "treatment", at(4)),
    ]
    events = [
        ("o1", "u1", "purchase", 5.0, at(1)),  # exactly exposure − 2 days: pre-period
        ("o1", "u1", "purchase", 7.0, at(0, 23)),  # before the lookback
        ("o1", "u1", "purchase", 10.0, at(3, 1)),
        ("o2", "u2", "purchase", 3.0, at(2, 12)),
        ("o5", "u5", "purchase", 9.0, at(-0.5)),  # before the experiment start, in lookback
        ("o3", "u3", "purchase", 4.0, at(2, 23)),
        ("o3", "u3", "purchase", 8.0, at(5)),
        ("o4", "u4", "purchase", 2.0, at(4)),  # exactly at exposure: post-period
        ("o4", "u4", "purchase", 6.0, at(3)),
    ]
    write_delta(spark, units, EXPOSURE_DDL, tmp_path / "exposures")
    write_delta(spark, events, EVENT_DDL, tmp_path / "events")
    raw = config_dict(tmp_path)
    raw["metrics"] = {"rev": {"kind": "mean", "numerator": REVENUE}}
    raw["experiments"][0].update(metrics=["rev"], cuped_lookback_days=2)
    got = _stats(spark, raw)
    expected = {"control": ([10, 0, 0], [5, 3, 9]), "treatment": ([8, 2], [4, 6])}
    for variant, (m, x) in expected.items():
        m, x = np.array(m, float), np.array(x, float)
        r = got[("rev", variant, False)]
        assert r.mean_m == pytest.approx(m.mean()) and r.mean_x == pytest.approx(x.mean())
        assert r.mean_y == 1.0 and r.css_yy == 0.0 and r.css_xy == 0.0
        assert r.css_xx == pytest.approx(((x - x.mean()) ** 2).sum())
        assert r.css_mx == pytest.approx(((m - m.mean()) * (x - x.mean())).sum())


#: Per org: (variant, window-day purchase values, 7-day pre-period purchase values). The
#: pre-period is 7 times the 1-day window, so X is on a larger scale than M.
PRE_CAP_UNITS = {
    "c1": ("control", [10], [35, 35]),
    "c2": ("control", [10, 10], [70, 70]),
    "c3": ("control", [10, 10, 10], [70, 70, 70]),
    "c4": ("control", [12], []),  # no pre-period: X = Y = 0, ignored and left at 0
    "t1": ("treatment", [16], [50, 50]),
    "t2": ("treatment", [13, 13], [60, 60, 60]),
    "t3": ("treatment", [50] * 4, [100] * 14),  # outlier in both periods
    "t4": ("treatment", [11, 11], [40] * 4),
}


@pytest.fixture()
def pre_cap_data(spark, tmp_path):
    """`rev` (mean, numerator capped at the 0.2/0.8 percentiles) and `rev_per_purchase`
    (ratio, denominator = purchases capped at 0.75) over a 1-day window, CUPED with 7 days."""
    units, events = [], []
    for org, (variant, post, pre) in PRE_CAP_UNITS.items():
        units.append(("e1", org, variant, at(1)))
        events += [(org, "u" + org, "purchase", float(v), at(1, 1 + k)) for k, v in enumerate(post)]
        events += [(org, "u" + org, "purchase", float(v), at(-5, k)) for k, v in enumerate(pre)]
    write_delta(spark, units, EXPOSURE_DDL, tmp_path / "exposures")
    write_delta(spark, events, EVENT_DDL, tmp_path / "events")
    day0 = {"window": {"start_day": 0, "end_day": 0}}
    purchases = {"source": "events", "agg": "count", "filter": PURCHASE, **day0}
    raw = config_dict(tmp_path)
    raw["metrics"] = {
        "rev": {
            "kind": "mean",
            "numerator": {**REVENUE, **day0, "winsorize": {"lower": 0.2, "upper": 0.8}},
        },
        "rev_per_purchase": {
            "kind": "ratio",
            "numerator": {**REVENUE, **day0},
            "denominator": {**purchases, "winsorize": {"upper": 0.75}},
        },
    }
    raw["experiments"][0].update(metrics=["rev", "rev_per_purchase"], cuped_lookback_days=7)
    return raw


def _pre_cap_values(variant: str) -> tuple[np.ndarray, ...]:
    """(M, D, X, Y) of the variant's orgs, unclamped."""
    orgs = [(post, pre) for v, post, pre in PRE_CAP_UNITS.values() if v == variant]
    rows = [(sum(post), len(post), sum(pre), len(pre)) for post, pre in orgs]
    return tuple(np.array(c, dtype=float) for c in zip(*rows, strict=True))


def _clip(v: np.ndarray, low: float | None, high: float | None) -> np.ndarray:
    return np.where(v == 0, 0.0, np.clip(v, low, high))  # zeros ignored and left alone


def test_cuped_pre_period_is_capped_at_its_own_percentiles(spark, pre_cap_data):
    """Caps by hand (inverse-CDF ranks of the pooled non-zero values):
    M 10 12 16 20 22 26 30 200 → 0.2: 2nd = 12, 0.8: ⌈6.4⌉ = 7th = 30;
    X 70 100 140 160 180 210 1400 → 0.2: ⌈1.4⌉ = 2nd = 100, 0.8: ⌈5.6⌉ = 6th = 210;
    D 1 1 1 2 2 2 3 4 → 0.75: 6th = 2;  Y 2 2 2 3 3 4 14 → 0.75: ⌈5.25⌉ = 6th = 4.
    The analysis period's caps (12, 30) would flatten X to 30 but for the zero."""
    got = _stats(spark, pre_cap_data)
    rev = got[("rev", "control", True)]
    assert (rev.num_lower_cap, rev.num_upper_cap) == (12.0, 30.0)
    assert (rev.pre_num_lower_cap, rev.pre_num_upper_cap) == (100.0, 210.0)
    assert (rev.pre_den_lower_cap, rev.pre_den_upper_cap) == (None, None)
    ratio = got[("rev_per_purchase", "treatment", True)]
    assert (ratio.den_upper_cap, ratio.pre_den_upper_cap) == (2.0, 4.0)
    assert (ratio.num_upper_cap, ratio.pre_num_upper_cap) == (None, None)
    clamped_x = {"control": [100, 140, 210, 0], "treatment": [100, 180, 210, 160]}
    clamped_y = {"control": [2, 2, 3, 0], "treatment": [2, 3, 4, 4]}
    for variant in ("control", "treatment"):
        m, _, x, y = _pre_cap_values(variant)
        assert np.array_equal(_clip(x, 100, 210), clamped_x[variant])
        assert np.array_equal(_clip(y, None, 4), clamped_y[variant])
        x_w, y_w = np.array(clamped_x[variant], float), np.array(clamped_y[variant], float)
        r = got[("rev", variant, True)]
        assert r.mean_x == pytest.approx(x_w.mean())
        assert r.css_xx == pytest.approx(((x_w - x_w.mean()) ** 2).sum())
        m_w = _clip(m, 12, 30)
        assert r.css_mx == pytest.approx(((m_w - m_w.mean()) * (x_w - x_w.mean())).sum())
        r = got[("rev_per_purchase", variant, True)]
        assert (r.mean_x, r.mean_y) == pytest.approx((x.mean(), y_w.mean()))  # X not capped
        assert r.css_yy == pytest.approx(((y_w - y_w.mean()) ** 2).sum())
        assert r.css_xy == pytest.approx(((x - x.mean()) * (y_w - y_w.mean())).sum())
        assert got[("rev", variant, False)].mean_x == pytest.approx(x.mean())  # raw beside


def test_cuped_theta_and_effect_use_the_pre_period_caps(spark, pre_cap_data):
    """A mean metric: θ = Σ_g cov_g(M, X)/n_g ÷ Σ_g var_g(X)/n_g and Δ_adj = ΔM̄ − θ ΔX̄ on
    the clamped values (numpy): variance reduction 81 %. At the analysis period's caps
    (12, 30) every treatment X would clamp to 30: V_P = 0, and CUPED would fall back."""
    rows = pipeline.run(spark, parse_config(pre_cap_data), ANALYSIS_DATE)
    t = next(r for r in rows if r["metric"] == "rev" and r["variant"] == "treatment")
    arms = {}
    for variant in ("treatment", "control"):
        m, _, x, _ = _pre_cap_values(variant)
        arms[variant] = (_clip(m, 12, 30), _clip(x, 100, 210))
    (m_t, x_t), (m_c, x_c) = arms["treatment"], arms["control"]
    n = 4

    def cov(a, b):
        return np.cov(a, b, ddof=1)[0, 1]

    theta = (cov(m_t, x_t) / n + cov(m_c, x_c) / n) / (cov(x_t, x_t) / n + cov(x_c, x_c) / n)
    var_adj = sum(np.var(m - theta * x, ddof=1) / n for m, x in arms.values())
    reduction = 1 - var_adj / (np.var(m_t, ddof=1) / n + np.var(m_c, ddof=1) / n)
    assert reduction == pytest.approx(0.8138436465, rel=1e-9)
    assert t["cuped_status"] == "applied" and t["winsorized"] is True
    assert (t["pre_num_lower_cap"], t["pre_num_upper_cap"]) == (100.0, 210.0)
    assert t["cuped_theta"] == pytest.approx(theta, rel=1e-9)
    effect = (m_t.mean() - m_c.mean()) - theta * (x_t.mean() - x_c.mean())
    assert t["effect_abs"] == pytest.approx(effect, rel=1e-9)
    assert t["variance_reduction"] == pytest.approx(reduction, rel=1e-9)
