"""cluster_spark: delta-method analysis of cluster experiments on Apache Spark and Delta Lake.

The notebook API (README, "Notebook API"):

    import cluster_spark as cs

    config = cs.load_config("conf/x.yaml")               # or a dict; validated, no Spark
    results = cs.analyze(spark, config, "2026-03-09")    # a Spark DataFrame
    results.toPandas()
    html = cs.report(spark, config, "2026-03-09")        # displayHTML(html) on Databricks

`import cluster_spark` does not import pyspark; the functions do, when called.
"""

from cluster_spark.api import analyze, load_config, report
from cluster_spark.config import Config
from cluster_spark.errors import (
    ClusterSparkError,
    ClusterSparkWarning,
    ConfigError,
    DataQualityError,
    InputError,
    UsageError,
)

__version__ = "0.1.0"

__all__ = [
    "ClusterSparkError",
    "ClusterSparkWarning",
    "Config",
    "ConfigError",
    "DataQualityError",
    "InputError",
    "UsageError",
    "__version__",
    "analyze",
    "load_config",
    "report",
]
