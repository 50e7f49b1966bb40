"""Incremental refresh (#28) against full recomputes, day by day, on a seeded experiment.

A daily DAG runs at 02:00 UTC for the day before, and its warehouse delivers rows late: a
run sees the rows that arrived by then. The seeded experiment has what can go wrong:
- organizations first exposed every day, and exposure rows arriving up to 30 h late (a
  unit exposed before the previous run, first seen in this one);
- events every day, before and after exposure (a CUPED pre-period), arriving up to 30 h
  late (inside the 48 h lookback);
- organizations exposed again days later (a repeat exposure row);
- a 7-day window metric, a winsorized revenue per user whose denominator counts distinct
  users, CUPED, slices by plan.

`compare_day` runs one analysis date with `incremental` and without it (the oracle, every
event read) on the same snapshot of the tables and lists every results column that
differs (1e-9 relative; counts exact) and every diagnostic. The script runs the whole
experiment; `tests/test_incremental_equality.py` runs its first days.

    python bench/incremental.py --days 28          # every date; exit 1 on a difference
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

UTC = dt.UTC
START = dt.datetime(2026, 3, 2, tzinfo=UTC)  # experiment start (a Monday)
RUN_DELAY = dt.timedelta(hours=2)  # the DAG runs at 02:00 UTC for the day before
EXPOSURE_DDL = (
    "experiment_id string, org_id string, variant string, plan string, exposure_ts timestamp"
)
EVENT_DDL = "org_id string, user_id string, event string, value double, ts timestamp"
STATE_CHECKS = ("late_events_outside_lookback", "state_full_refresh")
#: Small-input settings, as the bench's (`bench/run.py`).
CONF = {
    "spark.sql.shuffle.partitions": "4",
    "spark.default.parallelism": "4",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.databricks.delta.snapshotPartitions": "2",
}
KEYS = ("experiment_id", "metric", "variant", "dimension", "slice")


@dataclass
class Scenario:
    """Seeded rows of a `days`-day experiment, each with the instant it arrives."""

    days: int
    orgs_per_day: int = 30
    seed: int = 28
    #: On this day's run an earlier exposure row of an analysed organization arrives (it
    #: changes the unit's first exposure: the run is a full refresh).
    earlier_exposure_day: int | None = None
    exposures: list[tuple] = field(default_factory=list)  # (row, arrival)
    events: list[tuple] = field(default_factory=list)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        for day in range(self.days):
            for i in range(self.orgs_per_day):
                self._org(rng, f"o{day:02d}_{i:03d}", day)
        if self.earlier_exposure_day is not None:
            rows = [r for r, _ in self.exposures if r[4] < START + dt.timedelta(days=1)]
            _, org, variant, plan, first = next(r for r in rows if r[4] >= START + RUN_DELAY)
            row = ("e1", org, variant, plan, first - dt.timedelta(hours=1))
            arrives = self.run_time(self.earlier_exposure_day - 1) + dt.timedelta(minutes=1)
            self.exposures.append((row, arrives))

    def _org(self, rng: np.random.Generator, org: str, day: int) -> None:
        exposed = START + dt.timedelta(days=day, seconds=int(rng.integers(0, 86_400)))
        variant = "treatment" if rng.random() < 0.5 else "control"
        plan = "pro" if rng.random() < 0.3 else "free"
        row = ("e1", org, variant, plan, exposed)
        self.exposures.append((row, exposed + _delay(rng, 0.2)))
        if rng.random() < 0.1:  # exposed again, days later
            again = exposed + dt.timedelta(days=int(rng.integers(1, 5)), hours=3)
            self.exposures.append((("e1", org, variant, plan, again), again))
        users = [f"{org}_u{k}" for k in range(int(rng.integers(1, 6)))]
        lift = 1.1 if variant == "treatment" else 1.0
        scale = rng.lognormal(0.0, 0.8)  # heavy-tailed orgs
        first = START - dt.timedelta(days=8)
        for d in range((START - first).days + self.days):
            for _ in range(int(rng.poisson(2.0))):
                ts = first + dt.timedelta(days=d, seconds=int(rng.integers(0, 86_400)))
                user = users[int(rng.integers(0, len(users)))]
                purchase = rng.random() < 0.4
                value = float(rng.lognormal(1.0, 1.0) * scale * (lift if ts >= exposed else 1.0))
                ev = ("purchase", round(value, 2)) if purchase else ("page_view", 0.0)
                self.events.append(((org, user, *ev, ts), ts + _delay(rng, 0.15)))

    def run_time(self, day: int) -> dt.datetime:
        """When the run for analysis date `START + day` sees the tables."""
        return START + dt.timedelta(days=day + 1) + RUN_DELAY

    def write(self, spark, root: Path, day: int, extra_events: list[tuple] = ()) -> None:
        """The tables as the run for day `day` sees them (rows arrived by its run time)."""
        cut = self.run_time(day)
        exposures = [r for r, arrived in self.exposures if arrived <= cut]
        events = [r for r, arrived in self.events if arrived <= cut] + list(extra_events)
        for rows, ddl, name in (
            (exposures, EXPOSURE_DDL, "exposures"),
            (events, EVENT_DDL, "events"),
        ):
            df = spark.createDataFrame(rows, ddl)
            df.write.format("delta").mode("overwrite").save(str(root / name))


def _delay(rng: np.random.Generator, late_share: float) -> dt.timedelta:
    """Minutes for most rows; up to 30 h for a `late_share` of them."""
    if rng.random() < late_share:
        return dt.timedelta(hours=float(rng.uniform(2, 30)))
    return dt.timedelta(minutes=float(rng.uniform(1, 60)))


def configs(root: Path, lookback_hours: int = 48) -> tuple[dict, dict]:
    """(The oracle's config, the incremental config): the same but `incremental` and the
    output tables."""
    purchase = [{"column": "event", "op": "eq", "value": "purchase"}]
    plain = {
        "exposures": {
            "path": str(root / "exposures"),
            "timestamp": "exposure_ts",
            "ids": {"org_id": "org_id"},
            "dimensions": ["plan"],
        },
        "sources": {
            "events": {
                "path": str(root / "events"),
                "timestamp": "ts",
                "ids": {"org_id": "org_id", "user_id": "user_id"},
            }
        },
        "metrics": {
            "revenue_per_user": {
                "kind": "ratio",
                "numerator": {
                    "source": "events",
                    "agg": "sum",
                    "column": "value",
                    "filter": purchase,
                    "winsorize": {"upper": 0.95},
                },
                "denominator": {"source": "events", "agg": "count_distinct", "column": "user_id"},
            },
            "purchases_first_week": {
                "kind": "mean",
                "numerator": {
                    "source": "events",
                    "agg": "count",
                    "filter": purchase,
                    "window": {"end_day": 6},
                },
            },
        },
        "experiments": [
            {
                "id": "e1",
                "assignment_unit": "org_id",
                "analysis_unit": "user_id",
                "control": "control",
                "variants": ["control", "treatment"],
                "start": START.date().isoformat(),
                "metrics": ["revenue_per_user", "purchases_first_week"],
                "dimensions": ["plan"],
                "cuped_lookback_days": 7,
            }
        ],
        "output": {t: str(root / f"plain_{t}") for t in ("staging", "results", "diagnostics")},
    }
    incremental = {
        **plain,
        "incremental": {"state": str(root / "state"), "lookback_hours": lookback_hours},
        "output": {t: str(root / f"inc_{t}") for t in ("staging", "results", "diagnostics")},
    }
    return plain, incremental


def results(outcome) -> dict[tuple, dict]:
    """Results rows by key, without the run's id and time."""
    drop = ("run_id", "computed_at")
    return {
        tuple(r[k] for k in KEYS): {k: v for k, v in r.items() if k not in drop}
        for r in outcome.results
    }


def diagnostics(outcome, state: bool = False) -> dict[tuple, int]:
    """Diagnostics by key; `state`: only the incremental state's, else the others."""
    keys = (*KEYS, "check")
    return {
        tuple(d[k] for k in keys): d["value"]
        for d in outcome.diagnostics
        if d["check"].startswith(STATE_CHECKS) == state
    }


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def differences(want, got) -> list[tuple]:
    """Every (key, column, oracle, incremental) that differs, results then diagnostics."""
    w, g = results(want), results(got)
    wrong = [(k, None, k in w, k in g) for k in set(w) ^ set(g)]
    wrong += [
        (k, c, w[k][c], g[k][c])
        for k in w.keys() & g.keys()
        for c in w[k]
        if not _same(w[k][c], g[k][c])
    ]
    dw, dg = diagnostics(want), diagnostics(got)
    wrong += [
        (k, "value", dw.get(k), dg.get(k)) for k in dw.keys() | dg.keys() if dw.get(k) != dg.get(k)
    ]
    return wrong


def state_diagnostics(outcome) -> dict[str, int]:
    """The incremental state's diagnostics of experiment e1: check → value."""
    return {k[-1]: v for k, v in diagnostics(outcome, state=True).items() if k[0] == "e1"}


def compare_day(spark, plain, incremental, day: int, full_refresh: bool = False):
    """Run the analysis date `START + day` incrementally then fully; print one line and
    return (`differences`, the incremental run's outcome)."""
    from cluster_spark import pipeline

    date = (START + dt.timedelta(days=day)).date()
    t0 = time.perf_counter()
    got = pipeline.run_outcome(spark, incremental, date, full_refresh=full_refresh)
    t1 = time.perf_counter()
    want = pipeline.run_outcome(spark, plain, date)
    t2 = time.perf_counter()
    wrong = differences(want, got)
    print(
        f"{date}  rows {len(got.results):4d}  differing {len(wrong):3d}  "
        f"incremental {t1 - t0:5.1f} s  full {t2 - t1:5.1f} s  {state_diagnostics(got)}",
        flush=True,
    )
    return wrong, got


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=28)
    parser.add_argument("--orgs-per-day", type=int, default=30)
    parser.add_argument("--root", type=Path, default=Path("/tmp/cluster_spark_incremental"))
    args = parser.parse_args()

    import shutil

    from cluster_spark.config import parse_config
    from cluster_spark.session import build_spark

    shutil.rmtree(args.root, ignore_errors=True)
    spark = build_spark("incremental-equality", local_master="local[2]", extra_conf=CONF)
    spark.sparkContext.setLogLevel("ERROR")  # a classic local session
    scenario = Scenario(args.days, args.orgs_per_day, earlier_exposure_day=args.days // 2)
    plain, incremental = (parse_config(c) for c in configs(args.root))
    print(f"{len(scenario.exposures)} exposure rows, {len(scenario.events)} events", flush=True)
    failed = 0
    for day in range(args.days):
        scenario.write(spark, args.root, day)
        wrong, got = compare_day(spark, plain, incremental, day)
        failed += bool(wrong)
        reasons = {c for c in state_diagnostics(got) if c.startswith("state_full_refresh")}
        expected = {0: "no_state", scenario.earlier_exposure_day: "exposure_changed"}
        failed += reasons != ({f"state_full_refresh:{expected[day]}"} if day in expected else set())
        for item in wrong[:5]:
            print("   ", item)
    # a purchase of an analysed organization dated before the lookback arrives: counted,
    # and missing from the results until a full refresh
    last = args.days - 1
    org = scenario.exposures[0][0][1]
    old = (org, f"{org}_u0", "purchase", 1000.0, scenario.run_time(last) - dt.timedelta(days=5))
    scenario.write(spark, args.root, last, [old])
    wrong, got = compare_day(spark, plain, incremental, last)
    late = state_diagnostics(got)["late_events_outside_lookback:events"]
    failed += late != 1 or not wrong
    wrong, got = compare_day(spark, plain, incremental, last, full_refresh=True)
    failed += bool(wrong) or state_diagnostics(got)["late_events_outside_lookback:events"] != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
