"""Every input table a run reads, read once and checked together before any staging work:
the tables, every column the chosen experiments use and its type, the values of filter
conditions against their columns' types, and the values of text and epoch timestamps
(and CSV/JSON records that do not fit their types). Every problem found goes into one
`InputError` (exit 66), so a user fixes them all after one run.

The checks read only what they must: a table's schema, plus one aggregation over a table
whose timestamps are text or numbers, or that is a CSV/JSON export (counts and two
example values reach the driver, nothing per unit).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cluster_spark import io
from cluster_spark.config import ROLE_KEYS, Condition, Config, IdMapping, Table, TimeColumn
from cluster_spark.errors import ClusterSparkError, InputError

#: The kind a column needs, by priority when two uses of one column differ.
_PRIORITY = {"id": 2, "numeric": 1, "any": 0}
_CONSTANT_HINT = (
    "; a table of one experiment's exposures can name it instead: "
    "experiment_id: {constant: <experiment id>}"
)
_SQLSTATE = re.compile(r"\s*SQLSTATE: \w+\.?")
#: Longest example value shown in a message.
_SHOWN = 120


@dataclass
class Need:
    """What a run needs from one input table: `columns` (column → kind, see `io.KINDS`),
    its timestamp column, the columns read as text from a CSV/JSON export (ids,
    variant, experiment id, timestamp), and the filter conditions on its columns."""

    label: str
    table: Table
    time: TimeColumn | None = None
    columns: dict[str, str] = field(default_factory=dict)
    text: set[str] = field(default_factory=set)
    filters: dict[str, Condition] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.label} ({io.describe(self.table)})"

    def require(self, column: str, kind: str) -> None:
        if _PRIORITY[kind] >= _PRIORITY[self.columns.get(column, "any")]:
            self.columns[column] = kind


def source_label(name: str) -> str:
    return f"source '{name}'"


def attributes_label(name: str) -> str:
    return f"unit attributes '{name}'"


def mapping_label(mapping: IdMapping) -> str:
    return f"id mapping {mapping.from_id} → {mapping.to_id}"


def needs(config: Config, experiment_ids: Iterable[str]) -> dict[str, Need]:
    """Label → `Need` of every table the experiments read (as `config.tables` labels)."""
    experiments = [config.experiment(e) for e in experiment_ids]
    src = config.exposures
    exposures = Need("exposures", src, src.timestamp)
    exposures.text = {*src.ids.values(), src.variant}
    if src.constant_experiment is None:
        exposures.require(src.experiment_id, "id")
        exposures.text.add(src.experiment_id)
    for e in experiments:
        exposures.require(src.ids[e.assignment_unit], "id")
    exposures.require(src.variant, "any")
    exposures.require(src.timestamp.column, "any")
    out = {"exposures": exposures}
    for e in experiments:
        for dim in e.loaded_dimensions:
            (where,) = config.dimension_sources(e, dim)
            if where == "exposures":
                exposures.require(dim, "any")
                continue
            table = config.unit_attributes[where]
            label = attributes_label(where)
            need = out.setdefault(label, Need(label, table, table.timestamp))
            need.require(table.ids[table.unit_type], "id")
            need.text.add(table.ids[table.unit_type])
            need.require(table.timestamp.column, "any")
            need.require(dim, "any")
    for e in experiments:
        for name in e.metrics:
            metric = config.metrics[name]
            for role, comp in metric.components.items():
                if comp.source is None:
                    continue
                key = "value" if metric.value else ROLE_KEYS[role]
                source = config.sources[comp.source]
                need = out.setdefault(
                    source_label(comp.source),
                    Need(source_label(comp.source), source, source.timestamp),
                )
                need.text |= set(source.ids.values())
                need.require(source.timestamp.column, "any")
                route = config.unit_route(comp.source, e.assignment_unit)
                if isinstance(route, IdMapping):
                    need.require(source.ids[route.from_id], "id")
                    label = mapping_label(route)
                    mapping = out.setdefault(label, Need(label, route))
                    for column in route.columns.values():
                        mapping.require(column, "id")
                        mapping.text.add(column)
                elif route is not None:
                    need.require(route, "id")
                if e.analysis_unit in source.ids:
                    need.require(source.ids[e.analysis_unit], "id")
                if comp.agg == "sum":
                    need.require(comp.column, "numeric")
                elif comp.column:
                    need.require(comp.column, "any")
                for i, cond in enumerate(comp.filter):
                    need.require(cond.column, "any")
                    need.filters[f"metrics.{name}.{key}.filter[{i}]"] = cond
    return out


@dataclass(frozen=True)
class Prepared:
    """One input table as the staging reads it: the frame and its timestamp as instants."""

    df: DataFrame
    instants: Column | None


class Inputs:
    """The input tables of the chosen experiments, each read once (`io.read_input`)."""

    def __init__(self, spark: SparkSession, config: Config, experiment_ids: Iterable[str]):
        self.spark, self.config = spark, config
        self.needs = needs(config, experiment_ids)
        self.reads: dict[str, io.Read] = {}

    @classmethod
    def checked(cls, spark: SparkSession, config: Config, experiment_ids: Iterable[str]) -> Inputs:
        """The inputs, once `check` found nothing wrong."""
        inputs = cls(spark, config, experiment_ids)
        inputs.check()
        return inputs

    def read(self, label: str) -> io.Read:
        if label not in self.reads:
            need = self.needs[label]
            text = dict.fromkeys(need.text, T.StringType())
            if need.time is not None:
                text[need.time.column] = T.StringType()
            self.reads[label] = io.read_input(self.spark, need.table, text, need.columns)
        return self.reads[label]

    def table(self, label: str) -> Prepared:
        """The table `label` with its timestamp column as instants (UTC)."""
        read, need = self.read(label), self.needs[label]
        if need.time is None:
            return Prepared(read.df, None)
        return Prepared(read.df, io.time_instants(read.df, need.time, read.nanos))

    def check(self) -> None:
        """Raise one InputError listing every problem of every input table."""
        problems = [p for need in self.needs.values() for p in self._problems(need)]
        if problems:
            count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
            raise InputError(
                f"{count} with the input tables (found before any staging work):\n"
                + "\n".join(f"  - {p}" for p in problems)
            )

    def _problems(self, need: Need) -> list[str]:
        try:
            read = self.read(need.label)
        except InputError as err:
            return [f"{need.label}: {_SQLSTATE.sub('', str(err))}"]
        df = read.df
        problems = [f"{need.where}: {p}" for p in read.problems]
        problems += io.column_problems(df, need.columns, need.where)
        src = self.config.exposures
        if need.label == "exposures" and src.constant_experiment is None:
            problems = [
                p + _CONSTANT_HINT if f"missing column '{src.experiment_id}'" in p else p
                for p in problems
            ]
        if need.time is not None:
            problem = io.time_problem(df, need.time, need.where, read.nanos)
            problems += [problem] if problem else []
        problems += filter_problems(df, need)
        return problems + self._data_problems(need, read)

    def _data_problems(self, need: Need, read: io.Read) -> list[str]:
        """Timestamps that do not parse and CSV/JSON records that do not fit their types:
        one aggregation over the table (counts and two examples reach the driver)."""
        df = read.df
        present = [c for c in need.columns if c in df.columns]
        aggs: list[Column] = []
        time = need.time
        instants = None
        if time is not None and time.column in df.columns:
            kind = df.schema[time.column].dataType
            instants = io.time_instants(df, time, read.nanos)
            if isinstance(kind, io.KINDS["timestamp"]) or instants is None:
                instants = None  # an instant already, or a type problem reported above
        if instants is not None:
            raw = F.col(time.column).cast("string")
            failed = raw.isNotNull() & (F.trim(raw) != "") & instants.isNull()
            aggs += [
                F.count(F.when(failed, 1)).alias("bad_time"),
                F.min(F.when(failed, raw)).alias("bad_time_low"),
                F.max(F.when(failed, raw)).alias("bad_time_high"),
            ]
        if read.malformed and present:
            bad = F.col(read.malformed)
            aggs += [
                F.count(F.when(bad.isNotNull(), 1)).alias("malformed"),
                F.min(bad).alias("malformed_example"),
                # Spark parses only the columns a query reads: read every needed one.
                F.max(F.xxhash64(*present)).alias("_parsed"),
            ]
        if not aggs:
            return []
        try:
            row = df.agg(F.count(F.lit(1)).alias("rows"), *aggs).first()
        except ClusterSparkError:
            raise
        except Exception as err:
            return [_scan_failure(err, need)]
        problems = []
        if instants is not None and row["bad_time"]:
            problems.append(_time_values(need, time, read, row))
        if read.malformed and present and row["malformed"]:
            example = _short(row["malformed_example"])
            problems.append(
                f"{need.where}: {row['malformed']:,} of {row['rows']:,} records have values "
                f"that do not fit their column types (e.g. {example}); correct the data or "
                "the types in 'schema'"
            )
        return problems


def _short(value: str) -> str:
    value = value.strip()
    return repr(value if len(value) <= _SHOWN else value[:_SHOWN] + "…")


def _time_values(need: Need, time: TimeColumn, read: io.Read, row) -> str:
    examples = [row["bad_time_low"], row["bad_time_high"]]
    shown = ", ".join(_short(v) for v in dict.fromkeys(examples))
    what = f"{need.where}, column '{time.column}': {row['bad_time']:,} of {row['rows']:,} values"
    if time.epoch or time.column in read.nanos:
        unit = time.epoch or "ns"
        return (
            f"{what} are not numbers of '{unit}' since 1970-01-01 UTC between 1971 and 2199 "
            f"(e.g. {shown}); check the unit: timestamp: {{column: {time.column}, "
            "epoch: s|ms|us|ns}"
        )
    if time.format is not None:
        return (
            f"{what} do not match the format '{time.format}' (e.g. {shown}); correct the "
            "format (a Spark datetime pattern) or the values"
        )
    hint = (
        f"give their pattern: timestamp: {{column: {time.column}, format: "
        "'dd/MM/yyyy HH:mm'} (a Spark datetime pattern)"
    )
    if all(re.fullmatch(r"\s*-?\d+(\.\d+)?\s*", v) for v in examples):
        hint = (
            f"for numbers since 1970-01-01 UTC give their unit: timestamp: "
            f"{{column: {time.column}, epoch: s|ms|us|ns}}"
        )
    return (
        f"{what} are not ISO-8601 timestamps such as '2026-03-02T10:15:00Z' or "
        f"'2026-03-02 10:15:00+01:00' (e.g. {shown}); {hint}"
    )


def _scan_failure(err: Exception, need: Need) -> str:
    """A failure of the check's own scan, as a problem line; else re-raised."""
    text = str(err)
    if "INVALID_DATETIME_PATTERN" in text and need.time is not None:
        reason = next((line for line in text.splitlines() if "INVALID_DATETIME" in line), text)
        reason = _SQLSTATE.sub("", reason).strip()
        if need.time.format:  # as the user wrote it (`io.pattern_instants` may add an offset)
            reason = reason.replace(io.zoned_pattern(need.time.format), need.time.format)
        return f"{need.where}, column '{need.time.column}': {reason}"
    mapped = io.read_failure(err, {need.label: need.table.path or need.table.table or ""})
    if mapped is None:
        raise err
    return str(mapped)


def _value_kind(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, dt.date):  # datetime too
        return "date/time"
    return "text"


def _column_kind(kind: T.DataType) -> str | None:
    if isinstance(kind, T.BooleanType):
        return "boolean"
    if isinstance(kind, io.NUMERIC):
        return "number"
    if isinstance(kind, io.KINDS["timestamp"]):
        return "date/time"
    if isinstance(kind, T.StringType):
        return "text"
    return None


_HOW = {
    "text": "quote it in the YAML ('3', not 3)",
    "number": "write it unquoted (3, not '3')",
    "date/time": "write it unquoted (2026-03-01 or 2026-03-01T12:00:00Z)",
    "boolean": "write true or false, unquoted",
}


def filter_problems(df: DataFrame, need: Need) -> list[str]:
    """Filter values whose kind does not fit their column's type: Spark would convert the
    column to the value's type and fail on the first row that does not convert (a text
    column compared with a number), or compare in the session's time zone."""
    types = {f.name: f.dataType for f in df.schema.fields}
    problems = []
    for key, cond in need.filters.items():
        if cond.column not in types or cond.value is None:
            continue
        column_kind = _column_kind(types[cond.column])
        if column_kind is None:
            continue
        values = cond.value if isinstance(cond.value, list) else [cond.value]
        wrong = [v for v in values if _value_kind(v) != column_kind]
        if wrong:
            problems.append(
                f"{need.where}: {key} compares column '{cond.column}' "
                f"({types[cond.column].simpleString()}) with {_value_kind(wrong[0])} "
                f"{wrong[0]!r}: {_HOW[column_kind]}"
            )
    return problems


def plan_inputs(spark: SparkSession, plan) -> Inputs:
    """The plan's checked inputs; read and checked here when the plan was built without
    them (a caller that stages one plan by itself)."""
    if plan.inputs is not None:
        return plan.inputs
    return Inputs.checked(spark, plan.config, [e.id for e in plan.experiments])
