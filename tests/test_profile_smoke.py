"""`bench/profile_stage.py` still runs its first-level comparison (the numbers behind the
explanation of cluster_spark ÷ floor in docs/benchmarks.md)."""

from __future__ import annotations

import re

import pytest

from tests.helpers import run_script


@pytest.mark.slow
def test_profile_first_level_steps(tmp_path):
    args = ["--smoke", "--size", "20000", "--out", str(tmp_path), "--only", "floor", "first level"]
    proc = run_script("bench/profile_stage.py", *args)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    steps = dict(re.findall(r"^(\S.*?)\s+(\d+\.\d) s  jobs", proc.stdout, re.M))
    # 15 distinct components per slot, plus 3 bookkeeping values per slot, the event count
    # and a NULL count per filter column (event, value)
    pattern = r"first level \(15 components × (\d+) slots\)"
    slots = [int(n) for n in re.findall(pattern, proc.stdout)]
    assert len(slots) == 1 and slots[0] >= 2
    wanted = {
        "floor",
        "floor carrying 18 values",
        f"floor carrying {18 * slots[0] + 3} values",
        "first level, join + bookkeeping only",
        f"first level (15 components × {slots[0]} slots)",
    }
    assert set(steps) == wanted, proc.stdout
    assert all(float(t) > 0 for t in steps.values())
