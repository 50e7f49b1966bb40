"""The report as a reader sees it: rendered by headless Chromium (Debian's, installed by
`make test`) to a screenshot, in which the health verdict's box and the timeline's
confidence-sequence band are visible (their colours appear nowhere else on the page)."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess

import pytest
from PIL import Image

from cluster_spark.report import write_report
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
