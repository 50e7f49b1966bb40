"""The health verdict's box: the verdict and one line per reason (`health.REASONS`)."""

from __future__ import annotations

from collections.abc import Sequence

from cluster_spark.health import REASONS
from cluster_spark.reporting.format import Row, esc, first_value


def _text(code: str) -> str:
    reason = REASONS.get(code.split(":", 1)[0])
    return reason.text if reason else ""


def box(results: Sequence[Row]) -> str:
    verdict = first_value(results, "health")
    if verdict is None:
        return ""
    codes = first_value(results, "health_reasons") or []
    cls = f"health {verdict}"
    items = "".join(f"<li><code>{esc(c)}</code>: {esc(_text(c))}</li>" for c in codes)
    reasons = f"<ul>{items}</ul>" if items else "<div>No problem found in the checks.</div>"
    return (
        f'<h2>Health</h2><div class="{cls}"><div class="verdict">'
        f"{esc(verdict.upper())}</div>{reasons}</div>"
    )
