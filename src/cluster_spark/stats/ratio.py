"""Sufficient statistics of unit-level ratio pairs (M_i, D_i) for one group (no Spark).

A group is summarised by its size, means and *centered* sums of squares and cross-products,
which stay accurate for large means and merge exactly across partitions with the pairwise
formulas of Chan, Golub & LeVeque (1979). From them follow the ratio R = ΣM/ΣD and its
delta-method variance (Deng, Knoblich & Lu 2018, §3), or, when the group was staged whole,
its cluster-jackknife variance (`RatioStats.jackknife`; docs/methods.md, "Few clusters").

Undefined quantities (no units, one unit, ΣD = 0) are returned as ``None``, never raised and
never NaN, so callers can turn them into status codes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass


class GroupMeans:
    """ΣM, ΣD and R = ΣM/ΣD of a group summarised by ``n``, ``mean_m`` and ``mean_d``."""

    n: int
    mean_m: float
    mean_d: float

    @property
    def sum_m(self) -> float:
        """ΣM."""
        return self.n * self.mean_m

    @property
    def sum_d(self) -> float:
        """ΣD."""
        return self.n * self.mean_d

    @property
    def ratio(self) -> float | None:
        """R = ΣM/ΣD; None when ΣD = 0 (including no units)."""
        return None if self.sum_d == 0 else self.sum_m / self.sum_d


@dataclass(frozen=True)
class RatioStats(GroupMeans):
    """Sufficient statistics of pairs (M_i, D_i), i = 1..n, in centered form.

    ``css_mm = Σ(M−m̄)²``, ``css_dd = Σ(D−d̄)²``, ``css_md = Σ(M−m̄)(D−d̄)``.
    ``jackknife``: the leave-one-cluster-out variance of R, Σ_g (R_(−g) − R)² (CR3, staged
    by `staging.moments.jackknife_sums`), or None to use the delta method's. It does not
    survive ``+`` (it depends on the whole group's ΣD).
    """

    n: int
    mean_m: float
    mean_d: float
    css_mm: float
    css_dd: float
    css_md: float
    jackknife: float | None = None

    @classmethod
    def empty(cls) -> RatioStats:
        """Statistics of no units: the identity of ``+``."""
        return cls(0, 0.0, 0.0, 0.0, 0.0, 0.0)

    @classmethod
    def from_values(cls, m: Iterable[float], d: Iterable[float]) -> RatioStats:
        """Two-pass centered statistics of paired values (lists, tuples or numpy arrays)."""
        ms = [float(x) for x in m]
        ds = [float(x) for x in d]
        if len(ms) != len(ds):
            raise ValueError(f"m and d differ in length: {len(ms)} != {len(ds)}")
        n = len(ms)
        if n == 0:
            return cls.empty()
        mean_m = math.fsum(ms) / n
        mean_d = math.fsum(ds) / n
        dm = [x - mean_m for x in ms]
        dd = [y - mean_d for y in ds]
        return cls(
            n,
            mean_m,
            mean_d,
            math.fsum(x * x for x in dm),
            math.fsum(y * y for y in dd),
            math.fsum(x * y for x, y in zip(dm, dd, strict=True)),
        )

    @classmethod
    def from_raw_sums(
        cls,
        n: int,
        sum_m: float,
        sum_d: float,
        sum_mm: float,
        sum_dd: float,
        sum_md: float,
    ) -> RatioStats:
        """Statistics from raw sums ΣM, ΣD, ΣM², ΣD², ΣMD, as warehouse SQL produces them.

        Centering afterwards (``ΣM² − (ΣM)²/n``) cancels catastrophically when the means are
        large relative to the spread (values near 1e8 with unit spread lose every digit), so
        prefer staged centered moments (e.g. Spark's ``var_samp``/``covar_samp``). Tiny
        negative sums of squares from rounding are clipped to 0.
        """
        n = int(n)
        if n <= 0:
            return cls.empty()
        return cls(
            n,
            sum_m / n,
            sum_d / n,
            max(sum_mm - sum_m * sum_m / n, 0.0),
            max(sum_dd - sum_d * sum_d / n, 0.0),
            sum_md - sum_m * sum_d / n,
        )

    def __add__(self, other: RatioStats) -> RatioStats:
        """Statistics of the union of two disjoint sets of units.

        Pairwise update of Chan, Golub & LeVeque, "Updating formulae and a pairwise algorithm
        for computing sample variances" (1979): with δ = mean_B − mean_A,
        ``css = css_A + css_B + δ_x δ_y n_A n_B / n``. The empty statistics are the identity.
        """
        if not isinstance(other, RatioStats):
            return NotImplemented
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        delta_m = other.mean_m - self.mean_m
        delta_d = other.mean_d - self.mean_d
        w = self.n * other.n / n
        return RatioStats(
            n,
            self.mean_m + delta_m * other.n / n,
            self.mean_d + delta_d * other.n / n,
            self.css_mm + other.css_mm + delta_m * delta_m * w,
            self.css_dd + other.css_dd + delta_d * delta_d * w,
            self.css_md + other.css_md + delta_m * delta_d * w,
        )

    def _sample(self, css: float) -> float | None:
        return None if self.n < 2 else css / (self.n - 1)

    @property
    def s_mm(self) -> float | None:
        """Sample variance of M (n−1); None when n < 2."""
        return self._sample(self.css_mm)

    @property
    def s_dd(self) -> float | None:
        """Sample variance of D (n−1); None when n < 2."""
        return self._sample(self.css_dd)

    @property
    def s_md(self) -> float | None:
        """Sample covariance of M and D (n−1); None when n < 2."""
        return self._sample(self.css_md)

    @property
    def unit_variance(self) -> float | None:
        """Linearized unit variance V = (s_MM − 2R s_MD + R² s_DD)/d̄².

        Deng, Knoblich & Lu, "Applying the Delta Method in Metric Analytics" (KDD 2018), §3:
        V/n is the delta-method variance of R. None when n < 2, ΣD = 0 or V is not a finite
        float (d̄² underflows); rounding below 0 is clipped to 0 (V is the sample variance of
        (M_i − R D_i)/d̄).
        """
        r = self.ratio
        d2 = self.mean_d * self.mean_d
        if self.n < 2 or r is None or d2 == 0:
            return None
        css = self.css_mm - 2.0 * r * self.css_md + r * r * self.css_dd
        v = max(css, 0.0) / (self.n - 1) / d2
        return v if math.isfinite(v) else None

    @property
    def var_ratio(self) -> float | None:
        """Var(R): the cluster jackknife's when staged (`jackknife`, for n ≥ 2), else the
        delta method's V/n; None when undefined."""
        v = self.unit_variance
        if v is None:
            return None
        return v / self.n if self.jackknife is None else self.jackknife
