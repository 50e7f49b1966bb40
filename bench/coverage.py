"""Coverage of cluster_spark's confidence intervals for a cluster-randomized ratio metric:
a seeded simulation in pure Python (numpy + scipy, no Spark) through the package's own
statistics (`RatioStats.from_values`, `inference.compare`, `intervals.fieller_interval`).

    .venv/bin/python bench/coverage.py                    # print the table
    .venv/bin/python bench/coverage.py --write            # and update BENCHMARKS.md
    .venv/bin/python bench/coverage.py --replicates 500 --clusters 40,200 --dgp demo

Each replicate draws G organizations (half control, half treatment), their users and the
users' purchase revenue, and analyses revenue per active user, M_i / D_i summed per arm,
with organizations as the assignment units. A/B cells multiply every treatment user's value
by 1 + lift, so the true relative lift is exactly `lift` and the true absolute effect is
lift · R, R = E[M]/E[D] the control's ratio of expectations, computed analytically (a
one-dimensional integral for `demo`, closed form for `heavy`; a Monte-Carlo draw of 2M
organizations checks it and is printed beside it). Two data-generating processes:

- `demo`: the shapes of `cluster_spark.demo` (the project's synthetic experiment): users per
  org round(LogNormal(1.4, 1.0)) clipped to [1, 500]; org effect e ~ LogNormal(0, 0.25);
  user activity a ~ Gamma(2, 0.5)·e; Poisson(8a) events, each a purchase with probability
  min(0.1e, 0.6) worth Gamma(4, 10); D = users with ≥ 1 event (count distinct user_id).
- `heavy`: a stress case: users per org 1 + floor(3·Lomax(1.2)) capped at 2,000 (Pareto
  tail); org value level LogNormal(−0.32, 0.8) (mean 1); each user purchases with
  probability 0.3 and then spends level · LogNormal(3, 1.5); D = users.

An interval covers when low ≤ truth ≤ high. Fieller's interval is None when unbounded (the
whole line or the complement of an interval) and then counts as covering; so does a delta
relative CI that `compare` leaves null (`relative_ci_unbounded`). Both are counted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paths
from scipy import integrate
from scipy import stats as sps
from sections import replace_section

from cluster_spark.stats.inference import compare
from cluster_spark.stats.intervals import fieller_interval
from cluster_spark.stats.ratio import RatioStats

SECTION = "## Interval coverage (bench/coverage.py)"
#: Users drawn per chunk of replicates (bounds memory: a few arrays of this many floats).
CHUNK_USERS = 3_000_000
TRUTH_CHECK_ORGS = 2_000_000


@dataclass(frozen=True)
class Dgp:
    """A data-generating process: `draw(rng, n_orgs)` → per-org (M, D) of the control arm,
    its analytic ratio of expectations R = E[M]/E[D] and a rough mean of users per org
    (to size the chunks)."""

    name: str
    draw: Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]
    true_ratio: float
    users_per_org: float


def _per_org(owner: np.ndarray, values: np.ndarray, n_orgs: int) -> np.ndarray:
    return np.bincount(owner, weights=values, minlength=n_orgs)


def draw_demo(rng: np.random.Generator, n_orgs: int) -> tuple[np.ndarray, np.ndarray]:
    """`cluster_spark.demo`'s shapes: revenue and active users per org."""
    sizes = np.clip(np.round(rng.lognormal(1.4, 1.0, n_orgs)), 1, 500).astype(np.int64)
    effect = rng.lognormal(0.0, 0.25, n_orgs)
    owner = np.repeat(np.arange(n_orgs), sizes)
    e = effect[owner]
    rate = 8.0 * rng.gamma(2.0, 0.5, owner.size) * e  # expected events of the user
    p = np.minimum(0.10 * e, 0.6)
    purchases = rng.poisson(rate * p)  # Poisson thinning: purchases ⟂ other events
    active = (purchases + rng.poisson(rate * (1.0 - p))) > 0
    revenue = rng.gamma(4.0 * purchases, 10.0)  # sum of `purchases` Gamma(4, 10); 0 for none
    return _per_org(owner, revenue, n_orgs), _per_org(owner, active.astype(float), n_orgs)


def demo_true_ratio() -> float:
    """E[M]/E[D] of `draw_demo`: size ⟂ e, E[M | size, e] = size · 8e · min(0.1e, 0.6) · 40
    and E[D | size, e] = size · (1 − (1 + 4e)^−2) (no event: Gamma(2, 0.5e)'s Laplace
    transform at 8), integrated over e = exp(0.25 z), z standard normal."""

    def expect(f: Callable[[float], float]) -> float:
        return integrate.quad(lambda z: f(math.exp(0.25 * z)) * sps.norm.pdf(z), -12, 12)[0]

    num = expect(lambda e: 320.0 * e * min(0.1 * e, 0.6))
    den = expect(lambda e: 1.0 - (1.0 + 4.0 * e) ** -2)
    return num / den


HEAVY_LEVEL_SIGMA = 0.8
HEAVY_VALUE_MU, HEAVY_VALUE_SIGMA = 3.0, 1.5
HEAVY_BUYER_P = 0.3


def draw_heavy(rng: np.random.Generator, n_orgs: int) -> tuple[np.ndarray, np.ndarray]:
    """Pareto-tailed org sizes, log-normal org levels and log-normal spend per buyer."""
    sizes = np.minimum(1 + np.floor(3.0 * rng.pareto(1.2, n_orgs)), 2000).astype(np.int64)
    s = HEAVY_LEVEL_SIGMA
    level = rng.lognormal(-s * s / 2, s, n_orgs)
    owner = np.repeat(np.arange(n_orgs), sizes)
    buyer = rng.random(owner.size) < HEAVY_BUYER_P
    spend = level[owner] * rng.lognormal(HEAVY_VALUE_MU, HEAVY_VALUE_SIGMA, owner.size)
    return _per_org(owner, np.where(buyer, spend, 0.0), n_orgs), sizes.astype(float)


def heavy_true_ratio() -> float:
    """E[M]/E[D] of `draw_heavy`: every factor is independent of the size, E[level] = 1."""
    return HEAVY_BUYER_P * math.exp(HEAVY_VALUE_MU + HEAVY_VALUE_SIGMA**2 / 2)


DGPS = {
    "demo": Dgp("demo", draw_demo, demo_true_ratio(), 6.5),
    "heavy": Dgp("heavy", draw_heavy, heavy_true_ratio(), 16.0),
}


def truth_check(dgp: Dgp, seed: int) -> tuple[float, float]:
    """Monte-Carlo R = ΣM/ΣD over `TRUTH_CHECK_ORGS` orgs and its delta-method SE."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, list(DGPS).index(dgp.name), 0]))
    chunk = max(1, int(CHUNK_USERS / dgp.users_per_org))
    ms, ds = [], []
    for start in range(0, TRUTH_CHECK_ORGS, chunk):
        m, d = dgp.draw(rng, min(chunk, TRUTH_CHECK_ORGS - start))
        ms.append(m)
        ds.append(d)
    m, d = np.concatenate(ms), np.concatenate(ds)
    r = m.sum() / d.sum()
    se = math.sqrt(np.var(m - r * d, ddof=1) / m.size) / d.mean()
    return float(r), se


@dataclass
class Cell:
    """Counts over the replicates of one (DGP, G, lift) cell."""

    dgp: str
    clusters: int
    lift: float
    replicates: int = 0
    abs_cover: int = 0
    delta_cover: int = 0
    delta_low: int = 0  # interval entirely below the truth
    delta_high: int = 0  # interval entirely above the truth
    delta_none: int = 0
    fieller_cover: int = 0
    fieller_low: int = 0
    fieller_high: int = 0
    fieller_none: int = 0
    rejected: int = 0  # absolute p < alpha
    aa_disagree: int = 0  # A/A: Fieller's "covers 0" differs from the absolute CI's
    seconds: float = 0.0

    def share(self, k: int) -> float:
        return k / self.replicates


def _place(low: float, high: float, truth: float) -> int:
    """−1 when the interval lies below the truth, +1 above, 0 when it covers it."""
    return -1 if high < truth else (1 if low > truth else 0)


def run_cell(dgp: Dgp, clusters: int, lift: float, replicates: int, seed: int, alpha: float):
    """Simulate one cell; data drawn for chunks of replicates at once, statistics per replicate
    through cluster_spark's functions."""
    t0 = time.perf_counter()
    dgp_no = list(DGPS).index(dgp.name)
    rng = np.random.default_rng(np.random.SeedSequence([seed, dgp_no, clusters, round(lift * 1e6)]))
    n_c = clusters // 2
    truth_abs, truth_rel = lift * dgp.true_ratio, lift
    cell = Cell(dgp.name, clusters, lift)
    chunk = max(1, int(CHUNK_USERS / (clusters * dgp.users_per_org)))
    done = 0
    while done < replicates:
        k = min(chunk, replicates - done)
        m, d = dgp.draw(rng, k * clusters)
        m, d = m.reshape(k, clusters), d.reshape(k, clusters)
        m[:, n_c:] *= 1.0 + lift  # every treatment user's value × (1 + lift)
        for j in range(k):
            control = RatioStats.from_values(m[j, :n_c], d[j, :n_c])
            treatment = RatioStats.from_values(m[j, n_c:], d[j, n_c:])
            c = compare(treatment, control, alpha=alpha, test="welch")
            f = fieller_interval(treatment, control, alpha, "welch")
            cell.replicates += 1
            abs_place = _place(c.effect_abs_ci_low, c.effect_abs_ci_high, truth_abs)
            cell.abs_cover += abs_place == 0
            cell.rejected += c.p_value < alpha
            if c.effect_rel_ci_low is None:
                cell.delta_none += 1
                cell.delta_cover += 1
            else:
                place = _place(c.effect_rel_ci_low, c.effect_rel_ci_high, truth_rel)
                cell.delta_cover += place == 0
                cell.delta_low += place < 0
                cell.delta_high += place > 0
            if f is None:
                cell.fieller_none += 1
                cell.fieller_cover += 1
            else:
                place = _place(f[0], f[1], truth_rel)
                cell.fieller_cover += place == 0
                cell.fieller_low += place < 0
                cell.fieller_high += place > 0
                if lift == 0:
                    cell.aa_disagree += (place == 0) != (abs_place == 0)
        done += k
    cell.seconds = time.perf_counter() - t0
    return cell


def _pct(cell: Cell, low: int, high: int) -> str:
    return f"{100 * cell.share(low):.1f} / {100 * cell.share(high):.1f}"


def table(cells: list[Cell]) -> str:
    lines = [
        "| DGP | clusters G | true lift | abs CI cover | delta rel cover | Fieller rel cover "
        "| Fieller unbounded | delta miss % below / above | Fieller miss % below / above "
        "| p < 0.05 | s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        rate = f"{c.share(c.rejected):.3f}" + (" (size)" if c.lift == 0 else " (power)")
        unbounded = f"{c.fieller_none}" + (f" (delta {c.delta_none})" if c.delta_none else "")
        lines.append(
            f"| {c.dgp} | {c.clusters:,} | {c.lift:+.0%} | {c.share(c.abs_cover):.3f} "
            f"| {c.share(c.delta_cover):.3f} | {c.share(c.fieller_cover):.3f} | {unbounded} "
            f"| {_pct(c, c.delta_low, c.delta_high)} | {_pct(c, c.fieller_low, c.fieller_high)} "
            f"| {rate} | {c.seconds:.0f} |"
        )
    return "\n".join(lines)


def section(
    cells: list[Cell],
    args: argparse.Namespace,
    truths: dict[str, tuple[float, float, float]],
    seconds: float,
) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    mc_se = math.sqrt(0.95 * 0.05 / args.replicates)
    truth_lines = "\n".join(
        f"  - `{name}`: R = {r:.4f} (check, Monte-Carlo over {TRUTH_CHECK_ORGS:,} orgs: "
        f"{mc:.4f} ± {se:.4f})"
        for name, (r, mc, se) in truths.items()
    )
    disagree = sum(c.aa_disagree for c in cells if c.lift == 0)
    bounded = sum(c.replicates - c.fieller_none for c in cells if c.lift == 0)
    return f"""{SECTION}

*Written by `{args.command}` on {now}: seed {args.seed}, {args.replicates:,}
replicates per cell, alpha {args.alpha}, Welch t; {seconds:.0f} s in all on this machine
(pure Python/numpy, no Spark).*

Each replicate draws G organizations (G/2 control, G/2 treatment) and analyses revenue per
active user (ΣM/ΣD per arm, orgs as assignment units) with `compare` (absolute CI, delta
relative CI, p) and `fieller_interval`. Data-generating processes:

- `demo` (the shapes of `cluster_spark.demo`): users per org round(LogNormal(1.4, 1))
  clipped to [1, 500]; org effect e ~ LogNormal(0, 0.25); user activity a ~ Gamma(2, 0.5)·e;
  Poisson(8a) events, each a purchase with probability min(0.1e, 0.6) worth Gamma(4, 10);
  D = users with ≥ 1 event.
- `heavy` (stress case): users per org 1 + ⌊3·Lomax(1.2)⌋ capped at 2,000; org level
  LogNormal(−0.32, 0.8) (mean 1); a user buys with probability 0.3 and spends
  level·LogNormal(3, 1.5); D = users.
- A/B: every treatment user's value × (1 + lift), so the true relative lift is the lift
  exactly and the true Δ = lift·R, with R = E[M]/E[D] of the control computed analytically:
{truth_lines}

{table(cells)}

*cover* = share of replicates whose 95 % interval holds the true effect (Monte-Carlo SE
≈ {mc_se:.3f} at 0.95). Fieller's interval is None when unbounded and then counts as
covering (*Fieller unbounded* = how many replicates; the delta CI's nulls are named when
there are any). *miss % below / above* = intervals entirely below / above the truth.
*p < 0.05* = the absolute test's rejection rate: the type-I error in A/A cells, power in
A/B cells. In A/A cells Fieller's interval covers 0 exactly when the absolute CI does
(it inverts the same test): {disagree} disagreements in {bounded:,} bounded intervals.
"""


def parse_args(script: str, description: str, argv: list[str] | None) -> argparse.Namespace:
    """The simulation's options (shared with bench/few_clusters.py), checked: `clusters`
    a list of even numbers ≥ 4, `names` the DGPs, `command` the command line."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--replicates", type=int, default=2000, help="per cell (2000)")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--clusters", default="40,200,1000", help="total orgs G per cell")
    parser.add_argument("--lift", type=float, default=0.05, help="A/B cells' true lift")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--dgp", default=",".join(DGPS), help=f"of {', '.join(DGPS)}")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    parser.add_argument("--md", type=Path, default=paths.ROOT / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    args.command = " ".join(
        [f".venv/bin/python bench/{script}", *(sys.argv[1:] if argv is None else argv)]
    )
    args.clusters = [int(g) for g in args.clusters.split(",")]
    if any(g < 4 or g % 2 for g in args.clusters):
        parser.error("--clusters: even numbers ≥ 4")
    args.names = args.dgp.split(",")
    if unknown := set(args.names) - set(DGPS):
        parser.error(f"--dgp: unknown {sorted(unknown)}")
    return args


def run_cells(run: Callable, args: argparse.Namespace) -> list:
    """`run(dgp, clusters, lift, replicates, seed, alpha)` for every (DGP, G) of `args`, A/A
    then A/B, with a progress line each (shared with bench/few_clusters.py)."""
    cells = []
    for name in args.names:
        for g in args.clusters:
            for lift in (0.0, args.lift):
                cell = run(DGPS[name], g, lift, args.replicates, args.seed, args.alpha)
                cells.append(cell)
                print(f"  {name} G={g} lift={lift:+.0%}: {cell.seconds:.1f} s", flush=True)
    return cells


def main(argv: list[str] | None = None) -> int:
    args = parse_args("coverage.py", __doc__.split("\n\n")[0], argv)
    names = args.names
    t0 = time.perf_counter()
    truths = {}
    for name in names:
        mc, se = truth_check(DGPS[name], args.seed)
        truths[name] = (DGPS[name].true_ratio, mc, se)
        print(f"{name}: R = {DGPS[name].true_ratio:.4f} analytic, {mc:.4f} ± {se:.4f} MC")
    cells = run_cells(run_cell, args)
    seconds = time.perf_counter() - t0
    text = section(cells, args, truths, seconds)
    print()
    print(table(cells))
    print(f"\n{seconds:.0f} s in all")
    if args.write:
        args.md.write_text(replace_section(args.md.read_text(), SECTION, text))
        print(f"wrote {SECTION[3:]} into {args.md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
