"""The table contracts, declared once as (column, Spark SQL type) lists, in plain Python
(no pyspark: the reducer imports them): the per-unit values at the middle of staging, and
the `staging`, `results` and `diagnostics` Delta tables (README, "Output tables").

Staging writes `STAGING_COLUMNS` and `DIAGNOSTICS_COLUMNS`; the reducer reads the moment
columns back (`MOMENT_COLUMNS`, `CAP_COLUMNS`, `PRE_CAP_COLUMNS`, `ANALYSIS_UNIT_COLUMNS`)
and writes `RESULT_COLUMNS`. Tests check each frame against these at the seam. The keys
(`STAGING_KEYS` but `dimension` and `slice`, which are NULL on overall rows), the counts
`n_*` and `check` are never NULL.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import typing
from typing import Any

from cluster_spark.kinds import KINDS

#: The per-unit contract (staging.units → staging.options and staging.moments): one row per
#: experiment × assignment unit × metric; m, d are the unit's numerator and denominator,
#: x, y the CUPED pre-period ones (0 without CUPED); w the covariates' columns
#: (`staging.covariates`; NULL when no experiment of the pass has covariates, else
#: NULL-padded to the pass's widest); complete and baked say whether the
#: unit is in the metric under the completed-window and bake rules. A unit's overall row
#: has NULL `dimension` and `slice`; with slices it has one more row per dimension.
UNIT_VALUES_COLUMNS: list[tuple[str, str]] = [
    ("experiment_id", "string"),
    ("variant", "string"),
    ("_unit", "string"),
    ("dimension", "string"),
    ("slice", "string"),
    ("metric", "string"),
    ("m", "double"),
    ("d", "double"),
    ("x", "double"),
    ("y", "double"),
    ("w", "array<double>"),
    ("complete", "boolean"),
    ("baked", "boolean"),
]

#: The staged pseudo-metric of analysis units per assignment unit (m = the unit's active
#: analysis units, d = 1), for the analysis-unit balance check (`srm_analysis_*`): not a
#: metric of the config (parentheses are not allowed in metric names), never a results row.
ANALYSIS_UNITS_METRIC = "(analysis_units)"

#: Winsorization thresholds per component and side.
CAP_COLUMNS = ("num_lower_cap", "num_upper_cap", "den_lower_cap", "den_upper_cap")

#: The CUPED pre-period's own thresholds (X at `pre_num_*`, Y at `pre_den_*`): the same
#: percentiles of the pre-period values; null unless the experiment sets cuped_lookback_days.
PRE_CAP_COLUMNS = tuple(f"pre_{c}" for c in CAP_COLUMNS)

#: Pre-period (CUPED) moments: null unless the experiment sets cuped_lookback_days.
CUPED_COLUMNS = (
    "mean_x",
    "mean_y",
    "css_xx",
    "css_yy",
    "css_mx",
    "css_my",
    "css_dx",
    "css_dy",
    "css_xy",
)


#: Moments of the analysis-unit values (m_j, d_j), for the design effect: null unless the
#: experiment has an analysis unit and the metric qualifies (`analysis_unit_moments`).
ANALYSIS_UNIT_COLUMNS = tuple(
    f"au_{c}" for c in ("n_units", "mean_m", "mean_d", "css_mm", "css_dd", "css_md")
)

#: The columns of kinds with their own statistics (`kinds.Kind.columns`), each null on
#: other kinds' rows; e.g. a quantile metric's p, Q̂(p) and outer quantiles (its ratio
#: columns hold the moments of (values ≤ Q̂, values) per assignment unit).
KIND_COLUMNS = tuple(c for kind in KINDS.values() for c in kind.columns)

#: The cluster jackknife's sums of a moments group staged whole (`staging.moments.
#: jackknife_sums`): Σu², Σuv, Σv² over its included units g, u_g = R_(−g) − R and
#: v_g = P_(−g) − P the changes of the ratio and of the CUPED pre-period ratio when the
#: unit is left out (the last two NULL without CUPED); NULL where a leave-one-out ratio
#: is undefined (a unit holding the whole ΣD) and on kinds with their own stage.
JACKKNIFE_COLUMNS = ("jk_rr", "jk_rp", "jk_pp")

#: Regression adjustment with several covariates (`stats.regression`): the means of
#: v = (m, d, x, y, w₁, w₂, …) over the included units and the upper triangle of their
#: centered cross-products, row by row; NULL-padded beyond the metric's own covariates
#: (`staging.covariates`), NULL when no experiment of the pass has covariates.
COVARIATE_COLUMNS = ("cov_mean", "cov_css")


STAGING_COLUMNS: list[tuple[str, str]] = [
    ("experiment_id", "string"),
    ("analysis_date", "date"),
    ("metric", "string"),
    ("variant", "string"),
    ("dimension", "string"),
    ("slice", "string"),
    ("winsorized", "boolean"),
    ("n_units", "bigint"),
    ("sum_m", "double"),
    ("sum_d", "double"),
    ("mean_m", "double"),
    ("mean_d", "double"),
    ("css_mm", "double"),
    ("css_dd", "double"),
    ("css_md", "double"),
    *[(c, "double") for c in CUPED_COLUMNS],
    ("n_zero_denominator", "bigint"),
    ("n_incomplete_window", "bigint"),
    ("n_unbaked", "bigint"),
    *[(c, "double") for c in CAP_COLUMNS + PRE_CAP_COLUMNS],
    ("au_n_units", "bigint"),
    *[(c, "double") for c in ANALYSIS_UNIT_COLUMNS[1:]],
    *[(c, "double") for c in KIND_COLUMNS],
    *[(c, "double") for c in JACKKNIFE_COLUMNS],
    *[(c, "array<double>") for c in COVARIATE_COLUMNS],
    ("run_id", "string"),
]


STAGING_KEYS = (
    "experiment_id",
    "analysis_date",
    "metric",
    "variant",
    "dimension",
    "slice",
    "winsorized",
    "run_id",
)


STAGING_STAT_COLUMNS = [c for c, _ in STAGING_COLUMNS if c not in STAGING_KEYS]

#: The staged moments the reducer merges (n and means of M, D, X, Y and their 10 centered
#: co-moments; the CUPED ones are null without CUPED).
MOMENT_COLUMNS = (
    "n_units",
    "mean_m",
    "mean_d",
    "mean_x",
    "mean_y",
    "css_mm",
    "css_dd",
    "css_xx",
    "css_yy",
    "css_md",
    "css_mx",
    "css_my",
    "css_dx",
    "css_dy",
    "css_xy",
)

DIAGNOSTICS_COLUMNS: list[tuple[str, str]] = [
    ("experiment_id", "string"),
    ("analysis_date", "date"),
    ("metric", "string"),
    ("variant", "string"),
    ("dimension", "string"),
    ("slice", "string"),
    ("check", "string"),
    ("value", "bigint"),
    ("run_id", "string"),
]

#: The Spark SQL type of each Python field type of a row type.
_SQL_TYPES = {
    float: "double",
    int: "bigint",
    str: "string",
    bool: "boolean",
    dt.date: "date",
    list[str]: "array<string>",
}


def columns_of(row_type: type) -> list[tuple[str, str]]:
    """(column, Spark SQL type) of each field of the dataclass `row_type`, in order."""
    hints = typing.get_type_hints(row_type)
    out = []
    for f in dataclasses.fields(row_type):
        (python_type,) = [a for a in typing.get_args(hints[f.name]) if a is not type(None)]
        out.append((f.name, _SQL_TYPES[python_type]))
    return out


@dataclasses.dataclass
class ResultRow:
    """One row of the public `results` table; every column is nullable (README, "Output
    tables", documents each). The reducer builds each row through this type
    (`result_row`), so a misspelt column fails there, and `RESULT_COLUMNS` is generated
    from it. Overall rows have NULL `dimension` and `slice`; slice rows name them."""

    experiment_id: str | None = None
    analysis_date: dt.date | None = None
    metric: str | None = None
    variant: str | None = None
    dimension: str | None = None
    slice: str | None = None
    control_variant: str | None = None
    n_units: int | None = None
    n_analysis_units: int | None = None
    numerator_sum: float | None = None
    denominator_sum: float | None = None
    mean: float | None = None
    stderr: float | None = None
    effect_abs: float | None = None
    effect_abs_stderr: float | None = None
    effect_abs_ci_low: float | None = None
    effect_abs_ci_high: float | None = None
    effect_rel: float | None = None
    effect_rel_stderr: float | None = None
    effect_rel_ci_low: float | None = None
    effect_rel_ci_high: float | None = None
    p_value: float | None = None
    p_value_rel: float | None = None
    df: float | None = None
    alpha: float | None = None
    test: str | None = None
    variance_method: str | None = None
    alternative: str | None = None
    status: str | None = None
    winsorized: bool | None = None
    num_lower_cap: float | None = None
    num_upper_cap: float | None = None
    den_lower_cap: float | None = None
    den_upper_cap: float | None = None
    pre_num_lower_cap: float | None = None
    pre_num_upper_cap: float | None = None
    pre_den_lower_cap: float | None = None
    pre_den_upper_cap: float | None = None
    mean_uncapped: float | None = None
    effect_abs_uncapped: float | None = None
    effect_rel_uncapped: float | None = None
    effect_rel_uncapped_ci_low: float | None = None
    effect_rel_uncapped_ci_high: float | None = None
    p_value_uncapped: float | None = None
    cuped_applied: bool | None = None
    cuped_theta: float | None = None
    variance_reduction: float | None = None
    cuped_status: str | None = None
    effect_abs_unadjusted: float | None = None
    effect_rel_unadjusted: float | None = None
    effect_rel_unadjusted_ci_low: float | None = None
    effect_rel_unadjusted_ci_high: float | None = None
    p_value_unadjusted: float | None = None
    mean_adjusted: float | None = None
    control_mean_adjusted: float | None = None
    relative_ci_method: str | None = None
    effect_abs_cs_low: float | None = None
    effect_abs_cs_high: float | None = None
    p_value_sequential: float | None = None
    p_value_bh: float | None = None
    p_value_holm: float | None = None
    role: str | None = None
    direction: str | None = None
    margin: float | None = None
    decision: str | None = None
    noninferiority_bound: float | None = None
    p_value_noninferiority: float | None = None
    engine: str | None = None
    posterior_effect: str | None = None
    posterior_mean: float | None = None
    posterior_stderr: float | None = None
    credible_low: float | None = None
    credible_high: float | None = None
    chance_to_win: float | None = None
    risk_treatment: float | None = None
    risk_control: float | None = None
    mde_abs: float | None = None
    mde_rel: float | None = None
    design_effect: float | None = None
    srm_chi2: float | None = None
    srm_p_value: float | None = None
    srm_flag: bool | None = None
    srm_expected_share: float | None = None
    srm_sequential_p_value: float | None = None
    srm_analysis_p_value: float | None = None
    srm_analysis_flag: bool | None = None
    bias_p_value: float | None = None
    bias_flag: bool | None = None
    heterogeneity_q: float | None = None
    heterogeneity_p_value: float | None = None
    health: str | None = None
    health_reasons: list[str] | None = None
    recommendation: str | None = None
    recommendation_reasons: list[str] | None = None
    run_id: str | None = None


#: The public results contract (column, Spark SQL type), generated from `ResultRow`.
RESULT_COLUMNS: list[tuple[str, str]] = columns_of(ResultRow)


def result_row(**values: Any) -> dict[str, Any]:
    """`values` as a results row: every column of `ResultRow` in its order, unset ones
    None. Raises TypeError naming a key that is not a results column."""
    return vars(ResultRow(**values))
