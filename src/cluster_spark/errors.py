"""One error hierarchy: every failure a user can cause names what was wrong.

Each kind has its own exit code of the command line, from BSD's sysexits.h, so a
scheduler can tell a bad config from bad data: usage 64, data quality 65, input 66,
config 78 (an unexpected failure exits 1).
"""

#: Exit code of a command-line usage error (unknown option, bad --date): EX_USAGE.
EXIT_USAGE = 64


class ClusterSparkError(Exception):
    """Base class of cluster_spark's own errors."""

    exit_code = 1


class UsageError(ClusterSparkError, ValueError):
    """The request does not fit the config: an analysis date before an experiment's start,
    a malformed `--conf`. Exit 64, as argparse's own usage errors."""

    exit_code = EXIT_USAGE


class ConfigError(ClusterSparkError, ValueError):
    """The configuration is invalid (names the file, key, value and rule). Exit 78."""

    exit_code = 78  # EX_CONFIG


class InputError(ClusterSparkError, ValueError):
    """An input table is missing, unreadable, lacks a column, or has a column of the wrong
    type (names the table and column). Exit 66."""

    exit_code = 66  # EX_NOINPUT


class DataQualityError(ClusterSparkError):
    """The data breaks the design and the configured policy is to fail. Exit 65."""

    exit_code = 65  # EX_DATAERR


class ClusterSparkWarning(UserWarning):
    """Something the user should know about a run that succeeded: a filter that matches
    no event, an analysis capped at the experiment's end, an experiment without results."""
