"""All reads and writes of tables: input checks with clear errors, and Delta writes that
replace one (experiments × analysis date) slice atomically (`replaceWhere`), so reruns
never duplicate rows and a failed run leaves the previous results in place."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping

from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from cluster_spark.config import Table
from cluster_spark.errors import InputError

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


def slice_predicate(experiment_ids: Iterable[str], analysis_date: dt.date) -> str:
    ids = ", ".join("'" + e.replace("'", "''") + "'" for e in sorted(set(experiment_ids)))
    return f"experiment_id IN ({ids}) AND analysis_date = DATE'{analysis_date.isoformat()}'"


def write_slice(
    df: DataFrame, path: str, experiment_ids: Iterable[str], analysis_date: dt.date
) -> None:
    """Atomically replace the rows of these experiments on this analysis date.

    One Delta commit: readers see the old slice or the new one, never a mix, and a rerun
    leaves exactly one set of rows. The table is partitioned by `experiment_id`.
    """
    (
        df.write.format("delta")
        .mode("overwrite")
        .option("replaceWhere", slice_predicate(experiment_ids, analysis_date))
        .option("mergeSchema", "true")  # new nullable columns are added, never dropped
        .partitionBy("experiment_id")
        .save(path)
    )


def read_slice(
    spark: SparkSession, path: str, experiment_ids: Iterable[str], analysis_date: dt.date
) -> DataFrame:
    try:
        df = spark.read.format("delta").load(path)
    except AnalysisException as err:
        raise InputError(f"cannot read Delta table {path}: {err.getMessage()}") from None
    return df.where(slice_predicate(experiment_ids, analysis_date))
