"""Headless Chromium for the tests that must see a report the way a reader does.

Why the system browser: the Debian `chromium` package is installed by `.ci/run`
(`apt-get install chromium`), and Python `playwright` drives it through
`executable_path`, so no browser is ever downloaded.  Tests skip, with the reason,
only when no browser binary can be found.

Usage:

    from helpers.browser import chromium_page

    def test_x(chromium_page):
        page = chromium_page(390)          # a fresh page 390 px wide, offline
        page.goto(path.as_uri())
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import pytest

#: where the Debian/Ubuntu packages put the browser; $DISSECT_STUDY_CHROMIUM overrides
CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
#: no sandbox (containers), no GPU, and nothing that reaches the network by itself
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def find_chromium() -> str | None:
    """The browser binary to drive, or None when this machine has none."""
    env = os.environ.get("DISSECT_STUDY_CHROMIUM")
    for c in ((env,) if env else ()) + CANDIDATES:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def chromium_browser() -> Iterator[Any]:
    exe = find_chromium()
    if exe is None:
        pytest.skip("no Chromium found (install the `chromium` package or set $DISSECT_STUDY_CHROMIUM)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="python playwright is not installed (dev extra)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def chromium_page(chromium_browser: Any) -> Iterator[Callable[..., Any]]:
    """A factory: `chromium_page(width, height=800, **context_options)` -> a new page, offline."""
    contexts: list[Any] = []

    def make(width: int = 1280, height: int = 800, **options: Any) -> Any:
        ctx = chromium_browser.new_context(viewport={"width": width, "height": height}, **options)
        ctx.set_offline(True)
        contexts.append(ctx)
        return ctx.new_page()

    yield make
    for ctx in contexts:
        ctx.close()
