"""A self-contained HTML report of one experiment's results (no Spark, no dependencies).

`render_report` takes plain dict rows of the `results` table (RESULT_COLUMNS) and of the
`diagnostics` table (experiment_id, analysis_date, metric, variant, check, value, run_id)
and returns one HTML page with inline CSS and an inline SVG forest plot: no JavaScript
and no external resources. Every value from the data is escaped with `html.escape`.
"""

from __future__ import annotations

import datetime as dt
import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cluster_spark.checks import is_warning
from cluster_spark.status import POOLED_SLICES

Row = Mapping[str, Any]

#: Diagnostics checks that count units rather than problems (shown in the SRM box too).
UNIT_CHECKS = ("assignment_units", "analysis_units")

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; color: #222; margin: 24px; max-width: 1200px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 28px 0 8px; }
h3 { font-size: 15px; margin: 18px 0 4px; }
dl.meta { display: grid; grid-template-columns: max-content auto; gap: 2px 12px; margin: 0; }
dl.meta dt { color: #666; } dl.meta dd { margin: 0; }
table { border-collapse: collapse; margin: 4px 0 8px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; white-space: nowrap; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
.srm { border: 2px solid #3a7d44; background: #eef7ef; padding: 8px 12px; }
.srm.flagged { border-color: #b3261e; background: #fdecea; }
.srm.unknown { border-color: #999; background: #f6f6f6; }
.srm .verdict { font-weight: 600; }
.pos { color: #1b7f3b; font-weight: 600; } .neg { color: #b3261e; font-weight: 600; }
.warn { background: #fff4ce; } .muted { color: #777; } .note { color: #555; margin: 2px 0; }
"""

#: Forest-plot point colors: significant up, significant down, not significant, no CI.
COLORS = {"pos": "#1b7f3b", "neg": "#b3261e", "ns": "#555", "na": "#999"}


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _finite(x: Any) -> float | None:
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
    if _finite(x) is None:
        return str(x)
    if x == 0:
        return "0"
    if abs(x) >= 1e4:
        return f"{x:,.0f}"
    return f"{x:.2e}" if abs(x) < 1e-3 else f"{x:.4g}"


def fmt_pct(x: Any, sign: bool = True) -> str:
    """A fraction as a percentage with 2 decimals (0.0123 → '+1.23%')."""
    if _finite(x) is None:
        return "n/a"
    return f"{100 * x:+.2f}%" if sign else f"{100 * x:.2f}%"


def fmt_p(x: Any) -> str:
    if _finite(x) is None:
        return "—"
    return "<0.0001" if x < 1e-4 else f"{x:.4f}"


def fmt_ci(low: Any, high: Any, fmt=fmt_num) -> str:
    if _finite(low) is None or _finite(high) is None:
        return "n/a"
    return f"[{fmt(low)}, {fmt(high)}]"


def _significance(row: Row) -> str:
    """'pos'/'neg' if the relative CI excludes 0, 'ns' if it contains it, 'na' if null."""
    low, high = _finite(row.get("effect_rel_ci_low")), _finite(row.get("effect_rel_ci_high"))
    if low is None or high is None:
        return "na"
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


def _first(rows: Sequence[Row], key: str) -> Any:
    return next((r[key] for r in rows if r.get(key) is not None), None)


def _is_control(row: Row) -> bool:
    return row.get("variant") == row.get("control_variant")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """An HTML table; cells are already-escaped HTML, the first `left` columns left-aligned.
    A cell given as (html, css_class) gets that class."""

    def cell(tag: str, i: int, c: Any) -> str:
        c, cls = c if isinstance(c, tuple) else (c, "")
        cls = " ".join(filter(None, ["l" if i < left else "", cls]))
        return f'<{tag} class="{cls}">{c}</{tag}>' if cls else f"<{tag}>{c}</{tag}>"

    head = "".join(cell("th", i, _e(h)) for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(cell("td", i, c) for i, c in enumerate(r)) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _header(experiment_id: str, analysis_date: Any, results: Sequence[Row]) -> str:
    alpha = _first(results, "alpha")
    items = [
        ("Analysis date", analysis_date),
        ("Run id", _first(results, "run_id") or "—"),
        ("Alpha", fmt_num(alpha) if alpha is not None else "—"),
        ("Test", _first(results, "test") or "—"),
        ("Control", _first(results, "control_variant") or "—"),
    ]
    meta = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items)
    return f"<h1>Experiment {_e(experiment_id)}</h1><dl class='meta'>{meta}</dl>"


def _srm_box(results: Sequence[Row], diagnostics: Sequence[Row], control: Any) -> str:
    flag = _first(results, "srm_flag")
    chi2, p = _first(results, "srm_chi2"), _first(results, "srm_p_value")
    if flag is None:
        cls, verdict = "srm unknown", "SRM check not available"
    elif flag:
        cls, verdict = "srm flagged", "SRM DETECTED: sample-ratio mismatch, results are suspect"
    else:
        cls, verdict = "srm", "No sample-ratio mismatch"
    counts: dict[str, dict[str, Any]] = {}
    for d in diagnostics:
        if d.get("check") in UNIT_CHECKS and d.get("variant") is not None:
            counts.setdefault(d["variant"], {})[d["check"]] = d.get("value")
    total = sum(_finite(c.get("assignment_units")) or 0 for c in counts.values())
    rows = [
        [
            _e(v),
            fmt_num(c.get("assignment_units")),
            fmt_pct(c["assignment_units"] / total, sign=False)
            if total and _finite(c.get("assignment_units")) is not None
            else "—",
            fmt_num(c.get("analysis_units")),
        ]
        for v, c in sorted(counts.items(), key=lambda kv: (kv[0] != control, str(kv[0])))
    ]
    table = _table(["variant", "assignment units", "share", "analysis units"], rows)
    return (
        f'<div class="{cls}"><div class="verdict">{_e(verdict)}</div>'
        f"<div>χ² = {_e(fmt_num(chi2))}, p = {_e(fmt_p(p))}</div>{table}</div>"
    )


def _metric_section(metric: str, rows: Sequence[Row]) -> str:
    winsorized = any(r.get("winsorized") for r in rows)
    cuped = any(r.get("variance_reduction") is not None for r in rows)
    headers = ["variant", "units", "mean", "Δ abs", "Δ abs CI", "Δ rel", "Δ rel CI"]
    headers += ["p-value", "p (BH)"]
    headers += ["Δ rel uncapped", "uncapped CI"] if winsorized else []
    headers += ["CUPED var. red."] if cuped else []
    headers += ["status"]
    body = []
    for r in rows:
        sig = _significance(r)
        rel_cls = sig if sig in ("pos", "neg") else ""
        variant = _e(r.get("variant"))
        if _is_control(r) and r.get("variant") != "control":
            variant += ' <span class="muted">(control)</span>'
        cells: list[Any] = [
            variant,
            _e(fmt_num(r.get("n_units"))),
            _e(fmt_num(r.get("mean"))),
            _e(fmt_num(r.get("effect_abs"))),
            _e(fmt_ci(r.get("effect_abs_ci_low"), r.get("effect_abs_ci_high")))
            if not _is_control(r)
            else "—",
            (_e(fmt_pct(r.get("effect_rel"))) if not _is_control(r) else "—", rel_cls),
            _e(fmt_ci(r.get("effect_rel_ci_low"), r.get("effect_rel_ci_high"), fmt_pct))
            if not _is_control(r)
            else "—",
            _e(fmt_p(r.get("p_value"))),
            _e(fmt_p(r.get("p_value_bh"))),
        ]
        if winsorized:
            low, high = r.get("effect_rel_uncapped_ci_low"), r.get("effect_rel_uncapped_ci_high")
            none = _is_control(r)
            cells.append("—" if none else _e(fmt_pct(r.get("effect_rel_uncapped"))))
            cells.append("—" if none else _e(fmt_ci(low, high, fmt_pct)))
        if cuped:
            vr, how = r.get("variance_reduction"), r.get("cuped_status")
            if r.get("cuped_applied"):
                cells.append(_e(fmt_pct(vr, sign=False)))
            elif how and how != "not_compared":  # a fallback: the numbers are unadjusted
                cells.append((_e(how.replace("_", " ")), "warn"))
            else:
                cells.append("—")
        status = r.get("status") or "—"
        cells.append((_e(status), "" if status == "ok" else "warn"))
        body.append(cells)
    notes = []
    if winsorized:
        capped = next((r for r in rows if r.get("winsorized")), {})
        num, den = (_caps(capped, part) for part in ("num", "den"))
        notes.append(f"Winsorized — numerator {num}; denominator {den}.")
    notes_html = "".join(f'<p class="note">{_e(n)}</p>' for n in notes)
    return f"<h3>{_e(metric)}</h3>{notes_html}{_table(headers, body)}"


def _caps(row: Row, part: str) -> str:
    low, high = row.get(f"{part}_lower_cap"), row.get(f"{part}_upper_cap")
    if low is None and high is None:
        return "not capped"
    return f"capped to [{fmt_num(low)}, {fmt_num(high)}]"


def _nice_ticks(low: float, high: float, target: int = 6) -> list[float]:
    """Round tick values covering [low, high] (steps of 1, 2, 2.5 or 5 × 10^k)."""
    if high <= low:
        low, high = low - 1, high + 1
    raw = (high - low) / target
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first, last = math.floor(low / step), math.ceil(high / step)
    return [round(i * step, 10) for i in range(first, last + 1)]


def _shorten(text: str, n: int) -> str:
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
    with a null effect have no point. Points are colored by whether the CI excludes 0.
    """
    label_w, text_w, row_h, top, bottom = 300, 230, 24, 10, 40
    x0, x1 = label_w, width - text_w
    values = [
        100 * v
        for r in rows
        for k in ("effect_rel", "effect_rel_ci_low", "effect_rel_ci_high")
        if (v := _finite(r.get(k))) is not None
    ]
    ticks = _nice_ticks(min([0.0, *values]), max([0.0, *values]))
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
        short = f"{_shorten(metric, 30)} · {_shorten(variant, 12)}"
        out.append(
            f'<text x="{label_w - 10}" y="{y + 4}" text-anchor="end">'
            f"<title>{_e(label)}</title>{_e(short)}</text>"
        )
        sig = _significance(r)
        low, high = r.get("effect_rel_ci_low"), r.get("effect_rel_ci_high")
        if sig != "na":
            out.append(
                f'<line class="ci" x1="{x(100 * low)}" x2="{x(100 * high)}" y1="{y}" y2="{y}" '
                f'stroke="{COLORS[sig]}" stroke-width="2"/>'
            )
        if (eff := _finite(r.get("effect_rel"))) is not None:
            fill = "white" if sig == "na" else COLORS[sig]
            out.append(
                f'<circle class="point {sig}" cx="{x(100 * eff)}" cy="{y}" r="4.5" '
                f'fill="{fill}" stroke="{COLORS[sig]}" stroke-width="1.5"/>'
            )
        text = fmt_pct(r.get("effect_rel"))
        text += "" if sig == "na" else " " + fmt_ci(low, high, fmt_pct)
        if sig == "na" and text != "n/a":
            text += "  (CI n/a)"
        out.append(f'<text x="{x1 + 12}" y="{y + 4}" fill="{COLORS[sig]}">{_e(text)}</text>')
    out.append(
        f'<line class="axis" x1="{x0}" x2="{x1}" y1="{axis_y}" y2="{axis_y}" stroke="#333"/>'
    )
    for t in ticks:
        out.append(
            f'<line class="tick" x1="{x(t)}" x2="{x(t)}" y1="{axis_y}" y2="{axis_y + 5}" '
            'stroke="#333"/>'
            f'<text x="{x(t)}" y="{axis_y + 18}" text-anchor="middle">{t:g}%</text>'
        )
    level = f"{100 * (1 - alpha):g}% CI" if _finite(alpha) is not None else "CI at 1 − α"
    out.append(
        f'<line class="zero" x1="{x(0)}" x2="{x(0)}" y1="{top}" y2="{axis_y}" '
        'stroke="#333" stroke-dasharray="4 3"/>'
        f'<text x="{(x0 + x1) / 2}" y="{axis_y + 34}" text-anchor="middle" fill="#555">'
        f"relative lift vs control ({_e(level)})</text></svg>"
    )
    return "".join(out)


def _legend() -> str:
    items = [
        ("pos", "CI above 0"),
        ("neg", "CI below 0"),
        ("ns", "CI contains 0"),
        ("na", "no CI (n/a)"),
    ]
    return (
        '<p class="note">'
        + " &nbsp; ".join(f'<span style="color:{COLORS[k]}">●</span> {_e(t)}' for k, t in items)
        + "</p>"
    )


def _diagnostics_table(diagnostics: Sequence[Row]) -> str:
    def key(d: Row) -> tuple[str, str, str]:
        return tuple(str(d.get(k) or "") for k in ("check", "metric", "variant"))

    body = []
    for d in sorted(diagnostics, key=key):
        value = d.get("value")
        bad = _finite(value) is not None and is_warning(d.get("check"), value)
        body.append(
            [
                _e(d.get("check")),
                _e(d.get("metric") if d.get("metric") is not None else "—"),
                _e(d.get("variant") if d.get("variant") is not None else "—"),
                (_e(fmt_num(value)), "warn" if bad else ""),
            ]
        )
    if not body:
        return '<p class="muted">No diagnostics.</p>'
    return _table(["check", "metric", "variant", "value"], body, left=3)


def _sections(
    experiment_id: str,
    analysis_date: dt.date | str,
    results: Sequence[Row],
    diagnostics: Sequence[Row],
) -> str:
    def mine(r: Row) -> bool:
        return r.get("experiment_id", experiment_id) == experiment_id

    results = [r for r in results if mine(r)]
    diagnostics = [d for d in diagnostics if mine(d)]
    sliced = [r for r in results if r.get("dimension") is not None]
    slice_diags = [d for d in diagnostics if d.get("dimension") is not None]
    results = [r for r in results if r.get("dimension") is None]
    diagnostics = [d for d in diagnostics if d.get("dimension") is None]
    control = _first(results, "control_variant")
    metrics: dict[str, list[Row]] = {}
    for r in results:
        metrics.setdefault(str(r.get("metric")), []).append(r)
    for rows in metrics.values():
        rows.sort(key=lambda r: (not _is_control(r), str(r.get("variant"))))
    treated = [r for rows in metrics.values() for r in rows if not _is_control(r)]
    tables = "".join(_metric_section(m, rows) for m, rows in metrics.items())
    plot = (
        forest_plot(treated, _first(results, "alpha")) + _legend()
        if treated
        else '<p class="muted">No treatments.</p>'
    )
    return (
        f"{_header(experiment_id, analysis_date, results)}"
        f"<h2>Sample-ratio mismatch</h2>{_srm_box(results, diagnostics, control)}"
        f"<h2>Results</h2>{tables or '<p class=muted>No results.</p>'}"
        f"<h2>Relative lift</h2>{plot}"
        f"{_slice_sections(sliced, slice_diags, control)}"
        f"<h2>Diagnostics</h2>{_diagnostics_table(diagnostics)}"
    )


def _slice_sections(results: Sequence[Row], diagnostics: Sequence[Row], control: Any) -> str:
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
                    _e(name),
                    *[_e(fmt_num(units.get((name, v), 0))) for v in variants],
                    (_e(fmt_p(first.get("srm_p_value"))), "warn" if flagged else ""),
                    (_e(first.get("status")), "warn")
                    if first.get("status") == "too_few_slice_units"
                    else "",
                ]
            )
        table = _table(["slice", *[f"units: {v}" for v in variants], "SRM p", ""], body)
        plots = []
        for metric in dict.fromkeys(str(r["metric"]) for r in rows):
            treated = [r for r in rows if r["metric"] == metric and not _is_control(r)]
            het = ", ".join(
                f"{v}: {fmt_p(_first(arm, 'heterogeneity_p_value'))}"
                for v in variants
                if v != control and (arm := [r for r in treated if r["variant"] == v])
            )
            plots.append(
                f"<h3>{_e(metric)}</h3><p class='note'>Heterogeneity across slices "
                f"(Cochran's Q p-value): {_e(het)}</p>"
                + forest_plot(treated, _first(rows, "alpha"), keys=("slice", "variant"))
            )
        out.append(
            f"<h2>By {_e(dimension)}</h2>"
            "<p class='note'>Each slice is analysed on its own units (SRM and CUPED within "
            "the slice); p-values (BH) are adjusted within the dimension.</p>"
            f"{table}{''.join(plots)}"
        )
    return "".join(out)


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>{body}</body></html>\n"
    )


def render_report(
    experiment_id: str,
    analysis_date: dt.date | str,
    results: Sequence[Row],
    diagnostics: Sequence[Row],
) -> str:
    """One self-contained HTML page for an experiment: header, SRM box, a results table per
    metric, a forest plot of relative lifts and the diagnostics table. Rows of other
    experiments (by `experiment_id`, when present) are ignored."""
    return _page(
        f"Experiment {experiment_id} — {analysis_date}",
        _sections(experiment_id, analysis_date, results, diagnostics),
    )


def render_reports(
    analysis_date: dt.date | str,
    experiments: Sequence[tuple[str, Sequence[Row], Sequence[Row]]],
) -> str:
    """One self-contained HTML page for several experiments, given as (experiment id,
    results rows, diagnostics rows): each experiment's sections as in `render_report`, one
    after the other. With one experiment it is `render_report`'s page."""
    if len(experiments) == 1:
        return render_report(experiments[0][0], analysis_date, *experiments[0][1:])
    ids = ", ".join(e for e, _, _ in experiments)
    body = "<hr>".join(_sections(e, analysis_date, r, d) for e, r, d in experiments)
    return _page(f"Experiments {ids} — {analysis_date}", body)


def write_report(
    path: str | Path,
    experiment_id: str,
    analysis_date: dt.date | str,
    results: Sequence[Row],
    diagnostics: Sequence[Row],
) -> Path:
    """Render the report and write it to `path` (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(experiment_id, analysis_date, results, diagnostics), "utf-8")
    return path
