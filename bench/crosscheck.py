"""The cross-engine oracle: cluster_spark's staged statistics against the per-metric
queries' and DuckDB's answers, for every (experiment, metric, variant) and winsorized row.

Each engine's answer is brought to one row per key (experiment, metric, variant,
winsorized) holding the quantities it has (`QUANTITIES`), like with like:

- cluster_spark: the staging table's rows of the run, merged per key with Chan et al.'s
  formulas if there are several (`CupedStats.from_row`); raw second moments derived from the
  centered ones, Σm² = css_mm + n·m̄² (no cancellation: every term is ≥ 0 here);
- per-metric (`queries.per_metric_query`): n, Σm, Σd, Σm², Σd², Σmd as summed, means as
  Σ/n and the caps; no centered co-moments (Σm² − (Σm)²/n cancels: it is no 1e-9 oracle);
- DuckDB (`duckdb_peer`): every quantity, computed natively (centered ones by
  `var_pop`/`covar_pop`, raw ones by summing products).

Two values agree when |a − b| ≤ RTOL·max(|a|, |b|) or |a − b| ≤ ATOL (zeros); both
missing (NULL: no included units, no cap) also agree. A centered co-moment is computed
from terms as large as its raw counterpart (Σmd for css_md), so its rounding is relative
to that: for a mean metric (d ≡ 1) css_md is 0 exactly in DuckDB and ~1e-12 after Spark's
merges of partial sums of size ~1e4. Its scale is max(|a|, |b|, |raw|).

Any disagreement, a key an engine lacks or one only it has raises `CrossCheckError`
naming key, quantity and all three values.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import reduce
from typing import Any

import paths  # noqa: F401  (src/ on sys.path before cluster_spark)

from cluster_spark.stats.cuped import CupedStats
from cluster_spark.tables import ANALYSIS_UNITS_METRIC, CAP_COLUMNS

RTOL = 1e-9
ATOL = 1e-12
RAW = ("n_units", "sum_m", "sum_d", "mean_m", "mean_d", "sum_mm", "sum_dd", "sum_md")
CENTERED = ("css_mm", "css_dd", "css_md")
RAW_OF = {"css_mm": "sum_mm", "css_dd": "sum_dd", "css_md": "sum_md"}
COUNTS = ("n_zero_denominator", "n_incomplete_window", "n_unbaked")
JACKKNIFE = ("jk_rr",)  # of a group staged in one row (merged ones have none)
QUANTITIES = (*RAW, *CENTERED, *COUNTS, *CAP_COLUMNS, *JACKKNIFE)

Key = tuple[str, str, str, bool]  # (experiment, metric, variant, winsorized)
Groups = dict[Key, dict[str, Any]]


class CrossCheckError(AssertionError):
    """Engines disagree; the message lists every disagreement."""


@dataclass(frozen=True)
class CrossCheck:
    """A passed check: (experiment, metric, variant) groups and rows (× winsorized)
    compared, single values compared, the largest relative difference |a − b| / max(|a|,
    |b|) among them (0 where both are 0), and the engines (cluster_spark first)."""

    groups: int
    rows: int
    values: int
    max_rel_diff: float
    engines: tuple[str, ...]


def _raw_from_centered(g: dict[str, Any]) -> dict[str, Any]:
    """Add Σm², Σd², Σmd from n, means and centered co-moments (None without units)."""
    n = g["n_units"]
    for q, a, b in (("sum_mm", "m", "m"), ("sum_dd", "d", "d"), ("sum_md", "m", "d")):
        ma, mb, css = g[f"mean_{a}"], g[f"mean_{b}"], g[f"css_{a}{b}"]
        g[q] = None if None in (ma, mb, css) else css + n * ma * mb
    return g


def _first(values: Iterable[Any]) -> Any:
    return next((v for v in values if v is not None), None)


def _total(values: Iterable[Any]) -> Any:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def staged_groups(rows: Iterable[Mapping[str, Any]]) -> Groups:
    """cluster_spark's staging rows (one run) per key, merged where there are several;
    the overall rows of the config's metrics only (slice rows have a `dimension`; the
    analysis-unit balance rows are no metric the other engines compute)."""
    parts: dict[Key, list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        if r.get("dimension") is not None or r["metric"] == ANALYSIS_UNITS_METRIC:
            continue
        parts[(r["experiment_id"], r["metric"], r["variant"], bool(r["winsorized"]))].append(r)
    out: Groups = {}
    for key, rs in parts.items():
        if len(rs) == 1:
            g = {q: rs[0][q] for q in ("n_units", "mean_m", "mean_d", *CENTERED, *JACKKNIFE)}
        else:
            s: CupedStats = reduce(CupedStats.__add__, map(CupedStats.from_row, rs))
            g = {"n_units": s.n, "mean_m": s.mean_m, "mean_d": s.mean_d}
            g |= {q: getattr(s, q) for q in CENTERED}
        g |= {q: _total(r[q] for r in rs) for q in ("sum_m", "sum_d", *COUNTS)}
        g |= {q: _first(r[q] for r in rs) for q in CAP_COLUMNS}
        out[key] = _raw_from_centered(g)
    return out


def per_metric_groups(
    answers: Mapping[str, Iterable[Mapping[str, Any]]], exact_caps: bool = True
) -> Groups:
    """The per-metric queries' rows (metric → rows) per key: raw sums, means, caps.
    `exact_caps=False` (Spark's percentile_approx approximate, see `duckdb_peer`): caps
    and winsorized rows, from another approximate summary, are kept out (empty rows)."""
    out: Groups = {}
    for metric, rows in answers.items():
        for r in rows:
            # a cap it did not compute: none
            caps = {c: r.get(c) for c in CAP_COLUMNS} if exact_caps else {}
            for winsorized, w in ((False, ""), (True, "_w")):
                if f"sum_m{w}" not in r:
                    continue
                n = r["n"]
                g = {"n_units": n, **caps}
                g |= {f"sum_{v}": r[f"sum_{v}{w}"] for v in ("m", "d", "mm", "dd", "md")}
                g |= {f"mean_{v}": g[f"sum_{v}"] / n for v in ("m", "d")}
                key = (r["experiment_id"], metric, r["variant"], winsorized)
                out[key] = g if exact_caps or not winsorized else {}
    return out


def duckdb_groups(rows: Iterable[Mapping[str, Any]]) -> Groups:
    """DuckDB's rows (`duckdb_peer.staged_statistics`) per key."""
    return {
        (r["experiment_id"], r["metric"], r["variant"], bool(r["winsorized"])): {
            q: r[q] for q in QUANTITIES
        }
        for r in rows
    }


def _rel_diff(a: Any, b: Any, floor: float = 0.0, atol: float = ATOL) -> float | None:
    """|a − b| / max(|a|, |b|, floor) (0 when equal), or None when they disagree."""
    if a is None or b is None:
        return 0.0 if a is b else None
    diff, scale = abs(a - b), max(abs(a), abs(b), floor)
    if diff <= RTOL * scale or diff <= atol:
        return diff / scale if scale else 0.0
    return None


def _show(values: Mapping[str, Any], engine: str) -> str:
    if engine not in values:
        return "not computed"
    return "NULL" if values[engine] is None else repr(values[engine])


def crosscheck(staged: Groups, engines: Mapping[str, Groups]) -> CrossCheck:
    """Compare every staged key and quantity with each engine (name → its groups) that has
    the quantity; raise `CrossCheckError` on any disagreement or missing row."""
    names = ["cluster_spark", *engines]
    problems, worst, count = [], 0.0, 0
    for name, groups in engines.items():
        for key in sorted(set(groups) - set(staged)):
            problems.append(f"{_label(key)}: {name} has a row that cluster_spark did not stage")
    for key in sorted(staged):
        ref = staged[key]
        problems += [f"{_label(key)}: no {n} row" for n, g in engines.items() if key not in g]
        for q in (q for q in QUANTITIES if q in ref):
            values = {"cluster_spark": ref[q]}
            values |= {n: g[key][q] for n, g in engines.items() if q in g.get(key, {})}
            raw = abs(ref.get(RAW_OF.get(q)) or 0.0)
            atol = 0.0 if q in JACKKNIFE else ATOL  # a variance of R: tiny, never 0 by rounding
            diffs = [
                _rel_diff(ref[q], v, raw, atol) for n, v in values.items() if n != "cluster_spark"
            ]
            count += len(diffs)
            if None in diffs:
                shown = ", ".join(f"{n} {_show(values, n)}" for n in names)
                problems.append(f"{_label(key)} {q}: {shown}")
            else:
                worst = max([worst, *diffs])
    if problems:
        shown = "; the first 20" if len(problems) > 20 else ""
        head = (
            f"cross-engine check failed: {len(problems)} disagreements (values agree within "
            f"{RTOL:g} relative or {ATOL:g} absolute){shown}:"
        )
        raise CrossCheckError("\n  ".join([head, *problems[:20]]))
    return CrossCheck(
        groups=len({k[:3] for k in staged}),
        rows=len(staged),
        values=count,
        max_rel_diff=worst,
        engines=tuple(names),
    )


def _label(key: Key) -> str:
    experiment, metric, variant, winsorized = key
    return f"{experiment} / {metric} / {variant} ({'winsorized' if winsorized else 'raw'})"
