"""Multiple-testing corrections across metrics × variants: Benjamini–Hochberg (FDR) and
Holm (FWER) adjusted p-values. No Spark."""

from __future__ import annotations

from collections.abc import Sequence


def _ranked(pvalues: Sequence[float | None]) -> list[tuple[int, float]]:
    """(index, p) of the non-None p-values, ascending by p (stable); raises for invalid ones."""
    present: list[tuple[int, float]] = []
    for i, p in enumerate(pvalues):
        if p is None:
            continue
        if not 0 <= p <= 1:
            raise ValueError(f"p-values must be in [0, 1] or None, got {p!r}")
        present.append((i, float(p)))
    return sorted(present, key=lambda ip: ip[1])


def benjamini_hochberg(pvalues: Sequence[float | None]) -> list[float | None]:
    """Benjamini–Hochberg (1995) adjusted p-values (FDR), None passing through.

    With the m non-None p-values sorted, p_(1) ≤ … ≤ p_(m):
    ``adj_(i) = min(1, min_{j ≥ i} m p_(j) / j)``; a hypothesis is rejected at FDR level q
    when its adjusted p-value is ≤ q. None entries are not counted in m.
    """
    order = _ranked(pvalues)
    m = len(order)
    out: list[float | None] = [None] * len(pvalues)
    running = 1.0
    for rank in range(m, 0, -1):
        i, p = order[rank - 1]
        running = min(running, p * m / rank)
        out[i] = running
    return out


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm (1979) step-down adjusted p-values (FWER), None passing through.

    ``adj_(i) = max_{j ≤ i} min(1, (m − j + 1) p_(j))`` over the m non-None p-values sorted
    ascending. None entries are not counted in m.
    """
    order = _ranked(pvalues)
    m = len(order)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (i, p) in enumerate(order, start=1):
        running = max(running, min(1.0, (m - rank + 1) * p))
        out[i] = running
    return out
