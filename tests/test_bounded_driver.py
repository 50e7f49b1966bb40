"""scripts/bounded_driver.py reads the driver's heap from a JVM unified GC log."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "bounded_driver", ROOT / "scripts" / "bounded_driver.py"
)
bounded_driver = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bounded_driver)

LOG = """\
[0.003s][info][gc] Using G1
[0.151s][info][gc] GC(0) Pause Young (Normal) (G1 Evacuation Pause) 28M->21M(380M) 6.397ms
[1.020s][info][gc] GC(7) Pause Young (Concurrent Start) (G1 Humongous Allocation) 1G->300M(1G) 9.1ms
[1.030s][info][gc] GC(8) Concurrent Mark Cycle
[1.200s][info][gc] GC(8) Pause Remark 310M->305M(1G) 2.0ms
[2.400s][info][gc] GC(9) Pause Young (Normal) (G1 Evacuation Pause) 512000K->2048K(1G) 1.0ms
"""


def test_heap_from_gc_log():
    peak, live = bounded_driver.heap_from_gc_log(LOG)
    assert peak == 1024  # 1G before GC(7)
    assert live == 300  # after GC(7); the remark frees nothing, so its 305M is not counted
    assert bounded_driver.heap_from_gc_log("[0.003s][info][gc] Using G1\n") == (0.0, 0.0)
    assert bounded_driver.heap_from_gc_log(LOG.splitlines()[-1]) == pytest.approx((500, 2))
