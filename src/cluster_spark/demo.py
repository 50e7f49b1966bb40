"""A seeded synthetic cluster experiment: organizations are randomized, users analysed.

Org sizes are heavy-tailed (log-normal), users of one org share an org effect (so they are
correlated), and `treatment_a` raises the value of each purchase by `LIFT` — a known true
lift in revenue per user. Some orgs are exposed twice and a few in two variants, and users
are active in the two weeks before their org's exposure (a CUPED pre-period), so the
data-quality rules and the variance reduction have work to do. Each exposure row carries
the org's `plan` (by its size), and an org attributes table its `country` over time (some
orgs move after exposure: the analysis must use the value at exposure), for slices.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
from pyspark.sql import SparkSession

START = dt.datetime(2026, 1, 5)
ANALYSIS_DATE = dt.date(2026, 2, 1)
#: Weekly analyses before ANALYSIS_DATE that the demo runs too (the report's timeline).
EARLIER_DATES = (dt.date(2026, 1, 11), dt.date(2026, 1, 18), dt.date(2026, 1, 25))
VARIANTS = ("control", "treatment_a", "treatment_b")
LIFT = {"control": 0.0, "treatment_a": 0.10, "treatment_b": 0.0}
EXPERIMENT_ID = "checkout_redesign"


def _offsets(rng: np.random.Generator, n: int, low_days: float, high_days: float) -> np.ndarray:
    seconds = rng.uniform(low_days * 86400, high_days * 86400, n).astype("int64")
    return np.datetime64(START, "us") + seconds.astype("timedelta64[s]")


COUNTRIES = ("US", "DE", "IN", "BR", "JP", "FR")


def generate_frames(
    n_orgs: int = 8000, seed: int = 7
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Exposures (experiment_id, org_id, variant, exposure_ts, plan), events
    (org_id, user_id, event, value, ts) and org attributes (org_id, country, updated_at)
    as pandas frames."""
    rng = np.random.default_rng(seed)
    org_ids = np.array([f"o{i:06d}" for i in range(n_orgs)])
    variant = rng.integers(0, len(VARIANTS), n_orgs)
    org_effect = rng.lognormal(0.0, 0.25, n_orgs)
    exposure = _offsets(rng, n_orgs, 0, 7)

    dup = rng.random(n_orgs) < 0.10
    switch = rng.random(n_orgs) < 0.005
    exposures = pd.DataFrame(
        {
            "experiment_id": EXPERIMENT_ID,
            "org_id": np.concatenate([org_ids, org_ids[dup], org_ids[switch]]),
            "variant": np.array(VARIANTS)[
                np.concatenate([variant, variant[dup], (variant[switch] + 1) % len(VARIANTS)])
            ],
            "exposure_ts": np.concatenate(
                [exposure, exposure[dup] + np.timedelta64(3, "h"), exposure[switch]]
            ),
        }
    )

    sizes = np.clip(np.round(rng.lognormal(1.4, 1.0, n_orgs)), 1, 500).astype(int)
    plan = np.where(sizes >= 10, "team", np.where(sizes >= 3, "pro", "free"))
    exposures["plan"] = np.concatenate([plan, plan[dup], plan[switch]])
    user_org = np.repeat(np.arange(n_orgs), sizes)
    n_users = len(user_org)
    activity = rng.gamma(2.0, 0.5, n_users) * org_effect[user_org]
    n_events = rng.poisson(8 * activity)
    ev_user = np.repeat(np.arange(n_users), n_events)
    ev_org = user_org[ev_user]
    purchase = rng.random(len(ev_user)) < np.clip(0.10 * org_effect[ev_org], 0, 0.6)
    lift = np.array([LIFT[v] for v in VARIANTS])[variant[ev_org]]
    value = np.where(purchase, rng.gamma(4.0, 10.0, len(ev_user)), 0.0)
    ts = _offsets(rng, len(ev_user), -14, 28)
    lift = np.where(ts >= exposure[ev_org], lift, 0.0)  # the treatment acts after exposure
    events = pd.DataFrame(
        {
            "org_id": org_ids[ev_org],
            "user_id": np.array([f"u{i:07d}" for i in range(n_users)])[ev_user],
            "event": np.where(purchase, "purchase", "page_view"),
            "value": np.round(value * (1 + lift), 2),
            "ts": ts,
        }
    )
    return exposures, events, _org_attributes(org_ids, exposure, seed)


def _org_attributes(org_ids: np.ndarray, exposure: np.ndarray, seed: int) -> pd.DataFrame:
    """Each org's country a month before the start; 20 % move 3 days after their exposure
    (rows a correct analysis never uses). Its own generator: the other frames are as
    before this table existed."""
    rng = np.random.default_rng(seed + 1)
    n = len(org_ids)
    country = np.array(COUNTRIES)[rng.choice(len(COUNTRIES), n, p=[0.4, 0.2, 0.15, 0.1, 0.1, 0.05])]
    moved = rng.random(n) < 0.2
    return pd.DataFrame(
        {
            "org_id": np.concatenate([org_ids, org_ids[moved]]),
            "country": np.concatenate([country, np.roll(country, 1)[moved]]),
            "updated_at": np.concatenate(
                [
                    np.full(n, np.datetime64(START - dt.timedelta(days=30), "us")),
                    exposure[moved] + np.timedelta64(3, "D"),
                ]
            ),
        }
    )


def write_demo_data(spark: SparkSession, root: str | Path, n_orgs: int = 8000, seed: int = 7):
    """Write the demo's exposures, events and org attributes as Delta tables under
    `root/data/`."""
    exposures, events, orgs = generate_frames(n_orgs, seed)
    data = Path(root) / "data"
    for name, frame in (("exposures", exposures), ("events", events), ("orgs", orgs)):
        (
            spark.createDataFrame(frame)
            .write.format("delta")
            .mode("overwrite")
            .option("overwriteSchema", "true")
            .save(str(data / name))
        )
    return len(exposures), len(events)
