"""Formatting shared by the report's sections: escaping, numbers, p-values and CIs, the
decision tones, row order and the HTML table. No Spark."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

from cluster_spark.status import POOLED_SLICES

Row = Mapping[str, Any]


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def finite(x: Any) -> float | None:
    """x as a finite float, else None (null, NaN, ±inf, non-numbers)."""
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        return None
    return float(x)


def fmt_num(x: Any) -> str:
    """Counts with thousands separators, other numbers with 4 significant digits."""
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if finite(x) is None:
        return str(x)
    if x == 0:
        return "0"
    if abs(x) >= 1e4:
        return f"{x:,.0f}"
    return f"{x:.2e}" if abs(x) < 1e-3 else f"{x:.4g}"


def fmt_pct(x: Any, sign: bool = True) -> str:
    """A fraction as a percentage with 2 decimals (0.0123 → '+1.23%')."""
    if finite(x) is None:
        return "n/a"
    return f"{100 * x:+.2f}%" if sign else f"{100 * x:.2f}%"


def fmt_p(x: Any) -> str:
    if finite(x) is None:
        return "—"
    return "<0.0001" if x < 1e-4 else f"{x:.4f}"


def _one_sided_end(x: Any) -> bool:
    return isinstance(x, float) and math.isinf(x)


def fmt_ci(low: Any, high: Any, fmt=fmt_num) -> str:
    """`[low, high]`; a one-sided interval's infinite end is shown as −∞ or +∞."""

    def end(x: Any) -> str | None:
        if _one_sided_end(x):
            return "−∞" if x < 0 else "+∞"
        return None if finite(x) is None else fmt(x)

    a, b = end(low), end(high)
    if a is None or b is None or (_one_sided_end(low) and _one_sided_end(high)):
        return "n/a"
    return f"[{a}, {b}]"


def bounded(x: Any) -> float | None:
    """A CI end as a float: finite, or ±inf for a one-sided interval's open end."""
    return float(x) if _one_sided_end(x) else finite(x)


#: Colour class of each decision: good, bad, neither.
TONES = {
    "win": "pos",
    "guardrail_ok": "pos",
    "loss": "neg",
    "guardrail_violated": "neg",
    "inconclusive": "ns",
    "guardrail_inconclusive": "ns",
}


def significance(row: Row) -> str:
    """The colour class of a treatment row: by its `decision` (after corrections, in the
    metric's direction: 'pos' good, 'neg' bad, 'ns' neither), 'na' without a relative CI
    to draw. Rows without a decision (written before decisions existed) are coloured by
    whether the relative CI excludes 0."""
    low, high = (bounded(row.get(k)) for k in ("effect_rel_ci_low", "effect_rel_ci_high"))
    if low is None or high is None or (math.isinf(low) and math.isinf(high)):
        return "na"
    if row.get("decision") in TONES:
        return TONES[row["decision"]]
    return "pos" if low > 0 else "neg" if high < 0 else "ns"


def result_order(row: Row) -> tuple:
    """Sort key of results rows: by experiment, the overall rows first, then each dimension's
    slices (`(null)` and `(other)` last), by metric, the control first."""
    dimension, name = row.get("dimension"), row.get("slice")
    return (
        str(row.get("experiment_id")),
        dimension is not None,
        str(dimension or ""),
        name in POOLED_SLICES,
        str(name or ""),
        str(row.get("metric")),
        row.get("variant") != row.get("control_variant"),
        str(row.get("variant")),
    )


def first_value(rows: Sequence[Row], key: str) -> Any:
    return next((r[key] for r in rows if r.get(key) is not None), None)


def is_control(row: Row) -> bool:
    return row.get("variant") == row.get("control_variant")


def html_table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """An HTML table; cells are already-escaped HTML, the first `left` columns left-aligned.
    A cell given as (html, css_class) gets that class."""

    def cell(tag: str, i: int, c: Any) -> str:
        c, cls = c if isinstance(c, tuple) else (c, "")
        cls = " ".join(filter(None, ["l" if i < left else "", cls]))
        return f'<{tag} class="{cls}">{c}</{tag}>' if cls else f"<{tag}>{c}</{tag}>"

    head = "".join(cell("th", i, esc(h)) for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(cell("td", i, c) for i, c in enumerate(r)) + "</tr>" for r in rows
    )
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f'<div class="scroll">{table}</div>'  # wide tables scroll, the page does not
