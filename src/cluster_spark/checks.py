"""What a run tells its user besides the numbers (pure Python, no Spark): the analysis
date against each experiment's dates, and the filter-match diagnostics turned into
warnings that name the experiment, metric, component, column and value.

The filter-match counts themselves are computed in Spark in the first aggregation pass
(`staging.events.first_level`) and staged as diagnostics rows, per experiment and metric
(variant NULL):

- `matched_events:<numerator|denominator>`: events of the experiment's units that the run
  reads (from the earliest start, or pre-period, to the latest analysis time of the unit's
  experiments: the scope of `null_values`) that pass the component's filter (all its
  conditions; every such event without a filter). 0 means the component is 0 for every
  unit.
- `filter_value_events:<numerator|denominator>:<column>=<value>`: the same events whose
  `column` equals one value of an `eq` or `in` condition (value as JSON, instants in ISO
  8601 UTC). 0 means the value never occurs there.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from cluster_spark.errors import UsageError

if TYPE_CHECKING:  # no run-time dependency: the report imports this module
    from cluster_spark.config import Component, Condition, Config

#: Component roles as `Metric.components` names them → as the config spells them.
ROLES = {"num": "numerator", "den": "denominator"}

MATCHED = "matched_events"
#: Events of a source that reach an exposed unit of the experiment (in its range), for
#: the experiments whose metrics read it; 0: health reason `no_events_reach_units`.
EVENTS_OF_UNITS = "events_of_units"
#: Events of a source in the experiment's period, asked only when none reached an exposed
#: unit: more than 0 means its ids do not join the exposures (`no_events_reach_units`).
EVENTS_IN_PERIOD = "events_in_period"
#: 1 for a source whose timestamp column is a DATE read as instants (midnight UTC)
#: without `timestamp_as_date` (a warning: `daily_sources`).
DATE_TIMESTAMPS = "date_timestamps"
#: Events of a source (of the experiment's units, as `events_of_units`) whose time is
#: midnight UTC exactly, for sources without `timestamp_as_date`.
EVENTS_AT_MIDNIGHT = "events_at_midnight"
#: At least this many events, all at midnight UTC, make a source look daily.
MIN_DAILY_EVENTS = 20
#: `first_exposures:<YYYY-MM-DD>`, per variant: assignment units whose first exposure is on
#: that UTC day (the `assignment_units` counted per day), for SRM over time (`stats.srm`).
FIRST_EXPOSURES = "first_exposures"
FILTER_VALUE = "filter_value_events"


def matched_check(role: str) -> str:
    """Diagnostics check of the events matching a component's filter (`num`/`den`)."""
    return f"{MATCHED}:{ROLES.get(role, role)}"


def _literal(value: Any) -> str:
    """A filter value as it appears in a check name: JSON, instants in ISO 8601."""
    return json.dumps(value, default=lambda v: v.isoformat(), ensure_ascii=False)


def value_check(role: str, column: str, value: Any) -> str:
    """Diagnostics check of the events whose `column` equals one filter value."""
    return f"{FILTER_VALUE}:{ROLES.get(role, role)}:{column}={_literal(value)}"


def filter_values(cond: Condition) -> list[Any]:
    """The values an `eq` or `in` condition looks for (none for other operators)."""
    if cond.op == "eq":
        return [cond.value]
    if cond.op == "in":
        return list(cond.value)
    return []


#: What each diagnostics check counts, in one line (by the part before the first ':').
NOTES = {
    "assignment_units": "exposed assignment units analysed",
    FIRST_EXPOSURES: "assignment units first exposed on this UTC day (SRM over time)",
    "analysis_units": "analysis units with a post-exposure event",
    "duplicate_exposures": "repeat exposure rows of a unit: normal, the first one counts",
    "events_before_exposure": (
        "events before the unit's exposure: normal, not counted (CUPED's pre-period reads them)"
    ),
    "null_values": "NULLs in a filter column: ne/not_in keep them, the other ops drop them",
    "units_in_several_variants": "units seen in two variants: excluded",
    "unknown_variants": (
        "units with exposure rows of a variant label not configured: those rows left out"
    ),
    "exposures_with_null_ids": "exposure rows with a NULL id, variant or timestamp: dropped",
    "analysis_units_in_several_units": (
        "analysis units under several assignment units: handled by multi_unit_policy"
    ),
    "events_with_null_ids": "events with a NULL id: see README, Input rules",
    "unmapped_ids": "events whose id has no id-mapping row: dropped",
    "events_with_null_timestamps": "events without a timestamp: in no window",
    "non_finite_values": "NaN or ±Inf values in a summed column: treated as missing",
    DATE_TIMESTAMPS: "a DATE timestamp read as midnight UTC: see timestamp_as_date",
    EVENTS_AT_MIDNIGHT: "events at midnight UTC exactly (all of them: a daily table?)",
    EVENTS_IN_PERIOD: "events of the source in the period (none reached an exposed unit)",
    EVENTS_OF_UNITS: "events of the source that reach an exposed unit (0: ids do not join)",
    "unit_attribute_rows_dropped": "attribute rows with a NULL id or timestamp: dropped",
    "late_events_outside_lookback": (
        "events that arrived (or went) after their day left the incremental lookback: not in "
        "the results until a full refresh (run with --full-refresh, or a longer lookback)"
    ),
    "state_full_refresh": "incremental state rebuilt from every event (the reason named)",
    MATCHED: "events passing the component's filter (0: the filter matches nothing)",
    FILTER_VALUE: "events with this filter value (0: no event has it)",
}
#: Checks whose counts are expected, never a problem.
NORMAL = {"assignment_units", FIRST_EXPOSURES, "analysis_units", "duplicate_exposures",
          "events_before_exposure", "null_values", EVENTS_OF_UNITS,
          "state_full_refresh"}  # fmt: skip


def note(check: str | None) -> str:
    return NOTES.get((check or "").split(":", 1)[0], "")


def is_warning(check: str | None, value: Any) -> bool:
    """Whether a diagnostics row is a problem: a filter-match count of 0, or a positive
    count of a check that is not expected (`NORMAL`: unit counts, repeat exposures,
    pre-exposure events, filter-column NULLs)."""
    if check is None or value is None:
        return False
    if check.startswith((f"{MATCHED}:", f"{FILTER_VALUE}:", f"{EVENTS_OF_UNITS}:")):
        return value == 0
    return check.split(":", 1)[0] not in NORMAL and value > 0


def _show(value: Any) -> str:
    if isinstance(value, dt.date):
        return value.isoformat()
    return repr(value)


def describe_filter(conditions: Iterable[Condition]) -> str:
    """A component's filter as text, e.g. `event eq 'Purchase' and value gt 100`."""
    parts = []
    for c in conditions:
        if c.op in ("is_null", "not_null"):
            parts.append(f"{c.column} {c.op}")
        elif isinstance(c.value, list):
            parts.append(f"{c.column} {c.op} [{', '.join(map(_show, c.value))}]")
        else:
            parts.append(f"{c.column} {c.op} {_show(c.value)}")
    return " and ".join(parts)


def _component_warning(
    comp: Component, role: str, found: Mapping[str, Any], where: str
) -> str | None:
    absent = [
        (cond.column, value)
        for cond in comp.filter
        for value in filter_values(cond)
        if found.get(value_check(role, cond.column, value)) == 0
    ]
    never = "; ".join(f"column '{c}' never holds {_show(v)}" for c, v in absent)
    hint = " (values are compared exactly: case and spaces count)" if absent else ""
    part = ROLES[role]
    if found.get(matched_check(role)) == 0:
        events = f"events of source '{comp.source}' {_SCOPE}"
        if comp.filter:
            what = f"none of the {events} matches the filter [{describe_filter(comp.filter)}]"
        else:
            what = f"there are no {events}"
        reason = f": {never}{hint}" if never else ""
        return f"{where}: {what}{reason}; the {part} is 0 for every unit"
    if absent:
        return f"{where}: in source '{comp.source}', {never}{hint}"
    return None


_SCOPE = "(of the experiment's units, from its start to the analysis time)"


def filter_warnings(config: Config, diagnostics: Iterable[Mapping[str, Any]]) -> list[str]:
    """One warning per component (in config order) whose filter matches no event of an
    experiment's units, or one of whose `eq`/`in` values never occurs in its column, from
    the staged diagnostics rows (`experiment_id`, `metric`, `check`, `value`). Components
    without such rows (not staged) give none."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    unjoined = set(_unjoined(diagnostics))
    for d in diagnostics:
        if d.get("metric") is not None:
            found.setdefault((d["experiment_id"], d["metric"]), {})[d["check"]] = d["value"]
    out = []
    for exp in config.experiments:
        for name in exp.metrics:
            rows = found.get((exp.id, name))
            if not rows:
                continue
            for role, comp in config.metrics[name].components.items():
                if comp.agg == "unit_count" or (exp.id, comp.source) in unjoined:
                    continue  # ids that do not join: `join_warnings` says so once
                part = "value" if config.metrics[name].value else ROLES[role]
                where = f"experiment '{exp.id}', metric '{name}', {part}"
                message = _component_warning(comp, role, rows, where)
                if message:
                    out.append(message)
    return out


def unknown_label_warnings(config: Config, diagnostics: Iterable[Mapping[str, Any]]) -> list[str]:
    """One warning per experiment whose exposure rows had variant labels that are not
    configured variants (`unknown_variants` diagnostics rows: units per label)."""
    found: dict[str, list[tuple[str, int]]] = {}
    for d in diagnostics:
        if d["check"] == "unknown_variants" and d.get("dimension") is None and d["value"]:
            found.setdefault(d["experiment_id"], []).append((d["variant"], int(d["value"])))
    out = []
    for exp in config.experiments:
        if exp.id not in found:
            continue
        labels = sorted(found[exp.id], key=lambda lv: (-lv[1], lv[0]))
        shown = ", ".join(f"{label!r} ({n} unit{'s' * (n != 1)})" for label, n in labels)
        hint = (
            ""
            if exp.normalize_variant_labels
            else "; normalize_variant_labels: true matches labels ignoring case and "
            "surrounding spaces"
        )
        out.append(
            f"experiment '{exp.id}': exposure rows whose variant is not one of the configured "
            f"{list(exp.variants)} were left out: {shown}{hint}"
        )
    return out


def daily_sources(diagnostics: Iterable[Mapping[str, Any]]) -> list[str]:
    """Sources read as instants (no `timestamp_as_date`) whose data look daily: a DATE
    timestamp column (`date_timestamps` rows), or at least `MIN_DAILY_EVENTS` events of
    the experiment's units, every one at midnight UTC (`events_at_midnight` equal to
    `events_of_units`): their exposure-day rows are before the exposure and not counted."""
    rows = list(diagnostics)
    counts = {(d.get("experiment_id"), d["check"]): d["value"] for d in rows}
    found = set()
    for d in rows:
        check = d["check"]
        if check.startswith(f"{DATE_TIMESTAMPS}:"):
            found.add(check.split(":", 1)[1])
        elif check.startswith(f"{EVENTS_AT_MIDNIGHT}:"):
            source = check.split(":", 1)[1]
            events = counts.get((d.get("experiment_id"), f"{EVENTS_OF_UNITS}:{source}"))
            if events and events >= MIN_DAILY_EVENTS and d["value"] == events:
                found.add(source)
    return sorted(found)


def date_warnings(diagnostics: Iterable[Mapping[str, Any]]) -> list[str]:
    """One warning per source that looks daily but is read as instants (`daily_sources`)."""
    return [
        f"source '{s}': its timestamps are days (a DATE column, or every event at midnight "
        "UTC), read as midnight UTC, so a row dated on a unit's exposure day is before the "
        "exposure and not counted; for a table of one row per day set timestamp_as_date: "
        "true on the source (whole days from the exposure day)"
        for s in daily_sources(diagnostics)
    ]


def _unjoined(diagnostics: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], int]:
    """(experiment, source) → events in the period, for sources whose events in the
    experiment's period reach none of its exposed units (`events_in_period` rows)."""
    prefix = f"{EVENTS_IN_PERIOD}:"
    return {
        (d["experiment_id"], d["check"][len(prefix) :]): int(d["value"])
        for d in diagnostics
        if d["check"].startswith(prefix) and d["value"]
    }


def join_warnings(config: Config, diagnostics: Iterable[Mapping[str, Any]]) -> list[str]:
    """One warning per experiment and source whose events reach none of its exposed units
    (health reason `no_events_reach_units`), naming the id column to check."""
    out = []
    for (experiment, source), n in sorted(_unjoined(diagnostics).items()):
        route = config.unit_route(source, config.experiment(experiment).assignment_unit)
        column = route if isinstance(route, str) else config.sources[source].ids[route.from_id]
        out.append(
            f"experiment '{experiment}': none of the {n:,} events of source '{source}' in its "
            f"period reaches an exposed unit: check that column '{column}' holds the same ids, "
            "in the same format, as the exposures; every metric of the source is 0"
        )
    return out


def late_warnings(diagnostics: Iterable[Mapping[str, Any]]) -> list[str]:
    """Events the incremental state missed (`late_events_outside_lookback:<source>`)."""
    return [
        f"experiment {d['experiment_id']!r}, source {d['check'].split(':', 1)[1]!r}: "
        f"{d['value']:,} event{'' if d['value'] == 1 else 's'} arrived (or went) after "
        "their day left the incremental "
        "lookback and are not in these results: rerun with --full-refresh, or lengthen "
        "incremental.lookback_hours"
        for d in diagnostics
        if (d.get("check") or "").startswith("late_events_outside_lookback:") and d["value"]
    ]


def warnings(config: Config, diagnostics: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every warning the diagnostics rows give: variant labels that are not configured,
    DATE timestamps read as instants, filters that match nothing, events the incremental
    state missed."""
    rows = list(diagnostics)
    return [
        *late_warnings(rows),
        *join_warnings(config, rows),
        *unknown_label_warnings(config, rows),
        *date_warnings(rows),
        *filter_warnings(config, rows),
    ]


def date_notes(config: Config, experiment_ids: Iterable[str], analysis_date: dt.date) -> list[str]:
    """Check the analysis date against each chosen experiment's dates, before any Spark
    work. Raises `UsageError` (exit 64) naming every experiment that starts after the
    date (nothing can be exposed yet); returns a note for each experiment that ended
    before it (its analysis is capped at the end of `end`, 24:00 UTC)."""
    exps = [config.experiment(e) for e in experiment_ids]
    early = [e for e in exps if analysis_date < e.start]
    if early:
        named = ", ".join(f"'{e.id}' starts on {e.start}" for e in early)
        others = len(early) < len(exps)
        raise UsageError(
            f"analysis date {analysis_date} is before the start of the experiment ({named}): "
            "no unit can be exposed yet, so there is nothing to analyse; choose a date on or "
            "after the start" + (", or leave that experiment out (--experiment)" if others else "")
        )
    return [
        f"experiment '{e.id}' ended on {e.end}: the analysis for {analysis_date} is capped "
        f"at the end date (events and exposures up to {e.end} 24:00 UTC)"
        for e in exps
        if e.end is not None and analysis_date > e.end
    ]
