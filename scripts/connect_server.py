"""Start a local Spark Connect server with Delta Lake, from the pip PySpark distribution.

    python scripts/connect_server.py --port 15002 [--warehouse DIR] [--master local[2]]

It runs `spark-submit --class org.apache.spark.sql.connect.service.SparkConnectServer`
of the installed PySpark (whose jars include the Connect server) with the Delta jars of
`make jars` and the server-side settings cluster_spark needs (`SERVER_CONF`), waits until
the server accepts connections and prints its URL (`sc://localhost:PORT`); Ctrl-C stops it.
tests/test_connect.py uses `start`/`stop`. On a cluster, the same settings go into the
server's spark-defaults.conf or `start-connect-server.sh --conf` (README, "Spark Connect").
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from cluster_spark.session import DELTA_CONF, LOCAL_CONF, delta_jars

#: What the server needs for cluster_spark: Delta's SQL extension and catalog and UTC
#: (`session.DELTA_CONF`: static settings, so the server's, not the client's), no UI,
#: and the defaults of a local session the library starts itself (`session.LOCAL_CONF`).
SERVER_CONF = {**DELTA_CONF, **LOCAL_CONF, "spark.ui.enabled": "false"}


def _spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


def _delta_jars_or_exit() -> list[str]:
    jars = delta_jars()
    if not jars:
        sys.exit("no Delta jars (CLUSTER_SPARK_JARS or .jars/): run `make jars` first")
    return jars


def start(
    port: int,
    log: Path,
    warehouse: Path | None = None,
    master: str = "local[2]",
    conf: dict[str, str] | None = None,
    timeout: float = 120.0,
) -> subprocess.Popen:
    """The server process, once it accepts connections on `port`; its output goes to `log`.
    Raises RuntimeError (with the log's tail) when it exits or does not open the port."""
    home = _spark_home()
    settings = {**SERVER_CONF, "spark.connect.grpc.binding.port": str(port), **(conf or {})}
    if warehouse is not None:
        settings["spark.sql.warehouse.dir"] = str(warehouse)
    command = [
        str(home / "bin" / "spark-submit"),
        "--class",
        "org.apache.spark.sql.connect.service.SparkConnectServer",
        "--master",
        master,
        "--jars",
        ",".join(_delta_jars_or_exit()),
        *[arg for key, value in settings.items() for arg in ("--conf", f"{key}={value}")],
        "spark-internal",
    ]
    env = {**os.environ, "SPARK_HOME": str(home)}
    env.pop("SPARK_REMOTE", None)
    with log.open("wb") as out:  # the child keeps its own handle
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            socket.create_connection(("localhost", port), timeout=1).close()
            return process
        except OSError:
            time.sleep(0.5)
    stop(process)
    tail = log.read_text(errors="replace")[-3000:]
    raise RuntimeError(f"the Spark Connect server did not start on port {port}:\n{tail}")


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=15002)
    parser.add_argument("--warehouse", type=Path, help="spark.sql.warehouse.dir")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--log", type=Path, default=Path("out/connect-server.log"))
    args = parser.parse_args()
    args.log.parent.mkdir(parents=True, exist_ok=True)
    process = start(args.port, args.log, args.warehouse, args.master)
    print(f"Spark Connect server with Delta: sc://localhost:{args.port} (log: {args.log})")
    try:
        process.wait()
    except KeyboardInterrupt:
        stop(process)


if __name__ == "__main__":
    main()
