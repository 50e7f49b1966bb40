"""The table contracts, declared once: the per-unit values at the middle of staging, and
the `staging`, `results` and `diagnostics` Delta tables (README, "Output tables").

Staging writes `STAGING_SCHEMA` and `DIAGNOSTICS_SCHEMA`; the reducer reads the moment
columns back (`MOMENT_COLUMNS`, `CAP_COLUMNS`, `PRE_CAP_COLUMNS`, `ANALYSIS_UNIT_COLUMNS`)
and writes `RESULT_COLUMNS`. Tests check each frame against these at the seam.
"""

from __future__ import annotations

from pyspark.sql import types as T

#: The per-unit contract (staging.units → staging.options and staging.moments): one row per
#: experiment × assignment unit × metric; m, d are the unit's numerator and denominator,
#: x, y the CUPED pre-period ones (0 without CUPED); complete and baked say whether the
#: unit is in the metric under the completed-window and bake rules. A unit's overall row
#: has NULL `dimension` and `slice`; with slices it has one more row per dimension.
UNIT_VALUES_SCHEMA = T.StructType(
    [
        T.StructField("experiment_id", T.StringType()),
        T.StructField("variant", T.StringType()),
        T.StructField("_unit", T.StringType()),
        T.StructField("dimension", T.StringType()),
        T.StructField("slice", T.StringType()),
        T.StructField("metric", T.StringType()),
        T.StructField("m", T.DoubleType()),
        T.StructField("d", T.DoubleType()),
        T.StructField("x", T.DoubleType()),
        T.StructField("y", T.DoubleType()),
        T.StructField("complete", T.BooleanType()),
        T.StructField("baked", T.BooleanType()),
    ]
)

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


STAGING_SCHEMA = T.StructType(
    [
        T.StructField("experiment_id", T.StringType(), False),
        T.StructField("analysis_date", T.DateType(), False),
        T.StructField("metric", T.StringType(), False),
        T.StructField("variant", T.StringType(), False),
        T.StructField("dimension", T.StringType(), True),
        T.StructField("slice", T.StringType(), True),
        T.StructField("winsorized", T.BooleanType(), False),
        T.StructField("n_units", T.LongType(), False),
        T.StructField("sum_m", T.DoubleType(), True),
        T.StructField("sum_d", T.DoubleType(), True),
        T.StructField("mean_m", T.DoubleType(), True),
        T.StructField("mean_d", T.DoubleType(), True),
        T.StructField("css_mm", T.DoubleType(), True),
        T.StructField("css_dd", T.DoubleType(), True),
        T.StructField("css_md", T.DoubleType(), True),
        *[T.StructField(c, T.DoubleType(), True) for c in CUPED_COLUMNS],
        T.StructField("n_zero_denominator", T.LongType(), False),
        T.StructField("n_incomplete_window", T.LongType(), False),
        T.StructField("n_unbaked", T.LongType(), False),
        *[T.StructField(c, T.DoubleType(), True) for c in CAP_COLUMNS + PRE_CAP_COLUMNS],
        T.StructField("au_n_units", T.LongType(), True),
        *[T.StructField(c, T.DoubleType(), True) for c in ANALYSIS_UNIT_COLUMNS[1:]],
        T.StructField("run_id", T.StringType(), False),
    ]
)


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


STAGING_STAT_COLUMNS = [f.name for f in STAGING_SCHEMA.fields if f.name not in STAGING_KEYS]

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

DIAGNOSTICS_SCHEMA = T.StructType(
    [
        T.StructField("experiment_id", T.StringType(), False),
        T.StructField("analysis_date", T.DateType(), False),
        T.StructField("metric", T.StringType(), True),
        T.StructField("variant", T.StringType(), True),
        T.StructField("dimension", T.StringType(), True),
        T.StructField("slice", T.StringType(), True),
        T.StructField("check", T.StringType(), False),
        T.StructField("value", T.LongType(), True),
        T.StructField("run_id", T.StringType(), False),
    ]
)

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
