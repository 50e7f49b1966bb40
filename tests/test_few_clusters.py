"""Issue #29 part 2, the measurement: `bench/few_clusters.py`'s small-sample variances
against independent computations (the leave-one-cluster-out jackknife; Bell and
McCaffrey's matrices on the analysis units), and a small simulation in which the
corrections cover where the delta method does not (pure numpy, no Spark)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from tests.helpers import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import few_clusters
from coverage import DGPS

RNG = np.random.default_rng(29)
SIZES = np.array([1, 2, 2, 3, 5, 8, 13, 40])  # one org holds half the users: h = 40/74


def _users(sizes: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per-user values of each org (lognormal spend)."""
    values = [RNG.lognormal(2.0, 1.0, s) for s in sizes]
    return np.array([v.sum() for v in values]), values


def test_cr3_is_the_leave_one_cluster_out_jackknife():
    m, _ = _users(SIZES)
    d = SIZES.astype(float)
    ratio = m.sum() / d.sum()
    loo = [(m.sum() - m[g]) / (d.sum() - d[g]) for g in range(len(m))]
    jackknife = sum((ratio - r) ** 2 for r in loo)
    assert few_clusters.arm(m, d).var["CR3"] == pytest.approx(jackknife, rel=1e-12)


def _gamma(values: list[np.ndarray]) -> np.ndarray:
    """Bell & McCaffrey on the users of one arm (OLS of y on an intercept, clusters =
    orgs): column g is γ_g = (1/N)·(I − H)[g rows]ᵀ·A_g·1_g, A_g = (I − H_gg)^{−1/2}, so
    that the CR2 variance is Σ_g (γ_gᵀ y)² and E[it] under Ω = I is Σ‖γ_g‖²."""
    y = np.concatenate(values)
    n = y.size
    h = np.full((n, n), 1.0 / n)
    cols, start = [], 0
    for v in values:
        rows = slice(start, start + v.size)
        w, q = np.linalg.eigh(np.eye(v.size) - h[rows, rows])
        a = q @ np.diag(w**-0.5) @ q.T
        cols.append((np.eye(n) - h)[rows].T @ a @ np.ones(v.size) / n)
        start += v.size
    return np.column_stack(cols), y


def test_cr2_and_bm_df_equal_bell_mccaffreys_matrices():
    arms = [_users(SIZES), _users(SIZES[::-1] + 1)]
    gammas, parts = [], []
    for (m, values), sizes in zip(arms, (SIZES, SIZES[::-1] + 1), strict=True):
        gamma, y = _gamma(values)
        gammas.append(gamma)
        parts.append(few_clusters.arm(m, sizes.astype(float)))
        assert parts[-1].var["CR2"] == pytest.approx(((gamma.T @ y) ** 2).sum(), rel=1e-10)
    both = np.zeros((sum(g.shape[0] for g in gammas), sum(g.shape[1] for g in gammas)))
    both[: gammas[0].shape[0], : gammas[0].shape[1]] = gammas[0]
    both[gammas[0].shape[0] :, gammas[0].shape[1] :] = gammas[1]
    gram = both.T @ both
    bm_df = np.trace(gram) ** 2 / np.trace(gram @ gram)
    t, c = parts
    *_, df = few_clusters.intervals(t, c, "CR2 + BM df", 0.05)
    assert df == pytest.approx(bm_df, rel=1e-10)
    assert df < 2 * (len(SIZES) - 1)  # the big org costs degrees of freedom


def test_corrections_cover_where_the_delta_method_does_not():
    """Heavy-tailed orgs, 40 in all, 300 A/A replicates: the delta method's absolute
    interval covers about 0.87-0.88 (BENCHMARKS.md); the jackknife's clearly more."""
    cell = few_clusters.run_cell(DGPS["heavy"], 40, 0.0, 300, seed=7, alpha=0.05)
    cover = {k: v / cell.replicates for k, v in cell.abs_cover.items()}
    assert cover["delta"] < 0.92
    assert cover["CR3"] > cover["CR2"] > cover["delta"]
    assert cover["CR3"] - cover["delta"] > 0.03
