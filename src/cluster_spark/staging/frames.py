"""The frames between staging steps, declared once: each step's output columns and what
they mean (model: dqx's declared result schemas). The steps' docstrings refer here
instead of listing private columns; `tests/test_staging_frames.py` runs a pass and checks
every step's output against its frame.

A column written `name<i>` is a family (`<i>` a number, `<source>` a source name); a
column in `Frame.optional` appears only with the feature named beside it. Columns starting
with `_` are private to staging; the others keep their meaning in the staged tables.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_FAMILY = {"<i>": r"\d+", "<source>": r".+"}


@dataclass(frozen=True)
class Frame:
    """A step's output: `columns` (name or family → meaning), of which `optional` are
    present only with some feature."""

    name: str
    columns: dict[str, str]
    optional: frozenset[str] = field(default_factory=frozenset)

    def mismatches(self, columns: list[str]) -> list[str]:
        """What is wrong with a frame of these columns: a column that no declared name or
        family matches, or a required name that is missing; [] when it conforms."""
        patterns = {k: re.compile(_pattern(k)) for k in self.columns}
        wrong = [
            f"{self.name}: undeclared column {c!r}"
            for c in columns
            if not any(p.fullmatch(c) for p in patterns.values())
        ]
        required = [k for k in self.columns if k not in self.optional and "<" not in k]
        wrong += [f"{self.name}: missing column {k!r}" for k in required if k not in columns]
        return wrong


def _pattern(name: str) -> str:
    out = re.escape(name)
    for family, regex in _FAMILY.items():
        out = out.replace(re.escape(family), regex)
    return out


#: `exposures.exposed_units`; with `_slices` once joined to `UNIT_SLICES`.
EXPOSED_UNITS = Frame(
    "exposed units",
    {
        "experiment_id": "the experiment",
        "_unit": "the assignment-unit id (string)",
        "variant": "its variant (units seen in two are dropped)",
        "exposure_ts": "its first valid exposure (UTC instant)",
        "start_ts": "the experiment's start",
        "analysis_ts": "the experiment's analysis time on this date",
        "pre_start_ts": "the start of the CUPED pre-period (exposure − lookback days)",
        "_dim<i>": "the unit's value of the i-th of `Plan.exposure_dimensions`",
        "_slices": "array of (dimension, slice), one per dimension of its experiment",
    },
    optional=frozenset({"_slices"}),
)

#: `slices.unit_slices`.
UNIT_SLICES = Frame(
    "unit slices",
    {
        "experiment_id": "the experiment",
        "_unit": "the assignment unit",
        "_slices": "array of (dimension, slice): NULL values as `(null)`, small ones pooled",
    },
)

#: `events.source_level` (`SourceLevel.level1`): the first aggregation level.
FIRST_LEVEL = Frame(
    "first level",
    {
        "_unit": "the assignment unit; NULL on the one row of events without a unit",
        "_sub": "the first-level key: analysis unit, or the value counted distinct, or NULL",
        "_n_events": "events of the key that the exposure join keeps",
        "_n_null_ts": "events without a timestamp (in no window)",
        "_n_unmapped": "events whose id the id mapping lacks (sources behind a mapping)",
        "_n_midnight": "events at 00:00:00 UTC (sources read as instants)",
        "_null__<i>": "events whose i-th filter column (`filter_columns`) is NULL",
        "_nonfinite__<i>": "NaN/±Inf values of the i-th summed column (`summed_columns`)",
        "_match__<i>": "events passing the i-th predicate of `match_predicates`",
        "experiment_id": "the experiment (NULL on the row of events without a unit)",
        "_c<i>": "component column i (`Plan.components`) over the window's events",
        "_c<i>_pre": "the same over the CUPED pre-period",
        "_first_ts": "the key's first event in the experiment's range",
        "_n_pre": "its events after the start and before the unit's exposure",
        "_active": "1 if it has an event at or after the exposure",
    },
    optional=frozenset({"_n_unmapped", "_n_midnight"}),
)

#: `events.first_level` (`FirstLevel.values`): distinct counts of non-key values.
DISTINCT_VALUES = Frame(
    "distinct values",
    {
        "_unit": "the assignment unit",
        "_sub": "the first-level key",
        "experiment_id": "the experiment",
        "_component": "the component column counting the value (`_c<i>`, `_c<i>_pre`)",
        "_value": "the value, as a string",
    },
)

#: `policy.multi_unit_offenders`.
OFFENDERS = Frame(
    "multi-unit offenders",
    {
        "experiment_id": "the experiment",
        "_sub": "an analysis unit seen under several assignment units",
        "_first_unit": "the assignment unit of its earliest event in any source",
    },
)

#: `units.per_unit_frame` (`PerUnit.wide`): exposed units and their second level.
PER_UNIT = Frame(
    "per-unit frame",
    {
        **EXPOSED_UNITS.columns,
        "_c<i>": "component column i merged over the unit's first-level rows (NULL: none)",
        "_c<i>_pre": "the same over the CUPED pre-period",
        "_pre__<source>": "the unit's events of the source before its exposure",
        "_subs__<source>": "its active analysis units in the source (keyed sources)",
        "_n_active": "its analysis units active in any source (several keyed sources)",
    },
    optional=frozenset({"_slices", "_n_active"}),
)

_UNIT_VALUES = {
    "experiment_id": "the experiment",
    "variant": "the unit's variant",
    "_unit": "the assignment unit",
    "dimension": "NULL on the overall row, else the dimension",
    "slice": "NULL on the overall row, else the unit's slice",
    "metric": "the metric (or `ANALYSIS_UNITS_METRIC`)",
    "m": "the numerator value of the unit",
    "d": "the denominator value (1 for a mean over units)",
    "x": "m over the CUPED pre-period (0 without CUPED)",
    "y": "d over the CUPED pre-period (0 without CUPED)",
    "w": "the covariates' columns (`staging.covariates`; NULL when the pass has none)",
    "complete": "the unit's window has ended (completed-window rule)",
    "baked": "the bake delay has passed",
}

#: `units.unit_value_rows`: the per-unit contract and the unit's analysis units.
UNIT_VALUES = Frame(
    "unit values",
    {**_UNIT_VALUES, "_n_subs": "the unit's active analysis units (0 without a keyed source)"},
)

#: `options.winsorize`: raw rows and, for winsorized metrics, clamped ones.
WINSORIZED = Frame(
    "winsorized unit values",
    {
        **_UNIT_VALUES,
        "winsorized": "the row's values are clamped at the caps",
        **{
            f"{pre}{role}_{side}_cap": "the cap of the component (NULL: not winsorized)"
            for pre in ("", "pre_")
            for role in ("num", "den")
            for side in ("lower", "upper")
        },
    },
)

#: `quantile._values`: the values of quantile metrics.
QUANTILE_VALUES = Frame(
    "quantile values",
    {
        "experiment_id": "the experiment",
        "metric": "the quantile metric",
        "variant": "the unit's variant",
        "dimension": "NULL on the overall row, else the dimension",
        "slice": "NULL on the overall row, else the slice",
        "_unit": "the assignment unit",
        "value": "one value that passes the metric's filter, window and bake delay",
    },
)
