"""The report as a reader sees it, rendered by headless Chromium (Debian's, installed by
`make test`): in a screenshot the health verdict's box and the timeline's
confidence-sequence band are visible (their colours appear nowhere else on the page), and
a 3-arm, 5-metric report fits a 1280 px screen without horizontal scrolling."""

from __future__ import annotations

import datetime as dt
import html
import json
import re
import shutil
import subprocess

import pytest
from PIL import Image

from cluster_spark.reporting import render_report, write_report
from tests.test_report import DIAGNOSTICS, result, treated

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]
BAND = (195, 212, 229)  # #9bb7d4 at opacity 0.6 on white: the confidence-sequence band
UNHEALTHY = (253, 236, 234)  # #fdecea: the background of an unhealthy verdict


def _history():
    rows = []
    for day, (rel, low, high, cs) in enumerate(
        [(0.05, -0.02, 0.12, 2.0), (0.06, 0.01, 0.11, 1.2), (0.055, 0.02, 0.09, 0.8)]
    ):
        date = dt.date(2026, 3, 2) + dt.timedelta(days=7 * day)
        rows.append(result("revenue_per_user", "control", analysis_date=date, mean=10.0))
        rows.append(
            treated(
                "revenue_per_user",
                "t1",
                rel,
                low,
                high,
                analysis_date=date,
                effect_abs_cs_low=10.0 * (rel - cs * (high - low)),
                effect_abs_cs_high=10.0 * (rel + cs * (high - low)),
            )
        )
    return rows


def _near(pixel, color, tolerance=12):
    return all(abs(a - b) <= tolerance for a, b in zip(pixel[:3], color, strict=True))


@pytest.mark.slow
def test_the_report_shows_the_health_verdict_and_the_timeline(tmp_path):
    history = _history()
    results = [r for r in history if r["analysis_date"] == dt.date(2026, 3, 16)]
    for r in results:
        r |= {"health": "unhealthy", "health_reasons": ["srm"]}
    page = write_report(tmp_path / "r.html", "exp-1", "2026-03-16", results, DIAGNOSTICS, history)
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [
            CHROMIUM,
            *FLAGS,
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1280,4000",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.exists(), proc.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    width, height = image.size
    pixels = image.load()
    band = [
        (x, y)
        for y in range(0, height, 2)
        for x in range(0, width, 2)
        if _near(pixels[x, y], BAND, 4)
    ]
    health = [
        (x, y)
        for y in range(0, height, 2)
        for x in range(0, width, 2)
        if _near(pixels[x, y], UNHEALTHY, 3)
    ]
    assert len(band) > 50, "no confidence-sequence band in the screenshot"
    assert len(health) > 500, "no unhealthy verdict box in the screenshot"
    # the verdict comes first: the first box of its colour is far above the timeline
    assert min(y for _, y in health) < 300 < min(y for _, y in band)


def _laptop_experiment() -> list[dict]:
    """A 3-arm, 5-metric experiment with every column family on: CUPED (adjusted means and
    the unadjusted comparison), winsorization, sequential testing, two guardrails (one with
    a long status code), long metric names and six-digit unit counts."""
    specs = [
        ("revenue_per_user", "goal", "increase", None, "win", CUPED_AND_CAPS),
        ("sessions_per_user", "goal", "increase", None, "win", SEQUENTIAL),
        ("crash_rate", "secondary", "decrease", None, "loss", {}),
        ("page_load_time_ms", "guardrail", "decrease", 0.02, "guardrail_inconclusive", NI),
        ("checkout_conversion_rate", "guardrail", "increase", 0.01, "guardrail_ok", NI),
    ]
    rows = []
    for metric, role, direction, margin, decision, extra in specs:
        roles = dict(role=role, direction=direction, margin=margin, health="healthy")
        rows.append(result(metric, "control", mean=1234.5678, n_units=123456, **roles))
        for variant in ("treatment_a", "treatment_b"):
            rows.append(
                treated(
                    metric,
                    variant,
                    0.1243,
                    0.0512,
                    0.1987,
                    n_units=123789,
                    mean=1387.6543,
                    design_effect=3.34,
                    mde_rel=0.0456,
                    decision=decision,
                    recommendation="keep running",
                    recommendation_reasons=["guardrail page_load_time_ms inconclusive"],
                    status="relative_ci_unbounded" if margin == 0.01 else "ok",
                    **roles,
                    **extra,
                )
            )
    return rows


CUPED_AND_CAPS = dict(
    cuped_applied=True,
    cuped_status="applied",
    variance_reduction=0.412,
    mean_adjusted=12.91,
    control_mean_adjusted=12.5,
    effect_rel_unadjusted=0.231,
    effect_rel_unadjusted_ci_low=0.101,
    effect_rel_unadjusted_ci_high=0.3612,
    p_value_unadjusted=0.00123,
    winsorized=True,
    num_upper_cap=987.5,
    effect_rel_uncapped=0.0571,
    effect_rel_uncapped_ci_low=0.021,
    effect_rel_uncapped_ci_high=0.0932,
)
SEQUENTIAL = dict(effect_abs_cs_low=-0.12, effect_abs_cs_high=0.4, p_value_sequential=0.31)
NI = dict(noninferiority_bound=0.0312, p_value_noninferiority=0.2144)

#: Reports, into <body data-overflow>, the page's width and every element whose content is
#: wider than its box (a table scrolling inside its div, or the page itself).
MEASURE = """<script>
const over = [];
document.querySelectorAll('*').forEach(e => {
  if (e.scrollWidth > e.clientWidth + 1 && getComputedStyle(e).overflowX !== 'visible')
    over.push(e.tagName + ':' + e.scrollWidth + '>' + e.clientWidth);
});
document.body.setAttribute('data-overflow', JSON.stringify(
  {page: document.documentElement.scrollWidth, viewport: window.innerWidth, over}));
</script>"""


def _overflow(page_html: str, tmp_path, width: int) -> dict:
    """The report laid out by Chromium in a window `width` px wide: the page's scroll width
    and the elements that overflow (measured in the page, read back with --dump-dom)."""
    path = tmp_path / f"measure{width}.html"
    path.write_text(page_html.replace("</body>", MEASURE + "</body>"), "utf-8")
    proc = subprocess.run(
        [
            CHROMIUM,
            *FLAGS,
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--window-size={width},900",
            "--dump-dom",
            path.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    found = re.search(r'data-overflow="([^"]*)"', proc.stdout)
    assert found, proc.stderr[-2000:]
    return json.loads(html.unescape(found.group(1)))


@pytest.mark.slow
def test_the_report_fits_a_laptop_screen(tmp_path):
    """#26 item 7: a 3-arm, 5-metric report needs no horizontal scrolling at 1280 px, in
    the page or in any table; the same measurement does see the overflow of a narrower
    window (so it can fail), and a screenshot of the page laid out without any scrolling
    box has no ink right of 1280 px."""
    page = render_report("exp-1", "2026-03-16", _laptop_experiment(), DIAGNOSTICS)
    laptop = _overflow(page, tmp_path, 1280)
    assert laptop["viewport"] == 1280
    assert laptop["page"] <= 1280 and laptop["over"] == [], laptop
    narrow = _overflow(page, tmp_path, 640)
    assert narrow["over"], "a 640 px window must make the tables scroll"

    # every scrolling box opened up: whatever needs more than 1280 px now shows as ink there
    opened = page.replace("</style>", ".scroll { overflow: visible !important; }</style>")
    path = tmp_path / "opened.html"
    path.write_text(opened, "utf-8")
    shot = tmp_path / "wide.png"
    subprocess.run(
        [
            CHROMIUM,
            *FLAGS,
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1600,5000",
            path.as_uri(),
        ],
        capture_output=True,
        timeout=120,
    )
    image = Image.open(shot).convert("RGB")
    pixels = image.load()
    ink = [
        x
        for y in range(0, image.size[1], 3)
        for x in range(0, image.size[0], 3)
        if not _near(pixels[x, y], (255, 255, 255), 8)
    ]
    assert max(ink) > 1000, "the screenshot shows the tables"
    # the layout is the same for any window ≥ 1248 px (body max-width 1200 + margins)
    assert max(ink) < 1280 - 24, f"ink at x = {max(ink)}: wider than a 1280 px screen"
