"""Headless Chromium for report tests: the system browser driven by Python playwright.

Why the system browser: the suite runs offline and must never download one
(playwright's own `install` fetches a build).  The Debian `chromium` package is
driven over CDP by playwright's `executable_path`; when it (or playwright) is
missing the test skips with a message saying what to install.
"""

from __future__ import annotations

import atexit
import shutil
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_path() -> str | None:
    for p in CHROMIUM_CANDIDATES:
        if Path(p).exists():
            return p
    found = shutil.which("chromium")
    return found


_playwright: Any = None  # one driver per test process, stopped at exit


def launch_chromium() -> Any:
    """A playwright Browser on the system Chromium (close it when done); skips the calling test when there is none."""
    global _playwright
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("python playwright is not installed (pip install playwright; no browser download needed)")
    exe = chromium_path()
    if exe is None:
        pytest.skip("no Chromium found (apt-get install chromium); the browser test needs a system browser")
    if _playwright is None:
        _playwright = sync_playwright().start()
        atexit.register(_playwright.stop)
    try:
        return _playwright.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, headless=True)
    except Exception as e:  # noqa: BLE001 - any launch failure means "no usable browser here": skip, say why
        pytest.skip(f"Chromium at {exe} does not start headless: {e}")


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
