"""The cluster_spark config the bench analyses, built in code with `parse_config`: 20
metrics over the generated events — sums, counts and distinct counts (several filtered),
two with cohort windows, two winsorized — used by each experiment of `dataset.EXPERIMENTS`."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import paths  # noqa: F401  (src/ on sys.path before cluster_spark)
from dataset import ANALYSIS_DATE, EXPERIMENTS, START

from cluster_spark.config import Config, parse_config


def _ev(agg: str, column: str | None = None, *filters: dict, **extra: Any) -> dict[str, Any]:
    comp: dict[str, Any] = {"source": "events", "agg": agg, **extra}
    if column:
        comp["column"] = column
    if filters:
        comp["filter"] = list(filters)
    return comp


def _is(event: str) -> dict[str, Any]:
    return {"column": "event", "op": "eq", "value": event}


def metric_definitions() -> dict[str, dict[str, Any]]:
    """20 metrics: sums, counts and distinct counts (several filtered), two with cohort
    windows, two winsorized."""
    users = _ev("count_distinct", "user_id")
    revenue = _ev("sum", "value", _is("purchase"))
    mean, ratio = "mean", "ratio"
    defs = {
        "events_per_org": (mean, _ev("count"), None),
        "revenue_per_org": (mean, revenue, None),
        "revenue_per_user": (ratio, revenue, users),
        "purchasers_per_user": (ratio, _ev("count_distinct", "user_id", _is("purchase")), users),
        "purchases_per_user": (ratio, _ev("count", None, _is("purchase")), users),
        "clicks_per_org": (mean, _ev("count", None, _is("click")), None),
        "page_views_per_org": (mean, _ev("count", None, _is("page_view")), None),
        "carts_per_org": (mean, _ev("count", None, _is("add_to_cart")), None),
        "revenue_per_purchase": (ratio, revenue, _ev("count", None, _is("purchase"))),
        "cart_conversion": (
            ratio,
            _ev("count", None, _is("purchase")),
            _ev("count", None, _is("add_to_cart")),
        ),
        "searches_per_user": (ratio, _ev("count", None, _is("search")), users),
        "active_users_per_org": (mean, users, None),
        "clickers_per_org": (mean, _ev("count_distinct", "user_id", _is("click")), None),
        "value_per_event": (ratio, _ev("sum", "value"), _ev("count")),
        "signups_per_org": (mean, _ev("count", None, _is("signup")), None),
        "big_purchases_per_org": (
            mean,
            _ev("count", None, _is("purchase"), {"column": "value", "op": "gt", "value": 100}),
            None,
        ),
        "revenue_week1_per_org": (
            mean,
            _ev("sum", "value", _is("purchase"), window={"start_day": 0, "end_day": 6}),
            None,
        ),
        "active_users_day0_2": (
            mean,
            _ev("count_distinct", "user_id", window={"start_day": 0, "end_day": 2}),
            None,
        ),
        "revenue_per_org_winsorized": (
            mean,
            {**revenue, "winsorize": {"upper": 0.99}},
            None,
        ),
        "events_per_user_winsorized": (
            ratio,
            _ev("count", winsorize={"upper": 0.99}),
            users,
        ),
    }
    out = {}
    for name, (kind, num, den) in defs.items():
        out[name] = {"kind": kind, "numerator": num}
        if den is not None:
            out[name]["denominator"] = den
    assert len(out) == 20
    return out


#: The dimensions of the sliced variant of the config (`costs.py`): values per dimension.
SLICE_DIMENSIONS = {"tier": 3, "region": 12}


#: The quantile metric `costs.py` adds: p90 of purchase values (`metrics.<name>` config).
P90_PURCHASE = {
    "kind": "quantile",
    "quantile": 0.9,
    "value": {
        "source": "events",
        "column": "value",
        "filter": [{"column": "event", "op": "eq", "value": "purchase"}],
    },
}


def bench_config(
    data: Path,
    results: Path,
    slices: bool = False,
    cache: str = "memory",
    quantile: bool = False,
    incremental: dict | None = None,
) -> Config:
    """Every experiment with all 20 metrics over the tables under `data` (ensure_data's
    directory); staging, results and diagnostics written under `results`. `slices`: the
    first experiment is also broken down by `SLICE_DIMENSIONS`, from the org attributes
    table `costs.py` writes beside the data. `cache`: the config's `cache`. `quantile`:
    every experiment also has the quantile metric `p90_purchase` (`P90_PURCHASE`).
    `incremental`: the config's `incremental` (`refresh.py`)."""
    metrics = metric_definitions() | ({"p90_purchase": P90_PURCHASE} if quantile else {})
    experiments = [
        {
            "id": exp_id,
            "assignment_unit": "org_id",
            "analysis_unit": "user_id",
            "control": "control",
            "variants": {v: 1 for v in variants},
            "start": (START + dt.timedelta(days=offset)).date().isoformat(),
            "end": ANALYSIS_DATE.isoformat(),
            "metrics": list(metrics),
        }
        for exp_id, variants, _, offset, _ in EXPERIMENTS
    ]
    raw = {
        "exposures": {
            "path": str(data / "exposures"),
            "timestamp": "exposure_ts",
            "ids": {"org_id": "org_id"},
        },
        "sources": {
            "events": {
                "path": str(data / "events"),
                "timestamp": "ts",
                "ids": {"org_id": "org_id", "user_id": "user_id"},
            }
        },
        "metrics": metrics,
        "experiments": experiments,
        "cache": cache,
        "output": {
            "staging": str(results / "staging"),
            "results": str(results / "results"),
            "diagnostics": str(results / "diagnostics"),
        },
    }
    if incremental is not None:
        raw["incremental"] = incremental
    if slices:
        raw["unit_attributes"] = {
            "orgs": {
                "path": str(data / "org_attributes"),
                "timestamp": "updated_at",
                "ids": {"org_id": "org_id"},
                "dimensions": list(SLICE_DIMENSIONS),
            }
        }
        experiments[0]["dimensions"] = list(SLICE_DIMENSIONS)
    return parse_config(raw, origin="bench/run.py")
