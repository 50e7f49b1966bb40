"""The only bench module that reaches into Spark's JVM — through py4j (`_jvm`, `_jdf`) or the
SparkContext: the driver's peak memory, Spark job counts per measurement, a DataFrame's
executed plan, and the JVM facts the report's machine table shows. Probing through `_jvm`
and `_jdf` stays here, in the bench, and out of cluster_spark."""

from __future__ import annotations

import resource
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession

MIB = 1024 * 1024


class Memory:
    """Peak memory of the driver over one size: Python RSS high-water mark (VmHWM, reset
    through /proc/self/clear_refs where the kernel allows it) and the JVM heap pools' peak
    usage (reset through their MXBeans). Sampling also tracks Runtime used memory."""

    def __init__(self, spark: SparkSession, interval: float = 0.2):
        self.jvm = spark.sparkContext._jvm
        self.interval = interval
        self.sampled_peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rss_reset = False

    def _heap_pools(self) -> list:
        mf = self.jvm.java.lang.management.ManagementFactory
        return [p for p in mf.getMemoryPoolMXBeans() if p.getType().toString() == "Heap memory"]

    def _used(self) -> int:
        rt = self.jvm.java.lang.Runtime.getRuntime()
        return rt.totalMemory() - rt.freeMemory()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sampled_peak = max(self.sampled_peak, self._used())
            except Exception:  # py4j shutting down
                return

    def start(self) -> None:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.rss_reset = True
        except OSError:
            self.rss_reset = False
        for pool in self._heap_pools():
            pool.resetPeakUsage()
        self.sampled_peak = self._used()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, float]:
        self._stop.set()
        if self._thread:
            self._thread.join()
        pools = self._heap_pools()
        pool_peak = sum(p.getPeakUsage().getUsed() for p in pools)
        old_peak = sum(
            p.getPeakUsage().getUsed()
            for p in pools
            if "Old" in p.getName() or "Tenured" in p.getName()
        )
        self.jvm.java.lang.System.gc()
        retained = self._used()
        return {
            "py_rss_peak_mib": _vm_hwm() / MIB,
            "py_rss_peak_reset": self.rss_reset,
            "py_ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MIB,
            "jvm_heap_peak_mib": pool_peak / MIB,
            "jvm_old_gen_peak_mib": old_peak / MIB,
            "jvm_heap_sampled_peak_mib": self.sampled_peak / MIB,
            "jvm_heap_after_gc_mib": retained / MIB,
            "jvm_heap_max_mib": self.jvm.java.lang.Runtime.getRuntime().maxMemory() / MIB,
        }


def _vm_hwm() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@contextmanager
def job_group(spark: SparkSession, name: str, counter: dict[str, int]) -> Iterator[None]:
    """Tag the Spark jobs of one measurement to count them (and their stages) afterwards."""
    sc = spark.sparkContext
    sc.setJobGroup(name, name)
    try:
        yield
    finally:
        tracker = sc.statusTracker()
        ids = tracker.getJobIdsForGroup(name)
        counter["jobs"] = len(ids)
        counter["stages"] = sum(
            len(info.stageIds) for info in (tracker.getJobInfo(j) for j in ids) if info
        )
        sc.setLocalProperty("spark.jobGroup.id", None)


def executed_plan(df: DataFrame) -> Any:
    """The DataFrame's physical plan as a py4j handle on the JVM's SparkPlan."""
    return df._jdf.queryExecution().executedPlan()


def java_version(spark: SparkSession) -> str:
    """The driver JVM's `java.vm.name` and `java.version`."""
    system = spark.sparkContext._jvm.java.lang.System
    return f"{system.getProperty('java.vm.name')} {system.getProperty('java.version')}"


def master(spark: SparkSession) -> str:
    """The SparkContext's master URL, e.g. `local[2]`."""
    return spark.sparkContext.master


def set_log_level(spark: SparkSession, level: str) -> None:
    """Spark's log level for this session (the bench uses ERROR)."""
    spark.sparkContext.setLogLevel(level)
