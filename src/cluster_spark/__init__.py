"""cluster_spark: delta-method analysis of cluster experiments on Apache Spark and Delta Lake."""

__version__ = "0.1.0"
