"""All reads and writes of tables: input checks with clear errors, and Delta writes that
replace one (experiments × analysis date) slice atomically (`replaceWhere`), so reruns
never duplicate rows, and `SliceWrites`, which gives a failed run's tables their slices back."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import random
import re
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from delta import exceptions as delta_errors
from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, DataFrameReader, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cluster_spark.config import Location, Table, TimeColumn
from cluster_spark.errors import ClusterSparkError, InputError

# What a column may be, by the role it plays.
NUMERIC = (
    T.ByteType,
    T.ShortType,
    T.IntegerType,
    T.LongType,
    T.FloatType,
    T.DoubleType,
    T.DecimalType,
)
KINDS: dict[str, tuple[type, ...]] = {
    "id": (T.StringType, T.IntegerType, T.LongType, T.ShortType, T.ByteType),
    "timestamp": (T.TimestampType, T.TimestampNTZType, T.DateType),
    "numeric": NUMERIC,
    "any": (T.DataType,),
}


def describe(table: Table) -> str:
    return table.path if table.path is not None else f"table {table.table}"


#: Spark types of the type names a CSV or JSON table's `schema` may give.
SCHEMA_TYPES: dict[str, T.DataType] = {
    "string": T.StringType(),
    "int": T.IntegerType(),
    "bigint": T.LongType(),
    "double": T.DoubleType(),
    "boolean": T.BooleanType(),
    "date": T.DateType(),
    "timestamp": T.TimestampType(),
}

#: The column where Spark puts a CSV/JSON record whose values do not fit the schema.
MALFORMED = "_cluster_spark_malformed"

#: Numbers since the epoch, read exactly (nanoseconds and fractions of seconds).
EPOCH_NUMBER = T.DecimalType(38, 9)

_NANOS_AS_LONG = "spark.sql.legacy.parquet.nanosAsLong"
_PARTITION_TYPES = "spark.sql.sources.partitionColumnTypeInference.enabled"
#: At most this many Parquet files' footers are inspected for nanosecond timestamps.
FOOTERS = 256
#: What an input without data files means (Spark: "Unable to infer schema").
NO_DATA_FILES = (
    "no data files (the folder is empty or holds only files Spark skips: names starting "
    "with _ or ., such as _SUCCESS): check the path"
)


@dataclass(frozen=True)
class Read:
    """An input table as read. `nanos`: the columns of a Parquet table stored as
    TIMESTAMP(NANOS), which Spark reads as bigint nanoseconds since the epoch.
    `malformed`: the column of a CSV/JSON table holding the records whose values do not
    fit their types (else None). `problems`: what is wrong with the table's options (a
    `schema` column the file lacks), each to be prefixed with the table's name."""

    df: DataFrame
    nanos: frozenset[str] = frozenset()
    malformed: str | None = None
    problems: tuple[str, ...] = ()


def read_input(
    spark: SparkSession,
    table: Table,
    text: Mapping[str, T.DataType] | None = None,
    needed: Iterable[str] | None = None,
) -> Read:
    """Read a Delta, Parquet, CSV or JSON table; InputError if it cannot be read at all
    (no data files: `NO_DATA_FILES`).

    Parquet, CSV and JSON by path: partition folders' values are text (`org_id=007` is
    '007'), unless a CSV/JSON `schema` types the column. Parquet (`_read_parquet`): every
    file's columns (`mergeSchema`), TIMESTAMP(NANOS) columns as bigint nanoseconds
    (`Read.nanos`). CSV/JSON (`_read_text`): `text` gives columns a fixed type whatever the
    table's `schema` says (ids and timestamps are read as text); `needed` are the columns
    whose type matters, inferred from the data when the `schema` does not give it."""
    try:
        if table.table is not None:
            df = spark.read.table(table.table)
        elif table.text:
            return _read_text(spark, table, dict(text or {}), needed)
        elif table.format == "parquet":
            return _read_parquet(spark, table)
        else:
            df = spark.read.format(table.format).load(table.path)
        df.schema  # noqa: B018 (resolved now: under Spark Connect reads are lazy)
        return Read(df)
    except AnalysisException as err:
        reason = NO_DATA_FILES if "[UNABLE_TO_INFER_SCHEMA]" in str(err) else spark_message(err)
        raise InputError(f"cannot read {table.format} {describe(table)}: {reason}") from None


def spark_message(err: AnalysisException) -> str:
    """Spark's message of an analysis error, `[CONDITION] text`. `getMessage()` looks the
    condition up in Spark's own catalogue, which lacks Delta's (`DELTA_TABLE_NOT_FOUND`
    makes it fail with INTERNAL_ERROR); the exception's text is then used."""
    try:
        return err.getMessage()
    except Exception:
        return str(err).strip().splitlines()[0]


def _nanos(err: AnalysisException) -> bool:
    text = str(err)
    return "PARQUET_TYPE_ILLEGAL" in text and "NANOS" in text


#: Settings changed for a moment (`_settings`) by one thread at a time.
_SETTINGS_LOCK = threading.Lock()


@contextmanager
def _settings(spark: SparkSession, settings: Mapping[str, str]) -> Iterator[None]:
    """Spark settings (`spark.conf` only: Spark Connect too) for the block, each put back
    as it was afterwards (unset if it was unset)."""
    with _SETTINGS_LOCK:
        previous = {key: spark.conf.get(key, None) for key in settings}
        try:
            for key, value in settings.items():
                spark.conf.set(key, value)
            yield
        finally:
            for key, value in previous.items():
                if value is None:
                    spark.conf.unset(key)
                else:
                    spark.conf.set(key, value)


def _read_parquet(spark: SparkSession, table: Table) -> Read:
    """A Parquet table by path. Its schema is resolved once (a job reading every file's
    footer) with merged schemas (`mergeSchema`: a column older files lack is NULL there),
    partition values as text (Spark's partition type inference off) and, when some
    columns are TIMESTAMP(NANOS), Spark's `nanosAsLong` (they become bigint: `Read.nanos`),
    each set for that moment only; the files are then read with that schema, which needs
    no setting. Which columns are nanoseconds is known from the footers of local files
    (`_footer_nanos`); elsewhere a first resolution fails on them and is made again.
    InputError when the files disagree on a column's type."""
    # Under Spark Connect a path names the server's files, not this machine's.
    nanos = None if _is_connect(spark) else _footer_nanos(table.path)
    try:
        schema = _parquet_schema(spark, table, bool(nanos))
    except AnalysisException as err:
        if nanos or not _nanos(err):
            raise
        schema = _parquet_schema(spark, table, True)
        nanos = frozenset(f.name for f in schema.fields if isinstance(f.dataType, T.LongType))
    df = spark.read.schema(schema).format("parquet").load(table.path)
    return Read(df, nanos=nanos or frozenset())


def _parquet_schema(spark: SparkSession, table: Table, nanos_as_long: bool) -> T.StructType:
    settings = {_PARTITION_TYPES: "false"}
    if nanos_as_long:
        settings[_NANOS_AS_LONG] = "true"
    with _settings(spark, settings):
        reader = spark.read.option("mergeSchema", "true").format("parquet")
        try:
            return reader.load(table.path).schema
        except Exception as err:  # a SparkException, not an AnalysisException
            if "[CANNOT_MERGE_SCHEMAS]" not in str(err):
                raise
            reason = _merge_conflict(str(err))
    raise InputError(f"cannot read parquet {describe(table)}: {reason}")


_MERGED = re.compile(
    r'Initial schema:\s*"STRUCT<(.*?)>"\s*'
    r'Schema that cannot be merged with the initial schema:\s*"STRUCT<(.*?)>"',
    re.DOTALL,
)


def _merge_conflict(text: str) -> str:
    """What Spark's CANNOT_MERGE_SCHEMAS error says, as the columns whose types differ."""
    found = _MERGED.search(text)
    first, second = (_struct_fields(found.group(i)) for i in (1, 2)) if found else ({}, {})
    differ = [
        f"column '{c}' is {first[c]} in some files and {second[c]} in others"
        for c in first
        if c in second and first[c] != second[c]
    ]
    if not differ:
        condition = re.search(r"\[CANNOT_MERGE_SCHEMAS\][^\n]*", text)
        differ = [condition.group(0) if condition else "a column's type differs"]
    return (
        "; ".join(differ)
        + ": its files disagree on this column's type (rewrite them with one type)"
    )


def _struct_fields(text: str) -> dict[str, str]:
    """`name: TYPE, …` (Spark's STRUCT<…> text) as name → type, top-level fields only."""
    fields, depth, quoted, start = {}, 0, False, 0
    for i, ch in enumerate(text + ","):
        if ch == "`":
            quoted = not quoted
        elif not quoted and ch in "<(":
            depth += 1
        elif not quoted and ch in ">)":
            depth -= 1
        elif not quoted and depth == 0 and ch == ",":
            name, _, kind = text[start:i].strip().partition(": ")
            if name.startswith("`"):
                name = name[1:-1].replace("``", "`")
            fields[name] = kind
            start = i + 1
    return fields


def _is_connect(spark: SparkSession) -> bool:
    return type(spark).__module__.startswith("pyspark.sql.connect")


def _footer_nanos(path: str) -> frozenset[str] | None:
    """The columns stored as TIMESTAMP(NANOS) in the Parquet files at `path`, from their
    footers (pyarrow; no Spark job), or None when that cannot be known here: not a path on
    this machine (`s3://…`), a glob, a footer pyarrow cannot read (Spark will say why), or
    more than `FOOTERS` files, the first of which have none."""
    url = urlparse(path)
    if url.scheme not in ("", "file") or any(ch in path for ch in "*?[{"):
        return None
    import pyarrow.parquet as pq  # only here: the CLI starts without it

    root = Path(url2pathname(url.path) if url.scheme else path)
    found: set[str] = set()
    try:
        for count, file in enumerate(_data_files(root)):
            if count == FOOTERS:
                return frozenset(found) or None
            schema = pq.read_metadata(file).schema
            kinds = {
                schema.column(i).path: schema.column(i).logical_type for i in range(len(schema))
            }
            found |= {
                name
                for name, kind in kinds.items()
                if kind.type == "TIMESTAMP" and '"timeUnit":"nanoseconds"' in kind.to_json()
            }
    except Exception:  # OSError, pyarrow's ArrowInvalid, …
        return None
    return frozenset(found)


def _data_files(root: Path) -> Iterator[Path]:
    """The files Spark reads at `root`: the file, or the files of its tree whose names do
    not start with `_` or `.` (`_SUCCESS`, `.crc`; a folder `_x=1` is a partition)."""

    def skipped(name: str) -> bool:
        return name.startswith(".") or (name.startswith("_") and "=" not in name)

    def fail(err: OSError) -> None:
        raise err

    if root.is_file():
        yield root
        return
    for top, folders, files in os.walk(root, onerror=fail):
        folders[:] = sorted(f for f in folders if not skipped(f))
        yield from (Path(top, f) for f in sorted(files) if not skipped(f))


def _text_reader(spark: SparkSession, table: Table, **options: Any) -> DataFrameReader:
    reader = spark.read.format(table.format).option("multiLine", table.multiline)
    # Values of `timestamp`/`date` columns without a zone are UTC, whatever the session's.
    reader = reader.option("timeZone", "UTC")
    if table.format == "csv":
        reader = reader.options(header=table.header, sep=table.delimiter, escape='"')
    return reader.options(**options)


def _read_text(
    spark: SparkSession,
    table: Table,
    text: dict[str, T.DataType],
    needed: Iterable[str] | None,
) -> Read:
    """A CSV or JSON table with an explicit schema: column names from the CSV header (or
    the `schema`, without one) or from JSON inference; each column's type from `text`,
    else the table's `schema`, else Spark's inference (a pass over the data, made only
    when a needed column has no type yet), else string. Records whose values do not fit
    their types are kept in the `MALFORMED` column (`Read.malformed`). Partition folders'
    columns are typed the same way, their values inferred as text (`org_id=007` is '007'):
    the names and the inference are resolved with Spark's partition type inference off."""
    given = {c: SCHEMA_TYPES[t] for c, t in (table.column_types or {}).items()}
    with _settings(spark, {_PARTITION_TYPES: "false"}):
        if table.format == "json":
            inferred = _text_reader(spark, table).load(table.path).schema
            names = [f.name for f in inferred.fields if f.name != "_corrupt_record"]
        else:  # the header's columns, or the schema's; then the partition columns
            listed = T.StructType([T.StructField(c, t) for c, t in given.items()])
            reader = _text_reader(spark, table)
            names = (reader if table.header else reader.schema(listed)).load(table.path).columns
            inferred = None
        problems = tuple(
            f"'schema' names column '{c}', which the "
            f"{'header' if table.format == 'csv' else 'data'} does not have "
            f"(has: {', '.join(names)})"
            for c in given
            if c not in names
        )
        wanted = set(names if needed is None else needed)
        untyped = [c for c in names if c in wanted and c not in text and c not in given]
        if untyped and inferred is None:
            inferred = _text_reader(spark, table, inferSchema=True).load(table.path).schema
    found = {f.name: f.dataType for f in (inferred.fields if inferred else [])}
    schema = T.StructType(
        [
            T.StructField(c, text.get(c) or given.get(c) or found.get(c) or T.StringType())
            for c in names
        ]
        + [T.StructField(MALFORMED, T.StringType())]
    )
    options = {"columnNameOfCorruptRecord": MALFORMED, "mode": "PERMISSIVE"}
    if table.format == "csv" and table.header:
        options["enforceSchema"] = False  # every file's header must name these columns
    elif table.format == "csv" and not spark.read.schema(schema).csv(table.path).inputFiles():
        # Without a header nothing is inferred, so no read fails on an empty folder.
        raise InputError(f"cannot read csv {describe(table)}: {NO_DATA_FILES}")
    df = _text_reader(spark, table, **options).schema(schema).load(table.path)
    return Read(df, malformed=MALFORMED, problems=problems)


def column_problems(df: DataFrame, required: Mapping[str, str], where: str) -> list[str]:
    """Every required column that is missing or has a type of the wrong kind."""
    fields = {f.name: f.dataType for f in df.schema.fields if f.name != MALFORMED}
    problems = []
    for column, kind in required.items():
        if column not in fields:
            problems.append(
                f"{where}: missing column '{column}' (has: {', '.join(sorted(fields))})"
            )
        elif not isinstance(fields[column], KINDS[kind]):
            problems.append(
                f"{where}: column '{column}' has type {fields[column].simpleString()}, "
                f"expected {kind}"
            )
    return problems


def utc_timestamp(name: str | Column, kind: T.DataType) -> Column:
    """Column `name` as instants, whatever the session's or the machine's time zone:
    a TIMESTAMP is an instant already; a TIMESTAMP_NTZ (wall clock without zone) and a
    DATE (its midnight) are read as UTC. (A plain cast would read them in the session
    time zone, and a DST gap there would even shift them.)"""
    col = F.col(name) if isinstance(name, str) else name
    if isinstance(kind, T.TimestampNTZType):
        day = F.to_date(col)
        return F.timestamp_seconds(F.unix_date(day) * 86400) + (col - day.cast("timestamp_ntz"))
    if isinstance(kind, T.DateType):
        return F.timestamp_seconds(F.unix_date(col) * 86400)
    return col.cast("timestamp")


#: ISO-8601 as exports write it: a date, optionally a time (`T` or a space), optionally
#: an offset (`Z`, `UTC`, `GMT`, `±hh`, `±hhmm`, `±hh:mm`, a space before it allowed).
ISO_8601 = (
    r"^(\d{4}-\d{2}-\d{2})(?:[Tt ](\d{2}:\d{2}(?::\d{2}(?:[.,]\d{1,9})?)?))?"
    r" ?(?:([Zz]|UTC|GMT)|([+-])(\d{2})(?::?(\d{2}))?)?$"
)
#: Epoch numbers outside [1971, 2200) are in another unit than the configured one.
EPOCH_RANGE_US = (
    int(dt.datetime(1971, 1, 1, tzinfo=dt.UTC).timestamp()) * 1_000_000,
    int(dt.datetime(2200, 1, 1, tzinfo=dt.UTC).timestamp()) * 1_000_000,
)
_EPOCH_TO_US = {
    "s": Decimal(1_000_000),
    "ms": Decimal(1000),
    "us": Decimal(1),
    "ns": Decimal("0.001"),
}
#: Letters of a Spark datetime pattern that read a zone or an offset.
_ZONE_LETTERS = set("VzOXxZ")


def iso_instants(text: Column) -> Column:
    """ISO-8601 text (`ISO_8601`) as instants; NULL when it does not parse. Without an
    offset the time is UTC. The wall clock is read without any zone (TIMESTAMP_NTZ, then
    as UTC) and the offset subtracted in microseconds, so neither the session's zone nor
    the machine's enters."""
    s = F.trim(text)

    def part(i: int) -> Column:
        return F.regexp_extract(s, ISO_8601, i)

    time = F.when(part(2) != "", F.regexp_replace(part(2), ",", ".")).otherwise("00:00:00")
    wall = F.concat(part(1), F.lit("T"), time).try_cast("timestamp_ntz")
    hours = F.when(part(5) != "", part(5).cast("int")).otherwise(0)
    minutes = F.when(part(6) != "", part(6).cast("int")).otherwise(0)
    sign = F.when(part(4) == "-", -1).otherwise(1)
    offset_us = sign * (hours * 3600 + minutes * 60).cast("bigint") * 1_000_000
    valid = s.rlike(ISO_8601) & (hours <= 18) & (minutes <= 59)
    return F.when(
        valid,
        F.timestamp_micros(F.unix_micros(utc_timestamp(wall, T.TimestampNTZType())) - offset_us),
    )


def _has_zone(pattern: str) -> bool:
    """Whether a Spark datetime pattern reads a zone or offset (outside quoted text)."""
    quoted = False
    for ch in pattern:
        if ch == "'":
            quoted = not quoted
        elif not quoted and ch in _ZONE_LETTERS:
            return True
    return False


def zoned_pattern(pattern: str) -> str:
    """The pattern `pattern_instants` parses with: with an offset (` xx`) when it has none."""
    return pattern if _has_zone(pattern) else pattern + " xx"


def pattern_instants(text: Column, pattern: str) -> Column:
    """Text read with a Spark datetime pattern as instants; NULL when it does not parse.
    A pattern without a zone or offset reads UTC: the text gets ` +0000` and the pattern
    ` xx`, so the session's zone never enters."""
    s = F.trim(text)
    if not _has_zone(pattern):
        s = F.concat(s, F.lit(" +0000"))
    fmt = F.lit(zoned_pattern(pattern))
    # to_timestamp_ltz is an instant whatever spark.sql.timestampType says; it fails on
    # text that does not parse, so it only sees text that try_to_timestamp parses.
    return F.when(F.try_to_timestamp(s, fmt).isNotNull(), F.to_timestamp_ltz(s, fmt))


def epoch_instants(number: Column, unit: str) -> Column:
    """Numbers (or numeric text) since 1970-01-01 UTC in `unit` (s, ms, us, ns) as
    instants, truncated to microseconds; NULL when not a number or outside 1971–2199."""
    micros = F.floor(F.try_multiply(number.try_cast(EPOCH_NUMBER), F.lit(_EPOCH_TO_US[unit])))
    low, high = EPOCH_RANGE_US
    inside = (micros >= F.lit(low)) & (micros < F.lit(high))
    return F.when(inside, F.timestamp_micros(micros.cast("bigint")))


def time_instants(df: DataFrame, spec: TimeColumn, nanos: Collection[str] = ()) -> Column | None:
    """The timestamp column `spec` of `df` as instants (UTC), or None when its type cannot
    be read that way (`time_problem` says why). `nanos`: the columns that are bigint
    nanoseconds since the epoch (`Read.nanos`). Text that does not parse is NULL (the
    input check counts it first: `inputs`); empty text is NULL."""
    kind = df.schema[spec.column].dataType
    col = F.col(spec.column)
    if spec.epoch or (spec.column in nanos and isinstance(kind, T.LongType)):
        if isinstance(kind, (*NUMERIC, T.StringType)):
            return epoch_instants(col, spec.epoch or "ns")
        return None
    if isinstance(kind, T.StringType):
        return iso_instants(col) if spec.format is None else pattern_instants(col, spec.format)
    if isinstance(kind, KINDS["timestamp"]) and spec.format is None:
        return utc_timestamp(col, kind)
    return None


def time_problem(
    df: DataFrame, spec: TimeColumn, where: str, nanos: Collection[str] = ()
) -> str | None:
    """Why `time_instants` cannot read the column (None when it can or it is missing)."""
    if spec.column not in df.columns:
        return None
    kind = df.schema[spec.column].dataType
    if time_instants(df, spec, nanos) is not None:
        return None
    shown = f"{where}: column '{spec.column}' has type {kind.simpleString()}"
    if spec.format is not None:
        return f"{shown}: 'format' reads text, remove it for a {kind.simpleString()} column"
    if spec.epoch is not None:
        return f"{shown}, expected numbers since the epoch ('epoch: {spec.epoch}')"
    if isinstance(kind, NUMERIC):
        return (
            f"{shown}, expected timestamp; if it holds numbers since 1970-01-01 UTC, give "
            f"their unit: timestamp: {{column: {spec.column}, epoch: s|ms|us|ns}}"
        )
    return f"{shown}, expected timestamp (or ISO-8601 text)"


#: Spark's error conditions (and JVM I/O failures) that mean an input cannot be read as
#: it is: files that disagree on a column's type, unreadable or missing files, no access.
_READ_FAILURE = re.compile(
    r"\[(?:FAILED_READ_FILE[.\w]*|PATH_NOT_FOUND|PARQUET_TYPE_ILLEGAL|CANNOT_READ_FILE_FOOTER"
    r"|UNABLE_TO_INFER_SCHEMA|DELTA_\w*NOT_FOUND\w*|DELTA_\w*DOES_NOT_EXIST\w*"
    r"|DELTA_MISSING_\w+)\][^\n]*"
    r"|(?:java\.io\.FileNotFoundException|java\.nio\.file\.AccessDeniedException"
    r"|org\.apache\.hadoop\.security\.AccessControlException)[^\n]*"
    r"|Permission denied[^\n]*"
)
_COLUMN = re.compile(r"column \[`?([^\]`]+)`?\]")


def read_failure(err: BaseException, tables: Mapping[str, str]) -> InputError | None:
    """The InputError for a Spark failure that is an input problem, else None.

    `tables`: label → location (path or table name) of every table the run reads. The
    error names the table whose location the message mentions (the longest match), the
    column where Spark names one, and Spark's own one-line reason."""
    if not type(err).__module__.startswith(("py4j", "pyspark")):
        return None  # a Python OSError (say, writing the report) is not Spark's
    text = str(err)
    found = _READ_FAILURE.search(text)
    if found is None:
        return None
    reason = re.sub(r"\s*SQLSTATE: \w+\.?", "", found.group(0)).strip()
    where = [
        (label, loc)
        for label, loc in tables.items()
        if loc and re.search(re.escape(loc.rstrip("/")) + r"(?![\w.-])", text)
    ]
    table = max(where, key=lambda w: len(w[1]), default=None)
    column = _COLUMN.search(text)
    parts = [f"{table[0]} ({table[1]})" if table else "an input table"]
    if column:
        parts.append(f"column '{column.group(1)}'")
    hint = ""
    if "DATA_TYPE_MISMATCH" in reason or "SchemaColumnConvert" in text:
        hint = " (its files disagree on this column's type: rewrite them with one type)"
    elif "CSV header does not conform" in text:
        hint = " (its files' header lines differ: give every file the same columns in order)"
    verb = "access" if table and table[0].startswith("output.") else "read"
    return InputError(f"cannot {verb} {', '.join(parts)}: {reason}{hint}")


@contextmanager
def input_errors(tables: Mapping[str, str]) -> Iterator[None]:
    """Turn Spark's run-time read failures inside the block into `InputError`s naming the
    table and column (`read_failure`); anything else passes through unchanged."""
    try:
        yield
    except ClusterSparkError:
        raise
    except Exception as err:
        mapped = read_failure(err, tables)
        if mapped is None:
            raise
        for note in getattr(err, "__notes__", []):  # e.g. an undo that failed too
            mapped.add_note(note)
        raise mapped from None


def slice_filter(experiment_ids: Iterable[str], analysis_date: dt.date) -> Column:
    """The rows of these experiments on this analysis date, as a Column (ids are literals)."""
    ids = sorted(set(experiment_ids))
    return F.col("experiment_id").isin(ids) & (F.col("analysis_date") == F.lit(analysis_date))


def _sql_string(text: str) -> str:
    """A SQL expression equal to `text` whose source holds only hex digits: its UTF-8
    bytes, decoded by Spark. No quote, backslash or parser setting
    (`spark.sql.parser.escapedStringLiterals`) can change its meaning."""
    return f"decode(unhex('{text.encode().hex()}'), 'UTF-8')"


def experiment_predicate(experiment_ids: Iterable[str]) -> str:
    """The rows of these experiments as the SQL text Delta's `replaceWhere` needs, ids
    hex-encoded (`_sql_string`): no id is ever parsed as SQL."""
    return f"experiment_id IN ({', '.join(_sql_string(e) for e in sorted(set(experiment_ids)))})"


def slice_predicate(experiment_ids: Iterable[str], analysis_date: dt.date) -> str:
    """`slice_filter` as the SQL text Delta's `replaceWhere` needs: ids are hex-encoded
    (`_sql_string`), the date is an ISO literal, so no id is ever parsed as SQL."""
    day = analysis_date.isoformat()
    return f"{experiment_predicate(experiment_ids)} AND analysis_date = DATE'{day}'"


# Delta's Connect client (the `connect` extra), when installed: Delta's commit conflicts on
# any Spark Connect session, the user's own too, then arrive as `delta.exceptions` classes.
with contextlib.suppress(ImportError):
    import delta.connect.exceptions  # noqa: F401

#: Commit conflicts that a retry resolves: another writer committed first (e.g. both
#: created the table, or wrote other experiments' partitions at the same time).
CONFLICTS = (
    delta_errors.DeltaConcurrentModificationException,
    delta_errors.ConcurrentWriteException,
    delta_errors.MetadataChangedException,
    delta_errors.ProtocolChangedException,
    delta_errors.ConcurrentAppendException,
    delta_errors.ConcurrentDeleteReadException,
    delta_errors.ConcurrentTransactionException,
)


def _location(target: Location | str) -> Location:
    """A `Location`; a plain string is a path (the config's own rule)."""
    return Location.model_validate(target)


def write_slice(
    df: DataFrame,
    target: Location | str,
    experiment_ids: Iterable[str],
    analysis_date: dt.date,
    attempts: int = 5,
) -> None:
    """Atomically replace the rows of these experiments on this analysis date (a small
    frame: it is written by one task) in the Delta table at `target` (a path, or a catalog
    table created on first write).

    One Delta commit: readers see the old slice or the new one, never a mix, and a rerun
    leaves exactly one set of rows. The table is partitioned by `experiment_id`, so writers
    of different experiments touch disjoint files; a commit conflict (two first writers
    creating the table, say) is retried, which is safe because the write is idempotent.
    Under Spark Connect the conflicts are recognised through Delta's Connect client
    (imported above). Raises InputError naming the table when Spark refuses the write (a
    missing schema, no permission, a location that is not a Delta table).
    """
    target = _location(target)
    df = df.coalesce(1)  # group-level rows: one task, one file per experiment partition
    if target.table is not None:
        write = _table_write(df, target.table, experiment_ids, analysis_date)
    else:
        write = _path_write(df, target.path, experiment_ids, analysis_date)
    for attempt in range(1, attempts + 1):
        try:
            write()
            return
        except (*CONFLICTS, AnalysisException) as err:
            retry = isinstance(err, CONFLICTS) or _CREATED_MEANWHILE in str(err)
            if not retry:
                raise InputError(f"cannot write Delta {target}: {spark_message(err)}") from None
            if attempt == attempts:
                raise
            time.sleep(random.uniform(0.5, 2.0) * attempt)


#: Another writer created the catalog table between our existence check and our create.
_CREATED_MEANWHILE = "TABLE_OR_VIEW_ALREADY_EXISTS"


def _path_write(
    df: DataFrame, path: str, experiment_ids: Iterable[str], analysis_date: dt.date
) -> Callable[[], None]:
    """A Delta path: `replaceWhere`, whose predicate is SQL text (`slice_predicate`)."""
    writer = (
        df.write.format("delta")
        .mode("overwrite")
        .option("replaceWhere", slice_predicate(experiment_ids, analysis_date))
        .option("mergeSchema", "true")  # new nullable columns are added, never dropped
        .partitionBy("experiment_id")
    )
    return lambda: writer.save(path)


def _table_write(
    df: DataFrame, name: str, experiment_ids: Iterable[str], analysis_date: dt.date
) -> Callable[[], None]:
    """A catalog table: created by the first write (partitioned by experiment_id), then
    overwritten by condition (`DataFrameWriterV2.overwrite`, the slice as a Column; Delta
    runs it as a replaceWhere and checks every written row lies in the slice)."""
    spark = df.sparkSession
    writer = df.writeTo(name).option("mergeSchema", "true")

    def write() -> None:
        if spark.catalog.tableExists(name):
            writer.overwrite(slice_filter(experiment_ids, analysis_date))
        else:
            writer.using("delta").partitionedBy(F.col("experiment_id")).create()

    return write


@dataclass(frozen=True)
class _Before:
    """A table's slice as it was before a run wrote it: its rows and their schema, or
    `rows=None` when the table did not exist yet."""

    target: Location
    schema: T.StructType | None
    rows: list | None


class SliceWrites:
    """The slice writes of one run, undone together when the run fails.

    Delta commits one table at a time; a run writes three (staging, diagnostics, results).
    Before each write, the slice it replaces is read (group-level rows: a few per metric
    and variant; a small read of the table); `undo` writes those rows back, last table
    first, so a failed run leaves every table's rows as they were. A table is listed for
    undo before its write, so a commit that lands while the call still fails (a dropped
    Connect stream) is undone too. Other slices are not touched, so concurrent runs of other
    experiments or dates are safe; two concurrent runs of the same slice are not (the last
    writer wins, and an undo restores the rows read before its own write). A table the run
    created is left empty. Only the DataFrame API and Delta's data source are used: no time
    travel lookup through `DeltaTable`, whose Spark Connect form needs Delta's server plugin.

    Used as a context manager, a failure inside undoes every write made so far; nested
    blocks over the same instance are safe (what is undone is forgotten).
    """

    def __init__(
        self, spark: SparkSession, experiment_ids: Iterable[str], analysis_date: dt.date
    ) -> None:
        self.spark, self.ids, self.date = spark, sorted(set(experiment_ids)), analysis_date
        self.written: list[_Before] = []

    def __enter__(self) -> SliceWrites:
        return self

    def __exit__(self, kind: type | None, err: BaseException | None, tb: object) -> None:
        if err is None:
            return
        try:
            self.undo()
        except Exception as undo_err:  # keep the original error; say what is left
            err.add_note(f"undoing the run's writes failed too: {undo_err!r}")

    def write(self, df: DataFrame, target: Location | str) -> None:
        """Replace this run's slice of `target` with `df` (`write_slice`), keeping the
        slice's previous rows for `undo`."""
        target = _location(target)
        existing = existing_table(self.spark, target)
        if existing is None:
            before = _Before(target, None, None)
        else:
            rows = existing.where(slice_filter(self.ids, self.date))
            before = _Before(target, existing.schema, rows.collect())
        self.written.append(before)
        write_slice(df, target, self.ids, self.date)

    def undo(self) -> None:
        """Restore every written table, last first; a table that cannot be restored stays
        listed (a later `undo` retries it) and is named in the error raised at the end."""
        failed: list[tuple[_Before, Exception]] = []
        for before in reversed(self.written):
            try:
                self._restore(before)
            except Exception as err:  # go on with the other tables
                failed.append((before, err))
        self.written = [before for before, _ in reversed(failed)]
        if failed:
            raise RuntimeError(
                "could not give these tables their slice back: "
                + "; ".join(f"{b.target} ({err!r})" for b, err in failed)
            )

    def _restore(self, before: _Before) -> None:
        if before.rows is None:  # the run created the table: empty its slice
            old = read_table(self.spark, before.target).where(F.lit(False))
        else:
            old = self.spark.createDataFrame(before.rows, before.schema)
        write_slice(old, before.target, self.ids, self.date)


#: Error conditions of a read that mean: there is no table at this location yet.
_ABSENT = (
    "PATH_NOT_FOUND",
    "DELTA_PATH_DOES_NOT_EXIST",
    "DELTA_MISSING_DELTA_TABLE",
    "TABLE_OR_VIEW_NOT_FOUND",
    "DELTA_TABLE_NOT_FOUND",
)


def existing_table(spark: SparkSession, target: Location) -> DataFrame | None:
    """The Delta table at `target`, or None when there is none yet; InputError when the
    location holds something Spark cannot read as a table."""
    try:
        return read_table(spark, target)
    except InputError as err:
        if any(f"[{cond}" in str(err) for cond in _ABSENT):
            return None
        raise


def read_table(spark: SparkSession, target: Location | str) -> DataFrame:
    """An output Delta table; InputError naming it when it cannot be read."""
    target = _location(target)
    try:
        if target.table is not None:
            df = spark.read.table(target.table)
        else:
            df = spark.read.format("delta").load(target.path)
        df.schema  # noqa: B018 (resolved now: under Spark Connect reads are lazy)
        return df
    except AnalysisException as err:
        raise InputError(f"cannot read Delta {target}: {spark_message(err)}") from None


def read_slice(
    spark: SparkSession,
    target: Location | str,
    experiment_ids: Iterable[str],
    analysis_date: dt.date,
) -> DataFrame:
    """The rows of these experiments on this analysis date of an output table (lazy);
    InputError naming it when it cannot be read."""
    return read_table(spark, target).where(slice_filter(experiment_ids, analysis_date))


def literal_frame(
    spark: SparkSession, rows: Iterable[tuple], columns: list[tuple[str, str]]
) -> DataFrame:
    """A small DataFrame of literal rows, built inside the JVM.

    `spark.createDataFrame` of a Python list is scanned through Python worker processes
    (a `Scan ExistingRDD` in the plan); literals in `inline(array(struct, …))` are not.
    `columns` are (name, Spark SQL type) pairs.
    """

    def struct(row: tuple) -> Column:
        if len(row) != len(columns):
            raise ValueError(f"row {row!r} does not have {len(columns)} values")
        return F.struct(
            *[F.lit(v).cast(kind).alias(name) for v, (name, kind) in zip(row, columns, strict=True)]
        )

    structs = [struct(tuple(r)) for r in rows]
    if not structs:
        empty = [F.lit(None).cast(kind).alias(name) for name, kind in columns]
        return spark.range(0).select(*empty)
    return spark.range(1).select(F.inline(F.array(*structs)))
