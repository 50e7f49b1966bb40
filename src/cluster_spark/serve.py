"""`cluster-spark serve`: a warm local Spark Connect server with Delta Lake, from the pip
PySpark distribution, that `cluster-spark ... --remote sc://localhost:PORT`, `SPARK_REMOTE`
and `cs.analyze` with a Connect session reuse, so repeated runs do not pay the JVM's start
and warm-up each time (issue #30 item 4).

    cluster-spark serve [--port 15002] [--master local[*]] [--warehouse DIR] [--conf K=V]

It runs `spark-submit --class org.apache.spark.sql.connect.service.SparkConnectServer`
of the installed PySpark (whose jars include the Connect server) with the Delta jars
(`session.delta_jars`) and the server-side settings cluster_spark needs (`SERVER_CONF`:
Delta's extension and catalog, UTC, a local session's defaults), waits until the server
accepts connections and prints its URL; Ctrl-C stops it. A client on the same machine
whose inputs are a few MiB gets the small-input settings for its own session
(`session.SMALL_INPUT_CONF`, runtime settings). tests/test_connect.py uses `start`/`stop`.
On a cluster, the same settings go into the server's spark-defaults.conf or
`start-connect-server.sh --conf` (README, "Spark Connect").
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from cluster_spark.errors import UsageError
from cluster_spark.session import DELTA_CONF, LOCAL_CONF, delta_jars

#: What the server needs for cluster_spark: Delta's SQL extension and catalog and UTC
#: (`session.DELTA_CONF`: static settings, so the server's, not the client's), no UI,
#: and the defaults of a local session the library starts itself (`session.LOCAL_CONF`).
SERVER_CONF = {**DELTA_CONF, **LOCAL_CONF, "spark.ui.enabled": "false"}


def _spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


def _delta_jars() -> list[str]:
    jars = delta_jars()
    if not jars:
        raise UsageError("no Delta jars (CLUSTER_SPARK_JARS or .jars/): run `make jars` first")
    return jars


def start(
    port: int,
    log: Path,
    warehouse: Path | None = None,
    master: str = "local[2]",
    conf: dict[str, str] | None = None,
    timeout: float = 120.0,
    host: str = "127.0.0.1",
) -> subprocess.Popen:
    """The server process, once it accepts connections on `port`; its output goes to `log`.
    It listens on `host` only: this machine's loopback by default (a Connect server runs
    any code a client sends, with no login). Raises UsageError (with the log's tail) when
    it exits or does not open the port; Ctrl-C while it starts stops it."""
    home = _spark_home()
    settings = {
        **SERVER_CONF,
        "spark.connect.grpc.binding.address": host,
        "spark.connect.grpc.binding.port": str(port),
        **(conf or {}),
    }
    if warehouse is not None:
        settings["spark.sql.warehouse.dir"] = str(warehouse)
    command = [
        str(home / "bin" / "spark-submit"),
        "--class",
        "org.apache.spark.sql.connect.service.SparkConnectServer",
        "--master",
        master,
        "--jars",
        ",".join(_delta_jars()),
        *[arg for key, value in settings.items() for arg in ("--conf", f"{key}={value}")],
        "spark-internal",
    ]
    env = {**os.environ, "SPARK_HOME": str(home)}
    env.pop("SPARK_REMOTE", None)
    with log.open("wb") as out:  # the child keeps its own handle
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            if listening(port):
                return process
            time.sleep(0.5)
    except BaseException:  # Ctrl-C or SIGTERM while it starts
        stop(process)
        raise
    stop(process)
    tail = log.read_text(errors="replace")[-3000:]
    raise UsageError(f"the Spark Connect server did not start on port {port}:\n{tail}")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def serve(
    port: int,
    log: Path,
    warehouse: Path | None = None,
    master: str = "local[*]",
    conf: dict[str, str] | None = None,
    host: str = "127.0.0.1",
) -> int:
    """Start the server, print its URL and wait until it exits, or Ctrl-C or SIGTERM
    stops it (the server with it)."""
    if not 0 < port < 65536:
        raise UsageError(f"--port {port}: a TCP port is 1 to 65535")
    log.parent.mkdir(parents=True, exist_ok=True)
    if listening(port):
        raise UsageError(f"port {port} is taken (another server?): choose one with --port")
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the server too
    try:
        process = start(port, log, warehouse, master, conf, host=host)
    except KeyboardInterrupt:
        return 0
    url = f"sc://localhost:{port}"
    print(f"Spark Connect server with Delta: {url} (log: {log}; Ctrl-C stops it)", flush=True)
    print(f"use it: cluster-spark run --remote {url} ..., or export SPARK_REMOTE={url}", flush=True)
    try:
        return process.wait()
    except KeyboardInterrupt:
        stop(process)
        return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def listening(port: int) -> bool:
    try:
        socket.create_connection(("localhost", port), timeout=1).close()
        return True
    except OSError:
        return False
