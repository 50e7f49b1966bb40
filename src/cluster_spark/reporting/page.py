"""The report page: its header and diagnostics table, the order of its sections, and the
entry points (`render_report`, `render_reports`, `write_report`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cluster_spark.checks import FIRST_EXPOSURES, is_warning, note
from cluster_spark.reporting import health, metrics, plots, slices, srm, summary
from cluster_spark.reporting.format import (
    Row,
    esc,
    finite,
    first_value,
    fmt_num,
    html_table,
    is_control,
)

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; color: #222; margin: 24px; max-width: 1200px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 28px 0 8px; }
h3 { font-size: 15px; margin: 18px 0 4px; }
dl.meta { display: grid; grid-template-columns: max-content auto; gap: 2px 12px; margin: 0; }
dl.meta dt { color: #666; } dl.meta dd { margin: 0; }
table { border-collapse: collapse; margin: 4px 0 8px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
.ci { white-space: nowrap; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
.srm { border: 2px solid #3a7d44; background: #eef7ef; padding: 8px 12px; }
.srm.flagged { border-color: #b3261e; background: #fdecea; }
.srm.unknown { border-color: #999; background: #f6f6f6; }
.srm .verdict, .health .verdict { font-weight: 600; }
.health { border: 2px solid #3a7d44; background: #eef7ef; padding: 8px 12px; }
.health.warning { border-color: #b58100; background: #fff4ce; }
.health.unhealthy { border-color: #b3261e; background: #fdecea; }
.pos { color: #1b7f3b; font-weight: 600; } .neg { color: #b3261e; font-weight: 600; }
.scroll { overflow-x: auto; max-width: 100%; }
.charts { display: flex; flex-wrap: wrap; gap: 8px 24px; } details.note { margin: 4px 0 8px; }
.warn { background: #fff4ce; } .muted { color: #777; } .note { color: #555; margin: 2px 0; }
"""


def _header(experiment_id: str, analysis_date: Any, results: Sequence[Row]) -> str:
    alpha = first_value(results, "alpha")
    items = [
        ("Analysis date", analysis_date),
        ("Run id", first_value(results, "run_id") or "—"),
        ("Alpha", fmt_num(alpha) if alpha is not None else "—"),
        ("Test", first_value(results, "test") or "—"),
        ("Control", first_value(results, "control_variant") or "—"),
    ]
    meta = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items)
    return f"<h1>Experiment {esc(experiment_id)}</h1><dl class='meta'>{meta}</dl>"


def diagnostics_table(diagnostics: Sequence[Row]) -> str:
    def key(d: Row) -> tuple[str, str, str]:
        return tuple(str(d.get(k) or "") for k in ("check", "metric", "variant"))

    body = []
    for d in sorted(diagnostics, key=key):
        value = d.get("value")
        bad = finite(value) is not None and is_warning(d.get("check"), value)
        body.append(
            [
                esc(d.get("check")),
                esc(d.get("metric") if d.get("metric") is not None else "—"),
                esc(d.get("variant") if d.get("variant") is not None else "—"),
                (esc(fmt_num(value)), "warn" if bad else ""),
                (esc(note(d.get("check"))), "l muted"),
            ]
        )
    if not body:
        return '<p class="muted">No diagnostics.</p>'
    return '<p class="note">Highlighted: counts that signal a problem.</p>' + html_table(
        ["check", "metric", "variant", "value", "what it counts"], body, left=3
    )


def _sections(
    experiment_id: str,
    analysis_date: dt.date | str,
    results: Sequence[Row],
    diagnostics: Sequence[Row],
    history: Sequence[Row] = (),
    descriptions: Mapping[str, str] | None = None,
) -> str:
    def mine(r: Row) -> bool:
        return r.get("experiment_id", experiment_id) == experiment_id

    results = [r for r in results if mine(r)]
    diagnostics = [d for d in diagnostics if mine(d)]
    sliced = [r for r in results if r.get("dimension") is not None]
    slice_diags = [d for d in diagnostics if d.get("dimension") is not None]
    results = [r for r in results if r.get("dimension") is None]
    diagnostics = [d for d in diagnostics if d.get("dimension") is None]
    control = first_value(results, "control_variant")
    by_metric: dict[str, list[Row]] = {}
    for r in results:
        by_metric.setdefault(str(r.get("metric")), []).append(r)
    for rows in by_metric.values():
        rows.sort(key=lambda r: (not is_control(r), str(r.get("variant"))))
    treated = [r for rows in by_metric.values() for r in rows if not is_control(r)]
    descriptions = descriptions or {}
    tables = "".join(
        metrics.section(m, rows, descriptions.get(m, "")) for m, rows in by_metric.items()
    )
    decided = any(r.get("decision") for r in treated)
    plot = (
        plots.forest_plot(treated, first_value(results, "alpha")) + plots.legend(decided)
        if treated
        else '<p class="muted">No treatments.</p>'
    )
    mine_history = [r for r in history if mine(r) and r.get("dimension") is None]
    # per-day first exposures are in the SRM section, not the diagnostics table
    daily_free = [d for d in diagnostics if not str(d.get("check")).startswith(FIRST_EXPOSURES)]
    return (
        f"{_header(experiment_id, analysis_date, results)}"
        f"{summary.recommendation_box(results)}"
        f"{health.box(results)}"
        f"{summary.summary(results)}"
        f"<h2>Sample-ratio mismatch</h2>{srm.box(results, diagnostics, control)}"
        f"{srm.section(results, diagnostics)}"
        f"<h2>Results</h2>{metrics.GLOSSARY}{tables or '<p class=muted>No results.</p>'}"
        f"<h2>Relative lift</h2>{plot}"
        f"{plots.timeline(mine_history, control)}"
        f"{slices.sections(sliced, slice_diags, control)}"
        f"<h2>Diagnostics</h2>{diagnostics_table(daily_free)}"
    )


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{CSS}{summary.CSS}</style></head><body>{body}</body></html>\n"
    )


def render_report(
    experiment_id: str,
    analysis_date: dt.date | str,
    results: Sequence[Row],
    diagnostics: Sequence[Row],
    history: Sequence[Row] = (),
    descriptions: Mapping[str, str] | None = None,
) -> str:
    """One self-contained HTML page for an experiment (see the module docstring for its
    sections); `history`: results rows of earlier dates for the timeline; `descriptions`:
    metric → description. Rows of other experiments (by `experiment_id`) are ignored."""
    return _page(
        f"Experiment {experiment_id} — {analysis_date}",
        _sections(experiment_id, analysis_date, results, diagnostics, history, descriptions),
    )


def render_reports(
    analysis_date: dt.date | str,
    experiments: Sequence[tuple],
) -> str:
    """One self-contained HTML page for several experiments, given as (experiment id,
    results rows, diagnostics rows[, history rows, descriptions]): each experiment's
    sections as in `render_report`, one after the other. With one experiment it is
    `render_report`'s page."""
    if len(experiments) == 1:
        return render_report(experiments[0][0], analysis_date, *experiments[0][1:])
    ids = ", ".join(e[0] for e in experiments)
    body = "<hr>".join(_sections(e[0], analysis_date, *e[1:]) for e in experiments)
    return _page(f"Experiments {ids} — {analysis_date}", body)


def write_report(
    path: str | Path,
    experiment_id: str,
    analysis_date: dt.date | str,
    results: Sequence[Row],
    diagnostics: Sequence[Row],
    history: Sequence[Row] = (),
    descriptions: Mapping[str, str] | None = None,
) -> Path:
    """Render the report and write it to `path` (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    page = render_report(experiment_id, analysis_date, results, diagnostics, history, descriptions)
    path.write_text(page, "utf-8")
    return path
