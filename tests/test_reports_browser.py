"""The reports in a real headless browser (Debian's chromium): rendered DOM and screenshots.

Needs `chromium` on PATH (Debian: `apt-get install -y chromium`; `.ci/run` installs it). Skipped
without it, except where TENSORGRADE_REQUIRE_BROWSER=1 (CI sets it): there a missing browser fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from report_samples import write_batch

from tensorgrade.reports import write_reports
from tensorgrade.reports.summary import HIST_COLOR

CHROMIUM = shutil.which("chromium")
WIDTH, HEIGHT = 1200, 1600

if CHROMIUM is None and os.environ.get("TENSORGRADE_REQUIRE_BROWSER") == "1":
    raise RuntimeError("TENSORGRADE_REQUIRE_BROWSER=1 but no `chromium` on PATH")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="no `chromium` binary on PATH (Debian: apt-get install -y chromium)",
    ),
]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("reports")
    results = write_batch(base / "results")
    out = base / "site"
    write_reports(results, out)
    return out


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        f"--user-data-dir={tmp / 'profile'}",  # not the user's, and not shared between runs
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def dump_dom(tmp: Path, page: Path) -> str:
    return _chromium(tmp, "--dump-dom", page.as_uri()).stdout


def screenshot(tmp: Path, page: Path) -> np.ndarray:
    """A WIDTH x HEIGHT screenshot of ``page`` as an RGB array (the PNG is kept in ``tmp``)."""
    png = tmp / f"{page.stem}.png"
    _chromium(tmp, f"--screenshot={png}", f"--window-size={WIDTH},{HEIGHT}", page.as_uri())
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (WIDTH, HEIGHT)
        return np.asarray(im.convert("RGB")).astype(int)


def near(img: np.ndarray, hex_colour: str, tol: int = 24) -> np.ndarray:
    """Mask of the pixels within ``tol`` (per channel) of a CSS colour."""
    rgb = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
    return (np.abs(img - rgb) <= tol).all(axis=-1)


def assert_not_blank(img: np.ndarray) -> None:
    colours = np.unique(img.reshape(-1, 3), axis=0)
    assert len(colours) > 50, f"only {len(colours)} colours: a blank or broken page"
    white = near(img, "#ffffff", 3).mean()
    assert 0.5 < white < 0.995, f"{white:.1%} white"


def test_student_page_renders(site, tmp_path):
    page = site / "bob.html"
    dom = dump_dom(tmp_path, page)
    assert "Feedback on 03_inverse_problems" in dom
    assert "Score per question" in dom and "6 / 15" in dom
    assert dom.count("test_") >= 5 and "wrong shape" in dom and "expected 42.125" in dom
    img = screenshot(tmp_path, page)
    assert_not_blank(img)
    assert near(img, "#2f6fde").sum() > 2000  # score bars
    assert near(img, "#b3261e", 40).sum() > 50  # red "failed" marks
    assert near(img, "#17703a", 40).sum() > 50  # green "passed" marks


def test_student_figure_is_shown(site, tmp_path):
    img = screenshot(tmp_path, site / "ada.html")
    assert_not_blank(img)
    # the truth image's black background: nothing else on the page is pure black, so this
    # shows that the data: URI image was decoded and drawn (the page's CSP allows data: only)
    assert (img.max(axis=-1) < 8).sum() > 2000


def test_hostile_text_stays_text(site, tmp_path):
    dom = dump_dom(tmp_path, site / "mal.html")
    assert "<script" not in dom.lower()  # no element was created from the student's text
    assert "&lt;script&gt;alert('pwned')&lt;/script&gt;" in dom
    assert "timed out" in dom


def test_summary_renders_with_histogram(site, tmp_path):
    page = site / "index.html"
    dom = dump_dom(tmp_path, page)
    assert "Class summary: 03_inverse_problems" in dom
    assert "Tests, lowest pass rate first" in dom and "25%" in dom
    for heading in ("Ungradable (1)", "Timed out (1)", "Crashed (1)", "Slowest submissions"):
        assert heading in dom
    img = screenshot(tmp_path, page)
    assert_not_blank(img)
    bars = near(img, HIST_COLOR, 12)
    assert bars.sum() > 5000, "the histogram's bars are not on the screen"
    rows, cols = np.nonzero(bars)
    assert rows.max() < HEIGHT // 2, "the histogram should be near the top of the page"
    assert cols.max() - cols.min() > 300  # bars spread along the score axis
