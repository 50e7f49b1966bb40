"""Issue #25: inputs a real warehouse hands over (stray variant labels, NaN and ±Inf in a
value column, a source none of whose events reach a unit, daily DATE sources), each as a
whole small experiment with one thing wrong beside its twin in which nothing is.

Every expected value is worked out by hand from the rows written here."""

from __future__ import annotations

import pytest

import cluster_spark as cs
from cluster_spark import pipeline
from cluster_spark.config import parse_config
from cluster_spark.errors import ConfigError
from tests.helpers import ANALYSIS_DATE, EVENT_DDL, EXPOSURE_DDL, at, config_dict, write_delta


def _overall(rows):
    return [r for r in rows if r["dimension"] is None]


def _diagnostics(outcome, check_prefix: str) -> dict:
    return {
        (d["check"], d["variant"]): d["value"]
        for d in outcome.diagnostics
        if d["check"].startswith(check_prefix) and d["dimension"] is None
    }


# ---------------------------------------------------------------- stray variant labels

# 800 orgs, o0..o799: even → control, odd → treatment (400 each); org i buys once, value
# i % 5 + 1. Two more orgs carry only a stray label: 'Treatment' and 'control '.
N = 800
EXPOSURES = [("e1", f"o{i}", "control" if i % 2 == 0 else "treatment", at(0, 1)) for i in range(N)]
EVENTS = [(f"o{i}", f"u{i}", "purchase", float(i % 5 + 1), at(1)) for i in range(N + 2)]
STRAYS = [("e1", f"o{N}", "Treatment", at(0, 2)), ("e1", f"o{N + 1}", "control ", at(0, 2))]


@pytest.fixture(scope="module")
def labelled(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("labels")
    write_delta(spark, EXPOSURES + STRAYS, EXPOSURE_DDL, root / "exposures")
    write_delta(spark, EVENTS, EVENT_DDL, root / "events")
    return root


def _label_config(root, out, normalize=None):
    raw = config_dict(root)
    raw["output"] = {k: f"{out}/{k}" for k in ("staging", "results", "diagnostics")}
    if normalize is not None:
        raw["experiments"][0]["normalize_variant_labels"] = normalize
    return parse_config(raw)


def test_stray_labels_are_left_out_counted_and_do_not_break_srm(spark, labelled, tmp_path):
    outcome = pipeline.run_outcome(spark, _label_config(labelled, tmp_path), ANALYSIS_DATE)
    rows = _overall(outcome.results)
    assert {r["variant"] for r in rows} == {"control", "treatment"}  # no rows for strays
    units = {r["variant"]: r["n_units"] for r in rows}
    assert units == {"control": 400, "treatment": 400}
    # χ² of 400 against 400 is 0: p = 1, not flagged
    assert all(r["srm_p_value"] == pytest.approx(1.0) and not r["srm_flag"] for r in rows)
    assert _diagnostics(outcome, "unknown_variants") == {
        ("unknown_variants", "Treatment"): 1,
        ("unknown_variants", "control "): 1,
    }
    # 2 of 802 units (0.25 %) is under the 1 % threshold: healthy, with a warning line
    assert {r["health"] for r in rows} == {"healthy"}
    (warning,) = [w for w in outcome.warnings(_label_config(labelled, tmp_path)) if "variant" in w]
    assert "'Treatment' (1 unit), 'control ' (1 unit)" in warning
    assert "normalize_variant_labels: true" in warning


def test_normalized_labels_join_their_arm(spark, labelled, tmp_path):
    config = _label_config(labelled, tmp_path, normalize=True)
    outcome = pipeline.run_outcome(spark, config, ANALYSIS_DATE)
    units = {r["variant"]: r["n_units"] for r in _overall(outcome.results)}
    assert units == {"control": 401, "treatment": 401}
    assert _diagnostics(outcome, "unknown_variants") == {}
    assert outcome.warnings(config) == []


def test_many_stray_units_are_a_health_warning(spark, tmp_path):
    strays = [("e1", f"x{i}", "treatment_b", at(0, 3)) for i in range(9)]  # 9 of 809: 1.1 %
    write_delta(spark, EXPOSURES + strays, EXPOSURE_DDL, tmp_path / "exposures")
    write_delta(spark, EVENTS, EVENT_DDL, tmp_path / "events")
    outcome = pipeline.run_outcome(spark, _label_config(tmp_path, tmp_path), ANALYSIS_DATE)
    rows = _overall(outcome.results)
    assert {r["health"] for r in rows} == {"warning"}
    assert rows[0]["health_reasons"] == ["unknown_variants"]
    assert _diagnostics(outcome, "unknown_variants") == {("unknown_variants", "treatment_b"): 9}


def test_normalizing_variants_that_differ_only_in_case_is_a_config_error(tmp_path):
    raw = config_dict(tmp_path)
    raw["experiments"][0].update(variants=["control", "Control"], normalize_variant_labels=True)
    with pytest.raises(ConfigError, match="differ only in case"):
        parse_config(raw)


# ---------------------------------------------------------------- NaN and ±Inf values

NAN_EXPOSURES = [
    ("e1", "o1", "control", at(0, 1)),
    ("e1", "o2", "control", at(0, 1)),
    ("e1", "o3", "treatment", at(0, 1)),
    ("e1", "o4", "treatment", at(0, 1)),
]
CLEAN_EVENTS = [
    ("o1", "u1", "purchase", 10.0, at(1)),
    ("o2", "u2", "purchase", 11.0, at(1)),
    ("o3", "u3", "purchase", 12.0, at(1)),
    ("o4", "u4", "purchase", 13.0, at(1)),
]
BROKEN_EVENTS = [
    ("o1", "u1", "purchase", float("nan"), at(2)),
    ("o3", "u3", "purchase", float("inf"), at(2)),
]


@pytest.mark.parametrize("broken", [False, True])
def test_nan_and_inf_values_are_missing_counted_and_a_health_warning(spark, tmp_path, broken):
    write_delta(spark, NAN_EXPOSURES, EXPOSURE_DDL, tmp_path / "exposures")
    events = CLEAN_EVENTS + (BROKEN_EVENTS if broken else [])
    write_delta(spark, events, EVENT_DDL, tmp_path / "events")
    outcome = pipeline.run_outcome(spark, parse_config(config_dict(tmp_path)), ANALYSIS_DATE)
    by = {(r["metric"], r["variant"]): r for r in _overall(outcome.results)}
    # revenue per user: control (10 + 11) / 2, treatment (12 + 13) / 2, either way
    assert by["revenue_per_user", "control"]["mean"] == pytest.approx(10.5)
    assert by["revenue_per_user", "treatment"]["mean"] == pytest.approx(12.5)
    assert by["revenue_per_user", "treatment"]["status"] == "ok"
    assert by["revenue_per_user", "treatment"]["effect_abs"] == pytest.approx(2.0)
    # the event still counts as a purchase: its value is what is missing
    assert by["purchases_per_org", "control"]["mean"] == pytest.approx(1.5 if broken else 1.0)
    counted = _diagnostics(outcome, "non_finite_values")
    assert counted == {("non_finite_values:events:value", None): 2 if broken else 0}
    health = by["revenue_per_user", "control"]
    if broken:
        assert health["health"] == "warning"
        assert health["health_reasons"] == ["non_finite_values:events:value"]
    else:
        assert (health["health"], health["health_reasons"]) == ("healthy", [])


# ---------------------------------------------------------------- ids that do not join


@pytest.mark.parametrize("joined", [True, False])
def test_a_source_whose_ids_do_not_join_is_unhealthy_and_said_first(spark, tmp_path, joined):
    """The events' org ids in another format ('ORG-o1' for 'o1'): no event reaches a unit,
    every metric of the source is 0. Its twin with the right ids is healthy."""
    write_delta(spark, NAN_EXPOSURES, EXPOSURE_DDL, tmp_path / "exposures")
    events = [e if joined else (f"ORG-{e[0]}", *e[1:]) for e in CLEAN_EVENTS]
    write_delta(spark, events, EVENT_DDL, tmp_path / "events")
    config = parse_config(config_dict(tmp_path))
    outcome = pipeline.run_outcome(spark, config, ANALYSIS_DATE)
    assert _diagnostics(outcome, "events_of_units") == {
        ("events_of_units:events", None): 4 if joined else 0
    }
    row = _overall(outcome.results)[0]
    if joined:
        assert (row["health"], row["health_reasons"]) == ("healthy", [])
        return
    assert row["health"] == "unhealthy"
    assert row["health_reasons"][0] == "no_events_reach_units:events"
    html = cs.report(spark, config, ANALYSIS_DATE)
    health = html[html.index("<h2>Health</h2>") :]
    first = health[health.index("<li>") : health.index("</li>")]
    assert "no_events_reach_units:events" in first and "ids do not join" in first
