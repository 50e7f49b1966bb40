"""spark-submit on a real Spark standalone cluster on 127.0.0.1: one master, two workers.

The cluster is started from the pip pyspark's `bin/spark-class` (no REST server, free ports,
1 core / 1 GiB per worker). The demo data is analysed once in local mode (the test's session)
and then by `scripts/submit.sh --master spark://...` (spark-submit + `--jars` + `--py-files
dist/cluster_spark.zip`) into other roots; the results tables must agree to ~1e-9. The fault
test SIGKILLs one worker (and so its executor) while the staging job runs: the job must
still finish with the same results, and the test prints what the driver saw.

Every process started here is in its own process group and is killed in the fixture
finalizers, even on failure.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pyspark
import pytest
import yaml

from cluster_spark import demo, pipeline
from cluster_spark.config import load_config

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "conf" / "demo.yaml"

SUBMIT = ROOT / "scripts" / "submit.sh"
SPARK_HOME = Path(pyspark.__file__).resolve().parent
N_ORGS = 300
# Short jobs on 2 cores: C1 only and a serial GC roughly halve JVM warm-up (35 s vs 85 s).
FAST_JVM = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
SUBMIT_CONF = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.cores.max": "2",  # and wait for both executors before the first task:
    "spark.scheduler.minRegisteredResourcesRatio": "1.0",
    "spark.scheduler.maxRegisteredResourcesWaitingTime": "60s",
    "spark.executor.memory": "768m",
    "spark.executor.extraJavaOptions": FAST_JVM,
    "spark.sql.shuffle.partitions": "4",
    "spark.default.parallelism": "4",
    "spark.databricks.delta.snapshotPartitions": "2",
}
SUBMIT_TIMEOUT = 240
# WARN, but INFO for the scheduler and the standalone deploy classes: the fault test reads
# task starts/ends, executor placement and losses from the driver's log. A logger set here
# keeps its level even if the job calls setLogLevel (which sets the root logger only).
LOG4J2 = """\
rootLogger.level = warn
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n%ex
logger.scheduler.name = org.apache.spark.scheduler
logger.scheduler.level = info
logger.deploy.name = org.apache.spark.deploy
logger.deploy.level = info
"""


def _config(root: Path) -> Path:
    """The demo config without `incremental` (written by `demo_data` beside every root):
    these tests are about spark-submit on a cluster; the incremental state is tested in
    local mode, through Connect and by the Airflow DAG."""
    return root.parent / "demo.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYSPARK_GATEWAY", "_PYSPARK", "SPARK_"))
    }
    env.update(SPARK_HOME=str(SPARK_HOME), SPARK_LOCAL_IP="127.0.0.1", **extra)
    return env


def _kill_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left of it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except FileNotFoundError:
        return f"({path} missing)"


@dataclass
class Worker:
    name: str
    port: int
    proc: subprocess.Popen
    log: Path

    @property
    def worker_id_suffix(self) -> str:  # worker ids end in "-<host>-<port>"
        return f"-127.0.0.1-{self.port}"


@dataclass
class Cluster:
    """A standalone master and workers, each `bin/spark-class` in its own process group."""

    workdir: Path
    master_port: int = field(default_factory=_free_port)
    webui_port: int = field(default_factory=_free_port)
    procs: list[subprocess.Popen] = field(default_factory=list)
    workers: dict[str, Worker] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"spark://127.0.0.1:{self.master_port}"

    def _spawn(self, args: list[str], log: Path, **env: str) -> subprocess.Popen:
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [str(SPARK_HOME / "bin" / "spark-class"), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                env=_env(**env),
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    @property
    def conf_dir(self) -> Path:
        """SPARK_CONF_DIR of every process here: no spark-defaults or spark-env, only a
        log4j2.properties."""
        return self.workdir / "conf"

    def start(self, n_workers: int = 2) -> None:
        """Spawn the master and the workers; `ensure_workers` waits for them."""
        conf_dir = self.conf_dir
        conf_dir.mkdir(parents=True, exist_ok=True)
        (conf_dir / "log4j2.properties").write_text(LOG4J2)
        props = self.workdir / "daemon.properties"
        props.write_text("spark.master.rest.enabled false\nspark.ui.enabled false\n")
        daemon_env = {"SPARK_CONF_DIR": str(conf_dir), "SPARK_DAEMON_JAVA_OPTS": FAST_JVM}
        self.master = self._spawn(
            [
                "org.apache.spark.deploy.master.Master",
                "--host", "127.0.0.1",
                "--port", str(self.master_port),
                "--webui-port", str(self.webui_port),
                "--properties-file", str(props),
            ],
            self.workdir / "master.log",
            **daemon_env,
        )  # fmt: skip
        self._props, self._daemon_env = props, daemon_env
        for i in range(n_workers):
            self.start_worker(f"w{i + 1}")

    def start_worker(self, name: str) -> Worker:
        port, work = _free_port(), self.workdir / name
        work.mkdir(parents=True, exist_ok=True)
        log = self.workdir / f"{name}-{port}.log"
        proc = self._spawn(
            [
                "org.apache.spark.deploy.worker.Worker",
                "--host", "127.0.0.1",
                "--port", str(port),
                "--webui-port", str(_free_port()),
                "--cores", "1",
                "--memory", "1g",
                "--work-dir", str(work),
                "--properties-file", str(self._props),
                self.url,
            ],
            log,
            **self._daemon_env,
        )  # fmt: skip
        self.workers[name] = Worker(name, port, proc, log)
        return self.workers[name]

    def state(self) -> dict:
        url = f"http://127.0.0.1:{self.webui_port}/json/"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.load(resp)

    def alive_workers(self) -> list[dict]:
        try:
            return [w for w in self.state()["workers"] if w["state"] == "ALIVE"]
        except OSError:
            return []

    def wait_workers(self, n: int, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.alive_workers()) >= n:
                return
            if self.master.poll() is not None:
                break
            time.sleep(0.5)
        logs = "\n".join(f"--- {p.name}\n{_tail(p)}" for p in sorted(self.workdir.glob("*.log")))
        raise AssertionError(f"{n} workers did not register within {timeout}s\n{logs}")

    def ensure_workers(self, n: int = 2) -> None:
        """Replace dead workers (a fault test may have run first); wait until `n` are alive."""
        for name, worker in list(self.workers.items()):
            if worker.proc.poll() is not None:
                self.start_worker(name)
        t0 = time.perf_counter()
        self.wait_workers(n)
        print(f"\n{self.url}: {n} workers alive (waited {time.perf_counter() - t0:.1f}s)")

    def kill_worker(self, name: str) -> None:
        """SIGKILL a worker's process group: the worker JVM and its executor JVMs."""
        os.killpg(self.workers[name].proc.pid, signal.SIGKILL)
        self.workers[name].proc.wait(10)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            _kill_group(proc)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("no java")
    c = Cluster(tmp_path_factory.mktemp("standalone"))
    try:
        c.start(2)  # the JVMs boot while demo_data writes and analyses the demo locally
        yield c
    finally:
        c.stop()


@dataclass
class Demo:
    data: Path
    local_root: Path
    _local: Future

    @property
    def local_results(self) -> dict:
        return self._local.result(timeout=SUBMIT_TIMEOUT)


def _rows(spark, path: str) -> dict[tuple, dict]:
    rows = spark.read.format("delta").load(path).collect()
    out = {(r.experiment_id, r.metric, r.variant, r.dimension, r.slice): r.asDict() for r in rows}
    assert len(out) == len(rows), "duplicate result keys"
    return out


def _local_reference(spark, root: Path) -> dict:
    t0 = time.perf_counter()
    config = load_config(_config(root), root=root)
    pipeline.run(spark, config, demo.ANALYSIS_DATE)
    print(f"\nlocal-mode reference run (in the background): {time.perf_counter() - t0:.1f}s")
    return _rows(spark, config.output.results.path)


@pytest.fixture(scope="module")
def demo_data(cluster, spark, tmp_path_factory):
    """Demo data written once. The local-mode reference analysis runs in a background
    thread of the test session while the first spark-submit runs: on 2 cores the JVMs
    leave enough idle time to overlap them. (`cluster` is asked for first, so that the
    cluster boots while the data is written.)"""
    base = tmp_path_factory.mktemp("demo")
    t0 = time.perf_counter()
    demo.write_demo_data(spark, base, n_orgs=N_ORGS, seed=11)
    print(f"\ndemo data ({N_ORGS} orgs): {time.perf_counter() - t0:.1f}s")
    raw = yaml.safe_load(CONFIG.read_text())
    raw.pop("incremental", None)
    (base / "demo.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    local_root = base / "local"
    local_root.mkdir()
    (local_root / "data").symlink_to(base / "data")
    with ThreadPoolExecutor(1) as pool:
        yield Demo(base / "data", local_root, pool.submit(_local_reference, spark, local_root))


def _new_root(d: Demo, name: str) -> Path:
    root = d.local_root.parent / name
    root.mkdir()
    (root / "data").symlink_to(d.data)
    return root


def _submit_cmd(master: str, root: Path) -> list[str]:
    conf = [a for k, v in SUBMIT_CONF.items() for a in ("--conf", f"{k}={v}")]
    return [
        str(SUBMIT),
        "--master", master,
        "--driver-java-options", FAST_JVM,
        *conf,
        "--",
        "run",
        "--config", str(_config(root)),
        "--date", demo.ANALYSIS_DATE.isoformat(),
        "--root", str(root),
    ]  # fmt: skip


@dataclass
class Submit:
    proc: subprocess.Popen
    log: Path  # spark-submit's stderr: the driver's Spark log
    out: Path  # its stdout: the Python driver's stdout and stderr

    def tails(self, n: int = 60) -> str:
        return f"--- driver stdout\n{_tail(self.out, 30)}\n--- driver log\n{_tail(self.log, n)}"


def _start_submit(cluster: Cluster, root: Path) -> Submit:
    log = root.parent / f"{root.name}.driver.log"
    out = root.parent / f"{root.name}.driver.out"
    with open(log, "wb") as err, open(out, "wb") as std:
        proc = subprocess.Popen(
            _submit_cmd(cluster.url, root),
            stdout=std,
            stderr=err,
            stdin=subprocess.DEVNULL,
            cwd=root,
            env=_env(SUBMIT_ECHO="1", SPARK_CONF_DIR=str(cluster.conf_dir)),
            start_new_session=True,
        )
    cluster.procs.append(proc)  # killed with the cluster if the test fails
    return Submit(proc, log, out)


def _finish(job: Submit, timeout: float = SUBMIT_TIMEOUT) -> str:
    try:
        job.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        _kill_group(job.proc)
        pytest.fail(f"spark-submit did not finish in {timeout:.0f}s\n{job.tails()}")
    assert job.proc.returncode == 0, f"spark-submit exited {job.proc.returncode}\n{job.tails()}"
    return job.out.read_text(errors="replace")


def assert_same_results(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key, exp in expected.items():
        act = actual[key]
        for col, want in exp.items():
            if col == "run_id":
                continue
            got = act[col]
            if isinstance(want, float) and isinstance(got, float):
                same = (math.isnan(want) and math.isnan(got)) or math.isclose(
                    got, want, rel_tol=1e-9, abs_tol=1e-12
                )
                assert same, f"{key} {col}: {got!r} != {want!r}"
            else:
                assert got == want, f"{key} {col}: {got!r} != {want!r}"


def test_submit_on_standalone_cluster_matches_local(spark, cluster, demo_data):
    cluster.ensure_workers(2)
    root = _new_root(demo_data, "cluster")
    t0 = time.perf_counter()
    job = _start_submit(cluster, root)
    out = _finish(job)
    took = time.perf_counter() - t0
    driver_log = job.log.read_text(errors="replace")
    print(f"\nspark-submit on {cluster.url}: {took:.1f}s\n{driver_log.splitlines()[0]}")
    assert "checkout_redesign" in out
    # Both workers ran an executor of this application, and tasks ran on both.
    added = re.findall(r"Executor added: (app-\S+)/(\d+) on (worker-\S+)", driver_log)
    assert len({w for _, _, w in added}) == 2, added
    executors = set(re.findall(r"Finished task .* \(executor (\d+)\)", driver_log))
    assert len(executors) == 2, executors
    # The driver ran the package from the zip given to --py-files (call sites of its
    # jobs are in the zip), and each executor fetched the zip into its work dir.
    assert re.search(r"cluster_spark\.zip/cluster_spark/\w+\.py", driver_log)
    app_id = added[0][0]
    fetched = sorted(cluster.workdir.glob(f"w*/{app_id}/*/cluster_spark.zip"))
    assert len(fetched) == 2, fetched
    apps = {a["id"]: a["state"] for a in cluster.state()["completedapps"]}
    assert apps.get(app_id) == "FINISHED", apps
    assert_same_results(_rows(spark, str(root / "results")), demo_data.local_results)


START_RE = re.compile(r"Starting task (\S+) in stage (\S+) \(TID (\d+)\) \([^,]*,\s*executor (\d+)")
FINISH_RE = re.compile(r"Finished task (\S+) in stage (\S+) \(TID (\d+)\) .*\(executor (\d+)\)")


def _victim(cluster: Cluster, log_text: str) -> tuple[Worker, str, list[str]] | None:
    """The first (worker, executor, running tasks) whose executor has finished a task (so
    its shuffle output is lost with it) and is running one right now."""
    finished = {tid for _, _, tid, _ in FINISH_RE.findall(log_text)}
    placed = re.findall(r"Executor added: \S+/(\d+) on (worker-\S+)", log_text)
    for exec_id, worker_id in placed:
        worker = next(
            (w for w in cluster.workers.values() if worker_id.endswith(w.worker_id_suffix)), None
        )
        if worker is None or worker.proc.poll() is not None:
            continue
        done = [tid for _, _, tid, e in FINISH_RE.findall(log_text) if e == exec_id]
        running = [
            f"task {task} in stage {stage} (TID {tid})"
            for task, stage, tid, e in START_RE.findall(log_text)
            if e == exec_id and tid not in finished
        ]
        if done and running:
            return worker, exec_id, running
    return None


def test_submit_survives_worker_loss(spark, cluster, demo_data):
    """SIGKILL a worker while the staging job runs: the job still finishes, same results."""
    cluster.ensure_workers(2)
    root = _new_root(demo_data, "fault")
    t0 = time.perf_counter()
    job = _start_submit(cluster, root)
    killed: dict | None = None
    while job.proc.poll() is None and time.perf_counter() - t0 < SUBMIT_TIMEOUT:
        found = _victim(cluster, job.log.read_text(errors="replace"))
        if found:
            victim, exec_id, running = found
            cluster.kill_worker(victim.name)
            killed = {
                "worker": f"{victim.name} (127.0.0.1:{victim.port})",
                "executor": exec_id,
                "after_s": round(time.perf_counter() - t0, 1),
                "running_tasks": running,
                "staging_committed": any((root / "staging" / "_delta_log").glob("*.json")),
            }
            break
        time.sleep(0.05)
    assert killed, f"no executor was running a task before the job ended\n{job.tails()}"
    # The kill landed in the middle of the staging job (nothing committed yet).
    assert not killed["staging_committed"], killed
    assert victim.proc.poll() is not None

    out = _finish(job, timeout=max(30.0, SUBMIT_TIMEOUT - (time.perf_counter() - t0)))
    took = time.perf_counter() - t0
    text = job.log.read_text(errors="replace")
    ex = killed["executor"]

    def log_lines(pattern: str) -> list[str]:  # without the "date time LEVEL " prefix
        return [
            re.sub(r"^\S+ \S+ \S+ ", "", ln)[:230]
            for ln in text.splitlines()
            if re.search(pattern, ln)
        ]

    lost_executor = log_lines(rf"Lost executor {ex}\b|Executor lost: {ex}\b")
    failed_tasks = log_lines(r"Lost task|its executor exited")
    resubmitted = log_lines(r"Resubmitted|Resubmitting")
    # "<task>.<attempt> in stage <stage>.<attempt>": an attempt > 0 is a retry.
    retried = [
        f"task {task} in stage {stage} on executor {e}"
        for task, stage, _tid, e in FINISH_RE.findall(text)
        if not (task.endswith(".0") and stage.endswith(".0"))
    ]
    report = {
        **killed,
        "job_s": round(took, 1),
        "lost_executor": lost_executor[:3],
        "failed_tasks": failed_tasks[:6],
        "resubmitted": resubmitted[:6],
        "finished_retries": retried[:10],
        "alive_workers": len(cluster.alive_workers()),
    }
    print("\nworker-loss run:\n" + json.dumps(report, indent=1))
    assert "checkout_redesign" in out
    assert lost_executor, f"driver never noticed executor {ex} was lost\n{job.tails()}"
    assert failed_tasks or resubmitted, "no task or stage was rerun after the loss"
    assert report["alive_workers"] == 1
    # Work went on after the loss, on the surviving executor.
    loss = re.search(rf"Lost executor {ex}\b|Executor lost: {ex}\b", text)
    after = {e for *_, e in FINISH_RE.findall(text[loss.start() :])}
    assert after and ex not in after, after
    assert_same_results(_rows(spark, str(root / "results")), demo_data.local_results)
