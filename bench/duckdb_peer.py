"""The single-node peer: DuckDB computing cluster_spark's staged statistics from the same
Delta tables, as SQL generated from the same `Config` (nothing written per metric).

The tables reach DuckDB through the `deltalake` package (`DeltaTable.to_pyarrow_dataset()`
registered as a view; DuckDB's own delta extension is not installed here). Per plan
(`staging.plan.plans`: the experiments of one assignment unit) one statement computes
what `staging` stages (docs/methods.md, "Per-unit values"):

- first exposure per (experiment, unit) within the experiment's dates, units seen in two
  variants dropped;
- events of each source joined to their unit's exposures, analysis units seen under
  several assignment units dropped (`multi_unit_policy: drop`), NULL analysis units
  dropped where the source says so;
- per (experiment, unit) each component over the events after exposure and up to the
  analysis time, inside its window and bake cut-off, through its filter (NULL rule of
  `config.Condition`); units without events are zeros;
- the completed-window and bake rules, winsorization caps pooled across variants from the
  raw values of included units (zeros ignored by default), clamped rows beside the raw
  ones, the conversion rule on the (clamped) values;
- per (experiment, metric, variant, winsorized): n_units, sum_m, sum_d, mean_m, mean_d,
  css_* (`var_pop`/`covar_pop` × n, as staged), the raw second moments sum_mm, sum_dd,
  sum_md, the exclusion counts, the caps and the cluster jackknife's jk_rr (the units'
  (R_(−g) − R)², the group's totals by a window; NULL when a unit holds the whole ΣD).

Timestamps are compared as epoch microseconds (windows and bake are exact durations, as
in `staging.filters.shift`); config values are bound parameters, column names quoted
identifiers. Caps: Spark's `percentile_approx(x, q, PERCENTILE_ACCURACY)` is a
Greenwald–Khanna summary with relative error ε = 1/PERCENTILE_ACCURACY; while a cap has
fewer than 1/(2ε) = `EXACT_CAP_VALUES` values no sample is ever merged or given rank slack
(Spark's `QuantileSummaries`: δ = ⌊2εn⌋ = 0), so it returns the exact rank statistic: the
⌈q·n⌉-th smallest value (the smallest for q ≤ ε, the largest for q ≥ 1 − ε), reproduced
here. From `EXACT_CAP_VALUES` values on, Spark's answer depends on its partial summaries
and cannot be matched: pass the staged caps (`caps`) instead.

Not reproduced (a config using them is refused): CUPED, id mappings, the
`keep_first`/`fail` multi-unit policies, tables given by metastore name, CSV/JSON
tables, timestamps read as text or epoch numbers, a constant experiment id, the
analysis-unit (design-effect) moments and the diagnostics.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import duckdb
import paths  # noqa: F401  (src/ on sys.path before cluster_spark)
import pyarrow as pa
import pyarrow.dataset as ds
from deltalake import DeltaTable

from cluster_spark.config import Component, Condition, Config, Metric, Table
from cluster_spark.staging.options import PERCENTILE_ACCURACY
from cluster_spark.staging.plan import Plan, plans
from cluster_spark.tables import CAP_COLUMNS

#: Values per cap below which Spark's percentile_approx is an exact rank statistic.
EXACT_CAP_VALUES = PERCENTILE_ACCURACY // 2

#: Caps per (experiment, metric): {cap column: value or None}.
Caps = Mapping[tuple[str, str], Mapping[str, float | None]]

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_US = dt.timedelta(microseconds=1)


def _micros(t: dt.datetime | dt.timedelta) -> int:
    return (t - _EPOCH) // _US if isinstance(t, dt.datetime) else t // _US


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class _Sql:
    """A statement's bound parameters: `p(value)` returns the placeholder of a new one."""

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}

    def p(self, value: Any) -> str:
        key = f"p{len(self.params)}"
        self.params[key] = value
        return f"${key}"


def _condition(c: Condition, col: str, sql: _Sql) -> str:
    """`config.Condition` over column `col`: NULL kept by ne/not_in, dropped by the rest."""
    if c.op in ("in", "not_in"):
        member = f"{col} IN ({', '.join(sql.p(v) for v in c.value)})"
        return member if c.op == "in" else f"({col} IS NULL OR NOT {member})"
    if c.op in ("is_null", "not_null"):
        return f"{col} IS {'' if c.op == 'is_null' else 'NOT '}NULL"
    op = {"eq": "=", "ne": "IS DISTINCT FROM", "gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    return f"{col} {op[c.op]} {sql.p(c.value)}"


def _keep(comp: Component, bake_hours: float, cols: dict[str, str], sql: _Sql) -> str:
    """`staging.filters.event_condition` over a joined event row."""
    terms = ["_ts >= exposure_us", "_ts <= analysis_us"]
    if comp.window is not None:
        start = dt.timedelta(days=comp.window.start_day)
        terms.append(f"_ts >= exposure_us + {sql.p(_micros(start))}")
        terms.append(f"_ts < exposure_us + {sql.p(_micros(comp.window.horizon))}")
    if bake_hours:
        terms.append(f"_ts <= analysis_us - {sql.p(_micros(dt.timedelta(hours=bake_hours)))}")
    terms += [_condition(c, cols[c.column], sql) for c in comp.filter]
    return " AND ".join(terms)


def _aggregate(comp: Component, keep: str, cols: dict[str, str]) -> str:
    """A component per (experiment, unit); distinct values compared as strings, as staged."""
    if comp.agg == "sum":
        return f"sum(CAST({cols[comp.column]} AS DOUBLE)) FILTER (WHERE {keep})"
    if comp.agg == "count":
        return f"count(*) FILTER (WHERE {keep})"
    return f"count(DISTINCT CAST({cols[comp.column]} AS VARCHAR)) FILTER (WHERE {keep})"


def _rules(metric: Metric, sql: _Sql) -> tuple[str, str]:
    """(complete, baked): `staging.options.included` over a unit row."""
    complete, baked = ["TRUE"], ["TRUE"]
    for comp in metric.components.values():
        horizon = comp.window.horizon if comp.window else dt.timedelta(0)
        if metric.completed_windows_only and comp.window:
            complete.append(f"exposure_us + {sql.p(_micros(horizon))} <= analysis_us")
        if metric.bake_hours:
            reach = horizon + dt.timedelta(hours=metric.bake_hours)
            baked.append(f"exposure_us + {sql.p(_micros(reach))} <= analysis_us")
    return " AND ".join(complete), " AND ".join(baked)


def _rank_statistic(values: str, q: float, sql: _Sql) -> str:
    """Spark's percentile_approx of a sorted DuckDB list while it is exact (module doc)."""
    eps = 1.0 / PERCENTILE_ACCURACY
    if q <= eps:
        return f"{values}[1]"
    if q >= 1 - eps:
        return f"{values}[len({values})]"
    return f"{values}[CAST(ceil({sql.p(q)} * len({values})) AS BIGINT)]"


def _computed_caps(plan: Plan, names: list[str], sql: _Sql) -> str:
    """Per (experiment, metric): the caps of a winsorized metric, from its included units'
    raw values pooled across variants."""
    selects = []
    for name in names:
        metric = plan.metrics[name]
        lists, caps = [], []
        for role, col in (("num", "m"), ("den", "d")):
            w = metric.components[role].winsorize
            for side in ("lower", "upper"):
                q = getattr(w, side) if w else None
                if q is None:
                    caps.append(f"NULL::DOUBLE AS {role}_{side}_cap")
                    continue
                keep = "complete AND baked" + (f" AND {col} <> 0" if w.ignore_zeros else "")
                lists.append(f"list_sort(list({col}) FILTER (WHERE {keep})) AS _{role}")
                caps.append(f"{_rank_statistic(f'_{role}', q, sql)} AS {role}_{side}_cap")
        lists = list(dict.fromkeys(lists))
        selects.append(
            f"SELECT experiment_id, metric, {', '.join(caps)} FROM ("
            f"SELECT experiment_id, metric, {', '.join(lists)} FROM vals "
            f"WHERE metric = {sql.p(name)} GROUP BY experiment_id, metric)"
        )
    return " UNION ALL ".join(selects)


def _clamp(x: str, role: str, ignore_zeros: bool) -> str:
    low, high = f"c.{role}_lower_cap", f"c.{role}_upper_cap"
    clamped = f"least(greatest({x}, coalesce({low}, {x})), coalesce({high}, {x}))"
    return f"CASE WHEN {x} = 0 THEN {x} ELSE {clamped} END" if ignore_zeros else clamped


def _units(config: Config, plan: Plan) -> str:
    """`units`: first exposure per (experiment, unit) within the experiment's dates (its
    bounds from `_bounds`), units seen in two variants dropped."""
    src = config.exposures
    return f"""units AS (
  SELECT x.experiment_id, x._unit, min(x._variant) AS variant, min(x._ts) AS exposure_us,
         any_value(b.analysis_us) AS analysis_us, any_value(b.start_us) AS start_us
  FROM (SELECT CAST({_ident(src.experiment_id)} AS VARCHAR) AS experiment_id,
               CAST({_ident(src.ids[plan.unit_type])} AS VARCHAR) AS _unit,
               CAST({_ident(src.variant)} AS VARCHAR) AS _variant,
               epoch_us({_ident(src.timestamp.column)}) AS _ts FROM _exposures) x
  JOIN _bounds b USING (experiment_id)
  WHERE x._unit IS NOT NULL AND x._variant IS NOT NULL
    AND x._ts >= b.start_us AND x._ts < b.analysis_us
  GROUP BY x.experiment_id, x._unit
  HAVING min(x._variant) = max(x._variant))"""


def _sources(config: Config, plan: Plan, sql: _Sql) -> list[str]:
    """`ev<i>` (source i's events in their unit's experiment range), `offenders` (analysis
    units under several units), `agg<i>` (its components per (experiment, unit)) and
    `wide` (every unit with every component column, `plan.components`' names)."""
    ctes, aggs, keyed = [], [], []
    for i, source in enumerate(plan.sources):
        s = config.sources[source]
        route = config.unit_route(source, plan.unit_type)
        if not isinstance(route, str):
            raise ValueError(f"duckdb peer: source '{source}' needs an id mapping")
        parts = {
            col: (comp, bake)
            for col, comp, bake in plan.components.values()
            if comp.source == source
        }
        used = {c.column for c, _ in parts.values() if c.column}
        used |= {cond.column for c, _ in parts.values() for cond in c.filter}
        cols = {name: f"_e{k}" for k, name in enumerate(sorted(used))}
        sub = s.ids.get(plan.analysis_unit) if plan.analysis_unit else None
        ts = _ident(s.timestamp.column)
        selected = "".join(f", {_ident(n)} AS {a}" for n, a in cols.items())
        null_subs = " AND e._sub IS NOT NULL" if sub and s.drop_null_ids else ""
        ctes.append(
            f"""ev{i} AS (
  SELECT u.experiment_id, u._unit, u.exposure_us, u.analysis_us, e.* EXCLUDE (_unit)
  FROM (SELECT CAST({_ident(route)} AS VARCHAR) AS _unit, epoch_us({ts}) AS _ts,
               {f"CAST({_ident(sub)} AS VARCHAR)" if sub else "NULL"} AS _sub{selected}
        FROM _source{i}) e
  JOIN units u ON e._unit = u._unit
  WHERE e._ts >= u.start_us AND e._ts <= u.analysis_us{null_subs})"""
        )
        rows = f"ev{i} ANTI JOIN offenders USING (experiment_id, _sub)" if sub else f"ev{i}"
        columns = ", ".join(
            f"{_aggregate(comp, _keep(comp, bake, cols, sql), cols)} AS {col}"
            for col, (comp, bake) in parts.items()
        )
        aggs.append(
            f"agg{i} AS (SELECT experiment_id, _unit, {columns} FROM {rows} "
            f"GROUP BY experiment_id, _unit)"
        )
        if sub:
            keyed.append(i)
    if keyed:
        pairs = " UNION ".join(
            f"SELECT DISTINCT experiment_id, _unit, _sub FROM ev{i} WHERE _sub IS NOT NULL"
            for i in keyed
        )
        ctes.append(
            f"offenders AS (SELECT experiment_id, _sub FROM ({pairs}) "
            f"GROUP BY experiment_id, _sub HAVING count(*) > 1)"
        )
    joins = " ".join(f"LEFT JOIN agg{i} USING (experiment_id, _unit)" for i in range(len(aggs)))
    return [*ctes, *aggs, f"wide AS (SELECT * FROM units {joins})"]


def _values(plan: Plan, sql: _Sql, caps_given: bool) -> list[str]:
    """`vals` (long per-unit values m, d with the complete and baked flags), `caps` and
    `capped` (the raw rows and, for winsorized metrics, the clamped ones, with caps)."""

    def value(name: str, role: str) -> str:
        if plan.metrics[name].components[role].agg == "unit_count":
            return "1.0::DOUBLE"
        return f"coalesce(CAST({plan.components[(name, role)][0]} AS DOUBLE), 0.0)"

    per_metric = []
    for name, metric in plan.metrics.items():
        exps = ", ".join(sql.p(e.id) for e in plan.experiments if name in e.metrics)
        complete, baked = _rules(metric, sql)
        per_metric.append(
            f"SELECT experiment_id, variant, {sql.p(name)} AS metric, {value(name, 'num')} AS m, "
            f"{value(name, 'den')} AS d, {complete} AS complete, {baked} AS baked "
            f"FROM wide WHERE experiment_id IN ({exps})"
        )
    ctes = [f"vals AS ({' UNION ALL '.join(per_metric)})"]
    cap_cols = ", ".join(f"c.{c}" for c in CAP_COLUMNS)
    names = [n for n, metric in plan.metrics.items() if metric.winsorized]
    if caps_given or names:
        caps = "SELECT * FROM _caps" if caps_given else _computed_caps(plan, names, sql)
        ctes.append(f"caps AS ({caps})")
        raw = "vals v LEFT JOIN caps c USING (experiment_id, metric)"
    else:
        raw = f"vals v, (SELECT {', '.join(f'NULL::DOUBLE AS {c}' for c in CAP_COLUMNS)}) c"
    rows = [f"SELECT v.*, FALSE AS winsorized, {cap_cols} FROM {raw}"]
    for name in names:
        w = {r: plan.metrics[name].components[r].winsorize for r in ("num", "den")}
        m = _clamp("v.m", "num", bool(w["num"] and w["num"].ignore_zeros))
        d = _clamp("v.d", "den", bool(w["den"] and w["den"].ignore_zeros))
        rows.append(
            f"SELECT v.experiment_id, v.variant, v.metric, {m} AS m, {d} AS d, v.complete, "
            f"v.baked, TRUE AS winsorized, {cap_cols} FROM vals v JOIN caps c USING "
            f"(experiment_id, metric) WHERE v.metric = {sql.p(name)}"
        )
    return [*ctes, f"capped AS ({' UNION ALL '.join(rows)})"]


def _statistics(plan: Plan, sql: _Sql) -> str:
    """The final select: per (experiment, metric, variant, winsorized) the staged columns
    of the included units, after the conversion rule (on the clamped values, as staged)."""
    converting = [n for n, m in plan.metrics.items() if m.kind == "ratio" and m.conversion_rate]
    m = "m"
    if converting:
        names = ", ".join(map(sql.p, converting))
        m = f"CASE WHEN metric IN ({names}) AND d = 0 THEN 0.0 ELSE m END"
    inc = "FILTER (WHERE complete AND baked)"
    return f"""
SELECT experiment_id, metric, variant, winsorized,
  count(*) {inc} AS n_units,
  sum(m) {inc} AS sum_m, sum(d) {inc} AS sum_d,
  avg(m) {inc} AS mean_m, avg(d) {inc} AS mean_d,
  var_pop(m) {inc} * count(*) {inc} AS css_mm,
  var_pop(d) {inc} * count(*) {inc} AS css_dd,
  covar_pop(m, d) {inc} * count(*) {inc} AS css_md,
  sum(m * m) {inc} AS sum_mm, sum(d * d) {inc} AS sum_dd, sum(m * d) {inc} AS sum_md,
  count(*) FILTER (WHERE complete AND baked AND d = 0) AS n_zero_denominator,
  count(*) FILTER (WHERE NOT complete) AS n_incomplete_window,
  count(*) FILTER (WHERE complete AND NOT baked) AS n_unbaked,
  {", ".join(f"any_value({c}) AS {c}" for c in CAP_COLUMNS)},
  CASE WHEN count(*) FILTER (WHERE complete AND baked AND _n = d) = 0
    THEN sum(power((m - _sm / _n * d) / (_n - d), 2)) FILTER (WHERE complete AND baked AND _n <> d)
  END AS jk_rr
FROM (
  SELECT *,
    sum(CASE WHEN complete AND baked THEN d END) OVER groups AS _n,
    sum(CASE WHEN complete AND baked THEN m END) OVER groups AS _sm
  FROM (SELECT * REPLACE ({m} AS m) FROM capped)
  WINDOW groups AS (PARTITION BY experiment_id, metric, variant, winsorized)
)
GROUP BY experiment_id, metric, variant, winsorized
ORDER BY experiment_id, metric, variant, winsorized"""


def _plan_sql(plan: Plan, config: Config, caps_given: bool) -> tuple[str, dict[str, Any]]:
    """One statement for one plan: its staged rows (module doc), and its parameters."""
    if plan.cuped:
        raise ValueError("duckdb peer: CUPED is not reproduced")
    if any(e.multi_unit_policy != "drop" for e in plan.experiments):
        raise ValueError("duckdb peer: only multi_unit_policy 'drop' is reproduced")
    if not isinstance(config.exposures.experiment_id, str):
        raise ValueError("duckdb peer: a constant experiment id is not reproduced")
    tables = [config.exposures, *(config.sources[s] for s in plan.sources)]
    if any(t.timestamp.format or t.timestamp.epoch for t in tables):
        raise ValueError("duckdb peer: timestamps read as text or epoch are not reproduced")
    sql = _Sql()
    ctes = [_units(config, plan), *_sources(config, plan, sql), *_values(plan, sql, caps_given)]
    return "WITH " + ",\n".join(ctes) + _statistics(plan, sql), sql.params


def _dataset(table: Table) -> ds.Dataset:
    """A Delta or Parquet table by path as an Arrow dataset (scanned lazily by DuckDB)."""
    if table.path is None:
        raise ValueError(f"duckdb peer: table '{table.table}' is given by name, not by path")
    if table.format == "delta":
        return DeltaTable(table.path).to_pyarrow_dataset()
    if table.format != "parquet":
        raise ValueError(f"duckdb peer: {table.format} tables are not reproduced")
    return ds.dataset(table.path, format="parquet")


def staged_statistics(
    config: Config,
    analysis_date: dt.date,
    experiment_ids: list[str],
    threads: int,
    caps: Caps | None = None,
) -> list[dict[str, Any]]:
    """The staged rows DuckDB computes for these experiments, one dict per (experiment,
    metric, variant, winsorized) with the columns of the module doc. `caps` replaces the
    computed winsorization caps (needed from `EXACT_CAP_VALUES` values on). A new
    in-memory connection with `threads` threads reads the tables on every call."""
    con = duckdb.connect(config={"threads": threads})
    try:
        con.register("_exposures", _dataset(config.exposures))
        if caps is not None:
            con.register(
                "_caps",
                pa.Table.from_pylist(
                    [{"experiment_id": e, "metric": m, **c} for (e, m), c in caps.items()],
                    pa.schema(
                        [("experiment_id", pa.string()), ("metric", pa.string())]
                        + [(c, pa.float64()) for c in CAP_COLUMNS]
                    ),
                ),
            )
        out = []
        for plan in plans(config, experiment_ids, analysis_date):
            bounds = [
                {
                    "experiment_id": e.id,
                    "start_us": _micros(e.start_time),
                    "analysis_us": _micros(e.analysis_time(analysis_date)),
                }
                for e in plan.experiments
            ]
            con.register("_bounds", pa.Table.from_pylist(bounds))
            for i, source in enumerate(plan.sources):
                con.register(f"_source{i}", _dataset(config.sources[source]))
            statement, params = _plan_sql(plan, config, caps is not None)
            cursor = con.execute(statement, params)
            names = [d[0] for d in cursor.description]
            out += [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        return out
    finally:
        con.close()
