"""A self-contained HTML report of one experiment's results (no Spark, no dependencies).

`render_report` takes plain dict rows of the `results` table (RESULT_COLUMNS) and of the
`diagnostics` table of one analysis date, optionally the results rows of earlier dates
(`history`, for the timeline) and the metrics' descriptions, and returns one HTML page.
Its sections, one module each:

- `summary`: the recommendation per treatment and its reasons, then one sentence per
  metric and treatment (every role);
- `health`: the health verdict and its reasons;
- `srm`: the SRM check and first exposures per day;
- `metrics`: a results table per metric (the most read columns; the others behind
  "more columns"), the jargon explained above them;
- `plots`: a forest plot coloured by decision, the effect over time;
- `slices`: a section per slice dimension;
- `page`: the header, the diagnostics (problems highlighted) and the page itself.

Inline CSS and SVG: no JavaScript and no external resources. Every value from the data is
escaped with `html.escape` (`format.esc`).
"""

from cluster_spark.reporting.format import result_order
from cluster_spark.reporting.page import render_report, render_reports, write_report

__all__ = ["render_report", "render_reports", "result_order", "write_report"]
