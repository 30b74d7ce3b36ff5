"""Word clouds of captured concepts (Fig. 5), as a small deterministic SVG layout.

Size is proportional to a concept's weight (METHOD.md §5.7: the maximum
similarity over the neurons carrying the label), colour is its broad category
from the report's one `Palette`.  Placement walks an Archimedean spiral from the
centre and takes the first spot where the word's box is free on an occupancy
grid; words are placed largest first with a name tie-break, so the same input
always gives the same picture (no random seed, no external package).

Concept names are user data: every text node is escaped here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
from markupsafe import escape

from dissect_study.engine.report.charts import FONT

_FONT_FILES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/local/share/fonts/DejaVuSans.ttf",
)


@dataclass(frozen=True)
class Word:
    text: str
    weight: float
    colour: str
    title: str = ""  # tooltip, e.g. category and score


@dataclass(frozen=True)
class Placed:
    text: str
    x: float  # left of the box
    y: float  # baseline
    size: float
    width: float
    colour: str
    title: str


@lru_cache(maxsize=1)
def _font_path() -> str | None:
    for p in _FONT_FILES:
        if Path(p).exists():
            return p
    return None


@lru_cache(maxsize=64)
def _pil_font(size: int):
    from PIL import ImageFont

    path = _font_path()
    return ImageFont.truetype(path, size) if path else None


def text_width(text: str, size: float) -> float:
    """Advance width in px of `text` in DejaVu Sans (measured when the font file exists)."""
    f = _pil_font(100)
    if f is not None:
        return f.getlength(text) * size / 100.0
    return 0.6 * size * len(text)


def layout(words: Sequence[Word], width: int = 560, height: int = 300, min_size: float = 9.0,
           max_size: float = 30.0, cell: int = 2, pad: float = 1.5) -> list[Placed]:
    """Place words on a width x height canvas; words that find no room are left out."""
    ws = sorted(words, key=lambda w: (-w.weight, w.text))
    if not ws:
        return []
    lo, hi = min(w.weight for w in ws), max(w.weight for w in ws)
    gw, gh = width // cell, height // cell
    grid = np.zeros((gh, gw), dtype=bool)
    placed: list[Placed] = []
    cx, cy = width / 2, height / 2
    for w in ws:
        rel = 1.0 if hi - lo <= 1e-12 else (w.weight - lo) / (hi - lo)
        size = min_size + (max_size - min_size) * math.sqrt(rel)
        tw = text_width(w.text, size) + 2 * pad
        th = size * 1.15 + 2 * pad
        if tw > width or th > height:
            continue
        bw, bh = int(math.ceil(tw / cell)), int(math.ceil(th / cell))
        t = 0.0
        spot = None
        while t < 200 * math.pi:
            r = 2.2 * t
            x = cx + r * math.cos(t) * (width / height) - tw / 2
            y = cy + r * math.sin(t) - th / 2
            if x < 0 or y < 0 or x + tw > width or y + th > height:
                if r > max(width, height):
                    break
            else:
                gx, gy = int(x // cell), int(y // cell)
                if gx + bw <= gw and gy + bh <= gh and not grid[gy:gy + bh, gx:gx + bw].any():
                    spot = (x, y, gx, gy)
                    break
            t += 0.35 if r < 40 else 0.12 if r < 150 else 0.05
        if spot is None:
            continue
        x, y, gx, gy = spot
        grid[gy:gy + bh, gx:gx + bw] = True
        placed.append(Placed(w.text, x + pad, y + pad + size * 0.93, size, tw - 2 * pad, w.colour, w.title))
    return placed


def wordcloud_svg(words: Sequence[Word], width: int = 560, height: int = 300) -> tuple[str, int]:
    """An SVG string and the number of words placed.  All text is escaped."""
    placed = layout(words, width, height)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="wordcloud" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" style="max-width:100%;height:auto" role="img">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    for p in placed:
        tip = f"<title>{escape(p.title)}</title>" if p.title else ""
        parts.append(
            f'<text x="{p.x:.1f}" y="{p.y:.1f}" font-family="{FONT}" font-size="{p.size:.1f}" '
            f'fill="{escape(p.colour)}">{tip}{escape(p.text)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts), len(placed)
