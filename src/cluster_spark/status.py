"""Status codes and made-up slice names of the results table, declared once.

`Status` says whether the reported effect columns of a row are defined and trustworthy;
`CupedStatus` says what CUPED did for the row (README, "Output tables"). Data problems never
raise: they give null estimates and one of these codes (as gbstats' result-level statuses).
Values are plain strings (`StrEnum`), written as they are.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """Status of a results row's estimates; the first that applies is reported."""

    #: The control variant has no units (treatment rows): effects null.
    CONTROL_MISSING = "control_missing"
    #: A slice row whose slice has fewer than the experiment's `min_slice_units`
    #: assignment units in some configured variant: counts and SRM given, estimates null.
    TOO_FEW_SLICE_UNITS = "too_few_slice_units"
    #: A group has fewer than 2 units (or the variant has none): all estimates null.
    TOO_FEW_UNITS = "too_few_units"
    #: ΣD = 0 in a group: all estimates null.
    ZERO_DENOMINATOR = "zero_denominator"
    #: A standard error is 0: estimates given, the CI and p-value of that effect null.
    ZERO_VARIANCE = "zero_variance"
    #: R_C = 0: the absolute effect is given, the relative effect is null.
    ZERO_CONTROL_MEAN = "zero_control_mean"
    #: The control mean is not significantly different from 0 (|R_C|/SE(R_C) < q, the
    #: CI's quantile): the relative interval carries no information (Fieller's is
    #: unbounded; the delta method's can collapse, e.g. at −100 %). The relative estimate
    #: is given; its CI, stderr and p-value are null. The absolute effect is unaffected.
    RELATIVE_CI_UNBOUNDED = "relative_ci_unbounded"
    #: Everything is defined.
    OK = "ok"


class CupedStatus(StrEnum):
    """What CUPED did for a treatment row (null on control rows and without CUPED)."""

    #: The adjusted effect is reported.
    APPLIED = "applied"
    #: Pre-period data unusable (ΣY = 0 or V_P = 0 in a group): unadjusted numbers.
    NO_PRE_DATA = "fallback_no_pre_data"
    #: The adjustment does not reduce the variance (Var_adj ≥ Var_unadj): unadjusted numbers.
    NO_GAIN = "fallback_no_gain"
    #: No comparison could be made (too few units, ΣD = 0): see `status`.
    NOT_COMPARED = "not_compared"
    #: The metric's kind has no CUPED (quantile metrics): unadjusted numbers.
    NOT_APPLICABLE = "not_applicable"


#: The slice of units whose dimension value is NULL (or missing at exposure).
NULL_SLICE = "(null)"
#: The slice pooling the smaller slices beyond an experiment's `max_slices`.
OTHER_SLICE = "(other)"
#: Slice names that are not attribute values: listed after the others.
POOLED_SLICES = (NULL_SLICE, OTHER_SLICE)
