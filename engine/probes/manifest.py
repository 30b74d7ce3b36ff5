"""CSV manifests: one row per image, a path column plus attribute columns.

Also home of the attribute normalisation every tabular source shares, so a
manifest column `density` holding "DENSITY C", "c" or 3 becomes the shared
vocabulary's "C", `birads` "BI-RADS 4" becomes 4, and so on -- zero-shot
sanity checks and balanced sampling then work the same on every source.
Cells are read as text and converted here (not by pandas' type guessing) so
ids such as "00123" survive intact.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dissect_study.engine.files import regular_file
from dissect_study.engine.probes import ProbeError
from dissect_study.engine.probes.base import ProbeItem
from dissect_study.engine.probes.folder import FileProbe, resolve_inside, user_path
from dissect_study.engine.registry import PROBES

_INT = re.compile(r"^[+-]?(0|[1-9][0-9]*)$")
_FLOAT = re.compile(r"^[+-]?([0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)([eE][+-]?[0-9]+)?$")
_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f"}


@dataclass
class CsvTable:
    """A CSV read as text: stripped header names and rows of stripped strings ("" for empty)."""

    columns: list[str]
    rows: list[dict[str, str]]

    def __len__(self) -> int:
        return len(self.rows)


def read_csv_text(path: Path, what: str) -> CsvTable:
    """Every cell as a stripped string; a ProbeError for an unreadable file.

    The standard csv module, not pandas: no type guessing, and it is several
    times faster than building a DataFrame only to turn it back into dicts.
    """
    path = regular_file(path, f"{what}: CSV", ProbeError)  # a FIFO or device must not hang the scan
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise ProbeError(f"{what}: CSV {path} is empty (no header row).")
            columns = [h.strip() for h in header]
            rows = []
            for line_no, rec in enumerate(reader, start=2):
                if not rec or all(c.strip() == "" for c in rec):
                    continue
                if len(rec) > len(columns):
                    raise ProbeError(
                        f"{what}: {path.name} line {line_no} has {len(rec)} cells but the header has "
                        f"{len(columns)}; quote cells that contain commas."
                    )
                rec = rec + [""] * (len(columns) - len(rec))
                rows.append({c: v.strip() for c, v in zip(columns, rec)})
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ProbeError(f"{what}: cannot read CSV {path} ({type(exc).__name__}: {exc}).") from exc
    return CsvTable(columns, rows)


def require_columns(table: CsvTable, columns: Iterable[str], path: Path, what: str, hint: str = "") -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ProbeError(
            f"{what}: {path} lacks column{'s' if len(missing) > 1 else ''} {', '.join(repr(m) for m in missing)}; "
            f"it has {', '.join(repr(c) for c in table.columns)}.{(' ' + hint) if hint else ''}"
        )


# --------------------------------------------------------------------------- cell and vocabulary parsing
def parse_cell(text: str) -> Any:
    """Plain cell -> None, int (no leading zeros), float (finite) or the string."""
    if text is None or text == "" or text.lower() in ("nan", "none", "null", "na"):
        return None
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text):
        v = float(text)
        return v if math.isfinite(v) else None
    return text


def parse_list(text: str) -> list[str]:
    """Names from VinDr's repr `"['Mass', 'Suspicious Calcification']"` or from `"a;b"` (no eval)."""
    if text is None:
        return []
    s = str(text).strip()
    if s.startswith("[") and s.endswith("]"):
        s = s[1:-1]
        parts = s.split(",")
    else:
        parts = re.split(r"[;|]", s)
    out = []
    for p in parts:
        p = p.strip().strip("'\"").strip()
        if p:
            out.append(p)
    return out


def parse_density(value: Any, where: str) -> str | None:
    """`"DENSITY C"` / `"c"` / `3` -> `"C"` (numbers are BI-RADS 1-4 -> A-D)."""
    if value is None or str(value).strip() == "":
        return None
    s = str(value).strip().upper()
    s = re.sub(r"^(DENSITY|BREAST DENSITY|TYPE)\s*", "", s)
    if s in ("A", "B", "C", "D"):
        return s
    if s in ("1", "2", "3", "4", "1.0", "2.0", "3.0", "4.0"):
        return "ABCD"[int(float(s)) - 1]
    raise ProbeError(
        f"{where}: density value {value!r} is not A-D, 'DENSITY A'-'DENSITY D' or 1-4. "
        "Rename the column if it holds something else (0-based codes such as Mammo-CLIP's 0-3 are ambiguous: write letters)."
    )


def parse_birads(value: Any, where: str) -> int | None:
    """`"BI-RADS 4"` / `"4a"` / `4` -> 4; 0 and 6 are kept as given."""
    if value is None or str(value).strip() == "":
        return None
    m = re.match(r"^(?:BI-?RADS)?\s*([0-6])(?:\.0)?\s*[ABC]?$", str(value).strip().upper())
    if not m:
        raise ProbeError(f"{where}: BI-RADS value {value!r} is not 0-6 or 'BI-RADS N'.")
    return int(m.group(1))


def parse_bool(value: Any, where: str) -> bool | None:
    if value is None or str(value).strip() == "":
        return None
    s = str(value).strip().lower()
    if s.endswith(".0"):
        s = s[:-2]
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    raise ProbeError(f"{where}: {value!r} is not a yes/no value (1/0, true/false, yes/no).")


def parse_view(value: Any) -> str | None:
    if value is None or str(value).strip() == "":
        return None
    return str(value).strip().upper()


def parse_laterality(value: Any) -> str | None:
    if value is None or str(value).strip() == "":
        return None
    s = str(value).strip().upper()
    return {"LEFT": "L", "RIGHT": "R"}.get(s, s)


VOCABULARY_PARSERS: dict[str, Callable[[Any, str], Any]] = {
    "density": parse_density,
    "birads": parse_birads,
    "mass": parse_bool,
    "calcification": parse_bool,
    "view": lambda v, w: parse_view(v),
    "laterality": lambda v, w: parse_laterality(v),
    "findings": lambda v, w: parse_list(v),
}


def row_attributes(row: dict[str, str], skip: Iterable[str], where: str) -> dict[str, Any]:
    """A manifest row's attributes: vocabulary columns normalised, the rest parsed plainly."""
    skip = set(skip)
    attrs: dict[str, Any] = {}
    for key, text in row.items():
        if key in skip or key == "":
            continue
        if key in VOCABULARY_PARSERS:
            attrs[key] = VOCABULARY_PARSERS[key](text if text != "" else None, f"{where}, column {key!r}")
        else:
            attrs[key] = parse_cell(text)
    return attrs


# --------------------------------------------------------------------------- csv(...) source
@PROBES.register("csv")
def build_csv(name: str, params: dict[str, Any], ctx: Any) -> FileProbe:
    """`csv(path, path_column="path", id_column=none, root=none)`, rows in file order."""
    what = f"probe {name}"
    csv_path = user_path(params.get("path"), ctx, f"{what}: path", kind="file")
    root = user_path(params["root"], ctx, f"{what}: root", kind="dir") if params.get("root") else csv_path.parent
    path_col = params.get("path_column") or "path"
    id_col = params.get("id_column")
    table = read_csv_text(csv_path, what)
    needed = [path_col] + ([id_col] if id_col else [])
    require_columns(table, needed, csv_path, what, "Set path_column=/id_column= to the right names.")
    if len(table) == 0:
        raise ProbeError(f"{what}: {csv_path} has a header but no rows.")
    items: list[ProbeItem] = []
    cache: dict[str, str] = {}
    for i, row in enumerate(table.rows):
        where = f"{what}: {csv_path.name} row {i + 2}"
        rel = row[path_col]
        if rel == "":
            raise ProbeError(f"{where}: empty {path_col!r} cell; every row needs an image path.")
        path = resolve_inside(root, rel, where, cache)
        image_id = row[id_col] if id_col else rel
        if image_id == "":
            raise ProbeError(f"{where}: empty {id_col!r} cell; every row needs an image id.")
        attrs = row_attributes(row, skip=[path_col] + ([id_col] if id_col else []), where=where)
        items.append(ProbeItem(str(image_id), str(path), attrs))
    info = {
        "kind": "csv",
        "csv": str(csv_path),
        "root": str(root),
        "path_column": path_col,
        "id_column": id_col,
        "columns": [c for c in table.columns if c not in needed],
        "n_missing_files": sum(not Path(it.path).is_file() for it in items),
    }
    return FileProbe(name, items, info)
