"""Staging on tiny hand-made data: every expected unit value is written out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from cluster_spark import staging
from cluster_spark.errors import InputError
from cluster_spark.tables import ANALYSIS_UNITS_METRIC
from tests.helpers import ANALYSIS_DATE, EVENT_DDL, EXPOSURE_DDL, at, make_config, write_delta

EXPOSURES = [
    ("e1", "o1", "control", at(0, 10)),
    ("e1", "o1", "control", at(1)),  # duplicate exposure: the first one counts
    ("e1", "o2", "control", at(0)),
    ("e1", "o3", "treatment", at(0)),
    ("e1", "o4", "treatment", at(1)),
    ("e1", "o5", "control", at(0)),
    ("e1", "o5", "treatment", at(0, 1)),  # o5 in two variants: excluded
    ("e1", "o6", "treatment", at(2)),  # exposed, no events: zeros
    ("e1", "o7", "control", at(8)),  # exposed at the analysis time: not yet in
    ("e1", None, "control", at(0)),  # null id: dropped
    ("e2", "o1", "treatment", at(0)),  # another experiment: ignored
]
EVENTS = [
    ("o1", "u1", "purchase", 10.0, at(0, 12)),
    ("o1", "u2", "page_view", 0.0, at(0, 11)),
    ("o1", "u1", "purchase", 5.0, at(0, 9)),  # before o1's exposure
    ("o2", "u3", "page_view", 0.0, at(1)),
    ("o2", "u3", "purchase", 7.0, at(1, 1)),
    ("o3", "u4", "purchase", 20.0, at(0, 5)),
    ("o3", "u5", "page_view", 0.0, at(2)),
    ("o3", "u6", "page_view", 0.0, at(3)),
    ("o3", "u4", "purchase", 1.0, at(8)),  # exactly at the analysis time: counted
    ("o3", "u4", "purchase", 50.0, at(8, 1)),  # after the analysis time
    ("o4", "u7", "purchase", 4.0, at(0, 23)),  # before o4's exposure
    ("o4", "u7", "page_view", 0.0, at(1, 1)),
    ("o5", "u8", "purchase", 100.0, at(1)),  # excluded unit
    (None, "u9", "purchase", 3.0, at(1)),  # null id
]
# Per unit (M, D), worked out by hand from the rows above.
EXPECTED_UNITS = {
    ("revenue_per_user", "control"): [(10, 2), (7, 1)],  # o1, o2
    ("revenue_per_user", "treatment"): [(21, 3), (0, 1), (0, 0)],  # o3, o4, o6
    ("purchases_per_org", "control"): [(1, 1), (1, 1)],
    ("purchases_per_org", "treatment"): [(2, 1), (0, 1), (0, 1)],
}


@pytest.fixture(scope="module")
def tiny(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    write_delta(spark, EXPOSURES, EXPOSURE_DDL, root / "exposures")
    write_delta(spark, EVENTS, EVENT_DDL, root / "events")
    return root


def test_staged_statistics_match_hand_computed_units(spark, tiny):
    config = make_config(tiny)
    rows = staging.stage(spark, config, ["e1"], ANALYSIS_DATE, "r1").stats.collect()
    got = {(r.metric, r.variant): r for r in rows if r.metric != ANALYSIS_UNITS_METRIC}
    assert set(got) == set(EXPECTED_UNITS)
    # the analysis-unit balance rows: users active after exposure per org (D of
    # revenue_per_user above), m = users, d = 1
    balance = {r.variant: r for r in rows if r.metric == ANALYSIS_UNITS_METRIC}
    for variant in ("control", "treatment"):
        users = [d for _, d in EXPECTED_UNITS[("revenue_per_user", variant)]]
        assert (balance[variant].n_units, balance[variant].sum_m) == (len(users), sum(users))
        assert balance[variant].sum_d == len(users)
    for key, units in EXPECTED_UNITS.items():
        m, d = np.array(units, dtype=float).T
        r = got[key]
        assert r.experiment_id == "e1" and r.analysis_date == ANALYSIS_DATE and r.run_id == "r1"
        assert r.n_units == len(m)
        assert (r.sum_m, r.sum_d) == pytest.approx((m.sum(), d.sum()))
        assert (r.mean_m, r.mean_d) == pytest.approx((m.mean(), d.mean()))
        assert r.css_mm == pytest.approx(((m - m.mean()) ** 2).sum())
        assert r.css_dd == pytest.approx(((d - d.mean()) ** 2).sum())
        assert r.css_md == pytest.approx(((m - m.mean()) * (d - d.mean())).sum())


def test_simple_ratio_counts_numerator_without_denominator(spark, tmp_path):
    """conversion_rate off: a unit with M > 0 and D = 0 keeps its numerator."""
    write_delta(spark, [("e1", "o1", "control", at(0))], EXPOSURE_DDL, tmp_path / "exposures")
    write_delta(spark, [("o1", "u1", "purchase", 5.0, at(1))], EVENT_DDL, tmp_path / "events")
    from cluster_spark.config import parse_config
    from tests.helpers import config_dict

    raw = config_dict(tmp_path)
    raw["metrics"]["revenue_per_view"] = {
        "kind": "ratio",
        "numerator": {"source": "events", "agg": "sum", "column": "value"},
        "denominator": {
            "source": "events",
            "agg": "count",
            "filter": [{"column": "event", "op": "eq", "value": "page_view"}],
        },
    }
    raw["metrics"]["revenue_per_view_cr"] = {**raw["metrics"]["revenue_per_view"]}
    raw["metrics"]["revenue_per_view"]["conversion_rate"] = False
    raw["experiments"][0]["metrics"] = ["revenue_per_view", "revenue_per_view_cr"]
    rows = staging.stage(spark, parse_config(raw), ["e1"], ANALYSIS_DATE, "r").stats.collect()
    sums = {r.metric: (r.sum_m, r.sum_d) for r in rows if r.metric != ANALYSIS_UNITS_METRIC}
    assert sums == {"revenue_per_view": (5.0, 0.0), "revenue_per_view_cr": (0.0, 0.0)}


def test_missing_column_is_named(spark, tmp_path):
    write_delta(spark, EXPOSURES[:3], EXPOSURE_DDL, tmp_path / "exposures")
    spark.createDataFrame(
        [("o1", "u1", 1.0, at(1))], "org_id string, user_id string, value double, ts timestamp"
    ).write.format("delta").save(str(tmp_path / "events"))
    with pytest.raises(InputError, match="missing column 'event'"):
        staging.stage(spark, make_config(tmp_path), ["e1"], ANALYSIS_DATE, "r").stats.collect()


def test_wrong_column_type_is_named(spark, tmp_path):
    write_delta(spark, EXPOSURES[:3], EXPOSURE_DDL, tmp_path / "exposures")
    spark.createDataFrame(
        [("o1", "u1", "purchase", "ten", at(1))],
        "org_id string, user_id string, event string, value string, ts timestamp",
    ).write.format("delta").save(str(tmp_path / "events"))
    with pytest.raises(InputError, match="column 'value' has type string, expected numeric"):
        staging.stage(spark, make_config(tmp_path), ["e1"], ANALYSIS_DATE, "r")


def test_missing_table_is_named(spark, tmp_path):
    with pytest.raises(InputError, match="exposures"):
        staging.stage(spark, make_config(tmp_path), ["e1"], ANALYSIS_DATE, "r")


def _shape(schema) -> list[tuple[str, str]]:
    return [(f.name, f.dataType.simpleString()) for f in schema.fields]


def test_frames_at_the_seams_have_the_declared_schemas(spark, tiny):
    """The per-unit contract and both staged tables, as declared once in `tables`."""
    from cluster_spark import tables
    from cluster_spark.staging.plan import Cache, plans

    config = make_config(tiny)
    (plan,) = plans(config, ["e1"], ANALYSIS_DATE)
    cache = Cache()
    try:
        values = staging.stage_plan(spark, plan, cache).values.drop("_n_subs")
        assert _shape(values.schema) == tables.UNIT_VALUES_COLUMNS
    finally:
        cache.release()
    staged = staging.stage(spark, config, ["e1"], ANALYSIS_DATE, "r1")
    try:
        assert _shape(staged.stats.schema) == tables.STAGING_COLUMNS
        assert _shape(staged.diagnostics.schema) == tables.DIAGNOSTICS_COLUMNS
    finally:
        staged.release()


def rich_config(spark, tiny, tmp_path, exposure_rows=EXPOSURES) -> dict:
    """The tiny data's config with every feature that adds staging columns: slices from
    exposures and from unit attributes, CUPED, winsorization, two sources keyed by the
    analysis unit, a distinct count of a non-key column, a quantile metric."""
    from tests.helpers import config_dict

    exposures = [(*row, "gold" if row[1] in ("o1", "o3") else None) for row in exposure_rows]
    write_delta(spark, exposures, EXPOSURE_DDL + ", plan string", tmp_path / "exposures")
    orgs = [("o1", "eu", at(-30)), ("o3", "us", at(-30))]
    write_delta(spark, orgs, "org string, region string, updated_at timestamp", tmp_path / "orgs")
    raw = config_dict(tiny)
    raw["exposures"] |= {"path": f"{tmp_path}/exposures", "dimensions": ["plan"]}
    raw["sources"]["views"] = {**raw["sources"]["events"]}
    raw["unit_attributes"] = {
        "orgs": {
            "path": f"{tmp_path}/orgs",
            "timestamp": "updated_at",
            "ids": {"org_id": "org"},
            "dimensions": ["region"],
        }
    }
    raw["metrics"]["revenue_per_user"]["numerator"]["winsorize"] = {"upper": 0.9}
    raw["metrics"]["kinds_per_view"] = {
        "kind": "ratio",
        "numerator": {"source": "events", "agg": "count_distinct", "column": "event"},
        "denominator": {"source": "views", "agg": "count"},
    }
    raw["metrics"]["median_value"] = {
        "kind": "quantile",
        "quantile": 0.5,
        "value": {"source": "events", "column": "value"},
    }
    raw["experiments"][0] |= {
        "metrics": ["revenue_per_user", "kinds_per_view", "median_value"],
        "dimensions": ["plan", "region"],
        "cuped_lookback_days": 7,
    }
    return raw


def test_every_step_of_a_pass_has_its_declared_frame(spark, tiny, tmp_path):
    """Each step's output against `staging.frames`, in a pass with every feature that adds
    columns: slices from exposures and from unit attributes, CUPED, winsorization, two
    sources keyed by the analysis unit, a distinct count of a non-key column, a quantile
    metric. A frame with an undeclared or a missing column fails by name."""
    from cluster_spark.config import parse_config
    from cluster_spark.staging import frames
    from cluster_spark.staging.plan import Cache, plans

    raw = rich_config(spark, tiny, tmp_path)
    (plan,) = plans(parse_config(raw), ["e1"], ANALYSIS_DATE)
    cache = Cache()
    try:
        one = staging.stage_plan(spark, plan, cache)
        events = next(level for level in one.levels if level.source == "events")
        checked = [
            (frames.EXPOSED_UNITS, one.units),
            (frames.UNIT_SLICES, one.slices),
            (frames.OFFENDERS, one.offenders),
            (frames.PER_UNIT, one.per_unit.wide),
            (frames.UNIT_VALUES, one.values),
            (frames.WINSORIZED, one.winsorized),
            *[(frames.FIRST_LEVEL, level.level1) for level in one.levels],
            (frames.DISTINCT_VALUES, events.values),
        ]
        wrong = [w for frame, df in checked for w in frame.mismatches(df.columns)]
        assert wrong == []
        wide = one.per_unit.wide.columns
        # the features did add their columns
        assert {"_slices", "_n_active", "_pre__views", "_subs__views", "_dim0"} <= set(wide)
        assert any(c.endswith("_pre") for c in wide)
        staged = [set(df.columns) for df in one.stats]
        assert len(staged) == 2 and "quantile_estimate" in staged[1]
    finally:
        cache.release()
    # a frame with a column too many, or one missing, is named
    assert frames.UNIT_SLICES.mismatches(["experiment_id", "_unit", "_slices", "_x"]) == [
        "unit slices: undeclared column '_x'"
    ]
    assert frames.UNIT_SLICES.mismatches(["experiment_id", "_slices"]) == [
        "unit slices: missing column '_unit'"
    ]


def test_unit_values_frame_declares_the_per_unit_contract():
    from cluster_spark import tables
    from cluster_spark.staging import frames

    declared = [c for c in frames.UNIT_VALUES.columns if c != "_n_subs"]
    assert declared == [c for c, _ in tables.UNIT_VALUES_COLUMNS]
