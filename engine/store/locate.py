"""Which results database `query` and `report` read when no `--db` is given.

`run` writes `results.duckdb` beside the study (`studies/results.duckdb` for the
demo), but people query from wherever they stand, usually the project root.
So the default is: `./results.duckdb` if it exists, else the most recently
written `results.duckdb` in the directory tree below, a few levels deep.  The
search skips hidden folders (`.git`, `.venv`), caches and build output, and
stops after a bounded number of folder entries so a folder of 100,000 images
costs a moment, not a minute.  The command says on stderr which file it chose.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from dissect_study.engine.store.database import StoreError

logger = logging.getLogger(__name__)

#: the file name `run` writes beside a study
RESULTS_DB_NAME = "results.duckdb"
#: levels below the starting folder that are searched (studies/results.duckdb is level 1)
MAX_DEPTH = 3
#: folder entries read at most; past this the search stops with what it found
MAX_ENTRIES = 50_000
_SKIP = {"node_modules", "__pycache__", "site-packages", "build", "dist"}


@dataclass(frozen=True)
class Located:
    """The chosen database and how it was found ("cwd" or "search")."""

    path: Path
    how: str
    n_candidates: int = 1


def find_results_dbs(start: Path, max_depth: int = MAX_DEPTH, max_entries: int = MAX_ENTRIES) -> list[Path]:
    """Every `results.duckdb` at most `max_depth` levels below `start`, newest first.

    Breadth-first, so a shallow database is never missed because a deep image
    folder used up the entry budget first.
    """
    found: list[tuple[float, str, Path]] = []
    level = [start]
    seen = 0
    for _depth in range(max_depth + 1):
        below: list[Path] = []
        for folder in level:
            try:
                with os.scandir(folder) as it:
                    for entry in it:
                        seen += 1
                        if seen > max_entries:
                            logger.debug("results database search stopped after %d entries", max_entries)
                            return _newest_first(found)
                        if entry.name == RESULTS_DB_NAME and entry.is_file():
                            found.append((entry.stat().st_mtime, entry.path, Path(entry.path)))
                        elif (
                            entry.is_dir(follow_symlinks=False)
                            and not entry.name.startswith(".")
                            and entry.name not in _SKIP
                            and not entry.name.endswith(".egg-info")
                        ):
                            below.append(Path(entry.path))
            except OSError:  # unreadable folder: nothing of ours can be in it
                continue
        level = sorted(below)
    return _newest_first(found)


def _newest_first(found: list[tuple[float, str, Path]]) -> list[Path]:
    return [p for _, _, p in sorted(found, key=lambda t: (-t[0], t[1]))]


def locate_results_db(start: str | Path = ".") -> Located:
    """The database a command without `--db` reads; StoreError when there is none."""
    start = Path(start)
    here = start / RESULTS_DB_NAME
    if here.is_file():
        return Located(here, "cwd")
    found = find_results_dbs(start)
    if not found:
        raise StoreError(
            f"no {RESULTS_DB_NAME} in {start.resolve()} or up to {MAX_DEPTH} folders below it; "
            "run a study first (dissect-study run FILE.study) or name one with --db"
        )
    return Located(found[0], "search", len(found))


def describe(located: Located) -> str:
    """The stderr line that says which database a command read, and why."""
    if located.how == "cwd":
        return f"results: {located.path}"
    others = located.n_candidates - 1
    extra = f"; {others} older one{'s' * (others != 1)} below" if others else ""
    return f"results: {located.path} (the most recently written {RESULTS_DB_NAME} here{extra}; --db chooses another)"
