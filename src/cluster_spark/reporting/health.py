"""The health verdict's box: the verdict and one line per reason (`health.REASONS`)."""

from __future__ import annotations

from collections.abc import Sequence

from cluster_spark.reporting.format import Row, esc, first_value

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


def box(results: Sequence[Row]) -> str:
    verdict = first_value(results, "health")
    if verdict is None:
        return ""
    codes = first_value(results, "health_reasons") or []
    cls = f"health {verdict}"
    items = "".join(
        f"<li><code>{esc(c)}</code>: {esc(HEALTH_TEXT.get(c.split(':', 1)[0], ''))}</li>"
        for c in codes
    )
    reasons = f"<ul>{items}</ul>" if items else "<div>No problem found in the checks.</div>"
    return (
        f'<h2>Health</h2><div class="{cls}"><div class="verdict">'
        f"{esc(verdict.upper())}</div>{reasons}</div>"
    )
