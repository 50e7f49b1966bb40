"""RatioStats against hand arithmetic, exact rationals and numpy (no Spark)."""

from __future__ import annotations

import math
import random
from fractions import Fraction
from functools import reduce

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster_spark.stats.ratio import RatioStats

# M = (1, 2, 3), D = (1, 1, 2):  m̄ = 2, d̄ = 4/3, R = 6/4 = 1.5
#   css_mm = 1 + 0 + 1 = 2;  css_dd = 1/9 + 1/9 + 4/9 = 2/3;  css_md = 1/3 + 0 + 2/3 = 1
#   s_mm = 1, s_dd = 1/3, s_md = 1/2
#   V = (1 − 2·1.5·0.5 + 1.5²·1/3) / (4/3)² = 0.25 · 9/16 = 9/64;  Var(R) = V/3 = 3/64
#   check: (M − R·D)/d̄ = (−0.5, 0.5, 0)·3/4 = (−0.375, 0.375, 0), sample variance 9/64
M, D = [1.0, 2.0, 3.0], [1.0, 1.0, 2.0]
HAND = {"n": 3, "mean_m": 2.0, "mean_d": 4 / 3, "css_mm": 2.0, "css_dd": 2 / 3, "css_md": 1.0}


def _fields(s: RatioStats) -> dict[str, float]:
    return {k: getattr(s, k) for k in HAND}


def test_hand_example():
    s = RatioStats.from_values(M, D)
    assert _fields(s) == pytest.approx(HAND, rel=1e-15)
    assert (s.sum_m, s.sum_d, s.ratio) == pytest.approx((6.0, 4.0, 1.5), rel=1e-15)
    assert (s.s_mm, s.s_dd, s.s_md) == pytest.approx((1.0, 1 / 3, 0.5), rel=1e-15)
    assert s.unit_variance == pytest.approx(9 / 64, rel=1e-14)
    assert s.var_ratio == pytest.approx(3 / 64, rel=1e-14)


def test_hand_example_from_raw_sums():
    # ΣM = 6, ΣD = 4, ΣM² = 1+4+9 = 14, ΣD² = 1+1+4 = 6, ΣMD = 1+2+6 = 9
    s = RatioStats.from_raw_sums(3, 6.0, 4.0, 14.0, 6.0, 9.0)
    assert _fields(s) == pytest.approx(HAND, rel=1e-14)
    assert s.unit_variance == pytest.approx(9 / 64, rel=1e-14)


def test_numpy_arrays_accepted_and_lengths_checked():
    s = RatioStats.from_values(np.array(M), np.array(D))
    assert _fields(s) == pytest.approx(HAND, rel=1e-15)
    with pytest.raises(ValueError):
        RatioStats.from_values([1.0, 2.0], [1.0])


def test_undefined_cases_are_none():
    e = RatioStats.empty()
    assert (e.n, e.sum_m, e.sum_d) == (0, 0.0, 0.0)
    assert RatioStats.from_values([], []) == e
    assert RatioStats.from_raw_sums(0, 0, 0, 0, 0, 0) == e
    for s in (e, RatioStats.from_values([5.0], [2.0])):  # n < 2
        assert (s.s_mm, s.s_dd, s.s_md, s.unit_variance, s.var_ratio) == (None,) * 5
    assert e.ratio is None
    assert RatioStats.from_values([5.0], [2.0]).ratio == 2.5
    zero_d = RatioStats.from_values([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    assert (zero_d.ratio, zero_d.unit_variance, zero_d.var_ratio) == (None, None, None)
    assert zero_d.s_mm == 1.0


def test_unit_variance_matches_numpy_linearization():
    rng = np.random.default_rng(7)
    d = rng.integers(1, 9, size=200).astype(float)
    m = rng.gamma(2.0, 3.0, size=200) * d
    r = m.sum() / d.sum()
    v = np.var((m - r * d) / d.mean(), ddof=1)
    s = RatioStats.from_values(m, d)
    assert s.unit_variance == pytest.approx(v, rel=1e-12)
    assert s.var_ratio == pytest.approx(v / 200, rel=1e-12)
    assert s.s_md == pytest.approx(np.cov(m, d, ddof=1)[0, 1], rel=1e-12)


# ---------------------------------------------------------------- merge properties

values = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
pairs = st.lists(st.tuples(values, values), max_size=25)


def _reference(rows: list[tuple[float, float]]) -> dict[str, float]:
    """Independent numpy computation of the fields."""
    if not rows:
        return _fields(RatioStats.empty()) | {"n": 0}
    m, d = np.array(rows).T
    return {
        "n": len(rows),
        "mean_m": m.mean(),
        "mean_d": d.mean(),
        "css_mm": ((m - m.mean()) ** 2).sum(),
        "css_dd": ((d - d.mean()) ** 2).sum(),
        "css_md": ((m - m.mean()) * (d - d.mean())).sum(),
    }


def _of(rows: list[tuple[float, float]]) -> RatioStats:
    return RatioStats.from_values([r[0] for r in rows], [r[1] for r in rows])


def _assert_close(s: RatioStats, ref: dict[str, float], rows: list[tuple[float, float]]):
    """rtol 1e-9 with an absolute floor at the data's own scale (sums of squares near 0)."""
    scale = 1.0 + sum(x * x + y * y for x, y in rows)
    assert s.n == ref["n"]
    for k in ("mean_m", "mean_d"):
        assert getattr(s, k) == pytest.approx(ref[k], rel=1e-9, abs=1e-9 * math.sqrt(scale))
    for k in ("css_mm", "css_dd", "css_md"):
        assert getattr(s, k) == pytest.approx(ref[k], rel=1e-9, abs=1e-12 * scale)


@given(pairs, pairs)
def test_merge_equals_union(a, b):
    merged = _of(a) + _of(b)
    _assert_close(merged, _reference(a + b), a + b)
    _assert_close(merged, _fields(_of(a + b)), a + b)


@given(pairs)
def test_empty_is_identity(a):
    s = _of(a)
    assert s + RatioStats.empty() == s
    assert RatioStats.empty() + s == s


@given(pairs, pairs, pairs)
def test_associative_and_commutative(a, b, c):
    x, y, z = _of(a), _of(b), _of(c)
    ref = _reference(a + b + c)
    for s in ((x + y) + z, x + (y + z), (z + x) + y, y + z + x):
        _assert_close(s, ref, a + b + c)


@given(pairs, st.randoms(use_true_random=False), st.integers(1, 6))
def test_row_order_and_partitioning_invariance(rows, rnd, k):
    shuffled = rows[:]
    rnd.shuffle(shuffled)
    cuts = sorted(rnd.randint(0, len(rows)) for _ in range(k - 1))
    parts = [shuffled[i:j] for i, j in zip([0, *cuts], [*cuts, len(rows)], strict=True)]
    merged = reduce(RatioStats.__add__, map(_of, parts), RatioStats.empty())
    _assert_close(merged, _reference(rows), rows)


@given(st.lists(pairs, max_size=6))
def test_sums_of_squares_nonnegative(parts):
    s = reduce(RatioStats.__add__, map(_of, parts), RatioStats.empty())
    assert s.css_mm >= 0
    assert s.css_dd >= 0
    assert s.css_md**2 <= s.css_mm * s.css_dd * (1 + 1e-9) + 1e-9
    assert s.unit_variance is None or s.unit_variance >= 0


# ---------------------------------------------------------------- precision


def _exact_css(x: list[float]) -> Fraction:
    fx = [Fraction(v) for v in x]
    mean = sum(fx) / len(fx)
    return sum((v - mean) ** 2 for v in fx)


def test_large_means_keep_precision_where_naive_formula_fails():
    rnd = random.Random(3)
    m = [1e8 + rnd.gauss(0.0, 1.0) for _ in range(1000)]
    d = [1e8 + rnd.gauss(0.0, 1.0) for _ in range(1000)]
    exact_mm, exact_dd = float(_exact_css(m)), float(_exact_css(d))

    direct = RatioStats.from_values(m, d)
    merged = reduce(
        RatioStats.__add__,
        (RatioStats.from_values(m[i : i + 7], d[i : i + 7]) for i in range(0, 1000, 7)),
    )
    for s in (direct, merged):
        assert s.css_mm == pytest.approx(exact_mm, rel=1e-6)
        assert s.css_dd == pytest.approx(exact_dd, rel=1e-6)

    # The naive one-pass formula Σx² − (Σx)²/n (raw warehouse sums) loses the variance:
    # with this seed it gives −8192 for an exact value of ≈ 973.8.
    sum_m = sum_mm = 0.0
    for x in m:
        sum_m += x
        sum_mm += x * x
    naive = sum_mm - sum_m * sum_m / len(m)
    assert abs(naive - exact_mm) / exact_mm > 1e-2
    raw = RatioStats.from_raw_sums(1000, sum_m, sum(d), sum_mm, sum(y * y for y in d), 0.0)
    assert abs(raw.css_mm - exact_mm) / exact_mm > 1e-2
