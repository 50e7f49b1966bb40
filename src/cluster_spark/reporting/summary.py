"""The report's first screen (issue #26 items 3 and 4): a "Recommendation" box per
treatment (`recommendation` and its reasons, `stats.recommend`), and a summary covering
every role: goals, guardrails (with their margin and non-inferiority bound beside them)
and secondary metrics, each coloured by its decision, so a loss or a violated guardrail is
red even when no goal moved. Plain HTML from results rows; every value escaped."""

from __future__ import annotations

from collections.abc import Sequence

from cluster_spark.reporting.format import TONES, Row, esc, finite, fmt_ci, fmt_pct, is_control
from cluster_spark.stats.recommend import margin_text

CSS = """
.rec { border: 2px solid #999; background: #f6f6f6; padding: 8px 12px; margin: 0 0 8px; }
.rec.ship { border-color: #3a7d44; background: #eef7ef; }
.rec.keep-running { border-color: #b58100; background: #fff4ce; }
.rec.do-not-ship, .rec.invalid { border-color: #b3261e; background: #fdecea; }
.rec .verdict { font-weight: 600; } .rec li.risk { color: #b3261e; }
"""

#: Summary order of the roles (rows without a role are goals, as before roles existed).
ROLES = ("goal", "guardrail", "secondary")


def _treatments(results: Sequence[Row]) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = {}
    for r in results:
        if not is_control(r) and r.get("dimension") is None:
            out.setdefault(str(r.get("variant")), []).append(r)
    return out


def recommendation_box(results: Sequence[Row]) -> str:
    """One box per treatment with a recommendation: the verdict, then its reasons (risks
    in red); empty for results written before recommendations existed."""
    boxes = []
    for variant, rows in _treatments(results).items():
        first = next((r for r in rows if r.get("recommendation")), None)
        if first is None:
            continue
        rec, reasons = str(first["recommendation"]), first.get("recommendation_reasons")
        items = "".join(
            f'<li class="risk">{esc(x)}</li>' if x.startswith("risk:") else f"<li>{esc(x)}</li>"
            for x in reasons or []
        )
        boxes.append(
            f'<div class="rec {esc(rec.replace(" ", "-"))}"><div class="verdict">'
            f"{esc(variant)}: {esc(rec.upper())}</div><ul>{items}</ul></div>"
        )
    return f"<h2>Recommendation</h2>{''.join(boxes)}" if boxes else ""


def sentence(r: Row) -> str:
    """'treatment_a raised revenue_per_user by +11.64% [+6.36%, +17.19%]: win'; a
    guardrail's adds its margin and non-inferiority bound."""
    rel, decision = r.get("effect_rel"), r.get("decision") or "inconclusive"
    if finite(rel) is None:
        return f"{r['variant']} on {r['metric']}: no estimate ({r.get('status')})"
    verb = "raised" if rel > 0 else "lowered" if rel < 0 else "did not change"
    ci = fmt_ci(r.get("effect_rel_ci_low"), r.get("effect_rel_ci_high"), fmt_pct)
    adjusted = " (CUPED-adjusted)" if r.get("cuped_applied") else ""
    ni = ""
    if r.get("role") == "guardrail":
        bound = fmt_pct(r.get("noninferiority_bound"))
        ni = f" (margin {margin_text(r.get('margin'))}, non-inferiority bound {bound})"
    return f"{r['variant']} {verb} {r['metric']} by {fmt_pct(rel)} {ci}{adjusted}{ni}: {decision}"


def summary(results: Sequence[Row]) -> str:
    """Per treatment, one line per metric, goals first, then guardrails, then secondary
    metrics, each labelled with its role and coloured by its decision."""
    parts = []
    for rows in _treatments(results).values():
        ordered = sorted(
            rows,
            key=lambda r: (ROLES.index(r.get("role") or "goal"), str(r.get("metric"))),
        )
        items = "".join(
            f'<li class="{TONES.get(r.get("decision"), "")}">'
            f"{esc(r.get('role') or 'goal')}: {esc(sentence(r))}</li>"
            for r in ordered
        )
        parts.append(items)
    return f"<h2>Summary</h2><ul>{''.join(parts)}</ul>" if parts else ""
