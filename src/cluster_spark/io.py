"""All reads and writes of tables: input checks with clear errors, and Delta writes that
replace one (experiments × analysis date) slice atomically (`replaceWhere`), so reruns
never duplicate rows, and `SliceWrites`, which gives a failed run's tables their slices back."""

from __future__ import annotations

import datetime as dt
import random
import re
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

from delta import exceptions as delta_errors
from delta.tables import DeltaTable
from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cluster_spark.config import Table
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


def read_table(spark: SparkSession, table: Table) -> DataFrame:
    """Read a Delta/Parquet table by path or metastore name; InputError if it is missing."""
    try:
        if table.table is not None:
            return spark.read.table(table.table)
        return spark.read.format(table.format).load(table.path)
    except AnalysisException as err:
        raise InputError(
            f"cannot read {table.format} {describe(table)}: {err.getMessage()}"
        ) from None


def check_columns(df: DataFrame, required: Mapping[str, str], where: str) -> None:
    """Raise InputError if a required column is missing or has a type of the wrong kind."""
    fields = {f.name: f.dataType for f in df.schema.fields}
    for column, kind in required.items():
        if column not in fields:
            raise InputError(
                f"{where}: missing column '{column}' (has: {', '.join(sorted(fields))})"
            )
        if not isinstance(fields[column], KINDS[kind]):
            raise InputError(
                f"{where}: column '{column}' has type {fields[column].simpleString()}, "
                f"expected {kind}"
            )


def utc_timestamp(name: str, kind: T.DataType) -> Column:
    """Column `name` as instants, whatever the session's or the machine's time zone:
    a TIMESTAMP is an instant already; a TIMESTAMP_NTZ (wall clock without zone) and a
    DATE (its midnight) are read as UTC. (A plain cast would read them in the session
    time zone, and a DST gap there would even shift them.)"""
    col = F.col(name)
    if isinstance(kind, T.TimestampNTZType):
        day = F.to_date(col)
        return F.timestamp_seconds(F.unix_date(day) * 86400) + (col - day.cast("timestamp_ntz"))
    if isinstance(kind, T.DateType):
        return F.timestamp_seconds(F.unix_date(col) * 86400)
    return col.cast("timestamp")


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


def slice_predicate(experiment_ids: Iterable[str], analysis_date: dt.date) -> str:
    """`slice_filter` as the SQL text Delta's `replaceWhere` needs: ids are hex-encoded
    (`_sql_string`), the date is an ISO literal, so no id is ever parsed as SQL."""
    ids = ", ".join(_sql_string(e) for e in sorted(set(experiment_ids)))
    return f"experiment_id IN ({ids}) AND analysis_date = DATE'{analysis_date.isoformat()}'"


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


def write_slice(
    df: DataFrame,
    path: str,
    experiment_ids: Iterable[str],
    analysis_date: dt.date,
    attempts: int = 5,
    user_metadata: str | None = None,
) -> None:
    """Atomically replace the rows of these experiments on this analysis date (a small
    frame: it is written by one task).

    One Delta commit: readers see the old slice or the new one, never a mix, and a rerun
    leaves exactly one set of rows. The table is partitioned by `experiment_id`, so writers
    of different experiments touch disjoint files; a commit conflict (two first writers
    creating the table, say) is retried, which is safe because the write is idempotent.
    """
    # The frames written are group-level rows (a few per metric): one task and one file
    # per experiment partition, not one per shuffle partition.
    writer = (
        df.coalesce(1)
        .write.format("delta")
        .mode("overwrite")
        .option("replaceWhere", slice_predicate(experiment_ids, analysis_date))
        .option("mergeSchema", "true")  # new nullable columns are added, never dropped
        .partitionBy("experiment_id")
    )
    if user_metadata:
        writer = writer.option("userMetadata", user_metadata)  # shown in the table history
    for attempt in range(1, attempts + 1):
        try:
            writer.save(path)
            return
        except CONFLICTS:
            if attempt == attempts:
                raise
            time.sleep(random.uniform(0.5, 2.0) * attempt)


class SliceWrites:
    """The slice writes of one run, undone together when the run fails.

    Delta commits one table at a time; a run writes three (staging, diagnostics, results).
    `undo` is the compensating write: every table this run wrote gets its slice back as it
    was just before this run's commit (found in the table history by the run's
    `userMetadata` tag and read by time travel), so a failed run leaves the tables' rows as
    they were. Other slices are not touched, so concurrent runs of other experiments or
    dates are safe. A table the run created is left empty. Nothing is read on success.

    Used as a context manager, a failure inside undoes every write made so far; nested
    blocks over the same instance are safe (what is undone is forgotten).
    """

    def __init__(
        self, spark: SparkSession, experiment_ids: Iterable[str], analysis_date: dt.date
    ) -> None:
        self.spark, self.ids, self.date = spark, sorted(set(experiment_ids)), analysis_date
        self.tag = f"cluster_spark-run-{uuid.uuid4().hex}"
        self.written: list[str] = []

    def __enter__(self) -> SliceWrites:
        return self

    def __exit__(self, kind: type | None, err: BaseException | None, tb: object) -> None:
        if err is None:
            return
        try:
            self.undo()
        except Exception as undo_err:  # keep the original error; say what is left
            err.add_note(f"undoing the run's writes failed too: {undo_err!r}")

    def write(self, df: DataFrame, path: str) -> None:
        write_slice(df, path, self.ids, self.date, user_metadata=self.tag)
        self.written.append(path)

    def undo(self) -> None:
        """Restore every written table, last first; a table that cannot be restored stays
        listed (a later `undo` retries it) and is named in the error raised at the end."""
        failed: list[tuple[str, Exception]] = []
        for path in reversed(self.written):
            try:
                self._restore(path)
            except Exception as err:  # go on with the other tables
                failed.append((path, err))
        self.written = [path for path, _ in reversed(failed)]
        if failed:
            raise RuntimeError(
                "could not give these tables their slice back: "
                + "; ".join(f"{path} ({err!r})" for path, err in failed)
            )

    def _restore(self, path: str) -> None:
        rows = slice_filter(self.ids, self.date)
        table = DeltaTable.forPath(self.spark, path)
        ours = table.history().where(F.col("userMetadata") == self.tag).first()["version"]
        if ours == 0:
            table.delete(rows)
            return
        old = self.spark.read.format("delta").option("versionAsOf", ours - 1).load(path)
        write_slice(old.where(rows), path, self.ids, self.date)


def read_slice(
    spark: SparkSession, path: str, experiment_ids: Iterable[str], analysis_date: dt.date
) -> DataFrame:
    try:
        df = spark.read.format("delta").load(path)
    except AnalysisException as err:
        raise InputError(f"cannot read Delta table {path}: {err.getMessage()}") from None
    return df.where(slice_filter(experiment_ids, analysis_date))


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
