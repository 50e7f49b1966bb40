"""Typed, validated configuration, loaded from YAML before any Spark work.

Errors name the file, the key, the value and the rule that was broken.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from cluster_spark.errors import ConfigError
from cluster_spark.kinds import KINDS

Name = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
Scalar = str | int | float | bool | dt.date | dt.datetime


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def utc(value: dt.datetime) -> dt.datetime:
    """The instant as a UTC-aware datetime; a naive one is read as UTC (never as the
    machine's local time, which is what PySpark does with a naive literal)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def midnight_utc(day: dt.date) -> dt.datetime:
    """00:00 UTC at the start of `day`."""
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)


class Condition(_Model):
    """One structured filter condition; a component's conditions are AND-ed.

    Filters are structured rather than SQL strings so that no user text is ever
    evaluated by Spark's SQL parser (no `reflect`, subqueries or UDFs can sneak in).

    NULL rule: `ne` and `not_in` keep rows whose column is NULL (NULL is "not X", as in
    BI tools' structured filters); `eq`, `in`, `gt`, `ge`, `lt`, `le` drop them (NULL is
    not X); `is_null` / `not_null` select them explicitly. Datetime values without a
    time zone are UTC.
    """

    column: str
    op: Literal["eq", "ne", "in", "not_in", "gt", "ge", "lt", "le", "is_null", "not_null"] = "eq"
    value: Scalar | list[Scalar] | None = None

    @field_validator("value", mode="after")
    @classmethod
    def _utc_instants(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [utc(v) if isinstance(v, dt.datetime) else v for v in value]
        return utc(value) if isinstance(value, dt.datetime) else value

    @model_validator(mode="after")
    def _value_fits_op(self) -> Condition:
        if self.op in ("in", "not_in"):
            if not isinstance(self.value, list) or not self.value:
                raise ValueError(f"op '{self.op}' needs a non-empty list value")
        elif self.op in ("is_null", "not_null"):
            if self.value is not None:
                raise ValueError(f"op '{self.op}' takes no value")
        elif self.value is None or isinstance(self.value, list):
            raise ValueError(f"op '{self.op}' needs one scalar value")
        return self


Fraction = Annotated[float, Field(gt=0, lt=1)]


class Window(_Model):
    """Cohort window: days `start_day..end_day` after the unit's own exposure (0-indexed,
    timestamp-exact: `exposure + start·24h ≤ ts < exposure + (end+1)·24h`)."""

    start_day: Annotated[int, Field(ge=0)] = 0
    end_day: Annotated[int, Field(ge=0)]

    @model_validator(mode="after")
    def _ordered(self) -> Window:
        if self.end_day < self.start_day:
            raise ValueError(f"end_day {self.end_day} is before start_day {self.start_day}")
        return self

    @property
    def horizon(self) -> dt.timedelta:
        """Time from exposure to the end of the window."""
        return dt.timedelta(days=self.end_day + 1)


class Winsorize(_Model):
    """Clamp unit values at percentiles pooled across variants (per experiment)."""

    lower: Fraction | None = None
    upper: Fraction | None = None
    ignore_zeros: bool = True

    @model_validator(mode="after")
    def _bounds(self) -> Winsorize:
        if self.lower is None and self.upper is None:
            raise ValueError("give a lower and/or an upper percentile")
        if self.lower is not None and self.upper is not None and self.lower >= self.upper:
            raise ValueError(f"lower {self.lower} is not below upper {self.upper}")
        return self


class Component(_Model):
    """A per-unit aggregation: `sum(column)`, `count` (rows), `count_distinct(column)` or
    `unit_count` (1 per exposed unit), over events that pass `filter` and `window`."""

    agg: Literal["sum", "count", "count_distinct", "unit_count"]
    source: Name | None = None
    column: str | None = None
    filter: list[Condition] = []
    window: Window | None = None
    winsorize: Winsorize | None = None

    @model_validator(mode="after")
    def _column_fits_agg(self) -> Component:
        if self.agg in ("sum", "count_distinct") and not self.column:
            raise ValueError(f"agg '{self.agg}' needs a column")
        if self.agg in ("count", "unit_count") and self.column:
            raise ValueError(f"agg '{self.agg}' takes no column")
        if self.agg == "unit_count" and (self.filter or self.source or self.window):
            raise ValueError("agg 'unit_count' takes no source, filter or window")
        if self.agg != "unit_count" and not self.source:
            raise ValueError(f"agg '{self.agg}' needs a source")
        return self


UNIT_COUNT = Component(agg="unit_count")

#: Component roles (`Metric.components`) → their config keys.
ROLE_KEYS = {"num": "numerator", "den": "denominator"}


class Values(_Model):
    """The values of a quantile metric: `column` of every row of `source` that passes
    `filter` and `window` (one value per row: a session, a request, a page load)."""

    source: Name
    column: Annotated[str, Field(min_length=1)]
    filter: list[Condition] = []
    window: Window | None = None

    def component(self) -> Component:
        """As a summed component: the same rows, columns, checks and diagnostics."""
        return Component(
            agg="sum",
            source=self.source,
            column=self.column,
            filter=self.filter,
            window=self.window,
        )


class Metric(_Model):
    """A metric of one kind (`kinds`): `mean` (numerator per exposed assignment unit),
    `ratio` (numerator over denominator), or `quantile` (the `quantile` of `value`)."""

    kind: Literal["mean", "ratio", "quantile"]
    numerator: Component | None = None
    denominator: Component | None = None
    conversion_rate: bool = True
    #: quantile metrics: the probability (0.9: p90) and the values; `ignore_zeros` drops
    #: values equal to 0 first (GrowthBook's "ignore zeros").
    quantile: Annotated[float, Field(gt=0, lt=1)] | None = None
    value: Values | None = None
    ignore_zeros: bool = False
    completed_windows_only: bool = False
    bake_hours: Annotated[float, Field(ge=0)] = 0
    description: str = ""

    @model_validator(mode="after")
    def _kind_fits(self) -> Metric:
        quantile = self.kind == "quantile"
        if quantile and (self.quantile is None or self.value is None):
            raise ValueError("a quantile metric needs 'quantile' (e.g. 0.9) and 'value'")
        if quantile and (self.numerator or self.denominator):
            raise ValueError("a quantile metric has 'value', not a numerator or denominator")
        if not quantile:
            if self.numerator is None:
                raise ValueError(f"a {self.kind} metric needs a numerator")
            given = [k for k in ("quantile", "value", "ignore_zeros") if k in self.model_fields_set]
            if given:
                raise ValueError(f"{given} apply to quantile metrics, not {self.kind}")
        if self.kind == "ratio" and self.denominator is None:
            raise ValueError("a ratio metric needs a denominator")
        if self.kind == "mean" and self.denominator is not None:
            raise ValueError("a mean metric has no denominator (it is 1 per exposed unit)")
        return self

    @property
    def denominator_or_unit(self) -> Component:
        return self.denominator or UNIT_COUNT

    @property
    def components(self) -> dict[str, Component]:
        """Role → component: `num`, `den` (1 per unit for a mean); a quantile's values as
        a summed `num`, so the first aggregation level counts their diagnostics."""
        if self.value is not None:
            return {"num": self.value.component()}
        return {"num": self.numerator, "den": self.denominator_or_unit}

    @property
    def winsorized(self) -> bool:
        return any(c.winsorize for c in self.components.values())


#: Column types a CSV or JSON table's `schema` may give (Spark SQL type names).
ColumnType = Literal["string", "int", "bigint", "double", "boolean", "date", "timestamp"]

#: Options that only text formats have: (key, formats it applies to).
_TEXT_OPTIONS = {
    "header": ("csv",),
    "delimiter": ("csv",),
    "multiline": ("csv", "json"),
    "column_types": ("csv", "json"),
}


class Table(_Model):
    """A table by path (local or URI) or by metastore name: Delta, Parquet, or a CSV or
    JSON export (by path).

    CSV and JSON: `schema` (column → type) types columns by name; columns it does not
    name are typed from the data (Spark's inference, a pass over the files) except the
    id, variant and experiment-id columns, which are read as text (`007` stays `007`),
    and timestamp columns, which are read as text and parsed (see `TimeColumn`). An empty
    CSV field is NULL. CSV: `header` (default true: the first line names the columns;
    without one, `schema` names every column in file order), `delimiter` (`,`), quotes
    escaped by doubling them (RFC 4180, as pandas, Excel and BigQuery write them). JSON:
    one object per line, or `multiline: true` for a file holding one array or object.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    path: str | None = None
    table: str | None = None
    format: Literal["delta", "parquet", "csv", "json"] = "delta"
    header: bool = True
    delimiter: Annotated[str, Field(min_length=1)] = ","
    multiline: bool = False
    column_types: dict[str, ColumnType] | None = Field(default=None, alias="schema")

    @model_validator(mode="after")
    def _one_location(self) -> Table:
        if (self.path is None) == (self.table is None):
            raise ValueError("give exactly one of 'path' or 'table'")
        if self.format in ("csv", "json") and self.path is None:
            raise ValueError(f"a {self.format} table is read by 'path', not by 'table' name")
        for key, formats in _TEXT_OPTIONS.items():
            if key in self.model_fields_set and self.format not in formats:
                shown = "schema" if key == "column_types" else key
                raise ValueError(
                    f"'{shown}' applies to format {' or '.join(formats)}, not {self.format}"
                )
        if self.format == "csv" and not self.header and not self.column_types:
            raise ValueError(
                "a CSV file without a header needs 'schema': every column, in file order"
            )
        if any(ch in self.delimiter for ch in "\r\n"):
            raise ValueError("'delimiter' cannot hold a line break")
        return self

    @property
    def text(self) -> bool:
        """Whether the table is a text export (CSV or JSON)."""
        return self.format in ("csv", "json")


class TimeColumn(_Model):
    """A timestamp column and how its values become instants (UTC).

    `TIMESTAMP` columns are instants; `TIMESTAMP_NTZ` and `DATE` columns are read as UTC.
    Text is ISO-8601: `YYYY-MM-DD`, optionally `T` or a space and `hh:mm[:ss[.fraction]]`,
    optionally an offset (`Z`, `±hh:mm`, `±hhmm`, `±hh`, `UTC`, `GMT`; a space before it is
    allowed); without an offset it is UTC. `format` reads text with a Spark datetime
    pattern instead (e.g. `dd/MM/yyyy HH:mm`; UTC unless the pattern has an offset or
    zone). `epoch` reads numbers (or numeric text) as seconds, milliseconds, microseconds or
    nanoseconds since 1970-01-01 UTC. A value that does not parse is an input error naming
    the table, column and examples; an empty value is NULL.
    """

    column: Annotated[str, Field(min_length=1)]
    format: Annotated[str, Field(min_length=1)] | None = None
    epoch: Literal["s", "ms", "us", "ns"] | None = None

    @model_validator(mode="after")
    def _one_reading(self) -> TimeColumn:
        if self.format is not None and self.epoch is not None:
            raise ValueError("give 'format' (text) or 'epoch' (numbers), not both")
        return self


def _time_column(value: Any) -> Any:
    """A bare column name is a `TimeColumn` read by its type (ISO-8601 for text)."""
    return {"column": value} if isinstance(value, str) else value


TimeSpec = Annotated[TimeColumn, BeforeValidator(_time_column)]


class Constant(_Model):
    """A value that holds for every row, for a table without that column (e.g. an export
    of one experiment's exposures: `experiment_id: {constant: pricing_page}`)."""

    constant: Annotated[str, Field(min_length=1)]


def _column_or_constant(value: Any) -> str:
    return "constant" if isinstance(value, dict | Constant) else "column"


#: A column name, or `{constant: value}` for a table without that column.
ColumnOrConstant = Annotated[
    Annotated[str, Tag("column")] | Annotated[Constant, Tag("constant")],
    Discriminator(_column_or_constant),
]


class Source(Table):
    """A metric source: events with a timestamp and one column per id type.

    NULL ids: a row whose assignment-unit id is NULL (or, through an id mapping, whose id
    is NULL or unmapped) belongs to no unit and is never counted. A row whose analysis-unit
    id (e.g. `user_id`) is NULL counts in its unit's sums and row counts but is no analysis
    unit (not in distinct counts, the multi-unit check, `n_analysis_units` or the design
    effect); `drop_null_ids: true` drops such rows too. Both kinds are counted in the
    diagnostics (`events_with_null_ids:<source>:<id type>`, `unmapped_ids:<source>`).
    A row whose timestamp is NULL (or empty text) is in no window and is counted
    (`events_with_null_timestamps:<source>`).

    `timestamp_as_date: true` (Statsig's "treat timestamp as date"), for daily tables keyed
    by day: each row stands for its whole UTC day. A row dated on a unit's exposure day
    counts; windows, the pre-period and completed windows are whole days from the exposure
    day; a day counts once it has ended by the analysis time (and the bake delay).
    """

    timestamp: TimeSpec
    ids: dict[Name, str] = Field(min_length=1)
    drop_null_ids: bool = False
    timestamp_as_date: bool = False


class IdMapping(Table):
    """Maps one id type to another (e.g. user_id → org_id) for sources that lack the
    assignment unit's id, as GrowthBook's identifier join tables do."""

    from_id: Name
    to_id: Name
    columns: dict[Name, str] = Field(min_length=2, max_length=2)

    @model_validator(mode="after")
    def _columns(self) -> IdMapping:
        if set(self.columns) != {self.from_id, self.to_id}:
            raise ValueError(f"columns must name exactly '{self.from_id}' and '{self.to_id}'")
        return self


class ExposureSource(Table):
    """The assignment source: one row per exposure (duplicates allowed).

    `experiment_id` names its column, or is `{constant: <id>}` for a table that holds one
    experiment's exposures and has no such column."""

    experiment_id: ColumnOrConstant = "experiment_id"
    variant: str = "variant"
    timestamp: TimeSpec = "timestamp"
    ids: dict[Name, str] = Field(min_length=1)
    #: Columns whose values break results down (slices): a unit's value is the one on its
    #: first exposure row for the experiment (ties at one instant: the smallest value).
    dimensions: list[Annotated[str, Field(min_length=1)]] = []

    @field_validator("dimensions", mode="after")
    @classmethod
    def _unique_dimensions(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"dimensions are listed twice: {value}")
        return value

    @property
    def constant_experiment(self) -> str | None:
        """The experiment every row belongs to, when the table has no experiment-id column."""
        return self.experiment_id.constant if isinstance(self.experiment_id, Constant) else None


class UnitAttributes(Table):
    """Attributes of assignment units over time (e.g. an org table with `plan`, `country`
    and `updated_at`), for slices: `ids` names the one assignment-unit id column, and each
    of `dimensions` is a column. A unit's value in an experiment is the one on its latest
    row at or before its exposure (never a later one: the treatment may have changed it;
    of several rows at that instant, the largest value); a unit with no such row, or a NULL
    value there, is in the slice `(null)`. Rows with a
    NULL id or timestamp are dropped and counted (`unit_attribute_rows_dropped:<name>`)."""

    timestamp: TimeSpec
    ids: dict[Name, str] = Field(min_length=1, max_length=1)
    dimensions: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1)

    @property
    def unit_type(self) -> str:
        return next(iter(self.ids))


#: Delta (Hive) reads a partition directory of this name back as NULL.
_NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"
#: Characters Hive escapes as %XX in a partition directory name (with control characters).
_ESCAPED = set("\"#%'*/:=?\\\x7f{[]^")
#: A file name holds at most 255 bytes; the directory is `experiment_id=<escaped id>`.
_MAX_ID_BYTES = 255 - len("experiment_id=")


def _partition_bytes(value: str) -> int:
    """Bytes of `value` as Hive writes it in a partition directory name."""
    return sum(3 if ch in _ESCAPED or ord(ch) < 32 else len(ch.encode()) for ch in value)


class MetricRole(_Model):
    """What a metric means for the decision (GrowthBook's goal/secondary/guardrail metrics,
    Statsig's primary/secondary metrics and guardrails).

    `direction`: `increase` (higher is better) or `decrease` (lower is better: latency,
    churn). `margin` (guardrails, required): the largest acceptable relative change in the
    bad direction, e.g. 0.02 for 2 %: non-inferiority is shown when the one-sided 1 − alpha
    bound of the relative effect in the bad direction lies within it."""

    role: Literal["goal", "secondary", "guardrail"] = "goal"
    direction: Literal["increase", "decrease"] = "increase"
    margin: Annotated[float, Field(gt=0, lt=1)] | None = None

    @model_validator(mode="after")
    def _margin_fits_role(self) -> MetricRole:
        if self.role == "guardrail" and self.margin is None:
            raise ValueError(
                "a guardrail needs a margin: the largest acceptable relative change in the "
                "bad direction, e.g. margin: 0.02 for 2 %"
            )
        if self.role != "guardrail" and self.margin is not None:
            raise ValueError(f"margin applies to guardrails only, not to role '{self.role}'")
        return self


GOAL = MetricRole()


class Bayesian(_Model):
    """Settings of `engine: bayesian` (`stats.bayes`; docs/methods.md, "Bayesian results").

    `effect`: the effect the normal model is on, `relative` (GrowthBook's default) or
    `absolute` (metric units). `prior_sd`: the sd of a proper normal prior N(`prior_mean`,
    `prior_sd`²) on that effect, in its units (a fraction for `relative`, metric units for
    `absolute`; Eppo's choice); unset, the prior is flat (improper, GrowthBook's default).
    `prior_mean` is on the effect itself, T − C, whatever the metric's direction.
    `chance_to_win`: the chance to beat control a win needs (and 1 − it a loss;
    GrowthBook's 95 %). `risk_threshold`: the most expected loss a win (or a loss) may
    carry, in the effect's units: 0.0025 is GrowthBook's 0.25 % for relative effects; an
    absolute effect needs its own."""

    effect: Literal["relative", "absolute"] = "relative"
    prior_mean: float = 0.0
    prior_sd: Annotated[float, Field(gt=0)] | None = None
    chance_to_win: Annotated[float, Field(gt=0.5, lt=1)] = 0.95
    risk_threshold: Annotated[float, Field(gt=0)] = 0.0025

    @model_validator(mode="after")
    def _consistent(self) -> Bayesian:
        if self.prior_sd is None and self.prior_mean != 0:
            raise ValueError(
                f"prior_mean {self.prior_mean} needs prior_sd (a flat prior has no mean)"
            )
        if self.effect == "absolute" and "risk_threshold" not in self.model_fields_set:
            raise ValueError(
                "effect: absolute needs a risk_threshold in the metric's units (the "
                "default 0.0025 is a relative loss of 0.25 %)"
            )
        return self


class AttributeCovariate(_Model):
    """A unit attribute as a covariate (`Experiment.covariates`): a column of the exposure
    rows (`exposures.dimensions`) or of a `unit_attributes` table, as dimensions are, so its
    value is the one at the unit's exposure, never a later one.

    `categorical` (default): one indicator per level, the `max_levels` levels with the most
    assignment units over the experiment's variants kept (ties: by name), the rest pooled
    into `(other)`, NULL its own level `(null)`; the largest level is the reference.
    `numeric`: the value as a number, with an indicator of missing values (NULL or not a
    number: then 0)."""

    attribute: Name
    type: Literal["categorical", "numeric"] = "categorical"
    max_levels: Annotated[int, Field(ge=1, le=100)] = 10

    @model_validator(mode="after")
    def _levels_for_categorical(self) -> AttributeCovariate:
        if self.type == "numeric" and "max_levels" in self.model_fields_set:
            raise ValueError(
                f"max_levels applies to type: categorical, not to '{self.attribute}' (numeric)"
            )
        return self

    @property
    def columns(self) -> int:
        """The most per-unit columns it stages: levels but the reference, plus (other)
        and (null); or the value and its missing indicator."""
        return self.max_levels + 1 if self.type == "categorical" else 2


#: A covariate: a metric's name, or a mapping for a unit attribute (a mapping's errors are
#: reported against `AttributeCovariate` alone, not against both forms).
Covariate = Annotated[
    Annotated[Name, Tag("metric")] | Annotated[AttributeCovariate, Tag("attribute")],
    Discriminator(lambda v: "attribute" if isinstance(v, dict | AttributeCovariate) else "metric"),
]

#: The most covariate columns staged per metric (`Experiment.covariates`): their centered
#: cross-products are (4 + k)(5 + k)/2 aggregates per group in one Spark aggregation.
MAX_COVARIATE_COLUMNS = 40


#: `variance: auto` uses the cluster jackknife below this many assignment units in a
#: metric (over all its variants; a slice counts its own): the delta method under-covers
#: up to 1,000 heavy-tailed orgs (BENCHMARKS.md, "Few clusters"), and the two agree as
#: leverages shrink.
JACKKNIFE_BELOW_UNITS = 10_000


class Experiment(_Model):
    """One experiment: its arms and split, dates, metrics and analysis settings.

    `id` may hold any characters (it reaches Spark as a literal, never as SQL text) except
    control characters; it names a partition directory, so at most 241 bytes as written
    there (UTF-8, with `/`, `%`, `:` and the like escaped as three).
    `variants` lists every configured arm with its expected share of assignment units
    (a list means an equal split): required, so SRM sees an arm that logged nothing.
    """

    id: Annotated[str, Field(min_length=1)]
    assignment_unit: Name
    analysis_unit: Name | None = None
    control: str
    variants: dict[str, Annotated[float, Field(gt=0)]] = Field(min_length=2)
    start: dt.date
    end: dt.date | None = None
    metrics: list[Name] = Field(min_length=1)
    alpha: Annotated[float, Field(gt=0, lt=1)] = 0.05
    test: Literal["welch", "z"] = "welch"
    #: An analysis unit seen under several assignment units: drop its rows everywhere,
    #: keep the rows of its first assignment unit (earliest event), or fail the run.
    multi_unit_policy: Literal["drop", "keep_first", "fail"] = "drop"
    srm_threshold: Annotated[float, Field(gt=0, lt=1)] = 0.001
    #: CUPED: days of pre-exposure data per unit, `[exposure − lookback, exposure)`.
    cuped_lookback_days: Annotated[int, Field(gt=0)] | None = None
    #: The relative CI: Fieller's (agrees with the absolute test; #26) or the delta method's
    #: (GrowthBook's numbers).
    relative_ci: Literal["delta", "fieller"] = "fieller"
    #: Always-valid confidence sequences (asymptotic CS, Waudby-Smith et al. 2024), tuned
    #: to be tightest at `sequential_n_star`: the planned number of assignment units over
    #: all variants (required: a ρ recomputed from each look's own count would make the
    #: boundary a fixed multiple of the standard error, which is not valid over repeated
    #: looks). Each comparison uses its two arms' share of it (`comparison_n_star`).
    sequential: bool = False
    sequential_n_star: Annotated[int, Field(gt=1)] | None = None
    power: Annotated[float, Field(gt=0, lt=1)] = 0.8
    #: Slices: the dimensions (of `exposures.dimensions` or a `unit_attributes` table)
    #: results are broken down by; per dimension the `max_slices` largest slices by
    #: assignment units, the rest pooled into `(other)`; a slice with fewer than
    #: `min_slice_units` assignment units in some variant gets a status, not numbers.
    dimensions: list[Annotated[str, Field(min_length=1)]] = []
    max_slices: Annotated[int, Field(ge=1)] = 20
    min_slice_units: Annotated[int, Field(ge=1)] = 10
    #: Winsorization caps of slice rows: the whole experiment's (default, as GrowthBook:
    #: per-slice caps create spurious effects in small slices) or each slice's own.
    slice_caps: Literal["experiment", "slice"] = "experiment"
    #: Decisions: each metric's role, direction and guardrail margin (default: a goal
    #: where higher is better); `metric_roles` keys are metrics of the experiment.
    metric_roles: dict[Name, MetricRole] = {}
    #: The tests' alternative: `two-sided` (default), `one-sided` (each metric's direction:
    #: `greater` where higher is better, `less` where lower is), or `greater`/`less` for all.
    #: One-sided p-values and CIs (one end infinite) everywhere but the confidence sequences
    #: and the bias check, which stay two-sided.
    alternative: Literal["two-sided", "one-sided", "greater", "less"] = "two-sided"
    #: Pre-exposure bias check (needs `cuped_lookback_days`): flagged below this p-value.
    bias_threshold: Annotated[float, Field(gt=0, lt=1)] = 0.001
    #: Health: the relative MDE the experiment was planned for; a goal metric whose
    #: achieved `mde_rel` is larger (its CI wider than planned) is `underpowered`.
    planned_mde: Annotated[float, Field(gt=0)] | None = None
    #: Exposure rows whose variant label is not a configured variant are left out (their
    #: units counted per label: `unknown_variants`); with `normalize_variant_labels`, a
    #: label matches a configured variant ignoring case and surrounding spaces first.
    normalize_variant_labels: bool = False
    #: `frequentist` (p-values and CIs, the default) or `bayesian` (chance to beat control,
    #: risk and credible intervals too, and decisions from them; settings in `bayesian`).
    engine: Literal["frequentist", "bayesian"] = "frequentist"
    bayesian: Bayesian = Bayesian()
    #: The variance of each arm's ratio (docs/methods.md, "Few clusters"): `jackknife`, the
    #: leave-one-cluster-out jackknife (CR3), which holds its coverage with few or very
    #: unequal assignment units; `delta`, the delta method (as GrowthBook and Statsig);
    #: `auto` (default), the jackknife when a metric has fewer than
    #: `JACKKNIFE_BELOW_UNITS` assignment units in all, else the delta method. The jackknife
    #: needs each group staged whole; where it is not (or a unit holds a whole group's
    #: denominator) the delta method is used. `results.variance_method` says which.
    variance: Literal["auto", "jackknife", "delta"] = "auto"
    #: Regression adjustment with several covariates (docs/methods.md, "Several
    #: covariates"): metrics of this experiment, by their values over the CUPED pre-period
    #: (`cuped_lookback_days`, required for them: a covariate must be measured before
    #: exposure), as Eppo's CUPED++, and unit attributes at exposure
    #: (`{attribute: plan}`, `AttributeCovariate`). They adjust every metric, besides its
    #: own pre-period with `cuped_lookback_days`. Empty (default): CUPED alone.
    covariates: list[Covariate] = []

    @field_validator("id", mode="after")
    @classmethod
    def _partition_safe(cls, value: str) -> str:
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
            raise ValueError("an experiment id cannot hold control characters (newline, tab…)")
        if value == _NULL_PARTITION:
            raise ValueError(f"'{_NULL_PARTITION}' is read back as NULL by Delta")
        if _partition_bytes(value) > _MAX_ID_BYTES:
            raise ValueError(
                f"an experiment id names a partition directory: at most {_MAX_ID_BYTES} bytes "
                f"as written there, this one has {_partition_bytes(value)}"
            )
        return value

    @field_validator("variants", mode="before")
    @classmethod
    def _equal_split(cls, value: Any) -> Any:
        if isinstance(value, list):
            if len(set(map(str, value))) != len(value):
                raise ValueError(f"variants are listed twice: {value}")
            return dict.fromkeys(value, 1.0)
        return value

    @model_validator(mode="after")
    def _dates_and_variants(self) -> Experiment:
        if self.end is not None and self.end < self.start:
            raise ValueError(f"end {self.end} is before start {self.start}")
        if self.control not in self.variants:
            raise ValueError(
                f"control '{self.control}' is not one of variants {list(self.variants)}"
            )
        if len(set(self.metrics)) != len(self.metrics):
            raise ValueError("metrics are listed twice")
        folded = [normalized_label(v) for v in self.variants]
        if self.normalize_variant_labels and len(set(folded)) != len(folded):
            raise ValueError(
                f"normalize_variant_labels: variants {list(self.variants)} differ only in case "
                "or surrounding spaces, so a label could match two of them"
            )
        if len(set(self.dimensions)) != len(self.dimensions):
            raise ValueError(f"dimensions are listed twice: {self.dimensions}")
        unknown = sorted(set(self.metric_roles) - set(self.metrics))
        if unknown:
            raise ValueError(
                f"metric_roles names metrics the experiment does not have: {unknown} "
                f"(its metrics: {self.metrics})"
            )
        if self.sequential and self.sequential_n_star is None:
            raise ValueError(
                "sequential: true needs sequential_n_star (the planned number of assignment "
                "units over all variants, where the confidence sequence is tightest)"
            )
        self._check_covariates()
        if self.engine == "bayesian" and self.sequential:
            raise ValueError("sequential: true applies to engine: frequentist, not bayesian")
        if self.engine != "bayesian" and "bayesian" in self.model_fields_set:
            raise ValueError(
                f"bayesian: settings given with engine: {self.engine}; they apply with "
                "engine: bayesian only"
            )
        return self

    def _check_covariates(self) -> None:
        names = [k if isinstance(k, str) else k.attribute for k in self.covariates]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"covariates lists {twice} twice")
        columns = 2 * sum(isinstance(k, str) for k in self.covariates) + sum(
            k.columns for k in self.attribute_covariates
        )
        if columns > MAX_COVARIATE_COLUMNS:
            raise ValueError(
                f"covariates stage up to {columns} columns per metric (2 per metric, 2 per "
                f"numeric attribute, max_levels + 1 per categorical one); at most "
                f"{MAX_COVARIATE_COLUMNS}: lower max_levels or list fewer"
            )
        metrics = [k for k in self.covariates if isinstance(k, str)]
        unknown = [k for k in metrics if k not in self.metrics]
        if unknown:
            raise ValueError(
                f"covariates {unknown} are not metrics of the experiment (its metrics: "
                f"{self.metrics}); a covariate is a metric's pre-exposure value, or a unit "
                "attribute written {attribute: NAME}"
            )
        if metrics and self.cuped_lookback_days is None:
            raise ValueError(
                f"covariates {metrics} need cuped_lookback_days: a metric covariate is its "
                "value before exposure, and without a pre-period its only value is measured "
                "after exposure, where the treatment can move it"
            )

    def covariates_of(self, metric: str) -> list[str]:
        """The metric covariates that adjust `metric` besides its own pre-period, in config
        order (none for a name that is not a metric of the experiment)."""
        if metric not in self.metrics:
            return []
        return [k for k in self.covariates if isinstance(k, str) and k != metric]

    @property
    def attribute_covariates(self) -> list[AttributeCovariate]:
        """The unit attributes among `covariates`, in config order."""
        return [k for k in self.covariates if isinstance(k, AttributeCovariate)]

    @property
    def adjusts(self) -> bool:
        """Whether metrics are adjusted: CUPED (`cuped_lookback_days`) or covariates."""
        return bool(self.cuped_lookback_days or self.covariates)

    def adjusted_by_covariates(self, metric: str) -> bool:
        """Whether `metric` (of this experiment) is adjusted by covariates other than its
        own pre-period."""
        own_only = not (self.covariates_of(metric) or self.attribute_covariates)
        return metric in self.metrics and not own_only

    @property
    def loaded_dimensions(self) -> list[str]:
        """The unit attributes staging reads: the slice `dimensions`, then the attribute
        covariates that are not among them."""
        extra = [k.attribute for k in self.attribute_covariates]
        return [*self.dimensions, *[a for a in extra if a not in self.dimensions]]

    @property
    def start_time(self) -> dt.datetime:
        """First instant of the experiment: midnight UTC at the start of `start`."""
        return midnight_utc(self.start)

    def analysis_time(self, analysis_date: dt.date) -> dt.datetime:
        """End of the analysis (UTC-aware): midnight UTC after `analysis_date`, capped at
        midnight UTC after the experiment's `end`, whatever the machine's time zone."""
        last = min(analysis_date, self.end) if self.end else analysis_date
        return midnight_utc(last + dt.timedelta(days=1))

    def role(self, metric: str) -> MetricRole:
        """The metric's role in this experiment (a goal where higher is better by default)."""
        return self.metric_roles.get(metric, GOAL)

    def alternative_for(self, metric: str) -> str:
        """The alternative of the metric's tests: `two-sided`, `greater` or `less`."""
        if self.alternative == "one-sided":
            return "greater" if self.role(metric).direction == "increase" else "less"
        return self.alternative

    def comparison_n_star(self, variant: str) -> float | None:
        """`sequential_n_star` (planned assignment units over all variants) scaled to one
        comparison: N* × (share of `variant` + share of the control) in the configured
        split, the planned units of the two arms the comparison sees."""
        if self.sequential_n_star is None or variant not in self.variants:
            return None
        total = sum(self.variants.values())
        share = (self.variants[variant] + self.variants[self.control]) / total
        return self.sequential_n_star * share


def normalized_label(label: str) -> str:
    """A variant label as `normalize_variant_labels` compares it: without surrounding
    spaces, in lower case (as Spark's `lower(trim(…))`)."""
    return label.strip(" ").lower()


#: A metastore table name: `name`, `schema.name` or `catalog.schema.name`, each part a
#: plain identifier (letters, digits, underscores), so it is never parsed as anything else.
TABLE_NAME = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*){0,2}$"


class Location(_Model):
    """Where an output Delta table lives: `{path: PATH}` (a directory or URI) or
    `{table: NAME}` (`catalog.schema.name`, `schema.name` or `name`, in the session's
    catalog: Unity Catalog, a Hive metastore, Glue, or Spark's local warehouse). A plain
    string is a path. A table is created on first write, partitioned by `experiment_id`."""

    path: str | None = None
    table: Annotated[str, Field(pattern=TABLE_NAME)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _plain_path(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_location(self) -> Location:
        if (self.path is None) == (self.table is None):
            raise ValueError("give exactly one of 'path' or 'table'")
        return self

    def __str__(self) -> str:
        return self.path if self.path is not None else f"table {self.table}"


class Output(_Model):
    """The three Delta tables a run writes (see `tables` for their schemas), three
    different locations."""

    staging: Location
    results: Location
    diagnostics: Location

    @model_validator(mode="after")
    def _distinct(self) -> Output:
        seen: dict[Location, str] = {}
        for key in ("staging", "results", "diagnostics"):
            location = getattr(self, key)
            if location in seen:
                raise ValueError(f"'{key}' and '{seen[location]}' are both {location}")
            seen[location] = key
        return self


class Incremental(_Model):
    """Incremental refresh (docs/design.md, "Incremental refresh"): each run reads the
    events from the previous run's analysis time less `lookback_hours` and keeps per-unit
    state (day partials, a unit-day cube) in Delta tables under `state` (a path). Events
    that arrive later than the lookback are not read (they are counted:
    `late_events_outside_lookback`). A config change (any key but `output` and
    `incremental`), a change of an analysed unit's exposure, or `--full-refresh`
    recomputes from every event (`state_full_refresh:<reason>`)."""

    state: Location
    #: Hours re-read before the previous run's analysis time: late events within them are
    #: recomputed. Whole days (state is kept per UTC day); at least every metric's
    #: `bake_hours`, and 24 more with a source read by whole days (`timestamp_as_date`).
    lookback_hours: Annotated[int, Field(ge=0)] = 48

    @model_validator(mode="after")
    def _whole_days(self) -> Incremental:
        if self.lookback_hours % 24:
            raise ValueError(
                f"lookback_hours: {self.lookback_hours} is not a whole number of days "
                "(state is kept per UTC day): use a multiple of 24"
            )
        if self.state.table is not None:
            raise ValueError(
                f"state: {{table: {self.state.table}}} is not supported yet: give a path"
            )
        return self


class Config(_Model):
    exposures: ExposureSource
    sources: dict[Name, Source] = Field(min_length=1)
    metrics: dict[Name, Metric] = Field(min_length=1)
    experiments: list[Experiment] = Field(min_length=1)
    id_mappings: list[IdMapping] = []
    unit_attributes: dict[Name, UnitAttributes] = {}
    output: Output
    #: `memory`: staging persists the frames it reads twice; `none`: it persists nothing
    #: (for Spark Connect platforms that forbid `persist`, e.g. Databricks serverless).
    cache: Literal["memory", "none"] = "memory"
    #: Incremental refresh: state location and lookback; None: every run reads every event.
    incremental: Incremental | None = None

    @model_validator(mode="after")
    def _references(self) -> Config:
        problems = self._incremental_problems()
        ids = [e.id for e in self.experiments]
        if len(set(ids)) != len(ids):
            problems.append(f"experiments: ids are not unique: {ids}")
        for name, metric in self.metrics.items():
            for role, comp in metric.components.items():
                if comp.source and comp.source not in self.sources:
                    key = "value" if metric.value else ROLE_KEYS[role]
                    problems.append(
                        f"metrics.{name}.{key}.source: unknown source '{comp.source}' "
                        f"(known: {sorted(self.sources)})"
                    )
        constant = self.exposures.constant_experiment
        for i, exp in enumerate(self.experiments):
            if constant is not None and exp.id != constant:
                problems.append(
                    f"experiments[{i}]: '{exp.id}' has no exposures: exposures.experiment_id "
                    f"is {{constant: {constant}}}, so every exposure row is '{constant}'"
                )
            for m in exp.metrics:
                if m not in self.metrics:
                    problems.append(
                        f"experiments[{i}].metrics: unknown metric '{m}' "
                        f"(known: {sorted(self.metrics)})"
                    )
            if exp.assignment_unit not in self.exposures.ids:
                problems.append(
                    f"experiments[{i}].assignment_unit: '{exp.assignment_unit}' is not an id "
                    f"of exposures.ids {sorted(self.exposures.ids)}"
                )
            attributes = [(a.attribute, "covariates") for a in exp.attribute_covariates]
            for dim, key in [(d, "dimensions") for d in exp.dimensions] + attributes:
                found = self.dimension_sources(exp, dim)
                if len(found) != 1:
                    where = (
                        f"both {' and '.join(found)}"
                        if found
                        else "neither exposures.dimensions nor a unit_attributes table with "
                        f"the '{exp.assignment_unit}' id"
                    )
                    problems.append(
                        f"experiments[{i}].{key}: '{dim}' must come from exactly one "
                        f"place; it comes from {where}"
                    )
            for k in (k for k in exp.covariates if isinstance(k, str)):
                kind = self.metrics[k].kind if k in self.metrics else None
                if kind is not None and KINDS[kind].stage is not None:
                    problems.append(
                        f"experiments[{i}].covariates: '{k}' is a {kind} metric; a covariate "
                        "is a metric summarised by its moments (ratio, mean, ...)"
                    )
            for m in exp.metrics:
                for src in self.metric_sources(self.metrics.get(m)):
                    if self.unit_route(src, exp.assignment_unit) is None:
                        problems.append(
                            f"experiments[{i}]: metric '{m}' reads source '{src}', which has "
                            f"no '{exp.assignment_unit}' id column and no id_mappings entry "
                            f"from one of its ids {sorted(self.sources[src].ids)}"
                        )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def dimension_sources(self, experiment: Experiment, dimension: str) -> list[str]:
        """Where `dimension` of `experiment` comes from: `exposures` and/or the names of
        `unit_attributes` tables keyed by its assignment unit (valid configs: one)."""
        found = ["exposures"] if dimension in self.exposures.dimensions else []
        return found + [
            name
            for name, t in self.unit_attributes.items()
            if t.unit_type == experiment.assignment_unit and dimension in t.dimensions
        ]

    def unit_route(self, source: str, unit_type: str) -> IdMapping | str | None:
        """How a source reaches an assignment unit: its own id column (str), an id
        mapping from one of its ids, or None."""
        ids = self.sources[source].ids
        if unit_type in ids:
            return ids[unit_type]
        for mapping in self.id_mappings:
            if mapping.to_id == unit_type and mapping.from_id in ids:
                return mapping
        return None

    def _incremental_problems(self) -> list[str]:
        """The lookback must re-read what a run could not count yet: events inside a bake
        delay, and the last day of a source read by whole days."""
        if self.incremental is None:
            return []
        need = max((m.bake_hours for m in self.metrics.values()), default=0)
        if any(s.timestamp_as_date for s in self.sources.values()):
            need += 24
        hours = self.incremental.lookback_hours
        if hours < need:
            return [
                f"incremental.lookback_hours: {hours} is less than {need:g}, the longest "
                "bake_hours (plus 24 with a source read by whole days): events a run could "
                "not count yet would never be read"
            ]
        return []

    def fingerprint(self) -> str:
        """A hash of every key but `output`, `incremental` and the experiments' `engine`,
        `bayesian`, `variance` and `covariates` (applied after the state's first level): the
        state of an incremental refresh was computed under it."""
        not_in_state = {"engine", "bayesian", "variance", "covariates"}
        kept = self.model_dump(
            mode="json",
            exclude={"output": True, "incremental": True, "experiments": {"__all__": not_in_state}},
        )
        return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]

    def metric_sources(self, metric: Metric | None) -> list[str]:
        if metric is None:
            return []
        comps = metric.components.values()
        return sorted({c.source for c in comps if c.source and c.source in self.sources})

    def tables(self) -> dict[str, str]:
        """Label → location (path or table name) of every table a run reads or writes,
        for error messages."""
        inputs: dict[str, Table] = {"exposures": self.exposures}
        inputs |= {f"source '{name}'": src for name, src in self.sources.items()}
        inputs |= {f"id mapping {m.from_id} → {m.to_id}": m for m in self.id_mappings}
        inputs |= {f"unit attributes '{name}'": t for name, t in self.unit_attributes.items()}
        out = {label: t.path or t.table or "" for label, t in inputs.items()}
        outputs = {k: getattr(self.output, k) for k in Output.model_fields}
        return out | {f"output.{k}": loc.path or loc.table or "" for k, loc in outputs.items()}

    def experiment(self, experiment_id: str) -> Experiment:
        for exp in self.experiments:
            if exp.id == experiment_id:
                return exp
        raise ConfigError(
            f"unknown experiment '{experiment_id}' (known: {[e.id for e in self.experiments]})"
        )


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def _resolve(path: str, root: Path) -> str:
    if _SCHEME.match(path) or Path(path).is_absolute():
        return path
    return str((root / path).resolve())


def _resolve_paths(raw: dict[str, Any], root: Path) -> dict[str, Any]:
    """Relative table paths are taken relative to `root`; URIs and absolute paths are kept."""
    tables = [
        raw.get("exposures"),
        *(raw.get("sources") or {}).values(),
        *(raw.get("id_mappings") or []),
        *(raw.get("unit_attributes") or {}).values(),
    ]
    for table in tables:
        if isinstance(table, dict) and isinstance(table.get("path"), str):
            table["path"] = _resolve(table["path"], root)
    places = [(raw.get("output"), list(Output.model_fields)), (raw.get("incremental"), ["state"])]
    for out, keys in places:
        if not isinstance(out, dict):
            continue
        for key in keys:
            if isinstance(out.get(key), str):
                out[key] = _resolve(out[key], root)
            elif isinstance(out.get(key), dict) and isinstance(out[key].get("path"), str):
                out[key]["path"] = _resolve(out[key]["path"], root)
    return raw


def _describe(err: ValidationError, origin: str) -> str:
    lines = [f"{origin}: invalid configuration"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        rule = e["msg"].removeprefix("Value error, ")
        value = e.get("input")
        shown = repr(value) if not isinstance(value, dict) else "{...}"
        lines.append(f"  {key} = {shown}: {rule}")
    return "\n".join(lines)


def parse_config(raw: Any, origin: str = "<config>", root: str | Path = ".") -> Config:
    """Validate a config mapping (e.g. parsed YAML); raise ConfigError naming the key."""
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{origin}: expected a mapping at the top level, got {type(raw).__name__}"
        )
    try:
        return Config.model_validate(_resolve_paths(raw, Path(root)))
    except ValidationError as err:
        raise ConfigError(_describe(err, origin)) from None


def load_config(path: str | Path, root: str | Path | None = None) -> Config:
    """Load and validate a YAML config. Relative table paths resolve against `root`
    (default: the current directory)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return parse_config(raw, origin=str(path), root=root if root is not None else Path.cwd())
