"""Headless Chromium for report tests: the system browser driven by Python playwright.

Why the system browser: the suite runs offline and must never download one
(playwright's own `install` fetches a build).  The Debian `chromium` package is
driven over CDP by playwright's `executable_path`; when it (or playwright) is
missing the test skips with a message saying what to install.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def launch_chromium() -> Iterator[Any]:
    """A playwright Browser on the system Chromium; skips the calling test when there is none."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("python playwright is not installed (pip install playwright; no browser download needed)")
    exe = chromium_path()
    if exe is None:
        pytest.skip("no Chromium found (apt-get install chromium); the browser test needs a system browser")
    with sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, headless=True)
        except Exception as e:  # noqa: BLE001 - any launch failure means "no usable browser here": skip, say why
            pytest.skip(f"Chromium at {exe} does not start headless: {e}")
        try:
            yield browser
        finally:
            browser.close()


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
