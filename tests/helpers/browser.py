"""Headless Chromium for the tests that must see a report the way a reader does.

Why the system browser: the Debian `chromium` package is installed by `.ci/run`
(`apt-get install chromium`), and Python `playwright` drives it through
`executable_path`, so no browser is ever downloaded.  Tests skip, with the reason,
only when no browser binary can be found.

Usage (the fixtures are exported by tests/conftest.py):

    def test_x(chromium_page):
        page = chromium_page(390)          # a fresh page 390 px wide, offline
        page.goto(path.as_uri())

The JavaScript checks below measure layout facts in the loaded page (overflow,
chart text size, axis-label clashes, controls sticking out of a card).
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


#: JavaScript: elements whose right edge passes the viewport, outside any horizontal scroll box
OVERFLOW_JS = """
() => {
  const vw = document.documentElement.clientWidth;
  const inScrollBox = (el) => {
    for (let p = el.parentElement; p && p !== document.body; p = p.parentElement) {
      const s = getComputedStyle(p);
      if ((s.overflowX === 'auto' || s.overflowX === 'scroll') && p.getBoundingClientRect().right <= vw + 1) return true;
    }
    return false;
  };
  const out = [];
  for (const el of document.querySelectorAll('body *')) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 && r.height === 0) continue;
    if (r.right > vw + 1 || r.left < -1) {
      if (inScrollBox(el)) continue;
      out.push({tag: el.tagName.toLowerCase(), cls: el.getAttribute('class') || '', id: el.id || '',
                left: Math.round(r.left), right: Math.round(r.right),
                text: (el.textContent || '').trim().slice(0, 60)});
    }
  }
  return {vw: vw, scrollWidth: document.documentElement.scrollWidth, overflow: out};
}
"""

#: JavaScript: per inline SVG figure, the smallest font size its text is drawn at, in CSS px of the page
#: (the text's own font size times the SVG's scale from its viewBox to its box on the page)
SVG_TEXT_JS = """
() => Array.from(document.querySelectorAll('.figure-body svg')).map((svg) => {
  const vb = svg.viewBox && svg.viewBox.baseVal;
  const box = svg.getBoundingClientRect();
  const scale = vb && vb.width ? box.width / vb.width : 1;
  let min = Infinity;
  for (const t of svg.querySelectorAll('text')) {
    if (!t.textContent.trim()) continue;
    const fs = parseFloat(getComputedStyle(t).fontSize);
    if (fs > 0) min = Math.min(min, fs * scale);
  }
  return min === Infinity ? null : min;
})
"""

#: JavaScript: pairs of axis labels (same axis of one chart) whose glyph boxes overlap or come within `gap` px.
#: Each label's box is its own getBBox() mapped to the page by its screen matrix, so a slanted label is
#: a rotated rectangle; two rectangles clash unless an edge normal of one of them separates them.
AXIS_LABEL_CLASH_JS = """
(gap) => {
  const quad = (t) => {
    const b = t.getBBox(), m = t.getScreenCTM(), g = gap / 2 / Math.hypot(m.a, m.b);
    return [[b.x - g, b.y - g], [b.x + b.width + g, b.y - g], [b.x + b.width + g, b.y + b.height + g],
            [b.x - g, b.y + b.height + g]].map(([x, y]) => new DOMPoint(x, y).matrixTransform(m));
  };
  const separated = (p, q) => {
    for (const poly of [p, q]) for (let k = 0; k < 4; k++) {
      const a = poly[k], b = poly[(k + 1) % 4], nx = a.y - b.y, ny = b.x - a.x;
      const proj = (pts) => pts.map((v) => v.x * nx + v.y * ny);
      const pp = proj(p), qq = proj(q);
      if (Math.max(...pp) <= Math.min(...qq) || Math.max(...qq) <= Math.min(...pp)) return true;
    }
    return false;
  };
  const out = [];
  document.querySelectorAll('.figure-body svg').forEach((svg, i) => {
    svg.querySelectorAll('g.role-axis-label').forEach((axis) => {
      const labels = Array.from(axis.querySelectorAll('text')).filter((t) => t.textContent.trim());
      const quads = labels.map(quad);
      for (let a = 0; a < labels.length; a++) for (let b = a + 1; b < labels.length; b++)
        if (!separated(quads[a], quads[b])) out.push({figure: i, a: labels[a].textContent, b: labels[b].textContent});
    });
  });
  return out;
}
"""

#: JavaScript: elements inside a card that stick out of it (the card's review controls included)
CARD_OVERFLOW_JS = """
() => {
  const out = [];
  document.querySelectorAll('.card').forEach((card) => {
    const c = card.getBoundingClientRect();
    card.querySelectorAll('*').forEach((el) => {
      const r = el.getBoundingClientRect();
      if ((r.width || r.height) && (r.right > c.right + 1 || r.left < c.left - 1))
        out.push({card: card.id, tag: el.tagName.toLowerCase(), cls: el.getAttribute('class') || ''});
    });
  });
  return out;
}
"""
