"""The health verdict of an experiment on an analysis date (no Spark): `healthy`,
`warning` or `unhealthy`, with a stable reason code for each problem found in what the run
already measured (GrowthBook's experiment health, Statsig's health checks).

Reasons (`REASONS`; `:<metric>` is appended where one metric is concerned):

- unhealthy: `no_events_reach_units:<source>` (units were exposed and the source has
  events in the experiment's period, but none of them reaches an exposed unit: ids of
  another format or the wrong id column; every metric of that source is 0; a source
  without events in the period is not flagged), `srm` (the sample-ratio-mismatch
  test of assignment units is flagged), `srm_over_time:<YYYY-MM-DD>:<arm>[,<arm>…]`
  (first exposures per UTC day are off the split: that day's χ² below `srm_threshold`
  Bonferroni-divided by the days, or the anytime-valid sequential test through that day
  below `srm_threshold`; the first such day, and the arms off it, `stats.srm`),
  `guardrail_violated:<metric>` (a guardrail shows significant harm);
- warning: `srm_analysis_units` (analysis units per assignment unit differ between arms:
  the analysis-unit balance check, `srm_analysis_flag`, which a real effect on activity
  can trip too), `bias:<metric>` (a treatment's pre-exposure bias check is flagged),
  `units_in_several_variants` (> 1 % of exposed units seen in two variants),
  `unknown_variants` (> 1 % of the units with exposure rows have rows whose variant label
  is not a configured variant: those rows are left out, GrowthBook's unknown variations),
  `analysis_units_in_several_units` (> 1 % of analysis units seen under several
  assignment units: the multi-unit policy excluded or reassigned them),
  `non_finite_values:<source>:<column>` (a summed column holds NaN or ±Inf values,
  which are treated as missing: any such value, since no healthy source has one),
  `daily_source_as_instants:<source>` (a source whose timestamps are days, a DATE
  column or every one of at least 20 events at midnight UTC, is read as instants without
  `timestamp_as_date`: its exposure-day rows are not counted),
  `zero_denominator:<metric>` (> 90 % of a metric's units have a zero denominator: it
  is measured on few units),
  `cuped_no_pre_data:<metric>` (CUPED is on, but a treatment fell back for lack of
  pre-period data), `underpowered:<metric>` (a goal metric's achieved relative MDE,
  `mde_rel`, exceeds the experiment's `planned_mde`: the observed CI is wider than the
  experiment was planned for).

Thresholds are module constants, and each reason's level and report line are declared
once in `REASONS`; the verdict is the worst level among the reasons. Reasons
are listed worst level first, then in `REASONS` order (input problems before the checks
they make meaningless), then by code.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cluster_spark.checks import EVENTS_IN_PERIOD, FIRST_EXPOSURES, daily_sources
from cluster_spark.config import Experiment
from cluster_spark.stats import srm


class Health(StrEnum):
    HEALTHY = "healthy"
    WARNING = "warning"
    UNHEALTHY = "unhealthy"


MAX_MULTI_VARIANT_SHARE = 0.01
MAX_UNKNOWN_VARIANT_SHARE = 0.01
MAX_MULTI_UNIT_SHARE = 0.01
MAX_ZERO_DENOMINATOR_SHARE = 0.9


def _pct(share: float) -> str:
    return f"{100 * share:g} %"


@dataclass(frozen=True)
class Reason:
    """A health reason: its level, and the one line the report shows for it."""

    level: Health
    text: str


#: Reason code (the part before ':') → level and text; the report's lines read from here.
#: The order is the order of the reasons in `health_reasons` within a level.
REASONS = {
    "no_events_reach_units": Reason(
        Health.UNHEALTHY,
        "no event of this source reaches an exposed unit: its ids do not join the "
        "exposures (another format or type, or the wrong id column); its metrics are 0",
    ),
    "srm": Reason(
        Health.UNHEALTHY,
        "sample-ratio mismatch: assignment units do not follow the configured split",
    ),
    "srm_over_time": Reason(
        Health.UNHEALTHY,
        "sample-ratio mismatch over time: on the day named, first exposures of the arms named "
        "are off the configured split (that day's χ², or the anytime-valid sequential test "
        "through it); see First exposures per day",
    ),
    "srm_analysis_units": Reason(
        Health.WARNING,
        "analysis units per assignment unit differ between arms (broken logging, or a real "
        "effect on activity)",
    ),
    "guardrail_violated": Reason(Health.UNHEALTHY, "a guardrail metric shows significant harm"),
    "bias": Reason(
        Health.WARNING, "the groups already differed before exposure (pre-exposure bias check)"
    ),
    "units_in_several_variants": Reason(
        Health.WARNING,
        f"more than {_pct(MAX_MULTI_VARIANT_SHARE)} of units were seen in two variants",
    ),
    "unknown_variants": Reason(
        Health.WARNING,
        f"more than {_pct(MAX_UNKNOWN_VARIANT_SHARE)} of units have exposure rows of "
        "unconfigured variants",
    ),
    "analysis_units_in_several_units": Reason(
        Health.WARNING,
        f"more than {_pct(MAX_MULTI_UNIT_SHARE)} of analysis units appear under several "
        "assignment units",
    ),
    "zero_denominator": Reason(
        Health.WARNING,
        f"more than {_pct(MAX_ZERO_DENOMINATOR_SHARE)} of the units have a zero denominator",
    ),
    "non_finite_values": Reason(
        Health.WARNING, "NaN or ±Inf values in a summed column were treated as missing"
    ),
    "daily_source_as_instants": Reason(
        Health.WARNING,
        "a daily source is read as instants: rows dated on the exposure day are not counted "
        "(set timestamp_as_date: true)",
    ),
    "cuped_no_pre_data": Reason(
        Health.WARNING, "CUPED is on but there is no usable pre-period data"
    ),
    "underpowered": Reason(
        Health.WARNING, "the achieved minimum detectable effect is larger than planned"
    ),
}

_ORDER = [Health.HEALTHY, Health.WARNING, Health.UNHEALTHY]


def _count(diagnostics: Iterable[Mapping[str, Any]], check: str) -> int:
    return sum(int(d["value"] or 0) for d in diagnostics if d["check"] == check)


def srm_over_time(
    diagnostics: Iterable[Mapping[str, Any]], experiment: Experiment
) -> srm.OverTime | None:
    """`stats.srm.srm_over_time` of the experiment's overall `first_exposures:<day>` rows
    against its configured split (None without such rows)."""
    daily: dict[str, dict[str, int]] = {}
    for d in diagnostics:
        if (
            d["check"].startswith(f"{FIRST_EXPOSURES}:")
            and d.get("dimension") is None
            and d.get("variant") is not None
        ):
            day = daily.setdefault(d["check"].split(":", 1)[1], {})
            day[d["variant"]] = day.get(d["variant"], 0) + int(d["value"] or 0)
    if not daily:
        return None
    return srm.srm_over_time(daily, experiment.variants, experiment.srm_threshold)


def reasons(
    results: list[Mapping[str, Any]],
    diagnostics: list[Mapping[str, Any]],
    staged: Iterable[Mapping[str, Any]],
    experiment: Experiment,
) -> list[str]:
    """The reason codes of one experiment's overall results, diagnostics and staged rows,
    sorted by level (worst first), then `REASONS` order, then code."""
    found: list[str] = []
    units = _count(diagnostics, "assignment_units")
    found += sorted(
        f"no_events_reach_units:{d['check'].split(':', 1)[1]}"
        for d in diagnostics
        if d["check"].startswith(f"{EVENTS_IN_PERIOD}:") and units and d["value"]
    )
    treated = [r for r in results if r["variant"] != experiment.control]
    if any(r["srm_flag"] for r in results):
        found.append("srm")
    over_time = srm_over_time(diagnostics, experiment)
    if over_time is not None and over_time.flagged_day is not None:
        found.append(f"srm_over_time:{over_time.flagged_day}:{','.join(over_time.arms)}")
    if any(r.get("srm_analysis_flag") for r in results):
        found.append("srm_analysis_units")
    multi = _count(diagnostics, "units_in_several_variants")
    if multi > MAX_MULTI_VARIANT_SHARE * (units + multi):
        found.append("units_in_several_variants")
    unknown = _count(diagnostics, "unknown_variants")
    if unknown > MAX_UNKNOWN_VARIANT_SHARE * (units + multi + unknown):
        found.append("unknown_variants")
    subs = _count(diagnostics, "analysis_units")
    several = _count(diagnostics, "analysis_units_in_several_units")
    if several > MAX_MULTI_UNIT_SHARE * (subs + several):
        found.append("analysis_units_in_several_units")
    found += sorted(
        d["check"]
        for d in diagnostics
        if d["check"].startswith("non_finite_values:") and d.get("dimension") is None and d["value"]
    )
    found += [f"daily_source_as_instants:{s}" for s in daily_sources(diagnostics)]
    zero: dict[str, list[int]] = {}
    for row in staged:
        if not row.get("winsorized") and row.get("dimension") is None:
            z = zero.setdefault(row["metric"], [0, 0])
            z[0] += int(row.get("n_zero_denominator") or 0)
            z[1] += int(row.get("n_units") or 0)
    for metric, (n_zero, n) in sorted(zero.items()):
        if n and n_zero > MAX_ZERO_DENOMINATOR_SHARE * n:
            found.append(f"zero_denominator:{metric}")
    for r in treated:
        metric = r["metric"]
        if r["bias_flag"]:
            found.append(f"bias:{metric}")
        if r["cuped_status"] == "fallback_no_pre_data":
            found.append(f"cuped_no_pre_data:{metric}")
        if r["decision"] == "guardrail_violated":
            found.append(f"guardrail_violated:{metric}")
        mde = r["mde_rel"]
        if (
            experiment.planned_mde is not None
            and r["role"] == "goal"
            and mde is not None
            and mde > experiment.planned_mde
        ):
            found.append(f"underpowered:{metric}")
    unique = list(dict.fromkeys(found))
    order = list(REASONS)
    return sorted(
        unique, key=lambda c: (-_ORDER.index(level(c)), order.index(c.split(":", 1)[0]), c)
    )


def level(code: str) -> Health:
    return REASONS[code.split(":", 1)[0]].level


def verdict(codes: Iterable[str]) -> Health:
    """The worst level among the reason codes (`healthy` without any)."""
    return max((level(c) for c in codes), key=_ORDER.index, default=Health.HEALTHY)


def assess(
    results: list[dict[str, Any]],
    diagnostics: list[Mapping[str, Any]],
    staged: Iterable[Mapping[str, Any]],
    experiment: Experiment,
) -> None:
    """Set `health` and `health_reasons` on every overall results row of the experiment."""
    codes = reasons(results, diagnostics, staged, experiment)
    for row in results:
        row["health"], row["health_reasons"] = str(verdict(codes)), codes
