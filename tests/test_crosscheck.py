"""`bench/crosscheck.py` (no Spark): the three engines' answers agree, and a perturbed value,
a NULL where a value should be or a missing row fails the check with the key, the
quantity and the three values."""

from __future__ import annotations

import sys

import pytest

from cluster_spark.tables import CAP_COLUMNS
from tests.helpers import ROOT

sys.path.insert(0, str(ROOT / "bench"))

from crosscheck import (  # bench/ is not a package: on sys.path above
    CrossCheckError,
    crosscheck,
    duckdb_groups,
    per_metric_groups,
    staged_groups,
)

M, D = [1.0, 2.0, 4.0, 0.0], [1.0, 1.0, 2.0, 0.0]
CAP = 3.0


def _moments(m: list[float], d: list[float]) -> dict[str, float]:
    n = len(m)
    mm, md = sum(m) / n, sum(d) / n
    return {
        "n_units": n,
        "sum_m": sum(m),
        "sum_d": sum(d),
        "mean_m": mm,
        "mean_d": md,
        "css_mm": sum((a - mm) ** 2 for a in m),
        "css_dd": sum((b - md) ** 2 for b in d),
        "css_md": sum((a - mm) * (b - md) for a, b in zip(m, d, strict=True)),
        # the cluster jackknife: Σ (R without unit g − R)², every unit left out by hand;
        # none when a unit holds the whole ΣD
        "jk_rr": None
        if sum(d) in d
        else sum(
            ((sum(m) - a) / (sum(d) - b) - sum(m) / sum(d)) ** 2 for a, b in zip(m, d, strict=True)
        ),
    }


def _answers(D: list[float] = D) -> tuple[list[dict], dict[str, list[dict]], list[dict]]:
    """One group (exp, metric, control) with a raw and a winsorized row, as each engine
    reports it (denominators `D`)."""
    capped = [min(x, CAP) for x in M]
    caps = dict.fromkeys(CAP_COLUMNS) | {"num_upper_cap": CAP}
    counts = {"n_zero_denominator": 1, "n_incomplete_window": 0, "n_unbaked": 0}
    key = {"experiment_id": "exp", "metric": "metric", "variant": "control"}
    staged, duck = [], []
    for winsorized, m in ((False, M), (True, capped)):
        row = {**key, "winsorized": winsorized, **_moments(m, D), **counts, **caps}
        staged.append(row)
        raw = {
            f"sum_{a}{b}": sum(x * y for x, y in zip(u, v, strict=True))
            for a, u, b, v in (("m", m, "m", m), ("d", D, "d", D), ("m", m, "d", D))
        }
        duck.append({**row, **raw})
    per_metric = {
        "n": len(M),
        **{k: v for k, v in key.items() if k != "metric"},
        **{k: duck[0][k] for k in ("sum_m", "sum_d", "sum_mm", "sum_dd", "sum_md")},
        **{f"{k}_w": duck[1][k] for k in ("sum_m", "sum_d", "sum_mm", "sum_dd", "sum_md")},
        "num_upper_cap": CAP,
    }
    return staged, {"metric": [per_metric]}, duck


def _check(staged, per_metric, duck, exact_caps=True):
    engines = {
        "per-metric": per_metric_groups(per_metric, exact_caps),
        "DuckDB": duckdb_groups(duck),
    }
    return crosscheck(staged_groups(staged), engines)


def test_agreeing_engines_pass():
    result = _check(*_answers())
    assert (result.groups, result.rows) == (1, 2)
    assert result.values > 40
    assert result.max_rel_diff < 1e-12


def test_several_staged_rows_are_merged():
    staged, per_metric, duck = _answers()
    halves = []
    for row in staged:
        m = M if not row["winsorized"] else [min(x, CAP) for x in M]
        for part in (slice(0, 2), slice(2, 4)):
            counts = {"n_zero_denominator": int(part.start == 2), "n_incomplete_window": 0}
            halves.append({**row, **_moments(m[part], D[part]), **counts, "n_unbaked": 0})
    assert _check(halves, per_metric, duck).rows == 2


@pytest.mark.parametrize(
    ("engine", "column", "value"),
    [
        ("per-metric", "sum_m", 7.0 * (1 + 1e-7)),
        ("per-metric", "sum_mm_w", 0.0),
        ("DuckDB", "css_mm", 8.75 * (1 + 1e-8)),
        ("DuckDB", "num_upper_cap", None),
        ("cluster_spark", "n_units", 5),
    ],
)
def test_a_perturbed_value_fails(engine, column, value):
    staged, per_metric, duck = _answers()
    target = {"cluster_spark": staged[0], "per-metric": per_metric["metric"][0], "DuckDB": duck[0]}
    target[engine][column] = value
    with pytest.raises(CrossCheckError) as failure:
        _check(staged, per_metric, duck)
    message = str(failure.value)
    shown = column.removesuffix("_w")
    assert "exp / metric / control" in message and f" {shown}: cluster_spark " in message
    assert all(name in message for name in ("per-metric", "DuckDB"))


def test_a_missing_row_fails():
    staged, per_metric, duck = _answers()
    with pytest.raises(CrossCheckError, match=r"exp / metric / control \(winsorized\): no DuckDB"):
        _check(staged, per_metric, duck[:1])


def test_approximate_caps_skip_the_per_metric_winsorized_rows():
    staged, per_metric, duck = _answers()
    per_metric["metric"][0]["sum_m_w"] = 99.0  # another approximate cap, not compared
    assert _check(staged, per_metric, duck, exact_caps=False).rows == 2


def test_a_centered_co_moment_is_compared_on_the_scale_of_its_raw_sum():
    # A mean metric (d ≡ 1): css_md = 0 exactly (DuckDB) vs 3e-12 (Spark's merged partial
    # sums): rounding on the scale of Σmd = 7, so they agree; 1e-6 on that scale does not.
    staged, per_metric, duck = _answers([1.0] * 4)
    assert staged[0]["css_md"] == 0.0 and duck[0]["sum_md"] == 7.0
    for row in staged:
        row["css_md"] = 3e-12
    assert _check(staged, per_metric, duck).rows == 2
    staged[0]["css_md"] = 1e-6
    with pytest.raises(CrossCheckError, match="css_md"):
        _check(staged, per_metric, duck)


def test_a_jackknife_sum_that_disagrees_is_named():
    staged, per_metric, duck = _answers()
    assert staged[0]["jk_rr"] == pytest.approx(0.0625 + 1 / 144 + 0.0625)  # by hand
    staged[0]["jk_rr"] *= 1 + 1e-6
    with pytest.raises(CrossCheckError, match="jk_rr"):
        _check(staged, per_metric, duck)
