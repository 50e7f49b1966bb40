"""Issue #15 item 9: the notebook API, `import cluster_spark as cs`. Expected numbers are
the hand-computed ones of tests/test_staging.py (control 17/3 over o1, o2; treatment 21/4
over o3, o4, o6; purchases per org 2/2 and 2/3)."""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import cluster_spark as cs
from cluster_spark.tables import RESULT_COLUMNS
from tests.helpers import ANALYSIS_DATE, EVENT_DDL, EXPOSURE_DDL, config_dict, write_delta
from tests.test_staging import EVENTS, EXPOSURES

SRC = Path(__file__).resolve().parents[1] / "src" / "cluster_spark"


@pytest.fixture(scope="module")
def inputs(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("api_inputs")
    write_delta(spark, EXPOSURES, EXPOSURE_DDL, root / "exposures")
    write_delta(spark, EVENTS, EVENT_DDL, root / "events")
    return root


def _relative(inputs: Path) -> dict:
    """The test config with paths relative to `inputs` (outputs under out/)."""
    raw = config_dict(".")
    for table in (raw["exposures"], *raw["sources"].values()):
        table["path"] = table["path"].removeprefix("./")
    raw["output"] = {k: f"out/{k}" for k in ("staging", "results", "diagnostics")}
    return raw


def test_public_names():
    assert cs.__all__ == [
        "ClusterSparkError",
        "ClusterSparkWarning",
        "Config",
        "ConfigError",
        "DataQualityError",
        "InputError",
        "UsageError",
        "__version__",
        "analyze",
        "load_config",
        "report",
    ]
    for name in ("analyze", "load_config", "report"):
        doc = getattr(cs, name).__doc__
        assert "Raises" in doc, name


def test_import_does_not_start_or_import_spark():
    code = "import sys, cluster_spark as cs; print('pyspark' in sys.modules, callable(cs.report))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout == "False True\n", proc.stderr


def test_library_code_does_not_need_the_spark_context():
    """Spark Connect has no SparkContext, JVM gateway or RDDs: library code uses none."""
    pattern = re.compile(r"sparkContext|_jvm|_jsc|_jdf|_jsparkSession|\.rdd\b")
    hits = [
        f"{path.relative_to(SRC)}:{i}"
        for path in sorted(SRC.rglob("*.py"))
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert hits == []


def test_load_config_from_a_dict_or_a_file(inputs, tmp_path):
    raw = _relative(inputs)
    before = json.dumps(raw)
    config = cs.load_config(raw, root=inputs)
    assert json.dumps(raw) == before  # the caller's dict is not modified
    assert config.exposures.path == str(inputs / "exposures")
    assert config.output.results.path == str(inputs / "out" / "results")
    path = tmp_path / "conf.yaml"
    path.write_text(json.dumps(raw))
    assert cs.load_config(path, root=inputs) == config
    assert cs.load_config(str(path), root=inputs) == config
    assert cs.load_config(config) is config


def test_load_config_errors_name_the_key_value_and_rule(tmp_path):
    raw = config_dict(tmp_path)
    raw["metrics"]["revenue_per_user"]["kind"] = "avg"
    with pytest.raises(cs.ConfigError) as err:
        cs.load_config(raw)
    assert str(err.value) == (
        "<dict>: invalid configuration\n"
        "  metrics.revenue_per_user.kind = 'avg': Input should be 'mean', 'ratio' or 'quantile'"
    )
    with pytest.raises(cs.ConfigError, match=r"nope.yaml: config file not found"):
        cs.load_config(tmp_path / "nope.yaml")
    with pytest.raises(cs.ConfigError, match="takes a YAML path or a dict, not int"):
        cs.load_config(3)


@pytest.fixture(scope="module")
def analysed(spark, inputs):
    config = cs.load_config(_relative(inputs), root=inputs)
    return config, cs.analyze(spark, config, "2026-03-09")


def test_analyze_returns_the_results_slice(analysed):
    config, df = analysed
    assert [(f.name, f.dataType.simpleString()) for f in df.schema.fields] == RESULT_COLUMNS
    pdf = df.toPandas()
    assert list(pdf["metric"]) == ["purchases_per_org"] * 2 + ["revenue_per_user"] * 2
    assert list(pdf["variant"]) == ["control", "treatment"] * 2  # control first
    assert list(pdf["n_units"]) == [2, 3, 2, 3]
    assert list(pdf["mean"]) == pytest.approx([1.0, 2 / 3, 17 / 3, 21 / 4])
    assert pdf["effect_abs"][3] == pytest.approx(21 / 4 - 17 / 3)
    assert set(pdf["analysis_date"]) == {ANALYSIS_DATE}
    assert len(set(pdf["run_id"])) == 1
    assert Path(config.output.results.path).is_dir()  # written as Delta


def test_analyze_takes_a_date_and_one_experiment_id(spark, analysed):
    config, first = analysed
    again = cs.analyze(spark, config, ANALYSIS_DATE, experiments="e1").toPandas()
    assert list(again["mean"]) == pytest.approx(list(first.toPandas()["mean"]))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2026-3-9", "analysis_date '2026-3-9' is not a date or an ISO date string (YYYY-MM-DD)"),
        ("09/03/2026", "analysis_date '09/03/2026' is not a date or an ISO date string"),
        (20260309, "analysis_date 20260309 is not a date or an ISO date string"),
        (dt.datetime(2026, 3, 9, 12), "is a datetime: give a date (its .date())"),
    ],
)
def test_a_bad_date_is_a_config_error_naming_it(spark, inputs, value, message):
    config = cs.load_config(_relative(inputs), root=inputs)
    with pytest.raises(cs.ConfigError) as err:
        cs.analyze(spark, config, value)
    assert message in str(err.value)


def test_analyze_raises_before_the_start_and_warns_after_the_end(spark, inputs, tmp_path):
    raw = _relative(inputs)
    raw["output"] = {k: str(tmp_path / k) for k in raw["output"]}
    with pytest.raises(cs.UsageError, match="2026-03-01 is before the start"):
        cs.analyze(spark, cs.load_config(raw, root=inputs), "2026-03-01")
    assert not (tmp_path / "results").exists()
    raw["experiments"][0]["end"] = "2026-03-05"
    with pytest.warns(cs.ClusterSparkWarning, match="ended on 2026-03-05: the analysis for"):
        pdf = cs.analyze(spark, cs.load_config(raw, root=inputs), "2026-03-09").toPandas()
    assert list(pdf["mean"])[2:] == pytest.approx([17 / 3, 20 / 4])  # capped at 03-05


def test_analyze_warns_when_a_filter_matches_nothing(spark, inputs, tmp_path):
    raw = _relative(inputs)
    raw["output"] = {k: str(tmp_path / k) for k in raw["output"]}
    typo = [{"column": "event", "op": "eq", "value": "Purchase"}]
    raw["metrics"]["purchases_per_org"]["numerator"]["filter"] = typo
    with pytest.warns(cs.ClusterSparkWarning) as caught:
        pdf = cs.analyze(spark, cs.load_config(raw, root=inputs), "2026-03-09").toPandas()
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1
    assert messages[0].startswith(
        "experiment 'e1', metric 'purchases_per_org', numerator: none of the events"
    )
    assert "column 'event' never holds 'Purchase'" in messages[0]
    assert list(pdf["mean"])[:2] == [0.0, 0.0]


def test_report_returns_the_html_of_what_analyze_wrote(spark, analysed):
    config, _ = analysed
    page = cs.report(spark, config, "2026-03-09")
    assert page.startswith("<!DOCTYPE html>") and page.endswith("</html>\n")
    assert "<h1>Experiment e1</h1>" in page
    assert "<td>5.667</td>" in page and "<td>5.25</td>" in page  # 17/3 and 21/4
    assert "<h2>Diagnostics</h2>" in page and "matched_events:numerator" in page


def test_report_of_several_experiments_is_one_page(spark, inputs, tmp_path):
    raw = _relative(inputs)
    raw["output"] = {k: str(tmp_path / k) for k in raw["output"]}
    raw["experiments"].append({**raw["experiments"][0], "id": "e2"})
    config = cs.load_config(raw, root=inputs)
    cs.analyze(spark, config, "2026-03-09", experiments=["e1"])
    with pytest.raises(cs.InputError, match=r"no results for experiment 'e2' on 2026-03-09 in "):
        cs.report(spark, config, "2026-03-09", experiments=["e1", "e2"])
    with pytest.warns(cs.ClusterSparkWarning, match="'e2' on 2026-03-09: left out of the report"):
        page = cs.report(spark, config, "2026-03-09")
    assert page.count("<h1>Experiment") == 1
    cs.analyze(spark, config, "2026-03-09", experiments=["e2"])
    page = cs.report(spark, config, dt.date(2026, 3, 9))
    assert page.count("<!DOCTYPE html>") == 1
    assert page.index("<h1>Experiment e1</h1>") < page.index("<h1>Experiment e2</h1>")
    assert "<title>Experiments e1, e2 — 2026-03-09</title>" in page
