"""The report's SRM section (no Spark): the cumulative SRM box (assignment and analysis
units per arm, χ² p-value), then first exposures per UTC day and arm from
the `first_exposures:<day>` diagnostics rows, as an inline SVG of each arm's daily share
against its configured share (`srm_expected_share`), and a table of the counts, shares,
the day's χ² p-value and the anytime-valid sequential p-value through it (`stats.srm`).
Inline SVG, no JavaScript; every value from the data is escaped."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cluster_spark.checks import FIRST_EXPOSURES
from cluster_spark.reporting.format import (
    Row,
    esc,
    finite,
    first_value,
    fmt_num,
    fmt_p,
    fmt_pct,
    html_table,
)
from cluster_spark.stats.srm import srm_over_time

PALETTE = ("#1f5fa8", "#d2691e", "#2e8b57", "#8b3a8b", "#b8860b", "#4682b4", "#a52a2a")

#: Diagnostics checks that count units rather than problems (shown in the SRM box too).
UNIT_CHECKS = ("assignment_units", "analysis_units")


def daily_counts(diagnostics: Sequence[Row]) -> dict[str, dict[str, int]]:
    """Day → arm → first exposures, from the overall `first_exposures:<day>` rows."""
    out: dict[str, dict[str, int]] = {}
    for d in diagnostics:
        check = str(d.get("check") or "")
        if check.startswith(f"{FIRST_EXPOSURES}:") and d.get("dimension") is None:
            day = out.setdefault(check.split(":", 1)[1], {})
            day[d["variant"]] = day.get(d["variant"], 0) + int(d.get("value") or 0)
    return out


def flagged_day(results: Sequence[Row]) -> str | None:
    """The day of the `srm_over_time:<day>:<arms>` health reason, if any."""
    for r in results:
        for code in r.get("health_reasons") or []:
            if code.startswith("srm_over_time:"):
                return code.split(":")[1]
    return None


def share_plot(
    daily: Mapping[str, Mapping[str, int]], shares: Mapping[str, float], width: int = 560
) -> str:
    """Inline SVG: each arm's share of the day's first exposures (solid, one point a day)
    and its configured share (dashed), in the same colour."""
    days = sorted(daily)
    arms = list(shares)
    height, left, right, top, bottom = 200, 44, 110, 10, 28
    observed = {
        v: [daily[d].get(v, 0) / max(sum(daily[d].values()), 1) for d in days] for v in arms
    }
    high = min(1.0, max([*shares.values(), *(s for v in arms for s in observed[v])]) * 1.15)
    high = high or 1.0
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(i: int) -> float:
        return left + (plot_w * (i + 0.5) / len(days))

    def y(share: float) -> float:
        return top + plot_h * (1 - share / high)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="first exposures per day: share of each arm">',
        f'<line x1="{left}" y1="{y(0):.1f}" x2="{left + plot_w}" y2="{y(0):.1f}" stroke="#999"/>',
    ]
    for k in range(5):
        tick = high * k / 4
        parts.append(
            f'<text x="{left - 4}" y="{y(tick) + 4:.1f}" font-size="10" text-anchor="end">'
            f"{tick:.0%}</text>"
        )
    step = max(1, len(days) // 7)
    for i, d in enumerate(days):
        if i % step == 0 or i == len(days) - 1:
            parts.append(
                f'<text x="{x(i):.1f}" y="{height - 8}" font-size="10" text-anchor="middle">'
                f"{esc(d[5:])}</text>"
            )
    for j, v in enumerate(arms):
        colour = PALETTE[j % len(PALETTE)]
        parts.append(
            f'<line x1="{left}" y1="{y(shares[v]):.1f}" x2="{left + plot_w}" '
            f'y2="{y(shares[v]):.1f}" stroke="{colour}" stroke-dasharray="4 3"/>'
        )
        points = " ".join(f"{x(i):.1f},{y(s):.1f}" for i, s in enumerate(observed[v]))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}"/>')
        for i, s in enumerate(observed[v]):
            n = daily[days[i]].get(v, 0)
            parts.append(
                f'<circle cx="{x(i):.1f}" cy="{y(s):.1f}" r="3" fill="{colour}">'
                f"<title>{esc(v)} on {esc(days[i])}: {n} units, {s:.1%} "
                f"(split {shares[v]:.1%})</title></circle>"
            )
        parts.append(
            f'<text x="{left + plot_w + 8}" y="{top + 12 + 14 * j}" font-size="11" '
            f'fill="{colour}">{esc(v)} ({shares[v]:.0%})</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def section(results: Sequence[Row], diagnostics: Sequence[Row]) -> str:
    """The SRM-over-time section: chart and table ('' without per-day rows or shares)."""
    daily = daily_counts(diagnostics)
    shares = {
        r["variant"]: float(r["srm_expected_share"])
        for r in results
        if r.get("dimension") is None and r.get("srm_expected_share") is not None
    }
    if not daily or len(shares) < 2:
        return ""
    # the p-values do not depend on the threshold; the flagged day is the health reason's
    over_time = srm_over_time(daily, shares, threshold=0.001)
    flagged = flagged_day(results)
    rows = []
    for day in over_time.days:
        total = sum(day.counts.values())
        cls = "warn" if day.day == flagged else ""
        cells = [(esc(day.day), cls)]
        for v in shares:
            n = day.counts.get(v, 0)
            cells.append(f"{n:,} ({n / total:.1%})" if total else "0")
        cells += [esc(fmt_p(day.p_value)), esc(fmt_p(day.p_sequential))]
        rows.append(cells)
    headers = [
        "UTC day",
        *[f"{v} (split {s:.1%})" for v, s in shares.items()],
        "day χ² p",
        "sequential p",
    ]
    return (
        "<h3>First exposures per day</h3>"
        '<p class="note">Assignment units by the UTC day of their first exposure: each '
        "arm's share of the day (solid) against the configured split (dashed). The day's "
        "χ² tests that day alone (no χ² below 5 expected units an arm); the sequential "
        "p-value (Lindon &amp; Malek 2020) stays valid however often it is looked at."
        f"</p>{share_plot(daily, shares)}{html_table(headers, rows)}"
    )


def box(results: Sequence[Row], diagnostics: Sequence[Row], control: Any) -> str:
    flag = first_value(results, "srm_flag")
    chi2, p = first_value(results, "srm_chi2"), first_value(results, "srm_p_value")
    day = flagged_day(results)
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
    total = sum(finite(c.get("assignment_units")) or 0 for c in counts.values())
    rows = [
        [
            esc(v),
            fmt_num(c.get("assignment_units")),
            fmt_pct(c["assignment_units"] / total, sign=False)
            if total and finite(c.get("assignment_units")) is not None
            else "—",
            fmt_num(c.get("analysis_units")),
        ]
        for v, c in sorted(counts.items(), key=lambda kv: (kv[0] != control, str(kv[0])))
    ]
    table = html_table(["variant", "assignment units", "share", "analysis units"], rows)
    return (
        f'<div class="{cls}"><div class="verdict">{esc(verdict)}</div>'
        f"<div>χ² = {esc(fmt_num(chi2))}, p = {esc(fmt_p(p))}</div>{table}</div>"
    )
