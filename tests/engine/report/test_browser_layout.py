"""The report in a real browser (headless system Chromium): phone and desktop layout, full-size thumbnails.

Why a browser: overflow, shrunken chart text and overlapping axis labels are
facts of layout, which only a layout engine can measure.  The page is loaded
from a file with the network unused (everything is inline); the test skips with
a message only where no Chromium can be started (tests/helpers/browser.py).
"""

from __future__ import annotations

import pytest
from helpers.browser import AXIS_LABEL_CLASH_JS, CARD_OVERFLOW_JS, OVERFLOW_JS, SVG_TEXT_JS
from helpers.report import make_run

pytestmark = pytest.mark.slow

PHONE, DESKTOP = 390, 1280
#: smallest chart text a reader is asked to read, in CSS px
MIN_CHART_TEXT_PX = 9.0


@pytest.fixture(scope="module")
def report_file(tmp_path_factory):
    from dissect_study.engine.report import build_report_model, render_html
    from dissect_study.engine.store.database import connect

    d = tmp_path_factory.mktemp("browser")
    db = d / "results.duckdb"
    run_id = make_run(db, models=("G", "M", "Cdensity", "Cmass"), n_concepts=100, neurons=(6, 12, 32), n_images=24)
    con = connect(db, read_only=True)
    try:
        html = render_html(build_report_model(con, run_id))
    finally:
        con.close()
    path = d / "report.html"
    path.write_text(html, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def browser(chromium_browser):
    return chromium_browser


def _open(browser, path, width, scripts=True):
    page = browser.new_page(viewport={"width": width, "height": 900}, java_script_enabled=scripts)
    # offline: any request that is not the report file itself or an inline data: URI fails the test
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
    page.goto(path.as_uri())
    return page, requests


@pytest.mark.parametrize("width", [PHONE, DESKTOP])
def test_nothing_wider_than_the_viewport_and_chart_text_readable(browser, report_file, width):
    page, requests = _open(browser, report_file, width)
    try:
        r = page.evaluate(OVERFLOW_JS)
        assert r["overflow"] == [], r["overflow"][:5]
        assert r["scrollWidth"] <= width
        assert page.evaluate(CARD_OVERFLOW_JS) == []
        sizes = [s for s in page.evaluate(SVG_TEXT_JS) if s is not None]
        assert sizes and min(sizes) >= MIN_CHART_TEXT_PX - 0.05, sizes
        assert page.evaluate(AXIS_LABEL_CLASH_JS, 1) == []
        assert requests == []
    finally:
        page.close()


def test_thumbnail_opens_full_size_without_script(browser, report_file):
    page, _ = _open(browser, report_file, DESKTOP, scripts=False)  # opening a thumbnail needs no script
    try:
        thumb = page.locator("a.thumb-open").first
        img = thumb.locator("img")
        small = img.bounding_box()
        natural = img.evaluate("(i) => i.naturalWidth")
        assert small and small["width"] <= natural + 2  # a thumbnail in the card
        thumb.click()
        big = img.bounding_box()
        assert big and big["width"] >= max(natural, 3 * small["width"])  # the whole image, enlarged to the window
        assert big["x"] >= 0 and big["x"] + big["width"] <= DESKTOP
        page.locator(".thumb:target a.thumb-close").click()
        back = img.bounding_box()
        assert back and back["width"] == pytest.approx(small["width"], abs=1)
    finally:
        page.close()
