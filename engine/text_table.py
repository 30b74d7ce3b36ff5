"""Query results as a plain-text table that fits a terminal.

`dissect-study query` prints whatever SQL the user writes, and some columns hold
whole sentences (`warnings.message`) or whole studies (`runs.study_text`).  Padding
every row to the longest cell made lines hundreds of characters wide, so here the
widest columns give up width first and their long cells are elided with a mark,
as DuckDB's own box renderer does; one row stays one line, so `grep`/`sort` keep
working.  Columns that cannot fit even at the minimum width are dropped from the
right and counted, never silently.  Everything here is pure: the command line
chooses the width and the ellipsis and prints the result.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

#: narrowest a column is squeezed to ("ab…" plus one character of slack)
MIN_WIDTH = 4
SEPARATOR = "  "


@dataclass(frozen=True)
class TextTable:
    """The rendered table and what had to give way to fit it."""

    text: str
    n_elided: int  # cells (headers included) shortened with the ellipsis
    n_hidden_columns: int  # columns dropped from the right


def format_cell(value: Any) -> str:
    """One value as table text: NULL for missing, 6 significant digits for floats, escaped newlines."""
    if value is None or type(value).__name__ in ("NAType", "NaTType"):
        return "NULL"
    if isinstance(value, float):
        return "NULL" if math.isnan(value) else format(value, ".6g")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(bytes(value))} bytes>"
    try:  # pandas' NaT / NA and numpy floats
        if value != value:
            return "NULL"
    except (TypeError, ValueError):  # arrays compare element-wise
        pass
    if hasattr(value, "dtype") and getattr(value, "ndim", 1) == 0 and value.dtype.kind == "f":
        return format(float(value), ".6g")
    text = str(value)
    return text.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\r").replace("\t", " ")


def elide(text: str, width: int, mark: str = "…") -> str:
    """`text` cut to `width` characters, the last of them replaced by `mark` when cut."""
    if len(text) <= width:
        return text
    if width <= len(mark):
        return mark[:width]
    return text[: width - len(mark)] + mark


def fit_widths(natural: Sequence[int], budget: int, floors: Sequence[int] | None = None) -> list[int]:
    """Column widths summing to at most `budget`: the widest columns shrink first.

    Water-filling: the largest cap c with sum(min(w, max(c, floor))) <= budget, where
    a column's floor (default: min(its natural width, MIN_WIDTH)) is the least it
    keeps; characters left under the budget go to the columns held at c, leftmost
    first.  Columns already narrower than the cap keep their natural width.  When
    even the floors exceed the budget the floors are returned (the caller drops
    columns).
    """
    floors = (
        [min(w, f) for w, f in zip(natural, floors)] if floors is not None else [min(w, MIN_WIDTH) for w in natural]
    )
    if sum(natural) <= budget:
        return list(natural)
    if sum(floors) >= budget:
        return floors
    lo, hi = 0, max(natural)  # sum at cap 0 is sum(floors) < budget; at max(natural) it is over

    def total(cap: int) -> int:
        return sum(min(w, max(cap, f)) for w, f in zip(natural, floors))

    while hi - lo > 1:
        mid = (lo + hi) // 2
        if total(mid) <= budget:
            lo = mid
        else:
            hi = mid
    widths = [min(w, max(lo, f)) for w, f in zip(natural, floors)]
    spare = budget - sum(widths)
    for i, w in enumerate(natural):  # fewer spare characters than columns held at the cap: one each
        if spare <= 0:
            break
        if floors[i] <= lo < w:
            widths[i] += 1
            spare -= 1
    return widths


def render_table(
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    right_align: Sequence[bool] | None = None,
    max_width: int | None = None,
    mark: str = "…",
) -> TextTable:
    """A header, a rule and one line per row, no line longer than `max_width` (None or 0: no limit).

    `right_align[i]` right-aligns column i (numbers).  Values are formatted by
    `format_cell`.
    """
    header = [format_cell(c) for c in columns]
    body = [[format_cell(v) for v in r] for r in rows]
    align = list(right_align) if right_align is not None else [False] * len(header)
    natural = [max([len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(header)]
    keep = len(header)
    widths = list(natural)
    if max_width:
        # numbers are never cut; text keeps its whole header if it can, else MIN_WIDTH
        tiers = [
            [n if a else max(len(h), MIN_WIDTH) for n, a, h in zip(natural, align, header)],
            [n if a else MIN_WIDTH for n, a in zip(natural, align)],
        ]
        while keep > 0:
            hidden = keep < len(header)
            # a trailing "…" column marks hidden columns
            budget = max_width - len(SEPARATOR) * (keep - 1) - ((len(SEPARATOR) + len(mark)) if hidden else 0)
            for floors in tiers:
                widths = fit_widths(natural[:keep], budget, floors[:keep])
                if sum(widths) <= budget:
                    break
            if sum(widths) <= budget:
                break
            keep -= 1
        if keep == 0:  # a terminal narrower than one squeezed column: show the first, cut
            keep, widths = 1, [max(1, min(natural[0], max_width))]
    n_hidden = len(header) - keep
    n_elided = 0
    lines: list[str] = []

    def line(cells: Sequence[str], rule: bool = False) -> str:
        nonlocal n_elided
        parts = []
        for i in range(keep):
            cell = elide(cells[i], widths[i], mark)
            if cell != cells[i] and not rule:
                n_elided += 1
            parts.append(cell.rjust(widths[i]) if align[i] else cell.ljust(widths[i]))
        if n_hidden:
            parts.append(mark if not rule else "-" * len(mark))
        return SEPARATOR.join(parts).rstrip()

    lines.append(line(header))
    lines.append(line(["-" * w for w in widths] + [""] * n_hidden, rule=True))
    lines.extend(line(r) for r in body)
    return TextTable("\n".join(lines), n_elided, n_hidden)
