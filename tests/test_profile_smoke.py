"""`bench/profile_stage.py` still runs its first-level comparison (the numbers behind the
README's explanation of cluster_spark ÷ floor)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_profile_first_level_steps(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("BENCH_ARGS", "PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET")
    }
    script = ROOT / "bench" / "profile_stage.py"
    args = ["--smoke", "--size", "20000", "--out", str(tmp_path), "--only", "floor", "first level"]
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    steps = dict(re.findall(r"^(\S.*?)\s+(\d+\.\d) s  jobs", proc.stdout, re.M))
    # 15 distinct components per slot, plus 3 bookkeeping values per slot and the event count
    pattern = r"first level \(15 components × (\d+) slots\)"
    slots = [int(n) for n in re.findall(pattern, proc.stdout)]
    assert len(slots) == 1 and slots[0] >= 2
    wanted = {
        "floor",
        "floor carrying 18 values",
        f"floor carrying {18 * slots[0] + 1} values",
        "first level, join + bookkeeping only",
        f"first level (15 components × {slots[0]} slots)",
    }
    assert set(steps) == wanted, proc.stdout
    assert all(float(t) > 0 for t in steps.values())
