"""`bench/run.py --smoke` runs end to end, reports every measurement (DuckDB's time too) and
passes the cross-engine check over every (experiment, metric, variant)."""

from __future__ import annotations

import json
import sys

import pytest

from tests.helpers import ROOT, run_script

COLUMNS = (
    "floor s",
    "stage s",
    "reduce s",
    "cluster_spark s",
    "DuckDB s",
    "per-metric s",
    "DuckDB ÷ cs",
    "py RSS peak MiB",
    "JVM heap peak MiB",
)


@pytest.mark.slow
def test_bench_smoke(tmp_path):
    md = ROOT / "BENCHMARKS.md"
    md_before = md.stat().st_mtime_ns if md.exists() else None
    # Every measurement at 20k events, the units axis at 20k units: minutes, not seconds.
    # The options' costs (bench/costs.py: six more staging passes) run in `make bench` only.
    proc = run_script(
        "bench/run.py", "--smoke", "--no-write-md", "--no-costs", "--out", str(tmp_path),
        timeout=1800,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    lines = proc.stdout.splitlines()
    header = next(line for line in lines if line.startswith("| events |"))
    for column in COLUMNS:
        assert f"| {column} |" in header
    row = next(line for line in lines if line.startswith("| 20,000 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == header.count("|") - 1
    assert "| target | measured | threshold | result |" in proc.stdout

    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["option_costs"] == []  # --no-costs
    (size,) = report["rows"]
    assert size["events"] == 20_000
    for key in ("floor_s", "stage_s", "reduce_s", "per_metric_s", "duckdb_s", "duckdb_ratio"):
        assert size[key] > 0, key
    assert len(size["per_metric_queries"]) == 20
    # 3 experiments with 3 + 2 + 2 variants, 20 metrics each, 2 of them winsorized
    assert size["results_rows"] == 20 * 7
    # 20 metrics (2 winsorized: two rows) and the analysis-unit balance row, × 7 arms
    assert size["staging_rows"] == (20 + 2 + 1) * 7
    check = size["crosscheck"]
    assert (check["groups"], check["rows"]) == (20 * 7, (20 + 2) * 7)
    assert check["exact_caps"] and check["max_rel_diff"] <= 1e-9
    assert "| 20,000 | 140 | 154 |" in proc.stdout
    assert "cluster_spark = per-metric = DuckDB" in proc.stdout
    units = {r["kind"]: r for r in report["units_axis"]}
    assert units["users"]["units"] == 20_000 and units["users"]["events"] == 80_000
    assert units["heavy_org"]["heavy_users"] == 4_000
    # users: 4 metrics × 2 variants, all 20,000 users exposed in one variant each
    assert units["users"]["analysed_units"] == 20_000
    assert "| users | 20,000 | 20,000 | 80,000 |" in proc.stdout
    assert size["memory"]["py_rss_peak_mib"] > 0
    assert size["memory"]["jvm_heap_peak_mib"] > 0
    plan = report["staging_plan_operators"]["staging statistics"]
    assert plan["Scan events"] >= 1 and plan["HashAggregate"] >= 1
    # one tiny run through the CLI (bench/tiny.py), in a process of its own
    (run,) = report["tiny_runs"]
    assert run["run"] == 1 and run["seconds"] > 0 and run["jobs"] > 0
    assert "| run | wall s (JVM start included) | Spark jobs |" in proc.stdout
    assert (md.stat().st_mtime_ns if md.exists() else None) == md_before  # --no-write-md


def test_tiny_section_goes_in_place_of_the_old_one():
    """bench/tiny.py's BENCHMARKS.md section: the runs, verdicts against issue #14's
    targets (≤ 15 s, ≤ 12 jobs), replacing an earlier section or appended."""
    sys.path.insert(0, str(ROOT / "bench"))
    from tiny import TinyRun, splice, tiny_markdown  # bench/ is not a package

    section = tiny_markdown([TinyRun(1, 14.96, 12), TinyRun(2, 31.0, 29)])
    assert "| 1 | 15.0 | 12 |\n| 2 | 31.0 | 29 |" in section
    assert "| tiny run, wall clock | 15.0 s | ≤ 15 s | PASS |" in section
    assert "| tiny run, Spark jobs of stage + reduce | 12 | ≤ 12 | PASS |" in section
    failed = tiny_markdown([TinyRun(1, 15.04, 13)])
    assert "| 15.0 s | ≤ 15 s | **FAIL** |" in failed and "| 13 | ≤ 12 | **FAIL** |" in failed
    assert tiny_markdown([]) == ""
    warm = tiny_markdown([TinyRun(1, 20.0, 12), TinyRun(1, 4.9, 14, warm=True)])
    assert "| 1 | 20.0 | 12 | new JVM |\n| 1 | 4.9 | 14 | warm server |" in warm
    assert "(`cluster-spark serve`), wall clock | 4.9 s | ≤ 5 s | PASS |" in warm
    assert "| 20.0 s | ≤ 15 s | **FAIL** |" in warm
    md = "# B\n\n## Units axis\n\nu\n"
    once = splice(md, section)
    assert once.startswith(md) and once.count("## Small inputs") == 1
    assert once == "# B\n\n## Units axis\n\nu\n" + section
    assert splice(once, failed) == "# B\n\n## Units axis\n\nu\n" + failed
    again = splice(once + "\n## Later\n\nx\n", failed)
    assert again.count("## Small inputs") == 1 and "**FAIL**" in again and "PASS" not in again
    assert again.endswith("\n## Later\n\nx\n") and "\n## Units axis\n\nu\n" in again
