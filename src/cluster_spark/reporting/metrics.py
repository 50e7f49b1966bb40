"""The results table of each metric, and the glossary of its columns."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cluster_spark.reporting.format import (
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
    "<dt>Δ rel [CI]</dt><dd>Δ abs ÷ |control mean|: the lift, and its confidence interval "
    "(Fieller's by default: it excludes 0 exactly when the p-value is below alpha)</dd>"
    "<dt>p-value</dt><dd>of Δ abs (the delta method over assignment units, or the cluster "
    "jackknife with fewer than 10,000 of them: the results' variance_method; two-sided "
    "unless the experiment's alternative is one-sided)</dd>"
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
    "direction beside the margin, and the non-inferiority p-value against it</dd>"
    "<dt>chance to beat control / risk</dt><dd>engine: bayesian: the posterior probability "
    "that the treatment is better, and the expected loss of shipping it: the average over "
    "the posterior of how much worse it is (0 where it is better), in the modelled effect's "
    "units</dd>"
    "<dt>MDE rel</dt><dd>the smallest lift this comparison detects with the configured "
    "power</dd>"
    "<dt>design effect</dt><dd>variance ÷ the variance if users were independent: what "
    "clustering costs</dd>"
    "<dt>more columns</dt><dd>under each table: Δ abs CI, p (NI), CS / p (seq.), MDE rel, "
    "design effect, uncapped Δ rel, CUPED var. red.</dd>"
    "</dl></details>"
)


def role_line(rows: Sequence[Row]) -> str:
    role, direction = first_value(rows, "role"), first_value(rows, "direction")
    if role is None:
        return ""
    better = "lower is better" if direction == "decrease" else "higher is better"
    return f"{role} · {better}"


@dataclass(frozen=True)
class Column:
    """A column of a metric's results table: its header, whether this metric shows it
    (`wanted`, over all rows) and its cell of one row (already-escaped HTML or
    (html, css class)); `control` is the control row's cell ('—' by default)."""

    header: str
    wanted: Callable[[Sequence[Row]], bool]
    cell: Callable[[Row], Any]
    control: Callable[[Row], Any] | None = None


def _any(key: str) -> Callable[[Sequence[Row]], bool]:
    return lambda rows: any(r.get(key) is not None for r in rows)


def _always(rows: Sequence[Row]) -> bool:
    return True


def _variant(r: Row) -> str:
    text = esc(r.get("variant"))
    if is_control(r) and r.get("variant") != "control":
        text += ' <span class="muted">(control)</span>'
    return text


def _code(x: Any) -> str:
    """A status or decision code, breakable after its underscores (narrow columns)."""
    return esc(x).replace("_", "_<wbr>")


def _rel(r: Row) -> Any:
    sig = significance(r)
    ci = fmt_ci(r.get("effect_rel_ci_low"), r.get("effect_rel_ci_high"), fmt_pct)
    text = f"{esc(fmt_pct(r.get('effect_rel')))} <span class='ci'>{esc(ci)}</span>"
    return text, sig if sig in ("pos", "neg") else ""


def _ni(r: Row) -> str:
    bound = r.get("noninferiority_bound")
    if bound is None:
        return "—"
    margin = r.get("margin")
    within = (
        "" if margin is None else f" <span class='ci'>margin {esc(fmt_pct(margin, False))}</span>"
    )
    return esc(fmt_pct(bound)) + within


def _cuped(r: Row) -> Any:
    how = r.get("cuped_status")
    if r.get("cuped_applied"):
        return esc(fmt_pct(r.get("variance_reduction"), sign=False))
    if how and how != "not_compared":  # a fallback: the numbers are unadjusted
        return esc(how.replace("_", " ")), "warn"
    return "—"


def _unadjusted(r: Row) -> str:
    rel = r.get("effect_rel_unadjusted")
    if rel is None:
        return "—"
    low, high = r.get("effect_rel_unadjusted_ci_low"), r.get("effect_rel_unadjusted_ci_high")
    ci, p = fmt_ci(low, high, fmt_pct), fmt_p(r.get("p_value_unadjusted"))
    return f"{esc(fmt_pct(rel))} <span class='ci'>{esc(ci)}</span> p&nbsp;{esc(p)}"


def _decision(r: Row) -> Any:
    decision = r.get("decision")
    return _code(decision or "—"), significance(r) if decision in TONES else ""


def _risk(r: Row) -> str:
    risk = r.get("risk_treatment")
    if risk is None:
        return "—"
    relative = r.get("posterior_effect") == "relative"
    return esc(fmt_pct(risk, sign=False) if relative else fmt_num(risk))


def _status(r: Row) -> Any:
    status = r.get("status") or "—"
    return _code(status), "" if status == "ok" else "warn"


def _adjusted_means(r: Row) -> str:
    t, c = r.get("mean_adjusted"), r.get("control_mean_adjusted")
    return "—" if t is None else esc(f"{fmt_num(t)} vs {fmt_num(c)}")


def _num(key: str) -> Callable[[Row], str]:
    return lambda r: esc(fmt_num(r.get(key)))


def _p(key: str) -> Callable[[Row], str]:
    return lambda r: esc(fmt_p(r.get(key)))


def _interval(low: str, high: str) -> Callable[[Row], str]:
    return lambda r: esc(fmt_ci(r.get(low), r.get(high)))


def _uncapped(r: Row) -> str:
    low, high = r.get("effect_rel_uncapped_ci_low"), r.get("effect_rel_uncapped_ci_high")
    ci = fmt_ci(low, high, fmt_pct)
    return f"{esc(fmt_pct(r.get('effect_rel_uncapped')))} <span class='ci'>{esc(ci)}</span>"


#: The table a reader reads: what moved, by how much, how sure, and the verdict. It fits a
#: 1280 px screen for any metric (#26 item 7); every other column is under "more columns".
MAIN = (
    Column("variant", _always, _variant, _variant),
    Column("units", _always, _num("n_units"), _num("n_units")),
    Column("mean", _always, _num("mean"), _num("mean")),
    Column("adj. means (T vs C)", _any("mean_adjusted"), _adjusted_means),
    Column("Δ abs", _always, _num("effect_abs")),
    Column("Δ rel [CI]", _always, _rel),
    Column("p-value", _always, _p("p_value")),
    Column("p (BH)", _any("p_value_bh"), _p("p_value_bh")),
    Column("unadjusted Δ rel [CI], p", _any("effect_rel_unadjusted"), _unadjusted),
    Column("NI bound", _any("p_value_noninferiority"), _ni),
    Column(
        "chance to beat control",
        _any("chance_to_win"),
        lambda r: esc(fmt_pct(r.get("chance_to_win"), sign=False)),
    ),
    Column("risk", _any("risk_treatment"), _risk),
    Column("decision", _any("decision"), _decision),
    Column("status", _always, _status, _status),
)

#: Rarely read columns, behind "more columns" (explained in the glossary).
MORE = (
    Column("variant", _always, _variant, _variant),
    Column("Δ abs CI", _always, _interval("effect_abs_ci_low", "effect_abs_ci_high")),
    Column("p (NI)", _any("p_value_noninferiority"), _p("p_value_noninferiority")),
    Column(
        "CS (abs)", _any("p_value_sequential"), _interval("effect_abs_cs_low", "effect_abs_cs_high")
    ),
    Column("p (seq.)", _any("p_value_sequential"), _p("p_value_sequential")),
    Column("MDE rel", _always, lambda r: esc(fmt_pct(r.get("mde_rel"), sign=False))),
    Column("design effect", _always, _num("design_effect"), _num("design_effect")),
    Column("Δ rel uncapped [CI]", lambda rows: any(r.get("winsorized") for r in rows), _uncapped),
    Column("CUPED var. red.", _any("variance_reduction"), _cuped),
)


def _columns_table(columns: Sequence[Column], rows: Sequence[Row]) -> str:
    shown = [c for c in columns if c.wanted(rows)]
    body = [
        [(c.control or (lambda r: "—"))(r) if is_control(r) else c.cell(r) for c in shown]
        for r in rows
    ]
    return html_table([c.header for c in shown], body)


def section(metric: str, rows: Sequence[Row], description: str = "") -> str:
    """A metric's heading (role and direction), its notes (description, CUPED, caps), the
    main results table and the rest of the columns behind "more columns"."""
    adjusted = any(r.get("mean_adjusted") is not None for r in rows)
    winsorized = any(r.get("winsorized") for r in rows)
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
    more = (
        '<details class="more"><summary>more columns</summary>'
        f"{_columns_table(MORE, rows)}</details>"
    )
    return f"<h3>{esc(metric)}{tag}</h3>{notes_html}{_columns_table(MAIN, rows)}{more}"


def caps(row: Row, part: str) -> str:
    low, high = row.get(f"{part}_lower_cap"), row.get(f"{part}_upper_cap")
    if low is None and high is None:
        return "not capped"
    return f"capped to [{fmt_num(low)}, {fmt_num(high)}]"
