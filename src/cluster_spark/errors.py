"""One error hierarchy: every failure a user can cause names what was wrong."""


class ClusterSparkError(Exception):
    """Base class of cluster_spark's own errors."""


class ConfigError(ClusterSparkError, ValueError):
    """The configuration is invalid (names the file, key, value and rule)."""


class InputError(ClusterSparkError, ValueError):
    """An input table is missing, lacks a column, or has a column of the wrong type."""


class DataQualityError(ClusterSparkError):
    """The data breaks the design and the configured policy is to fail."""
