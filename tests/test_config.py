"""Config validation happens before Spark: errors name the file, key, value and rule."""

from __future__ import annotations

import datetime as dt

import pytest
import yaml

from cluster_spark.config import load_config, parse_config
from cluster_spark.errors import ConfigError
from tests.helpers import config_dict


def _with(change):
    raw = config_dict("/data")
    change(raw)
    return raw


def _set(path, value):
    def change(raw):
        node = raw
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return change


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (
            ("metrics", "revenue_per_user", "numerator", "agg"),
            "median",
            r"metrics.revenue_per_user.numerator.agg = 'median': Input should be 'sum'",
        ),
        (
            ("metrics", "revenue_per_user", "numerator", "winsorize"),
            {"upper": 1.5},
            r"winsorize.upper = 1.5: Input should be less than 1",
        ),
        (
            ("metrics", "revenue_per_user", "numerator", "winsorize"),
            {"lower": 0},
            r"winsorize.lower = 0: Input should be greater than 0",
        ),
        (
            ("metrics", "revenue_per_user", "numerator", "window"),
            {"start_day": 3, "end_day": 1},
            r"end_day 1 is before start_day 3",
        ),
        (("experiments", 0, "metrics"), ["revenue_per_user", "nope"], r"unknown metric 'nope'"),
        (("experiments", 0, "alpha"), 2, r"experiments.0.alpha = 2: Input should be less than 1"),
        (("experiments", 0, "start"), "yesterday", r"experiments.0.start = 'yesterday'"),
        (
            ("metrics", "purchases_per_org", "numerator", "source"),
            "clicks",
            r"unknown source 'clicks'",
        ),
        (("metrics", "revenue_per_user", "numerator", "column"), None, r"agg 'sum' needs a column"),
        (("experiments", 0, "assignment_unit"), "team_id", r"'team_id' is not an id"),
        (("output", "typo"), "x", r"output.typo = 'x': Extra inputs are not permitted"),
        (("experiments", 0, "sequential"), True, r"sequential: true needs sequential_n_star"),
    ],
)
def test_errors_name_key_value_and_rule(path, value, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(_with(_set(path, value)), origin="conf/x.yaml")


def test_error_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_with(_set(("experiments", 0, "alpha"), -1))))
    with pytest.raises(ConfigError, match=rf"{path}: invalid configuration"):
        load_config(path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_relative_paths_resolve_against_root(tmp_path):
    raw = config_dict("data")
    raw["output"]["results"] = "s3://bucket/results"
    config = parse_config(raw, root=tmp_path)
    assert config.exposures.path == str(tmp_path / "data" / "exposures")
    assert config.output.results.path == "s3://bucket/results"


def test_analysis_time_is_midnight_after_the_date_capped_by_end():
    exp = parse_config(config_dict("/d")).experiments[0]
    assert exp.analysis_time(dt.date(2026, 3, 9)) == dt.datetime(2026, 3, 10, tzinfo=dt.UTC)
    capped = exp.model_copy(update={"end": dt.date(2026, 3, 5)})
    assert capped.analysis_time(dt.date(2026, 3, 9)) == dt.datetime(2026, 3, 6, tzinfo=dt.UTC)
    assert exp.start_time == dt.datetime(2026, 3, 2, tzinfo=dt.UTC)


def test_example_configs_are_valid():
    for path in ("conf/demo.yaml", "conf/example.yaml"):
        assert load_config(path).experiments


_P90 = {
    "kind": "quantile",
    "quantile": 0.9,
    "value": {"source": "events", "column": "value"},
}


@pytest.mark.parametrize(
    ("metric", "message"),
    [
        ({**_P90, "quantile": 1.5}, r"p90.quantile = 1.5: Input should be less than 1"),
        ({"kind": "quantile", "value": _P90["value"]}, r"needs 'quantile' \(e.g. 0.9\)"),
        (
            {**_P90, "numerator": {"source": "events", "agg": "count"}},
            r"has 'value', not a numerator or denominator",
        ),
        ({**_P90, "value": {"source": "clicks", "column": "value"}}, r"p90.value.source: unknown"),
        (
            {**_P90, "value": {**_P90["value"], "winsorize": {"upper": 0.99}}},
            r"p90.value.winsorize = .*Extra inputs are not permitted",
        ),
        (
            {"kind": "mean", "quantile": 0.5, "numerator": {"source": "events", "agg": "count"}},
            r"\['quantile'\] apply to quantile metrics, not mean",
        ),
        ({"kind": "ratio"}, r"a ratio metric needs a numerator"),
    ],
)
def test_quantile_metric_errors(metric, message):
    def change(raw):
        raw["metrics"]["p90"] = metric

    with pytest.raises(ConfigError, match=message):
        parse_config(_with(change), origin="conf/x.yaml")


def test_a_quantile_metric_reads_its_source_as_a_summed_value():
    config = parse_config(_with(lambda raw: raw["metrics"].update(p90=_P90)))
    metric = config.metrics["p90"]
    assert config.metric_sources(metric) == ["events"]
    assert metric.components["num"].agg == "sum" and set(metric.components) == {"num"}
