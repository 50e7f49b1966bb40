"""Overlapping experiments staged in one pass (exposure slots) and distinct counts of a column
other than the analysis unit, checked against an independent plain-Python oracle.

One org can be in up to three experiments at once (different starts, one with an end date,
different variants per org), so its events are joined once to several exposure slots. The
metrics count distinct products (NULLs ignored, a product bought by several users of one
org counted once) and distinct users. Every staged number is recomputed below from the
hand-made rows with nothing but Python and numpy; nothing is taken from the code's output.

The same data is staged under three first-level keys of the source pass: the analysis unit
(`user_id`, distinct products kept as sets), none (two distinct-count columns: both kept as
sets) and the product column itself (the only distinct-count column: kept as flags).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter

import numpy as np
import pytest

from cluster_spark import pipeline
from cluster_spark.config import parse_config
from cluster_spark.tables import ANALYSIS_UNITS_METRIC
from tests.helpers import config_dict, write_delta

UTC = dt.UTC
ANALYSIS_DATE = dt.date(2026, 3, 9)


def ts(day: int, hour: int = 0, minute: int = 0, second: int = 0) -> dt.datetime:
    return dt.datetime(2026, 3, day, hour, minute, second, tzinfo=UTC)


# ---------------------------------------------------------------------------------------------
# Inputs (hand-made)

ALL_METRICS = [
    "revenue_per_user",
    "purchases_per_org",
    "distinct_products_per_org",
    "revenue_per_product",
]
# id → (start, end, control, metrics); the arms are in VARIANTS. xc ends on 03-08: its
# analysis time is 03-09 00:00, the others' 03-10 00:00 (midnight after the analysis date).
EXPERIMENTS = {
    "xa": (dt.date(2026, 3, 2), None, "control", ALL_METRICS),
    "xb": (
        dt.date(2026, 3, 4),
        None,
        "control",
        ["revenue_per_user", "distinct_products_per_org", "revenue_per_product"],
    ),
    "xc": (
        dt.date(2026, 3, 5),
        dt.date(2026, 3, 8),
        "a",
        ["distinct_products_per_org", "purchases_per_org", "revenue_per_user"],
    ),
}

VARIANTS = {
    "xa": {"control": 1.0, "treatment": 1.0},
    "xb": {"control": 1.0, "treatment": 1.0},
    "xc": {"a": 1.0, "b": 1.0, "c": 1.0},
}

EXPOSURE_DDL = "experiment_id string, org_id string, variant string, exposure_ts timestamp"
EXPOSURES = [
    # o1: in all three experiments, with duplicate exposures in xa and xc.
    ("xa", "o1", "control", ts(2, 10)),
    ("xa", "o1", "control", ts(3)),
    ("xb", "o1", "treatment", ts(4, 12)),
    ("xc", "o1", "b", ts(5, 8)),
    ("xc", "o1", "b", ts(5, 9)),
    # o2: all three; exposed exactly at xa's start, an identical duplicate row.
    ("xa", "o2", "treatment", ts(2)),
    ("xa", "o2", "treatment", ts(2)),
    ("xb", "o2", "control", ts(5)),
    ("xc", "o2", "a", ts(6)),
    # o3: xa; in two variants of xb (excluded there only); xc.
    ("xa", "o3", "control", ts(3)),
    ("xb", "o3", "treatment", ts(4)),
    ("xb", "o3", "control", ts(4, 1)),
    ("xc", "o3", "c", ts(7)),
    # o4: only xa; its first row is before xa's start (ignored, same variant).
    ("xa", "o4", "treatment", ts(1, 23)),
    ("xa", "o4", "treatment", ts(3, 6)),
    # o5: xa and xb, no events at all: zeros.
    ("xa", "o5", "control", ts(2, 5)),
    ("xb", "o5", "control", ts(6)),
    # o6: xb and xc.
    ("xb", "o6", "treatment", ts(5)),
    ("xc", "o6", "a", ts(8, 12)),
    # o7: xa exactly at the analysis time (not in), xc after its end (not in), xb an hour
    # before the analysis time (in).
    ("xa", "o7", "treatment", ts(10)),
    ("xc", "o7", "c", ts(9, 6)),
    ("xb", "o7", "control", ts(9, 23)),
    # o8: two variants in xa (excluded there), in xc.
    ("xa", "o8", "control", ts(4)),
    ("xa", "o8", "treatment", ts(5)),
    ("xc", "o8", "a", ts(5, 12)),
    # o9: only xa; its only events have no user id.
    ("xa", "o9", "control", ts(3)),
    # Null ids, another experiment: ignored.
    ("xa", None, "control", ts(3)),
    ("xa", "o1", None, ts(3)),
    ("xz", "o1", "control", ts(3)),
]

EVENT_DDL = (
    "org_id string, user_id string, event string, product string, value double, ts timestamp"
)
EVENTS = [
    ("o1", "u1", "purchase", "p1", 10.0, ts(2, 9)),  # before every o1 exposure
    ("o1", "u1", "purchase", "p1", 20.0, ts(2, 11)),  # xa only
    ("o1", "u2", "purchase", "p1", 5.0, ts(4, 13)),  # p1 again, another user; xa, xb
    ("o1", "u2", "page_view", "p2", 0.0, ts(5, 10)),  # xa, xb, xc
    ("o1", "u3", "purchase", None, 7.0, ts(6)),  # no product
    ("o1", None, "purchase", "p3", 4.0, ts(7)),  # no user
    ("o1", "u3", "purchase", "p1", 3.0, ts(9)),  # exactly at xc's analysis time
    ("o1", "u1", "purchase", "p4", 100.0, ts(9, 12)),  # after xc's analysis time
    ("o1", "u1", "purchase", "p4", 50.0, ts(10)),  # exactly at xa/xb's analysis time
    ("o1", "u1", "purchase", "p5", 60.0, ts(10, 0, 0, 1)),  # after every analysis time
    ("o2", "u4", "page_view", "p2", 0.0, ts(2)),  # exactly at o2's xa exposure
    ("o2", "u4", "purchase", "p2", 12.0, ts(4)),  # xa only
    ("o2", "u5", "purchase", "p2", 8.0, ts(5)),  # exactly at o2's xb exposure
    ("o2", "u5", "purchase", None, None, ts(7)),  # no product, no value: counted, sums 0
    ("o3", "u6", "purchase", "p3", 30.0, ts(3, 12)),  # xa
    ("o3", "u6", "page_view", "p3", 0.0, ts(8)),  # xa, xc
    ("o4", "u7", "purchase", "p1", 9.0, ts(2, 12)),  # before o4's (valid) xa exposure
    ("o4", "u8", "page_view", None, 0.0, ts(4)),
    ("o4", "u7", "purchase", None, 15.0, ts(5)),  # revenue_per_product: D = 0, M := 0
    ("o6", "u9", "page_view", "p5", 0.0, ts(4)),  # before o6's exposures
    ("o6", None, "purchase", "p2", 25.0, ts(6)),  # xb
    ("o6", "u9", "purchase", "p5", 11.0, ts(8, 13)),  # xb, xc
    ("o7", "u10", "purchase", "p2", 6.0, ts(9, 22)),  # before o7's xb exposure
    ("o7", "u10", "purchase", "p2", 6.0, ts(9, 23, 30)),  # xb
    ("o8", "u11", "purchase", "p1", 14.0, ts(6)),  # xc
    ("o8", "u12", "purchase", "p1", 2.0, ts(7)),  # p1 again, another user
    ("o8", "u11", "page_view", "p3", 0.0, ts(8)),
    ("o8", "u12", "page_view", "p4", 0.0, ts(9, 1)),  # after xc's analysis time
    ("o9", None, "purchase", "p1", 40.0, ts(4)),  # revenue_per_user: D = 0, M := 0
    (None, "u1", "purchase", "p1", 99.0, ts(5)),  # no org
    ("o10", "u13", "purchase", "p1", 5.0, ts(5)),  # org never exposed
]


# ---------------------------------------------------------------------------------------------
# The independent oracle


def _purchases(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["event"] == "purchase"]


def _total(rows: list[dict], column: str) -> float:
    return float(sum(r[column] for r in rows if r[column] is not None))


def _distinct(rows: list[dict], column: str) -> float:
    return float(len({r[column] for r in rows if r[column] is not None}))


# name → (kind, numerator(rows), denominator(rows) or None for a mean metric)
ORACLE_METRICS = {
    "revenue_per_user": (
        "ratio",
        lambda rows: _total(_purchases(rows), "value"),
        lambda rows: _distinct(rows, "user_id"),
    ),
    "purchases_per_org": ("mean", lambda rows: float(len(_purchases(rows))), None),
    "distinct_products_per_org": ("mean", lambda rows: _distinct(rows, "product"), None),
    "revenue_per_product": (
        "ratio",
        lambda rows: _total(_purchases(rows), "value"),
        lambda rows: _distinct(_purchases(rows), "product"),
    ),
}


def _bounds(exp_id: str) -> tuple[dt.datetime, dt.datetime]:
    start, end, _, _ = EXPERIMENTS[exp_id]
    last = min(ANALYSIS_DATE, end) if end else ANALYSIS_DATE
    midnight_after = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), tzinfo=UTC)
    return dt.datetime.combine(start, dt.time(), tzinfo=UTC), midnight_after


def oracle_exposures(exp_id: str) -> tuple[dict[str, tuple[dt.datetime, str]], dict[str, int]]:
    """(org → (first exposure, variant) of the units in the experiment, counts of duplicate
    rows, units in several variants and rows with a null id/variant/time)."""
    start, analysis = _bounds(exp_id)
    seen: dict[str, list[tuple[dt.datetime, str]]] = {}
    nulls = 0
    for e, org, variant, t in EXPOSURES:
        if e != exp_id:
            continue
        if org is None or variant is None or t is None:
            nulls += 1
        elif start <= t < analysis:
            seen.setdefault(org, []).append((t, variant))
    units = {
        org: (min(t for t, _ in rows), rows[0][1])
        for org, rows in seen.items()
        if len({v for _, v in rows}) == 1
    }
    counts = {
        "duplicate_exposures": sum(len(seen[org]) - 1 for org in units),
        "units_in_several_variants": len(seen) - len(units),
        "exposures_with_null_ids": nulls,
    }
    return units, counts


def _events_of(org: str) -> list[dict]:
    keys = ("org_id", "user_id", "event", "product", "value", "ts")
    return [dict(zip(keys, e, strict=True)) for e in EVENTS if e[0] == org]


def oracle_unit_values(exp_id: str, metric: str) -> dict[str, list[tuple[float, float]]]:
    """variant → the (M, D) of each unit in the experiment, for one metric."""
    kind, num, den = ORACLE_METRICS[metric]
    _, analysis = _bounds(exp_id)
    units, _ = oracle_exposures(exp_id)
    out: dict[str, list[tuple[float, float]]] = {}
    for org, (exposure, variant) in units.items():
        rows = [r for r in _events_of(org) if exposure <= r["ts"] <= analysis]
        m = num(rows)
        d = 1.0 if den is None else den(rows)
        if kind == "ratio" and d == 0:
            m = 0.0  # conversion_rate (default true)
        out.setdefault(variant, []).append((m, d))
    return out


def group_moments(units: list[tuple[float, float]]) -> dict[str, float]:
    m, d = np.array(units, dtype=float).T
    mc, dc = m - m.mean(), d - d.mean()
    return {
        "n_units": len(units),
        "sum_m": m.sum(),
        "sum_d": d.sum(),
        "mean_m": m.mean(),
        "mean_d": d.mean(),
        "css_mm": (mc * mc).sum(),
        "css_dd": (dc * dc).sum(),
        "css_md": (mc * dc).sum(),
        "n_zero_denominator": int((d == 0).sum()),
    }


def oracle_staging() -> dict[tuple[str, str, str], dict[str, float]]:
    return {
        (exp_id, metric, variant): group_moments(units)
        for exp_id, (_, _, _, metrics) in EXPERIMENTS.items()
        for metric in metrics
        for variant, units in oracle_unit_values(exp_id, metric).items()
    }


def oracle_diagnostics(analysis_unit: bool) -> dict[tuple[str, str | None, str], int]:
    """(experiment, variant or None, check) → value, for the exposure checks, first
    exposures per UTC day, events before exposure and (with an analysis unit) active
    analysis units per variant."""
    out: dict[tuple[str, str | None, str], int] = {}
    for exp_id in EXPERIMENTS:
        start, analysis = _bounds(exp_id)
        units, counts = oracle_exposures(exp_id)
        for check, value in counts.items():
            out[(exp_id, None, check)] = value
        out[(exp_id, None, "events_before_exposure:events")] = sum(
            start <= r["ts"] < exposure
            for org, (exposure, _) in units.items()
            for r in _events_of(org)
        )
        variants = Counter(v for _, v in units.values())
        days = Counter((v, t.astimezone(UTC).date().isoformat()) for t, v in units.values())
        for (variant, day), n in days.items():
            out[(exp_id, variant, f"first_exposures:{day}")] = n
        for variant, n in variants.items():
            out[(exp_id, variant, "assignment_units")] = n
            if analysis_unit:
                out[(exp_id, variant, "analysis_units")] = sum(
                    len(
                        {
                            r["user_id"]
                            for r in _events_of(org)
                            if r["user_id"] is not None and exposure <= r["ts"] <= analysis
                        }
                    )
                    for org, (exposure, v) in units.items()
                    if v == variant
                )
    return out


def test_oracle_sees_the_intended_cases():
    """The hand-made rows hit the cases they are meant to (guards the data, not the code)."""
    units = {e: oracle_exposures(e)[0] for e in EXPERIMENTS}
    assert {e: sorted(u) for e, u in units.items()} == {
        "xa": ["o1", "o2", "o3", "o4", "o5", "o9"],
        "xb": ["o1", "o2", "o5", "o6", "o7"],
        "xc": ["o1", "o2", "o3", "o6", "o8"],
    }
    assert units["xa"]["o4"] == (ts(3, 6), "treatment")
    # o1 in xa: p1 (twice, two users), p2, no-product row, p3 and p4 (at the analysis time).
    xa_products = dict(oracle_unit_values("xa", "distinct_products_per_org"))
    assert (4.0, 1.0) in xa_products["control"]
    rpp = oracle_unit_values("xa", "revenue_per_product")["treatment"]
    assert (0.0, 0.0) in rpp  # o4: revenue 15 without a product: M := 0
    rpu = oracle_unit_values("xa", "revenue_per_user")["control"]
    assert (0.0, 0.0) in rpu  # o9: revenue 40 without a user; o5: no events
    assert rpu.count((0.0, 0.0)) == 2


# ---------------------------------------------------------------------------------------------
# The product, staged once per first-level key

LAYOUTS = {
    # analysis unit user_id: first level per (org, user), products as sets
    "by_user": ("user_id", ALL_METRICS),
    # no analysis unit, two distinct-count columns: no first-level key, both as sets
    "no_key": (None, ALL_METRICS),
    # no analysis unit, one distinct-count column (product): product flags per (org, product)
    "by_product": (
        None,
        ["purchases_per_org", "distinct_products_per_org", "revenue_per_product"],
    ),
}


def build_config(root, out, analysis_unit: str | None, allowed: list[str]):
    """Inputs under `root`, the three output tables under `out`."""
    experiments = []
    for exp_id, (start, end, control, metrics) in EXPERIMENTS.items():
        exp = {
            "id": exp_id,
            "assignment_unit": "org_id",
            "control": control,
            "variants": VARIANTS[exp_id],
            "start": start.isoformat(),
            "metrics": [m for m in metrics if m in allowed],
        }
        if end is not None:
            exp["end"] = end.isoformat()
        if analysis_unit is not None:
            exp["analysis_unit"] = analysis_unit
        experiments.append(exp)
    raw = config_dict(root, experiments)
    purchase = [{"column": "event", "op": "eq", "value": "purchase"}]
    revenue = {"source": "events", "agg": "sum", "column": "value", "filter": purchase}
    raw["metrics"] = {
        "revenue_per_user": {
            "kind": "ratio",
            "numerator": revenue,
            "denominator": {"source": "events", "agg": "count_distinct", "column": "user_id"},
        },
        "purchases_per_org": {
            "kind": "mean",
            "numerator": {"source": "events", "agg": "count", "filter": purchase},
        },
        "distinct_products_per_org": {
            "kind": "mean",
            "numerator": {"source": "events", "agg": "count_distinct", "column": "product"},
        },
        "revenue_per_product": {
            "kind": "ratio",
            "numerator": revenue,
            "denominator": {
                "source": "events",
                "agg": "count_distinct",
                "column": "product",
                "filter": purchase,
            },
        },
    }
    raw["metrics"] = {k: v for k, v in raw["metrics"].items() if k in allowed}
    raw["output"] = {k: f"{out}/{k}" for k in ("staging", "results", "diagnostics")}
    return parse_config(raw)


@pytest.fixture(scope="module")
def inputs(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("overlap")
    write_delta(spark, EXPOSURES, EXPOSURE_DDL, root / "exposures")
    write_delta(spark, EVENTS, EVENT_DDL, root / "events")
    return root


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def staged(request, spark, inputs):
    """(layout, config, staging rows, diagnostics rows) of one stage() of all experiments."""
    analysis_unit, allowed = LAYOUTS[request.param]
    config = build_config(inputs, inputs / request.param, analysis_unit, allowed)
    pipeline.stage(spark, config, ANALYSIS_DATE)
    where = f"analysis_date = DATE'{ANALYSIS_DATE.isoformat()}'"
    stats = spark.read.format("delta").load(config.output.staging.path).where(where).collect()
    diags = spark.read.format("delta").load(config.output.diagnostics.path).where(where).collect()
    return request.param, config, stats, diags


STAT_FIELDS = (
    "n_units",
    "sum_m",
    "sum_d",
    "mean_m",
    "mean_d",
    "css_mm",
    "css_dd",
    "css_md",
    "n_zero_denominator",
)


def test_staged_moments_equal_the_oracle(staged):
    layout, _, stats, _ = staged
    allowed = LAYOUTS[layout][1]
    expected = {k: v for k, v in oracle_staging().items() if k[1] in allowed}
    assert not [r for r in stats if r.winsorized]  # no metric is winsorized
    # the analysis-unit balance rows are checked in test_staging/test_pipeline
    metrics = [r for r in stats if r.metric != ANALYSIS_UNITS_METRIC]
    got = {(r.experiment_id, r.metric, r.variant): r for r in metrics if not r.winsorized}
    assert sorted(got) == sorted(expected)
    mismatches = []
    for key, want in sorted(expected.items()):
        row = got[key]
        for name in STAT_FIELDS:
            if row[name] != pytest.approx(want[name], rel=1e-9):
                mismatches.append(f"{key} {name}: staged {row[name]!r}, oracle {want[name]!r}")
    assert not mismatches, "\n".join(mismatches)


def test_staged_diagnostics_equal_the_oracle(staged):
    layout, _, _, diags = staged
    expected = oracle_diagnostics(analysis_unit=LAYOUTS[layout][0] is not None)
    got = {(d.experiment_id, d.variant, d.check): d.value for d in diags}
    assert {k: got.get(k) for k in expected} == expected
