"""SparkSession with Delta Lake, built at the edge (CLI, jobs, tests) and passed in.

No master is set here, so `spark-submit --master ...` decides; `local_master` is only a
fallback for runs that are not launched by spark-submit (the CLI, pytest). With a Spark
Connect URL (`remote`, or the `SPARK_REMOTE` environment variable) the session is a Connect
client (`connect_spark`): no master, no jars, no JVM on this side.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from pyspark.sql import SparkSession

from cluster_spark.errors import UsageError

DELTA_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
    "spark.sql.session.timeZone": "UTC",
}


#: Defaults of a local session the library starts itself (outside spark-submit, with a
#: `local[...]` master): a few shuffle partitions instead of Spark's 200, which cost more
#: than the work on a laptop-sized input, and no progress bars flooding the terminal.
#: `extra_conf` overrides them; nothing is set for other masters or under spark-submit.
LOCAL_CONF = {
    "spark.sql.shuffle.partitions": "8",
    "spark.databricks.delta.snapshotPartitions": "4",
    "spark.ui.showConsoleProgress": "false",
}


#: Size (bytes on local disk, over the tables a command reads) up to which a local
#: session the CLI starts also gets SMALL_INPUT_CONF. At the demo's 4.9 MiB of inputs the
#: two settings took the same time (docs/benchmarks.md, "Small inputs").
SMALL_INPUT_BYTES = 4 * 2**20

#: Small inputs: plans run as built, one shuffle partition, joins in the query's own job,
#: expressions interpreted. AQE re-plans after each shuffle stage and runs each stage as
#: its own Spark job, and each broadcast the planner chooses is a job too (a tiny run: 50
#: jobs, 14 without either). Code generation compiles Java classes per query (Janino),
#: which costs more than evaluating a few thousand rows. `spark.sql.codegen.factoryMode`
#: is an internal Spark setting, "not supposed to be set by end users": Spark's own test
#: suites run its interpreted evaluators with it; here it took a tiny run in a warm JVM
#: from 13.5 s to 10.4 s. `--conf` sets any of these back, key by key.
SMALL_INPUT_CONF = {
    "spark.sql.shuffle.partitions": "1",
    "spark.sql.adaptive.enabled": "false",
    "spark.sql.autoBroadcastJoinThreshold": "-1",
    "spark.sql.codegen.wholeStage": "false",
    "spark.sql.codegen.factoryMode": "NO_CODEGEN",
}


def _raise(err: OSError) -> None:
    raise err


def local_bytes(
    paths: Iterable[str | None], limit: int | None = None, absent_empty: bool = False
) -> int | None:
    """Total size of the files under these paths (each a file or a directory tree), or
    None unless every one is a path on this machine's file system that can be listed: no
    catalog table (None), no other URI scheme, no glob, nothing missing (`absent_empty`: a
    missing path counts as empty, for output tables not written yet), nothing unreadable.
    Stops counting once past `limit`. Lists files only (no Spark); a Delta table's size
    includes the files of its older versions."""
    total = 0
    try:
        for text in paths:
            if text is None:
                return None
            url = urlparse(text)
            if url.scheme not in ("", "file"):
                return None
            path = Path(url2pathname(url.path) if url.scheme else text)
            if path.is_file():
                total += path.stat().st_size
            elif path.is_dir():
                for top, _, files in os.walk(path, onerror=_raise):
                    total += sum(os.stat(os.path.join(top, f)).st_size for f in files)
                    if limit is not None and total > limit:
                        return total
            elif not (absent_empty and not os.path.lexists(path)):
                return None
    except OSError:  # unreadable, or removed while listed (a vacuum)
        return None
    return total


def delta_jars() -> list[str]:
    """Delta Lake jars fetched by `make jars` (or the directory in CLUSTER_SPARK_JARS)."""
    jar_dir = Path(os.environ.get("CLUSTER_SPARK_JARS", Path(__file__).parents[2] / ".jars"))
    return sorted(str(p) for p in jar_dir.glob("*.jar"))


def _submitted() -> bool:
    # spark-submit starts the Python driver with a gateway already running and a master set.
    return "PYSPARK_GATEWAY_PORT" in os.environ


def local_master_here(local_master: str | None) -> bool:
    """Whether a classic session built with this fallback master runs in local mode: not
    under spark-submit (whose master wins), and `local_master` is `local[...]`."""
    return not _submitted() and (local_master or "").startswith("local")


def session_conf(
    local: bool, input_bytes: int | None = None, extra_conf: dict[str, str] | None = None
) -> dict[str, str]:
    """The settings `build_spark` gives a classic session: DELTA_CONF; LOCAL_CONF when
    it starts a local one, and SMALL_INPUT_CONF then too when `input_bytes` is at most
    SMALL_INPUT_BYTES; `extra_conf` wins over all of them."""
    small = local and input_bytes is not None and input_bytes <= SMALL_INPUT_BYTES
    return {
        **DELTA_CONF,
        **(LOCAL_CONF if local else {}),
        **(SMALL_INPUT_CONF if small else {}),
        **(extra_conf or {}),
    }


def build_spark(
    app_name: str = "cluster_spark",
    local_master: str | None = None,
    extra_conf: dict[str, str] | None = None,
    remote: str | None = None,
    input_bytes: int | None = None,
) -> SparkSession:
    """Create (or get) a Delta-enabled SparkSession.

    `remote` (else `SPARK_REMOTE`): a Spark Connect URL, `sc://HOST:PORT`; see
    `connect_spark`. Otherwise a classic session: `local_master` is used only when no
    master was given by spark-submit or the environment; when the jars are already on the
    classpath (spark-submit --jars or --packages), nothing is added. Settings:
    `session_conf`, where `input_bytes` is the inputs' size (`local_bytes`) if known; a
    Connect session with a small `input_bytes` (a server on this machine: `local_server`)
    gets SMALL_INPUT_CONF as its own runtime settings.
    """
    remote = remote or os.environ.get("SPARK_REMOTE")
    if remote:
        small = input_bytes is not None and input_bytes <= SMALL_INPUT_BYTES
        return connect_spark(remote, {**(SMALL_INPUT_CONF if small else {}), **(extra_conf or {})})
    builder = SparkSession.builder.appName(app_name)
    submitted = _submitted()
    starts = SparkSession.getActiveSession() is None  # else getOrCreate returns that one
    local = starts and local_master_here(local_master)
    conf = session_conf(local, input_bytes, extra_conf)
    for key, value in conf.items():
        builder = builder.config(key, value)
    if not submitted:
        jars = delta_jars()
        if jars:
            builder = builder.config("spark.jars", ",".join(jars))
        if local_master:
            builder = builder.master(local_master)
    return builder.getOrCreate()


def local_server(remote: str | None) -> bool:
    """Whether `remote` is a Connect server on this machine (`cluster-spark serve`), which
    reads the same files as this process."""
    host = urlparse(remote).hostname if remote else None
    return host in ("localhost", "127.0.0.1", "::1")


def connect_spark(remote: str, conf: dict[str, str] | None = None) -> SparkSession:
    """A Spark Connect session to `remote` (`sc://HOST:PORT[/;token=…]`).

    The server brings Delta: its jars (or runtime) and the settings in `DELTA_CONF`
    (`spark.sql.extensions`, `spark.sql.catalog.spark_catalog`) are the server's, as is
    the master (README, "Spark Connect"). Delta's Connect server plugin is not needed: the
    library reads and writes through the DataFrame API and Delta's data source only. This
    side sets the session's time zone to UTC and `conf` (runtime SQL settings only; a static
    one is refused by the server), and imports Delta's Connect client, which makes Delta's
    commit conflicts arrive as `delta.exceptions` classes, so `io.write_slice` retries them.
    """
    try:
        import delta.connect.exceptions  # noqa: F401 (registers Delta's exception classes)
    except ImportError as err:
        raise UsageError(
            f"Spark Connect ({remote}) needs PySpark's Connect client: "
            f"pip install 'cluster-spark[connect]' ({err})"
        ) from None
    _reachable(remote)
    try:
        spark = SparkSession.builder.remote(remote).getOrCreate()
        spark.conf.set("spark.sql.session.timeZone", "UTC")
    except Exception as err:
        raise UsageError(f"cannot use the Spark Connect server {remote}: {err}") from None
    for key, value in (conf or {}).items():
        spark.conf.set(key, value)
    return spark


def _reachable(remote: str, timeout: float = 10.0) -> None:
    """UsageError unless `remote` is an `sc://HOST[:PORT]…` URL whose host accepts a
    connection (PySpark would otherwise retry for minutes before saying so)."""
    url = urlparse(remote)
    if url.scheme != "sc" or not url.hostname:
        raise UsageError(f"a Spark Connect URL looks like sc://HOST:PORT, not {remote!r}")
    port = url.port or 15002  # Spark Connect's default port
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as err:
        raise UsageError(
            f"cannot reach the Spark Connect server {url.hostname}:{port} ({remote}): "
            f"{err.strerror or err}"
        ) from None
