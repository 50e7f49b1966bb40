"""The statistics, in pure Python (no Spark): everything here runs on the driver from a
handful of staged group rows, and is tested against numpy/scipy/statsmodels oracles.

- `ratio`: `RatioStats`, centered moments of (M, D), Chan merge, delta-method variance.
- `inference`: treatment-vs-control comparisons (Welch/z, relative lift), SRM.
- `cuped`: CUPED / regression adjustment of ratio metrics.
- `intervals`: Fieller's interval for the relative lift.
- `sequential`: always-valid confidence sequences and p-values.
- `multiplicity`: Benjamini–Hochberg and Holm.
- `power`: minimum detectable effect and design effect.
- `heterogeneity`: Cochran's Q across slices.
- `decisions`: win / loss / inconclusive and guardrails' non-inferiority.
- `recommend`: one recommendation per treatment (ship / do not ship / keep running / invalid).
"""
