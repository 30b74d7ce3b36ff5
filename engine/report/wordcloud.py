"""Word clouds of captured concepts (Fig. 5), as a small deterministic SVG layout.

Size is proportional to a concept's weight (docs/METHOD.md §5.10: the maximum
similarity over the neurons carrying the label), colour is its broad category
from the report's one `Palette`.  Each word sits on a tag of its category's colour
with black or white text, whichever contrasts more (WCAG 2.x, always >= 4.5:1):
coloured text itself would fail the contrast minimum for the light colours of a
colour-blind-safe palette, and darkened variants become indistinguishable.  Placement takes, for each word, the free spot of an occupancy grid nearest
the centre (a dense spiral, vectorised); words are placed largest first with a name tie-break, so the same input
always gives the same picture (no random seed, no external package).

Concept names are user data: every text node is escaped here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from markupsafe import escape

from dissect_study.engine.report.charts import FONT
from dissect_study.engine.report.colour import contrast_ratio
from dissect_study.engine.report.text import MAX_LABEL, elide

#: longest word drawn (a longer one would not fit the canvas anyway)
WORD_MAX = 60
#: words named in the SVG's accessible name (the rest are counted)
NAME_WORDS = 12
#: space around a word's box; its tag is drawn `TAG_INSET` inside, so neighbouring tags never touch
PAD = 2.5
TAG_INSET = 1.0
#: smallest word drawn, in px at the SVG's own size (the report never shrinks a cloud below it)
MIN_SIZE = 9.0
MAX_SIZE = 24.0

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


#: PIL refuses to measure very long strings ("too many characters in string"); beyond this, estimate
_MEASURE_MAX = 1000


def text_width(text: str, size: float) -> float:
    """Advance width in px of `text` in DejaVu Sans (measured when the font file exists)."""
    f = _pil_font(100)
    if f is not None and len(text) <= _MEASURE_MAX:
        return f.getlength(text) * size / 100.0
    return 0.6 * size * len(text)


@lru_cache(maxsize=8)
def _centre_rank(gh: int, gw: int, aspect: float) -> np.ndarray:
    """rank[y, x]: position of cell (y, x) when cells are ordered nearest-to-centre first
    (elliptical distance, then angle) -- a dense spiral, precomputed once per canvas."""
    ys, xs = np.mgrid[0:gh, 0:gw]
    dy = ys + 0.5 - gh / 2
    dx = (xs + 0.5 - gw / 2) / aspect
    order = np.lexsort((np.arctan2(dy, dx).ravel(), np.round(np.hypot(dx, dy), 1).ravel()))
    rank = np.empty(gh * gw, dtype=np.int64)
    rank[order] = np.arange(gh * gw)
    return rank.reshape(gh, gw)


def _sizes(words: Sequence[Word], min_size: float, max_size: float) -> list[float]:
    lo, hi = min(w.weight for w in words), max(w.weight for w in words)
    return [
        min_size + (max_size - min_size) * (1.0 if hi - lo <= 1e-12 else (w.weight - lo) / (hi - lo)) for w in words
    ]


def canvas_height(
    words: Sequence[Word],
    width: int = 560,
    min_size: float = MIN_SIZE,
    max_size: float = MAX_SIZE,
    lo: int = 160,
    hi: int = 480,
) -> int:
    """A height that leaves room for every word (about 1.8x their total box area), within [lo, hi]."""
    if not words:
        return lo
    ws = sorted(words, key=lambda w: (-w.weight, w.text))
    area = sum((text_width(w.text, s) + 3) * (s * 1.2 + 3) for w, s in zip(ws, _sizes(ws, min_size, max_size)))
    return int(min(hi, max(lo, 1.8 * area / width)))


def layout(
    words: Sequence[Word],
    width: int = 560,
    height: int = 300,
    min_size: float = MIN_SIZE,
    max_size: float = MAX_SIZE,
    cell: int = 2,
    pad: float = PAD,
) -> list[Placed]:
    """Place words on a width x height canvas; words that find no room are left out.

    Each word goes to the free spot nearest the centre; "free" is read off a
    summed-area table of the occupancy grid, so one word costs a few array
    operations whatever the canvas size.
    """
    ws = sorted(words, key=lambda w: (-w.weight, w.text))
    if not ws:
        return []
    gw, gh = width // cell, height // cell
    grid = np.zeros((gh, gw), dtype=np.int32)
    rank = _centre_rank(gh, gw, round(width / height, 3))
    never = np.iinfo(np.int64).max
    sat = np.zeros((gh + 1, gw + 1), dtype=np.int32)
    placed: list[Placed] = []
    for w, size in zip(ws, _sizes(ws, min_size, max_size)):
        tw = text_width(w.text, size) + 2 * pad
        th = size * 1.2 + 2 * pad
        bw, bh = int(math.ceil(tw / cell)), int(math.ceil(th / cell))
        if bw > gw or bh > gh:
            continue
        # occupied cells inside the box at every top-left position, by the summed-area table
        box = sat[bh:, bw:] - sat[:-bh, bw:] - sat[bh:, :-bw] + sat[:-bh, :-bw]
        # rank of each position's box centre; the free position with the lowest rank wins
        r = rank[bh // 2 : bh // 2 + gh - bh + 1, bw // 2 : bw // 2 + gw - bw + 1]
        cand = np.where(box == 0, r, never)
        best = int(np.argmin(cand))
        if cand.flat[best] == never:
            continue
        spot = divmod(best, cand.shape[1])
        gy, gx = int(spot[0]), int(spot[1])
        grid[gy : gy + bh, gx : gx + bw] = 1
        np.cumsum(np.cumsum(grid, 0), 1, out=sat[1:, 1:])
        x, y = gx * cell, gy * cell
        placed.append(Placed(w.text, x + pad, y + pad + size * 0.95, size, tw - 2 * pad, w.colour, w.title))
    return placed


def ink_on(fill: str) -> str:
    """Black or white, whichever contrasts more with `fill` (at least 4.58:1 for any fill)."""
    return "#000000" if contrast_ratio("#000000", fill) >= contrast_ratio("#ffffff", fill) else "#ffffff"


def accessible_name(placed: Sequence[Placed]) -> str:
    """What a screen reader says for the cloud: how many words, the largest ones first."""
    names = [p.text for p in sorted(placed, key=lambda p: (-p.size, p.text))[:NAME_WORDS]]
    more = f" and {len(placed) - len(names)} more" if len(placed) > len(names) else ""
    return f"Word cloud of {len(placed)} concepts, largest first: {', '.join(names)}{more}"


def wordcloud_svg(
    words: Sequence[Word], width: int = 560, height: int | None = None, max_height: int = 420
) -> tuple[str, int]:
    """An SVG string and the number of words placed.  All text is escaped.

    The canvas grows with the words up to `max_height`; beyond that the largest
    sizes shrink (size stays increasing with weight) but no word is drawn below
    `MIN_SIZE`: a word that finds no room is left out and the caption says so.  The
    SVG's viewBox is cropped to the words, so no blank band is printed.  Long words and tooltips
    are elided (`text.elide`): a word cloud of any stored run renders.
    """
    words = [Word(elide(w.text, WORD_MAX), w.weight, w.colour, elide(w.title, 4 * MAX_LABEL)) for w in words]
    need = canvas_height(words, width, hi=10**6) if height is None else height
    height = height or min(need, max_height)
    scale = min(1.0, math.sqrt(height / need)) if need > height else 1.0
    placed: list[Placed] = []
    for _ in range(4):  # shrink the largest words, never the smallest below MIN_SIZE (what still misses is left out)
        placed = layout(words, width, height, min_size=MIN_SIZE, max_size=max(MIN_SIZE, MAX_SIZE * scale))
        if len(placed) == len(words):
            break
        scale *= 0.9
    if placed:
        x0 = max(0.0, min(p.x for p in placed) - 4)
        y0 = max(0.0, min(p.y - p.size for p in placed) - 4)
        x1 = min(float(width), max(p.x + p.width for p in placed) + 4)
        y1 = min(float(height), max(p.y + 0.3 * p.size for p in placed) + 4)
    else:
        x0, y0, x1, y1 = 0.0, 0.0, float(width), 40.0
    w, h = x1 - x0, y1 - y0
    name = escape(accessible_name(placed))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="wordcloud" width="{w:.0f}" height="{h:.0f}" '
        f'viewBox="{x0:.1f} {y0:.1f} {w:.1f} {h:.1f}" role="img" aria-label="{name}">',
        f"<title>{name}</title>",
        f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{w:.1f}" height="{h:.1f}" fill="white"/>',
    ]
    inset = PAD - TAG_INSET
    for p in placed:
        tip = f"<title>{escape(p.title)}</title>" if p.title else ""
        parts.append(
            f'<g><rect x="{p.x - inset:.1f}" y="{p.y - p.size * 0.95 - inset:.1f}" width="{p.width + 2 * inset:.1f}" '
            f'height="{p.size * 1.2 + 2 * inset:.1f}" rx="2" fill="{escape(p.colour)}"/>'
            f'<text x="{p.x:.1f}" y="{p.y:.1f}" font-family="{FONT}" font-size="{p.size:.1f}" '
            f'fill="{ink_on(p.colour)}">{tip}{escape(p.text)}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts), len(placed)
