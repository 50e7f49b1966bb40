"""The results table of each metric, and the glossary of its columns."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cluster_spark.report.format import (
    TONES,
    Row,
    esc,
    first_value,
    fmt_ci,
    fmt_num,
    fmt_p,
    fmt_pct,
    html_table,
    is_control,
    significance,
)

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


def role_line(rows: Sequence[Row]) -> str:
    role, direction = first_value(rows, "role"), first_value(rows, "direction")
    if role is None:
        return ""
    better = "lower is better" if direction == "decrease" else "higher is better"
    return f"{role} · {better}"


def section(metric: str, rows: Sequence[Row], description: str = "") -> str:
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
        sig = significance(r)
        rel_cls = sig if sig in ("pos", "neg") else ""
        control = is_control(r)
        variant = esc(r.get("variant"))
        if control and r.get("variant") != "control":
            variant += ' <span class="muted">(control)</span>'
        cells: list[Any] = [variant, esc(fmt_num(r.get("n_units"))), esc(fmt_num(r.get("mean")))]
        if adjusted:
            t, c = r.get("mean_adjusted"), r.get("control_mean_adjusted")
            cells.append("—" if t is None else esc(f"{fmt_num(t)} vs {fmt_num(c)}"))
        cells += [
            esc(fmt_num(r.get("effect_abs"))),
            "—"
            if control
            else esc(fmt_ci(r.get("effect_abs_ci_low"), r.get("effect_abs_ci_high"))),
            ("—" if control else esc(fmt_pct(r.get("effect_rel"))), rel_cls),
            "—"
            if control
            else esc(fmt_ci(r.get("effect_rel_ci_low"), r.get("effect_rel_ci_high"), fmt_pct)),
            esc(fmt_p(r.get("p_value"))),
            esc(fmt_p(r.get("p_value_bh"))),
        ]
        if sequential:
            cs = fmt_ci(r.get("effect_abs_cs_low"), r.get("effect_abs_cs_high"))
            cells += ["—" if control else esc(cs), esc(fmt_p(r.get("p_value_sequential")))]
        if guardrail:
            bound = r.get("noninferiority_bound")
            cells += [
                "—" if bound is None else esc(fmt_pct(bound)),
                esc(fmt_p(r.get("p_value_noninferiority"))),
            ]
        cells += [
            "—" if control else esc(fmt_pct(r.get("mde_rel"), sign=False)),
            esc(fmt_num(r.get("design_effect"))),
        ]
        if winsorized:
            low, high = r.get("effect_rel_uncapped_ci_low"), r.get("effect_rel_uncapped_ci_high")
            cells.append("—" if control else esc(fmt_pct(r.get("effect_rel_uncapped"))))
            cells.append("—" if control else esc(fmt_ci(low, high, fmt_pct)))
        if unadjusted:
            rel = r.get("effect_rel_unadjusted")
            ci = fmt_ci(
                r.get("effect_rel_unadjusted_ci_low"),
                r.get("effect_rel_unadjusted_ci_high"),
                fmt_pct,
            )
            shown = f"{fmt_pct(rel)} {ci}, p {fmt_p(r.get('p_value_unadjusted'))}"
            cells.append("—" if rel is None else esc(shown))
        if cuped:
            vr, how = r.get("variance_reduction"), r.get("cuped_status")
            if r.get("cuped_applied"):
                cells.append(esc(fmt_pct(vr, sign=False)))
            elif how and how != "not_compared":  # a fallback: the numbers are unadjusted
                cells.append((esc(how.replace("_", " ")), "warn"))
            else:
                cells.append("—")
        if decided:
            decision = r.get("decision")
            cells.append((esc(decision or "—"), sig if decision in TONES else ""))
        status = r.get("status") or "—"
        cells.append((esc(status), "" if status == "ok" else "warn"))
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
        num, den = (caps(capped, part) for part in ("num", "den"))
        notes.append(f"Winsorized — numerator {num}; denominator {den}.")
        sides = [f"pre_{p}_{s}_cap" for p in ("num", "den") for s in ("lower", "upper")]
        if any(capped.get(c) is not None for c in sides):  # CUPED's own pre-period caps
            num, den = (caps(capped, part) for part in ("pre_num", "pre_den"))
            notes.append(f"CUPED pre-period — numerator {num}; denominator {den}.")
    notes_html = "".join(f'<p class="note">{esc(n)}</p>' for n in notes)
    role = role_line(rows)
    tag = f' <span class="muted">{esc(role)}</span>' if role else ""
    return f"<h3>{esc(metric)}{tag}</h3>{notes_html}{html_table(headers, body)}"


def caps(row: Row, part: str) -> str:
    low, high = row.get(f"{part}_lower_cap"), row.get(f"{part}_upper_cap")
    if low is None and high is None:
        return "not capped"
    return f"capped to [{fmt_num(low)}, {fmt_num(high)}]"
