"""A self-contained HTML report of one experiment's results (no Spark, no dependencies).

`render_report` takes plain dict rows of the `results` table (RESULT_COLUMNS) and of the
`diagnostics` table of one analysis date, optionally the results rows of earlier dates
(`history`, for the timeline) and the metrics' descriptions, and returns one HTML page:
the recommendation per treatment and its reasons first (`report_summary`), the health
verdict and its reasons, one sentence per metric and treatment (every role),
the SRM check and first exposures per day (`report_srm`), a results table per metric
(role, decision, adjusted means, sequential and non-inferiority columns where computed,
MDE, design effect; the jargon explained above them), a forest plot coloured by
decision, the effect over time, a section per slice dimension and the diagnostics
(problems highlighted). Inline CSS and SVG: no
JavaScript and no external resources. Every value from the data is escaped with
`html.escape`.
"""

from __future__ import annotations

import datetime as dt
import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cluster_spark import report_srm
from cluster_spark.checks import FIRST_EXPOSURES, is_warning, note
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
.srm .verdict, .health .verdict { font-weight: 600; }
.health { border: 2px solid #3a7d44; background: #eef7ef; padding: 8px 12px; }
.health.warning { border-color: #b58100; background: #fff4ce; }
.health.unhealthy { border-color: #b3261e; background: #fdecea; }
.pos { color: #1b7f3b; font-weight: 600; } .neg { color: #b3261e; font-weight: 600; }
.scroll { overflow-x: auto; max-width: 100%; }
.charts { display: flex; flex-wrap: wrap; gap: 8px 24px; } details.note { margin: 4px 0 8px; }
.warn { background: #fff4ce; } .muted { color: #777; } .note { color: #555; margin: 2px 0; }
"""

#: The jargon of the results tables, explained once above them.
GLOSSARY = (
    '<details class="note"><summary>What the columns mean</summary><dl class="meta">'
    "<dt>mean</dt><dd>ΣM/ΣD over the group's assignment units (e.g. revenue per user)</dd>"
    "<dt>Δ abs</dt><dd>treatment mean − control mean, in the metric's units</dd>"
    "<dt>Δ rel</dt><dd>Δ abs ÷ |control mean|: the lift</dd>"
    "<dt>p-value</dt><dd>of Δ abs (the delta method over assignment units; two-sided unless "
    "the experiment's alternative is one-sided)</dd>"
    "<dt>p (BH)</dt><dd>adjusted for testing several goal metrics × treatments "
    "(Benjamini–Hochberg); decisions of goal metrics use it</dd>"
    "<dt>CUPED var. red.</dt><dd>how much of Δ's variance the pre-period adjustment "
    "removed</dd>"
    "<dt>adj. means</dt><dd>CUPED-adjusted means: the control's mean and the control's mean "
    "plus the adjusted Δ abs, so their ratio − 1 is Δ rel</dd>"
    "<dt>unadjusted</dt><dd>the same comparison without CUPED: Δ rel, its CI and p</dd>"
    "<dt>CS / p (seq.)</dt><dd>always-valid confidence sequence and p-value: safe to look "
    "every day</dd>"
    "<dt>NI bound / p (NI)</dt><dd>guardrails: the one-sided bound of Δ rel in the bad "
    "direction, and the non-inferiority p-value against the margin</dd>"
    "<dt>MDE rel</dt><dd>the smallest lift this comparison detects with the configured "
    "power</dd>"
    "<dt>design effect</dt><dd>variance ÷ the variance if users were independent: what "
    "clustering costs</dd>"
    "</dl></details>"
)

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


def _one_sided_end(x: Any) -> bool:
    return isinstance(x, float) and math.isinf(x)


def fmt_ci(low: Any, high: Any, fmt=fmt_num) -> str:
    """`[low, high]`; a one-sided interval's infinite end is shown as −∞ or +∞."""

    def end(x: Any) -> str | None:
        if _one_sided_end(x):
            return "−∞" if x < 0 else "+∞"
        return None if _finite(x) is None else fmt(x)

    a, b = end(low), end(high)
    if a is None or b is None or (_one_sided_end(low) and _one_sided_end(high)):
        return "n/a"
    return f"[{a}, {b}]"


def _bounded(x: Any) -> float | None:
    """A CI end as a float: finite, or ±inf for a one-sided interval's open end."""
    return float(x) if _one_sided_end(x) else _finite(x)


#: Colour class of each decision: good, bad, neither.
TONES = {
    "win": "pos",
    "guardrail_ok": "pos",
    "loss": "neg",
    "guardrail_violated": "neg",
    "inconclusive": "ns",
    "guardrail_inconclusive": "ns",
}


def _significance(row: Row) -> str:
    """The colour class of a treatment row: by its `decision` (after corrections, in the
    metric's direction: 'pos' good, 'neg' bad, 'ns' neither), 'na' without a relative CI
    to draw. Rows without a decision (written before decisions existed) are coloured by
    whether the relative CI excludes 0."""
    low, high = (_bounded(row.get(k)) for k in ("effect_rel_ci_low", "effect_rel_ci_high"))
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
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f'<div class="scroll">{table}</div>'  # wide tables scroll, the page does not


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
    day = report_srm.flagged_day(results)
    if flag is None:
        cls, verdict = "srm unknown", "SRM check not available"
    elif flag:
        cls, verdict = "srm flagged", "SRM DETECTED: sample-ratio mismatch, results are suspect"
    elif day is not None:
        cls = "srm flagged"
        verdict = f"SRM DETECTED on {day}: first exposures off the split, results are suspect"
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


def _role_line(rows: Sequence[Row]) -> str:
    role, direction = _first(rows, "role"), _first(rows, "direction")
    if role is None:
        return ""
    better = "lower is better" if direction == "decrease" else "higher is better"
    return f"{role} · {better}"


def _metric_section(metric: str, rows: Sequence[Row], description: str = "") -> str:
    winsorized = any(r.get("winsorized") for r in rows)
    cuped = any(r.get("variance_reduction") is not None for r in rows)
    adjusted = any(r.get("mean_adjusted") is not None for r in rows)
    sequential = any(r.get("p_value_sequential") is not None for r in rows)
    guardrail = any(r.get("p_value_noninferiority") is not None for r in rows)
    decided = any(r.get("decision") is not None for r in rows)
    headers = ["variant", "units", "mean"]
    headers += ["adj. means (T vs C)"] if adjusted else []
    unadjusted = any(r.get("effect_rel_unadjusted") is not None for r in rows)
    headers += ["Δ abs", "Δ abs CI", "Δ rel", "Δ rel CI", "p-value", "p (BH)"]
    headers += ["CS (abs)", "p (seq.)"] if sequential else []
    headers += ["NI bound", "p (NI)"] if guardrail else []
    headers += ["MDE rel", "design effect"]
    headers += ["Δ rel uncapped", "uncapped CI"] if winsorized else []
    headers += ["unadjusted Δ rel [CI], p"] if unadjusted else []
    headers += ["CUPED var. red."] if cuped else []
    headers += ["decision"] if decided else []
    headers += ["status"]
    body = []
    for r in rows:
        sig = _significance(r)
        rel_cls = sig if sig in ("pos", "neg") else ""
        control = _is_control(r)
        variant = _e(r.get("variant"))
        if control and r.get("variant") != "control":
            variant += ' <span class="muted">(control)</span>'
        cells: list[Any] = [variant, _e(fmt_num(r.get("n_units"))), _e(fmt_num(r.get("mean")))]
        if adjusted:
            t, c = r.get("mean_adjusted"), r.get("control_mean_adjusted")
            cells.append("—" if t is None else _e(f"{fmt_num(t)} vs {fmt_num(c)}"))
        cells += [
            _e(fmt_num(r.get("effect_abs"))),
            "—" if control else _e(fmt_ci(r.get("effect_abs_ci_low"), r.get("effect_abs_ci_high"))),
            ("—" if control else _e(fmt_pct(r.get("effect_rel"))), rel_cls),
            "—"
            if control
            else _e(fmt_ci(r.get("effect_rel_ci_low"), r.get("effect_rel_ci_high"), fmt_pct)),
            _e(fmt_p(r.get("p_value"))),
            _e(fmt_p(r.get("p_value_bh"))),
        ]
        if sequential:
            cs = fmt_ci(r.get("effect_abs_cs_low"), r.get("effect_abs_cs_high"))
            cells += ["—" if control else _e(cs), _e(fmt_p(r.get("p_value_sequential")))]
        if guardrail:
            bound = r.get("noninferiority_bound")
            cells += [
                "—" if bound is None else _e(fmt_pct(bound)),
                _e(fmt_p(r.get("p_value_noninferiority"))),
            ]
        cells += [
            "—" if control else _e(fmt_pct(r.get("mde_rel"), sign=False)),
            _e(fmt_num(r.get("design_effect"))),
        ]
        if winsorized:
            low, high = r.get("effect_rel_uncapped_ci_low"), r.get("effect_rel_uncapped_ci_high")
            cells.append("—" if control else _e(fmt_pct(r.get("effect_rel_uncapped"))))
            cells.append("—" if control else _e(fmt_ci(low, high, fmt_pct)))
        if unadjusted:
            rel = r.get("effect_rel_unadjusted")
            ci = fmt_ci(
                r.get("effect_rel_unadjusted_ci_low"),
                r.get("effect_rel_unadjusted_ci_high"),
                fmt_pct,
            )
            shown = f"{fmt_pct(rel)} {ci}, p {fmt_p(r.get('p_value_unadjusted'))}"
            cells.append("—" if rel is None else _e(shown))
        if cuped:
            vr, how = r.get("variance_reduction"), r.get("cuped_status")
            if r.get("cuped_applied"):
                cells.append(_e(fmt_pct(vr, sign=False)))
            elif how and how != "not_compared":  # a fallback: the numbers are unadjusted
                cells.append((_e(how.replace("_", " ")), "warn"))
            else:
                cells.append("—")
        if decided:
            decision = r.get("decision")
            cells.append((_e(decision or "—"), sig if decision in TONES else ""))
        status = r.get("status") or "—"
        cells.append((_e(status), "" if status == "ok" else "warn"))
        body.append(cells)
    notes = [description] if description else []
    if adjusted:
        notes.append(
            "Adjusted (CUPED): each unit's value less the part its own pre-period predicts, "
            "which narrows the CI without moving the expected effect; adj. means are the "
            "control's mean and it plus the adjusted Δ abs (their ratio − 1 is Δ rel); the "
            "unadjusted comparison is shown beside."
        )
    if winsorized:
        capped = next((r for r in rows if r.get("winsorized")), {})
        num, den = (_caps(capped, part) for part in ("num", "den"))
        notes.append(f"Winsorized — numerator {num}; denominator {den}.")
        sides = [f"pre_{p}_{s}_cap" for p in ("num", "den") for s in ("lower", "upper")]
        if any(capped.get(c) is not None for c in sides):  # CUPED's own pre-period caps
            num, den = (_caps(capped, part) for part in ("pre_num", "pre_den"))
            notes.append(f"CUPED pre-period — numerator {num}; denominator {den}.")
    notes_html = "".join(f'<p class="note">{_e(n)}</p>' for n in notes)
    role = _role_line(rows)
    tag = f' <span class="muted">{_e(role)}</span>' if role else ""
    return f"<h3>{_e(metric)}{tag}</h3>{notes_html}{_table(headers, body)}"


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
    with a null effect have no point. Points are coloured by decision (`_significance`); a
    one-sided interval's open end runs to the edge of the axis.
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
        if sig != "na":  # a one-sided interval's open end runs to the axis' end
            x_low = x0 if math.isinf(low) else x(100 * low)
            x_high = x1 if math.isinf(high) else x(100 * high)
            out.append(
                f'<line class="ci" x1="{x_low}" x2="{x_high}" y1="{y}" y2="{y}" '
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


def _legend(decided: bool = True) -> str:
    items = [
        ("pos", "win / guardrail ok" if decided else "CI above 0"),
        ("neg", "loss / guardrail violated" if decided else "CI below 0"),
        ("ns", "inconclusive" if decided else "CI contains 0"),
        ("na", "no CI (n/a)"),
    ]
    return (
        '<p class="note">'
        + " &nbsp; ".join(f'<span style="color:{COLORS[k]}">●</span> {_e(t)}' for k, t in items)
        + "</p>"
    )


#: One line per health reason code (the part before ':'), README "Health".
HEALTH_TEXT = {
    "no_events_reach_units": (
        "no event of this source reaches an exposed unit: its ids do not join the "
        "exposures (another format or type, or the wrong id column); its metrics are 0"
    ),
    "unknown_variants": "more than 1 % of units have exposure rows of unconfigured variants",
    "non_finite_values": "NaN or ±Inf values in a summed column were treated as missing",
    "daily_source_as_instants": (
        "a daily source is read as instants: rows dated on the exposure day are not counted "
        "(set timestamp_as_date: true)"
    ),
    "srm": "sample-ratio mismatch: assignment units do not follow the configured split",
    "srm_over_time": (
        "sample-ratio mismatch over time: on the day named, first exposures of the arms named "
        "are off the configured split (that day's χ², or the anytime-valid sequential test "
        "through it); see First exposures per day"
    ),
    "guardrail_violated": "a guardrail metric shows significant harm",
    "srm_analysis_units": (
        "analysis units per assignment unit differ between arms (broken logging, or a real "
        "effect on activity)"
    ),
    "bias": "the groups already differed before exposure (pre-exposure bias check)",
    "units_in_several_variants": "more than 1 % of units were seen in two variants",
    "analysis_units_in_several_units": (
        "more than 1 % of analysis units appear under several assignment units"
    ),
    "zero_denominator": "more than 90 % of the units have a zero denominator",
    "cuped_no_pre_data": "CUPED is on but there is no usable pre-period data",
    "underpowered": "the achieved minimum detectable effect is larger than planned",
}


def _health_box(results: Sequence[Row]) -> str:
    verdict = _first(results, "health")
    if verdict is None:
        return ""
    codes = _first(results, "health_reasons") or []
    cls = f"health {verdict}"
    items = "".join(
        f"<li><code>{_e(c)}</code>: {_e(HEALTH_TEXT.get(c.split(':', 1)[0], ''))}</li>"
        for c in codes
    )
    reasons = f"<ul>{items}</ul>" if items else "<div>No problem found in the checks.</div>"
    return (
        f'<h2>Health</h2><div class="{cls}"><div class="verdict">'
        f"{_e(verdict.upper())}</div>{reasons}</div>"
    )


def timeline_plot(rows: Sequence[Row], alpha: Any = None, width: int = 560) -> str:
    """Inline SVG of one metric × treatment over analysis dates: the relative effect and
    its CI per date, and the confidence sequence where given (the absolute CS divided by
    the control mean |R_C| of that date)."""
    points = []
    for r in sorted(rows, key=lambda r: str(r["analysis_date"])):
        eff = _finite(r.get("effect_rel"))
        if eff is None:
            continue
        lo, hi = _finite(r.get("effect_rel_ci_low")), _finite(r.get("effect_rel_ci_high"))
        cs = None
        base = _finite(r.get("control_mean"))
        cs_lo, cs_hi = _finite(r.get("effect_abs_cs_low")), _finite(r.get("effect_abs_cs_high"))
        if base and cs_lo is not None and cs_hi is not None:
            cs = (cs_lo / abs(base), cs_hi / abs(base))
        points.append((str(r["analysis_date"]), eff, lo, hi, cs))
    if not points:
        return '<p class="muted">No estimates yet.</p>'
    values = [
        100 * v for _, e, lo, hi, cs in points for v in (e, lo, hi, *(cs or ())) if v is not None
    ]
    ticks = _nice_ticks(min([0.0, *values]), max([0.0, *values]), target=4)
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
                f"{_e(date[5:])}</text>"
            )
    out.append(f'<polyline points="{" ".join(path)}" fill="none" stroke="#333" opacity="0.4"/>')
    level = f"{100 * (1 - alpha):g}% CI" if _finite(alpha) is not None else "CI"
    legend = f"relative effect and {level}" + (
        "; band: confidence sequence" if any(p[4] for p in points) else ""
    )
    out.append(f'<text x="{left}" y="{height - 6}" fill="#555">{_e(legend)}</text></svg>')
    return "".join(out)


def _timeline(history: Sequence[Row], control: Any) -> str:
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
    alpha = _first(history, "alpha")
    charts = "".join(
        f'<div class="chart"><h3>{_e(metric)} · {_e(variant)}</h3>'
        f"{timeline_plot(rows, alpha)}</div>"
        for (metric, variant), rows in sorted(series.items())
    )
    return f"<h2>Over time</h2><div class='charts'>{charts}</div>"


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
                (_e(note(d.get("check"))), "l muted"),
            ]
        )
    if not body:
        return '<p class="muted">No diagnostics.</p>'
    return '<p class="note">Highlighted: counts that signal a problem.</p>' + _table(
        ["check", "metric", "variant", "value", "what it counts"], body, left=3
    )


def _sections(
    experiment_id: str,
    analysis_date: dt.date | str,
    results: Sequence[Row],
    diagnostics: Sequence[Row],
    history: Sequence[Row] = (),
    descriptions: Mapping[str, str] | None = None,
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
    descriptions = descriptions or {}
    tables = "".join(
        _metric_section(m, rows, descriptions.get(m, "")) for m, rows in metrics.items()
    )
    decided = any(r.get("decision") for r in treated)
    plot = (
        forest_plot(treated, _first(results, "alpha")) + _legend(decided)
        if treated
        else '<p class="muted">No treatments.</p>'
    )
    mine_history = [r for r in history if mine(r) and r.get("dimension") is None]
    from cluster_spark import report_summary  # imports this module's formatting

    # per-day first exposures are in the SRM section, not the diagnostics table
    daily_free = [d for d in diagnostics if not str(d.get("check")).startswith(FIRST_EXPOSURES)]
    return (
        f"{_header(experiment_id, analysis_date, results)}"
        f"{report_summary.recommendation_box(results)}"
        f"{_health_box(results)}"
        f"{report_summary.summary(results)}"
        f"<h2>Sample-ratio mismatch</h2>{_srm_box(results, diagnostics, control)}"
        f"{report_srm.section(results, diagnostics)}"
        f"<h2>Results</h2>{GLOSSARY}{tables or '<p class=muted>No results.</p>'}"
        f"<h2>Relative lift</h2>{plot}"
        f"{_timeline(mine_history, control)}"
        f"{_slice_sections(sliced, slice_diags, control)}"
        f"<h2>Diagnostics</h2>{_diagnostics_table(daily_free)}"
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
    from cluster_spark.report_summary import CSS as SUMMARY_CSS

    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{CSS}{SUMMARY_CSS}</style></head><body>{body}</body></html>\n"
    )


def render_report(
    experiment_id: str,
    analysis_date: dt.date | str,
    results: Sequence[Row],
    diagnostics: Sequence[Row],
    history: Sequence[Row] = (),
    descriptions: Mapping[str, str] | None = None,
) -> str:
    """One self-contained HTML page for an experiment (see the module docstring for its
    sections); `history`: results rows of earlier dates for the timeline; `descriptions`:
    metric → description. Rows of other experiments (by `experiment_id`) are ignored."""
    return _page(
        f"Experiment {experiment_id} — {analysis_date}",
        _sections(experiment_id, analysis_date, results, diagnostics, history, descriptions),
    )


def render_reports(
    analysis_date: dt.date | str,
    experiments: Sequence[tuple],
) -> str:
    """One self-contained HTML page for several experiments, given as (experiment id,
    results rows, diagnostics rows[, history rows, descriptions]): each experiment's
    sections as in `render_report`, one after the other. With one experiment it is
    `render_report`'s page."""
    if len(experiments) == 1:
        return render_report(experiments[0][0], analysis_date, *experiments[0][1:])
    ids = ", ".join(e[0] for e in experiments)
    body = "<hr>".join(_sections(e[0], analysis_date, *e[1:]) for e in experiments)
    return _page(f"Experiments {ids} — {analysis_date}", body)


def write_report(
    path: str | Path,
    experiment_id: str,
    analysis_date: dt.date | str,
    results: Sequence[Row],
    diagnostics: Sequence[Row],
    history: Sequence[Row] = (),
    descriptions: Mapping[str, str] | None = None,
) -> Path:
    """Render the report and write it to `path` (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    page = render_report(experiment_id, analysis_date, results, diagnostics, history, descriptions)
    path.write_text(page, "utf-8")
    return path
