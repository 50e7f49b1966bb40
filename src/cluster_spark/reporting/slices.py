"""A section per slice dimension: the slices' units and SRM, and per metric a forest plot
of each slice's relative lift with Cochran's Q heterogeneity p-value."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cluster_spark.reporting.format import (
    Row,
    esc,
    first_value,
    fmt_num,
    fmt_p,
    html_table,
    is_control,
    result_order,
)
from cluster_spark.reporting.plots import forest_plot, legend

#: The slice forest plots' legend: whose p-values coloured the points.
SLICE_COLOURS = (
    "colours: each slice's own decision, goals by their p-values (BH) adjusted across the "
    "slices of this dimension, not the overall ones"
)


def sections(results: Sequence[Row], diagnostics: Sequence[Row], control: Any) -> str:
    """Per dimension: the slices' assignment units and SRM, and per metric a forest plot of
    each slice's relative lift with Cochran's Q heterogeneity p-value."""
    out = []
    results = sorted(results, key=result_order)
    for dimension in dict.fromkeys(str(r["dimension"]) for r in results):
        rows = [r for r in results if r["dimension"] == dimension]
        slices = list(dict.fromkeys(str(r["slice"]) for r in rows))
        variants = sorted({str(r["variant"]) for r in rows}, key=lambda v: (v != control, v))
        units = {
            (d.get("slice"), d.get("variant")): d.get("value")
            for d in diagnostics
            if d.get("dimension") == dimension and d.get("check") == "assignment_units"
        }
        body = []
        for name in slices:
            first = next(r for r in rows if r["slice"] == name)
            flagged = first.get("srm_flag")
            body.append(
                [
                    esc(name),
                    *[esc(fmt_num(units.get((name, v), 0))) for v in variants],
                    (esc(fmt_p(first.get("srm_p_value"))), "warn" if flagged else ""),
                    (esc(first.get("status")), "warn")
                    if first.get("status") == "too_few_slice_units"
                    else "",
                ]
            )
        table = html_table(["slice", *[f"units: {v}" for v in variants], "SRM p", ""], body)
        plots = []
        for metric in dict.fromkeys(str(r["metric"]) for r in rows):
            treated = [r for r in rows if r["metric"] == metric and not is_control(r)]
            het = ", ".join(
                f"{v}: {fmt_p(first_value(arm, 'heterogeneity_p_value'))}"
                for v in variants
                if v != control and (arm := [r for r in treated if r["variant"] == v])
            )
            plots.append(
                f"<h3>{esc(metric)}</h3><p class='note'>Heterogeneity across slices "
                f"(Cochran's Q p-value): {esc(het)}</p>"
                + forest_plot(treated, first_value(rows, "alpha"), keys=("slice", "variant"))
                + legend(any(r.get("decision") for r in treated), SLICE_COLOURS)
            )
        out.append(
            f"<h2>By {esc(dimension)}</h2>"
            "<p class='note'>Each slice is analysed on its own units (SRM and CUPED within "
            "the slice); p-values (BH) are adjusted within the dimension.</p>"
            f"{table}{''.join(plots)}"
        )
    return "".join(out)
