"""Power and the cost of clustering: the minimum detectable effect of a comparison and
the design effect (Kish 1965). No Spark."""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats as sps

from cluster_spark.stats.inference import check_alpha
from cluster_spark.stats.ratio import RatioStats


def design_effect(
    stats: RatioStats,
    naive_unit_variance: float | None,
    n_analysis_units: float,
) -> float | None:
    """Design effect Var_delta(R) / (s²_y / N): clustered variance ÷ naive variance.

    ``Var_delta(R) = V/n`` (`RatioStats.unit_variance`, never the jackknife's) is the
    delta-method variance of R = ΣM/ΣD over the group's assignment units (Deng, Knoblich &
    Lu 2018); ``naive_unit_variance`` is s²_y, the sample variance of the analysis-unit
    values (`RatioStats.unit_variance` of the staged analysis-unit moments, which is s²_y
    when each analysis unit counts once), and ``n_analysis_units`` = N their number: s²_y/N
    is the variance of R if analysis units were independent (Kish, "Survey Sampling",
    1965). A value above 1 is the factor by which clustering inflates the variance
    (≈ 1 + (k̄ − 1)·ICC for clusters of size k̄). None when
    Var_delta(R) is undefined, s²_y is missing or ≤ 0, or N ≤ 0.
    """
    var = None if stats.unit_variance is None else stats.unit_variance / stats.n
    if var is None or naive_unit_variance is None or not naive_unit_variance > 0:
        return None
    if not n_analysis_units > 0:
        return None
    de = var / (naive_unit_variance / n_analysis_units)
    return de if math.isfinite(de) else None


@dataclass(frozen=True)
class MinimumDetectableEffect:
    """Absolute MDE and, when a nonzero baseline was given, relative MDE (absolute/|baseline|)."""

    absolute: float | None = None
    relative: float | None = None


def mde(
    unit_variance: float | None,
    n_treatment: float,
    alpha: float = 0.05,
    power: float = 0.8,
    baseline: float | None = None,
    n_control: float | None = None,
    one_sided: bool = False,
) -> MinimumDetectableEffect:
    """Minimum detectable effect of a two-sided (or `one_sided`: z_{1−α}) two-group z test.

    ``MDE = (z_{1−α/2} + z_{power}) · sqrt(V (1/n_T + 1/n_C))``, the normal-approximation
    power formula (as in Kohavi, Tang & Xu, "Trustworthy Online Controlled Experiments",
    2020), ignoring the far rejection tail; ``n_control`` defaults to ``n_treatment``
    (equal groups: sqrt(2V/n)). ``unit_variance`` V is the per-assignment-unit linearized
    variance of the metric (`RatioStats.unit_variance` of a pilot or the control group, or
    a CUPED-adjusted V_R + θ²V_P − 2θC), so n counts *assignment* units and clustering is
    accounted for. The relative MDE is MDE/|baseline|. Fields are None when V is missing
    or negative, a group size ≤ 0, or (relative only) the baseline is missing or 0.
    Raises for alpha or power outside (0, 1).
    """
    check_alpha(alpha)
    check_alpha(power, "power")
    n_control = n_treatment if n_control is None else n_control
    if unit_variance is None or not unit_variance >= 0:
        return MinimumDetectableEffect()
    if not (n_treatment > 0 and n_control > 0):
        return MinimumDetectableEffect()
    z = float(sps.norm.ppf(1 - alpha if one_sided else 1 - alpha / 2) + sps.norm.ppf(power))
    absolute = z * math.sqrt(unit_variance * (1.0 / n_treatment + 1.0 / n_control))
    if not math.isfinite(absolute):
        return MinimumDetectableEffect()
    relative = None
    if baseline is not None and baseline != 0:
        relative = absolute / abs(baseline)
    return MinimumDetectableEffect(absolute, relative)
