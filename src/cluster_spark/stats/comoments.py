"""Centered co-moments of a unit-level vector (no Spark): n, the means of
v = (M, D, X_1, Y_1, …, X_K, Y_K) and the upper triangle of its centered cross-product
matrix, for regression adjustment with several covariates (`stats.regression`). Merged
exactly with the pairwise formulas of Chan, Golub & LeVeque (1979), as `cuped.CupedStats`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def triangle_size(q: int) -> int:
    """Entries of the upper triangle (with the diagonal) of a q × q matrix."""
    return q * (q + 1) // 2


@dataclass(frozen=True)
class CovariateMoments:
    """n, ``means`` (q values) and ``css`` (the q(q+1)/2 centered cross-products
    Σ(v_a − v̄_a)(v_b − v̄_b), a ≤ b, row by row) of the vectors v = (M, D, X_1, Y_1, …)."""

    n: int
    means: tuple[float, ...]
    css: tuple[float, ...]

    @classmethod
    def from_values(cls, columns: Sequence[Sequence[float]]) -> CovariateMoments:
        """Two-pass statistics of unit-level columns (M, D, X_1, Y_1, …), equal lengths."""
        data = np.asarray(columns, dtype=float)
        n = data.shape[1]
        means = data.mean(axis=1)
        dev = data - means[:, None]
        q = data.shape[0]
        css = [math.fsum(dev[a] * dev[b]) for a in range(q) for b in range(a, q)]
        return cls(n, tuple(means.tolist()), tuple(css))

    def matrix(self) -> np.ndarray:
        """The q × q centered cross-product matrix."""
        q = len(self.means)
        out = np.zeros((q, q))
        out[np.triu_indices(q)] = self.css
        return out + np.triu(out, 1).T

    def __add__(self, other: CovariateMoments) -> CovariateMoments:
        """Moments of the union of two disjoint sets of units (Chan et al.'s update:
        css_ab = css_ab,A + css_ab,B + δ_a δ_b n_A n_B / n)."""
        if len(self.means) != len(other.means):
            raise ValueError(
                f"cannot merge moments of {len(self.means)} and {len(other.means)} values"
            )
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        delta = np.subtract(other.means, self.means)
        means = np.add(self.means, delta * other.n / n)
        w = self.n * other.n / n
        q = len(self.means)
        extra = (np.outer(delta, delta) * w)[np.triu_indices(q)]
        css = np.add(self.css, other.css) + extra
        return CovariateMoments(n, tuple(means.tolist()), tuple(css.tolist()))
