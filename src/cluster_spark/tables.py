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

#: The per-unit contract (staging.units → staging.options and staging.moments): one row per
#: experiment × assignment unit × metric; m, d are the unit's numerator and denominator,
#: x, y the CUPED pre-period ones (0 without CUPED); complete and baked say whether the
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

#: A quantile metric's row (`stats.quantile.QuantileStats`): its probability p, the sample
#: quantile Q̂(p) and the sample quantiles at the outer probabilities; its ratio columns
#: hold the moments of (values ≤ Q̂, values) per assignment unit. Null for other kinds.
QUANTILE_COLUMNS = ("quantile_p", "quantile_estimate", "quantile_lower", "quantile_upper")


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
    *[(c, "double") for c in QUANTILE_COLUMNS],
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

#: The public results contract (column, Spark SQL type); README documents each column.
#: Overall rows have NULL `dimension` and `slice`; slice rows name them.
RESULT_COLUMNS: list[tuple[str, str]] = [
    ("experiment_id", "string"),
    ("analysis_date", "date"),
    ("metric", "string"),
    ("variant", "string"),
    ("dimension", "string"),
    ("slice", "string"),
    ("control_variant", "string"),
    ("n_units", "bigint"),
    ("n_analysis_units", "bigint"),
    ("numerator_sum", "double"),
    ("denominator_sum", "double"),
    ("mean", "double"),
    ("stderr", "double"),
    ("effect_abs", "double"),
    ("effect_abs_stderr", "double"),
    ("effect_abs_ci_low", "double"),
    ("effect_abs_ci_high", "double"),
    ("effect_rel", "double"),
    ("effect_rel_stderr", "double"),
    ("effect_rel_ci_low", "double"),
    ("effect_rel_ci_high", "double"),
    ("p_value", "double"),
    ("p_value_rel", "double"),
    ("df", "double"),
    ("alpha", "double"),
    ("test", "string"),
    ("alternative", "string"),
    ("status", "string"),
    ("winsorized", "boolean"),
    ("num_lower_cap", "double"),
    ("num_upper_cap", "double"),
    ("den_lower_cap", "double"),
    ("den_upper_cap", "double"),
    ("pre_num_lower_cap", "double"),
    ("pre_num_upper_cap", "double"),
    ("pre_den_lower_cap", "double"),
    ("pre_den_upper_cap", "double"),
    ("mean_uncapped", "double"),
    ("effect_abs_uncapped", "double"),
    ("effect_rel_uncapped", "double"),
    ("effect_rel_uncapped_ci_low", "double"),
    ("effect_rel_uncapped_ci_high", "double"),
    ("p_value_uncapped", "double"),
    ("cuped_applied", "boolean"),
    ("cuped_theta", "double"),
    ("variance_reduction", "double"),
    ("cuped_status", "string"),
    ("effect_abs_unadjusted", "double"),
    ("effect_rel_unadjusted", "double"),
    ("effect_rel_unadjusted_ci_low", "double"),
    ("effect_rel_unadjusted_ci_high", "double"),
    ("p_value_unadjusted", "double"),
    ("mean_adjusted", "double"),
    ("control_mean_adjusted", "double"),
    ("relative_ci_method", "string"),
    ("effect_abs_cs_low", "double"),
    ("effect_abs_cs_high", "double"),
    ("p_value_sequential", "double"),
    ("p_value_bh", "double"),
    ("p_value_holm", "double"),
    ("role", "string"),
    ("direction", "string"),
    ("margin", "double"),
    ("decision", "string"),
    ("noninferiority_bound", "double"),
    ("p_value_noninferiority", "double"),
    ("mde_abs", "double"),
    ("mde_rel", "double"),
    ("design_effect", "double"),
    ("srm_chi2", "double"),
    ("srm_p_value", "double"),
    ("srm_flag", "boolean"),
    ("srm_expected_share", "double"),
    ("srm_sequential_p_value", "double"),
    ("srm_analysis_p_value", "double"),
    ("srm_analysis_flag", "boolean"),
    ("bias_p_value", "double"),
    ("bias_flag", "boolean"),
    ("heterogeneity_q", "double"),
    ("heterogeneity_p_value", "double"),
    ("health", "string"),
    ("health_reasons", "array<string>"),
    ("recommendation", "string"),
    ("recommendation_reasons", "array<string>"),
    ("run_id", "string"),
]
