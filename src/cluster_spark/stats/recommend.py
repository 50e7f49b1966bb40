"""One recommendation per treatment (no Spark): `ship` / `do not ship` / `keep running` /
`invalid`, with its reasons, from the overall results rows of that treatment (their
decisions after corrections, `stats.decisions`) and the experiment's health codes.

After GrowthBook's decision framework ("ship now" / "roll back now" / "ready for review")
and Statsig's recommendations. The rules, in order; the first that matches decides:

| # | when                                                              | recommendation |
|---|-------------------------------------------------------------------|----------------|
| 1 | health has an unhealthy reason other than `guardrail_violated`    | `invalid`      |
| 2 | a guardrail of this treatment is `guardrail_violated`             | `do not ship`  |
| 3 | a goal is a `loss`                                                | `do not ship`  |
| 4 | a goal `win` and every guardrail `guardrail_ok`                   | `ship`         |
| 5 | a goal `win`, some guardrail `guardrail_inconclusive`             | `keep running` |
| 6 | no goal moved, some goal underpowered (`mde_rel` > `planned_mde`) | `keep running` |
|   | or without an estimate (no `effect_rel`, e.g. too few units)      |                |
| 7 | no goal moved otherwise, or no goal metric at all                 | `do not ship`  |

Always added, never deciding: a secondary metric's `loss` and the health's warning codes
(but `underpowered`, which rule 6 judges per treatment), as reasons starting with `risk:`.

Where we differ: (1) `guardrail_violated` makes the health `unhealthy`, but it is a result
of the treatment, not a broken experiment: it is rule 2, and it counts only for the
treatment whose guardrail it is. (5) GrowthBook ships unless a guardrail is significantly
bad, and Statsig may recommend "ship with risk"; here a guardrail must show
non-inferiority: an inconclusive guardrail means a harm as large as its margin (the harm
the team declared unacceptable) is not yet excluded, so the data do not yet support
shipping: `keep running` (or ship knowingly, accepting the risk the reason names). (7)
GrowthBook's "no clear winner": with `planned_mde` set the experiment could have seen the
planned effect and did not; without it power is not judged and the reason says so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum
from typing import Any

from cluster_spark.health import Health, level


class Recommendation(StrEnum):
    """The `recommendation` column of an overall treatment row (null elsewhere)."""

    SHIP = "ship"
    DO_NOT_SHIP = "do not ship"
    KEEP_RUNNING = "keep running"
    INVALID = "invalid"


def pct(x: float | None) -> str:
    """A fraction as a signed percentage (0.0123 → '+1.23%'); 'n/a' when missing."""
    return "n/a" if x is None else f"{100 * x:+.2f}%"


def margin_text(margin: float | None) -> str:
    """A guardrail margin as a percentage (0.02 → '2%')."""
    return "n/a" if margin is None else f"{100 * margin:g}%"


def _bayesian(r: Mapping[str, Any]) -> bool:
    return r.get("engine") == "bayesian" and r.get("chance_to_win") is not None


def _effect(r: Mapping[str, Any]) -> str:
    if _bayesian(r):  # the posterior the decision came from (`stats.bayes`)
        relative = r.get("posterior_effect") == "relative"
        fmt = pct if relative else (lambda x: "n/a" if x is None else f"{x:+.4g}")
        low, high = fmt(r.get("credible_low")), fmt(r.get("credible_high"))
        return (
            f"Δ {'rel' if relative else 'abs'} {fmt(r.get('posterior_mean'))} "
            f"[credible {low}, {high}], chance to beat control "
            f"{pct(r.get('chance_to_win'))[1:]}, risk {fmt(r.get('risk_treatment'))}"
        )
    low, high = r.get("effect_rel_ci_low"), r.get("effect_rel_ci_high")
    return f"Δ rel {pct(r.get('effect_rel'))} [{pct(low)}, {pct(high)}]"


def _goal(r: Mapping[str, Any]) -> str:
    return f"goal {r['metric']} {r.get('decision')}: {_effect(r)}"


def _guardrail(r: Mapping[str, Any]) -> str:
    m, margin = r["metric"], margin_text(r.get("margin"))
    bound = pct(r.get("noninferiority_bound"))
    decision = r.get("decision")
    if _bayesian(r):
        verdict = {
            "guardrail_violated": "violated: harm is likely",
            "guardrail_ok": f"ok: a harm beyond its {margin} margin is unlikely",
        }.get(decision, f"inconclusive: a {margin} harm (its margin) is not yet unlikely")
        return f"guardrail {m} {verdict} ({_effect(r)})"
    if decision == "guardrail_violated":
        return f"guardrail {m} violated: {_effect(r)} is significant harm (margin {margin})"
    if decision == "guardrail_ok":
        return f"guardrail {m} ok: a {margin} harm is excluded (non-inferiority bound {bound})"
    return (
        f"guardrail {m} inconclusive: a {margin} harm (its margin) is not yet excluded "
        f"(non-inferiority bound {bound})"
    )


def _underpowered(r: Mapping[str, Any], planned_mde: float | None) -> str | None:
    if r.get("effect_rel") is None:
        return f"goal {r['metric']} has no estimate yet ({r.get('status')})"
    mde = r.get("mde_rel")
    if planned_mde is not None and mde is not None and mde > planned_mde:
        return (
            f"goal {r['metric']} underpowered: it can detect {pct(mde)[1:]}, "
            f"planned {pct(planned_mde)[1:]}"
        )
    return None


def recommend(
    rows: Iterable[Mapping[str, Any]],
    health_reasons: Sequence[str],
    planned_mde: float | None = None,
) -> tuple[Recommendation, list[str]]:
    """The recommendation for one treatment and its reasons (the deciding ones first, then
    `risk:` ones), from that treatment's overall rows (`metric`, `role`, `decision`,
    `effect_rel` and its CI, `margin`, `noninferiority_bound`, `mde_rel`, `status`), the
    experiment's `health_reasons` and `planned_mde`. Rules: the module docstring."""
    rows = list(rows)
    goals = [r for r in rows if r.get("role") == "goal"]
    guards = [r for r in rows if r.get("role") == "guardrail"]
    risks = [
        f"risk: secondary {r['metric']} loss: {_effect(r)}"
        for r in rows
        if r.get("role") == "secondary" and r.get("decision") == "loss"
    ]
    warnings = [  # underpowered goals: rule 6, per treatment
        c for c in health_reasons if level(c) == Health.WARNING and not c.startswith("underpowered")
    ]
    if warnings:
        risks.append(f"risk: health warning: {', '.join(warnings)}")
    broken = [
        c
        for c in health_reasons
        if level(c) == Health.UNHEALTHY and not c.startswith("guardrail_violated")
    ]
    if broken:
        return Recommendation.INVALID, [f"experiment unhealthy: {c}" for c in broken] + risks
    violated = [_guardrail(r) for r in guards if r.get("decision") == "guardrail_violated"]
    losses = [_goal(r) for r in goals if r.get("decision") == "loss"]
    if violated or losses:
        return Recommendation.DO_NOT_SHIP, violated + losses + risks
    wins = [_goal(r) for r in goals if r.get("decision") == "win"]
    if wins:
        unsure = [_guardrail(r) for r in guards if r.get("decision") != "guardrail_ok"]
        if unsure:
            return Recommendation.KEEP_RUNNING, wins + unsure + risks
        return Recommendation.SHIP, wins + [_guardrail(r) for r in guards] + risks
    if not goals:
        return Recommendation.DO_NOT_SHIP, ["no goal metric: nothing to ship for", *risks]
    weak = [w for w in (_underpowered(r, planned_mde) for r in goals) if w is not None]
    if weak:
        return Recommendation.KEEP_RUNNING, weak + risks
    why = (
        f"every goal could detect the planned {pct(planned_mde)[1:]}"
        if planned_mde is not None
        else "power not judged: set planned_mde to tell too little data from no effect"
    )
    return Recommendation.DO_NOT_SHIP, [f"no goal moved: no clear winner ({why})", *risks]


def assign(rows: list[dict[str, Any]], control: str, planned_mde: float | None) -> None:
    """Set `recommendation` and `recommendation_reasons` on every overall treatment row of
    one experiment (`rows`: its overall rows, with `decision` and `health_reasons` set)."""
    codes = next((r["health_reasons"] for r in rows if r.get("health_reasons") is not None), [])
    treatments = dict.fromkeys(r["variant"] for r in rows if r["variant"] != control)
    for variant in treatments:
        mine = [r for r in rows if r["variant"] == variant]
        verdict, reasons = recommend(mine, codes, planned_mde)
        for r in mine:
            r["recommendation"], r["recommendation_reasons"] = str(verdict), reasons
