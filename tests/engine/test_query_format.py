"""`dissect-study query`: tables that fit the terminal, and which database it reads without --db."""

from __future__ import annotations

import os
import random
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from dissect_study.engine.cli import cli
from dissect_study.engine.store.database import StoreError
from dissect_study.engine.store.locate import find_results_dbs, locate_results_db
from dissect_study.engine.text_table import MIN_WIDTH, elide, fit_widths, format_cell, render_table

# --------------------------------------------------------------------------- widths


def _greedy_widths(natural: list[int], budget: int, floors: list[int]) -> list[int]:
    """Reference: take one character at a time from the widest column above its floor (rightmost of ties)."""
    w = list(natural)
    while sum(w) > budget:
        movable = [i for i in range(len(w)) if w[i] > floors[i]]
        if not movable:
            return w
        top = max(w[i] for i in movable)
        i = max(i for i in movable if w[i] == top)
        w[i] -= 1
    return w


def test_fit_widths_matches_a_one_character_at_a_time_reference() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        n = rng.randint(1, 8)
        natural = [rng.choice([rng.randint(1, 12), rng.randint(1, 250)]) for _ in range(n)]
        floors = [min(w, rng.choice([MIN_WIDTH, rng.randint(1, 14)])) for w in natural]
        budget = rng.randint(1, sum(natural) + 5)
        got = fit_widths(natural, budget, floors)
        ref = _greedy_widths(natural, budget, floors)
        assert got == ref, (natural, floors, budget)
        assert all(f <= g <= w for f, g, w in zip(floors, got, natural))


def test_fit_widths_keeps_narrow_columns_whole() -> None:
    assert fit_widths([22, 14, 200], 120) == [22, 14, 84]
    assert fit_widths([10, 10], 30) == [10, 10]
    assert fit_widths([100, 100], 50) == [25, 25]
    assert fit_widths([9, 9, 9], 5) == [MIN_WIDTH] * 3  # floors returned: the caller drops columns


def test_elide_and_format_cell() -> None:
    assert elide("abcdef", 6) == "abcdef" and elide("abcdefg", 6) == "abcde…" and elide("abc", 1, "...") == "."
    assert format_cell(None) == "NULL" and format_cell(float("nan")) == "NULL"
    assert format_cell(0.123456789) == "0.123457" and format_cell(3) == "3" and format_cell(b"\x89PNG") == "<4 bytes>"
    assert format_cell("two\nlines\tand a tab") == "two\\nlines and a tab"


# --------------------------------------------------------------------------- rendering


def test_render_table_fits_and_cuts_only_text() -> None:
    long = "concept set mammo: " + "overlapping forms, " * 12
    rows = [("20261203-073042-a9f3c2", "concepts mammo", long, 0.25), ("r2", "sanity", "short", 12.5)]
    t = render_table(["run_id", "step", "message", "score"], rows, [False, False, False, True], max_width=80)
    lines = t.text.splitlines()
    assert len(lines) == 4 and all(len(x) <= 80 for x in lines)
    assert lines[0].split() == ["run_id", "step", "message", "score"]
    assert lines[2].startswith("20261203-073042-a9f3c2  concepts mammo  concept set mammo: overlapping")
    cut = lines[2].split("  ")[2]
    assert cut.endswith("…") and long.startswith(cut[:-1])
    assert lines[2].endswith(" 0.25") and lines[3].endswith(" 12.5")  # numbers whole, right-aligned
    assert t.n_elided == 1 and t.n_hidden_columns == 0
    whole = render_table(["run_id", "step", "message", "score"], rows, [False, False, False, True], max_width=0)
    assert long.rstrip() in whole.text and whole.n_elided == 0


def test_render_table_drops_columns_it_cannot_fit_and_says_so() -> None:
    cols = [f"column_{i}" for i in range(12)]
    rows = [[f"value {i}" * 3 for i in range(12)]]
    t = render_table(cols, rows, max_width=40)
    lines = t.text.splitlines()
    assert all(len(x) <= 40 for x in lines)
    assert t.n_hidden_columns > 0 and lines[0].endswith("…")
    assert len(lines[0].split()) == 12 - t.n_hidden_columns + 1


# --------------------------------------------------------------------------- the command


def _db(path: Path, message: str = "x" * 200) -> Path:
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE warnings (run_id VARCHAR, step VARCHAR, message VARCHAR)")
    con.execute("INSERT INTO warnings VALUES ('20261203-073042-a9f3c2', 'concepts mammo', ?)", [message])
    con.close()
    return path


def test_query_table_fits_max_width_and_the_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    message = "concept set mammo: mammo_v1.csv: 4 group(s) of overlapping forms " + "density / densities, " * 8
    db = _db(tmp_path / "r.duckdb", message)
    runner = CliRunner()
    res = runner.invoke(cli, ["query", "SELECT * FROM warnings", "--db", str(db), "--max-width", "70"])
    assert res.exit_code == 0, res.output
    assert all(len(x) <= 70 for x in res.stdout.splitlines()) and "concept set mammo" in res.stdout
    assert "1 cell(s) cut" in res.stderr and "--max-width 0" in res.stderr
    full = runner.invoke(cli, ["query", "SELECT * FROM warnings", "--db", str(db), "--max-width", "0"])
    assert message.rstrip() in full.stdout and full.stderr == ""
    monkeypatch.setenv("COLUMNS", "50")  # shutil.get_terminal_size reads it first: the terminal's width
    narrow = runner.invoke(cli, ["query", "SELECT * FROM warnings", "--db", str(db)])
    assert narrow.exit_code == 0 and max(len(x) for x in narrow.stdout.splitlines()) == 50


# --------------------------------------------------------------------------- which database


def _touch_db(path: Path, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    _db(path)
    os.utime(path, (mtime, mtime))
    return path


def test_locate_prefers_here_then_the_newest_below(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no results.duckdb"):
        locate_results_db(tmp_path)
    old = _touch_db(tmp_path / "studies" / "results.duckdb", 1_000_000)
    new = _touch_db(tmp_path / "a" / "b" / "c" / "results.duckdb", 2_000_000)
    _touch_db(tmp_path / ".venv" / "results.duckdb", 3_000_000)  # hidden folders are not searched
    _touch_db(tmp_path / "a" / "b" / "c" / "d" / "results.duckdb", 4_000_000)  # deeper than 3 levels
    assert find_results_dbs(tmp_path) == [new, old]
    loc = locate_results_db(tmp_path)
    assert (loc.path, loc.how, loc.n_candidates) == (new, "search", 2)
    here = _touch_db(tmp_path / "results.duckdb", 0)
    assert locate_results_db(tmp_path).path == here and locate_results_db(tmp_path).how == "cwd"


def test_query_and_report_without_db_use_the_demo_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _touch_db(tmp_path / "studies" / "results.duckdb", 1_000_000)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("COLUMNS", raising=False)
    res = CliRunner().invoke(cli, ["query", "SELECT step FROM warnings", "--format", "csv"])
    assert res.exit_code == 0, res.output
    assert res.stdout == "step\nconcepts mammo\n"
    assert "results: studies/results.duckdb (the most recently written" in res.stderr
    # report resolves the same way (this database has no runs, so it fails on that, not on the path)
    rep = CliRunner().invoke(cli, ["report", "--format", "html", "--out", "o"])
    assert "studies/results.duckdb" in rep.stderr and "no results.duckdb" not in rep.stderr
    monkeypatch.chdir(tmp_path / "studies")
    quiet = CliRunner().invoke(cli, ["query", "SELECT 1 AS one", "--format", "csv"])
    assert quiet.exit_code == 0 and quiet.stderr == ""  # ./results.duckdb: nothing to explain
