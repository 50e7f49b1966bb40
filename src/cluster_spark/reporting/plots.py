"""The report's charts, inline SVG: the forest plot of relative lifts (overall and per
slice) and the effect over analysis dates (timeline)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from cluster_spark.reporting.format import (
    Row,
    esc,
    finite,
    first_value,
    fmt_ci,
    fmt_pct,
    significance,
)

#: Forest-plot point colors: significant up, significant down, not significant, no CI.
COLORS = {"pos": "#1b7f3b", "neg": "#b3261e", "ns": "#555", "na": "#999"}


def nice_ticks(low: float, high: float, target: int = 6) -> list[float]:
    """Round tick values covering [low, high] (steps of 1, 2, 2.5 or 5 × 10^k)."""
    if high <= low:
        low, high = low - 1, high + 1
    raw = (high - low) / target
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first, last = math.floor(low / step), math.ceil(high / step)
    return [round(i * step, 10) for i in range(first, last + 1)]


def shorten(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def forest_plot(
    rows: Sequence[Row],
    alpha: float | None = None,
    width: int = 1100,
    keys: tuple[str, str] = ("metric", "variant"),
) -> str:
    """Inline SVG of relative lifts with their CIs, one line per treatment row, labelled
    by the two `keys` (the background alternates with the first).

    Rows with a null CI are labelled 'n/a' and drawn as a hollow point (no interval); rows
    with a null effect have no point. Points are coloured by decision (`significance`); a
    one-sided interval's open end runs to the edge of the axis.
    """
    label_w, text_w, row_h, top, bottom = 300, 230, 24, 10, 40
    x0, x1 = label_w, width - text_w
    values = [
        100 * v
        for r in rows
        for k in ("effect_rel", "effect_rel_ci_low", "effect_rel_ci_high")
        if (v := finite(r.get(k))) is not None
    ]
    ticks = nice_ticks(min([0.0, *values]), max([0.0, *values]))
    lo, hi = ticks[0], ticks[-1]

    def x(pct: float) -> float:
        return round(x0 + (pct - lo) / (hi - lo) * (x1 - x0), 2)

    height = top + row_h * max(len(rows), 1) + bottom
    axis_y = top + row_h * len(rows)
    out = [
        f'<svg class="forest" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="Forest plot of relative lifts" '
        'style="max-width: 100%; height: auto" font-family="system-ui, sans-serif" '
        'font-size="12">'
    ]
    shaded, prev_metric = True, None
    for i, r in enumerate(rows):
        y = top + row_h * i + row_h / 2
        metric, variant = str(r.get(keys[0])), str(r.get(keys[1]))
        shaded ^= metric != prev_metric  # alternate the background per metric
        prev_metric = metric
        if shaded:
            out.append(
                f'<rect x="0" y="{top + row_h * i}" width="{width}" height="{row_h}" '
                'fill="#f3f3f3"/>'
            )
        label = f"{metric} · {variant}"
        short = f"{shorten(metric, 30)} · {shorten(variant, 12)}"
        out.append(
            f'<text x="{label_w - 10}" y="{y + 4}" text-anchor="end">'
            f"<title>{esc(label)}</title>{esc(short)}</text>"
        )
        sig = significance(r)
        low, high = r.get("effect_rel_ci_low"), r.get("effect_rel_ci_high")
        if sig != "na":  # a one-sided interval's open end runs to the axis' end
            x_low = x0 if math.isinf(low) else x(100 * low)
            x_high = x1 if math.isinf(high) else x(100 * high)
            out.append(
                f'<line class="ci" x1="{x_low}" x2="{x_high}" y1="{y}" y2="{y}" '
                f'stroke="{COLORS[sig]}" stroke-width="2"/>'
            )
        if (eff := finite(r.get("effect_rel"))) is not None:
            fill = "white" if sig == "na" else COLORS[sig]
            out.append(
                f'<circle class="point {sig}" cx="{x(100 * eff)}" cy="{y}" r="4.5" '
                f'fill="{fill}" stroke="{COLORS[sig]}" stroke-width="1.5"/>'
            )
        text = fmt_pct(r.get("effect_rel"))
        text += "" if sig == "na" else " " + fmt_ci(low, high, fmt_pct)
        if sig == "na" and text != "n/a":
            text += "  (CI n/a)"
        out.append(f'<text x="{x1 + 12}" y="{y + 4}" fill="{COLORS[sig]}">{esc(text)}</text>')
    out.append(
        f'<line class="axis" x1="{x0}" x2="{x1}" y1="{axis_y}" y2="{axis_y}" stroke="#333"/>'
    )
    for t in ticks:
        out.append(
            f'<line class="tick" x1="{x(t)}" x2="{x(t)}" y1="{axis_y}" y2="{axis_y + 5}" '
            'stroke="#333"/>'
            f'<text x="{x(t)}" y="{axis_y + 18}" text-anchor="middle">{t:g}%</text>'
        )
    level = f"{100 * (1 - alpha):g}% CI" if finite(alpha) is not None else "CI at 1 − α"
    out.append(
        f'<line class="zero" x1="{x(0)}" x2="{x(0)}" y1="{top}" y2="{axis_y}" '
        'stroke="#333" stroke-dasharray="4 3"/>'
        f'<text x="{(x0 + x1) / 2}" y="{axis_y + 34}" text-anchor="middle" fill="#555">'
        f"relative lift vs control ({esc(level)})</text></svg>"
    )
    return "".join(out)


def legend(decided: bool = True, note: str = "") -> str:
    """The forest plot's colour key; `note` (plain text) says which p-values decided."""
    items = [
        ("pos", "win / guardrail ok" if decided else "CI above 0"),
        ("neg", "loss / guardrail violated" if decided else "CI below 0"),
        ("ns", "inconclusive" if decided else "CI contains 0"),
        ("na", "no CI (n/a)"),
    ]
    return (
        '<p class="note">'
        + " &nbsp; ".join(f'<span style="color:{COLORS[k]}">●</span> {esc(t)}' for k, t in items)
        + (f" &nbsp; ({esc(note)})" if note else "")
        + "</p>"
    )


def timeline_plot(rows: Sequence[Row], alpha: Any = None, width: int = 560) -> str:
    """Inline SVG of one metric × treatment over analysis dates: the relative effect and
    its CI per date, and the confidence sequence where given (the absolute CS divided by
    the control mean |R_C| of that date)."""
    points = []
    for r in sorted(rows, key=lambda r: str(r["analysis_date"])):
        eff = finite(r.get("effect_rel"))
        if eff is None:
            continue
        lo, hi = finite(r.get("effect_rel_ci_low")), finite(r.get("effect_rel_ci_high"))
        cs = None
        base = finite(r.get("control_mean"))
        cs_lo, cs_hi = finite(r.get("effect_abs_cs_low")), finite(r.get("effect_abs_cs_high"))
        if base and cs_lo is not None and cs_hi is not None:
            cs = (cs_lo / abs(base), cs_hi / abs(base))
        points.append((str(r["analysis_date"]), eff, lo, hi, cs))
    if not points:
        return '<p class="muted">No estimates yet.</p>'
    values = [
        100 * v for _, e, lo, hi, cs in points for v in (e, lo, hi, *(cs or ())) if v is not None
    ]
    ticks = nice_ticks(min([0.0, *values]), max([0.0, *values]), target=4)
    left, right, top, bottom, height = 60, 20, 10, 40, 170
    y0, y1 = top, height - bottom
    lo_t, hi_t = ticks[0], ticks[-1]

    def y(pct: float) -> float:
        return round(y1 - (pct - lo_t) / (hi_t - lo_t) * (y1 - y0), 2)

    n = len(points)

    def x(i: int) -> float:
        return round(left + (i + 0.5) * (width - left - right) / n, 2)

    out = [
        f'<svg class="timeline" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'role="img" aria-label="Relative effect over analysis dates" '
        'font-family="system-ui, sans-serif" font-size="11">'
    ]
    for t in ticks:
        out.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y(t)}" y2="{y(t)}" stroke="#eee"/>'
            f'<text x="{left - 6}" y="{y(t) + 4}" text-anchor="end">{t:g}%</text>'
        )
    out.append(
        f'<line class="zero" x1="{left}" x2="{width - right}" y1="{y(0)}" y2="{y(0)}" '
        'stroke="#333" stroke-dasharray="4 3"/>'
    )
    path = []
    for i, (date, eff, lo, hi, cs) in enumerate(points):
        if cs is not None:
            out.append(
                f'<line class="cs" x1="{x(i)}" x2="{x(i)}" y1="{y(100 * cs[0])}" '
                f'y2="{y(100 * cs[1])}" stroke="#9bb7d4" stroke-width="8" opacity="0.6"/>'
            )
        if lo is not None and hi is not None:
            out.append(
                f'<line class="ci" x1="{x(i)}" x2="{x(i)}" y1="{y(100 * lo)}" '
                f'y2="{y(100 * hi)}" stroke="#333" stroke-width="2"/>'
            )
        out.append(f'<circle class="point" cx="{x(i)}" cy="{y(100 * eff)}" r="3.5" fill="#333"/>')
        path.append(f"{x(i)},{y(100 * eff)}")
        if n <= 8 or i in (0, n - 1) or i % max(1, n // 6) == 0:
            out.append(
                f'<text x="{x(i)}" y="{height - bottom + 16}" text-anchor="middle">'
                f"{esc(date[5:])}</text>"
            )
    out.append(f'<polyline points="{" ".join(path)}" fill="none" stroke="#333" opacity="0.4"/>')
    level = f"{100 * (1 - alpha):g}% CI" if finite(alpha) is not None else "CI"
    legend = f"relative effect and {level}" + (
        "; band: confidence sequence" if any(p[4] for p in points) else ""
    )
    out.append(f'<text x="{left}" y="{height - 6}" fill="#555">{esc(legend)}</text></svg>')
    return "".join(out)


def timeline(history: Sequence[Row], control: Any) -> str:
    """Per metric × treatment, the relative effect over the analysis dates of the results
    table (`history`: overall rows of every date up to the report's)."""
    if not history:
        return ""
    control_means = {
        (str(r["analysis_date"]), r["metric"]): r.get("mean")
        for r in history
        if r.get("variant") == control
    }
    series: dict[tuple[str, str], list[Row]] = {}
    for r in history:
        if r.get("variant") != control:
            row = dict(r, control_mean=control_means.get((str(r["analysis_date"]), r["metric"])))
            series.setdefault((str(r["metric"]), str(r["variant"])), []).append(row)
    if not series or max(len(rows) for rows in series.values()) < 2:
        return ""
    alpha = first_value(history, "alpha")
    charts = "".join(
        f'<div class="chart"><h3>{esc(metric)} · {esc(variant)}</h3>'
        f"{timeline_plot(rows, alpha)}</div>"
        for (metric, variant), rows in sorted(series.items())
    )
    return f"<h2>Over time</h2><div class='charts'>{charts}</div>"
